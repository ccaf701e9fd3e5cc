"""aarch64 int8 kernels: cross-compiled only (no ARM hardware here).

* rasp5 (cortex-a76 +dotprod) .so contains sdot; rasp4b (cortex-a72) .so contains no sdot but smull NEON;
* the same compute/packing/loop nest (intrinsic body left as plain TIR) built for x86 is bit-exact.
"""
from __future__ import annotations

import zlib

import numpy as np
import pytest
import tvm
from tvm import relax

from isquant_tvm import kernels
from isquant_tvm.kernels import arm_dot, common
from isquant_tvm.util.cpu import is_aarch64
from isquant_tvm.kernels.common import QDenseParams

from ..helpers import CONV_CASES as CASES
from ..helpers import RASP4B, RASP5, assert_exact, build_single, make_params, needs_cross, objdump_ops, rand_data, run

HOST = {"kind": "llvm", "mcpu": "haswell"}


def relax_conv_module(x_shape, x_dtype, p, target, lower=kernels.lower_conv2d):
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(x_shape, x_dtype))
    with bb.function("main", [x]):
        with bb.dataflow():
            o = bb.emit_output(lower(bb, x, p, target))
        bb.emit_func_output(o)
    return bb.get()


def test_target_dispatch():
    assert arm_dot.config_for(tvm.target.Target(RASP5)) is arm_dot.SDOT_CONFIG
    assert arm_dot.config_for(tvm.target.Target(RASP4B)) is arm_dot.NEON_CONFIG
    # int16 pair sums are exact only without -128 weights (-128 x -128 twice overflows int16)
    w = np.full((16, 4, 1, 1), -127, np.int8)
    assert arm_dot.config_for(tvm.target.Target(RASP4B), w) is arm_dot.NEON_PAIRS_CONFIG
    w[0, 0, 0, 0] = -128
    assert arm_dot.config_for(tvm.target.Target(RASP4B), w) is arm_dot.NEON_CONFIG
    assert is_aarch64(tvm.target.Target(RASP4B)) and not is_aarch64(tvm.target.Target(HOST))


@needs_cross
@pytest.mark.parametrize("board", ["rasp5", "rasp4b"])
def test_cross_compile_instructions(board, tmp_path):
    from tvm.support import cc

    target = tvm.target.Target(RASP5 if board == "rasp5" else RASP4B)
    rng = np.random.default_rng(3)
    x = rand_data(rng, (1, 32, 14, 14), "uint8")
    p = make_params(rng, 32, 32, 3, "uint8", data=x)
    ex = relax.build(relax_conv_module(x.shape, "uint8", p, target), target=target)
    so = tmp_path / f"{board}.so"
    ex.export_library(str(so), fcompile=cc.cross_compiler("aarch64-linux-gnu-gcc"))
    ops = objdump_ops(so)
    if board == "rasp5":
        assert ops["sdot"] >= 16, ops
    else:
        assert ops["sdot"] == 0
        assert ops["smull"] + ops["smull2"] + ops["smlal"] + ops["smlal2"] >= 16, ops
        assert ops["sadalp"] >= 16 and ops["saddlp"] == 0, ops  # make_params' weights are in [-127, 127]: pairs


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_all_geometries_build_for_arm(case):
    """Every geometry tensorizes/builds for both boards (LLVM codegen only, no export)."""
    name, N, C, H, W, O, k, s, pad, dil, g = case
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    x = rand_data(rng, (N, C, H, W), "uint8")
    p = make_params(rng, O, C // g, k, "int8", s, pad, dil, g, data=x)
    for spec in (RASP5, RASP4B):
        target = tvm.target.Target(spec)
        relax.build(relax_conv_module(x.shape, "uint8", p, target), target=target)


def _portable_lower(base_cfg):
    cfg = arm_dot.portable_config(base_cfg)

    def lower(bb, x, p, target):
        return arm_dot.lower_conv2d(bb, x, p, target, cfg=cfg)

    return lower


@pytest.mark.parametrize("board", ["rasp5", "rasp4b"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_arm_kernel_bit_exact_on_host(case, board):
    name, N, C, H, W, O, k, s, pad, dil, g = case
    base = arm_dot.SDOT_CONFIG if board == "rasp5" else arm_dot.NEON_CONFIG
    lower = _portable_lower(base)
    target = tvm.target.Target(HOST)
    combos = [("uint8", "uint8"), ("int8", "float32")] if board == "rasp5" else [("int8", "int8"),
                                                                                  ("uint8", "float32")]
    for in_dtype, out_dtype in combos:
        rng = np.random.default_rng(zlib.crc32(f"{name}{board}{in_dtype}".encode()))
        x = rand_data(rng, (N, C, H, W), in_dtype)
        p = make_params(rng, O, C // g, k, out_dtype, s, pad, dil, g, data=x, relu6=True)
        ex = build_single(lower, x.shape, in_dtype, p, target)
        assert_exact(run(ex, x), common.ref_conv2d(x, p))


def test_arm_dense_bit_exact_on_host():
    rng = np.random.default_rng(11)
    N, K, O = 2, 70, 33
    x = rand_data(rng, (N, K), "uint8")
    cp = make_params(rng, O, K, 1, "int8", padding=(0, 0, 0, 0), data=x.reshape(N, K, 1, 1))
    p = QDenseParams(weight=cp.weight[:, :, 0, 0], bias=cp.bias, multiplier=cp.multiplier, shift=cp.shift,
                     out_dtype="int8", out_min=cp.out_min, out_max=cp.out_max)
    cfg = arm_dot.portable_config(arm_dot.SDOT_CONFIG)
    ex = build_single(lambda bb, d, q, t: arm_dot.lower_dense(bb, d, q, t, cfg=cfg), x.shape, "uint8", p,
                      tvm.target.Target(HOST))
    assert_exact(run(ex, x), common.ref_dense(x, p))
