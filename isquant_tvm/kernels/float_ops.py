"""Scheduled float32 kernels: what stays float (a `--quantize none` build, or a fallback region of an int8
build) gets real CPU loops instead of TVM's unscheduled defaults.

TVM 0.27's CPU pipeline (relax.backend.cpu_generic) legalizes every op to TOPI's naive compute and schedules
nothing: no parallel loop, no register tile, no vector loop (dlight's CPU rules cover only GEMV and
reductions).  A float YOLOv8n took 1892 ms against onnxruntime's 54 ms.  Here:

- ``relax.nn.conv2d`` (NCHW / OIHW, float32, groups 1 or depthwise) and ``relax.nn.conv2d_transpose`` with
  kernel == stride (DBNet's upsampling head) legalize to an *unscheduled* TE PrimFunc whose conv block carries
  its schedule in block annotations (:data:`CONV_KEY`).  Unscheduled, AnnotateTIROpPattern calls it
  out-elementwise-fusable, so FuseOps / FuseTIR fuse the bias add, a BatchNorm that did not fold, the
  activation (ReLU, ReLU6, hard-swish, hard-sigmoid, SiLU, sigmoid), a residual add or an SE gate multiply
  into it; :func:`schedule_conv` then schedules the fused PrimFunc, inlining every element-wise block into the
  conv's output copy.  The epilogue costs no pass over memory of its own (a scheduled, opaque conv left four
  passes for a hard-swish: mobilenet_v3_small 6.3 -> 5.0 ms from this alone).  The variants, all NCHW:
  * 1x1 stride-1 convs as a GEMM over the flattened pixels, ``out[o, p] = sum_c w[o, c] x[c, p]``: a register
    tile of 8 output channels x 1-2 vectors of pixels, the weights broadcast;
  * ConvTranspose k x k / k the same GEMM with k*k*O rows and a pixel shuffle as its output copy (every output
    pixel is one product, no zero taps): dbnet_mv3's head 463 ms -> 5 ms;
  * other dense convs the same tile along the output row, rows outside the channel blocks so the kh input
    rows stay in L2 while every channel block reads them (256 -> 64 3x3 at 80x80: 31 -> 96 GFLOP/s);
  * depthwise convs 8 channels x a vector of the row, taps unrolled (one channel alone chained one
    accumulator through all taps, FMA-latency bound: 5x5 at 10x10 12 -> 20 GFLOP/s);
  * strided convs read a padded copy whose columns are de-interleaved by phase, so each tap is a contiguous
    vector (stride-2 depthwise 3x3 at 160x160 4.4 -> 7.9 GFLOP/s, the 3x3/2 stem 34 -> 54);
  * 1x1 convs on 1x1 pixels (squeeze-excitation FCs) a GEMV over output channels against the constant
    weights transposed at compile time.
  The pixel tile (2, 1 or 1/2 vectors) maximises useful fraction x measured tile efficiency (:func:`_tile`):
  padding a 20-wide row to 32 beats a half-vector tile (72 -> 100 GFLOP/s).  Padded pixels are computed into
  a padded buffer that the output copy slices: TVM's vectorizer scalarises a predicated tail.
- ``relax.matmul`` with a constant 2-D right operand (Gemm / Linear) vectorises over the output features.
- ``relax.sigmoid`` through TOPI's polynomial ``fast_exp``: tir.sigmoid lowers to llvm.exp, one libm call a
  lane (yolov8n's SiLU after every conv: 48 -> 36 ms; agrees with TVM's default sigmoid to 1e-5 in the tests).
- every other unscheduled PrimFunc (pools, resize, concat copies, softmax, ...) gets a generic schedule after
  fusion (:func:`schedule_generic`): outer data-parallel loops fused and parallel when large enough,
  innermost loop vectorised when it is data-parallel.

One PrimFunc is built per distinct (shape, attributes, vector width) and cached (``lru_cache``).

Measured on this 2-core Zen 4 host (AVX-512), one thread, thread-CPU time (other jobs kept the load average
at 4.6-6.3, so wall clock was useless; thread-CPU still carries their cache contention, +-10%), onnxruntime
fp32 interleaved in the same process (two runs): mobilenet_v3_small 3.60 / 3.72 ms vs 1.99 / 2.15 (1.81x /
1.73x; 6.33 ms before this fusion work), mobilenet_v3_large 11.6 vs 6.5 (1.77x), yolov8n (320) 29.9 / 30.3 vs
19.6 / 19.8 (1.52x / 1.53x; 46.7 ms before), dbnet_mv3 (320) 75.0 / 82.2 vs 44.6 / 46.8 (1.68x / 1.76x; 531 ms
before).  Outputs agree with onnxruntime to 3e-5 relative.  Not yet within 1.5x: left are the stem conv
(3 input channels), the stride-2 depthwise rows and their padded copies, the 7x7-pixel GEMMs, dbnet's two
256 -> 64 3x3 convs at 80x80 (111 GFLOP/s, half its float time), the classifier matmul (cold weights),
VM allocation overhead; an NCHWc layout (channels as the vector) would remove most of it.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Optional

import numpy as np
import tvm
from tvm import relax, te, tirx

from ..util import tvm_compat
from .compute import prim_func_attrs

log = logging.getLogger(__name__)

__all__ = ["vector_lanes", "legalize_map", "schedule_generic", "conv2d_primfunc"]

# Below this many output elements x reduction length a kernel runs single-threaded: waking TVM's pool costs
# ~5-10 us (see kernels/schedule.py), more than a small op gains from the second core.
PARALLEL_MIN_WORK = 200_000
GENERIC_PARALLEL_MIN_ELEMS = 32_768


def vector_lanes(target: Any) -> int:
    """float32 lanes of the target's widest vector (16 with AVX-512, 8 with AVX2, 4 on NEON)."""
    mcpu = str(target.attrs.get("mcpu", "")) if target is not None else ""
    keys = " ".join(str(k) for k in getattr(target, "keys", []))
    mattr = " ".join(str(a) for a in target.attrs.get("mattr", [])) if target is not None else ""
    if "arm" in keys or "aarch64" in str(target.attrs.get("mtriple", "")):
        return 4
    if "avx512" in mattr or mcpu in ("cascadelake", "icelake-server", "sapphirerapids", "skylake-avx512",
                                     "cooperlake", "tigerlake", "icelake-client", "znver4", "graniterapids",
                                     "emeraldrapids"):
        return 16
    try:
        with target:
            if tvm.target.codegen.llvm_cpu_has_features(["avx512f"], target):
                return 16
    except Exception:  # noqa: BLE001 - not an LLVM x86 target: the AVX2 width is a safe default
        pass
    return 8


# Relative throughput of a register tile of 2, 1 and 1/2 vectors of pixels (x 8 output channels), measured on
# 3x3 convs on this host (one thread, thread-CPU time): one weight broadcast feeds 2 / 1 / 1/2 vector FMAs, so
# the narrow tiles are bound by the broadcasts, not by the FMA units.  64->64 at 40x40: 81 GFLOP/s with the
# half-vector tile (no padding), 98-103 with one vector padded 40 -> 48; 64->64 at 20x20: 72 -> 90 with two
# vectors padded 20 -> 32; 128->128 at 10x10: 55 -> 86 with one vector padded 10 -> 16; 256->64 at 80x80 two
# vectors padded 80 -> 96 beat one (interleaved A/B: 17.0 / 18.4 ms vs 18.8 / 20.1), hence 0.8 rather than the
# 0.85 the small convs alone suggest.
_TILE_EFFICIENCY = (1.0, 0.8, 0.55)


def _tile(extent: int, lanes: int) -> int:
    """The pixel tile that maximises (useful fraction of the padded row) x (tile efficiency)."""
    best, best_score = max(4, lanes // 2), -1.0
    for t, eff in zip((2 * lanes, lanes, max(4, lanes // 2)), _TILE_EFFICIENCY):
        padded = -(-extent // t) * t
        score = extent / padded * eff
        if score > best_score + 1e-9:
            best, best_score = t, score
    return best


def _oc_block(o: int) -> int:
    for b in (8, 6, 4, 2):
        if o % b == 0:
            return b
    return 1


def _tile_outer(sch, blk, loops, reduce_loop, work: int):
    """Fuse the outer loops of a register tile, accumulate the tile locally, parallelise, then split off
    the zero-init (decompose_reduction last: parallel() checks the block is still a reduction with init)."""
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    acc = sch.cache_write(blk, 0, "local")
    sch.reverse_compute_at(acc, fused)
    if work >= PARALLEL_MIN_WORK:
        sch.parallel(fused)
    _vectorize_tail(sch, blk)
    _vectorize_tail(sch, acc)
    init = sch.decompose_reduction(blk, reduce_loop)
    _vectorize_tail(sch, init)
    return acc


# --------------------------------------------------------------------------------------------------------
# conv2d
# --------------------------------------------------------------------------------------------------------


# Block annotations that carry a conv's schedule parameters through FuseOps / FuseTIR: the conv PrimFunc is
# legalized unscheduled (so FuseOps sees an out-elementwise-fusable op and fuses the bias add, BatchNorm and
# activation after it), and :func:`schedule_generic` schedules the fused PrimFunc from these.
CONV_KEY = "isquant.float_conv"
ROLE_KEY = "isquant.float_conv_role"


def _i64(shape: tuple) -> tuple:
    """int64 extents, as TOPI's legalized ops have: FuseTIR maps a conv's output buffer onto its consumer's
    input buffer and rejects the pair when the shape dtypes differ."""
    return tuple(tirx.IntImm("int64", int(v)) for v in shape)


@functools.lru_cache(maxsize=512)
def conv2d_compute(xshape: tuple, wshape: tuple, strides: tuple, padding: tuple, dilation: tuple,
                   groups: int, lanes: int, transpose: bool = False) -> tirx.PrimFunc:
    """The unscheduled NCHW float32 conv2d PrimFunc (x, w) -> out, padding (top, left, bottom, right), its conv
    block annotated with the schedule (:data:`CONV_KEY`).  ``transpose``: a ConvTranspose whose kernel equals
    its stride (no padding, groups 1, weight IOHW), computed as the 1x1 GEMM ``y[o*k*k + a*k + b, p] =
    sum_c w[c, o, a, b] x[c, p]`` and a pixel shuffle: every output pixel is one product, no zero taps."""
    n, c, h, w = xshape
    x = te.placeholder(_i64(xshape), "float32", name="x")
    wt = te.placeholder(_i64(wshape), "float32", name="w")
    zero = tirx.const(0.0, "float32")
    if transpose:
        _, o, kh, kw = wshape
        kk = kh * kw
        p = h * w
        tw = _tile(p, lanes)
        pp = -(-p // tw) * tw
        mo = o * kk
        ob = _oc_block(mo)
        xf = te.compute(_i64((n, c, pp)), lambda b, cc, q: tirx.if_then_else(q < p, x[b, cc, q // w, q % w], zero),
                        name="xpad", attrs={ROLE_KEY: "xpad"})
        rc = te.reduce_axis((0, c), name="rc")
        yp = te.compute(_i64((n, mo, pp)), lambda b, m, q: te.sum(
            xf[b, rc, q] * wt[rc, m // kk, (m % kk) // kw, m % kw], axis=rc), name="conv",
            attrs={CONV_KEY: "gemm", "isquant.tile": tw, "isquant.ob": ob, "isquant.work": n * mo * p * c})
        out = te.compute(_i64((n, o, h * kh, w * kw)), lambda b, oo, i, j: yp[
            b, oo * kk + (i % kh) * kw + j % kw, (i // kh) * w + j // kw], name="out", attrs={ROLE_KEY: "out"})
        return te.create_prim_func([x, wt, out])
    o, ci, kh, kw = wshape
    sh, sw = strides
    pt, pl, pb, pr = padding
    dh, dw = dilation
    oh = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
    ow = (w + pl + pr - dw * (kw - 1) - 1) // sw + 1
    depthwise = groups > 1
    gemm = not depthwise and kh == kw == 1 and sh == sw == 1 and not any(padding)
    ob = _oc_block(o)
    if gemm:
        p = h * w
        tw = _tile(p, lanes)
        pp = -(-p // tw) * tw
        xf = te.compute(_i64((n, c, pp)), lambda b, cc, q: tirx.if_then_else(q < p, x[b, cc, q // w, q % w], zero),
                        name="xpad", attrs={ROLE_KEY: "xpad"})
        rc = te.reduce_axis((0, c), name="rc")
        yp = te.compute(_i64((n, o, pp)), lambda b, oo, q: te.sum(xf[b, rc, q] * wt[oo, rc, 0, 0], axis=rc), name="conv",
                        attrs={CONV_KEY: "gemm", "isquant.tile": tw, "isquant.ob": ob, "isquant.work": n * o * p * c})
        out = te.compute(_i64((n, o, oh, ow)), lambda b, oo, i, j: yp[b, oo, i * w + j], name="out",
                         attrs={ROLE_KEY: "out"})
        return te.create_prim_func([x, wt, out])

    tw = _tile(ow, lanes)
    owp = -(-ow // tw) * tw
    hp = max(h + pt + pb, (oh - 1) * sh + dh * (kh - 1) + 1)
    wp = max(w + pl + pr, (owp - 1) * sw + dw * (kw - 1) + 1)
    if sw == 1:
        xp = te.compute(_i64((n, c, hp, wp)), lambda b, cc, i, j: tirx.if_then_else(
            tirx.all(i >= pt, i < h + pt, j >= pl, j < w + pl), x[b, cc, i - pt, j - pl], zero),
            name="xpad", attrs={ROLE_KEY: "xpad"})

        def xa(b, cc, i, j, tap):
            return xp[b, cc, i, j * sw + tap]
    else:
        # strided rows: the padded copy de-interleaves the columns by phase, xpad[.., i, r, q] = padded column
        # q * sw + r, so every tap reads a contiguous vector; a strided vector load is a gather, once per tap
        # (the stride-2 depthwise 3x3 at 160x160 ran at 4.4 GFLOP/s)
        wq = -(-wp // sw)
        xp = te.compute(_i64((n, c, hp, sw, wq)), lambda b, cc, i, r, q: tirx.if_then_else(
            tirx.all(i >= pt, i < h + pt, q * sw + r >= pl, q * sw + r < w + pl),
            x[b, cc, i - pt, q * sw + r - pl], zero), name="xpad", attrs={ROLE_KEY: "xpad"})

        def xa(b, cc, i, j, tap):
            return xp[b, cc, i, tap % sw, j + tap // sw]
    rkh = te.reduce_axis((0, kh), name="rkh")
    rkw = te.reduce_axis((0, kw), name="rkw")
    if depthwise:
        mult = o // c
        yp = te.compute(_i64((n, o, oh, owp)), lambda b, oo, i, j: te.sum(
            xa(b, oo // mult, i * sh + rkh * dh, j, rkw * dw) * wt[oo, 0, rkh, rkw], axis=[rkh, rkw]),
            name="conv", attrs={CONV_KEY: "dw", "isquant.tile": tw, "isquant.ob": ob,
                                "isquant.work": n * o * oh * owp * kh * kw})
    else:
        rc = te.reduce_axis((0, ci), name="rc")
        yp = te.compute(_i64((n, o, oh, owp)), lambda b, oo, i, j: te.sum(
            xa(b, rc, i * sh + rkh * dh, j, rkw * dw) * wt[oo, rc, rkh, rkw], axis=[rc, rkh, rkw]),
            name="conv", attrs={CONV_KEY: "dense", "isquant.tile": tw, "isquant.ob": ob,
                                "isquant.work": n * o * oh * owp * ci * kh * kw})
    out = te.compute(_i64((n, o, oh, ow)), lambda b, oo, i, j: yp[b, oo, i, j], name="out", attrs={ROLE_KEY: "out"})
    return te.create_prim_func([x, wt, out])


def _annotation(block: Any, key: str) -> Any:
    ann = block.annotations
    return ann[key] if key in ann else None


def schedule_conv(func: tirx.PrimFunc, lanes: int) -> tirx.PrimFunc:
    """Schedule a PrimFunc holding one annotated conv block (:func:`conv2d_compute`), alone or fused with the
    element-wise ops after it (bias add, BatchNorm, activation) and before it.  Every element-wise block is
    inlined into the conv's output copy (the slice of the padded tile, or the ConvTranspose pixel shuffle),
    which therefore applies the whole epilogue in the one pass over the conv's result it already made: a
    hard-swish conv writes memory once instead of four times."""
    import tvm.s_tir  # noqa: F401 - registers the schedule primitives

    sch = tvm.s_tir.Schedule(func)
    root = sch.get_sblock("root")
    conv = xpad = None
    for blk in sch.get_child_blocks(root):
        stmt = sch.get(blk)
        if _annotation(stmt, CONV_KEY) is not None:
            conv = blk
        elif _annotation(stmt, ROLE_KEY) is not None and str(_annotation(stmt, ROLE_KEY)) == "xpad":
            xpad = blk
    if conv is None or xpad is None:
        raise ValueError("no annotated conv block")
    ann = sch.get(conv).annotations
    kind, tw, ob, work = str(ann[CONV_KEY]), int(ann["isquant.tile"]), int(ann["isquant.ob"]), int(ann["isquant.work"])
    # inline every other block that is not a function output (producers into xpad, the epilogue chain and
    # the slice into the last consumer); a block the primitive refuses (an output, a non-injective op) stays.
    # Names, not block handles or statements: both go stale as the function is rewritten.
    conv_name, xpad_name = str(sch.get(conv).name_hint), str(sch.get(xpad).name_hint)
    keep = (conv_name, xpad_name)
    for _ in range(2):
        for blk in sch.get_child_blocks(root):
            if str(sch.get(blk).name_hint) in keep:
                continue
            try:
                sch.compute_inline(blk)
            except tvm_compat.TVM_ERRORS:
                pass
    finals = [str(sch.get(b).name_hint) for b in sch.get_child_blocks(root) if str(sch.get(b).name_hint) not in keep]
    conv = sch.get_sblock(conv_name)
    blk = conv
    if kind == "gemm":
        lb, lo, lq, lr = sch.get_loops(blk)
        lo0, lo1 = sch.split(lo, [None, ob])
        lq0, lq1 = sch.split(lq, [None, tw])
        sch.reorder(lb, lq0, lo0, lr, lo1, lq1)
        _tile_outer(sch, blk, [lb, lq0, lo0], lr, work)
    elif kind == "dw":
        # a block of channels per tile: one channel's row is a single accumulator chained through all the
        # taps (FMA-latency bound: the 5x5 depthwise at 14x14 ran at 14 GFLOP/s); ob channels interleave
        lb, lo, li, lj, lrh, lrw = sch.get_loops(blk)
        lo0, lo1 = sch.split(lo, [None, ob])
        lj0, lj1 = sch.split(lj, [None, tw])
        sch.reorder(lb, lo0, li, lj0, lrh, lrw, lo1, lj1)
        _tile_outer(sch, blk, [lb, lo0, li], lrh, work)
        sch.unroll(lrw)
        sch.unroll(lrh)
    else:
        lb, lo, li, lj, lrc, lrh, lrw = sch.get_loops(blk)
        lo0, lo1 = sch.split(lo, [None, ob])
        lj0, lj1 = sch.split(lj, [None, tw])
        # output rows outside the channel blocks: the kh input rows of all channels stay in L2 while every
        # block of output channels reads them (channel blocks outside streamed the whole padded input from
        # DRAM once per block: the 256 -> 64 3x3 conv at 80x80 ran at 31 GFLOP/s)
        sch.reorder(lb, li, lo0, lj0, lrc, lrh, lrw, lo1, lj1)
        _tile_outer(sch, blk, [lb, li, lo0], lrc, work)
        if int(sch.get(lrw).extent) <= 7:
            sch.unroll(lrw)
    _schedule_copy(sch, sch.get_sblock(xpad_name), lanes)
    for fin in finals:
        _schedule_copy(sch, sch.get_sblock(fin), lanes)
    return sch.mod["main"]


@functools.lru_cache(maxsize=512)
def conv2d_primfunc(xshape: tuple, wshape: tuple, strides: tuple, padding: tuple, dilation: tuple,
                    groups: int, lanes: int, transpose: bool = False) -> tirx.PrimFunc:
    """The scheduled conv alone (no epilogue): for kernel tests and benches."""
    func = schedule_conv(conv2d_compute(xshape, wshape, strides, padding, dilation, groups, lanes, transpose), lanes)
    return prim_func_attrs(func, "float_conv2d")


def _vectorize_tail(sch, blk) -> None:
    """Vectorise a block's innermost loop; unroll the loop above it (the output-channel rows of the tile)."""
    loops = sch.get_loops(blk)
    sch.vectorize(loops[-1])
    if len(loops) >= 2:
        above = sch.get(loops[-2])
        if isinstance(above.extent, tirx.IntImm) and above.extent.value <= 16 and above.kind == tirx.ForKind.SERIAL:
            sch.unroll(loops[-2])


def _schedule_copy(sch, blk: Any, lanes: int) -> None:
    """Parallel outer loops and a vector inner loop for the pad / slice (+ epilogue) copies around a conv."""
    loops = sch.get_loops(blk)
    extents = [int(sch.get(lp).extent) for lp in loops]
    total = 1
    for e in extents:
        total *= e
    if len(loops) > 1:
        outer = sch.fuse(*loops[:-1])
        if total >= GENERIC_PARALLEL_MIN_ELEMS * 4:
            sch.parallel(outer)
    if extents[-1] % lanes == 0:
        _, inner = sch.split(loops[-1], [None, lanes])
        sch.vectorize(inner)


# --------------------------------------------------------------------------------------------------------
# matmul (Gemm / Linear with constant weights): vectorised over the output features
# --------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=128)
def matmul_primfunc(m: int, k: int, nout: int, lanes: int) -> tirx.PrimFunc:
    """(m, k) x (k, nout) float32.  Per row of the left operand the output row accumulates locally while the
    right operand streams through once, row by row, in vector chunks: one sequential pass over the weights,
    which is what a cold 4 MB classifier matrix needs (bandwidth-bound).  Register tiles that each walk all
    of k measured the same warm (0.21 ms, 1024 x 1000) but 0.49 ms inside mobilenet_v3_small against 0.40
    for this (cold weights, 25 strided streams).  The output row is split in two halves that run in
    parallel, so a batch-1 classifier's matmul uses both cores."""
    import tvm.s_tir  # noqa: F401

    a = te.placeholder((m, k), "float32", name="a")
    b = te.placeholder((k, nout), "float32", name="b")
    rk = te.reduce_axis((0, k), name="rk")
    out = te.compute((m, nout), lambda i, j: te.sum(a[i, rk] * b[rk, j], axis=rk), name="matmul")
    sch = tvm.s_tir.Schedule(te.create_prim_func([a, b, out]))
    blk = sch.get_sblock("matmul")
    li, lj, lk = sch.get_loops(blk)
    vec = max(t for t in range(1, lanes + 1) if nout % t == 0)
    parts = 2 if m * nout * k >= PARALLEL_MIN_WORK and nout % (2 * vec) == 0 else 1
    ljp, lj0, lj1 = sch.split(lj, [parts, None, vec])
    sch.reorder(li, ljp, lk, lj0, lj1)
    fused = sch.fuse(li, ljp)
    acc = sch.cache_write(blk, 0, "local")
    sch.reverse_compute_at(acc, fused)
    if m * nout * k >= PARALLEL_MIN_WORK and m * parts > 1:
        sch.parallel(fused)
    _vectorize_tail(sch, blk)
    _vectorize_tail(sch, acc)
    init = sch.decompose_reduction(blk, lk)
    _vectorize_tail(sch, init)
    return prim_func_attrs(sch.mod["main"], "float_matmul")


@functools.lru_cache(maxsize=128)
def pixel_gemv_primfunc(n: int, c: int, o: int, lanes: int) -> tirx.PrimFunc:
    """A 1x1 conv on 1x1 pixels (the squeeze-excitation FCs) against its weights transposed to (c, o): the
    output channels are the vector, as in :func:`matmul_primfunc`.  The pixel GEMM wasted 7/8 of an 8-lane
    tile on the single pixel (576 -> 144 -> 576 SE: 0.09 ms a conv)."""
    import tvm.s_tir  # noqa: F401

    a = te.placeholder(_i64((n, c, 1, 1)), "float32", name="x")
    b = te.placeholder(_i64((c, o)), "float32", name="wt")
    rk = te.reduce_axis((0, c), name="rk")
    out = te.compute(_i64((n, o, 1, 1)), lambda i, j, p, q: te.sum(a[i, rk, 0, 0] * b[rk, j], axis=rk), name="gemv")
    sch = tvm.s_tir.Schedule(te.create_prim_func([a, b, out]))
    blk = sch.get_sblock("gemv")
    li, lj, lp, lq, lk = sch.get_loops(blk)
    vec = max(t for t in range(1, lanes + 1) if o % t == 0)
    jt = max(t * vec for t in range(1, 5) if o % (t * vec) == 0)
    lj0, lj1 = sch.split(lj, [None, jt])
    sch.reorder(li, lj0, lp, lq, lk, lj1)
    fused = sch.fuse(li, lj0, lp, lq)
    acc = sch.cache_write(blk, 0, "local")
    sch.reverse_compute_at(acc, fused)
    for bb in (blk, acc):
        sch.split(sch.get_loops(bb)[-1], [None, vec])
        _vectorize_tail(sch, bb)
    init = sch.decompose_reduction(blk, lk)
    _vectorize_tail(sch, init)
    return prim_func_attrs(sch.mod["main"], "float_gemv")


# --------------------------------------------------------------------------------------------------------
# Relax legalization entry points
# --------------------------------------------------------------------------------------------------------


def _static_shape(expr: relax.Expr) -> Optional[tuple[int, ...]]:
    """The static shape of a float32 tensor expression, else None (dynamic, other dtype, a tuple)."""
    try:
        if tvm_compat.expr_dtype(expr) != "float32":
            return None
        return tvm_compat.expr_shape(expr)
    except (TypeError, AttributeError, ValueError, tvm_compat.TVM_ERRORS):
        return None


def _default(op_name: str):
    return tvm.ir.Op.get(op_name).get_attr("FLegalize")


def _plain_float_nchw(call: relax.Call, xs: Any, ws: Any, kernel_layout: str) -> bool:
    """A float32 conv-like call on static NCHW shapes with the given kernel layout: what the scheduled kernels take."""
    a = call.attrs
    return (xs is not None and ws is not None and len(xs) == 4 and str(a.data_layout) == "NCHW"
            and str(a.kernel_layout) == kernel_layout and str(a.out_layout) == "NCHW"
            and str(a.out_dtype) in ("", "None", "void", "float32") and _static_shape(call) is not None)


def _call_conv(bb: relax.BlockBuilder, call: relax.Call, func: tirx.PrimFunc, name: str) -> relax.Expr:
    """call_tir of an unscheduled conv PrimFunc on (data, weight); schedule_generic schedules it after fusion."""
    gv = bb.add_func(func.without_attr("global_symbol"), name)
    return relax.call_tir(gv, [call.args[0], call.args[1]], call.ty)


def _conv2d(target: Any):
    lanes = vector_lanes(target)
    default = _default("relax.nn.conv2d")

    def legalize(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
        a = call.attrs
        xs, ws = _static_shape(call.args[0]), _static_shape(call.args[1])
        ok = len(ws or ()) == 4 and _plain_float_nchw(call, xs, ws, "OIHW")
        groups = int(a.groups)
        if ok and groups > 1:
            ok = groups == xs[1] and ws[1] == 1 and ws[0] % groups == 0
        if not ok:
            return default(bb, call)
        pad = [int(v) for v in a.padding]
        if len(pad) == 2:
            pad = pad * 2
        if (groups == 1 and xs[2] == xs[3] == ws[2] == ws[3] == 1 and not any(pad)
                and tvm_compat.is_const(call.args[1])):
            wt = relax.const(np.ascontiguousarray(tvm_compat.const_value(call.args[1]).reshape(ws[0], ws[1]).T))
            gv = bb.add_func(pixel_gemv_primfunc(xs[0], xs[1], ws[0], lanes), "float_gemv")
            return relax.call_tir(gv, [call.args[0], wt], call.ty)
        return _call_conv(bb, call, conv2d_compute(xs, ws, tuple(int(v) for v in a.strides), tuple(pad),
                                                   tuple(int(v) for v in a.dilation), groups, lanes), "float_conv2d")

    return legalize


def _matmul(target: Any):
    lanes = vector_lanes(target)
    default = _default("relax.matmul")

    def legalize(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
        xs, ws = _static_shape(call.args[0]), _static_shape(call.args[1])
        if xs is None or ws is None or len(xs) != 2 or len(ws) != 2 or _static_shape(call) is None:
            return default(bb, call)
        gv = bb.add_func(matmul_primfunc(xs[0], xs[1], ws[1], lanes), "float_matmul")
        return relax.call_tir(gv, [call.args[0], call.args[1]], call.ty)

    return legalize


def _conv2d_transpose(target: Any):
    lanes = vector_lanes(target)
    default = _default("relax.nn.conv2d_transpose")

    def legalize(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
        a = call.attrs
        xs, ws = _static_shape(call.args[0]), _static_shape(call.args[1])
        ok = (len(ws or ()) == 4 and int(a.groups) == 1 and _plain_float_nchw(call, xs, ws, "IOHW")
              and [int(v) for v in a.strides] == [ws[2], ws[3]] and not any(int(v) for v in a.padding)
              and not any(int(v) for v in a.output_padding) and all(int(v) == 1 for v in a.dilation))
        if not ok:
            return default(bb, call)
        return _call_conv(bb, call, conv2d_compute(xs, ws, (ws[2], ws[3]), (0, 0, 0, 0), (1, 1), 1, lanes, True),
                          "float_conv2d_transpose")

    return legalize


def _sigmoid_te(x: te.Tensor) -> te.Tensor:
    from tvm import topi

    e = topi.fast_exp(te.compute(x.shape, lambda *i: -x(*i), name="neg"))
    return te.compute(x.shape, lambda *i: tirx.const(1.0, "float32") / (tirx.const(1.0, "float32") + e(*i)),
                      name="sigmoid")


def _sigmoid(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    """Sigmoid through TOPI's polynomial ``fast_exp``: tir.sigmoid lowers to llvm.exp, which LLVM expands into
    one libm call per lane even in a vector loop (YOLOv8n's SiLU after every conv)."""
    if _static_shape(call.args[0]) is None:
        return _default("relax.sigmoid")(bb, call)
    return bb.call_te(_sigmoid_te, call.args[0], primfunc_name_hint="tir_sigmoid")


def legalize_map(target: Any) -> dict[str, Any]:
    """The op -> legalization overrides for ``relax.transform.LegalizeOps(customize_legalize_map=...)``."""
    return {"relax.nn.conv2d": _conv2d(target), "relax.nn.conv2d_transpose": _conv2d_transpose(target),
            "relax.matmul": _matmul(target), "relax.sigmoid": _sigmoid}


# --------------------------------------------------------------------------------------------------------
# generic schedule for the remaining (fused) PrimFuncs
# --------------------------------------------------------------------------------------------------------


def _schedule_one(func: tirx.PrimFunc, lanes: int) -> Optional[tirx.PrimFunc]:
    import tvm.s_tir  # noqa: F401

    sch = tvm.s_tir.Schedule(func)
    try:
        blocks = sch.get_child_blocks(sch.get_sblock("root"))
    except tvm_compat.TVM_ERRORS:  # no root block (a hand-written function): nothing generic to do
        return None
    changed = False
    for blk in blocks:
        loops = sch.get_loops(blk)
        if not loops:
            continue
        extents = []
        for lp in loops:
            e = sch.get(lp).extent
            if not isinstance(e, tirx.IntImm):
                return None
            extents.append(int(e))
        iters = sch.get(blk).iter_vars
        spatial = all(iv.iter_type == tirx.IterVar.DataPar for iv in iters)
        total = 1
        for e in extents:
            total *= e
        try:
            if spatial and len(loops) >= 1 and extents[-1] >= lanes and extents[-1] % lanes == 0:
                _, inner = sch.split(loops[-1], [None, lanes])
                sch.vectorize(inner)
                changed = True
            loops = sch.get_loops(blk)
            if total >= GENERIC_PARALLEL_MIN_ELEMS:
                outer = []
                for lp in loops:  # fuse the leading data-parallel loops, stop at a reduction
                    kind_ok = sch.get(lp).kind == tirx.ForKind.SERIAL
                    if not kind_ok:
                        break
                    outer.append(lp)
                    if len(outer) >= max(1, len(loops) - 2):
                        break
                if outer:
                    fused = sch.fuse(*outer) if len(outer) > 1 else outer[0]
                    sch.parallel(fused)
                    changed = True
        except tvm_compat.TVM_ERRORS:  # a loop the primitive refuses (reduction-bound, dependent): leave it serial
            log.debug("generic schedule declined a block", exc_info=True)
            continue
    return sch.mod["main"] if changed else None


def schedule_generic(target: Any) -> tvm.transform.Pass:
    """A module pass: every PrimFunc not marked ``tirx.is_scheduled`` gets parallel outer loops and a vector
    inner loop (see the module docstring); a function any primitive refuses is left as it was."""
    lanes = vector_lanes(target)

    @tvm.transform.module_pass(opt_level=0, name="IsquantScheduleGeneric")
    def _pass(mod: tvm.IRModule, _ctx: Any) -> tvm.IRModule:
        updates = {}
        for gv, func in mod.functions.items():
            if not isinstance(func, tirx.PrimFunc) or func.attrs is not None and "tirx.is_scheduled" in func.attrs:
                continue
            try:
                try:
                    new = schedule_conv(func, lanes)
                except ValueError:  # no conv in it
                    new = _schedule_one(func, lanes)
                except tvm_compat.TVM_ERRORS:
                    log.warning("conv schedule failed for %s; generic schedule", gv.name_hint, exc_info=True)
                    new = _schedule_one(func, lanes)
            except Exception:  # noqa: BLE001 - never fail a build over an optional schedule
                log.debug("generic schedule failed for %s", gv.name_hint, exc_info=True)
                new = None
            if new is not None:
                updates[gv] = new.with_attr("tirx.is_scheduled", True)
        for gv, func in updates.items():
            mod[gv] = func
        return mod

    return _pass
