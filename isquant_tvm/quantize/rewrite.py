"""The quantize pass: a folded float Relax module + per-layer integer weights + activation ranges
-> a qnn-level integer module (see qnn_ops.py for the ops and their arithmetic).

Walks `main` once in binding order (a PyExprMutator keeps per-layer state; `rewrite_call` would call
a rewriter several times per match). conv/dense results stay *pending* accumulators while a bias
add and a ReLU/ReLU6 follow with no other user, so they fold into one requantize with bounds;
residual adds become qnn.add, pools and data movement run on integers, and anything else stays
float between a dequantize and a quantize, counted in the report.

Dispatch is one table, RULES: Relax op name -> rule (a function of the mutator, the binding's var and
value, the op and its arguments) that returns the integer value of the binding, or None to keep it
float. Conv/dense layers are matched by binding (`layers.py` ids), before the table. An op with no rule,
or whose rule returns None, goes to the explicit default, `keep_float`: the op runs in float between a
dequantize and a quantize and is counted in the report's `fallbacks` (with `fallback_reasons` when a
rule declined for a reason, e.g. a tensor without an activation range). Any other exception inside a
rule is a bug and is raised as a RuleError naming the op and the tensor, never a silent float op.

Decisions:
- The model input is quantized once to int8 (zero point 0) at the start, the output dequantized at
  the end. The first conv therefore runs int8 x int8 like the others (its 3 channels are cheap).
- The classifier (a conv/dense whose result leaves the graph without a ReLU) keeps its int32
  accumulator and dequantizes it straight to float logits: no 8-bit clipping of logits.
- Tensors after ReLU (or seen non-negative) are uint8, all others int8; zero point is always 0.
- Every activation and weight scale is a float32 value (`_f32`), chosen before any multiplier or bias is
  derived from it: ONNX stores scales as float32, so our own QDQ export (tools/qdq_full.py) writes exactly
  the scales this graph used, and compiling that export forms the same multipliers bit for bit. Cost on
  builtin:resnet20-cifar: the scales move by < 6e-8 relative; see tools/qdq_full.py for what changes."""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Collection, Mapping

import numpy as np
import tvm
from tvm import relax

from ..reference import fixed_point
from ..util import tvm_compat
from ..fold.layers import Layer
from ..ranges.activation import ActivationRange
from ..qnn import ops as qnn_ops
from . import float_regions

log = logging.getLogger(__name__)


@dataclass
class QTensor:
    expr: relax.Expr
    scale: float
    dtype: str  # "int8" | "uint8" (| "int32": pooled sums)
    bound: int | None = None  # largest |value| an int32 tensor can hold (lets kernels accumulate in int32)

    @property
    def qmax(self) -> int:
        return 255 if self.dtype == "uint8" else 127


@dataclass
class PendingAcc:
    """conv/dense int32 accumulator (+ bias) (+ ReLU/clip bounds), not yet requantized."""

    layer: Layer
    x: QTensor
    q: np.ndarray
    w_scale: np.ndarray  # () or (O,)
    var: relax.Var
    bias: np.ndarray | None = None
    lo: float | None = None
    hi: float | None = None


@dataclass
class PendingAdd:
    a: QTensor
    b: QTensor
    var: relax.Var
    lo: float | None = None
    hi: float | None = None


@dataclass
class QuantizeResult:
    mod: tvm.IRModule
    tensors: list[dict[str, Any]] = field(default_factory=list)  # every quantized tensor: scale, dtype, rule
    fallbacks: dict[str, int] = field(default_factory=dict)  # float ops left in the graph
    fallback_reasons: dict[str, str] = field(default_factory=dict)  # op -> why a rule kept it float
    fallback_vars: list[tuple[str, str]] = field(default_factory=list)  # (binding name, op) of each float op
    tensor_map: list[tuple[Any, Any, float]] = field(default_factory=list)  # (float var, int var, scale)


def _count_uses(func: relax.Function) -> dict[Any, int]:
    return tvm_compat.count_uses(func)


def _feeds_output(func: relax.Function) -> set[Any]:
    """Vars whose value reaches the function output through data movement only."""
    producers = {b.var: b.value for b in tvm_compat.bindings(func)}
    out: set[Any] = set()
    frontier = [func.body.body]
    while frontier:
        expr = frontier.pop()
        if isinstance(expr, relax.Tuple):
            frontier.extend(expr.fields)
            continue
        if not isinstance(expr, relax.Var) or expr in out:
            continue
        out.add(expr)
        value = producers.get(expr)
        op = _op(value)
        if isinstance(value, relax.Var):
            frontier.append(value)
        elif op in DATA_MOVEMENT or op in ("relax.nn.relu", "relax.clip", "relax.mean", "relax.nn.adaptive_avg_pool2d",
                                           "relax.nn.avg_pool2d"):
            frontier.append(value.args[0])
        elif op == "relax.add":
            frontier.extend(a for a in value.args if not tvm_compat.is_const(a))
    return out


def _pools_feeding_classifier(func: relax.Function, layer_of: Mapping[Any, Layer], feeds_output: set[Any],
                              uses: Mapping[Any, int]) -> set[Any]:
    """Global pools whose only consumer, through data movement, is a dense layer whose result feeds the output."""
    consumer: dict[Any, Any] = {}
    values: dict[Any, Any] = {}
    for b in tvm_compat.bindings(func):
        values[b.var] = b.value
        if isinstance(b.value, relax.Call):
            for a in b.value.args:
                if isinstance(a, relax.Var):
                    consumer[a] = b.var
    found = set()
    for var, value in values.items():
        if _op(value) not in ("relax.mean", "relax.nn.adaptive_avg_pool2d", "relax.nn.avg_pool2d"):
            continue
        cur = var
        while uses.get(cur, 0) == 1 and cur in consumer:
            nxt = consumer[cur]
            if nxt in layer_of and layer_of[nxt].kind == "dense":
                if _classifier_result(nxt, values, uses, feeds_output):
                    found.add(var)
                break
            if _op(values[nxt]) not in DATA_MOVEMENT:
                break
            cur = nxt
    return found


def _classifier_result(dense_var: Any, values: Mapping[Any, Any], uses: Mapping[Any, int], feeds_output: set[Any]) -> bool:
    """The dense output (optionally + bias) reaches the graph output with no activation in between."""
    if dense_var in feeds_output and uses.get(dense_var, 0) == 1:
        return True
    for var, value in values.items():
        if _op(value) == "relax.add" and any(a.same_as(dense_var) for a in value.args if isinstance(a, relax.Var)):
            return var in feeds_output
    return False


def _op(call: Any) -> str | None:
    if isinstance(call, relax.Call) and isinstance(call.op, tvm.ir.Op):
        return str(call.op.name)
    return None


def _f32(value: float) -> float:
    """A scale rounded to the nearest float32 (kept as a Python float): what an ONNX file can hold."""
    return float(np.float32(value))


def _safe(name: str) -> str:
    return re.sub(r"[^0-9A-Za-z_]", "_", name)


class MissingRange(LookupError):
    """A tensor a rule needs has no activation range (e.g. an integer side input): the op stays float."""


class RuleError(RuntimeError):
    """A quantize rule failed on an op it claimed: a bug, reported with the op and the tensor."""


DATA_MOVEMENT = {"relax.reshape", "relax.flatten", "relax.squeeze", "relax.permute_dims", "relax.strided_slice",
                 "relax.expand_dims"}


@relax.expr_functor.mutator
class QuantizeMutator(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule, layers: list[Layer], weights: Mapping[str, Any],
                 ranges: Mapping[Any, ActivationRange], input_range: float | None = None,
                 float_vars: Collection[str] = ()) -> None:
        """`float_vars`: binding names kept float whatever their rule (--float-nodes)."""
        super().__init__(mod)
        self.float_vars = set(float_vars)
        self.mod_ = mod
        self.layer_of = {layer.var: layer for layer in layers}
        self.weights = weights
        self.ranges = ranges
        self.input_range = input_range
        self.values: dict[Any, Any] = {}
        self.uses: dict[Any, int] = {}
        self.result = QuantizeResult(mod)
        self._names: set[str] = set()

    # --- driver -------------------------------------------------------------------------------
    def transform(self) -> QuantizeResult:
        gv = self.mod_.get_global_var("main")
        func = self.mod_["main"]
        self.uses = _count_uses(func)
        self.feeds_output = _feeds_output(func)
        self.pool_to_classifier = _pools_feeding_classifier(func, self.layer_of, self.feeds_output, self.uses)
        self.heads = float_regions.head_vars(func, self.layer_of)
        self.binding_rules: dict[Any, Rule] = {}
        for finder in BINDING_FINDERS:
            self.binding_rules.update(finder(self, func))
        new_func = self.visit_expr(func)
        self.builder_.update_func(gv, new_func)
        mod = self.builder_.get()
        mod = relax.transform.DeadCodeElimination(["main"])(mod)
        self.result.mod = mod
        return self.result

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        value = self._binding(binding.var, binding.value)
        self.values[binding.var] = value
        if not isinstance(binding.var, relax.DataflowVar):
            out = self.float_of_value(value, binding.var)
            new_var = self.builder_.emit_output(out, name_hint=tvm_compat.var_name(binding.var))
            self.set_var_remap(binding.var, new_var)

    # --- values -------------------------------------------------------------------------------
    def _range(self, var: Any) -> ActivationRange:
        if var not in self.ranges:
            raise MissingRange(f"no activation range for {tvm_compat.var_name(var)}")
        return self.ranges[var]

    def _unsigned_hint(self, var: Any) -> bool:
        r = self.ranges.get(var)
        return bool(r is not None and getattr(r, "unsigned", False))

    def call_qnn(self, op: str, args: list[relax.Expr], attrs: dict[str, Any], label: str) -> relax.Var:
        func = qnn_ops.make_function(op, args, attrs)
        base = _safe(f"{op.replace('.', '_')}_{label}")
        name, i = base, 1
        while name in self._names:
            name, i = f"{base}_{i}", i + 1
        self._names.add(name)
        gv = self.builder_.add_func(func, name)
        return self.builder_.emit(relax.Call(gv, args))

    def expr_of(self, arg: Any) -> relax.Expr:
        """An argument that is not a tracked activation (constant, shape, param) in the new function."""
        return self.visit_expr(arg)

    def float_of(self, arg: Any) -> relax.Expr:
        if isinstance(arg, relax.Var) and arg in self.values:
            return self.float_of_value(self.values[arg], arg)
        return self.expr_of(arg)

    def float_of_value(self, value: Any, var: Any) -> relax.Expr:
        if isinstance(value, PendingAcc) and value.lo is None and value.hi is None:
            return self._emit_acc(value, float_out=True)
        if isinstance(value, (PendingAcc, PendingAdd)):
            value = self.materialize(var)
        if isinstance(value, QTensor):
            return self.call_qnn("qnn.dequantize", [value.expr], {"scale": value.scale}, "out")
        return value

    def quant_of(self, arg: Any) -> QTensor:
        if isinstance(arg, relax.Var) and arg in self.values:
            value = self.values[arg]
            if isinstance(value, QTensor):
                return value
            if isinstance(value, (PendingAcc, PendingAdd)):
                return self.materialize(arg)
            float_expr = value
        else:
            float_expr = self.expr_of(arg)
        rng = self.ranges.get(arg)
        if isinstance(arg, relax.Var) and any(arg.same_as(p) for p in self.mod_["main"].params) and self.input_range:
            alpha, rule, unsigned = self.input_range, "input range", False
        elif rng is None:
            raise MissingRange(f"no activation range for {tvm_compat.var_name(arg)}")
        else:
            alpha, rule, unsigned = rng.alpha, rng.rule, self._unsigned_hint(arg)
        dtype = "uint8" if unsigned else "int8"
        scale = _f32(alpha / (255 if unsigned else 127))
        expr = self.call_qnn("qnn.quantize", [float_expr], {"scale": scale, "out_dtype": dtype},
                             _safe(tvm_compat.var_name(arg)))
        q = QTensor(expr, scale, dtype)
        self._record(arg, q, rule)
        if isinstance(arg, relax.Var):
            self.values[arg] = q
        return q

    def _record(self, var: Any, q: QTensor, rule: str, layer: str = "") -> None:
        self.result.tensors.append({"tensor": tvm_compat.var_name(var), "layer": layer, "scale": q.scale,
                                    "dtype": q.dtype, "alpha": q.scale * q.qmax, "rule": rule})
        self.result.tensor_map.append((var, q.expr, q.scale))

    def _out_format(self, var: Any, lo: float | None, hi: float | None) -> tuple[float, str, int, int, str]:
        rng = self._range(var)
        alpha = rng.alpha if hi is None else min(rng.alpha, hi)
        unsigned = (lo is not None and lo >= 0) or self._unsigned_hint(var)
        dtype = "uint8" if unsigned else "int8"
        qmin, qmax = (0, 255) if unsigned else (-128, 127)
        scale = _f32(alpha / qmax)
        out_min = qmin if lo is None else max(qmin, int(np.ceil(lo / scale - 1e-9)))
        return scale, dtype, out_min, qmax, rng.rule

    def materialize(self, var: Any) -> QTensor:
        value = self.values[var]
        if isinstance(value, PendingAcc):
            q = self._emit_acc(value, float_out=False)
        else:
            q = self._emit_add(value)
        self.values[var] = q
        return q

    def _emit_acc(self, p: PendingAcc, float_out: bool, int32_out: bool = False,
                  out_format: tuple[float, str] | None = None) -> Any:
        layer = p.layer
        out_channels = p.q.shape[0]
        s_acc = (p.x.scale * np.broadcast_to(p.w_scale.astype(np.float64), (out_channels,)))
        bias = p.bias if p.bias is not None else np.zeros(out_channels)
        wide = p.x.dtype == "int32"  # pooled int32 features: the classifier accumulates in int64
        bias_int = (np.rint(bias / s_acc).astype(np.int64) if wide
                    else np.clip(np.rint(bias / s_acc), -(2**31), 2**31 - 1).astype(np.int32))
        if layer.kind == "conv2d":
            op = "qnn.conv2d"
            attrs: dict[str, Any] = {k: layer.attrs[k] for k in ("strides", "padding", "dilation", "groups")}
        else:
            op, attrs = "qnn.dense", {}
        args: list[relax.Expr] = [p.x.expr, qnn_ops.const(p.q.astype(np.int8)), qnn_ops.const(bias_int)]
        attrs.update({"layer": layer.name, "input_scale": p.x.scale,
                      "weight_scale": [float(s) for s in np.atleast_1d(p.w_scale)]})
        if p.x.bound is not None:
            attrs["data_bound"] = int(p.x.bound)
        if float_out:
            attrs.update({"out_dtype": "float32", "out_min": 0, "out_max": 0})
            args.append(qnn_ops.const(s_acc.astype(np.float32)))
            return self.call_qnn(op, args, attrs, layer.name)
        if int32_out:
            lo = -(2**31) if p.lo is None else int(np.ceil(p.lo / s_acc.max() - 1e-9))
            hi = 2**31 - 1 if p.hi is None else int(np.floor(p.hi / s_acc.max() + 1e-9))
            attrs.update({"out_dtype": "int32", "out_min": lo, "out_max": hi})
            return self.call_qnn(op, args, attrs, layer.name), s_acc
        scale, dtype, out_min, out_max, rule = self._out_format(p.var, p.lo, p.hi)
        if out_format is not None:  # a scale chosen for the consumer (a concat of several parts)
            scale, dtype = out_format
            out_min, out_max = fixed_point.dtype_bounds(dtype)
            if p.lo is not None:
                out_min = max(out_min, int(np.ceil(p.lo / scale - 1e-9)))
            if p.hi is not None:
                out_max = min(out_max, int(np.floor(p.hi / scale + 1e-9)))
        m, n = fixed_point.quantize_multiplier(s_acc / scale)
        attrs.update({"out_dtype": dtype, "out_min": out_min, "out_max": out_max, "output_scale": scale})
        args += [qnn_ops.const(m), qnn_ops.const(n)]
        q = QTensor(self.call_qnn(op, args, attrs, layer.name), scale, dtype)
        self._record(p.var, q, rule, layer.name)
        return q

    def _classifier_pool(self, p: PendingAcc, value: Any, op: str, var: Any) -> relax.Expr:
        """conv (+bias, +ReLU) -> global pool -> output (SqueezeNet's classifier): the accumulator stays
        int32 (ReLU clamps in accumulator units) and the pool dequantizes the int32 sum. Requantizing
        class scores to 8 bits with a data-free range would clip exactly the winning class."""
        acc, s_acc = self._emit_acc(p, float_out=False, int32_out=True)
        shape = tvm_compat.expr_shape(value.args[0])
        keepdims = op != "relax.mean" or bool(value.attrs.keepdims)
        dq = (s_acc / (shape[2] * shape[3])).astype(np.float32)
        return self.call_qnn("qnn.global_avg_pool2d", [acc, qnn_ops.const(dq)],
                             {"keepdims": keepdims, "out_dtype": "float32"}, _safe(tvm_compat.var_name(var)))

    def _emit_add(self, p: PendingAdd) -> QTensor:
        scale, dtype, out_min, out_max, rule = self._out_format(p.var, p.lo, p.hi)
        ra, rb = p.a.scale / scale, p.b.scale / scale
        _, n = fixed_point.quantize_multiplier(max(ra, rb))
        shift = int(n)
        ma, mb = np.int64(np.rint(ra * 2.0**shift)), np.int64(np.rint(rb * 2.0**shift))
        attrs = {"shift": shift, "out_dtype": dtype, "out_min": out_min, "out_max": out_max, "output_scale": scale}
        expr = self.call_qnn("qnn.add", [p.a.expr, p.b.expr, relax.const(ma, "int64"), relax.const(mb, "int64")],
                             attrs, _safe(tvm_compat.var_name(p.var)))
        q = QTensor(expr, scale, dtype)
        self._record(p.var, q, rule, "add")
        return q

    def requantize_to(self, q: QTensor, scale: float, dtype: str, label: str) -> QTensor:
        if q.dtype == dtype and abs(q.scale - scale) <= 1e-12 * scale:
            return q
        m, n = fixed_point.quantize_multiplier(q.scale / scale)
        lo, hi = fixed_point.dtype_bounds(dtype)
        attrs = {"shift": int(n), "out_dtype": dtype, "out_min": lo, "out_max": hi}
        expr = self.call_qnn("qnn.requantize", [q.expr, relax.const(np.int64(m), "int64")], attrs, label)
        return QTensor(expr, scale, dtype)

    # --- per-op rules -------------------------------------------------------------------------
    def _binding(self, var: Any, value: Any) -> Any:
        op = _op(value)
        if var in self.heads or tvm_compat.var_name(var) in self.float_vars:
            return self.keep_float(value, op, var)
        try:
            handled = self._quantized(var, value, op)
        except MissingRange as err:  # no range for a tensor (e.g. an integer side input): keep float
            log.info("%s stays float: %s", op, err)
            if op is not None:
                self.result.fallback_reasons[op.removeprefix("relax.")] = str(err)
            handled = None
        except Exception as err:
            raise RuleError(f"quantize rule for {op} (tensor {tvm_compat.var_name(var)}) failed:"
                            f" {type(err).__name__}: {err}") from err
        if handled is not None:
            return handled
        return self.keep_float(value, op, var)

    def _pending(self, arg: Any) -> Any:
        if isinstance(arg, relax.Var) and self.uses.get(arg, 0) == 1:
            v = self.values.get(arg)
            if isinstance(v, (PendingAcc, PendingAdd)):
                return v
        return None

    def _quantized(self, var: Any, value: Any, op: str | None) -> Any:
        rule = self.binding_rules.get(var)
        if op is None and rule is None:
            return None
        args = list(value.args) if isinstance(value, relax.Call) else []
        if var in self.layer_of:
            return self.rule_layer(var, value, op, args)
        rule = rule or RULES.get(op)
        if rule is None:
            return None
        if isinstance(rule, str):
            return getattr(self, rule)(var, value, op, args)
        return rule(self, var, value, op, args)

    def rule_layer(self, var: Any, value: Any, op: str, args: list[Any]) -> Any:
        """conv2d / dense (matmul) of a layer: a pending accumulator, requantized once its epilogue is known."""
        layer = self.layer_of[var]
        qw = self.weights[layer.id]
        q = qw.q if layer.kind == "conv2d" else qw.q.reshape(layer.weight.shape)
        # the integers were rounded with the float64 scale; the float32 scale only dequantizes them (< 6e-8 apart)
        w_scale = np.asarray(qw.scale, np.float32).astype(np.float64)
        return PendingAcc(layer, self.quant_of(args[0]), q, w_scale, var)

    def rule_add(self, var: Any, value: Any, op: str, args: list[Any]) -> Any:
        """A bias add folds into a pending accumulator; a residual add becomes a pending qnn.add."""
        a, b = args
        for acc, const in ((a, b), (b, a)):
            p = self._pending(acc)
            if (isinstance(p, PendingAcc) and p.bias is None and p.lo is None and tvm_compat.is_const(const)
                    and const.value.numpy().size == p.q.shape[0]):
                p.bias = tvm_compat.const_value(const).reshape(-1).astype(np.float64)
                p.var = var
                return p
        if not tvm_compat.is_const(a) and not tvm_compat.is_const(b) and var in self.ranges:
            return PendingAdd(self.quant_of(a), self.quant_of(b), var)
        return None

    def rule_activation(self, var: Any, value: Any, op: str, args: list[Any]) -> Any:
        """ReLU / clip (ReLU6) after a pending result: its requantize bounds."""
        lo, hi = (0.0, None) if op == "relax.nn.relu" else (float(args[1].value), float(args[2].value))
        p = self._pending(args[0])
        if p is not None:
            p.lo = lo if p.lo is None else max(p.lo, lo)
            p.hi = hi if p.hi is None else (p.hi if hi is None else min(p.hi, hi))
            p.var = var
            return p
        return None

    def rule_max_pool2d(self, var: Any, value: Any, op: str, args: list[Any]) -> Any:
        x = self.quant_of(args[0])
        a = value.attrs
        attrs = {"pool_size": [int(v) for v in a.pool_size], "strides": [int(v) for v in a.strides],
                 "padding": [int(v) for v in a.padding], "dilation": [int(v) for v in a.dilation],
                 "ceil_mode": bool(a.ceil_mode)}
        return QTensor(self.call_qnn("qnn.max_pool2d", [x.expr], attrs, _safe(tvm_compat.var_name(var))),
                       x.scale, x.dtype)

    def rule_global_pool(self, var: Any, value: Any, op: str, args: list[Any]) -> Any:
        """mean over H, W / adaptive_avg_pool2d to 1x1 / a whole-map avg_pool2d: qnn.global_avg_pool2d."""
        if not self._is_global_pool(value, op):
            return None
        p = self._pending(args[0])
        if var in self.feeds_output and isinstance(p, PendingAcc) and p.layer.kind == "conv2d":
            return self._classifier_pool(p, value, op, var)
        x = self.quant_of(args[0])
        shape = tvm_compat.expr_shape(args[0])
        keepdims = op != "relax.mean" or bool(value.attrs.keepdims)
        if var in self.pool_to_classifier:
            # Pooled features feeding only the classifier: keep the int32 sums (scale s_x/HW);
            # the classifier multiplies them in int64. Avoids an 8-bit range nobody can see data-free.
            attrs = {"keepdims": keepdims, "out_dtype": "int32"}
            expr = self.call_qnn("qnn.global_avg_pool2d", [x.expr], attrs, _safe(tvm_compat.var_name(var)))
            return QTensor(expr, x.scale / (shape[2] * shape[3]), "int32",
                           bound=(x.qmax if x.dtype == "uint8" else 128) * shape[2] * shape[3])
        if var in self.feeds_output:
            # Pooled logits leave the graph: dequantize the int32 sum, no 8-bit clipping.
            dq = np.full(shape[1], x.scale / (shape[2] * shape[3]), np.float32)
            attrs = {"keepdims": keepdims, "out_dtype": "float32"}
            return self.call_qnn("qnn.global_avg_pool2d", [x.expr, qnn_ops.const(dq)], attrs,
                                 _safe(tvm_compat.var_name(var)))
        scale, dtype, out_min, out_max, rule = self._out_format(var, 0.0 if x.dtype == "uint8" else None, None)
        m, n = fixed_point.quantize_multiplier(x.scale / (shape[2] * shape[3] * scale))
        attrs = {"shift": int(n), "keepdims": keepdims, "out_dtype": dtype, "out_min": out_min, "out_max": out_max,
                 "output_scale": scale}
        q = QTensor(self.call_qnn("qnn.global_avg_pool2d", [x.expr, relax.const(np.int64(m), "int64")], attrs,
                                  _safe(tvm_compat.var_name(var))), scale, dtype)
        self._record(var, q, rule, "global_avg_pool")
        return q

    def rule_data_movement(self, var: Any, value: Any, op: str, args: list[Any]) -> Any:
        """reshape / flatten / ... and zero constant padding: the same op on the integers, same scale."""
        if op == "relax.nn.pad" and not (float(value.attrs.pad_value) == 0.0
                                         and str(value.attrs.pad_mode) == "constant"):
            return None
        if not isinstance(args[0], relax.Var) or args[0] not in self.values:
            return None
        if not isinstance(self.values[args[0]], (QTensor, PendingAcc, PendingAdd)):
            return None
        x = self.quant_of(args[0])
        new_args = [x.expr] + [self.expr_of(a) for a in args[1:]]
        expr = self.builder_.emit(relax.Call(value.op, new_args, value.attrs))
        return QTensor(expr, x.scale, x.dtype, x.bound)

    def rule_concat(self, var: Any, value: Any, op: str, args: list[Any]) -> Any:
        fields = list(args[0].fields)
        # a conv still pending is requantized straight to the concat's scale (one rounding, no extra
        # qnn.requantize pass over its output); other parts are aligned by a requantize
        pending = {i: self.values[f] for i, f in enumerate(fields)
                   if isinstance(f, relax.Var) and isinstance(self.values.get(f), PendingAcc)}
        formats = {i: self._out_format(p.var, p.lo, p.hi)[:2] for i, p in pending.items()}
        qs = {i: self.quant_of(f) for i, f in enumerate(fields) if i not in pending}
        dtypes = [q.dtype for q in qs.values()] + [fmt[1] for fmt in formats.values()]
        alphas = ([q.scale * q.qmax for q in qs.values()]
                  + [sc * (255 if dt == "uint8" else 127) for sc, dt in formats.values()])
        dtype = "uint8" if all(d == "uint8" for d in dtypes) else "int8"
        scale = _f32(max(alphas) / (255 if dtype == "uint8" else 127))
        for i, p in pending.items():
            qs[i] = self._emit_acc(p, float_out=False, out_format=(scale, dtype))
            self.values[fields[i]] = qs[i]
        aligned = [self.requantize_to(qs[i], scale, dtype, _safe(f"{tvm_compat.var_name(var)}_{i}"))
                   for i in range(len(fields))]
        expr = self.builder_.emit(relax.op.concat([q.expr for q in aligned], axis=int(value.attrs.axis)))
        return QTensor(expr, scale, dtype)

    @staticmethod
    def _is_global_pool(value: Any, op: str) -> bool:
        if op == "relax.mean":
            axes = sorted(int(a) % 4 for a in value.attrs.axis) if value.attrs.axis is not None else []
            return axes == [2, 3] and len(tvm_compat.expr_shape(value.args[0])) == 4
        if op == "relax.nn.adaptive_avg_pool2d":
            size = value.attrs.output_size
            return size is not None and [int(s) for s in size] in ([1, 1], [1])
        if op == "relax.nn.avg_pool2d":  # torch's F.avg_pool2d(x, x.size(3)) is a global pool
            shape = tvm_compat.expr_shape(value.args[0])
            return ([int(v) for v in value.attrs.pool_size] == list(shape[2:]) and
                    not any(int(v) for v in value.attrs.padding) and not bool(value.attrs.ceil_mode))
        return False

    def keep_float(self, value: Any, op: str | None, var: Any = None) -> Any:
        """The default rule: the op runs in float on dequantized inputs, counted in `fallbacks`."""
        if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op):
            args = []
            for a in value.args:
                if isinstance(a, relax.Tuple):
                    args.append(relax.Tuple([self.float_of(f) for f in a.fields]))
                else:
                    args.append(self.float_of(a))
            name = op.removeprefix("relax.") if op else "call"
            if op not in DATA_MOVEMENT:  # reshaping a float value is not a lost integer op
                self.result.fallbacks[name] = self.result.fallbacks.get(name, 0) + 1
                if var is not None:
                    self.result.fallback_vars.append((tvm_compat.var_name(var), name))
            return self.builder_.emit(relax.Call(value.op, args, value.attrs, value.ty_args))
        if isinstance(value, relax.Var):
            return self.values.get(value, self.expr_of(value))
        if isinstance(value, relax.Tuple):  # torch's exported programs return a tuple
            return self.builder_.emit(relax.Tuple([self.float_of(f) for f in value.fields]))
        if isinstance(value, relax.TupleGetItem):
            return self.builder_.emit(relax.TupleGetItem(self.float_of(value.tuple_value), value.index))
        return self.builder_.emit(self.expr_of(value))


# rule(mutator, var, value, op, args) -> the binding's integer value, or None to keep it float
Rule = Callable[[Any, Any, Any, str, list], Any]

# Relax op -> quantize rule: a QuantizeMutator method by name, or a Rule function (register_rule). An op
# missing here stays float (QuantizeMutator.keep_float, counted).
RULES: dict[str, str | Rule] = {
    "relax.add": "rule_add",
    "relax.nn.relu": "rule_activation",
    "relax.clip": "rule_activation",
    "relax.nn.max_pool2d": "rule_max_pool2d",
    "relax.mean": "rule_global_pool",
    "relax.nn.adaptive_avg_pool2d": "rule_global_pool",
    "relax.nn.avg_pool2d": "rule_global_pool",
    **{op: "rule_data_movement" for op in sorted(DATA_MOVEMENT)},
    "relax.nn.pad": "rule_data_movement",
    "relax.concat": "rule_concat",
}


def register_rule(op: str, rule: Rule) -> None:
    """Add (or replace) the quantize rule of a Relax op: rule(mutator, var, value, op, args) -> value | None."""
    RULES[op] = rule


# finder(mutator, main) -> {binding var: Rule}: rules for particular bindings, before RULES (a pattern that
# spans several bindings, e.g. an activation the importer decomposes: quantize/lut.py)
BindingFinder = Callable[[Any, relax.Function], Mapping[Any, Rule]]
BINDING_FINDERS: list[BindingFinder] = []


def register_finder(finder: BindingFinder) -> None:
    if finder not in BINDING_FINDERS:
        BINDING_FINDERS.append(finder)


# the rule modules (one per rule family) that register themselves with register_rule / register_finder
RULE_MODULES = ("lut", "elementwise", "movement", "pooling", "transpose")


def load_rule_modules() -> None:
    import importlib

    for name in RULE_MODULES:
        importlib.import_module(f"{__package__}.{name}")


def quantize_module(mod: tvm.IRModule, layers: list[Layer], weights: Mapping[str, Any],
                    ranges: Mapping[Any, ActivationRange], input_range: float | None = None,
                    float_vars: Collection[str] = (), onnx_nodes: Mapping[str, tuple[str, str]] | None = None) -> QuantizeResult:
    """Rewrite `mod["main"]` into qnn-level integer ops. `layers` must come from find_layers(mod["main"]).
    `float_vars`: binding names to keep float; `onnx_nodes` (binding name -> ONNX node, op type) names
    the float ops in the warning."""
    load_rule_modules()
    result = QuantizeMutator(mod, layers, weights, ranges, input_range, float_vars).transform()
    if result.fallbacks:
        named = float_regions.float_nodes_report(result.fallback_vars, onnx_nodes or {})
        log.warning("%d op(s) stay float (no integer rule, an output head, or --float-nodes): %s",
                    sum(result.fallbacks.values()), float_regions.describe(named))
    return result
