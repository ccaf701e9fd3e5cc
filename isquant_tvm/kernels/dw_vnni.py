"""Depthwise conv on NCHW16c with AVX-512 VNNI: four kernel columns per ``vpdpbusd``.

The generic blocked depthwise kernel (depthwise.dw_blocked_primfunc) multiplies every tap as 16 int32
lanes (``vpmovzxbd`` + ``vpmulld``, 2 uops, + ``vpaddd``): 9 of each per 16 outputs of a 3x3, measured at
26-38 GOP/s on MobileNetV2's layers here. With dilation 1 the columns kw = 4q .. 4q+3 of one kernel row
read four CONSECUTIVE pixels of the padded row for every stride: 64 contiguous bytes (4 pixels x 16
channels). One 64-byte load, a transpose of that 4 x 16 byte matrix into 16 dwords of (pixel 0..3) bytes
(``vpermd`` across lanes + an in-lane ``vpshufb``; LLVM merges them into one ``vpermb`` where the CPU has
VBMI), and one ``vpdpbusd`` against the pre-packed weights ``wq[cb, kh, q, 16, 4]`` (zero for kw >= KW)
give four taps for 16 channels: a 3x3 is 3 loads + 3 shuffles + 3 dot instructions per 16 outputs.

* uint8 data only for the dot (vpdpbusd is unsigned x signed): int8 data is shifted by +128 (xor 0x80)
  while padding, the padding is the shifted zero 128 and the bias carries -128 * sum(w) (exact, as the VNNI
  conv kernels fold it, geometry.folded_bias).
* the padded rows are read 4*KQ - KW pixels past the last tap (weights 0 there): the pad buffer is that
  much wider.
* the accumulator starts as the (folded) bias; the epilogue is the contract's requantize
  (geometry.requant_expr) on 16 lanes, bit-exact with the numpy reference, in its int32 form where every
  shift is >= 33 (geometry._requant_hi32).
* Measured (thread CPU, 1 thread, load 4-6, MobileNetV2's eight depthwise shapes, /tmp microbench of this
  PrimFunc alone): 0.87 ms with the generic kernel -> 0.56 with the quads (whole-tensor pad kept) -> 0.50
  with the per-row pad and the int32 requantize -> 0.375 with that requantize on even / odd int64 lanes
  (geometry.requant_hi32_vec); 32 x 112 x 112: 0.193 -> 0.080 ms (91 GOP/s).
"""
from __future__ import annotations

import numpy as np
from tvm import tirx

from . import compute, geometry
from .common import OC_BN, QConv2dParams
from .depthwise import build_padded_rows
from .schedule import DW_PARALLEL_MIN_MACS

PIX_TILE = 4  # output pixels per unrolled step: independent vpdpbusd chains hide its 5-cycle latency


def eligible(shape, p: QConv2dParams) -> bool:
    """Blocked depthwise with dilation 1 along the width (the quads are contiguous pixels)."""
    return len(shape) == 5 and int(p.dilation[1]) == 1


def _geom(shape, p: QConv2dParams):
    N, CB, H, W, _ = (int(v) for v in shape)
    g = geometry.conv_geom((N, p.weight.shape[0], H, W), p, ow_tile=1)
    KQ = -(-g.KW // 4)
    Hp = (g.OH - 1) * g.sh + (g.KH - 1) * g.dh + 1
    Wp = max((g.OW - 1) * g.sw + 4 * KQ, g.W + g.pl)
    return g, N, CB, KQ, Hp, Wp


def consts(p: QConv2dParams, shape, in_dtype: str) -> dict[str, np.ndarray]:
    g, N, CB, KQ, _, _ = _geom(shape, p)
    C = p.weight.shape[0]
    w = np.zeros((CB * OC_BN, g.KH, KQ * 4), np.int8)
    w[:C, :, :g.KW] = np.asarray(p.weight, np.int8)[:, 0]
    wq = np.ascontiguousarray(w.reshape(CB, OC_BN, g.KH, KQ, 4).transpose(0, 2, 3, 1, 4))
    bias = np.zeros((CB * OC_BN,), np.int32)
    bias[:C] = geometry.folded_bias(np.asarray(p.bias, np.int32).reshape(-1), np.asarray(p.weight),
                                    geometry.data_shift_for(in_dtype, "uint8"))
    out = {"wpk": wq, "bias": bias}
    out.update(epi_consts(p, C, CB * OC_BN))
    return out


def epi_consts(p: QConv2dParams, C: int, O_pad: int) -> dict[str, np.ndarray]:
    return geometry.epilogue_consts(p, C, O_pad, hi32=True)


def primfunc(shape, p: QConv2dParams, in_dtype: str) -> tuple[tirx.PrimFunc, tuple[int, ...]]:
    """(N, CB, H, W, 16) -> (N, CB, OH, OW, 16); the function's arguments: data, wq, bias, the epilogue
    constants (sorted by name), out."""
    from tvm.script.ir_builder import IRBuilder
    from tvm.script.ir_builder import tirx as T

    g, N, CB, KQ, Hp, Wp = _geom(shape, p)
    OH, OW, H, W = g.OH, g.OW, g.H, g.W
    epi_np = epi_consts(p, p.weight.shape[0], CB * OC_BN)
    parallel = N * CB * OC_BN * OH * OW * g.KH * g.KW >= DW_PARALLEL_MIN_MACS
    tile = next((t for t in range(min(PIX_TILE, OW), 0, -1) if OW % t == 0), 1)
    out_shape = (N, CB, OH, OW, OC_BN)
    vec_rq = geometry.hi32_vec_ok(epi_np)
    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name("qconv2d_dw_vnni")
            data = T.arg("data", T.Buffer((N, CB, H, W, OC_BN), in_dtype))
            wq = T.arg("wq", T.Buffer((CB, g.KH, KQ, OC_BN, 4), "int8"))
            bias = T.arg("bias", T.Buffer((CB * OC_BN,), "int32"))
            epi = {k: T.arg(k, T.Buffer((CB * OC_BN,), str(epi_np[k].dtype))) for k in sorted(epi_np)}
            out = T.arg("out", T.Buffer(out_shape, p.out_dtype))
            T.func_attr({"tirx.noalias": True})
            loop = T.parallel if parallel else T.serial
            zero = tirx.const(128 if in_dtype == "int8" else 0, "uint8")
            ramp32 = tirx.Ramp(tirx.const(0, "int32"), tirx.const(1, "int32"), 16)
            perm = (ramp32 % 4) * 4 + ramp32 // 4  # dword j of lane j//4 <- pixel j%4's dword j//4
            ramp8 = tirx.Ramp(tirx.const(0, "int32"), tirx.const(1, "int32"), 64) % 16
            shuf = tirx.Cast("int8x64", (ramp8 % 4) * 4 + ramp8 // 4)  # in-lane 4x4 byte transpose: (pixel, channel) -> (channel, pixel)
            rowlen = Wp * OC_BN + 64  # +64: the last quad's 64-byte load may pass the row's last tap
            with loop(0, N * CB * OH) as r:
                oh = r % OH
                n, cb = r // (OH * CB), (r // OH) % CB
                # the KH padded input rows of this output row, in L1 (int8 data +128)
                lb = T.alloc_buffer((g.KH * rowlen,), "uint8")
                build_padded_rows(T, lb, data, n, cb, oh, g, rowlen, zero,
                                  (lambda v: v.astype("uint8") ^ tirx.const(128, "uint8")) if in_dtype == "int8"
                                  else (lambda v: v))
                acc = T.alloc_buffer((tile * OC_BN,), "int32", scope="local")
                with T.serial(0, OW // tile) as owo:
                    for t in range(tile):
                        ow = owo * tile + t
                        a = bias.vload([cb * OC_BN], "int32x16")
                        for kh in range(g.KH):
                            for q in range(KQ):
                                x = lb.vload([kh * rowlen + (ow * g.sw + 4 * q) * OC_BN], "uint8x64")
                                x = T.call_llvm_pure_intrin("int32x16", "llvm.x86.avx512.permvar.si.512",
                                                            T.reinterpret(x, dtype="int32x16"), perm)
                                x = T.call_llvm_pure_intrin("int8x64", "llvm.x86.avx512.pshuf.b.512",
                                                            T.reinterpret(x, dtype="int8x64"), shuf)
                                a = T.call_llvm_pure_intrin("int32x16", "llvm.x86.avx512.vpdpbusd.512", a,
                                                            T.reinterpret(x, dtype="uint8x64"),
                                                            wq.vload([cb, kh, q, 0, 0], "int8x64"))
                        if vec_rq:
                            T.buffer_store(out, geometry.requant_hi32_vec(a, cb * OC_BN, p, epi), [n, cb, oh, ow, tirx.Ramp(0, 1, OC_BN)])
                        else:
                            T.buffer_store(acc, a, [tirx.Ramp(t * OC_BN, 1, OC_BN)])
                    for t in (range(0) if vec_rq else range(tile)):
                        with T.vectorized(0, OC_BN) as j:
                            T.buffer_store(out, geometry.requant_expr(acc[t * OC_BN + j], cb * OC_BN + j, p, epi),
                                           [n, cb, oh, owo * tile + t, j])
    return compute.prim_func_attrs(ib.get(), "qconv2d_dw_vnni"), out_shape


