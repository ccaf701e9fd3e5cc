"""Activation ranges, zero point 0: data-free from synthetic inputs (SQuant's σ rule) or BatchNorm
statistics, or calibrated on user samples (min-max / percentile)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import tvm

from .reference import Interpreter

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class TensorStats:
    """Running statistics of one float tensor over a set of inputs."""

    minimum: float = np.inf
    maximum: float = -np.inf
    pos_sum: float = 0.0
    pos_sq: float = 0.0
    pos_n: int = 0
    all_sum: float = 0.0
    all_sq: float = 0.0
    all_n: int = 0
    percentile: float = 0.0  # of |x|, max over batches (calibration only)

    def update(self, a: np.ndarray, percentile: float | None) -> None:
        a64 = a.astype(np.float64, copy=False).ravel()
        self.minimum = min(self.minimum, float(a64.min()))
        self.maximum = max(self.maximum, float(a64.max()))
        pos = a64[a64 > 0]
        self.pos_sum += float(pos.sum())
        self.pos_sq += float((pos * pos).sum())
        self.pos_n += pos.size
        self.all_sum += float(a64.sum())
        self.all_sq += float((a64 * a64).sum())
        self.all_n += a64.size
        if percentile is not None:
            self.percentile = max(self.percentile, float(np.percentile(np.abs(a64), percentile)))

    @staticmethod
    def _std(total: float, sq: float, n: int) -> float:
        if n < 2:
            return 0.0
        mean = total / n
        return float(np.sqrt(max(sq / n - mean * mean, 0.0)))

    @property
    def std_pos(self) -> float:
        return self._std(self.pos_sum, self.pos_sq, self.pos_n)

    @property
    def std(self) -> float:
        return self._std(self.all_sum, self.all_sq, self.all_n)

    @property
    def amax(self) -> float:
        return max(abs(self.minimum), abs(self.maximum))


@dataclass(frozen=True)
class ActivationRange:
    alpha: float  # the tensor is represented on [-alpha, alpha] (signed) or [0, alpha] (unsigned)
    rule: str
    unsigned: bool = False  # never negative on the samples: uint8


def synthetic_inputs(shapes: Sequence[tuple[int, ...]], count: int = 8, seed: int = 0,
                     mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> list[list[np.ndarray]]:
    """Uniform-noise images in pixel space [0, 1], normalized like real inputs (SQuant feeds
    torch.rand images). One list of input arrays per sample batch."""
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(count):
        arrays = []
        for shape in shapes:
            x = rng.random(shape, dtype=np.float32)
            if len(shape) == 4 and shape[1] == len(mean):
                x = (x - np.asarray(mean, np.float32)[None, :, None, None]) / np.asarray(std, np.float32)[None, :, None, None]
            arrays.append(x.astype(np.float32))
        batches.append(arrays)
    return batches


def collect(mod: tvm.IRModule, batches: Iterable[Sequence[np.ndarray]], percentile: float | None = None,
            progress: Any = None) -> dict[Any, TensorStats]:
    """Statistics of every float binding (and parameter) of `main` over `batches`."""
    interp = Interpreter(mod)
    stats: dict[Any, TensorStats] = {}
    for batch in batches:
        _, env = interp.run(batch, capture=True)
        for var, value in env.items():
            if isinstance(value, np.ndarray) and value.dtype == np.float32 and value.size:
                stats.setdefault(var, TensorStats()).update(value, percentile)
        if progress is not None:
            progress.update()
    return stats


def sigma_rule(s: TensorStats, unsigned: bool, factor: float = 25.0) -> float:
    """SQuant's data-free rule at 8 bits: α = 25·σ of the positive part (unsigned) or 25·σ/1.25 (signed),
    never above the largest magnitude seen."""
    alpha = factor * s.std_pos if unsigned else factor * s.std / 1.25
    return float(min(alpha, s.maximum if unsigned else s.amax)) if alpha > 0 else float(max(s.amax, 1e-8))


def choose(stats: Mapping[Any, TensorStats], method: str, factor: float = 25.0) -> dict[Any, ActivationRange]:
    """A range per tensor. method: 'sigma' (data-free synthetic), 'minmax' or 'percentile' (calibration)."""
    out: dict[Any, ActivationRange] = {}
    for var, s in stats.items():
        unsigned = s.minimum >= 0
        if method == "sigma":
            out[var] = ActivationRange(max(sigma_rule(s, unsigned, factor), 1e-8), f"synthetic σ×{factor:g}", unsigned)
        elif method == "minmax":
            out[var] = ActivationRange(max(s.maximum if unsigned else s.amax, 1e-8), "calibration min-max", unsigned)
        elif method == "percentile":
            out[var] = ActivationRange(max(s.percentile, 1e-8), "calibration percentile", unsigned)
        else:
            raise ValueError(f"unknown range method {method!r}")
    return out
