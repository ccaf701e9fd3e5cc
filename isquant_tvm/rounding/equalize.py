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
where the clip never acts. A per-tensor clip cannot carry per-channel bounds, so `clip_policy` is one
of "skip" (no rescale across a clip: the default), "bn" (a channel whose BatchNorm says it reaches hi,
beta + 6 gamma >= hi, keeps s = 1; the others only take s >= (beta + 6 gamma) / hi, so neither bound
is reached in theory), "shrink" (only s_i >= 1: the clip loosens, wrong only where the original clip
acted) or "full". Decided by measurement on the built-in MobileNetV2 (ReLU6 after every expand and
depthwise conv; 6 photos of imagenet-val-1300, output cosine against the original float graph, then
the int8 reference graph's): the equalized *float* graph alone keeps cosine 1.000000 with skip, 0.993
with bn, 0.942 with shrink (its activations reach 20 where it clips at 6, so a loosened clip passes
large values); int8 0.98568 with skip + bias correction, 0.98294 with bn, 0.937 with shrink, against
0.98560 with --equalize off. So across ReLU6 nothing is rescaled; MobileNetV2's depthwise layers gain
only from bias correction, and its two identity links (project -> expand without a residual) equalize.
Rescaling the clip bound instead would make it hi * S_i per channel (S_i the channel's cumulative factor): exact,
but the integer graph has one clamp per tensor (the requantize's output bound, fused into every
kernel's epilogue on x86, Arm and the numpy reference), so per-channel bounds mean a per-channel clamp
in every epilogue; and the one case a per-tensor bound can carry, a single factor S shared by all
channels (bound hi * S), leaves per-tensor int8 exactly as it was (both tensors' ranges scale
together). So the default skips, and says so in the link rows.

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

**auto.** Decided per connected component of links on a measured score: the relative weight noise
of per-tensor RTN int8 in the *original* parametrization (the function's error, each equalized tensor
mapped back through its factors), input-moment weighted where the statistics exist, plus the relative
noise of the per-tensor activation quantization of each linked tensor (its range mu + 6 sigma over
channels, which equalization widens). Equalization trades one for the other, so auto tries partial
strengths, factors s^t for t in AUTO_STRENGTHS (t = 1: full DFQ; s^t keeps every link exact, both
sides take the same power), and keeps the t with the lowest total, or nothing if no t lowers it; the
component's row says which (`strength`). Measured (scripts/accuracy.py --limit 1000, torch path, top-1
agreement with fp32; load ~5 on 2 cores): the earlier all-or-nothing rule (activations must not grow)
kept 0 of 9 chains on ResNet-20 (98.6 %, = off); the partial rule keeps 8 of 9, mostly t = 0.25-0.5
(98.9 %), ResNet-56 98.3 % either way; the final 2000-image run (with auto's bias correction) gave
ResNet-20 98.30 vs 98.50 % off, ResNet-56 98.00 vs 98.10 % (top-1 +0.2 / +0.4 pt over fp32 vs
+0.5 / -0.1): differences of 2-4 images, within the noise of the subset. On MobileNetV3-small it keeps the two ReLU chains (of 11
components; the SE fc1 -> fc2 ones have no BatchNorm, so their activation side cannot be measured and
they stay off). Without BatchNorm statistics on a component's links auto leaves it off (SqueezeNet 1.1:
its one chain kept on the weights alone cost 1 pt of agreement).

Bias correction in auto (quantize/equalize_stage.py) runs per layer where the input statistics are
propagated without a residual mix and the correction removes at least AUTO_SHARE of the expected
output error energy (`bias_correction_share`: ||dW E[x]||^2 against that plus sum dW^2 Var[x]).
Measured, same runs: correcting every layer cost ResNet-56 0.6 pt of agreement (97.7 vs 98.3 %), almost
all from layers reading the residual stream (its moments are sums of clipped Gaussians, approximate;
the classifier reads them too); with mixed inputs skipped ResNet-56 keeps 98.3 %, and MobileNetV2's
output cosine goes 0.98498 (off) -> 0.98570 (auto), against onnxruntime's calibrated 0.98541.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

__all__ = ["LayerParams", "Link", "EqualizeResult", "equalize", "bias_correction", "bias_correction_share", "MODES",
           "CLIP_POLICIES", "AUTO_STRENGTHS"]

MODES = ("auto", "on", "off")
CLIP_POLICIES = ("skip", "bn", "shrink", "full")
ABSORB_SIGMAS = 3.0
RANGE_SIGMAS = 6.0  # the pipeline's BatchNorm range rule (mu + 6 sigma)
AUTO_STRENGTHS = (0.25, 0.5, 0.75, 1.0)  # auto's partial equalization: factors s^t
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


def in_channels(layer: LayerParams) -> int:
    return layer.weight.shape[0] if layer.depthwise else layer.weight.shape[1]


def linkable(layers: Sequence[LayerParams], link: Link) -> bool:
    """B must be a plain (groups 1) conv, a depthwise conv or a dense layer whose input channels are A's outputs."""
    a, b = layers[link.a], layers[link.b]
    if b.groups != 1 and not b.depthwise:
        return False
    return in_channels(b) == a.weight.shape[0]


def _pair_factor(r1: np.ndarray, r2: np.ndarray, policy: str, act: str) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.sqrt(r1 / r2)
    s = np.where(np.isfinite(s) & (s > 1 / _S_LIMIT) & (s < _S_LIMIT), s, 1.0)
    if act == "clip" and policy == "shrink":
        s = np.maximum(s, 1.0)
    return s


def _clip_safe(s: np.ndarray, total: np.ndarray, bn: tuple[np.ndarray, np.ndarray], hi: float) -> np.ndarray:
    """The "bn" clip policy: channel i's clip moves to hi * S_i (S: the cumulative factor). Exact where
    neither bound is reached: a channel whose BatchNorm says it reaches hi (beta + 6 gamma >= hi) keeps
    S = 1; the others may take any S >= (beta + 6 gamma) / hi."""
    gamma, beta = bn
    top = beta + RANGE_SIGMAS * np.abs(gamma)
    free = top < hi
    target = np.where(free, np.maximum(total * s, np.maximum(top, 0.0) / hi), 1.0)
    return target / total


# ----------------------------------------------------------------------------------------------------
# measuring


def _rtn_error(w: np.ndarray) -> np.ndarray:
    """Per-tensor symmetric int8 RTN error (fast: auto's measure, not the deployed rounding)."""
    amax = float(np.abs(w).max())
    if amax == 0:
        return np.zeros_like(w)
    step = np.asarray(amax / 127.0, dtype=w.dtype)
    return np.rint(w / step) * step - w


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


def _reduce_taps(layer: LayerParams, a: np.ndarray, how: str = "sum") -> np.ndarray:
    """An elementwise weight-shaped array reduced over the kernel taps: (O, I) for plain convs and dense
    layers, (O,) for depthwise ones (whose input channel is the row). Row / column rescales commute
    with it, so the sweeps and the measure work on these small matrices, never on the weights."""
    if how == "max":
        if layer.depthwise:
            return a.reshape(a.shape[0], -1).max(axis=1)
        return a if a.ndim == 2 else a.max(axis=(2, 3))
    if layer.depthwise:
        return a.reshape(a.shape[0], -1).sum(axis=1, dtype=np.float64)
    return a.astype(np.float64) if a.ndim == 2 else a.sum(axis=(2, 3), dtype=np.float64)


def _weighted(layer: LayerParams, mat: np.ndarray, row: np.ndarray, col: np.ndarray) -> float:
    """sum over (o, i) of mat[o, i] * row[o] * col[i] (depthwise: mat[o] * row[o] * col[o])."""
    if layer.depthwise:
        return float(np.sum(mat * row * col))
    return float(row @ mat @ col)


class _Measure:
    """RTN error energy of every layer, reduced over taps, cached for the original weights."""

    def __init__(self, orig: Sequence[LayerParams]) -> None:
        self.orig = orig
        self.cache: dict[int, tuple[np.ndarray, np.ndarray, float]] = {}

    def of(self, i: int, w: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, float]:
        """(error energy, signal energy, sqnr dB) of layer i's weight (default: the original)."""
        if w is None and i in self.cache:
            return self.cache[i]
        lay = self.orig[i]
        src = lay.weight if w is None else w
        err = _rtn_error(src)
        e = _reduce_taps(lay, np.square(err))
        sig = _reduce_taps(lay, np.square(src))
        total_e, total_s = float(np.sum(e)), float(np.sum(sig))
        db = float("inf") if total_e == 0 else 10.0 * math.log10(max(total_s, 1e-300) / total_e)
        out = (e, sig, db)
        if w is None:
            self.cache[i] = out
        return out


def _score(orig: Sequence[LayerParams], energies: dict[int, np.ndarray], out_div: Sequence[np.ndarray],
           in_mul: Sequence[np.ndarray], members: Sequence[int], links: Sequence[Link], measure: _Measure,
           input_m2: dict[int, np.ndarray], m2_of: dict[int, np.ndarray | None]) -> tuple[float, float]:
    """Relative output noise of the component: weights (RTN, mapped back to the original
    parametrization, input-moment weighted) + the linked tensors' per-tensor activation steps."""
    weight_noise = 0.0
    for i in members:
        lay = orig[i]
        m2 = input_m2.get(i)
        m2 = np.ones(in_channels(lay)) if m2 is None else np.maximum(m2, 1e-12)
        signal = _weighted(lay, measure.of(i)[1], np.ones(lay.weight.shape[0]), m2)
        noise = _weighted(lay, energies[i], out_div[i] ** 2, m2 / in_mul[i] ** 2)
        weight_noise += noise / max(signal, 1e-300)
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
        sig_b = measure.of(link.b)[1]
        col = sig_b if b.depthwise else sig_b.sum(axis=0)
        step2 = (alpha / levels) ** 2 / 12.0
        # in the equalized graph channel i's step is the tensor's step; in original units it is step * s_i
        act_noise += float(np.sum(step2 * s * s * col) / max(np.sum(m2 * col), 1e-300))
    return weight_noise, act_noise


# ----------------------------------------------------------------------------------------------------
# the algorithm


def _rescaled(lay: LayerParams, out_div: np.ndarray, in_mul: np.ndarray) -> np.ndarray:
    w = lay.weight
    f = (1.0 / out_div)
    if lay.depthwise:
        return w * (in_mul * f).reshape(-1, 1, 1, 1).astype(w.dtype)
    w = w * f.reshape((-1,) + (1,) * (w.ndim - 1)).astype(w.dtype)
    return w * in_mul.reshape((1, -1) + (1,) * (w.ndim - 2)).astype(w.dtype)


def equalize(layers: Sequence[LayerParams], links: Sequence[Link], mode: str = "auto", clip_policy: str = "skip",
             absorb: bool = True, max_iter: int = 64, tol: float = 1e-3) -> EqualizeResult:
    """Equalize every link (per connected component of links, swept in graph order until no factor
    moves by more than `tol` in log scale), then absorb biases; `auto` keeps a component only where
    `_score` goes down. Inputs are not modified; weights keep their dtype."""
    if mode not in MODES:
        raise ValueError(f"equalize mode must be one of {MODES}, got {mode!r}")
    if clip_policy not in CLIP_POLICIES:
        raise ValueError(f"clip policy must be one of {CLIP_POLICIES}, got {clip_policy!r}")
    orig = list(layers)
    usable = [lk for lk in links if linkable(orig, lk) and not (lk.act == "clip" and (
        clip_policy == "skip" or (clip_policy == "bn" and (orig[lk.a].bn is None or lk.hi is None))))]
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
        ranges = {i: _reduce_taps(orig[i], np.abs(orig[i].weight), "max").astype(np.float64)
                  for lk in usable for i in (lk.a, lk.b)}
        for comp in groups.values():
            # a lone link is equal after one step; shared layers (a depthwise conv between two links) need sweeps
            for sweep in range(1, (1 if len(comp) == 1 else max_iter) + 1):
                moved = 0.0
                for lk in comp:
                    ma, mb, b = ranges[lk.a], ranges[lk.b], orig[lk.b]
                    r1 = ma if ma.ndim == 1 else ma.max(axis=1)
                    r2 = mb if b.depthwise else mb.max(axis=0)
                    s = _pair_factor(r1, r2, clip_policy, lk.act)
                    if lk.act == "clip" and clip_policy == "bn":
                        s = _clip_safe(s, out_div[lk.a], orig[lk.a].bn, lk.hi)
                    moved = max(moved, float(np.max(np.abs(np.log(s)))))
                    ranges[lk.a] = ma / s if ma.ndim == 1 else ma / s[:, None]
                    ranges[lk.b] = mb * s if b.depthwise else mb * s[None, :]
                    out_div[lk.a] = out_div[lk.a] * s
                    in_mul[lk.b] = in_mul[lk.b] * s
                    scales[id(lk)] = scales[id(lk)] * s
                iterations = max(iterations, sweep)
                if moved < tol:
                    break
    touched = {i for lk in usable for i in (lk.a, lk.b)} if mode != "off" else set()
    measure = _Measure(orig)
    new_w = {i: _rescaled(orig[i], out_div[i], in_mul[i]) for i in touched}
    new_e = {i: measure.of(i, new_w[i]) for i in touched}
    m2_of = {id(lk): _second_moment(orig[lk.a].bn, lk.act, lk.hi) for lk in usable}
    input_m2 = {lk.b: m2_of[id(lk)] for lk in usable if m2_of[id(lk)] is not None}
    kept_ids: set[int] = set()
    components = []
    ones_out = [np.ones_like(v) for v in out_div]
    ones_in = [np.ones_like(v) for v in in_mul]
    if mode != "off":
        for comp in groups.values():
            members = sorted({lk.a for lk in comp} | {lk.b for lk in comp})
            before = _score(orig, {i: measure.of(i)[0] for i in members}, ones_out, ones_in, members, comp,
                            measure, input_m2, m2_of)
            measurable = all(orig[lk.a].bn is not None for lk in comp)
            strength, after = 1.0, _score(orig, {i: new_e[i][0] for i in members}, out_div, in_mul, members, comp,
                                          measure, input_m2, m2_of)
            if mode == "on":
                keep = True
            elif not measurable:
                # without BatchNorm statistics the activation side cannot be measured: auto leaves it off
                # (SqueezeNet 1.1, no BN: its one chain kept on the weights alone cost 1 pt of agreement)
                keep = False
            else:
                # partial equalization: factors s^t for t in AUTO_STRENGTHS, the t with the lowest total
                # (weights + activations) wins; none that lowers the total: the component stays off
                best = (sum(before), 0.0, after, None)
                for t in AUTO_STRENGTHS:
                    od = {i: out_div[i] ** t for i in members}
                    im = {i: in_mul[i] ** t for i in members}
                    ws = {i: _rescaled(orig[i], od[i], im[i]) for i in members} if t != 1.0 else \
                        {i: new_w[i] for i in members}
                    es = {i: measure.of(i, ws[i]) if t != 1.0 else new_e[i] for i in members}
                    sc = _score(orig, {i: es[i][0] for i in members}, _with(out_div, od), _with(in_mul, im),
                                members, comp, measure, input_m2, m2_of)
                    if sum(sc) < best[0]:
                        best = (sum(sc), t, sc, (od, im, ws, es))
                keep = best[3] is not None
                if keep:
                    strength, after = best[1], best[2]
                    od, im, ws, es = best[3]
                    for i in members:
                        out_div[i], in_mul[i], new_w[i], new_e[i] = od[i], im[i], ws[i], es[i]
                    for lk in comp:
                        scales[id(lk)] = scales[id(lk)] ** strength
            components.append({"layers": [orig[i].name for i in members], "links": len(comp),
                               "score_before": {"weights": before[0], "activations": before[1]},
                               "score_after": {"weights": after[0], "activations": after[1]}, "kept": keep,
                               "strength": strength if keep else 0.0})
            if keep:
                kept_ids.update(id(lk) for lk in comp)
            else:
                for i in members:  # back to the original parameters
                    out_div[i], in_mul[i] = np.ones_like(out_div[i]), np.ones_like(in_mul[i])
                    touched.discard(i)
    work = []
    for i, lay in enumerate(orig):
        if i in touched:
            s = out_div[i]
            work.append(LayerParams(new_w[i], None if lay.bias is None else lay.bias.astype(np.float64) / s,
                                    lay.groups, None if lay.bn is None else (np.asarray(lay.bn[0]) / s,
                                                                            np.asarray(lay.bn[1]) / s), lay.name))
        else:
            work.append(LayerParams(lay.weight, None if lay.bias is None else lay.bias.astype(np.float64),
                                    lay.groups, lay.bn, lay.name))
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
        changed = i in touched
        before_db = measure.of(i)[2]
        row: dict[str, Any] = {
            "layer": src.name,
            "range_spread_before": _spread(out_range(src.weight)),
            "range_spread_after": _spread(out_range(lay.weight)) if changed else _spread(out_range(src.weight)),
            "weight_sqnr_db_before": before_db,
            "weight_sqnr_db_after": new_e[i][2] if changed else before_db,
            "rescaled": changed,
            "out_factor_min": float(np.min(out_div[i])), "out_factor_max": float(np.max(out_div[i])),
            "in_factor_min": float(np.min(in_mul[i])), "in_factor_max": float(np.max(in_mul[i])),
        }
        if i in absorbed:
            row["absorbed_max"] = absorbed[i]
        report.append(row)
    return EqualizeResult(result, [scales[id(lk)] for lk in links], [id(lk) in kept_ids for lk in links],
                          iterations, report, components)


def _with(base: Sequence[np.ndarray], over: dict[int, np.ndarray]) -> list[np.ndarray]:
    return [over.get(i, v) for i, v in enumerate(base)]


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


def _apply_to_vars(layer: LayerParams, sq: np.ndarray, var: np.ndarray) -> np.ndarray:
    """sum over input channels and taps of sq[o, i, k] * var[i] (sq: squared weight errors), per output
    channel: the output variance the rounding adds when the input pixels are uncorrelated."""
    sq = np.asarray(sq, dtype=np.float64)
    if layer.depthwise:
        return sq.reshape(sq.shape[0], -1).sum(axis=1) * var
    if sq.ndim == 2:
        return sq @ var
    per = sq.sum(axis=(2, 3))
    if layer.groups != 1:
        oc, icg = sq.shape[0], sq.shape[1]
        g = np.repeat(np.arange(layer.groups), oc // layer.groups)
        return np.sum(per * var.reshape(layer.groups, icg)[g], axis=1)
    return per @ var


def bias_correction_share(layer: LayerParams, dequantized: np.ndarray, input_mean: np.ndarray,
                          input_var: np.ndarray) -> float:
    """The share of the rounding's expected output error energy that bias correction removes: the mean
    term ||dW E[x]||^2 over it plus the variance term sum dW^2 Var[x] (uncorrelated pixels). 1: the
    error is all bias; 0: correction has nothing to remove and only its statistics' error to add."""
    dw = dequantized.astype(np.float64) - layer.weight.astype(np.float64)
    mean_e = float(np.sum(np.square(_apply_to_means(layer, dw, np.asarray(input_mean, dtype=np.float64)))))
    var_e = float(np.sum(_apply_to_vars(layer, np.square(dw), np.maximum(np.asarray(input_var, np.float64), 0.0))))
    total = mean_e + var_e
    return mean_e / total if total > 0 else 0.0


def bias_correction(layer: LayerParams, dequantized: np.ndarray, input_mean: np.ndarray) -> np.ndarray:
    """The bias change that removes the rounding's expected output error: -(W_hat - W) E[x]."""
    dw = dequantized.astype(np.float64) - layer.weight.astype(np.float64)
    return -_apply_to_means(layer, dw, np.asarray(input_mean, dtype=np.float64))
