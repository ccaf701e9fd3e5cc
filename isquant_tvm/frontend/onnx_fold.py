"""Fold constant subgraphs of an ONNX model before import.

PyTorch's exporter computes some operands (e.g. the Pad widths of CIFAR ResNets' option-A
shortcuts) with chains of Constant/ConstantOfShape/Concat/Reshape/Cast nodes. TVM's ONNX importer
only accepts constant pads, so those chains are evaluated here with onnx's own reference
evaluator and replaced by initializers.

Shape arithmetic (issue 15) is folded to a fixed point: a Paddle-style Shape -> Slice -> ReduceProd ->
Concat -> Reshape makes the Reshape's target constant only after one pass, and only then can onnx's
shape inference give that Reshape's output a shape, which the next `Shape` of it needs. One pass left
`Shape(y) -> Mul -> Reshape` for TVM, whose importer refuses it (`Node ... cannot handle ShapeExpr
inputs`; on a Paddle export `Reshape requires the input new shape to be Shape`); the second pass folds
it. `Shape` with start/end (opset 15) is folded too."""
from __future__ import annotations

import logging
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

# Ops never folded: they carry the model's compute or randomness.
_KEEP = {"Conv", "Gemm", "MatMul", "BatchNormalization", "RandomNormal", "RandomUniform", "RandomNormalLike",
         "RandomUniformLike", "Multinomial", "Dropout"}


#: folding passes at most (each one re-infers shapes from the constants the previous one made)
MAX_PASSES = 8


def fold_constants(model: Any, keep: set[str] | frozenset[str] = frozenset()) -> Any:
    """A copy of `model` with every node whose inputs are all constant (or whose shape is static, for
    `Shape`) replaced by initializers, repeated until nothing more folds (except ops in `keep`: a
    pre-quantized model keeps its DequantizeLinear of integer weights)."""
    import onnx

    model = onnx.ModelProto.FromString(model.SerializeToString())
    for _ in range(MAX_PASSES):
        model, folded = _fold_once(model, keep)
        if not folded:
            break
    return model


def _shape_value(node: Any, dims: list[int]) -> np.ndarray:
    attrs = {a.name: a.i for a in node.attribute}
    rank = len(dims)
    start, end = attrs.get("start", 0), attrs.get("end", rank)
    start, end = (start + rank if start < 0 else start), (end + rank if end < 0 else end)
    return np.asarray(dims[max(start, 0):min(end, rank)], np.int64)


def _fold_once(model: Any, keep: set[str] | frozenset[str]) -> tuple[Any, int]:
    import onnx
    from onnx import numpy_helper
    from onnx.reference import ReferenceEvaluator

    graph = model.graph
    consts: dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
        static_shapes = {}
        for vi in list(inferred.graph.value_info) + list(inferred.graph.input):
            dims = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
            if dims and all(d for d in dims):
                static_shapes[vi.name] = dims
    except Exception:  # shape inference is best effort here
        static_shapes = {}
    kept, folded = [], 0
    opset = [o for o in model.opset_import]
    for node in graph.node:
        inputs = [i for i in node.input if i]
        value = None
        if node.op_type == "Shape" and inputs and inputs[0] in static_shapes and node.domain in ("", "ai.onnx"):
            value = [_shape_value(node, static_shapes[inputs[0]])]
        elif node.op_type not in _KEEP and node.op_type not in keep and all(i in consts for i in inputs) and node.domain in ("", "ai.onnx"):
            try:
                single = onnx.helper.make_model(
                    onnx.helper.make_graph([node], "fold", [], [onnx.helper.make_tensor_value_info(o, 0, None)
                                                                for o in node.output]),
                    opset_imports=opset)
                sess = ReferenceEvaluator(single)
                value = sess.run(None, {})
                # Inputs are initializers of the outer graph: pass them explicitly.
            except Exception:
                try:
                    value = _eval_with_inputs(node, consts, opset)
                except Exception as err:
                    log.debug("cannot fold %s (%s): %s", node.name, node.op_type, err)
                    value = None
        if value is None:
            kept.append(node)
            continue
        for name, arr in zip(node.output, value):
            consts[name] = np.asarray(arr)
        folded += 1
    if not folded:
        return model, 0
    used = {i for n in kept for i in n.input} | {o.name for o in graph.output}
    del graph.node[:]
    graph.node.extend(kept)
    existing = {i.name for i in graph.initializer}
    for name, arr in consts.items():
        if name in used and name not in existing:
            graph.initializer.append(numpy_helper.from_array(np.asarray(arr), name))
    keep_init = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep_init)
    log.info("folded %d constant ONNX nodes", folded)
    return model, folded


def _eval_with_inputs(node: Any, consts: dict[str, np.ndarray], opset: Any) -> list[np.ndarray]:
    import onnx
    from onnx import numpy_helper
    from onnx.reference import ReferenceEvaluator

    inputs = [i for i in node.input if i]
    graph = onnx.helper.make_graph(
        [node], "fold", [], [onnx.helper.make_tensor_value_info(o, 0, None) for o in node.output],
        initializer=[numpy_helper.from_array(np.asarray(consts[i]), i) for i in inputs])
    return ReferenceEvaluator(onnx.helper.make_model(graph, opset_imports=opset)).run(None, {})
