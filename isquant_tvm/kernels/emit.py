"""Relax emission of the kernels: constants, call_tir of a kernel PrimFunc, NCHW <-> NCHW16c layout
transforms, the conv / blocked conv / dense entry points every backend lowers through."""
from __future__ import annotations

from typing import Optional

import numpy as np
from tvm import te, tirx

from .common import OC_BN, QConv2dParams, QDenseParams
from .geometry import check_out_range, conv_geom
from .compute import conv_consts, dense_as_conv, prim_func_attrs
from .schedule import KernelConfig, build_conv_primfunc, fuse_parallel
from . import dw_neon, dw_vnni, vnni_1x1
from .depthwise import build_dw_primfunc, dw_blocked_consts, dw_blocked_primfunc, dw_consts, dw_geom, is_blocked_depthwise, is_depthwise


def const(arr: np.ndarray):
    from tvm import relax

    return relax.const(arr, str(arr.dtype))


def expr_shape_dtype(expr):
    return tuple(int(d) for d in expr.ty.shape), str(expr.ty.dtype)


def emit_call(bb, data, func: tirx.PrimFunc, consts: dict, name: str, out_shape, out_dtype):
    """Add `func` to the module and emit call_tir(func, data, wpk, bias, sorted epilogue constants)."""
    from tvm import relax

    gv = bb.add_func(func, name)
    rest = sorted(k for k in consts if k not in ("wpk", "bias"))
    args = [data, const(consts["wpk"]), const(consts["bias"])] + [const(consts[k]) for k in rest]
    return bb.emit(relax.call_tir(gv, args, relax.TensorType(tuple(out_shape), out_dtype)))


def lower_conv2d_with(bb, data, p: QConv2dParams, cfg: KernelConfig, name: Optional[str] = None):
    check_out_range(p)
    shape, in_dtype = expr_shape_dtype(data)
    if in_dtype not in ("int8", "uint8"):
        raise ValueError(f"quantized conv needs int8/uint8 data, got {in_dtype}")
    name = name or cfg.name
    if is_depthwise(shape, p):
        dg = dw_geom(shape, p)
        g = dg.base
        func = build_dw_primfunc(dg, p, in_dtype)
        return emit_call(bb, data, func, dw_consts(p, dg), name + "_dw", (g.N, g.O, g.OH, g.OW), p.out_dtype)
    g = conv_geom(shape, p, ow_tile_max=cfg.ow_tile_max, ic_dot=cfg.ic_dot)
    func = build_conv_primfunc(g, p, in_dtype, cfg)
    consts = conv_consts(p, g, in_dtype, cfg.dot_in_dtype, cfg.w_layout, cfg.w_dtype, hi32=cfg.hi32_epilogue,
                         q31=bool(cfg.q31_epilogue))
    return emit_call(bb, data, func, consts, name, (g.N, g.O, g.OH, g.OW), p.out_dtype)


def blocked_shape(shape, block: int = OC_BN):
    N, C, H, W = shape
    return (N, -(-C // block), H, W, block)


def lower_conv2d_blocked_with(bb, data, p: QConv2dParams, cfg: KernelConfig, name: Optional[str] = None,
                              blocked_in: bool = True, blocked_out: bool = True):
    """Conv chaining channel-blocked activations: input NCHW16c (N, ceil(C/16), H, W, 16) with blocked_in
    (padded channels ignored), else NCHW; output NCHW16c (N, ceil(O/16), OH, OW, 16) with blocked_out
    (padded channels = requant(0)), else NCHW. groups must be 1."""
    check_out_range(p)
    shape, in_dtype = expr_shape_dtype(data)
    channels = p.weight.shape[1] * p.groups
    if p.groups != 1 and is_blocked_depthwise(p.groups, p.weight.shape, channels):
        x = data if blocked_in else emit_layout(bb, data, True)
        xs, _ = expr_shape_dtype(x)
        if cfg.dw_vnni and dw_vnni.eligible(xs, p):  # four kernel columns per vpdpbusd
            func, out_shape = dw_vnni.primfunc(xs, p, in_dtype)
            consts = dw_vnni.consts(p, xs, in_dtype)
        elif cfg.dw_neon and dw_neon.eligible(xs, p):  # int16 tap pairs (aarch64, and its host twin)
            func, out_shape = dw_neon.primfunc(xs, p, in_dtype, q31=cfg.q31_epilogue)
            consts = dw_neon.consts(p, xs, in_dtype, q31=bool(cfg.q31_epilogue))
        else:
            func, out_shape = dw_blocked_primfunc(xs, p, in_dtype, q31=cfg.q31_epilogue)
            consts = dw_blocked_consts(p, xs[1], q31=bool(cfg.q31_epilogue))
        y = emit_call(bb, x, func, consts, (name or cfg.name) + "_dw_blk", out_shape, p.out_dtype)
        return y if blocked_out else emit_layout(bb, y, False, channels)
    if p.groups != 1:
        raise NotImplementedError("blocked-layout conv supports groups == 1 and depthwise only")
    name = (name or cfg.name) + "_blk"
    if cfg.vnni_1x1 and blocked_in and blocked_out and vnni_1x1.eligible(shape, p):  # no pack, 7 x 4 tile
        func, out_shape = vnni_1x1.primfunc(shape, p, in_dtype)
        return emit_call(bb, data, func, vnni_1x1.consts(p, shape, in_dtype), name, out_shape, p.out_dtype)
    g = conv_geom(shape, p, ow_tile_max=cfg.ow_tile_max, blocked_in=blocked_in, ic_dot=cfg.ic_dot)
    func = build_conv_primfunc(g, p, in_dtype, cfg, blocked_out=blocked_out)
    consts = conv_consts(p, g, in_dtype, cfg.dot_in_dtype, cfg.w_layout, cfg.w_dtype, hi32=cfg.hi32_epilogue,
                         q31=bool(cfg.q31_epilogue))
    out_shape = (g.N, g.OCB, g.OH, g.OW, OC_BN) if blocked_out else (g.N, g.O, g.OH, g.OW)
    return emit_call(bb, data, func, consts, name, out_shape, p.out_dtype)


def layout_primfunc(shape, dtype: str, to_blocked: bool, channels: Optional[int] = None) -> tirx.PrimFunc:
    """NCHW <-> NCHW16c transform (zero-filled channel padding), parallel over (n, block, h)."""
    import tvm.s_tir  # noqa: F401

    if to_blocked:
        N, C, H, W = shape
        x = te.placeholder(shape, dtype, name="x")
        CB = -(-C // OC_BN)
        y = te.compute((N, CB, H, W, OC_BN), lambda n, cb, h, w, c: tirx.if_then_else(
            cb * OC_BN + c < C, x[n, tirx.min(cb * OC_BN + c, C - 1), h, w], tirx.const(0, dtype)), name="layout")
    else:
        N, CB, H, W, _ = shape
        C = channels or CB * OC_BN
        x = te.placeholder(shape, dtype, name="x")
        y = te.compute((N, C, H, W), lambda n, c, h, w: x[n, c // OC_BN, h, w, c % OC_BN], name="layout")
    sch = tvm.s_tir.Schedule(te.create_prim_func([x, y]))
    blk = sch.get_sblock("layout")
    loops = sch.get_loops(blk)
    fuse_parallel(sch, loops[:3])
    return prim_func_attrs(sch.mod["main"], "layout")


def emit_layout(bb, x, to_blocked: bool, channels: Optional[int] = None):
    from tvm import relax

    shape, dtype = expr_shape_dtype(x)
    func = layout_primfunc(shape, dtype, to_blocked, channels)
    out_shape = blocked_shape(shape) if to_blocked else (shape[0], channels or shape[1] * OC_BN, shape[2], shape[3])
    gv = bb.add_func(func, "to_nchw16c" if to_blocked else "from_nchw16c")
    return bb.emit(relax.call_tir(gv, [x], relax.TensorType(out_shape, dtype)))


def lower_dense_with(bb, data, p: QDenseParams, cfg: KernelConfig, name: Optional[str] = None):
    """(N, K) x (O, K)^T through the conv kernel on (N, K, 1, 1)."""
    from tvm import relax

    shape, _ = expr_shape_dtype(data)
    N, K = shape
    O = p.weight.shape[0]
    x4 = bb.emit(relax.op.reshape(data, (N, K, 1, 1)))
    y = lower_conv2d_with(bb, x4, dense_as_conv(p), cfg, name=name or cfg.name.replace("conv2d", "dense"))
    return bb.emit(relax.op.reshape(y, (N, O)))
