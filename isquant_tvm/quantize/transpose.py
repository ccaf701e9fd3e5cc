"""ConvTranspose (``R.nn.conv2d_transpose``) -> zero insertion on the 8-bit input + one qnn.conv2d.

A transposed conv with stride s, padding p, dilation d and output padding q equals a stride-1 conv with
dilation d of the input with s-1 zeros inserted between pixels, padded by d·(k-1)-p (plus q bottom/right),
with the kernel flipped spatially and its in/out axes swapped (per group). The zero insertion is integer
data movement (reshape, pad, slice: exact, zero point 0) and the conv is an ordinary qnn.conv2d, so every
conv kernel and the bias / ReLU epilogue fold apply unchanged; no new qnn op and no new reference.
Its weights are rounded here with the default ISQuant method and per-tensor scale (transposed convs are not
in the layer list of fold/layers.py, so the report's layer table does not show them). A padding larger
than d·(k-1) (a cropping transpose) stays float.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from tvm import relax

from ..fold.layers import Layer
from ..rounding import isquant
from ..util import tvm_compat
from . import rewrite
from .rewrite import PendingAcc, PendingAdd, QTensor


def equivalent_conv_weight(w: np.ndarray, groups: int) -> np.ndarray:
    """IOHW transposed-conv weight (I, O/g, kh, kw) -> the OIHW weight (O, I/g, kh, kw) of the equivalent conv."""
    i, og, kh, kw = w.shape
    g = int(groups)
    w = w.reshape(g, i // g, og, kh, kw).transpose(0, 2, 1, 3, 4).reshape(g * og, i // g, kh, kw)
    return np.ascontiguousarray(w[:, :, ::-1, ::-1])


def zero_insert(bb: relax.BlockBuilder, x: relax.Expr, strides: tuple[int, int]) -> relax.Expr:
    """s-1 zeros between pixels: (N, C, H, W) -> (N, C, (H-1)·sh+1, (W-1)·sw+1)."""
    sh, sw = strides
    if sh == sw == 1:
        return x
    n, c, h, w = tvm_compat.expr_shape(x)
    y = bb.emit(relax.op.reshape(x, (n, c, h, 1, w, 1)))
    y = bb.emit(relax.op.nn.pad(y, [0, 0, 0, 0, 0, 0, 0, sh - 1, 0, 0, 0, sw - 1]))
    y = bb.emit(relax.op.reshape(y, (n, c, h * sh, w * sw)))
    return bb.emit(relax.op.strided_slice(y, axes=[2, 3], begin=[0, 0], end=[(h - 1) * sh + 1, (w - 1) * sw + 1]))


def rule_conv2d_transpose(self: Any, var: Any, value: Any, op: str, args: list[Any]) -> Any:
    a = value.attrs
    if (not tvm_compat.is_const(args[1]) or str(a.data_layout) != "NCHW" or str(a.kernel_layout) != "IOHW"
            or not isinstance(self.values.get(args[0]), (QTensor, PendingAcc, PendingAdd))):
        return None
    w = tvm_compat.const_value(args[1]).astype(np.float32)
    kh, kw = w.shape[2:]
    strides = tuple(int(v) for v in a.strides)
    dh, dw = (int(v) for v in a.dilation)
    pt, pl, pb, pr = (int(v) for v in a.padding)
    oph, opw = (int(v) for v in a.output_padding)
    padding = [dh * (kh - 1) - pt, dw * (kw - 1) - pl, dh * (kh - 1) - pb + oph, dw * (kw - 1) - pr + opw]
    if min(padding) < 0:
        return None
    x = self.quant_of(args[0])
    if x.dtype not in ("int8", "uint8"):
        return None
    weight = equivalent_conv_weight(w, int(a.groups))
    name = tvm_compat.var_name(var)
    layer = Layer(f"convT_{name}", "conv2d", var, weight,
                  {"strides": [1, 1], "padding": padding, "dilation": [dh, dw], "groups": int(a.groups)}, name)
    qw = isquant.quantize_weight(weight)
    inserted = QTensor(zero_insert(self.builder_, x.expr, strides), x.scale, x.dtype)
    return PendingAcc(layer, inserted, qw.q, np.asarray(qw.scale, np.float64), var)


rewrite.register_rule("relax.nn.conv2d_transpose", rule_conv2d_transpose)
