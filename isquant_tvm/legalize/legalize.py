"""Legalize qnn-level ops to plain Relax/TIR through the lowering registry (qnn/registry.py).

For each qnn call the registry picks the highest-priority lowering that applies to the target, the op's
attributes and the call's arguments (the kernels register one lowering per kernel, kernels/rules.py); the
reference rule (the op's function body) always applies, so adding a faster kernel is one
`register(...)` call and never changes the results. The report counts every call as
``op:lowering`` (``qnn.conv2d:x86_amx_blocked``, ``qnn.add:glue``, ``qnn.dense:reference``).

A lowering may also say how it handles channel-blocked (NCHW16c) activations (`blocked`, a role from
legalize/layout.py). With a target, legalize first plans which tensors stay blocked and then tells each
rule through its attrs: ``out_layout`` is "NCHW16c" for a call whose result stays blocked, a blocked
argument arrives with one more axis than the qnn function's parameter, and ``data_channels`` gives the
first argument's real channel count."""
from __future__ import annotations

from typing import Any, Optional

import tvm
from tvm import relax

from ..qnn import ops as qnn_ops
from ..qnn import registry
from . import layout
from .merge_concat_convs import merge_concat_convs

# the registry lives in qnn/registry.py (below the kernels, which register there); these names stay
# importable from the pass that uses them
Lowering = registry.Lowering
REGISTRY = registry.REGISTRY
PREPASSES = registry.PREPASSES
register = registry.register
register_prepass = registry.register_prepass
select = registry.select


@relax.expr_functor.mutator
class LegalizeMutator(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule, target: Any, only_reference: bool) -> None:
        super().__init__(mod)
        self.mod_ = mod
        self.target = target
        self.only_reference = only_reference
        self.chosen: dict[str, int] = {}
        self.blocked: set[relax.Var] = set()
        self._out_blocked = False

    def role_of(self, call: relax.Call) -> Optional[str]:
        op = qnn_ops.qnn_op_of(self.mod_, call)
        if op is None:
            return None
        attrs = qnn_ops.attrs_of(self.mod_[call.op])
        lowering = select(op, self.target, attrs, self.only_reference, args=list(call.args))
        return lowering.blocked(list(call.args), attrs, self.target) if lowering.blocked else None

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        self._out_blocked = binding.var in self.blocked
        return super().visit_var_binding_(binding)

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        op = qnn_ops.qnn_op_of(self.mod_, call)
        if op is None:
            return self.visit_expr_post_order(call)
        # the arguments are visited but no new call to the qnn function is built: a blocked argument
        # would not type-check against its NCHW parameter
        args = [self.visit_expr(a) for a in call.args]
        func = self.mod_[call.op]
        attrs = qnn_ops.attrs_of(func)
        blocked_in = any(layout.is_blocked_arg(a, p) for a, p in zip(args, func.params))
        if self._out_blocked or blocked_in:
            attrs["out_layout"] = "NCHW16c" if self._out_blocked else "NCHW"
            attrs["data_channels"] = int(func.params[0].ty.shape[1])  # blocked data pads channels to 16
        # the layout is part of what a kernel takes (x86_amx_blocked reads NCHW16c), so select after it
        lowering = select(op, self.target, attrs, self.only_reference, args=args)
        key = f"{op}:{lowering.name}"
        self.chosen[key] = self.chosen.get(key, 0) + 1
        return lowering.rule(self.builder_, args, attrs, self.target)

    def transform(self) -> tvm.IRModule:
        for gv, func in self.mod_.functions_items():
            if isinstance(func, relax.Function) and not (func.attrs and "qnn.op" in func.attrs):
                if self.target is not None and not self.only_reference:
                    self.blocked = layout.plan(func, self.role_of)
                    if self.blocked:
                        self.chosen["layout:NCHW16c"] = self.chosen.get("layout:NCHW16c", 0) + len(self.blocked)
                self.builder_.update_func(gv, self.visit_expr(func))
        mod = self.builder_.get()
        # The qnn functions are now unreferenced.
        return relax.transform.DeadCodeElimination(["main"])(mod)


_KERNELS_LOADED = False


def load_kernel_lowerings() -> None:
    """Register the kernels' lowerings and the prepasses that pay with them, once: on first use, because
    the kernels import TVM's schedule APIs (seconds) that a reference-only legalize does not need."""
    global _KERNELS_LOADED
    if not _KERNELS_LOADED:
        from ..kernels import rules

        rules.register()
        # a fire module's expand convs merged into one conv: pays where the conv kernel skips zero taps
        register_prepass("merge_concat_convs", rules.skips_zero_taps, merge_concat_convs)
        _KERNELS_LOADED = True


def legalize(mod: tvm.IRModule, target: Any = None, only_reference: bool = False) -> tuple[tvm.IRModule, dict[str, int]]:
    """Lower every qnn op call in `mod`. Returns the module and which lowering each op used."""
    rewrites: dict[str, int] = {}
    if target is not None and not only_reference:
        load_kernel_lowerings()
        for name, (applies, rewrite) in PREPASSES.items():
            if applies(target):
                mod, count = rewrite(mod)
                if count:
                    rewrites[f"rewrite:{name}"] = count
    mutator = LegalizeMutator(mod, target, only_reference)
    out = mutator.transform()
    return out, {**rewrites, **mutator.chosen}


def legalize_pass(target: Any = None, only_reference: bool = False) -> tvm.transform.Pass:
    @tvm.transform.module_pass(opt_level=0, name="LegalizeQnn")
    def _pass(mod: tvm.IRModule, ctx: Any) -> tvm.IRModule:
        return legalize(mod, target, only_reference)[0]

    return _pass
