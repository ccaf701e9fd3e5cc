"""Target-independent pieces of the int8 conv/dense kernels.

The quantized conv contract (zero points 0, numpy reference in :func:`ref_conv2d`):

    acc = conv2d(data, weight) in int32 (zero padding) + bias[o]
    int8/uint8 out: y = clip((acc * multiplier[o] + 2^(shift[o]-1)) >> shift[o], out_min, out_max)
    float32 out:    y = float32(acc) * dequant_scale[o]
    int32 out:      y = clip(acc, out_min, out_max)  (no requantize: a classifier's raw accumulators)

The kernels compute in a channel-blocked layout:

* data is packed (and spatially zero padded) to ``pack[n, cb, hp, wp, ic_bn]`` (ic_bn = 4 or 16),
  optionally shifted by +-128 so the dot instruction sees the signedness it wants; the shift is folded
  exactly into the bias (``bias - shift * sum(w)``) and the spatial padding uses the shifted zero;
* the weight is pre-packed at compile time to ``wpk[ocb, icb4, kh, kw, 16, 4]`` (16 output channels x 4
  input channels: the register layout of x86 ``vpdpbusd`` and, split 4x4, of ARM ``sdot``);
* groups: each group's input channels are padded to a multiple of 4 (of ic_bn) and its output channels to
  a multiple of 16, so grouped convs use the same kernel without wasted cross-group work.
"""
from __future__ import annotations

import contextlib
import inspect
import linecache
import sys
from dataclasses import dataclass
from typing import Optional

import numpy as np
import tvm
from tvm import te, tirx

@contextlib.contextmanager
def cheap_tvmscript_parsing():
    """TVMScript's T.prim_func calls inspect.stack(), which resolves the module and reads the source of
    every frame (~0.15 s per function once torch/onnx are loaded: 0.6-1.6 s per process for the intrinsic
    definitions). The parser only uses the frame objects and the caller's source line, so hand it those."""
    original = inspect.stack

    def stack(context: int = 1):
        frames = []
        f = sys._getframe(1)
        while f is not None:
            code = f.f_code
            line = linecache.getline(code.co_filename, f.f_lineno)
            frames.append(inspect.FrameInfo(f, code.co_filename, f.f_lineno, code.co_name,
                                            [line] if line else None, 0 if line else None))
            f = f.f_back
        return frames

    inspect.stack = stack
    try:
        yield
    finally:
        inspect.stack = original


def dot_desc(lanes: int, k: int, a_dtype: str, b_dtype: str) -> tirx.PrimFunc:
    """What every dot-product intrinsic of the kernels computes (its TensorIntrin description):
    C[lanes] (int32) += sum over k of A[k] x B[lanes, k]. The implementations differ per instruction."""
    from tvm.script import tirx as T

    with cheap_tvmscript_parsing():
        @T.prim_func(s_tir=True)
        def desc(
            A: T.Buffer((k,), a_dtype, offset_factor=1),
            B: T.Buffer((lanes, k), b_dtype, offset_factor=1),
            C: T.Buffer((lanes,), "int32", offset_factor=1),
        ) -> None:
            with T.sblock("root"):
                T.reads(C[0:lanes], A[0:k], B[0:lanes, 0:k])
                T.writes(C[0:lanes])
                for i in T.serial(0, lanes):
                    for j in T.serial(0, k):
                        with T.sblock("update"):
                            vi, vj = T.axis.remap("SR", [i, j])
                            C[vi] = C[vi] + T.cast(A[vj], "int32") * T.cast(B[vi, vj], "int32")

    return desc


OC_BN = 16  # output-channel block (vpdpbusd lanes; 4 x sdot)
IC_DOT = 4  # input channels per dot-product lane

OUT_DTYPES = ("int8", "uint8", "float32", "int32")


@dataclass(frozen=True)
class QConv2dParams:
    weight: np.ndarray  # int8 (O, C/groups, KH, KW)
    bias: np.ndarray  # int32 (O,)
    multiplier: np.ndarray  # int64 (O,) in [2^30, 2^31)
    shift: np.ndarray  # int64 (O,) >= 1
    strides: tuple = (1, 1)
    padding: tuple = (0, 0, 0, 0)  # top, left, bottom, right
    dilation: tuple = (1, 1)
    groups: int = 1
    out_dtype: str = "int8"
    out_min: int = -128
    out_max: int = 127
    dequant_scale: Optional[np.ndarray] = None  # float32 (O,), for out_dtype == "float32"
    out_zero_point: int = 0  # added after the shift (folded into the rounding constant: prequant.py)


@dataclass(frozen=True)
class QDenseParams:
    weight: np.ndarray  # int8 (O, K)
    bias: np.ndarray  # int32 (O,)
    multiplier: np.ndarray
    shift: np.ndarray
    out_dtype: str = "int8"
    out_min: int = -128
    out_max: int = 127
    dequant_scale: Optional[np.ndarray] = None
    out_zero_point: int = 0


# ----------------------------------------------------------------------------------------------
# numpy references (int64, exact)
# ----------------------------------------------------------------------------------------------

def _requant_np(acc: np.ndarray, p, axis: int) -> np.ndarray:
    shape = [1] * acc.ndim
    shape[axis] = -1
    if p.out_dtype == "float32":
        return acc.astype(np.int32).astype(np.float32) * np.asarray(p.dequant_scale, np.float32).reshape(shape)
    if p.out_dtype == "int32":
        return np.clip(acc.astype(np.int64), p.out_min, p.out_max).astype(np.int32)
    m = np.asarray(p.multiplier, np.int64).reshape(shape)
    s = np.asarray(p.shift, np.int64).reshape(shape)
    y = (acc.astype(np.int64) * m + (np.int64(1) << (s - 1)) + (np.int64(p.out_zero_point) << s)) >> s
    return np.clip(y, p.out_min, p.out_max).astype(p.out_dtype)


def ref_conv2d(data: np.ndarray, p: QConv2dParams) -> np.ndarray:
    """numpy int64 reference of the contract."""
    x = data.astype(np.int64)
    w = p.weight.astype(np.int64)
    n, c, h, wd = x.shape
    o, cpg, kh, kw = w.shape
    g = p.groups
    opg = o // g
    t, l, b, r = p.padding
    sh, sw = p.strides
    dh, dw = p.dilation
    xp = np.pad(x, ((0, 0), (0, 0), (t, b), (l, r)))
    oh = (h + t + b - (kh - 1) * dh - 1) // sh + 1
    ow = (wd + l + r - (kw - 1) * dw - 1) // sw + 1
    acc = np.zeros((n, o, oh, ow), np.int64)
    for gi in range(g):
        xs = xp[:, gi * cpg:(gi + 1) * cpg]
        ws = w[gi * opg:(gi + 1) * opg]
        for i in range(kh):
            for j in range(kw):
                patch = xs[:, :, i * dh: i * dh + (oh - 1) * sh + 1: sh, j * dw: j * dw + (ow - 1) * sw + 1: sw]
                acc[:, gi * opg:(gi + 1) * opg] += np.einsum("nchw,oc->nohw", patch, ws[:, :, i, j])
    acc = acc + p.bias.astype(np.int64)[None, :, None, None]
    return _requant_np(acc, p, 1)


def ref_dense(data: np.ndarray, p: QDenseParams) -> np.ndarray:
    acc = data.astype(np.int64) @ p.weight.astype(np.int64).T + p.bias.astype(np.int64)[None]
    return _requant_np(acc, p, 1)


# ----------------------------------------------------------------------------------------------
# geometry and constant packing
# ----------------------------------------------------------------------------------------------

def _ceil(a: int, b: int) -> int:
    return -(-a // b) * b


@dataclass(frozen=True)
class ConvGeom:
    N: int
    C: int
    H: int
    W: int
    O: int
    KH: int
    KW: int
    sh: int
    sw: int
    pt: int
    pl: int
    pb: int
    pr: int
    dh: int
    dw: int
    groups: int
    cpg: int  # input channels per group
    opg: int  # output channels per group
    cpg4: int  # cpg padded to a multiple of ic_bn
    opgB: int  # opg padded to a multiple of OC_BN
    ic_bn: int  # packed-input inner block (multiple of 4, divides cpg4)
    OH: int
    OW: int
    OWp: int  # OW padded to a multiple of the ow register tile
    ow_tile: int
    Hp: int
    Wp: int
    prestride: bool = False  # 1x1 conv: the pack stage subsamples (stride applied while packing)
    blocked_in: bool = False  # data arrives as NCHW16c
    ic_dot: int = IC_DOT  # input channels per dot lane: 4 (vpdpbusd, sdot), 2 (vpmaddwd)

    @property
    def csh(self) -> int:  # stride the conv stage sees
        return 1 if self.prestride else self.sh

    @property
    def csw(self) -> int:
        return 1 if self.prestride else self.sw

    @property
    def ICB4(self) -> int:  # ic_dot-channel blocks per group (the dot instruction's reduction chunks)
        return self.cpg4 // self.ic_dot

    @property
    def OCBg(self) -> int:  # 16-channel output blocks per group
        return self.opgB // OC_BN

    @property
    def OCB(self) -> int:
        return self.groups * self.OCBg

    @property
    def CB(self) -> int:  # packed input blocks (all groups)
        return self.groups * self.cpg4 // self.ic_bn

    @property
    def macs(self) -> int:
        return self.N * self.O * self.OH * self.OW * self.cpg * self.KH * self.KW


def choose_ow_tile(ow: int, lo: int = 4, hi: int = 16) -> int:
    """Register tile along output width: the tile in [lo, hi] wasting least padding (prefer larger)."""
    if ow <= hi:
        return ow
    best = None
    for t in range(hi, lo - 1, -1):
        waste = _ceil(ow, t) - ow
        key = (waste, -t)
        if best is None or key < best[0]:
            best = (key, t)
    return best[1]


def conv_geom(data_shape, p: QConv2dParams, ow_tile: Optional[int] = None, ic_bn: Optional[int] = None,
              ow_tile_max: int = 16, blocked_in: bool = False, ic_dot: int = IC_DOT) -> ConvGeom:
    """data_shape is NCHW, or (N, ceil(C/16), H, W, 16) with blocked_in (C taken from the weight)."""
    if blocked_in:
        N, CB, H, W, cb = (int(v) for v in data_shape)
        C = p.weight.shape[1] * int(p.groups)
        if int(p.groups) != 1 or cb != OC_BN or CB != -(-C // OC_BN):
            raise ValueError(f"blocked conv input must be (N, ceil(C/16), H, W, 16) with groups 1, got "
                             f"{tuple(data_shape)} for C={C}, groups={p.groups}")
    else:
        N, C, H, W = (int(v) for v in data_shape)
    O, cpg, KH, KW = p.weight.shape
    g = int(p.groups)
    if C != cpg * g or O % g:
        raise ValueError(f"conv: data channels {C}, weight {p.weight.shape}, groups {g} do not agree")
    pt, pl, pb, pr = (int(v) for v in p.padding)
    sh, sw = (int(v) for v in p.strides)
    dh, dw = (int(v) for v in p.dilation)
    OH = (H + pt + pb - (KH - 1) * dh - 1) // sh + 1
    OW = (W + pl + pr - (KW - 1) * dw - 1) // sw + 1
    cpg4 = _ceil(cpg, OC_BN if blocked_in else IC_DOT)
    if blocked_in:
        ic_bn = OC_BN
    if ic_bn is None:
        ic_bn = 16 if cpg4 % 16 == 0 else (8 if cpg4 % 8 == 0 else 4)
    T = ow_tile or choose_ow_tile(OW, hi=ow_tile_max)
    OWp = _ceil(OW, T)
    prestride = KH == 1 and KW == 1
    if prestride:
        Hp, Wp = OH, OWp
    else:
        Hp = max(H + pt + pb, (OH - 1) * sh + (KH - 1) * dh + 1)
        Wp = max(W + pl + pr, (OWp - 1) * sw + (KW - 1) * dw + 1)
    return ConvGeom(N, C, H, W, O, KH, KW, sh, sw, pt, pl, pb, pr, dh, dw, g, cpg, O // g, cpg4,
                    _ceil(O // g, OC_BN), ic_bn, OH, OW, OWp, T, Hp, Wp, prestride, blocked_in, ic_dot)


def pack_conv_weight(weight: np.ndarray, g: ConvGeom, w_layout: str = "oc_ic", w_dtype: str = "int8") -> np.ndarray:
    """(O, cpg, KH, KW) int8 -> (OCB, ICB4, KH, KW, 16, 4) int8 ("oc_ic") or (..., 4, 16) ("ic_oc"),
    zero padded per group."""
    w = np.zeros((g.groups, g.opgB, g.cpg4, g.KH, g.KW), w_dtype)
    w[:, :g.opg, :g.cpg] = weight.reshape(g.groups, g.opg, g.cpg, g.KH, g.KW)
    w = w.reshape(g.groups, g.OCBg, OC_BN, g.ICB4, g.ic_dot, g.KH, g.KW)
    # -> (groups, OCBg, ICB4, KH, KW, 16, 4)
    if w_layout == "oc_ic":
        w = w.transpose(0, 1, 3, 5, 6, 2, 4)
        return np.ascontiguousarray(w.reshape(g.OCB, g.ICB4, g.KH, g.KW, OC_BN, g.ic_dot))
    w = w.transpose(0, 1, 3, 5, 6, 4, 2)
    return np.ascontiguousarray(w.reshape(g.OCB, g.ICB4, g.KH, g.KW, g.ic_dot, OC_BN))


def folded_bias(bias: np.ndarray, weight: np.ndarray, data_shift: int) -> np.ndarray:
    """Bias after feeding ``data + data_shift`` to the dot product: acc = acc' - data_shift * sum(w)."""
    wsum = weight.reshape(weight.shape[0], -1).astype(np.int64).sum(axis=1)
    b = bias.astype(np.int64) - int(data_shift) * wsum
    if np.abs(b).max(initial=0) >= 2 ** 31:
        raise ValueError("folded bias overflows int32")
    return b.astype(np.int32)


def data_shift_for(in_dtype: str, dot_in_dtype: str) -> int:
    """Offset added to the data so it becomes `dot_in_dtype` (uint8 for VNNI, int8 for sdot)."""
    if in_dtype == dot_in_dtype:
        return 0
    if in_dtype == "int8" and dot_in_dtype == "uint8":
        return 128
    if in_dtype == "uint8" and dot_in_dtype == "int8":
        return -128
    raise ValueError(f"unsupported data dtype {in_dtype}")


def epilogue_consts(p, O: int, O_pad: Optional[int] = None) -> dict[str, np.ndarray]:
    """Per-channel epilogue constants, zero/one padded to O_pad."""
    O_pad = O_pad or O
    if p.out_dtype not in OUT_DTYPES:
        raise ValueError(f"out_dtype must be one of {OUT_DTYPES}, got {p.out_dtype}")
    if p.out_dtype == "float32":
        dq = np.zeros((O_pad,), np.float32)
        dq[:O] = np.asarray(p.dequant_scale, np.float32).reshape(-1)
        return {"dq": dq}
    if p.out_dtype == "int32":
        return {}
    m = np.zeros((O_pad,), np.int64)
    s = np.ones((O_pad,), np.int64)
    m[:O] = np.asarray(p.multiplier, np.int64).reshape(-1)
    s[:O] = np.asarray(p.shift, np.int64).reshape(-1)
    if (s < 1).any() or (s > 62).any():
        raise ValueError("shift must be in [1, 62]")
    if np.abs(m).max(initial=0) < 2 ** 31:
        # int32 storage: sext(acc) * sext(m) lowers to vpmuldq (32x32->64) instead of a 64-bit multiply
        m = m.astype(np.int32)
    from ..fixed_point import rounding_constant

    return {"mult": m, "rnd": rounding_constant(s, int(p.out_zero_point)).astype(np.int64), "shift": s}


def requant_expr(acc_i32, o, p, tensors):
    """TE expression of the epilogue for channel index `o` given an int32 accumulator (bias included)."""
    if p.out_dtype == "float32":
        return acc_i32.astype("float32") * tensors["dq"][o]
    if p.out_dtype == "int32":
        return te.max(te.min(acc_i32, tirx.const(int(p.out_max), "int32")), tirx.const(int(p.out_min), "int32"))
    y = (acc_i32.astype("int64") * tensors["mult"][o].astype("int64") + tensors["rnd"][o]) >> tensors["shift"][o]
    y = te.max(te.min(y, tirx.const(int(p.out_max), "int64")), tirx.const(int(p.out_min), "int64"))
    return y.astype(p.out_dtype)


def bias_in_rounding(p) -> bool:
    """8-bit outputs fold the bias into the rounding constant: (acc + b)*m + rnd = acc*m + (b*m + rnd), exact in
    int64. The epilogue then multiplies the plain int32 accumulator, which LLVM lowers to vpmuldq; with
    `acc + b` it widened the sum (sext of an nsw add) and used vpmullq, 3 uops of 15 cycles' latency."""
    return p.out_dtype in ("int8", "uint8")


def with_bias(acc, bias_o, p):
    """The accumulator the epilogue starts from (see bias_in_rounding)."""
    return acc if bias_in_rounding(p) else acc + bias_o


def check_out_range(p) -> None:
    if p.out_dtype == "float32":
        if p.dequant_scale is None:
            raise ValueError("out_dtype float32 needs dequant_scale")
        return
    info = np.iinfo(p.out_dtype)
    if not (info.min <= p.out_min <= p.out_max <= info.max):
        raise ValueError(f"out_min/out_max {p.out_min}/{p.out_max} outside {p.out_dtype}")


# ----------------------------------------------------------------------------------------------
# TE computes shared by the x86 and ARM kernels
# ----------------------------------------------------------------------------------------------

def direct_nchw(g: ConvGeom) -> bool:
    return g.groups == 1 and g.O % OC_BN == 0


def conv_compute(g: ConvGeom, p: QConv2dParams, in_dtype: str, dot_in_dtype: str, blocked_out: bool = False,
                 w_layout: str = "oc_ic", w_dtype: str = "int8"):
    """TE tensors: (data, wpk, bias, epi dict, [out]). Stages named pack / conv / epilogue / unpack."""
    shift = data_shift_for(in_dtype, dot_in_dtype)
    if g.blocked_in:
        data = te.placeholder((g.N, g.CB, g.H, g.W, OC_BN), in_dtype, name="data")
    else:
        data = te.placeholder((g.N, g.C, g.H, g.W), in_dtype, name="data")
    wshape = (OC_BN, g.ic_dot) if w_layout == "oc_ic" else (g.ic_dot, OC_BN)
    wpk = te.placeholder((g.OCB, g.ICB4, g.KH, g.KW) + wshape, w_dtype, name="wpk")
    O_pad = g.OCB * OC_BN
    bias = te.placeholder((O_pad,), "int32", name="bias")
    epi = {k: te.placeholder((O_pad,), v.dtype.name, name=k) for k, v in epilogue_consts(p, g.O, O_pad).items()}
    pad_val = tirx.const(shift, "int32").astype(dot_in_dtype) if shift else tirx.const(0, dot_in_dtype)
    sub = g.ic_bn // g.ic_dot  # dot chunks per packed block
    cbg = g.cpg4 // g.ic_bn  # packed blocks per group

    def pack_fn(n, cb, hp, wp, ci):
        gi = cb // cbg
        j = (cb % cbg) * g.ic_bn + ci
        h = (hp * g.sh if g.prestride else hp) - g.pt
        w = (wp * g.sw if g.prestride else wp) - g.pl
        hc, wc = tirx.max(tirx.min(h, g.H - 1), 0), tirx.max(tirx.min(w, g.W - 1), 0)
        if g.blocked_in:  # padded channels hold anything: their weights are 0
            cond = tirx.all(h >= 0, h < g.H, w >= 0, w < g.W)
            v = data[n, cb, hc, wc, ci]
        else:
            cond = tirx.all(j < g.cpg, h >= 0, h < g.H, w >= 0, w < g.W) if g.cpg4 != g.cpg else \
                tirx.all(h >= 0, h < g.H, w >= 0, w < g.W)
            c = gi * g.cpg + tirx.min(j, g.cpg - 1)
            v = data[n, c, hc, wc]
        if shift:
            v = (v.astype("int32") + shift).astype(dot_in_dtype)
        return tirx.if_then_else(cond, v, pad_val)

    pack = te.compute((g.N, g.CB, g.Hp, g.Wp, g.ic_bn), pack_fn, name="pack")
    icb = te.reduce_axis((0, g.ICB4), name="icb")
    kh = te.reduce_axis((0, g.KH), name="kh")
    kw = te.reduce_axis((0, g.KW), name="kw")
    c4 = te.reduce_axis((0, g.ic_dot), name="c4")

    def conv_fn(n, ocb, oh, ow, oc):
        blk = (ocb // g.OCBg) * g.ICB4 + icb  # 4-channel block index over all groups
        a = pack[n, blk // sub, oh * g.csh + kh * g.dh, ow * g.csw + kw * g.dw, (blk % sub) * g.ic_dot + c4]
        wv = wpk[ocb, icb, kh, kw, oc, c4] if w_layout == "oc_ic" else wpk[ocb, icb, kh, kw, c4, oc]
        return te.sum(a.astype("int32") * wv.astype("int32"), axis=[icb, kh, kw, c4])

    conv = te.compute((g.N, g.OCB, g.OH, g.OWp, OC_BN), conv_fn, name="conv")
    if blocked_out:
        def epi_fn(n, ocb, oh, ow, oc):
            o = ocb * OC_BN + oc
            return requant_expr(with_bias(conv[n, ocb, oh, ow, oc], bias[o], p), o, p, epi)

        out = te.compute((g.N, g.OCB, g.OH, g.OW, OC_BN), epi_fn, name="epilogue")
        return data, wpk, bias, epi, [out]

    if direct_nchw(g):
        # output channels map affinely onto (ocb, oc): requantize straight into NCHW per register tile
        out = te.compute((g.N, g.O, g.OH, g.OW), lambda n, o, oh, ow: requant_expr(
            with_bias(conv[n, o // OC_BN, oh, ow, o % OC_BN], bias[o], p), o, p, epi), name="epilogue")
        return data, wpk, bias, epi, [out]

    def epi_fn(n, ocb, oh, ow, oc):
        o = ocb * OC_BN + oc
        return requant_expr(with_bias(conv[n, ocb, oh, ow, oc], bias[o], p), o, p, epi)

    ep = te.compute((g.N, g.OCB, g.OH, g.OWp, OC_BN), epi_fn, name="epilogue")

    def unpack_fn(n, o, oh, ow):
        op = (o // g.opg) * g.opgB + o % g.opg if g.groups > 1 else o
        return ep[n, op // OC_BN, oh, ow, op % OC_BN]

    out = te.compute((g.N, g.O, g.OH, g.OW), unpack_fn, name="unpack")
    return data, wpk, bias, epi, [out]


def padded_bias(bias_folded: np.ndarray, g: ConvGeom) -> np.ndarray:
    """(O,) -> (OCB*16,) in the padded per-group output-channel order."""
    b = np.zeros((g.groups, g.opgB), np.int32)
    b[:, :g.opg] = bias_folded.reshape(g.groups, g.opg)
    return b.reshape(-1)


def padded_per_channel(arr: np.ndarray, g: ConvGeom, fill) -> np.ndarray:
    b = np.full((g.groups, g.opgB), fill, dtype=arr.dtype)
    b[:, :g.opg] = arr.reshape(g.groups, g.opg)
    return b.reshape(-1)


def conv_consts(p: QConv2dParams, g: ConvGeom, in_dtype: str, dot_in_dtype: str,
                w_layout: str = "oc_ic", w_dtype: str = "int8") -> dict[str, np.ndarray]:
    """All compile-time constants of a conv kernel, in the padded order conv_compute expects."""
    shift = data_shift_for(in_dtype, dot_in_dtype)
    out = {"wpk": pack_conv_weight(np.asarray(p.weight, np.int8), g, w_layout, w_dtype),
           "bias": padded_bias(folded_bias(np.asarray(p.bias, np.int64), np.asarray(p.weight, np.int8), shift), g)}
    raw = epilogue_consts(p, g.O)
    for k, v in raw.items():
        out[k] = padded_per_channel(v, g, 1 if k == "shift" else 0)
    if bias_in_rounding(p):
        out["rnd"] = out["rnd"] + out["bias"].astype(np.int64) * out["mult"].astype(np.int64)
    return out


def prim_func_attrs(func: tirx.PrimFunc, name: str) -> tirx.PrimFunc:
    """Mark a hand-scheduled PrimFunc so later passes (dlight, MetaSchedule, FuseOps) leave it alone."""
    func = func.without_attr("global_symbol")
    for k, v in (("tirx.is_scheduled", True), ("op_pattern", 8), ("tirx.noalias", True)):
        func = func.with_attr(k, v)
    return func


def dense_as_conv(p: QDenseParams) -> QConv2dParams:
    w = np.asarray(p.weight, np.int8)
    return QConv2dParams(weight=w.reshape(w.shape[0], w.shape[1], 1, 1), bias=p.bias, multiplier=p.multiplier,
                         shift=p.shift, strides=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1), groups=1,
                         out_dtype=p.out_dtype, out_min=p.out_min, out_max=p.out_max,
                         dequant_scale=p.dequant_scale, out_zero_point=p.out_zero_point)


# ----------------------------------------------------------------------------------------------
# hand schedules (shared: x86 VNNI, ARM sdot / NEON, plain vectorised fallback)
# ----------------------------------------------------------------------------------------------

# Kernels below this much work stay single-threaded: waking TVM's worker threads for a parallel loop costs
# ~5-10 us after a gap, more than a ~20 us kernel gains from a second core (resnet20-cifar's 2.4 M-MAC convs
# ran 0.022 -> 0.028 ms with TVM_NUM_THREADS=2; 6.4 M-MAC ones still scale 1.8x).
DW_PARALLEL_MIN_MACS = 300_000  # depthwise: vectorised int32, ~15 GMAC/s per core


def _fuse_parallel(sch, loops, parallel: bool = True):
    f = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    if parallel:
        sch.parallel(f)
    return f


def _schedule_pack(sch, name: str = "pack", parallel: bool = True):
    blk = sch.get_sblock(name)
    loops = sch.get_loops(blk)
    if len(loops) == 5 and isinstance(sch.get(loops[4]).extent, tirx.IntImm) and sch.get(loops[4]).kind == tirx.ForKind.SERIAL:
        # an unrolled channel gather lets LLVM hoist the bounds test per pixel: a 1x1 conv over 128x55x55
        # went 0.20 -> 0.12 ms, most of which was this pack
        sch.unroll(loops[4])
    _fuse_parallel(sch, loops[:3], parallel)
    return blk


def _schedule_unpack(sch, name: str = "unpack", parallel: bool = True):
    blk = sch.get_sblock(name)
    n, o, oh, ow = sch.get_loops(blk)
    _fuse_parallel(sch, [n, o, oh], parallel)
    return blk


@dataclass(frozen=True)
class KernelConfig:
    """How a conv is scheduled on one target family."""
    dot_in_dtype: str  # "uint8" (VNNI) or "int8" (sdot / NEON)
    intrin: Optional[str]  # tensor intrinsic over (intrin_oc, 4); None = vectorise over oc
    intrin_oc: int = OC_BN  # output channels of one intrinsic call (16 VNNI, 4 ARM)
    w_layout: str = "oc_ic"
    ow_tile_max: int = 16
    name: str = "qconv2d"
    ic_dot: int = IC_DOT  # input channels reduced by one intrinsic lane
    w_dtype: str = "int8"  # packed weight storage (int16 for vpmaddwd)
    parallel_min_macs: int = 4_000_000  # smaller convs run single-threaded (~20 us on one core)


def schedule_conv(sch, g: ConvGeom, cfg: KernelConfig, blocked_out: bool = False):
    """Register tile: ow_tile output pixels x 16 output channels, accumulated in a local buffer over
    (icb, kh, kw, c4); bias/requant/clip on the tile right after; parallel over (n, oc-block, oh)."""
    conv = sch.get_sblock("conv")
    n, ocb, oh, ow, oc, icb, kh, kw, c4 = sch.get_loops(conv)
    ow_o, ow_i = sch.split(ow, [None, g.ow_tile])
    parallel = g.macs >= cfg.parallel_min_macs
    par = _fuse_parallel(sch, [n, ocb, oh], parallel)
    # intrin is None and w_layout "oc_ic": the intrinsic's loop nest with the (intrin_oc x 4) body left as
    # plain TIR (portable twin of an ARM kernel). w_layout "ic_oc": vectorise over 16 oc (int32 fallback).
    portable = cfg.intrin is None and cfg.w_layout == "oc_ic"
    if (cfg.intrin is not None or portable) and cfg.intrin_oc < OC_BN:
        oc_o, oc_i = sch.split(oc, [None, cfg.intrin_oc])
        sch.reorder(ow_o, icb, kh, kw, ow_i, oc_o, oc_i, c4)
    elif cfg.intrin is not None or portable:
        oc_o, oc_i = None, oc
        sch.reorder(ow_o, icb, kh, kw, ow_i, oc, c4)
    else:
        oc_o, oc_i = None, oc
        sch.reorder(ow_o, icb, kh, kw, c4, ow_i, oc)
    ep = sch.get_sblock("epilogue")
    sch.reverse_compute_at(ep, ow_o)
    if cfg.intrin is None and not portable:
        sch.vectorize(oc)
        sch.unroll(c4)
    init = sch.decompose_reduction(conv, icb)
    if cfg.intrin is not None:
        sch.tensorize(oc_i, cfg.intrin)
    elif portable:
        sch.unroll(oc_i)
        sch.unroll(c4)
    if oc_o is not None:
        sch.unroll(oc_o)
    sch.set_scope(init, 0, "local")
    sch.unroll(ow_i)
    il = sch.get_loops(init)
    sch.vectorize(il[-1])
    el = sch.get_loops(ep)
    ext = [int(sch.get(lp).extent) if hasattr(sch.get(lp).extent, "value") else -1 for lp in el[-2:]]
    if not blocked_out and direct_nchw(g) and ext == [OC_BN, g.ow_tile]:
        # NCHW tile (16 oc x ow_tile): vectorise over oc (accumulators, bias, multipliers contiguous);
        # the stores are strided bytes, cheaper than gathering accumulators across the tile
        sch.reorder(el[-1], el[-2])
        el = sch.get_loops(ep)
    sch.vectorize(el[-1])
    if len(el) >= 2 and sch.get(el[-2]).kind == tirx.ForKind.SERIAL and g.ow_tile > 1:
        sch.unroll(el[-2])  # the tile's other (serial) axis
    if g.blocked_in:
        sch.vectorize(sch.get_loops(sch.get_sblock("pack"))[-1])
    _schedule_pack(sch, parallel=parallel)
    if not blocked_out and not direct_nchw(g):
        _schedule_unpack(sch, parallel=parallel)
    return sch


def build_conv_primfunc(g: ConvGeom, p: QConv2dParams, in_dtype: str, cfg: KernelConfig,
                        blocked_out: bool = False) -> tirx.PrimFunc:
    import tvm.s_tir  # noqa: F401

    data, wpk, bias, epi, outs = conv_compute(g, p, in_dtype, cfg.dot_in_dtype, blocked_out, cfg.w_layout,
                                              cfg.w_dtype)
    func = te.create_prim_func([data, wpk, bias] + [epi[k] for k in sorted(epi)] + outs)
    sch = tvm.s_tir.Schedule(func)
    schedule_conv(sch, g, cfg, blocked_out=blocked_out)
    return prim_func_attrs(sch.mod["main"], cfg.name)


# ----------------------------------------------------------------------------------------------
# depthwise (groups == C): vectorised int32 over 16-channel blocks, no dot instruction needed
# ----------------------------------------------------------------------------------------------

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
    par = _fuse_parallel(sch, [n, o], parallel)
    _, i_i = sch.split(sch.fuse(oh, wq), [None, dg.vt])
    sch.vectorize(i_i)
    ep = sch.get_sblock("epilogue")
    sch.reverse_compute_at(ep, par)
    if g.OW >= 8:
        sch.vectorize(sch.get_loops(ep)[-1])
    for ph, pw in phases:
        pk = sch.get_sblock(f"pack_{ph}_{pw}")
        loops = sch.get_loops(pk)
        _fuse_parallel(sch, loops[:2], parallel)
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


def dw_blocked_primfunc(shape, p: QConv2dParams, in_dtype: str) -> tuple[tirx.PrimFunc, tuple[int, ...]]:
    """(N, CB, H, W, 16) -> (N, CB, OH, OW, 16): zero-pad stage, then per output row a tile of
    DW_BLOCKED_OW_TILE pixels x 16 channels accumulated in int32 over the unrolled taps and requantized
    in place (padded channels have zero weights and bias: they hold requant(0)). Returns the function and
    its output shape."""
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
           for k, v in epilogue_consts(p, p.weight.shape[0], O_pad).items()}
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
        acc[n, cb, oh, ow, c], cb * B + c, p, epi), name="epilogue")
    sch = tvm.s_tir.Schedule(te.create_prim_func([data, wpk, bias] + [epi[k] for k in sorted(epi)] + [out]))
    parallel = N * CB * B * OH * OW * KH * KW >= DW_PARALLEL_MIN_MACS
    blk = sch.get_sblock("epilogue")
    n, cb, oh, ow, c = sch.get_loops(blk)
    _fuse_parallel(sch, [n, cb, oh], parallel)
    # a tile dividing OW: a remainder would put a bounds test on every vector of the tile
    tile = next((t for t in range(min(OW, DW_BLOCKED_OW_TILE), 3, -1) if OW % t == 0), min(OW, DW_BLOCKED_OW_TILE))
    ow_o, ow_i = sch.split(ow, [None, tile])
    ac = sch.get_sblock("acc")
    sch.compute_at(ac, ow_o)
    sch.set_scope(ac, 0, "local")
    for b in (ac, blk):
        lp = sch.get_loops(b)
        sch.unroll(lp[-2])
        sch.vectorize(lp[-1])
    pk = sch.get_sblock("pad")
    loops = sch.get_loops(pk)
    _fuse_parallel(sch, loops[:3], parallel)
    sch.vectorize(loops[4])
    return prim_func_attrs(sch.mod["main"], "qconv2d_dw_blk"), (N, CB, OH, OW, B)


def dw_blocked_consts(p: QConv2dParams, CB: int) -> dict[str, np.ndarray]:
    C, _, KH, KW = p.weight.shape
    w = np.zeros((CB * OC_BN, KH, KW), np.int32)
    w[:C] = np.asarray(p.weight, np.int32)[:, 0]
    out = {"wpk": np.ascontiguousarray(w.reshape(CB, OC_BN, KH, KW).transpose(0, 2, 3, 1)),
           "bias": np.zeros((CB * OC_BN,), np.int32)}
    out["bias"][:C] = np.asarray(p.bias, np.int32).reshape(-1)
    for k, v in epilogue_consts(p, C, CB * OC_BN).items():
        out[k] = v
    return out


# ----------------------------------------------------------------------------------------------
# Relax emission
# ----------------------------------------------------------------------------------------------

def _const(arr: np.ndarray):
    from tvm import relax

    return relax.const(arr, str(arr.dtype))


def expr_shape_dtype(expr):
    return tuple(int(d) for d in expr.ty.shape), str(expr.ty.dtype)


def emit_call(bb, data, func: tirx.PrimFunc, consts: dict, name: str, out_shape, out_dtype):
    """Add `func` to the module and emit call_tir(func, data, wpk, bias, sorted epilogue constants)."""
    from tvm import relax

    gv = bb.add_func(func, name)
    rest = sorted(k for k in consts if k not in ("wpk", "bias"))
    args = [data, _const(consts["wpk"]), _const(consts["bias"])] + [_const(consts[k]) for k in rest]
    return bb.emit(relax.call_tir(gv, args, relax.TensorType(tuple(out_shape), out_dtype)))


def lower_conv2d_with(bb, data, p: QConv2dParams, cfg: KernelConfig, name: Optional[str] = None):
    check_out_range(p)
    shape, in_dtype = expr_shape_dtype(data)
    if in_dtype not in ("int8", "uint8"):
        raise ValueError(f"quantized conv needs int8/uint8 data, got {in_dtype}")
    name = name or cfg.name
    if is_depthwise(shape, p):
        dg = dw_geom(shape, p)
        g = dg.base
        func = build_dw_primfunc(dg, p, in_dtype)
        return emit_call(bb, data, func, dw_consts(p, dg), name + "_dw", (g.N, g.O, g.OH, g.OW), p.out_dtype)
    g = conv_geom(shape, p, ow_tile_max=cfg.ow_tile_max, ic_dot=cfg.ic_dot)
    func = build_conv_primfunc(g, p, in_dtype, cfg)
    consts = conv_consts(p, g, in_dtype, cfg.dot_in_dtype, cfg.w_layout, cfg.w_dtype)
    return emit_call(bb, data, func, consts, name, (g.N, g.O, g.OH, g.OW), p.out_dtype)


def blocked_shape(shape, block: int = OC_BN):
    N, C, H, W = shape
    return (N, -(-C // block), H, W, block)


def lower_conv2d_blocked_with(bb, data, p: QConv2dParams, cfg: KernelConfig, name: Optional[str] = None,
                              blocked_in: bool = True, blocked_out: bool = True):
    """Conv chaining channel-blocked activations: input NCHW16c (N, ceil(C/16), H, W, 16) with blocked_in
    (padded channels ignored), else NCHW; output NCHW16c (N, ceil(O/16), OH, OW, 16) with blocked_out
    (padded channels = requant(0)), else NCHW. groups must be 1."""
    check_out_range(p)
    shape, in_dtype = expr_shape_dtype(data)
    channels = p.weight.shape[1] * p.groups
    if p.groups != 1 and is_blocked_depthwise(p.groups, p.weight.shape, channels):
        x = data if blocked_in else emit_layout(bb, data, True)
        xs, _ = expr_shape_dtype(x)
        func, out_shape = dw_blocked_primfunc(xs, p, in_dtype)
        y = emit_call(bb, x, func, dw_blocked_consts(p, xs[1]), (name or cfg.name) + "_dw_blk", out_shape,
                      p.out_dtype)
        return y if blocked_out else emit_layout(bb, y, False, channels)
    if p.groups != 1:
        raise NotImplementedError("blocked-layout conv supports groups == 1 and depthwise only")
    name = (name or cfg.name) + "_blk"
    g = conv_geom(shape, p, ow_tile_max=cfg.ow_tile_max, blocked_in=blocked_in, ic_dot=cfg.ic_dot)
    func = build_conv_primfunc(g, p, in_dtype, cfg, blocked_out=blocked_out)
    consts = conv_consts(p, g, in_dtype, cfg.dot_in_dtype, cfg.w_layout, cfg.w_dtype)
    out_shape = (g.N, g.OCB, g.OH, g.OW, OC_BN) if blocked_out else (g.N, g.O, g.OH, g.OW)
    return emit_call(bb, data, func, consts, name, out_shape, p.out_dtype)


def layout_primfunc(shape, dtype: str, to_blocked: bool, channels: Optional[int] = None) -> tirx.PrimFunc:
    """NCHW <-> NCHW16c transform (zero-filled channel padding), parallel over (n, block, h)."""
    import tvm.s_tir  # noqa: F401

    if to_blocked:
        N, C, H, W = shape
        x = te.placeholder(shape, dtype, name="x")
        CB = -(-C // OC_BN)
        y = te.compute((N, CB, H, W, OC_BN), lambda n, cb, h, w, c: tirx.if_then_else(
            cb * OC_BN + c < C, x[n, tirx.min(cb * OC_BN + c, C - 1), h, w], tirx.const(0, dtype)), name="layout")
    else:
        N, CB, H, W, _ = shape
        C = channels or CB * OC_BN
        x = te.placeholder(shape, dtype, name="x")
        y = te.compute((N, C, H, W), lambda n, c, h, w: x[n, c // OC_BN, h, w, c % OC_BN], name="layout")
    sch = tvm.s_tir.Schedule(te.create_prim_func([x, y]))
    blk = sch.get_sblock("layout")
    loops = sch.get_loops(blk)
    _fuse_parallel(sch, loops[:3])
    return prim_func_attrs(sch.mod["main"], "layout")


def emit_layout(bb, x, to_blocked: bool, channels: Optional[int] = None):
    from tvm import relax

    shape, dtype = expr_shape_dtype(x)
    func = layout_primfunc(shape, dtype, to_blocked, channels)
    out_shape = blocked_shape(shape) if to_blocked else (shape[0], channels or shape[1] * OC_BN, shape[2], shape[3])
    gv = bb.add_func(func, "to_nchw16c" if to_blocked else "from_nchw16c")
    return bb.emit(relax.call_tir(gv, [x], relax.TensorType(out_shape, dtype)))


def lower_dense_with(bb, data, p: QDenseParams, cfg: KernelConfig, name: Optional[str] = None):
    """(N, K) x (O, K)^T through the conv kernel on (N, K, 1, 1)."""
    from tvm import relax

    shape, _ = expr_shape_dtype(data)
    N, K = shape
    O = p.weight.shape[0]
    x4 = bb.emit(relax.op.reshape(data, (N, K, 1, 1)))
    y = lower_conv2d_with(bb, x4, dense_as_conv(p), cfg, name=name or cfg.name.replace("conv2d", "dense"))
    return bb.emit(relax.op.reshape(y, (N, O)))
