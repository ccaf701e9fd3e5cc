"""Bit-exactness of the x86 int8 kernels against the numpy int64 reference, and vpdpbusd in the asm."""
from __future__ import annotations

import zlib

import numpy as np
import pytest
import tvm
from tvm import relax

from isquant_tvm.kernels import common, x86_vnni
from isquant_tvm.kernels.common import QConv2dParams, QDenseParams

from ..helpers import CONV_CASES as CASES
from ..helpers import AVX2, AVX512, assert_exact, build_single, host_has, make_params, rand_data, run


needs_vnni = pytest.mark.skipif(not host_has("avx512_vnni"), reason="host CPU has no AVX-512 VNNI")


@needs_vnni
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("in_dtype,out_dtype", [("uint8", "uint8"), ("int8", "int8"), ("uint8", "float32"),
                                                ("int8", "uint8")])
def test_conv_vnni_bit_exact(case, in_dtype, out_dtype):
    name, N, C, H, W, O, k, s, pad, dil, g = case
    rng = np.random.default_rng(zlib.crc32(f"{name}{in_dtype}{out_dtype}".encode()))
    x = rand_data(rng, (N, C, H, W), in_dtype)
    p = make_params(rng, O, C // g, k, out_dtype, s, pad, dil, g, data=x, relu6=(in_dtype == "int8"))
    ex = build_single(x86_vnni.lower_conv2d, x.shape, in_dtype, p, tvm.target.Target(AVX512))
    assert_exact(run(ex, x), common.ref_conv2d(x, p))


@needs_vnni
@pytest.mark.parametrize("N,K,O,in_dtype,out_dtype", [(1, 512, 1000, "uint8", "float32"), (3, 37, 21, "int8", "int8"),
                                                      (2, 64, 16, "uint8", "uint8")])
def test_dense_vnni_bit_exact(N, K, O, in_dtype, out_dtype):
    rng = np.random.default_rng(K + O)
    x = rand_data(rng, (N, K), in_dtype)
    cp = make_params(rng, O, K, 1, out_dtype, padding=(0, 0, 0, 0), data=x.reshape(N, K, 1, 1))
    p = QDenseParams(weight=cp.weight[:, :, 0, 0], bias=cp.bias, multiplier=cp.multiplier, shift=cp.shift,
                     out_dtype=out_dtype, out_min=cp.out_min, out_max=cp.out_max, dequant_scale=cp.dequant_scale)
    ex = build_single(x86_vnni.lower_dense, x.shape, in_dtype, p, tvm.target.Target(AVX512))
    assert_exact(run(ex, x), common.ref_dense(x, p))


@needs_vnni
def test_vpdpbusd_in_asm():
    rng = np.random.default_rng(1)
    x = rand_data(rng, (1, 32, 14, 14), "uint8")
    p = make_params(rng, 32, 32, 3, "uint8", data=x)
    ex = build_single(x86_vnni.lower_conv2d, x.shape, "uint8", p, tvm.target.Target(AVX512))
    asm = ex.mod.imports[0].inspect_source("asm")
    assert asm.count("vpdpbusd") >= 8
    assert_exact(run(ex, x), common.ref_conv2d(x, p))


@pytest.mark.skipif(not host_has("avx2"), reason="host CPU has no AVX2")
@pytest.mark.parametrize("case", [CASES[0], CASES[1], CASES[4], CASES[5], CASES[7]],
                         ids=[CASES[i][0] for i in (0, 1, 4, 5, 7)])
def test_conv_fallback_avx2_bit_exact(case):
    name, N, C, H, W, O, k, s, pad, dil, g = case
    rng = np.random.default_rng(7)
    target = tvm.target.Target(AVX2)
    assert not x86_vnni.has_vnni(target)
    for in_dtype, out_dtype in (("int8", "int8"), ("uint8", "float32")):
        x = rand_data(rng, (N, C, H, W), in_dtype)
        p = make_params(rng, O, C // g, k, out_dtype, s, pad, dil, g, data=x)
        ex = build_single(x86_vnni.lower_conv2d, x.shape, in_dtype, p, target)
        asm = ex.mod.imports[0].inspect_source("asm")
        assert "vpdpbusd" not in asm and "zmm" not in asm
        if g != C:  # depthwise has its own int32 kernel
            assert "vpmaddwd" in asm
        assert_exact(run(ex, x), common.ref_conv2d(x, p))


@pytest.mark.parametrize("case", [CASES[1], CASES[4], CASES[7]], ids=[CASES[i][0] for i in (1, 4, 7)])
def test_conv_generic_x86_64_bit_exact(case):
    """Plain x86-64 (SSE2 only): the vectorised int32 fallback."""
    name, N, C, H, W, O, k, s, pad, dil, g = case
    rng = np.random.default_rng(9)
    target = tvm.target.Target({"kind": "llvm"})
    assert x86_vnni.config_for(target) is x86_vnni.FALLBACK_CONFIG
    x = rand_data(rng, (N, C, H, W), "int8")
    p = make_params(rng, O, C // g, k, "int8", s, pad, dil, g, data=x)
    ex = build_single(x86_vnni.lower_conv2d, x.shape, "int8", p, target)
    assert_exact(run(ex, x), common.ref_conv2d(x, p))


def test_bad_params_rejected():
    rng = np.random.default_rng(0)
    x = rand_data(rng, (1, 8, 5, 5), "uint8")
    p = make_params(rng, 8, 8, 3, "uint8", data=x)
    bad = QConv2dParams(**{**p.__dict__, "out_min": -5})
    with pytest.raises(ValueError):
        build_single(x86_vnni.lower_conv2d, x.shape, "uint8", bad, tvm.target.Target(AVX512))


@needs_vnni
@pytest.mark.parametrize("in_dtype", ["uint8", "int8"])
@pytest.mark.parametrize("ends", [False, True], ids=["transforms", "chain_ends"])
def test_blocked_chain_bit_exact(in_dtype, ends):
    """Two convs chained in NCHW16c equal two NCHW convs. transforms: NCHW -> NCHW16c -> conv (blocked in/out)
    -> conv (blocked in/out, 1x1/2) -> NCHW. chain_ends: what legalize/layout.py plans at a chain's ends, a conv
    reading NCHW and writing NCHW16c, then one reading NCHW16c (24 channels: 8 padded lanes) and writing NCHW
    (3x3/2), no layout transform."""
    rng = np.random.default_rng(5)
    x = rand_data(rng, (1, 20, 11, 11), in_dtype)
    p1 = make_params(rng, 24, 20, 3, "uint8", data=x)
    y1 = common.ref_conv2d(x, p1)
    k2, pad2 = (3, (1, 1, 1, 1)) if ends else (1, (0, 0, 0, 0))
    p2 = make_params(rng, 40, 24, k2, "int8", strides=(2, 2), padding=pad2, data=y1)
    ref = common.ref_conv2d(y1, p2)
    target = tvm.target.Target(AVX512)
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType(x.shape, in_dtype))
    with bb.function("main", [xv]):
        with bb.dataflow():
            if ends:
                h = x86_vnni.lower_conv2d_blocked(bb, xv, p1, target, blocked_in=False)
                o = bb.emit_output(x86_vnni.lower_conv2d_blocked(bb, h, p2, target, blocked_out=False))
            else:
                h = x86_vnni.lower_conv2d_blocked(bb, x86_vnni.to_blocked(bb, xv), p1, target)
                h = x86_vnni.lower_conv2d_blocked(bb, h, p2, target)
                o = bb.emit_output(x86_vnni.from_blocked(bb, h, 40))
        bb.emit_func_output(o)
    ex = relax.build(bb.get(), target=target)
    assert_exact(run(ex, x), ref)


@needs_vnni
@pytest.mark.parametrize("C,H,stride,pad,dil,in_dtype,out_dtype,relu6", [
    (32, 14, 1, 1, 1, "uint8", "uint8", False),   # MobileNetV2 block, stride 1
    (24, 15, 2, 1, 1, "int8", "uint8", True),     # stride 2, odd size, 8 padded channels, ReLU6 bounds
    (40, 9, 1, 2, 2, "uint8", "int8", False),     # dilated
    (16, 7, 2, 2, 1, "int8", "int8", False),      # 5x5 stride 2, more padding than a window's reach
])
def test_blocked_depthwise_bit_exact(C, H, stride, pad, dil, in_dtype, out_dtype, relu6):
    """Depthwise on NCHW16c (blocked in and out, both ends fed / read through layout transforms), and with
    NCHW at either end (the kernel converts)."""
    rng = np.random.default_rng(C + H)
    x = rand_data(rng, (1, C, H, H), in_dtype)
    k = 5 if C == 16 else 3
    p = make_params(rng, C, 1, k, out_dtype, strides=(stride, stride), padding=(pad,) * 4, dilation=(dil, dil),
                    groups=C, data=x, relu6=relu6)
    ref = common.ref_conv2d(x, p)
    target = tvm.target.Target(AVX512)
    for blocked_in, blocked_out in ((True, True), (False, False)):
        bb = relax.BlockBuilder()
        xv = relax.Var("x", relax.TensorType(x.shape, in_dtype))
        with bb.function("main", [xv]):
            with bb.dataflow():
                h = x86_vnni.to_blocked(bb, xv) if blocked_in else xv
                h = x86_vnni.lower_conv2d_blocked(bb, h, p, target, blocked_in=blocked_in, blocked_out=blocked_out)
                o = bb.emit_output(x86_vnni.from_blocked(bb, h, C) if blocked_out else h)
            bb.emit_func_output(o)
        mod = bb.get()
        assert any("dw_blk" in gv.name_hint for gv in mod.functions)
        assert_exact(run(relax.build(mod, target=target), x), ref)
