"""Which int8 activations stay channel-blocked (NCHW16c) between kernels: a plan for legalize.

The conv kernels compute in NCHW[16]c. Handing NCHW from one to the next costs twice per layer: the
epilogue scatters each 16-channel register tile as single bytes, and the next kernel gathers its input
back into blocks. Measured on ResNet-18's convs at 1 thread (scripts/bench_kernels.py --blocked): 7.98 ms
with NCHW outputs, about 6.7 ms with blocked ones.

Each qnn call gets a role from the lowering legalize will pick (``Lowering.blocked``, qnn/registry.py):

* ``PRODUCE`` (conv): takes NCHW or blocked input, can write a blocked output;
* ``FOLLOW`` (add, requantize, max pool; ``R.concat`` of channel counts that are multiples of 16): its
  output is blocked exactly when all its activation inputs are;
* ``CONSUME`` (global average pool): takes either, writes an ordinary tensor;
* ``None``: needs NCHW.

A tensor is blocked when its producer is ``PRODUCE`` or ``FOLLOW`` and every user accepts it: no user
needs NCHW, no ``FOLLOW`` user has an NCHW output, and it is not the function's result. Removing one
tensor can force others out, so the rule runs to a fixed point. Blocked tensors pad channels to a
multiple of 16; kernels ignore the padded lanes (their weights are zero), elementwise ops carry them.
"""
from __future__ import annotations

from typing import Callable, Optional

import tvm
from tvm import relax

from ..qnn.registry import CONSUME, FOLLOW, PRODUCE  # noqa: F401 - the roles, by their planner

BLOCK = 16

RoleOf = Callable[[relax.Call], Optional[str]]


def _var_args(call: relax.Call) -> list[relax.Var]:
    out = []
    for a in call.args:
        if isinstance(a, relax.Var):
            out.append(a)
        elif isinstance(a, relax.Tuple):
            out.extend(f for f in a.fields if isinstance(f, relax.Var))
    return out


def concat_role(call: relax.Call) -> Optional[str]:
    """R.concat along channels keeps blocks intact when every part has a multiple of 16 channels."""
    if not (isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.concat"):
        return None
    if int(call.attrs.axis) != 1 or not isinstance(call.args[0], relax.Tuple):
        return None
    for f in call.args[0].fields:
        shape = getattr(f.ty, "shape", None)
        if shape is None or len(shape) != 4 or int(shape[1]) % BLOCK:
            return None
    return FOLLOW


def plan(main: relax.Function, role_of: RoleOf) -> set[relax.Var]:
    """The binding variables of `main` to keep in NCHW16c."""
    bindings = [b for blk in main.body.blocks for b in blk.bindings if isinstance(b, relax.VarBinding)]
    role: dict[relax.Var, Optional[str]] = {}
    inputs: dict[relax.Var, list[relax.Var]] = {}
    users: dict[relax.Var, list[relax.Var]] = {}
    escaped: set[relax.Var] = set(relax.analysis.free_vars(main.body.body))
    for b in bindings:
        value = b.value
        if isinstance(value, relax.Call):
            role[b.var] = concat_role(value) or role_of(value)
            args = _var_args(value)
            inputs[b.var] = args
            for a in args:
                users.setdefault(a, []).append(b.var)
            nested = set(relax.analysis.free_vars(value)) - set(args)
            escaped |= nested  # a variable inside some other expression of the call: keep it plain
        else:
            role[b.var] = None
            escaped |= set(relax.analysis.free_vars(value))
    blocked = {v for v, r in role.items() if r in (PRODUCE, FOLLOW) and v not in escaped}
    changed = True
    while changed:
        changed = False
        for v in list(blocked):
            ok = not (role[v] == FOLLOW and not all(a in blocked for a in inputs[v]))
            for u in users.get(v, []):
                ru = role.get(u)
                if ru is None or (ru == FOLLOW and u not in blocked):
                    ok = False
            if not ok:
                blocked.discard(v)
                changed = True
    return blocked


def is_blocked_arg(arg: relax.Expr, param: relax.Expr) -> bool:
    """An argument arrives blocked when it has one more axis than the qnn function's parameter."""
    a, p = getattr(arg.ty, "shape", None), getattr(param.ty, "shape", None)
    return a is not None and p is not None and len(a) == len(p) + 1
