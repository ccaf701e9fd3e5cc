"""merge_concat_convs: a channel concat of convs reading one activation becomes one qnn.conv2d whose
weights embed each part centred (SqueezeNet's fire modules); the merged graph equals the unmerged one bit
for bit in the numpy reference; parts that do not line up are left alone; legalize runs it only for AMX
targets (their kernel skips the zero taps)."""
from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax
from tvm.script import ir as I
from tvm.script import relax as R

from isquant_tvm.rounding import isquant
from isquant_tvm.reference import interpreter as reference
from isquant_tvm.util import tvm_compat
from isquant_tvm.fold.layers import find_layers
from isquant_tvm.qnn import ops as qnn_ops
from isquant_tvm.legalize.legalize import legalize
from isquant_tvm.legalize.merge_concat_convs import merge_concat_convs, merge_concat_convs_pass, merged_conv
from isquant_tvm.quantize.rewrite import quantize_module
from isquant_tvm.ranges.activation import choose, collect, synthetic_inputs
from isquant_tvm.targets.presets import resolve_target

RNG = np.random.default_rng(0)
WS = RNG.standard_normal((16, 3, 3, 3)).astype("float32") * 0.3
WE1 = RNG.standard_normal((16, 16, 1, 1)).astype("float32") * 0.3
WE3 = RNG.standard_normal((32, 16, 3, 3)).astype("float32") * 0.1
WE3S2 = RNG.standard_normal((32, 16, 3, 3)).astype("float32") * 0.1
WFC = RNG.standard_normal((48, 5)).astype("float32") * 0.3


@I.ir_module
class Fire:
    """squeeze -> (expand 1x1, expand 3x3) -> concat -> pool -> classifier."""
    @R.function
    def main(x: R.Tensor((1, 3, 12, 12), "float32")) -> R.Tensor((1, 5), "float32"):
        with R.dataflow():
            s = R.nn.relu(R.nn.conv2d(x, R.const(WS), padding=[1, 1, 1, 1]))
            e1 = R.nn.relu(R.nn.conv2d(s, R.const(WE1)))
            e3 = R.nn.relu(R.nn.conv2d(s, R.const(WE3), padding=[1, 1, 1, 1]))
            cat = R.concat((e1, e3), axis=1)
            m = R.mean(cat, axis=[2, 3], keepdims=False)
            y = R.matmul(m, R.const(WFC))
            R.output(y)
        return y


@I.ir_module
class Unaligned:
    """Both parts stride 2 to 6x6, but the 3x3 pads only bottom / right: centred on the 1x1, it would read
    one row and column up-left of where it does."""
    @R.function
    def main(x: R.Tensor((1, 3, 12, 12), "float32")) -> R.Tensor((1, 5), "float32"):
        with R.dataflow():
            s = R.nn.relu(R.nn.conv2d(x, R.const(WS), padding=[1, 1, 1, 1]))
            e1 = R.nn.relu(R.nn.conv2d(s, R.const(WE1), strides=[2, 2]))
            e3 = R.nn.relu(R.nn.conv2d(s, R.const(WE3S2), strides=[2, 2], padding=[0, 0, 1, 1]))
            cat = R.concat((e1, e3), axis=1)
            m = R.mean(cat, axis=[2, 3], keepdims=False)
            y = R.matmul(m, R.const(WFC))
            R.output(y)
        return y


def _qnn(mod: tvm.IRModule) -> tvm.IRModule:
    layers = find_layers(mod["main"])
    weights = {layer.id: isquant.quantize_weight(layer.weight) for layer in layers}
    ranges = choose(collect(mod, synthetic_inputs([(1, 3, 12, 12)], count=4)), "sigma")
    return quantize_module(mod, layers, weights, ranges, input_range=3.0).mod


def _calls(mod: tvm.IRModule) -> list[str]:
    out = []
    for blk in mod["main"].body.blocks:
        for b in blk.bindings:
            v = b.value
            out.append(qnn_ops.qnn_op_of(mod, v) or (v.op.name if isinstance(v, relax.Call) and
                                                     isinstance(v.op, tvm.ir.Op) else type(v).__name__))
    return out


@pytest.fixture(scope="module")
def fire() -> tvm.IRModule:
    return _qnn(Fire)


def test_fire_pair_becomes_one_conv(fire) -> None:
    before = _calls(fire)
    assert before.count("relax.concat") == 1 and before.count("qnn.conv2d") == 3
    after_mod, merged = merge_concat_convs(fire)
    after = _calls(after_mod)
    assert merged == 1 and "relax.concat" not in after and after.count("qnn.conv2d") == 2
    conv = [b.value for blk in after_mod["main"].body.blocks for b in blk.bindings
            if qnn_ops.qnn_op_of(after_mod, b.value) == "qnn.conv2d"][-1]
    attrs = qnn_ops.attrs_of(after_mod[conv.op])
    w = tvm_compat.const_value(conv.args[1])
    assert w.shape == (48, 16, 3, 3) and list(attrs["padding"]) == [1, 1, 1, 1]
    ring = np.ones((3, 3), bool)
    ring[1, 1] = False
    assert not w[:16][:, :, ring].any() and w[:16, :, 1, 1].any()  # the 1x1 part sits at the centre tap
    assert attrs["layer"].count("+") == 1 and len(attrs["weight_scale"]) == 48


def test_merged_graph_equals_unmerged_bit_for_bit(fire) -> None:
    after = merge_concat_convs_pass()(fire)
    for seed in (1, 2):
        x = (np.random.default_rng(seed).standard_normal((1, 3, 12, 12)) * (1 + 3 * seed)).astype("float32")
        np.testing.assert_array_equal(reference.run(after, [x])[0], reference.run(fire, [x])[0])


def test_parts_that_do_not_line_up_are_left_alone() -> None:
    mod = _qnn(Unaligned)
    after, merged = merge_concat_convs(mod)
    assert merged == 0 and _calls(after).count("relax.concat") == 1


def test_merged_conv_spec_rejects_mismatched_output_ranges() -> None:
    w1, w3 = np.ones((16, 8, 1, 1), np.int8), np.ones((16, 8, 3, 3), np.int8)
    consts = [np.zeros(16, np.int32), np.full(16, 2 ** 30, np.int64), np.full(16, 31, np.int64)]
    base = {"strides": [1, 1], "dilation": [1, 1], "groups": 1, "out_dtype": "uint8", "out_min": 0, "out_max": 255}
    a = ({**base, "padding": [0, 0, 0, 0]}, [w1, *consts])
    b = ({**base, "padding": [1, 1, 1, 1]}, [w3, *consts])
    assert merged_conv([a, b]) is not None
    assert merged_conv([a, ({**b[0], "out_max": 6}, b[1])]) is None  # another clip: not one epilogue
    assert merged_conv([a, ({**b[0], "padding": [0, 0, 0, 0]}, b[1])]) is None  # 3x3 unpadded: other grid


def test_legalize_merges_only_for_amx_targets(fire) -> None:
    amx = tvm.target.Target({"kind": "llvm", "mcpu": "rocketlake", "mattr": ["+amx-int8", "+amx-tile"]})
    _, chosen = legalize(fire, amx)
    assert chosen.get("rewrite:merge_concat_convs") == 1
    _, chosen = legalize(fire, resolve_target("x86-avx512"))
    assert "rewrite:merge_concat_convs" not in chosen
