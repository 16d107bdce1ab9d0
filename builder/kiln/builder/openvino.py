"""OpenVINO IRs for CPU targets: the exported ONNX model converted as it is (FP32), or
quantized by NNCF's post-training quantization on the calibration set (INT8), stored under a
content key and reused.

Why NNCF and not the Q/DQ model ONNX Runtime runs: OpenVINO fuses NNCF's FakeQuantize ops
into its own INT8 kernels (VNNI, AMX) and NNCF corrects the biases the rounding shifts, which
kept the lipsync example's error at 4.3e-5 where ONNX Runtime's Q/DQ model had 2.1e-3.

The IR holds no CPU-specific code (OpenVINO compiles it for the CPU when it loads, and caches
that per CPU): its key is what it was made from. What the CPU's vector units make of it is the
measurement's business, whose key (`candidate_key`) names them (`openvino_isa`)."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from kiln.api.keys import cache_key
from kiln.api.spec import OptimizedModelSpec, Precision
from kiln.builder.candidates import CandidatePlan
from kiln.builder.context import BuildContext
from kiln.builder.nncf_quantize import quantize_nncf, ranges_label
from kiln.builder.prepare import ModelArtifact, Prepared, model_artifact, quantizer_feeds
from kiln.runtime.ov_runner import weights_of

IR_FILE = "model.xml"


def ir_precision(precision: Precision) -> Precision:
    """What the IR holds: bf16 is the FP32 IR compiled with a bf16 hint, so the two share it."""
    return Precision.FP32 if precision is Precision.BF16 else precision


def ir_key(spec: OptimizedModelSpec, plan: CandidatePlan, prepared: Prepared) -> str:
    """Everything the IR depends on: the ONNX model, OpenVINO's (and for INT8 NNCF's)
    version, and for INT8 the samples calibrated on."""
    import importlib.metadata

    settings: dict[str, Any] = {"precision": ir_precision(plan.precision).value}
    if plan.precision is Precision.INT8:
        calibration, quantizer = prepared.calibration, prepared.quantizer
        settings |= {
            "nncf": importlib.metadata.version("nncf"),
            "calibration": calibration.digest if calibration else None,
            "samples": quantizer.calibrate if quantizer else None,
            "heldOut": list(quantizer.held_out) if quantizer else None,
            "scheme": "nncf.quantize, transformer scheme where attention",
            "ranges": ranges_label(spec.calibration) if spec.calibration else None,
            "percentile": spec.calibration.percentile if spec.calibration else None,
        }
    return cache_key(
        "openvino",
        onnx=prepared.onnx.key,
        openvino=importlib.metadata.version("openvino"),
        settings=settings,
    )


def openvino_ir(ctx: BuildContext, plan: CandidatePlan, prepared: Prepared) -> ModelArtifact:
    """The stored IR for this candidate, or a new one converted (and quantized) and published:
    weights first, the manifest last. INT8 needs `prepared.quantizer` (a calibration set)."""
    meta: dict[str, Any] = {"stage": "openvino", "precision": ir_precision(plan.precision).value}
    weights = weights_of(Path(IR_FILE)).name
    build = partial(_convert, ctx, plan, prepared, meta=meta)  # build(xml) writes the IR
    key = ir_key(ctx.spec, plan, prepared)
    return model_artifact(ctx, None, key, build, meta, IR_FILE, (weights,))


def _convert(
    ctx: BuildContext, plan: CandidatePlan, prepared: Prepared, xml: Path, meta: dict[str, Any]
) -> None:
    import openvino as ov

    model = ov.convert_model(str(prepared.onnx.path))
    if plan.precision is Precision.INT8:
        model, meta["scope"] = _quantize(model, prepared, ctx)
    # Weights stay FP32: compressing them to FP16 (the converter's default) would change what
    # an FP32 candidate computes.
    ov.save_model(model, str(xml), compress_to_fp16=False)


def _quantize(model: Any, prepared: Prepared, ctx: BuildContext) -> tuple[Any, str]:
    assert prepared.quantizer is not None
    assert ctx.spec.calibration is not None
    cal, total = ctx.spec.calibration, prepared.quantizer.calibrate
    # NNCF's own preset (asymmetric activations for transformers): OpenVINO takes either form.
    samples = partial(quantizer_feeds, ctx.spec, prepared)
    return quantize_nncf(model, samples, cal, total, None, symmetric=False, cpu=True)
