"""Element-wise nonlinearities on 8-bit inputs -> one qnn.lut (a 256-entry table per tensor or per channel).

The ONNX importer decomposes most activations into several Relax bindings (HardSwish arrives as
``x · clip(x + 3, 0, 6) / 6``: add, clip, divide, multiply; HardSigmoid as multiply, add, clip; SiLU as
``x · sigmoid(x)``; a torch GELU as erf arithmetic), and some as one op (sigmoid, tanh, gelu, leakyrelu,
prelu). Rather than one pattern per activation, this rule takes any *region*: a connected set of
element-wise float bindings that depend on one source tensor x only (constants aside) and leave it through
exactly one binding. Its output is a function f of x alone, so on an 8-bit x (256 levels) the integer
op is the table ``T[q] = round(f(q · s_in) / s_out)``: exact by construction (the float graph's own ops,
evaluated by the numpy reference on the 256 levels, give f) and one gather at run time. Constants that
vary along the channel axis (PReLU's slopes, a per-channel bias inside the region) make one table row
per channel.

Measured (x86 on this host, 1 thread, load average 13 on 2 cores, 3 × 30-run medians; `compile` then
`bench --num-threads 1` of a 112×112 MobileNetV3-like block: conv-BN-HardSwish ×3, SE gate with HardSigmoid,
residual): 0.24–0.26 ms with every activation a qnn.lut and the gate a qnn.mul, 0.44–0.56 ms before (16
float ops, each between a dequantize and a quantize), 0.60–0.69 ms for the float build.

Decisions:
- The output scale comes from the table itself: ``max |f(level)| / qmax`` (uint8 when f ≥ 0 on every
  level, e.g. sigmoid / hard-sigmoid), so a LUT output never clips and needs no activation range.
- A bias add on a conv / dense result, and ReLU / clip on it, are not region starts: they fold into the
  conv's requantize (quantize/rewrite.py) and the region roots at their result. A region made of
  ReLU / clip only is left to those rules too.
- A region that turns a conv / dense result into a graph output (a detector's sigmoid scores, through
  data movement / concat) stays float: there the conv dequantizes its int32 accumulator at full precision,
  where a LUT would first requantize it to 8 bits (256 distinct scores).
- Intermediate bindings of a region must be dataflow vars used only inside it; a region with two
  outputs, a constant with spatial extent, or an op without a numpy rule is left alone (float, reported).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tvm import relax

from ..reference import interpreter as reference
from ..util import tvm_compat
from . import rewrite
from .rewrite import QTensor, _op, _safe

# float element-wise ops a region may contain (each with a numpy rule in reference/interpreter.py)
LUT_OPS = frozenset({
    "relax.add", "relax.subtract", "relax.multiply", "relax.divide", "relax.maximum", "relax.minimum",
    "relax.power", "relax.clip", "relax.nn.relu", "relax.nn.leakyrelu", "relax.nn.prelu", "relax.nn.gelu",
    "relax.nn.gelu_tanh", "relax.nn.silu", "relax.sigmoid", "relax.tanh", "relax.exp", "relax.erf",
    "relax.negative", "relax.abs", "relax.sqrt",
})
# ops that, directly on a conv result, fold into its requantize (rule_add / rule_activation)
_EPILOGUE_OPS = frozenset({"relax.add", "relax.nn.relu", "relax.clip"})
LEVELS = 256


@dataclass(eq=False)
class Region:
    root: Any  # the source tensor x
    members: list[Any] = field(default_factory=list)  # binding vars, in binding order
    values: dict[Any, Any] = field(default_factory=dict)
    channels: int = 1  # table rows: 1, or the channel count when a constant varies along axis 1
    output: Any = None
    state: Any = None  # None: not tried; False: left to the ordinary rules; QTensor: the emitted LUT


_ABSORBED = object()  # the value of a region's inner binding: only the region reads it


def _const_channels(arg: Any, rank: int, channels: int) -> int | None:
    """1 for a scalar-like constant, `channels` for one varying along axis 1 only, None otherwise."""
    shape = list(tvm_compat.const_value(arg).shape)
    if len(shape) > rank:
        return None
    shape = [1] * (rank - len(shape)) + shape
    if any(d != 1 for i, d in enumerate(shape) if i != 1):
        return None
    return 1 if shape[1] == 1 else (channels if shape[1] == channels else None)


def find_regions(mutator: Any, func: relax.Function) -> dict[Any, Any]:
    """The LUT regions of `func`: {binding var: rule} for every member (the rewrite's binding finder)."""
    bindings = list(tvm_compat.bindings(func))
    values = {b.var: b.value for b in bindings}
    users: dict[Any, set[Any]] = {}
    for b in bindings:
        relax.analysis.post_order_visit(b.value, lambda e, v=b.var: users.setdefault(e, set()).add(v)
                                        if isinstance(e, relax.Var) else None)
    escaped: set[Any] = set()
    relax.analysis.post_order_visit(func.body.body, lambda e: escaped.add(e) if isinstance(e, relax.Var) else None)
    epilogue = set(mutator.layer_of)  # conv/dense results and their folded bias / ReLU / clip
    region_of: dict[Any, Region] = {}
    regions: list[Region] = []
    for b in bindings:
        op = _op(b.value)
        if op not in LUT_OPS or tvm_compat.expr_dtype(b.var) != "float32":
            continue
        shape = tvm_compat.expr_shape(b.var)
        var_args = [a for a in b.value.args if isinstance(a, relax.Var)]
        others = [a for a in b.value.args if not isinstance(a, relax.Var)]
        if not var_args or not all(tvm_compat.is_const(a) or tvm_compat.is_prim(a) for a in others):
            continue
        joined = {region_of[a] for a in var_args if a in region_of}
        sources = {a for a in var_args if a not in region_of}
        if len(joined) > 1 or len(sources) > 1:
            continue
        region = next(iter(joined)) if joined else None
        if region is not None and sources and not next(iter(sources)).same_as(region.root):
            continue
        if region is None:
            root = next(iter(sources))
            if root in epilogue and op in _EPILOGUE_OPS and _is_epilogue(b.value, shape):
                epilogue.add(b.var)  # a bias add / ReLU on a conv result: the conv's requantize takes it
                continue
            if tvm_compat.expr_shape(root) != shape or tvm_compat.expr_dtype(root) != "float32":
                continue
            region = Region(root)
            regions.append(region)
        if tvm_compat.expr_shape(b.var) != tvm_compat.expr_shape(region.root):
            continue
        rank = len(shape)
        rows = 1
        for a in others:
            if tvm_compat.is_const(a) and not (op == "relax.nn.prelu" and a.same_as(b.value.args[1])):
                c = _const_channels(a, rank, shape[1] if rank > 1 else 1)
                if c is None:
                    rows = None
                    break
                rows = max(rows, c)
        if op == "relax.nn.prelu" and rows is not None:
            slope = b.value.args[1]
            if (int(b.value.attrs.axis) % rank != 1 or not tvm_compat.is_const(slope)
                    or tvm_compat.const_value(slope).size not in (1, shape[1])):
                rows = None
            else:
                rows = max(rows, tvm_compat.const_value(slope).size)
        if rows is None or rank < 2:
            continue
        region.members.append(b.var)
        region.values[b.var] = b.value
        region.channels = max(region.channels, rows)
        region_of[b.var] = region
    heads = _reaches_output(bindings, func)
    kept_float = set(getattr(mutator, "heads", ()))  # bindings the rewrite keeps float whatever their rule
    out: dict[Any, Any] = {}
    for region in regions:
        members = set(region.members)
        outputs = [v for v in region.members if v in escaped or (users.get(v, set()) - members)]
        inner_ok = all(isinstance(v, relax.DataflowVar) for v in region.members if v not in outputs)
        if len(outputs) != 1 or not inner_ok or not outputs[0].same_as(region.members[-1]):
            continue
        if all(_op(region.values[v]) in ("relax.nn.relu", "relax.clip") for v in region.members):
            continue
        float_names = set(getattr(mutator, "float_vars", ()))  # --float-nodes
        if any(v in kept_float or tvm_compat.var_name(v) in float_names for v in region.members):
            continue  # partly float: its inner bindings must stay readable
        if outputs[0] in heads and region.root in epilogue:
            continue  # an output head on a conv result: float on the full-precision accumulator
        region.output = outputs[0]
        for v in region.members:
            out[v] = _region_rule(region)
    return out


def _reaches_output(bindings: list[Any], func: relax.Function) -> set[Any]:
    """Vars whose value reaches the function's result through data movement, concat and tuples only."""
    values = {b.var: b.value for b in bindings}
    out: set[Any] = set()
    frontier = [func.body.body]
    while frontier:
        expr = frontier.pop()
        if isinstance(expr, relax.Tuple):
            frontier.extend(expr.fields)
        elif isinstance(expr, relax.TupleGetItem):
            frontier.append(expr.tuple_value)
        elif isinstance(expr, relax.Var) and expr not in out:
            out.add(expr)
            value = values.get(expr)
            if isinstance(value, (relax.Var, relax.Tuple, relax.TupleGetItem)):
                frontier.append(value)
            elif _op(value) in rewrite.DATA_MOVEMENT | {"relax.concat", "relax.split"}:
                frontier.append(value.args[0])
    return out


def _is_epilogue(value: relax.Call, shape: tuple[int, ...]) -> bool:
    """ReLU / clip, or an add of a per-channel constant (a bias): what rewrite folds into a conv."""
    if _op(value) != "relax.add":
        return True
    consts = [a for a in value.args if tvm_compat.is_const(a)]
    return len(consts) == 1 and len(shape) > 1 and tvm_compat.const_value(consts[0]).size == shape[1]


def _eval(call: relax.Call, env: dict[Any, np.ndarray]) -> np.ndarray:
    name = _op(call)
    if name not in reference.OPS:
        raise reference.UnsupportedOp(f"the numpy reference has no rule for {name}")
    args = [env[a] if isinstance(a, relax.Var) else
            tvm_compat.const_value(a) if tvm_compat.is_const(a) else a.value for a in call.args]
    return np.asarray(reference.OPS[name](args, call.attrs, "float32"), np.float32)


def _levels(dtype: str) -> np.ndarray:
    return np.arange(-128, 128) if dtype == "int8" else np.arange(256)


def table_of(region: Region, x: QTensor) -> tuple[np.ndarray, float, str] | None:
    """(table (rows, 256), output scale, dtype) of `region` on the 8-bit input `x`; None when f is not
    finite on some level or an op has no numpy rule."""
    rank = len(tvm_compat.expr_shape(region.root))
    rows = region.channels
    axis = 0 if rank == 2 else 2  # the 256 levels along an axis no constant varies on
    shape = [1] * rank
    shape[1], shape[axis] = rows, LEVELS
    grid = (_levels(x.dtype).astype(np.float32) * np.float32(x.scale))
    grid_shape = [1] * rank
    grid_shape[axis] = LEVELS
    env: dict[Any, np.ndarray] = {region.root: np.broadcast_to(grid.reshape(grid_shape), shape)}
    try:
        with np.errstate(all="ignore"):
            for var in region.members:
                env[var] = _eval(region.values[var], env)
    except reference.UnsupportedOp:
        return None
    vals = np.broadcast_to(env[region.output], shape).astype(np.float64)
    vals = vals.T if rank == 2 else vals.reshape(rows, LEVELS) if rank == 3 else vals[0, :, :, 0]
    vals = vals.reshape(rows, LEVELS)
    if not np.all(np.isfinite(vals)):
        return None
    unsigned = bool(vals.min() >= 0)
    dtype = "uint8" if unsigned else "int8"
    qmin, qmax = (0, 255) if unsigned else (-128, 127)
    alpha = float(np.abs(vals).max())
    scale = float(np.float32(alpha / qmax)) if alpha > 0 else 1.0  # float32: what a QDQ file holds
    table = np.clip(np.rint(vals / scale), qmin, qmax).astype(dtype)
    return table, scale, dtype


def _region_rule(region: Region):
    def rule(self: Any, var: Any, value: Any, op: str, args: list[Any]) -> Any:
        if region.state is None:
            region.state = False  # a MissingRange below leaves the region to the ordinary rules
            x = self.quant_of(region.root)
            made = table_of(region, x) if x.dtype in ("int8", "uint8") else None
            if made is not None:
                table, scale, dtype = made
                attrs = {"out_dtype": dtype, "output_scale": scale}
                label = _safe(tvm_compat.var_name(region.output))
                expr = self.call_qnn("qnn.lut", [x.expr, relax.const(table, dtype)], attrs, label)
                region.state = QTensor(expr, scale, dtype)
                self._record(region.output, region.state, "lut exact", "lut")
        if region.state is False:
            fallback = rewrite.RULES.get(op)
            if fallback is None:
                return None
            return getattr(self, fallback)(var, value, op, args) if isinstance(fallback, str) else \
                fallback(self, var, value, op, args)
        return region.state if var.same_as(region.output) else _ABSORBED

    return rule


rewrite.register_finder(find_regions)
