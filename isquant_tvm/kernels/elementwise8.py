"""Scheduled lowerings of qnn.lut and qnn.mul (8-bit element-wise ops of issue 15), bit-exact against
reference.QNN_REFERENCE.

qnn.lut is one gather per element from a 256-entry table (per channel: the row of the element's channel,
on NCHW or NCHW16c; blocked tensors pad the table with zero rows for the padded lanes, which no consumer
reads). On AVX-512 it is one ``vpgatherdd`` per 16 elements (lut_gather_primfunc): 0.56-0.72 -> 0.15-0.23
ns per element (thread CPU, 1 thread, load 1-2), MobileNetV3-small default build 1.39 -> 1.00 ms thread
CPU at 1 thread (load 5.6, same output). qnn.mul multiplies two 8-bit tensors (the second broadcasting: an SE gate [N, C, 1, 1], or
[N, CB, 1, 1, 16] when blocked) and requantizes in int64 exactly as glue.requantize does. Both are one TE
compute, the innermost axis vectorised and the rest fused (parallel above glue.PARALLEL_MIN_ELEMS).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import tvm
from tvm import relax, te, tirx

from .compute import prim_func_attrs
from .glue import PARALLEL_MIN_ELEMS, _clip_cast, _emit, _emit_flat, _largest_divisor, _shape, _dtype, \
    _vec_for, elementwise_primfunc


def _schedule_rows(func: tirx.PrimFunc, block: str, vec: int, total: int) -> tirx.PrimFunc:
    """Outer axes fused (parallel when large), the innermost split by `vec` and vectorised."""
    import tvm.s_tir  # noqa: F401

    sch = tvm.s_tir.Schedule(func)
    loops = sch.get_loops(sch.get_sblock(block))
    inner = loops[-1]
    outer = sch.fuse(*loops[:-1]) if len(loops) > 2 else (loops[0] if len(loops) == 2 else None)
    extent = int(sch.get(inner).extent)
    v = _largest_divisor(extent, vec)
    if v > 1:
        _, vi = sch.split(inner, [None, v])
        sch.vectorize(vi)
    if outer is not None and total >= PARALLEL_MIN_ELEMS:
        sch.parallel(outer)
    return sch.mod["main"]


def lut_primfunc(shape: Sequence[int], in_dtype: str, table_shape: Sequence[int], out_dtype: str,
                 vec: int) -> tirx.PrimFunc:
    """y = table[row(c), x + 128 | x]; shape NCHW (rank >= 2, channel axis 1), NCHW16c (rank 5) or flat
    (rows 1)."""
    x = te.placeholder(tuple(shape), in_dtype, name="x")
    table = te.placeholder(tuple(table_shape), out_dtype, name="table")
    offset = 128 if in_dtype == "int8" else 0
    rows = int(table_shape[0]) if len(table_shape) == 2 else 1
    blocked = len(shape) == 5 and rows > 1

    def fn(*i):
        col = x[i].astype("int32") + tirx.const(offset, "int32")
        if len(table_shape) == 1:
            return table[col]
        row = i[1] * int(shape[4]) + i[4] if blocked else i[1]
        return table[row, col]

    out = te.compute(tuple(shape), fn, name="lut")
    if rows == 1:
        return elementwise_primfunc([x, table], out, vec, "qnn_lut")
    func = te.create_prim_func([x, table, out])
    return prim_func_attrs(_schedule_rows(func, "lut", vec, int(np.prod(shape))), "qnn_lut")


GATHER = 16  # bytes looked up per vpgatherdd (16 dword lanes)


def gather_lut_ok(shape: Sequence[int], rows: int, target: Any) -> bool:
    """Whether lut_gather_primfunc handles this call: AVX-512 x86, and every 16-element chunk inside one
    table row (per tensor; NCHW16c per channel: a chunk is one pixel's 16 lanes; NCHW per channel: the
    plane H*W a multiple of 16)."""
    from ..util import tvm_compat

    if str(getattr(target, "kind", None) and target.kind.name) != "llvm":
        return False
    triple = str(target.attrs.get("mtriple", "") or "")
    if triple and not triple.startswith("x86_64"):
        return False
    try:
        if not tvm_compat.has_feature(target, "avx512f"):
            return False
    except tvm_compat.TVM_ERRORS:
        return False
    total = int(np.prod(shape))
    if rows == 1:
        return total % GATHER == 0
    if len(shape) == 5:
        return int(shape[4]) == GATHER
    return len(shape) == 4 and (int(shape[2]) * int(shape[3])) % GATHER == 0


def lut_gather_primfunc(shape: Sequence[int], in_dtype: str, rows: int, out_dtype: str) -> tirx.PrimFunc:
    """y = table[row, x (+128 for int8)] with one AVX-512 ``vpgatherdd`` per 16 elements.

    TVM vectorises the generic lut_primfunc's table[row, x] into 64 scalar byte loads + ``vpinsrb``
    (0.56-0.72 ns per element here, i.e. 2-3 cycles: MobileNetV3-small's 28 hard-swish / hard-sigmoid
    tables took 0.5 of its 1.37 ms, and stayed serial at 2 threads below PARALLEL_MIN_ELEMS). Here the
    16 indices row*256 + x are one int32 vector and ``vpgatherdd`` (scale 1) reads the dword at each byte
    offset of the flat table; the low byte is the entry (the table carries 4 bytes of tail padding so the
    last entry's dword stays inside). Arguments: x (shape), table (rows*256 + 4,), out (shape)."""
    from tvm.script.ir_builder import IRBuilder
    from tvm.script.ir_builder import tirx as T

    total = int(np.prod(shape))
    chunks = total // GATHER
    blocked = len(shape) == 5 and rows > 1
    plane = int(shape[2]) * int(shape[3]) if len(shape) >= 4 else 1
    offset = 128 if in_dtype == "int8" else 0
    parallel = total >= PARALLEL_MIN_ELEMS
    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name("qnn_lut_gather")
            x = T.arg("x", T.Buffer(tuple(int(v) for v in shape), in_dtype))
            table = T.arg("table", T.Buffer((rows * 256 + 4,), out_dtype))
            out = T.arg("out", T.Buffer(tuple(int(v) for v in shape), out_dtype))
            T.func_attr({"tirx.noalias": True})
            xf = T.decl_buffer((total,), in_dtype, data=x.data)
            of = T.decl_buffer((total,), out_dtype, data=out.data)
            lanes = tirx.Ramp(tirx.const(0, "int32"), tirx.const(1, "int32"), GATHER)
            mask = tirx.Broadcast(tirx.const(True, "bool"), GATHER)
            base_ptr = T.address_of(table[0])
            with (T.parallel if parallel else T.serial)(0, chunks) as k:
                if rows == 1:
                    base = tirx.Broadcast(tirx.const(offset, "int32"), GATHER)
                elif blocked:  # chunk k = pixel k; its 16 lanes are channels cb*16 .. cb*16+15
                    cb = (k // plane) % int(shape[1])
                    base = (lanes + tirx.Broadcast(cb * GATHER, GATHER)) * tirx.Broadcast(tirx.const(256, "int32"), GATHER) \
                        + tirx.Broadcast(tirx.const(offset, "int32"), GATHER)
                else:  # NCHW: the chunk lies in one channel's plane
                    c = (k * GATHER // plane) % int(shape[1])
                    base = tirx.Broadcast(c * 256 + offset, GATHER)
                idx = tirx.Cast(f"int32x{GATHER}", xf.vload([k * GATHER], f"{in_dtype}x{GATHER}")) + base
                got = T.call_llvm_pure_intrin(f"int32x{GATHER}", "llvm.x86.avx512.mask.gather.dpi.512",
                                              tirx.Broadcast(tirx.const(0, "int32"), GATHER), base_ptr, idx,
                                              mask, tirx.const(1, "int32"))
                T.buffer_store(of, tirx.Cast(f"{out_dtype}x{GATHER}", got), [tirx.Ramp(k * GATHER, 1, GATHER)])
    return prim_func_attrs(ib.get(), "qnn_lut")


def _gather_table(table: np.ndarray, rows: int, out_dtype: str) -> np.ndarray:
    flat = np.zeros((rows * 256 + 4,), out_dtype)
    flat[:table.size] = np.asarray(table).reshape(-1)
    return flat


def lower_lut(bb: relax.BlockBuilder, x: relax.Expr, table: np.ndarray, attrs: Mapping[str, Any],
              target: Any) -> relax.Expr:
    shape = _shape(x)
    out_dtype = str(attrs["out_dtype"])
    rows = 1 if table.shape[0] == 1 else (shape[1] * shape[4] if len(shape) == 5 else table.shape[0])
    if gather_lut_ok(shape, rows, target):
        func = lut_gather_primfunc(shape, _dtype(x), rows, out_dtype)
        return _emit(bb, func, "qnn_lut", [x, relax.const(_gather_table(table, rows, out_dtype), out_dtype)],
                     shape, out_dtype)
    vec = _vec_for(target, _dtype(x), out_dtype)
    if table.shape[0] == 1:
        func = lut_primfunc((int(np.prod(shape)),), _dtype(x), (256,), out_dtype, vec)
        return _emit_flat(bb, func, "qnn_lut", [x, relax.const(table.reshape(256), out_dtype)], shape, out_dtype)
    if len(shape) == 5:  # NCHW16c: one row per (padded) channel
        padded = np.zeros((shape[1] * shape[4], 256), table.dtype)
        padded[:table.shape[0]] = table
        table = padded
    func = lut_primfunc(shape, _dtype(x), table.shape, out_dtype, vec)
    return _emit(bb, func, "qnn_lut", [x, relax.const(table, out_dtype)], shape, out_dtype)


def mul_primfunc(a_shape: Sequence[int], b_shape: Sequence[int], a_dtype: str, b_dtype: str, m: int, shift: int,
                 out_dtype: str, lo: int, hi: int, vec: int) -> tirx.PrimFunc:
    a = te.placeholder(tuple(a_shape), a_dtype, name="a")
    b = te.placeholder(tuple(b_shape), b_dtype, name="b")
    half = tirx.const(1 << (int(shift) - 1), "int64")

    def fn(*i):
        j = [0 if int(db) == 1 else v for v, db in zip(i, b_shape)]
        prod = a[i].astype("int64") * b[tuple(j)].astype("int64")
        y = (prod * tirx.const(int(m), "int64") + half) >> tirx.const(int(shift), "int64")
        return _clip_cast(y, lo, hi, out_dtype)

    out = te.compute(tuple(a_shape), fn, name="qmul")
    if tuple(a_shape) == tuple(b_shape):
        return elementwise_primfunc([a, b], out, vec, "qnn_mul")
    func = te.create_prim_func([a, b, out])
    return prim_func_attrs(_schedule_rows(func, "qmul", vec, int(np.prod(a_shape))), "qnn_mul")


def lower_mul(bb: relax.BlockBuilder, a: relax.Expr, b: relax.Expr, m: int, attrs: Mapping[str, Any],
              target: Any) -> relax.Expr:
    sa, sb = _shape(a), _shape(b)
    out_dtype = str(attrs["out_dtype"])
    fa, fb = ((int(np.prod(sa)),),) * 2 if sa == sb else (sa, sb)
    func = mul_primfunc(fa, fb, _dtype(a), _dtype(b), m, int(attrs["shift"]), out_dtype, int(attrs["out_min"]),
                        int(attrs["out_max"]), _vec_for(target, _dtype(a), out_dtype))
    if sa == sb:
        return _emit_flat(bb, func, "qnn_mul", [a, b], sa, out_dtype)
    return _emit(bb, func, "qnn_mul", [a, b], sa, out_dtype)


def avg_pool2d_primfunc(shape: Sequence[int], dtype: str, pool: Sequence[int], strides: Sequence[int],
                        padding: Sequence[int], shift: int, out_dtype: str, lo: int, hi: int,
                        vec: int) -> tirx.PrimFunc:
    """NCHW or NCHW16c: the kh·kw window terms summed in int32 (unrolled: pools are small), times the
    position's multiplier m[oh, ow], requantized in int64."""
    import functools

    kh, kw = (int(v) for v in pool)
    sh, sw = (int(v) for v in strides)
    pt, pl, pb, pr = (int(v) for v in padding)
    H, W = int(shape[2]), int(shape[3])
    OH, OW = (H + pt + pb - kh) // sh + 1, (W + pl + pr - kw) // sw + 1
    x = te.placeholder(tuple(shape), dtype, name="x")
    mult = te.placeholder((OH, OW), "int64", name="m")
    half = tirx.const(1 << (int(shift) - 1), "int64")

    def term(n, c, h, w, rest):
        inside = tirx.all(h >= 0, h < H, w >= 0, w < W)
        v = x[(n, c, tirx.max(tirx.min(h, H - 1), 0), tirx.max(tirx.min(w, W - 1), 0)) + tuple(rest)]
        return tirx.if_then_else(inside, v.astype("int32"), tirx.const(0, "int32"))

    def fn(n, c, oh, ow, *rest):
        total = functools.reduce(lambda a, b: a + b, [term(n, c, oh * sh + i - pt, ow * sw + j - pl, rest)
                                                      for i in range(kh) for j in range(kw)])
        y = (total.astype("int64") * mult[oh, ow] + half) >> tirx.const(int(shift), "int64")
        return _clip_cast(y, lo, hi, out_dtype)

    out_shape = (int(shape[0]), int(shape[1]), OH, OW) + tuple(int(s) for s in shape[4:])
    out = te.compute(out_shape, fn, name="avg_pool")
    func = te.create_prim_func([x, mult, out])
    return prim_func_attrs(_schedule_rows(func, "avg_pool", vec, int(np.prod(out_shape)) * kh * kw), "qnn_avg_pool2d")


def lower_avg_pool2d(bb: relax.BlockBuilder, x: relax.Expr, m: np.ndarray, attrs: Mapping[str, Any],
                     target: Any) -> relax.Expr:
    shape = _shape(x)
    out_dtype = str(attrs["out_dtype"])
    func = avg_pool2d_primfunc(shape, _dtype(x), attrs["pool_size"], attrs["strides"], attrs["padding"],
                               int(attrs["shift"]), out_dtype, int(attrs["out_min"]), int(attrs["out_max"]),
                               _vec_for(target, _dtype(x), out_dtype))
    out_shape = (shape[0], shape[1]) + tuple(m.shape) + tuple(shape[4:])
    return _emit(bb, func, "qnn_avg_pool2d", [x, relax.const(np.ascontiguousarray(m, np.int64), "int64")],
                 out_shape, out_dtype)


def resize2d_primfunc(shape: Sequence[int], dtype: str, out_hw: Sequence[int], bits: int, out_dtype: str,
                      vec: int) -> tirx.PrimFunc:
    """Bilinear NCHW resize with integer weights (qnn.resize2d): the row / column tables are inputs."""
    N, C, H, W = (int(v) for v in shape)
    OH, OW = (int(v) for v in out_hw)
    x = te.placeholder((N, C, H, W), dtype, name="x")
    rows = te.placeholder((3, OH), "int32", name="rows")
    cols = te.placeholder((3, OW), "int32", name="cols")
    one = tirx.const(1 << bits, "int32")
    lo, hi = (-128, 127) if out_dtype == "int8" else (0, 255)

    def fn(n, c, oy, ox):
        def mix(r):
            a = x[n, c, r, cols[0, ox]].astype("int32")
            b = x[n, c, r, cols[1, ox]].astype("int32")
            return a * (one - cols[2, ox]) + b * cols[2, ox]
        total = mix(rows[0, oy]) * (one - rows[2, oy]) + mix(rows[1, oy]) * rows[2, oy]
        y = (total + tirx.const(1 << (2 * bits - 1), "int32")) >> tirx.const(2 * bits, "int32")
        return _clip_cast(y, lo, hi, out_dtype)

    out = te.compute((N, C, OH, OW), fn, name="resize")
    func = te.create_prim_func([x, rows, cols, out])
    return prim_func_attrs(_schedule_rows(func, "resize", vec, N * C * OH * OW * 4), "qnn_resize2d")


def lower_resize2d(bb: relax.BlockBuilder, x: relax.Expr, rows: np.ndarray, cols: np.ndarray,
                   attrs: Mapping[str, Any], target: Any) -> relax.Expr:
    shape = _shape(x)
    out_dtype = str(attrs["out_dtype"])
    out_hw = (rows.shape[1], cols.shape[1])
    func = resize2d_primfunc(shape, _dtype(x), out_hw, int(attrs["bits"]), out_dtype, _vec_for(target, "int32"))
    return _emit(bb, func, "qnn_resize2d", [x, relax.const(rows, "int32"), relax.const(cols, "int32")],
                 (shape[0], shape[1]) + out_hw, out_dtype)
