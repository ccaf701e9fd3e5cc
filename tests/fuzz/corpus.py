"""Generated inputs for the fuzz and fault suite: a tiny valid CNN and systematic ways to break it.

The base model is small on purpose (conv 3->8 3x3, ReLU, conv 8->8, global pool, Gemm 8->4 on 1x3x8x8) so
one compile takes about a second: the corpus is hundreds of cases on a shared 2-core machine.
"""
from __future__ import annotations

import copy
import random
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

OPSET = 17


def tiny_model(opset: int = OPSET, seed: int = 0):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)

    def init(name: str, arr: np.ndarray):
        return numpy_helper.from_array(arr.astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten", axis=1),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["logits"], name="fc", transB=1),
    ]
    inits = [init("w1", rng.standard_normal((8, 3, 3, 3)) * 0.3), init("b1", rng.standard_normal(8) * 0.1),
             init("w2", rng.standard_normal((8, 8, 3, 3)) * 0.2), init("b2", rng.standard_normal(8) * 0.1),
             init("w3", rng.standard_normal((4, 8)) * 0.3), init("b3", rng.standard_normal(4) * 0.1)]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="isquant-fuzz")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model
