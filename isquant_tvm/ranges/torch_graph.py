"""The folded float graph as a differentiable torch function, for synthetic inputs optimised against the
model itself (ranges/inversion.py). Only the ops of folded CNNs are translated; any other op raises
`UntranslatableOp`, which the caller treats as "no gradient method for this model" (the noise images
stay), never as an error of the compile."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import tvm
from tvm import relax

from ..util import tvm_compat


class UntranslatableOp(NotImplementedError):
    pass


def _ints(v: Any) -> list[int]:
    return [int(i) for i in v]


def _pad4(p: Sequence[int]) -> tuple[int, int, int, int]:
    p = list(p)
    return (p[0], p[1], p[0], p[1]) if len(p) == 2 else (p[0], p[1], p[2], p[3])


def _ops() -> dict[str, Callable[..., Any]]:
    import torch
    import torch.nn.functional as F

    def conv(a: list[Any], at: Any) -> Any:
        top, left, bottom, right = _pad4(_ints(at.padding))
        x = a[0]
        if (top, left) != (bottom, right):
            x, pad = F.pad(x, (left, right, top, bottom)), (0, 0)
        else:
            pad = (top, left)
        return F.conv2d(x, a[1], None, _ints(at.strides), pad, _ints(at.dilation), int(at.groups))

    def max_pool(a: list[Any], at: Any) -> Any:
        top, left, bottom, right = _pad4(_ints(at.padding))
        x = a[0]
        if (top, left) != (bottom, right):
            x, pad = F.pad(x, (left, right, top, bottom), value=-float("inf")), (0, 0)
        else:
            pad = (top, left)
        return F.max_pool2d(x, _ints(at.pool_size), _ints(at.strides), pad, _ints(at.dilation), bool(at.ceil_mode))

    def avg_pool(a: list[Any], at: Any) -> Any:
        top, left, bottom, right = _pad4(_ints(at.padding))
        if (top, left) != (bottom, right):
            raise UntranslatableOp("asymmetric avg_pool2d padding")
        return F.avg_pool2d(a[0], _ints(at.pool_size), _ints(at.strides), (top, left), bool(at.ceil_mode),
                            bool(at.count_include_pad))

    def strided_slice(a: list[Any], at: Any) -> Any:
        x, axes, begin, end = a[:4]
        strides = a[4] if len(a) > 4 else [1] * len(axes)
        index = [slice(None)] * x.ndim
        for ax, b, e, s in zip(axes, begin, end, strides):
            index[int(ax)] = slice(int(b), min(int(e), x.shape[int(ax)]), int(s))
        return x[tuple(index)]

    def pad(a: list[Any], at: Any) -> Any:
        widths = _ints(at.pad_width)
        flat: list[int] = []
        for i in reversed(range(len(widths) // 2)):
            flat += [widths[2 * i], widths[2 * i + 1]]
        return F.pad(a[0], flat, value=float(at.pad_value))

    def mean(a: list[Any], at: Any) -> Any:
        axis = _ints(at.axis) if at.axis is not None else list(range(a[0].ndim))
        return a[0].mean(dim=axis, keepdim=bool(at.keepdims))

    def reshape(a: list[Any], at: Any) -> Any:
        shape = [int(d) for d in a[1]]
        if int(np.prod(shape)) != a[0].numel() and shape and shape[0] == 1:
            shape[0] = a[0].shape[0]  # batch-1 import, run on a batch
        return a[0].reshape(shape)

    def clip(a: list[Any], at: Any) -> Any:
        return torch.clamp(a[0], float(a[1]), float(a[2]))

    return {
        "relax.nn.conv2d": conv,
        "relax.matmul": lambda a, at: torch.matmul(a[0], a[1]),
        "relax.add": lambda a, at: a[0] + a[1],
        "relax.subtract": lambda a, at: a[0] - a[1],
        "relax.multiply": lambda a, at: a[0] * a[1],
        "relax.divide": lambda a, at: a[0] / a[1],
        "relax.nn.relu": lambda a, at: F.relu(a[0]),
        "relax.clip": clip,
        "relax.sigmoid": lambda a, at: torch.sigmoid(a[0]),
        "relax.nn.softmax": lambda a, at: torch.softmax(a[0], int(at.axis)),
        "relax.nn.max_pool2d": max_pool,
        "relax.nn.avg_pool2d": avg_pool,
        "relax.mean": mean,
        "relax.nn.adaptive_avg_pool2d": lambda a, at: a[0].mean(dim=(2, 3), keepdim=True),
        "relax.reshape": reshape,
        "relax.flatten": lambda a, at: a[0].reshape(a[0].shape[0], -1),
        "relax.permute_dims": lambda a, at: a[0].permute(*(_ints(at.axes) if at.axes is not None
                                                           else reversed(range(a[0].ndim)))),
        "relax.concat": lambda a, at: torch.cat(list(a[0]), dim=int(at.axis)),
        "relax.strided_slice": strided_slice,
        "relax.nn.pad": pad,
        "relax.squeeze": lambda a, at: a[0].squeeze(*(_ints(at.axis) if at.axis is not None else ())),
    }


class TorchGraph:
    """`main` of a folded float module, evaluated with torch (float32, CPU). Checks every op at
    construction, so an untranslatable graph fails before any optimisation starts."""

    def __init__(self, mod: tvm.IRModule) -> None:
        import torch

        self.main = mod["main"]
        self.ops = _ops()
        self.bindings = list(tvm_compat.bindings(self.main))
        self.consts: dict[Any, Any] = {}
        for b in self.bindings:
            v = b.value
            if isinstance(v, (relax.Var, relax.Tuple, relax.TupleGetItem)):
                continue  # aliases and tuples (the ONNX importer's named re-emission binds some outputs so)
            if not isinstance(v, relax.Call) or not isinstance(v.op, tvm.ir.Op) or str(v.op.name) not in self.ops:
                name = str(v.op.name) if isinstance(v, relax.Call) and hasattr(v.op, "name") else type(v).__name__
                raise UntranslatableOp(f"no torch translation for {name}")
            for a in v.args:
                if tvm_compat.is_const(a) and a not in self.consts:  # ObjectRef hashes by node
                    self.consts[a] = torch.from_numpy(np.ascontiguousarray(tvm_compat.const_value(a)))

    def _eval(self, expr: Any, env: dict[Any, Any]) -> Any:
        if isinstance(expr, relax.Var):
            return env[expr]
        if tvm_compat.is_const(expr):
            return self.consts[expr] if expr in self.consts else tvm_compat.const_value(expr)
        if isinstance(expr, relax.Tuple):
            return [self._eval(f, env) for f in expr.fields]
        if isinstance(expr, relax.TupleGetItem):
            return self._eval(expr.tuple_value, env)[int(expr.index)]
        if tvm_compat.is_prim(expr):
            return expr.value
        if isinstance(expr, relax.ShapeExpr):
            return tuple(int(v) for v in expr.values)
        raise UntranslatableOp(f"cannot translate {type(expr).__name__}")

    def __call__(self, inputs: Sequence[Any]) -> list[Any]:
        env: dict[Any, Any] = dict(zip(self.main.params, inputs))
        for b in self.bindings:
            v = b.value
            if isinstance(v, relax.Call):
                env[b.var] = self.ops[str(v.op.name)]([self._eval(a, env) for a in v.args], v.attrs)
            else:
                env[b.var] = self._eval(v, env)
        out = self._eval(self.main.body.body, env)
        return list(out) if isinstance(out, (list, tuple)) else [out]
