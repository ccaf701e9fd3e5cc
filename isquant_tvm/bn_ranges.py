"""Data-free activation ranges from BatchNorm statistics (DFQ-style moment propagation).

A BatchNorm after a conv says how that conv's output is distributed on the training data: channel c
is about N(β_c, γ_c²). Those per-channel Gaussians are carried through ReLU / ReLU6 (rectified
moments), residual adds (means and variances add), channel padding and subsampling; each tensor's
range is then the MSE-optimal 8-bit clipping point of its channel mixture, sampled. Tensors the
propagation cannot describe (pools, concats, the input) keep the synthetic-input rule."""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import tvm
from tvm import relax

from . import tvm_compat
from .layers import CONV, bindings
from .ranges import ActivationRange, mse_alpha

Moments = tuple[np.ndarray, np.ndarray]  # per-channel mean, variance


def _op(value: Any) -> str | None:
    return str(value.op.name) if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op) else None


def conv_batchnorms(unfolded: tvm.IRModule) -> list[tuple[np.ndarray, np.ndarray] | None]:
    """(γ, β) of the BatchNorm that follows each conv with a constant weight, in graph order."""
    producers = {}
    convs: list[Any] = []
    for b in bindings(unfolded["main"]):
        producers[b.var] = b.value
        if _op(b.value) == CONV and tvm_compat.is_const(b.value.args[1]):
            convs.append(b.var)
    found: dict[Any, tuple[np.ndarray, np.ndarray]] = {}
    for b in bindings(unfolded["main"]):
        if _op(b.value) != "relax.nn.batch_norm":
            continue
        src = b.value.args[0]
        # conv -> (add bias) -> batch_norm
        if isinstance(src, relax.Var) and _op(producers.get(src)) == "relax.add":
            inner = [a for a in producers[src].args if isinstance(a, relax.Var)]
            src = inner[0] if len(inner) == 1 else src
        args = b.value.args
        if src in convs and all(tvm_compat.is_const(a) for a in args[1:3]):
            found[src] = (tvm_compat.const_value(args[1]).astype(np.float64), tvm_compat.const_value(args[2]).astype(np.float64))
    return [found.get(v) for v in convs]


def _rectified(mean: np.ndarray, var: np.ndarray) -> Moments:
    from math import erf, sqrt, pi

    std = np.sqrt(np.maximum(var, 1e-24))
    z = mean / std
    cdf = 0.5 * (1 + np.vectorize(erf)(z / sqrt(2)))
    pdf = np.exp(-0.5 * z * z) / sqrt(2 * pi)
    m1 = mean * cdf + std * pdf
    m2 = (mean * mean + var) * cdf + mean * std * pdf
    return m1, np.maximum(m2 - m1 * m1, 0.0)


class Dist:
    """clip(N(mean, var), lo, hi) per channel; lo/hi None when unbounded."""

    def __init__(self, mean: np.ndarray, var: np.ndarray, lo: float | None = None, hi: float | None = None) -> None:
        self.mean, self.var, self.lo, self.hi = mean, var, lo, hi

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        x = _draw(self.mean, self.var, n, seed)
        if self.lo is not None or self.hi is not None:
            x = np.clip(x, self.lo if self.lo is not None else -np.inf, self.hi if self.hi is not None else np.inf)
        return x

    def moments(self) -> Moments:
        if self.lo is None and self.hi is None:
            return self.mean, self.var
        if self.lo == 0.0 and self.hi is None:
            return _rectified(self.mean, self.var)
        x = self.sample(4096)
        return x.mean(axis=1), x.var(axis=1)

    @property
    def unsigned(self) -> bool:
        return self.lo is not None and self.lo >= 0


def propagate(folded: tvm.IRModule, layer_vars: list[Any], bn: list[tuple[np.ndarray, np.ndarray] | None]) -> dict[Any, Dist]:
    """Per-channel distributions of every tensor the propagation can follow. `layer_vars` are
    the conv binding vars of the folded module in the same order as `bn`."""
    bn_of = {v: s for v, s in zip(layer_vars, bn) if s is not None}
    dists: dict[Any, Dist] = {}
    for b in bindings(folded["main"]):
        value, op = b.value, _op(b.value)
        args = list(value.args) if isinstance(value, relax.Call) else []
        if op == "relax.add":
            consts = [a for a in args if tvm_compat.is_const(a)]
            vars_ = [a for a in args if isinstance(a, relax.Var)]
            if consts and len(vars_) == 1 and vars_[0] in bn_of:  # conv + folded BN bias: N(β, γ²)
                gamma, beta = bn_of[vars_[0]]
                dists[b.var] = Dist(beta.copy(), gamma * gamma)
            elif len(vars_) == 2 and all(v in dists for v in vars_):
                (m1, v1), (m2, v2) = dists[vars_[0]].moments(), dists[vars_[1]].moments()
                if m1.shape == m2.shape:
                    dists[b.var] = Dist(m1 + m2, v1 + v2)
        elif op in ("relax.nn.relu", "relax.clip") and args[0] in dists:
            src = dists[args[0]]
            lo, hi = (0.0, None) if op == "relax.nn.relu" else (float(args[1].value), float(args[2].value))
            if src.lo is None and src.hi is None:
                dists[b.var] = Dist(src.mean, src.var, lo, hi)
            else:
                mean, var = src.moments()
                dists[b.var] = Dist(mean, var, lo, hi)
        elif op == "relax.strided_slice" and args[0] in dists:
            axes = [int(a) for a in args[1]]
            if 1 not in axes:  # spatial subsampling keeps channel statistics
                dists[b.var] = dists[args[0]]
        elif op == "relax.nn.pad" and args[0] in dists:
            widths = [int(w) for w in value.attrs.pad_width]
            src = dists[args[0]]
            if widths[0] == widths[1] == 0 and float(value.attrs.pad_value) == 0.0 and src.lo is not None:
                before, after = widths[2], widths[3]
                dists[b.var] = Dist(np.pad(src.mean, (before, after), constant_values=-1e9),
                                    np.pad(src.var, (before, after)), src.lo, src.hi)
    return dists


def _draw(mean: np.ndarray, var: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return mean[:, None] + np.sqrt(np.maximum(var, 0))[:, None] * rng.standard_normal((mean.size, n))


def ranges_from_dists(dists: Mapping[Any, Dist], samples_per_channel: int = 2048, rule: str = "mse",
                      k: float = 3.0) -> dict[Any, ActivationRange]:
    out = {}
    for var, dist in dists.items():
        if rule == "ksigma":
            upper = dist.mean + k * np.sqrt(dist.var)
            lower = dist.mean - k * np.sqrt(dist.var)
            alpha = float(upper.max()) if dist.unsigned else float(max(upper.max(), -lower.min()))
            if dist.hi is not None:
                alpha = min(alpha, dist.hi)
        else:
            samples = dist.sample(samples_per_channel).ravel().astype(np.float32)
            alpha = mse_alpha(samples, dist.unsigned) * k
        out[var] = ActivationRange(max(alpha, 1e-8), "BatchNorm statistics", dist.unsigned)
    return out

