"""Intel AMX int8 conv2d / dense (Sapphire Rapids+): int8 weights x uint8/int8 data -> int32 tiles.

Same contract and fused epilogue as the VNNI kernels (common.py): bias + requantize + clip (every
out_dtype of the contract) run on each output tile right after its reduction. Bit-exact vs ref_conv2d.

The GEMM is computed transposed, C[16 channels x 16 pixels] += W[16 x kc] * D[kc x 16 pixels]:
the weights are the A operand (signed) and the data the B operand, so the dot instruction is
``tdpbsud`` (signed x unsigned) for uint8 data and ``tdpbssd`` (signed x signed) for int8 data - no +128
data shift and no bias fold (the VNNI kernel's vpdpbusd needs both). Each C tile row is one output
channel over 16 consecutive pixels, so the epilogue is vectorised over pixels with per-channel scalar
constants and stores 16 contiguous outputs.

Implicit GEMM over "phase planes" (the depthwise kernel's trick, depthwise.DwGeom):

* the zero-padded input is packed per stride phase (ph, pw), 4 channels interleaved per pixel (the
  VNNI-4 layout a B tile wants): ``pack[n, icb, phase, k4, hq*WQ + wq, 4] =
  padded[n, icb*kc + 4*k4 + c, hq*sh + ph, wq*sw + pw]``. Tap (kh, kw) of output pixel (oh, ow) reads
  phase ((kh*dh) % sh, (kw*dw) % sw) at flat position ``i + off``, ``i = oh*WQ + ow``,
  ``off = (kh*dh // sh)*WQ + kw*dw // sw``: for ANY stride / dilation the data of 16 consecutive flat
  positions x kc channels is one B tile (kc/4 rows of 64 bytes, row stride = one plane).
  Columns ow >= OW of the flattened plane are computed and dropped.
* weights are pre-packed constants ``wpk[ocb16, icb, tap, 16, kc]``: one A tile per (16 output channels,
  chunk of kc <= 64 input channels, tap).
* tile blocking: 2 x 2 C tiles (tmm0-3) + 2 weight tiles (tmm4-5) + 2 data tiles (tmm6-7); 3 x 1 when
  there is a single pixel tile (dense at small batch). The whole reduction (chunks x taps) accumulates in
  tile registers, then tilestored to a 4 KB stack buffer for the epilogue.
* remainders: output channels padded to whole blocks (zero weights; the epilogue skips them), input
  channels to a multiple of kc (zero weights and data), pixels to whole blocks (extra zero plane rows);
  fewer than 16 pixels (dense at small batch) use narrower tiles. When the flat plane is wider than the
  output (WQ > OW) the epilogue writes a (N, O, Mpad) buffer and a vectorised copy drops the extra columns.
* ldtilecfg once per parallel task (the tile config is per thread), tilerelease at its end.

Linux needs a per-process permission before the first tile instruction (util/cpu.py). The kernel asks
for it itself once per call (one arch_prctl syscall, well under a microsecond; a no-op once granted) and
fails with a TVM error instead of SIGILL when refused.

In a compiled graph most convs read channel-blocked activations and go to x86_amx_blocked instead (the
same tiles with data and weights swapped); this kernel serves NCHW inputs and dense.

Used where it pays (scripts/bench_kernels.py --amx): groups == 1 convs with at least AMX_MIN_CIN input
channels, or fewer with a kernel wider than 1 (the RGB stem, columns folded into the reduction); dense at
batch >= 2 or with long rows. Grouped and depthwise convs and few-channel 1x1 convs stay on VNNI.
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Optional

import numpy as np
import tvm
from tvm import relax, tirx

from ..util.cpu import ARCH_REQ_XCOMP_PERM, SYS_ARCH_PRCTL, XFEATURE_XTILEDATA
from ..util.cpu import target_uses_amx as has_amx  # noqa: F401 - the dispatcher's predicate
from ..util.cpu import is_aarch64
from . import compute, depthwise, emit, geometry, registry
from .common import OC_BN, QConv2dParams, QDenseParams
from .geometry import round_up

AMX_MIN_CIN = 16  # fewer input channels (and a 1-wide kernel): a tile row would be mostly padding -> VNNI
FOLD_MAX_CIN = 16  # fewer input channels: kernel columns folded into the reduction (stem: 3 x 7 -> 21)
PARALLEL_MIN_MACS = 4_000_000
PAR_TASKS = 8  # aim for at least this many parallel tasks (load balance over 2 threads)

# ------------------------------------------------------------------------------------------
# geometry
# ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AmxGeom:
    N: int  # images (1 for dense)
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
    dh: int
    dw: int
    OH: int
    OW: int
    kc: int  # input channels (bytes) per weight-tile row, multiple of 4, <= 64
    ICB: int  # chunks of kc
    phases: tuple  # used stride phases (ph, pw)
    taps: tuple  # (tap index kh*KW+kw, phase index, flat offset)
    WQ: int
    HQ: int
    pw: int  # pixels per tile (16, or M when M < 16)
    MO: int  # weight (output-channel) tiles per block
    MP: int  # pixel tiles per block
    PB: int  # pixel blocks per image
    OB: int  # output-channel blocks
    dense: bool = False
    fold: int = 1  # KW when the kernel columns are folded into the reduction (few input channels)

    @property
    def CK(self) -> int:  # reduction channels per tap: C, or C*KW when folded
        return self.C * self.fold

    @property
    def KT(self) -> int:  # taps of the packed weights
        return self.KH * (1 if self.fold > 1 else self.KW)

    @property
    def M(self) -> int:
        return self.OH * self.WQ

    @property
    def Mpad(self) -> int:
        return self.PB * self.MP * self.pw

    @property
    def KQ(self) -> int:
        return self.kc // 4

    @property
    def plane(self) -> int:
        return self.HQ * self.WQ

    @property
    def OCB(self) -> int:  # 16-channel blocks incl. padding
        return self.OB * self.MO

    @property
    def O_pad(self) -> int:
        return self.OCB * OC_BN

    @property
    def macs(self) -> int:
        return self.N * self.O * self.OH * self.OW * self.C * self.KH * self.KW

    @property
    def tiles_used(self) -> int:
        return self.MO * self.MP + self.MO + self.MP


def choose_kc(cpg: int) -> int:
    """Bytes per tile row: 64 (padding the channels), or the whole (4-padded) channel count if smaller."""
    return 64 if cpg >= 64 else round_up(cpg, 4)


def amx_geom(data_shape, p: QConv2dParams, dense: bool = False, fold: Optional[int] = None) -> AmxGeom:
    N, C, H, W = (int(v) for v in data_shape)
    O, cpg, KH, KW = p.weight.shape
    if int(p.groups) != 1 or cpg != C:
        raise ValueError("AMX conv supports groups == 1 only")
    pt, pl, pb, pr = (int(v) for v in p.padding)
    sh, sw = (int(v) for v in p.strides)
    dh, dw = (int(v) for v in p.dilation)
    OH = (H + pt + pb - (KH - 1) * dh - 1) // sh + 1
    OW = (W + pl + pr - (KW - 1) * dw - 1) // sw + 1
    # Few input channels (the RGB stem): fold the kernel columns into the reduction - the pack writes
    # (c, kw) pairs as channels with the column stride applied, leaving KH taps of C*KW channels.
    if fold is None:
        fold = KW if (C < FOLD_MAX_CIN and KW > 1 and not dense) else 1
    kc = choose_kc(C * fold)
    ICB = round_up(C * fold, kc) // kc
    kws = range(KW) if fold == 1 else [0]
    phases, taps = [], []
    qw_max = qh_max = 0
    for kh in range(KH):
        for kw in kws:
            ph, pw_ = (kh * dh) % sh, (kw * dw) % sw if fold == 1 else 0
            if (ph, pw_) not in phases:
                phases.append((ph, pw_))
            qh_max, qw_max = max(qh_max, kh * dh // sh), max(qw_max, kw * dw // sw if fold == 1 else 0)
    WQ = OW + qw_max
    for kh in range(KH):
        for kw in kws:
            ph, pw_ = (kh * dh) % sh, (kw * dw) % sw if fold == 1 else 0
            off = (kh * dh // sh) * WQ + (kw * dw // sw if fold == 1 else 0)
            taps.append((kh * len(kws) + kw, phases.index((ph, pw_)), off))
    M = OH * WQ
    pw = min(16, M)
    NPT = -(-M // pw)
    OCB16 = -(-O // OC_BN)
    # 2 x 2 C tiles (+ 2 weight + 2 data tiles); one pixel tile (dense at small batch): 3 x 1 (+ 3 + 1).
    # (Tried: 1 weight tile x up to 6 pixel tiles with the data tile reloaded, streaming each weight tile
    # once for 7x7 planes: 15-20% slower than 2 x 2 on resnet18's layer4 - the reloads serialise.)
    MO, MP = (min(3, OCB16), 1) if NPT == 1 else (min(2, OCB16), 2)
    PB = -(-NPT // MP)
    OB = -(-OCB16 // MO)
    max_off = max(t[2] for t in taps)
    HQ = max(-(-(PB * MP * pw + max_off) // WQ), OH + qh_max)
    return AmxGeom(N, C, H, W, O, KH, KW, sh, sw, pt, pl, dh, dw, OH, OW, kc, ICB, tuple(phases), tuple(taps),
                   WQ, HQ, pw, MO, MP, PB, OB, dense, fold)


def pack_weight(weight: np.ndarray, g: AmxGeom) -> np.ndarray:
    """(O, C, KH, KW) int8 -> (OCB, ICB, taps, 16, kc) int8 (one A tile: 16 channels x kc), zero padded.
    Folded: reduction channel j = c*KW + kw, taps = KH."""
    if g.fold > 1:  # (O, C, KH, KW) -> (O, C*KW, KH, 1)
        weight = weight.transpose(0, 1, 3, 2).reshape(weight.shape[0], g.CK, g.KH, 1)
    w = np.zeros((g.O_pad, g.ICB * g.kc, g.KH, g.KT // g.KH), np.int8)
    w[:g.O, :g.CK] = weight
    w = w.reshape(g.OCB, OC_BN, g.ICB, g.kc, g.KT)
    return np.ascontiguousarray(w.transpose(0, 2, 4, 1, 3))


def amx_consts(p: QConv2dParams, g: AmxGeom) -> dict[str, np.ndarray]:
    w = np.asarray(p.weight, np.int8)
    out = {"wpk": pack_weight(w, g), "bias": np.asarray(p.bias, np.int32).reshape(-1)}
    for k, v in geometry.epilogue_consts(p, g.O).items():
        out[k] = v  # (O,): the epilogue never reads padded channels
    return out


# ------------------------------------------------------------------------------------------
# the PrimFunc (built with the TIR IRBuilder: the tap loop and tile numbering are unrolled in Python)
# ------------------------------------------------------------------------------------------

def tile_intrin(name: str, *args):
    from tvm.script.ir_builder import tirx as T

    T.evaluate(T.call_llvm_intrin("void", "llvm.x86." + name, *args))


def build_amx_primfunc(g: AmxGeom, p, in_dtype: str, request_perm: bool = True) -> tirx.PrimFunc:
    from tvm.script.ir_builder import IRBuilder
    from tvm.script.ir_builder import tirx as T

    epi_np = geometry.epilogue_consts(p, g.O)
    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name("qconv2d_amx")
            if g.dense:
                data = T.arg("data", T.Buffer((g.H, g.C), in_dtype))
            else:
                data = T.arg("data", T.Buffer((g.N, g.C, g.H, g.W), in_dtype))
            wpk = T.arg("wpk", T.Buffer((g.OCB, g.ICB, g.KT, OC_BN, g.kc), "int8"))
            bias = T.arg("bias", T.Buffer((g.O,), "int32"))
            epi = {k: T.arg(k, T.Buffer((g.O,), str(epi_np[k].dtype))) for k in sorted(epi_np)}
            if g.dense:
                out = T.arg("out", T.Buffer((g.H, g.O), p.out_dtype))
            else:
                out = T.arg("out", T.Buffer((g.N, g.O, g.OH, g.OW), p.out_dtype))
            T.func_attr({"tirx.noalias": True})
            with tile_permission(T) if request_perm else contextlib.nullcontext():
                _body(g, p, T, data, wpk, bias, epi, out)
    return compute.prim_func_attrs(ib.get(), "qconv2d_amx")


def tile_permission(T):
    """A frame whose body runs after asking Linux for tile-data permission (a TVM error, not SIGILL, when
    refused)."""
    rc = T.call_extern("int64", "syscall", T.int64(SYS_ARCH_PRCTL), T.int64(ARCH_REQ_XCOMP_PERM),
                       T.int64(XFEATURE_XTILEDATA))
    return T.Assert(rc == T.int64(0), "AMX: Linux refused tile-data permission (arch_prctl "
                    "ARCH_REQ_XCOMP_PERM); rebuild for a target without amx-int8")


def _body(g: AmxGeom, p, T, data, wpk, bias, epi, out):
    in_dtype = str(data.dtype)
    pad_val = tirx.const(0, in_dtype)
    P, KQ, plane, kc = len(g.phases), g.KQ, g.plane, g.kc
    parallel = g.macs >= PARALLEL_MIN_MACS
    pack = T.alloc_buffer((g.N * g.ICB * P * KQ * plane * 4,), in_dtype)

    # ---- pack: zero-padded phase planes, 4 input channels interleaved per pixel (NC4HW4-like) ----
    # Per (row, phase): rows outside the image are zero-filled, inside ones split into a zero head, a
    # condition-free copy (LLVM vectorises it) and a zero tail; the column bounds are compile-time constants.
    cpad = g.ICB * kc != g.CK  # channel padding inside the last chunk
    if g.fold > 1 and g.ICB == 1:
        _pack_folded(g, T, data, pack, pad_val, parallel)
        return _gemm_stage(g, p, T, pack, wpk, bias, epi, out, parallel)
    nrows = g.N * g.ICB * KQ * g.HQ
    loop = T.parallel if (parallel and nrows > 1) else T.serial
    with loop(0, nrows) as r:
        hq = r % g.HQ
        k4 = (r // g.HQ) % KQ
        icb = (r // (g.HQ * KQ)) % g.ICB
        n = r // (g.HQ * KQ * g.ICB)
        for ph_i, (ph, pw) in enumerate(g.phases):
            row = ((((n * g.ICB + icb) * P + ph_i) * KQ + k4) * g.HQ + hq) * g.WQ
            h = hq * g.sh + (ph - g.pt)
            # valid columns: 0 <= wq*sw + pw - pl < W
            lo = min(max(0, -(-(g.pl - pw) // g.sw)), g.WQ)
            hi = min(max(lo, -(-(g.W + g.pl - pw) // g.sw)), g.WQ)

            def zeros(a, b, row=row):
                if b > a:
                    with T.serial(0, (b - a) * 4) as z:
                        T.buffer_store(pack, pad_val, [(row + a) * 4 + z])

            # no If/Else frames: TVM 0.27's CSE hoisted a zero-fill index out of the parallel loop
            h_ok = T.And(h >= 0, h < g.H)  # loop invariant: LLVM unswitches it
            hc = T.max(T.min(h, g.H - 1), 0)
            if g.fold > 1:  # several chunks of folded (c, kw) channels: per-element column test
                with T.serial(0, g.WQ) as wq:
                    with T.unroll(0, 4) as c4:
                        j = icb * kc + k4 * 4 + c4
                        c, kw = j // g.fold, j % g.fold
                        w = wq * g.sw + kw * g.dw - g.pl
                        cond = T.And(h_ok, T.And(w >= 0, w < g.W))
                        if cpad:
                            cond = T.And(cond, j < g.CK)
                        v = data[n, T.min(c, g.C - 1), hc, T.max(T.min(w, g.W - 1), 0)]
                        T.buffer_store(pack, T.if_then_else(cond, v, pad_val), [(row + wq) * 4 + c4])
                continue
            zeros(0, lo)
            if hi > lo:
                with T.serial(0, hi - lo) as wi:
                    with T.unroll(0, 4) as c4:
                        wq = wi + lo
                        w = wq * g.sw + (pw - g.pl)
                        ch = icb * kc + k4 * 4 + c4
                        cc = T.min(ch, g.C - 1) if cpad else ch
                        v = data[hc, cc] if g.dense else data[n, cc, hc, w]
                        ok = T.And(h_ok, ch < g.C) if cpad else h_ok
                        T.buffer_store(pack, T.if_then_else(ok, v, pad_val), [(row + wq) * 4 + c4])
            zeros(hi, g.WQ)

    _gemm_stage(g, p, T, pack, wpk, bias, epi, out, parallel)


def _pack_folded(g: AmxGeom, T, data, pack, pad_val, parallel):
    """Folded columns, one chunk (the RGB stem): every packed channel j = (c, kw) is static, so each
    (row, phase, j) is a zero head, a condition-free strided copy and a zero tail."""
    P, KQ, kc = len(g.phases), g.KQ, g.kc
    nrows = g.N * g.HQ
    loop = T.parallel if (parallel and nrows > 1) else T.serial
    with loop(0, nrows) as r:
        hq = r % g.HQ
        n = r // g.HQ
        for ph_i, (ph, _) in enumerate(g.phases):
            h = hq * g.sh + (ph - g.pt)
            h_ok = T.And(h >= 0, h < g.H)  # loop invariant (LLVM unswitches it); no If/Else frames here:
            hc = T.max(T.min(h, g.H - 1), 0)  # TVM 0.27's CSE hoisted a zero-fill index out of the parallel loop
            for k4 in range(KQ):
                row = (((n * P + ph_i) * KQ + k4) * g.HQ + hq) * g.WQ
                for c4 in range(4):
                    j = k4 * 4 + c4
                    c, kw = j // g.fold, j % g.fold
                    off = kw * g.dw - g.pl  # w = wq*sw + off
                    lo = min(max(0, -(-(-off) // g.sw)), g.WQ) if j < g.CK else g.WQ
                    hi = min(max(lo, -(-(g.W - off) // g.sw)), g.WQ) if j < g.CK else g.WQ
                    for a, b in ((0, lo), (hi, g.WQ)):
                        if b > a:
                            with T.serial(a, b) as wq:
                                T.buffer_store(pack, pad_val, [(row + wq) * 4 + c4])
                    if hi > lo:
                        with T.serial(lo, hi) as wq:
                            v = T.if_then_else(h_ok, data[n, c, hc, wq * g.sw + off], pad_val)
                            T.buffer_store(pack, v, [(row + wq) * 4 + c4])


def tile_tasks(g: AmxGeom, T, parallel: bool, tiles: list[tuple[int, int]], block) -> None:
    """The GEMM's task loop, shared by both AMX convs: tasks over (image, output-channel block, share of the
    pixel blocks), each loading the tile config (`tiles`: (rows, bytes per row) of tmm0, tmm1, ...) and calling
    block(n, ob, pb, ctile) for its pixel blocks, ctile a 4 KB int32 stack buffer for the C tiles."""
    items_base = g.N * g.OB
    split = min(g.PB, max(1, -(-PAR_TASKS // items_base))) if parallel else 1
    pb_per = -(-g.PB // split)
    loop = T.parallel if (parallel and items_base * split > 1) else T.serial
    with loop(0, items_base * split) as it:
        pbo = it % split
        ob = (it // split) % g.OB
        n = it // (split * g.OB)
        cfg = T.alloc_buffer((64,), "uint8", scope="local")
        ctile = T.alloc_buffer((g.MO * g.MP * OC_BN * 16,), "int32", scope="local")
        with T.serial(0, 64) as i:
            T.buffer_store(cfg, T.uint8(0), [i])
        T.buffer_store(cfg, T.uint8(1), [0])  # palette 1
        for t, (nrows, colsb) in enumerate(tiles):
            T.buffer_store(cfg, T.uint8(colsb & 0xFF), [16 + 2 * t])
            T.buffer_store(cfg, T.uint8(colsb >> 8), [17 + 2 * t])
            T.buffer_store(cfg, T.uint8(nrows), [48 + t])
        tile_intrin("ldtilecfg", T.address_of(cfg[0]))
        with T.serial(0, pb_per) as pbi:
            pb = pbo * pb_per + pbi
            guard = split * pb_per != g.PB
            with T.If(pb < g.PB) if guard else contextlib.nullcontext():
                with T.Then() if guard else contextlib.nullcontext():
                    block(n, ob, pb, ctile)
        tile_intrin("tilerelease")


def _gemm_stage(g: AmxGeom, p, T, pack, wpk, bias, epi, out, parallel):
    # ---- AMX GEMM (C = W x D^T: 16 channels x 16 pixels per tile) + epilogue ----
    KQ, kc = g.KQ, g.kc
    direct = g.dense or g.WQ == g.OW  # output pixels are the flat plane positions: store straight to out
    if direct:
        dst = out if g.dense else T.decl_buffer((g.N * g.O * g.OH * g.OW,), p.out_dtype, data=out.data)
    else:
        dst = T.alloc_buffer((g.N * g.O * g.Mpad,), p.out_dtype)
    nC = g.MO * g.MP
    tiles = [(OC_BN, 4 * g.pw)] * nC + [(OC_BN, kc)] * g.MO + [(KQ, 4 * g.pw)] * g.MP
    tile_tasks(g, T, parallel, tiles, lambda n, ob, pb, ctile: _gemm_block(
        g, p, T, n, ob, pb, pack, wpk, bias, epi, dst, ctile, direct))

    if not direct:  # wide (N, O, Mpad) plane rows -> NCHW
        nrows = g.N * g.O * g.OH
        loop = T.parallel if (parallel and nrows > 1) else T.serial
        outf = T.decl_buffer((g.N * g.O * g.OH * g.OW,), p.out_dtype, data=out.data)
        with loop(0, nrows) as r:
            oh = r % g.OH
            no = r // g.OH
            with T.vectorized(0, g.OW) as ow:
                T.buffer_store(outf, dst[no * g.Mpad + oh * g.WQ + ow], [r * g.OW + ow])


def _gemm_block(g: AmxGeom, p, T, n, ob, pb, pack, wpk, bias, epi, dst, ctile, direct):
    P, KQ, plane, kc = len(g.phases), g.KQ, g.plane, g.kc
    MO, MP, nC = g.MO, g.MP, g.MO * g.MP
    tA, tB = nC, nC + MO
    # A = weights (signed), B = data: signed x unsigned (tdpbsud) for uint8 data, signed x signed (tdpbssd)
    # for int8 data - no +128 shift and no bias fold needed
    dot = "tdpbssd" if str(pack.dtype) == "int8" else "tdpbsud"
    for t in range(nC):
        tile_intrin("tilezero", T.int8(t))
    with T.serial(0, g.ICB) as icb:
        for tap, ph_i, off in g.taps:
            base = ((n * g.ICB + icb) * P + ph_i) * KQ * plane + off  # pixel units of 4 bytes
            for mo in range(MO):
                tile_intrin("tileloadd64", T.int8(tA + mo), T.address_of(wpk[ob * MO + mo, icb, tap, 0, 0]),
                        T.int64(kc))
            for mp in range(MP):
                m0 = (pb * MP + mp) * g.pw
                tile_intrin("tileloadd64", T.int8(tB + mp), T.address_of(pack[(base + m0) * 4]), T.int64(plane * 4))
            for mo in range(MO):
                for mp in range(MP):
                    tile_intrin(dot, T.int8(mo * MP + mp), T.int8(tA + mo), T.int8(tB + mp))
    for t in range(nC):
        tile_intrin("tilestored64", T.int8(t), T.address_of(ctile[t * OC_BN * 16]), T.int64(64))
    # ---- epilogue: per output channel (tile row), bias + requantize vectorised over the tile's pixels ----
    pw = g.pw
    for mo in range(MO):
        for mp in range(MP):
            t = mo * MP + mp
            i0 = (pb * MP + mp) * pw
            with T.serial(0, OC_BN) as j:
                o = (ob * MO + mo) * OC_BN + j

                def store(px, o=o, t=t, i0=i0, j=j):
                    acc = ctile[(t * OC_BN + j) * 16 + px] + bias[o]
                    y = geometry.requant_expr(acc, o, p, epi)
                    i = i0 + px
                    if g.dense:
                        T.buffer_store(dst, y, [i, o])
                    elif direct:
                        T.buffer_store(dst, y, [(n * g.O + o) * g.M + i])
                    else:
                        T.buffer_store(dst, y, [(n * g.O + o) * g.Mpad + i])

                with (T.If(o < g.O) if g.O_pad != g.O else contextlib.nullcontext()):
                    with (T.Then() if g.O_pad != g.O else contextlib.nullcontext()):
                        if direct and g.Mpad != g.M:  # last pixel tile may run past the plane
                            # the only partial tile is the plane's last one (tiles past it store nothing):
                            # a constant-count loop (LLVM 22 mis-vectorised the per-pixel `if` form here,
                            # writing past the tile's valid pixels into the next channel)
                            last = g.M - (-(-g.M // pw) - 1) * pw
                            with T.If(i0 + pw <= g.M):
                                with T.Then():
                                    with T.vectorized(0, pw) as px:
                                        store(px)
                                with T.Else():
                                    with T.If(i0 < g.M):
                                        with T.Then():
                                            with T.serial(0, last) as px:
                                                store(px)
                        else:
                            with T.vectorized(0, pw) as px:
                                store(px)


# ------------------------------------------------------------------------------------------
# Relax lowering
# ------------------------------------------------------------------------------------------

def eligible_conv(data_shape, p: QConv2dParams) -> bool:
    """Where AMX pays (measured): groups == 1 and enough input channels to fill a tile row."""
    if int(p.groups) != 1 or depthwise.is_depthwise(data_shape, p):
        return False
    return p.weight.shape[1] >= AMX_MIN_CIN or p.weight.shape[3] > 1  # few channels: folded columns


def eligible_dense(data_shape, p: QDenseParams) -> bool:
    """Batch >= 2 (512->1000: AMX 0.015 vs VNNI 0.042 ms at N=4, 0.032 vs 0.27 at N=16) or long rows
    (1280->1000 at N=1: 0.034 vs 0.038); a single 512-wide row is a tie (0.012 ms) and stays on VNNI."""
    N, K = (int(v) for v in data_shape)
    return K >= AMX_MIN_CIN and (N >= 2 or K >= 1024)


def lower_conv2d(bb: relax.BlockBuilder, data: relax.Expr, p: QConv2dParams, target: tvm.target.Target,
                 name: Optional[str] = None) -> relax.Expr:
    """AMX conv (groups == 1); callers check eligible_conv (the dispatcher sends the rest to VNNI)."""
    geometry.check_out_range(p)
    shape, in_dtype = emit.expr_shape_dtype(data)
    if in_dtype not in ("int8", "uint8"):
        raise ValueError(f"quantized conv needs int8/uint8 data, got {in_dtype}")
    g = amx_geom(shape, p)
    func = build_amx_primfunc(g, p, in_dtype)
    consts = amx_consts(p, g)
    return emit.emit_call(bb, data, func, consts, name or "qconv2d_amx", (g.N, g.O, g.OH, g.OW), p.out_dtype)


def dense_geom(data_shape, p: QDenseParams) -> AmxGeom:
    N, K = (int(v) for v in data_shape)
    g = amx_geom((1, K, N, 1), compute.dense_as_conv(p))
    return dataclasses.replace(g, dense=True)


def lower_dense(bb: relax.BlockBuilder, data: relax.Expr, p: QDenseParams, target: tvm.target.Target,
                name: Optional[str] = None) -> relax.Expr:
    """(N, K) x (O, K)^T: the rows of the data are the pixels of a 1x1 conv (no reshape / transpose)."""
    geometry.check_out_range(p)
    shape, in_dtype = emit.expr_shape_dtype(data)
    pc = compute.dense_as_conv(p)
    g = dense_geom(shape, p)
    func = build_amx_primfunc(g, pc, in_dtype)
    consts = amx_consts(pc, g)
    return emit.emit_call(bb, data, func, consts, name or "qdense_amx", (shape[0], g.O), p.out_dtype)


# registered kernels (kernels/registry.py)

def uses_amx(target) -> bool:
    """An x86 target with AMX int8 tiles."""
    return not is_aarch64(target) and has_amx(target)


registry.register_conv(registry.Kernel(
    "x86_amx", 40, uses_amx, lambda shape, p, blocked_in, blocked_out: not blocked_in and not blocked_out
    and eligible_conv(shape, p), lambda bb, data, p, target, blocked_in=False, blocked_out=False:
    lower_conv2d(bb, data, p, target)))
registry.register_dense(registry.Kernel(
    "x86_amx", 40, uses_amx, lambda shape, p, blocked_in, blocked_out: eligible_dense(shape, p),
    lambda bb, data, p, target, blocked_in=False, blocked_out=False: lower_dense(bb, data, p, target)))
