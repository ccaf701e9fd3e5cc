"""aarch64 int8 conv/dense kernels.

* +dotprod (Cortex-A76 / Raspberry Pi 5, ...): ``sdot`` through the shipped ``dot_4x4_i8i8s32_sdot``
  intrinsic (int8 x int8). uint8 data is shifted by -128 to int8 and +128 * sum(w) is folded into the bias.
* plain NEON (Cortex-A72 / Raspberry Pi 4): the shipped ``dot_4x4_i8i8s32_neon`` intrinsic
  (smull + saddlp + addp), same packing.

Same compute as the x86 kernel (common.conv_compute): data packed to NCHW[ic_bn]c, weights pre-packed to
(OCB, ICB4, KH, KW, 16, 4) with the 16 output channels split 4 x 4 for the intrinsic, bias/requant/clip on
each register tile (ow_tile x 16 channels = ow_tile x 4 q-registers).
"""
from __future__ import annotations

from typing import Optional

import tvm
from tvm import relax, tirx
import tvm.s_tir.tensor_intrin  # noqa: F401  (registers the ARM intrinsics)

from . import common
from .common import QConv2dParams, QDenseParams

SDOT_INTRIN = "dot_4x4_i8i8s32_sdot"
NEON_INTRIN = "dot_4x4_i8i8s32_neon"

SDOT_CONFIG = common.KernelConfig(dot_in_dtype="int8", intrin=SDOT_INTRIN, intrin_oc=4, w_layout="oc_ic",
                                  ow_tile_max=6, name="qconv2d_sdot")
NEON_CONFIG = common.KernelConfig(dot_in_dtype="int8", intrin=NEON_INTRIN, intrin_oc=4, w_layout="oc_ic",
                                  ow_tile_max=4, name="qconv2d_neon")


def has_dotprod(target: tvm.target.Target) -> bool:
    from tvm.target import codegen

    with target:
        return bool(codegen.llvm_cpu_has_features("dotprod", target))


def config_for(target: tvm.target.Target) -> common.KernelConfig:
    return SDOT_CONFIG if has_dotprod(target) else NEON_CONFIG


def portable_config(cfg: common.KernelConfig) -> common.KernelConfig:
    """The same compute, packing and loop nest with the intrinsic left out: builds for any LLVM target,
    which is how the ARM kernels are checked bit for bit on an x86 host."""
    return common.KernelConfig(dot_in_dtype=cfg.dot_in_dtype, intrin=None, intrin_oc=cfg.intrin_oc,
                               w_layout=cfg.w_layout, ow_tile_max=cfg.ow_tile_max, name=cfg.name + "_portable")


def build_conv_primfunc(g: common.ConvGeom, p: QConv2dParams, in_dtype: str,
                        cfg: common.KernelConfig = SDOT_CONFIG, blocked_out: bool = False) -> tirx.PrimFunc:
    return common.build_conv_primfunc(g, p, in_dtype, cfg, blocked_out)


def lower_conv2d(bb: relax.BlockBuilder, data: relax.Expr, p: QConv2dParams, target: tvm.target.Target,
                 name: Optional[str] = None, cfg: Optional[common.KernelConfig] = None) -> relax.Expr:
    """Emit a quantized conv for an aarch64 target (sdot if +dotprod, else NEON smull); NCHW output."""
    return common.lower_conv2d_with(bb, data, p, cfg or config_for(target), name)


def lower_dense(bb: relax.BlockBuilder, data: relax.Expr, p: QDenseParams, target: tvm.target.Target,
                name: Optional[str] = None, cfg: Optional[common.KernelConfig] = None) -> relax.Expr:
    return common.lower_dense_with(bb, data, p, cfg or config_for(target), name)
