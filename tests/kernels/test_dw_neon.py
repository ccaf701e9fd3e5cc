"""kernels/dw_neon.py (blocked depthwise, int16 tap pairs widened into int32) against the numpy reference:
the same PrimFunc built for this host (arm_dot.portable_config: the q31 requantize as its int64 TIR twin),
strides, dilation, padded channels, both data types, a -128 weight (single taps), the int64 fallback; and the
cross-compiled aarch64 kernel carries smull/smlal + saddw and the q31 epilogue (sqdmulh / srshl)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tvm
from tvm import relax

from isquant_tvm.kernels import arm_dot, common, dw_neon

from ..helpers import RASP4B, RASP5, assert_exact, make_params, needs_cross, objdump_ops, rand_data, run

HOST = {"kind": "llvm", "mcpu": "haswell"}


def _module(x_shape, in_dtype, p, target, cfg):
    C = x_shape[1]
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType(x_shape, in_dtype))
    with bb.function("main", [xv]):
        with bb.dataflow():
            h = arm_dot.lower_conv2d_blocked(bb, arm_dot.to_blocked(bb, xv), p, target, cfg=cfg)
            o = bb.emit_output(arm_dot.from_blocked(bb, h, C))
        bb.emit_func_output(o)
    mod = bb.get()
    dw = [f for gv, f in mod.functions.items() if "dw_blk" in gv.name_hint]
    assert len(dw) == 1 and "int16x16" in dw[0].script()  # the pair kernel, not the generic one
    return mod


@pytest.mark.parametrize("base", ["sdot", "neon"])
@pytest.mark.parametrize("C,H,k,stride,dil,in_dtype,out_dtype,zp,case", [
    (48, 13, 3, 1, 1, "uint8", "uint8", 0, "q31"),
    (40, 12, 3, 2, 1, "int8", "int8", -3, "q31"),      # 8 padded channels, stride 2
    (32, 9, 5, 2, 1, "uint8", "int8", 4, "m128"),      # 5x5, a -128 weight: every tap on its own
    (16, 11, 3, 1, 2, "int8", "uint8", 0, "low_shift"),  # dilation 2, one shift 31: the int64 epilogue
    (24, 10, 3, 1, 1, "uint8", "float32", 0, "q31"),   # dequantizing output
])
def test_dw_neon_bit_exact_on_host(base, C, H, k, stride, dil, in_dtype, out_dtype, zp, case):
    rng = np.random.default_rng(C * H + k + stride)
    x = rand_data(rng, (1, C, H, H), in_dtype)
    pad = (k // 2) * dil
    p = make_params(rng, C, 1, k, out_dtype, strides=(stride, stride), padding=(pad,) * 4, dilation=(dil, dil),
                    groups=C, data=x)
    if out_dtype != "float32":
        shift = np.maximum(np.asarray(p.shift), 32)
        if case == "low_shift":
            shift[0] = 31
        p = dataclasses.replace(p, shift=shift, out_zero_point=zp)
    if case == "m128":
        w = np.asarray(p.weight).copy()
        w[3, 0, 1, 1] = -128
        p = dataclasses.replace(p, weight=w)
        assert not dw_neon.pairs_exact(p)
    cfg = arm_dot.portable_config(arm_dot.SDOT_CONFIG if base == "sdot" else arm_dot.NEON_PAIRS_CONFIG)
    target = tvm.target.Target(HOST)
    out = run(relax.build(_module(x.shape, in_dtype, p, target, cfg), target=target), x)
    assert_exact(out, common.ref_conv2d(x, p))


@needs_cross
@pytest.mark.parametrize("board", ["rasp5", "rasp4b"])
def test_dw_neon_instructions(board, tmp_path):
    from tvm.support import cc

    target = tvm.target.Target(RASP5 if board == "rasp5" else RASP4B)
    rng = np.random.default_rng(7)
    x = rand_data(rng, (1, 32, 16, 16), "uint8")
    p = make_params(rng, 32, 1, 3, "uint8", groups=32, data=x)
    p = dataclasses.replace(p, shift=np.maximum(np.asarray(p.shift), 32))
    so = tmp_path / f"{board}.so"
    relax.build(_module(x.shape, "uint8", p, target, None), target=target).export_library(
        str(so), fcompile=cc.cross_compiler("aarch64-linux-gnu-gcc"))
    ops = objdump_ops(so, arrangements=True)
    mul16 = sum(ops[k] for k in ("smull", "smull2", "smlal", "smlal2"))
    widen = sum(ops[k] for k in ("saddw", "saddw2"))
    assert mul16 >= 18 * 2 and widen >= 8, ops  # 9 taps x 16 channels per pixel: 18 multiplies, 4+ widening adds
    assert ops.get("mul.4s", 0) == 0 and ops.get("mla.4s", 0) == 0, ops  # no int32 tap multiplies left
    assert ops.get("sqdmulh.4s", 0) >= 4 and ops.get("srshl.4s", 0) >= 4, ops
    print(board, {k: v for k, v in sorted(ops.items()) if "." in k and v >= 4})
