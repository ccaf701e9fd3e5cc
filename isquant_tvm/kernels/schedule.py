"""Hand schedules of the conv compute (x86 VNNI / AVX2 / int32, ARM sdot / NEON): register tiles,
tensorized dot instructions, parallel loops; KernelConfig; the build hook tuning observes."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

from tvm import te, tirx

from .common import IC_DOT, OC_BN, QConv2dParams
from .geometry import ConvGeom, int32_form
from .compute import conv_compute, direct_nchw, prim_func_attrs, start_from_bias


# Kernels below this much work stay single-threaded: waking TVM's worker threads for a parallel loop costs
# ~5-10 us after a gap, more than a ~20 us kernel gains from a second core (resnet20-cifar's 2.4 M-MAC convs
# ran 0.022 -> 0.028 ms with TVM_NUM_THREADS=2; 6.4 M-MAC ones still scale 1.8x).
DW_PARALLEL_MIN_MACS = 300_000  # depthwise: vectorised int32, ~15 GMAC/s per core


def fuse_parallel(sch, loops, parallel: bool = True):
    f = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    if parallel:
        sch.parallel(f)
    return f


def schedule_pack(sch, name: str = "pack", parallel: bool = True):
    blk = sch.get_sblock(name)
    loops = sch.get_loops(blk)
    if len(loops) == 5 and isinstance(sch.get(loops[4]).extent, tirx.IntImm) and sch.get(loops[4]).kind == tirx.ForKind.SERIAL:
        # an unrolled channel gather lets LLVM hoist the bounds test per pixel: a 1x1 conv over 128x55x55
        # went 0.20 -> 0.12 ms, most of which was this pack
        sch.unroll(loops[4])
    fuse_parallel(sch, loops[:3], parallel)
    return blk


def schedule_unpack(sch, name: str = "unpack", parallel: bool = True):
    blk = sch.get_sblock(name)
    n, o, oh, ow = sch.get_loops(blk)
    fuse_parallel(sch, [n, o, oh], parallel)
    return blk


@dataclass(frozen=True)
class KernelConfig:
    """How a conv is scheduled on one target family."""
    dot_in_dtype: str  # "uint8" (VNNI) or "int8" (sdot / NEON)
    intrin: Optional[str]  # tensor intrinsic over (intrin_oc, 4); None = vectorise over oc
    intrin_oc: int = OC_BN  # output channels of one intrinsic call (16 VNNI, 4 ARM)
    w_layout: str = "oc_ic"
    ow_tile_max: int = 16
    name: str = "qconv2d"
    ic_dot: int = IC_DOT  # input channels reduced by one intrinsic lane
    w_dtype: str = "int8"  # packed weight storage (int16 for vpmaddwd)
    parallel_min_macs: int = 4_000_000  # smaller convs run single-threaded (~20 us on one core)
    # 8-bit outputs with every shift >= 33: accumulator starts at the bias, int32 requantize
    # (compute.conv_compute, geometry._requant_hi32)
    hi32_epilogue: bool = False
    # ARM 8-bit outputs with every shift >= 32: int32 requantize with sqdmulh + srshl (geometry._requant_q31);
    # "neon" emits the intrinsics, "host" the same arithmetic in int64 TIR (portable twin, any target)
    q31_epilogue: str = ""
    # blocked depthwise through kernels/dw_vnni.py (four kernel columns per vpdpbusd) instead of the generic one
    dw_vnni: bool = False
    # blocked depthwise through kernels/dw_neon.py (int16 tap pairs, widened into int32) instead of the generic one
    dw_neon: bool = False
    # blocked 1x1 / stride 1 convs through kernels/vnni_1x1.py (no pack, pixels x oc-block register tile)
    vnni_1x1: bool = False


def vectorize_epilogue(sch, loop, lanes4: bool) -> None:
    """Vectorise an epilogue loop; lanes4: 4 int32 lanes per vector (the NEON intrinsics of
    geometry._requant_q31 select only on 128-bit vectors), the outer part unrolled."""
    if not lanes4:
        sch.vectorize(loop)
        return
    ext = sch.get(loop).extent
    if not isinstance(ext, tirx.IntImm) or int(ext) % 4:
        raise ValueError(f"q31 epilogue needs a vectorised extent divisible by 4, got {ext}")
    outer, inner = sch.split(loop, [None, 4])
    sch.vectorize(inner)
    sch.unroll(outer)


def schedule_conv(sch, g: ConvGeom, cfg: KernelConfig, blocked_out: bool = False, lanes4: bool = False):
    """Register tile: ow_tile output pixels x 16 output channels, accumulated in a local buffer over
    (icb, kh, kw, c4); bias/requant/clip on the tile right after; parallel over (n, oc-block, oh)."""
    conv = sch.get_sblock("conv")
    n, ocb, oh, ow, oc, icb, kh, kw, c4 = sch.get_loops(conv)
    ow_o, ow_i = sch.split(ow, [None, g.ow_tile])
    parallel = g.macs >= cfg.parallel_min_macs
    par = fuse_parallel(sch, [n, ocb, oh], parallel)
    # intrin is None and w_layout "oc_ic": the intrinsic's loop nest with the (intrin_oc x 4) body left as
    # plain TIR (portable twin of an ARM kernel). w_layout "ic_oc": vectorise over 16 oc (int32 fallback).
    portable = cfg.intrin is None and cfg.w_layout == "oc_ic"
    if (cfg.intrin is not None or portable) and cfg.intrin_oc < OC_BN:
        oc_o, oc_i = sch.split(oc, [None, cfg.intrin_oc])
        sch.reorder(ow_o, icb, kh, kw, ow_i, oc_o, oc_i, c4)
    elif cfg.intrin is not None or portable:
        oc_o, oc_i = None, oc
        sch.reorder(ow_o, icb, kh, kw, ow_i, oc, c4)
    else:
        oc_o, oc_i = None, oc
        sch.reorder(ow_o, icb, kh, kw, c4, ow_i, oc)
    ep = sch.get_sblock("epilogue")
    sch.reverse_compute_at(ep, ow_o)
    if cfg.intrin is None and not portable:
        sch.vectorize(oc)
        sch.unroll(c4)
    init = sch.decompose_reduction(conv, icb)
    if cfg.intrin is not None:
        sch.tensorize(oc_i, cfg.intrin)
    elif portable:
        sch.unroll(oc_i)
        sch.unroll(c4)
    if oc_o is not None:
        sch.unroll(oc_o)
    sch.set_scope(init, 0, "local")
    sch.unroll(ow_i)
    il = sch.get_loops(init)
    sch.vectorize(il[-1])
    el = sch.get_loops(ep)
    ext = [int(sch.get(lp).extent) if hasattr(sch.get(lp).extent, "value") else -1 for lp in el[-2:]]
    if not blocked_out and direct_nchw(g) and ext == [OC_BN, g.ow_tile]:
        # NCHW tile (16 oc x ow_tile): vectorise over oc (accumulators, bias, multipliers contiguous);
        # the stores are strided bytes, cheaper than gathering accumulators across the tile
        sch.reorder(el[-1], el[-2])
        el = sch.get_loops(ep)
    vectorize_epilogue(sch, el[-1], lanes4)
    if len(el) >= 2 and sch.get(el[-2]).kind == tirx.ForKind.SERIAL and g.ow_tile > 1:
        sch.unroll(el[-2])  # the tile's other (serial) axis
    if g.blocked_in:
        sch.vectorize(sch.get_loops(sch.get_sblock("pack"))[-1])
    schedule_pack(sch, parallel=parallel)
    if not blocked_out and not direct_nchw(g):
        schedule_unpack(sch, parallel=parallel)
    return sch


# Observers of every conv/dense kernel built by build_conv_primfunc: tuning/ records each kernel's
# unscheduled compute through this hook (an explicit hook, not a patch of this module from outside).
ConvBuildHook = Callable[["tirx.PrimFunc", ConvGeom, QConv2dParams, str, KernelConfig, bool], None]
_CONV_BUILD_HOOKS: list[ConvBuildHook] = []


@contextlib.contextmanager
def conv_build_hook(hook: ConvBuildHook) -> Iterator[None]:
    """While active, hook(func, g, p, in_dtype, cfg, blocked_out) sees every scheduled conv/dense kernel."""
    _CONV_BUILD_HOOKS.append(hook)
    try:
        yield
    finally:
        _CONV_BUILD_HOOKS.remove(hook)


def build_conv_primfunc(g: ConvGeom, p: QConv2dParams, in_dtype: str, cfg: KernelConfig,
                        blocked_out: bool = False) -> tirx.PrimFunc:
    func = _schedule_conv_primfunc(g, p, in_dtype, cfg, blocked_out)
    for hook in list(_CONV_BUILD_HOOKS):
        hook(func, g, p, in_dtype, cfg, blocked_out)
    return func


def _schedule_conv_primfunc(g: ConvGeom, p: QConv2dParams, in_dtype: str, cfg: KernelConfig,
                            blocked_out: bool) -> tirx.PrimFunc:
    import tvm.s_tir  # noqa: F401

    data, wpk, bias, epi, outs = conv_compute(g, p, in_dtype, cfg.dot_in_dtype, blocked_out, cfg.w_layout,
                                              cfg.w_dtype, hi32=cfg.hi32_epilogue, q31=cfg.q31_epilogue)
    func = te.create_prim_func([data, wpk, bias] + [epi[k] for k in sorted(epi)] + outs)
    if int32_form(epi):
        func = start_from_bias(func)
    sch = tvm.s_tir.Schedule(func)
    schedule_conv(sch, g, cfg, blocked_out=blocked_out, lanes4="q31sh" in epi and cfg.q31_epilogue == "neon")
    return prim_func_attrs(sch.mod["main"], cfg.name)
