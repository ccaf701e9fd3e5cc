"""Which bindings the quantize pass keeps float on purpose, and how float ops are named (issue 15).

Output heads. A tensor that leaves the graph (boxes, scores, masks, logits) is never requantized to
8 bits from a data-free range: its scale would come from synthetic inputs and the output would carry
at most 256 levels (a YOLOv8n's score tensor came out with 37 distinct values 8.8 apart, every class
score 0). `head_vars` walks back from the function's result through every op that is not a conv /
dense layer; those ops stay float, so a head ends either in a layer's int32 accumulator dequantized
with its exact scale (what the classifier already did) or in float ops on dequantized inputs. The
walk stops at a layer, at its bias add (`add(layer, const)`, folded into the accumulator) and at a
global average pool, which the pass already ends in float from its int32 sums (SqueezeNet's head:
conv -> ReLU -> global pool keeps the conv's accumulator).

Named float nodes (`--float-nodes`, onnxruntime's `nodes_to_exclude`): the frontend names every
binding after its ONNX node (`util.tvm_compat.relax_from_onnx_named`), so a node name selects its
bindings; `float_nodes_report` turns the pass's float bindings back into ONNX op types and node
names for the warning and the report."""
from __future__ import annotations

import difflib
from typing import Any, Iterable, Mapping, Sequence

import tvm
from tvm import relax

from ..errors import IsquantError
from ..util import tvm_compat


def _op(value: Any) -> str | None:
    return str(value.op.name) if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op) else None


def _global_pool(value: Any) -> bool:
    op = _op(value)
    if op == "relax.mean":
        axes = value.attrs.axis
        return axes is not None and sorted(int(a) for a in axes) == [2, 3]
    if op == "relax.nn.adaptive_avg_pool2d":
        size = value.attrs.output_size
        return size is None or all(int(v) == 1 for v in size)
    if op == "relax.nn.avg_pool2d":
        shape = tvm_compat.expr_shape(value.args[0])
        return ([int(v) for v in value.attrs.pool_size] == list(shape[2:])
                and not any(int(v) for v in value.attrs.padding) and not bool(value.attrs.ceil_mode))
    return False


def head_vars(func: relax.Function, layer_vars: Iterable[Any]) -> set[Any]:
    """Bindings between the last conv/dense layers (or graph inputs) and the function's result."""
    layers = set(layer_vars)
    producers = {b.var: b.value for b in tvm_compat.bindings(func)}
    out: set[Any] = set()
    frontier: list[Any] = [func.body.body]
    while frontier:
        expr = frontier.pop()
        if isinstance(expr, relax.Tuple):
            frontier.extend(expr.fields)
            continue
        if isinstance(expr, relax.TupleGetItem):
            frontier.append(expr.tuple_value)
            continue
        if not isinstance(expr, relax.Var) or expr in out or expr in layers or expr not in producers:
            continue
        value = producers[expr]
        if _op(value) == "relax.add" and any(a in layers for a in value.args if isinstance(a, relax.Var)) \
                and any(tvm_compat.is_const(a) for a in value.args):
            continue  # a layer's bias: part of its accumulator
        if _op(value) == "relax.nn.conv2d_transpose" and tvm_compat.is_const(value.args[1]):
            continue  # quantize/transpose.py makes it a qnn.conv2d: its accumulator dequantizes like a layer's
        if _global_pool(value):
            continue  # rule_global_pool dequantizes its int32 sums when the pool feeds the output
        out.add(expr)
        if isinstance(value, relax.Call):
            for a in value.args:
                frontier.extend(a.fields if isinstance(a, relax.Tuple) else [a])
        else:
            frontier.append(value)
    return out


def with_layers(onnx_nodes: Mapping[str, tuple[str, str]], layers: Iterable[Any]) -> dict[str, tuple[str, str]]:
    """`onnx_nodes` plus each conv / dense layer's binding: BatchNorm folding re-emits a conv under a
    fresh name, while the layer keeps its ONNX node name (`Layer.name`)."""
    op_of = {node: op for node, op in onnx_nodes.values()}
    out = dict(onnx_nodes)
    for layer in layers:
        if layer.name in op_of:
            out[tvm_compat.var_name(layer.var)] = (layer.name, op_of[layer.name])
    return out


def resolve_float_nodes(requested: Sequence[str], onnx_nodes: Mapping[str, tuple[str, str]], source: str) -> set[str]:
    """The binding names (`onnx_var_name`) of the requested ONNX nodes; an unknown name is an error
    listing the closest node names."""
    by_node: dict[str, set[str]] = {}
    for var, (node, _) in onnx_nodes.items():
        by_node.setdefault(node, set()).add(var)
    out: set[str] = set()
    for name in requested:
        if name in by_node:
            out |= by_node[name]
            continue
        close = difflib.get_close_matches(name, list(by_node), n=5, cutoff=0.5)
        hint = f"; close matches: {', '.join(close)}" if close else ""
        raise IsquantError(f"{source}: --float-nodes {name!r} is not a node of the model{hint}"
                           " (give ONNX node names as shown by Netron or onnx.load(...).graph.node[i].name)")
    return out


def float_nodes_report(fallback_vars: Sequence[tuple[str, str]], onnx_nodes: Mapping[str, tuple[str, str]]) \
        -> dict[str, dict[str, Any]]:
    """op type -> {"count": nodes, "nodes": [names]} for the float bindings; bindings with no ONNX node
    (torch imports, pass-made ops) are listed under their Relax op."""
    out: dict[str, dict[str, Any]] = {}
    for var, relax_op in fallback_vars:
        node, op_type = onnx_nodes.get(var, (None, relax_op))
        entry = out.setdefault(op_type, {"count": 0, "nodes": []})
        if node is None:
            entry["count"] += 1
        elif node not in entry["nodes"]:
            entry["nodes"].append(node)
            entry["count"] += 1
    return dict(sorted(out.items()))


def describe(report: Mapping[str, Mapping[str, Any]], shown: int = 3) -> str:
    """`HardSwish×30: /features/0/act/HardSwish, /features/1/..., ...; Sigmoid×2: ...`"""
    parts = []
    for op_type, entry in report.items():
        names = entry["nodes"][:shown] + (["..."] if len(entry["nodes"]) > shown else [])
        parts.append(f"{op_type}×{entry['count']}" + (f": {', '.join(names)}" if names else ""))
    return "; ".join(parts)
