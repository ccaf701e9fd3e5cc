"""Scheduled lowerings of the qnn glue ops (everything but conv / 8-bit dense), bit-exact against
reference.QNN_REFERENCE and the reference Relax lowerings in qnn/ops.py.

Each op is one TE compute with exactly the reference integer arithmetic (int64 products, round half
up shifts, saturation), turned into a PrimFunc and hand-scheduled: elementwise ops are fused to one
loop, split into (parallel outer, vectorised inner); pools are parallel over (n, c) with the window
reduction vectorised along the output row; the int32-input classifier dense accumulates in int64
registers over 32 output channels. Constant operands (multipliers, dequant scales, weights) are
folded into the PrimFunc as immediates or packed constants.

    y = glue.lower_add(bb, a, b, ma, mb, attrs, target)      # -> relax.Expr (call_tir)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import tvm
from tvm import relax, te, tirx

from .compute import prim_func_attrs

ELEMENTWISE_DTYPES = ("int8", "uint8", "int32")

# Below these sizes a kernel runs single-threaded (~20 us on one core): waking TVM's worker threads costs
# ~5-10 us after a gap (see schedule.DW_PARALLEL_MIN_MACS).
PARALLEL_MIN_ELEMS = 1 << 17  # elementwise ops (int64 arithmetic per element)
PARALLEL_MIN_WINDOW_READS = 1 << 18  # pools: outputs x window size
PARALLEL_MIN_DENSE_MACS = 1 << 18  # int64 dense


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------

def vector_bytes(target: Any) -> int:
    """SIMD register width in bytes for the target (64 AVX-512, 32 AVX2, 16 SSE / NEON)."""
    if target is None or str(target.kind.name) != "llvm":
        return 16
    triple = str(target.attrs.get("mtriple", "") or "")
    if triple.startswith(("aarch64", "arm64", "arm")):
        return 16
    from .x86_vnni import vector_lanes_i32

    return 4 * vector_lanes_i32(target)


def _shape(expr: relax.Expr) -> tuple[int, ...]:
    return tuple(int(d) for d in expr.ty.shape)


def _dtype(expr: relax.Expr) -> str:
    return str(expr.ty.dtype)


def _elem_bytes(dtype: str) -> int:
    return max(1, tvm.runtime.DataType(dtype).bits // 8)


def _largest_divisor(n: int, cap: int) -> int:
    for v in range(min(cap, n), 0, -1):
        if n % v == 0 and (v & (v - 1)) == 0:  # powers of two: whole vector registers
            return v
    return 1


def _clip_cast(y, lo: int, hi: int, dtype: str):
    wide = str(y.ty)
    return te.max(te.min(y, tirx.const(int(hi), wide)), tirx.const(int(lo), wide)).astype(dtype)


def _requant_scalar(acc64, m: int, shift: int, lo: int, hi: int, dtype: str, rounding: Optional[int] = None):
    """clip((acc·m + 2^(shift-1)) >> shift, lo, hi) in int64 (fixed_point.requantize), cast. `rounding`
    replaces 2^(shift-1) (zero points folded in, qnn/ops.py)."""
    rnd = (1 << (int(shift) - 1)) if rounding is None else int(rounding)
    y = (acc64 * tirx.const(int(m), "int64") + tirx.const(rnd, "int64")) >> tirx.const(int(shift), "int64")
    return _clip_cast(y, lo, hi, dtype)


def _emit(bb: relax.BlockBuilder, func: tirx.PrimFunc, name: str, args: Sequence[relax.Expr],
          out_shape: Sequence[int], out_dtype: str) -> relax.Expr:
    gv = bb.add_func(func, name)
    return bb.emit(relax.call_tir(gv, list(args), relax.TensorType(tuple(int(s) for s in out_shape), out_dtype)))


def _emit_flat(bb: relax.BlockBuilder, func: tirx.PrimFunc, name: str, args: Sequence[relax.Expr],
               shape: Sequence[int], out_dtype: str) -> relax.Expr:
    """Elementwise call on 1-D views: reshape in (a VM view, no copy), call, reshape back. A flat loop
    keeps every vector a contiguous run; on N-D buffers a vector crossing a row end becomes a gather."""
    total = int(np.prod(shape))
    flat = [bb.emit(relax.op.reshape(a, (total,))) if len(_shape(a)) != 1 else a for a in args]
    y = _emit(bb, func, name, flat, (total,), out_dtype)
    return bb.emit(relax.op.reshape(y, tuple(int(v) for v in shape))) if len(shape) != 1 else y


def _schedule_flat(sch, block: str, vec: int) -> None:
    """All loops of `block` fused, split (parallel, vectorised by the largest power of two <= vec
    dividing the element count)."""
    blk = sch.get_sblock(block)
    loops = sch.get_loops(blk)
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    total = int(sch.get(fused).extent)
    v = _largest_divisor(total, vec)
    parallel = total >= PARALLEL_MIN_ELEMS
    if v > 1 and total > v:
        outer, inner = sch.split(fused, [None, v])
        if parallel:
            sch.parallel(outer)
        sch.vectorize(inner)
    elif v > 1:
        sch.vectorize(fused)
    elif parallel:
        sch.parallel(fused)


def elementwise_primfunc(inputs: Sequence[te.Tensor], out: te.Tensor, vec: int, name: str) -> tirx.PrimFunc:
    import tvm.s_tir  # noqa: F401

    func = te.create_prim_func(list(inputs) + [out])
    sch = tvm.s_tir.Schedule(func)
    _schedule_flat(sch, out.op.name, vec)
    return prim_func_attrs(sch.mod["main"], name)


def _vec_for(target: Any, *dtypes: str) -> int:
    return max(4, vector_bytes(target) // min(_elem_bytes(d) for d in dtypes))


# ----------------------------------------------------------------------------------------------
# elementwise ops
# ----------------------------------------------------------------------------------------------

def add_primfunc(total: int, a_dtype: str, b_dtype: str, ma: int, mb: int, shift: int, out_dtype: str,
                 lo: int, hi: int, vec: int, rounding: Optional[int] = None) -> tirx.PrimFunc:
    shape = (int(total),)
    a = te.placeholder(shape, a_dtype, name="a")
    b = te.placeholder(shape, b_dtype, name="b")
    half = tirx.const((1 << (int(shift) - 1)) if rounding is None else int(rounding), "int64")

    def fn(*i):
        total = a[i].astype("int64") * tirx.const(int(ma), "int64") + \
            b[i].astype("int64") * tirx.const(int(mb), "int64") + half
        return _clip_cast(total >> tirx.const(int(shift), "int64"), lo, hi, out_dtype)

    out = te.compute(shape, fn, name="qadd")
    return elementwise_primfunc([a, b], out, vec, "qnn_add")


def lower_add(bb, a, b, ma: int, mb: int, attrs: Mapping[str, Any], target: Any,
              rounding: Optional[int] = None) -> relax.Expr:
    shape = _shape(a)
    out_dtype = str(attrs["out_dtype"])
    func = add_primfunc(int(np.prod(shape)), _dtype(a), _dtype(b), ma, mb, int(attrs["shift"]), out_dtype,
                        int(attrs["out_min"]), int(attrs["out_max"]), _vec_for(target, _dtype(a), out_dtype), rounding)
    return _emit_flat(bb, func, "qnn_add", [a, b], shape, out_dtype)


def requantize_primfunc(total: int, in_dtype: str, m: int, shift: int, out_dtype: str, lo: int, hi: int,
                        vec: int, rounding: Optional[int] = None) -> tirx.PrimFunc:
    shape = (int(total),)
    x = te.placeholder(shape, in_dtype, name="x")
    out = te.compute(shape, lambda *i: _requant_scalar(x[i].astype("int64"), m, shift, lo, hi, out_dtype, rounding),
                     name="requantize")
    return elementwise_primfunc([x], out, vec, "qnn_requantize")


def lower_requantize(bb, x, m: int, attrs: Mapping[str, Any], target: Any, rounding: Optional[int] = None) -> relax.Expr:
    shape = _shape(x)
    out_dtype = str(attrs["out_dtype"])
    func = requantize_primfunc(int(np.prod(shape)), _dtype(x), m, int(attrs["shift"]), out_dtype,
                               int(attrs["out_min"]), int(attrs["out_max"]), _vec_for(target, _dtype(x), out_dtype),
                               rounding)
    return _emit_flat(bb, func, "qnn_requantize", [x], shape, out_dtype)


def quantize_primfunc(total: int, in_dtype: str, scale: float, out_dtype: str, vec: int,
                      zero_point: int = 0) -> tirx.PrimFunc:
    """R.quantize's legalization (relax/transform/legalize_ops/qdq.py): x / scale (a true float32
    division), te.round (half to even, as numpy.round), + zero point, saturate, cast."""
    shape = (int(total),)
    x = te.placeholder(shape, in_dtype, name="x")
    s = tirx.FloatImm("float32", float(np.float32(scale)))
    lo = tirx.min_value(out_dtype)
    hi = tirx.max_value(out_dtype)

    def fn(*i):
        r = te.round(x[i].astype("float32") / s)
        if zero_point:
            r = r + tirx.FloatImm("float32", float(zero_point))
        return te.max(te.min(r, hi.astype("float32")), lo.astype("float32")).astype(out_dtype)

    out = te.compute(shape, fn, name="quantize")
    return elementwise_primfunc([x], out, vec, "qnn_quantize")


def lower_quantize(bb, x, attrs: Mapping[str, Any], target: Any) -> relax.Expr:
    shape = _shape(x)
    out_dtype = str(attrs["out_dtype"])
    func = quantize_primfunc(int(np.prod(shape)), _dtype(x), float(attrs["scale"]), out_dtype,
                             _vec_for(target, "float32"), int(attrs.get("zero_point", 0)))
    return _emit_flat(bb, func, "qnn_quantize", [x], shape, out_dtype)


def dequantize_primfunc(total: int, in_dtype: str, scale: float, vec: int, zero_point: int = 0) -> tirx.PrimFunc:
    shape = (int(total),)
    x = te.placeholder(shape, in_dtype, name="x")
    s = tirx.FloatImm("float32", float(np.float32(scale)))
    if zero_point:
        out = te.compute(shape, lambda *i: (x[i].astype("int32") - tirx.const(int(zero_point), "int32")).astype("float32")
                         * s, name="dequantize")
    else:
        out = te.compute(shape, lambda *i: x[i].astype("float32") * s, name="dequantize")
    return elementwise_primfunc([x], out, vec, "qnn_dequantize")


def lower_dequantize(bb, x, attrs: Mapping[str, Any], target: Any) -> relax.Expr:
    shape = _shape(x)
    func = dequantize_primfunc(int(np.prod(shape)), _dtype(x), float(attrs["scale"]), _vec_for(target, "float32"),
                               int(attrs.get("zero_point", 0)))
    return _emit_flat(bb, func, "qnn_dequantize", [x], shape, "float32")


# ----------------------------------------------------------------------------------------------
# max pool
# ----------------------------------------------------------------------------------------------

def pool_out_size(size: int, k: int, s: int, lo: int, hi: int, d: int, ceil_mode: bool) -> tuple[int, int]:
    """(output size, padded input extent) exactly as reference.max_pool2d (ceil mode: extra high padding
    so the last partial window is kept)."""
    padded = size + lo + hi
    if ceil_mode:
        padded += -(padded - (k - 1) * d - 1) % s
    return (padded - (k - 1) * d - 1) // s + 1, padded


@dataclass(frozen=True)
class _PoolGeom:
    kh: int
    kw: int
    sh: int
    sw: int
    dh: int
    dw: int
    pt: int
    pl: int
    OH: int
    OW: int
    Hp: int  # padded rows / columns some window reads
    Wp: int

    @staticmethod
    def of(H: int, W: int, pool, strides, padding, dilation, ceil_mode: bool) -> "_PoolGeom":
        kh, kw = (int(v) for v in pool)
        sh, sw = (int(v) for v in strides)
        dh, dw = (int(v) for v in dilation)
        pt, pl, pb, pr = (int(v) for v in padding)
        OH, Hp = pool_out_size(H, kh, sh, pt, pb, dh, ceil_mode)
        OW, Wp = pool_out_size(W, kw, sw, pl, pr, dw, ceil_mode)
        return _PoolGeom(kh, kw, sh, sw, dh, dw, pt, pl, OH, OW, min(Hp, (OH - 1) * sh + (kh - 1) * dh + 1),
                         min(Wp, (OW - 1) * sw + (kw - 1) * dw + 1))


def max_pool2d_primfunc(shape, dtype: str, pool, strides, padding, dilation, ceil_mode: bool) -> tirx.PrimFunc:
    """Separable max pool, one (n, c) plane per parallel iteration, every stage vectorised along a
    contiguous row: pad (dtype minimum) -> max over the kh window rows -> max over the kw window columns
    at full width -> subsample by the column stride (the only strided read: one per output)."""
    import functools

    import tvm.s_tir  # noqa: F401

    N, C, H, W = shape
    pg = _PoolGeom.of(H, W, pool, strides, padding, dilation, ceil_mode)
    kh, kw, sh, sw, dh, dw, pt, pl, OH, OW, Hp, Wp = (pg.kh, pg.kw, pg.sh, pg.sw, pg.dh, pg.dw, pg.pt, pg.pl,
                                                      pg.OH, pg.OW, pg.Hp, pg.Wp)
    Wv = (OW - 1) * sw + 1  # columns of the full-width row max that the subsample reads
    x = te.placeholder(shape, dtype, name="x")
    lowest = tirx.min_value(dtype)
    padded = not (pt == 0 and pl == 0 and Hp <= H and Wp <= W)
    stages = []
    if padded:
        src = te.compute((N, C, Hp, Wp), lambda n, c, h, w: tirx.if_then_else(
            tirx.all(h >= pt, h < H + pt, w >= pl, w < W + pl),
            x[n, c, tirx.max(tirx.min(h - pt, H - 1), 0), tirx.max(tirx.min(w - pl, W - 1), 0)], lowest),
            name="pad")
        stages.append("pad")
    else:
        src = x
    vmax = te.compute((N, C, OH, Wp), lambda n, c, oh, w: functools.reduce(
        tirx.max, [src[n, c, oh * sh + r * dh, w] for r in range(kh)]), name="vmax")
    hmax = te.compute((N, C, OH, Wv), lambda n, c, oh, w: functools.reduce(
        tirx.max, [vmax[n, c, oh, w + r * dw] for r in range(kw)]), name="hmax")
    stages += ["vmax", "hmax"]
    out = te.compute((N, C, OH, OW), lambda n, c, oh, ow: hmax[n, c, oh, ow * sw], name="pool")
    sch = tvm.s_tir.Schedule(te.create_prim_func([x, out]))
    blk = sch.get_sblock("pool")
    n, c, oh, ow = sch.get_loops(blk)
    par = sch.fuse(n, c)
    if N * C * OH * OW * kh * kw >= PARALLEL_MIN_WINDOW_READS:
        sch.parallel(par)
    sch.vectorize(ow)
    for name in reversed(stages):
        st = sch.get_sblock(name)
        sch.compute_at(st, par)
        sch.set_scope(st, 0, "local")
        sch.vectorize(sch.get_loops(st)[-1])
    return prim_func_attrs(sch.mod["main"], "qnn_max_pool2d")


def max_pool2d_blocked_primfunc(shape, dtype: str, pool, strides, padding, dilation,
                                ceil_mode: bool) -> tirx.PrimFunc:
    """Max pool on NCHW16c: one output row per parallel iteration; the window max over rows is taken at
    full width, then over columns, every stage vectorised over the 16 block lanes (16 contiguous
    bytes), so the column stride costs nothing."""
    import functools

    import tvm.s_tir  # noqa: F401

    N, CB, H, W, B = shape
    pg = _PoolGeom.of(H, W, pool, strides, padding, dilation, ceil_mode)
    kh, kw, sh, sw, dh, dw, pt, pl, OH, OW, Wp = (pg.kh, pg.kw, pg.sh, pg.sw, pg.dh, pg.dw, pg.pt, pg.pl, pg.OH,
                                                  pg.OW, pg.Wp)
    x = te.placeholder(shape, dtype, name="x")
    lowest = tirx.min_value(dtype)

    def src(n, cb, h, w, c):
        inside = tirx.all(h >= pt, h < H + pt, w >= pl, w < W + pl)
        v = x[n, cb, tirx.max(tirx.min(h - pt, H - 1), 0), tirx.max(tirx.min(w - pl, W - 1), 0), c]
        return tirx.if_then_else(inside, v, lowest)

    vmax = te.compute((N, CB, OH, Wp, B), lambda n, cb, oh, w, c: functools.reduce(
        tirx.max, [src(n, cb, oh * sh + r * dh, w, c) for r in range(kh)]), name="vmax")
    out = te.compute((N, CB, OH, OW, B), lambda n, cb, oh, ow, c: functools.reduce(
        tirx.max, [vmax[n, cb, oh, ow * sw + r * dw, c] for r in range(kw)]), name="pool")
    sch = tvm.s_tir.Schedule(te.create_prim_func([x, out]))
    blk = sch.get_sblock("pool")
    n, cb, oh, ow, c = sch.get_loops(blk)
    par = sch.fuse(n, cb, oh)
    if N * CB * OH * OW * B * kh * kw >= PARALLEL_MIN_WINDOW_READS:
        sch.parallel(par)
    sch.vectorize(c)
    st = sch.get_sblock("vmax")
    sch.compute_at(st, par)
    sch.set_scope(st, 0, "local")
    sch.vectorize(sch.get_loops(st)[-1])
    return prim_func_attrs(sch.mod["main"], "qnn_max_pool2d")


def lower_max_pool2d(bb, x, attrs: Mapping[str, Any], target: Any) -> relax.Expr:
    shape = _shape(x)
    padding = [int(v) for v in attrs["padding"]]
    if len(padding) == 2:
        padding = padding * 2
    pool, strides, dilation = attrs["pool_size"], attrs["strides"], attrs["dilation"]
    make = max_pool2d_blocked_primfunc if len(shape) == 5 else max_pool2d_primfunc
    func = make(shape, _dtype(x), pool, strides, padding, dilation, bool(attrs["ceil_mode"]))
    pg = _PoolGeom.of(shape[2], shape[3], pool, strides, padding, dilation, bool(attrs["ceil_mode"]))
    return _emit(bb, func, "qnn_max_pool2d", [x], (shape[0], shape[1], pg.OH, pg.OW) + tuple(shape[4:]), _dtype(x))


# ----------------------------------------------------------------------------------------------
# global average pool (sum, then requantize / dequantize / raw int32)
# ----------------------------------------------------------------------------------------------

def global_avg_pool2d_primfunc(shape, in_dtype: str, out_dtype: str, keepdims: bool, m: Optional[int] = None,
                               shift: int = 1, lo: int = 0, hi: int = 0,
                               with_dq: bool = False, channels: Optional[int] = None,
                               rounding: Optional[int] = None) -> tirx.PrimFunc:
    """shape NCHW, or NCHW16c (N, CB, H, W, 16) with `channels` real channels (the sum is vectorised
    over the 16 block lanes)."""
    import tvm.s_tir  # noqa: F401

    blocked = len(shape) == 5
    N, H, W = shape[0], shape[2], shape[3]
    C = int(channels) if blocked else shape[1]
    acc_dtype = "int64" if in_dtype == "int32" else "int32"
    x = te.placeholder(shape, in_dtype, name="x")
    rh = te.reduce_axis((0, H), name="rh")
    rw = te.reduce_axis((0, W), name="rw")
    if blocked:
        total = te.compute((N, shape[1], shape[4]), lambda n, cb, c: te.sum(
            x[n, cb, rh, rw, c].astype(acc_dtype), axis=[rh, rw]), name="total")

        def total_at(n, c):
            return total[n, c // shape[4], c % shape[4]]
    else:
        total = te.compute((N, C), lambda n, c: te.sum(x[n, c, rh, rw].astype(acc_dtype), axis=[rh, rw]),
                           name="total")

        def total_at(n, c):
            return total[n, c]
    dq = te.placeholder((C,), "float32", name="dq") if with_dq else None

    def epi(n, c):
        t = total_at(n, c)
        if out_dtype == "float32":
            return t.astype("float32") * dq[c]
        if out_dtype == "int32":
            return t.astype("int32")
        return _requant_scalar(t.astype("int64"), int(m), shift, lo, hi, out_dtype, rounding)

    out_shape = (N, C, 1, 1) if keepdims else (N, C)
    if keepdims:
        out = te.compute(out_shape, lambda n, c, i, j: epi(n, c), name="epilogue")
    else:
        out = te.compute(out_shape, epi, name="epilogue")
    params = [x] + ([dq] if with_dq else []) + [out]
    sch = tvm.s_tir.Schedule(te.create_prim_func(params))
    blk = sch.get_sblock("total")
    if blocked:
        n, cb, c, rh_l, rw_l = sch.get_loops(blk)
        par = sch.fuse(n, cb)
        if N * shape[1] * H * W * shape[4] >= PARALLEL_MIN_ELEMS:
            sch.parallel(par)
        sch.reorder(rh_l, rw_l, c)
        sch.vectorize(c)
        init = sch.decompose_reduction(blk, rh_l)
        sch.vectorize(sch.get_loops(init)[-1])
        return prim_func_attrs(sch.mod["main"], "qnn_global_avg_pool2d")
    n, c, rh_l, rw_l = sch.get_loops(blk)
    par = sch.fuse(n, c)
    if N * C * H * W >= PARALLEL_MIN_ELEMS:
        sch.parallel(par)
    sch.fuse(rh_l, rw_l)
    ep = sch.get_sblock("epilogue")
    sch.reverse_compute_at(ep, par)
    sch.set_scope(blk, 0, "local")
    return prim_func_attrs(sch.mod["main"], "qnn_global_avg_pool2d")


def lower_global_avg_pool2d(bb, x, rest: Sequence[Any], attrs: Mapping[str, Any], target: Any,
                            channels: Optional[int] = None, rounding: Optional[int] = None) -> relax.Expr:
    """rest: [] (int32 out), [dq relax const (C,)] (float32 out) or [m int] (8-bit out).
    x NCHW, or NCHW16c with `channels` real channels."""
    shape = _shape(x)
    C = int(channels) if len(shape) == 5 else shape[1]
    out_dtype = str(attrs["out_dtype"])
    keepdims = bool(attrs["keepdims"])
    out_shape = (shape[0], C, 1, 1) if keepdims else (shape[0], C)
    if out_dtype == "float32":
        func = global_avg_pool2d_primfunc(shape, _dtype(x), out_dtype, keepdims, with_dq=True, channels=C)
        return _emit(bb, func, "qnn_global_avg_pool2d", [x, rest[0]], out_shape, out_dtype)
    if out_dtype == "int32":
        func = global_avg_pool2d_primfunc(shape, _dtype(x), out_dtype, keepdims, channels=C)
    else:
        func = global_avg_pool2d_primfunc(shape, _dtype(x), out_dtype, keepdims, m=int(rest[0]),
                                          shift=int(attrs["shift"]), lo=int(attrs["out_min"]),
                                          hi=int(attrs["out_max"]), channels=C, rounding=rounding)
    return _emit(bb, func, "qnn_global_avg_pool2d", [x], out_shape, out_dtype)


# ----------------------------------------------------------------------------------------------
# dense with int32 input (pooled int32 features into the classifier): int64 accumulation
# ----------------------------------------------------------------------------------------------

DENSE64_OB = 32  # output channels per register tile (4 zmm of int64)


def dense_i32_exact(weight: np.ndarray, data_bound: Optional[int]) -> bool:
    """int32 accumulation is exact when |x| <= data_bound makes every partial sum fit: sum_k |w[o, k]| *
    bound < 2^31 (the bias is added in int64 afterwards). Pooled 8-bit features are bounded by 255 x H x W."""
    if data_bound is None:
        return False
    row = np.abs(np.asarray(weight, np.int64)).sum(axis=1).max(initial=0)
    return int(row) * int(data_bound) < 2 ** 31


def dense_i64_primfunc(N: int, K: int, O: int, out_dtype: str, lo: int = 0, hi: int = 0,
                       ob: int = DENSE64_OB, acc_dtype: str = "int64", out_zero_point: int = 0) -> tirx.PrimFunc:
    """acc[n, o] = sum_k x[n, k] * w[k, o] in acc_dtype (int64, or int32 where dense_i32_exact holds: 2-4x
    fewer instructions than 64-bit multiplies), + bias[o] (int64), then the conv epilogue:
    float32(acc) * dq[o] | clip(acc, lo, hi) int32 | requantize(acc, mult[o], shift[o]) (8-bit)."""
    import tvm.s_tir  # noqa: F401

    Op = -(-O // ob) * ob
    x = te.placeholder((N, K), "int32", name="x")
    # weights blocked (Op/ob, K, ob): the tile's reduction streams one contiguous run. As (K, Op) each k
    # was a 32-byte piece of a different cache line (1280 lines per tile): with the weights cold, as
    # after the rest of a network, MobileNetV2's 1280 -> 1000 classifier took 0.33 ms (1.28 MB at
    # 4 GB/s; hot 0.06 ms), blocked 0.20-0.22 ms: a cold numpy read of 1.28 MB takes 0.17 ms here
    w = te.placeholder((Op // ob, K, ob), "int8", name="wt")
    bias = te.placeholder((Op,), "int64", name="bias")
    k = te.reduce_axis((0, K), name="k")
    acc = te.compute((N, Op), lambda n, o: te.sum(x[n, k].astype(acc_dtype) * w[o // ob, k, o % ob].astype(acc_dtype), axis=k),
                     name="acc")

    def acc64(n, o):  # the epilogue's arithmetic is int64
        return acc[n, o].astype("int64")
    if out_dtype == "float32":
        dq = te.placeholder((Op,), "float32", name="dq")
        extra = [dq]
        out = te.compute((N, O), lambda n, o: (acc64(n, o) + bias[o]).astype("float32") * dq[o], name="epilogue")
    elif out_dtype == "int32":
        extra = []
        out = te.compute((N, O), lambda n, o: _clip_cast(acc64(n, o) + bias[o], lo, hi, "int32"), name="epilogue")
    else:
        mult = te.placeholder((Op,), "int64", name="mult")
        shift = te.placeholder((Op,), "int64", name="shift")
        extra = [mult, shift]

        def rq(n, o):
            rnd = tirx.const(1, "int64") << (shift[o] - 1)
            if out_zero_point:  # added after the shift, folded into the rounding constant (reference/fixed_point.py)
                rnd = rnd + (tirx.const(int(out_zero_point), "int64") << shift[o])
            y = ((acc64(n, o) + bias[o]) * mult[o] + rnd) >> shift[o]
            return _clip_cast(y, lo, hi, out_dtype)

        out = te.compute((N, O), rq, name="epilogue")
    sch = tvm.s_tir.Schedule(te.create_prim_func([x, w, bias] + extra + [out]))
    blk = sch.get_sblock("acc")
    n, o, kl = sch.get_loops(blk)
    oo, oi = sch.split(o, [None, ob])
    sch.reorder(n, oo, kl, oi)
    par = sch.fuse(n, oo)
    if N * K * Op >= PARALLEL_MIN_DENSE_MACS:
        sch.parallel(par)
    ep = sch.get_sblock("epilogue")
    sch.reverse_compute_at(ep, par)
    sch.vectorize(oi)
    init = sch.decompose_reduction(blk, kl)
    sch.set_scope(blk, 0, "local")
    sch.vectorize(sch.get_loops(init)[-1])
    return prim_func_attrs(sch.mod["main"], "qnn_dense_i64")


def dense_i64_consts(weight: np.ndarray, bias: np.ndarray, out_dtype: str, rest: Sequence[np.ndarray],
                     ob: int = DENSE64_OB) -> list[np.ndarray]:
    O, K = weight.shape
    Op = -(-O // ob) * ob
    wt = np.zeros((K, Op), np.int8)
    wt[:, :O] = np.asarray(weight, np.int8).T
    wt = np.ascontiguousarray(wt.reshape(K, Op // ob, ob).transpose(1, 0, 2))
    b = np.zeros((Op,), np.int64)
    b[:O] = np.asarray(bias, np.int64)
    out = [wt, b]
    if out_dtype == "float32":
        dq = np.zeros((Op,), np.float32)
        dq[:O] = np.asarray(rest[0], np.float32).reshape(-1)
        out.append(dq)
    elif out_dtype != "int32":
        m = np.zeros((Op,), np.int64)
        s = np.ones((Op,), np.int64)
        m[:O] = np.broadcast_to(np.asarray(rest[0], np.int64).reshape(-1), (O,))
        s[:O] = np.broadcast_to(np.asarray(rest[1], np.int64).reshape(-1), (O,))
        out += [m, s]
    return out


def lower_dense_i64(bb, x, weight: np.ndarray, bias: np.ndarray, rest: Sequence[np.ndarray],
                    attrs: Mapping[str, Any], target: Any) -> relax.Expr:
    N, K = _shape(x)
    O = int(weight.shape[0])
    out_dtype = str(attrs["out_dtype"])
    lo, hi = (0, 0) if out_dtype == "float32" else (int(attrs["out_min"]), int(attrs["out_max"]))
    exact32 = dense_i32_exact(weight, attrs.get("data_bound"))
    func = dense_i64_primfunc(N, K, O, out_dtype, lo, hi, acc_dtype="int32" if exact32 else "int64",
                              out_zero_point=int(attrs.get("out_zero_point", 0)))
    consts = [relax.const(c, str(c.dtype)) for c in dense_i64_consts(weight, bias, out_dtype, rest)]
    return _emit(bb, func, "qnn_dense_i64", [x] + consts, (N, O), out_dtype)
