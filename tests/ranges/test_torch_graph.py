"""The torch translation used for the inversion (ranges/torch_graph.py) against the numpy reference, op by
op, on an imported ONNX graph with the modern ops (issue 15): it must compute the same float graph, and
gradients must flow through it to the input."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import isquant_tvm as iq
from isquant_tvm.api import prepare

torch = pytest.importorskip("torch")


def _modern_ops_onnx(path: Path, resize: dict) -> Path:
    """Conv -> PRelu -> Split -> (Tanh | LeakyRelu, Pow) -> Concat -> ConvTranspose (k=3, s=2, pads) ->
    Resize -> HardSwish -> Erf-GELU -> Softplus -> Max / Min -> GAP -> Gemm."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    inits = []

    def const(name: str, a: np.ndarray, dtype=np.float32) -> str:
        inits.append(numpy_helper.from_array(np.asarray(a, dtype), name))
        return name

    nodes = [
        helper.make_node("Conv", ["input", const("w1", rng.standard_normal((8, 3, 3, 3)) * 0.4),
                                  const("b1", rng.standard_normal(8) * 0.1)], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("PRelu", ["c1", const("slope", rng.uniform(0.05, 0.5, (8, 1, 1)))], ["p1"]),
        helper.make_node("Split", ["p1", const("parts", [3, 5], np.int64)], ["s1", "s2"], axis=1),
        helper.make_node("Tanh", ["s1"], ["t1"]),
        helper.make_node("LeakyRelu", ["s2"], ["l2"], alpha=0.1),
        helper.make_node("Pow", ["l2", const("two", 2.0)], ["q2"]),
        helper.make_node("Concat", ["t1", "q2"], ["cat"], axis=1),
        helper.make_node("ConvTranspose", ["cat", const("wt", rng.standard_normal((8, 4, 3, 3)) * 0.3)], ["up"],
                         strides=[2, 2], pads=[1, 1, 0, 0], output_padding=[1, 1]),
        helper.make_node("Resize", ["up", "", "", const("sizes", [1, 4, 25, 25], np.int64)], ["rs"], **resize),
        helper.make_node("HardSwish", ["rs"], ["hs"]),
        helper.make_node("Div", ["hs", const("sqrt2", np.sqrt(2.0))], ["hd"]),
        helper.make_node("Erf", ["hd"], ["he"]),
        helper.make_node("Softplus", ["he"], ["sp"]),
        helper.make_node("Max", ["sp", const("lo", 0.2)], ["mx"]),
        helper.make_node("Min", ["mx", const("hi", 1.1)], ["mn"]),
        helper.make_node("GlobalAveragePool", ["mn"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"]),
        helper.make_node("Gemm", ["flat", const("wf", rng.standard_normal((10, 4))), const("bf", np.zeros(10))],
                         ["output"], transB=1),
    ]
    graph = helper.make_graph(nodes, "modern",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 10])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]), str(path))
    return path


@pytest.mark.parametrize("resize", [
    {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"},
    {"mode": "linear", "coordinate_transformation_mode": "half_pixel"},
    {"mode": "linear", "coordinate_transformation_mode": "align_corners"},
], ids=["nearest", "linear-half-pixel", "linear-align-corners"])
def test_modern_ops_match_the_reference_and_carry_gradients(tmp_path: Path, resize: dict) -> None:
    from isquant_tvm.reference.interpreter import Interpreter
    from isquant_tvm.ranges.torch_graph import TorchGraph

    folded = prepare(iq.load(str(_modern_ops_onnx(tmp_path / "m.onnx", resize))))
    ops = {str(b.value.op.name) for b in folded["main"].body.blocks[0].bindings if hasattr(b.value, "op")}
    assert {"relax.split", "relax.image.resize2d", "relax.nn.prelu", "relax.nn.conv2d_transpose",
            "relax.power", "relax.tanh", "relax.nn.leakyrelu"} <= ops, ops
    x = np.random.default_rng(1).standard_normal((1, 3, 16, 16)).astype(np.float32)
    ref = Interpreter(folded, tvm_fallback=False).run([x])[0][0]
    graph = TorchGraph(folded)
    xt = torch.from_numpy(x).requires_grad_(True)
    got = graph([xt])[0]
    np.testing.assert_allclose(got.detach().numpy(), ref, rtol=1e-4, atol=1e-5)
    got.sum().backward()
    assert xt.grad is not None and float(xt.grad.abs().sum()) > 0


def test_an_unknown_op_is_untranslatable_not_an_error(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    from isquant_tvm.ranges.torch_graph import TorchGraph, UntranslatableOp

    graph = helper.make_graph([helper.make_node("Cos", ["input"], ["output"])], "cos",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, 4, 4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(tmp_path / "c.onnx"))
    with pytest.raises(UntranslatableOp, match="relax.cos"):
        TorchGraph(prepare(iq.load(str(tmp_path / "c.onnx"))))
