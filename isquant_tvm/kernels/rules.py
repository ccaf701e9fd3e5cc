"""Register the hand-scheduled kernels as lowerings of qnn.conv2d / qnn.dense (legalize registry).

Each rule turns the qnn call's constant arguments back into kernel parameters and emits the
target's kernel; the predicate keeps the reference lowering for the cases the kernels do not
cover (int32 outputs of a pooled classifier, int32 / int64 accumulating denses, no target)."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
from tvm import relax

from .. import tvm_compat
from ..passes import legalize
from . import lower_conv2d, lower_dense
from .common import OUT_DTYPES, QConv2dParams, QDenseParams

_IN_DTYPES = ("int8", "uint8")


def _epilogue_params(args: Sequence[relax.Expr], attrs: Mapping[str, Any]) -> dict[str, Any]:
    consts = [tvm_compat.const_value(a) for a in args[1:]]
    weight, bias = consts[0], consts[1]
    out: dict[str, Any] = {"weight": weight.astype(np.int8), "bias": bias.astype(np.int32),
                           "out_dtype": str(attrs["out_dtype"]), "out_min": int(attrs["out_min"]),
                           "out_max": int(attrs["out_max"])}
    if out["out_dtype"] == "float32":
        o = weight.shape[0]
        out.update(multiplier=np.zeros(o, np.int64), shift=np.ones(o, np.int64),
                   dequant_scale=consts[2].astype(np.float32), out_min=0, out_max=0)
    else:
        out.update(multiplier=consts[2].astype(np.int64), shift=consts[3].astype(np.int64))
    return out


def _applies(target: Any, args_dtype: str, attrs: Mapping[str, Any]) -> bool:
    return target is not None and args_dtype in _IN_DTYPES and str(attrs["out_dtype"]) in OUT_DTYPES


def _conv_applies(target: Any, attrs: Mapping[str, Any]) -> bool:
    return target is not None and str(attrs["out_dtype"]) in OUT_DTYPES


def conv2d_rule(bb: relax.BlockBuilder, args: Sequence[relax.Expr], attrs: Mapping[str, Any], target: Any) -> relax.Expr:
    if tvm_compat.expr_dtype(args[0]) not in _IN_DTYPES or not all(tvm_compat.is_const(a) for a in args[1:]):
        from ..passes.qnn_ops import ref_conv2d

        return ref_conv2d(bb, args, attrs, target)
    p = QConv2dParams(strides=tuple(int(v) for v in attrs["strides"]), padding=tuple(int(v) for v in attrs["padding"]),
                      dilation=tuple(int(v) for v in attrs["dilation"]), groups=int(attrs["groups"]),
                      **_epilogue_params(args, attrs))
    return lower_conv2d(bb, args[0], p, target)


def dense_rule(bb: relax.BlockBuilder, args: Sequence[relax.Expr], attrs: Mapping[str, Any], target: Any) -> relax.Expr:
    if tvm_compat.expr_dtype(args[0]) not in _IN_DTYPES or not all(tvm_compat.is_const(a) for a in args[1:]):
        from ..passes.qnn_ops import ref_dense

        return ref_dense(bb, args, attrs, target)
    return lower_dense(bb, args[0], QDenseParams(**_epilogue_params(args, attrs)), target)


def register() -> None:
    legalize.register("qnn.conv2d", "kernels", _conv_applies, conv2d_rule, priority=10)
    legalize.register("qnn.dense", "kernels", _conv_applies, dense_rule, priority=10)
