"""x86 int8 conv/dense kernels.

* AVX-512 VNNI (Cascade Lake+, Zen 4): ``vpdpbusd`` (uint8 x int8) through ``dot_16x4_vnni_llvm22``, a fixed
  copy of the shipped ``dot_16x4_vnni`` (which passes <16 x i32> where LLVM 22 wants <64 x i8>).
  int8 data is shifted by +128 to uint8 and -128 * sum(w) is folded into the bias (exact).
* AVX2 without VNNI (Haswell .. Zen 3): exact ``vpmaddwd`` intrinsic over int16-widened weights (2 input
  channels per lane); ``vpmaddubsw`` is not used because its int16 saturation is not exact.
* anything else: the same packing with an int32 multiply-add vectorised over 16 output channels.

Layout: NCHW in/out at the kernel boundary; inside, data is packed to NCHW[ic_bn]c (shift, zero padding,
1x1 stride folded in), weights are pre-packed constants (OCB, ICB, KH, KW, 16, ic_dot), each register tile
(ow_tile pixels x 16 output channels) is accumulated in registers and bias + requantize + clip run on the
tile right after its reduction, writing NCHW (or NCHW16c for the chaining variant). Parallel over
(n, oc-block, oh). Depthwise convs use depthwise.build_dw_primfunc (vectorised int32).
"""
from __future__ import annotations

from typing import Optional

import tvm
from tvm import relax, tirx
from tvm.script import tirx as T
from tvm.s_tir import TensorIntrin

from . import common, depthwise, emit, geometry, registry, schedule
from .common import OC_BN, QConv2dParams, QDenseParams

VNNI_INTRIN = "dot_16x4_vnni_llvm22"


# ------------------------------------------------------------------------------------------
# The fixed VNNI intrinsic (the shipped dot_16x4_vnni passes <16 x i32> where LLVM 22 wants <64 x i8>)
# ------------------------------------------------------------------------------------------

AVX2_INTRIN = "isq_dot_16x2_u8i16i32_avx2_pmaddwd"

# T.prim_func's inspect.stack() is slow with torch/onnx loaded: parse under a cheap stand-in.
with common.cheap_tvmscript_parsing():
    @T.prim_func(s_tir=True)
    def _vnni_impl(
        A: T.Buffer((4,), "uint8", offset_factor=1),
        B: T.Buffer((16, 4), "int8", offset_factor=1),
        C: T.Buffer((16,), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:16], A[0:4], B[0:16, 0:4])
            T.writes(C[0:16])
            A_u8x64 = T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], "uint8x4"), dtype="int32"), 16),
                                    dtype="uint8x64")
            C[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"),
                C.vload([0], "int32x16"),
                A_u8x64,
                B.vload([0, 0], dtype="int8x64"),
                dtype="int32x16",
            )


    @T.prim_func(s_tir=True)
    def _avx2_impl(
        A: T.Buffer((2,), "uint8", offset_factor=1),
        B: T.Buffer((16, 2), "int16", offset_factor=1),
        C: T.Buffer((16,), "int32", offset_factor=1),
    ) -> None:
        # Exact AVX2 path (vpmaddubsw saturates int16 and is not exact for u8 x s8): weights pre-widened to
        # int16 (oc, ic-pair) at compile time; the data pair is widened and broadcast; 2 x vpmaddwd per 16 oc.
        with T.sblock("root"):
            T.reads(C[0:16], A[0:2], B[0:16, 0:2])
            T.writes(C[0:16])
            a_bc = T.reinterpret(T.broadcast(T.reinterpret(T.Cast("int16x2", A.vload([0], "uint8x2")), dtype="int32"), 8),
                                 dtype="int16x16")
            C[T.ramp(T.int32(0), 1, 8)] = C.vload([0], "int32x8") + T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"), a_bc, B.vload([0, 0], "int16x16"), dtype="int32x8")
            C[T.ramp(T.int32(8), 1, 8)] = C.vload([8], "int32x8") + T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"), a_bc, B.vload([8, 0], "int16x16"), dtype="int32x8")


def register_intrinsics() -> str:
    """Register the fixed VNNI intrinsic and the exact AVX2 one (idempotent)."""
    for name, desc, impl in ((VNNI_INTRIN, common.dot_desc(16, 4, "uint8", "int8"), _vnni_impl),
                             (AVX2_INTRIN, common.dot_desc(16, 2, "uint8", "int16"), _avx2_impl)):
        if TensorIntrin.get(name, allow_missing=True) is None:
            TensorIntrin.register(name, desc, impl)
    return VNNI_INTRIN


register_intrinsics()


# ------------------------------------------------------------------------------------------
# target checks
# ------------------------------------------------------------------------------------------

def _has(target: tvm.target.Target, feature: str) -> bool:
    from ..util import tvm_compat

    return tvm_compat.has_feature(target, feature)


def has_vnni(target: tvm.target.Target) -> bool:
    return str(target.kind.name) == "llvm" and _has(target, "avx512vnni") and _has(target, "avx512bw")


def is_x86(target: tvm.target.Target) -> bool:
    triple = str(target.attrs.get("mtriple", "") or "")
    return str(target.kind.name) == "llvm" and (triple == "" or triple.startswith(("x86_64", "i686", "i386")))


def vector_lanes_i32(target: tvm.target.Target) -> int:
    if _has(target, "avx512f"):
        return 16
    if _has(target, "avx2"):
        return 8
    return 4


# ------------------------------------------------------------------------------------------
# kernel configs and Relax lowering rules
# ------------------------------------------------------------------------------------------

# hi32_epilogue (compute.conv_compute): with every shift >= 33 the accumulator starts at the folded bias and the
# requantize runs in int32 after vpmuldq. MobileNetV2's 1x1 convs (bench_kernels --only 1x1 --blocked, thread
# CPU, 1 thread, load 1.8): 2.10 -> 1.98 ms summed; whole model 3.91 -> 3.45 ms (ort-int8 3.5-3.6 ms).
VNNI_CONFIG = schedule.KernelConfig(dot_in_dtype="uint8", intrin=VNNI_INTRIN, intrin_oc=OC_BN, w_layout="oc_ic",
                                  ow_tile_max=16, name="qconv2d_vnni", hi32_epilogue=True, dw_vnni=True,
                                  vnni_1x1=True)
# AVX2 without VNNI (Haswell .. Zen 3): same packing and loop nest, exact vpmaddwd-based intrinsic
AVX2_CONFIG = schedule.KernelConfig(dot_in_dtype="uint8", intrin=AVX2_INTRIN, intrin_oc=OC_BN, w_layout="oc_ic",
                                  ow_tile_max=6, name="qconv2d_avx2", ic_dot=2, w_dtype="int16",
                                  parallel_min_macs=1_500_000)
# anything else (generic x86-64, SSE only): same packing, int32 multiply-add vectorised over 16 oc
FALLBACK_CONFIG = schedule.KernelConfig(dot_in_dtype="uint8", intrin=None, w_layout="ic_oc", ow_tile_max=8,
                                      name="qconv2d_i32", parallel_min_macs=500_000)


def config_for(target: tvm.target.Target) -> schedule.KernelConfig:
    if has_vnni(target):
        return VNNI_CONFIG
    if _has(target, "avx2"):
        return AVX2_CONFIG
    return FALLBACK_CONFIG


def build_conv_primfunc(g: geometry.ConvGeom, p: QConv2dParams, in_dtype: str,
                        cfg: schedule.KernelConfig = VNNI_CONFIG, blocked_out: bool = False) -> tirx.PrimFunc:
    return schedule.build_conv_primfunc(g, p, in_dtype, cfg, blocked_out)


def lower_conv2d(bb: relax.BlockBuilder, data: relax.Expr, p: QConv2dParams,
                 target: tvm.target.Target, name: Optional[str] = None) -> relax.Expr:
    """Emit a quantized conv (contract in common.py) for an x86 target; returns the NCHW output.

    AVX-512 VNNI targets get the vpdpbusd kernel, others the vectorised int32 fallback; depthwise
    convs (groups == C) always use the vectorised int32 depthwise kernel."""
    return emit.lower_conv2d_with(bb, data, p, config_for(target), name)


def lower_dense(bb: relax.BlockBuilder, data: relax.Expr, p: QDenseParams,
                target: tvm.target.Target, name: Optional[str] = None) -> relax.Expr:
    """(N, K) uint8/int8 x (O, K) int8 -> (N, O), same epilogue contract."""
    return emit.lower_dense_with(bb, data, p, config_for(target), name)


def lower_conv2d_blocked(bb: relax.BlockBuilder, data: relax.Expr, p: QConv2dParams, target: tvm.target.Target,
                         name: Optional[str] = None, blocked_in: bool = True, blocked_out: bool = True) -> relax.Expr:
    """Chaining variant: input NCHW16c (N, ceil(C/16), H, W, 16) (or NCHW with blocked_in=False), output
    NCHW16c (N, ceil(O/16), OH, OW, 16) (or NCHW with blocked_out=False); padded output channels hold
    requant(0) (0 unless out_min > 0) and padded input channels are ignored. groups == 1 only."""
    return emit.lower_conv2d_blocked_with(bb, data, p, config_for(target), name, blocked_in, blocked_out)


def to_blocked(bb: relax.BlockBuilder, x: relax.Expr) -> relax.Expr:
    """NCHW -> NCHW16c (channels zero padded to a multiple of 16)."""
    return emit.emit_layout(bb, x, True)


def from_blocked(bb: relax.BlockBuilder, x: relax.Expr, channels: int) -> relax.Expr:
    """NCHW16c -> NCHW with the first `channels` channels."""
    return emit.emit_layout(bb, x, False, channels)


# ------------------------------------------------------------------------------------------
# registered kernels (kernels/registry.py): config_for's choice, by name
# ------------------------------------------------------------------------------------------

# imported here, not at the top: the TVMScript intrinsics above keep their source line numbers,
# which TVM writes into the libraries' debug line tables (so edits up there change the .so bytes)
from ..util.cpu import is_aarch64  # noqa: E402


def _lower_conv(bb, data, p, target, blocked_in: bool = False, blocked_out: bool = False):
    if blocked_in or blocked_out:
        return lower_conv2d_blocked(bb, data, p, target, blocked_in=blocked_in, blocked_out=blocked_out)
    return lower_conv2d(bb, data, p, target)


def _lower_dense(bb, data, p, target, blocked_in: bool = False, blocked_out: bool = False):
    return lower_dense(bb, data, p, target)


def _x86(target) -> bool:
    # every LLVM CPU target that is not aarch64 gets these kernels (the int32 one needs no x86 feature)
    return not is_aarch64(target)


def _any(shape, p, blocked_in, blocked_out) -> bool:
    return True


_FAMILIES = (("x86_vnni", 20, lambda t: _x86(t) and has_vnni(t)),
             ("x86_avx2", 19, lambda t: _x86(t) and _has(t, "avx2")),
             ("x86_int32", 18, _x86))
registry.register_conv(registry.Kernel("x86_depthwise", 30, _x86, depthwise.is_depthwise_call, _lower_conv))
for _name, _priority, _applies in _FAMILIES:
    registry.register_conv(registry.Kernel(_name, _priority, _applies, _any, _lower_conv))
    registry.register_dense(registry.Kernel(_name, _priority, _applies, _any, _lower_dense))
