"""Tests for isquant_tvm.rounding.isquant: spec §8 vectors, a loop-level reference, properties.

The reference below (``ref_round``) is a deliberately slow restatement of the spec's FLIP
routine (§3.4-§3.7) with the semantics isquant.py fixes: half-to-even RTN, stable tie-break,
float64 sums in the documented order, S == 0 is a no-op, and the "clean" variant (entries of
priority 0 are never flipped nor registered; T13). The fast vectorised code must agree with
it bit for bit.
"""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from isquant_tvm.rounding import isquant as iq
from isquant_tvm.rounding.isquant import (
    METHODS,
    QuantizedWeight,
    fold_batchnorm,
    quantize_weight,
    round_weights,
    weight_metrics,
    weight_scale,
)

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)


# ----------------------------------------------------------------------------------------------
# Loop-level reference
# ----------------------------------------------------------------------------------------------


def _seq(values) -> float:
    s = 0.0
    for v in values:
        s += float(v)
    return s


def ref_round(x, qmin: int, qmax: int, method: str) -> np.ndarray:
    """One group at a time, straight from spec §3.3-§3.7 (clean variant, S == 0 no-op)."""
    x = np.asarray(x, dtype=np.float64)
    oc_n, ic_n = x.shape[0], x.shape[1]
    k_n = math.prod(x.shape[2:])
    X = x.reshape(-1)
    n = X.size
    R0 = np.rint(X)
    E0 = R0 - X
    # §3.3 static candidate tables
    UPN, UPE, PU = R0.copy(), np.zeros(n), np.zeros(n)
    DNN, DNE, PD = R0.copy(), np.zeros(n), np.zeros(n)
    for i in range(n):
        if E0[i] < 0 and X[i] < qmax:
            UPN[i], UPE[i], PU[i] = R0[i] + 1, E0[i] + 1, -E0[i]
        if E0[i] > 0 and X[i] > qmin:
            DNN[i], DNE[i], PD[i] = R0[i] - 1, E0[i] - 1, E0[i]
    R, E = R0.copy(), E0.copy()

    use_k = method in ("squant-k", "squant") and k_n > 1
    use_c = method in ("squant-c", "squant")

    def plan(group, S):
        """Direction, k, over and the genuine candidates in order, from priorities on entry."""
        if S == 0:
            return None
        up = S < 0
        P = PU if up else PD
        a = abs(S)
        k = int(np.rint(a))
        order = sorted(group, key=lambda i: (-P[i], i))  # stable: lower index wins ties
        cands = [i for i in order if P[i] > 0]  # clean variant: priority 0 is never touched
        return up, k, k >= a, cands

    def apply(pl, S):
        """Flip, register, and return the group's residual (S moved one step per flip)."""
        if pl is None:
            return S
        up, k, over, cands = pl
        N, Ed = (UPN, UPE) if up else (DNN, DNE)
        P, Popp = (PU, PD) if up else (PD, PU)
        flipped = cands[:k]
        for i in flipped:
            R[i], E[i] = N[i], Ed[i]
        if over:
            if 1 <= k <= len(cands):
                i = cands[k - 1]
                Popp[i] = abs(E[i])  # undo candidate
        elif k < len(cands):
            i = cands[k]
            P[i] = abs(E[i])  # further candidate
        return S + (1 if up else -1) * len(flipped)

    kernels = [[(oc * ic_n + ic) * k_n + t for t in range(k_n)] for oc in range(oc_n)
               for ic in range(ic_n)]
    resid = [_seq(E[g]) for g in kernels]
    if use_k:
        plans = [plan(g, S) for g, S in zip(kernels, resid)]  # orders taken on entry ...
        PU[:] = 0  # ... then all priorities dropped (§3.5)
        PD[:] = 0
        resid = [apply(pl, S) for pl, S in zip(plans, resid)]
        for g, r in zip(kernels, resid):  # the residual formula is the sum of the updated E
            assert abs(r - _seq(E[g])) < 1e-9
    if use_c:
        for oc in range(oc_n):
            row = [i for g in kernels[oc * ic_n:(oc + 1) * ic_n] for i in g]
            S = _seq(resid[oc * ic_n:(oc + 1) * ic_n])
            apply(plan(row, S), S)
    return np.clip(R, qmin, qmax).reshape(x.shape).astype(np.int64)


def spec7_round(x, qmin, qmax, use_k=True, use_c=True):
    """The spec's own §7 vectorised formulation, verbatim: S1 semantics (fake flips, and an
    S == 0 group registers its last-ordered element). Used only as an independent cross-check
    where those semantics cannot differ from the clean variant, and to pin down T13."""

    def flip_pass(R, E, Nu, Eu, Pu, Nd, Ed, Pd, zero_prio):
        G, L = R.shape
        S = E.sum(1); up = S < 0; a = np.abs(S); k = np.rint(a).astype(int); over = k >= a
        P = np.where(up[:, None], Pu, Pd)
        order = np.argsort(-P, axis=1, kind="stable")
        rank = np.empty_like(order)
        np.put_along_axis(rank, order, np.tile(np.arange(L), (G, 1)), 1)
        sel = rank < k[:, None]
        R = np.where(sel, np.where(up[:, None], Nu, Nd), R)
        E = np.where(sel, np.where(up[:, None], Eu, Ed), E)
        Pu, Pd = (np.zeros_like(Pu), np.zeros_like(Pd)) if zero_prio else (Pu.copy(), Pd.copy())
        g = np.arange(G)
        i = np.where(over, order[g, (k - 1) % L], order[g, np.minimum(k, L - 1)])
        v = np.abs(E[g, i]); to_up = np.where(over, ~up, up)
        Pu[g[to_up], i[to_up]] = v[to_up]; Pd[g[~to_up], i[~to_up]] = v[~to_up]
        return R, E, Pu, Pd

    OC, IC = x.shape[:2]; K = int(np.prod(x.shape[2:])) if x.ndim > 2 else 1
    xs = x.reshape(OC * IC, K).astype(np.float64)
    R = np.rint(xs); E = R - xs
    cu = (E < 0) & (xs < qmax); cd = (E > 0) & (xs > qmin)
    Nu, Eu, Pu = R + cu, np.where(cu, E + 1, 0.), np.where(cu, -E, 0.)
    Nd, Ed, Pd = R - cd, np.where(cd, E - 1, 0.), np.where(cd, E, 0.)
    if use_k and K > 1:
        R, E, Pu, Pd = flip_pass(R, E, Nu, Eu, Pu, Nd, Ed, Pd, zero_prio=True)
    if use_c:
        def rows(t):
            return t.reshape(OC, IC * K)
        R, *_ = flip_pass(*map(rows, (R, E, Nu, Eu, Pu, Nd, Ed, Pd)), zero_prio=False)
    return np.clip(R.reshape(x.shape), qmin, qmax)


# ----------------------------------------------------------------------------------------------
# §8 test vectors
# ----------------------------------------------------------------------------------------------


def rw(x, shape, method="squant", lo=-128, hi=127):
    return round_weights(np.array(x, dtype=np.float64).reshape(shape), lo, hi, method)


def flat(a):
    return np.asarray(a).reshape(-1).tolist()


def check_vector(x, shape, rtn, squant, k_only=None, lo=-128, hi=127):
    for m in ("rtn", "squant-e"):
        assert flat(rw(x, shape, m, lo, hi)) == rtn
    assert flat(rw(x, shape, "squant", lo, hi)) == squant
    assert flat(ref_round(np.reshape(x, shape), lo, hi, "squant")) == squant
    if k_only is not None:
        assert flat(rw(x, shape, "squant-k", lo, hi)) == k_only


def test_T1_single_kernel_up_flip():
    x = [0.2, 0.4, 0.3, 0.35]
    check_vector(x, (1, 1, 2, 2), [0, 0, 0, 0], [0, 1, 0, 0], k_only=[0, 1, 0, 0])


def test_T2_per_tensor_symmetric_int8_via_scale():
    w = np.array([1.27, 0.031, 0.046, -0.503]).reshape(1, 1, 2, 2)
    s = weight_scale(w, 8, "per-tensor")
    assert s.shape == () and s.dtype == np.float32
    assert float(s) == pytest.approx(0.01, rel=1e-6)
    qw = quantize_weight(w, 8, "per-tensor", "squant")
    assert flat(qw.q) == [127, 3, 4, -50]
    assert flat(quantize_weight(w, 8, "per-tensor", "rtn").q) == [127, 3, 5, -50]
    np.testing.assert_allclose(flat(qw.dequantize()), [1.27, 0.03, 0.04, -0.50], atol=1e-6)


def test_T3_c_undoes_a_k_flip():
    x = [0.3, 0.4, 1.3, 2.45]
    check_vector(x, (1, 2, 1, 2), [0, 0, 1, 2], [0, 0, 1, 3], k_only=[0, 1, 1, 3])


def test_T4_c_flips_forward():
    x = [0.1, 0.3, 1.15, 2.25]
    check_vector(x, (1, 2, 1, 2), [0, 0, 1, 2], [0, 1, 1, 2], k_only=[0, 0, 1, 2])


def test_T5_linear_c_only():
    x = [0.2, 0.4, 0.3, 0.35, 0.6, 0.7, -0.45, 0.1]
    check_vector(x, (2, 4), [0, 0, 0, 0, 1, 1, 0, 0], [0, 1, 0, 0, 1, 1, -1, 0])
    assert flat(rw(x, (2, 4), "squant-c")) == [0, 1, 0, 0, 1, 1, -1, 0]
    assert flat(rw(x, (2, 4), "squant-k")) == [0, 0, 0, 0, 1, 1, 0, 0]  # K = 1: no K stage


def test_T6_bound_excluded_4bit():
    check_vector([7.45, 6.6, 2.4, 1.35], (1, 1, 2, 2), [7, 7, 2, 1], [7, 7, 3, 1], lo=-8, hi=7)


def test_T7_half_to_even_ties_give_zero_sum():
    check_vector([0.5, 1.5, 2.5, -0.5], (1, 1, 2, 2), [0, 2, 2, 0], [0, 2, 2, 0])


def test_T8_zeros_are_a_no_op():
    check_vector([0, 0, 0, 0], (1, 1, 2, 2), [0, 0, 0, 0], [0, 0, 0, 0])


def test_T9_depthwise():
    x = [0.2, 0.4, 0.3, 0.35, -1.3, -2.45, 0.05, 0.6]
    check_vector(x, (2, 1, 2, 2), [0, 0, 0, 0, -1, -2, 0, 1], [0, 1, 0, 0, -1, -3, 0, 1],
                 k_only=[0, 1, 0, 0, -1, -3, 0, 1])


def test_T10_up_flip():
    check_vector([2.6, -1.7, 0.45, 3.2], (1, 1, 2, 2), [3, -2, 0, 3], [3, -2, 1, 3])


def test_T11_s1_asymmetric_per_channel_4bit():
    w = np.array([0.1, -0.2, 0.35, 0.05])
    mult = 15 / max(w.max() - w.min(), 1e-8)
    zp = np.rint(mult * w.min()) + 8
    assert zp == 3
    x = mult * w - zp
    q = rw(x, (1, 1, 2, 2), "squant", -8, 7)
    assert flat(q) == [0, -8, 6, -2]
    assert flat(rw(x, (1, 1, 2, 2), "rtn", -8, 7)) == [0, -8, 7, -2]
    np.testing.assert_allclose((q.reshape(-1) + zp) / mult, [0.11, -0.18333, 0.33, 0.036667],
                               atol=1e-5)


def test_T12_bn_fold_then_per_tensor_int8():
    w = np.array([[0.5, -0.26, 0.125, 0.31], [0.02, 0.05, -0.0725, 0.012]]).reshape(2, 1, 2, 2)
    w_f, b_f = fold_batchnorm(w, None, gamma=np.array([1.0, 2.0]), beta=np.array([0.1, -0.2]),
                              mean=np.array([0.05, 0.0]), var=np.array([0.25, 1.0]), eps=0.0)
    np.testing.assert_allclose(w_f.reshape(2, 4), [[1, -.52, .25, .62], [.04, .1, -.145, .024]],
                               atol=1e-12)
    np.testing.assert_allclose(b_f, [0.0, -0.2], atol=1e-12)
    assert float(weight_scale(w_f)) == pytest.approx(1 / 127, rel=1e-6)
    assert flat(quantize_weight(w_f, method="rtn").q) == [127, -66, 32, 79, 5, 13, -18, 3]
    assert flat(quantize_weight(w_f, method="squant").q) == [127, -66, 32, 78, 5, 13, -19, 3]


def test_T13_clean_variant_differs_from_s1_fake_flip():
    """S1 gives [7,2,3 | -8,6,-8]; this implementation is the *clean* variant.

    Kernel 1 needs one DOWN flip but both positive-error elements are <= qmin. S1 "fake-flips"
    one (erasing its error, which then drops the C sum below 0.5); the clean variant never
    touches priority-0 entries, so kernel 1's error stays in the row sum and C lowers idx0.
    """
    x = [6.58, 1.85, 3.26, -8.42, 6.24, -8.40]
    check_vector(x, (1, 2, 1, 3), [7, 2, 3, -8, 6, -8], [6, 2, 3, -8, 6, -8], lo=-8, hi=7)
    assert flat(spec7_round(np.reshape(x, (1, 2, 1, 3)), -8, 7)) == [7, 2, 3, -8, 6, -8]


def test_group_sums_are_float64():
    """Exact sum -(0.5 + 2^-30): float64 gives k = 1 (flip idx0, stable among the 0.25 tie);
    a float32 accumulation would lose 2^-30, land on -0.5 and round k to 0 (half-even)."""
    x = np.array([0.25, 0.25, 2.0**-30, 0.0], dtype=np.float32).reshape(1, 1, 2, 2)
    for method in ("squant", "squant-k"):
        assert flat(round_weights(x, -128, 127, method)) == [1, 0, 0, 0]
    assert flat(round_weights(x.reshape(1, 4), -128, 127, "squant")) == [1, 0, 0, 0]
    assert flat(ref_round(x, -128, 127, "squant")) == [1, 0, 0, 0]


def test_clean_variant_c_stage_never_moves_unregistered_elements():
    """Each kernel has residual +0.4 (k = 0, "under"), but its only positive error sits below
    qmin, so nothing is registered. The row needs one DOWN flip and has no candidate: the clean
    variant leaves RTN alone instead of moving some unregistered element."""
    x = np.array([6.0, 6.0, -8.4, 6.0, 6.0, -8.4]).reshape(1, 2, 1, 3)
    for method in ("squant", "squant-k"):
        assert flat(round_weights(x, -8, 7, method)) == [6, 6, -8, 6, 6, -8]
    assert flat(ref_round(x, -8, 7, "squant")) == [6, 6, -8, 6, 6, -8]


# ----------------------------------------------------------------------------------------------
# Fast == reference on random layers
# ----------------------------------------------------------------------------------------------

RANGES = [(-128, 127), (-127, 127), (-8, 7), (-7, 7), (-3, 3), (-1, 1)]


@st.composite
def layers(draw, kinds=("conv", "depthwise", "pointwise", "dense", "big_kernel")):
    kind = draw(st.sampled_from(kinds))
    oc = draw(st.integers(1, 6))
    if kind == "conv":
        shape = (oc, draw(st.integers(1, 5)), draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    elif kind == "depthwise":
        shape = (oc, 1, 3, 3)
    elif kind == "pointwise":
        shape = (oc, draw(st.integers(1, 12)), 1, 1)
    elif kind == "dense":
        shape = (oc, draw(st.integers(1, 16)))
    else:
        kh = draw(st.sampled_from([5, 7]))
        shape = (oc, draw(st.integers(1, 2)), kh, kh)
    qmin, qmax = draw(st.sampled_from(RANGES))
    mode = draw(st.sampled_from(["normal", "quarter", "half", "boundary", "sparse"]))
    seed = draw(st.integers(0, 2**32 - 1))
    dtype = draw(st.sampled_from([np.float64, np.float32]))
    rng = np.random.default_rng(seed)
    n = math.prod(shape)
    if mode == "normal":
        x = rng.standard_normal(n) * rng.choice([0.3, 2.0, qmax / 3])
    elif mode == "quarter":  # ties in priority and in the group sums
        x = rng.integers(-4 * qmax, 4 * qmax + 1, n) / 4
    elif mode == "half":  # half-integers: half-to-even RTN
        x = rng.integers(-2 * qmax, 2 * qmax + 1, n) / 2
    elif mode == "boundary":  # at, near and beyond the bounds: few genuine candidates
        x = rng.uniform(qmin - 1.2, qmax + 1.2, n)
        at = rng.random(n) < rng.choice([0.3, 0.8])
        specials = [qmin - 0.4, qmin, qmin + 0.3, qmax, qmax + 0.4, qmax - 0.45, 0.0, 1.0]
        x[at] = rng.choice(specials, at.sum())
    else:  # exact integers / zero kernels: S == 0 groups
        x = np.where(rng.random(n) < 0.6, rng.integers(-2, 3, n), rng.standard_normal(n))
    return np.asarray(x, dtype=dtype).reshape(shape), qmin, qmax


@settings(max_examples=500, **SETTINGS)
@given(layers())
def test_fast_matches_reference_all_methods(case):
    x, qmin, qmax = case
    for method in METHODS:
        fast = round_weights(x, qmin, qmax, method)
        ref = ref_round(x, qmin, qmax, method)
        assert fast.dtype == np.int8
        np.testing.assert_array_equal(fast, ref, err_msg=f"{method} {x.shape} {qmin},{qmax}")


@settings(max_examples=100, **SETTINGS)
@given(layers(kinds=("conv", "depthwise", "big_kernel", "dense")), st.sampled_from([1, 7, 40]))
def test_fast_matches_reference_across_chunks(case, chunk):
    """Force many tiny row chunks so chunk boundaries are exercised on small layers."""
    x, qmin, qmax = case
    old = iq._CHUNK
    iq._CHUNK = chunk
    try:
        for method in ("squant", "squant-k", "squant-c"):
            np.testing.assert_array_equal(round_weights(x, qmin, qmax, method),
                                          ref_round(x, qmin, qmax, method))
    finally:
        iq._CHUNK = old


@settings(max_examples=200, **SETTINGS)
@given(st.sampled_from([(4, 5, 3, 3), (3, 1, 3, 3), (6, 8, 1, 1), (5, 9), (2, 3, 7, 7),
                        (3, 4, 2, 2)]),
       st.integers(0, 2**32 - 1), st.sampled_from([127, 7]))
def test_matches_spec_section7_where_semantics_coincide(shape, seed, qmax):
    """Continuous values inside (-qmax+1, qmax-1): no exact-zero sums and no bound exclusions,
    so S1's fake flips and S == 0 registration cannot occur and §7's code must agree."""
    x = np.random.default_rng(seed).uniform(-(qmax - 1), qmax - 1, shape)
    for method, k, c in (("squant", True, True), ("squant-k", True, False),
                         ("squant-c", False, True)):
        np.testing.assert_array_equal(round_weights(x, -qmax - 1, qmax, method),
                                      spec7_round(x, -qmax - 1, qmax, k, c), err_msg=method)


def test_fast_matches_reference_sweep():
    """A seeded sweep of 1,000 more cases in the shapes of real layers' corners."""
    rng = np.random.default_rng(1234)
    shapes = [(3, 4, 3, 3), (2, 1, 3, 3), (4, 6, 1, 1), (5, 7), (2, 2, 2, 3), (1, 3, 7, 7)]
    for t in range(1000):
        shape = shapes[t % len(shapes)]
        qmin, qmax = RANGES[(t // 7) % len(RANGES)]
        n = math.prod(shape)
        if t % 3 == 0:
            x = rng.integers(-4 * qmax - 4, 4 * qmax + 5, n) / 4
        elif t % 3 == 1:
            x = rng.standard_normal(n) * qmax / 3
        else:
            x = rng.uniform(qmin - 1, qmax + 1, n)
        x = x.reshape(shape)
        method = ("squant", "squant-c", "squant-k")[(t // 3) % 3]
        np.testing.assert_array_equal(round_weights(x, qmin, qmax, method),
                                      ref_round(x, qmin, qmax, method), err_msg=f"case {t}")


def test_fast_matches_reference_on_real_sized_layers():
    rng = np.random.default_rng(7)
    for shape in [(32, 32, 3, 3), (64, 1, 3, 3), (48, 96, 1, 1), (100, 64), (8, 3, 7, 7)]:
        w = (rng.standard_normal(shape) * rng.uniform(0.5, 2.0, (shape[0],) + (1,) *
             (len(shape) - 1))).astype(np.float32)
        x = iq._to_grid(w, weight_scale(w))
        np.testing.assert_array_equal(round_weights(x, -127, 127, "squant"),
                                      ref_round(x, -127, 127, "squant"))


# ----------------------------------------------------------------------------------------------
# Properties
# ----------------------------------------------------------------------------------------------


def kernel_sums(x, q):
    e = q.astype(np.float64) - x.astype(np.float64)
    return e.reshape(x.shape[0], x.shape[1], -1).sum(axis=2), e.reshape(x.shape[0], -1).sum(1)


@st.composite
def inner_layers(draw):
    """Layers with no element within 1 of the bounds: every group has enough candidates."""
    shape = draw(st.sampled_from([(4, 5, 3, 3), (3, 1, 3, 3), (6, 8, 1, 1), (5, 9), (2, 3, 5, 5),
                                  (3, 4, 2, 2)]))
    qmax = draw(st.sampled_from([127, 7, 3]))
    seed = draw(st.integers(0, 2**32 - 1))
    quarter = draw(st.booleans())
    rng = np.random.default_rng(seed)
    n = math.prod(shape)
    if quarter:
        x = rng.integers(-4 * (qmax - 1), 4 * (qmax - 1) + 1, n) / 4
    else:
        x = rng.uniform(-(qmax - 1), qmax - 1, n)
    return x.reshape(shape).astype(draw(st.sampled_from([np.float32, np.float64]))), qmax


@settings(max_examples=150, **SETTINGS)
@given(inner_layers())
def test_case_bounds(case):
    x, qmax = case
    lo, hi = -qmax - 1, qmax
    fl, ce = np.floor(x.astype(np.float64)), np.ceil(x.astype(np.float64))
    for method in METHODS:
        q = round_weights(x, lo, hi, method).astype(np.float64)
        assert np.all((q == fl) | (q == ce)), method
    k_stage = x.ndim == 4 and x.shape[2] * x.shape[3] > 1
    qk = round_weights(x, lo, hi, "squant-k")
    ks, _ = kernel_sums(x, qk)
    if k_stage:
        assert np.all(np.abs(ks) <= 0.5 + 1e-9)
    q = round_weights(x, lo, hi, "squant")
    ks, cs = kernel_sums(x, q)
    assert np.all(np.abs(cs) <= 0.5 + 1e-9)
    assert np.all(np.abs(ks) <= 1 + 1e-9)  # K = 1: a "kernel" is one flipped element
    qc = round_weights(x, lo, hi, "squant-c")
    assert np.all(np.abs(kernel_sums(x, qc)[1]) <= 0.5 + 1e-9)


@settings(max_examples=150, **SETTINGS)
@given(layers(kinds=("depthwise", "pointwise", "dense")))
def test_depthwise_c_is_noop_and_k1_squant_is_c(case):
    x, qmin, qmax = case
    q = round_weights(x, qmin, qmax, "squant")
    if x.ndim == 4 and x.shape[1] == 1:
        np.testing.assert_array_equal(q, round_weights(x, qmin, qmax, "squant-k"))
    else:
        np.testing.assert_array_equal(q, round_weights(x, qmin, qmax, "squant-c"))
        np.testing.assert_array_equal(round_weights(x, qmin, qmax, "squant-k"),
                                      round_weights(x, qmin, qmax, "rtn"))


@settings(max_examples=150, **SETTINGS)
@given(st.sampled_from([(8, 4, 3, 3), (16, 1, 3, 3), (12, 10), (6, 5, 1, 1)]),
       st.integers(0, 2**32 - 1), st.sampled_from(["per-tensor", "per-channel"]),
       st.floats(0.01, 50.0), st.sampled_from([np.float32, np.float64]))
def test_amax_scaled_stays_in_narrow_range(shape, seed, gran, outlier, dtype):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(shape) * 0.05
    w.reshape(-1)[rng.integers(w.size)] *= outlier
    w = w.astype(dtype)
    s = weight_scale(w, 8, gran)
    x = iq._to_grid(w, s)
    assert np.abs(x).max() <= 127
    for method in ("squant", "squant-k", "squant-c"):
        q = round_weights(x, -128, 127, method)  # even with -128 allowed
        assert q.min() >= -127 and q.max() <= 127
        qw = quantize_weight(w, 8, gran, method)
        assert qw.q.dtype == np.int8 and qw.q.min() >= -127 and qw.q.max() <= 127


@settings(max_examples=100, **SETTINGS)
@given(layers())
def test_float32_input_equals_float64_of_same_values(case):
    """float32 is processed natively; it must give what its exact float64 values give."""
    x, qmin, qmax = case
    x32 = x.astype(np.float32)
    for method in ("squant", "squant-c"):
        np.testing.assert_array_equal(round_weights(x32, qmin, qmax, method),
                                      round_weights(x32.astype(np.float64), qmin, qmax, method))


def test_deterministic_bytes():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((64, 32, 3, 3)).astype(np.float32)
    a = quantize_weight(w, method="squant")
    b = quantize_weight(w.copy(), method="squant")
    assert a.q.tobytes() == b.q.tobytes() and a.scale.tobytes() == b.scale.tobytes()
    x = iq._to_grid(w, a.scale)
    assert round_weights(x, -127, 127).tobytes() == a.q.tobytes()


def test_sequential_sum_helpers_keep_left_to_right_order():
    """The float64 sum order is part of the semantics; pairwise summation would differ here."""
    rng = np.random.default_rng(11)
    a = rng.standard_normal((7, 300)) * 10.0 ** rng.integers(-9, 10, (7, 300))
    seq = np.array([_seq(row) for row in a])
    assert not np.array_equal(seq, a.sum(axis=1))  # the data is order-sensitive
    np.testing.assert_array_equal(iq._seq_sum_last(a), seq)
    np.testing.assert_array_equal(iq._seq_sum_rows(np.ascontiguousarray(a.T)), seq)
    a32 = a.astype(np.float32)
    np.testing.assert_array_equal(iq._seq_sum_rows(np.ascontiguousarray(a32.T)),
                                  [_seq(row) for row in a32])


@settings(max_examples=60, **SETTINGS)
@given(st.sampled_from([(40, 6, 3, 3), (9, 2, 5, 5), (30, 1, 3, 3), (50, 20), (24, 7, 1, 1)]),
       st.integers(0, 2**32 - 1), st.sampled_from(["per-tensor", "per-channel"]),
       st.sampled_from([np.float32, np.float64]), st.sampled_from([8, 4, 2]),
       st.sampled_from([50, 1 << 18]), st.sampled_from(["1", "3"]))
def test_quantize_weight_equals_round_weights_of_grid(shape, seed, gran, dtype, bits, chunk,
                                                      threads):
    """quantize_weight divides chunk by chunk (and in threads); it must equal rounding the
    whole grid x = w / scale at once, for every method."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal(shape) * rng.uniform(0.1, 3, (shape[0],) + (1,) * (len(shape) - 1)))
    w = w.astype(dtype)
    old, old_env = iq._CHUNK, os.environ.get("ISQUANT_THREADS")
    iq._CHUNK = chunk
    os.environ["ISQUANT_THREADS"] = threads
    try:
        qmax = 2 ** (bits - 1) - 1
        for method in METHODS:
            qw = quantize_weight(w, bits, gran, method)
            x = iq._to_grid(w, qw.scale)
            np.testing.assert_array_equal(qw.q, round_weights(x, -qmax, qmax, method))
    finally:
        iq._CHUNK = old
        if old_env is None:
            os.environ.pop("ISQUANT_THREADS", None)
        else:
            os.environ["ISQUANT_THREADS"] = old_env


# ----------------------------------------------------------------------------------------------
# Folding, scales, quantize_weight, metrics, errors
# ----------------------------------------------------------------------------------------------


def test_fold_batchnorm_matches_bn_after_layer():
    rng = np.random.default_rng(0)
    oc, ic = 6, 5
    w = rng.standard_normal((oc, ic, 3, 3)).astype(np.float32)
    b = rng.standard_normal(oc)
    gamma, beta = rng.uniform(0.5, 2, oc), rng.standard_normal(oc)
    mean, var = rng.standard_normal(oc), rng.uniform(0.1, 3, oc)
    inp = rng.standard_normal((10, ic * 9))
    y = inp @ w.reshape(oc, -1).astype(np.float64).T + b
    y_bn = (y - mean) / np.sqrt(var + 1e-3) * gamma + beta
    for bias in (b, None):
        w_f, b_f = fold_batchnorm(w, bias, gamma, beta, mean, var, eps=1e-3)
        assert w_f.dtype == np.float32 and w_f.shape == w.shape and b_f.shape == (oc,)
        y_f = inp @ w_f.reshape(oc, -1).astype(np.float64).T + b_f
        want = y_bn if bias is not None else y_bn - b / np.sqrt(var + 1e-3) * gamma
        np.testing.assert_allclose(y_f, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError):
        fold_batchnorm(w, None, gamma[:3], beta, mean, var)
    with pytest.raises(ValueError):
        fold_batchnorm(w, None, gamma, beta, mean, -np.ones(oc), eps=0.0)


def test_weight_scale_edge_cases():
    z = np.zeros((4, 3, 3, 3), np.float32)
    assert float(weight_scale(z)) == 1.0
    qw = quantize_weight(z)
    assert not qw.q.any() and float(qw.scale) == 1.0
    w = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    w[2] = 0
    s = weight_scale(w, 8, "per-channel")
    assert s.shape == (4,) and s.dtype == np.float32 and s[2] == 1.0
    np.testing.assert_allclose(s[[0, 1, 3]], np.abs(w[[0, 1, 3]]).reshape(3, -1).max(1) / 127,
                               rtol=1e-6)
    qw = quantize_weight(w, 8, "per-channel")
    assert not qw.q[2].any() and np.abs(qw.q).reshape(4, -1).max(1)[[0, 1, 3]].tolist() == [127] * 3
    assert float(weight_scale(w, 4)) == pytest.approx(np.abs(w).max() / 7, rel=1e-6)
    assert float(weight_scale(w, 2)) == pytest.approx(np.abs(w).max(), rel=1e-6)
    for bad in (1, 9, 0, 16, 8.0, True, "8"):
        with pytest.raises(ValueError, match="bits"):
            weight_scale(w, bad)
        with pytest.raises(ValueError, match="bits"):
            quantize_weight(w, bad)
    with pytest.raises(ValueError, match="granularity"):
        weight_scale(w, 8, "per-row")
    w[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError):
        weight_scale(w)


def test_round_weights_validation():
    x = np.zeros((2, 3))
    with pytest.raises(ValueError, match="method"):
        round_weights(x, -127, 127, "squant-x")
    with pytest.raises(ValueError):
        round_weights(np.zeros(3), -127, 127)
    with pytest.raises(ValueError):
        round_weights(x, 5, 5)
    with pytest.raises(ValueError):
        round_weights(np.array([[np.inf, 0.0]]), -127, 127)
    assert round_weights(x, -1000, 1000).dtype == np.int16


def test_quantize_weight_and_metrics():
    rng = np.random.default_rng(5)
    w = rng.standard_normal((16, 8, 3, 3)).astype(np.float32)
    for gran in ("per-tensor", "per-channel"):
        qw = quantize_weight(w, 8, gran, "squant")
        assert isinstance(qw, QuantizedWeight) and qw.bits == 8 and qw.method == "squant"
        assert qw.q.dtype == np.int8 and qw.scale.dtype == np.float32
        assert qw.scale.shape == (() if gran == "per-tensor" else (16,))
        m = weight_metrics(w, qw)
        json.dumps(m)
        assert m["granularity"] == gran and m["numel"] == w.size
        assert 0 < m["flipped"] < 0.5
        assert m["kernel_ase_max"] <= 1 + 1e-6 and m["channel_ase_max"] <= 0.5 + 1e-6
        assert m["channel_ase_mean"] < m["channel_ase_mean_rtn"]
        assert m["kernel_ase_mean"] < m["kernel_ase_mean_rtn"]
        assert m["max_err_steps"] < 1 and m["max_err_steps_rtn"] <= 0.5 + 1e-6
        assert m["mse"] >= m["mse_rtn"] > 0
        deq = qw.dequantize()
        assert m["mse"] == pytest.approx(float(np.mean((deq.astype(np.float64) - w) ** 2)),
                                         rel=1e-5)
        r = weight_metrics(w, quantize_weight(w, 8, gran, "rtn"))
        assert r["flipped"] == 0 and r["mse"] == r["mse_rtn"]
    d = weight_metrics(w[:, :, 0, 0], quantize_weight(w[:, :, 0, 0]))
    assert d["kernel_ase_max"] == d["max_err_steps"] < 1  # K = 1: a kernel is one weight
    assert d["channel_ase_max"] <= 0.5 + 1e-6
    with pytest.raises(ValueError):
        weight_metrics(w[:2], qw)
