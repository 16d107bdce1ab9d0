"""The build half of the flow, once per target (CPU or a GPU type): build every candidate,
check its accuracy, benchmark all of them side by side against the baseline in this one run,
select, and publish result.json under the target's cache key."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import replace

from kiln.api.keys import cache_key
from kiln.api.layout import MODEL_DOCUMENT, RESULT_FILE
from kiln.api.select import reselect, unsure
from kiln.api.spec import Backend, OptimizedModelSpec
from kiln.api.status import AccuracyGate, BatchBenchmark, Environment, TargetStatus, shape_text
from kiln.builder.aoti import package_key
from kiln.builder.assemble import Found, measured_target, skipped_target
from kiln.builder.benchmark import measure_rounds, results
from kiln.builder.candidates import CandidatePlan, baseline_of, plan_candidates
from kiln.builder.context import BuildContext
from kiln.builder.engines import build_candidate, error_text, model_for
from kiln.builder.environment import Capabilities, TargetPlan, environment
from kiln.builder.feeds import fit_lengths, stack
from kiln.builder.openvino import ir_key
from kiln.builder.prepare import Prepared
from kiln.builder.verify import blind_gates, compare
from kiln.runtime.base import Runner, infer
from kiln.runtime.cpu_isa import cpu_flags, openvino_isa
from kiln.runtime.threads import apply_torch_threads, available_threads


def candidate_key(
    spec: OptimizedModelSpec, plan: CandidatePlan, prepared: Prepared, env: Environment
) -> str:
    """Everything a candidate's measurement depends on: the model it runs (the ONNX model, or
    for AOTInductor the package's own key, which covers the CPU's instruction sets)."""
    model, _ = model_for(plan, prepared)
    onnx_based = plan.backend in (Backend.ONNXRUNTIME, Backend.TENSORRT)
    built_from = model.key if model is not None and onnx_based else None
    isa = None
    if plan.backend is Backend.AOTINDUCTOR and plan.skip is None:
        threads = env.cpu_threads or 1
        built_from = package_key(spec, plan, prepared, env.device_type, threads)
    if plan.backend is Backend.OPENVINO and plan.skip is None:
        built_from, isa = ir_key(spec, plan, prepared), openvino_isa(cpu_flags())
    return cache_key(
        "cand",
        name=plan.name,
        model=built_from,
        source=prepared.source.digest,
        device=env.device_type,
        isa=isa,
        torch=env.torch,
        onnxruntime=env.onnxruntime,
        openvino=env.openvino,
        tensorrt=env.tensorrt,
        cuda=env.cuda,
    )


def result_key(
    ctx: BuildContext, target: TargetPlan, env: Environment, found: list[Found], prepared: Prepared
) -> str:
    spec = ctx.spec
    return cache_key(
        "result",
        target=target.name,
        environment=env.to_wire(),
        candidates=sorted((f.plan.name, f.key, f.plan.skip) for f in found),
        calibration=prepared.calibration.digest if prepared.calibration else None,
        # Which samples the gates ran on: the validation set, or which ones were held out.
        gate=prepared.gate.identity,
        # Every batch size is measured; which one decides is selection's business, not the key's.
        batchSizes=spec.batch_sizes,
        accuracy=spec.accuracy.to_wire(),
        benchmark=spec.benchmark.to_wire(),
    )


def reused(stored: TargetStatus) -> TargetStatus:
    """A stored result served again: the target and every candidate say `cached`, the same
    word the table shows."""
    candidates = [c.model_copy(update={"cached": True}) for c in stored.candidates]
    return stored.model_copy(update={"cached": True, "candidates": candidates})


def build_target(
    ctx: BuildContext, prepared: Prepared, target: TargetPlan, caps: Capabilities
) -> TargetStatus:
    spec = ctx.spec
    env = environment(target, caps, available_threads(spec.benchmark.threads))
    baseline = baseline_of(spec, target.device).name
    plans = plan_candidates(spec, target, caps)
    found = [Found(p, candidate_key(spec, p, prepared, env)) for p in plans]
    if target.skip:
        return skipped_target(target, env, baseline, found)
    key = result_key(ctx, target, env, found, prepared)
    result_uri = ctx.artifacts.location(key, RESULT_FILE).uri
    if not (ctx.force or ctx.remeasure) and ctx.artifacts.manifest(key) is not None:
        ctx.reporter.log(
            f"[{target.name}] unchanged inputs: reusing the stored result {result_uri}"
        )
        stored = TargetStatus.model_validate(ctx.artifacts.read_json(key, RESULT_FILE))
        return reselect(reused(stored), spec)

    started = time.perf_counter()
    threads = env.cpu_threads or 1
    apply_torch_threads(threads)

    def noisy(found: list[Found]) -> bool:
        measured = measured_target(target, env, baseline, found, key, result_uri)
        return unsure(measured, spec)

    found = _measure_all(ctx, found, prepared, target, baseline, threads, noisy)
    measured = measured_target(target, env, baseline, found, key, result_uri).model_copy(
        update={
            "build_seconds": round(time.perf_counter() - started, 3),
            "accuracy_gate": _gate(ctx, prepared, found),
        }
    )
    status = reselect(measured, spec)
    ctx.artifacts.publish(
        key,
        {},
        {"stage": "result", "target": target.name},
        # The model document travels with the result: a server reads its I/O signature there.
        documents={RESULT_FILE: status.to_wire(), MODEL_DOCUMENT: ctx.model.to_wire()},
    )
    return status


def _gate(ctx: BuildContext, prepared: Prepared, found: list[Found]) -> AccuracyGate:
    """Which samples this target's gates ran on, and a warning where a gate is blind."""
    gated = {f.plan.precision for f in found if f.accuracy is not None}
    spec = ctx.spec
    warning = blind_gates(prepared.references, spec.outputs, spec.accuracy, gated)
    return prepared.gate.status(warning)


def _measure_all(
    ctx: BuildContext,
    found: list[Found],
    prepared: Prepared,
    target: TargetPlan,
    baseline: str,
    threads: int,
    noisy: Callable[[list[Found]], bool],
) -> list[Found]:
    """Build, verify and benchmark every candidate that is not skipped; runners are closed
    whatever happens. A measurement too noisy to decide on (`noisy`: a candidate meets
    minSpeedup at its median but not beyond noise) is taken once more, and the second one
    decides: noise that came and went does not keep the baseline, noise that stays does."""
    runners: dict[str, Runner] = {}
    try:
        found = [_built(ctx, f, prepared, target, threads, runners) for f in found]
        found = _verify(ctx, found, runners, prepared, target)
        measured = _benchmark(ctx, found, runners, prepared, target, baseline)
        if not noisy(measured):
            return measured
        ctx.reporter.log(
            f"[{target.name}] a candidate meets minSpeedup at its median but not beyond "
            "noise: measuring again"
        )
        # From `measured`: a runner the first measurement dropped keeps its failure.
        return _benchmark(ctx, measured, runners, prepared, target, baseline)
    finally:
        for runner in runners.values():
            runner.close()


def _built(
    ctx: BuildContext,
    f: Found,
    prepared: Prepared,
    target: TargetPlan,
    threads: int,
    runners: dict[str, Runner],
) -> Found:
    if f.plan.skip:
        return f
    built = build_candidate(ctx, f.plan, prepared, target, threads)
    if built.runner is not None:
        runners[f.plan.name] = built.runner
    return replace(f, built=built, failure=built.failure)


def _drop(runners: dict[str, Runner], name: str) -> None:
    runner = runners.pop(name, None)
    if runner is not None:
        runner.close()


def _verify(
    ctx: BuildContext,
    found: list[Found],
    runners: dict[str, Runner],
    prepared: Prepared,
    target: TargetPlan,
) -> list[Found]:
    out: list[Found] = []
    with ctx.reporter.step(f"[{target.name}] check accuracy", total=len(runners)) as step:
        for f in found:
            runner = runners.get(f.plan.name)
            if runner is None:
                out.append(f)
                continue
            try:
                outputs = [infer(runner, s) for s in prepared.samples]
                spec = ctx.spec
                accuracy = compare(
                    outputs, prepared.references, spec.outputs, spec.accuracy, f.plan.precision
                )
                out.append(replace(f, accuracy=accuracy))
            except Exception as exc:
                _drop(runners, f.plan.name)
                out.append(replace(f, failure=f"inference failed: {error_text(exc)}"))
            step.advance()
    return out


def _benchmark(
    ctx: BuildContext,
    found: list[Found],
    runners: dict[str, Runner],
    prepared: Prepared,
    target: TargetPlan,
    baseline: str,
) -> list[Found]:
    """Every batch size at every benchmark shape: stage the inputs in every runner, then time
    them all in interleaved rounds with the baseline. A runner that fails is dropped for the
    later ones."""
    spec = ctx.spec
    runs: dict[str, list[BatchBenchmark]] = {name: [] for name in runners}
    failures: dict[str, str] = {}
    shapes = spec.benchmark_lengths()
    total = len(spec.batch_sizes) * len(shapes)
    with ctx.reporter.step(f"[{target.name}] benchmark", total=total) as step:
        for batch, lengths in itertools.product(spec.batch_sizes, shapes):
            where = f"batch {shape_text(batch, lengths)}"
            fitted = [fit_lengths(s, spec.inputs, lengths) for s in prepared.samples]
            feeds = stack(fitted, spec.inputs, batch)
            staged: dict[str, Runner] = {}
            for name, runner in list(runners.items()):
                try:
                    runner.prepare(feeds)
                    staged[name] = runner
                except Exception as exc:
                    _drop(runners, name)
                    failures[name] = f"benchmark failed at {where}: {error_text(exc)}"
            rounds = measure_rounds(staged, baseline, spec.benchmark, error_text=error_text)
            for name, t in rounds.timings.items():
                if t.failure is not None:
                    _drop(runners, name)
                    failures[name] = f"benchmark failed at {where}: {t.failure}"
            for name, result in results(rounds, baseline, batch, spec.benchmark).items():
                runs[name].append(result.model_copy(update={"lengths": lengths or None}))
            step.advance()
    return [
        replace(f, benchmarks=runs[f.plan.name], failure=failures.get(f.plan.name, f.failure))
        if f.plan.name in runs
        else f
        for f in found
    ]
