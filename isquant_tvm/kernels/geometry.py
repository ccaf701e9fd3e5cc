"""Conv geometry and constant packing of the int8 kernels: the blocked loop extents (ConvGeom), the
pre-packed weights, the bias with the data shift folded in, the requantize epilogue's constants."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
from tvm import te, tirx

from ..reference import fixed_point
from .common import IC_DOT, OC_BN, OUT_DTYPES, QConv2dParams


def round_up(a: int, b: int) -> int:
    """a rounded up to a multiple of b."""
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
        waste = round_up(ow, t) - ow
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
    cpg4 = round_up(cpg, OC_BN if blocked_in else IC_DOT)
    if blocked_in:
        ic_bn = OC_BN
    if ic_bn is None:
        ic_bn = 16 if cpg4 % 16 == 0 else (8 if cpg4 % 8 == 0 else 4)
    T = ow_tile or choose_ow_tile(OW, hi=ow_tile_max)
    OWp = round_up(OW, T)
    prestride = KH == 1 and KW == 1
    if prestride:
        Hp, Wp = OH, OWp
    else:
        Hp = max(H + pt + pb, (OH - 1) * sh + (KH - 1) * dh + 1)
        Wp = max(W + pl + pr, (OWp - 1) * sw + (KW - 1) * dw + 1)
    return ConvGeom(N, C, H, W, O, KH, KW, sh, sw, pt, pl, pb, pr, dh, dw, g, cpg, O // g, cpg4,
                    round_up(O // g, OC_BN), ic_bn, OH, OW, OWp, T, Hp, Wp, prestride, blocked_in, ic_dot)


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


def uses_hi32(p) -> bool:
    """Whether the 8-bit requantize can run in int32 lanes after the multiply (requant_expr): every shift
    n >= 33."""
    return p.out_dtype in ("int8", "uint8") and int(np.min(np.asarray(p.shift))) >= 33


Q31_MIN_SHIFT = 32  # sqdmulh's floor(acc*m / 2^31) leaves n-31 >= 1 bits for the rounding shift


def uses_q31(p) -> bool:
    """Whether the ARM int32 requantize (_requant_q31: sqdmulh + srshl) is exact for `p`: 8-bit output,
    every shift n >= 32 and every multiplier in [0, 2^31) (sqdmulh cannot saturate then)."""
    if p.out_dtype not in ("int8", "uint8"):
        return False
    m = np.asarray(p.multiplier, np.int64)
    return int(np.min(np.asarray(p.shift))) >= Q31_MIN_SHIFT and int(m.min()) >= 0 and int(m.max()) < 2 ** 31


def int32_form(epi) -> bool:
    """The epilogue constants (numpy or TE) select an int32 requantize (hi32 or q31): the accumulator then
    starts from the bias instead of the bias riding in the int64 rounding constant."""
    return "sh32" in epi or "q31sh" in epi


def epilogue_consts(p, O: int, O_pad: Optional[int] = None, hi32: bool = False,
                    q31: bool = False) -> dict[str, np.ndarray]:
    """Per-channel epilogue constants, zero/one padded to O_pad. With hi32 (and uses_hi32) also
    rhi = 2^(n-33) and sh32 = n-32 as int32 (padded channels n = 33), which switch requant_expr to its
    int32 form. With q31 (and uses_q31) only mult (int32) and q31sh = -(n-31) (int32, srshl's negative
    shift; padded channels n = 32, m = 0): requant_expr's ARM form (_requant_q31)."""
    O_pad = O_pad or O
    if q31 and p.out_dtype in ("int8", "uint8") and uses_q31(p):
        m = np.zeros((O_pad,), np.int32)
        n = np.full((O_pad,), Q31_MIN_SHIFT, np.int64)
        m[:O] = np.asarray(p.multiplier, np.int64).reshape(-1)
        n[:O] = np.asarray(p.shift, np.int64).reshape(-1)
        if (n > 62).any():
            raise ValueError("shift must be in [1, 62]")
        return {"mult": m, "q31sh": (Q31_MIN_SHIFT - 1 - n).astype(np.int32)}
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
    out = {"mult": m, "rnd": fixed_point.rounding_constant(s, int(p.out_zero_point)).astype(np.int64), "shift": s}
    if hi32 and uses_hi32(p):
        n = np.full((O_pad,), 33, np.int64)
        n[:O] = np.asarray(p.shift, np.int64).reshape(-1)
        out["rhi"] = (np.int64(1) << (n - 33)).astype(np.int32)
        out["sh32"] = (n - 32).astype(np.int32)
    return out


def requant_expr(acc_i32, o, p, tensors, q31_neon: bool = True):
    """TE expression of the epilogue for channel index `o` given an int32 accumulator (bias included).
    With q31 constants (epilogue_consts(q31=True)): the NEON intrinsics if q31_neon, else the same
    arithmetic in int64 TIR (any LLVM target: the host twin of the ARM kernels)."""
    if p.out_dtype == "float32":
        return acc_i32.astype("float32") * tensors["dq"][o]
    if p.out_dtype == "int32":
        return te.max(te.min(acc_i32, tirx.const(int(p.out_max), "int32")), tirx.const(int(p.out_min), "int32"))
    if "q31sh" in tensors:
        return _requant_q31(acc_i32, o, p, tensors, q31_neon)
    if "sh32" in tensors:
        return _requant_hi32(acc_i32, o, p, tensors)
    y = (acc_i32.astype("int64") * tensors["mult"][o].astype("int64") + tensors["rnd"][o]) >> tensors["shift"][o]
    y = te.max(te.min(y, tirx.const(int(p.out_max), "int64")), tirx.const(int(p.out_min), "int64"))
    return y.astype(p.out_dtype)


def _requant_hi32(acc_i32, o, p, tensors):
    """The 8-bit requantize with every shift n >= 33, in int32 lanes after the multiply:
    (acc*m + 2^(n-1)) >> n == (hi(acc*m) + 2^(n-33)) >> (n-32), hi(x) = x >> 32 (2^(n-1) is a multiple of
    2^32 and floor divisions compose), then + the output zero point. hi(acc*m) is the upper dword of
    vpmuldq's product (|.| < 2^30), so the add, shift, clamp and narrowing run on 16 int32 lanes instead of
    2 x 8 int64 ones (per 16 outputs ~14 instead of ~20 vector instructions). Written with the int64
    rounding add before the >> 32, TVM's bound analysis overflowed and folded the clamp to a constant."""
    prod = acc_i32.astype("int64") * tensors["mult"][o].astype("int64")
    y = ((prod >> tirx.const(32, "int64")).astype("int32") + tensors["rhi"][o]) >> tensors["sh32"][o]
    if p.out_zero_point:
        y = y + tirx.const(int(p.out_zero_point), "int32")
    y = te.max(te.min(y, tirx.const(int(p.out_max), "int32")), tirx.const(int(p.out_min), "int32"))
    return y.astype(p.out_dtype)


def _requant_q31(acc_i32, o, p, tensors, neon: bool = True):
    """The 8-bit requantize with every shift n >= 32 in int32 NEON lanes (AArch64 has no 64-bit vector
    multiply: the int64 form is smull/smull2 + 64-bit adds, shifts and cmgt/bsl clamps on 2 lanes per op):

        (acc*m + 2^(n-1)) >> n == srshl(sqdmulh(acc, m), -(n-31))

    sqdmulh(a, m) = sat((2*a*m) >> 32) = floor(a*m / 2^31), unsaturated for 0 <= m < 2^31; 2^(n-1) is a
    multiple of 2^31 for n >= 32 and floor divisions compose, so the left side is
    floor((floor(acc*m / 2^31) + 2^(n-32)) / 2^(n-31)), which is srshl's rounding right shift by n-31
    (computed without overflow by the instruction). Then + the output zero point (exact after the shift,
    as fixed_point.requantize documents), clamp, narrow. Per 4 outputs 2 instructions instead of ~12.
    The intrinsics only select on 64/128-bit vectors: the schedule vectorises these epilogues 4 lanes wide
    (an int32x16 call aborts LLVM, "Do not know how to split the result of this operator").
    Predicted (scripts/bench_arm.py, before the NEON depthwise kernel took its share): ResNet-18 1 thread
    251.9 -> 242.8 ms on the Pi 4, 48.0 -> 46.5 ms on the Pi 5 (dynamic instructions 635 -> 623 M and
    197 -> 190 M); MobileNetV2's 1x1 convs gain most (the epilogue is a larger share: e.g. Pi 4 qconv2d_neon_blk2
    5.38 -> 3.68 ms)."""
    m, s = tensors["mult"][o], tensors["q31sh"][o]
    if neon:
        x = tirx.call_llvm_pure_intrin("int32", "llvm.aarch64.neon.sqdmulh", acc_i32, m)
        y = tirx.call_llvm_pure_intrin("int32", "llvm.aarch64.neon.srshl", x, s)
    else:
        x = (acc_i32.astype("int64") * m.astype("int64")) >> tirx.const(31, "int64")
        k = (tirx.const(0, "int32") - s).astype("int64")
        y = ((x + (tirx.const(1, "int64") << (k - tirx.const(1, "int64")))) >> k).astype("int32")
    if p.out_zero_point:
        y = y + tirx.const(int(p.out_zero_point), "int32")
    y = te.max(te.min(y, tirx.const(int(p.out_max), "int32")), tirx.const(int(p.out_min), "int32"))
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


def hi32_vec_ok(epi_np: dict) -> bool:
    """requant_hi32_vec applies: the int32 form's constants are there and the multiplier is stored int32."""
    return "sh32" in epi_np and epi_np["mult"].dtype == np.int32


def requant_hi32_vec(a, o0, p, epi):
    """_requant_hi32 on one int32x16 vector (channels o0 .. o0+15; see hi32_vec_ok), with the 32 x 32 -> 64 products taken as even and odd
    lanes of the int64x8 view (two vpmuldq, no lane widening): LLVM's lowering of the per-lane form
    widens with vpmovzxdq / vextracti64x4 and narrows with vpmovqd / vinserti64x4, 8 shuffle-port uops per
    16 outputs on top of the 3 byte transposes of a 3x3, the port that bounded the kernel (13.5 cycles per
    16 outputs measured, 32 x 112 x 112). The high dwords of the even products are shifted down, the odd
    products' are already in place: one masked merge gives hi(acc*m) for the 16 lanes."""
    def i64(v):
        return tirx.Broadcast(tirx.const(v, "int64"), 8)

    def lanes_i64(buf):
        return tirx.reinterpret("int64x8", buf.vload([o0], "int32x16"))

    x = tirx.reinterpret("int64x8", a)
    m = lanes_i64(epi["mult"])
    even = ((x << i64(32)) >> i64(32)) * ((m << i64(32)) >> i64(32))
    odd = (x >> i64(32)) * (m >> i64(32))
    hi = tirx.reinterpret("int32x16", ((even >> i64(32)) & i64(0xFFFFFFFF)) | (odd & i64(-(1 << 32))))
    y = (hi + epi["rhi"].vload([o0], "int32x16")) >> epi["sh32"].vload([o0], "int32x16")
    if p.out_zero_point:
        y = y + tirx.Broadcast(tirx.const(int(p.out_zero_point), "int32"), 16)
    y = tirx.Max(tirx.Min(y, tirx.Broadcast(tirx.const(int(p.out_max), "int32"), 16)),
                 tirx.Broadcast(tirx.const(int(p.out_min), "int32"), 16))
    return tirx.Cast(p.out_dtype + "x16", y)
