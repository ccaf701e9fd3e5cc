"""Whole models: the TVM integer graph equals the numpy reference bit for bit; real data accuracy."""
from __future__ import annotations

import numpy as np
import pytest

import isquant_tvm as iq
from isquant_tvm.ranges import batchnorm as bn_ranges
from isquant_tvm.reference import interpreter as reference
from isquant_tvm.tools.evaluate import evaluate


def _image_like(shape: tuple[int, ...], seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).random(shape, dtype=np.float32)
    return ((x - 0.45) / 0.225).astype(np.float32)


@pytest.mark.parametrize("name", ["resnet20-cifar", "squeezenet1_1"])
def test_builtin_int8_bit_exact_with_reference(name: str) -> None:
    model = iq.load(f"builtin:{name}")
    result = iq.compile(model, quantize="isquant", progress=False)
    assert result.report["summary"]["float_fallback_ops"] == 0
    assert any(k.startswith("qnn.conv2d:") for k in result.report["lowerings"])
    runner = result.runner()
    for seed in range(2):
        x = _image_like(model.inputs[0].shape, seed)
        np.testing.assert_array_equal(runner.run({"input": x})[0], reference.run(result.quantized.qnn_mod, [x])[0])


def test_report_names_rule_for_every_tensor() -> None:
    result = iq.compile("builtin:resnet20-cifar", quantize="isquant", progress=False)
    rules = {t["rule"] for t in result.report["tensors"]}
    assert "BatchNorm statistics" in rules  # the built-in keeps BN: ranges come from it
    assert bn_ranges.FORWARD_RULE in rules  # ... and its residual streams from the matched forward
    assert any(r.startswith("synthetic") or r == "input range" for r in rules)
    layer = result.report["layers"][1]
    for key in ("mse", "flipped", "scale"):
        assert key in layer["weight"]
    assert result.metadata["quantization"]["layers"][0]["weight_scale"] > 0


def test_rtn_and_squant_differ_and_per_channel_builds() -> None:
    a = iq.compile("builtin:resnet20-cifar", quantize="isquant", progress=False)
    b = iq.compile("builtin:resnet20-cifar", quantize="rtn", progress=False)
    x = _image_like((1, 3, 32, 32), 3)
    assert not np.array_equal(a.runner().run({"input": x})[0], b.runner().run({"input": x})[0])
    c = iq.compile("builtin:resnet20-cifar", quantize="isquant", progress=False,
                   quant_options={"granularity": "per-channel"})
    np.testing.assert_array_equal(c.runner().run({"input": x})[0], reference.run(c.quantized.qnn_mod, [x])[0])


# --- real trained weights, real labelled images (subsets; the full runs are in scripts/accuracy.py) ---

def _cifar_model(shared_data, depth: int):
    torch = pytest.importorskip("torch")
    import onnx

    from isquant_tvm.frontend.cifar_resnet import load_cifar_checkpoint

    checkpoint = next((shared_data / "cifar10").glob(f"resnet{depth}-*.th"))
    model = iq.load(load_cifar_checkpoint(checkpoint), example_inputs=(torch.zeros(1, 3, 32, 32),))
    model.onnx_model = onnx.load(str(shared_data / "cifar10" / f"resnet{depth}.onnx"))  # fp32 side in onnxruntime
    return model


def test_resnet20_real_data_bn_ranges(shared_data) -> None:
    model = _cifar_model(shared_data, 20)
    r = evaluate(model, shared_data / "cifar10" / "test_jpeg_decoded.npz", limit=1000, progress=False, sqnr_samples=1)
    # 1000 images: ±0.5 pt of noise around the full-set figures (drop ~0.1, agreement ~98.4 %)
    assert r["top1_drop"] <= 1.0 and r["top1_agreement"] >= 97.0, r
    assert r["quantization"]["activation_ranges"].startswith("bn+")


def test_resnet56_residual_ranges_track_real_data(shared_data) -> None:
    """The residual streams of a deep trained ResNet are where BN moment propagation failed (its
    last stream came out 0.38x of the real min-max, costing 0.6 pt of top-1 agreement); the
    BatchNorm-matched forward must land near what 64 real images give, without seeing them."""
    from isquant_tvm.api import prepare
    from isquant_tvm.pipeline import quantize_model

    model = _cifar_model(shared_data, 56)
    folded = prepare(model)
    free = quantize_model(model, folded, progress=False, only_reference=True).report["tensors"]
    real = quantize_model(model, folded, progress=False, only_reference=True, calibration_method="minmax",
                          calibration=str(shared_data / "cifar10" / "test_jpeg_decoded.npz")).report["tensors"]
    ratios = [f["alpha"] / r["alpha"] for f, r in zip(free, real) if f["rule"] == bn_ranges.FORWARD_RULE]
    assert len(ratios) == 27  # 27 blocks, each add+ReLU one tensor
    assert 0.7 <= min(ratios) and max(ratios) <= 1.5, np.round(ratios, 2)
    r = evaluate(model, shared_data / "cifar10" / "test_jpeg_decoded.npz", limit=1000, progress=False, sqnr_samples=0)
    # 1000 images: ±0.5 pt of noise around the full-set figures (drop 0.06, agreement 98.22 %)
    assert r["top1_drop"] <= 1.0 and r["top1_agreement"] >= 97.5, r


def test_squeezenet_real_data_data_free(shared_data) -> None:
    model = iq.load(shared_data / "squeezenet1.1" / "squeezenet1_1.onnx")
    r = evaluate(model, shared_data / "imagenet-val-1300", limit=200, progress=False, sqnr_samples=1)
    assert r["top1_drop"] <= 3.0 and r["top1_agreement"] >= 92.0, r
    assert 60.0 <= r["fp32_top1"] <= 80.0  # the subset's float accuracy (README: 69.85 % on all 1,300)
    assert all(row["sqnr_db"] > 10 for row in r["layers_sqnr"])


def test_real_squeezenet_bit_exact(shared_data) -> None:
    from isquant_tvm.ranges.datasets import load_labelled

    model = iq.load(shared_data / "squeezenet1.1" / "squeezenet1_1.onnx")
    result = iq.compile(model, quantize="isquant", progress=False)
    data = load_labelled(shared_data / "imagenet-val-1300", model.inputs[0].shape)
    x = data.image(0)[None]
    np.testing.assert_array_equal(result.runner().run({"input": x})[0], reference.run(result.quantized.qnn_mod, [x])[0])
