"""Pre-quantized ONNX models in, real int8 out: QDQ models (onnxruntime `quantize_static`, QAT
exports, our own `quantize -o model.qdq.onnx`) compiled to the qnn-level integer graph with the
model's own scales and zero points: no range estimation, no re-quantization.

TVM 0.27's Relax importer turns QuantizeLinear / DequantizeLinear into R.quantize / R.dequantize and
computes everything in between in float. This module is the missing FakeQuantizationToInteger:
it walks the imported `main` once; a dequantize of a constant becomes an integer weight / bias, a
dequantize of an activation a view of its integer tensor, and a float op is deferred until its
consumer is known: when that consumer is a QuantizeLinear and the op has an integer rule (conv and
dense with their bias add and ReLU/Clip, add, max / global average pool, data movement, pad, concat)
the op is emitted as a qnn op that produces the quantize's own (scale, zero point) directly. Any
other op runs float between its own dequantize / quantize, named and counted (`fallbacks`).

Zero points, exact and without touching the kernels' inner loops (qnn/ops.py):
- a conv / dense input zero point z_x goes into the int32 bias per output channel
  (b - z_x·Σw over the channel's taps, exact because the weights are symmetric: asymmetric weights
  are refused by `validate`, naming the node); a padded conv with z_x != 0 pads explicitly with z_x
  first (padding with the integer 0 would mean the real value -z_x·s_x);
- an output zero point goes into the requantize's rounding constant: (a·m + 2^(n-1) + z·2^n) >> n;
- int8 tensors with zero point -128 are carried as uint8 with zero point 0 (and uint8 zp 128 as int8
  zp 0): the same 256 values shifted, so ReLU'd activations from onnxruntime's int8 default need no
  zero point at all (the uint8 x int8 kernels run them as is).

Rounding (docs/design.md): our requantize multiplies by a 31-bit fixed-point multiplier and rounds half
up; onnxruntime multiplies by the float32 product of the scales and rounds half to even. The two
differ by at most 1 LSB, and only where the exact value lies within ~2^-16 LSB of a half or on an exact tie:
on one requantize with ResNet-20's / SqueezeNet 1.1's real multipliers 6.5-8.4 per million accumulators
differ, 0 exact ties (scripts/prequant_rounding.py). End to end >= 99 % of outputs are within 1 LSB on
every swept model but the synthetic-weight MobileNetV2 (84.7-97.7 %, onnxruntime against itself 72-89 %); no
onnxruntime-exact mode yet: docs/results.md, "Pre-quantized ONNX models vs onnxruntime".

Our own full QDQ export (tools/qdq_full.py, metadata `isquant.qdq` with "activations": "int8") is built with
`exact=True`: multipliers in float64 from the file's float32 scales, in the pipeline's order (x_s·w_s/y_s,
a_s/y_s), and a conv / matmul read as float stays an integer op with a float output (the classifier), so the
integer graph equals the one `compile` builds from the float model, constant for constant
(tests/tools/test_qdq_full.py). The trailing `rounding` argument is only passed when it is not the default
2^(n-1) (a zero point folded in), so zero-point-free graphs have the pipeline's argument lists."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tvm
from tvm import relax

from ..qnn import ops as qnn_ops
from ..reference import fixed_point
from ..util import tvm_compat

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# the integer graph
# ----------------------------------------------------------------------------------------------

@dataclass
class QT:
    """An integer activation: real = (q - zp) · scale."""

    expr: relax.Expr
    scale: float
    zp: int
    dtype: str

    @property
    def bounds(self) -> tuple[int, int]:
        return fixed_point.dtype_bounds(self.dtype)


@dataclass
class DQ:
    """The float view (a DequantizeLinear) of an integer activation."""

    q: QT


@dataclass
class WQ:
    """A dequantized constant: real = (q - zp) · scale, scale and zp broadcast to q's shape."""

    q: np.ndarray
    scale: np.ndarray
    zp: np.ndarray

    def real(self) -> np.ndarray:
        if np.issubdtype(self.q.dtype, np.floating):  # a float constant (a QAT export's float bias)
            return self.q.astype(np.float32)
        return ((self.q.astype(np.int64) - self.zp).astype(np.float32) * self.scale.astype(np.float32)).astype(np.float32)

    @staticmethod
    def of_float(value: np.ndarray) -> "WQ":
        value = np.asarray(value, np.float32)
        return WQ(value, np.ones(value.shape, np.float32), np.zeros(value.shape, np.int64))


@dataclass
class Pending:
    """A float op not emitted yet: integerized if a quantize consumes it, else emitted float."""

    call: relax.Call
    float_expr: relax.Expr | None = None
    int_q: Any = None  # a value-preserving op (data movement, pad, max pool) on integers, once emitted


@dataclass
class PrequantResult:
    mod: tvm.IRModule
    tensors: list[dict[str, Any]] = field(default_factory=list)
    fallbacks: dict[str, int] = field(default_factory=dict)
    layers: list[dict[str, Any]] = field(default_factory=list)
    rewrites: dict[str, int] = field(default_factory=dict)


def canonical(dtype: str, zp: int) -> tuple[str, int, int]:
    """(internal dtype, internal zp, offset to add to the model's integers). int8 zp -128 is uint8 zp 0:
    the same values + 128, so the kernels see unsigned data without a zero point."""
    if dtype == "int8" and zp == -128:
        return "uint8", 0, 128
    if dtype == "uint8" and zp == 128:
        return "int8", 0, -128
    return dtype, zp, 0


def f32_ratio(num: Any, den: Any) -> np.ndarray:
    """A requantize multiplier as onnxruntime forms it: float32 arithmetic on the float32 scales
    (e.g. x_scale * w_scale / y_scale in QLinearConv). Its 24-bit mantissa fits our 31-bit fixed-point
    multiplier exactly, so the two differ only by the rounding of the product (float32 vs exact int64)
    and at exact ties (half even vs half up)."""
    return (np.asarray(num, np.float32) / np.asarray(den, np.float32)).astype(np.float32).astype(np.float64)


def _op(call: Any) -> str | None:
    if isinstance(call, relax.Call) and isinstance(call.op, tvm.ir.Op):
        return str(call.op.name)
    return None


def _scalar_const(expr: Any) -> np.ndarray:
    return np.asarray(tvm_compat.const_value(expr))


def _broadcast_param(p: np.ndarray, shape: tuple[int, ...], axis: int) -> np.ndarray:
    p = np.asarray(p)
    if p.size == 1:
        return np.broadcast_to(p.reshape(()), shape)
    view = [1] * len(shape)
    view[axis % len(shape)] = p.size
    return np.broadcast_to(p.reshape(view), shape)


def _per_axis(arr: np.ndarray, axis: int) -> np.ndarray | None:
    """arr constant along every axis but `axis` -> its (shape[axis],) vector, else None."""
    moved = np.moveaxis(arr, axis, 0).reshape(arr.shape[axis], -1)
    if moved.size and not np.all(moved == moved[:, :1]):
        return None
    return moved[:, 0].copy()


DATA_MOVEMENT = {"relax.reshape", "relax.flatten", "relax.squeeze", "relax.permute_dims", "relax.strided_slice",
                 "relax.expand_dims"}
_PRESERVING = DATA_MOVEMENT | {"relax.nn.pad", "relax.nn.max_pool2d"}
_ELIGIBLE = DATA_MOVEMENT | {"relax.nn.conv2d", "relax.matmul", "relax.add", "relax.nn.relu", "relax.clip",
                             "relax.nn.max_pool2d", "relax.mean", "relax.nn.adaptive_avg_pool2d",
                             "relax.nn.avg_pool2d", "relax.nn.pad", "relax.concat"}


class Builder:
    """Walks the imported `main` in binding order and emits a new qnn-level `main`.

    `exact` (our own export, tools/qdq_full.py, recognised by its `isquant.qdq` metadata): multipliers are formed
    in float64 from the file's float32 scales, as the ISQuant pipeline forms them, instead of onnxruntime's float32
    product, and a conv / matmul (+ bias) read as float (the classifier) stays an integer op with a float output,
    so the integer graph is the pipeline's own, constant for constant."""

    def __init__(self, mod: tvm.IRModule, exact: bool = False) -> None:
        self.exact = exact
        self.src = mod
        self.main = mod["main"]
        self.bb = relax.BlockBuilder()
        self.values: dict[Any, Any] = {}
        self.result = PrequantResult(mod)
        self._names: set[str] = set()
        self._count = 0
        self._float: dict[Any, relax.Expr] = {}  # float views of integer tensors, emitted once

    # --- plumbing -------------------------------------------------------------------------------
    def call_qnn(self, op: str, args: list[relax.Expr], attrs: dict[str, Any], label: str) -> relax.Expr:
        func = qnn_ops.make_function(op, args, attrs)
        base = f"{op.replace('.', '_')}_{label}"
        name, i = base, 1
        while name in self._names:
            name, i = f"{base}_{i}", i + 1
        self._names.add(name)
        gv = self.bb.add_func(func, name)
        return self.bb.emit(relax.Call(gv, args))

    def value(self, expr: Any) -> Any:
        if isinstance(expr, relax.Var) and expr in self.values:
            return self.values[expr]
        return expr

    def float_of(self, expr: Any) -> relax.Expr:
        v = self.value(expr)
        if isinstance(v, DQ):
            if expr not in self._float:
                self._float[expr] = self.call_qnn("qnn.dequantize", [v.q.expr],
                                                  {"scale": v.q.scale, "zero_point": v.q.zp}, "float")
            return self._float[expr]
        if isinstance(v, WQ):
            return relax.const(v.real(), "float32")
        if isinstance(v, Pending):
            if v.float_expr is None and self.exact:
                v.float_expr = self._float_layer(v.call)
            if v.float_expr is None:
                call = v.call
                args = [relax.Tuple([self.float_of(f) for f in a.fields]) if isinstance(a, relax.Tuple)
                        else self.float_of(a) for a in call.args]
                name = _op(call).removeprefix("relax.")
                if _op(call) not in DATA_MOVEMENT:
                    self.result.fallbacks[name] = self.result.fallbacks.get(name, 0) + 1
                v.float_expr = self.bb.emit(relax.Call(call.op, args, call.attrs, call.ty_args))
            return v.float_expr
        if isinstance(v, QT):
            return v.expr
        if isinstance(v, relax.Tuple):
            return relax.Tuple([self.float_of(f) for f in v.fields])
        return v

    def ratio(self, num: Any, den: Any) -> np.ndarray:
        """A requantize multiplier: onnxruntime's float32 arithmetic, or (exact) the pipeline's float64."""
        if self.exact:
            return np.asarray(num, np.float64) / np.float64(den)
        return f32_ratio(num, den)

    def _float_layer(self, call: relax.Call) -> relax.Expr | None:
        """A conv / matmul (+ constant bias) whose float result leaves the graph: the integer op with a float
        output (the pipeline's classifier: int32 accumulator times float32(x_s·w_s), no 8-bit logits)."""
        op = _op(call)
        if op == "relax.add":
            a, b = self.value(call.args[0]), self._float_const(call.args[1]) or self.value(call.args[1])
            if isinstance(b, Pending) and isinstance(a, WQ):
                a, b = b, a
            if isinstance(a, Pending) and isinstance(b, WQ) and _op(a.call) in ("relax.nn.conv2d", "relax.matmul"):
                return self.layer(a.call, b, None, None, None)
            return None
        if op in ("relax.nn.conv2d", "relax.matmul"):
            return self.layer(call, None, None, None, None)
        if op in ("relax.mean", "relax.nn.adaptive_avg_pool2d", "relax.nn.avg_pool2d") and self._is_global_pool(call, op):
            return self._classifier_pool(call, op)
        return None

    def _classifier_pool(self, call: relax.Call, op: str) -> relax.Expr | None:
        """conv (+ bias) (+ ReLU) -> global pool read as float (SqueezeNet's classifier in the pipeline): the int32
        accumulator, ReLU clamped in accumulator units, pooled and dequantized (quantize/rewrite.py _classifier_pool)."""
        inner, lo = self.value(call.args[0]), None
        if isinstance(inner, Pending) and _op(inner.call) == "relax.nn.relu":
            inner, lo = self.value(inner.call.args[0]), 0.0
        if not isinstance(inner, Pending):
            return None
        conv, bias = inner.call, None
        if _op(conv) == "relax.add":
            a, b = self.value(conv.args[0]), self._float_const(conv.args[1]) or self.value(conv.args[1])
            if isinstance(b, Pending) and isinstance(a, WQ):
                a, b = b, a
            if not (isinstance(a, Pending) and isinstance(b, WQ)):
                return None
            conv, bias = a.call, b
        if _op(conv) != "relax.nn.conv2d":
            return None
        got = self.layer(conv, bias, "int32", lo, None)
        if got is None:
            return None
        acc, s_acc = got
        shape = tvm_compat.expr_shape(call.args[0])
        keepdims = op != "relax.mean" or bool(call.attrs.keepdims)
        dq = (s_acc / (shape[2] * shape[3])).astype(np.float32)
        return self.call_qnn("qnn.global_avg_pool2d", [acc, qnn_ops.const(dq)],
                             {"keepdims": keepdims, "out_dtype": "float32"}, self.label())

    def label(self) -> str:
        self._count += 1
        return f"{self._count}"

    # --- driver ---------------------------------------------------------------------------------
    def build(self) -> PrequantResult:
        params = list(self.main.params)
        attrs = {"num_input": len(params)}
        with self.bb.function("main", params, attrs=attrs):
            with self.bb.dataflow():
                for binding in tvm_compat.bindings(self.main):
                    self.values[binding.var] = self.visit(binding.var, binding.value)
                body = self.main.body.body
                out = self.float_of(body)
                out = self.bb.emit_output(out)
            self.bb.emit_func_output(out)
        mod = self.bb.get()
        mod = relax.transform.DeadCodeElimination(["main"])(mod)
        self.result.mod = mod
        return self.result

    def visit(self, var: Any, value: Any) -> Any:
        op = _op(value)
        if op == "relax.dequantize":
            return self.dequantize(value)
        if op == "relax.quantize":
            return self.quantize(var, value)
        if op in ("relax.reshape", "relax.permute_dims") and (
                isinstance(self.value(value.args[0]), WQ) or self._float_const(value.args[0]) is not None):
            w = self.value(value.args[0])
            if not isinstance(w, WQ):
                w = self._float_const(value.args[0])
            if op == "relax.reshape":
                shape = tuple(int(d) for d in tvm_compat.expr_shape(value))
                return WQ(w.q.reshape(shape), np.asarray(w.scale).reshape(shape), np.asarray(w.zp).reshape(shape))
            axes = [int(a) for a in value.attrs.axes] if value.attrs.axes is not None else None
            return WQ(np.transpose(w.q, axes), np.transpose(w.scale, axes), np.transpose(w.zp, axes))
        if op in _ELIGIBLE:
            return Pending(value)
        if isinstance(value, relax.Var):
            return self.values.get(value, value)
        if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op):
            return Pending(value)  # emitted float when used
        if isinstance(value, relax.Tuple):
            return self.bb.emit(relax.Tuple([self.float_of(f) for f in value.fields]))
        if isinstance(value, relax.TupleGetItem):
            return self.bb.emit(relax.TupleGetItem(self.float_of(value.tuple_value), value.index))
        return self.bb.emit(value)

    def dequantize(self, call: relax.Call) -> Any:
        x, scale, zp = call.args
        axis = int(call.attrs.axis)
        s = _scalar_const(scale).astype(np.float32)
        z = _scalar_const(zp).astype(np.int64)
        if tvm_compat.is_const(x):
            q = np.asarray(tvm_compat.const_value(x))
            return WQ(q, _broadcast_param(s, q.shape, axis), _broadcast_param(z, q.shape, axis))
        v = self.value(x)
        if isinstance(v, QT) and s.size == 1 and z.size == 1:
            return DQ(v)
        return Pending(call)  # per-channel activation parameters: float

    def quantize(self, var: Any, call: relax.Call) -> Any:
        x, scale, zp = call.args
        s = _scalar_const(scale).astype(np.float32)
        z = _scalar_const(zp)
        if s.size != 1 or z.size != 1:
            return Pending(call)
        dtype = str(call.attrs.out_dtype)
        if dtype not in ("int8", "uint8"):
            return Pending(call)
        idtype, izp, _ = canonical(dtype, int(z.reshape(())))
        target = (float(s.reshape(())), izp, idtype)
        v = self.value(x)
        q = None
        if isinstance(v, Pending):
            q = self.integer(v.call, target, lo=None, hi=None)
        elif isinstance(v, DQ):
            q = self.requantize(v.q, target, None, None)
        if q is None:
            expr = self.call_qnn("qnn.quantize", [self.float_of(x)], {"scale": target[0], "zero_point": izp,
                                                                    "out_dtype": idtype}, tvm_compat.var_name(var))
            q = QT(expr, target[0], izp, idtype)
        self.result.tensors.append({"tensor": tvm_compat.var_name(var), "scale": q.scale, "zero_point": q.zp,
                                    "dtype": q.dtype, "rule": "model"})
        return q

    def _float_const(self, expr: Any) -> WQ | None:
        v = self.value(expr)
        if isinstance(v, WQ):
            return v
        if tvm_compat.is_const(v) and tvm_compat.expr_dtype(v).startswith("float"):
            return WQ.of_float(tvm_compat.const_value(v))
        return None

    def _pooled_sums(self, expr: Any) -> QT | None:
        """Global-pool features that feed a dense without a quantize of their own (torch QAT exports): the
        exact int32 sums, scale s/HW, zero point HW·z; the dense accumulates them in int64 (qnn.dense)."""
        v = self.value(expr)
        if not isinstance(v, Pending):
            return None
        op = _op(v.call)
        if op in DATA_MOVEMENT:
            inner = self._pooled_sums(v.call.args[0])
            if inner is None:
                return None
            moved = self.bb.emit(relax.Call(v.call.op, [inner.expr] + [self.float_of(a) for a in v.call.args[1:]],
                                            v.call.attrs))
            return QT(moved, inner.scale, inner.zp, "int32")
        x = self._dq(v.call.args[0]) if v.call.args else None
        if op in ("relax.mean", "relax.nn.adaptive_avg_pool2d", "relax.nn.avg_pool2d") and x is not None \
                and self._is_global_pool(v.call, op):
            shape = tvm_compat.expr_shape(v.call.args[0])
            hw = int(shape[2] * shape[3])
            keepdims = op != "relax.mean" or bool(v.call.attrs.keepdims)
            expr = self.call_qnn("qnn.global_avg_pool2d", [x.expr], {"keepdims": keepdims, "out_dtype": "int32"},
                                 self.label())
            self._bound = (255 if x.dtype == "uint8" else 128) * hw
            return QT(expr, x.scale / hw, hw * x.zp, "int32")
        return None

    # --- integer rules ----------------------------------------------------------------------------
    def _dq(self, expr: Any) -> QT | None:
        """The integer tensor behind a float value: a dequantize, or a chain of value-preserving ops
        (data movement, pad, max pool) on one (ResNet's option-A shortcut: slice, slice, pad)."""
        v = self.value(expr)
        if isinstance(v, DQ):
            return v.q
        if isinstance(v, Pending) and _op(v.call) in _PRESERVING:
            if v.int_q is None:
                src = self._dq(v.call.args[0])
                if src is None:
                    return None
                v.int_q = self.integer(v.call, (src.scale, src.zp, src.dtype), None, None) or False
            return v.int_q or None
        return None

    def _bounds(self, target: tuple[float, int, str], lo: float | None, hi: float | None) -> tuple[int, int]:
        s, z, dtype = target
        qmin, qmax = fixed_point.dtype_bounds(dtype)
        if lo is not None:
            qmin = max(qmin, z + int(np.round(np.float32(lo) / np.float32(s))))
        if hi is not None:
            qmax = min(qmax, z + int(np.round(np.float32(hi) / np.float32(s))))
        return qmin, qmax

    def integer(self, call: relax.Call, target: tuple[float, int, str], lo: float | None,
                hi: float | None) -> QT | None:
        op = _op(call)
        args = call.args
        if op == "relax.nn.relu":
            inner = self.value(args[0])
            lo = 0.0 if lo is None else max(lo, 0.0)
            if isinstance(inner, Pending):
                return self.integer(inner.call, target, lo, hi)
            if isinstance(inner, DQ):
                return self.requantize(inner.q, target, lo, hi)
            return None
        if op == "relax.clip":
            a_min, a_max = (float(getattr(a.value, "value", a.value)) for a in args[1:3])
            inner = self.value(args[0])
            lo = a_min if lo is None else max(lo, a_min)
            hi = a_max if hi is None else min(hi, a_max)
            if isinstance(inner, Pending):
                return self.integer(inner.call, target, lo, hi)
            if isinstance(inner, DQ):
                return self.requantize(inner.q, target, lo, hi)
            return None
        if op == "relax.add":
            a, b = self.value(args[0]), self.value(args[1])
            a = self._float_const(args[0]) or a
            b = self._float_const(args[1]) or b
            if isinstance(b, Pending) and isinstance(a, WQ):
                a, b = b, a
            if isinstance(a, Pending) and isinstance(b, WQ) and _op(a.call) in ("relax.nn.conv2d", "relax.matmul"):
                return self.layer(a.call, b, target, lo, hi)
            qa, qb = self._dq(args[0]), self._dq(args[1])
            if qa is not None and qb is not None and tvm_compat.expr_shape(qa.expr) == tvm_compat.expr_shape(qb.expr):
                return self.add(qa, qb, target, lo, hi)
            return None
        if op in ("relax.nn.conv2d", "relax.matmul"):
            return self.layer(call, None, target, lo, hi)
        x = self._dq(args[0]) if args and not isinstance(args[0], relax.Tuple) else None
        if op == "relax.nn.max_pool2d" and x is not None:
            attrs = {"pool_size": [int(v) for v in call.attrs.pool_size], "strides": [int(v) for v in call.attrs.strides],
                     "padding": [int(v) for v in call.attrs.padding], "dilation": [int(v) for v in call.attrs.dilation],
                     "ceil_mode": bool(call.attrs.ceil_mode)}
            pooled = QT(self.call_qnn("qnn.max_pool2d", [x.expr], attrs, self.label()), x.scale, x.zp, x.dtype)
            return self.requantize(pooled, target, lo, hi)
        if op in ("relax.mean", "relax.nn.adaptive_avg_pool2d", "relax.nn.avg_pool2d") and x is not None:
            if self._is_global_pool(call, op):
                return self.global_pool(call, op, x, target, lo, hi)
            return None
        if op in DATA_MOVEMENT and x is not None:
            moved = self.bb.emit(relax.Call(call.op, [x.expr] + [self.float_of(a) for a in args[1:]], call.attrs))
            return self.requantize(QT(moved, x.scale, x.zp, x.dtype), target, lo, hi)
        if op == "relax.nn.pad" and x is not None and str(call.attrs.pad_mode) == "constant":
            value = float(call.attrs.pad_value)
            qv = x.zp + np.round(np.float32(value) / np.float32(x.scale))
            if qv != x.zp + np.float32(value) / np.float32(x.scale) and value != 0.0:
                return None
            qlo, qhi = x.bounds
            if not qlo <= qv <= qhi:
                return None
            padded = self.bb.emit(relax.op.nn.pad(x.expr, [int(v) for v in call.attrs.pad_width], "constant", float(qv)))
            return self.requantize(QT(padded, x.scale, x.zp, x.dtype), target, lo, hi)
        if op == "relax.concat" and isinstance(args[0], relax.Tuple):
            parts = [self._dq(f) for f in args[0].fields]
            if any(p is None for p in parts):
                return None
            aligned = [self.requantize(p, target, None, None) for p in parts]
            joined = self.bb.emit(relax.op.concat([p.expr for p in aligned], axis=int(call.attrs.axis)))
            return self.requantize(QT(joined, target[0], target[1], target[2]), target, lo, hi)
        return None

    @staticmethod
    def _is_global_pool(call: relax.Call, op: str) -> bool:
        shape = tvm_compat.expr_shape(call.args[0])
        if len(shape) != 4:
            return False
        if op == "relax.mean":
            axes = sorted(int(a) % 4 for a in call.attrs.axis) if call.attrs.axis is not None else []
            return axes == [2, 3]
        if op == "relax.nn.adaptive_avg_pool2d":
            size = call.attrs.output_size
            return size is not None and [int(s) for s in size] in ([1, 1], [1])
        return ([int(v) for v in call.attrs.pool_size] == list(shape[2:]) and not any(int(v) for v in call.attrs.padding))

    def requantize(self, x: QT, target: tuple[float, int, str], lo: float | None, hi: float | None) -> QT:
        s, z, dtype = target
        qmin, qmax = self._bounds(target, lo, hi)
        full = fixed_point.dtype_bounds(dtype)
        if (x.dtype == dtype and x.zp == z and np.float32(x.scale) == np.float32(s) and (qmin, qmax) == full):
            return x
        m, n = fixed_point.quantize_multiplier(self.ratio(x.scale, s))
        m, n = int(m), int(n)
        rounding = int(fixed_point.rounding_constant(n, z)) - x.zp * m
        attrs = {"shift": n, "out_dtype": dtype, "out_min": qmin, "out_max": qmax, "output_scale": s,
                 "output_zero_point": z}
        args = [x.expr, relax.const(np.int64(m), "int64")]
        if rounding != int(fixed_point.rounding_constant(n, 0)):  # the default 2^(n-1) needs no argument
            args.append(relax.const(np.int64(rounding), "int64"))
        expr = self.call_qnn("qnn.requantize", args, attrs, self.label())
        return QT(expr, s, z, dtype)

    def add(self, a: QT, b: QT, target: tuple[float, int, str], lo: float | None, hi: float | None) -> QT:
        s, z, dtype = target
        qmin, qmax = self._bounds(target, lo, hi)
        ra, rb = float(self.ratio(a.scale, s)), float(self.ratio(b.scale, s))
        _, n = fixed_point.quantize_multiplier(max(ra, rb))
        n = int(n)
        ma, mb = int(np.rint(ra * 2.0**n)), int(np.rint(rb * 2.0**n))
        rounding = int(fixed_point.rounding_constant(n, z)) - a.zp * ma - b.zp * mb
        attrs = {"shift": n, "out_dtype": dtype, "out_min": qmin, "out_max": qmax, "output_scale": s,
                 "output_zero_point": z}
        args = [a.expr, b.expr, relax.const(np.int64(ma), "int64"), relax.const(np.int64(mb), "int64")]
        if rounding != int(fixed_point.rounding_constant(n, 0)):
            args.append(relax.const(np.int64(rounding), "int64"))
        expr = self.call_qnn("qnn.add", args, attrs, self.label())
        return QT(expr, s, z, dtype)

    def global_pool(self, call: relax.Call, op: str, x: QT, target: tuple[float, int, str], lo: float | None,
                    hi: float | None) -> QT:
        s, z, dtype = target
        qmin, qmax = self._bounds(target, lo, hi)
        shape = tvm_compat.expr_shape(call.args[0])
        hw = int(shape[2] * shape[3])
        m, n = fixed_point.quantize_multiplier(np.float64(x.scale) / (hw * np.float64(s)))
        m, n = int(m), int(n)
        rounding = int(fixed_point.rounding_constant(n, z)) - hw * x.zp * m
        keepdims = op != "relax.mean" or bool(call.attrs.keepdims)
        attrs = {"shift": n, "keepdims": keepdims, "out_dtype": dtype, "out_min": qmin, "out_max": qmax,
                 "output_scale": s, "output_zero_point": z}
        args = [x.expr, relax.const(np.int64(m), "int64")]
        if rounding != int(fixed_point.rounding_constant(n, 0)):
            args.append(relax.const(np.int64(rounding), "int64"))
        expr = self.call_qnn("qnn.global_avg_pool2d", args, attrs, self.label())
        return QT(expr, s, z, dtype)

    def layer(self, call: relax.Call, bias: WQ | None, target: Any, lo: float | None,
              hi: float | None) -> Any:
        """The qnn conv / dense of `call` (+ bias) requantized to `target`, with target None a float output, with
        target "int32" the clamped int32 accumulator and its scale (expr, s_acc)."""
        op = _op(call)
        x = self._dq(call.args[0])
        if x is None and op == "relax.matmul":
            x = self._pooled_sums(call.args[0])
        w = self.value(call.args[1])
        if x is None or not isinstance(w, WQ) or np.any(w.zp != 0) or str(w.q.dtype) != "int8":
            return None
        if op == "relax.nn.conv2d":
            if str(call.attrs.data_layout) != "NCHW" or str(call.attrs.kernel_layout) != "OIHW":
                return None
            weight = w.q
            w_scale = _per_axis(w.scale, 0)
        else:
            if len(tvm_compat.expr_shape(call.args[0])) != 2 or w.q.ndim != 2:
                return None
            weight = np.ascontiguousarray(w.q.T)  # (K, O) -> (O, K)
            w_scale = _per_axis(w.scale, 1)
        if w_scale is None:
            return None
        if np.all(w_scale == w_scale[0]):
            w_scale = w_scale[:1]  # per-tensor
        out_channels = weight.shape[0]
        s_acc = np.float64(x.scale) * np.broadcast_to(w_scale.astype(np.float64), (out_channels,))
        if bias is not None:
            b_shape = bias.q.reshape(-1).shape
            if b_shape != (out_channels,):
                return None
            b_scale = np.asarray(bias.scale, np.float64).reshape(-1)
            if (str(bias.q.dtype) == "int32" and not np.any(bias.zp) and
                    np.allclose(b_scale, s_acc, rtol=1e-6, atol=0)):
                b_int = bias.q.reshape(-1).astype(np.int64)
            else:  # a bias quantized with another scale (or float): re-rounded to the accumulator's
                b_int = np.rint(bias.real().reshape(-1).astype(np.float64) / s_acc).astype(np.int64)
        else:
            b_int = np.zeros(out_channels, np.int64)
        data = x.expr
        name = self.label()
        attrs: dict[str, Any] = {"layer": f"layer{name}", "input_scale": x.scale, "input_zero_point": x.zp,
                                 "weight_scale": [float(v) for v in np.atleast_1d(w_scale)]}
        if op == "relax.nn.conv2d":
            padding = [int(v) for v in call.attrs.padding]
            if len(padding) == 2:
                padding = padding * 2
            if x.zp != 0:
                b_int = b_int - x.zp * weight.reshape(out_channels, -1).astype(np.int64).sum(axis=1)
                if any(padding):
                    top, left, bottom, right = padding
                    data = self.bb.emit(relax.op.nn.pad(data, [0, 0, 0, 0, top, bottom, left, right], "constant",
                                                        float(x.zp)))
                    padding = [0, 0, 0, 0]
                    self.result.rewrites["zero_point_pad"] = self.result.rewrites.get("zero_point_pad", 0) + 1
            attrs.update({"strides": [int(v) for v in call.attrs.strides], "padding": padding,
                          "dilation": [int(v) for v in call.attrs.dilation], "groups": int(call.attrs.groups)})
            qop = "qnn.conv2d"
        else:
            if x.zp != 0:
                b_int = b_int - x.zp * weight.astype(np.int64).sum(axis=1)
            qop = "qnn.dense"
            if x.dtype == "int32":
                attrs["data_bound"] = int(self._bound)
        wide = x.dtype == "int32"  # pooled sums: int64 bias and accumulation
        if not wide and np.abs(b_int).max(initial=0) >= 2**31:
            return None
        if isinstance(target, str):  # "int32": the pipeline's int32_out accumulator (lo / hi in accumulator units)
            attrs.update({"out_dtype": "int32",
                          "out_min": -(2**31) if lo is None else int(np.ceil(lo / s_acc.max() - 1e-9)),
                          "out_max": 2**31 - 1 if hi is None else int(np.floor(hi / s_acc.max() + 1e-9))})
            args = [data, qnn_ops.const(weight.astype(np.int8)), qnn_ops.const(b_int.astype(np.int32))]
            self.result.layers.append({"name": attrs["layer"], "kind": "conv2d", "shape": list(weight.shape),
                                       "input_scale": x.scale, "input_zero_point": x.zp,
                                       "weight_scale": attrs["weight_scale"], "output_dtype": "int32"})
            return self.call_qnn(qop, args, attrs, name), s_acc
        if target is None:
            attrs.update({"out_dtype": "float32", "out_min": 0, "out_max": 0})
            args = [data, qnn_ops.const(weight.astype(np.int8)),
                    qnn_ops.const(b_int.astype(np.int64 if wide else np.int32)), qnn_ops.const(s_acc.astype(np.float32))]
            self.result.layers.append({"name": attrs["layer"], "kind": "conv2d" if qop == "qnn.conv2d" else "dense",
                                       "shape": list(weight.shape), "input_scale": x.scale, "input_zero_point": x.zp,
                                       "weight_scale": attrs["weight_scale"], "output_dtype": "float32"})
            return self.call_qnn(qop, args, attrs, name)
        s, z, dtype = target
        qmin, qmax = self._bounds(target, lo, hi)
        # float32 x_scale · w_scale / y_scale, as onnxruntime's QLinearConv / QGemm compute it
        if self.exact:  # the pipeline's s_acc / y_s in float64 (quantize/rewrite.py _emit_acc)
            m, n = fixed_point.quantize_multiplier(s_acc / np.float64(s))
        else:
            m, n = fixed_point.quantize_multiplier(
                f32_ratio(np.float32(x.scale) * np.broadcast_to(w_scale.astype(np.float32), (out_channels,)), s))
        if z:
            # z·2^n must fit int64 beside the product: channels with a tiny multiplier (onnxruntime gives an
            # all-but-zero channel a ~1e-7 weight scale) drop low multiplier bits instead, |acc| < 2^31
            # keeps the lost precision below 2^(31-cap) of an LSB
            cap = 60 - int(np.ceil(np.log2(abs(z) + 1)))
            k = np.maximum(n - cap, 0)
            m = np.rint(m / np.exp2(k)).astype(np.int64)
            n = (n - k).astype(np.int64)
        try:
            fixed_point.rounding_constant(n, z)
        except ValueError:
            return None
        attrs.update({"out_dtype": dtype, "out_min": qmin, "out_max": qmax, "output_scale": s, "out_zero_point": z})
        args = [data, qnn_ops.const(weight.astype(np.int8)), qnn_ops.const(b_int.astype(np.int64 if wide else np.int32)),
                qnn_ops.const(m), qnn_ops.const(n)]
        expr = self.call_qnn(qop, args, attrs, name)
        self.result.layers.append({"name": attrs["layer"], "kind": "conv2d" if qop == "qnn.conv2d" else "dense",
                                   "shape": list(weight.shape), "input_scale": x.scale, "input_zero_point": x.zp,
                                   "weight_scale": attrs["weight_scale"], "output_scale": s, "output_zero_point": z,
                                   "output_dtype": dtype})
        return QT(expr, s, z, dtype)


def build_qnn(mod: tvm.IRModule, exact: bool = False) -> PrequantResult:
    """The imported QDQ module -> the qnn-level integer module with the model's own parameters
    (`exact`: our own export's multipliers, see Builder)."""
    result = Builder(mod, exact).build()
    if result.fallbacks:
        log.warning("%d quantized-model op(s) stay float (no integer rule): %s", sum(result.fallbacks.values()),
                    ", ".join(f"{k}×{v}" for k, v in sorted(result.fallbacks.items())))
    return result
