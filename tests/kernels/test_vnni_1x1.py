"""kernels/vnni_1x1.py (blocked 1x1 conv, no pack, T pixels x OCT oc-block tile, vector int32 requantize)
against the numpy reference: uint8 and int8 data (xor 0x80808080 on the broadcast dword), padded input
and output channels, an output zero point, tiles that do not fill 7 x 4, and the TE kernel kept for a
layer with a shift < 33."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tvm
from tvm import relax

from isquant_tvm.kernels import common, vnni_1x1, x86_vnni

from ..helpers import AVX512, assert_exact, host_has, make_params, rand_data, run

needs_vnni = pytest.mark.skipif(not host_has("avx512_vnni"), reason="host CPU has no AVX-512 VNNI")


@needs_vnni
@pytest.mark.parametrize("C,O,H,in_dtype,out_dtype,zp,low_shift", [
    (24, 96, 14, "uint8", "uint8", 0, False),   # 8 padded input channels, 7 x 4 tile over 6 oc blocks -> 3 x 2
    (40, 20, 6, "int8", "int8", -3, False),     # int8 data, 12 padded output channels, 36-pixel plane (tile 6)
    (16, 64, 5, "int8", "uint8", 5, False),     # 25 pixels (tile 5)
    (32, 32, 7, "uint8", "int8", 0, True),      # one shift 32: the TE kernel
])
def test_vnni_1x1_bit_exact(C, O, H, in_dtype, out_dtype, zp, low_shift):
    rng = np.random.default_rng(C * O + H)
    x = rand_data(rng, (1, C, H, H), in_dtype)
    p = make_params(rng, O, C, 1, out_dtype, padding=(0, 0, 0, 0), data=x)
    shift = np.maximum(np.asarray(p.shift), 33)
    if low_shift:
        shift[0] = 32
    p = dataclasses.replace(p, shift=shift, out_zero_point=zp)
    ref = common.ref_conv2d(x, p)
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType(x.shape, in_dtype))
    with bb.function("main", [xv]):
        with bb.dataflow():
            h = x86_vnni.lower_conv2d_blocked(bb, x86_vnni.to_blocked(bb, xv), p, tvm.target.Target(AVX512))
            o = bb.emit_output(x86_vnni.from_blocked(bb, h, O))
        bb.emit_func_output(o)
    mod = bb.get()
    convs = [f.script() for _, f in mod.functions.items() if "vpdpbusd" in f.script()]
    assert len(convs) == 1 and ('"pack"' in convs[0]) == low_shift  # the TE kernel has a pack stage
    assert vnni_1x1.eligible((1, -(-C // 16), H, H, 16), p) == (not low_shift)
    out = run(relax.build(mod, target=tvm.target.Target(AVX512)), x)
    assert_exact(out, ref)
