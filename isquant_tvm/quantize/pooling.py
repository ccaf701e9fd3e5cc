"""Average pools of any size / stride / padding -> qnn.avg_pool2d (global pools: rewrite.rule_global_pool).

The integer op sums the window (zero padding, int32) and multiplies by a per-output-position fixed-point
1/count: ``clip((sum · m[oh, ow] + 2^(n-1)) >> n)``. One shift n for the whole map (from the largest
multiplier, 1/min count), so every m < 2^31; positions whose window overlaps the padding get their own
count when ``count_include_pad`` is false (ONNX AveragePool's default), the window size otherwise. The
output keeps the input's scale and dtype (a mean of values in range stays in range), as TFLite's
average pool does, so no activation range is needed. Dilated and ceil-mode pools stay float (reported).
"""
from __future__ import annotations

from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..reference import fixed_point
from ..util import tvm_compat
from . import rewrite
from .rewrite import QTensor, _safe
from ..qnn import ops as qnn_ops


def window_counts(h: int, w: int, pool: list[int], strides: list[int], padding: list[int],
                  count_include_pad: bool) -> np.ndarray:
    """(OH, OW) divisors of an average pool (ceil_mode off)."""
    top, left, bottom, right = padding
    ones = np.pad(np.ones((h, w), np.int64), ((top, bottom), (left, right)), constant_values=0 if not count_include_pad else 1)
    win = sliding_window_view(ones, tuple(pool))[::strides[0], ::strides[1]]
    return win.sum(axis=(-2, -1))


def pool_multipliers(counts: np.ndarray) -> tuple[np.ndarray, int]:
    """(m (OH, OW) int64, n): m · 2^-n ≈ 1 / count, one shift for every position."""
    _, n = fixed_point.quantize_multiplier(1.0 / float(counts.min()))
    n = int(n)
    return np.rint(2.0 ** n / counts).astype(np.int64), n


def rule_avg_pool2d(self: Any, var: Any, value: Any, op: str, args: list[Any]) -> Any:
    if self._is_global_pool(value, op):
        return self.rule_global_pool(var, value, op, args)
    a = value.attrs
    if bool(a.ceil_mode) or any(int(d) != 1 for d in a.dilation) or str(a.layout) != "NCHW":
        return None
    x = self.quant_of(args[0])
    if x.dtype not in ("int8", "uint8"):
        return None
    pool, strides = [int(v) for v in a.pool_size], [int(v) for v in a.strides]
    padding = [int(v) for v in a.padding]
    padding = padding * 2 if len(padding) == 2 else padding
    shape = tvm_compat.expr_shape(args[0])
    counts = window_counts(shape[2], shape[3], pool, strides, padding, bool(a.count_include_pad))
    m, n = pool_multipliers(counts)
    lo, hi = fixed_point.dtype_bounds(x.dtype)
    attrs = {"pool_size": pool, "strides": strides, "padding": padding, "shift": n, "out_dtype": x.dtype,
             "out_min": lo, "out_max": hi}
    expr = self.call_qnn("qnn.avg_pool2d", [x.expr, qnn_ops.const(m)], attrs, _safe(tvm_compat.var_name(var)))
    return QTensor(expr, x.scale, x.dtype)


rewrite.register_rule("relax.nn.avg_pool2d", rule_avg_pool2d)
