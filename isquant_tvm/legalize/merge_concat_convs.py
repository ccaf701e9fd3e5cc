"""Merge the convs of a channel concat that all read one activation into one qnn.conv2d.

SqueezeNet's fire modules end in ``concat(expand1x1(s), expand3x3(s))``. As one conv, the squeeze output is
packed once, there is one kernel call instead of three, and the concat's copy is gone: every part writes
its channels of the result directly.

The merged weights embed each part centred in the largest kernel (zero taps around a 1x1), the output
channels stacked in concat order, with each part's bias and requantize constants per channel; the merged
conv computes the concat exactly (the zero taps add 0), so it is bit-exact by construction and the numpy
reference of the unmerged graph checks it.

It pays only where the conv kernel skips all-zero taps per output block (kernels/x86_amx_blocked.py):
a kernel that computes every tap would do 9x the MACs of a 1x1 part. The legalize registry runs it for
those targets (kernels/rules.py)."""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
import tvm
from tvm import relax

from ..util import tvm_compat
from ..qnn import ops as qnn_ops

_SAME = ("strides", "dilation", "groups", "out_dtype", "out_min", "out_max")


def _centre_offsets(attrs: dict[str, Any], kh: int, kw: int) -> Optional[tuple[int, int, int, int]]:
    """Padding minus the kernel's half-size per side: equal for parts that line up when centred."""
    if kh % 2 == 0 or kw % 2 == 0:
        return None
    t, l, b, r = (int(v) for v in attrs["padding"])
    return t - kh // 2, l - kw // 2, b - kh // 2, r - kw // 2


def _part(mod: tvm.IRModule, call: Any) -> Optional[tuple[dict[str, Any], list[np.ndarray]]]:
    if qnn_ops.qnn_op_of(mod, call) != "qnn.conv2d" or len(call.args) != 5:
        return None
    if not all(tvm_compat.is_const(a) for a in call.args[1:]):
        return None
    attrs = qnn_ops.attrs_of(mod[call.op])
    if str(attrs["out_dtype"]) not in ("int8", "uint8") or int(attrs["groups"]) != 1:
        return None
    if [int(v) for v in attrs["dilation"]] != [1, 1]:
        return None
    return attrs, [tvm_compat.const_value(a) for a in call.args[1:]]


def merged_conv(parts: list[tuple[dict[str, Any], list[np.ndarray]]]) -> Optional[tuple[dict[str, Any], list[np.ndarray]]]:
    """(attrs, [weight, bias, multiplier, shift]) of one conv computing the channel concat of `parts`, or
    None when they do not line up (different strides / output range, even kernels, other padding)."""
    attrs0 = parts[0][0]
    offsets = set()
    for attrs, (w, *_rest) in parts:
        if any([*np.atleast_1d(attrs[k])] != [*np.atleast_1d(attrs0[k])] for k in _SAME):
            return None
        if int(attrs.get("out_zero_point", 0)) != int(attrs0.get("out_zero_point", 0)):  # pre-quantized models
            return None
        offsets.add(_centre_offsets(attrs, w.shape[2], w.shape[3]))
    if len(offsets) != 1 or None in offsets:
        return None
    (ct, cl, cb, cr), = offsets
    KH = max(w.shape[2] for _, (w, *_r) in parts)
    KW = max(w.shape[3] for _, (w, *_r) in parts)
    C = parts[0][1][0].shape[1]
    O = sum(w.shape[0] for _, (w, *_r) in parts)
    weight = np.zeros((O, C, KH, KW), np.int8)
    bias, mult, shift, scales, layers = [], [], [], [], []
    o = 0
    for attrs, (w, b, m, n) in parts:
        oi, _, kh, kw = w.shape
        dh, dw = (KH - kh) // 2, (KW - kw) // 2
        weight[o:o + oi, :, dh:dh + kh, dw:dw + kw] = w
        bias.append(np.broadcast_to(np.asarray(b, np.int32).reshape(-1), (oi,)))
        mult.append(np.broadcast_to(np.asarray(m, np.int64).reshape(-1), (oi,)))
        shift.append(np.broadcast_to(np.asarray(n, np.int64).reshape(-1), (oi,)))
        ws = [float(v) for v in np.atleast_1d(attrs.get("weight_scale", [0.0]))]
        scales.extend(ws if len(ws) == oi else ws[:1] * oi)
        layers.append(str(attrs.get("layer", "")))
        o += oi
    attrs = {k: v for k, v in attrs0.items() if k != "qnn.op"}
    attrs.update(padding=[ct + KH // 2, cl + KW // 2, cb + KH // 2, cr + KW // 2], layer="+".join(layers),
                 weight_scale=scales)
    return attrs, [weight, np.concatenate(bias), np.concatenate(mult), np.concatenate(shift)]


@relax.expr_functor.mutator
class _Merger(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule) -> None:
        super().__init__(mod)
        self.mod_ = mod
        self.value_of: dict[relax.Var, relax.Expr] = {}
        self.uses: dict[relax.Var, int] = {}
        self.merged = 0

    def _index(self, func: relax.Function) -> None:
        self.value_of, self.uses = {}, {}
        for blk in func.body.blocks:
            for b in blk.bindings:
                if isinstance(b, relax.VarBinding):
                    self.value_of[b.var] = b.value
                    for v in relax.analysis.free_vars(b.value):
                        self.uses[v] = self.uses.get(v, 0) + 1
        for v in relax.analysis.free_vars(func.body.body):
            self.uses[v] = self.uses.get(v, 0) + 1

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        merged = self._merge(call)
        return merged if merged is not None else super().visit_call_(call)

    def _merge(self, call: relax.Call) -> Optional[relax.Expr]:
        if not (isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.concat" and int(call.attrs.axis) == 1):
            return None
        fields = call.args[0].fields if isinstance(call.args[0], relax.Tuple) else []
        if len(fields) < 2 or not all(isinstance(f, relax.Var) and self.uses.get(f) == 1 for f in fields):
            return None
        calls = [self.value_of.get(f) for f in fields]
        parts = [_part(self.mod_, c) if isinstance(c, relax.Call) else None for c in calls]
        if None in parts or len({c.args[0] for c in calls}) != 1:
            return None
        spec = merged_conv(parts)
        if spec is None:
            return None
        attrs, consts = spec
        data = self.visit_expr(calls[0].args[0])
        args = [data] + [qnn_ops.const(c) for c in consts]
        gv = self.builder_.add_func(qnn_ops.make_function("qnn.conv2d", args, attrs), "qnn_conv2d_merged")
        self.merged += 1
        return relax.Call(gv, args)

    def transform(self) -> tuple[tvm.IRModule, int]:
        for gv, func in self.mod_.functions_items():
            if isinstance(func, relax.Function) and not (func.attrs and "qnn.op" in func.attrs):
                self._index(func)
                self.builder_.update_func(gv, self.visit_expr(func))
        # the parts' calls are now unused
        return relax.transform.DeadCodeElimination(["main"])(self.builder_.get()), self.merged


def merge_concat_convs(mod: tvm.IRModule) -> tuple[tvm.IRModule, int]:
    """The module with every mergeable concat of convs merged, and how many were."""
    return _Merger(mod).transform()


def merge_concat_convs_pass() -> tvm.transform.Pass:
    @tvm.transform.module_pass(opt_level=0, name="MergeConcatConvs")
    def _pass(mod: tvm.IRModule, ctx: Any) -> tvm.IRModule:
        return merge_concat_convs(mod)[0]

    return _pass
