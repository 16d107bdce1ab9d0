"""The HTML report as a person sees it: rendered by headless Chromium (from Debian's packages;
`make test` installs it where it can) at a laptop's width, measured with the browser's own
layout. The verdict comes first, the tables fit, and no chart label is clipped or overlaps a
bar. A screenshot is kept next to the page for a person to look at."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from kiln.api.spec import Backend, Precision, Selection
from kiln.api.status import (
    Capacity,
    Interval,
    OptimizedModelStatus,
    Phase,
    State,
    TargetStatus,
)
from kiln.api.verdict import verdict
from kiln.builder.report import render_html
from tests.unit.test_report_and_summary import _cand

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        CHROMIUM is None, reason="no chromium: `make test` installs it from Debian's packages"
    ),
]
WIDTH = 1280

MEASURE = """<script>
const box = (e) => e.getBoundingClientRect();
const svgs = [...document.querySelectorAll('svg')].map((svg) => {
  const frame = box(svg);
  return {width: frame.width, texts: [...svg.querySelectorAll('text')].map((t) => {
    const r = box(t);
    return {text: t.textContent, left: r.left - frame.left, right: r.right - frame.left,
            size: parseFloat(getComputedStyle(t).fontSize)};
  }), bars: [...svg.querySelectorAll('rect')].map((r) => ({left: box(r).left - frame.left,
      width: box(r).width, fill: r.getAttribute('fill')}))};
});
const layout = {scrollWidth: document.documentElement.scrollWidth, innerWidth: innerWidth,
  verdictTop: box(document.querySelector('.verdict')).top,
  firstTableTop: box(document.querySelector('table')).top, svgs: svgs};
document.body.insertAdjacentHTML('beforeend',
  '<pre id="kiln-layout">' + JSON.stringify(layout) + '</pre>');
</script>"""


def busy_gpu_target() -> TargetStatus:
    """Every GPU candidate, the long names, a failed gate and a wide range of numbers."""
    names = [
        ("pytorch-cuda-fp32", Backend.PYTORCH, Precision.FP32, 1.0, True),
        ("aotinductor-cuda-fp32", Backend.AOTINDUCTOR, Precision.FP32, 2.4, True),
        ("aotinductor-cuda-fp16", Backend.AOTINDUCTOR, Precision.FP16, 3.9, True),
        ("onnxruntime-cuda-fp32", Backend.ONNXRUNTIME, Precision.FP32, 1.8, True),
        ("onnxruntime-cuda-fp16", Backend.ONNXRUNTIME, Precision.FP16, 3.1, True),
        ("tensorrt-cuda-fp16", Backend.TENSORRT, Precision.FP16, 5.2, True),
        ("tensorrt-cuda-int8", Backend.TENSORRT, Precision.INT8, 1838.5, False),
    ]
    candidates = [
        _cand(n, b, x, passed=ok).model_copy(
            update={
                "precision": p,
                "device": "cuda",
                "speedup_interval": Interval(low=x * 0.97, high=x * 1.03),
            }
        )
        for n, b, p, x, ok in names
    ]
    return TargetStatus(
        name="NVIDIA-H100-80GB-HBM3",
        device="cuda",
        state=State.OK,
        baseline="pytorch-cuda-fp32",
        selected="tensorrt-cuda-fp16",
        selection_reason="highest throughput; " + "; ".join(f"{n} reason" for n, *_ in names),
        candidates=candidates,
        capacity=Capacity(
            target_throughput=12000,
            utilization=0.8,
            batch_size=8,
            baseline_replicas=150,
            selected_replicas=29,
            monthly_savings=353_320.0,
        ),
    )


def layout_of(page: Path) -> dict[str, Any]:
    assert CHROMIUM is not None
    measured = page.with_name("measured.html")
    measured.write_text(page.read_text().replace("</body>", MEASURE + "</body>"))
    common = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--window-size={WIDTH},900"]
    dom = subprocess.run(
        [*common, "--dump-dom", measured.as_uri()], capture_output=True, text=True, timeout=120
    ).stdout
    # The last match: the first is the script's own text.
    found = re.findall(r'<pre id="kiln-layout">(.*?)</pre>', dom)
    assert found, dom[-2000:]
    shot = page.with_suffix(".png")
    subprocess.run(
        [*common, f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=120
    )
    assert shot.stat().st_size > 10_000  # a rendered page, not a blank one
    layout: dict[str, Any] = json.loads(html.unescape(found[-1]))
    return layout


def test_the_report_reads_well_in_a_browser(tmp_path: Path) -> None:
    status = OptimizedModelStatus(
        phase=Phase.READY,
        summary="5.20x tensorrt-cuda-fp16 on NVIDIA-H100-80GB-HBM3",
        targets=[busy_gpu_target()],
    )
    page = tmp_path / "report.html"
    page.write_text(render_html("a-model-with-a-long-name", status, verdict(status, Selection())))
    layout = layout_of(page)
    assert layout["verdictTop"] < layout["firstTableTop"]  # the verdict is read first
    assert layout["scrollWidth"] <= layout["innerWidth"], layout  # no sideways scrolling
    (chart,) = layout["svgs"]
    bar_start = min(bar["left"] for bar in chart["bars"])
    # Scaled to the verified candidates: the selected one (green) is the widest of them, and
    # an absurd number from a failed gate (red) does not squash it.
    selected = next(bar for bar in chart["bars"] if bar["fill"] == "#2e7d32")
    assert selected["width"] == max(
        bar["width"] for bar in chart["bars"] if bar["fill"] != "#c62828"
    )
    assert selected["width"] > 200
    for text in chart["texts"]:
        assert text["size"] >= 11, text
        assert text["left"] >= 0, f"clipped: {text}"
        assert text["right"] <= chart["width"], f"clipped: {text}"
        if text["left"] < bar_start:  # a candidate's name, left of the bars
            assert text["right"] < bar_start, f"overlaps its bar: {text}"
