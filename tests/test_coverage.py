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
