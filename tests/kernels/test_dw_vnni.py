"""kernels/dw_vnni.py (blocked depthwise, four kernel columns per vpdpbusd) against the numpy reference:
both shuffle lowerings (cascadelake: vpermd + vpshufb; the host's preset: vpermb where it has VBMI), the
int32 requantize (shifts >= 33) with and without an output zero point, and its int64 fallback."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tvm
from tvm import relax

from isquant_tvm.kernels import common, x86_vnni
from isquant_tvm.targets import presets

from ..helpers import AVX512, assert_exact, host_has, make_params, rand_data, run

needs_vnni = pytest.mark.skipif(not host_has("avx512_vnni"), reason="host CPU has no AVX-512 VNNI")


@needs_vnni
@pytest.mark.parametrize("target", ["avx512", "host"])
@pytest.mark.parametrize("C,H,k,stride,in_dtype,out_dtype,zp,low_shift", [
    (48, 13, 3, 1, "uint8", "uint8", 0, False),
    (40, 12, 3, 2, "int8", "int8", -3, False),   # 8 padded channels, int8 data (+128 in the row copy)
    (32, 9, 5, 2, "uint8", "int8", 4, False),    # 5x5: two quads per kernel row
    (16, 7, 3, 1, "int8", "uint8", 0, True),     # one shift 32: the int64 epilogue
])
def test_dw_vnni_bit_exact(target, C, H, k, stride, in_dtype, out_dtype, zp, low_shift):
    rng = np.random.default_rng(C * H + k)
    x = rand_data(rng, (1, C, H, H), in_dtype)
    p = make_params(rng, C, 1, k, out_dtype, strides=(stride, stride), padding=(k // 2,) * 4, groups=C, data=x)
    shift = np.maximum(np.asarray(p.shift), 33)
    if low_shift:
        shift[0] = 32
    p = dataclasses.replace(p, shift=shift, out_zero_point=zp)
    ref = common.ref_conv2d(x, p)
    spec = AVX512 if target == "avx512" else presets.presets()["x86"].spec
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType(x.shape, in_dtype))
    with bb.function("main", [xv]):
        with bb.dataflow():
            h = x86_vnni.lower_conv2d_blocked(bb, x86_vnni.to_blocked(bb, xv), p, tvm.target.Target(spec))
            o = bb.emit_output(x86_vnni.from_blocked(bb, h, C))
        bb.emit_func_output(o)
    mod = bb.get()
    dw = [f for gv, f in mod.functions.items() if "dw_blk" in gv.name_hint]
    assert len(dw) == 1 and "vpdpbusd" in dw[0].script()  # the quad kernel, not the generic one
    out = run(relax.build(mod, target=tvm.target.Target(spec)), x)
    assert_exact(out, ref)
