"""qnn.lut lowered through elementwise8.lower_lut against the numpy reference: the AVX-512 vpgatherdd
kernel (per tensor, NCHW16c per channel with padded channels, NCHW per channel, int8 / uint8 in and out)
and the generic kernel where the gather does not apply (AVX2 target, a 7x7 NCHW plane)."""
from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax

from isquant_tvm.kernels import elementwise8
from isquant_tvm.reference.interpreter import qnn_lut

from ..helpers import AVX2, AVX512, host_has, rand_data

needs_avx512 = pytest.mark.skipif(not host_has("avx512f"), reason="host CPU has no AVX-512")


def _blocked(x: np.ndarray) -> np.ndarray:
    N, C, H, W = x.shape
    CB = -(-C // 16)
    out = np.zeros((N, CB * 16, H, W), x.dtype)
    out[:, :C] = x
    return np.ascontiguousarray(out.reshape(N, CB, 16, H, W).transpose(0, 1, 3, 4, 2))


def _unblocked(y: np.ndarray, C: int) -> np.ndarray:
    N, CB, H, W, _ = y.shape
    return y.transpose(0, 1, 4, 2, 3).reshape(N, CB * 16, H, W)[:, :C]


@needs_avx512
@pytest.mark.parametrize("spec,C,H,blocked,per_channel,in_dtype,out_dtype,gather", [
    (AVX512, 40, 7, True, True, "uint8", "uint8", True),    # 8 padded channels: zero rows, never read back
    (AVX512, 32, 5, True, True, "int8", "int8", True),      # int8 data: index x + 128
    (AVX512, 24, 8, False, True, "int8", "uint8", True),    # NCHW per channel, 64-element planes
    (AVX512, 16, 9, True, False, "uint8", "int8", True),    # per tensor on NCHW16c
    (AVX512, 3, 12, False, False, "int8", "int8", True),    # per tensor on NCHW
    (AVX512, 8, 7, False, True, "uint8", "uint8", False),   # 49-element planes: generic kernel
    (AVX2, 40, 7, True, True, "uint8", "uint8", False),     # no AVX-512: generic kernel
])
def test_lut_bit_exact(spec, C, H, blocked, per_channel, in_dtype, out_dtype, gather):
    rng = np.random.default_rng(C * H)
    x = rand_data(rng, (1, C, H, H), in_dtype)
    table = rand_data(rng, (C if per_channel else 1, 256), out_dtype)
    want = qnn_lut([x, table], {"out_dtype": out_dtype})
    xin = _blocked(x) if blocked else x
    target = tvm.target.Target(spec)
    rows = 1 if not per_channel else (xin.shape[1] * 16 if blocked else C)
    assert elementwise8.gather_lut_ok(xin.shape, rows, target) == gather
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType(xin.shape, in_dtype))
    with bb.function("main", [xv]):
        with bb.dataflow():
            y = bb.emit_output(elementwise8.lower_lut(bb, xv, table, {"out_dtype": out_dtype}, target))
        bb.emit_func_output(y)
    vm = relax.VirtualMachine(tvm.compile(bb.get(), target=target), tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(xin)).numpy()
    got = _unblocked(got, C) if blocked else got
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)
