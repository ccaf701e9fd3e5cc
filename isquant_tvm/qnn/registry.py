"""The lowering registry: which lowering turns each qnn call into integer Relax/TIR (one per decision).

REGISTRY maps a qnn op to its lowerings, highest priority first. A lowering applies to a call when
``applies(target, attrs)`` holds (the target and the op's attributes) and, if it has one,
``accepts(args, attrs, target)`` (the call's arguments: dtypes, constants, shapes, layout). The first
lowering that applies lowers the call and names itself in the report (``qnn.conv2d:x86_amx_blocked``).
Every op's reference rule (its function body, qnn/ops.py) is registered at priority -1000 and always
applies, so adding a kernel is one ``register(...)`` call and never changes the results.

It sits below the kernels (which register here) and the legalize pass (which selects from here), so
neither imports the other to share it. The layout roles a lowering gives channel-blocked activations
(PRODUCE / FOLLOW / CONSUME) are declared here for the same reason; legalize/layout.py plans with them."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence

import tvm
from tvm import relax

from . import ops

# the roles of a qnn call for channel-blocked (NCHW16c) activations (legalize/layout.py)
PRODUCE, FOLLOW, CONSUME = "produce", "follow", "consume"

Predicate = Callable[[Any, Mapping[str, Any]], bool]
# (call args, attrs, target) -> whether this lowering takes the call's arguments
Accepts = Callable[[Sequence[relax.Expr], Mapping[str, Any], Any], bool]
# (call args, attrs, target) -> PRODUCE / FOLLOW / CONSUME, or None (NCHW only)
BlockedRole = Callable[[Sequence[relax.Expr], Mapping[str, Any], Any], Optional[str]]
Prepass = Callable[[tvm.IRModule], tuple[tvm.IRModule, int]]


@dataclass(frozen=True)
class Lowering:
    name: str
    applies: Predicate
    rule: ops.Rule
    priority: int = 0
    blocked: Optional[BlockedRole] = None
    accepts: Optional[Accepts] = None

    def takes(self, target: Any, attrs: Mapping[str, Any], args: Optional[Sequence[relax.Expr]]) -> bool:
        if not self.applies(target, attrs):
            return False
        return self.accepts is None or args is None or self.accepts(args, attrs, target)


REFERENCE = "reference"
REGISTRY: dict[str, list[Lowering]] = {
    op: [Lowering(REFERENCE, lambda target, attrs: True, rule, priority=-1000)]
    for op, rule in ops.REFERENCE_RULES.items()
}

# graph rewrites that pay only with some targets' lowerings (e.g. a merged conv whose kernel skips zero
# taps): name -> (applies(target), module -> (module, rewrites made)), run before lowering
PREPASSES: dict[str, tuple[Callable[[Any], bool], Prepass]] = {}


def register_prepass(name: str, applies: Callable[[Any], bool], rewrite: Prepass) -> None:
    PREPASSES[name] = (applies, rewrite)


def register(op: str, name: str, applies: Predicate, rule: ops.Rule, priority: int = 0,
             blocked: Optional[BlockedRole] = None, accepts: Optional[Accepts] = None) -> None:
    """Add (or replace, by name) a lowering for `op`; higher priority wins among those that apply."""
    entries = [e for e in REGISTRY.setdefault(op, []) if e.name != name]
    entries.append(Lowering(name, applies, rule, priority, blocked, accepts))
    REGISTRY[op] = sorted(entries, key=lambda e: -e.priority)


def unregister(op: str, name: str) -> None:
    REGISTRY[op] = [e for e in REGISTRY.get(op, []) if e.name != name]


def select(op: str, target: Any, attrs: Mapping[str, Any], only_reference: bool = False,
           args: Optional[Sequence[relax.Expr]] = None) -> Lowering:
    """The lowering of one call: the first (highest priority) that applies to target, attrs and args."""
    if op not in REGISTRY:
        raise KeyError(f"no lowering registered for {op}")
    for entry in REGISTRY[op]:
        if only_reference and entry.name != REFERENCE:
            continue
        if entry.takes(target, attrs, args):
            return entry
    raise KeyError(f"no lowering of {op} applies to this target")
