"""AMX conv on NCHW16c activations (x86_amx_blocked): bit-exact against the numpy int64 reference with the
same remainders as x86_amx's cases (channels, pixels, strides, dilation, padding), NCHW16c or NCHW output,
per-block skipping of all-zero taps (merged convs), and the dispatch of blocked convs on AMX targets."""
from __future__ import annotations

import dataclasses
import zlib

import numpy as np
import pytest
import tvm
from tvm import relax

from isquant_tvm.kernels import common, lower_conv2d_blocked, x86_amx_blocked, x86_vnni

from ..helpers import AMX_CASES as CASES
from ..helpers import AMX_DTYPES as DTYPES
from ..helpers import AMX_SPR, NO_AMX, assert_exact, int32_range, make_params, needs_amx, rand_data, run


def _build(x_shape, in_dtype, p, target, blocked_out: bool, lower=x86_amx_blocked.lower_conv2d):
    """NCHW in -> to_blocked -> the conv -> (from_blocked) -> NCHW out, one Relax function."""
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType(x_shape, in_dtype))
    O = p.weight.shape[0]
    with bb.function("main", [xv]):
        with bb.dataflow():
            h = lower(bb, x86_vnni.to_blocked(bb, xv), p, target, blocked_out=blocked_out)
            o = bb.emit_output(x86_vnni.from_blocked(bb, h, O) if blocked_out else h)
        bb.emit_func_output(o)
    return bb.get()


@needs_amx
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_conv_amx_blocked_bit_exact(case):
    name, N, C, H, W, O, k, s, pad, dil = case
    target = tvm.target.Target(AMX_SPR)
    # one dtype pair and output layout per case, rotating: every pair and both layouts are covered across
    # the 16 cases at a tenth of the builds
    i = CASES.index(case)
    in_dtype, out_dtype = DTYPES[i % len(DTYPES)]
    rng = np.random.default_rng(zlib.crc32(f"{name}{in_dtype}{out_dtype}".encode()))
    x = rand_data(rng, (N, C, H, W), in_dtype)
    p = int32_range(make_params(rng, O, C, k, out_dtype, s, pad, dil, 1, data=x, relu6=(in_dtype == "int8")))
    mod = _build(x.shape, in_dtype, p, target, blocked_out=bool(i % 2))
    assert_exact(run(relax.build(mod, target=target), x), common.ref_conv2d(x, p))


def _merged_params(rng, C, O1, O2, x):
    """A 3x3 conv whose first O1 channels are 1x1 convs embedded at the centre tap (merge_concat_convs)."""
    p = make_params(rng, O1 + O2, C, 3, "uint8", (1, 1), (1, 1, 1, 1), (1, 1), 1, data=x)
    w = p.weight.copy()
    ring = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (2, 2)]
    for kh, kw in ring:
        w[:O1, :, kh, kw] = 0
    return dataclasses.replace(p, weight=w)


@needs_amx
@pytest.mark.parametrize("C,H,O1,O2", [(16, 13, 64, 64), (32, 9, 48, 80)])
def test_zero_taps_skipped_per_block_bit_exact(C, H, O1, O2):
    """The 1x1 channels' blocks run the centre tap only, the 3x3 ones all nine; a block mixing both (48 = 1.5
    blocks of 32) runs the union. The result equals the full conv."""
    rng = np.random.default_rng(C + O1)
    x = rand_data(rng, (1, C, H, H), "uint8")
    p = _merged_params(rng, C, O1, O2, x)
    g, _ = x86_amx_blocked.blocked_geom((1, -(-C // 16), H, H, 16), p)
    runs = x86_amx_blocked.tap_runs(g, p.weight)
    # 16 / 32 input channels: the kernel columns are folded into the reduction, a tap is a kernel row
    assert g.fold == 3 and len(g.taps) == 3
    centre = tuple(t for t in g.taps if t[0] == 1)
    assert runs[0][1] == centre and runs[-1][1] == g.taps and runs[-1][0] == g.OB
    target = tvm.target.Target(AMX_SPR)
    mod = _build(x.shape, "uint8", p, target, blocked_out=True)
    assert_exact(run(relax.build(mod, target=target), x), common.ref_conv2d(x, p))


@pytest.mark.parametrize("C,KW,fold,dots", [(16, 3, 3, 3), (32, 3, 3, 6), (48, 3, 1, 9), (64, 3, 1, 9), (16, 1, 1, 1)])
def test_columns_folded_where_it_saves_tile_multiplies(C, KW, fold, dots):
    """A tile multiply costs the same up to 64-byte rows: 16 channels x 3 columns fit one row (3 multiplies
    per 3x3 tile instead of 9); 48 channels x 3 columns need 3 rows per kernel row either way."""
    rng = np.random.default_rng(C)
    x = rand_data(rng, (1, C, 6, 6), "uint8")
    p = make_params(rng, 16, C, KW, "uint8", padding=(KW // 2,) * 4, data=x)
    g, _ = x86_amx_blocked.blocked_geom((1, C // 16, 6, 6, 16), p)
    assert g.fold == fold and g.ICB * len(g.taps) == dots


def test_all_zero_weights_leave_the_bias():
    rng = np.random.default_rng(0)
    p = make_params(rng, 16, 16, 3, "uint8", data=rand_data(rng, (1, 16, 7, 7), "uint8"))
    g, _ = x86_amx_blocked.blocked_geom((1, 1, 7, 7, 16), p)
    assert x86_amx_blocked.tap_runs(g, np.zeros((16, 16, 3, 3), np.int8)) == [(g.OB, ())]


def test_blocked_dispatch():
    """Blocked input on an AMX target: the AMX blocked kernel (tdpbusd); NCHW input (the RGB stem) or no AMX:
    the VNNI blocked kernel."""
    rng = np.random.default_rng(3)
    x = rand_data(rng, (1, 32, 8, 8), "uint8")
    p = make_params(rng, 32, 32, 3, "uint8", data=x)

    def kernels(target, blocked_in):
        bb = relax.BlockBuilder()
        xv = relax.Var("x", relax.TensorType(x.shape, "uint8"))
        with bb.function("main", [xv]):
            with bb.dataflow():
                h = x86_vnni.to_blocked(bb, xv) if blocked_in else xv
                o = bb.emit_output(lower_conv2d_blocked(bb, h, p, tvm.target.Target(target), blocked_in=blocked_in))
            bb.emit_func_output(o)
        return {gv.name_hint for gv in bb.get().functions if gv.name_hint.startswith("qconv2d")}

    assert kernels(AMX_SPR, True) == {"qconv2d_amx_blk"}
    assert kernels(AMX_SPR, False) == {"qconv2d_vnni_blk"}
    assert kernels(NO_AMX, True) == {"qconv2d_vnni_blk"}


@needs_amx
def test_tdpbusd_and_vpmuldq_in_blocked_kernel():
    """The blocked AMX conv multiplies with tiles, and its requantize with vpmuldq: the bias starts the C
    tiles, so the epilogue's int64 product has two sign-extended int32 operands (with `acc + bias` LLVM
    used the 3-uop vpmullq)."""
    rng = np.random.default_rng(4)
    x = rand_data(rng, (1, 16, 9, 9), "uint8")
    p = make_params(rng, 32, 16, 3, "uint8", data=x)
    target = tvm.target.Target(AMX_SPR)
    ex = relax.build(_build(x.shape, "uint8", p, target, blocked_out=True), target=target)
    asm = "".join(m.inspect_source("asm") for m in ex.mod.imports)
    assert "tdpbusd" in asm and "vpmuldq" in asm and "vpmullq" not in asm
