"""The quantize pass: TVMScript Before modules -> qnn-level modules, checked structurally and numerically."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import tvm
from tvm import relax
from tvm.script import ir as I
from tvm.script import relax as R
from tvm.script import tirx as T

from isquant_tvm.rounding import isquant
from isquant_tvm.reference import interpreter as reference
from isquant_tvm.reference.fixed_point import quantize_multiplier
from isquant_tvm.fold.layers import find_layers
from isquant_tvm.qnn import ops as qnn_ops
from isquant_tvm.legalize.legalize import legalize
from isquant_tvm.quantize.rewrite import quantize_module
from isquant_tvm.ranges.activation import choose, collect, synthetic_inputs

RNG = np.random.default_rng(0)
W1 = RNG.standard_normal((8, 3, 3, 3)).astype("float32") * 0.3
B1 = RNG.standard_normal((1, 8, 1, 1)).astype("float32") * 0.1
W2 = RNG.standard_normal((8, 8, 3, 3)).astype("float32") * 0.2
B2 = RNG.standard_normal((1, 8, 1, 1)).astype("float32") * 0.1
WFC = RNG.standard_normal((8, 4)).astype("float32") * 0.5
BFC = RNG.standard_normal((1, 4)).astype("float32") * 0.1


@I.ir_module
class Before:
    @R.function
    def main(x: R.Tensor((1, 3, 8, 8), "float32")) -> R.Tensor((1, 4), "float32"):
        with R.dataflow():
            c1 = R.nn.conv2d(x, R.const(W1), padding=[1, 1, 1, 1])
            b1 = R.add(c1, R.const(B1))
            r1 = R.nn.relu(b1)
            c2 = R.nn.conv2d(r1, R.const(W2), padding=[1, 1, 1, 1])
            b2 = R.add(c2, R.const(B2))
            s = R.add(b2, r1)
            r2 = R.clip(s, T.float32(0.0), T.float32(6.0))
            p = R.mean(r2, axis=[2, 3], keepdims=False)
            f = R.matmul(p, R.const(WFC))
            y = R.add(f, R.const(BFC))
            R.output(y)
        return y


def _quantize(mod: tvm.IRModule):
    func = mod["main"]
    layers = find_layers(func)
    weights = {layer.id: isquant.quantize_weight(layer.weight) for layer in layers}
    stats = collect(mod, synthetic_inputs([(1, 3, 8, 8)], count=4))
    ranges = choose(stats, "sigma")
    return quantize_module(mod, layers, weights, ranges, input_range=3.0)


def _calls(mod: tvm.IRModule) -> list[str]:
    names = []
    for block in mod["main"].body.blocks:
        for binding in block.bindings:
            op = qnn_ops.qnn_op_of(mod, binding.value)
            if op:
                names.append(op)
            elif isinstance(binding.value, relax.Call) and isinstance(binding.value.op, tvm.ir.Op):
                names.append(binding.value.op.name)
    return names


def _attrs(mod: tvm.IRModule, op: str) -> list[dict]:
    return [qnn_ops.attrs_of(f) for _, f in mod.functions_items()
            if isinstance(f, relax.Function) and f.attrs and f.attrs.get("qnn.op") == op]


def test_before_becomes_qnn_ops() -> None:
    result = _quantize(Before)
    # conv+bias+relu and conv+bias -> residual add+ReLU6 -> pooled int32 sums -> int64 classifier to float
    assert _calls(result.mod) == ["qnn.quantize", "qnn.conv2d", "qnn.conv2d", "qnn.add", "qnn.global_avg_pool2d",
                                  "qnn.dense"]
    assert result.fallbacks == {}
    convs = _attrs(result.mod, "qnn.conv2d")
    first = next(a for a in convs if a["layer"] == "conv0")
    assert first["out_dtype"] == "uint8" and first["out_min"] == 0 and first["out_max"] == 255
    second = next(a for a in convs if a["layer"] == "conv1")
    assert second["out_dtype"] == "int8"  # a residual branch before the add is signed
    add = _attrs(result.mod, "qnn.add")[0]
    assert add["out_dtype"] == "uint8" and add["out_min"] == 0  # ReLU6 folded into the add's bounds
    assert add["output_scale"] * 255 <= 6.0 + 1e-6  # and its range capped at 6
    dense = _attrs(result.mod, "qnn.dense")[0]
    assert dense["out_dtype"] == "float32"  # the classifier dequantizes its accumulator
    assert "qnn.conv2d" in result.mod.script(show_meta=False)


def test_integer_graph_is_bit_exact_and_close_to_float() -> None:
    result = _quantize(Before)
    legal, chosen = legalize(result.mod, only_reference=True)
    assert all(k.endswith(":reference") for k in chosen)
    ex = tvm.compile(legal, target="llvm")
    vm = relax.VirtualMachine(ex, tvm.cpu())
    x = RNG.standard_normal((1, 3, 8, 8)).astype("float32")
    got = vm["main"](tvm.runtime.tensor(x)).numpy()
    want = reference.run(result.mod, [x])[0]
    np.testing.assert_array_equal(got, want)
    fp = reference.run(Before, [x])[0]
    cos = float((got * fp).sum() / np.linalg.norm(got) / np.linalg.norm(fp))
    assert cos > 0.99, cos


@I.ir_module
class WithUnsupported:
    @R.function
    def main(x: R.Tensor((1, 3, 8, 8), "float32")) -> R.Tensor((1, 8, 8, 8), "float32"):
        with R.dataflow():
            c1 = R.nn.conv2d(x, R.const(W1), padding=[1, 1, 1, 1])
            s = R.nn.softmax(c1, axis=1)  # no integer rule (sigmoid has one: quantize/lut.py)
            c2 = R.nn.conv2d(s, R.const(W2), padding=[1, 1, 1, 1])
            R.output(c2)
        return c2


def test_unsupported_op_stays_float_with_warning(caplog) -> None:
    with caplog.at_level(logging.WARNING):
        result = _quantize(WithUnsupported)
    assert result.fallbacks == {"nn.softmax": 1}
    assert "stay float" in caplog.text
    calls = _calls(result.mod)
    # conv -> float island: the conv dequantizes its accumulator; the next conv re-quantizes its input
    assert calls == ["qnn.quantize", "qnn.conv2d", "relax.nn.softmax", "qnn.quantize", "qnn.conv2d"]
    assert {a["out_dtype"] for a in _attrs(result.mod, "qnn.conv2d")} == {"float32"}
    x = RNG.standard_normal((1, 3, 8, 8)).astype("float32")
    legal, _ = legalize(result.mod, only_reference=True)
    got = relax.VirtualMachine(tvm.compile(legal, target="llvm"), tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    np.testing.assert_allclose(got, reference.run(result.mod, [x])[0], rtol=1e-6, atol=1e-6)


@I.ir_module
class ExpectedRequantize:
    @R.function(private=True)
    def qnn_op(data: R.Tensor((1, 4), "int32"), multiplier: R.Tensor((), "int64")) -> R.Tensor((1, 4), "int8"):
        R.func_attr({"out_dtype": "int8", "out_max": 127, "out_min": -128, "qnn.op": "qnn.requantize", "shift": 33})
        with R.dataflow():
            lv = R.astype(data, "int64")
            lv1 = R.multiply(lv, multiplier)
            lv2 = R.left_shift(R.const(1, "int64"), R.subtract(R.const(33, "int64"), R.const(1, "int64")))
            lv3 = R.right_shift(R.add(lv1, lv2), R.const(33, "int64"))
            lv4 = R.clip(lv3, T.int64(-128), T.int64(127))
            gv = R.astype(lv4, "int8")
            R.output(gv)
        return gv


def test_requantize_reference_lowering_structure() -> None:
    data = relax.Var("data", relax.TensorType((1, 4), "int32"))
    mult = relax.Var("multiplier", relax.TensorType((), "int64"))
    func = qnn_ops.make_function("qnn.requantize", [data, mult],
                                 {"shift": 33, "out_dtype": "int8", "out_min": -128, "out_max": 127})
    tvm.ir.assert_structural_equal(func, ExpectedRequantize["qnn_op"], map_free_vars=True)


def test_fixed_point_multiplier_and_rounding() -> None:
    real = np.array([0.5, 0.0123, 0.99999, 3.0e-7])
    m, n = quantize_multiplier(real)
    assert np.all((m >= 2**30) & (m < 2**31))
    np.testing.assert_allclose(m * 2.0 ** -n.astype(float), real, rtol=2**-30)
    from isquant_tvm.reference.fixed_point import requantize

    # 0.5 multiplier: 3 -> 1.5 -> 2 and -3 -> -1.5 -> -1 (half rounds towards +inf), saturation at the bounds
    mm, nn = quantize_multiplier(0.5)
    assert requantize(np.array([3, -3, 1000, -1000]), mm, nn, -128, 127).tolist() == [2, -1, 127, -128]


def test_registry_picks_higher_priority_rule_and_falls_back() -> None:
    from isquant_tvm.legalize import legalize as lg

    seen = []

    def custom_add(bb, args, attrs, target):
        seen.append(attrs["shift"])
        return qnn_ops.ref_add(bb, args, attrs, target)

    lg.register("qnn.add", "test-custom", lambda target, attrs: target == "test-target", custom_add, priority=50)
    try:
        result = _quantize(Before)
        assert lg.select("qnn.add", "test-target", {}).name == "test-custom"
        assert lg.select("qnn.add", "other", {}).name == "reference"
        mod, chosen = lg.legalize(result.mod, target=None)
        assert chosen.get("qnn.add:reference") == 1
    finally:
        lg.REGISTRY["qnn.add"] = [e for e in lg.REGISTRY["qnn.add"] if e.name != "test-custom"]



def test_rule_table_default_and_errors(monkeypatch) -> None:
    """Dispatch is the RULES table: an op whose rule is missing stays float and is counted; a rule that
    declines for a missing range is counted with the reason; a bug inside a rule is an error naming the op."""
    from isquant_tvm.quantize import rewrite

    assert rewrite.RULES["relax.nn.max_pool2d"] == "rule_max_pool2d"
    monkeypatch.delitem(rewrite.RULES, "relax.mean")
    result = _quantize(Before)
    assert result.fallbacks == {"mean": 1}

    def declines(m, var, value, op, args):
        raise rewrite.MissingRange("no activation range for p")

    monkeypatch.setitem(rewrite.RULES, "relax.mean", declines)
    result = _quantize(Before)
    assert result.fallbacks == {"mean": 1} and "no activation range" in result.fallback_reasons["mean"]

    def broken(m, var, value, op, args):
        return {}["missing"]

    monkeypatch.setitem(rewrite.RULES, "relax.mean", broken)
    # (TVM's FFI re-raises it as a RuntimeError with the same message)
    with pytest.raises(RuntimeError, match=r"quantize rule for relax\.mean \(tensor p\) failed: KeyError"):
        _quantize(Before)
