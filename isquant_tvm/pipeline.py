"""The quantization stage of `compile`: weights (ISQuant/SQuant rounding) -> activation ranges ->
qnn-level graph (quantize/rewrite.py) -> legalized integer Relax (legalize/legalize.py)."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import tvm
from tqdm.auto import tqdm

from .rounding import isquant
from .ranges import activation as ranges
from .errors import IsquantError
from .frontend import prequant as frontend_prequant
from .frontend.loader import ImportedModel
from .fold.layers import find_layers
from .legalize.legalize import legalize
from .quantize import prequant
from .quantize import float_regions
from .quantize.rewrite import quantize_module
from .quantize.equalize_stage import EQUALIZE_MODES, bias_correct, equalize_stage

log = logging.getLogger(__name__)

ROUNDINGS = ("squant", "squant-e", "squant-k", "squant-c", "rtn")


@dataclass
class QuantizedModel:
    mod: tvm.IRModule  # legalized integer module, ready to build
    qnn_mod: tvm.IRModule  # qnn-level module (named qnn ops), for printing and the numpy reference
    report: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    tensor_map: list = field(default_factory=list)
    float_mod: tvm.IRModule | None = None


def quantize_model(model: ImportedModel, float_mod: tvm.IRModule, target: Any = None, rounding: str = "squant",
                   granularity: str = "per-tensor", weight_bits: int = 8, activation_ranges: str = "auto",
                   calibration: str | None = None, calibration_method: str = "percentile", calibration_count: int = 64,
                   synthetic_count: int = 8, sigma_factor: float = 25.0, input_range: float | None = None,
                   synthetic: str = "auto", range_rule: str = "auto", bn_rule: str = "ksigma", bn_k: float = 6.0,
                   progress: bool = True, only_reference: bool = False, preprocess: str = "auto",
                   float_nodes: Sequence[str] = (), equalize: str = "auto") -> QuantizedModel:
    """Quantize a BN-folded float module to a legalized integer module plus a per-layer report.
    `float_nodes`: ONNX node names kept float (onnxruntime's nodes_to_exclude)."""
    if rounding not in ROUNDINGS:
        raise IsquantError(f"--rounding must be one of {', '.join(ROUNDINGS)}, got {rounding!r}")
    if equalize not in EQUALIZE_MODES:
        raise IsquantError(f"--equalize must be one of {', '.join(EQUALIZE_MODES)}, got {equalize!r}")
    if weight_bits != 8:
        raise IsquantError("the integer graph runs int8 weights: --weight-bits must be 8 for compile"
                           " (lower widths are available in `quantize` for research)")
    timings: dict[str, float] = {}
    forward_error: str | None = None
    start = time.perf_counter()
    layers = find_layers(float_mod["main"], model.layer_names)
    if not layers:
        raise IsquantError(f"{model.source}: no conv2d or dense layer with constant weights to quantize")
    eq = equalize_stage(model, float_mod, layers, equalize, granularity)
    if eq is not None:
        float_mod, layers = eq.float_mod, eq.layers
    timings["equalize_s"] = time.perf_counter() - start
    start = time.perf_counter()
    weights: dict[str, isquant.QuantizedWeight] = {}
    layer_reports = []
    for layer in layers:
        qw = isquant.quantize_weight(layer.weight, bits=weight_bits, granularity=granularity, method=rounding)
        weights[layer.id] = qw
        layer_reports.append({"id": layer.id, "name": layer.name, "kind": layer.kind,
                              "shape": list(layer.weight.shape), "groups": layer.groups,
                              "weight": isquant.weight_metrics(layer.weight, qw)})
    quant_float_mod = bias_correct(eq, weights) if eq is not None else float_mod
    timings["weights_s"] = time.perf_counter() - start
    onnx_nodes = float_regions.with_layers(model.onnx_nodes, layers)
    float_vars = float_regions.resolve_float_nodes(float_nodes, onnx_nodes, model.source) if float_nodes else set()

    start, cpu_start = time.perf_counter(), time.process_time()
    shapes = [tuple(i.shape) for i in model.inputs]
    if activation_ranges == "calibration" or calibration is not None:
        if calibration is None:
            raise IsquantError("--activation-ranges calibration needs --calibration PATH (images folder or .npz)")
        from .ranges.datasets import load_calibration

        if calibration_count < 1:
            raise IsquantError(f"--calibration-count must be at least 1, got {calibration_count}")
        batches = load_calibration(calibration, model.inputs, limit=calibration_count, preprocess=preprocess)
        method = calibration_method
        pct = 99.99 if method == "percentile" else None
    else:
        from .ranges import datafree

        plan = datafree.plan(model.mod, float_mod, shapes, activation_ranges, synthetic, range_rule, synthetic_count)
        batches, method, pct = plan.batches, plan.method, None
        timings.update(plan.timings)
    calibrated = method in ("minmax", "percentile", "calibration-mse")
    bar = tqdm(total=len(batches), desc="activation ranges", unit="batch", disable=not progress or None, leave=False)
    stats = ranges.collect(float_mod, batches, percentile=pct, progress=bar)
    bar.close()
    chosen = ranges.choose(stats, method, sigma_factor)
    if activation_ranges in ("auto", "bn") and not calibrated:
        from .ranges import batchnorm as bn_ranges

        bn = eq.bn if eq is not None and eq.bn is not None else bn_ranges.conv_batchnorms(model.mod)
        conv_vars = [layer.var for layer in layers if layer.kind == "conv2d"]
        if len(bn) == len(conv_vars) and any(s is not None for s in bn):
            dists = bn_ranges.propagate(float_mod, conv_vars, bn, k=bn_k if bn_rule == "ksigma" else 6.0)
            forward = None
            if any(d.mixed for d in dists.values()):
                t0 = time.perf_counter()
                try:
                    forward = bn_ranges.matched_forward(float_mod, conv_vars, bn, shapes)
                    timings["matched_forward_s"] = time.perf_counter() - t0
                except Exception as err:  # noqa: BLE001 - a refinement: the propagated ranges still stand
                    forward_error = f"{type(err).__name__}: {err}"
                    log.warning("%s: the BatchNorm-matched forward failed (%s); residual adds keep the propagated"
                                " BatchNorm ranges", model.source, forward_error)
            from_bn = bn_ranges.ranges_from_dists(dists, rule=bn_rule, k=bn_k, forward=forward)
            chosen.update(from_bn)
            method = "bn+" + method
        elif activation_ranges == "bn":
            raise IsquantError(f"{model.source}: --activation-ranges bn needs BatchNorm layers after the convs"
                               " (this model has none, or its exporter folded them); use auto")
    params = list(float_mod["main"].params)
    if input_range is None and params and params[0] in stats:
        s = stats[params[0]]
        input_range = s.percentile if method == "percentile" else s.amax
    timings["ranges_s"] = time.perf_counter() - start
    timings["ranges_cpu_s"] = time.process_time() - cpu_start  # all threads: the load-independent cost

    start = time.perf_counter()
    result = quantize_module(quant_float_mod, layers, weights, chosen, input_range=input_range,
                             float_vars=float_vars, onnx_nodes=onnx_nodes)
    timings["quantize_pass_s"] = time.perf_counter() - start
    start = time.perf_counter()
    legal, lowerings = legalize(result.mod, target, only_reference=only_reference)
    timings["legalize_s"] = time.perf_counter() - start

    by_layer = {t["layer"]: t for t in result.tensors if t["layer"]}
    for rep in layer_reports:
        out = by_layer.get(rep["name"])
        if out:
            rep["output"] = {k: out[k] for k in ("scale", "dtype", "alpha", "rule")}
    summary = {
        "layers": len(layers),
        "rounding": rounding,
        "granularity": granularity,
        "activation_ranges": method,
        "float_fallback_ops": sum(result.fallbacks.values()),
    }
    if calibrated:
        summary["calibration_samples"] = len(batches)
    else:  # data-free: how much to trust the ranges (ranges/datafree.py), for the report and the CLI's hint
        summary["range_confidence"] = plan.confidence
        if not plan.has_bn:
            summary["ranges_note"] = f"synthetic ranges, no BatchNorm statistics used: {plan.source} images"
    if forward_error:
        summary["matched_forward_error"] = forward_error
    if eq is not None:
        summary["equalize"] = eq.summary
    report = {"summary": summary, "layers": layer_reports, "tensors": result.tensors,
              "fallbacks": result.fallbacks, "lowerings": lowerings, "timings": timings,
              "input_range": input_range,
              # issue 15: float ops by ONNX op type and node (fallbacks above: by Relax op)
              "float_nodes": float_regions.float_nodes_report(result.fallback_vars, onnx_nodes),
              "float_nodes_requested": list(float_nodes)}
    if eq is not None:
        report["equalize"] = eq.report
    metadata = {
        "scheme": "symmetric, zero point 0, int8 weights, int8/uint8 activations",
        "rounding": rounding,
        "granularity": granularity,
        "weight_bits": weight_bits,
        "activation_ranges": method,
        "input": {"dtype": "int8", "scale": float(input_range) / 127 if input_range else None},
        "layers": [{"id": r["id"], "name": r["name"], "weight_scale": r["weight"]["scale"],
                    **({"output_scale": r["output"]["scale"], "output_dtype": r["output"]["dtype"]}
                       if "output" in r else {})} for r in layer_reports],
        "float_fallback_ops": result.fallbacks,
    }
    return QuantizedModel(mod=legal, qnn_mod=result.mod, report=report, metadata=metadata,
                          tensor_map=result.tensor_map, float_mod=float_mod)


def quantize_prequantized(model: ImportedModel, target: Any = None, only_reference: bool = False) -> QuantizedModel:
    """The `--quantize auto` stage for a pre-quantized ONNX model (QDQ, or QOperator rewritten to QDQ by
    frontend.load): the integer graph with the model's own parameters (quantize/prequant.py), legalized."""
    proto = getattr(model, "onnx_source", None)  # frontend.load validated it (and rewrote QOperator to QDQ)
    fmt = getattr(model, "prequantized", None)
    if proto is None or fmt is None:
        raise IsquantError(f"{model.source}: not a pre-quantized model (no QuantizeLinear/DequantizeLinear)")
    timings: dict[str, float] = {}
    start = time.perf_counter()
    mod = frontend_prequant.import_qdq(proto, model.inputs, model.source)
    timings["import_s"] = time.perf_counter() - start
    start = time.perf_counter()
    ours = frontend_prequant.isquant_export(proto)  # our own export: the pipeline's multipliers, bit for bit
    result = prequant.build_qnn(mod, exact=ours is not None)
    timings["quantize_pass_s"] = time.perf_counter() - start
    if not result.layers:
        raise IsquantError(f"{model.source}: no quantized conv / matmul found in the {fmt.upper()} model")
    start = time.perf_counter()
    legal, lowerings = legalize(result.mod, target, only_reference=only_reference)
    timings["legalize_s"] = time.perf_counter() - start
    summary = {"quantization": f"model ({fmt})", "layers": len(result.layers),
               "per_channel_layers": sum(len(layer["weight_scale"]) > 1 for layer in result.layers),
               "activation_ranges": "model", "float_fallback_ops": sum(result.fallbacks.values())}
    if ours is not None:  # one line for the CLI; the export's settings in full below
        summary["isquant_export"] = (f"{ours.get('rounding')} {ours.get('granularity')}, ranges"
                                     f" {ours.get('activation_ranges')}, float64 multipliers")
    report = {"summary": summary, "layers": result.layers, "tensors": result.tensors, "fallbacks": result.fallbacks,
              "lowerings": lowerings, "timings": timings, "rewrites": result.rewrites}
    if ours is not None:
        report["isquant_export"] = ours
    metadata = {"scheme": f"the model's own ({fmt}): int8 symmetric weights, int8/uint8 activations with zero points",
                "quantization": "model", "format": fmt, "activation_ranges": "model",
                "layers": result.layers, "float_fallback_ops": result.fallbacks}
    return QuantizedModel(mod=legal, qnn_mod=result.mod, report=report, metadata=metadata, float_mod=mod)
