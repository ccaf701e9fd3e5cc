"""The int32 form of the 8-bit requantize (geometry._requant_hi32, used where every shift is >= 33) equals
the numpy int64 reference on its edges: extreme accumulators, shifts 33 .. 62, output zero points."""
from __future__ import annotations

import numpy as np
import pytest

from isquant_tvm.kernels import geometry
from isquant_tvm.kernels.common import QConv2dParams
from isquant_tvm.reference import fixed_point

from ..helpers import run_requant_epilogue


@pytest.mark.parametrize("out_dtype,zero_point", [("uint8", 0), ("int8", 0), ("uint8", 7), ("int8", -5)])
def test_requant_hi32_equals_reference(out_dtype, zero_point):
    rng = np.random.default_rng(33 + zero_point)
    O = 64
    top = 62 if zero_point == 0 else 57  # the reference refuses z * 2^n near int64's end
    shift = np.concatenate([[33, 33, 34, top, top, 40], rng.integers(33, top + 1, O - 6)]).astype(np.int64)
    mult = np.concatenate([[2 ** 30, 2 ** 31 - 1, 2 ** 31 - 1, 2 ** 31 - 1, 2 ** 30, 1],
                           rng.integers(2 ** 30, 2 ** 31, O - 6)]).astype(np.int64)
    lo, hi = (0, 255) if out_dtype == "uint8" else (-128, 127)
    p = QConv2dParams(weight=np.zeros((O, 1, 1, 1), np.int8), bias=np.zeros(O, np.int32), multiplier=mult,
                      shift=shift, out_dtype=out_dtype, out_min=lo, out_max=hi, out_zero_point=zero_point)
    consts = geometry.epilogue_consts(p, O, hi32=True)
    assert geometry.uses_hi32(p) and "sh32" in consts
    acc_np = np.concatenate([[2 ** 31 - 1, -2 ** 31, 0, -1, 1], rng.integers(-2 ** 31, 2 ** 31, 4096 - 5)])
    acc_np = acc_np.astype(np.int32).reshape(-1, O)
    y = run_requant_epilogue(acc_np, p, consts)
    ref = fixed_point.requantize(acc_np, mult, shift, lo, hi, channel_axis=1, zero_point=zero_point)
    np.testing.assert_array_equal(y, ref.astype(out_dtype))


def test_hi32_only_where_every_shift_allows():
    base = dict(weight=np.zeros((2, 1, 1, 1), np.int8), bias=np.zeros(2, np.int32),
                multiplier=np.full(2, 2 ** 30, np.int64), out_dtype="uint8", out_min=0, out_max=255)
    assert not geometry.uses_hi32(QConv2dParams(shift=np.array([33, 32]), **base))
    assert "sh32" not in geometry.epilogue_consts(QConv2dParams(shift=np.array([33, 32]), **base), 2, hi32=True)
    assert "sh32" not in geometry.epilogue_consts(QConv2dParams(shift=np.array([40, 40]), **base), 2)
