"""Element-wise products of two activations -> qnn.mul (squeeze-and-excitation gates).

A MobileNetV3 / EfficientNet SE block ends with ``x · gate`` where gate is [N, C, 1, 1] (a hard-sigmoid or
sigmoid of two 1x1 convs on the pooled features). Both operands are 8-bit, so the integer product fits
int32 (|a·b| ≤ 2^15) and is requantized once to the output scale: ``clip((a·b·m + 2^(n-1)) >> n)`` with
``m · 2^-n ≈ s_a · s_b / s_out`` (31-bit multiplier, reference/fixed_point.py). The output range is the
product's activation range; uint8 when both operands are unsigned (a gate after a sigmoid and a tensor after
ReLU / hard-sigmoid). A product with a constant is an element-wise function of one tensor: quantize/lut.py.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from tvm import relax

from ..reference import fixed_point
from ..util import tvm_compat
from . import rewrite
from .rewrite import PendingAcc, PendingAdd, QTensor, _safe


def _broadcasts_into(b: tuple[int, ...], a: tuple[int, ...]) -> bool:
    return len(b) == len(a) and all(db in (1, da) for db, da in zip(b, a))


def rule_multiply(self: Any, var: Any, value: Any, op: str, args: list[Any]) -> Any:
    """multiply of two quantized activations, the second one broadcasting into the first (either order)."""
    if not all(isinstance(a, relax.Var) and isinstance(self.values.get(a), (QTensor, PendingAcc, PendingAdd))
               for a in args):
        return None
    shapes = [tvm_compat.expr_shape(a) for a in args]
    out_shape = tvm_compat.expr_shape(var)
    if tuple(shapes[0]) != tuple(out_shape):  # torchvision's SE writes gate * x: the full tensor goes first
        args, shapes = args[::-1], shapes[::-1]
    if tuple(shapes[0]) != tuple(out_shape) or not _broadcasts_into(shapes[1], out_shape):
        return None
    a, b = self.quant_of(args[0]), self.quant_of(args[1])
    if a.dtype not in ("int8", "uint8") or b.dtype not in ("int8", "uint8"):
        return None
    unsigned = a.dtype == "uint8" and b.dtype == "uint8"
    scale, dtype, out_min, out_max, rule = self._out_format(var, 0.0 if unsigned else None, None)
    m, n = fixed_point.quantize_multiplier(a.scale * b.scale / scale)
    attrs = {"shift": int(n), "out_dtype": dtype, "out_min": out_min, "out_max": out_max, "output_scale": scale}
    expr = self.call_qnn("qnn.mul", [a.expr, b.expr, relax.const(np.int64(m), "int64")], attrs,
                         _safe(tvm_compat.var_name(var)))
    q = QTensor(expr, scale, dtype)
    self._record(var, q, rule, "mul")
    return q


rewrite.register_rule("relax.multiply", rule_multiply)
