"""Whole built-in models through iq.compile on this host: every qnn op takes a scheduled kernel lowering
(no naive reference Relax op left in main) and the output equals reference.run bit for bit."""
from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax

import isquant_tvm as iq
from isquant_tvm.reference import interpreter as reference

MODELS = ["resnet18", "resnet20-cifar", "squeezenet1_1", "mobilenet_v2"]

# Relax ops the reference lowerings emit; none may survive legalization when every kernel rule applies.
REFERENCE_OPS = {"relax.nn.conv2d", "relax.matmul", "relax.nn.max_pool2d", "relax.sum", "relax.quantize",
                 "relax.right_shift", "relax.multiply", "relax.clip"}


KERNEL_NAMES = {"x86_amx_blocked", "x86_amx", "x86_depthwise", "x86_vnni", "x86_avx2", "x86_int32", "dense_i64",
                "glue"}


def _inputs(shape, seed: int) -> list[np.ndarray]:
    x = ((np.random.default_rng(seed).random(shape, dtype=np.float32) - 0.45) / 0.225).astype(np.float32)
    return [x, (x * np.float32(4.0)).astype(np.float32)]  # the second one saturates: exercises every clip


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_builtin_bit_exact_with_kernels(name: str) -> None:
    """The host's default build: on an AMX CPU the `x86` preset adds the AMX features, so this is the AMX
    build (checked as such); elsewhere test_builtin_bit_exact_with_amx_kernels builds AMX by name."""
    from isquant_tvm.util.cpu import target_uses_amx

    model = iq.load(f"builtin:{name}")
    # two synthetic range batches instead of eight: the ranges are not under test, the lowerings are
    result = iq.compile(model, quantize="isquant", progress=False, quant_options={"synthetic_count": 2})
    if target_uses_amx(result.target):
        _check_amx_build(name, result)
    _check_kernels_and_outputs(name, model, result)


def _check_kernels_and_outputs(name: str, model, result) -> None:
    lowerings = {k: v for k, v in result.report["lowerings"].items() if k.startswith("qnn.")}
    # the report names the kernel of every call (kernels/registry.py), never the reference lowering
    assert lowerings and all(k.split(":")[1] in KERNEL_NAMES for k in lowerings), lowerings
    if name == "mobilenet_v2":
        assert any(k.endswith("_depthwise") for k in lowerings), lowerings
    ops: set[str] = set()
    relax.analysis.post_order_visit(result.mod["main"], lambda e: ops.add(e.op.name) if isinstance(e, relax.Call)
                                    and isinstance(e.op, tvm.ir.Op) else None)
    assert not ops & REFERENCE_OPS, ops & REFERENCE_OPS
    runner = result.runner()
    for x in _inputs(model.inputs[0].shape, seed=1):
        y = runner.run({model.inputs[0].name: x})[0]
        ref = reference.run(result.quantized.qnn_mod, [x])[0]
        assert y.dtype == ref.dtype and y.shape == ref.shape
        bad = y != ref
        assert not bad.any(), f"{name}: {bad.sum()} / {bad.size} outputs differ"


# Counts of NCHW16c tensors planned on x86-avx512 (legalize/layout.py): every activation between two kernels
# that take the blocked layout. ResNet-18: all but the input, the pooled features and the logits; the CIFAR
# ResNet-20: its first stage only (its option-A shortcuts, a strided slice and a channel pad, need NCHW, which
# unblocks the adds after them and, through them, their stages); SqueezeNet: every
# conv, pool and concat output, the classifier conv's int32 sums included (the global pool reads blocks);
# MobileNetV2: every conv (depthwise included) and add output before the pool.
BLOCKED_TENSORS = {"resnet18": 29, "resnet20-cifar": 9, "squeezenet1_1": 37, "mobilenet_v2": 62}


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_builtin_bit_exact_with_blocked_layout(name: str) -> None:
    """x86-avx512 (no AMX): activations stay NCHW16c between kernels, and the outputs are unchanged."""
    model = iq.load(f"builtin:{name}")
    result = iq.compile(model, target="x86-avx512", quantize="isquant", progress=False,
                        quant_options={"synthetic_count": 2})
    assert result.report["lowerings"].get("layout:NCHW16c") == BLOCKED_TENSORS[name]
    assert "qnn.conv2d:x86_vnni" in result.report["lowerings"]
    assert not any("amx" in k for k in result.report["lowerings"]), result.report["lowerings"]
    five_d = [b for blk in result.mod["main"].body.blocks for b in blk.bindings
              if len(getattr(b.var.ty, "shape", None) or ()) == 5]
    assert len(five_d) >= BLOCKED_TENSORS[name]
    _check_kernels_and_outputs(name, model, result)


# Intel AMX (tdpbsud/tdpbssd tiles, kernels/x86_amx.py): LLVM calls this host "rocketlake" (no AMX), so the
# target names the features; depthwise, grouped and few-channel 1x1 convs stay on VNNI.
AMX_TARGET = {"kind": "llvm", "mcpu": "rocketlake", "mattr": ["+amx-int8", "+amx-tile"], "num-cores": 2}


# AMX builds chain NCHW16c as well, and merge each fire module's expand convs and concat into one conv
# (legalize/merge_concat_convs.py): SqueezeNet then has 8 concats and 16 conv outputs fewer to plan.
# ResNet-20's later stages stay NCHW (option-A shortcuts) and use the NCHW AMX kernel.
AMX_BLOCKED = {"resnet18": 29, "resnet20-cifar": 9, "squeezenet1_1": 21, "mobilenet_v2": 62}
AMX_MERGED = {"resnet18": 0, "resnet20-cifar": 0, "squeezenet1_1": 8, "mobilenet_v2": 0}


def _check_amx_build(name: str, result) -> None:
    assert any("amx_blk" in gv.name_hint for gv in result.mod.functions), "no blocked AMX kernel was used"
    lowerings = result.report["lowerings"]
    assert lowerings.get("qnn.conv2d:x86_amx_blocked", 0) > 0, lowerings
    assert lowerings.get("layout:NCHW16c") == AMX_BLOCKED[name]
    assert lowerings.get("rewrite:merge_concat_convs", 0) == AMX_MERGED[name]


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_builtin_bit_exact_with_amx_kernels(name: str) -> None:
    from isquant_tvm.util.cpu import host_has_amx, target_uses_amx
    from isquant_tvm.targets.presets import resolve_target

    if not host_has_amx():
        pytest.skip("host CPU has no AMX (amx_tile / amx_int8)")
    if target_uses_amx(resolve_target("x86")):
        pytest.skip("the host's default build is the AMX build: test_builtin_bit_exact_with_kernels checks it")
    model = iq.load(f"builtin:{name}")
    result = iq.compile(model, target=AMX_TARGET, quantize="isquant", progress=False,
                        quant_options={"synthetic_count": 2})
    _check_amx_build(name, result)
    _check_kernels_and_outputs(name, model, result)
