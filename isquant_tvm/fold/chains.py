"""Channel links between the folded graph's layers, for cross-layer equalization (rounding/equalize.py).

A link is layer A's output reaching layer B's input through single-consumer edges and only ops that
commute with a positive per-channel scale: A's bias add, ReLU, clip(0, hi) (ReLU6; the equalizer
decides what it may do across a clip), zero padding without channel padding, max / average pooling,
the spatial mean and the (N, C, 1, 1) -> (N, C) reshape before a classifier. Anything else (hard-swish,
sigmoid, a residual add, a concat, a second consumer, the graph output) ends the walk: no link.

B must read the walked tensor as its data input. Which Bs can be rescaled (plain, depthwise, dense) is
the equalizer's decision (`equalize.linkable`). `rewrite_constants` swaps weight and bias constants in
place: the bindings keep their vars (same shapes), so layer ids, BatchNorm maps and range maps keyed
by var stay valid."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import tvm
from tvm import relax

from ..util import tvm_compat
from .layers import CONV, MATMUL, Layer

#: ops a per-channel positive scale passes through unchanged
PASSTHROUGH = ("relax.nn.max_pool2d", "relax.nn.avg_pool2d", "relax.nn.adaptive_avg_pool2d")


@dataclass
class GraphLink:
    a: str  # layer ids
    b: str
    act: str  # "identity" | "relu" | "clip"
    hi: float | None
    b_padded: bool
    through: tuple[str, ...] = ()  # op names walked (for the report)


def _op(value: Any) -> str | None:
    if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op):
        return str(value.op.name)
    return None


def _uses(func: relax.Function) -> dict[Any, int]:
    count = tvm_compat.count_uses(func)
    count[func.body.body] = count.get(func.body.body, 0) + 1  # the output is never an interior edge
    return count


def _users(func: relax.Function) -> dict[Any, relax.VarBinding]:
    """var -> the (last) binding whose call takes it; callers read it only for single-use vars."""
    user: dict[Any, relax.VarBinding] = {}
    for b in tvm_compat.bindings(func):
        if isinstance(b.value, relax.Call):
            for a in b.value.args:
                if isinstance(a, relax.Var):
                    user[a] = b
    return user


def bias_adds(func: relax.Function, layers: Sequence[Layer]) -> dict[str, tuple[Any, relax.Constant]]:
    """layer id -> (bias add var, bias constant) where the layer's only user adds a per-channel constant."""
    uses = _uses(func)
    user = _users(func)
    out = {}
    for layer in layers:
        if uses.get(layer.var, 0) != 1 or layer.var not in user:
            continue
        b = user[layer.var]
        if _op(b.value) != "relax.add":
            continue
        consts = [a for a in b.value.args if tvm_compat.is_const(a)]
        if len(consts) == 1 and int(np.prod(tvm_compat.expr_shape(consts[0]))) == layer.weight.shape[0]:
            out[layer.id] = (b.var, consts[0])
    return out


def find_links(func: relax.Function, layers: Sequence[Layer]) -> list[GraphLink]:
    """Every A -> B channel link of the folded `func`, in graph order of A."""
    uses = _uses(func)
    user = _users(func)
    by_var = {layer.var: layer for layer in layers}
    links = []
    for layer in layers:
        cur, act, hi, padded, biased, through = layer.var, "identity", None, False, False, []
        channels = layer.weight.shape[0]
        while uses.get(cur, 0) == 1 and cur in user:
            b = user[cur]
            value, op = b.value, _op(b.value)
            args = list(value.args) if isinstance(value, relax.Call) else []
            if b.var in by_var and args and args[0].same_as(cur):
                target = by_var[b.var]
                if target.kind == "conv2d":
                    padded = padded or any(int(p) for p in target.attrs.get("padding", []))
                links.append(GraphLink(layer.id, target.id, act, hi, padded, tuple(through)))
                break
            if op == "relax.add" and not biased and not through and act == "identity":
                consts = [a for a in args if tvm_compat.is_const(a)]
                if len(consts) != 1 or int(np.prod(tvm_compat.expr_shape(consts[0]))) != channels:
                    break
                biased = True
            elif op == "relax.nn.relu" and act == "identity":
                act = "relu"
            elif op == "relax.clip" and act == "identity":
                lo, top = float(args[1].value), float(args[2].value)
                if lo != 0.0:
                    break
                act, hi = "clip", top
            elif op in PASSTHROUGH:
                pass
            elif op == "relax.mean":
                axes = sorted(int(a) for a in value.attrs.axis) if value.attrs.axis is not None else []
                if axes != [2, 3]:
                    break
            elif op == "relax.reshape":
                src, dst = tvm_compat.expr_shape(args[0]), tvm_compat.expr_shape(b.var)
                if not (len(src) >= 2 and len(dst) >= 2 and src[1] == dst[1] == channels
                        and int(np.prod(src[2:])) == 1 and int(np.prod(dst[2:])) == 1):
                    break
            elif op == "relax.nn.pad":
                widths = [int(w) for w in value.attrs.pad_width]
                if any(widths[:4]) or float(value.attrs.pad_value) != 0.0:
                    break
                padded = True
            else:
                break
            through.append(op.removeprefix("relax."))
            cur = b.var
    return links


def layer_inputs(func: relax.Function, layers: Sequence[Layer]) -> dict[str, Any]:
    """layer id -> the var whose per-channel mean is the layer's input mean: its data input, walked back
    through ops that keep channel means (average pools, the spatial mean, the classifier reshape)."""
    producer = {b.var: b.value for b in tvm_compat.bindings(func)}
    out = {}
    for layer in layers:
        value = producer.get(layer.var)
        cur = value.args[0] if isinstance(value, relax.Call) else None
        while isinstance(cur, relax.Var) and _op(producer.get(cur)) in (
                "relax.mean", "relax.reshape", "relax.nn.avg_pool2d", "relax.nn.adaptive_avg_pool2d"):
            cur = producer[cur].args[0]
        if isinstance(cur, relax.Var):
            out[layer.id] = cur
    return out


def rewrite_constants(mod: tvm.IRModule, layers: Sequence[Layer], weights: Mapping[str, np.ndarray],
                      biases: Mapping[str, np.ndarray]) -> tvm.IRModule:
    """`mod` with the weight constants of `weights` (layer layout: conv OIHW, dense (O, K)) and the bias
    constants of `biases` replaced (same shapes and dtypes; vars kept)."""
    func = mod["main"]
    adds = bias_adds(func, layers)
    swap: dict[Any, np.ndarray] = {}
    producer = {b.var: b.value for b in tvm_compat.bindings(func)}
    for layer in layers:
        if layer.id in weights:
            const = producer[layer.var].args[1]
            w = np.asarray(weights[layer.id])
            w = w.T if layer.kind == "dense" else w
            swap[const] = w.reshape(tvm_compat.expr_shape(const)).astype(tvm_compat.expr_dtype(const))
        if layer.id in biases:
            if layer.id not in adds:
                raise ValueError(f"layer {layer.name} has no bias add to rewrite")
            const = adds[layer.id][1]
            swap[const] = np.asarray(biases[layer.id]).reshape(tvm_compat.expr_shape(const)).astype(
                tvm_compat.expr_dtype(const))
    if not swap:
        return mod

    pairs = [(const, relax.const(np.ascontiguousarray(array), str(array.dtype))) for const, array in swap.items()]

    def replace(arg: Any) -> Any:
        for const, new in pairs:
            if arg.same_as(const):
                return new
        return arg

    @relax.expr_functor.mutator
    class _Swap(relax.PyExprMutator):
        # PyExprMutator has no constant hook in 0.27: the bindings' calls take the constants directly
        def visit_call_(self, op: relax.Call) -> relax.Expr:  # noqa: N802 - TVM's visitor name
            call = super().visit_call_(op)
            args = [replace(a) if tvm_compat.is_const(a) else a for a in call.args]
            if all(a.same_as(b) for a, b in zip(args, call.args)):
                return call
            return relax.Call(call.op, args, call.attrs, call.ty_args)

    new = mod.shallow_copy() if hasattr(mod, "shallow_copy") else tvm.IRModule(dict(mod.functions_items()))
    new["main"] = _Swap().visit_expr(func)
    return new
