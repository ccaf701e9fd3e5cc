"""Issue 15 coverage: the range step evaluates every float Relax op the importers emit (numpy rule,
else TVM for that one binding)."""
from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax

from isquant_tvm.reference import float_ops, interpreter, tvm_eval

T = relax.TensorType
RNG = np.random.default_rng(0)


def _x(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


X = _x(2, 4, 6, 7)
W_T = _x(4, 3, 3, 3) * 0.3  # IOHW, groups 1
ALPHA = np.abs(_x(4)) * 0.2

# (id, builder(x_var, extra_vars) -> call, extra arrays)
CASES = [
    ("split2", lambda x, e: relax.op.split(x, 2, 1), []),
    ("split_idx", lambda x, e: relax.op.split(x, [1, 4], 3), []),
    *[(f"resize_{m}_{c}_{r}", (lambda m, c, r: lambda x, e: relax.op.image.resize2d(
        x, (13, 11) if c != "asym2" else (12, 14), method=m,
        coordinate_transformation_mode="asymmetric" if c == "asym2" else c, rounding_method=r))(m, c, r), [])
      for m, c, r in [("nearest_neighbor", "asymmetric", "floor"), ("nearest_neighbor", "asym2", "floor"),
                      ("nearest_neighbor", "half_pixel", "round_prefer_ceil"), ("nearest_neighbor", "align_corners", "round"),
                      ("nearest_neighbor", "tf_half_pixel_for_nn", "floor"), ("linear", "half_pixel", ""),
                      ("linear", "align_corners", ""), ("linear", "asymmetric", ""), ("linear", "pytorch_half_pixel", "")]],
    ("prelu", lambda x, e: relax.op.nn.prelu(x, e[0]), [ALPHA]),
    ("power", lambda x, e: relax.op.power(relax.op.abs(x), relax.const(np.float32(1.7))), []),
    ("conv2d_transpose", lambda x, e: relax.op.nn.conv2d_transpose(x, e[0], strides=2, padding=1, output_padding=1), [W_T]),
    ("conv2d_transpose_g2", lambda x, e: relax.op.nn.conv2d_transpose(x, e[0], strides=(2, 1), padding=(0, 1, 1, 0),
                                                                       dilation=2, groups=2), [_x(4, 2, 2, 3)]),
    ("where", lambda x, e: relax.op.where(relax.op.greater(x, e[0]), x, relax.op.exp(e[0])), [_x(2, 4, 6, 7)]),
    ("less_equal", lambda x, e: relax.op.astype(relax.op.less(x, relax.const(np.float32(0.1))), "float32"), []),
    ("log_tanh", lambda x, e: relax.op.log(relax.op.add(relax.op.tanh(x), relax.const(np.float32(1.5)))), []),
    ("erf", lambda x, e: relax.op.erf(x), []),
    ("gelu", lambda x, e: relax.op.nn.gelu(x), []),
    ("silu", lambda x, e: relax.op.nn.silu(x), []),
    ("softmax", lambda x, e: relax.op.nn.softmax(x, axis=1), []),
    ("log_softmax", lambda x, e: relax.op.nn.log_softmax(x, axis=-1), []),
    ("take", lambda x, e: relax.op.take(x, relax.const(np.array([3, 0, 5], "int64")), axis=2), []),
    ("take_wrap", lambda x, e: relax.op.take(x, relax.const(np.array([-1, 8], "int64")), axis=3, mode="wrap"), []),
    ("broadcast_expand_tile", lambda x, e: relax.op.tile(relax.op.broadcast_to(relax.op.expand_dims(e[0], [0, 2, 3]),
                                                                                 (2, 4, 1, 7)), [1, 1, 2, 1]), [ALPHA]),
    ("max_min", lambda x, e: relax.op.subtract(relax.op.max(x, [2, 3], keepdims=True), relax.op.min(x, [1], keepdims=True)), []),
    ("variance", lambda x, e: relax.op.variance(x, [1, 3], keepdims=True), []),
    ("layer_norm", lambda x, e: relax.op.nn.layer_norm(x, e[0], e[1], [2, 3]), [_x(6, 7), _x(6, 7)]),
    ("avg_pool_5_ceil", lambda x, e: relax.op.nn.avg_pool2d(x, 5, 2, 2, ceil_mode=True), []),
    ("avg_pool_include_pad", lambda x, e: relax.op.nn.avg_pool2d(x, (3, 2), 1, (1, 0, 1, 1), count_include_pad=True), []),
    ("max_pool_5_ceil", lambda x, e: relax.op.nn.max_pool2d(x, 5, 2, 2, dilation=1, ceil_mode=True), []),
    ("max_pool_3_dil", lambda x, e: relax.op.nn.max_pool2d(x, 3, 1, 2, dilation=2), []),
    ("adaptive_pool", lambda x, e: relax.op.nn.adaptive_avg_pool2d(x, (4, 3)), []),
    ("leakyrelu", lambda x, e: relax.op.nn.leakyrelu(x, 0.1), []),
    ("group_norm", lambda x, e: relax.op.nn.group_norm(x, e[0], e[1], 2, 1, [2, 3]), [ALPHA, ALPHA]),
]


def _module(build, extras):
    x = relax.Var("x", T(X.shape, "float32"))
    ev = [relax.Var(f"e{i}", T(a.shape, "float32")) for i, a in enumerate(extras)]
    bb = relax.BlockBuilder()
    with bb.function("main", [x, *ev]):
        with bb.dataflow():
            out = bb.emit_output(build(x, ev))
        bb.emit_func_output(out)
    return bb.get()


def _flat(v):
    return [np.asarray(a) for a in v] if isinstance(v, (list, tuple)) else [np.asarray(v)]


def _all_cases_module():
    """Every case as one output of one function: one TVM build for the whole table."""
    x = relax.Var("x", T(X.shape, "float32"))
    params, inputs, outs = [x], [X], []
    bb = relax.BlockBuilder()
    evs = []
    for _, _, extras in CASES:
        ev = [relax.Var(f"e{len(params) + i}", T(a.shape, "float32")) for i, a in enumerate(extras)]
        params += ev
        inputs += extras
        evs.append(ev)
    with bb.function("main", params):
        with bb.dataflow():
            for (_, build, _), ev in zip(CASES, evs):
                outs.append(bb.emit(build(x, ev)))
            out = bb.emit_output(relax.Tuple(outs))
        bb.emit_func_output(out)
    return bb.get(), inputs


@pytest.fixture(scope="module")
def all_cases():
    mod, inputs = _all_cases_module()
    fallback_before = dict(tvm_eval.EVALUATED)
    ours = interpreter.Interpreter(mod, tvm_fallback=False).run(inputs)[0]
    assert tvm_eval.EVALUATED == fallback_before
    lib = tvm.compile(mod, target=tvm.target.Target({"kind": "llvm"}))
    theirs = relax.VirtualMachine(lib, tvm.cpu())["main"](*[tvm.runtime.tensor(a, tvm.cpu()) for a in inputs])
    return ours, tvm_eval._to_numpy(theirs)


@pytest.mark.parametrize("index", range(len(CASES)), ids=[c[0] for c in CASES])
def test_float_rule_matches_tvm(all_cases, index):
    """Each numpy rule equals TVM's own legalization of the op, so the ranges describe the graph TVM
    compiles (with the fallback off: no case may silently go through TVM)."""
    ours, theirs = (_flat(v[index]) for v in all_cases)
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape
        np.testing.assert_allclose(a.astype(np.float64), b.astype(np.float64), rtol=2e-5, atol=2e-5)


def test_unmodelled_op_goes_through_tvm():
    """An op with no numpy rule (cubic resize; an op outside the table) is evaluated by TVM, once built
    per (op, attrs, shapes), and refused when the fallback is off."""
    mod = _module(lambda x, e: relax.op.add(relax.op.image.resize2d(x, (9, 9), method="cubic"),
                                            relax.op.image.resize2d(relax.op.atan(x), (9, 9), method="cubic")), [])
    with pytest.raises(interpreter.UnsupportedOp, match="cubic"):
        interpreter.Interpreter(mod, tvm_fallback=False).run([X])
    before = tvm_eval.EVALUATED.get("relax.image.resize2d", 0)
    cached = len(tvm_eval._CACHE)
    out = interpreter.Interpreter(mod).run([X])[0][0]
    assert tvm_eval.EVALUATED["relax.image.resize2d"] == before + 2
    assert len(tvm_eval._CACHE) <= cached + 2  # atan + one resize2d build shared by both bindings
    lib = tvm.compile(mod, target=tvm.target.Target({"kind": "llvm"}))
    ref = relax.VirtualMachine(lib, tvm.cpu())["main"](tvm.runtime.tensor(X, tvm.cpu())).numpy()
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_integer_ops_never_use_tvm():
    x = relax.Var("x", T((4,), "int8"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.bitwise_xor(x, x))
        bb.emit_func_output(out)
    with pytest.raises(interpreter.UnsupportedOp, match="bitwise_xor"):
        interpreter.Interpreter(bb.get()).run([np.arange(4, dtype=np.int8)])


# --- ONNX models: naming, heads, --float-nodes, BN ranges next to float ops, shape folding ----------

import onnx  # noqa: E402
from onnx import TensorProto as TP, helper as oh, numpy_helper as onh  # noqa: E402

from isquant_tvm import api, cli  # noqa: E402
from isquant_tvm.errors import IsquantError, ModelLoadError  # noqa: E402
from isquant_tvm.pipeline import quantize_model  # noqa: E402
from isquant_tvm.reference.interpreter import Interpreter  # noqa: E402


class _Graph:
    def __init__(self, seed: int = 0) -> None:
        self.rng, self.inits, self.nodes = np.random.default_rng(seed), [], []

    def const(self, name, a, dtype=np.float32):
        self.inits.append(onh.from_array(np.asarray(a, dtype), name))
        return name

    def node(self, op, inputs, output, name, **attrs):
        self.nodes.append(oh.make_node(op, inputs, [output] if isinstance(output, str) else output, name=name, **attrs))
        return output

    def conv(self, x, cin, cout, name, k=3, bn=False):
        w = self.const(f"{name}.w", self.rng.standard_normal((cout, cin, k, k)) * (1.5 / np.sqrt(cin * k * k)))
        # a conv before BN has no bias (as Paddle exports it; fold_bn leaves conv+bias+BN unfolded)
        b = [] if bn else [self.const(f"{name}.b", self.rng.uniform(-0.2, 0.2, cout))]
        y = self.node("Conv", [x, w, *b], f"{name}.out", f"/{name}/Conv", pads=[k // 2] * 4)
        if bn:
            stats = [self.const(f"{name}.{s}", v) for s, v in (("g", self.rng.uniform(0.5, 2, cout)),
                                                               ("beta", self.rng.uniform(-1, 1, cout)),
                                                               ("m", self.rng.uniform(-1, 1, cout)),
                                                               ("v", self.rng.uniform(0.5, 2, cout)))]
            y = self.node("BatchNormalization", [y, *stats], f"{name}.bn", f"/{name}/BatchNormalization")
        return y

    def model(self, inputs, outputs, opset=17):
        g = oh.make_graph(self.nodes, "t", [oh.make_tensor_value_info(n, TP.FLOAT, s) for n, s in inputs],
                          [oh.make_tensor_value_info(n, TP.FLOAT, s) for n, s in outputs], self.inits)
        m = oh.make_model(g, opset_imports=[oh.make_opsetid("", opset)])
        m.ir_version = 8
        onnx.checker.check_model(m)
        return m


@pytest.fixture(scope="module")
def bn_hardswish(tmp_path_factory):
    """conv+BN+HardSwish x2 -> pool -> Gemm: a PP-LCNet in miniature."""
    g = _Graph()
    x = "x"
    for i, (cin, cout) in enumerate([(3, 8), (8, 16)]):
        x = g.node("HardSwish", [g.conv(x, cin, cout, f"conv{i}", bn=True)], f"a{i}", f"/act{i}/HardSwish")
    p = g.node("GlobalAveragePool", [x], "p", "/pool/GlobalAveragePool")
    f = g.node("Flatten", [p], "f", "/Flatten")
    g.node("Gemm", [f, g.const("fc.w", g.rng.standard_normal((10, 16)) * 0.2), g.const("fc.b", np.zeros(10))],
           "y", "/fc/Gemm", transB=1)
    path = tmp_path_factory.mktemp("cov") / "bn_hardswish.onnx"
    onnx.save(g.model([("x", [1, 3, 16, 16])], [("y", [1, 10])]), path)
    model = api.load(str(path))
    return path, model, api.prepare(model)


def _quantize(model, float_mod, **options):
    return quantize_model(model, float_mod, api.resolve_target("x86"), progress=False, **options)


def test_float_ops_named_by_onnx_node_and_bn_ranges_through_them(bn_hardswish):
    """The report names float ops by ONNX node and op type, and the tensors after a float HardSwish on
    a conv+BN take their range from the BN statistics (they were all `synthetic σ×25`). HardSwish has an
    integer rule (qnn.lut), so it is kept float here by name, as an op without a rule would be."""
    _, model, float_mod = bn_hardswish
    assert model.onnx_nodes["act0_HardSwish"] == ("/act0/HardSwish", "HardSwish")
    assert not _quantize(model, float_mod).report["float_nodes"]  # the LUT rule takes both
    q = _quantize(model, float_mod, float_nodes=["/act0/HardSwish", "/act1/HardSwish"])
    floats = q.report["float_nodes"]
    assert floats["HardSwish"] == {"count": 2, "nodes": ["/act0/HardSwish", "/act1/HardSwish"]}
    assert set(floats) == {"HardSwish"}  # every float binding is traced back to its node
    rules = {t["tensor"]: t["rule"] for t in q.report["tensors"]}
    after_act = [r for name, r in rules.items() if name.startswith("act")]
    assert after_act and all(r == "BatchNorm statistics through float ops" for r in after_act), rules
    assert q.report["summary"]["activation_ranges"].startswith("bn+")


def test_float_nodes_flag(bn_hardswish):
    _, model, float_mod = bn_hardswish
    q = _quantize(model, float_mod, float_nodes=["/conv1/Conv"])
    assert q.report["float_nodes"]["Conv"] == {"count": 1, "nodes": ["/conv1/Conv"]}
    assert q.report["float_nodes_requested"] == ["/conv1/Conv"]
    with pytest.raises(IsquantError, match=r"'/conv1/Cnv' is not a node.*close matches: /conv1/Conv"):
        _quantize(model, float_mod, float_nodes=["/conv1/Cnv"])


def test_cli_float_nodes_typo_and_quantize_input_shapes(bn_hardswish, tmp_path, capsys):
    path, _, _ = bn_hardswish
    out = tmp_path / "m.so"
    assert cli.main(["compile", str(path), "-o", str(out), "--float-nodes", "/act0/HardSwsh"]) == 2
    assert "close matches: /act0/HardSwish" in capsys.readouterr().err and not out.exists()
    qdq = tmp_path / "q.onnx"
    assert cli.main(["quantize", str(path), "-o", str(qdq), "--input-shapes", "x:[1,3,16,16]",
                     "--float-nodes", "/conv1/Conv"]) == 0
    kept = [n for n in onnx.load(str(qdq)).graph.node if n.op_type == "DequantizeLinear"]
    assert len(kept) == 2  # conv0 and the Gemm; conv1 stays float


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    """A 2-output toy detector head: boxes = concat of two convs (an integer concat would requantize it
    to one data-free 8-bit scale), scores = sigmoid(conv)."""
    g = _Graph(1)
    y = g.node("Relu", [g.conv("x", 3, 16, "stem")], "r0", "/stem/Relu")
    y = g.node("Relu", [g.conv(y, 16, 16, "body")], "r1", "/body/Relu")
    g.node("Concat", [g.conv(y, 16, 2, "xy", k=1), g.conv(y, 16, 2, "wh", k=1)], "boxes", "/head/Concat", axis=1)
    g.node("Sigmoid", [g.conv(y, 16, 3, "cls", k=1)], "scores", "/head/Sigmoid")
    path = tmp_path_factory.mktemp("cov") / "detector.onnx"
    onnx.save(g.model([("x", [1, 3, 24, 24])], [("boxes", [1, 4, 24, 24]), ("scores", [1, 3, 24, 24])]), path)
    model = api.load(str(path))
    float_mod = api.prepare(model)
    return model, float_mod, _quantize(model, float_mod)


def test_output_heads_keep_precision(detector):
    model, float_mod, q = detector
    assert {"Concat", "Sigmoid"} <= set(q.report["float_nodes"])
    x = RNG.standard_normal((8, 3, 24, 24)).astype(np.float32)
    ref = Interpreter(float_mod).run([x])[0]
    got = Interpreter(q.qnn_mod).run([x])[0]
    for name, r, o in zip(("boxes", "scores"), ref, got):
        cos = float(np.dot(r.ravel(), o.ravel()) / np.linalg.norm(r) / np.linalg.norm(o))
        assert np.unique(o).size >= 1000, name
        assert cos >= 0.999, (name, cos)


def test_output_heads_tvm_equals_reference(detector):
    """The float head after the integer trunk: TVM's build equals the numpy reference."""
    _, _, q = detector
    ex = tvm.compile(q.mod, target=api.resolve_target("x86"))
    vm = relax.VirtualMachine(ex, tvm.cpu())
    x = RNG.standard_normal((1, 3, 24, 24)).astype(np.float32)
    got = [t.numpy() for t in vm["main"](tvm.runtime.tensor(x, tvm.cpu()))]
    ref = Interpreter(q.qnn_mod).run([x])[0]
    for a, b in zip(got, ref):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_importer_rejection_names_the_node(tmp_path, capsys):
    g = _Graph()
    c = g.conv("x", 3, 8, "backbone")
    seq = g.node("Transpose", [g.node("Reshape", [c, g.const("shp", [1, 8, 8], np.int64)], "s0", "/Reshape")], "s",
                 "/Transpose", perm=[2, 0, 1])
    g.node("LSTM", [seq, g.const("W", g.rng.standard_normal((1, 16, 8))), g.const("R", g.rng.standard_normal((1, 16, 4)))],
           "y", "/rnn/LSTM", hidden_size=4)
    path = tmp_path / "lstm.onnx"
    onnx.save(g.model([("x", [1, 3, 2, 4])], [("y", [8, 1, 1, 4])], opset=14), path)
    out = tmp_path / "l.so"
    assert cli.main(["compile", str(path), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'/rnn/LSTM' (op LSTM)" in err[0], err
    assert not list(tmp_path.glob("l.so*"))


def test_computed_reshape_is_folded(tmp_path):
    """Paddle-style shape arithmetic: Shape -> Slice -> ReduceProd -> Concat -> Reshape, then
    Shape -> Mul -> Reshape of that result (which needs a second folding pass)."""
    g = _Graph()
    r = g.node("Relu", [g.conv("x", 3, 8, "conv")], "r", "relu")
    i64 = lambda n, v: g.const(n, v, np.int64)  # noqa: E731
    s = g.node("Shape", [r], "s", "p2o.Shape.0")
    hw = g.node("ReduceProd", [g.node("Slice", [s, i64("st", [2]), i64("en", [4]), i64("ax", [0])], "hw", "p2o.Slice.0")],
                "hwp", "p2o.ReduceProd.0", keepdims=1)
    y = g.node("Reshape", [r, g.node("Concat", [i64("z", [0]), i64("c8", [8]), hw], "ns", "p2o.Concat.0", axis=0)],
               "y", "p2o.Reshape.0")
    s2 = g.node("Mul", [g.node("Shape", [y], "s2", "p2o.Shape.1"), i64("one", [1, 1, 1])], "s2m", "p2o.Mul.0")
    g.node("ReduceMean", [g.node("Reshape", [y, s2], "y2", "p2o.Reshape.1")], "out", "p2o.ReduceMean.0", axes=[2], keepdims=0)
    path = tmp_path / "paddle.onnx"
    onnx.save(g.model([("x", ["N", 3, "H", 8])], [("out", ["N", 8])], opset=13), path)
    with pytest.raises(ModelLoadError, match="--input-shapes"):
        api.load(str(path))
    model = api.load(str(path), input_shapes="x:[2,3,8,8]")
    x = RNG.standard_normal((2, 3, 8, 8)).astype(np.float32)
    out = Interpreter(model.mod).run([x])[0][0]
    assert out.shape == (2, 8)
