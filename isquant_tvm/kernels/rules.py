"""Register the hand-scheduled kernels as lowerings of the qnn ops (legalize registry).

qnn.conv2d / qnn.dense (int8/uint8 data): the target's int8 kernel (kernels.common), every out_dtype
(int8, uint8, float32, int32). qnn.dense with int32 data (pooled int32 features): an int64-accumulating
vectorised dense (glue.py). qnn.add, qnn.requantize, qnn.quantize, qnn.dequantize, qnn.max_pool2d,
qnn.global_avg_pool2d: scheduled TE computes (glue.py). Each rule turns the qnn call's constant
arguments back into kernel parameters; a call whose constants are not Relax constants (or an
unsupported shape / dtype) falls back to the reference lowering inside the rule."""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import numpy as np
import tvm
from tvm import relax

from .. import tvm_compat
from ..passes import layout, legalize, qnn_ops
from ..passes.merge_concat_convs import merge_concat_convs
from . import glue, lower_conv2d, lower_conv2d_blocked, lower_dense
from .common import OUT_DTYPES, QConv2dParams, QDenseParams, is_blocked_depthwise

_IN_DTYPES = ("int8", "uint8")


def _epilogue_params(args: Sequence[relax.Expr], attrs: Mapping[str, Any]) -> dict[str, Any]:
    consts = [tvm_compat.const_value(a) for a in args[1:]]
    weight, bias = consts[0], consts[1]
    out: dict[str, Any] = {"weight": weight.astype(np.int8), "bias": bias.astype(np.int32),
                           "out_dtype": str(attrs["out_dtype"]), "out_min": int(attrs["out_min"]),
                           "out_max": int(attrs["out_max"]), "out_zero_point": int(attrs.get("out_zero_point", 0))}
    if out["out_dtype"] == "float32":
        o = weight.shape[0]
        out.update(multiplier=np.zeros(o, np.int64), shift=np.ones(o, np.int64),
                   dequant_scale=consts[2].astype(np.float32), out_min=0, out_max=0)
    elif out["out_dtype"] == "int32":
        o = weight.shape[0]
        out.update(multiplier=np.zeros(o, np.int64), shift=np.ones(o, np.int64))
    else:
        out.update(multiplier=consts[2].astype(np.int64), shift=consts[3].astype(np.int64))
    return out


def _is_cpu(target: Any) -> bool:
    """The kernels are LLVM CPU code (x86 / aarch64): a tvm Target of kind llvm."""
    return isinstance(target, tvm.target.Target) and str(target.kind.name) == "llvm"


def _conv_applies(target: Any, attrs: Mapping[str, Any]) -> bool:
    return _is_cpu(target) and str(attrs["out_dtype"]) in OUT_DTYPES


def _blocked(attrs: Mapping[str, Any]) -> bool:
    return attrs.get("out_layout") == "NCHW16c"


def _conv_fast(args: Sequence[relax.Expr]) -> bool:
    """8-bit data and constant weights / epilogue: the kernels apply (else the reference lowering)."""
    return tvm_compat.expr_dtype(args[0]) in _IN_DTYPES and all(tvm_compat.is_const(a) for a in args[1:])


def conv2d_role(args: Sequence[relax.Expr], attrs: Mapping[str, Any], target: Any) -> Optional[str]:
    if not _is_cpu(target) or str(attrs["out_dtype"]) not in OUT_DTYPES or not _conv_fast(args):
        return None
    groups = int(attrs["groups"])
    depthwise = is_blocked_depthwise(groups, tvm_compat.expr_shape(args[1]), tvm_compat.expr_shape(args[0])[1])
    if groups != 1 and not depthwise:  # grouped / channel multiplier: NCHW kernels
        return None
    if groups != 1 and str(attrs["out_dtype"]) not in _IN_DTYPES:
        return None
    # every result dtype can stay blocked: a classifier conv's int32 accumulators feed the blocked global
    # pool (an NCHW int32 result costs 16 strided stores per pixel); layout.plan unblocks it where the
    # user needs NCHW
    return layout.PRODUCE


def conv2d_rule(bb: relax.BlockBuilder, args: Sequence[relax.Expr], attrs: Mapping[str, Any], target: Any) -> relax.Expr:
    if not _conv_fast(args):
        return qnn_ops.ref_conv2d(bb, args, attrs, target)
    p = QConv2dParams(strides=tuple(int(v) for v in attrs["strides"]), padding=tuple(int(v) for v in attrs["padding"]),
                      dilation=tuple(int(v) for v in attrs["dilation"]), groups=int(attrs["groups"]),
                      **_epilogue_params(args, attrs))
    blocked_in = len(tvm_compat.expr_shape(args[0])) == 5
    if _blocked(attrs) or blocked_in:
        return lower_conv2d_blocked(bb, args[0], p, target, blocked_in=blocked_in, blocked_out=_blocked(attrs))
    return lower_conv2d(bb, args[0], p, target)


def dense_rule(bb: relax.BlockBuilder, args: Sequence[relax.Expr], attrs: Mapping[str, Any], target: Any) -> relax.Expr:
    consts_ok = all(tvm_compat.is_const(a) for a in args[1:])
    if tvm_compat.expr_dtype(args[0]) == "int32" and consts_ok and len(tvm_compat.expr_shape(args[0])) == 2:
        vals = [tvm_compat.const_value(a) for a in args[1:]]
        return glue.lower_dense_i64(bb, args[0], vals[0], vals[1], vals[2:], attrs, target)
    if tvm_compat.expr_dtype(args[0]) not in _IN_DTYPES or not consts_ok:
        return qnn_ops.ref_dense(bb, args, attrs, target)
    return lower_dense(bb, args[0], QDenseParams(**_epilogue_params(args, attrs)), target)


# ----------------------------------------------------------------------------------------------
# glue ops
# ----------------------------------------------------------------------------------------------

def _scalar(expr: relax.Expr) -> Optional[int]:
    """An int64 scalar Relax constant as a Python int (None when it is not one)."""
    if not tvm_compat.is_const(expr):
        return None
    v = tvm_compat.const_value(expr)
    return int(v.reshape(())) if v.size == 1 else None


def _int_tensor(expr: relax.Expr) -> bool:
    return tvm_compat.expr_dtype(expr) in glue.ELEMENTWISE_DTYPES


def _add_fast(args) -> bool:
    a, b, ma, mb = args[:4]
    return (_scalar(ma) is not None and _scalar(mb) is not None and _int_tensor(a) and _int_tensor(b)
            and tvm_compat.expr_shape(a) == tvm_compat.expr_shape(b)
            and (len(args) < 5 or _scalar(args[4]) is not None))


def add_role(args, attrs, target) -> Optional[str]:
    # elementwise on flat buffers: any layout, as long as both operands share it
    return layout.FOLLOW if _is_cpu(target) and _add_fast(args) else None


def add_rule(bb, args, attrs, target):
    if not _add_fast(args):
        return qnn_ops.ref_add(bb, args, attrs, target)
    a, b, ma, mb = args[:4]
    return glue.lower_add(bb, a, b, _scalar(ma), _scalar(mb), attrs, target,
                          rounding=_scalar(args[4]) if len(args) > 4 else None)


def _requantize_fast(args) -> bool:
    return _scalar(args[1]) is not None and _int_tensor(args[0]) and (len(args) < 3 or _scalar(args[2]) is not None)


def requantize_role(args, attrs, target) -> Optional[str]:
    return layout.FOLLOW if _is_cpu(target) and _requantize_fast(args) else None


def requantize_rule(bb, args, attrs, target):
    if not _requantize_fast(args):
        return qnn_ops.ref_requantize(bb, args, attrs, target)
    return glue.lower_requantize(bb, args[0], _scalar(args[1]), attrs, target,
                                 rounding=_scalar(args[2]) if len(args) > 2 else None)


def quantize_rule(bb, args, attrs, target):
    if tvm_compat.expr_dtype(args[0]) != "float32":
        return qnn_ops.ref_quantize(bb, args, attrs, target)
    return glue.lower_quantize(bb, args[0], attrs, target)


def dequantize_rule(bb, args, attrs, target):
    if not _int_tensor(args[0]):
        return qnn_ops.ref_dequantize(bb, args, attrs, target)
    return glue.lower_dequantize(bb, args[0], attrs, target)


def max_pool2d_role(args, attrs, target) -> Optional[str]:
    x = args[0]
    return layout.FOLLOW if _is_cpu(target) and _int_tensor(x) and len(tvm_compat.expr_shape(x)) == 4 else None


def max_pool2d_rule(bb, args, attrs, target):
    x = args[0]
    if not _int_tensor(x) or len(tvm_compat.expr_shape(x)) not in (4, 5):
        return qnn_ops.ref_max_pool2d(bb, args, attrs, target)
    return glue.lower_max_pool2d(bb, x, attrs, target)


def _gap_fast(args, channels: int) -> bool:
    x = args[0]
    if not _int_tensor(x) or len(tvm_compat.expr_shape(x)) not in (4, 5):
        return False
    if len(args) < 2:
        return True  # int32 out; an 8-bit out needs its multiplier, checked by the rule
    if not tvm_compat.is_const(args[1]):
        return False
    return tvm_compat.const_value(args[1]).size in (1, channels)


def global_avg_pool2d_role(args, attrs, target) -> Optional[str]:
    x = args[0]
    shape = tvm_compat.expr_shape(x)
    ok = _is_cpu(target) and len(shape) == 4 and _gap_fast(args, shape[1])
    return layout.CONSUME if ok else None


def global_avg_pool2d_rule(bb, args, attrs, target):
    x = args[0]
    out_dtype = str(attrs["out_dtype"])
    shape = tvm_compat.expr_shape(x)
    C = int(attrs.get("data_channels", shape[1])) if len(shape) == 5 else shape[1]
    if not _gap_fast(args, C):
        return qnn_ops.ref_global_avg_pool2d(bb, args, attrs, target)
    if out_dtype == "float32":
        if len(args) < 2:
            return qnn_ops.ref_global_avg_pool2d(bb, args, attrs, target)
        dq = np.asarray(tvm_compat.const_value(args[1]), np.float32).reshape(-1)
        dq_const = relax.const(np.ascontiguousarray(np.broadcast_to(dq, (C,))), "float32")
        return glue.lower_global_avg_pool2d(bb, x, [dq_const], attrs, target, channels=C)
    if out_dtype == "int32":
        return glue.lower_global_avg_pool2d(bb, x, [], attrs, target, channels=C)
    m = _scalar(args[1]) if len(args) > 1 else None
    rounding = _scalar(args[2]) if len(args) > 2 else None
    if m is None or (len(args) > 2 and rounding is None):
        return qnn_ops.ref_global_avg_pool2d(bb, args, attrs, target)
    return glue.lower_global_avg_pool2d(bb, x, [m], attrs, target, channels=C, rounding=rounding)


# op -> (rule, its role for channel-blocked activations: passes/layout.py)
GLUE_RULES = {
    "qnn.add": (add_rule, add_role),
    "qnn.requantize": (requantize_rule, requantize_role),
    "qnn.quantize": (quantize_rule, None),
    "qnn.dequantize": (dequantize_rule, None),
    "qnn.max_pool2d": (max_pool2d_rule, max_pool2d_role),
    "qnn.global_avg_pool2d": (global_avg_pool2d_rule, global_avg_pool2d_role),
}


def _glue_applies(target: Any, attrs: Mapping[str, Any]) -> bool:
    return _is_cpu(target)


def _skips_zero_taps(target: Any) -> bool:
    """The conv kernel skips all-zero taps per output block (x86_amx_blocked): merged convs pay."""
    from . import is_aarch64, x86_amx

    return _is_cpu(target) and not is_aarch64(target) and x86_amx.has_amx(target)


def register() -> None:
    legalize.register_prepass("merge_concat_convs", _skips_zero_taps, merge_concat_convs)
    legalize.register("qnn.conv2d", "kernels", _conv_applies, conv2d_rule, priority=10, blocked=conv2d_role)
    legalize.register("qnn.dense", "kernels", _conv_applies, dense_rule, priority=10)
    for op, (rule, role) in GLUE_RULES.items():
        legalize.register(op, "kernels", _glue_applies, rule, priority=10, blocked=role)
