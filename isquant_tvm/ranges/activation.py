"""Activation ranges, zero point 0: data-free from synthetic inputs (SQuant's σ rule) or BatchNorm
statistics, or calibrated on user samples (min-max / percentile)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import tvm

from ..reference.interpreter import Interpreter

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
    sample: np.ndarray | None = None  # a fixed-size random subset of the values, for MSE-optimal ranges
    batch_max: list[float] = field(default_factory=list)  # per batch (one image per batch for inverted images)
    batch_min: list[float] = field(default_factory=list)

    SAMPLE_PER_BATCH = 1 << 14

    def update(self, a: np.ndarray, percentile: float | None) -> None:
        a64 = a.astype(np.float64, copy=False).ravel()
        rng = np.random.default_rng(a64.size)
        pick = a64 if a64.size <= self.SAMPLE_PER_BATCH else a64[rng.integers(0, a64.size, self.SAMPLE_PER_BATCH)]
        self.sample = pick.astype(np.float32) if self.sample is None else np.concatenate([self.sample, pick.astype(np.float32)])
        lo, hi = float(a64.min()), float(a64.max())
        self.batch_min.append(lo)
        self.batch_max.append(hi)
        self.minimum = min(self.minimum, lo)
        self.maximum = max(self.maximum, hi)
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


#: the rule names the report shows per tensor for min-max over each source of synthetic images (datafree.py)
SYNTHETIC_RULES = {"inverted": "synthetic min-max (inverted images)", "smooth": "synthetic min-max (1/f noise)",
                   "uniform": "synthetic min-max (uniform noise)"}


@dataclass(frozen=True)
class ActivationRange:
    alpha: float  # the tensor is represented on [-alpha, alpha] (signed) or [0, alpha] (unsigned)
    rule: str
    unsigned: bool = False  # never negative on the samples: uint8


def smooth_noise(shape: tuple[int, ...], rng: np.random.Generator, exponent: float = 2.0) -> np.ndarray:
    """Random images with a 1/f^(exponent/2) amplitude spectrum (natural images are close to 1/f²
    in power), rescaled to pixel range [0, 1] per image. Still data-free: no image is used."""
    n, c, h, w = shape
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    radius = np.sqrt(fx * fx + fy * fy)
    radius[0, 0] = 1.0 / max(h, w)
    amp = radius ** (-exponent / 2.0)
    phase = rng.uniform(0, 2 * np.pi, (n, c, h, fx.shape[1]))
    spectrum = amp * (rng.standard_normal((n, c, h, fx.shape[1])) * np.exp(1j * phase))
    img = np.fft.irfft2(spectrum, s=(h, w))
    lo = img.min(axis=(1, 2, 3), keepdims=True)
    hi = img.max(axis=(1, 2, 3), keepdims=True)
    return ((img - lo) / np.maximum(hi - lo, 1e-12)).astype(np.float32)


def synthetic_inputs(shapes: Sequence[tuple[int, ...]], count: int = 8, seed: int = 0,
                     mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                     kind: str = "smooth") -> list[list[np.ndarray]]:
    """Synthetic images in pixel space [0, 1], normalized like real inputs: 'uniform' noise (what
    SQuant feeds: torch.rand) or 'smooth' 1/f noise. One list of input arrays per sample batch."""
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(count):
        arrays = []
        for shape in shapes:
            if kind == "smooth" and len(shape) == 4:
                x = smooth_noise(tuple(shape), rng)
            else:
                x = rng.random(shape, dtype=np.float32)
            if len(shape) == 4 and shape[1] == len(mean):
                x = (x - np.asarray(mean, np.float32)[None, :, None, None]) / np.asarray(std, np.float32)[None, :, None, None]
            arrays.append(x.astype(np.float32))
        batches.append(arrays)
    return batches


def collect(mod: tvm.IRModule, batches: Iterable[Sequence[np.ndarray]], percentile: float | None = None,
            progress: Any = None, hooks: Mapping[Any, Any] | None = None) -> dict[Any, TensorStats]:
    """Statistics of every float binding (and parameter) of `main` over `batches`."""
    interp = Interpreter(mod)
    stats: dict[Any, TensorStats] = {}

    def observe(var: Any, value: Any) -> None:
        if isinstance(value, np.ndarray) and value.dtype == np.float32 and value.size:
            stats.setdefault(var, TensorStats()).update(value, percentile)

    for batch in batches:
        interp.run(batch, hooks=hooks, observe=observe)
        if progress is not None:
            progress.update()
    return stats


def sigma_rule(s: TensorStats, unsigned: bool, factor: float = 25.0) -> float:
    """SQuant's data-free rule at 8 bits: α = 25·σ of the positive part (unsigned) or 25·σ/1.25 (signed).
    Not capped at the largest value seen: noise images under-run real activations in deep layers."""
    alpha = factor * s.std_pos if unsigned else factor * s.std / 1.25
    return float(alpha) if alpha > 0 else float(max(s.amax, 1e-8))


def mse_alpha(sample: np.ndarray, unsigned: bool, grid: int = 100) -> float:
    """The clipping range minimising the 8-bit quantization MSE of `sample` (rounding + clipping)."""
    a = np.abs(sample.astype(np.float64)) if not unsigned else np.maximum(sample.astype(np.float64), 0)
    top = float(a.max())
    if top <= 0:
        return 1e-8
    levels = 255 if unsigned else 127
    best, best_err = top, np.inf
    x = sample.astype(np.float64)
    for alpha in top * np.linspace(0.05, 1.0, grid):
        s = alpha / levels
        lo = 0 if unsigned else -levels - 1
        q = np.clip(np.round(x / s), lo, levels) * s
        err = float(np.mean((x - q) ** 2))
        if err < best_err:
            best, best_err = alpha, err
    return float(best)


def tail_alpha(maxima: Sequence[float], images: float) -> float:
    """The expected largest of `images` per-image maxima, from a Gumbel law fitted (moments) to
    `maxima`; never below the largest seen. Opt-in (`range_rule="synthetic-tail@N"`): on the full
    ResNet-56 ONNX test set it widened every tensor and lost 0.4 pt of agreement against min-max
    (97.48 % vs 97.88 %, ranges/datafree.py)."""
    m = np.asarray(maxima, np.float64)
    if m.size < 2:
        return float(m.max()) if m.size else 0.0
    beta = float(m.std()) * np.sqrt(6.0) / np.pi
    mu = float(m.mean()) - 0.5772156649 * beta
    return float(max(m.max(), mu + beta * (np.log(images) + 0.5772156649)))


def choose(stats: Mapping[Any, TensorStats], method: str, factor: float = 25.0) -> dict[Any, ActivationRange]:
    """A range per tensor. method: 'sigma' (data-free synthetic), 'minmax' or 'percentile' (calibration)."""
    out: dict[Any, ActivationRange] = {}
    for var, s in stats.items():
        unsigned = s.minimum >= 0
        if method == "sigma":
            out[var] = ActivationRange(max(sigma_rule(s, unsigned, factor), 1e-8), f"synthetic σ×{factor:g}", unsigned)
        elif method in ("mse", "calibration-mse"):
            rule = "synthetic MSE-optimal" if method == "mse" else "calibration MSE-optimal"
            out[var] = ActivationRange(max(mse_alpha(s.sample, unsigned), 1e-8), rule, unsigned)
        elif method.startswith("synthetic-minmax:"):  # datafree.py: min-max over synthetic images
            source = method.split(":", 1)[1]
            out[var] = ActivationRange(max(s.maximum if unsigned else s.amax, 1e-8), SYNTHETIC_RULES[source], unsigned)
        elif method.startswith("synthetic-tail"):  # "synthetic-tail@IMAGES:source"
            head, source = method.split(":", 1)
            images = float(head.split("@", 1)[1]) if "@" in head else 1e4
            per_image = s.batch_max if unsigned else [max(abs(a), abs(b)) for a, b in zip(s.batch_min, s.batch_max)]
            out[var] = ActivationRange(max(tail_alpha(per_image, images), 1e-8),
                                       SYNTHETIC_RULES[source].replace("min-max", f"tail@{images:g}"), unsigned)
        elif method == "minmax":
            out[var] = ActivationRange(max(s.maximum if unsigned else s.amax, 1e-8), "calibration min-max", unsigned)
        elif method == "percentile":
            out[var] = ActivationRange(max(s.percentile, 1e-8), "calibration percentile", unsigned)
        else:
            raise ValueError(f"unknown range method {method!r}")
    return out
