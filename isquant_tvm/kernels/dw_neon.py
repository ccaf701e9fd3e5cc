"""Depthwise conv on NCHW16c for aarch64 (Cortex-A72 and A76): int8 taps multiplied into int16, two taps
summed in int16, then widened into the int32 accumulators (XNNPACK's ``9p16c`` NEON scheme).

The generic blocked depthwise kernel (depthwise.dw_blocked_primfunc) widens every tap's 16 data bytes and
16 weights to int32 and multiplies 4 x ``mul .4s`` per tap: 2-4 % of the int8 peak on MobileNetV2
(scripts/bench_arm.py, docs/results.md). Here, per output pixel and 16 channels:

* a pair of taps is ``smull`` + ``smull2`` (tap A, int8 x int8 -> int16, 8 lanes each) + ``smlal`` +
  ``smlal2`` (tap B added in int16) + ``saddw`` / ``saddw2`` x 2 (into the four int32x4 accumulators):
  8 NEON ops per 2 x 16 MACs, a 3x3 is 4 pairs + 1 single tap = 38 ops per 16 outputs instead of ~90.
  All of it is plain TIR (int16 casts of int8 vectors, multiply, add, widening casts) that LLVM selects
  into those instructions, so the same function builds and runs on any LLVM host (the bit-exact twin).
* the int16 pair sum is exact while no weight is -128: |a| <= 128, |w| <= 127 gives 2 * 16256 = 32512;
  a layer with a -128 weight widens every tap on its own (smull + saddw, still exact).
* uint8 data are shifted to int8 (xor 0x80) while copying, the padding is the shifted zero (-128) and
  the bias carries +128 * sum(w) (geometry.folded_bias, as the sdot conv kernels fold it).
* no whole-tensor pad copy: each output row's KH padded input rows are copied into a stack buffer (L1),
  any stride and dilation (every tap reads one 16-byte pixel).
* the accumulator starts as the folded bias; the epilogue is geometry.requant_expr, in the q31 form
  (sqdmulh + srshl, 4 lanes per vector) where every shift is >= 32 and the config asks for it.

Predicted by scripts/bench_arm.py (qemu trace x llvm-mca, calibration ratio 1.45; no board), MobileNetV2's
17 depthwise calls at 1 thread, with the q31 epilogue: Pi 4 (A72) 17.5 -> 6.4 ms (8-9 -> 21-25 % of the
smlal peak), Pi 5 (A76) 11.2 -> 4.3 ms (2-3 -> 6-7 % of the 2-sdot peak: these are widening multiplies,
8 MACs per instruction, against a 32-MAC/cycle sdot peak; an sdot variant, four kernel columns per sdot
as in dw_vnni, is the next step on the A76). Whole model 76.2 -> 59.8 ms (Pi 4), 28.5 -> 17.9 ms (Pi 5).
"""
from __future__ import annotations

import numpy as np
from tvm import tirx

from . import compute, geometry
from .common import OC_BN, QConv2dParams
from .depthwise import build_padded_rows
from .schedule import DW_PARALLEL_MIN_MACS

PIX_TILE = 4  # output pixels per unrolled step: 4 x 4 int32x4 accumulators + 9 weight registers fit the 32


def eligible(shape, p: QConv2dParams) -> bool:
    """Blocked depthwise (N, CB, H, W, 16) with one output channel per input channel."""
    return len(shape) == 5


def pairs_exact(p: QConv2dParams) -> bool:
    """Two int8 x int8 products fit int16 unless a weight is -128 (a -128 x -128 pair is 32768)."""
    return int(np.asarray(p.weight).min(initial=0)) >= -127


def _geom(shape, p: QConv2dParams):
    N, CB, H, W, _ = (int(v) for v in shape)
    g = geometry.conv_geom((N, p.weight.shape[0], H, W), p, ow_tile=1)
    Wp = max((g.OW - 1) * g.sw + (g.KW - 1) * g.dw + 1, g.W + g.pl)
    return g, N, CB, Wp


def consts(p: QConv2dParams, shape, in_dtype: str, q31: bool = False) -> dict[str, np.ndarray]:
    g, N, CB, _ = _geom(shape, p)
    C = p.weight.shape[0]
    w = np.zeros((CB * OC_BN, g.KH, g.KW), np.int8)
    w[:C] = np.asarray(p.weight, np.int8)[:, 0]
    bias = np.zeros((CB * OC_BN,), np.int32)
    bias[:C] = geometry.folded_bias(np.asarray(p.bias, np.int32).reshape(-1), np.asarray(p.weight),
                                    geometry.data_shift_for(in_dtype, "int8"))
    out = {"wpk": np.ascontiguousarray(w.reshape(CB, OC_BN, g.KH, g.KW).transpose(0, 2, 3, 1)), "bias": bias}
    out.update(geometry.epilogue_consts(p, C, CB * OC_BN, q31=q31))
    return out


def primfunc(shape, p: QConv2dParams, in_dtype: str, q31: str = "") -> tuple[tirx.PrimFunc, tuple[int, ...]]:
    """(N, CB, H, W, 16) -> (N, CB, OH, OW, 16); arguments: data, wpk (CB, KH, KW, 16) int8, bias, the
    epilogue constants (sorted by name), out. q31: "neon" (intrinsics) / "host" (int64 TIR twin) / ""."""
    from tvm.script.ir_builder import IRBuilder
    from tvm.script.ir_builder import tirx as T

    g, N, CB, Wp = _geom(shape, p)
    OH, OW, H, W, KH, KW = g.OH, g.OW, g.H, g.W, g.KH, g.KW
    epi_np = geometry.epilogue_consts(p, p.weight.shape[0], CB * OC_BN, q31=bool(q31))
    lanes = 4 if "q31sh" in epi_np and q31 == "neon" else OC_BN
    parallel = N * CB * OC_BN * OH * OW * KH * KW >= DW_PARALLEL_MIN_MACS
    tile = next((t for t in range(min(PIX_TILE, OW), 0, -1) if OW % t == 0), 1)
    out_shape = (N, CB, OH, OW, OC_BN)
    taps = [(kh, kw) for kh in range(KH) for kw in range(KW)]
    step = 2 if pairs_exact(p) else 1
    groups = [taps[i:i + step] for i in range(0, len(taps), step)]
    shift = in_dtype == "uint8"
    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name("qconv2d_dw_neon")
            data = T.arg("data", T.Buffer((N, CB, H, W, OC_BN), in_dtype))
            wpk = T.arg("wpk", T.Buffer((CB, KH, KW, OC_BN), "int8"))
            bias = T.arg("bias", T.Buffer((CB * OC_BN,), "int32"))
            epi = {k: T.arg(k, T.Buffer((CB * OC_BN,), str(epi_np[k].dtype))) for k in sorted(epi_np)}
            out = T.arg("out", T.Buffer(out_shape, p.out_dtype))
            T.func_attr({"tirx.noalias": True})
            loop = T.parallel if parallel else T.serial
            zero = tirx.const(-128 if shift else 0, "int8")
            rowlen = Wp * OC_BN
            with loop(0, N * CB * OH) as r:
                oh = r % OH
                n, cb = r // (OH * CB), (r // OH) % CB
                # this output row's KH padded input rows, in L1 (uint8 data shifted to int8)
                lb = T.alloc_buffer((KH * rowlen,), "int8")
                build_padded_rows(T, lb, data, n, cb, oh, g, rowlen, zero,
                                  (lambda v: tirx.reinterpret("int8", v ^ tirx.const(128, "uint8"))) if shift
                                  else (lambda v: v))
                acc = T.alloc_buffer((tile * OC_BN,), "int32", scope="local")
                with T.serial(0, OW // tile) as owo:
                    for t in range(tile):
                        ow = owo * tile + t
                        a = bias.vload([cb * OC_BN], "int32x16")
                        for grp in groups:
                            prod = None
                            for kh, kw in grp:
                                x = lb.vload([kh * rowlen + (ow * g.sw + kw * g.dw) * OC_BN], "int8x16")
                                wv = wpk.vload([cb, kh, kw, 0], "int8x16")
                                m = tirx.Cast("int16x16", x) * tirx.Cast("int16x16", wv)
                                prod = m if prod is None else prod + m
                            a = a + tirx.Cast("int32x16", prod)
                        T.buffer_store(acc, a, [tirx.Ramp(t * OC_BN, 1, OC_BN)])
                    for t in range(tile):
                        for j0 in range(0, OC_BN, lanes):
                            with T.vectorized(0, lanes) as j:
                                c = j0 + j
                                T.buffer_store(out, geometry.requant_expr(acc[t * OC_BN + c], cb * OC_BN + c, p, epi,
                                                                          q31 == "neon"),
                                               [n, cb, oh, owo * tile + t, c])
    return compute.prim_func_attrs(ib.get(), "qconv2d_dw_neon"), out_shape
