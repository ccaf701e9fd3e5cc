"""Import paths agree with the frameworks they import from."""
from __future__ import annotations

import numpy as np
import pytest

import isquant_tvm as iq
from isquant_tvm.errors import ModelLoadError
from isquant_tvm.frontend.loader import parse_input_shapes, random_inputs

from ..conftest import onnxruntime_outputs

BUILTINS = ["resnet18", "resnet20-cifar", "squeezenet1_1", "mobilenet_v2"]


@pytest.mark.parametrize("name", BUILTINS)
def test_onnx_import_matches_onnxruntime(name: str, float_build) -> None:
    result = float_build(name)
    model = iq.load(f"builtin:{name}")
    feed = random_inputs(model.inputs, seed=1)
    ours = result.runner().run(feed)[0]
    ref = onnxruntime_outputs(model.onnx_model, feed)[0]
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4)


def test_builtin_batchnorm_is_folded() -> None:
    counts, _ = iq.inspect("builtin:resnet18")
    assert counts["nn.conv2d"] == 20
    assert not any("batch_norm" in op for op in counts)
    raw, _ = iq.inspect("builtin:resnet18", folded=False)
    assert raw.get("nn.batch_norm", 0) == 20


def _torch_models():
    torch = pytest.importorskip("torch")
    from isquant_tvm.frontend.cifar_resnet import cifar_resnet

    torch.manual_seed(0)
    resnet = cifar_resnet(20)
    for m in resnet.modules():
        if isinstance(m, torch.nn.BatchNorm2d):  # non-trivial statistics so folding matters
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    mobile_block = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1, bias=False), torch.nn.BatchNorm2d(16), torch.nn.ReLU6(),
        torch.nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False), torch.nn.BatchNorm2d(16), torch.nn.ReLU6(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 10),
    )
    for m in mobile_block.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_var.uniform_(0.5, 1.5)
            m.running_mean.uniform_(-0.2, 0.2)
    return {"resnet20": resnet.eval(), "mobile_block": mobile_block.eval()}


@pytest.mark.parametrize("which", ["resnet20", "mobile_block"])
def test_torch_import_matches_torch(which: str) -> None:
    torch = pytest.importorskip("torch")
    module = _torch_models()[which]
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    model = iq.load(module, example_inputs=(x,))
    counts, _ = iq.inspect(model)
    assert "nn.batch_norm" not in counts, "BatchNorm must be folded into the convs"
    result = iq.compile(model, target="x86", quantize="none", progress=False)
    ours = result.runner().run({model.inputs[0].name: x.numpy()})[0]
    with torch.no_grad():
        ref = module(x).numpy()
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4)


def test_pt2_file_round_trip(tmp_path) -> None:
    torch = pytest.importorskip("torch")
    module = _torch_models()["mobile_block"]
    x = torch.randn(1, 3, 32, 32)
    path = tmp_path / "block.pt2"
    torch.export.save(torch.export.export(module, (x,)), str(path))
    model = iq.load(path)
    assert model.inputs[0].shape == (1, 3, 32, 32)


def test_parse_input_shapes() -> None:
    assert parse_input_shapes("input:[1,3,224,224]") == {"input": [1, 3, 224, 224]}
    assert parse_input_shapes("a:[1, 3] b:[2]") == {"a": [1, 3], "b": [2]}
    for bad in ["input[1,3]", "input:[1,x]", "input:[]", "input:[0,3]"]:
        with pytest.raises(ModelLoadError):
            parse_input_shapes(bad)


def test_input_shapes_override_and_unknown_name() -> None:
    model = iq.load("builtin:resnet20-cifar", input_shapes="input:[2,3,32,32]")
    assert model.inputs[0].shape == (2, 3, 32, 32)
    with pytest.raises(ModelLoadError, match="not model inputs"):
        iq.load("builtin:resnet20-cifar", input_shapes="data:[1,3,32,32]")


def test_bad_model_files(tmp_path) -> None:
    with pytest.raises(ModelLoadError, match="no such file"):
        iq.load(tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_text("not a model")
    with pytest.raises(ModelLoadError, match="not a valid ONNX model"):
        iq.load(junk)
    with pytest.raises(ModelLoadError, match="known"):
        iq.load("builtin:alexnet")
