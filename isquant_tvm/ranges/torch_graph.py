"""The folded float graph as a differentiable torch function, for synthetic inputs optimised against the
model itself (ranges/inversion.py).

Translated: the ops of folded CNNs and those of the modern ones the importers emit (issue 15: split,
resize, PReLU / LeakyReLU, ConvTranspose, power, the transcendental activations, reductions). A model
with one op outside the table used to lose the inversion entirely (an MTCNN P-Net with PReLU, a
detector with split and resize got 1/f-noise ranges, confidence low). Each translation follows the
numpy reference's semantics (reference/float_ops.py, itself topi's), checked op by op against it in
tests/ranges/test_torch_graph.py; resize shares its index arithmetic with the reference
(`float_ops.resize2d_taps`) rather than mapping onto F.interpolate's differently-defined modes. Any
other op raises `UntranslatableOp`, which the caller treats as "no gradient method for this model" (the
noise images stay), never as an error of the compile."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import tvm
from tvm import relax

from ..reference import float_ops
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

    def split(a: list[Any], at: Any) -> Any:
        x = a[0]
        axis = int(at.axis) % x.ndim
        spec = at.indices_or_sections
        if hasattr(spec, "__len__"):
            bounds = [0, *_ints(spec), x.shape[axis]]
            return [x.narrow(axis, b, max(e - b, 0)) for b, e in zip(bounds[:-1], bounds[1:])]
        step = -(-x.shape[axis] // int(spec))  # Relax's ceil-sized chunks, like the reference
        return list(torch.split(x, step, dim=axis))

    def resize(a: list[Any], at: Any) -> Any:
        x = a[0]
        try:
            t = float_ops.resize2d_taps(tuple(x.shape), a[1], at)
        except float_ops.UnsupportedOp as err:
            raise UntranslatableOp(str(err)) from err
        rows = [torch.from_numpy(r) for r in t.rows]
        cols = [torch.from_numpy(c) for c in t.cols]
        if t.ly is None:
            return x[:, :, rows[0]][:, :, :, cols[0]]
        p = [[x[:, :, yi][:, :, :, xi] for xi in cols] for yi in rows]
        lx, ly = torch.from_numpy(t.lx)[None, None, None, :], torch.from_numpy(t.ly)[None, None, :, None]
        top = p[0][0] * (1 - lx) + p[0][1] * lx
        bottom = p[1][0] * (1 - lx) + p[1][1] * lx
        return top * (1 - ly) + bottom * ly

    def prelu(a: list[Any], at: Any) -> Any:
        x, alpha = a
        shape = [1] * x.ndim
        shape[int(at.axis) % x.ndim] = -1
        return torch.where(x < 0, x * torch.as_tensor(alpha).reshape(shape), x)

    def conv_transpose(a: list[Any], at: Any) -> Any:
        if str(at.data_layout) != "NCHW" or str(at.kernel_layout) != "IOHW":
            raise UntranslatableOp("conv2d_transpose layouts other than NCHW/IOHW")
        top, left, bottom, right = _pad4(_ints(at.padding))
        oph, opw = _ints(at.output_padding)
        full = F.conv_transpose2d(a[0], a[1], None, _ints(at.strides), 0, (oph, opw), int(at.groups),
                                  _ints(at.dilation))
        return full[:, :, top:full.shape[2] - bottom, left:full.shape[3] - right]

    def reduce(fn: Callable[..., Any]) -> Callable[..., Any]:
        def apply(a: list[Any], at: Any) -> Any:
            axis = _ints(at.axis) if at.axis is not None else list(range(a[0].ndim))
            return fn(a[0], axis, bool(at.keepdims))
        return apply

    def astype(a: list[Any], at: Any) -> Any:
        if not str(at.dtype).startswith("float"):
            raise UntranslatableOp(f"astype to {at.dtype} has no gradient")
        return a[0]  # the graph runs in float32 throughout

    def expand_dims(a: list[Any], at: Any) -> Any:
        x = a[0]
        for ax in sorted(int(v) % (x.ndim + len(at.axis)) for v in at.axis):
            x = x.unsqueeze(ax)
        return x

    def broadcast_to(a: list[Any], at: Any) -> Any:
        shape = [int(d) for d in a[1]]
        if shape and shape[0] == 1 and a[0].ndim == len(shape):
            shape[0] = a[0].shape[0]  # batch-1 import, run on a batch (as reshape)
        return a[0].expand(*shape)

    def softplus(a: list[Any], at: Any) -> Any:
        beta = float(at.beta)
        return F.softplus(a[0] * beta) / beta

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
        "relax.split": split,
        "relax.image.resize2d": resize,
        "relax.nn.prelu": prelu,
        "relax.nn.leakyrelu": lambda a, at: F.leaky_relu(a[0], float(at.alpha)),
        "relax.nn.relu6": lambda a, at: torch.clamp(a[0], 0.0, 6.0),
        "relax.nn.conv2d_transpose": conv_transpose,
        "relax.power": lambda a, at: torch.pow(a[0], torch.as_tensor(a[1], dtype=torch.float32)),
        "relax.maximum": lambda a, at: torch.maximum(torch.as_tensor(a[0]), torch.as_tensor(a[1])),
        "relax.minimum": lambda a, at: torch.minimum(torch.as_tensor(a[0]), torch.as_tensor(a[1])),
        "relax.exp": lambda a, at: torch.exp(a[0]),
        "relax.log": lambda a, at: torch.log(a[0]),
        "relax.tanh": lambda a, at: torch.tanh(a[0]),
        "relax.erf": lambda a, at: torch.erf(a[0]),
        "relax.abs": lambda a, at: torch.abs(a[0]),
        "relax.negative": lambda a, at: -a[0],
        "relax.sqrt": lambda a, at: torch.sqrt(a[0]),
        "relax.rsqrt": lambda a, at: torch.rsqrt(a[0]),
        "relax.square": lambda a, at: a[0] * a[0],
        "relax.nn.gelu": lambda a, at: F.gelu(a[0]),
        "relax.nn.gelu_tanh": lambda a, at: F.gelu(a[0], approximate="tanh"),
        "relax.nn.silu": lambda a, at: F.silu(a[0]),
        "relax.nn.softplus": softplus,
        "relax.nn.log_softmax": lambda a, at: torch.log_softmax(a[0], int(at.axis)),
        "relax.sum": reduce(lambda x, ax, k: x.sum(dim=ax, keepdim=k)),
        "relax.max": reduce(lambda x, ax, k: x.amax(dim=ax, keepdim=k)),
        "relax.min": reduce(lambda x, ax, k: x.amin(dim=ax, keepdim=k)),
        "relax.astype": astype,
        "relax.expand_dims": expand_dims,
        "relax.broadcast_to": broadcast_to,
        "relax.stack": lambda a, at: torch.stack(torch.broadcast_tensors(*[torch.as_tensor(t) for t in a[0]]),
                                                 dim=int(at.axis or 0)),
        "relax.nn.dropout": lambda a, at: [a[0], torch.ones_like(a[0])],
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
