"""numpy rules for the float Relax ops the ONNX and torch importers emit beyond the CNN core
(issue 15): split, resize, PReLU, ConvTranspose, comparisons and `where`, the transcendental
activations, normalisations, reductions and data movement.

They mirror TVM's own legalization (topi), not the ONNX text, because what they stand in for is the
float graph TVM compiles: `resize2d` reproduces topi's coordinate transforms (half_pixel,
align_corners, asymmetric, pytorch_half_pixel, tf_half_pixel_for_nn) and rounding methods in
float32, including topi's integer-division shortcut for asymmetric/floor upsampling by an integer
factor. A rule that meets a case it does not model (cubic resize, crop-and-resize, a layout other
than NCHW) raises `UnsupportedOp`, and the interpreter evaluates that one binding with TVM instead
(`tvm_eval`), so a missing case costs time, never correctness.

Each rule is `(args, attrs, out_dtype) -> value`, like the core table in `interpreter.OPS`."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

Rule = Callable[[list[Any], Any, str], Any]


class UnsupportedOp(NotImplementedError):
    """No numpy rule for this op (or this case of it)."""


def _ints(v: Any) -> list[int]:
    return [int(i) for i in v]


def _axes(attrs: Any, ndim: int) -> tuple[int, ...] | None:
    axis = getattr(attrs, "axis", None)
    if axis is None:
        return None
    return tuple(int(a) % ndim for a in axis)


def _split(args: list[Any], attrs: Any, dtype: str) -> list[np.ndarray]:
    x = args[0]
    axis = int(attrs.axis) % x.ndim
    spec = attrs.indices_or_sections
    if hasattr(spec, "__len__"):
        return np.split(x, _ints(spec), axis=axis)
    sections = int(spec)
    # Relax (like numpy.array_split) allows an uneven last part: ceil-sized chunks
    step = -(-x.shape[axis] // sections)
    return np.split(x, list(range(step, x.shape[axis], step)), axis=axis)


def _source_coords(out: int, size_in: int, mode: str, int_div: bool) -> np.ndarray:
    """topi.image.get_inx in float32."""
    x = np.arange(out, dtype=np.float32)
    scale = np.float32(size_in) / np.float32(out)
    if mode == "half_pixel":
        return (x + np.float32(0.5)) * scale - np.float32(0.5)
    if mode == "align_corners":
        return np.float32(size_in - 1) / np.float32(out - 1) * x if out > 1 else np.zeros_like(x)
    if mode == "asymmetric":
        return (np.arange(out) // (out // size_in)).astype(np.float32) if int_div else scale * x
    if mode == "pytorch_half_pixel":
        return (x + np.float32(0.5)) * scale - np.float32(0.5) if out > 1 else np.zeros_like(x)
    if mode == "tf_half_pixel_for_nn":
        return (x + np.float32(0.5)) * scale
    raise UnsupportedOp(f"resize2d coordinate mode {mode!r} has no numpy rule")


def _nearest_index(c: np.ndarray, rounding: str) -> np.ndarray:
    eps = np.float32(1e-5)
    if rounding == "round":
        idx = np.round(c)
    elif rounding == "round_prefer_floor":
        idx = np.ceil(c - np.float32(0.5))
    elif rounding == "round_prefer_ceil":
        idx = np.floor(c + np.float32(0.5))
    elif rounding == "floor":
        idx = np.floor(c + eps)
    elif rounding == "ceil":
        idx = np.ceil(c - eps)
    else:
        raise UnsupportedOp(f"resize2d rounding {rounding!r} has no numpy rule")
    return idx.astype(np.int64)


def _int_div_ok(size_in: int, out: int) -> bool:
    """topi's can_convert_multiply_to_intdiv."""
    if out % size_in:
        return False
    return out / size_in <= 1 / (1e-5 * size_in + 1e-5)


@dataclass(frozen=True)
class ResizeTaps:
    """Where resize2d reads: nearest gathers x[:, :, rows[0]][:, :, :, cols[0]]; linear blends the four
    gathers of rows (y0, y1) x cols (x0, x1) with weights ly (per output row) and lx (per output column),
    columns first, as topi does. Shared by the numpy rule below and the torch translation used for the
    inversion (ranges/torch_graph.py), so both follow topi's coordinate transforms."""
    rows: tuple[np.ndarray, ...]
    cols: tuple[np.ndarray, ...]
    ly: np.ndarray | None = None
    lx: np.ndarray | None = None


def resize2d_taps(shape: Sequence[int], size: Sequence[int], attrs: Any) -> ResizeTaps:
    if str(attrs.layout) != "NCHW" or len(shape) != 4:
        raise UnsupportedOp(f"resize2d layout {attrs.layout} has no numpy rule")
    oh, ow = (int(v) for v in size)
    method, mode = str(attrs.method), str(attrs.coordinate_transformation_mode)
    rounding = str(attrs.rounding_method)
    h, w = (int(v) for v in shape[2:])
    if method == "nearest_neighbor":
        int_div = mode == "asymmetric" and rounding in ("floor", "")
        if rounding == "":
            rounding = "round" if mode == "align_corners" else "floor"
        ys = _source_coords(oh, h, mode, int_div and _int_div_ok(h, oh))
        xs = _source_coords(ow, w, mode, int_div and _int_div_ok(w, ow))
        iy = np.clip(ys.astype(np.int64) if int_div and _int_div_ok(h, oh) else _nearest_index(ys, rounding), 0, h - 1)
        ix = np.clip(xs.astype(np.int64) if int_div and _int_div_ok(w, ow) else _nearest_index(xs, rounding), 0, w - 1)
        return ResizeTaps((iy,), (ix,))
    if method == "linear":
        ys, xs = _source_coords(oh, h, mode, False), _source_coords(ow, w, mode, False)
        y0, x0 = np.floor(ys), np.floor(xs)
        ly, lx = (ys - y0).astype(np.float32), (xs - x0).astype(np.float32)
        y0, x0 = y0.astype(np.int64), x0.astype(np.int64)
        return ResizeTaps(tuple(np.clip(y0 + j, 0, h - 1) for j in (0, 1)),
                          tuple(np.clip(x0 + i, 0, w - 1) for i in (0, 1)), ly, lx)
    raise UnsupportedOp(f"resize2d method {method!r} has no numpy rule")


def _resize2d(args: list[Any], attrs: Any, dtype: str) -> np.ndarray:
    x = args[0]
    t = resize2d_taps(x.shape, args[1], attrs)
    if t.ly is None:
        return x[:, :, t.rows[0]][:, :, :, t.cols[0]].astype(dtype)
    p = [[x[:, :, yi][:, :, :, xi] for xi in t.cols] for yi in t.rows]
    lx4, ly4 = t.lx[None, None, None, :], t.ly[None, None, :, None]
    top = p[0][0] * (1 - lx4) + p[0][1] * lx4
    bottom = p[1][0] * (1 - lx4) + p[1][1] * lx4
    return (top * (1 - ly4) + bottom * ly4).astype(dtype)


def _prelu(args: list[Any], attrs: Any, dtype: str) -> np.ndarray:
    x, alpha = args
    shape = [1] * x.ndim
    shape[int(attrs.axis) % x.ndim] = -1
    return np.where(x < 0, x * np.asarray(alpha).reshape(shape), x).astype(dtype)


def conv2d_transpose(x: np.ndarray, w: np.ndarray, strides: Sequence[int], padding: Sequence[int],
                     output_padding: Sequence[int], dilation: Sequence[int], groups: int) -> np.ndarray:
    """NCHW input, IOHW weight (ONNX ConvTranspose). Each kernel tap scatters one strided GEMM."""
    x = x.astype(np.float32)
    w = w.astype(np.float32)
    n, ci, h, wd = x.shape
    _, cog, kh, kw = w.shape
    sh, sw = strides
    dh, dw = dilation
    top, left, bottom, right = padding if len(padding) == 4 else (*padding, *padding)
    full_h = (h - 1) * sh + (kh - 1) * dh + 1 + int(output_padding[0])
    full_w = (wd - 1) * sw + (kw - 1) * dw + 1 + int(output_padding[1])
    out = np.zeros((n, cog * groups, full_h, full_w), np.float32)
    cig = ci // groups
    for g in range(groups):
        xg = x[:, g * cig:(g + 1) * cig]
        for i in range(kh):
            for j in range(kw):
                tap = np.einsum("nchw,co->nohw", xg, w[g * cig:(g + 1) * cig, :, i, j], optimize=True)
                out[:, g * cog:(g + 1) * cog, i * dh:i * dh + (h - 1) * sh + 1:sh,
                    j * dw:j * dw + (wd - 1) * sw + 1:sw] += tap
    return out[:, :, top:full_h - bottom, left:full_w - right]


def _conv2d_transpose(args: list[Any], attrs: Any, dtype: str) -> np.ndarray:
    if str(attrs.data_layout) != "NCHW" or str(attrs.kernel_layout) != "IOHW":
        raise UnsupportedOp("conv2d_transpose layouts other than NCHW/IOHW have no numpy rule")
    return conv2d_transpose(args[0], args[1], _ints(attrs.strides), _ints(attrs.padding),
                            _ints(attrs.output_padding), _ints(attrs.dilation), int(attrs.groups)).astype(dtype)


def _reduce(fn: Callable[..., np.ndarray]) -> Rule:
    def apply(args: list[Any], attrs: Any, dtype: str) -> np.ndarray:
        x = np.asarray(args[0])
        return np.asarray(fn(x, axis=_axes(attrs, x.ndim), keepdims=bool(attrs.keepdims))).astype(dtype)

    return apply


def _standardize(x: np.ndarray, axes: tuple[int, ...], epsilon: Any) -> np.ndarray:
    """(x - mean) / sqrt(var + eps) over `axes`, in float32 like TVM's legalization."""
    mean = x.mean(axis=axes, keepdims=True, dtype=np.float32)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True, dtype=np.float32)
    return (x - mean) / np.sqrt(var + np.float32(epsilon))


def _affine(y: np.ndarray, gamma: Any, beta: Any, shape: list[int], attrs: Any) -> np.ndarray:
    """The optional per-channel scale and shift of layer / group / instance norm."""
    if bool(attrs.scale):
        y = y * np.asarray(gamma).reshape(shape)
    if bool(attrs.center):
        y = y + np.asarray(beta).reshape(shape)
    return y


def _layer_norm(args: list[Any], attrs: Any, dtype: str) -> np.ndarray:
    x, gamma, beta = args
    axes = tuple(int(a) % x.ndim for a in attrs.axes)
    y = _standardize(x, axes, attrs.epsilon)
    shape = [x.shape[a] if a in axes else 1 for a in range(x.ndim)]
    return _affine(y, gamma, beta, shape, attrs).astype(dtype)


def _group_norm(args: list[Any], attrs: Any, dtype: str) -> np.ndarray:
    x, gamma, beta = args
    groups, ch = int(attrs.num_groups), int(attrs.channel_axis) % x.ndim
    if ch != 1:
        raise UnsupportedOp("group_norm with a channel axis other than 1 has no numpy rule")
    n, c = x.shape[:2]
    xg = x.reshape(n, groups, -1)
    y = _standardize(xg, (2,), attrs.epsilon).reshape(x.shape)
    shape = [1, c] + [1] * (x.ndim - 2)
    return _affine(y, gamma, beta, shape, attrs).astype(dtype)


def _instance_norm(args: list[Any], attrs: Any, dtype: str) -> np.ndarray:
    x, gamma, beta = args
    axes = tuple(int(a) % x.ndim for a in attrs.axes)
    y = _standardize(x, axes, attrs.epsilon)
    shape = [1] * x.ndim
    shape[int(attrs.channel_axis) % x.ndim] = -1
    return _affine(y, gamma, beta, shape, attrs).astype(dtype)


def _batch_norm(args: list[Any], attrs: Any, dtype: str) -> list[np.ndarray]:
    """Inference batch norm (moving statistics); Relax returns (y, mean, var)."""
    x, gamma, beta, mean, var = args
    shape = [1] * x.ndim
    shape[int(attrs.axis) % x.ndim] = -1
    y = (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + np.float32(attrs.epsilon))
    if bool(attrs.scale):
        y = y * gamma.reshape(shape)
    if bool(attrs.center):
        y = y + beta.reshape(shape)
    return [y.astype(x.dtype), mean, var]


def pool_windows(x: np.ndarray, pool: Sequence[int], strides: Sequence[int], padding: Sequence[int],
                 dilation: Sequence[int], ceil_mode: bool, fill: float) -> tuple[np.ndarray, np.ndarray]:
    """(windows (N, C, OH, OW, KH, KW), in-image mask of the same window shape (OH, OW, KH, KW))."""
    top, left, bottom, right = padding if len(padding) == 4 else (*padding, *padding)
    kh, kw = pool
    sh, sw = strides
    dh, dw = dilation
    eh, ew = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    h, w = x.shape[2] + top + bottom, x.shape[3] + left + right
    ext_h = ext_w = 0
    if ceil_mode:
        oh = -(-(h - eh) // sh) + 1
        ow = -(-(w - ew) // sw) + 1
        # a last window must start inside the image or its left/top padding (topi / PyTorch)
        if (oh - 1) * sh >= x.shape[2] + top:
            oh -= 1
        if (ow - 1) * sw >= x.shape[3] + left:
            ow -= 1
        ext_h, ext_w = max((oh - 1) * sh + eh - h, 0), max((ow - 1) * sw + ew - w, 0)
    pads = ((0, 0), (0, 0), (top, bottom + ext_h), (left, right + ext_w))
    xp = np.pad(x, pads, constant_values=fill)
    mask = np.pad(np.ones(x.shape[2:], bool), pads[2:])
    win = sliding_window_view(xp, (eh, ew), axis=(2, 3))[:, :, ::sh, ::sw, ::dh, ::dw]
    mwin = sliding_window_view(mask, (eh, ew))[::sh, ::sw, ::dh, ::dw]
    return win, mwin


def _avg_pool2d(args: list[Any], attrs: Any, dtype: str) -> np.ndarray:
    x = args[0]
    if str(attrs.layout) != "NCHW":
        raise UnsupportedOp(f"avg_pool2d layout {attrs.layout} has no numpy rule")
    padding = _ints(attrs.padding)
    win, mask = pool_windows(x, _ints(attrs.pool_size), _ints(attrs.strides), padding,
                             _ints(attrs.dilation), bool(attrs.ceil_mode), 0.0)
    total = win.sum(axis=(-2, -1), dtype=np.float32)
    if bool(attrs.count_include_pad):
        if bool(attrs.ceil_mode):  # topi's divisor for a ceil-extended padded window: left to TVM
            raise UnsupportedOp("avg_pool2d with count_include_pad and ceil_mode has no numpy rule")
        counts = np.float32(int(np.prod(_ints(attrs.pool_size))))
    else:
        counts = mask.sum(axis=(-2, -1))
    return (total / np.maximum(counts, 1).astype(np.float32)).astype(dtype)


def _max_pool2d(args: list[Any], attrs: Any, dtype: str) -> np.ndarray:
    x = args[0]
    if str(attrs.layout) != "NCHW":
        raise UnsupportedOp(f"max_pool2d layout {attrs.layout} has no numpy rule")
    fill = np.iinfo(x.dtype).min if np.issubdtype(x.dtype, np.integer) else -np.inf
    win, _ = pool_windows(x, _ints(attrs.pool_size), _ints(attrs.strides), _ints(attrs.padding),
                          _ints(attrs.dilation), bool(attrs.ceil_mode), fill)
    return win.max(axis=(-2, -1)).astype(dtype)


def _adaptive_avg_pool2d(args: list[Any], attrs: Any, dtype: str) -> np.ndarray:
    x = args[0]
    h, w = x.shape[2:]
    size = attrs.output_size
    oh, ow = (h, w) if size is None else (int(size[0]), int(size[-1]))
    out = np.empty(x.shape[:2] + (oh, ow), np.float32)
    for i in range(oh):
        y0, y1 = (i * h) // oh, -(-((i + 1) * h) // oh)
        for j in range(ow):
            x0, x1 = (j * w) // ow, -(-((j + 1) * w) // ow)
            out[:, :, i, j] = x[:, :, y0:y1, x0:x1].mean(axis=(2, 3), dtype=np.float32)
    return out.astype(dtype)


def _take(args: list[Any], attrs: Any, dtype: str) -> np.ndarray:
    x, idx = args
    axis = int(attrs.axis) if attrs.axis is not None else None
    n = x.shape[axis] if axis is not None else x.size
    idx = np.asarray(idx).astype(np.int64)
    mode = str(attrs.mode)
    idx = np.mod(idx, n) if mode == "wrap" else np.where(idx < 0, idx + n, idx)
    if mode == "clip":
        idx = np.clip(idx, 0, n - 1)
    return np.take(x, idx, axis=axis).astype(dtype)


def _broadcast_to(args: list[Any], attrs: Any, dtype: str) -> np.ndarray:
    x, shape = args
    shape = tuple(int(d) for d in shape)
    if x.ndim == len(shape) and x.shape[0] > 1 and shape[0] == 1:  # batched statistics pass (see _reshape)
        shape = (x.shape[0],) + shape[1:]
    return np.broadcast_to(x, shape).astype(dtype)


def _expand_dims(args: list[Any], attrs: Any, dtype: str) -> np.ndarray:
    x = args[0]
    out_ndim = x.ndim + len(attrs.axis)
    return np.expand_dims(x, tuple(int(a) % out_ndim for a in attrs.axis))


def _erf(x: np.ndarray) -> np.ndarray:
    """Abramowitz & Stegun 7.1.26 in float64: |error| < 1.5e-7, below float32 resolution of erf
    near 1 (scipy is not a dependency)."""
    x64 = np.asarray(x, np.float64)
    t = 1.0 / (1.0 + 0.3275911 * np.abs(x64))
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return (np.sign(x64) * (1.0 - poly * np.exp(-x64 * x64))).astype(np.asarray(x).dtype)


def _gelu(x: np.ndarray) -> np.ndarray:
    return x * np.float32(0.5) * (1 + _erf(x / np.float32(math.sqrt(2))))


def _gelu_tanh(x: np.ndarray) -> np.ndarray:
    c = np.float32(math.sqrt(2 / math.pi))
    return np.float32(0.5) * x * (1 + np.tanh(c * (x + np.float32(0.044715) * x ** 3)))


def _unary(fn: Callable[[np.ndarray], np.ndarray]) -> Rule:
    return lambda a, at, dt: np.asarray(fn(np.asarray(a[0]))).astype(dt)


def _compare(fn: Callable[[Any, Any], np.ndarray]) -> Rule:
    return lambda a, at, dt: fn(a[0], a[1]).astype(dt)


def _log_softmax(x: np.ndarray, axis: int) -> np.ndarray:
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def _power(args: list[Any], attrs: Any, dtype: str) -> np.ndarray:
    a, b = (np.asarray(v) for v in args)
    if np.issubdtype(np.result_type(a, b), np.integer):
        return np.power(a.astype(np.int64), b.astype(np.int64)).astype(dtype)
    return np.power(a.astype(np.float32), b.astype(np.float32)).astype(dtype)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def _shape_of(args: list[Any], attrs: Any, dtype: str) -> tuple[int, ...]:
    return tuple(int(d) for d in np.shape(args[0]))


OPS: dict[str, Rule] = {
    "relax.split": _split,
    "relax.image.resize2d": _resize2d,
    "relax.nn.prelu": _prelu,
    "relax.nn.leakyrelu": lambda a, at, dt: np.where(a[0] < 0, a[0] * np.float32(at.alpha), a[0]).astype(dt),
    "relax.nn.relu6": lambda a, at, dt: np.clip(a[0], 0, 6).astype(dt),
    "relax.nn.conv2d_transpose": _conv2d_transpose,
    "relax.power": _power,
    "relax.greater": _compare(np.greater),
    "relax.greater_equal": _compare(np.greater_equal),
    "relax.less": _compare(np.less),
    "relax.less_equal": _compare(np.less_equal),
    "relax.equal": _compare(np.equal),
    "relax.not_equal": _compare(np.not_equal),
    "relax.logical_and": _compare(np.logical_and),
    "relax.logical_or": _compare(np.logical_or),
    "relax.logical_not": _unary(np.logical_not),
    "relax.where": lambda a, at, dt: np.where(np.asarray(a[0]).astype(bool), a[1], a[2]).astype(dt),
    "relax.exp": _unary(np.exp),
    "relax.log": _unary(np.log),
    "relax.tanh": _unary(np.tanh),
    "relax.erf": _unary(_erf),
    "relax.abs": _unary(np.abs),
    "relax.negative": _unary(np.negative),
    "relax.floor": _unary(np.floor),
    "relax.ceil": _unary(np.ceil),
    "relax.sign": _unary(np.sign),
    "relax.square": _unary(np.square),
    "relax.rsqrt": _unary(lambda x: 1 / np.sqrt(x)),
    "relax.sin": _unary(np.sin),
    "relax.cos": _unary(np.cos),
    "relax.sigmoid": _unary(_sigmoid),
    "relax.nn.gelu": _unary(_gelu),
    "relax.nn.gelu_tanh": _unary(_gelu_tanh),
    "relax.nn.silu": _unary(lambda x: x * _sigmoid(x)),
    "relax.nn.softplus": lambda a, at, dt: (np.logaddexp(0, a[0] * np.float32(at.beta)) / np.float32(at.beta)).astype(dt),
    "relax.nn.log_softmax": lambda a, at, dt: _log_softmax(a[0], int(at.axis)).astype(dt),
    "relax.floor_divide": _compare(np.floor_divide),
    "relax.floor_mod": _compare(np.mod),
    "relax.take": _take,
    "relax.broadcast_to": _broadcast_to,
    "relax.expand_dims": _expand_dims,
    "relax.tile": lambda a, at, dt: np.tile(a[0], _ints(at.repeats)).astype(dt),
    # the ONNX importer's Max / Min / Mean / Sum of n tensors: stack, then a reduction over axis 0
    "relax.stack": lambda a, at, dt: np.stack(np.broadcast_arrays(*a[0]), axis=int(at.axis or 0)).astype(dt),
    "relax.max": _reduce(np.max),
    "relax.min": _reduce(np.min),
    "relax.prod": _reduce(np.prod),
    "relax.variance": _reduce(np.var),
    "relax.std": _reduce(np.std),
    "relax.argmax": lambda a, at, dt: _arg(np.argmax, a[0], at).astype(dt),
    "relax.argmin": lambda a, at, dt: _arg(np.argmin, a[0], at).astype(dt),
    "relax.nn.layer_norm": _layer_norm,
    "relax.nn.group_norm": _group_norm,
    "relax.nn.instance_norm": _instance_norm,
    "relax.nn.batch_norm": _batch_norm,
    "relax.nn.avg_pool2d": _avg_pool2d,
    "relax.nn.max_pool2d": _max_pool2d,
    "relax.nn.adaptive_avg_pool2d": _adaptive_avg_pool2d,
    "relax.nn.dropout": lambda a, at, dt: [a[0], np.ones_like(a[0])],
    "relax.shape_of": _shape_of,
    "relax.flip": lambda a, at, dt: np.flip(a[0], axis=int(at.axis)).astype(dt),
    "relax.cumsum": lambda a, at, dt: _cumsum(a[0], at).astype(dt),
}


def _arg(fn: Callable[..., np.ndarray], x: np.ndarray, attrs: Any) -> np.ndarray:
    axis = int(attrs.axis) if attrs.axis is not None else None
    out = fn(x, axis=axis)
    if bool(attrs.keepdims):
        out = np.expand_dims(out, axis) if axis is not None else out.reshape((1,) * x.ndim)
    return np.asarray(out)


def _cumsum(x: np.ndarray, attrs: Any) -> np.ndarray:
    axis = int(attrs.axis) if attrs.axis is not None else None
    src = x if axis is not None else x.ravel()
    out = np.cumsum(src, axis=axis if axis is not None else 0)
    if bool(attrs.exclusive):
        out = out - src
    return out
