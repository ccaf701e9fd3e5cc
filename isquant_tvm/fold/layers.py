"""Find the weighted layers (conv2d / dense) of a folded float module, with stable identities.

A layer's id is its kind and position in graph order ("conv0", "conv1", ..., "dense0"). The
weight rounding stage and the quantize pass both enumerate layers with this function, so integer
weights computed once are matched to their layer by id, never by call order of a rewriter."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import tvm
from tvm import relax

from ..util import tvm_compat

CONV = "relax.nn.conv2d"
MATMUL = "relax.matmul"


@dataclass
class Layer:
    id: str
    kind: str  # "conv2d" | "dense"
    var: relax.Var  # the binding var of the conv/matmul in the float module
    weight: np.ndarray  # conv: OIHW; dense: (O, K) (matmul's (K, O) constant transposed)
    attrs: dict[str, Any] = field(default_factory=dict)
    name: str = ""

    @property
    def groups(self) -> int:
        return int(self.attrs.get("groups", 1))



def _op_name(value: Any) -> str | None:
    if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op):
        return str(value.op.name)
    return None


def conv_attrs(call: relax.Call) -> dict[str, Any]:
    a = call.attrs
    if str(a.data_layout) != "NCHW" or str(a.kernel_layout) != "OIHW":
        raise ValueError(f"only NCHW/OIHW convolutions are quantized, got {a.data_layout}/{a.kernel_layout}")
    return {
        "strides": [int(v) for v in a.strides],
        "padding": [int(v) for v in a.padding],
        "dilation": [int(v) for v in a.dilation],
        "groups": int(a.groups),
    }


def find_layers(func: relax.Function, names: Sequence[str] = ()) -> list[Layer]:
    """Every conv2d / 2-D matmul whose weight is a constant, in graph order."""
    layers: list[Layer] = []
    counts = {"conv2d": 0, "dense": 0}
    for binding in tvm_compat.bindings(func):
        op = _op_name(binding.value)
        if op == CONV and tvm_compat.is_const(binding.value.args[1]):
            try:
                attrs = conv_attrs(binding.value)
            except ValueError:
                continue
            kind, weight = "conv2d", tvm_compat.const_value(binding.value.args[1])
        elif (op == MATMUL and tvm_compat.is_const(binding.value.args[1])
              and len(tvm_compat.expr_shape(binding.value.args[1])) == 2
              and len(tvm_compat.expr_shape(binding.value.args[0])) == 2):
            kind, weight, attrs = "dense", tvm_compat.const_value(binding.value.args[1]).T.copy(), {}
        else:
            continue
        if not str(weight.dtype).startswith("float"):
            continue
        prefix = "conv" if kind == "conv2d" else "dense"
        layer_id = f"{prefix}{counts[kind]}"
        counts[kind] += 1
        layers.append(Layer(layer_id, kind, binding.var, weight.astype(np.float32), attrs))
    if names and len(names) == len(layers):  # ONNX node names line up with graph order
        for layer, name in zip(layers, names):
            layer.name = name
    for layer in layers:
        layer.name = layer.name or layer.id
    return layers
