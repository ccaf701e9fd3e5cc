"""Data-free cross-layer equalization, bias absorption and analytic bias correction (DFQ, Nagel et al.
2019), in numpy only, run before the SQuant flips (which then round the equalized weights).

**Equalization.** Two layers A -> act -> B joined by a positively homogeneous activation (ReLU,
identity) compute the same function when A's output channel i is divided by s_i and B's input channel
i multiplied by s_i: relu(x / s) = relu(x) / s for s > 0. With r1_i = max |A[i]| (A's output channel)
and r2_i = max |B[:, i]| (B's input channel), s_i = sqrt(r1_i / r2_i) makes both sqrt(r1_i r2_i), so
one per-tensor scale fits every channel of both. A depthwise layer has its input and output channel on
the same row, so it can be the B of one link and the A of the next (MobileNetV2's 1x1 -> dw -> 1x1):
the links are swept in graph order until no factor moves by more than `tol` (log scale).

**ReLU6 (clip(0, hi)).** After the rescale, channel i computes min(relu(x), hi * s_i): exact only
where the clip never acts. A per-tensor clip cannot carry per-channel bounds, so the policy
(`clip_policy`) is one of: "skip" (no rescale across a clip), "shrink" (only s_i >= 1: the clip
becomes looser, hi * s_i >= hi, and differs only where the original clip was active, x > hi) or
"full". "shrink" is the default; figures in docs/results.md ("Equalization").

**Hard-swish, sigmoid, anything else** is not positively homogeneous: such a link is not found
(fold/chains.py only walks ReLU, clip(0, hi), identity, zero padding, pools and the pool -> dense
reshape), so MobileNetV3's hard-swish blocks are left as they are; their ReLU links still equalize.

**Bias absorption.** Where the BatchNorm statistics say channel i's pre-activation is N(beta_i,
gamma_i^2), c_i = max(0, beta_i - 3 gamma_i) (identity: c_i = beta_i) moves from A's bias into
B's bias through B's weights (relu(x - c) + c = relu(x) where x >= c). Only where B reads no zero
padding (a padded border would read 0 where it needs -c) and, for a clip, beta + 3 gamma < hi.

**Bias correction.** Rounding changes B's output by E[dW x] = dW E[x]; with E[x] per input channel
(BatchNorm moments propagated through the activations, computed by the caller) that expectation is
subtracted from B's bias. Layers whose input has no statistics are left as they are (reported).

**auto.** Equalization is kept per connected component of links only where a measured score goes
down: the relative weight noise of per-tensor RTN int8 in the *original* parametrization (the
function's error, each equalized tensor mapped back through its factors), input-moment weighted where
the statistics exist, plus the relative noise of the per-tensor activation quantization of each
linked tensor (its range mu + 6 sigma over channels, which equalization can widen). So a component
where the weights gain but the activations lose more stays off.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

__all__ = ["LayerParams", "Link", "EqualizeResult", "equalize", "bias_correction", "MODES", "CLIP_POLICIES"]

MODES = ("auto", "on", "off")
CLIP_POLICIES = ("skip", "shrink", "full")
ABSORB_SIGMAS = 3.0
RANGE_SIGMAS = 6.0  # the pipeline's BatchNorm range rule (mu + 6 sigma)
_S_LIMIT = 1e4  # a factor beyond this means a dead channel on one side: leave it alone


@dataclass
class LayerParams:
    """One conv / dense layer, output channel first (conv OIHW, dense (O, K))."""

    weight: np.ndarray
    bias: np.ndarray | None  # None: the graph has no bias add for this layer
    groups: int = 1
    bn: tuple[np.ndarray, np.ndarray] | None = None  # (gamma, beta): the output is about N(beta, gamma^2)
    name: str = ""

    @property
    def depthwise(self) -> bool:
        return self.weight.ndim == 4 and self.groups > 1 and self.weight.shape[1] == 1 \
            and self.groups == self.weight.shape[0]


@dataclass
class Link:
    """Layer `a`'s output channels feed layer `b`'s input channels through `act` only."""

    a: int
    b: int
    act: str  # "identity" | "relu" | "clip"
    hi: float | None = None  # the clip's upper bound
    b_padded: bool = False  # b reads zero padding (bias absorption is inexact there)


@dataclass
class EqualizeResult:
    layers: list[LayerParams]
    scales: list[np.ndarray]  # per link: A's channel i divided by, B's input channel i multiplied by
    kept: list[bool]  # per link: rescaled (auto may leave a component off)
    iterations: int
    report: list[dict[str, Any]] = field(default_factory=list)  # per layer
    components: list[dict[str, Any]] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------------
# channel ranges and rescaling


def out_range(w: np.ndarray) -> np.ndarray:
    return np.abs(w).reshape(w.shape[0], -1).max(axis=1)


def in_range(layer: LayerParams) -> np.ndarray:
    w = layer.weight
    if layer.depthwise:
        return out_range(w)
    if w.ndim == 2:
        return np.abs(w).max(axis=0)
    return np.abs(w).max(axis=(0, 2, 3))


def _scale_out(w: np.ndarray, s: np.ndarray) -> np.ndarray:
    return w / s.reshape((-1,) + (1,) * (w.ndim - 1)).astype(w.dtype)


def _scale_in(layer: LayerParams, w: np.ndarray, s: np.ndarray) -> np.ndarray:
    if layer.depthwise:
        return w * s.reshape(-1, 1, 1, 1).astype(w.dtype)
    return w * s.reshape((1, -1) + (1,) * (w.ndim - 2)).astype(w.dtype)


def in_channels(layer: LayerParams) -> int:
    return layer.weight.shape[0] if layer.depthwise else layer.weight.shape[1]


def linkable(layers: Sequence[LayerParams], link: Link) -> bool:
    """B must be a plain (groups 1) conv, a depthwise conv or a dense layer whose input channels are A's outputs."""
    a, b = layers[link.a], layers[link.b]
    if b.groups != 1 and not b.depthwise:
        return False
    return in_channels(b) == a.weight.shape[0]


def _pair_factor(a: np.ndarray, b: LayerParams, policy: str, act: str) -> np.ndarray:
    r1, r2 = out_range(a).astype(np.float64), in_range(b).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.sqrt(r1 / r2)
    s = np.where(np.isfinite(s) & (s > 1 / _S_LIMIT) & (s < _S_LIMIT), s, 1.0)
    if act == "clip" and policy == "shrink":
        s = np.maximum(s, 1.0)
    return s


# ----------------------------------------------------------------------------------------------------
# measuring


def _rtn_error(w: np.ndarray) -> np.ndarray:
    """Per-tensor symmetric int8 RTN error (fast: auto's measure, not the deployed rounding)."""
    amax = float(np.abs(w).max())
    if amax == 0:
        return np.zeros_like(w)
    step = np.asarray(amax / 127.0, dtype=w.dtype)
    return np.rint(w / step) * step - w


def sqnr_db(w: np.ndarray, err: np.ndarray) -> float:
    noise = float(np.sum(np.square(err, dtype=np.float64)))
    signal = float(np.sum(np.square(w, dtype=np.float64)))
    return float("inf") if noise == 0 else 10.0 * math.log10(max(signal, 1e-300) / noise)


def _second_moment(bn: tuple[np.ndarray, np.ndarray] | None, act: str, hi: float | None) -> np.ndarray | None:
    if bn is None:
        return None
    gamma, beta = bn
    if act == "identity":
        return beta * beta + gamma * gamma
    x = _rng_normal(beta, gamma)
    x = np.clip(x, 0.0, hi if hi is not None else np.inf)
    return np.mean(x * x, axis=1)


def _rng_normal(mean: np.ndarray, std: np.ndarray, n: int = 256) -> np.ndarray:
    z = np.random.default_rng(0).standard_normal((1, n))
    return mean.reshape(-1, 1) + np.abs(std).reshape(-1, 1) * z


def _in_weights(layer: LayerParams, m2: np.ndarray | None, w: np.ndarray) -> np.ndarray:
    """Per-element weights of layer's weight tensor: its input channel's second moment (or 1)."""
    if m2 is None:
        return np.ones((1,) * w.ndim)
    m2 = np.maximum(m2, 1e-12)
    if layer.depthwise:
        return m2.reshape(-1, 1, 1, 1)
    return m2.reshape((1, -1) + (1,) * (w.ndim - 2))


def _score(orig: Sequence[LayerParams], new: Sequence[LayerParams], out_div: Sequence[np.ndarray],
           in_mul: Sequence[np.ndarray], members: Sequence[int], links: Sequence[Link],
           input_m2: dict[int, np.ndarray], m2_of: dict[int, np.ndarray | None]) -> tuple[float, float]:
    """Relative output noise of the component: weights (RTN, mapped back to the original
    parametrization, input-moment weighted) + the linked tensors' per-tensor activation steps."""
    weight_noise = 0.0
    for i in members:
        lay, w0 = new[i], orig[i].weight
        err = _rtn_error(lay.weight)
        err = err * out_div[i].reshape((-1,) + (1,) * (err.ndim - 1))
        err = err / (in_mul[i].reshape(-1, 1, 1, 1) if lay.depthwise
                     else in_mul[i].reshape((1, -1) + (1,) * (err.ndim - 2)))
        q = _in_weights(lay, input_m2.get(i), w0)
        weight_noise += float(np.sum(err * err * q, dtype=np.float64)
                              / max(float(np.sum(w0 * w0 * q, dtype=np.float64)), 1e-300))
    act_noise = 0.0
    for link in links:
        a, b = orig[link.a], orig[link.b]
        if a.bn is None:
            continue
        gamma, beta = a.bn
        s = out_div[link.a]
        top = (beta + RANGE_SIGMAS * np.abs(gamma)) / s
        if link.act == "identity":
            top = np.maximum(top, (RANGE_SIGMAS * np.abs(gamma) - beta) / s)
        elif link.hi is not None:
            top = np.minimum(top, link.hi / s)
        alpha = float(np.max(top))
        levels = 254.0 if link.act == "identity" else 255.0
        m2 = m2_of[id(link)]
        wb = np.square(b.weight, dtype=np.float64)
        col = wb.reshape(wb.shape[0], -1).sum(axis=1) if b.depthwise else (
            wb.sum(axis=0) if wb.ndim == 2 else wb.sum(axis=(0, 2, 3)))
        step2 = (alpha / levels) ** 2 / 12.0
        # in the equalized graph channel i's step is the tensor's step; in original units it is step * s_i
        act_noise += float(np.sum(step2 * s * s * col) / max(np.sum(m2 * col), 1e-300))
    return weight_noise, act_noise


# ----------------------------------------------------------------------------------------------------
# the algorithm


def equalize(layers: Sequence[LayerParams], links: Sequence[Link], mode: str = "auto", clip_policy: str = "shrink",
             absorb: bool = True, max_iter: int = 64, tol: float = 1e-3) -> EqualizeResult:
    """Equalize every link (per connected component of links, swept in graph order until no factor
    moves by more than `tol` in log scale), then absorb biases; `auto` keeps a component only where
    `_score` goes down. Inputs are not modified; weights keep their dtype (float32 arithmetic)."""
    if mode not in MODES:
        raise ValueError(f"equalize mode must be one of {MODES}, got {mode!r}")
    if clip_policy not in CLIP_POLICIES:
        raise ValueError(f"clip policy must be one of {CLIP_POLICIES}, got {clip_policy!r}")
    orig = list(layers)

    def fresh(lay: LayerParams) -> LayerParams:
        return LayerParams(lay.weight.copy(), None if lay.bias is None else lay.bias.astype(np.float64),
                           lay.groups, None if lay.bn is None else (np.asarray(lay.bn[0], np.float64),
                                                                    np.asarray(lay.bn[1], np.float64)), lay.name)

    work = [fresh(lay) for lay in orig]
    usable = [lk for lk in links if linkable(orig, lk) and not (lk.act == "clip" and clip_policy == "skip")]
    out_div = [np.ones(lay.weight.shape[0]) for lay in orig]
    in_mul = [np.ones(in_channels(lay)) for lay in orig]
    scales = {id(lk): np.ones(orig[lk.a].weight.shape[0]) for lk in links}
    parent = list(range(len(orig)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for lk in usable:
        parent[find(lk.a)] = find(lk.b)
    groups: dict[int, list[Link]] = {}
    for lk in usable:
        groups.setdefault(find(lk.a), []).append(lk)
    iterations = 0
    if mode != "off":
        for comp in groups.values():
            # a lone link is equal after one step; shared layers (a depthwise conv between two links) need sweeps
            for sweep in range(1, (1 if len(comp) == 1 else max_iter) + 1):
                moved = 0.0
                for lk in comp:
                    a, b = work[lk.a], work[lk.b]
                    s = _pair_factor(a.weight, b, clip_policy, lk.act)
                    moved = max(moved, float(np.max(np.abs(np.log(s)))))
                    a.weight = _scale_out(a.weight, s)
                    if a.bias is not None:
                        a.bias = a.bias / s
                    if a.bn is not None:
                        a.bn = (a.bn[0] / s, a.bn[1] / s)
                    b.weight = _scale_in(b, b.weight, s)
                    out_div[lk.a] = out_div[lk.a] * s
                    in_mul[lk.b] = in_mul[lk.b] * s
                    scales[id(lk)] = scales[id(lk)] * s
                iterations = max(iterations, sweep)
                if moved < tol:
                    break
    m2_of = {id(lk): _second_moment(orig[lk.a].bn, lk.act, lk.hi) for lk in usable}
    input_m2 = {lk.b: m2_of[id(lk)] for lk in usable if m2_of[id(lk)] is not None}
    kept_ids: set[int] = set()
    components = []
    ones_out = [np.ones_like(v) for v in out_div]
    ones_in = [np.ones_like(v) for v in in_mul]
    for comp in groups.values():
        members = sorted({lk.a for lk in comp} | {lk.b for lk in comp})
        before = _score(orig, orig, ones_out, ones_in, members, comp, input_m2, m2_of)
        after = _score(orig, work, out_div, in_mul, members, comp, input_m2, m2_of)
        keep = mode == "on" or (mode == "auto" and sum(after) < sum(before))
        components.append({"layers": [orig[i].name for i in members], "links": len(comp),
                           "score_before": {"weights": before[0], "activations": before[1]},
                           "score_after": {"weights": after[0], "activations": after[1]}, "kept": keep})
        if keep:
            kept_ids.update(id(lk) for lk in comp)
        else:
            for i in members:  # back to the original parameters
                work[i] = fresh(orig[i])
                out_div[i], in_mul[i] = np.ones_like(out_div[i]), np.ones_like(in_mul[i])
    absorbed = {}
    if absorb and mode != "off":
        for lk in links:
            if id(lk) in kept_ids:
                c = _absorb(work, lk)
                if c is not None:
                    absorbed[lk.b] = float(np.max(c))
    result = [LayerParams(lay.weight, None if lay.bias is None else lay.bias.astype(src.bias.dtype),
                          lay.groups, lay.bn, lay.name) for lay, src in zip(work, orig)]
    report = []
    for i, (src, lay) in enumerate(zip(orig, result)):
        changed = bool(np.any(out_div[i] != 1) or np.any(in_mul[i] != 1))
        before_db = sqnr_db(src.weight, _rtn_error(src.weight))
        row: dict[str, Any] = {
            "layer": src.name,
            "range_spread_before": _spread(out_range(src.weight)),
            "range_spread_after": _spread(out_range(lay.weight)) if changed else _spread(out_range(src.weight)),
            "weight_sqnr_db_before": before_db,
            "weight_sqnr_db_after": sqnr_db(lay.weight, _rtn_error(lay.weight)) if changed else before_db,
            "rescaled": changed,
            "out_factor_min": float(np.min(out_div[i])), "out_factor_max": float(np.max(out_div[i])),
            "in_factor_min": float(np.min(in_mul[i])), "in_factor_max": float(np.max(in_mul[i])),
        }
        if i in absorbed:
            row["absorbed_max"] = absorbed[i]
        report.append(row)
    return EqualizeResult(result, [scales[id(lk)] for lk in links], [id(lk) in kept_ids for lk in links],
                          iterations, report, components)


def _spread(r: np.ndarray) -> float:
    """max / min of the per-output-channel weight ranges (channels with a zero range left out)."""
    nz = r[r > 0]
    return float(nz.max() / nz.min()) if nz.size else 1.0


def _absorb(work: list[LayerParams], lk: Link) -> np.ndarray | None:
    a, b = work[lk.a], work[lk.b]
    if a.bn is None or a.bias is None or b.bias is None or lk.b_padded:
        return None
    gamma, beta = a.bn
    sd = np.abs(gamma)
    if lk.act == "identity":
        c = beta.copy()
    else:
        c = np.maximum(0.0, beta - ABSORB_SIGMAS * sd)
        if lk.act == "clip" and lk.hi is not None:
            c = np.where(beta + ABSORB_SIGMAS * sd < lk.hi, c, 0.0)
    if not np.any(c):
        return None
    a.bias = a.bias - c
    a.bn = (gamma, beta - c)
    b.bias = b.bias + _apply_to_means(b, b.weight, c)
    return c


def _apply_to_means(layer: LayerParams, w: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """W E[x] for a per-input-channel mean (a conv's taps all see the same mean: zero padding ignored)."""
    w = np.asarray(w, dtype=np.float64)
    if layer.depthwise:
        return w.reshape(w.shape[0], -1).sum(axis=1) * mean
    if w.ndim == 2:
        return w @ mean
    if layer.groups != 1:
        oc, icg = w.shape[0], w.shape[1]
        per = w.sum(axis=(2, 3))  # (OC, IC/g)
        m = mean.reshape(layer.groups, icg)
        g = np.repeat(np.arange(layer.groups), oc // layer.groups)
        return np.sum(per * m[g], axis=1)
    return w.sum(axis=(2, 3)) @ mean


def bias_correction(layer: LayerParams, dequantized: np.ndarray, input_mean: np.ndarray) -> np.ndarray:
    """The bias change that removes the rounding's expected output error: -(W_hat - W) E[x]."""
    dw = dequantized.astype(np.float64) - layer.weight.astype(np.float64)
    return -_apply_to_means(layer, dw, np.asarray(input_mean, dtype=np.float64))
