"""qnn-level ops as named Relax functions, and their reference lowerings to plain integer Relax.

Each qnn op in a quantized module is a private Relax function carrying `{"qnn.op": "qnn.conv2d",
...attributes}`; `main` calls it with the activation and the op's integer constants. The body of
that function is the op's *reference lowering* (the same rule the legalize registry holds as the
fallback), so a quantized module runs as is and prints like Relay's qnn dialect did.

Argument conventions (activations first, then constants):
- qnn.quantize(x_f32) / qnn.dequantize(x_int)       attrs: scale, out_dtype
- qnn.conv2d(x, w OIHW int8, bias int32 (O,), m int64 (O,), n int64 (O,))   requantized output
  qnn.conv2d(x, w, bias, dq float32 (O,))            float output (out_dtype "float32")
  attrs: strides, padding (t,l,b,r), dilation, groups, out_dtype, out_min, out_max
- qnn.dense(x (N,K), w (O,K) int8, bias, m, n | dq)  attrs: out_dtype, out_min, out_max
- qnn.add(a, b, ma int64 (), mb int64 ())            attrs: shift, out_dtype, out_min, out_max
- qnn.requantize(x, m int64 ())                      attrs: shift, out_dtype, out_min, out_max
- qnn.max_pool2d(x)                                  attrs: pool_size, strides, padding, dilation, ceil_mode
- qnn.global_avg_pool2d(x, m int64 ())               attrs: shift, keepdims, out_dtype, out_min, out_max
  qnn.global_avg_pool2d(x, dq float32 (C,))          float output: sum · dq (int32 x: summed in int64)
  qnn.global_avg_pool2d(x) with out_dtype "int32"    the raw int32 sums (feeding a classifier)
- qnn.lut(x 8-bit, table (C | 1, 256) 8-bit)          attrs: out_dtype, output_scale (table row c for channel c
  along axis 1; index x + 128 for int8 x, x for uint8): any element-wise function of one 8-bit tensor
- qnn.mul(a, b, m int64 ())                          attrs: shift, out_dtype, out_min, out_max (b broadcasts,
  e.g. a squeeze-and-excitation gate [N,C,1,1]): clip((a·b·m + 2^(n-1)) >> n)
- qnn.avg_pool2d(x 8-bit, m int64 (OH, OW))         attrs: pool_size, strides, padding, shift, out_dtype,
  out_min, out_max: clip((window sum · m[oh, ow] + 2^(n-1)) >> n), zero padding (m holds 1/count)
- qnn.resize2d(x 8-bit, rows int32 (3, OH), cols int32 (3, OW))   attrs: bits, out_dtype: bilinear with
  integer weights (index low, index high, weight of high in 2^bits), round half up, >> 2·bits; scale kept
- qnn.dense with an int32 input: int64 accumulation and bias (pooled features into the classifier)
- qnn.conv2d / qnn.dense with out_dtype "int32": clip(acc + bias, out_min, out_max), no requantize
ISQuant's graphs have zero points 0 everywhere; requantize is `clip((a·m + 2^(n-1)) >> n, lo, hi)`
(fixed_point.py). Pre-quantized models (quantize/prequant.py) bring their own zero points, folded so the
kernels' arithmetic is unchanged: an input zero point into the int32 bias (and an explicit pad),
an output zero point into the rounding constant (attr `out_zero_point` of conv/dense: 2^(n-1) + z·2^n;
an optional trailing int64 `rounding` argument of add / requantize / 8-bit global pool holds the
whole constant, input zero points included), attr `zero_point` of quantize / dequantize."""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np
import tvm
from tvm import relax

from ..util import tvm_compat

Rule = Callable[[relax.BlockBuilder, Sequence[relax.Expr], Mapping[str, Any], Any], relax.Expr]


def _channel(bb: relax.BlockBuilder, v: relax.Expr, ndim: int) -> relax.Expr:
    shape = [1] * ndim
    shape[1] = tvm_compat.expr_shape(v)[0]
    return bb.emit(relax.op.reshape(v, shape))


def requantize_expr(bb: relax.BlockBuilder, acc: relax.Expr, m: relax.Expr, n: relax.Expr,
                    lo: int, hi: int, out_dtype: str, zero_point: int = 0,
                    rounding: relax.Expr | None = None) -> relax.Expr:
    """(acc·m + 2^(n-1) + z·2^n) >> n, saturated, cast. m and n broadcast against acc (int64).
    `rounding` replaces the whole constant (zero points of add / requantize / pool folded in)."""
    wide = bb.emit(relax.op.astype(acc, "int64"))
    prod = bb.emit(relax.op.multiply(wide, m))
    if rounding is not None:
        half = rounding
    else:
        half = bb.emit(relax.op.left_shift(relax.const(1, "int64"), relax.op.subtract(n, relax.const(1, "int64"))))
        if zero_point:
            half = bb.emit(relax.op.add(half, relax.op.left_shift(relax.const(int(zero_point), "int64"), n)))
    shifted = bb.emit(relax.op.right_shift(relax.op.add(prod, half), n))
    clipped = bb.emit(relax.op.clip(shifted, tvm_compat.prim_int(lo), tvm_compat.prim_int(hi)))
    return relax.op.astype(clipped, out_dtype)


def _epilogue(bb: relax.BlockBuilder, acc: relax.Expr, rest: Sequence[relax.Expr], attrs: Mapping[str, Any]) -> relax.Expr:
    ndim = len(tvm_compat.expr_shape(acc))
    if str(attrs["out_dtype"]) == "float32":
        scale = _channel(bb, rest[0], ndim)
        return relax.op.multiply(bb.emit(relax.op.astype(acc, "float32")), scale)
    if str(attrs["out_dtype"]) == "int32":
        return relax.op.clip(acc, tvm_compat.prim_int(attrs["out_min"], "int32"), tvm_compat.prim_int(attrs["out_max"], "int32"))
    m, n = (_channel(bb, v, ndim) for v in rest)
    return requantize_expr(bb, acc, m, n, int(attrs["out_min"]), int(attrs["out_max"]), str(attrs["out_dtype"]),
                           zero_point=int(attrs.get("out_zero_point", 0)))


def ref_conv2d(bb: relax.BlockBuilder, args: Sequence[relax.Expr], attrs: Mapping[str, Any], target: Any = None) -> relax.Expr:
    x, w, bias = args[:3]
    acc = bb.emit(relax.op.nn.conv2d(x, w, strides=list(attrs["strides"]), padding=list(attrs["padding"]),
                                     dilation=list(attrs["dilation"]), groups=int(attrs["groups"]), out_dtype="int32"))
    acc = bb.emit(relax.op.add(acc, _channel(bb, bias, 4)))
    return _epilogue(bb, acc, args[3:], attrs)


def ref_dense(bb: relax.BlockBuilder, args: Sequence[relax.Expr], attrs: Mapping[str, Any], target: Any = None) -> relax.Expr:
    x, w, bias = args[:3]
    if tvm_compat.expr_dtype(x) == "int32":  # pooled int32 features: int64 accumulation
        acc = bb.emit(relax.op.matmul(relax.op.astype(x, "int64"), relax.op.astype(relax.op.permute_dims(w), "int64"),
                                      out_dtype="int64"))
        acc = bb.emit(relax.op.add(acc, _channel(bb, bias, 2)))
        return _epilogue(bb, acc, args[3:], attrs)
    acc = bb.emit(relax.op.matmul(x, relax.op.permute_dims(w), out_dtype="int32"))
    acc = bb.emit(relax.op.add(acc, _channel(bb, bias, 2)))
    return _epilogue(bb, acc, args[3:], attrs)


def ref_add(bb: relax.BlockBuilder, args: Sequence[relax.Expr], attrs: Mapping[str, Any], target: Any = None) -> relax.Expr:
    a, b, ma, mb = args[:4]
    n = relax.const(int(attrs["shift"]), "int64")
    pa = bb.emit(relax.op.multiply(relax.op.astype(a, "int64"), ma))
    pb = bb.emit(relax.op.multiply(relax.op.astype(b, "int64"), mb))
    half = args[4] if len(args) > 4 else relax.const(1 << (int(attrs["shift"]) - 1), "int64")
    total = bb.emit(relax.op.right_shift(relax.op.add(relax.op.add(pa, pb), half), n))
    clipped = bb.emit(relax.op.clip(total, tvm_compat.prim_int(attrs["out_min"]), tvm_compat.prim_int(attrs["out_max"])))
    return relax.op.astype(clipped, str(attrs["out_dtype"]))


def ref_requantize(bb: relax.BlockBuilder, args: Sequence[relax.Expr], attrs: Mapping[str, Any], target: Any = None) -> relax.Expr:
    x, m = args[:2]
    n = relax.const(int(attrs["shift"]), "int64")
    return requantize_expr(bb, x, m, n, int(attrs["out_min"]), int(attrs["out_max"]), str(attrs["out_dtype"]),
                           rounding=args[2] if len(args) > 2 else None)


def ref_quantize(bb: relax.BlockBuilder, args: Sequence[relax.Expr], attrs: Mapping[str, Any], target: Any = None) -> relax.Expr:
    # R.quantize divides by the scale and rounds half to even, exactly like numpy's x / s then round.
    return relax.op.quantize(args[0], relax.const(float(attrs["scale"]), "float32"),
                             relax.const(int(attrs.get("zero_point", 0)), str(attrs["out_dtype"])), axis=1,
                             out_dtype=str(attrs["out_dtype"]))


def ref_dequantize(bb: relax.BlockBuilder, args: Sequence[relax.Expr], attrs: Mapping[str, Any], target: Any = None) -> relax.Expr:
    zp = int(attrs.get("zero_point", 0))
    if zp:
        centred = bb.emit(relax.op.subtract(relax.op.astype(args[0], "int32"), relax.const(zp, "int32")))
        wide = bb.emit(relax.op.astype(centred, "float32"))
    else:
        wide = bb.emit(relax.op.astype(args[0], "float32"))
    return relax.op.multiply(wide, relax.const(float(attrs["scale"]), "float32"))


def ref_max_pool2d(bb: relax.BlockBuilder, args: Sequence[relax.Expr], attrs: Mapping[str, Any], target: Any = None) -> relax.Expr:
    # Integer max pooling pads with the dtype's minimum, as the float op pads with -inf.
    return relax.op.nn.max_pool2d(args[0], pool_size=list(attrs["pool_size"]), strides=list(attrs["strides"]),
                                  padding=list(attrs["padding"]), dilation=list(attrs["dilation"]),
                                  ceil_mode=bool(attrs["ceil_mode"]))


def ref_global_avg_pool2d(bb: relax.BlockBuilder, args: Sequence[relax.Expr], attrs: Mapping[str, Any], target: Any = None) -> relax.Expr:
    x = args[0]
    if str(attrs["out_dtype"]) == "float32":
        # int32 inputs (a classifier's accumulators) are summed in int64 so no spatial size overflows.
        acc_dtype = "int64" if tvm_compat.expr_dtype(x) == "int32" else "int32"
        total = bb.emit(relax.op.sum(relax.op.astype(x, acc_dtype), axis=[2, 3], keepdims=bool(attrs["keepdims"])))
        wide = bb.emit(relax.op.astype(total, "float32"))
        return relax.op.multiply(wide, _channel(bb, args[1], len(tvm_compat.expr_shape(wide))))
    total = bb.emit(relax.op.sum(relax.op.astype(x, "int32"), axis=[2, 3], keepdims=bool(attrs["keepdims"])))
    if str(attrs["out_dtype"]) == "int32":
        return total
    m = args[1]
    n = relax.const(int(attrs["shift"]), "int64")
    return requantize_expr(bb, total, m, n, int(attrs["out_min"]), int(attrs["out_max"]), str(attrs["out_dtype"]),
                           rounding=args[2] if len(args) > 2 else None)


def ref_lut(bb: relax.BlockBuilder, args: Sequence[relax.Expr], attrs: Mapping[str, Any], target: Any = None) -> relax.Expr:
    # one gather from the flattened table: index = x (+128 for int8) (+ 256·c per channel)
    x, table = args[:2]
    shape = tvm_compat.expr_shape(x)
    rows = int(tvm_compat.expr_shape(table)[0])
    idx = bb.emit(relax.op.astype(x, "int32"))
    if tvm_compat.expr_dtype(x) == "int8":
        idx = bb.emit(relax.op.add(idx, relax.const(128, "int32")))
    if rows > 1:
        offsets = np.arange(rows, dtype=np.int32) * 256
        idx = bb.emit(relax.op.add(idx, relax.const(offsets.reshape([1, rows] + [1] * (len(shape) - 2)), "int32")))
    flat_table = bb.emit(relax.op.reshape(table, (rows * 256,)))
    flat = bb.emit(relax.op.take(flat_table, bb.emit(relax.op.reshape(idx, (int(np.prod(shape)),))), axis=0,
                                        mode="clip"))
    return relax.op.reshape(flat, shape)


def ref_mul(bb: relax.BlockBuilder, args: Sequence[relax.Expr], attrs: Mapping[str, Any], target: Any = None) -> relax.Expr:
    a, b, m = args[:3]
    prod = bb.emit(relax.op.multiply(relax.op.astype(a, "int64"), relax.op.astype(b, "int64")))
    n = relax.const(int(attrs["shift"]), "int64")
    return requantize_expr(bb, prod, m, n, int(attrs["out_min"]), int(attrs["out_max"]), str(attrs["out_dtype"]))


def ref_avg_pool2d(bb: relax.BlockBuilder, args: Sequence[relax.Expr], attrs: Mapping[str, Any], target: Any = None) -> relax.Expr:
    # the window sum as a depthwise int32 conv with ones (exact), then the per-position requantize
    x, m = args[:2]
    channels = int(tvm_compat.expr_shape(x)[1])
    kh, kw = (int(v) for v in attrs["pool_size"])
    ones = relax.const(np.ones((channels, 1, kh, kw), np.int32), "int32")
    total = bb.emit(relax.op.nn.conv2d(relax.op.astype(x, "int32"), ones, strides=list(attrs["strides"]),
                                       padding=list(attrs["padding"]), groups=channels, out_dtype="int32"))
    shape = tvm_compat.expr_shape(m)
    m4 = bb.emit(relax.op.reshape(m, (1, 1, int(shape[0]), int(shape[1]))))
    n = relax.const(int(attrs["shift"]), "int64")
    return requantize_expr(bb, total, m4, n, int(attrs["out_min"]), int(attrs["out_max"]), str(attrs["out_dtype"]))


def ref_resize2d(bb: relax.BlockBuilder, args: Sequence[relax.Expr], attrs: Mapping[str, Any], target: Any = None) -> relax.Expr:
    x, rows, cols = args[:3]
    bits = int(attrs["bits"])
    one = relax.const(1 << bits, "int32")
    wide = bb.emit(relax.op.astype(x, "int32"))

    def part(table: relax.Expr, i: int) -> relax.Expr:
        return bb.emit(relax.op.squeeze(relax.op.strided_slice(table, axes=[0], begin=[i], end=[i + 1]), axis=[0]))

    y0, y1, wy1 = (part(rows, i) for i in range(3))
    x0, x1, wx1 = (part(cols, i) for i in range(3))
    wy1 = bb.emit(relax.op.reshape(wy1, (1, 1, -1, 1)))
    wx1 = bb.emit(relax.op.reshape(wx1, (1, 1, 1, -1)))
    wy0, wx0 = bb.emit(relax.op.subtract(one, wy1)), bb.emit(relax.op.subtract(one, wx1))

    def row_mix(r: relax.Expr) -> relax.Expr:
        g = bb.emit(relax.op.take(wide, r, axis=2))
        a = bb.emit(relax.op.multiply(relax.op.take(g, x0, axis=3), wx0))
        return bb.emit(relax.op.add(a, relax.op.multiply(relax.op.take(g, x1, axis=3), wx1)))

    total = bb.emit(relax.op.add(relax.op.multiply(row_mix(y0), wy0), relax.op.multiply(row_mix(y1), wy1)))
    shifted = bb.emit(relax.op.right_shift(relax.op.add(total, relax.const(1 << (2 * bits - 1), "int32")),
                                           relax.const(2 * bits, "int32")))
    lo, hi = (-128, 127) if str(attrs["out_dtype"]) == "int8" else (0, 255)
    clipped = bb.emit(relax.op.clip(shifted, tvm_compat.prim_int(lo, "int32"), tvm_compat.prim_int(hi, "int32")))
    return relax.op.astype(clipped, str(attrs["out_dtype"]))


REFERENCE_RULES: dict[str, Rule] = {
    "qnn.conv2d": ref_conv2d,
    "qnn.dense": ref_dense,
    "qnn.add": ref_add,
    "qnn.requantize": ref_requantize,
    "qnn.quantize": ref_quantize,
    "qnn.dequantize": ref_dequantize,
    "qnn.max_pool2d": ref_max_pool2d,
    "qnn.global_avg_pool2d": ref_global_avg_pool2d,
    "qnn.lut": ref_lut,
    "qnn.mul": ref_mul,
    "qnn.avg_pool2d": ref_avg_pool2d,
    "qnn.resize2d": ref_resize2d,
}


def make_function(op: str, args: Sequence[relax.Expr], attrs: Mapping[str, Any]) -> relax.Function:
    """A private Relax function for one qnn op: params typed like `args`, body = reference lowering."""
    bb = relax.BlockBuilder()
    params = [relax.Var(f"arg{i}", a.ty) for i, a in enumerate(args)]
    params[0] = relax.Var("data", args[0].ty)
    names: dict[int, str] = {}
    if op in ("qnn.conv2d", "qnn.dense"):
        names = {1: "weight", 2: "bias", 3: "dequant_scale"} if len(args) == 4 else {1: "weight", 2: "bias", 3: "multiplier", 4: "shift"}
    elif op in ("qnn.requantize", "qnn.global_avg_pool2d"):
        names = {1: "multiplier", 2: "rounding"}
    elif op == "qnn.add":
        names = {1: "rhs", 2: "lhs_multiplier", 3: "rhs_multiplier", 4: "rounding"}
    elif op == "qnn.resize2d":
        names = {1: "rows", 2: "cols"}
    elif op == "qnn.avg_pool2d":
        names = {1: "multiplier"}
    elif op == "qnn.lut":
        names = {1: "table"}
    elif op == "qnn.mul":
        names = {1: "rhs", 2: "multiplier"}
    for i, name in names.items():
        if i < len(params):
            params[i] = relax.Var(name, args[i].ty)
    full_attrs = {"qnn.op": op, **attrs}
    with bb.function("qnn_op", params, attrs=full_attrs, private=True):
        with bb.dataflow():
            out = bb.emit_output(REFERENCE_RULES[op](bb, params, attrs, None))
        bb.emit_func_output(out)
    return bb.get()["qnn_op"]


def attrs_of(func: relax.Function) -> dict[str, Any]:
    """Function attributes back as plain Python values."""
    out: dict[str, Any] = {}
    for key in func.attrs.keys():
        value = func.attrs[key]
        if isinstance(value, (str, int, float, bool)):
            out[str(key)] = value
        elif hasattr(value, "__len__") and not isinstance(value, str):
            out[str(key)] = [v if isinstance(v, (int, float, str, bool)) else v for v in value]
        else:
            out[str(key)] = value
    return out


def qnn_op_of(mod: tvm.IRModule, call: Any) -> str | None:
    if isinstance(call, relax.Call) and isinstance(call.op, tvm.ir.GlobalVar):
        func = mod[call.op]
        if isinstance(func, relax.Function) and func.attrs is not None and "qnn.op" in func.attrs:
            return str(func.attrs["qnn.op"])
    return None


def const(array: np.ndarray) -> relax.Expr:
    # relax.const narrows int64 arrays to int32 unless the dtype is given.
    array = np.ascontiguousarray(array)
    return relax.const(array, str(array.dtype))
