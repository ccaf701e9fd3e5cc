"""Data movement on 8-bit tensors, scale kept: channel split (YOLO's C2f, detector heads) and nearest resize
(FPN / YOLO upsampling).

- ``R.split`` arrives as a tuple binding read by ``TupleGetItem`` bindings. When the tuple is read only
  that way, each part becomes an integer ``R.strided_slice`` of the quantized input (the split binding
  itself is never emitted); otherwise the split stays float.
- ``R.image.resize2d`` with ``nearest_neighbor`` only copies elements, so TVM's own op runs on the int8 /
  uint8 tensor with the input's scale (the numpy reference has the same index rule,
  reference/interpreter.py ``_resize2d``).
- Bilinear ``resize2d`` becomes qnn.resize2d: topi's source coordinates (same float32 formula) turned into
  integer tables per output row / column (two clamped indices, the high one's weight in 2^7), the four
  products summed in int32 and rounded back by >> 14: the input's scale is kept (a convex mix of values in
  range stays in range), at most 2^-8 of a level away from the float weights.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from tvm import relax

from ..qnn import ops as qnn_ops
from ..reference import interpreter as reference
from ..util import tvm_compat
from . import rewrite
from .rewrite import PendingAcc, PendingAdd, QTensor, _safe


@dataclass
class _Split:
    x: QTensor
    bounds: list[tuple[int, int]]
    axis: int


def _quantized_input(self: Any, arg: Any) -> bool:
    return isinstance(arg, relax.Var) and isinstance(self.values.get(arg), (QTensor, PendingAcc, PendingAdd))


def _split_bounds(value: relax.Call, size: int) -> list[tuple[int, int]]:
    sections = value.attrs.indices_or_sections
    if isinstance(sections, int) or not hasattr(sections, "__len__"):
        n = int(sections)
        step = size // n
        cuts = [step * i for i in range(1, n)]
    else:
        cuts = [int(c) for c in sections]
    edges = [0] + cuts + [size]
    return [(edges[i], edges[i + 1]) for i in range(len(edges) - 1)]


def rule_split(self: Any, var: Any, value: Any, op: str, args: list[Any]) -> Any:
    if not _quantized_input(self, args[0]):
        return None
    shape = tvm_compat.expr_shape(args[0])
    axis = int(value.attrs.axis) % len(shape)
    return _Split(self.quant_of(args[0]), _split_bounds(value, int(shape[axis])), axis)


def rule_split_part(self: Any, var: Any, value: Any, op: Any, args: list[Any]) -> Any:
    part = self.values.get(value.tuple_value)
    if not isinstance(part, _Split):
        return None
    begin, end = part.bounds[int(value.index)]
    expr = self.builder_.emit(relax.op.strided_slice(part.x.expr, axes=[part.axis], begin=[begin], end=[end]))
    return QTensor(expr, part.x.scale, part.x.dtype)


def find_splits(mutator: Any, func: relax.Function) -> dict[Any, Any]:
    """Splits whose tuple only TupleGetItem bindings read: {split var: rule_split, part var: rule_split_part}."""
    bindings = list(tvm_compat.bindings(func))
    readers: dict[Any, list[Any]] = {}
    for b in bindings:
        relax.analysis.post_order_visit(b.value, lambda e, v=b: readers.setdefault(e, []).append(v)
                                        if isinstance(e, relax.Var) else None)
    escaped: set[Any] = set()
    relax.analysis.post_order_visit(func.body.body, lambda e: escaped.add(e) if isinstance(e, relax.Var) else None)
    out: dict[Any, Any] = {}
    for b in bindings:
        if rewrite._op(b.value) != "relax.split" or not isinstance(b.var, relax.DataflowVar) or b.var in escaped:
            continue
        users = readers.get(b.var, [])
        if users and all(isinstance(u.value, relax.TupleGetItem) and u.value.tuple_value.same_as(b.var)
                         for u in users):
            out[b.var] = rule_split
            out.update({u.var: rule_split_part for u in users})
    return out


RESIZE_BITS = 7  # weight resolution: 255 · 2^14 fits int32 with room; error <= 2^-8 of a level


def linear_tables(in_size: int, out_size: int, mode: str, bits: int = RESIZE_BITS) -> np.ndarray:
    """(3, out_size) int32: low index, high index (clamped as topi does), weight of the high one in 2^bits."""
    coord = reference._resize_coord(out_size, in_size, mode).astype(np.float64)
    low = np.floor(coord)
    weight = np.rint((coord - low) * (1 << bits)).astype(np.int64)
    low = low.astype(np.int64)
    return np.stack([np.clip(low, 0, in_size - 1), np.clip(low + 1, 0, in_size - 1), weight]).astype(np.int32)


def _rule_bilinear(self: Any, var: Any, value: Any, args: list[Any]) -> Any:
    x = self.quant_of(args[0])
    if x.dtype not in ("int8", "uint8"):
        return None
    shape = tvm_compat.expr_shape(args[0])
    out = tvm_compat.expr_shape(var)
    mode = str(value.attrs.coordinate_transformation_mode)
    try:
        rows, cols = linear_tables(shape[2], out[2], mode), linear_tables(shape[3], out[3], mode)
    except reference.UnsupportedOp:
        return None
    attrs = {"bits": RESIZE_BITS, "out_dtype": x.dtype}
    expr = self.call_qnn("qnn.resize2d", [x.expr, qnn_ops.const(rows), qnn_ops.const(cols)], attrs,
                         _safe(tvm_compat.var_name(var)))
    return QTensor(expr, x.scale, x.dtype)


def rule_resize2d(self: Any, var: Any, value: Any, op: str, args: list[Any]) -> Any:
    a = value.attrs
    if str(a.layout) != "NCHW" or not _quantized_input(self, args[0]):
        return None
    if str(a.method) == "linear":
        return _rule_bilinear(self, var, value, args)
    if str(a.method) != "nearest_neighbor":
        return None
    x = self.quant_of(args[0])
    expr = self.builder_.emit(relax.op.image.resize2d(
        x.expr, self.expr_of(args[1]), roi=[float(r) for r in a.roi], layout="NCHW", method="nearest_neighbor",
        coordinate_transformation_mode=str(a.coordinate_transformation_mode), rounding_method=str(a.rounding_method),
        cubic_alpha=float(a.cubic_alpha), cubic_exclude=int(a.cubic_exclude),
        extrapolation_value=float(a.extrapolation_value), out_dtype=x.dtype))
    return QTensor(expr, x.scale, x.dtype)


rewrite.register_finder(find_splits)
rewrite.register_rule("relax.image.resize2d", rule_resize2d)
