"""qnn.lut (element-wise activations as 256-entry tables) and qnn.mul (SE gates): the quantize rules
(quantize/lut.py, quantize/elementwise.py), bit-exact TVM (reference and glue lowerings) vs the numpy
reference, and close to the float graph."""
from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax
from tvm.script import ir as I
from tvm.script import relax as R
from tvm.script import tirx as T

from isquant_tvm.fold.layers import find_layers
from isquant_tvm.legalize.legalize import legalize
from isquant_tvm.qnn import ops as qnn_ops
from isquant_tvm.quantize.rewrite import quantize_module
from isquant_tvm.ranges.activation import choose, collect, synthetic_inputs
from isquant_tvm.reference import interpreter as reference
from isquant_tvm.rounding import isquant
from isquant_tvm.util import tvm_compat

RNG = np.random.default_rng(15)
C = 16


def _w(o, i, k=3, s=0.25):
    return (RNG.standard_normal((o, i, k, k)) * s).astype("float32")


def _b(o, s=0.3):
    return (RNG.standard_normal((1, o, 1, 1)) * s).astype("float32")


W0, B0 = _w(C, 3, s=0.4), _b(C)
W1, B1 = _w(C, C, s=0.12), _b(C)
W2, B2 = _w(C, C, s=0.12), _b(C)
W3, B3 = _w(C, C, s=0.12), _b(C)
W4, B4 = _w(C, C, s=0.12), _b(C)
W5, B5 = _w(C, C, s=0.12), _b(C)
W6, B6 = _w(C, C, s=0.12), _b(C)
WS1, BS1 = _w(8, C, 1, 0.3), _b(8)
WS2, BS2 = _w(C, 8, 1, 0.3), _b(C)
SLOPE = np.linspace(-0.3, 0.4, C).astype("float32")


@I.ir_module
class Acts:
    """conv -> hard-swish (as the importer emits it) -> SE gate with hard-sigmoid -> conv -> leaky ->
    conv -> PReLU -> conv -> x*sigmoid(x) -> conv -> GELU + residual -> conv -> tanh -> conv."""
    @R.function
    def main(x: R.Tensor((1, 3, 12, 12), "float32")) -> R.Tensor((1, C, 12, 12), "float32"):
        with R.dataflow():
            c0 = R.add(R.nn.conv2d(x, R.const(W0), padding=[1, 1, 1, 1]), R.const(B0))
            h0 = R.add(c0, R.const(3.0, "float32"))
            h1 = R.clip(h0, T.float32(0.0), T.float32(6.0))
            h2 = R.divide(h1, R.const(6.0, "float32"))
            hs = R.multiply(c0, h2)
            p = R.mean(hs, axis=[2, 3], keepdims=True)
            s1 = R.nn.relu(R.add(R.nn.conv2d(p, R.const(WS1)), R.const(BS1)))
            s2 = R.add(R.nn.conv2d(s1, R.const(WS2)), R.const(BS2))
            g0 = R.multiply(R.const(0.16666667, "float32"), s2)
            g1 = R.add(g0, R.const(0.5, "float32"))
            g = R.clip(g1, T.float32(0.0), T.float32(1.0))
            se = R.multiply(hs, g)
            c1 = R.add(R.nn.conv2d(se, R.const(W1), padding=[1, 1, 1, 1]), R.const(B1))
            l1 = R.nn.leakyrelu(c1, alpha=0.1)
            c2 = R.add(R.nn.conv2d(l1, R.const(W2), padding=[1, 1, 1, 1]), R.const(B2))
            l2 = R.nn.prelu(c2, R.const(SLOPE), axis=1)
            c3 = R.add(R.nn.conv2d(l2, R.const(W3), padding=[1, 1, 1, 1]), R.const(B3))
            sg = R.sigmoid(c3)
            l3 = R.multiply(c3, sg)
            c4 = R.add(R.nn.conv2d(l3, R.const(W4), padding=[1, 1, 1, 1]), R.const(B4))
            l4 = R.nn.gelu(c4)
            r = R.add(l4, l3)
            c5 = R.add(R.nn.conv2d(r, R.const(W5), padding=[1, 1, 1, 1]), R.const(B5))
            t = R.tanh(c5)
            y = R.add(R.nn.conv2d(t, R.const(W6), padding=[1, 1, 1, 1]), R.const(B6))
            R.output(y)
        return y


def _quantize(mod, shape=(1, 3, 12, 12)):
    layers = find_layers(mod["main"])
    weights = {layer.id: isquant.quantize_weight(layer.weight) for layer in layers}
    stats = collect(mod, synthetic_inputs([shape], count=4))
    return quantize_module(mod, layers, weights, choose(stats, "minmax"), input_range=3.0)


def _qnn_calls(mod) -> list[str]:
    return [qnn_ops.qnn_op_of(mod, b.value) for b in tvm_compat.bindings(mod["main"])
            if qnn_ops.qnn_op_of(mod, b.value)]


@pytest.fixture(scope="module")
def acts():
    return _quantize(Acts)


def _run(mod, target, x):
    ex = tvm.compile(mod, target=target)
    return relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()


def test_every_activation_becomes_integer(acts) -> None:
    assert acts.fallbacks == {}
    calls = _qnn_calls(acts.mod)
    assert calls.count("qnn.lut") == 7 and calls.count("qnn.mul") == 1, calls
    assert calls[-1] == "qnn.conv2d" and calls.count("qnn.quantize") == 1


@I.ir_module
class ScoreHead:
    @R.function
    def main(x: R.Tensor((1, 3, 12, 12), "float32")) -> R.Tuple(R.Tensor((1, C, 12, 12), "float32"),
                                                                  R.Tensor((1, C, 12, 12), "float32")):
        with R.dataflow():
            c0 = R.add(R.nn.conv2d(x, R.const(W0), padding=[1, 1, 1, 1]), R.const(B0))
            s = R.sigmoid(c0)
            box = R.nn.relu(c0)
            out = (box, R.reshape(s, (1, C, 12, 12)))
            R.output(out)
        return out


def test_output_head_on_a_conv_stays_full_precision() -> None:
    """sigmoid scores leaving the graph: float on the dequantized int32 accumulator, not a 256-level LUT."""
    res = quantize_module(ScoreHead, find_layers(ScoreHead["main"]),
                          {l.id: isquant.quantize_weight(l.weight) for l in find_layers(ScoreHead["main"])},
                          choose(collect(ScoreHead, synthetic_inputs([(1, 3, 12, 12)], count=2)), "minmax"),
                          input_range=3.0)
    assert res.fallbacks.get("sigmoid") == 1 and "qnn.lut" not in _qnn_calls(res.mod)


def test_lut_and_mul_bit_exact(acts) -> None:
    x = RNG.standard_normal((1, 3, 12, 12)).astype("float32")
    want = reference.run(acts.mod, [x])[0]
    target = tvm.target.Target({"kind": "llvm", "mcpu": "cascadelake", "num-cores": 2})
    fast, chosen = legalize(acts.mod, target)
    assert chosen.get("qnn.lut:glue") == 7 and chosen.get("qnn.mul:glue") == 1, chosen
    np.testing.assert_array_equal(_run(fast, target, x), want)
    fp = reference.run(Acts, [x])[0]
    cos = float((want * fp).sum() / np.linalg.norm(want) / np.linalg.norm(fp))
    assert cos > 0.99, cos


def test_reference_lowerings_of_the_new_ops() -> None:
    """qnn.lut (per channel), qnn.mul (broadcast), qnn.avg_pool2d, qnn.resize2d: their Relax bodies (the
    reference lowering every kernel falls back to) == the numpy semantics, in one small build."""
    from isquant_tvm.quantize import movement, pooling

    rng = np.random.default_rng(7)
    xs = rng.integers(-128, 128, (1, 4, 5, 6)).astype("int8")
    gate = rng.integers(0, 256, (1, 4, 1, 1)).astype("uint8")
    table = rng.integers(0, 256, (4, 256)).astype("uint8")
    counts = pooling.window_counts(5, 6, [3, 2], [2, 1], [1, 0, 1, 1], False)
    m, n = pooling.pool_multipliers(counts)
    rows, cols = movement.linear_tables(5, 9, "half_pixel"), movement.linear_tables(6, 11, "align_corners")
    bb = relax.BlockBuilder()
    xv, gv = relax.Var("x", relax.TensorType(xs.shape, "int8")), relax.Var("g", relax.TensorType(gate.shape, "uint8"))
    calls = [("qnn.lut", [xv, qnn_ops.const(table)], {"out_dtype": "uint8", "output_scale": 0.1}),
             ("qnn.mul", [xv, gv, qnn_ops.const(np.int64(1 << 30))], {"shift": 36, "out_dtype": "int8",
                                                                      "out_min": -128, "out_max": 127}),
             ("qnn.avg_pool2d", [xv, qnn_ops.const(m)], {"pool_size": [3, 2], "strides": [2, 1],
                                                        "padding": [1, 0, 1, 1], "shift": n, "out_dtype": "int8",
                                                        "out_min": -128, "out_max": 127}),
             ("qnn.resize2d", [xv, qnn_ops.const(rows), qnn_ops.const(cols)], {"bits": 7, "out_dtype": "int8"})]
    with bb.function("main", [xv, gv]):
        with bb.dataflow():
            outs = []
            for op, args, attrs in calls:
                fn = bb.add_func(qnn_ops.make_function(op, args, attrs), op.replace(".", "_"))
                outs.append(bb.emit(relax.Call(fn, args)))
            out = bb.emit_output(relax.Tuple(outs))
        bb.emit_func_output(out)
    mod = bb.get()
    ref_mod, chosen = legalize(mod, only_reference=True)
    assert set(chosen) == {f"{op}:reference" for op, _, _ in calls}
    vm = relax.VirtualMachine(tvm.compile(ref_mod, target="llvm"), tvm.cpu())
    got = [t.numpy() for t in vm["main"](tvm.runtime.tensor(xs), tvm.runtime.tensor(gate))]
    for g, w in zip(got, reference.run(mod, [xs, gate])):
        np.testing.assert_array_equal(g, w)


@pytest.fixture(scope="module")
def mv3_block(tmp_path_factory):
    import isquant_tvm as iq

    from ..helpers import mobilenet_v3_block_onnx

    d = tmp_path_factory.mktemp("mv3")
    path = mobilenet_v3_block_onnx(d / "block.onnx")
    return iq.compile(str(path), target="x86", output=d / "block_x86.so", progress=False)


def test_mobilenet_v3_block_is_all_integer_and_bit_exact(mv3_block) -> None:
    """HardSwish / HardSigmoid / PRelu / x*Sigmoid(x) as the ONNX importer emits them, the SE gate's Mul on
    NCHW16c activations: no float op left, TVM == numpy reference, close to the float model."""
    report = mv3_block.report
    assert report["summary"]["float_fallback_ops"] == 0 and report["fallbacks"] == {}
    low = report["lowerings"]
    assert low.get("qnn.lut:glue") == 6 and low.get("qnn.mul:glue") == 1, low
    assert low.get("layout:NCHW16c", 0) > 0
    rules = {t["tensor"]: t["rule"] for t in report["tensors"]}
    assert sum(r == "lut exact" for r in rules.values()) == 6
    x = np.random.default_rng(3).standard_normal((1, 3, 32, 32)).astype("float32")
    got = mv3_block.runner().run({"input": x})[0]
    np.testing.assert_array_equal(got, reference.run(mv3_block.quantized.qnn_mod, [x])[0])
    fp = reference.run(mv3_block.quantized.float_mod, [x])[0]
    cos = float((got * fp).sum() / np.linalg.norm(got) / np.linalg.norm(fp))
    assert cos > 0.99, cos


WM0, BM0 = _w(C, 3, s=0.4), _b(C)
WM1, BM1 = _w(8, C + 12, s=0.15), _b(8)
WT1, BT1 = (RNG.standard_normal((8, 4, 2, 2)) * 0.3).astype("float32"), _b(4)
WT2 = (RNG.standard_normal((4, 2, 3, 3)) * 0.3).astype("float32")
WOUT = _w(4, 4, 1, 0.5)


@I.ir_module
class Movement:
    """conv -> channel split (two forms) -> nearest (three modes) and bilinear upsampling ->
    concat -> conv -> average pools (padding excluded / included) -> ConvTranspose (2x2 s2 + bias + ReLU; 3x3 s2
    grouped with output padding) -> conv: all on the integers."""
    @R.function
    def main(x: R.Tensor((1, 3, 8, 8), "float32")) -> R.Tensor((1, 4, 32, 64), "float32"):
        with R.dataflow():
            c0 = R.nn.relu(R.add(R.nn.conv2d(x, R.const(WM0), padding=[1, 1, 1, 1]), R.const(BM0)))
            parts = R.split(c0, indices_or_sections=[4], axis=1)
            a = parts[0]
            b = parts[1]
            halves = R.split(b, indices_or_sections=2, axis=1)
            b0 = halves[0]
            b1 = halves[1]
            ua = R.image.resize2d(a, R.shape([16, 16]), method="nearest_neighbor",
                                  coordinate_transformation_mode="asymmetric", rounding_method="floor")
            ub = R.image.resize2d(b0, R.shape([16, 16]), method="nearest_neighbor",
                                  coordinate_transformation_mode="half_pixel", rounding_method="round_prefer_ceil")
            ub1 = R.image.resize2d(b1, R.shape([16, 16]), method="nearest_neighbor",
                                   coordinate_transformation_mode="align_corners", rounding_method="round")
            lin = R.image.resize2d(b1, R.shape([16, 16]), method="linear",
                                   coordinate_transformation_mode="half_pixel")
            ali = R.image.resize2d(b1, R.shape([16, 16]), method="linear",
                                   coordinate_transformation_mode="align_corners")
            cat = R.concat([ua, ub, ub1, lin, ali], axis=1)
            y0 = R.add(R.nn.conv2d(cat, R.const(WM1), padding=[1, 1, 1, 1]), R.const(BM1))
            ap = R.nn.avg_pool2d(y0, pool_size=[3, 3], strides=[1, 1], padding=[1, 1, 1, 1], count_include_pad=False)
            p2 = R.nn.avg_pool2d(ap, pool_size=[2, 3], strides=[2, 1], padding=[0, 1, 1, 1], count_include_pad=True)
            t1 = R.nn.relu(R.add(R.nn.conv2d_transpose(p2, R.const(WT1), strides=[2, 2]), R.const(BT1)))
            t2 = R.nn.conv2d_transpose(t1, R.const(WT2), strides=[2, 2], padding=[1, 1, 1, 1], output_padding=[1, 1],
                                       groups=2)
            y = R.nn.conv2d(t2, R.const(WOUT))  # a conv head: what follows the last conv may stay float
            R.output(y)
        return y


def test_split_resize_pools_conv_transpose_stay_integer() -> None:
    res = _quantize(Movement, (1, 3, 8, 8))
    assert res.fallbacks == {}, res.fallbacks
    names = [b.value.op.name for b in tvm_compat.bindings(res.mod["main"])
             if isinstance(b.value, relax.Call) and isinstance(b.value.op, tvm.ir.Op)]
    assert names.count("relax.strided_slice") == 4 + 2 and names.count("relax.image.resize2d") == 3  # + zero inserts
    assert "relax.split" not in names
    assert _qnn_calls(res.mod).count("qnn.resize2d") == 2
    assert _qnn_calls(res.mod).count("qnn.avg_pool2d") == 2 and _qnn_calls(res.mod).count("qnn.conv2d") == 5
    x = RNG.standard_normal((1, 3, 8, 8)).astype("float32")
    want = reference.run(res.mod, [x])[0]
    target = tvm.target.Target({"kind": "llvm", "mcpu": "cascadelake", "num-cores": 2})
    fast, chosen = legalize(res.mod, target)
    assert chosen.get("qnn.avg_pool2d:glue") == 2 and chosen.get("qnn.resize2d:glue") == 2, chosen
    np.testing.assert_array_equal(_run(fast, target, x), want)
    fp = reference.run(Movement, [x])[0]
    assert float((want * fp).sum() / np.linalg.norm(want) / np.linalg.norm(fp)) > 0.99


@I.ir_module
class FloatRules:
    @R.function
    def main(x: R.Tensor((1, 8, 5, 7), "float32")):
        with R.dataflow():
            t1 = R.nn.conv2d_transpose(x, R.const(WT1), strides=[2, 2])
            t2 = R.nn.conv2d_transpose(t1, R.const(WT2), strides=[2, 3], padding=[1, 0, 2, 1], output_padding=[1, 2],
                                       groups=2)
            r = R.image.resize2d(x, R.shape([9, 16]), method="linear", coordinate_transformation_mode="half_pixel")
            g = R.nn.gelu(x)
            p = R.nn.prelu(x, R.const(SLOPE[:8]), axis=1)
            out = (t2, r, g, p)
            R.output(out)
        return out


def test_numpy_float_rules_match_tvm() -> None:
    """The numpy rules the LUTs and the range step evaluate (conv2d_transpose, linear resize, gelu, prelu)
    against TVM's own float ops."""
    x = RNG.standard_normal((1, 8, 5, 7)).astype("float32")
    vm = relax.VirtualMachine(tvm.compile(FloatRules, target="llvm"), tvm.cpu())
    got = [t.numpy() for t in vm["main"](tvm.runtime.tensor(x))]
    for g, w in zip(got, reference.run(FloatRules, [x])):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


WHS = _w(4, 4, 1, 0.5)


@I.ir_module
class HardSwishBefore:
    @R.function
    def main(x: R.Tensor((1, 4, 2, 2), "float32")) -> R.Tensor((1, 4, 2, 2), "float32"):
        with R.dataflow():
            a = R.add(x, R.const(3.0, "float32"))
            b = R.clip(a, T.float32(0.0), T.float32(6.0))
            c = R.divide(b, R.const(6.0, "float32"))
            y = R.multiply(x, c)
            out = R.nn.conv2d(y, R.const(WHS))
            R.output(out)
        return out


S_IN = float(np.float32(3.0 / 127))  # the pipeline's scales are float32 values (what a QDQ export holds)
_LEVELS = np.arange(-128, 128).astype(np.float32) * np.float32(S_IN)
_HS = (_LEVELS * np.clip(_LEVELS + np.float32(3), 0, 6) / np.float32(6)).astype(np.float64)
S_OUT = float(np.float32(float(np.abs(_HS).max()) / 127))
HS_TABLE = np.clip(np.rint(_HS / S_OUT), -128, 127).astype("int8").reshape(1, 256)


@I.ir_module
class HardSwishExpected:
    @R.function(private=True)
    def qnn_quantize_x(data: R.Tensor((1, 4, 2, 2), "float32")) -> R.Tensor((1, 4, 2, 2), "int8"):
        R.func_attr({"qnn.op": "qnn.quantize", "scale": S_IN, "out_dtype": "int8"})
        with R.dataflow():
            gv = R.quantize(data, R.const(S_IN, "float32"), R.const(0, "int8"), axis=1, out_dtype="int8")
            R.output(gv)
        return gv

    @R.function(private=True)
    def qnn_lut_y(data: R.Tensor((1, 4, 2, 2), "int8"), table: R.Tensor((1, 256), "int8")) -> R.Tensor((1, 4, 2, 2), "int8"):
        R.func_attr({"qnn.op": "qnn.lut", "out_dtype": "int8", "output_scale": S_OUT})
        with R.dataflow():
            idx = R.add(R.astype(data, "int32"), R.const(128, "int32"))
            flat = R.take(R.reshape(table, R.shape([256])), R.reshape(idx, R.shape([16])), axis=0, mode="clip")
            gv = R.reshape(flat, R.shape([1, 4, 2, 2]))
            R.output(gv)
        return gv


def test_hardswish_rewrite_before_expected() -> None:
    """The importer's four HardSwish bindings become one qnn.lut whose table is hard-swish on the 256 input
    levels, output scale max|f| / 127 (no range needed, nothing clips); the conv after it reads the LUT."""
    layers = find_layers(HardSwishBefore["main"])
    res = quantize_module(HardSwishBefore, layers, {l.id: isquant.quantize_weight(l.weight) for l in layers}, {},
                          input_range=3.0)
    assert res.fallbacks == {}
    assert _qnn_calls(res.mod) == ["qnn.quantize", "qnn.lut", "qnn.conv2d"]
    for name in ("qnn_quantize_x", "qnn_lut_y"):
        tvm.ir.assert_structural_equal(res.mod[name], HardSwishExpected[name])
    lut_call = [b.value for b in tvm_compat.bindings(res.mod["main"]) if qnn_ops.qnn_op_of(res.mod, b.value) == "qnn.lut"][0]
    np.testing.assert_array_equal(tvm_compat.const_value(lut_call.args[1]), HS_TABLE)
