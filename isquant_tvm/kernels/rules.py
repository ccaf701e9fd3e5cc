"""Register the hand-scheduled kernels as lowerings of the qnn ops (the lowering registry, qnn/registry.py).

qnn.conv2d / qnn.dense (int8/uint8 data): one lowering per registered kernel (kernels/registry.py:
x86_amx_blocked, x86_amx, x86_depthwise, x86_vnni, x86_avx2, x86_int32, arm_depthwise, arm_sdot,
arm_neon), every out_dtype (int8, uint8, float32, int32), so the report names the kernel of each call.
qnn.dense with int32 data (pooled int32 features): an int64-accumulating vectorised dense ("dense_i64",
glue.py). qnn.lut, qnn.mul, qnn.avg_pool2d, qnn.resize2d: elementwise8.py. qnn.add, qnn.requantize, qnn.quantize, qnn.dequantize, qnn.max_pool2d, qnn.global_avg_pool2d:
scheduled TE computes ("glue", glue.py). Each lowering's ``accepts`` checks the call's arguments (8-bit
data, constant weights and epilogue, shapes); a call no kernel accepts is lowered by the reference rule
and counted as ``op:reference``."""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import numpy as np
import tvm
from tvm import relax

from ..qnn import registry as lowerings
from ..qnn.registry import CONSUME, FOLLOW, PRODUCE
from ..util import tvm_compat
from ..util.cpu import is_aarch64
from . import elementwise8, glue, registry
from .common import OUT_DTYPES, QConv2dParams, QDenseParams
from .depthwise import is_blocked_depthwise

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
    return PRODUCE


def _conv_params(args: Sequence[relax.Expr], attrs: Mapping[str, Any]) -> QConv2dParams:
    return QConv2dParams(strides=tuple(int(v) for v in attrs["strides"]), padding=tuple(int(v) for v in attrs["padding"]),
                         dilation=tuple(int(v) for v in attrs["dilation"]), groups=int(attrs["groups"]),
                         **_epilogue_params(args, attrs))


def _conv_call(args: Sequence[relax.Expr], attrs: Mapping[str, Any]) -> tuple[tuple[int, ...], QConv2dParams, bool, bool]:
    shape = tuple(tvm_compat.expr_shape(args[0]))
    return shape, _conv_params(args, attrs), len(shape) == 5, _blocked(attrs)


def conv2d_lowering(kernel: registry.Kernel) -> tuple[Any, Any]:
    """(accepts, rule) of the qnn.conv2d lowering through `kernel`."""
    def accepts(args: Sequence[relax.Expr], attrs: Mapping[str, Any], target: Any) -> bool:
        return _conv_fast(args) and kernel.accepts(*_conv_call(args, attrs))

    def rule(bb: relax.BlockBuilder, args: Sequence[relax.Expr], attrs: Mapping[str, Any], target: Any) -> relax.Expr:
        _, p, blocked_in, blocked_out = _conv_call(args, attrs)
        return kernel.lower(bb, args[0], p, target, blocked_in, blocked_out)

    return accepts, rule


def _dense_i64_fast(args: Sequence[relax.Expr]) -> bool:
    return (tvm_compat.expr_dtype(args[0]) == "int32" and all(tvm_compat.is_const(a) for a in args[1:])
            and len(tvm_compat.expr_shape(args[0])) == 2)


def dense_i64_rule(bb: relax.BlockBuilder, args: Sequence[relax.Expr], attrs: Mapping[str, Any], target: Any) -> relax.Expr:
    vals = [tvm_compat.const_value(a) for a in args[1:]]
    return glue.lower_dense_i64(bb, args[0], vals[0], vals[1], vals[2:], attrs, target)


def dense_lowering(kernel: registry.Kernel) -> tuple[Any, Any]:
    """(accepts, rule) of the qnn.dense lowering (8-bit data) through `kernel`."""
    def accepts(args: Sequence[relax.Expr], attrs: Mapping[str, Any], target: Any) -> bool:
        if not _conv_fast(args):
            return False
        return kernel.accepts(tuple(tvm_compat.expr_shape(args[0])), QDenseParams(**_epilogue_params(args, attrs)),
                              False, False)

    def rule(bb: relax.BlockBuilder, args: Sequence[relax.Expr], attrs: Mapping[str, Any], target: Any) -> relax.Expr:
        return kernel.lower(bb, args[0], QDenseParams(**_epilogue_params(args, attrs)), target, False, False)

    return accepts, rule


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
    return FOLLOW if _is_cpu(target) and _add_fast(args) else None


def add_rule(bb, args, attrs, target):
    a, b, ma, mb = args[:4]
    return glue.lower_add(bb, a, b, _scalar(ma), _scalar(mb), attrs, target,
                          rounding=_scalar(args[4]) if len(args) > 4 else None)


def _requantize_fast(args) -> bool:
    return _scalar(args[1]) is not None and _int_tensor(args[0]) and (len(args) < 3 or _scalar(args[2]) is not None)


def requantize_role(args, attrs, target) -> Optional[str]:
    return FOLLOW if _is_cpu(target) and _requantize_fast(args) else None


def requantize_rule(bb, args, attrs, target):
    return glue.lower_requantize(bb, args[0], _scalar(args[1]), attrs, target,
                                 rounding=_scalar(args[2]) if len(args) > 2 else None)


def _quantize_fast(args) -> bool:
    return tvm_compat.expr_dtype(args[0]) == "float32"


def quantize_rule(bb, args, attrs, target):
    return glue.lower_quantize(bb, args[0], attrs, target)


def _dequantize_fast(args) -> bool:
    return _int_tensor(args[0])


def dequantize_rule(bb, args, attrs, target):
    return glue.lower_dequantize(bb, args[0], attrs, target)


def max_pool2d_role(args, attrs, target) -> Optional[str]:
    x = args[0]
    return FOLLOW if _is_cpu(target) and _int_tensor(x) and len(tvm_compat.expr_shape(x)) == 4 else None


def _max_pool2d_fast(args) -> bool:
    x = args[0]
    return _int_tensor(x) and len(tvm_compat.expr_shape(x)) in (4, 5)


def max_pool2d_rule(bb, args, attrs, target):
    return glue.lower_max_pool2d(bb, args[0], attrs, target)


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
    return CONSUME if ok else None


def _gap_channels(args, attrs) -> int:
    shape = tvm_compat.expr_shape(args[0])
    return int(attrs.get("data_channels", shape[1])) if len(shape) == 5 else shape[1]


def _gap_accepts(args, attrs, target) -> bool:
    if not _gap_fast(args, _gap_channels(args, attrs)):
        return False
    out_dtype = str(attrs["out_dtype"])
    if out_dtype == "float32":
        return len(args) >= 2
    if out_dtype == "int32":
        return True
    # 8-bit out: its multiplier, and the optional trailing rounding constant (zero points folded in)
    return len(args) > 1 and _scalar(args[1]) is not None and (len(args) < 3 or _scalar(args[2]) is not None)


def global_avg_pool2d_rule(bb, args, attrs, target):
    x = args[0]
    out_dtype = str(attrs["out_dtype"])
    C = _gap_channels(args, attrs)
    if out_dtype == "float32":
        dq = np.asarray(tvm_compat.const_value(args[1]), np.float32).reshape(-1)
        dq_const = relax.const(np.ascontiguousarray(np.broadcast_to(dq, (C,))), "float32")
        return glue.lower_global_avg_pool2d(bb, x, [dq_const], attrs, target, channels=C)
    if out_dtype == "int32":
        return glue.lower_global_avg_pool2d(bb, x, [], attrs, target, channels=C)
    rounding = _scalar(args[2]) if len(args) > 2 else None
    return glue.lower_global_avg_pool2d(bb, x, [_scalar(args[1])], attrs, target, channels=C, rounding=rounding)


def _lut_fast(args) -> bool:
    return (tvm_compat.expr_dtype(args[0]) in _IN_DTYPES and tvm_compat.is_const(args[1])
            and tvm_compat.expr_shape(args[1])[-1] == 256)


def lut_role(args, attrs, target) -> Optional[str]:
    # per tensor: any layout; per channel: NCHW16c rows are indexed by block and lane
    return FOLLOW if _is_cpu(target) and _lut_fast(args) and len(tvm_compat.expr_shape(args[0])) == 4 else None


def lut_rule(bb, args, attrs, target):
    return elementwise8.lower_lut(bb, args[0], tvm_compat.const_value(args[1]), attrs, target)


def _mul_fast(args) -> bool:
    a, b, m = args[:3]
    return (tvm_compat.expr_dtype(a) in _IN_DTYPES and tvm_compat.expr_dtype(b) in _IN_DTYPES
            and _scalar(m) is not None and len(tvm_compat.expr_shape(a)) == len(tvm_compat.expr_shape(b)))


def mul_role(args, attrs, target) -> Optional[str]:
    return FOLLOW if _is_cpu(target) and _mul_fast(args) and len(tvm_compat.expr_shape(args[0])) == 4 else None


def mul_rule(bb, args, attrs, target):
    return elementwise8.lower_mul(bb, args[0], args[1], _scalar(args[2]), attrs, target)


def _avg_pool_fast(args) -> bool:
    return (tvm_compat.expr_dtype(args[0]) in _IN_DTYPES and tvm_compat.is_const(args[1])
            and len(tvm_compat.expr_shape(args[0])) in (4, 5))


def avg_pool2d_role(args, attrs, target) -> Optional[str]:
    return FOLLOW if _is_cpu(target) and _avg_pool_fast(args) and len(tvm_compat.expr_shape(args[0])) == 4 else None


def avg_pool2d_rule(bb, args, attrs, target):
    return elementwise8.lower_avg_pool2d(bb, args[0], tvm_compat.const_value(args[1]), attrs, target)


def _resize2d_fast(args) -> bool:
    return (tvm_compat.expr_dtype(args[0]) in _IN_DTYPES and len(tvm_compat.expr_shape(args[0])) == 4
            and tvm_compat.is_const(args[1]) and tvm_compat.is_const(args[2]))


def resize2d_rule(bb, args, attrs, target):
    return elementwise8.lower_resize2d(bb, args[0], tvm_compat.const_value(args[1]), tvm_compat.const_value(args[2]),
                                       attrs, target)


def _fast(check):
    return lambda args, attrs, target: check(args)


# op -> (rule, accepts, its role for channel-blocked activations: legalize/layout.py)
GLUE_RULES = {
    "qnn.add": (add_rule, _fast(_add_fast), add_role),
    "qnn.requantize": (requantize_rule, _fast(_requantize_fast), requantize_role),
    "qnn.quantize": (quantize_rule, _fast(_quantize_fast), None),
    "qnn.dequantize": (dequantize_rule, _fast(_dequantize_fast), None),
    "qnn.max_pool2d": (max_pool2d_rule, _fast(_max_pool2d_fast), max_pool2d_role),
    "qnn.global_avg_pool2d": (global_avg_pool2d_rule, _gap_accepts, global_avg_pool2d_role),
    "qnn.lut": (lut_rule, _fast(_lut_fast), lut_role),
    "qnn.mul": (mul_rule, _fast(_mul_fast), mul_role),
    "qnn.avg_pool2d": (avg_pool2d_rule, _fast(_avg_pool_fast), avg_pool2d_role),
    "qnn.resize2d": (resize2d_rule, _fast(_resize2d_fast), None),  # NCHW: rows are gathered by index
}


def _glue_applies(target: Any, attrs: Mapping[str, Any]) -> bool:
    return _is_cpu(target)


def skips_zero_taps(target: Any) -> bool:
    """The conv kernel skips all-zero taps per output block (x86_amx_blocked): merged convs pay."""
    from . import x86_amx

    return _is_cpu(target) and not is_aarch64(target) and x86_amx.has_amx(target)


def _kernel_applies(kernel: registry.Kernel):
    return lambda target, attrs: _conv_applies(target, attrs) and kernel.applies(target)


def register() -> None:
    """Register every kernel and glue lowering in the lowering registry (idempotent: by name)."""
    registry.load_backends()
    for kernel in registry.CONV:
        accepts, rule = conv2d_lowering(kernel)
        lowerings.register("qnn.conv2d", kernel.name, _kernel_applies(kernel), rule, priority=kernel.priority,
                           blocked=conv2d_role, accepts=accepts)
    lowerings.register("qnn.dense", "dense_i64", _conv_applies, dense_i64_rule, priority=100,
                       accepts=_fast(_dense_i64_fast))
    for kernel in registry.DENSE:
        accepts, rule = dense_lowering(kernel)
        lowerings.register("qnn.dense", kernel.name, _kernel_applies(kernel), rule, priority=kernel.priority,
                           accepts=accepts)
    for op, (rule, accepts, role) in GLUE_RULES.items():
        lowerings.register(op, "glue", _glue_applies, rule, priority=10, blocked=role, accepts=accepts)


def selected_rule(op: str):
    """A rule that lowers one `op` call the way legalize does: the registry's choice for the target, the
    attributes and the call's arguments (kernel tests call it on hand-made calls)."""
    register()

    def rule(bb: relax.BlockBuilder, args: Sequence[relax.Expr], attrs: Mapping[str, Any], target: Any) -> relax.Expr:
        return lowerings.select(op, target, attrs, args=args).rule(bb, args, attrs, target)

    return rule
