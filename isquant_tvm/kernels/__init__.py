"""Hand-scheduled int8 kernels for the quantized conv / dense contract (see kernels.common).

    from isquant_tvm.kernels import lower_conv2d, lower_dense, QConv2dParams, QDenseParams
    y = lower_conv2d(bb, x, params, target)   # emits into bb, returns the NCHW output

Which kernel lowers a call is decided once, by the kernel table of kernels/registry.py (each backend
module registers its kernels with a priority; the legalize report names the one that ran). What it
picks, by target: x86 with AVX-512 VNNI -> vpdpbusd kernel, x86 with AVX2 -> exact vpmaddwd kernel,
other x86 -> vectorised int32 kernel (x86_vnni); x86 targets with amx-int8 (e.g. mcpu sapphirerapids,
or "mattr": ["+amx-int8", "+amx-tile"]) send groups == 1 convs (>= 16 input channels, or fewer with a
kernel wider than 1: columns folded into the reduction, e.g. the RGB stem) and dense with
batch >= 2 or K >= 1024 to the
AMX tdpbsud/tdpbssd kernel (x86_amx) and the rest to VNNI; aarch64 with +dotprod -> sdot kernel, other aarch64 ->
NEON smull kernel (arm_dot). Depthwise (groups == C) -> vectorised int32 kernel on every target.
Every kernel is bit-exact against ref_conv2d / ref_dense (numpy int64).

Chaining variant: lower_conv2d_blocked (NCHW16c in/out, groups == 1) with to_blocked / from_blocked. On
x86 targets with amx-int8 a blocked input goes to x86_amx_blocked (tiles of 16 pixels x 16 channels, so
its outputs are NCHW16c rows); an NCHW input (the RGB stem) and depthwise convs to the VNNI blocked kernels.
Every out_dtype of the qnn contract: int8 / uint8 (requantized), float32 (dequantized), int32 (clipped
accumulator, a classifier conv feeding a pool).

glue.py: scheduled TE lowerings of qnn.add / requantize / quantize / dequantize / max_pool2d /
global_avg_pool2d and of the int64-accumulating dense over int32 pooled features. rules.py registers all
of them in the lowering registry (qnn/registry.py; LLVM CPU targets).

Threads: TVM's runtime sizes its pool to hardware_concurrency / 2 on x86 (it assumes SMT), i.e. 1 thread
on this 2-vCPU machine; set TVM_NUM_THREADS=2. Kernels smaller than ~20 us of single-core work stay
serial (KernelConfig.parallel_min_macs, glue.PARALLEL_MIN_*): waking the worker costs ~5-10 us.
"""
from __future__ import annotations

from typing import Any

from . import registry
from .common import QConv2dParams, QDenseParams, ref_conv2d, ref_dense
from .emit import emit_layout

__all__ = ["QConv2dParams", "QDenseParams", "ref_conv2d", "ref_dense", "lower_conv2d", "lower_dense",
           "lower_conv2d_blocked", "to_blocked", "from_blocked", "conv_kernel", "dense_kernel"]


def _shape(expr: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in expr.ty.shape)


def conv_kernel(target: Any, data_shape, p: QConv2dParams, blocked_in: bool = False,
                blocked_out: bool = False) -> registry.Kernel:
    """The registered conv kernel for this call (kernels/registry.py)."""
    kernel = registry.choose(registry.CONV, target, tuple(data_shape), p, blocked_in, blocked_out)
    if kernel is None:
        raise NotImplementedError(f"no int8 conv kernel takes data {tuple(data_shape)}, groups {p.groups}"
                                  f" (blocked in {blocked_in}, out {blocked_out}) for this target")
    return kernel


def dense_kernel(target: Any, data_shape, p: QDenseParams) -> registry.Kernel:
    kernel = registry.choose(registry.DENSE, target, tuple(data_shape), p)
    if kernel is None:
        raise NotImplementedError(f"no int8 dense kernel takes data {tuple(data_shape)} for this target")
    return kernel


def lower_conv2d(bb, data, p: QConv2dParams, target):
    """NCHW in, NCHW out, through the registered kernel for the call."""
    return conv_kernel(target, _shape(data), p).lower(bb, data, p, target, False, False)


def lower_dense(bb, data, p: QDenseParams, target):
    return dense_kernel(target, _shape(data), p).lower(bb, data, p, target, False, False)


def lower_conv2d_blocked(bb, data, p: QConv2dParams, target, blocked_in: bool = True, blocked_out: bool = True):
    """NCHW16c in (or NCHW with blocked_in=False) -> NCHW16c out (or NCHW with blocked_out=False),
    groups == 1 or depthwise (for chaining layers: legalize/layout.py plans where)."""
    kernel = conv_kernel(target, _shape(data), p, blocked_in, blocked_out)
    return kernel.lower(bb, data, p, target, blocked_in, blocked_out)


def to_blocked(bb, x):
    return emit_layout(bb, x, True)


def from_blocked(bb, x, channels: int):
    return emit_layout(bb, x, False, channels)
