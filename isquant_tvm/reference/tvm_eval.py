"""Evaluate one float Relax binding with TVM itself: the honest fallback for an op the numpy
interpreter has no rule for.

The call is rebuilt as a one-op Relax function over the concrete argument shapes (the statistics
passes feed whole batches, so the shapes are the values', not the module's), legalized by TVM's own
rule for the op, built for the host (`llvm`, no schedule: the tensors are small and this is a
statistics pass) and cached by (op, attrs, argument shapes and dtypes, non-tensor arguments), so a
model with 30 identical HardSwish bindings builds that op once. The semantics are exactly the
float graph TVM compiles, which is what the ranges describe.

Integer ops never come here (`Interpreter` refuses): the integer half of the interpreter is the
independent oracle every TVM lowering is checked against, and evaluating it with TVM would make
that check tautological."""
from __future__ import annotations

import threading
from typing import Any

import numpy as np
import tvm
from tvm import relax

from ..util import tvm_compat

_CACHE: dict[tuple[Any, ...], Any] = {}
_LOCK = threading.Lock()
#: op names evaluated through TVM since import (op -> bindings), for reports and tests
EVALUATED: dict[str, int] = {}


class _Params:
    """Collects the array-valued arguments of a call as function parameters."""

    def __init__(self) -> None:
        self.params: list[relax.Var] = []
        self.values: list[np.ndarray] = []

    def add(self, value: np.ndarray) -> relax.Var:
        var = relax.Var(f"a{len(self.params)}", relax.TensorType(tuple(int(d) for d in value.shape), str(value.dtype)))
        self.params.append(var)
        self.values.append(value)
        return var


def _rebuild(expr: Any, value: Any, params: _Params, key: list[Any]) -> Any:
    """The argument `expr` of the original call, with its runtime `value`, as an expression of the
    one-op function. Tensors become parameters; shapes and scalars stay literal (and enter the key)."""
    if isinstance(value, np.ndarray) or (isinstance(value, np.generic) and not isinstance(expr, relax.ShapeExpr)):
        arr = np.asarray(value)
        key.append(("t", arr.shape, str(arr.dtype)))
        return params.add(arr)
    if isinstance(expr, relax.Tuple) and isinstance(value, (list, tuple)):
        return relax.Tuple([_rebuild(f, v, params, key) for f, v in zip(expr.fields, value)])
    if isinstance(expr, relax.ShapeExpr) or tvm_compat.is_prim(expr):
        key.append(("s", str(expr)))
        return expr
    if isinstance(value, (list, tuple)) and all(isinstance(v, (int, np.integer)) for v in value):
        shape = relax.ShapeExpr([int(v) for v in value])
        key.append(("s", str(shape)))
        return shape
    raise NotImplementedError(f"cannot pass a {type(value).__name__} argument to a one-op TVM function")


def _compiled(call: relax.Call, args: list[Any]) -> tuple[Any, list[np.ndarray]]:
    params = _Params()
    key: list[Any] = [str(call.op.name), str(call.attrs)]
    new_args = [_rebuild(e, v, params, key) for e, v in zip(call.args, args)]
    cache_key = tuple(key)
    with _LOCK:
        vm = _CACHE.get(cache_key)
    if vm is None:
        bb = relax.BlockBuilder()
        with bb.function("main", params.params):
            with bb.dataflow():
                out = bb.emit_output(relax.Call(call.op, new_args, call.attrs, call.ty_args))
            bb.emit_func_output(out)
        mod = bb.get()
        target = tvm_compat.make_target({"kind": "llvm"})
        with tvm_compat.native_stderr_filtered():
            lib = tvm_compat.build(mod, target)
        vm = tvm_compat.virtual_machine(lib, tvm.cpu())
        with _LOCK:
            _CACHE[cache_key] = vm
    return vm, params.values


def _to_numpy(value: Any) -> Any:
    if isinstance(value, (list, tuple)) or type(value).__name__ == "Array":
        return [_to_numpy(v) for v in value]
    if hasattr(value, "numpy"):
        return value.numpy()
    if isinstance(value, tvm.runtime.ShapeTuple):
        return tuple(int(v) for v in value)
    return value


def evaluate(call: relax.Call, args: list[Any]) -> Any:
    """The value of `call` applied to the numpy `args`, computed by TVM."""
    vm, values = _compiled(call, args)
    dev = tvm.cpu()
    result = vm["main"](*[tvm_compat.tensor(np.ascontiguousarray(v), dev) for v in values])
    name = str(call.op.name)
    EVALUATED[name] = EVALUATED.get(name, 0) + 1
    return _to_numpy(result)
