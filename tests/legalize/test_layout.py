"""The NCHW16c layout plan (legalize/layout.py) and legalize with it: which tensors stay blocked, the fixed
point when one op cannot take blocks, and the blocked graph bit-exact against the numpy reference."""
from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax
from tvm.script import ir as I
from tvm.script import relax as R
from tvm.script import tirx as T

from isquant_tvm.rounding import isquant
from isquant_tvm.reference import interpreter as reference
from isquant_tvm.fold.layers import find_layers
from isquant_tvm.legalize import layout
from isquant_tvm.qnn import ops as qnn_ops
from isquant_tvm.legalize.legalize import LegalizeMutator, load_kernel_lowerings, legalize
from isquant_tvm.quantize.rewrite import quantize_module
from isquant_tvm.ranges.activation import choose, collect, synthetic_inputs
from isquant_tvm.targets.presets import resolve_target

RNG = np.random.default_rng(0)
W1 = RNG.standard_normal((16, 3, 3, 3)).astype("float32") * 0.3
W2 = RNG.standard_normal((16, 16, 3, 3)).astype("float32") * 0.1
W3 = RNG.standard_normal((16, 16, 1, 1)).astype("float32") * 0.3
W4 = RNG.standard_normal((32, 16, 3, 3)).astype("float32") * 0.1
WFC = RNG.standard_normal((64, 5)).astype("float32") * 0.3


@I.ir_module
class Before:
    """stem -> residual block -> max pool -> fire-style 1x1 / 3x3 pair -> concat (with the pool's output as a
    bypass) -> pool -> classifier."""
    @R.function
    def main(x: R.Tensor((1, 3, 20, 20), "float32")) -> R.Tensor((1, 5), "float32"):
        with R.dataflow():
            c1 = R.nn.relu(R.nn.conv2d(x, R.const(W1), padding=[1, 1, 1, 1]))
            c2 = R.nn.conv2d(c1, R.const(W2), padding=[1, 1, 1, 1])
            s = R.nn.relu(R.add(c2, c1))
            p = R.nn.max_pool2d(s, pool_size=[3, 3], strides=[2, 2], padding=[0, 0, 0, 0], ceil_mode=True)
            e1 = R.nn.relu(R.nn.conv2d(p, R.const(W3)))
            e3 = R.nn.relu(R.nn.conv2d(p, R.const(W4), padding=[1, 1, 1, 1]))
            cat = R.concat((e1, e3, p), axis=1)
            m = R.mean(cat, axis=[2, 3], keepdims=False)
            y = R.matmul(m, R.const(WFC))
            R.output(y)
        return y


@pytest.fixture(scope="module")
def qnn_mod() -> tvm.IRModule:
    func = Before["main"]
    layers = find_layers(func)
    weights = {layer.id: isquant.quantize_weight(layer.weight) for layer in layers}
    ranges = choose(collect(Before, synthetic_inputs([(1, 3, 20, 20)], count=4)), "sigma")
    return quantize_module(Before, layers, weights, ranges, input_range=3.0).mod


def _ops_of(mod: tvm.IRModule, blocked: set) -> dict[str, int]:
    """How many planned tensors each op produces (qnn op name, or the Relax op)."""
    out: dict[str, int] = {}
    for blk in mod["main"].body.blocks:
        for b in blk.bindings:
            if b.var in blocked:
                op = qnn_ops.qnn_op_of(mod, b.value) or b.value.op.name
                out[op] = out.get(op, 0) + 1
    return out


def _plan(mod: tvm.IRModule, target: str, disable: str | None = None) -> set:
    load_kernel_lowerings()
    mutator = LegalizeMutator(mod, resolve_target(target), only_reference=False)

    def role_of(call):
        if disable is not None and qnn_ops.qnn_op_of(mod, call) == disable:
            return None
        return mutator.role_of(call)

    return layout.plan(mod["main"], role_of)


def test_every_tensor_between_blocked_kernels_stays_blocked(qnn_mod) -> None:
    ops = _ops_of(qnn_mod, _plan(qnn_mod, "x86-avx512"))
    # the quantized input is NCHW (quantize takes no blocks); the bypass into the concat is aligned by a
    # requantize; the pooled features feed the dense, which needs a plain (N, C) tensor anyway
    assert ops == {"qnn.conv2d": 4, "qnn.add": 1, "qnn.max_pool2d": 1, "qnn.requantize": 1, "relax.concat": 1}, ops


def test_an_op_that_needs_nchw_unblocks_everything_tied_to_it(qnn_mod) -> None:
    # the pool now needs NCHW, so the add feeding it cannot be blocked, nor the convs feeding the add (a
    # FOLLOW op's output is blocked only with all its inputs); the pool's output reaches the concat through
    # the bypass, so the concat, its requantize and the two convs feeding it go back to NCHW as well
    assert _ops_of(qnn_mod, _plan(qnn_mod, "x86-avx512", disable="qnn.max_pool2d")) == {}


def test_concat_parts_that_are_pending_convs_need_no_requantize(qnn_mod) -> None:
    # both fire convs are requantized straight to the concat's scale; only the bypass is realigned
    calls = [qnn_ops.qnn_op_of(qnn_mod, b.value) for blk in qnn_mod["main"].body.blocks for b in blk.bindings]
    assert calls.count("qnn.requantize") == 1 and calls.count("qnn.conv2d") == 4


AMX = {"kind": "llvm", "mcpu": "rocketlake", "mattr": ["+amx-int8", "+amx-tile"], "num-cores": 2}


def test_amx_targets_plan_the_same_blocks(qnn_mod) -> None:
    # the AMX convs read and write NCHW16c too (kernels/x86_amx_blocked.py)
    load_kernel_lowerings()
    mutator = LegalizeMutator(qnn_mod, tvm.target.Target(AMX), only_reference=False)
    assert layout.plan(qnn_mod["main"], mutator.role_of) == _plan(qnn_mod, "x86-avx512")


@pytest.mark.parametrize("target", ["x86-avx512", "x86-avx2", "amx"])
def test_blocked_graph_is_bit_exact(qnn_mod, target: str) -> None:
    if target == "amx":
        from isquant_tvm.util.cpu import host_has_amx

        if not host_has_amx():
            pytest.skip("host CPU has no AMX (amx_tile / amx_int8)")
    tgt = tvm.target.Target(AMX) if target == "amx" else resolve_target(target)
    mod, chosen = legalize(qnn_mod, tgt)
    assert chosen["layout:NCHW16c"] == 8
    shapes = [tuple(int(d) for d in b.var.ty.shape) for blk in mod["main"].body.blocks for b in blk.bindings
              if isinstance(b.var.ty, relax.TensorType) and b.var.ty.shape is not None]
    assert (1, 1, 20, 20, 16) in shapes and (1, 4, 10, 10, 16) in shapes  # stem output, concat (64 ch)
    ex = relax.build(mod, target=tgt)
    vm = relax.VirtualMachine(ex, tvm.cpu())
    for seed in (1, 2):
        x = (np.random.default_rng(seed).standard_normal((1, 3, 20, 20)) * (1 + 2 * seed)).astype("float32")
        y = vm["main"](tvm.runtime.tensor(x)).numpy()
        ref = reference.run(qnn_mod, [x])[0]
        np.testing.assert_array_equal(y, ref)
