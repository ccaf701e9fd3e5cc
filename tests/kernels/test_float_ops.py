"""Scheduled float kernels (kernels/float_ops.py) == TVM's unscheduled default lowering, on one small graph
that covers each path: the dense-conv row tile (3x3, stride 2, odd widths that need the padded tail), the
1x1 GEMM, the depthwise row, a squeeze-excitation gate (1x1 convs on 1x1 pixels: the GEMV), the Gemm matmul and the
generic elementwise / pool schedule; and a head graph for the fused epilogues: every activation the zoo uses
(SiLU, ReLU6, hard-swish, ReLU, sigmoid) and the BatchNorm after a ConvTranspose run inside the conv's
PrimFunc, ConvTranspose 2x2/2 as a GEMM + pixel shuffle.  Four small builds, ~10 s."""

from __future__ import annotations

import numpy as np
import onnx
import tvm

from isquant_tvm import api
from isquant_tvm.build.build import build
from isquant_tvm.frontend.zoo_modern import ModernBuilder
from isquant_tvm.kernels import float_ops
from isquant_tvm.runtime.runner import VMRunner
from isquant_tvm.util import tvm_compat


def _toy() -> tuple[onnx.ModelProto, np.ndarray]:
    x = np.random.default_rng(3).standard_normal((1, 3, 21, 27)).astype(np.float32)
    g = ModernBuilder(11, x)
    y = g.hardswish(g.conv_bn("input", "c1", "b1", 3, 16, 3, stride=2, gain=1.0), "a1")
    y = g.relu(g.conv_bn(y, "dw", "b2", 16, 16, 3, groups=16), "a2")
    y = g.conv_bn(y, "pw", "b3", 16, 24, 1)
    s = g.gap(y, "se.pool")
    s = g.relu(g.conv_bias(s, "se.fc1", 24, 8, 1, demean=False), "se.relu")
    s = g.hardsigmoid(g.conv_bias(s, "se.fc2", 8, 24, 1, demean=False), "se.gate")
    y = g.mul(s, y, "se.mul")
    y = g.maxpool(y, "pool", 2, 2, ceil_mode=True)
    y = g.flatten(g.gap(y, "gap"), "flatten")
    g.gemm(y, "fc", 24, 10, output="logits")
    return g.build("toy", [1, 3, 21, 27], "logits", 10, 1, {}), g.v["logits"]


def _scheduled_and_default(model: onnx.ModelProto, path, seed: int):
    """The model's output from our scheduled float build and from TVM's default one, plus the prepared module."""
    onnx.save(model, str(path))
    imported = api.load(str(path))
    mod = api.prepare(imported)
    target = api.resolve_target("x86")
    x = np.random.default_rng(seed).standard_normal(imported.inputs[0].shape).astype(np.float32)
    meta = {"inputs": [i.to_json() for i in imported.inputs]}
    (ys,) = VMRunner(build(mod, target), tvm.cpu(0), meta).run({"input": x})
    (yp,) = VMRunner(tvm_compat.build(mod, target), tvm.cpu(0), meta).run({"input": x})
    return ys, yp, mod, target


def test_scheduled_float_matches_unscheduled(tmp_path):
    model, ref = _toy()
    ys, yp, mod, target = _scheduled_and_default(model, tmp_path / "toy.onnx", seed=3)
    np.testing.assert_allclose(ys, yp, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ys, ref, rtol=1e-4, atol=1e-4)
    # every conv and the matmul took a scheduled kernel, not TVM's default legalization
    with target:
        lowered = tvm.relax.transform.LegalizeOps(customize_legalize_map=float_ops.legalize_map(target))(mod)
    names = sorted(gv.name_hint for gv, f in lowered.functions.items() if isinstance(f, tvm.tirx.PrimFunc))
    # the two squeeze-excitation convs (1x1 pixels) take the GEMV over output channels
    assert sum(n.startswith("float_conv2d") for n in names) == 3, names
    assert sum(n.startswith("float_gemv") for n in names) == 2, names
    assert any(n.startswith("float_matmul") for n in names) and not any(n.startswith("conv2d") for n in names)


def _toy_head() -> tuple[onnx.ModelProto, np.ndarray]:
    x = np.random.default_rng(5).standard_normal((1, 3, 19, 23)).astype(np.float32)
    g = ModernBuilder(12, x)
    y = g.silu(g.conv_bn("input", "c1", "b1", 3, 16, 3, gain=1.0), "a1")
    y = g.relu6(g.conv_bn(y, "pw", "b2", 16, 24, 1), "a2")
    y = g.hardswish(g.conv_bn(y, "dw", "b3", 24, 24, 3, stride=2, groups=24), "a3")
    y = g.relu(g.bn(g.conv_transpose(y, "up1", 24, 8), "up1.bn", 8), "a4")
    g.sigmoid(g.conv_transpose(y, "up2", 8, 1), "a5", output="maps")
    return g.build("toy_head", [1, 3, 19, 23], "maps", 1, 1, {}), g.v["maps"]


def test_fused_epilogues_and_conv_transpose(tmp_path):
    model, ref = _toy_head()
    ys, yp, mod, target = _scheduled_and_default(model, tmp_path / "toy_head.onnx", seed=5)
    assert ys.shape == (1, 1, 40, 48)
    np.testing.assert_allclose(ys, yp, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ys, ref, rtol=1e-4, atol=1e-4)
    # the epilogues were fused: no element-wise PrimFunc is left between the convs
    with target:
        lowered = tvm.relax.transform.LegalizeOps(customize_legalize_map=float_ops.legalize_map(target))(mod)
        fused = tvm.relax.transform.FuseTIR()(tvm.relax.transform.FuseOps()(
            tvm.relax.transform.AnnotateTIROpPattern()(lowered)))
    names = sorted(gv.name_hint for gv, f in fused.functions.items() if isinstance(f, tvm.tirx.PrimFunc))
    assert len(names) == 5 and all(n.startswith("fused_float_conv2d") for n in names), names
    assert sum("transpose" in n for n in names) == 2, names
