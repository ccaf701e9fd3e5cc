"""aarch64 int8 conv/dense kernels.

* +dotprod (Cortex-A76 / Raspberry Pi 5, ...): ``sdot`` through the shipped ``dot_4x4_i8i8s32_sdot``
  intrinsic (int8 x int8). uint8 data is shifted by -128 to int8 and +128 * sum(w) is folded into the bias.
* plain NEON (Cortex-A72 / Raspberry Pi 4): the shipped ``dot_4x4_i8i8s32_neon`` intrinsic
  (smull + saddlp + addp), same packing.

Same compute as the x86 kernel (compute.conv_compute): data packed to NCHW[ic_bn]c, weights pre-packed to
(OCB, ICB4, KH, KW, 16, 4) with the 16 output channels split 4 x 4 for the intrinsic, bias/requant/clip on
each register tile (ow_tile x 16 channels = ow_tile x 4 q-registers).
"""
from __future__ import annotations

from typing import Optional

import tvm
from tvm import relax, tirx
from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

from . import common, depthwise, emit, geometry, registry, schedule
from .common import QConv2dParams, QDenseParams

# Copies of the shipped s_tir/tensor_intrin/arm_cpu.py intrinsics (dot_4x4_i8i8s32_sdot / _neon), registered
# under our own names: importing tvm.s_tir.tensor_intrin pulls in every backend's intrinsics (CUDA, ...)
# and takes ~60 s on this machine.
SDOT_INTRIN = "isq_dot_4x4_i8i8s32_sdot"
NEON_INTRIN = "isq_dot_4x4_i8i8s32_neon"


# T.prim_func's inspect.stack() is slow with torch/onnx loaded: parse under a cheap stand-in.
with common.cheap_tvmscript_parsing():
    @T.prim_func(s_tir=True)
    def _sdot_impl(
        A: T.Buffer((4,), "int8", offset_factor=1),
        B: T.Buffer((4, 4), "int8", offset_factor=1),
        C: T.Buffer((4,), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:4], A[0:4], B[0:4, 0:4])
            T.writes(C[0:4])
            vec_a = T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], "int8x4"), dtype="int32"), 4),
                                  dtype="int8x16")
            C[T.ramp(T.int32(0), 1, 4)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.sdot.v4i32.v16i8"),
                C.vload([0], "int32x4"),
                vec_a,
                B.vload([0, 0], dtype="int8x16"),
                dtype="int32x4",
            )


    @T.prim_func(s_tir=True)
    def _neon_impl(
        A: T.Buffer((4,), "int8", offset_factor=1),
        B: T.Buffer((4, 4), "int8", offset_factor=1),
        C: T.Buffer((4,), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:4], A[0:4], B[0:4, 0:4])
            T.writes(C[0:4])
            vec_a = T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], "int8x4"), dtype="int32"), 2),
                                  dtype="int8x8")
            vec_b = B.vload([0, 0], dtype="int8x16")
            lo = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.saddlp.v4i32.v8i16"),
                T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.smull.v8i16"),
                                        vec_a, T.vectorlow(vec_b, dtype="int8x8"), dtype="int16x8"),
                dtype="int32x4")
            hi = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.saddlp.v4i32.v8i16"),
                T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.smull.v8i16"),
                                        vec_a, T.vectorhigh(vec_b, dtype="int8x8"), dtype="int16x8"),
                dtype="int32x4")
            C[T.ramp(T.int32(0), 1, 4)] += T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.addp.v4i32"), lo, hi, dtype="int32x4")


    # Pi 4 (no dot product): the two int16 product vectors are added pairwise in int16 (addp .8h) and then
    # accumulated pairwise into int32 (sadalp): 4 NEON ops per 16 MACs instead of 6 (smull x2, saddlp x2,
    # addp .4s, add). llvm-mca -mcpu=cortex-a72: 4.75 vs 7.1 cycles per 32 MACs (scripts/bench_arm.py). Exact
    # while a pair of products fits int16: |a| <= 128, |w| <= 127 gives 2 * 16256 = 32512, so config_for picks
    # it only for weights without -128 (a -128 x -128 pair would be 32768).
    @T.prim_func(s_tir=True)
    def _neon_pairs_impl(
        A: T.Buffer((4,), "int8", offset_factor=1),
        B: T.Buffer((4, 4), "int8", offset_factor=1),
        C: T.Buffer((4,), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:4], A[0:4], B[0:4, 0:4])
            T.writes(C[0:4])
            vec_a = T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], "int8x4"), dtype="int32"), 2),
                                  dtype="int8x8")
            vec_b = B.vload([0, 0], dtype="int8x16")
            lo = T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.smull.v8i16"),
                                         vec_a, T.vectorlow(vec_b, dtype="int8x8"), dtype="int16x8")
            hi = T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.smull.v8i16"),
                                         vec_a, T.vectorhigh(vec_b, dtype="int8x8"), dtype="int16x8")
            pairs = T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.addp.v8i16"), lo, hi,
                                            dtype="int16x8")
            C[T.ramp(T.int32(0), 1, 4)] += T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.saddlp.v4i32.v8i16"), pairs, dtype="int32x4")


NEON_PAIRS_INTRIN = "isq_dot_4x4_i8i8s32_neon_pairs"


def register_intrinsics() -> None:
    for name, impl in ((SDOT_INTRIN, _sdot_impl), (NEON_INTRIN, _neon_impl), (NEON_PAIRS_INTRIN, _neon_pairs_impl)):
        if TensorIntrin.get(name, allow_missing=True) is None:
            TensorIntrin.register(name, common.dot_desc(4, 4, "int8", "int8"), impl)


register_intrinsics()

SDOT_CONFIG = schedule.KernelConfig(dot_in_dtype="int8", intrin=SDOT_INTRIN, intrin_oc=4, w_layout="oc_ic",
                                  ow_tile_max=6, name="qconv2d_sdot", parallel_min_macs=1_000_000,
                                  q31_epilogue="neon", dw_neon=True)
NEON_CONFIG = schedule.KernelConfig(dot_in_dtype="int8", intrin=NEON_INTRIN, intrin_oc=4, w_layout="oc_ic",
                                  ow_tile_max=4, name="qconv2d_neon", parallel_min_macs=500_000,
                                  q31_epilogue="neon", dw_neon=True)
NEON_PAIRS_CONFIG = schedule.KernelConfig(dot_in_dtype="int8", intrin=NEON_PAIRS_INTRIN, intrin_oc=4,
                                        w_layout="oc_ic", ow_tile_max=4, name="qconv2d_neon",
                                        parallel_min_macs=500_000, q31_epilogue="neon", dw_neon=True)


def has_dotprod(target: tvm.target.Target) -> bool:
    from ..util import tvm_compat

    return tvm_compat.has_feature(target, "dotprod")


def config_for(target: tvm.target.Target, weight: Optional["np.ndarray"] = None) -> schedule.KernelConfig:
    """sdot with +dotprod; else the int16-pair NEON kernel when `weight` has no -128 (exact, see
    _neon_pairs_impl), else the plain NEON one."""
    if has_dotprod(target):
        return SDOT_CONFIG
    if weight is not None and int(np.asarray(weight).min(initial=0)) >= -127:
        return NEON_PAIRS_CONFIG
    return NEON_CONFIG


def portable_config(cfg: schedule.KernelConfig) -> schedule.KernelConfig:
    """The same compute, packing and loop nest with the intrinsic left out: builds for any LLVM target,
    which is how the ARM kernels are checked bit for bit on an x86 host."""
    return schedule.KernelConfig(dot_in_dtype=cfg.dot_in_dtype, intrin=None, intrin_oc=cfg.intrin_oc,
                               w_layout=cfg.w_layout, ow_tile_max=cfg.ow_tile_max, name=cfg.name + "_portable",
                               parallel_min_macs=cfg.parallel_min_macs,
                               q31_epilogue="host" if cfg.q31_epilogue else "", dw_neon=cfg.dw_neon)


def build_conv_primfunc(g: geometry.ConvGeom, p: QConv2dParams, in_dtype: str,
                        cfg: schedule.KernelConfig = SDOT_CONFIG, blocked_out: bool = False) -> tirx.PrimFunc:
    return schedule.build_conv_primfunc(g, p, in_dtype, cfg, blocked_out)


def lower_conv2d(bb: relax.BlockBuilder, data: relax.Expr, p: QConv2dParams, target: tvm.target.Target,
                 name: Optional[str] = None, cfg: Optional[schedule.KernelConfig] = None) -> relax.Expr:
    """Emit a quantized conv for an aarch64 target (sdot if +dotprod, else NEON smull); NCHW output."""
    return emit.lower_conv2d_with(bb, data, p, cfg or config_for(target, p.weight), name)


def lower_dense(bb: relax.BlockBuilder, data: relax.Expr, p: QDenseParams, target: tvm.target.Target,
                name: Optional[str] = None, cfg: Optional[schedule.KernelConfig] = None) -> relax.Expr:
    return emit.lower_dense_with(bb, data, p, cfg or config_for(target, p.weight), name)


def lower_conv2d_blocked(bb: relax.BlockBuilder, data: relax.Expr, p: QConv2dParams, target: tvm.target.Target,
                         name: Optional[str] = None, blocked_in: bool = True,
                         cfg: Optional[schedule.KernelConfig] = None, blocked_out: bool = True) -> relax.Expr:
    """Chaining variant: input NCHW16c (N, ceil(C/16), H, W, 16) (or NCHW with blocked_in=False), output
    NCHW16c (N, ceil(O/16), OH, OW, 16) (or NCHW with blocked_out=False); padded output channels hold
    requant(0) (0 unless out_min > 0) and padded input channels are ignored. groups == 1 only."""
    return emit.lower_conv2d_blocked_with(bb, data, p, cfg or config_for(target, p.weight), name, blocked_in,
                                            blocked_out)


def to_blocked(bb: relax.BlockBuilder, x: relax.Expr) -> relax.Expr:
    """NCHW -> NCHW16c (channels zero padded to a multiple of 16)."""
    return emit.emit_layout(bb, x, True)


def from_blocked(bb: relax.BlockBuilder, x: relax.Expr, channels: int) -> relax.Expr:
    """NCHW16c -> NCHW with the first `channels` channels."""
    return emit.emit_layout(bb, x, False, channels)


# registered kernels (kernels/registry.py): config_for's choice, by name

# imported here, not at the top: the TVMScript intrinsics above keep their source line numbers,
# which TVM writes into the libraries' debug line tables (so edits up there change the .so bytes)
import numpy as np  # noqa: E402

from ..util.cpu import is_aarch64  # noqa: E402


def _lower_conv(bb, data, p, target, blocked_in: bool = False, blocked_out: bool = False):
    if blocked_in or blocked_out:
        return lower_conv2d_blocked(bb, data, p, target, blocked_in=blocked_in, blocked_out=blocked_out)
    return lower_conv2d(bb, data, p, target)


def _lower_dense(bb, data, p, target, blocked_in: bool = False, blocked_out: bool = False):
    return lower_dense(bb, data, p, target)


def _any(shape, p, blocked_in, blocked_out) -> bool:
    return True


_FAMILIES = (("arm_sdot", 20, lambda t: is_aarch64(t) and has_dotprod(t)), ("arm_neon", 19, is_aarch64))
registry.register_conv(registry.Kernel("arm_depthwise", 30, is_aarch64, depthwise.is_depthwise_call, _lower_conv))
for _name, _priority, _applies in _FAMILIES:
    registry.register_conv(registry.Kernel(_name, _priority, _applies, _any, _lower_conv))
    registry.register_dense(registry.Kernel(_name, _priority, _applies, _any, _lower_dense))
