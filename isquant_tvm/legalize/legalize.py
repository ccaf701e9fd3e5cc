"""Legalize qnn-level ops to plain Relax/TIR through the lowering registry.

REGISTRY maps a qnn op to an ordered list of (name, applies(target, attrs), rule). The first rule
whose predicate holds lowers the call; the reference rule (the op's function body) always applies,
so adding a faster kernel is one `register(...)` call and never changes the results.

A lowering may also say how it handles channel-blocked (NCHW16c) activations (`blocked`, a role from
passes/layout.py). With a target, legalize first plans which tensors stay blocked and then tells each
rule through its attrs: ``out_layout`` is "NCHW16c" for a call whose result stays blocked, a blocked
argument arrives with one more axis than the qnn function's parameter, and ``data_channels`` gives the
first argument's real channel count."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence

import tvm
from tvm import relax

from . import layout
from ..qnn import ops as qnn_ops

Predicate = Callable[[Any, Mapping[str, Any]], bool]
# (call args, attrs, target) -> layout.PRODUCE / FOLLOW / CONSUME, or None (NCHW only)
BlockedRole = Callable[[Sequence[relax.Expr], Mapping[str, Any], Any], Optional[str]]


@dataclass(frozen=True)
class Lowering:
    name: str
    applies: Predicate
    rule: qnn_ops.Rule
    priority: int = 0
    blocked: Optional[BlockedRole] = None


REGISTRY: dict[str, list[Lowering]] = {
    op: [Lowering("reference", lambda target, attrs: True, rule, priority=-1000)]
    for op, rule in qnn_ops.REFERENCE_RULES.items()
}


# graph rewrites that pay only with some targets' lowerings (e.g. a merged conv whose kernel skips zero
# taps): name -> (applies(target), module -> (module, rewrites made)), run before lowering
PREPASSES: dict[str, tuple[Callable[[Any], bool], Callable[[tvm.IRModule], tuple[tvm.IRModule, int]]]] = {}


def register_prepass(name: str, applies: Callable[[Any], bool],
                     rewrite: Callable[[tvm.IRModule], tuple[tvm.IRModule, int]]) -> None:
    PREPASSES[name] = (applies, rewrite)


def register(op: str, name: str, applies: Predicate, rule: qnn_ops.Rule, priority: int = 0,
             blocked: Optional[BlockedRole] = None) -> None:
    """Add a lowering for `op`; higher priority wins among those that apply."""
    entries = [e for e in REGISTRY.setdefault(op, []) if e.name != name]
    entries.append(Lowering(name, applies, rule, priority, blocked))
    REGISTRY[op] = sorted(entries, key=lambda e: -e.priority)


def select(op: str, target: Any, attrs: Mapping[str, Any], only_reference: bool = False) -> Lowering:
    if op not in REGISTRY:
        raise KeyError(f"no lowering registered for {op}")
    for entry in REGISTRY[op]:
        if only_reference and entry.name != "reference":
            continue
        if entry.applies(target, attrs):
            return entry
    raise KeyError(f"no lowering of {op} applies to this target")


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
        lowering = select(op, self.target, attrs, self.only_reference)
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
        lowering = select(op, self.target, attrs, self.only_reference)
        key = f"{op}:{lowering.name}"
        self.chosen[key] = self.chosen.get(key, 0) + 1
        blocked_in = any(layout.is_blocked_arg(a, p) for a, p in zip(args, func.params))
        if self._out_blocked or blocked_in:
            attrs["out_layout"] = "NCHW16c" if self._out_blocked else "NCHW"
            attrs["data_channels"] = int(func.params[0].ty.shape[1])  # blocked data pads channels to 16
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


_FAST_RULES_LOADED = False


def _load_fast_rules() -> None:
    """The kernels package registers its lowerings on first use (it imports TVM's schedule APIs)."""
    global _FAST_RULES_LOADED
    if not _FAST_RULES_LOADED:
        from ..kernels import rules

        rules.register()
        _FAST_RULES_LOADED = True


def legalize(mod: tvm.IRModule, target: Any = None, only_reference: bool = False) -> tuple[tvm.IRModule, dict[str, int]]:
    """Lower every qnn op call in `mod`. Returns the module and which lowering each op used."""
    rewrites: dict[str, int] = {}
    if target is not None and not only_reference:
        _load_fast_rules()
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
