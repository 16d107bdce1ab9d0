"""The export half of the flow, once per model digest: fetch, check, export to ONNX, check
parity with PyTorch, quantize once to Q/DQ, convert to FP16 for GPU targets, and compute the
FP32 reference outputs every candidate is judged against.

Inputs are checked first (spec, source, calibration and validation sets, the holdout) so a
bad input fails in seconds, before any export runs."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import onnx
import onnxruntime

from kiln.api.errors import KilnError
from kiln.api.keys import cache_key
from kiln.api.spec import CalibrationMethod, OptimizedModelSpec, Precision, Quantizer, SourceFormat
from kiln.api.status import GateData, State
from kiln.builder.calibration import SampleSet, fetch_calibration, fetch_validation, iter_samples
from kiln.builder.context import BuildContext
from kiln.builder.export import export_onnx, export_settings
from kiln.builder.feeds import fit_lengths
from kiln.builder.fetch import FetchedSource, fetch_source
from kiln.builder.fp16 import convert_fp16
from kiln.builder.gate_samples import GateSet, Split, gate_set, plan
from kiln.builder.nncf_quantize import quantize_qdq_nncf
from kiln.builder.onnx_model import check_onnx_signature, fold_source_constants, load_onnx
from kiln.builder.quantize import ACTIVATION_BUDGET, quantize_qdq
from kiln.builder.stages import StageFailedError, StageResult, timed
from kiln.builder.torch_source import TorchModel, check_torch_signature, load_torch_module
from kiln.builder.verify import compare
from kiln.runtime.base import Array, Feeds, infer
from kiln.runtime.ort_runner import OrtRunner
from kiln.runtime.torch_runner import TorchRunner

MODEL_FILE = "model.onnx"


@dataclass(frozen=True)
class ModelArtifact:
    key: str
    path: Path
    uri: str
    cached: bool
    # What its manifest records about how it was made (a reused one's, from storage).
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Prepared:
    source: FetchedSource
    model: TorchModel | None  # None for ONNX sources
    onnx: ModelArtifact
    calibration: SampleSet | None
    gate: GateSet
    references: list[list[Array]]
    quantizer: Split | None = None  # what the quantizer may read; None: nothing to quantize
    qdq: ModelArtifact | None = None
    qdq_error: str | None = None
    fp16: ModelArtifact | None = None
    fp16_error: str | None = None
    stages: list[StageResult] = field(default_factory=list)

    @property
    def qdq_scope(self) -> str | None:
        """What made the Q/DQ model (NNCF's scheme) and what it holds where it is not every
        op (quantize.NARROWED); None for ONNX Runtime's on every op."""
        return self.qdq.meta.get("scope") if self.qdq else None

    @property
    def samples(self) -> list[Feeds]:
        """The samples the gates and the benchmark run on (`gate.source` says which)."""
        return self.gate.samples


def _ort_version() -> str:
    return str(onnxruntime.__version__)


def _quantizer_version(quantizer: Quantizer) -> str:
    """What made the Q/DQ model, for its key. ONNX Runtime's histograms merged chunk by chunk
    differ a little from one pass over the whole set, so the rule that sizes the chunks is
    part of it; NNCF reads one sample at a time."""
    if quantizer is Quantizer.NNCF:
        import importlib.metadata

        return f"nncf {importlib.metadata.version('nncf')}"
    return f"onnxruntime, chunks by activation bytes, {ACTIVATION_BUDGET >> 20} MiB"


def model_artifact(
    ctx: BuildContext,
    stage: StageResult | None,
    key: str,
    build: Any,
    meta: dict[str, Any],
    name: str = MODEL_FILE,
    companions: tuple[str, ...] = (),
) -> ModelArtifact:
    """Reuse `key` from storage when complete, else build it locally and publish it (the
    manifest last). `build(out)` writes `name` and the `companions` beside it (an IR's
    weights), and may add to `meta` before it is published."""
    uri = ctx.artifacts.location(key, name).uri
    stored = None if ctx.force else ctx.artifacts.manifest(key)
    if stored is not None:
        if stage is not None:
            stage.cached = True
        for other in companions:
            ctx.artifacts.fetch(key, other)  # beside it: what is loaded with it
        path = ctx.artifacts.fetch(key, name)
        return ModelArtifact(key, path, uri, True, stored.get("meta") or {})
    out = ctx.work_dir / key / name
    out.parent.mkdir(parents=True, exist_ok=True)
    build(out)
    files = {name: out} | {other: out.parent / other for other in companions}
    ctx.artifacts.publish(key, files, meta)
    return ModelArtifact(key, out, uri, False, meta)


def prepare(ctx: BuildContext, want_fp16: bool) -> Prepared:
    spec = ctx.spec
    stages: list[StageResult] = []

    with (
        ctx.reporter.step("fetch source, calibration and validation sets"),
        timed(StageResult("fetch")) as st,
    ):
        source = fetch_source(ctx)
        calibration = fetch_calibration(ctx) if spec.calibration is not None else None
        validation = fetch_validation(ctx)
        quantizer = plan(spec, calibration, validation)
    stages.append(st)

    gate = gate_set(spec, calibration, validation, quantizer)
    samples = gate.samples
    onnx_source = spec.source.resolved_format() is SourceFormat.ONNX
    model: TorchModel | None = None
    with ctx.reporter.step("load and check the model"), timed(StageResult("check")) as st:
        if onnx_source:
            source = _with_constants(ctx, source)
            check_onnx_signature(load_onnx(source.path, "spec.source.uri"), spec)
        else:
            module = load_torch_module(spec, source.path, ctx.base_dir)
            # The user's own samples, where there are any: made-up integers may be ids the
            # model's vocabulary does not have.
            examples = samples if gate.data is not GateData.NOISE else None
            model = check_torch_signature(module, spec, examples)
    stages.append(st)
    references = _references(ctx, model, source.path, samples)

    with ctx.reporter.step("export to ONNX"), timed(StageResult("export")) as st:
        settings = export_settings(spec) if not onnx_source else {"asIs": True}
        key = cache_key("onnx", model=source.digest, settings=settings)

        def build_onnx(out: Path) -> None:
            if model is None:  # an ONNX source is used as it is
                out.write_bytes(source.path.read_bytes())
                return
            note = export_onnx(model, spec, out)
            if note is not None:
                st.detail["exporter"] = note
                ctx.reporter.log(f"export: {note}")
            check_onnx_signature(load_onnx(out, "exported model"), spec)
            _check_parity(ctx, out, samples, references, st)

        onnx_model = model_artifact(
            ctx, st, key, build_onnx, {"stage": "export", "source": source.uri, **settings}
        )
    stages.append(st)

    prepared = Prepared(
        source, model, onnx_model, calibration, gate, references, quantizer, stages=stages
    )
    if prepared.quantizer is not None:
        _quantize(ctx, prepared)
    if want_fp16:
        _fp16(ctx, prepared)
    return prepared


def _with_constants(ctx: BuildContext, source: FetchedSource) -> FetchedSource:
    """An ONNX source with the spec's constants folded in (a copy in the work folder), or
    the source itself when there are none: what every stage then treats as the source."""
    if not ctx.spec.constants:
        return source
    model = fold_source_constants(load_onnx(source.path, "spec.source.uri"), ctx.spec.constants)
    out = ctx.work_dir / "source" / source.path.name
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out))
    return replace(source, path=out)


def _references(
    ctx: BuildContext, model: TorchModel | None, source: Path, samples: list[Feeds]
) -> list[list[Array]]:
    reference: Any
    if model is not None:
        reference = TorchRunner("reference", model.module, model.call, "cpu")
    else:
        reference = OrtRunner("reference", source, ctx.spec.outputs, "cpu")
    return [infer(reference, s) for s in samples]


def _check_parity(
    ctx: BuildContext,
    model: Path,
    samples: list[Feeds],
    references: list[list[Array]],
    stage: StageResult,
) -> None:
    runner = OrtRunner("parity", model, ctx.spec.outputs, "cpu")
    outputs = [infer(runner, s) for s in samples]
    result = compare(outputs, references, ctx.spec.outputs, ctx.spec.accuracy, Precision.FP32)
    stage.detail["parity"] = f"max abs error {result.max_abs_error:.3g}"
    if not result.passed:
        stage.state = State.FAILED
        stage.reason = (
            "ONNX Runtime output of the exported model differs from PyTorch beyond "
            f"spec.accuracy ({result.criterion}; max abs error {result.max_abs_error:.3g})"
        )
        raise StageFailedError(stage)


def _quantize(ctx: BuildContext, prepared: Prepared) -> None:
    cal = ctx.spec.calibration
    assert cal is not None
    assert prepared.calibration is not None
    assert prepared.quantizer is not None
    calibration, quantizer = prepared.calibration, prepared.quantizer
    key = cache_key(
        "qdq",
        onnx=prepared.onnx.key,
        calibration=calibration.digest,
        samples=quantizer.calibrate,
        # The samples kept for the gates change what the quantizer reads.
        heldOut=list(quantizer.held_out),
        quantizer=_quantizer_version(cal.quantizer_used()),
        method=cal.method_label(),
        percentile=cal.percentile,
        onnxruntime=_ort_version(),
    )
    label = f"{cal.quantizer_used().value}, {cal.method_label()}"
    with (
        ctx.reporter.step(
            f"quantize to Q/DQ INT8 ({label}, {quantizer.calibrate} samples)",
            total=quantizer.calibrate,
        ) as step,
        timed(StageResult("quantize")) as st,
    ):
        st.detail["samples"] = (
            f"{quantizer.calibrate} calibrated on, {len(quantizer.held_out)} held out"
        )
        # Written by the build before it is published: what the Q/DQ model holds.
        meta: dict[str, str | None] = {
            "stage": "quantize",
            "calibration": calibration.uri,
            "quantizer": cal.quantizer_used().value,
            "method": cal.method_label(),
        }

        def build(out: Path) -> None:
            feeds = lambda: quantizer_feeds(ctx.spec, prepared)  # noqa: E731
            if cal.quantizer_used() is Quantizer.NNCF:
                meta["scope"] = quantize_qdq_nncf(
                    prepared.onnx.path, out, feeds, cal, quantizer.calibrate, step
                )
                return
            method = cal.method or CalibrationMethod.ENTROPY
            meta["scope"] = quantize_qdq(
                prepared.onnx.path, out, feeds, method, cal.percentile, step
            )

        try:
            prepared.qdq = model_artifact(ctx, st, key, build, meta)
        except KilnError:  # bad input or a storage outage: not a quantization result
            raise
        except Exception as exc:  # INT8 candidates fail with this reason; others go on
            st.state, st.reason = State.FAILED, _quantize_failure(exc)
            prepared.qdq_error = st.reason
        else:
            # A reused model says what it holds from its manifest, as a new one does.
            st.reason = prepared.qdq_scope
    prepared.stages.append(st)


def _quantize_failure(exc: Exception) -> str:
    if isinstance(exc, ImportError):  # an install without NNCF (it is in the builder extra)
        return (
            f"quantization failed: {exc.name or exc} is not installed (install Kiln's builder "
            "extra, or set calibration.quantizer: onnxruntime)"
        )
    return f"quantization failed: {exc}"


def quantizer_feeds(spec: OptimizedModelSpec, prepared: Prepared) -> Iterator[Feeds]:
    """The samples every quantizer reads (ONNX Runtime's and NNCF's alike, so their INT8 models
    compare on the same data): the calibration set in shard order, the gates' samples left
    out, each cut or repeated to the lengths the engines are tuned for, because ONNX Runtime's
    calibrators stack the activations of many samples and they must share one shape."""
    assert prepared.calibration is not None
    assert prepared.quantizer is not None
    quantizer = prepared.quantizer
    opt = {name: dim.optimal for name, dim in spec.dims().items()}
    read = iter_samples(prepared.calibration, spec, quantizer.calibrate, quantizer.skip)
    return (fit_lengths(s, spec.inputs, opt) for s in read)


def _fp16(ctx: BuildContext, prepared: Prepared) -> None:
    key = cache_key("fp16", onnx=prepared.onnx.key, onnxruntime=_ort_version())
    with ctx.reporter.step("convert to FP16 ONNX"), timed(StageResult("fp16")) as st:
        try:
            prepared.fp16 = model_artifact(
                ctx, st, key, lambda out: convert_fp16(prepared.onnx.path, out), {"stage": "fp16"}
            )
        except Exception as exc:
            st.state, st.reason = State.FAILED, f"FP16 conversion failed: {exc}"
            prepared.fp16_error = st.reason
    prepared.stages.append(st)
