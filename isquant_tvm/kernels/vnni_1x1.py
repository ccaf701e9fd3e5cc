"""Pointwise (1x1, stride 1, no padding) conv from NCHW16c to NCHW16c with AVX-512 VNNI, written as TIR.

The shared TE conv (compute.conv_compute + schedule.schedule_conv) runs these as: a pack stage copying the
whole input (even when it is already NCHW16c uint8), a register tile of up to 16 pixels x ONE block of 16
output channels, and the epilogue vectorised by TVM, whose int64 lanes LLVM widens and narrows with
vpmovzxdq / vpmovqd. MobileNetV2's expand / project convs have small K (16 .. 160 input channels: 4 .. 40
``vpdpbusd`` per output vector), so the pack and the requantize, not the dots, set their time.

Here: no pack (each ``vpdpbusd`` takes a broadcast dword, four input channels of one pixel, straight from the
NCHW16c input; int8 data get ``xor 0x80808080`` on that dword, the +128 the bias already carries), a
register tile of T pixels x OCT output-channel blocks (up to 7 x 4 = 28 accumulators: each broadcast feeds
OCT dots, each weight vector T dots), the accumulators start at the folded bias and the epilogue is
geometry.requant_hi32_vec (even / odd int64 lanes, no widening shuffles), bit-exact with the reference.
Used only where every shift >= 33 and the multiplier fits int32 (geometry.hi32_vec_ok); other layers keep
the TE kernel. With one or two oc blocks (O <= 32) the tile takes more pixels instead (up to 28
accumulators), so each weight vector still feeds many dots.

Measured (thread CPU, min of 7 x 50 calls, 1 thread, cascadelake target, load 5-6, /tmp microbench of each
MobileNetV2 1x1 shape as a blocked Relax call, outputs identical to the TE kernel): every one of the 19
shapes faster with the 28-pixel tile (before it the 16-channel one was 63 -> 70 us), summed x count 1.87 -> 1.38 ms
(before that tile); expand 16->96 @112 269 -> 221 us, expand 160->960 @7 49 ->
27 us, head 320->1280 @7 101 -> 64 us, the 16-channel 1x1 @112 59 -> 44 us (with the 28-pixel tile).
Whole x86-avx512 MobileNetV2 2.88 -> 2.46 ms (interleaved, load 4.7-5.5). On the AMX host the AMX blocked
kernel is still faster on every one of these shapes (0.93 vs 1.46 ms summed, before the 28-pixel
tile), so the default build keeps it.
"""
from __future__ import annotations

import numpy as np
from tvm import tirx

from . import compute, geometry
from .common import OC_BN, QConv2dParams

PIX_TILE_MAX = 7  # 7 divides every MobileNet plane (112^2 .. 7^2); 7 x 4 accumulators + weights fit 32 zmm
OC_TILE_MAX = 4
ACC_MAX = 28  # zmm accumulators per tile
PARALLEL_MIN_MACS = 4_000_000  # as schedule.KernelConfig.parallel_min_macs


def _divisor(n: int, cap: int) -> int:
    return next(t for t in range(min(cap, n), 0, -1) if n % t == 0)


def eligible(shape, p: QConv2dParams) -> bool:
    """NCHW16c input of a 1x1 / stride 1 / unpadded, ungrouped conv with the int32 vector epilogue."""
    if len(shape) != 5 or int(p.groups) != 1 or tuple(p.weight.shape[2:]) != (1, 1):
        return False
    if tuple(int(s) for s in p.strides) != (1, 1) or any(int(v) for v in p.padding):
        return False
    if not geometry.uses_hi32(p):
        return False
    O_pad = -(-p.weight.shape[0] // OC_BN) * OC_BN
    return geometry.hi32_vec_ok(geometry.epilogue_consts(p, p.weight.shape[0], O_pad, hi32=True))


def consts(p: QConv2dParams, shape, in_dtype: str) -> dict[str, np.ndarray]:
    """wpk (OCB, CB*4, 16, 4) int8 (padded input / output channels zero), folded bias, epilogue constants."""
    CB = int(shape[1])
    O, C = p.weight.shape[:2]
    OCB = -(-O // OC_BN)
    w = np.zeros((OCB * OC_BN, CB * OC_BN), np.int8)
    w[:O, :C] = np.asarray(p.weight, np.int8)[:, :, 0, 0]
    wpk = np.ascontiguousarray(w.reshape(OCB, OC_BN, CB * 4, 4).transpose(0, 2, 1, 3))
    bias = np.zeros((OCB * OC_BN,), np.int32)
    bias[:O] = geometry.folded_bias(np.asarray(p.bias, np.int32).reshape(-1), np.asarray(p.weight),
                                    geometry.data_shift_for(in_dtype, "uint8"))
    out = {"wpk": wpk, "bias": bias}
    out.update(geometry.epilogue_consts(p, O, OCB * OC_BN, hi32=True))
    return out


def primfunc(shape, p: QConv2dParams, in_dtype: str) -> tuple[tirx.PrimFunc, tuple[int, ...]]:
    """(N, CB, H, W, 16) -> (N, OCB, H, W, 16); arguments: data, wpk, bias, the epilogue constants (sorted by
    name), out."""
    from tvm.script.ir_builder import IRBuilder
    from tvm.script.ir_builder import tirx as T

    N, CB, H, W, _ = (int(v) for v in shape)
    M = H * W
    OCB = -(-p.weight.shape[0] // OC_BN)
    K4 = CB * 4
    epi_np = {k: v for k, v in consts(p, shape, in_dtype).items() if k not in ("wpk", "bias")}
    TO = _divisor(OCB, OC_TILE_MAX)
    TP = _divisor(M, max(PIX_TILE_MAX, ACC_MAX // TO))  # few oc blocks: more pixels per weight vector
    tasks = N * (OCB // TO) * (M // TP)
    parallel = N * M * OCB * OC_BN * CB * OC_BN >= PARALLEL_MIN_MACS
    out_shape = (N, OCB, H, W, OC_BN)
    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name("qconv2d_vnni_1x1")
            data = T.arg("data", T.Buffer((N, CB, H, W, OC_BN), in_dtype))
            wq = T.arg("wq", T.Buffer((OCB, K4, OC_BN, 4), "int8"))
            bias = T.arg("bias", T.Buffer((OCB * OC_BN,), "int32"))
            epi = {k: T.arg(k, T.Buffer((OCB * OC_BN,), str(epi_np[k].dtype))) for k in sorted(epi_np)}
            out = T.arg("out", T.Buffer(out_shape, p.out_dtype))
            T.func_attr({"tirx.noalias": True})
            # dword views: four input channels of one pixel = one int32; an output vector = 16 bytes
            d32 = T.decl_buffer((N * CB * M * 4,), "int32", data=data.data)
            of = T.decl_buffer((N * OCB * M * OC_BN,), p.out_dtype, data=out.data)
            with (T.parallel if parallel else T.serial)(0, tasks) as task:
                pt = task % (M // TP)
                og = (task // (M // TP)) % (OCB // TO)
                n = task // ((M // TP) * (OCB // TO))
                acc = T.alloc_buffer((TP * TO * OC_BN,), "int32", scope="local")
                for j in range(TO):
                    b = bias.vload([(og * TO + j) * OC_BN], "int32x16")
                    for t in range(TP):
                        T.buffer_store(acc, b, [tirx.Ramp((t * TO + j) * OC_BN, 1, OC_BN)])
                with T.serial(0, K4) as k:
                    cb, q = k // 4, k % 4
                    ws = [wq.vload([og * TO + j, k, 0, 0], "int8x64") for j in range(TO)]
                    for t in range(TP):
                        x = d32[((n * CB + cb) * M + pt * TP + t) * 4 + q]
                        if in_dtype == "int8":  # +128 per byte: the folded bias carries -128 * sum(w)
                            x = x ^ tirx.const(-0x7F7F7F80, "int32")
                        xb = T.reinterpret(tirx.Broadcast(x, OC_BN), dtype="uint8x64")
                        for j in range(TO):
                            i = (t * TO + j) * OC_BN
                            a = acc.vload([i], "int32x16")
                            a = T.call_llvm_pure_intrin("int32x16", "llvm.x86.avx512.vpdpbusd.512", a, xb, ws[j])
                            T.buffer_store(acc, a, [tirx.Ramp(i, 1, OC_BN)])
                for j in range(TO):
                    ocb = og * TO + j
                    for t in range(TP):
                        y = geometry.requant_hi32_vec(acc.vload([(t * TO + j) * OC_BN], "int32x16"), ocb * OC_BN,
                                                      p, epi)
                        T.buffer_store(of, y, [tirx.Ramp(((n * OCB + ocb) * M + pt * TP + t) * OC_BN, 1, OC_BN)])
    return compute.prim_func_attrs(ib.get(), "qconv2d_vnni_1x1"), out_shape
