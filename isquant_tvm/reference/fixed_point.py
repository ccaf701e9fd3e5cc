"""Fixed-point requantization: a real multiplier M as (m, n) with M ≈ m · 2^-n, and the integer
arithmetic every backend must reproduce bit for bit (numpy only, no TVM).

Rounding: y = (a · m + 2^(n-1)) >> n with an arithmetic shift, i.e. round half towards +inf
(gemmlowp / TFLite round "half up" on the shifted product), then saturation to [lo, hi]. The
product is formed in int64: |a| < 2^31 and m < 2^31 keep it below 2^62."""
from __future__ import annotations

import numpy as np

MULT_BITS = 31  # m in [2^30, 2^31): 31 significant bits of the real multiplier
MAX_SHIFT = 62


def quantize_multiplier(real: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """Real multipliers (> 0) -> (m int64, n int64) with real ≈ m · 2^-n, m in [2^30, 2^31), 1 <= n <= 62."""
    real = np.asarray(real, dtype=np.float64)
    if np.any(~np.isfinite(real)) or np.any(real < 0):
        raise ValueError(f"requantize multipliers must be finite and >= 0, got {real}")
    mant, exp = np.frexp(real)  # real = mant · 2^exp, mant in [0.5, 1)
    m = np.rint(mant * 2.0**MULT_BITS).astype(np.int64)
    carry = m == 2**MULT_BITS  # mant rounded up to 1.0
    m = np.where(carry, m // 2, m)
    exp = exp + carry
    n = MULT_BITS - exp.astype(np.int64)
    # Tiny multipliers (n > 62) lose precision gracefully: shift the mantissa down instead.
    too_small = n > MAX_SHIFT
    m = np.where(too_small, m >> np.minimum(n - MAX_SHIFT, 63), m)
    n = np.where(too_small, MAX_SHIFT, n)
    if np.any(n < 1):
        raise ValueError(f"requantize multiplier too large for int32 arithmetic: {real.max()}")
    m = np.where(real == 0, 0, m)
    n = np.where(real == 0, MAX_SHIFT, n)
    return m.astype(np.int64), n.astype(np.int64)


def requantize(acc: np.ndarray, m: np.ndarray, n: np.ndarray, lo: int, hi: int, channel_axis: int = 1,
               zero_point: int = 0) -> np.ndarray:
    """Integer requantize of an int32 accumulator, per channel along `channel_axis` when m/n are 1-D.
    A nonzero output `zero_point` z is added after the shift, folded into the rounding constant:
    ((a·m + 2^(n-1)) >> n) + z == (a·m + 2^(n-1) + z·2^n) >> n exactly (arithmetic shift = floor)."""
    acc = np.asarray(acc, dtype=np.int64)
    m = np.asarray(m, dtype=np.int64)
    n = np.asarray(n, dtype=np.int64)
    if m.ndim == 1 and m.size > 1:
        shape = [1] * acc.ndim
        shape[channel_axis] = m.size
        m, n = m.reshape(shape), n.reshape(shape)
    else:
        m, n = m.reshape(()), n.reshape(())
    rounding = rounding_constant(n, zero_point)
    return np.clip((acc * m + rounding) >> n, lo, hi)


def rounding_constant(n: np.ndarray | int, zero_point: int = 0) -> np.ndarray:
    """2^(n-1) + z·2^n: round half up, then add the output zero point z (exact, see `requantize`)."""
    n = np.asarray(n, dtype=np.int64)
    rnd = np.left_shift(np.int64(1), n - 1) + np.left_shift(np.int64(int(zero_point)), n)
    if zero_point and np.any(np.abs(int(zero_point)) * np.exp2(n.astype(np.float64)) >= 2.0**61):
        raise ValueError(f"output zero point {zero_point} with shift {int(n.max())} overflows int64")
    return rnd


def dtype_bounds(dtype: str) -> tuple[int, int]:
    info = np.iinfo(dtype)
    return int(info.min), int(info.max)
