"""Intel AMX int8 conv2d on channel-blocked (NCHW16c) activations, for the blocked chain of legalize/layout.py.

x86_amx computes C[16 channels x 16 pixels] with the weights as the A operand: each C row is one
channel, so its outputs land as NCHW rows, and its input pack interleaves 4 NCHW planes byte by byte.
Here the GEMM is the other way round, C[16 pixels x 16 channels] += D[16 pixels x kc] * W[kc x 16]:

* the A operand is the data, one pixel per row with kc <= 64 channels contiguous. From NCHW16c a row
  is at most 4 copies of 16 bytes (a block's channels of one pixel), so the pack is a vectorised copy
  into zero-padded stride-phase planes (x86_amx's implicit GEMM: any stride / dilation, every tap of
  16 consecutive flat positions is one A tile);
* the B operand is the weights, pre-packed VNNI-4 (kc/4 rows of 16 channels x 4);
* a C row is 16 channels of one pixel: bias + requantize vectorised over channels, then one 16-byte
  store into the NCHW16c output (or 16 strided stores into NCHW, for a chain's last conv);
* a tile multiply costs the same for any row width up to 64 bytes, so with few channels the kernel
  columns are folded into the rows (blocked_geom), and all-zero taps are skipped per output block
  (tap_runs: the merged convs of legalize/merge_concat_convs.py).

Unsigned data (A) x signed weights (B) is ``tdpbusd``; int8 data ``tdpbssd``. Bit-exact vs ref_conv2d.
Channels past the input's real count are read as whatever the blocked input holds: their weights are 0.
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Optional

import numpy as np
import tvm
from tvm import relax, tirx

from . import compute, emit, geometry, registry
from .common import OC_BN, QConv2dParams
from . import x86_amx
from .x86_amx import PARALLEL_MIN_MACS, AmxGeom, tile_intrin, amx_geom, choose_kc, tile_permission, tile_tasks


def _tile_dots(Cp: int, KH: int, KW: int, fold: int) -> int:
    """Tile multiplies per output tile: (reduction chunks of <= 64 bytes) x taps."""
    ck = Cp * fold
    return -(-ck // choose_kc(ck)) * KH * (KW // fold)


def blocked_geom(data_shape, p: QConv2dParams) -> tuple[AmxGeom, QConv2dParams]:
    """Geometry over the padded channel count (whole 16-channel blocks) and the parameters with the weights
    zero-padded to it. A tile multiply costs the same for any row width up to 64 bytes (measured: a 3x3 conv
    at 55x55 without its epilogue, 16 input channels 0.046 ms, 64 channels 0.055 ms), so where it saves
    multiplies the kernel columns are folded into the reduction: row = (kw, 16-channel block) pairs, taps =
    kernel rows (16 channels: 3 multiplies per 3x3 tile instead of 9; 32 channels: 6)."""
    N, CB, H, W, _ = (int(v) for v in data_shape)
    O, C, KH, KW = p.weight.shape
    if int(p.groups) != 1:
        raise ValueError("AMX blocked conv supports groups == 1 only")
    Cp = CB * OC_BN
    w = np.zeros((O, Cp, KH, KW), np.int8)
    w[:, :C] = p.weight
    pp = dataclasses.replace(p, weight=w)
    fold = KW if KW > 1 and _tile_dots(Cp, KH, KW, KW) < _tile_dots(Cp, KH, KW, 1) else 1
    return amx_geom((N, Cp, H, W), pp, fold=fold), pp


def pack_weight(weight: np.ndarray, g: AmxGeom) -> np.ndarray:
    """(O, Cp, KH, KW) int8 -> (OCB, ICB, taps, kc/4, 16, 4): one B tile per (16 channels, chunk, tap).
    Folded: reduction index j = kw*Cp + c, taps = kernel rows."""
    O = weight.shape[0]
    if g.fold > 1:
        weight = weight.transpose(0, 3, 1, 2)  # (O, KW, Cp, KH): j = kw*Cp + c
    w = np.zeros((g.O_pad, g.ICB * g.kc, g.KT), np.int8)
    w[:O, :g.CK] = weight.reshape(O, g.CK, g.KT)
    w = w.reshape(g.OCB, OC_BN, g.ICB, g.KQ, 4, g.KT)
    return np.ascontiguousarray(w.transpose(0, 2, 5, 3, 1, 4))


def consts(p: QConv2dParams, g: AmxGeom) -> dict[str, np.ndarray]:
    bias = np.zeros((g.O_pad,), np.int32)
    bias[:g.O] = np.asarray(p.bias, np.int32).reshape(-1)
    out = {"wpk": pack_weight(np.asarray(p.weight, np.int8), g), "bias": bias}
    out.update(geometry.epilogue_consts(p, g.O, g.O_pad, hi32=True))
    return out


def build_primfunc(g: AmxGeom, p: QConv2dParams, in_dtype: str, blocked_out: bool = True) -> tirx.PrimFunc:
    from tvm.script.ir_builder import IRBuilder
    from tvm.script.ir_builder import tirx as T

    epi_np = geometry.epilogue_consts(p, g.O, g.O_pad, hi32=True)
    CB = g.C // OC_BN
    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name("qconv2d_amx_blk")
            data = T.arg("data", T.Buffer((g.N, CB, g.H, g.W, OC_BN), in_dtype))
            wpk = T.arg("wpk", T.Buffer((g.OCB, g.ICB, g.KT, g.KQ, OC_BN, 4), "int8"))
            bias = T.arg("bias", T.Buffer((g.O_pad,), "int32"))
            epi = {k: T.arg(k, T.Buffer((g.O_pad,), str(epi_np[k].dtype))) for k in sorted(epi_np)}
            oshape = _out_shape(g, blocked_out)
            out = T.arg("out", T.Buffer(oshape, p.out_dtype))
            T.func_attr({"tirx.noalias": True})
            outf = T.decl_buffer((int(np.prod(oshape)),), p.out_dtype, data=out.data)
            with tile_permission(T):
                pack = T.alloc_buffer((g.N * g.ICB * len(g.phases) * g.plane * g.kc,), in_dtype)
                _pack(g, T, data, pack)
                _gemm(g, p, T, pack, wpk, bias, epi, outf, blocked_out)
    return compute.prim_func_attrs(ib.get(), "qconv2d_amx_blk")


PARALLEL_MIN_OUTPUTS = 32768  # the pack and the epilogue scale with pixels x channels, not with MACs


def _parallel(g: AmxGeom) -> bool:
    # tiles make the MACs cheap: a 1x1 conv of 16 -> 64 channels at 55x55 (3.1 M MACs) spends 0.05 ms in its
    # pack and epilogue, worth a second thread
    return g.macs >= PARALLEL_MIN_MACS or g.N * g.M * g.O_pad >= PARALLEL_MIN_OUTPUTS


def _pack(g: AmxGeom, T, data, pack):
    """pack[n, icb, phase, hq*WQ + wq, kc]: the padded input's pixel (hq*sh + ph, wq*sw + pw), kc channels
    as 16-byte blocks. Folded: block jb of the row is input block jb % CB at column offset (jb // CB)*dw."""
    P, kc, CB = len(g.phases), g.kc, g.C // OC_BN
    bpc = kc // OC_BN  # 16-byte blocks per chunk
    zero = tirx.const(0, str(data.dtype))
    folded = g.fold > 1
    # folded rows hold several columns, each with its own valid range: the chunks are unrolled so the ranges
    # stay compile-time constants
    nrows = g.N * g.HQ * (1 if folded else g.ICB)
    loop = T.parallel if (_parallel(g) and nrows > 1) else T.serial
    with loop(0, nrows) as r:
        hq = r % g.HQ
        n = r // (g.HQ * (1 if folded else g.ICB))
        for icb in (range(g.ICB) if folded else [(r // g.HQ) % g.ICB]):
            for ph_i, (ph, pw) in enumerate(g.phases):
                row = (((n * g.ICB + icb) * P + ph_i) * g.plane + hq * g.WQ) * kc
                h = hq * g.sh + (ph - g.pt)
                h_ok = T.And(h >= 0, h < g.H)  # loop invariant: LLVM unswitches it
                hc = T.max(T.min(h, g.H - 1), 0)
                for b in range(bpc):
                    if folded:
                        kw, cb = divmod(icb * bpc + b, CB)
                        col, ok, cbc = kw * g.dw - g.pl, h_ok, cb
                        used = kw < g.fold
                    else:
                        cb = icb * bpc + b
                        col, used = pw - g.pl, True
                        exact = g.ICB * bpc == CB
                        ok = h_ok if exact else T.And(h_ok, cb < CB)
                        cbc = cb if exact else T.min(cb, CB - 1)
                    # valid columns: 0 <= wq*sw + col < W
                    lo = min(max(0, -(-(-col) // g.sw)), g.WQ) if used else g.WQ
                    hi = min(max(lo, -(-(g.W - col) // g.sw)), g.WQ) if used else g.WQ
                    for a, e in ((0, lo), (hi, g.WQ)):
                        if e > a:
                            with T.serial(a, e) as wq:
                                with T.vectorized(0, OC_BN) as c:
                                    T.buffer_store(pack, zero, [row + wq * kc + b * OC_BN + c])
                    if hi > lo:
                        with T.serial(lo, hi) as wq:
                            with T.vectorized(0, OC_BN) as c:
                                v = data[n, cbc, hc, wq * g.sw + col, c]
                                T.buffer_store(pack, T.if_then_else(ok, v, zero), [row + wq * kc + b * OC_BN + c])


def _gemm(g: AmxGeom, p, T, pack, wpk, bias, epi, out, blocked_out: bool):
    runs = tap_runs(g, p.weight)
    nC = g.MO * g.MP
    # C tiles: pixels x 16 int32; data tiles: pixels x kc bytes; weight tiles: kc/4 rows of 16 x 4 bytes
    tiles = [(g.pw, 4 * OC_BN)] * nC + [(g.pw, g.kc)] * g.MP + [(g.KQ, 4 * OC_BN)] * g.MO
    tile_tasks(g, T, _parallel(g), tiles, lambda n, ob, pb, ctile: _block(
        g, p, T, n, ob, pb, pack, wpk, bias, epi, out, ctile, blocked_out, runs))


def tap_runs(g: AmxGeom, weight: np.ndarray) -> list[tuple[int, tuple]]:
    """(end ob, the taps with a nonzero weight in those output blocks) for runs of output-channel blocks
    (MO x 16 channels each) sharing a tap set. A conv merged from parts with different kernel sizes
    (legalize/merge_concat_convs.py: a 1x1 embedded in a 3x3) then skips the zero taps of each part."""
    O, C = weight.shape[:2]
    w = np.asarray(weight).reshape(O, C, g.KH, g.KW) != 0
    nz = w.any(axis=(1, 3)) if g.fold > 1 else w.reshape(O, C, g.KH * g.KW).any(axis=1)  # (O, taps)
    runs: list[tuple[int, tuple]] = []
    for ob in range(g.OB):
        lo, hi = ob * g.MO * OC_BN, min((ob + 1) * g.MO * OC_BN, O)
        used = nz[lo:hi].any(axis=0) if hi > lo else np.zeros(g.KT, bool)
        taps = tuple(t for t in g.taps if used[t[0]])
        if runs and runs[-1][1] == taps:
            runs[-1] = (ob + 1, taps)
        else:
            runs.append((ob + 1, taps))
    return runs


def _by_ob_runs(T, ob, runs, emit):
    """emit(taps) under an if / else chain over the runs of output blocks."""
    if len(runs) == 1:
        emit(runs[0][1])
        return
    (end, taps), rest = runs[0], runs[1:]
    with T.If(ob < end):
        with T.Then():
            emit(taps)
        with T.Else():
            _by_ob_runs(T, ob, rest, emit)


def _block(g: AmxGeom, p, T, n, ob, pb, pack, wpk, bias, epi, out, ctile, blocked_out: bool, runs):
    P, kc, plane = len(g.phases), g.kc, g.plane
    MO, MP, nC = g.MO, g.MP, g.MO * g.MP
    tA, tB = nC, nC + MP
    dot = "tdpbssd" if str(pack.dtype) == "int8" else "tdpbusd"
    # C tiles start as the bias (a stride-0 load repeats one 16-channel row): the epilogue then multiplies a
    # plain int32 load, which LLVM lowers to vpmuldq; with `acc + bias` it widened the sum and used vpmullq
    for mp in range(MP):
        for mo in range(MO):
            tile_intrin("tileloadd64", T.int8(mp * MO + mo), T.address_of(bias[(ob * MO + mo) * OC_BN]), T.int64(0))

    def reduce(taps):
        if not taps:
            return
        with T.serial(0, g.ICB) as icb:
            for tap, ph_i, off in taps:
                base = ((n * g.ICB + icb) * P + ph_i) * plane + off  # in pixels of kc bytes
                for mp in range(MP):
                    m0 = (pb * MP + mp) * g.pw
                    tile_intrin("tileloadd64", T.int8(tA + mp), T.address_of(pack[(base + m0) * kc]), T.int64(kc))
                for mo in range(MO):
                    tile_intrin("tileloadd64", T.int8(tB + mo), T.address_of(wpk[ob * MO + mo, icb, tap, 0, 0, 0]),
                            T.int64(4 * OC_BN))
                for mp in range(MP):
                    for mo in range(MO):
                        tile_intrin(dot, T.int8(mp * MO + mo), T.int8(tA + mp), T.int8(tB + mo))

    _by_ob_runs(T, ob, runs, reduce)
    for t in range(nC):
        tile_intrin("tilestored64", T.int8(t), T.address_of(ctile[t * 16 * OC_BN]), T.int64(4 * OC_BN))
    OCB = -(-g.O // OC_BN)
    for mp in range(MP):
        for mo in range(MO):
            t = mp * MO + mo
            ocb = ob * MO + mo
            # tiles past the last real channel block (OB*MO > OCB) or row positions past the plane /
            # in the plane's dropped columns (ow >= OW) store nothing
            with (T.If(ocb < OCB) if g.OB * MO != OCB else contextlib.nullcontext()):
                with (T.Then() if g.OB * MO != OCB else contextlib.nullcontext()):
                    with T.unroll(0, g.pw) as r:
                        i = (pb * MP + mp) * g.pw + r
                        if g.WQ == g.OW:  # flat plane positions are the output pixels
                            pix, ok = i, (i < g.M if g.Mpad != g.M else None)
                        else:
                            pix, ok = (i // g.WQ) * g.OW + i % g.WQ, T.And(i < g.M, i % g.WQ < g.OW)
                        with (T.If(ok) if ok is not None else contextlib.nullcontext()):
                            with (T.Then() if ok is not None else contextlib.nullcontext()):
                                _store_row(g, p, T, n, ocb, pix, ctile, t * 16 + r, epi, out, blocked_out)


def _store_row(g: AmxGeom, p, T, n, ocb, pix, ctile, row, epi, out, blocked_out: bool):
    """One C row (16 channels of output pixel `pix` = oh*OW + ow) requantized into `out` (flat)."""
    def value(j):
        o = ocb * OC_BN + j
        return geometry.requant_expr(ctile[row * OC_BN + j], o, p, epi)

    plane = g.OH * g.OW
    if blocked_out:
        OCB = -(-g.O // OC_BN)
        with T.vectorized(0, OC_BN) as j:
            T.buffer_store(out, value(j), [((n * OCB + ocb) * plane + pix) * OC_BN + j])
        return
    with T.serial(0, OC_BN) as j:  # NCHW (a chain's last conv): 16 strided stores
        with (T.If(ocb * OC_BN + j < g.O) if g.O % OC_BN else contextlib.nullcontext()):
            with (T.Then() if g.O % OC_BN else contextlib.nullcontext()):
                T.buffer_store(out, value(j), [(n * g.O + ocb * OC_BN + j) * plane + pix])


def eligible(data_shape, p: QConv2dParams) -> bool:
    """groups == 1 on a blocked input: every channel count fills whole 16-byte rows."""
    return len(data_shape) == 5 and int(p.groups) == 1


def lower_conv2d(bb: relax.BlockBuilder, data: relax.Expr, p: QConv2dParams, target: tvm.target.Target,
                 name: Optional[str] = None, blocked_out: bool = True) -> relax.Expr:
    """NCHW16c in -> NCHW16c out (padded channels = requant(0)), or NCHW out with blocked_out=False."""
    geometry.check_out_range(p)
    shape, in_dtype = emit.expr_shape_dtype(data)
    if in_dtype not in ("int8", "uint8"):
        raise ValueError(f"quantized conv needs int8/uint8 data, got {in_dtype}")
    g, pp = blocked_geom(shape, p)
    func = build_primfunc(g, p, in_dtype, blocked_out)
    return emit.emit_call(bb, data, func, consts(pp, g), name or "qconv2d_amx_blk", _out_shape(g, blocked_out),
                            p.out_dtype)


def _out_shape(g: AmxGeom, blocked_out: bool) -> tuple[int, ...]:
    nchw = (g.N, g.O, g.OH, g.OW)
    return emit.blocked_shape(nchw) if blocked_out else nchw


# registered kernel (kernels/registry.py): every groups == 1 conv whose input is NCHW16c on AMX targets
registry.register_conv(registry.Kernel(
    "x86_amx_blocked", 50, x86_amx.uses_amx,
    lambda shape, p, blocked_in, blocked_out: blocked_in and eligible(shape, p),
    lambda bb, data, p, target, blocked_in=True, blocked_out=True:
    lower_conv2d(bb, data, p, target, blocked_out=blocked_out)))
