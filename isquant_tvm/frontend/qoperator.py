"""QOperator ONNX models (QLinearConv, QLinearMatMul, QLinearAdd, ...) rewritten to the equivalent QDQ
form before import: TVM 0.27's Relax importer has no converter for them, and quantize/prequant.py builds
the integer graph from DequantizeLinear -> float op -> QuantizeLinear.

Each QLinear node becomes DequantizeLinear on every integer input, the float op, and QuantizeLinear to
its output parameters; the QOperator definitions are exactly that composition (QLinearConv's int32 bias
is dequantized with scale x_scale · w_scale, as the operator defines it). onnxruntime's QOperator models
also run data-movement ops (MaxPool, Reshape, Flatten, Transpose, Slice, Pad, ...) straight on the
integer tensors: those get a DequantizeLinear / QuantizeLinear pair with the tensor's own parameters,
which is exact for ops that only move or select values. Dynamic quantization (DynamicQuantizeLinear,
ConvInteger, MatMulInteger) computes its scales at run time and has no static integer graph: refused
with a clear error."""
from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import PrequantError

# QLinear op -> (float op, [(data, scale, zp) input index triples], (y_scale, y_zp) indices, domain)
_UNARY = {"QLinearGlobalAveragePool": "GlobalAveragePool", "QLinearAveragePool": "AveragePool",
          "QLinearLeakyRelu": "LeakyRelu", "QLinearSigmoid": "Sigmoid"}
_BINARY = {"QLinearAdd": "Add", "QLinearMul": "Mul"}
_PRESERVING = {"MaxPool", "Reshape", "Flatten", "Transpose", "Slice", "Squeeze", "Unsqueeze", "Pad", "Identity",
               "Split", "Resize", "DepthToSpace", "SpaceToDepth", "Gather", "Expand", "Tile"}
_DYNAMIC = {"DynamicQuantizeLinear", "ConvInteger", "MatMulInteger"}


def to_qdq(proto: Any, source: str) -> Any:
    """A QDQ copy of the QOperator model `proto` (same results, bit for bit)."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.ModelProto.FromString(proto.SerializeToString())
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    new_inits: list[Any] = []
    nodes: list[Any] = []
    quant: dict[str, tuple[str, str]] = {}  # integer tensor -> (scale, zero point) tensor names
    counter = [0]

    def fresh(base: str) -> str:
        counter[0] += 1
        return f"{base}__qdq{counter[0]}"

    def dq(name: str, scale: str, zp: str, axis: int | None = None) -> str:
        out = fresh(f"{name}_dq")
        attrs = {} if axis is None else {"axis": axis}
        nodes.append(helper.make_node("DequantizeLinear", [name, scale, zp] if zp else [name, scale], [out],
                                      name=fresh(f"{name}_DequantizeLinear"), **attrs))
        return out

    def q(float_name: str, out: str, scale: str, zp: str) -> None:
        nodes.append(helper.make_node("QuantizeLinear", [float_name, scale, zp] if zp else [float_name, scale], [out],
                                      name=fresh(f"{out}_QuantizeLinear")))
        quant[out] = (scale, zp)

    def arr(name: str) -> np.ndarray:
        return numpy_helper.to_array(inits[name])

    for node in graph.node:
        op = node.op_type
        label = f"{source}: {op} node {node.name or node.output[0]!r}"
        ins = list(node.input)
        if op in _DYNAMIC:
            raise PrequantError(f"{label}: dynamic quantization (scales computed at run time) has no static integer"
                                " graph; quantize the model statically (onnxruntime quantize_static)")
        if op == "QuantizeLinear":
            nodes.append(node)
            quant[node.output[0]] = (ins[1], ins[2] if len(ins) > 2 else "")
            continue
        if op == "QLinearConv":
            x, xs, xz, w, ws, wz, ys, yz = ins[:8]
            wscale = arr(ws)
            xf = dq(x, xs, xz)
            wf = dq(w, ws, wz, axis=0 if wscale.size > 1 else None)
            conv_in = [xf, wf]
            if len(ins) > 8 and ins[8]:
                bscale_name = fresh(f"{ins[8]}_scale")
                bscale = (arr(xs).astype(np.float32) * wscale.astype(np.float32)).astype(np.float32)
                new_inits.append(numpy_helper.from_array(bscale.reshape(-1) if bscale.size > 1 else bscale.reshape(()),
                                                         bscale_name))
                conv_in.append(dq(ins[8], bscale_name, "", axis=0 if bscale.size > 1 else None))
            yf = fresh(f"{node.output[0]}_float")
            nodes.append(helper.make_node("Conv", conv_in, [yf], name=node.name, **{a.name: helper.get_attribute_value(a)
                                                                                     for a in node.attribute}))
            q(yf, node.output[0], ys, yz)
            continue
        if op == "QGemm":  # com.microsoft: A, a_s, a_zp, B, b_s, b_zp, [C int32], [y_s, y_zp]
            a, as_, az, b, bs, bz = ins[:6]
            attrs = {x.name: helper.get_attribute_value(x) for x in node.attribute}
            if len(ins) < 9 or not ins[7]:
                raise PrequantError(f"{label}: a QGemm with a float output is not supported (no output scale)")
            bscale = arr(bs)
            trans_b = int(attrs.get("transB", 0))
            axis = (0 if trans_b else 1) if bscale.size > 1 else None
            gemm_in = [dq(a, as_, az), dq(b, bs, bz, axis=axis)]
            if ins[6]:
                cs = fresh(f"{ins[6]}_scale")
                cval = (arr(as_).astype(np.float32) * bscale.astype(np.float32) * np.float32(attrs.get("alpha", 1.0)))
                new_inits.append(numpy_helper.from_array(cval.reshape(-1) if cval.size > 1 else cval.reshape(()), cs))
                gemm_in.append(dq(ins[6], cs, "", axis=0 if cval.size > 1 else None))
            yf = fresh(f"{node.output[0]}_float")
            nodes.append(helper.make_node("Gemm", gemm_in, [yf], name=node.name, **attrs))
            q(yf, node.output[0], ins[7], ins[8] if len(ins) > 8 else "")
            continue
        if op == "QLinearMatMul":
            a, as_, az, b, bs, bz, ys, yz = ins[:8]
            af = dq(a, as_, az)
            bscale = arr(bs) if bs in inits else np.ones(1)
            bf = dq(b, bs, bz, axis=1 if bscale.size > 1 else None)
            yf = fresh(f"{node.output[0]}_float")
            nodes.append(helper.make_node("MatMul", [af, bf], [yf], name=node.name))
            q(yf, node.output[0], ys, yz)
            continue
        if op in _BINARY:
            a, as_, az, b, bs, bz, ys, yz = ins[:8]
            yf = fresh(f"{node.output[0]}_float")
            nodes.append(helper.make_node(_BINARY[op], [dq(a, as_, az), dq(b, bs, bz)], [yf], name=node.name))
            q(yf, node.output[0], ys, yz)
            continue
        if op in _UNARY:
            x, xs, xz, ys, yz = ins[:5]
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            if attrs.pop("channels_last", 0):
                raise PrequantError(f"{label}: channels_last=1 is not supported; export NCHW")
            yf = fresh(f"{node.output[0]}_float")
            nodes.append(helper.make_node(_UNARY[op], [dq(x, xs, xz)], [yf], name=node.name, **attrs))
            q(yf, node.output[0], ys, yz)
            continue
        if op == "QLinearConcat":
            ys, yz = ins[0], ins[1]
            parts = [dq(ins[i], ins[i + 1], ins[i + 2]) for i in range(2, len(ins), 3)]
            yf = fresh(f"{node.output[0]}_float")
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            nodes.append(helper.make_node("Concat", parts, [yf], name=node.name, **attrs))
            q(yf, node.output[0], ys, yz)
            continue
        if op in _PRESERVING and ins and ins[0] in quant:
            scale, zp = quant[ins[0]]
            new_in = [dq(ins[0], scale, zp)] + ins[1:]
            if op == "Pad":  # the pad value is an integer (absent: 0): make it the real value it stands for
                value = arr(ins[2]).astype(np.int64) if len(ins) > 2 and ins[2] else np.zeros((), np.int64)
                real = (value - (arr(zp).astype(np.int64) if zp else 0)) * arr(scale).astype(np.float32)
                if np.all(real == 0):  # the default pad value: no third input (the importer's plain pad)
                    new_in = new_in[:2]
                else:
                    name = fresh("pad_value_real")
                    new_inits.append(numpy_helper.from_array(np.asarray(real, np.float32).reshape(value.shape), name))
                    new_in = (new_in + ["", ""])[:3] if len(new_in) < 3 else new_in
                    new_in[2] = name
            outs = [fresh(f"{o}_float") for o in node.output]
            clone = helper.make_node(op, new_in, outs, name=node.name, domain=node.domain,
                                     **{a.name: helper.get_attribute_value(a) for a in node.attribute})
            nodes.append(clone)
            for f, o in zip(outs, node.output):
                q(f, o, scale, zp)
            continue
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(new_inits)
    # com.microsoft ops are gone; QuantizeLinear per-channel axis needs opset >= 13
    keep = [o for o in model.opset_import if o.domain not in ("com.microsoft",)]
    del model.opset_import[:]
    model.opset_import.extend(keep)
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx") and o.version < 13:
            o.version = 13
    return model
