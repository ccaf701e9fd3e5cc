"""Intel AMX int8 kernels (x86_amx): bit-exact against the numpy int64 reference, tdpbusd in the object
code, dispatch (AMX only for targets with amx-int8 and eligible layers), the Linux permission helper."""
from __future__ import annotations

import zlib

import numpy as np
import pytest
import tvm
from tvm import relax

from isquant_tvm.kernels import common, lower_conv2d, lower_dense, x86_amx
from isquant_tvm.kernels.common import QDenseParams
from isquant_tvm.util import cpu as amx

from ..helpers import AMX_CASES as CASES
from ..helpers import AMX_DTYPES as DTYPES
from ..helpers import AMX_MATTR, AMX_SPR, NO_AMX, assert_exact, build_single, int32_range, make_params, needs_amx, rand_data, run


@needs_amx
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_conv_amx_bit_exact(case):
    name, N, C, H, W, O, k, s, pad, dil = case
    target = tvm.target.Target(AMX_SPR)
    for in_dtype, out_dtype in DTYPES:
        rng = np.random.default_rng(zlib.crc32(f"{name}{in_dtype}{out_dtype}".encode()))
        x = rand_data(rng, (N, C, H, W), in_dtype)
        p = int32_range(make_params(rng, O, C, k, out_dtype, s, pad, dil, 1, data=x, relu6=(in_dtype == "int8")))
        ex = build_single(x86_amx.lower_conv2d, x.shape, in_dtype, p, target)
        assert_exact(run(ex, x), common.ref_conv2d(x, p))


@needs_amx
@pytest.mark.parametrize("N,K,O,in_dtype,out_dtype", [
    (1, 512, 1000, "uint8", "float32"),  # resnet fc: M = 1 (1-row tiles), O % 16 == 8
    (3, 37, 21, "int8", "int8"),  # K remainder (kc = 40), O remainder
    (20, 64, 16, "uint8", "uint8"),  # M = 20: two 16-row tiles
    (5, 200, 40, "int8", "int32"),
])
def test_dense_amx_bit_exact(N, K, O, in_dtype, out_dtype):
    rng = np.random.default_rng(K + O)
    x = rand_data(rng, (N, K), in_dtype)
    cp = int32_range(make_params(rng, O, K, 1, out_dtype, padding=(0, 0, 0, 0), data=x.reshape(N, K, 1, 1)))
    p = QDenseParams(weight=cp.weight[:, :, 0, 0], bias=cp.bias, multiplier=cp.multiplier, shift=cp.shift,
                     out_dtype=out_dtype, out_min=cp.out_min, out_max=cp.out_max, dequant_scale=cp.dequant_scale)
    ex = build_single(x86_amx.lower_dense, x.shape, in_dtype, p, tvm.target.Target(AMX_MATTR))
    assert_exact(run(ex, x), common.ref_dense(x, p))


def _asm(ex) -> str:
    return ex.mod.imports[0].inspect_source("asm")


def test_tdpbusd_in_asm_only_with_amx():
    """Compiles anywhere; runs only on an AMX host. Both AMX spellings emit the tile instructions, a
    cascadelake build of the same conv (through the dispatcher) has none and uses vpdpbusd."""
    rng = np.random.default_rng(1)
    x = rand_data(rng, (1, 32, 14, 14), "uint8")
    p = make_params(rng, 32, 32, 3, "uint8", data=x)
    for spec in (AMX_SPR, AMX_MATTR):
        target = tvm.target.Target(spec)
        assert x86_amx.has_amx(target)
        ex = build_single(lower_conv2d, x.shape, "uint8", p, target)
        asm = _asm(ex)
        for ins in ("ldtilecfg", "tileloadd", "tdpbsud", "tilestored", "tilerelease"):
            assert ins in asm, ins  # int8 weights (A tiles) x uint8 data (B tiles)
        if amx.host_has_amx():
            assert_exact(run(ex, x), common.ref_conv2d(x, p))
    target = tvm.target.Target(NO_AMX)
    assert not x86_amx.has_amx(target)
    ex = build_single(lower_conv2d, x.shape, "uint8", p, target)
    asm = _asm(ex)
    assert "tdpb" not in asm and "tmm" not in asm and "vpdpbusd" in asm
    if "avx512_vnni" in open("/proc/cpuinfo").read():
        assert_exact(run(ex, x), common.ref_conv2d(x, p))


def test_int8_data_uses_tdpbssd():
    rng = np.random.default_rng(4)
    x = rand_data(rng, (1, 64, 6, 6), "int8")
    p = make_params(rng, 32, 64, 1, "int8", padding=(0, 0, 0, 0), data=x)
    ex = build_single(x86_amx.lower_conv2d, x.shape, "int8", p, tvm.target.Target(AMX_SPR))
    asm = _asm(ex)
    assert "tdpbssd" in asm and "tdpbsud" not in asm
    if amx.host_has_amx():
        assert_exact(run(ex, x), common.ref_conv2d(x, p))


def _kernel_names(lower, x_shape, dtype, p, spec) -> set[str]:
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(x_shape, dtype))
    with bb.function("main", [x]):
        with bb.dataflow():
            o = bb.emit_output(lower(bb, x, p, tvm.target.Target(spec)))
        bb.emit_func_output(o)
    return {gv.name_hint for gv in bb.get().functions if gv.name_hint != "main"}


def test_dispatch():
    """AMX targets: groups == 1 convs with >= 16 input channels or a folded (KW > 1) kernel, and dense with
    batch >= 2 -> AMX; few-channel 1x1, grouped and depthwise convs stay on VNNI. Targets without amx-int8
    never get AMX."""
    rng = np.random.default_rng(2)
    x = rand_data(rng, (1, 32, 8, 8), "uint8")
    p = make_params(rng, 32, 32, 3, "uint8", data=x)
    assert any("amx" in n for n in _kernel_names(lower_conv2d, x.shape, "uint8", p, AMX_MATTR))
    assert not any("amx" in n for n in _kernel_names(lower_conv2d, x.shape, "uint8", p, NO_AMX))
    stem_x = rand_data(rng, (1, 3, 16, 16), "uint8")
    stem = make_params(rng, 16, 3, 7, "uint8", (2, 2), (3, 3, 3, 3), data=stem_x)
    assert any("amx" in n for n in _kernel_names(lower_conv2d, stem_x.shape, "uint8", stem, AMX_SPR))
    pw8 = make_params(rng, 16, 3, 1, "uint8", padding=(0, 0, 0, 0), data=stem_x)
    assert not any("amx" in n for n in _kernel_names(lower_conv2d, stem_x.shape, "uint8", pw8, AMX_SPR))
    dw = make_params(rng, 32, 1, 3, "uint8", groups=32, data=x)
    assert not any("amx" in n for n in _kernel_names(lower_conv2d, x.shape, "uint8", dw, AMX_SPR))
    grouped = make_params(rng, 32, 16, 3, "uint8", groups=2, data=x)
    assert not any("amx" in n for n in _kernel_names(lower_conv2d, x.shape, "uint8", grouped, AMX_SPR))
    dp = QDenseParams(weight=p.weight[:, :, 0, 0], bias=p.bias, multiplier=p.multiplier, shift=p.shift,
                      out_dtype="uint8", out_min=0, out_max=255)
    assert any("amx" in n for n in _kernel_names(lower_dense, (2, 32), "uint8", dp, AMX_SPR))
    assert not any("amx" in n for n in _kernel_names(lower_dense, (1, 32), "uint8", dp, AMX_SPR))  # a tie: VNNI
    assert not any("amx" in n for n in _kernel_names(lower_dense, (2, 32), "uint8", dp, NO_AMX))


def test_amx_permission_helper():
    assert amx.target_uses_amx(AMX_SPR) and amx.target_uses_amx(AMX_MATTR)
    assert not amx.target_uses_amx(NO_AMX) and not amx.target_uses_amx({"kind": "llvm"})
    if amx.host_has_amx():
        assert amx.request_amx_permission() is True
        assert amx.request_amx_permission() is True  # idempotent
    else:
        assert amx.request_amx_permission() is False


def test_geometry_padding():
    """Packed constants are padded to whole tiles and the planes cover every tile read."""
    rng = np.random.default_rng(3)
    x = rand_data(rng, (1, 96, 7, 7), "uint8")
    p = make_params(rng, 40, 96, 3, "uint8", data=x)
    g = x86_amx.amx_geom(x.shape, p)
    assert (g.kc, g.ICB, g.WQ, g.M, g.Mpad, g.O_pad) == (64, 2, 9, 63, 64, 64)
    assert g.Mpad + max(t[2] for t in g.taps) <= g.HQ * g.WQ
    assert g.tiles_used <= 8
    w = x86_amx.pack_weight(p.weight, g)
    assert w.shape == (g.OCB, g.ICB, 9, 16, 64)
    # A tile (ocb 1, chunk 0, tap 4 = (1, 1)): row r = output channel 16 + r, columns = input channels 0..63
    np.testing.assert_array_equal(w[1, 0, 4, 5], p.weight[21, :64, 1, 1])
    assert not w[2, :, :, 8:].any() and not w[3].any() and not w[:, 1, :, :, 32:].any()  # O 40 -> 64, C 96 -> 128
    gd = x86_amx.dense_geom((1, 512), QDenseParams(weight=np.zeros((1000, 512), np.int8), bias=np.zeros(1000, np.int32),
                                                    multiplier=np.ones(1000), shift=np.ones(1000)))
    assert (gd.pw, gd.MO, gd.MP, gd.O_pad) == (1, 3, 1, 1008)


def test_runner_asks_permission_on_local_cpu(monkeypatch):
    """VMRunner (local CPU) asks for AMX permission before the first run; a refusal is an error only for
    libraries built for an AMX target."""
    from isquant_tvm.errors import IsquantError
    from isquant_tvm.runtime import runner

    assert runner._device_type(tvm.cpu(0)) == 1
    calls = []

    def refuse():
        calls.append(1)
        raise IsquantError("refused")

    monkeypatch.setattr(amx, "host_has_amx", lambda: True)
    monkeypatch.setattr(amx, "request_amx_permission", refuse)
    runner._amx_permission({"target": NO_AMX})  # not an AMX library: ignored
    with pytest.raises(IsquantError):
        runner._amx_permission({"target": AMX_MATTR})
    assert len(calls) == 2


def test_amx_library_on_a_cpu_without_amx_is_a_clear_error(monkeypatch):
    from isquant_tvm.errors import IsquantError
    from isquant_tvm.runtime import runner

    monkeypatch.setattr(amx, "host_has_amx", lambda: False)
    runner._amx_permission({"target": NO_AMX})  # VNNI libraries run anywhere they ran before
    with pytest.raises(IsquantError, match="built for AMX.*rebuild it with --target x86"):
        runner._amx_permission({"target": AMX_MATTR})
