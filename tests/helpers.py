"""Helpers shared between test modules (one place, instead of test modules importing each other)."""
from __future__ import annotations

import collections
import dataclasses
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tvm
from tvm import relax

from isquant_tvm.kernels import common
from isquant_tvm.kernels.common import QConv2dParams
from isquant_tvm.util import cpu as amx

# --- kernels: targets, random parameters, one-kernel builds (tests/kernels) -------------------------

# Cascade Lake is the AVX-512 VNNI baseline both Intel (Xeon) and AMD (Zen 4) hosts can run.
AVX512 = {"kind": "llvm", "mcpu": "cascadelake", "num-cores": 2}

AVX2 = {"kind": "llvm", "mcpu": "haswell"}

def host_has(feature: str) -> bool:
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return feature in flags

def out_range(out_dtype: str, relu6: bool = False):
    if out_dtype == "uint8":
        return (0, 97) if relu6 else (0, 255)
    if out_dtype == "int8":
        return (-128, 127)
    return (0, 0)

def make_params(rng, O, cpg, k, out_dtype, strides=(1, 1), padding=(1, 1, 1, 1), dilation=(1, 1), groups=1,
                data=None, relu6=False, kw=None):
    kh, kw = (k, k) if kw is None else (k, kw)
    w = rng.integers(-127, 128, (O, cpg, kh, kw)).astype(np.int8)
    bias = rng.integers(-20000, 20000, O).astype(np.int32)
    lo, hi = out_range(out_dtype, relu6)
    p = QConv2dParams(weight=w, bias=bias, multiplier=np.full(O, 2 ** 30, np.int64), shift=np.full(O, 1, np.int64),
                      strides=strides, padding=padding, dilation=dilation, groups=groups, out_dtype="float32",
                      out_min=lo, out_max=hi, dequant_scale=np.ones(O, np.float32))
    # pick shifts so outputs spread over the output range (exercise clipping and rounding both)
    acc = common.ref_conv2d(data, p).astype(np.float64)
    std = np.maximum(acc.std(axis=(0, 2, 3)), 1.0)
    shift = np.clip(np.round(np.log2(std / 40.0)).astype(np.int64) + 31, 1, 62)
    mult = rng.integers(2 ** 30, 2 ** 31, O).astype(np.int64)
    dq = (rng.random(O).astype(np.float32) + 0.5) * np.float32(1e-3)
    return QConv2dParams(weight=w, bias=bias, multiplier=mult, shift=shift, strides=strides, padding=padding,
                         dilation=dilation, groups=groups, out_dtype=out_dtype, out_min=lo, out_max=hi,
                         dequant_scale=dq)

def rand_data(rng, shape, dtype):
    lo, hi = (0, 256) if dtype == "uint8" else (-128, 128)
    return rng.integers(lo, hi, shape).astype(dtype)

def build_single(lower, x_shape, x_dtype, p, target, dense=False):
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(x_shape, x_dtype))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = lower(bb, x, p, target)
            o = bb.emit_output(y)
        bb.emit_func_output(o)
    return relax.build(bb.get(), target=target)

def run(ex, x):
    vm = relax.VirtualMachine(ex, tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x)).numpy()

def assert_exact(out, ref):
    assert out.shape == ref.shape and out.dtype == ref.dtype
    bad = out != ref
    assert not bad.any(), f"{bad.sum()} / {bad.size} mismatches, max |diff| {np.abs(out.astype(np.float64) - ref).max()}"


# LLVM calls this host "rocketlake" (no AMX): AMX must be named explicitly.
AMX_SPR = {"kind": "llvm", "mcpu": "sapphirerapids", "num-cores": 2}
AMX_MATTR = {"kind": "llvm", "mcpu": "rocketlake", "mattr": ["+amx-int8", "+amx-tile"], "num-cores": 2}
NO_AMX = {"kind": "llvm", "mcpu": "cascadelake", "num-cores": 2}

needs_amx = pytest.mark.skipif(not amx.host_has_amx(), reason="host CPU has no AMX (amx_tile / amx_int8)")


def int32_range(p):
    return dataclasses.replace(p, out_min=-2 ** 31, out_max=2 ** 31 - 1) if p.out_dtype == "int32" else p


# (name, N, C, H, W, O, k, strides, padding, dilation, groups)
CONV_CASES = [
    ("3x3", 1, 20, 9, 11, 24, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),
    ("3x3_s2_asym_pad", 1, 16, 13, 10, 32, 3, (2, 2), (0, 1, 1, 0), (1, 1), 1),
    ("1x1", 2, 36, 7, 7, 40, 1, (1, 1), (0, 0, 0, 0), (1, 1), 1),
    ("1x1_s2", 1, 64, 14, 14, 128, 1, (2, 2), (0, 0, 0, 0), (1, 1), 1),
    ("grouped", 1, 12, 8, 9, 20, 3, (1, 1), (1, 1, 1, 1), (1, 1), 2),
    ("depthwise", 1, 24, 10, 9, 24, 3, (1, 1), (1, 1, 1, 1), (1, 1), 24),
    ("depthwise_s2_mult2", 1, 5, 11, 11, 10, 3, (2, 2), (1, 1, 1, 1), (1, 1), 5),
    ("stem_3ch", 1, 3, 23, 21, 16, 7, (2, 2), (3, 3, 3, 3), (1, 1), 1),
    ("dilated", 1, 8, 12, 12, 16, 3, (1, 1), (2, 2, 2, 2), (2, 2), 1),
    ("wide_ow", 1, 8, 5, 37, 17, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),
    ("1x1_s2_padded_dw", 1, 16, 9, 8, 16, 1, (2, 2), (1, 0, 0, 1), (1, 1), 16),
    ("1x1_s3_padded", 1, 20, 11, 10, 48, 1, (3, 2), (1, 1, 0, 1), (1, 1), 1),
    ("dw_dilated_s2", 1, 8, 13, 11, 8, 3, (2, 1), (2, 1, 2, 2), (2, 2), 8),
]

# (name, N, C, H, W, O, k, strides, padding, dilation): remainders in every dimension
AMX_CASES = [
    ("3x3_c20_o24", 1, 20, 9, 11, 24, 3, (1, 1), (1, 1, 1, 1), (1, 1)),  # kc = 20, M and O remainders
    ("3x3_s2_asym_pad", 1, 16, 13, 10, 32, 3, (2, 2), (0, 1, 1, 0), (1, 1)),  # 4 stride phases
    ("1x1_batch2", 2, 36, 7, 7, 40, 1, (1, 1), (0, 0, 0, 0), (1, 1)),
    ("1x1_s2", 1, 64, 14, 14, 128, 1, (2, 2), (0, 0, 0, 0), (1, 1)),  # only phase (0, 0) used
    ("3x3_c96_o72", 1, 96, 12, 12, 72, 3, (1, 1), (1, 1, 1, 1), (1, 1)),  # channels padded 96 -> 128
    ("3x3_c160", 1, 160, 7, 7, 48, 3, (1, 1), (1, 1, 1, 1), (1, 1)),  # 3 chunks, M = 63 -> 64
    ("dilated_folded", 1, 8, 12, 12, 16, 3, (1, 1), (2, 2, 2, 2), (2, 2)),  # 8 ch: columns folded, kc = 24
    ("stem_folded", 1, 3, 23, 21, 16, 7, (2, 2), (3, 3, 3, 3), (1, 1)),  # RGB stem: (c, kw) -> 21 channels
    ("c5_s2x1_folded", 2, 5, 13, 11, 20, 3, (2, 1), (1, 0, 2, 1), (1, 2)),
    ("1x1_c8", 1, 8, 6, 7, 24, 1, (1, 1), (0, 0, 0, 0), (1, 1)),  # kc = 8 (not folded: 1 column)
    ("wide_ow_o17", 1, 32, 5, 37, 17, 3, (1, 1), (1, 1, 1, 1), (1, 1)),  # O % 16 == 1
    ("1x1_s3_padded", 1, 20, 11, 10, 48, 1, (3, 2), (1, 1, 0, 1), (1, 1)),
    ("5x5_s2_dil", 1, 24, 17, 15, 36, 5, (2, 1), (2, 3, 1, 2), (1, 2)),  # stride/dilation phases mixed
    ("tiny_m", 1, 64, 2, 3, 16, 1, (1, 1), (0, 0, 0, 0), (1, 1)),  # M = 6 < 16: 6-row tiles
    # 1x1 with a partial last pixel tile written straight to NCHW (729 = 45*16 + 9): a per-pixel `if` loop
    # here was mis-compiled (wrote the 7 padded pixels into the next channel); squeezenet's classifier
    ("1x1_partial_tile", 1, 128, 27, 27, 32, 1, (1, 1), (0, 0, 0, 0), (1, 1)),
    ("1x1_classifier_o1000", 1, 512, 13, 13, 1000, 1, (1, 1), (0, 0, 0, 0), (1, 1)),
]
AMX_DTYPES = [("uint8", "uint8"), ("int8", "int8"), ("uint8", "float32"), ("int8", "int32"), ("int8", "uint8")]


# --- models ----------------------------------------------------------------------------------------

def tiny_conv_onnx(path: Path, c: int = 16, o: int = 32, hw: int = 8) -> Path:
    """Conv3x3(c->o) + ReLU + Conv1x1(o->o): two int8 conv kernels after quantization."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal((o, c, 3, 3)) * 0.2).astype(np.float32), "w1"),
             numpy_helper.from_array((rng.standard_normal(o) * 0.1).astype(np.float32), "b1"),
             numpy_helper.from_array((rng.standard_normal((o, o, 1, 1)) * 0.2).astype(np.float32), "w2"),
             numpy_helper.from_array((rng.standard_normal(o) * 0.1).astype(np.float32), "b2")]
    nodes = [helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["output"], kernel_shape=[1, 1])]
    graph = helper.make_graph(nodes, "tiny",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, c, hw, hw])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, o, hw, hw])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


def mobilenet_v3_block_onnx(path: Path, hw: int = 16) -> Path:
    """A MobileNetV3-like block with the issue-15 activations (issue 15, quantize/lut.py, elementwise.py):
    conv-BN-HardSwish stem, expand conv-BN-HardSwish, depthwise conv-BN-HardSwish, SE gate (GAP, conv, ReLU,
    conv, HardSigmoid, Mul), projection conv-BN + residual Add, conv-BN-PRelu (per-channel slopes),
    conv-BN-SiLU (x * Sigmoid(x)), GAP, Gemm classifier."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(15)
    inits, nodes = [], []

    def const(name, array):
        inits.append(numpy_helper.from_array(np.asarray(array, np.float32), name))
        return name

    def conv_bn(x, cin, cout, k, name, stride=1, groups=1):
        w = const(f"{name}_w", rng.standard_normal((cout, cin // groups, k, k)) * (1.5 / np.sqrt(cin // groups * k * k)))
        nodes.append(helper.make_node("Conv", [x, w], [f"{name}_c"], kernel_shape=[k, k], strides=[stride] * 2,
                                      pads=[k // 2] * 4, group=groups, name=f"{name}_conv"))
        bn = [const(f"{name}_{p}", v) for p, v in (("g", rng.uniform(0.5, 1.5, cout)), ("b", rng.uniform(-0.3, 0.3, cout)),
                                                   ("m", rng.uniform(-0.2, 0.2, cout)), ("v", rng.uniform(0.5, 2, cout)))]
        nodes.append(helper.make_node("BatchNormalization", [f"{name}_c"] + bn, [f"{name}_bn"], name=f"{name}_bn"))
        return f"{name}_bn"

    def act(op, x, name, *extra, **kw):
        nodes.append(helper.make_node(op, [x, *extra], [name], name=name, **kw))
        return name

    x = act("HardSwish", conv_bn("input", 3, 16, 3, "stem", stride=2), "stem_hs")
    e = act("HardSwish", conv_bn(x, 16, 32, 1, "exp"), "exp_hs")
    d = act("HardSwish", conv_bn(e, 32, 32, 3, "dw", groups=32), "dw_hs")
    p = act("GlobalAveragePool", d, "se_pool")
    f1 = act("Relu", act("Conv", p, "se_fc1", const("se_w1", rng.standard_normal((8, 32, 1, 1)) * 0.3),
                         const("se_b1", rng.uniform(-0.2, 0.2, 8))), "se_relu")
    f2 = act("Conv", f1, "se_fc2", const("se_w2", rng.standard_normal((32, 8, 1, 1)) * 0.5), const("se_b2", rng.uniform(-0.5, 0.5, 32)))
    gate = act("HardSigmoid", f2, "se_hsig", alpha=1.0 / 6, beta=0.5)
    se = act("Mul", gate, "se_mul", d)  # gate first, as torchvision writes it (scale * input)
    r = act("Add", x, "residual", conv_bn(se, 32, 16, 1, "proj"))
    pr = act("PRelu", conv_bn(r, 16, 16, 3, "pre"), "prelu", const("slope", np.linspace(-0.2, 0.3, 16).reshape(16, 1, 1)))
    s = conv_bn(pr, 16, 16, 3, "silu")
    si = act("Mul", s, "silu_mul", act("Sigmoid", s, "silu_sig"))
    g = act("Flatten", act("GlobalAveragePool", si, "pool"), "flat")
    act("Gemm", g, "output", const("fc_w", rng.standard_normal((10, 16)) * 0.3), const("fc_b", rng.uniform(-0.1, 0.1, 10)),
        transB=1)
    graph = helper.make_graph(nodes, "mv3_block",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 2 * hw, 2 * hw])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 10])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


# --- loopback TVM RPC servers (tests/runtime) ---------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def spawn_logged(cmd: list[str], log: Path, tmp: Path) -> subprocess.Popen:
    env = dict(os.environ, TVM_USE_RUNTIME_LIB="1", TMPDIR=str(tmp), PYTHONUNBUFFERED="1")
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)


def wait_bind(proc: subprocess.Popen, log: Path, timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(r"bind to 127\.0\.0\.1:(\d+)", log.read_text(errors="replace"))
        if found:
            return int(found.group(1))
        assert proc.poll() is None, f"server exited: {log.read_text()}"
        time.sleep(0.1)
    raise AssertionError(f"no bind within {timeout}s: {log.read_text()}")


def kill_group(proc: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=10)
            break
        except subprocess.TimeoutExpired:
            continue
    time.sleep(0.2)
    try:  # the group's forked workers outlive the leader for a moment
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class X86Server:
    """A host x86 TVM RPC server on 127.0.0.1 (optionally registered at a tracker)."""

    def __init__(self, tmp: Path, tracker: str | None = None, key: str | None = None) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        self.log = tmp / "server.log"
        cmd = [sys.executable, "-m", "tvm.exec.rpc_server", "--host", "127.0.0.1", "--port", str(free_port()),
               "--port-end", "65000"]
        if tracker:
            cmd += ["--tracker", tracker, "--key", key or "x86", "--custom-addr", "127.0.0.1"]
        self.proc = spawn_logged(cmd, self.log, tmp)
        self.port = wait_bind(self.proc, self.log)
        self.address = f"127.0.0.1:{self.port}"

    def kill(self) -> None:
        kill_group(self.proc)


# aarch64 targets as the kernel tests build them (the presets' rasp5 / rasp4b)
RASP5 = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a76", "mattr": ["+neon", "+dotprod"]}
RASP4B = "raspberry-pi/4b-aarch64"

needs_cross = pytest.mark.skipif(shutil.which("aarch64-linux-gnu-gcc") is None
                                 or shutil.which("aarch64-linux-gnu-objdump") is None,
                                 reason="aarch64 cross toolchain not installed")


def objdump_ops(path, arrangements: bool = False) -> collections.Counter:
    """Instruction counts of a cross-compiled aarch64 library, by mnemonic; with `arrangements` also by
    mnemonic + the first operand's arrangement ("smlal.2d": the int64 requantize, "smlal.8h": int16 taps)."""
    text = subprocess.run(["aarch64-linux-gnu-objdump", "-d", str(path)], capture_output=True, text=True,
                          check=True).stdout
    ops: collections.Counter = collections.Counter()
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) >= 3 and parts[2].strip():
            op = parts[2].split()[0]
            ops[op] += 1
            first = parts[3].split(",")[0] if len(parts) > 3 else ""
            if arrangements and "." in first:
                ops[op + "." + first.split(".")[-1]] += 1
    return ops


def run_requant_epilogue(acc_np: np.ndarray, p: QConv2dParams, consts: dict, **expr_kwargs) -> np.ndarray:
    """geometry.requant_expr over an (R, O) int32 accumulator with per-channel constants `consts`, built for
    the host and run: the epilogue forms' check against fixed_point.requantize."""
    from tvm import te

    from isquant_tvm.kernels import geometry

    R, O = acc_np.shape
    acc = te.placeholder((R, O), "int32", name="acc")
    epi = {k: te.placeholder((O,), str(v.dtype), name=k) for k, v in consts.items()}
    out = te.compute((R, O), lambda r, o: geometry.requant_expr(acc[r, o], o, p, epi, **expr_kwargs), name="out")
    func = te.create_prim_func([acc] + [epi[k] for k in sorted(epi)] + [out])
    lib = tvm.compile(tvm.IRModule({"main": func}), target={"kind": "llvm"})
    y = tvm.runtime.tensor(np.zeros((R, O), p.out_dtype))
    lib["main"](tvm.runtime.tensor(acc_np), *[tvm.runtime.tensor(consts[k]) for k in sorted(consts)], y)
    return y.numpy()
