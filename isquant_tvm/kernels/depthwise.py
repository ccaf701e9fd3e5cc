"""Depthwise convs (groups == C): vectorised int32 over 16-channel blocks on NCHW, and on NCHW16c
(every tap one 16-channel vector per pixel, any stride); no dot instruction needed."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tvm import te, tirx

from .common import OC_BN, QConv2dParams
from .geometry import ConvGeom, conv_geom, epilogue_consts, requant_expr
from .compute import prim_func_attrs
from .schedule import DW_PARALLEL_MIN_MACS, fuse_parallel, vectorize_epilogue


def is_depthwise(data_shape, p: QConv2dParams) -> bool:
    C = int(data_shape[1])
    return p.groups > 1 and p.groups == C and p.weight.shape[1] == 1


@dataclass(frozen=True)
class DwGeom:
    """Depthwise geometry: NCHW, vectorised along the flattened output plane.

    The input is split into stride phases, each zero padded into a plane of width WQ:
    pack_{ph,pw}[n, c, hq, wq] = padded[n, c, hq*sh + ph, wq*sw + pw]. Tap (kh, kw) of output (oh, wq) reads
    phase ((kh*dh) % sh, (kw*dw) % sw) at (oh + kh*dh//sh, wq + kw*dw//sw); flattened, that is
    i + const for i = oh*WQ + wq, a contiguous run for any stride and width (columns >= OW are computed
    and dropped; reads past a row end land in the next row of the same plane)."""
    base: ConvGeom
    WQ: int  # plane width (>= OW + (KW-1)*dw//sw)
    OHp: int  # conv rows computed (>= OH) so that OHp * WQ is a multiple of vt
    vt: int  # vector tile along the flattened plane (int32 lanes)
    HQ: int  # plane rows

    def taps(self):
        g = self.base
        for kh in range(g.KH):
            for kw in range(g.KW):
                yield kh, kw, (kh * g.dh) % g.sh, (kw * g.dw) % g.sw, (kh * g.dh) // g.sh, (kw * g.dw) // g.sw


def dw_geom(data_shape, p: QConv2dParams, vt: int = 16) -> DwGeom:
    g = conv_geom(data_shape, p, ow_tile=1)
    wq0 = g.OW + ((g.KW - 1) * g.dw) // g.sw
    best = None
    for WQ in range(wq0, wq0 + vt + 1):  # smallest padded plane with OHp * WQ % vt == 0
        OHp = next(r for r in range(g.OH, g.OH + vt + 1) if (r * WQ) % vt == 0)
        if best is None or OHp * WQ < best[0]:
            best = (OHp * WQ, WQ, OHp)
    _, WQ, OHp = best
    HQ = OHp + ((g.KH - 1) * g.dh) // g.sh + 1  # +1 row: reads that wrap past the last row end
    return DwGeom(g, WQ, OHp, vt, HQ)


def dw_consts(p: QConv2dParams, dg: DwGeom) -> dict[str, np.ndarray]:
    g = dg.base
    out = {"wpk": np.ascontiguousarray(np.asarray(p.weight, np.int32)[:, 0]),
           "bias": np.asarray(p.bias, np.int32).reshape(-1).copy()}
    out.update(epilogue_consts(p, g.O))
    return out


def dw_compute(dg: DwGeom, p: QConv2dParams, in_dtype: str):
    g = dg.base
    mult_c = g.O // g.C  # channel multiplier
    data = te.placeholder((g.N, g.C, g.H, g.W), in_dtype, name="data")
    wpk = te.placeholder((g.O, g.KH, g.KW), "int32", name="wpk")
    bias = te.placeholder((g.O,), "int32", name="bias")
    epi = {k: te.placeholder((g.O,), v.dtype.name, name=k) for k, v in epilogue_consts(p, g.O).items()}

    def make_pack(ph, pw):
        def pack_fn(n, c, hq, wq):
            h = hq * g.sh + (ph - g.pt)
            w = wq * g.sw + (pw - g.pl)
            cond = tirx.all(h >= 0, h < g.H, w >= 0, w < g.W)
            return tirx.if_then_else(cond, data[n, c, h, w].astype("int16"), tirx.const(0, "int16"))

        return te.compute((g.N, g.C, dg.HQ, dg.WQ), pack_fn, name=f"pack_{ph}_{pw}")

    packs = {}
    for _, _, ph, pw, _, _ in dg.taps():
        if (ph, pw) not in packs:
            packs[(ph, pw)] = make_pack(ph, pw)

    def conv_fn(n, o, oh, wq):
        c = o // mult_c if mult_c > 1 else o
        acc = None
        for kh, kw, ph, pw, qh, qw in dg.taps():
            t = packs[(ph, pw)][n, c, oh + qh, wq + qw].astype("int32") * wpk[o, kh, kw]
            acc = t if acc is None else acc + t
        return acc

    conv = te.compute((g.N, g.O, dg.OHp, dg.WQ), conv_fn, name="conv")
    out = te.compute((g.N, g.O, g.OH, g.OW), lambda n, o, oh, ow: requant_expr(
        conv[n, o, oh, ow] + bias[o], o, p, epi), name="epilogue")
    return data, wpk, bias, epi, [out], list(packs)


def schedule_dw(sch, dg: DwGeom, phases):
    g = dg.base
    parallel = g.macs >= DW_PARALLEL_MIN_MACS
    conv = sch.get_sblock("conv")
    n, o, oh, wq = sch.get_loops(conv)
    par = fuse_parallel(sch, [n, o], parallel)
    _, i_i = sch.split(sch.fuse(oh, wq), [None, dg.vt])
    sch.vectorize(i_i)
    ep = sch.get_sblock("epilogue")
    sch.reverse_compute_at(ep, par)
    if g.OW >= 8:
        sch.vectorize(sch.get_loops(ep)[-1])
    for ph, pw in phases:
        pk = sch.get_sblock(f"pack_{ph}_{pw}")
        loops = sch.get_loops(pk)
        fuse_parallel(sch, loops[:2], parallel)
        try:  # zero fill + condition-free interior copy (LLVM vectorises both)
            sch.decompose_padding(pk, loops[2])
        except Exception:  # noqa: BLE001 - keep the select form
            pass
    return sch


def build_dw_primfunc(dg: DwGeom, p: QConv2dParams, in_dtype: str) -> tirx.PrimFunc:
    import tvm.s_tir  # noqa: F401

    data, wpk, bias, epi, outs, phases = dw_compute(dg, p, in_dtype)
    func = te.create_prim_func([data, wpk, bias] + [epi[k] for k in sorted(epi)] + outs)
    sch = tvm.s_tir.Schedule(func)
    schedule_dw(sch, dg, phases)
    return prim_func_attrs(sch.mod["main"], "qconv2d_dw")


# ----------------------------------------------------------------------------------------------
# depthwise on NCHW16c: every tap is one 16-channel vector per pixel, for any stride
# ----------------------------------------------------------------------------------------------

DW_BLOCKED_OW_TILE = 8  # output pixels per register tile (8 x 16 int32 accumulators)


def is_blocked_depthwise(groups: int, weight_shape, channels: int) -> bool:
    """Depthwise with one output channel per input channel (the NCHW16c kernel's case)."""
    return int(groups) == channels and int(weight_shape[0]) == channels and int(weight_shape[1]) == 1


def is_depthwise_call(data_shape, p: QConv2dParams, blocked_in: bool, blocked_out: bool) -> bool:
    """Whether a conv call goes to the depthwise kernels: NCHW (is_depthwise) or NCHW16c
    (is_blocked_depthwise), as lower_conv2d_with / lower_conv2d_blocked_with decide."""
    if int(p.groups) == 1:
        return False
    if blocked_in or blocked_out:
        return is_blocked_depthwise(p.groups, p.weight.shape, p.weight.shape[1] * p.groups)
    return is_depthwise(data_shape, p)


def dw_blocked_primfunc(shape, p: QConv2dParams, in_dtype: str,
                        q31: str = "") -> tuple[tirx.PrimFunc, tuple[int, ...]]:
    """(N, CB, H, W, 16) -> (N, CB, OH, OW, 16): zero-pad stage, then per output row a tile of
    DW_BLOCKED_OW_TILE pixels x 16 channels accumulated in int32 over the unrolled taps and requantized
    in place (padded channels have zero weights and bias: they hold requant(0)). Returns the function and
    its output shape. q31 ("neon" / "host"): geometry._requant_q31 where it applies (ARM)."""
    import tvm.s_tir  # noqa: F401

    N, CB, H, W, B = (int(v) for v in shape)
    g = conv_geom((N, p.weight.shape[0], H, W), p, ow_tile=1)
    KH, KW, sh, sw, dh, dw, pt, pl, OH, OW = g.KH, g.KW, g.sh, g.sw, g.dh, g.dw, g.pt, g.pl, g.OH, g.OW
    Hp, Wp = (OH - 1) * sh + (KH - 1) * dh + 1, (OW - 1) * sw + (KW - 1) * dw + 1
    O_pad = CB * B
    data = te.placeholder((N, CB, H, W, B), in_dtype, name="data")
    wpk = te.placeholder((CB, KH, KW, B), "int32", name="wpk")
    bias = te.placeholder((O_pad,), "int32", name="bias")
    epi = {k: te.placeholder((O_pad,), v.dtype.name, name=k)
           for k, v in epilogue_consts(p, p.weight.shape[0], O_pad, q31=bool(q31)).items()}
    pad = te.compute((N, CB, Hp, Wp, B), lambda n, cb, h, w, c: tirx.if_then_else(
        tirx.all(h >= pt, h < H + pt, w >= pl, w < W + pl),
        data[n, cb, tirx.max(tirx.min(h - pt, H - 1), 0), tirx.max(tirx.min(w - pl, W - 1), 0), c],
        tirx.const(0, in_dtype)), name="pad")

    def fn(n, cb, oh, ow, c):
        acc = None
        for kh in range(KH):
            for kw in range(KW):
                t = pad[n, cb, oh * sh + kh * dh, ow * sw + kw * dw, c].astype("int32") * wpk[cb, kh, kw, c]
                acc = t if acc is None else acc + t
        return acc + bias[cb * B + c]

    # a stage of its own keeps the tap sum in int32: inlined into the int64 requantize, the simplifier
    # widens every product to int64 (measured 0.33 ms for a 32 x 112 x 112 layer)
    acc = te.compute((N, CB, OH, OW, B), fn, name="acc")
    out = te.compute((N, CB, OH, OW, B), lambda n, cb, oh, ow, c: requant_expr(
        acc[n, cb, oh, ow, c], cb * B + c, p, epi, q31 == "neon"), name="epilogue")
    sch = tvm.s_tir.Schedule(te.create_prim_func([data, wpk, bias] + [epi[k] for k in sorted(epi)] + [out]))
    parallel = N * CB * B * OH * OW * KH * KW >= DW_PARALLEL_MIN_MACS
    blk = sch.get_sblock("epilogue")
    n, cb, oh, ow, c = sch.get_loops(blk)
    fuse_parallel(sch, [n, cb, oh], parallel)
    # a tile dividing OW: a remainder would put a bounds test on every vector of the tile
    tile = next((t for t in range(min(OW, DW_BLOCKED_OW_TILE), 3, -1) if OW % t == 0), min(OW, DW_BLOCKED_OW_TILE))
    ow_o, ow_i = sch.split(ow, [None, tile])
    ac = sch.get_sblock("acc")
    sch.compute_at(ac, ow_o)
    sch.set_scope(ac, 0, "local")
    for b in (ac, blk):
        lp = sch.get_loops(b)
        sch.unroll(lp[-2])
        vectorize_epilogue(sch, lp[-1], b == blk and "q31sh" in epi and q31 == "neon")
    pk = sch.get_sblock("pad")
    loops = sch.get_loops(pk)
    fuse_parallel(sch, loops[:3], parallel)
    sch.vectorize(loops[4])
    return prim_func_attrs(sch.mod["main"], "qconv2d_dw_blk"), (N, CB, OH, OW, B)


def dw_blocked_consts(p: QConv2dParams, CB: int, q31: bool = False) -> dict[str, np.ndarray]:
    C, _, KH, KW = p.weight.shape
    w = np.zeros((CB * OC_BN, KH, KW), np.int32)
    w[:C] = np.asarray(p.weight, np.int32)[:, 0]
    out = {"wpk": np.ascontiguousarray(w.reshape(CB, OC_BN, KH, KW).transpose(0, 2, 3, 1)),
           "bias": np.zeros((CB * OC_BN,), np.int32)}
    out["bias"][:C] = np.asarray(p.bias, np.int32).reshape(-1)
    for k, v in epilogue_consts(p, C, CB * OC_BN, q31=q31).items():
        out[k] = v
    return out


def build_padded_rows(T, lb, data, n, cb, oh, g: ConvGeom, rowlen: int, zero, convert) -> None:
    """IRBuilder body shared by the row-buffer depthwise kernels (dw_vnni, dw_neon): the KH padded input rows
    of output row `oh` into `lb` (KH * rowlen elements, in L1), zero borders, each data row's W x 16 values
    copied through `convert` (the kernel's +128 shift to its operand type). No whole-tensor pad copy: in the
    96 x 112 x 112 stride-2 layer that copy cost 0.14 of 0.15 ms."""
    lo, hi = g.pl * OC_BN, (g.pl + g.W) * OC_BN
    for kh in range(g.KH):
        h = oh * g.sh + kh * g.dh - g.pt
        for a_, e_ in ((0, lo), (hi, rowlen)):
            if e_ > a_:
                with T.vectorized(a_, e_) as i:
                    T.buffer_store(lb, zero, [kh * rowlen + i])
        with T.If(T.And(h >= 0, h < g.H)):
            with T.Then():
                with T.serial(0, g.W) as w:
                    with T.vectorized(0, OC_BN) as c:
                        T.buffer_store(lb, convert(data[n, cb, h, w, c]), [kh * rowlen + lo + w * OC_BN + c])
            with T.Else():
                with T.vectorized(lo, hi) as i:
                    T.buffer_store(lb, zero, [kh * rowlen + i])
