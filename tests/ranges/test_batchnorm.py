"""Data-free ranges from BatchNorm statistics: moment propagation, and the BatchNorm-matched forward
that replaces it after residual adds."""
from __future__ import annotations

import numpy as np
import pytest
from tvm.script import ir as I
from tvm.script import relax as R

from isquant_tvm.ranges import batchnorm as bn_ranges
from isquant_tvm.util import tvm_compat
from isquant_tvm.fold.layers import find_layers
from isquant_tvm.reference.interpreter import Interpreter

RNG = np.random.default_rng(1)
C = 8
W1 = (RNG.standard_normal((C, 3, 3, 3)) * 0.4).astype("float32")
B1 = np.zeros((1, C, 1, 1), "float32")
# The branch's 1x1 conv is close to the identity: its output is strongly correlated with the
# shortcut, which is what a trained residual branch does and what the propagation cannot see.
W2 = (np.eye(C)[:, :, None, None] + RNG.standard_normal((C, C, 1, 1)) * 0.05).astype("float32")
B2 = np.zeros((1, C, 1, 1), "float32")
GAMMA1, BETA1 = np.linspace(0.5, 2.0, C), np.linspace(-0.5, 0.5, C)
GAMMA2, BETA2 = np.full(C, 1.5), np.linspace(0.0, 1.0, C)


@I.ir_module
class Residual:
    @R.function
    def main(x: R.Tensor((1, 3, 8, 8), "float32")) -> R.Tensor((1, C * 64), "float32"):
        with R.dataflow():
            c1 = R.nn.conv2d(x, R.const(W1), padding=[1, 1, 1, 1])
            b1 = R.add(c1, R.const(B1))
            r1 = R.nn.relu(b1)
            c2 = R.nn.conv2d(r1, R.const(W2))
            b2 = R.add(c2, R.const(B2))
            s = R.add(b2, r1)
            r2 = R.nn.relu(s)
            y = R.reshape(r2, R.shape([1, C * 64]))
            R.output(y)
        return y


def _setup():
    layers = find_layers(Residual["main"])
    return [layer.var for layer in layers], [(GAMMA1, BETA1), (GAMMA2, BETA2)]


def _by_name(mapping):
    return {tvm_compat.var_name(var): value for var, value in mapping.items()}


def test_matched_forward_gives_each_bn_output_its_training_moments() -> None:
    conv_vars, bn = _setup()
    stats = _by_name(bn_ranges.matched_forward(Residual, conv_vars, bn, [(1, 3, 8, 8)], count=16))
    for var, (gamma, beta) in (("b1", bn[0]), ("b2", bn[1])):
        np.testing.assert_allclose(stats[var].mean, beta, atol=1e-5)
        np.testing.assert_allclose(stats[var].var, gamma ** 2, rtol=1e-4)
    assert stats["c1"].var.shape == (C,) and not np.allclose(stats["c1"].var, GAMMA1 ** 2)  # before the BN: raw
    assert stats["y"].mean.shape == (C * 64,)  # one batch of 16 images went through the reshape


def test_residual_tensors_take_the_matched_forward_and_see_the_correlation() -> None:
    conv_vars, bn = _setup()
    dists = bn_ranges.propagate(Residual, conv_vars, bn)
    named = _by_name(dists)
    assert not named["b1"].mixed and not named["r1"].mixed
    assert named["s"].mixed and named["r2"].mixed
    forward = bn_ranges.matched_forward(Residual, conv_vars, bn, [(1, 3, 8, 8)])
    ranges = _by_name(bn_ranges.ranges_from_dists(dists, rule="ksigma", k=6.0, forward=forward))
    assert ranges["r1"].rule == "BatchNorm statistics"
    assert ranges["r2"].rule == bn_ranges.FORWARD_RULE and ranges["r2"].unsigned
    assert ranges["r2"].alpha == pytest.approx(_by_name(forward)["r2"].maximum)
    # branch ≈ shortcut: the real sum spreads wider than the independent-sum estimate
    _, independent_var = named["s"].moments()
    real_var = _by_name(forward)["s"].var
    assert np.all(real_var > 1.1 * independent_var) and real_var.sum() > 1.5 * independent_var.sum()


def test_models_without_residual_adds_keep_the_propagation() -> None:
    conv_vars, bn = _setup()
    dists = {v: d for v, d in bn_ranges.propagate(Residual, conv_vars, bn).items() if not d.mixed}
    ranges = bn_ranges.ranges_from_dists(dists, rule="ksigma", k=6.0, forward=None)
    assert {r.rule for r in ranges.values()} == {"BatchNorm statistics"}


@pytest.mark.parametrize("shape, images", [((1, 3, 32, 32), 256), ((1, 3, 224, 224), 8), ((1, 3, 64, 64), 64)])
def test_forward_batch_size_follows_the_resolution(shape, images) -> None:
    assert bn_ranges.forward_images(shape) == images


def test_streaming_interpreter_matches_captured_run() -> None:
    x = RNG.standard_normal((3, 3, 8, 8)).astype("float32")
    interp = Interpreter(Residual)
    seen = {}
    streamed, env = interp.run([x], observe=lambda var, value: seen.__setitem__(tvm_compat.var_name(var), value.shape))
    captured, full = interp.run([x], capture=True)
    assert env == {} and len(seen) == len(full) == 9  # the parameter and every binding, each once
    np.testing.assert_array_equal(streamed[0], captured[0])
    assert streamed[0].shape == (3, C * 64)


def test_a_failing_matched_forward_falls_back_with_a_warning(monkeypatch, caplog) -> None:
    import isquant_tvm as iq

    def broken(*args, **kwargs):
        raise ValueError("cannot reshape array")

    monkeypatch.setattr(bn_ranges, "matched_forward", broken)
    with caplog.at_level("WARNING"):
        result = iq.compile("builtin:resnet20-cifar", quantize="isquant", progress=False)
    assert "matched forward failed" in caplog.text
    assert result.report["summary"]["matched_forward_error"] == "ValueError: cannot reshape array"
    rules = {t["rule"] for t in result.report["tensors"]}
    assert bn_ranges.FORWARD_RULE not in rules and "BatchNorm statistics" in rules
