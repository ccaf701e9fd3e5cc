"""The ARM int32 form of the 8-bit requantize (geometry._requant_q31: srshl(sqdmulh(acc, m), -(n-31)), used
where every shift is >= 32) equals the numpy int64 reference: the identity on its edges with the two
instructions modelled from the Arm ARM pseudocode, the host twin built by TVM, the cross-compiled kernels
carrying the instructions, and the per-layer int64 fallback."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tvm
from tvm import relax

from isquant_tvm.kernels import arm_dot, geometry
from isquant_tvm.kernels.common import QConv2dParams
from isquant_tvm.reference import fixed_point

from ..helpers import RASP4B, RASP5, make_params, needs_cross, objdump_ops, rand_data, run_requant_epilogue



def sqdmulh(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """SQDMULH (32-bit lanes): SignedSat((2 * a * b) >> 32), in Python integers."""
    out = [max(-2 ** 31, min(2 ** 31 - 1, (2 * int(x) * int(y)) >> 32)) for x, y in zip(a.ravel(), b.ravel())]
    return np.array(out, np.int64).reshape(a.shape)


def srshl(a: np.ndarray, s: np.ndarray) -> np.ndarray:
    """SRSHL with a negative shift -k: (a + 2^(k-1)) >> k computed without overflow, then truncated to 32 bits
    (always in range for k >= 1)."""
    out = []
    for x, v in zip(a.ravel(), s.ravel()):
        k = -int(v)
        r = (int(x) + (1 << (k - 1))) >> k
        assert -2 ** 31 <= r < 2 ** 31
        out.append(r)
    return np.array(out, np.int64).reshape(a.shape)


def _edge_case(zero_point: int, O: int = 48, R: int = 64):
    rng = np.random.default_rng(32 + zero_point)
    top = 62 if zero_point == 0 else 57  # the reference refuses z * 2^n near int64's end
    shift = np.concatenate([[32, 32, 32, 33, top, top, 62 if zero_point == 0 else top, 40],
                            rng.integers(32, top + 1, O - 8)]).astype(np.int64)
    mult = np.concatenate([[2 ** 31 - 1, 2 ** 30, 1, 2 ** 31 - 1, 2 ** 31 - 1, 2 ** 30, 0, 2 ** 31 - 2],
                           rng.integers(2 ** 30, 2 ** 31, O - 8)]).astype(np.int64)
    edges = [2 ** 31 - 1, -2 ** 31, -2 ** 31 + 1, 0, -1, 1, 2 ** 30, -2 ** 30, 2 ** 30 - 1]
    acc = np.concatenate([np.repeat(edges, O), rng.integers(-2 ** 31, 2 ** 31, (R - len(edges)) * O)])
    # accumulators where acc*m / 2^n lands exactly on a .5 (the rounding tie) for the small shifts
    acc[-O:] = np.clip((np.int64(1) << (shift - 31)) * (2 * rng.integers(-1000, 1000, O) + 1) // 2, -2 ** 31,
                       2 ** 31 - 1)
    return shift, mult, acc.astype(np.int32).reshape(R, O)


@pytest.mark.parametrize("zero_point", [0, 5, -7])
def test_identity_with_modelled_instructions(zero_point):
    shift, mult, acc = _edge_case(zero_point)
    for lo, hi in ((-128, 127), (0, 255)):
        ref = fixed_point.requantize(acc, mult, shift, lo, hi, channel_axis=1, zero_point=zero_point)
        m = np.broadcast_to(mult, acc.shape)
        y = srshl(sqdmulh(acc.astype(np.int64), m), np.broadcast_to(31 - shift, acc.shape)) + zero_point
        np.testing.assert_array_equal(np.clip(y, lo, hi), ref)
    # and without the clamp: the identity itself, (acc*m + 2^(n-1)) >> n
    exact = (acc.astype(object) * mult.astype(object) + (1 << (shift.astype(object) - 1))) >> shift.astype(object)
    y = srshl(sqdmulh(acc.astype(np.int64), np.broadcast_to(mult, acc.shape)), np.broadcast_to(31 - shift, acc.shape))
    np.testing.assert_array_equal(y, exact.astype(np.int64))


@pytest.mark.parametrize("out_dtype,zero_point", [("uint8", 0), ("int8", 0), ("uint8", 7), ("int8", -5)])
def test_host_twin_equals_reference(out_dtype, zero_point):
    """requant_expr's int64 TIR twin of the q31 form (what arm_dot.portable_config builds) through TVM."""
    shift, mult, acc_np = _edge_case(zero_point)
    O = acc_np.shape[1]
    lo, hi = (0, 255) if out_dtype == "uint8" else (-128, 127)
    p = QConv2dParams(weight=np.zeros((O, 1, 1, 1), np.int8), bias=np.zeros(O, np.int32), multiplier=mult,
                      shift=shift, out_dtype=out_dtype, out_min=lo, out_max=hi, out_zero_point=zero_point)
    consts = geometry.epilogue_consts(p, O, q31=True)
    assert geometry.uses_q31(p) and sorted(consts) == ["mult", "q31sh"] and consts["mult"].dtype == np.int32
    y = run_requant_epilogue(acc_np, p, consts, q31_neon=False)
    ref = fixed_point.requantize(acc_np, mult, shift, lo, hi, channel_axis=1, zero_point=zero_point)
    np.testing.assert_array_equal(y, ref.astype(out_dtype))


def test_q31_only_where_every_shift_allows():
    base = dict(weight=np.zeros((2, 1, 1, 1), np.int8), bias=np.zeros(2, np.int32), out_min=0, out_max=255)
    m = np.full(2, 2 ** 30, np.int64)
    assert geometry.uses_q31(QConv2dParams(multiplier=m, shift=np.array([32, 62]), out_dtype="uint8", **base))
    assert not geometry.uses_q31(QConv2dParams(multiplier=m, shift=np.array([32, 31]), out_dtype="uint8", **base))
    assert not geometry.uses_q31(QConv2dParams(multiplier=m, shift=np.array([40, 40]), out_dtype="int32", **base))
    p31 = QConv2dParams(multiplier=m, shift=np.array([40, 31]), out_dtype="uint8", **base)
    assert "q31sh" not in geometry.epilogue_consts(p31, 2, q31=True)
    p40 = QConv2dParams(multiplier=m, shift=np.array([40, 40]), out_dtype="uint8", **base)
    assert "q31sh" not in geometry.epilogue_consts(p40, 2)
    padded = geometry.epilogue_consts(p40, 2, 16, q31=True)  # padded channels: m 0, n 32 -> requant(0) = z
    assert list(padded["q31sh"][:3]) == [-9, -9, -1] and padded["mult"][2:].max() == 0


@needs_cross
@pytest.mark.parametrize("board", ["rasp5", "rasp4b"])
def test_arm_kernels_emit_sqdmulh(board, tmp_path):
    """A blocked conv + depthwise chain: sqdmulh/srshl where every shift >= 32, int64 (smull) otherwise."""
    from tvm.support import cc

    target = tvm.target.Target(RASP5 if board == "rasp5" else RASP4B)
    rng = np.random.default_rng(5)
    x = rand_data(rng, (1, 32, 12, 12), "uint8")
    pc = make_params(rng, 32, 32, 3, "uint8", data=x)
    pd = make_params(rng, 32, 1, 3, "uint8", groups=32, data=x)
    counts = {}
    for label, shift in (("q31", 36), ("int64", 31)):
        bb = relax.BlockBuilder()
        xv = relax.Var("x", relax.TensorType(x.shape, "uint8"))
        with bb.function("main", [xv]):
            with bb.dataflow():
                sh = np.full(32, shift, np.int64)
                y = arm_dot.lower_conv2d_blocked(bb, xv, dataclasses.replace(pc, shift=sh), target, blocked_in=False)
                y = arm_dot.lower_conv2d_blocked(bb, y, dataclasses.replace(pd, shift=sh), target, blocked_out=False)
                o = bb.emit_output(y)
            bb.emit_func_output(o)
        so = tmp_path / f"{board}_{label}.so"
        relax.build(bb.get(), target=target).export_library(str(so), fcompile=cc.cross_compiler("aarch64-linux-gnu-gcc"))
        counts[label] = objdump_ops(so, arrangements=True)
    q, i64 = counts["q31"], counts["int64"]
    # two kernels x 16 channels / 4 lanes, at least once per register tile
    assert q.get("sqdmulh", 0) >= 8 and q.get("srshl", 0) >= 8, q
    assert i64.get("sqdmulh", 0) == 0 and i64.get("srshl", 0) == 0, i64
    # the int64 form's widening multiply-adds (smlal/smlal2 .2d) and 64-bit clamps (cmgt + bsl/bif: NEON has no
    # smin/smax .2d) are gone from the epilogues
    wide = lambda c: c.get("smlal.2d", 0) + c.get("smlal2.2d", 0) + c.get("cmgt.2d", 0)  # noqa: E731
    assert wide(i64) >= 2 * 48 and wide(q) == 0, (wide(q), wide(i64))
