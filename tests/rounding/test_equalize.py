"""Cross-layer equalization, bias absorption and bias correction (rounding/equalize.py), plus the graph
side (fold/chains.py, quantize/equalize_stage.py) on small graphs. Numpy tests are milliseconds; the
graph tests import two tiny ONNX graphs and the built-in CIFAR ResNet-20 (a few seconds in all)."""
from __future__ import annotations

import numpy as np
import pytest

from isquant_tvm.reference.interpreter import conv2d
from isquant_tvm.rounding import equalize as eqz
from isquant_tvm.rounding.isquant import quantize_weight


def _forward(layers: list[eqz.LayerParams], x: np.ndarray, acts: list[str]) -> np.ndarray:
    """conv -> act -> conv -> ... in float64 (1x1 / 3x3 with padding 1, groups as given)."""
    for lay, act in zip(layers, acts + ["identity"]):
        w = lay.weight
        pad = [w.shape[2] // 2] * 2
        x = conv2d(x.astype(np.float32), w.astype(np.float32), (1, 1), pad, groups=lay.groups).astype(np.float64)
        if lay.bias is not None:
            x = x + lay.bias.reshape(1, -1, 1, 1)
        if act == "relu":
            x = np.maximum(x, 0)
    return x


def _badly_scaled_chain(seed: int = 0) -> list[eqz.LayerParams]:
    """1x1 expand (16 -> 32) whose output channels span 300x in range, then a depthwise 3x3, then a 1x1."""
    rng = np.random.default_rng(seed)
    spread = np.exp(rng.uniform(np.log(0.02), np.log(6.0), 32))
    a = (rng.standard_normal((32, 16, 1, 1)) * spread[:, None, None, None]).astype(np.float32)
    dw = (rng.standard_normal((32, 1, 3, 3)) / spread[:, None, None, None] ** 0.5).astype(np.float32)
    c = rng.standard_normal((8, 32, 1, 1)).astype(np.float32)
    return [eqz.LayerParams(a, rng.standard_normal(32).astype(np.float32) * 0.1, 1, None, "expand"),
            eqz.LayerParams(dw, rng.standard_normal(32).astype(np.float32) * 0.1, 32, None, "dw"),
            eqz.LayerParams(c, rng.standard_normal(8).astype(np.float32) * 0.1, 1, None, "project")]


LINKS = [eqz.Link(0, 1, "relu"), eqz.Link(1, 2, "relu")]


def test_equalization_preserves_the_float_function():
    layers = _badly_scaled_chain()
    res = eqz.equalize(layers, LINKS, mode="on", absorb=False)
    assert all(res.kept) and res.iterations > 1  # the depthwise layer is shared: it needed sweeps
    x = np.random.default_rng(1).standard_normal((2, 16, 6, 6))
    ref, out = _forward(layers, x, ["relu", "relu"]), _forward(res.layers, x, ["relu", "relu"])
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    # and it converged: every link's two sides have (nearly) equal channel ranges
    r1, r2 = eqz.out_range(res.layers[0].weight), eqz.in_range(res.layers[1])
    np.testing.assert_allclose(r1, r2, rtol=2e-3)
    assert np.all(layers[0].weight == _badly_scaled_chain()[0].weight)  # inputs untouched


def test_depthwise_sqnr_goes_up_and_auto_needs_statistics():
    layers = _badly_scaled_chain()
    # no BatchNorm statistics: auto cannot measure the activation side and leaves the chain alone
    assert not any(eqz.equalize(layers, LINKS, mode="auto").kept)
    res = eqz.equalize(layers, LINKS, mode="on")
    rows = {r["layer"]: r for r in res.report}
    assert all(res.kept)
    assert rows["dw"]["weight_sqnr_db_after"] > rows["dw"]["weight_sqnr_db_before"] + 3
    assert rows["expand"]["range_spread_after"] < rows["expand"]["range_spread_before"] / 10
    comp = res.components[0]
    assert comp["score_after"]["weights"] < comp["score_before"]["weights"] / 2
    off = eqz.equalize(layers, LINKS, mode="off")
    assert not any(off.kept) and all(np.array_equal(a.weight, b.weight) for a, b in zip(off.layers, layers))


def test_auto_declines_when_the_activation_noise_grows():
    # balanced weights, but a BatchNorm that says channel 0 carries all the signal: equalizing would
    # shrink nothing useful and widen the linked tensor's per-tensor range relative to the other channels
    rng = np.random.default_rng(3)
    a = rng.standard_normal((4, 4, 1, 1)).astype(np.float32)
    a[0] *= 0.05  # small weights, ...
    b = rng.standard_normal((4, 4, 1, 1)).astype(np.float32)
    gamma = np.array([20.0, 0.01, 0.01, 0.01])  # ... yet the widest activation channel by far
    layers = [eqz.LayerParams(a, np.zeros(4, np.float32), 1, (gamma, np.zeros(4)), "a"),
              eqz.LayerParams(b, np.zeros(4, np.float32), 1, None, "b")]
    res = eqz.equalize(layers, [eqz.Link(0, 1, "relu")], mode="auto")
    comp = res.components[0]
    assert comp["score_after"]["activations"] > comp["score_before"]["activations"]
    assert res.kept == [sum(comp["score_after"].values()) < sum(comp["score_before"].values())]
    assert eqz.equalize(layers, [eqz.Link(0, 1, "relu")], mode="on").kept == [True]


def test_clip_policies():
    layers = _badly_scaled_chain()
    clip = [eqz.Link(0, 1, "clip", 6.0), eqz.Link(1, 2, "clip", 6.0)]
    assert not any(eqz.equalize(layers, clip, mode="on", clip_policy="skip").kept)
    shrink = eqz.equalize(layers, clip, mode="on", clip_policy="shrink")
    assert all(np.all(s >= 1.0) for s in shrink.scales)  # the per-tensor clip only ever loosens
    with pytest.raises(ValueError, match="clip policy"):
        eqz.equalize(layers, clip, clip_policy="sometimes")


def test_bias_correction_reduces_the_expected_output_error():
    rng = np.random.default_rng(5)
    w = (rng.standard_normal((16, 8, 3, 3)) * np.exp(rng.uniform(-2, 1, (16, 1, 1, 1)))).astype(np.float32)
    layer = eqz.LayerParams(w, np.zeros(16, np.float32), 1, None, "conv")
    mean = rng.uniform(0.5, 2.0, 8)
    qw = quantize_weight(w, method="squant")
    delta = eqz.bias_correction(layer, qw.dequantize(), mean)
    x = mean.reshape(1, -1, 1, 1) + 0.3 * rng.standard_normal((64, 8, 8, 8))
    ref = conv2d(x.astype(np.float32), w, (1, 1), (0, 0)).astype(np.float64)
    got = conv2d(x.astype(np.float32), qw.dequantize(), (1, 1), (0, 0)).astype(np.float64)
    err_plain = np.abs((got - ref).mean(axis=(0, 2, 3)))
    err_fixed = np.abs((got + delta.reshape(1, -1, 1, 1) - ref).mean(axis=(0, 2, 3)))
    assert err_fixed.sum() < 0.2 * err_plain.sum()
    # depthwise and dense layers take the same path
    dwl = eqz.LayerParams(w[:, :1], None, 16, None, "dw")
    d = eqz.bias_correction(dwl, quantize_weight(w[:, :1]).dequantize(), np.ones(16))
    assert d.shape == (16,)
    dense = eqz.LayerParams(w.reshape(16, -1), None, 1, None, "fc")
    assert eqz.bias_correction(dense, quantize_weight(w.reshape(16, -1)).dequantize(), np.ones(72)).shape == (16,)


def test_bias_absorption_moves_the_shift_where_batchnorm_says_it_is_safe():
    rng = np.random.default_rng(7)
    a = rng.standard_normal((4, 3, 1, 1)).astype(np.float32)
    b = rng.standard_normal((5, 4, 1, 1)).astype(np.float32)
    beta, gamma = np.array([5.0, 0.1, 3.0, -1.0]), np.array([1.0, 1.0, 0.5, 1.0])
    layers = [eqz.LayerParams(a, beta.astype(np.float32), 1, (gamma, beta), "a"),
              eqz.LayerParams(b, np.zeros(5, np.float32), 1, None, "b")]
    res = eqz.equalize(layers, [eqz.Link(0, 1, "relu")], mode="on")
    g2, b2 = res.layers[0].bn
    c = beta / res.scales[0] - b2  # what left A (in the equalized units)
    assert c[0] > 0 and c[2] > 0 and c[1] == 0 and c[3] == 0  # only channels that never reach 0
    # where x >= c (all of BatchNorm's mass there), relu(x - c) through B + B's new bias == before
    x = (beta / res.scales[0]).reshape(1, 4, 1, 1)
    out_new = np.einsum("oi,nihw->nohw", res.layers[1].weight[:, :, 0, 0], np.maximum(x - c.reshape(1, 4, 1, 1), 0))
    out_new += res.layers[1].bias.reshape(1, -1, 1, 1)
    out_old = np.einsum("oi,nihw->nohw", res.layers[1].weight[:, :, 0, 0], np.maximum(x, 0))
    np.testing.assert_allclose(out_new, out_old, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------------
# the graph side


def _onnx_chain(act: str):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b1"),
             numpy_helper.from_array((rng.standard_normal((4, 8, 1, 1)) * 0.3).astype(np.float32), "w2"),
             numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b2")]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node(act, ["c1"], ["a1"], name="act"),
             helper.make_node("Conv", ["a1", "w2", "b2"], ["y"], name="conv2")]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("act, linked", [("Relu", True), ("HardSwish", False)])
def test_links_follow_relu_but_not_hardswish(tmp_path, act, linked):
    import onnx

    from isquant_tvm import api
    from isquant_tvm.fold import chains
    from isquant_tvm.fold.layers import find_layers

    path = tmp_path / "chain.onnx"
    onnx.save(_onnx_chain(act), str(path))
    model = api.load(str(path))
    folded = api.prepare(model)
    links = chains.find_links(folded["main"], find_layers(folded["main"]))
    assert bool(links) == linked
    if linked:
        assert (links[0].a, links[0].b, links[0].act) == ("conv0", "conv1", "relu")


def test_stage_keeps_the_float_model_and_its_vars():
    """The must-show on a real graph: equalization alone (no absorption) leaves the built-in CIFAR
    ResNet-20's float outputs equal to float precision, and the module keeps its binding vars."""
    from isquant_tvm import api
    from isquant_tvm.fold.layers import find_layers
    from isquant_tvm.quantize.equalize_stage import equalize_stage
    from isquant_tvm.reference.interpreter import Interpreter
    from isquant_tvm.util import tvm_compat

    model = api.load("builtin:resnet20-cifar")
    folded = api.prepare(model)
    layers = find_layers(folded["main"], model.layer_names)
    stage = equalize_stage(model, folded, layers, "on", absorb=False)
    assert stage.summary["links"] == 9 and stage.summary["links_rescaled"] == 9  # conv1 -> relu -> conv2 per block
    assert all(a.var.same_as(b.var) for a, b in zip(layers, stage.layers))
    assert any(not np.array_equal(a.weight, b.weight) for a, b in zip(layers, stage.layers))
    old = [b.var for b in tvm_compat.bindings(folded["main"])]
    new = [b.var for b in tvm_compat.bindings(stage.float_mod["main"])]
    assert all(a.same_as(b) for a, b in zip(old, new))
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    ref = Interpreter(folded).run([x])[0][0]
    out = Interpreter(stage.float_mod).run([x])[0][0]
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())
    assert equalize_stage(model, folded, layers, "off") is None


def _bn_chain() -> tuple[list[eqz.LayerParams], list[eqz.Link]]:
    """The badly scaled chain with BatchNorm statistics that grow where the weights shrink (std ~ 1 /
    sqrt(range)): full equalization widens the linked tensors' per-tensor ranges more than it gains on
    the weights, a partial one gains in total."""
    layers = _badly_scaled_chain()
    rng = np.random.default_rng(11)
    for lay in layers[:2]:
        r = eqz.out_range(lay.weight).astype(np.float64) ** -0.5
        lay.bn = (r * rng.uniform(0.5, 1.5, r.size), 0.1 * r)
    return layers, LINKS


def test_auto_picks_a_partial_strength_and_keeps_the_float_function():
    layers, links = _bn_chain()
    res = eqz.equalize(layers, links, mode="auto", absorb=False)
    comp = res.components[0]
    full = eqz.equalize(layers, links, mode="on", absorb=False).components[0]
    before = sum(comp["score_before"].values())
    assert comp["kept"] and 0.0 < comp["strength"] < 1.0
    assert sum(comp["score_after"].values()) < before  # the chosen strength lowers the measured total,
    assert sum(full["score_after"].values()) > sum(comp["score_after"].values())  # full equalization less
    assert comp["score_after"]["activations"] > comp["score_before"]["activations"]  # (a trade, measured)
    x = np.random.default_rng(1).standard_normal((2, 16, 6, 6))
    ref, out = _forward(layers, x, ["relu", "relu"]), _forward(res.layers, x, ["relu", "relu"])
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    rows = {r["layer"]: r for r in res.report}
    assert rows["dw"]["weight_sqnr_db_after"] > rows["dw"]["weight_sqnr_db_before"]


def test_bias_correction_share_is_the_mean_terms_part_of_the_error():
    rng = np.random.default_rng(13)
    w = rng.standard_normal((8, 4, 3, 3)).astype(np.float32)
    layer = eqz.LayerParams(w, np.zeros(8, np.float32), 1, None, "conv")
    deq = quantize_weight(w, method="rtn").dequantize()
    mean = rng.uniform(0.5, 2.0, 4)
    assert eqz.bias_correction_share(layer, deq, mean, np.zeros(4)) == pytest.approx(1.0)  # constant input
    assert eqz.bias_correction_share(layer, deq, np.zeros(4), np.ones(4)) == 0.0  # zero-mean input
    # against a sampled output: E[err]^2 / E[err^2] over pixels with independent N(mean, var) inputs
    var = rng.uniform(0.1, 1.0, 4)
    x = mean.reshape(1, -1, 1, 1) + np.sqrt(var).reshape(1, -1, 1, 1) * rng.standard_normal((256, 4, 3, 3))
    err = conv2d(x.astype(np.float32), deq - w, (1, 1), (0, 0)).astype(np.float64)[:, :, 0, 0]
    sampled = float(np.sum(err.mean(axis=0) ** 2) / np.sum(np.mean(err ** 2, axis=0)))
    assert eqz.bias_correction_share(layer, deq, mean, var) == pytest.approx(sampled, rel=0.15)


def test_auto_bias_correction_skips_mixed_statistics_and_small_shares():
    """auto corrects a layer's bias only where its input statistics are propagated without a residual
    mix and the correction removes >= AUTO_SHARE of the expected error; every row says why."""
    from isquant_tvm import api
    from isquant_tvm.fold.layers import find_layers
    from isquant_tvm.quantize import equalize_stage as es

    model = api.load("builtin:resnet20-cifar")
    folded = api.prepare(model)
    layers = find_layers(folded["main"], model.layer_names)
    stage = es.equalize_stage(model, folded, layers, "auto")
    weights = {layer.id: quantize_weight(layer.weight, method="squant") for layer in stage.layers}
    es.bias_correct(stage, weights)
    rows = [r for r in stage.report if "bias_error_share" in r]
    assert rows and any(r["input_mixed"] for r in rows) and any(not r["input_mixed"] for r in rows)
    for r in rows:
        ran = r["bias_correction"] == "ran"
        assert ran == (not r["input_mixed"] and r["bias_error_share"] >= es.AUTO_SHARE), r
    assert stage.summary["bias_corrected_layers"] == sum(r["bias_correction"] == "ran" for r in rows)
    assert [d["kept"] for d in stage.summary["decisions"]].count(True) == stage.summary["components_kept"]
