"""A numpy interpreter of Relax `main` functions: the float graph (for activation statistics) and
the qnn-level integer graph (the bit-exact oracle for every TVM lowering).

qnn ops are evaluated from their attributes and constant arguments with the integer arithmetic of
`fixed_point`, independently of the Relax bodies and of the registered lowerings, so a test that
compares TVM's output with this interpreter checks the lowerings against the op definitions.
Integer convolutions use float64 BLAS: every int8×uint8 product sum below 2^53 is exact."""
from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import tvm
from numpy.lib.stride_tricks import sliding_window_view
from tvm import relax

from . import fixed_point, float_ops, tvm_eval
from .float_ops import UnsupportedOp
from ..util import tvm_compat

Env = dict[Any, Any]


def conv2d(x: np.ndarray, w: np.ndarray, strides: Sequence[int], padding: Sequence[int],
           dilation: Sequence[int] = (1, 1), groups: int = 1) -> np.ndarray:
    """NCHW/OIHW convolution, zero padding (top, left, bottom, right). Integer inputs give an exact
    int64 result; float inputs are computed in float32."""
    integer = np.issubdtype(x.dtype, np.integer)
    work = np.float64 if integer else np.float32
    x = x.astype(work, copy=False)
    w = w.astype(work, copy=False)
    n, c, _, _ = x.shape
    o, cg, kh, kw = w.shape
    if len(padding) == 2:
        padding = [padding[0], padding[1], padding[0], padding[1]]
    top, left, bottom, right = padding
    xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    dh, dw = dilation
    sh, sw = strides
    win = sliding_window_view(xp, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(2, 3))
    win = win[:, :, ::sh, ::sw, ::dh, ::dw]  # (N, C, OH, OW, KH, KW)
    oh, ow = win.shape[2], win.shape[3]
    if groups == c and cg == 1 and o == c:  # depthwise: 9 vector FMAs beat a batched tiny GEMM
        out = np.zeros((n, c, oh, ow), work)
        for i in range(kh):
            for j in range(kw):
                out += win[..., i, j] * w[None, :, 0, i, j, None, None]
    else:
        og = o // groups
        outs = []
        for g in range(groups):
            patch = win[:, g * cg:(g + 1) * cg]  # (N, Cg, OH, OW, KH, KW)
            cols = patch.transpose(0, 2, 3, 1, 4, 5).reshape(n * oh * ow, cg * kh * kw)
            wg = w[g * og:(g + 1) * og].reshape(og, cg * kh * kw)
            outs.append((cols @ wg.T).reshape(n, oh, ow, og).transpose(0, 3, 1, 2))
        out = np.concatenate(outs, axis=1) if groups > 1 else outs[0]
    return np.rint(out).astype(np.int64) if integer else out.astype(np.float32)


def max_pool2d(x: np.ndarray, pool: Sequence[int], strides: Sequence[int], padding: Sequence[int],
               dilation: Sequence[int] = (1, 1), ceil_mode: bool = False) -> np.ndarray:
    top, left, bottom, right = padding if len(padding) == 4 else (*padding, *padding)
    kh, kw = pool
    sh, sw = strides
    h, w = x.shape[2] + top + bottom, x.shape[3] + left + right
    if ceil_mode:  # extra bottom/right padding so the last partial window is kept
        ext_h = (-(h - (kh - 1) * dilation[0] - 1) % sh)
        ext_w = (-(w - (kw - 1) * dilation[1] - 1) % sw)
        bottom, right = bottom + ext_h, right + ext_w
    fill = np.iinfo(x.dtype).min if np.issubdtype(x.dtype, np.integer) else -np.inf
    xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), constant_values=fill)
    win = sliding_window_view(xp, ((kh - 1) * dilation[0] + 1, (kw - 1) * dilation[1] + 1), axis=(2, 3))
    win = win[:, :, ::sh, ::sw, ::dilation[0], ::dilation[1]]
    return win.max(axis=(-2, -1))


# --- qnn ops: the integer semantics every lowering must reproduce ------------------------------

def _per_channel(v: np.ndarray, ndim: int) -> np.ndarray:
    shape = [1] * ndim
    shape[1] = -1
    return v.reshape(shape)


def qnn_conv2d(args: Sequence[np.ndarray], attrs: Mapping[str, Any]) -> np.ndarray:
    x, w, bias = args[0], args[1], args[2]
    acc = conv2d(x, w, attrs["strides"], attrs["padding"], attrs["dilation"], int(attrs["groups"]))
    acc = acc + _per_channel(bias.astype(np.int64), 4)
    return _epilogue(acc, args[3:], attrs)


def qnn_dense(args: Sequence[np.ndarray], attrs: Mapping[str, Any]) -> np.ndarray:
    x, w, bias = args[0], args[1], args[2]
    acc = np.rint(x.astype(np.float64) @ w.astype(np.float64).T).astype(np.int64) + bias.astype(np.int64)[None]
    return _epilogue(acc, args[3:], attrs)


def _epilogue(acc: np.ndarray, rest: Sequence[np.ndarray], attrs: Mapping[str, Any]) -> np.ndarray:
    out_dtype = str(attrs["out_dtype"])
    if out_dtype == "float32":
        return acc.astype(np.float32) * _per_channel(rest[0].astype(np.float32), acc.ndim)
    if out_dtype == "int32":
        return np.clip(acc, int(attrs["out_min"]), int(attrs["out_max"])).astype(np.int32)
    m, n = rest
    return fixed_point.requantize(acc, m, n, int(attrs["out_min"]), int(attrs["out_max"]),
                                  zero_point=int(attrs.get("out_zero_point", 0))).astype(out_dtype)


def _rounding(args: Sequence[np.ndarray], index: int, shift: int) -> np.int64:
    """The optional trailing rounding constant of add / requantize / pool (zero points folded in)."""
    return np.int64(args[index]) if len(args) > index else np.int64(1) << np.int64(shift - 1)


def qnn_add(args: Sequence[np.ndarray], attrs: Mapping[str, Any]) -> np.ndarray:
    a, b, ma, mb = args[:4]
    n = np.int64(attrs["shift"])
    total = a.astype(np.int64) * np.int64(ma) + b.astype(np.int64) * np.int64(mb) + _rounding(args, 4, int(n))
    return np.clip(total >> n, int(attrs["out_min"]), int(attrs["out_max"])).astype(str(attrs["out_dtype"]))


def qnn_requantize(args: Sequence[np.ndarray], attrs: Mapping[str, Any]) -> np.ndarray:
    x, m = args[:2]
    n = np.int64(attrs["shift"])
    out = np.clip((x.astype(np.int64) * np.int64(m) + _rounding(args, 2, int(n))) >> n,
                  int(attrs["out_min"]), int(attrs["out_max"]))
    return out.astype(str(attrs["out_dtype"]))


def qnn_quantize(args: Sequence[np.ndarray], attrs: Mapping[str, Any]) -> np.ndarray:
    lo, hi = fixed_point.dtype_bounds(str(attrs["out_dtype"]))
    scaled = args[0].astype(np.float32) / np.float32(attrs["scale"])
    return np.clip(np.round(scaled) + int(attrs.get("zero_point", 0)), lo, hi).astype(str(attrs["out_dtype"]))


def qnn_dequantize(args: Sequence[np.ndarray], attrs: Mapping[str, Any]) -> np.ndarray:
    return (args[0].astype(np.int32) - np.int32(attrs.get("zero_point", 0))).astype(np.float32) * np.float32(attrs["scale"])


def qnn_max_pool2d(args: Sequence[np.ndarray], attrs: Mapping[str, Any]) -> np.ndarray:
    return max_pool2d(args[0], attrs["pool_size"], attrs["strides"], attrs["padding"], attrs["dilation"],
                      bool(attrs["ceil_mode"]))


def qnn_global_avg_pool2d(args: Sequence[np.ndarray], attrs: Mapping[str, Any]) -> np.ndarray:
    total = args[0].astype(np.int64).sum(axis=(2, 3), keepdims=bool(attrs["keepdims"]))
    if str(attrs["out_dtype"]) == "float32":
        return total.astype(np.float32) * _per_channel(args[1].astype(np.float32), total.ndim)
    if str(attrs["out_dtype"]) == "int32":
        return total.astype(np.int32)
    n = np.int64(attrs["shift"])
    out = np.clip((total * np.int64(args[1]) + _rounding(args, 2, int(n))) >> n, int(attrs["out_min"]), int(attrs["out_max"]))
    return out.astype(str(attrs["out_dtype"]))


def qnn_lut(args: Sequence[np.ndarray], attrs: Mapping[str, Any]) -> np.ndarray:
    """table (C, 256) or (1, 256): y[..c..] = table[c, x + 128 (int8) | x (uint8)], c along axis 1."""
    x, table = args[0], args[1]
    idx = x.astype(np.int64) + (128 if x.dtype == np.int8 else 0)
    if table.shape[0] > 1:
        idx = idx + _per_channel(np.arange(table.shape[0], dtype=np.int64) * 256, x.ndim)
    return table.reshape(-1)[idx].astype(str(attrs["out_dtype"]))


def qnn_mul(args: Sequence[np.ndarray], attrs: Mapping[str, Any]) -> np.ndarray:
    """clip((a·b·m + 2^(n-1)) >> n): the integer product (numpy broadcasting, e.g. a gate [N,C,1,1]),
    requantized like qnn.requantize."""
    a, b, m = args[:3]
    n = np.int64(attrs["shift"])
    prod = a.astype(np.int64) * b.astype(np.int64)
    out = np.clip((prod * np.int64(m) + (np.int64(1) << (n - 1))) >> n, int(attrs["out_min"]), int(attrs["out_max"]))
    return out.astype(str(attrs["out_dtype"]))


def qnn_avg_pool2d(args: Sequence[np.ndarray], attrs: Mapping[str, Any]) -> np.ndarray:
    """window sum (zero padding) · m[oh, ow] (fixed-point 1/count), round half up, >> shift, saturate."""
    x, m = args[0].astype(np.int64), args[1].astype(np.int64)
    top, left, bottom, right = (int(v) for v in attrs["padding"])
    kh, kw = (int(v) for v in attrs["pool_size"])
    sh, sw = (int(v) for v in attrs["strides"])
    xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    total = sliding_window_view(xp, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw].sum(axis=(-2, -1))
    n = np.int64(attrs["shift"])
    out = np.clip((total * m + (np.int64(1) << (n - 1))) >> n, int(attrs["out_min"]), int(attrs["out_max"]))
    return out.astype(str(attrs["out_dtype"]))


def qnn_resize2d(args: Sequence[np.ndarray], attrs: Mapping[str, Any]) -> np.ndarray:
    """Bilinear resize with integer weights: rows / cols (3, OH | OW) int32 = (low index, high index, high
    weight w of 2^bits); sum of the four products with (2^bits - w) and w, round half up, >> 2·bits."""
    x, rows, cols = args[0].astype(np.int64), args[1].astype(np.int64), args[2].astype(np.int64)
    bits = int(attrs["bits"])
    one = np.int64(1) << bits
    wy1, wx1 = rows[2][:, None], cols[2][None, :]
    wy0, wx0 = one - wy1, one - wx1
    top = x[:, :, rows[0]][:, :, :, cols[0]] * wx0 + x[:, :, rows[0]][:, :, :, cols[1]] * wx1
    bottom = x[:, :, rows[1]][:, :, :, cols[0]] * wx0 + x[:, :, rows[1]][:, :, :, cols[1]] * wx1
    total = top * wy0 + bottom * wy1
    out = (total + (np.int64(1) << (2 * bits - 1))) >> (2 * bits)
    lo, hi = fixed_point.dtype_bounds(str(attrs["out_dtype"]))
    return np.clip(out, lo, hi).astype(str(attrs["out_dtype"]))


QNN_REFERENCE: dict[str, Callable[[Sequence[np.ndarray], Mapping[str, Any]], np.ndarray]] = {
    "qnn.conv2d": qnn_conv2d,
    "qnn.dense": qnn_dense,
    "qnn.add": qnn_add,
    "qnn.requantize": qnn_requantize,
    "qnn.quantize": qnn_quantize,
    "qnn.dequantize": qnn_dequantize,
    "qnn.max_pool2d": qnn_max_pool2d,
    "qnn.global_avg_pool2d": qnn_global_avg_pool2d,
    "qnn.lut": qnn_lut,
    "qnn.mul": qnn_mul,
    "qnn.avg_pool2d": qnn_avg_pool2d,
    "qnn.resize2d": qnn_resize2d,
}


# --- plain Relax ops ---------------------------------------------------------------------------

def _ints(v: Any) -> list[int]:
    return [int(i) for i in v]


def _binary(fn: Callable[[Any, Any], Any]) -> Callable[[list[Any], Any, str], np.ndarray]:
    def apply(args: list[Any], attrs: Any, dtype: str) -> np.ndarray:
        a, b = args
        if np.issubdtype(np.result_type(a, b), np.integer):
            return fn(np.asarray(a, np.int64), np.asarray(b, np.int64)).astype(dtype)
        return fn(a, b).astype(dtype)

    return apply


def _strided_slice(args: list[Any], attrs: Any, dtype: str) -> np.ndarray:
    x, axes, begin, end = args[:4]
    strides = args[4] if len(args) > 4 else [1] * len(axes)
    index = [slice(None)] * x.ndim
    for ax, b, e, s in zip(axes, begin, end, strides):
        index[int(ax)] = slice(int(b), min(int(e), x.shape[int(ax)]), int(s))
    return x[tuple(index)]


def _pad(args: list[Any], attrs: Any, dtype: str) -> np.ndarray:
    widths = _ints(attrs.pad_width)
    return np.pad(args[0], list(zip(widths[0::2], widths[1::2])), constant_values=float(attrs.pad_value))


def _mean(args: list[Any], attrs: Any, dtype: str) -> np.ndarray:
    axis = tuple(_ints(attrs.axis)) if attrs.axis is not None else None
    return args[0].mean(axis=axis, keepdims=bool(attrs.keepdims), dtype=np.float32).astype(dtype)


def _clip(args: list[Any], attrs: Any, dtype: str) -> np.ndarray:
    return np.clip(args[0], args[1], args[2]).astype(dtype)


OPS: dict[str, Callable[[list[Any], Any, str], np.ndarray]] = {
    "relax.nn.conv2d": lambda a, at, dt: conv2d(a[0], a[1], _ints(at.strides), _ints(at.padding),
                                                _ints(at.dilation), int(at.groups)).astype(dt),
    "relax.matmul": lambda a, at, dt: np.matmul(a[0].astype(np.float64 if np.issubdtype(a[0].dtype, np.integer) else a[0].dtype),
                                               a[1].astype(np.float64 if np.issubdtype(a[1].dtype, np.integer) else a[1].dtype)).astype(dt),
    "relax.add": _binary(np.add),
    "relax.subtract": _binary(np.subtract),
    "relax.multiply": _binary(np.multiply),
    "relax.divide": lambda a, at, dt: (a[0] / a[1]).astype(dt),
    "relax.maximum": _binary(np.maximum),
    "relax.minimum": _binary(np.minimum),
    "relax.right_shift": _binary(np.right_shift),
    "relax.left_shift": _binary(np.left_shift),
    "relax.nn.relu": lambda a, at, dt: np.maximum(a[0], 0).astype(dt),
    "relax.clip": _clip,
    "relax.round": lambda a, at, dt: np.round(a[0]).astype(dt),
    "relax.astype": lambda a, at, dt: a[0].astype(dt),
    "relax.sqrt": lambda a, at, dt: np.sqrt(a[0]).astype(dt),
    "relax.sigmoid": lambda a, at, dt: (1 / (1 + np.exp(-a[0]))).astype(dt),
    "relax.nn.softmax": lambda a, at, dt: _softmax(a[0], int(at.axis)).astype(dt),
    "relax.nn.max_pool2d": lambda a, at, dt: max_pool2d(a[0], _ints(at.pool_size), _ints(at.strides),
                                                        _ints(at.padding), _ints(at.dilation), bool(at.ceil_mode)),
    "relax.mean": _mean,
    "relax.nn.avg_pool2d": lambda a, at, dt: _avg_pool2d(a[0], at).astype(dt),
    "relax.sum": lambda a, at, dt: a[0].sum(axis=tuple(_ints(at.axis)), keepdims=bool(at.keepdims)).astype(dt),
    "relax.reshape": lambda a, at, dt: _reshape(a[0], a[1]),
    "relax.flatten": lambda a, at, dt: a[0].reshape(a[0].shape[0], -1),
    "relax.permute_dims": lambda a, at, dt: np.transpose(a[0], _ints(at.axes) if at.axes is not None else None),
    "relax.concat": lambda a, at, dt: np.concatenate(a[0], axis=int(at.axis)),
    "relax.strided_slice": _strided_slice,
    "relax.nn.pad": _pad,
    "relax.squeeze": lambda a, at, dt: np.squeeze(a[0], axis=tuple(_ints(at.axis)) if at.axis is not None else None),
    "relax.nn.adaptive_avg_pool2d": lambda a, at, dt: a[0].mean(axis=(2, 3), keepdims=True).astype(dt),
}


# --- float rules for the element-wise activations the ONNX importer emits (issue 15, cov-rules: the LUT
# tables of quantize/lut.py are these functions evaluated on the 256 input levels). Kept as one block
# so the range-step coverage work (cov-ranges) merges around it.

def _erf(x: np.ndarray) -> np.ndarray:
    from scipy.special import erf

    return erf(x.astype(np.float64)).astype(x.dtype)


def _prelu(args: list[Any], attrs: Any, dtype: str) -> np.ndarray:
    x, alpha = args[0], np.asarray(args[1])
    axis = int(attrs.axis) % x.ndim
    shape = [1] * x.ndim
    shape[axis] = -1
    return np.where(x >= 0, x, x * alpha.reshape(shape)).astype(dtype)


def _split(args: list[Any], attrs: Any, dtype: str) -> list[np.ndarray]:
    x = args[0]
    axis = int(attrs.axis) % x.ndim
    sections = attrs.indices_or_sections
    if hasattr(sections, "__len__"):
        return np.split(x, [int(c) for c in sections], axis=axis)
    return np.split(x, int(sections), axis=axis)


def _resize_coord(out_size: int, in_size: int, mode: str) -> np.ndarray:
    """topi's resize input coordinate of every output index, in float32 like the TVM kernel."""
    x = np.arange(out_size, dtype=np.float32)
    scale = np.float32(in_size) / np.float32(out_size)
    if mode == "align_corners":
        return x * np.float32((in_size - 1) / (out_size - 1)) if out_size > 1 else np.zeros_like(x)
    if mode == "asymmetric":
        return x * scale
    if mode == "pytorch_half_pixel" and out_size == 1:
        return np.zeros_like(x)
    if mode in ("half_pixel", "pytorch_half_pixel"):
        return (x + np.float32(0.5)) * scale - np.float32(0.5)
    raise UnsupportedOp(f"resize2d coordinate_transformation_mode {mode!r} has no numpy rule")


def _nearest_index(coord: np.ndarray, rounding: str, mode: str, in_size: int) -> np.ndarray:
    if rounding == "":
        rounding = "round" if mode == "align_corners" else "floor"
    ops = {"round": np.round, "floor": np.floor, "ceil": np.ceil,
           "round_prefer_floor": lambda c: np.ceil(c - np.float32(0.5)),
           "round_prefer_ceil": lambda c: np.floor(c + np.float32(0.5))}
    if rounding not in ops:
        raise UnsupportedOp(f"resize2d rounding_method {rounding!r} has no numpy rule")
    return np.clip(ops[rounding](coord).astype(np.int64), 0, in_size - 1)


def _resize2d(args: list[Any], attrs: Any, dtype: str) -> np.ndarray:
    """relax.image.resize2d, NCHW: nearest (any dtype: a gather) and linear (float)."""
    x, size = args[0], [int(s) for s in args[1]]
    if str(attrs.layout) != "NCHW":
        raise UnsupportedOp(f"resize2d layout {attrs.layout} has no numpy rule")
    mode, method = str(attrs.coordinate_transformation_mode), str(attrs.method)
    (H, W), (OH, OW) = x.shape[2:], size
    cy, cx = _resize_coord(OH, H, mode), _resize_coord(OW, W, mode)
    if method == "nearest_neighbor":
        iy = _nearest_index(cy, str(attrs.rounding_method), mode, H)
        ix = _nearest_index(cx, str(attrs.rounding_method), mode, W)
        return x[:, :, iy][:, :, :, ix].astype(dtype)
    if method != "linear":
        raise UnsupportedOp(f"resize2d method {method!r} has no numpy rule")
    y0, x0 = np.floor(cy), np.floor(cx)
    wy, wx = (cy - y0)[:, None], (cx - x0)[None, :]
    y0, x0 = y0.astype(np.int64), x0.astype(np.int64)
    ya, yb = np.clip(y0, 0, H - 1), np.clip(y0 + 1, 0, H - 1)
    xa, xb = np.clip(x0, 0, W - 1), np.clip(x0 + 1, 0, W - 1)
    xf = x.astype(np.float32)
    top = xf[:, :, ya][:, :, :, xa] * (1 - wx) + xf[:, :, ya][:, :, :, xb] * wx
    bottom = xf[:, :, yb][:, :, :, xa] * (1 - wx) + xf[:, :, yb][:, :, :, xb] * wx
    return (top * (1 - wy) + bottom * wy).astype(dtype)


def conv2d_transpose(x: np.ndarray, w: np.ndarray, strides: Sequence[int], padding: Sequence[int],
                     output_padding: Sequence[int], dilation: Sequence[int], groups: int) -> np.ndarray:
    """IOHW transposed conv = zero insertion + a stride-1 conv with the flipped, in/out-swapped kernel."""
    n, c, h, wd = x.shape
    i, og, kh, kw = w.shape
    sh, sw = strides
    dh, dw = dilation
    pt, pl, pb, pr = padding
    up = np.zeros((n, c, (h - 1) * sh + 1, (wd - 1) * sw + 1), x.dtype)
    up[:, :, ::sh, ::sw] = x
    g = int(groups)
    weq = w.reshape(g, i // g, og, kh, kw).transpose(0, 2, 1, 3, 4).reshape(g * og, i // g, kh, kw)[:, :, ::-1, ::-1]
    pads = [dh * (kh - 1) - pt, dw * (kw - 1) - pl, dh * (kh - 1) - pb + output_padding[0],
            dw * (kw - 1) - pr + output_padding[1]]
    crop = [max(0, -p) for p in pads]
    out = conv2d(up, np.ascontiguousarray(weq), (1, 1), [max(0, p) for p in pads], (dh, dw), g)
    return out[:, :, crop[0]:out.shape[2] - crop[2], crop[1]:out.shape[3] - crop[3]]


ACTIVATION_OPS: dict[str, Callable[[list[Any], Any, str], np.ndarray]] = {
    "relax.tanh": lambda a, at, dt: np.tanh(a[0]).astype(dt),
    "relax.exp": lambda a, at, dt: np.exp(a[0]).astype(dt),
    "relax.erf": lambda a, at, dt: _erf(a[0]).astype(dt),
    "relax.negative": lambda a, at, dt: np.negative(a[0]).astype(dt),
    "relax.abs": lambda a, at, dt: np.abs(a[0]).astype(dt),
    "relax.power": lambda a, at, dt: np.power(a[0], a[1]).astype(dt),
    "relax.nn.silu": lambda a, at, dt: (a[0] / (1 + np.exp(-a[0]))).astype(dt),
    "relax.nn.gelu": lambda a, at, dt: (0.5 * a[0] * (1 + _erf(a[0] / np.float32(np.sqrt(2))))).astype(dt),
    "relax.nn.gelu_tanh": lambda a, at, dt: (0.5 * a[0] * (1 + np.tanh(np.float32(np.sqrt(2 / np.pi))
                                                                        * (a[0] + 0.044715 * a[0] ** 3)))).astype(dt),
    "relax.nn.leakyrelu": lambda a, at, dt: np.where(a[0] >= 0, a[0], a[0] * np.float32(at.alpha)).astype(dt),
    "relax.nn.prelu": _prelu,
    "relax.split": _split,
    "relax.nn.conv2d_transpose": lambda a, at, dt: conv2d_transpose(
        a[0], a[1], _ints(at.strides), _ints(at.padding), _ints(at.output_padding), _ints(at.dilation),
        int(at.groups)).astype(dt),
    "relax.image.resize2d": _resize2d,
}
for _name, _rule in ACTIVATION_OPS.items():
    OPS.setdefault(_name, _rule)


def _reshape(x: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    # A module imported for batch 1 names its batch in reshape targets; statistics passes feed it a
    # whole batch at once (BatchNorm matching needs batch moments), so the batch axis is carried over.
    if int(np.prod(shape)) != x.size and len(shape) and int(shape[0]) == 1 and x.ndim and x.shape[0] > 1:
        return x.reshape((x.shape[0],) + tuple(int(d) for d in shape[1:]))
    return x.reshape(shape)


def _avg_pool2d(x: np.ndarray, at: Any) -> np.ndarray:
    kh, kw = _ints(at.pool_size)
    sh, sw = _ints(at.strides)
    top, left, bottom, right = _ints(at.padding)
    xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    win = sliding_window_view(xp, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]
    if bool(at.count_include_pad) or (top == left == bottom == right == 0):
        return win.mean(axis=(-2, -1), dtype=np.float32)
    ones = np.pad(np.ones(x.shape[2:], np.float32), ((top, bottom), (left, right)))
    counts = sliding_window_view(ones, (kh, kw))[::sh, ::sw].sum(axis=(-2, -1))
    return win.sum(axis=(-2, -1), dtype=np.float32) / counts


def _softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


# the wider float table (issue 15); its general pools replace the NCHW-only ones above
OPS.update(float_ops.OPS)

#: dtypes of the integer data path: ops on them are never evaluated by TVM (the oracle stays independent)
_INTEGER_PATH = {"int8", "uint8", "int16", "int32"}


def _tvm_may_evaluate(expr: relax.Call, args: list[Any]) -> bool:
    dtypes = {str(a.dtype) for a in args if isinstance(a, np.ndarray)}
    out = getattr(expr.ty, "dtype", None)
    return not (dtypes | ({str(out)} if out is not None else set())) & _INTEGER_PATH


class Interpreter:
    """Evaluate `mod["main"]` with numpy. `capture=True` keeps every binding's value (keyed by var)."""

    def __init__(self, mod: tvm.IRModule, tvm_fallback: bool = True) -> None:
        """`tvm_fallback`: a float op with no numpy rule is evaluated by TVM (`tvm_eval`), not refused."""
        self.mod = mod
        self.main = mod["main"]
        self.tvm_fallback = tvm_fallback

    def run(self, inputs: Sequence[np.ndarray], capture: bool = False,
            hooks: Mapping[Any, Callable[[np.ndarray], np.ndarray]] | None = None,
            observe: Callable[[Any, Any], None] | None = None) -> tuple[list[np.ndarray], Env]:
        """`hooks` replace a binding's value by hook(value) before later bindings see it. `observe`
        sees every parameter and binding value once; without `capture`, values are then dropped
        after their last use, so statistics over large batches do not hold every tensor at once."""
        env: Env = {}
        last_use = None if capture else self._last_uses
        for param, value in zip(self.main.params, inputs):
            env[param] = np.asarray(value)
            if observe is not None:
                observe(param, env[param])
        for i, binding in enumerate(tvm_compat.bindings(self.main)):
            value = self._eval(binding.value, env, binding.var)
            if hooks and binding.var in hooks:
                value = hooks[binding.var](value)
            env[binding.var] = value
            if observe is not None:
                observe(binding.var, value)
            if last_use is not None:
                for var in last_use.get(i, ()):
                    env.pop(var, None)
        result = self._eval(self.main.body.body, env, None)
        outputs = list(result) if isinstance(result, (list, tuple)) else [result]
        return outputs, (env if capture else {})

    @functools.cached_property
    def _last_uses(self) -> dict[int, list[Any]]:
        """binding index -> vars read for the last time there (the function's result excluded)."""
        last: dict[Any, int] = {}
        for i, binding in enumerate(tvm_compat.bindings(self.main)):
            relax.analysis.post_order_visit(binding.value, lambda e, i=i: last.__setitem__(e, i)
                                            if isinstance(e, relax.Var) else None)
        keep: set[Any] = set()
        relax.analysis.post_order_visit(self.main.body.body, lambda e: keep.add(e) if isinstance(e, relax.Var) else None)
        out: dict[int, list[Any]] = {}
        for var, i in last.items():
            if var not in keep:
                out.setdefault(i, []).append(var)
        return out

    def _eval(self, expr: Any, env: Env, var: Any) -> Any:
        if isinstance(expr, relax.Var):
            return env[expr]
        if tvm_compat.is_const(expr):
            return tvm_compat.const_value(expr)
        if isinstance(expr, relax.Tuple):
            return [self._eval(f, env, None) for f in expr.fields]
        if isinstance(expr, relax.TupleGetItem):
            return self._eval(expr.tuple_value, env, None)[int(expr.index)]
        if tvm_compat.is_prim(expr):
            return expr.value
        if isinstance(expr, relax.ShapeExpr):
            return tuple(int(v) for v in expr.values)
        if isinstance(expr, relax.Call):
            args = [self._eval(a, env, None) for a in expr.args]
            if isinstance(expr.op, tvm.ir.GlobalVar):
                func = self.mod[expr.op]
                op = str(func.attrs["qnn.op"]) if func.attrs and "qnn.op" in func.attrs else None
                if op not in QNN_REFERENCE:
                    raise UnsupportedOp(f"call to {expr.op.name_hint} has no numpy reference")
                return QNN_REFERENCE[op](args, _attrs_dict(func.attrs))
            name = str(expr.op.name)
            dtype = str(expr.ty.dtype) if hasattr(expr.ty, "dtype") else "float32"
            rule = OPS.get(name)
            reason = f"the numpy reference has no rule for {name}"
            if rule is not None:
                try:
                    return rule(args, expr.attrs, dtype)
                except UnsupportedOp as err:
                    reason = str(err)
            if self.tvm_fallback and _tvm_may_evaluate(expr, args):
                return tvm_eval.evaluate(expr, args)
            raise UnsupportedOp(reason)
        raise UnsupportedOp(f"cannot evaluate {type(expr).__name__}")


def _attrs_dict(attrs: Any) -> dict[str, Any]:
    out = {}
    for key in attrs.keys():
        value = attrs[key]
        if isinstance(value, (str, int, float, bool)):
            out[str(key)] = value
        elif hasattr(value, "__len__"):
            out[str(key)] = [v if isinstance(v, (int, float, str)) else v for v in value]
        else:
            out[str(key)] = value
    return out


def run(mod: tvm.IRModule, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    return Interpreter(mod).run(inputs)[0]
