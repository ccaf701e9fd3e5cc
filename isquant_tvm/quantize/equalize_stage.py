"""The `--equalize` stage of quantize_model (issue 20): the graph side of rounding/equalize.py.

Before the weights are rounded: the folded graph's channel links (fold/chains.py) and each conv's
BatchNorm statistics (ranges/batchnorm.py) go to the numpy equalizer; the rescaled weights and biases
are written back into the float module (same vars), and the statistics are rescaled with them, so the
BatchNorm activation ranges describe the equalized tensors. After the rounding: the analytic bias
correction of every layer whose input has propagated BatchNorm moments, written into the module the
quantize pass reads its biases from (auto: only where the input statistics are not mixed by a residual
add and the correction removes >= AUTO_SHARE of the layer's expected rounding error, measured figures in
rounding/equalize.py; every layer's row says whether it ran and why not). The float module the report and evaluation compare against is
the equalized one *before* bias correction (the same function as the original graph up to the ReLU6
policy and bias absorption, see rounding/equalize.py)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import tvm

from ..fold import chains
from ..fold.layers import Layer, find_layers
from ..ranges import batchnorm as bn_ranges
from ..rounding import equalize as eqz
from ..util import tvm_compat

EQUALIZE_MODES = eqz.MODES
#: auto's bias correction threshold: below 1 % of the expected error the correction removes less
#: than its statistics' own error can add (MobileNetV2's mixed-input expand convs sit at 0.6-1.1 %)
AUTO_SHARE = 0.01


@dataclass
class EqualizeStage:
    float_mod: tvm.IRModule  # equalized (and bias-absorbed), not yet bias-corrected
    layers: list[Layer]
    params: list[eqz.LayerParams]
    bn: list[tuple[np.ndarray, np.ndarray] | None] | None  # per conv, graph order (None: no BatchNorm)
    report: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


def equalize_stage(model: Any, float_mod: tvm.IRModule, layers: Sequence[Layer], mode: str,
                   granularity: str = "per-tensor", clip_policy: str = "skip",
                   absorb: bool = True) -> EqualizeStage | None:
    """Equalize `float_mod`'s layer chains (mode auto / on); None for off."""
    if mode == "off":
        return None
    func = float_mod["main"]
    adds = chains.bias_adds(func, layers)
    convs = [layer for layer in layers if layer.kind == "conv2d"]
    bn_list = bn_ranges.conv_batchnorms(model.mod) if getattr(model, "mod", None) is not None else []
    bn_of = {layer.id: s for layer, s in zip(convs, bn_list)} if len(bn_list) == len(convs) else {}
    params = [eqz.LayerParams(layer.weight, tvm_compat.const_value(adds[layer.id][1]).reshape(-1)
                              if layer.id in adds else None, layer.groups, bn_of.get(layer.id), layer.name)
              for layer in layers]
    index = {layer.id: i for i, layer in enumerate(layers)}
    glinks = chains.find_links(func, layers)
    links = [eqz.Link(index[g.a], index[g.b], g.act, g.hi, g.b_padded) for g in glinks]
    # per-channel weight scales already fit every channel: auto's measure would see only the
    # activation side, so auto leaves per-channel models alone (on still equalizes)
    run_mode = "off" if granularity == "per-channel" and mode == "auto" else mode
    res = eqz.equalize(params, links, mode=run_mode, clip_policy=clip_policy, absorb=absorb)
    weights = {layer.id: p.weight for layer, p, src in zip(layers, res.layers, params)
               if not np.array_equal(p.weight, src.weight)}
    biases = {layer.id: p.bias for layer, p, src in zip(layers, res.layers, params)
              if p.bias is not None and not np.array_equal(p.bias, src.bias)}
    new_mod = chains.rewrite_constants(float_mod, layers, weights, biases) if weights or biases else float_mod
    new_layers = find_layers(new_mod["main"], getattr(model, "layer_names", ()))
    bn_new = [res.layers[index[c.id]].bn for c in convs] if bn_of else None
    report = []
    kept = sum(res.kept)
    for row, layer in zip(res.report, layers):
        report.append({"id": layer.id, **row})
    for lk, g, s, k in zip(links, glinks, res.scales, res.kept):
        rep = report[lk.a]
        rep["link"] = {"to": layers[lk.b].name, "act": g.act, "through": list(g.through), "kept": k,
                       "scale_min": float(np.min(s)), "scale_max": float(np.max(s))}
    summary = {"mode": mode, "links": len(links), "links_rescaled": kept, "iterations": res.iterations,
               "components": len(res.components), "components_kept": sum(c["kept"] for c in res.components)}
    # auto's decisions, per component of links: its layers and the measured score before / after
    summary["decisions"] = [{"layers": c["layers"], "kept": c["kept"],
                             "weights": [round(c["score_before"]["weights"], 8), round(c["score_after"]["weights"], 8)],
                             "activations": [round(c["score_before"]["activations"], 8),
                                             round(c["score_after"]["activations"], 8)]}
                            for c in res.components]
    if run_mode != mode:
        summary["note"] = "per-channel weights: auto leaves equalization off"
    return EqualizeStage(new_mod, new_layers, [eqz.LayerParams(p.weight, p.bias, p.groups, p.bn, p.name)
                                               for p in res.layers], bn_new, report, summary)


def bias_correct(stage: EqualizeStage, weights: Mapping[str, Any]) -> tvm.IRModule:
    """The module the quantize pass reads: `stage.float_mod` with every bias corrected for the expected
    rounding error of its layer's integer weights (`weights`: layer id -> QuantizedWeight)."""
    layers, func = stage.layers, stage.float_mod["main"]
    rows = {row["id"]: row for row in stage.report}
    adds = chains.bias_adds(func, layers)
    dists: dict[Any, Any] = {}
    if stage.bn is not None and any(s is not None for s in stage.bn):
        conv_vars = [layer.var for layer in layers if layer.kind == "conv2d"]
        dists = bn_ranges.propagate(stage.float_mod, conv_vars, stage.bn)
    inputs = chains.layer_inputs(func, layers)
    biases = {}
    corrected = 0
    for layer, params in zip(layers, stage.params):
        row = rows[layer.id]
        var = inputs.get(layer.id)
        if layer.id not in adds:
            row["bias_correction"] = "no bias add"
            continue
        if var is None or var not in dists:
            row["bias_correction"] = "no input statistics"
            continue
        mean, variance = dists[var].moments()
        if mean.size != eqz.in_channels(params):
            row["bias_correction"] = "input statistics do not match the layer's channels"
            continue
        deq = weights[layer.id].dequantize()
        share = eqz.bias_correction_share(params, deq, mean, variance)
        row["bias_error_share"] = share
        row["input_mixed"] = bool(dists[var].mixed)
        if stage.summary.get("mode") == "auto" and dists[var].mixed:
            row["bias_correction"] = "auto: skipped, input statistics mixed by a residual add / concat"
            continue
        if stage.summary.get("mode") == "auto" and share < AUTO_SHARE:
            row["bias_correction"] = f"auto: skipped, removes {share:.1%} of the expected error (< {AUTO_SHARE:.0%})"
            continue
        bias = tvm_compat.const_value(adds[layer.id][1]).reshape(-1).astype(np.float64)
        delta = eqz.bias_correction(params, deq, mean)
        biases[layer.id] = (bias + delta).astype(np.float32)
        row["bias_correction"] = "ran"
        row["bias_shift_max"] = float(np.max(np.abs(delta)))
        corrected += 1
    stage.summary["bias_corrected_layers"] = corrected
    return chains.rewrite_constants(stage.float_mod, layers, {}, biases) if biases else stage.float_mod
