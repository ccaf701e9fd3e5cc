"""Bit-exactness of the scheduled glue lowerings (kernels/glue.py via kernels/rules.py) and of the int32
conv/dense epilogues against the numpy qnn semantics (reference.QNN_REFERENCE)."""
from __future__ import annotations

import zlib

import numpy as np
import pytest
import tvm
from tvm import relax

from isquant_tvm.reference import interpreter as reference
from isquant_tvm.kernels import common, rules
from isquant_tvm.kernels.common import QConv2dParams, QDenseParams

TARGETS = {
    "avx512": {"kind": "llvm", "mcpu": "cascadelake", "num-cores": 2},  # runs on Intel and Zen 4,
    "generic": {"kind": "llvm"},
}


def host_has(feature: str) -> bool:
    try:
        return feature in open("/proc/cpuinfo").read()
    except OSError:
        return False


def target_of(name: str) -> tvm.target.Target:
    if name == "avx512" and not host_has("avx512_vnni"):
        pytest.skip("host CPU has no AVX-512 VNNI")
    return tvm.target.Target(TARGETS[name])


def rng_for(*key) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def rand_int(rng, shape, dtype):
    if dtype == "int32":
        return rng.integers(-(1 << 20), 1 << 20, shape).astype(np.int32)
    info = np.iinfo(dtype)
    return rng.integers(info.min, int(info.max) + 1, shape).astype(dtype)


def run_rule(rule, inputs: list[np.ndarray], consts: list, attrs: dict, target) -> np.ndarray:
    """Build main(inputs...) = rule(bb, [input vars..., constants...], attrs, target); run it once."""
    bb = relax.BlockBuilder()
    params = [relax.Var(f"x{i}", relax.TensorType(a.shape, str(a.dtype))) for i, a in enumerate(inputs)]
    with bb.function("main", params):
        with bb.dataflow():
            args = list(params) + [c if isinstance(c, relax.Expr) else relax.const(c, str(c.dtype)) for c in consts]
            out = bb.emit_output(rule(bb, args, attrs, target))
        bb.emit_func_output(out)
    mod = bb.get()
    # the fast path must have been taken: no reference Relax op left in main
    ops = set()
    relax.analysis.post_order_visit(mod["main"], lambda e: ops.add(e.op.name) if isinstance(e, relax.Call)
                                    and isinstance(e.op, tvm.ir.Op) else None)
    assert ops <= {"relax.call_tir", "relax.reshape"}, ops
    ex = relax.build(mod, target=target)
    vm = relax.VirtualMachine(ex, tvm.cpu())
    return vm["main"](*[tvm.runtime.tensor(a) for a in inputs]).numpy()


def assert_exact(out: np.ndarray, ref: np.ndarray) -> None:
    assert out.shape == ref.shape, (out.shape, ref.shape)
    assert out.dtype == ref.dtype, (out.dtype, ref.dtype)
    if out.dtype.kind == "f":
        same = (out == ref) | (np.isnan(out) & np.isnan(ref))
        assert same.all() and (np.signbit(out) == np.signbit(ref)).all(), f"{(~same).sum()} mismatches"
    else:
        bad = out != ref
        assert not bad.any(), f"{bad.sum()} / {bad.size} mismatches"


def lo_hi(dtype, relu=False):
    info = np.iinfo(dtype)
    return (0 if relu else int(info.min)), int(info.max)


# ---------------------------------------------------------------------------------------------- add


@pytest.mark.parametrize("tname", ["avx512", "generic"])
@pytest.mark.parametrize("shape,a_dt,b_dt,out_dt,relu", [
    ((1, 64, 56, 56), "int8", "uint8", "uint8", True),
    ((1, 32, 7, 7), "int8", "int8", "int8", False),
    ((2, 24, 5, 3), "uint8", "int8", "int8", False),
    ((1, 3, 1, 1), "int8", "int8", "uint8", True),
])
def test_add(tname, shape, a_dt, b_dt, out_dt, relu):
    rng = rng_for("add", shape, a_dt, b_dt, out_dt)
    a, b = rand_int(rng, shape, a_dt), rand_int(rng, shape, b_dt)
    shift = 31
    ma, mb = np.int64(rng.integers(1 << 29, 1 << 31)), np.int64(rng.integers(1 << 28, 1 << 31))
    lo, hi = lo_hi(out_dt, relu)
    attrs = {"shift": shift, "out_dtype": out_dt, "out_min": lo, "out_max": hi}
    out = run_rule(rules.add_rule, [a, b], [np.array(ma), np.array(mb)], attrs, target_of(tname))
    assert_exact(out, reference.qnn_add([a, b, ma, mb], attrs))


def test_add_rounding_ties():
    """(a·m + 2^(n-1)) >> n rounds half up: values landing exactly on .5 in both signs."""
    a = np.arange(-128, 128, dtype=np.int8).reshape(1, 1, 16, 16)
    b = np.zeros_like(a)
    attrs = {"shift": 2, "out_dtype": "int8", "out_min": -128, "out_max": 127}
    ma, mb = np.int64(1), np.int64(3)
    out = run_rule(rules.add_rule, [a, b], [np.array(ma), np.array(mb)], attrs, target_of("avx512"))
    assert_exact(out, reference.qnn_add([a, b, ma, mb], attrs))


# ---------------------------------------------------------------------------------------------- requantize


@pytest.mark.parametrize("tname", ["avx512", "generic"])
@pytest.mark.parametrize("shape,in_dt,out_dt,shift", [
    ((1, 64, 55, 55), "uint8", "uint8", 31),
    ((1, 192, 13, 13), "int8", "int8", 30),
    ((1, 10, 3, 3), "int32", "int8", 40),
    ((2, 7), "uint8", "int8", 33),
])
def test_requantize(tname, shape, in_dt, out_dt, shift):
    rng = rng_for("rq", shape, in_dt, out_dt)
    x = rand_int(rng, shape, in_dt)
    m = np.int64(rng.integers(1 << 30, 1 << 31))
    lo, hi = lo_hi(out_dt, out_dt == "uint8")
    attrs = {"shift": shift, "out_dtype": out_dt, "out_min": lo, "out_max": hi}
    out = run_rule(rules.requantize_rule, [x], [np.array(m)], attrs, target_of(tname))
    assert_exact(out, reference.qnn_requantize([x, m], attrs))


# ---------------------------------------------------------------------------------------------- (de)quantize


@pytest.mark.parametrize("tname", ["avx512", "generic"])
@pytest.mark.parametrize("out_dt", ["int8", "uint8"])
def test_quantize(tname, out_dt):
    rng = rng_for("q", out_dt)
    scale = 0.020787402400820273
    x = ((rng.random((1, 3, 224, 224), dtype=np.float32) - 0.45) / 0.225).astype(np.float32)
    # exact ties (k + 0.5)·s, saturation, signed zeros, and huge values
    s32 = np.float32(scale)
    ties = (np.arange(-140, 140, dtype=np.float32) + np.float32(0.5)) * s32
    x.reshape(-1)[:ties.size] = ties
    x.reshape(-1)[ties.size:ties.size + 6] = [0.0, -0.0, 1e30, -1e30, 3.0e-39, -2.6]
    attrs = {"scale": scale, "out_dtype": out_dt}
    out = run_rule(rules.quantize_rule, [x], [], attrs, target_of(tname))
    assert_exact(out, reference.qnn_quantize([x], attrs))


@pytest.mark.parametrize("in_dt", ["int8", "uint8", "int32"])
def test_dequantize(in_dt):
    rng = rng_for("dq", in_dt)
    x = rand_int(rng, (1, 1000, 3, 5), in_dt)
    attrs = {"scale": 0.0123456789}
    out = run_rule(rules.dequantize_rule, [x], [], attrs, target_of("avx512"))
    assert_exact(out, reference.qnn_dequantize([x], attrs))


# ---------------------------------------------------------------------------------------------- max pool


POOLS = [
    # shape, pool, strides, padding (t, l, b, r), dilation, ceil_mode
    ((1, 64, 112, 112), (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), False),   # ResNet stem
    ((1, 64, 111, 111), (3, 3), (2, 2), (0, 0, 0, 0), (1, 1), True),    # SqueezeNet, ceil mode
    ((1, 128, 55, 55), (3, 3), (2, 2), (0, 0, 0, 0), (1, 1), True),
    ((1, 16, 14, 14), (2, 2), (2, 2), (0, 0, 0, 0), (1, 1), False),
    ((2, 5, 10, 9), (3, 2), (1, 2), (1, 0, 2, 1), (2, 1), True),
    ((1, 8, 6, 7), (3, 3), (3, 3), (2, 2, 2, 2), (1, 1), True),         # windows entirely in padding
]


@pytest.mark.parametrize("tname", ["avx512", "generic"])
@pytest.mark.parametrize("dtype", ["uint8", "int8"])
@pytest.mark.parametrize("case", POOLS, ids=[f"{c[0][1]}x{c[0][2]}_k{c[1][0]}s{c[2][0]}p{c[3][0]}{'c' if c[5] else ''}"
                                             for c in POOLS])
def test_max_pool2d(tname, dtype, case):
    shape, pool, strides, padding, dilation, ceil_mode = case
    rng = rng_for("mp", case, dtype)
    x = rand_int(rng, shape, dtype)
    attrs = {"pool_size": list(pool), "strides": list(strides), "padding": list(padding),
             "dilation": list(dilation), "ceil_mode": ceil_mode}
    out = run_rule(rules.max_pool2d_rule, [x], [], attrs, target_of(tname))
    assert_exact(out, reference.qnn_max_pool2d([x], attrs))


def to_blocked_np(x: np.ndarray, rng) -> np.ndarray:
    """NCHW -> NCHW16c with junk in the padded channels (kernels must ignore or merely carry them)."""
    n, c, h, w = x.shape
    cb = -(-c // 16)
    xp = rand_int(rng, (n, cb * 16, h, w), str(x.dtype))
    xp[:, :c] = x
    return np.ascontiguousarray(xp.reshape(n, cb, 16, h, w).transpose(0, 1, 3, 4, 2))


def from_blocked_np(y: np.ndarray, c: int) -> np.ndarray:
    n, cb, h, w, b = y.shape
    return y.transpose(0, 1, 4, 2, 3).reshape(n, cb * b, h, w)[:, :c]


@pytest.mark.parametrize("dtype", ["uint8", "int8"])
@pytest.mark.parametrize("case", [POOLS[1], POOLS[4], POOLS[5]], ids=["squeezenet", "dilated", "all_padding"])
def test_max_pool2d_blocked(dtype, case):
    shape, pool, strides, padding, dilation, ceil_mode = case
    rng = rng_for("mpb", case, dtype)
    x = rand_int(rng, shape, dtype)
    attrs = {"pool_size": list(pool), "strides": list(strides), "padding": list(padding),
             "dilation": list(dilation), "ceil_mode": ceil_mode}
    out = run_rule(rules.max_pool2d_rule, [to_blocked_np(x, rng)], [], attrs, target_of("avx512"))
    assert out.ndim == 5
    assert_exact(from_blocked_np(out, shape[1]), reference.qnn_max_pool2d([x], attrs))


# ---------------------------------------------------------------------------------------------- global avg pool


@pytest.mark.parametrize("tname", ["avx512", "generic"])
@pytest.mark.parametrize("shape,in_dt,out_dt,keepdims", [
    ((1, 512, 7, 7), "uint8", "int32", True),
    ((1, 1280, 7, 7), "uint8", "int32", False),
    ((1, 1000, 13, 13), "int32", "float32", True),
    ((2, 64, 8, 8), "int8", "float32", False),
    ((1, 64, 8, 8), "uint8", "uint8", True),
    ((1, 96, 5, 5), "int8", "int8", False),
])
def test_global_avg_pool2d(tname, shape, in_dt, out_dt, keepdims):
    rng = rng_for("gap", shape, in_dt, out_dt)
    x = rand_int(rng, shape, in_dt)
    attrs = {"keepdims": keepdims, "out_dtype": out_dt}
    consts: list = []
    if out_dt == "float32":
        consts = [(rng.random(shape[1]).astype(np.float32) + 0.5) * np.float32(1e-4)]
    elif out_dt != "int32":
        hw = shape[2] * shape[3]
        m = np.int64(rng.integers(1 << 30, 1 << 31))
        lo, hi = lo_hi(out_dt)
        attrs.update(shift=int(np.log2(hw)) + 31, out_min=lo, out_max=hi)
        consts = [np.array(m)]
    out = run_rule(rules.global_avg_pool2d_rule, [x], consts, attrs, target_of(tname))
    ref = reference.qnn_global_avg_pool2d([x] + [np.asarray(c) for c in consts], attrs)
    assert_exact(out, ref)
    if in_dt != "int32":  # NCHW16c input (conv outputs chained in blocks), channels not always a multiple of 16
        blocked = run_rule(rules.global_avg_pool2d_rule, [to_blocked_np(x, rng)], consts,
                           dict(attrs, data_channels=shape[1]), target_of(tname))
        assert_exact(blocked, ref)


# ---------------------------------------------------------------------------------------------- dense, int32 data


@pytest.mark.parametrize("tname", ["avx512", "generic"])
@pytest.mark.parametrize("N,K,O,out_dt", [(1, 512, 1000, "float32"), (2, 37, 21, "int8"), (1, 1280, 1000, "int32"),
                                          (3, 16, 40, "uint8")])
def test_dense_int32_input(tname, N, K, O, out_dt):
    rng = rng_for("d64", N, K, O, out_dt)
    x = rng.integers(-(1 << 30), 1 << 30, (N, K)).astype(np.int32)  # int32 sums: needs int64 accumulation
    w = rng.integers(-127, 128, (O, K)).astype(np.int8)
    bias = rng.integers(-(1 << 30), 1 << 30, O).astype(np.int32)
    consts: list = [w, bias]
    attrs = {"out_dtype": out_dt, "out_min": 0, "out_max": 0}
    if out_dt == "float32":
        consts.append(rng.random(O).astype(np.float32) * np.float32(1e-9))
    elif out_dt == "int32":
        x = (x >> 14).astype(np.int32)
        attrs.update(out_min=0, out_max=2**31 - 1)
    else:
        lo, hi = lo_hi(out_dt)
        attrs.update(out_min=lo, out_max=hi)
        consts += [rng.integers(1 << 30, 1 << 31, O).astype(np.int64), np.full(O, 62, np.int64)]
    out = run_rule(rules.selected_rule("qnn.dense"), [x], consts, attrs, target_of(tname))
    assert_exact(out, reference.qnn_dense([x] + consts, attrs))


@pytest.mark.parametrize("tname", ["avx512", "generic"])
@pytest.mark.parametrize("out_dt", ["float32", "int8"])
def test_dense_pooled_features_accumulate_exactly_in_int32(tname, out_dt):
    """Pooled uint8 features (|x| <= 255 x 49) into a 1280 -> 1000 classifier: int32 accumulation, exact
    even with every feature at its bound and weights of one sign (the largest sum the bound allows)."""
    from isquant_tvm.kernels import glue

    rng = rng_for("d32", out_dt)
    bound = 255 * 49
    w = rng.integers(0, 128, (1000, 1280)).astype(np.int8)
    w[7] = 127  # row sum 162560: 162560 x 12495 = 2.03e9 < 2^31
    x = rng.integers(0, bound + 1, (1, 1280)).astype(np.int32)
    x[0, :] = np.where(rng.random(1280) < 0.5, bound, x[0])
    bias = rng.integers(-(1 << 30), 1 << 30, 1000).astype(np.int32)
    assert glue.dense_i32_exact(w, bound) and not glue.dense_i32_exact(w, bound * 2)
    consts: list = [w, bias]
    attrs = {"out_dtype": out_dt, "out_min": 0, "out_max": 0, "data_bound": bound}
    if out_dt == "float32":
        consts.append(rng.random(1000).astype(np.float32) * np.float32(1e-6))
    else:
        attrs.update(out_min=-128, out_max=127)
        consts += [rng.integers(1 << 30, 1 << 31, 1000).astype(np.int64), np.full(1000, 52, np.int64)]
    out = run_rule(rules.selected_rule("qnn.dense"), [x], consts, attrs, target_of(tname))
    assert_exact(out, reference.qnn_dense([x] + consts, attrs))


# ---------------------------------------------------------------------------------------------- int32 conv / dense


@pytest.mark.parametrize("tname", ["avx512", "generic"])
@pytest.mark.parametrize("in_dt", ["uint8", "int8"])
@pytest.mark.parametrize("C,H,O,k,groups", [(512, 13, 1000, 1, 1), (20, 9, 24, 3, 1), (16, 7, 16, 3, 16)])
def test_conv_int32_out(tname, in_dt, C, H, O, k, groups):
    """The classifier conv whose clipped int32 accumulator is pooled (SqueezeNet's last conv)."""
    rng = rng_for("c32", C, H, O, k, groups, in_dt)
    x = rand_int(rng, (1, C, H, H), in_dt)
    w = rng.integers(-127, 128, (O, C // groups, k, k)).astype(np.int8)
    bias = rng.integers(-20000, 20000, O).astype(np.int32)
    pad = (k // 2,) * 4
    attrs = {"strides": [1, 1], "padding": list(pad), "dilation": [1, 1], "groups": groups, "out_dtype": "int32",
             "out_min": 0, "out_max": 2**31 - 1}
    out = run_rule(rules.selected_rule("qnn.conv2d"), [x], [w, bias], attrs, target_of(tname))
    ref = reference.qnn_conv2d([x, w, bias], attrs)
    assert (ref == 0).any() and (ref > 0).any()  # the ReLU clip is exercised
    assert_exact(out, ref)
    p = QConv2dParams(weight=w, bias=bias, multiplier=np.zeros(O, np.int64), shift=np.ones(O, np.int64),
                      strides=(1, 1), padding=pad, groups=groups, out_dtype="int32", out_min=-7, out_max=10**6)
    attrs.update(out_min=-7, out_max=10**6)
    out = run_rule(rules.selected_rule("qnn.conv2d"), [x], [w, bias], attrs, target_of(tname))
    assert_exact(out, common.ref_conv2d(x, p))


def test_dense_int32_out():
    rng = rng_for("d32")
    x = rand_int(rng, (2, 96), "uint8")
    w = rng.integers(-127, 128, (40, 96)).astype(np.int8)
    bias = rng.integers(-20000, 20000, 40).astype(np.int32)
    attrs = {"out_dtype": "int32", "out_min": -1000, "out_max": 50000}
    out = run_rule(rules.selected_rule("qnn.dense"), [x], [w, bias], attrs, target_of("avx512"))
    assert_exact(out, reference.qnn_dense([x, w, bias], attrs))
    p = QDenseParams(weight=w, bias=bias, multiplier=np.zeros(40, np.int64), shift=np.ones(40, np.int64),
                     out_dtype="int32", out_min=-1000, out_max=50000)
    assert_exact(out, common.ref_dense(x, p))
