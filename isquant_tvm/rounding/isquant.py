"""SQuant / ISQuant data-free weight rounding, in numpy only.

Implements /work/shared/docs/squant-spec.md (§3 algorithm, §3.10 edge semantics, §5 ISQuant
grid), written from that specification. SQuant's official code is GPL-3.0 and was not used.

Pipeline for one conv / dense weight (ISQuant, §5)::

    w_f, b_f = fold_batchnorm(w, b, gamma, beta, mean, var, eps)   # once per conv+BN pair
    qw = quantize_weight(w_f, bits=8, granularity="per-tensor", method="squant")
    w_hat = qw.dequantize()                                         # == qw.q * qw.scale

Rounding semantics (fixed here, tested against a loop-level reference in tests/test_isquant.py):

* RTN is round-half-to-even (``np.rint``), as in SQuant's ``torch.round``.
* A *kernel* is one ``KH×KW`` slice ``w[oc, ic]``; a *row* is one output channel ``w[oc]``.
  Dense weights and 1×1 convs have K = 1 and therefore no K stage.
* Flips are assignments from static candidate tables built from RTN, never increments: an
  element ends at RTN, RTN+1 (only if it was rounded down) or RTN-1 (only if it was rounded
  up), i.e. at floor(x) or ceil(x). The C stage can only undo a K flip or make an unflipped
  element's single flip, so nothing moves two steps. Elements with ``x >= qmax`` are never
  raised, elements with ``x <= qmin`` never lowered. The result is finally clipped to
  ``[qmin, qmax]``.
* Priority order is descending |error|; ties go to the lower flat index (a stable order).
* Group sums are float64, accumulated sequentially in a fixed order: a kernel sum left to right
  over its K elements; a row sum left to right over its kernels' residuals, where a kernel's
  residual after the K stage is its sum plus the signed number of flips it made (each flip moves
  an element's error by exactly ±1). The order is fixed so that every implementation of these
  semantics gives the same bits even when a sum lands next to a half-integer.
* **Deviation from S1's Python fallback, per the spec's recommendation (§3.10):** a group whose
  error sum is exactly 0 is a no-op: nothing is flipped and no candidate is registered.
* **"Clean" variant (§3.10, test vector T13):** entries of priority 0 are never touched. If a
  group needs more flips than it has genuine candidates, only the genuine ones flip, and the
  candidate that would be registered is registered only if it is genuine. S1 instead performs
  "fake flips" that erase an element's error without moving it (K stage) or move an unregistered
  element (C stage). The two agree except when elements sit at the range bounds with too few
  other candidates, which amax-scaled symmetric grids essentially never produce.

Speed: no Python loop runs over kernels or channels. Layers are processed in chunks of whole
output channels, optionally spread over threads (``ISQUANT_THREADS=n``; results do not depend
on it). ResNet-18's 11.7 M weights take about 0.1 s on one core of an idle 2-core x86
(scripts/bench_isquant.py).
"""
from __future__ import annotations

import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "METHODS",
    "GRANULARITIES",
    "QuantizedWeight",
    "fold_batchnorm",
    "weight_scale",
    "round_weights",
    "quantize_weight",
    "weight_metrics",
]

#: Rounding methods: "rtn" and "squant-e" are round-to-nearest, "squant-k" runs only the kernel
#: stage, "squant-c" only the output-channel stage (all candidates eligible), "squant" both.
METHODS = ("rtn", "squant-e", "squant-k", "squant-c", "squant")
GRANULARITIES = ("per-tensor", "per-channel")

# Elements per chunk of whole output channels in the SQuant paths. Each chunk costs a few
# hundred numpy calls, so smaller chunks pay Python overhead; larger ones fall out of the
# per-core L2 (2 MiB here). 2^18 measured fastest on a ResNet-18 (2^17: +20 %, 2^19: same).
_CHUNK = 1 << 18

_F32_HALF_BITS = int(np.float32(0.5).view(np.int32))
_F32_EXACT_UNDO = np.float32(2.0**-30)


# --------------------------------------------------------------------------------------------
# BatchNorm folding and scales
# --------------------------------------------------------------------------------------------


def fold_batchnorm(
    w: np.ndarray,
    b: np.ndarray | None,
    gamma: np.ndarray,
    beta: np.ndarray,
    mean: np.ndarray,
    var: np.ndarray,
    eps: float = 1e-5,
) -> tuple[np.ndarray, np.ndarray]:
    """Fold an inference-mode BatchNorm that follows a conv / dense layer into its weight and bias.

    With ``g = gamma / sqrt(var + eps)`` (per output channel) this returns
    ``w_f = w * g[oc]`` and ``b_f = beta + (b - mean) * g``; ``b=None`` means a zero bias.
    ``w`` has the output channel first (``OC×IC×KH×KW`` or ``OC×IC``); the BN vectors have shape
    ``(OC,)``. Arithmetic is float64; the results have ``w``'s floating dtype (float64 for
    non-float input).
    """
    w = np.asarray(w)
    out_dtype = w.dtype if np.issubdtype(w.dtype, np.floating) else np.dtype(np.float64)
    if w.ndim < 1:
        raise ValueError("fold_batchnorm: w must have the output channel as its first axis")
    oc = w.shape[0]
    vecs = {}
    for name, v in (("gamma", gamma), ("beta", beta), ("mean", mean), ("var", var)):
        a = np.asarray(v, dtype=np.float64)
        if a.shape != (oc,):
            raise ValueError(f"fold_batchnorm: {name} has shape {a.shape}, expected ({oc},)")
        vecs[name] = a
    bias = np.zeros(oc) if b is None else np.asarray(b, dtype=np.float64)
    if bias.shape != (oc,):
        raise ValueError(f"fold_batchnorm: b has shape {bias.shape}, expected ({oc},)")
    denom = vecs["var"] + float(eps)
    if not np.all(denom > 0):
        raise ValueError("fold_batchnorm: var + eps must be positive for every channel")
    g = vecs["gamma"] / np.sqrt(denom)
    w_f = w.astype(np.float64) * g.reshape((oc,) + (1,) * (w.ndim - 1))
    b_f = vecs["beta"] + (bias - vecs["mean"]) * g
    return w_f.astype(out_dtype), b_f.astype(out_dtype)


def _check_bits(bits: int) -> int:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 2 <= bits <= 8:
        raise ValueError(
            f"bits must be an integer from 2 to 8 (weights are stored as int8 on a symmetric "
            f"narrow range [-(2^(bits-1)-1), 2^(bits-1)-1]); got {bits!r}"
        )
    return int(bits)


def _grid_dtype(w: np.ndarray) -> np.dtype:
    # float32 weights stay float32: rint and the error R - x are exact in float32 (see
    # round_weights), and the halved memory traffic is most of the speed.
    return np.dtype(np.float32) if w.dtype in (np.float16, np.float32) else np.dtype(np.float64)


def weight_scale(
    w: np.ndarray, bits: int = 8, granularity: str = "per-tensor"
) -> np.ndarray:
    """Symmetric (zero-point 0) scale(s) for ``w`` on the narrow range ``[-qmax, qmax]``.

    ``qmax = 2^(bits-1) - 1`` (127 at 8 bits) and ``scale = amax / qmax`` with ``amax`` the
    largest ``|w|`` over the whole tensor ("per-tensor", returns shape ``()``) or over each
    output channel ``w[oc]`` ("per-channel", returns shape ``(OC,)``). The result is float32,
    raised by an ulp where rounding to float32 made it smaller than ``amax / qmax``, so that
    ``amax / scale <= qmax`` holds in the arithmetic ``quantize_weight`` uses. A scale of 0
    (``amax == 0``, or an ``amax`` so small the float32 scale underflows) becomes 1, so an
    all-zero tensor or channel quantises to all zeros.

    Raises ValueError for bits outside 2..8, an unknown granularity, non-finite weights or
    weights too large for a float32 scale.
    """
    qmax = (1 << (_check_bits(bits) - 1)) - 1
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}; got {granularity!r}")
    w = np.asarray(w)
    if w.size == 0:
        raise ValueError("weight_scale: empty weight")
    if not np.issubdtype(w.dtype, np.floating):
        w = w.astype(np.float64)  # also keeps -min() of a signed integer type from overflowing
    dt = _grid_dtype(w)
    if granularity == "per-tensor":
        amax = np.asarray(max(w.max(), -w.min()), dtype=dt)
    else:
        if w.ndim < 2:
            raise ValueError("per-channel scales need the output channel as the first axis")
        w2 = w.reshape(w.shape[0], -1)
        amax = np.maximum(w2.max(axis=1), -w2.min(axis=1)).astype(dt)
    if not np.all(np.isfinite(amax)):
        raise ValueError("weight_scale: weights contain NaN or infinity")
    with np.errstate(over="ignore"):
        s = (amax.astype(np.float64) / qmax).astype(np.float32)
    if not np.all(np.isfinite(s)):
        raise ValueError("weight_scale: weights too large for a float32 scale")
    s = np.where(s > 0, s, np.float32(1.0)).astype(np.float32)
    # float32(amax / qmax) may round down, which would put the largest weight a hair above qmax
    # on the grid. Once s >= amax / qmax exactly, the correctly rounded amax / s is <= qmax, so
    # no element can leave the narrow range; that takes at most two ulps.
    for _ in range(4):
        bad = (amax / s.astype(dt)) > qmax
        if not np.any(bad):
            break
        s = np.where(bad, np.nextafter(s, np.float32(np.inf)), s).astype(np.float32)
    return np.asarray(s, dtype=np.float32)


def _to_grid(w: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``w / scale`` on the integer grid, in float32 for float32 weights, else float64."""
    w = np.asarray(w)
    dt = _grid_dtype(w)
    s = np.asarray(scale, dtype=np.float32).astype(dt)
    if s.ndim == 1:
        s = s.reshape((-1,) + (1,) * (w.ndim - 1))
    return np.divide(w.astype(dt, copy=False), s, dtype=dt)


# --------------------------------------------------------------------------------------------
# Rounding
# --------------------------------------------------------------------------------------------


def _out_dtype(qmin: int, qmax: int) -> np.dtype:
    for t in (np.int8, np.int16, np.int32):
        info = np.iinfo(t)
        if info.min <= qmin and qmax <= info.max:
            return np.dtype(t)
    return np.dtype(np.int64)


def round_weights(
    x: np.ndarray, qmin: int, qmax: int, method: str = "squant"
) -> np.ndarray:
    """Round real values ``x`` already on the integer grid to integers in ``[qmin, qmax]``.

    ``x`` is a conv weight ``OC×IC×KH×KW`` (grouped / depthwise convs are just
    ``OC×(IC/g)×KH×KW``) or a dense weight ``OC×IC`` (K = 1: no K stage); more trailing kernel
    axes are allowed and flattened into the kernel. ``method``:

    * ``"rtn"`` / ``"squant-e"``: round half to even.
    * ``"squant-k"``: SQuant kernel stage only (equals RTN when K = 1).
    * ``"squant-c"``: output-channel stage only, every RTN candidate eligible.
    * ``"squant"``: K stage, then C stage over the one candidate each kernel registered
      (for K = 1, the C stage over all candidates, i.e. equal to ``"squant-c"``).

    The module docstring states the exact semantics (half-to-even, stable ties, float64 sums in
    a fixed order, exact-zero sums are no-ops, the "clean" variant without fake flips, bound
    exclusion, final clip). Returns integers of ``x``'s shape, as int8 when ``[qmin, qmax]``
    fits, else the smallest wider signed type. Deterministic: equal input, equal bytes.

    float32 input is processed in float32 without changing any result: ``rint`` is exact and
    ``rint(x) - x`` is exact for every float32 ``x`` (Sterbenz-type argument: both operands are
    multiples of ``ulp(x)`` when ``|x| >= 0.5``, and the result is ``-x`` otherwise), and every
    later step that could round (sums, ``1 - p`` priorities) is done in float64.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}")
    if int(qmin) != qmin or int(qmax) != qmax or not qmin < qmax:
        raise ValueError(f"need integers qmin < qmax; got qmin={qmin!r}, qmax={qmax!r}")
    qmin, qmax = int(qmin), int(qmax)
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)
    x = np.ascontiguousarray(x, dtype=_grid_dtype(x))
    if x.ndim < 2 or x.size == 0:
        raise ValueError(f"x must be a non-empty OC×IC[×KH×KW] array; got shape {x.shape}")
    lo, hi = x.min(), x.max()
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError("round_weights: x contains NaN or infinity")
    # Bound handling costs a scan; skip it when no element can be excluded from a flip.
    return _round(x, None, qmin, qmax, method, edges=bool(hi > qmax or lo < qmin))


def _round(src: np.ndarray, scale: np.ndarray | None, qmin: int, qmax: int, method: str,
           edges: bool) -> np.ndarray:
    """``round_weights`` of ``x = src / scale`` (``x = src`` when ``scale`` is None).

    ``src`` is C-contiguous float32/float64 and finite; ``scale`` is None, a scalar or one
    value per output channel, of ``src``'s dtype. The division happens chunk by chunk, where
    the chunk is hot in cache, and is the same elementwise operation as ``_to_grid``'s.
    ``edges`` must be True if any ``x`` may lie outside ``[qmin, qmax]``.
    """
    out = np.empty(src.shape, dtype=_out_dtype(qmin, qmax))
    oc, ic = src.shape[0], src.shape[1]
    k = math.prod(src.shape[2:])
    use_k = method in ("squant-k", "squant") and k > 1
    use_c = method in ("squant-c", "squant")
    per_channel = scale is not None and np.ndim(scale) == 1
    if not (use_k or use_c):
        x = src if scale is None else src / (scale.reshape((oc,) + (1,) * (src.ndim - 1))
                                             if per_channel else scale)
        np.clip(np.rint(x), qmin, qmax, out=out, casting="unsafe")
        return out
    s3 = src.reshape(oc, ic, k)
    o3 = out.reshape(oc, ic, k)
    n_chunks = -(-src.size // _CHUNK)
    rows = -(-oc // n_chunks)  # balanced, so that no chunk is a small leftover

    def chunk(r0: int) -> None:
        sl = slice(r0, r0 + rows)
        sc = scale[sl] if per_channel else scale
        if use_k:
            _k_then_c(s3[sl], sc, qmin, qmax, use_c, edges, o3[sl])
        else:
            _c_only(s3[sl], sc, qmin, qmax, edges, o3[sl])

    _for_each(chunk, range(0, oc, rows))
    return out


def _for_each(fn, items: range) -> None:
    """Run ``fn`` over ``items``, spread over the worker threads when there are several.

    Chunks write disjoint rows of the output and share nothing else, so the result does not
    depend on scheduling. numpy drops the GIL inside its loops, which is where the time goes.
    """
    if len(items) < 2 or _threads() < 2:
        for i in items:
            fn(i)
        return
    for _ in _pool().map(fn, items):  # re-raises the first exception
        pass


def _threads() -> int:
    """Worker threads: ISQUANT_THREADS if set, else 1.

    Sequential is the default because on a loaded machine (the usual case on a shared 2-core
    box) two threads measured 5-20 % slower than one: GIL hand-offs and cache contention
    outweigh the second core. On an idle machine two threads are about 1.3x faster.
    """
    env = os.environ.get("ISQUANT_THREADS", "").strip()
    return max(1, int(env)) if env.isdigit() else 1


_POOL: tuple[int, int, ThreadPoolExecutor] | None = None
_POOL_LOCK = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    # Keyed by pid: a forked child inherits the executor object but none of its threads.
    global _POOL
    n, pid = _threads(), os.getpid()
    with _POOL_LOCK:
        if _POOL is None or _POOL[0] != pid or _POOL[1] != n:
            if _POOL is not None and _POOL[0] == pid:
                _POOL[2].shutdown(wait=False)
            _POOL = (pid, n, ThreadPoolExecutor(max_workers=n, thread_name_prefix="isquant"))
        return _POOL[2]


def _seq_sum_rows(a: np.ndarray) -> np.ndarray:
    """float64 sum over axis 0 of a (K, G) array, accumulated strictly in order 0, 1, ..., K-1."""
    s = a[0].astype(np.float64)
    for j in range(1, a.shape[0]):
        np.add(s, a[j], out=s)
    return s


def _seq_sum_last(a: np.ndarray) -> np.ndarray:
    """float64 sum over the last axis, accumulated strictly left to right (cumsum is sequential)."""
    if a.shape[-1] == 1:
        return a[..., 0].astype(np.float64)
    return np.cumsum(a, axis=-1, dtype=np.float64)[..., -1]


def _first_argmax0(p: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Index of the first row of the (K, M) array ``p`` that equals the column maximum ``m``.

    Counts the leading rows that do not reach the maximum: one comparison and two cheap
    byte-wide operations per row, where a masked copy per row costs ten times more. The
    first match wins, which is the stable (lower index) tie-break.
    """
    k = p.shape[0]
    eq = p[:-1] == m
    not_yet = ~eq[0]
    cnt = not_yet.astype(np.uint8 if k <= 255 else np.intp)
    for j in range(1, k - 1):
        np.greater(not_yet, eq[j], out=not_yet)  # not_yet & ~eq[j] for booleans
        np.add(cnt, not_yet, out=cnt, casting="unsafe")
    return cnt


def _topk_rows(p: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Flat indices into ``p`` of each row's ``min(k, #positive)`` largest positive entries.

    ``p`` is (M, L) with candidates > 0 and everything else <= 0; ``k`` is (M,) non-negative.
    Ties go to lower columns; entries <= 0 are never selected (the "clean" rule: no fake
    flips). The indices come out in no particular order.
    """
    m, length = p.shape
    kr = np.minimum(k, length)
    # The kr-th largest value of a row is its threshold (t <= 0: fewer positives than kr,
    # take them all; kr == 0: take nothing).
    t = np.sort(p, axis=1)[np.arange(m), length - np.maximum(kr, 1)]
    if p.dtype.kind == "i":
        tiny, never = 1, np.iinfo(p.dtype).max
    else:
        tiny, never = np.finfo(p.dtype).smallest_subnormal, np.inf
    thr = np.where(kr > 0, np.maximum(t, tiny), never).astype(p.dtype)
    flat = np.flatnonzero(p >= thr[:, None])
    # Rows whose threshold value is tied take too many; redo those in column order.
    tied = np.flatnonzero(np.bincount(flat // length, minlength=m) > kr)
    if tied.size:
        is_tied = np.zeros(m, dtype=bool)
        is_tied[tied] = True
        pt, tt = p[tied], t[tied, None]
        gt = pt > tt
        eq = pt == tt
        need = kr[tied] - gt.sum(axis=1)
        keep = np.flatnonzero(gt | (eq & (np.cumsum(eq, axis=1) <= need[:, None])))
        r, c = np.divmod(keep, length)
        flat = np.concatenate([flat[~is_tied[flat // length]], tied[r] * length + c])
    return flat


def _exclude_bounds(p: np.ndarray, xv: np.ndarray, up: np.ndarray, qmin: int, qmax: int,
                    axis_of_group: int) -> None:
    """Zero, in place, the priority of elements that would be flipped outward past a bound.

    An UP group must not raise an element with ``x >= qmax`` and a DOWN group must not lower
    one with ``x <= qmin``; at exactly the bound the error is 0 anyway, so strict comparisons
    suffice. ``up`` is per group; ``axis_of_group`` is the axis of ``p`` / ``xv`` indexing groups.
    """
    for beyond, flips_up in ((xv > qmax, True), (xv < qmin, False)):
        idx = np.nonzero(beyond)
        if idx[0].size:
            hit = up[idx[axis_of_group]] == flips_up
            p[tuple(i[hit] for i in idx)] = 0


def _k_then_c(src: np.ndarray, scale: Any, qmin: int, qmax: int, use_c: bool, edges: bool,
              oc_out: np.ndarray) -> None:
    """K stage (and optionally the C stage) for a block of whole output channels.

    ``src`` is (rows, IC, K) with K > 1 and ``x = src / scale`` (see ``_round``); results go to
    ``oc_out`` (same shape, integer dtype). Kernels are laid out as columns of a (K, G) array
    so that every per-kernel reduction is an elementwise operation over contiguous rows
    instead of a short-axis reduction.
    """
    rc, ic, k = src.shape
    g_n = rc * ic
    sg = src.reshape(g_n, k)
    out_flat = oc_out.reshape(-1)
    # The transposition is the single most expensive step; the division rides along with it.
    if scale is None:
        xt = np.copy(sg.T, order="C")
    elif np.ndim(scale) == 1:
        xt = np.divide(sg.T, np.repeat(scale, ic), order="C")
    else:
        xt = np.divide(sg.T, scale, order="C")
    rt = np.rint(xt)
    # RTN in the original layout: recomputing it is cheaper than a strided read of rt.
    x = src if scale is None else src / (scale[:, None, None] if np.ndim(scale) == 1 else scale)
    np.clip(np.rint(x), qmin, qmax, out=oc_out, casting="unsafe")
    # Off the edge path every flip stays inside [qmin, qmax] (an element rounded down has
    # x < qmax, so RTN+1 <= qmax; symmetrically downwards), so flips can be applied to the
    # already clipped RTN in place and the unclipped RTN is not needed afterwards.
    p = np.subtract(rt, xt, out=None if edges else rt)  # E0, exact
    s = _seq_sum_rows(p)
    up = s < 0
    a = np.abs(s)
    kk = np.rint(a)
    over = kk >= a
    ki = kk.astype(np.intp)
    # Rank whose element gets registered: the last flipped one when "over" (an undo candidate),
    # the next unflipped one when "under" (a further candidate). S == 0 gives k = 0 with
    # over = True, i.e. rank -1: no flip and no registration, as the semantics require.
    reg_rank = ki - over
    need = reg_rank + 1  # ranks to find per kernel
    # Priority in each kernel's own direction: > 0 exactly for that direction's candidates.
    np.multiply(p, (1 - 2 * up).astype(p.dtype), out=p)
    if edges:
        _exclude_bounds(p, xt, up, qmin, qmax, axis_of_group=1)

    # Rank 0 for every kernel at once; later ranks only for the shrinking set that needs them.
    m = p.max(axis=0)
    j = _first_argmax0(p, m)
    valid = m > 0
    flip = valid & (ki >= 1)
    fg = [np.flatnonzero(flip)]
    fj = [j[fg[0]]]
    reg_ok = valid & (reg_rank == 0)
    reg_pos = j
    reg_m = m
    # Ranks found per kernel. Off the edge path every kernel has at least `need` candidates
    # (its error sum bounds their count from below), so a shortfall needs bound exclusions.
    found = np.where(valid, need, 0)
    act = np.flatnonzero(valid & (need > 1))
    if act.size:  # rank 1: about a quarter of the kernels
        ka, need_a, rank_a = ki[act], need[act], reg_rank[act]
        pa = np.take(p, act, axis=1)  # p[:, act] would come out column-major
        pa.reshape(-1)[j[act].astype(np.intp) * act.size + np.arange(act.size)] = 0
        m = pa.max(axis=0)
        j = _first_argmax0(pa, m)
        v = m > 0
        if not v.all():
            found[act[~v]] = 1
        f = v & (ka > 1)
        fg.append(act[f])
        fj.append(j[f])
        last = v & (rank_a == 1)
        gl = act[last]
        reg_ok[gl] = True
        reg_pos[gl] = j[last]
        reg_m[gl] = m[last]
        nxt = np.flatnonzero(v & (need_a > 2))
        if nxt.size:
            # Ranks 2 and up concern ~2 % of the kernels: one small stable sort per kernel is
            # cheaper than more rounds of whole-array calls.
            act, ka, need_a, rank_a = act[nxt], ka[nxt], need_a[nxt], rank_a[nxt]
            pa = np.take(pa, nxt, axis=1)
            pa.reshape(-1)[j[nxt].astype(np.intp) * nxt.size + np.arange(nxt.size)] = 0
            pt = -pa.T
            order = np.argsort(pt, axis=1, kind="stable")  # ties: lower position first
            pri = -np.take_along_axis(pt, order, axis=1)
            rank = 2 + np.arange(k)
            ok = pri > 0
            found[act] = np.minimum(need_a, 2 + ok.sum(axis=1))
            fr, fc = np.nonzero(ok & (rank < ka[:, None]))
            fg.append(act[fr])
            fj.append(order[fr, fc])
            rr, rcol = np.nonzero(ok & (rank == rank_a[:, None]))
            gl = act[rr]
            reg_ok[gl] = True
            reg_pos[gl] = order[rr, rcol]
            reg_m[gl] = pri[rr, rcol]
    kf = np.minimum(ki, found)  # flips made per kernel

    fg_a = np.concatenate(fg)
    fj_a = np.concatenate(fj)
    step = up.view(np.int8) * 2 - 1  # +1 for kernels that flip up, -1 for down
    d = step[fg_a]
    pos = fg_a * k + fj_a
    if edges:
        out_flat[pos] = np.clip(rt[fj_a, fg_a] + d, qmin, qmax)
    else:
        out_flat[pos] += d

    if not use_c:
        return
    # Kernel residual after K: each flip moved the sum by exactly one step towards zero.
    resid = s + kf * step
    sc = _seq_sum_last(resid.reshape(rc, ic))
    up_c = sc < 0
    kc = np.rint(np.abs(sc)).astype(np.intp)
    # "over" kernels registered an undo candidate (flips the opposite way, priority 1 - |e0|);
    # "under" kernels a further candidate (same way, priority |e0|).
    reg_up = up ^ over
    elig = reg_ok & (reg_up == np.repeat(up_c, ic))
    if reg_m.dtype == np.float32 and not np.any(elig & over & (reg_m < _F32_EXACT_UNDO)):
        # Integer keys with the float64 priorities' order and ties, sorted ~8x faster. A
        # further key is m's bit pattern (monotone for m > 0); an undo key mirrors it about
        # 0.5's, so it falls as m rises, as 1 - m does, and is >= every further key with
        # equality exactly when both priorities are 0.5. The mirroring is exact because
        # 1 - m is exact in float64 for float32 m >= 2^-30 (a multiple of 2^-53).
        bits = reg_m.view(np.int32)
        pc = np.where(over, np.int32(2 * _F32_HALF_BITS) - bits, bits)
    else:
        # |over - m| is 1 - m for undo and m for further candidates, in one float64 operation.
        pc = np.subtract(over, reg_m, dtype=np.float64)
        np.abs(pc, out=pc)
    pc *= elig
    g = _topk_rows(pc.reshape(rc, ic), kc)  # flat (row, ic) indices are kernel indices
    if g.size:
        jpos = reg_pos[g].astype(np.intp)
        dc = np.where(up_c[g // ic], 1, -1)
        pos = g * k + jpos
        if edges:
            # An undo restores RTN; a further flip moves one step in the row's direction.
            out_flat[pos] = np.clip(rt[jpos, g] + np.where(over[g], 0, dc), qmin, qmax)
        else:
            # Either way the element moves one step in the row's direction from where it is.
            out_flat[pos] += dc.astype(out_flat.dtype)


def _c_only(src: np.ndarray, scale: Any, qmin: int, qmax: int, edges: bool,
            oc_out: np.ndarray) -> None:
    """C stage with every RTN candidate eligible, for a block of whole output channels.

    ``src`` is (rows, IC, K) with ``x = src / scale`` (see ``_round``); K = 1 for dense / 1×1
    (where "squant" is exactly this), K > 1 for the "squant-c" ablation on spatial kernels.
    """
    rc, ic, k = src.shape
    if scale is None:
        xc = src
    else:
        xc = src / (scale[:, None, None] if np.ndim(scale) == 1 else scale)
    r0 = np.rint(xc)
    e = r0 - xc  # E0, exact
    ks = e[..., 0].astype(np.float64) if k == 1 else _seq_sum_last(e)
    sc = _seq_sum_last(ks)
    up = sc < 0
    kc = np.rint(np.abs(sc)).astype(np.intp)
    p = e.reshape(rc, ic * k)
    # Priority in each row's own direction: > 0 exactly for that direction's candidates.
    np.multiply(p, (1 - 2 * up).astype(p.dtype)[:, None], out=p)
    if edges:
        _exclude_bounds(p, xc.reshape(rc, ic * k), up, qmin, qmax, axis_of_group=0)
    # float32 bit patterns order like the values and keep > 0 exactly for positive values;
    # integers sort faster.
    sel = _topk_rows(p.view(np.int32) if p.dtype == np.float32 else p, kc)
    r0.reshape(-1)[sel] += np.where(up[sel // (ic * k)], 1, -1)
    np.clip(r0, qmin, qmax, out=oc_out, casting="unsafe")


# --------------------------------------------------------------------------------------------
# Quantised weights and metrics
# --------------------------------------------------------------------------------------------


@dataclass
class QuantizedWeight:
    """A weight quantised symmetrically: ``w ≈ q * scale`` (zero-point 0).

    ``q`` is int8 of the weight's shape; ``scale`` is float32 of shape ``()`` (per-tensor) or
    ``(OC,)`` (per-channel, broadcast over the first axis); ``q`` lies in
    ``[-(2^(bits-1)-1), 2^(bits-1)-1]``.
    """

    q: np.ndarray
    scale: np.ndarray
    bits: int
    method: str
    granularity: str

    @property
    def qmax(self) -> int:
        return (1 << (self.bits - 1)) - 1

    def scale_broadcast(self) -> np.ndarray:
        """``scale`` reshaped to broadcast against ``q``."""
        s = np.asarray(self.scale, dtype=np.float32)
        return s.reshape((-1,) + (1,) * (self.q.ndim - 1)) if s.ndim == 1 else s

    def dequantize(self) -> np.ndarray:
        """float32 ``q * scale``."""
        return self.q.astype(np.float32) * self.scale_broadcast()


def quantize_weight(
    w: np.ndarray, bits: int = 8, granularity: str = "per-tensor", method: str = "squant"
) -> QuantizedWeight:
    """Quantise a conv (``OC×IC×KH×KW``) or dense (``OC×IC``) weight ISQuant-style.

    Symmetric scale from :func:`weight_scale` (amax / qmax, zero-point 0), ``x = w / scale`` in
    float32 for float32 weights (float64 otherwise), then :func:`round_weights` on the narrow
    range ``[-qmax, qmax]``. Fold BatchNorm first (:func:`fold_batchnorm`) for per-tensor use.
    """
    bits = _check_bits(bits)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}")
    w = np.asarray(w)
    if w.ndim < 2:
        raise ValueError(f"quantize_weight: expected OC×IC[×KH×KW], got shape {w.shape}")
    scale = weight_scale(w, bits, granularity)
    qmax = (1 << (bits - 1)) - 1
    dt = _grid_dtype(w)
    # weight_scale guarantees |w / scale| <= qmax in this very arithmetic and rejected
    # non-finite weights, so round_weights' scans and bound handling are not needed.
    q = _round(np.ascontiguousarray(w, dtype=dt), scale.astype(dt), -qmax, qmax, method,
               edges=False)
    return QuantizedWeight(q=q, scale=scale, bits=bits, method=method, granularity=granularity)


def _ase(err: np.ndarray) -> dict[str, float]:
    """Absolute sum of error per kernel and per output channel: mean and max."""
    oc, ic = err.shape[0], err.shape[1]
    ker = np.abs(err.reshape(oc, ic, -1).sum(axis=2))
    ch = np.abs(err.reshape(oc, -1).sum(axis=1))
    return {
        "kernel_ase_mean": float(ker.mean()),
        "kernel_ase_max": float(ker.max()),
        "channel_ase_mean": float(ch.mean()),
        "channel_ase_max": float(ch.max()),
    }


def weight_metrics(w: np.ndarray, qw: QuantizedWeight) -> dict[str, Any]:
    """Per-layer rounding quality of ``qw`` against the float weight ``w`` it was made from.

    Keys (JSON-serialisable python scalars): ``mse`` / ``mse_rtn`` (mean squared error in weight
    units, method / RTN); ``max_err_steps`` / ``max_err_steps_rtn`` (max |q - w/scale| in grid
    steps); ``kernel_ase_{mean,max}`` and ``channel_ase_{mean,max}`` with ``_rtn`` twins (absolute
    sum of grid-step errors per ``KH×KW`` kernel and per output channel; for K = 1 a kernel is a
    single weight); ``flipped`` (fraction of elements that differ from RTN); ``scale`` (the scale,
    or the largest per-channel scale) and ``scale_min``; ``bits``, ``method``, ``granularity``,
    ``numel``.
    """
    w = np.asarray(w)
    if w.shape != qw.q.shape:
        raise ValueError(f"weight_metrics: w shape {w.shape} != q shape {qw.q.shape}")
    x = _to_grid(w, qw.scale).astype(np.float64)
    rtn = np.clip(np.rint(x), -qw.qmax, qw.qmax)
    q = qw.q.astype(np.float64)
    s = qw.scale_broadcast().astype(np.float64)
    w64 = w.astype(np.float64)
    res: dict[str, Any] = {
        "bits": int(qw.bits),
        "method": qw.method,
        "granularity": qw.granularity,
        "numel": int(w.size),
        "scale": float(np.max(qw.scale)),
        "scale_min": float(np.min(qw.scale)),
        "mse": float(np.mean((q * s - w64) ** 2)),
        "mse_rtn": float(np.mean((rtn * s - w64) ** 2)),
        "max_err_steps": float(np.max(np.abs(q - x))),
        "max_err_steps_rtn": float(np.max(np.abs(rtn - x))),
        "flipped": float(np.mean(q != rtn)),
    }
    res.update(_ase(q - x))
    res.update({f"{key}_rtn": v for key, v in _ase(rtn - x).items()})
    return res
