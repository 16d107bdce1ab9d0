"""Human reports of a status block: table rows, Markdown, and HTML with an inline SVG chart.

All pure: status in, text out."""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence

from kiln.api.status import Interval, OptimizedModelStatus, State, TargetStatus, shape_text
from kiln.api.summary import money

COLUMNS = [
    "target",
    "candidate",
    "precision",
    "device",
    "state",
    "batch",
    "p50 ms",
    "p99 ms",
    "throughput/s",
    "speedup",
    "95% interval",
    "rel. error",
    "gate",
    "selected",
]


def _num(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def _interval(interval: Interval | None) -> str:
    return "-" if interval is None else f"{interval.low:.2f}-{interval.high:.2f}x"


def _money(amount: float | None, currency: str) -> str:
    return "-" if amount is None else money(amount, currency)


def _hours(hours: float | None) -> str:
    if hours is None:
        return "-"
    if hours < 1 / 60:
        return f"{hours * 3600:.0f} s"
    if hours < 1:
        return f"{hours * 60:.0f} min"
    return f"{hours:.1f} h" if hours < 48 else f"{hours / 24:.1f} days"


def _cents(amount: float | None, currency: str) -> str:
    """Small sums (a build's cost) with the digits that matter."""
    return (
        "-"
        if amount is None
        else f"{currency}{amount:.2g}"
        if amount < 1
        else f"{currency}{amount:,.2f}"
    )


CAPACITY_COLUMNS = [
    "target",
    "engine",
    "replicas (baseline)",
    "replicas",
    "$/month (baseline)",
    "$/month",
    "savings/month",
    "build cost",
    "break-even",
]


def capacity_rows(status: OptimizedModelStatus) -> list[list[str]]:
    """One row per target with a capacity plan: the guide's comparison, in money."""
    out: list[list[str]] = []
    for t in status.targets:
        cap = t.capacity
        if cap is None:
            continue
        currency = cap.currency
        out.append(
            [
                t.name + (" (cheapest)" if t.name == status.cheapest_target else ""),
                t.selected or "none selected",
                _num(cap.baseline_replicas, 6),
                _num(cap.selected_replicas, 6),
                _money(cap.baseline_monthly_cost, currency),
                _money(cap.selected_monthly_cost, currency),
                _money(cap.monthly_savings, currency),
                _cents(cap.build_cost, currency),
                _hours(cap.break_even_hours),
            ]
        )
    return out


def rows(status: OptimizedModelStatus) -> list[list[str]]:
    out: list[list[str]] = []
    for target in status.targets:
        for c in target.candidates:
            gate = "-" if c.accuracy is None else ("pass" if c.accuracy.passed else "FAIL")
            state = c.state.value + (" (cached)" if c.cached else "")
            out.append(
                [
                    target.name,
                    c.backend.value,
                    c.precision.value,
                    c.device,
                    state,
                    shape_text(c.batch_size, c.lengths) if c.batch_size else "-",
                    _num(c.latency_ms.p50 if c.latency_ms else None),
                    _num(c.latency_ms.p99 if c.latency_ms else None),
                    _num(c.throughput, 4),
                    "-" if c.speedup is None else f"{c.speedup:.2f}x",
                    _interval(c.speedup_interval) + (" disturbed" if c.disturbed else ""),
                    _num(c.accuracy.relative_error if c.accuracy else None, 2),
                    gate,
                    "*"
                    if target.selected == c.name
                    else ("baseline" if target.baseline == c.name else ""),
                ]
            )
    return out


def reasons(status: OptimizedModelStatus) -> list[str]:
    """Why each skipped or failed candidate did not run, and how a built one was built where
    that matters (its note), once per distinct text."""
    seen: dict[str, list[str]] = {}
    for target in status.targets:
        for c in target.candidates:
            for text in (c.reason, c.note):
                if text:
                    seen.setdefault(text, []).append(f"{c.name}@{target.name}")
    return [f"{', '.join(names)}: {reason}" for reason, names in seen.items()]


def gate_lines(target: TargetStatus, bold: str = "") -> list[str]:
    """What the target's accuracy gates ran on, and the warning of a gate that cannot tell
    engines apart."""
    gate = target.accuracy_gate
    if gate is None:
        return []
    lines = ["", f"Accuracy checked on {gate.source}."]
    if gate.warning:
        lines += ["", f"{bold}Warning:{bold} {gate.warning}"]
    return lines


def benchmark_table(target: TargetStatus) -> list[str]:
    """Every candidate at every batch size, with its speedup's interval and how the rounds
    ended."""
    lines = [
        "| candidate | batch | p50 ms | p90 ms | p99 ms | throughput/s | speedup | 95% interval "
        "| spread % | rounds | converged | disturbed |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in target.candidates:
        for b in c.benchmarks:
            lines.append(
                f"| {c.name} | {shape_text(b.batch_size, b.lengths)} | {b.latency_ms.p50:.3g} "
                f"| {b.latency_ms.p90:.3g} "
                f"| {b.latency_ms.p99:.3g} | {b.throughput:.4g} | "
                f"{'-' if b.speedup is None else f'{b.speedup:.2f}x'} "
                f"| {_interval(b.speedup_interval)} | {b.spread_percent:.1f} | {b.rounds} "
                f"| {'yes' if b.converged else 'no (cap)'} | {b.disturbed or '-'} |"
            )
    return lines


def capacity_section(status: OptimizedModelStatus) -> list[str]:
    table = capacity_rows(status)
    if not table:
        return []
    first = next(t.capacity for t in status.targets if t.capacity)
    lines = [
        "",
        "## Capacity and cost",
        "",
        f"To serve {first.target_throughput:g} samples/s at {first.utilization:.0%} utilization, "
        f"from the throughput measured at batch {first.batch_size}:",
        "",
        "| " + " | ".join(CAPACITY_COLUMNS) + " |",
        "|" + "---|" * len(CAPACITY_COLUMNS),
    ]
    lines += ["| " + " | ".join(r) + " |" for r in table]
    if status.cheapest_target:
        lines += ["", f"Cheapest target that meets the throughput: **{status.cheapest_target}**."]
    return lines


def render_markdown(name: str, status: OptimizedModelStatus, verdict: Sequence[str] = ()) -> str:
    """`verdict`: kiln.api.verdict's lines, shown first."""
    lines = [f"# Kiln report: {name}", "", f"**Phase:** {status.phase.value}  "]
    if verdict:
        lines += ["", "## Verdict", "", *[f"- {line}" for line in verdict], ""]
    if status.summary:
        lines.append(f"**Summary:** {status.summary}  ")
    if status.message:
        lines.append(f"**Message:** {status.message}  ")
    if status.model_digest:
        lines.append(f"**Model digest:** `{status.model_digest}`")
    lines += ["", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(r) + " |" for r in rows(status)]
    for target in status.targets:
        lines += ["", f"## Target {target.name}", ""]
        if target.environment and target.state is State.OK:  # a skipped target measured nothing
            env = target.environment
            lines.append(
                f"Measured on {env.device_name} with torch {env.torch}, onnxruntime "
                f"{env.onnxruntime}, tensorrt {env.tensorrt or '-'}, {env.cpu_threads} CPU "
                f"threads for every runtime ({env.threads_source or 'default'})."
            )
        why = target.selection_reason or target.reason or ""
        lines.append(f"Selected: **{target.selected or 'none'}** — {why}")
        lines += gate_lines(target, bold="**")
        lines += ["", *benchmark_table(target)]
        if target.capacity and target.capacity.note:
            lines += ["", f"Capacity: {target.capacity.note}"]
    lines += capacity_section(status)
    notes = reasons(status)
    if notes:
        lines += ["", "## Skipped and failed", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


_VALUE_TEXT_PX = 230


def _bars(target: TargetStatus, width: int = 760) -> str:
    """Horizontal bars of throughput at the decision batch size, one per measured candidate."""
    measured = [c for c in target.candidates if c.throughput]
    if not measured:
        return ""
    # Scaled to the fastest *verified* candidate: one that failed its gate with an absurd
    # number (a broken engine can be very fast) must not squash every other bar to nothing;
    # its own bar is capped at full width.
    verified = [c.throughput or 0.0 for c in measured if c.accuracy and c.accuracy.passed]
    top = max(verified or [c.throughput or 0.0 for c in measured])
    bar_h, label_w = 22, 220
    height = bar_h * len(measured) + 10
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">'
    ]
    for i, c in enumerate(measured):
        y = 5 + i * bar_h
        # The longest bar leaves room for its value text ("1.839e+05/s 12.34x, p99 1.23e+03
        # ms" at 11 px), which a browser would otherwise clip at the picture's edge.
        w = (width - label_w - _VALUE_TEXT_PX) * min(1.0, (c.throughput or 0.0) / top)
        colour = (
            "#2e7d32"
            if c.name == target.selected
            else ("#9e9e9e" if c.name == target.baseline else "#1565c0")
        )
        if c.accuracy is not None and not c.accuracy.passed:
            colour = "#c62828"
        label = html.escape(c.name)
        speed = "" if c.speedup is None else f" {c.speedup:.2f}x"
        p99 = f", p99 {c.latency_ms.p99:.3g} ms" if c.latency_ms else ""
        parts.append(f'<text x="0" y="{y + 15}" font-size="12">{label}</text>')
        parts.append(
            f'<rect x="{label_w}" y="{y + 3}" width="{w:.1f}" '
            f'height="{bar_h - 6}" fill="{colour}"/>'
        )
        parts.append(
            f'<text x="{label_w + w + 4:.1f}" y="{y + 15}" font-size="11">'
            f"{c.throughput:.4g}/s{speed}{p99}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _verdict_html(verdict: Sequence[str]) -> str:
    if not verdict:
        return ""
    items = "".join(f"<li>{html.escape(line)}</li>" for line in verdict)
    return f"<div class='verdict'><h2>Verdict</h2><ul>{items}</ul></div>"


def render_html(name: str, status: OptimizedModelStatus, verdict: Sequence[str] = ()) -> str:
    def table(header: Iterable[str], body: Iterable[Iterable[str]]) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        rows_ = "".join(
            "<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in r) + "</tr>" for r in body
        )
        return f"<table><thead><tr>{head}</tr></thead><tbody>{rows_}</tbody></table>"

    sections = []
    for target in status.targets:
        gate = "".join(f"<p>{html.escape(line)}</p>" for line in gate_lines(target) if line)
        sections.append(
            f"<h2>Target {html.escape(target.name)}</h2>"
            f"<p>Selected: <b>{html.escape(target.selected or 'none')}</b> — "
            f"{html.escape(target.selection_reason or target.reason or '')}</p>{gate}"
            f"<p>Throughput at the decision batch size (green: selected, grey: baseline, "
            f"red: failed its accuracy gate)</p>{_bars(target)}"
        )
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in reasons(status))
    plans = capacity_rows(status)
    money_table = f"<h2>Capacity and cost</h2>{table(CAPACITY_COLUMNS, plans)}" if plans else ""
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>Kiln report: {html.escape(name)}</title><style>"
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 6px;font-size:13px}"
        ".verdict{background:#e8f5e9;border-left:4px solid #2e7d32;padding:.2em 1em}"
        "</style></head><body>"
        f"<h1>Kiln report: {html.escape(name)}</h1>"
        f"{_verdict_html(verdict)}"
        f"<p><b>Phase:</b> {html.escape(status.phase.value)}<br><b>Summary:</b> "
        f"{html.escape(status.summary or status.message or '')}</p>"
        f"{table(COLUMNS, rows(status))}{''.join(sections)}{money_table}"
        f"{'<h2>Skipped and failed</h2><ul>' + notes + '</ul>' if notes else ''}"
        "</body></html>\n"
    )
