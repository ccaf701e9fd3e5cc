"""Built-in ONNX example models (isquant_tvm.frontend.zoo) and the CIFAR ResNet torch modules (isquant_tvm.frontend.cifar_resnet)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from isquant_tvm.frontend import zoo

ort = pytest.importorskip("onnxruntime")

MODELS = list(zoo.CLASSIC_MODELS)  # the "logits" classifiers; the modern replicas: test_zoo_modern.py

# torchvision / akamaster parameter counts (weights + biases + BN affine; BN running stats excluded)
PARAMS = {"resnet18": 11_689_512, "resnet20-cifar": 269_722, "squeezenet1_1": 1_235_496, "mobilenet_v2": 3_504_872}


def data_root() -> Path:
    """../shared/data beside the repository, or $ISQUANT_DATA."""
    env = os.environ.get("ISQUANT_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


CIFAR = data_root() / "cifar10"
SQUEEZENET = data_root() / "squeezenet1.1" / "squeezenet1_1.onnx"
CHECKPOINTS = {20: CIFAR / "resnet20-12fca82f.th", 56: CIFAR / "resnet56-4bfd9763.th"}
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)

needs_cifar = pytest.mark.skipif(
    not (CIFAR / "test_jpeg_decoded.npz").is_file(), reason=f"CIFAR-10 data not found at {CIFAR} (set ISQUANT_DATA)"
)


def session(model: onnx.ModelProto):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def random_image(name: str, batch: int = 1, seed: int = 123) -> np.ndarray:
    shape = zoo.BUILTIN_MODELS[name].input_nchw(batch)
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def op_counts(model: onnx.ModelProto) -> Counter:
    return Counter(n.op_type for n in model.graph.node)


def attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


# ------------------------------------------------------------------------------------------------------------
# built-in models
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_builtin_runs(name):
    info = zoo.BUILTIN_MODELS[name]
    model = zoo.builtin_onnx(name)
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == 17
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["logits"]
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert tuple(dims) == info.input_nchw(1)

    (y,) = session(model).run(None, {"input": random_image(name)})
    assert y.shape == (1, info.num_classes)
    assert np.isfinite(y).all()
    assert 0.1 < y.std() < 10, y.std()


@pytest.mark.parametrize("name", MODELS)
def test_builtin_deterministic_and_seeded(name):
    fresh = zoo._build_cached.__wrapped__(name, 1, 0).model  # bypass the cache: a genuinely second build
    assert fresh.SerializeToString() == zoo.builtin_onnx(name).SerializeToString()
    other = initializers(zoo.builtin_onnx(name, seed=1))
    base = initializers(fresh)
    assert base.keys() == other.keys()
    first_conv = next(n for n in fresh.graph.node if n.op_type == "Conv").input[1]
    assert not np.array_equal(base[first_conv], other[first_conv])


def test_builtin_returns_copies():
    a = zoo.builtin_onnx("resnet20-cifar")
    a.graph.node.pop()
    a.graph.initializer[0].name = "clobbered"
    b = zoo.builtin_onnx("resnet20-cifar")
    assert b.graph.node[-1].output[0] == "logits"
    assert b.graph.initializer[0].name != "clobbered"


@pytest.mark.parametrize("name", MODELS)
def test_param_counts_match_reference(name):
    inits = initializers(zoo.builtin_onnx(name))
    learnable = sum(
        v.size for k, v in inits.items()
        if v.dtype == np.float32 and not k.endswith((".running_mean", ".running_var")) and not k.startswith("relu6.")
    )
    assert learnable == PARAMS[name]


@pytest.mark.parametrize("name", MODELS)
def test_naming(name):
    model = zoo.builtin_onnx(name)
    names = [n.name for n in model.graph.node]
    assert len(set(names)) == len(names) and all(names)
    for node in model.graph.node:
        if node.op_type in ("Conv", "Gemm"):
            assert node.input[1] == f"{node.name}.weight"
            if len(node.input) > 2:
                assert node.input[2] == f"{node.name}.bias"
        if node.op_type == "BatchNormalization":
            assert list(node.input[1:]) == [f"{node.name}.{s}" for s in ("weight", "bias", "running_mean", "running_var")]


def test_resnet18_structure():
    model = zoo.builtin_onnx("resnet18")
    ops = op_counts(model)
    assert ops["BatchNormalization"] == 20 and ops["Conv"] == 20 and ops["Add"] == 8 and ops["Gemm"] == 1
    nodes = {n.name: n for n in model.graph.node}
    assert attrs(nodes["conv1"])["kernel_shape"] == [7, 7] and attrs(nodes["conv1"])["strides"] == [2, 2]
    assert attrs(nodes["maxpool"])["pads"] == [1, 1, 1, 1]
    assert {"layer2.0.downsample.0", "layer3.0.downsample.1", "layer4.1.bn2", "fc"} <= nodes.keys()
    assert attrs(nodes["layer4.0.downsample.0"])["kernel_shape"] == [1, 1]


def test_resnet20_cifar_structure():
    model = zoo.builtin_onnx("resnet20-cifar")
    ops = op_counts(model)
    assert ops["BatchNormalization"] == 19 and ops["Slice"] == 2 and ops["Pad"] == 2 and ops["Add"] == 9
    inits = initializers(model)
    assert inits["layer2.0.shortcut.slice.steps"].tolist() == [2, 2]
    assert inits["layer3.0.shortcut.pad.pads"].tolist() == [0, 16, 0, 0, 0, 16, 0, 0]


def test_squeezenet_structure():
    model = zoo.builtin_onnx("squeezenet1_1")
    ops = op_counts(model)
    assert ops["BatchNormalization"] == 0 and ops["Conv"] == 26 and ops["Concat"] == 8 and ops["MaxPool"] == 3
    assert all(attrs(n)["ceil_mode"] == 1 for n in model.graph.node if n.op_type == "MaxPool")
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in model.graph.value_info}
    assert shapes["features.2"] == [1, 64, 55, 55]
    assert shapes["features.5"] == [1, 128, 27, 27] and shapes["features.8"] == [1, 256, 13, 13]
    assert shapes["classifier.3"] == [1, 1000, 1, 1]


@pytest.mark.parametrize("size,ceil_mode,pad", [(56, True, 0), (56, False, 0), (9, True, 1), (10, True, 1)])
def test_numpy_maxpool_matches_onnxruntime(size, ceil_mode, pad):
    """At 224 the SqueezeNet pools give the same sizes with or without ceil mode; check the ceil path here."""
    from onnx import TensorProto, helper

    node = helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[pad] * 4,
                            ceil_mode=int(ceil_mode))
    graph = helper.make_graph([node], "pool", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, size, size])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    x = np.random.default_rng(size).standard_normal((1, 2, size, size)).astype(np.float32)
    (y,) = session(model).run(None, {"x": x})
    np.testing.assert_array_equal(zoo._np_maxpool(x, 3, 2, pad, ceil_mode), y)


def test_mobilenet_v2_structure():
    model = zoo.builtin_onnx("mobilenet_v2")
    ops = op_counts(model)
    assert ops["BatchNormalization"] == 52 and ops["Conv"] == 52 and ops["Clip"] == 35 and ops["Add"] == 10
    inits = initializers(model)
    depthwise = [n for n in model.graph.node if n.op_type == "Conv" and attrs(n)["group"] > 1]
    assert len(depthwise) == 17
    for n in depthwise:
        w = inits[n.input[1]]
        assert w.shape[1] == 1 and w.shape[0] == attrs(n)["group"] and w.shape[2:] == (3, 3)
    for n in model.graph.node:
        if n.op_type == "Clip":
            assert inits[n.input[1]] == 0 and inits[n.input[2]] == 6


@pytest.mark.parametrize("name", MODELS)
def test_bn_parameters_nontrivial(name):
    inits = initializers(zoo.builtin_onnx(name))
    bns = [k[: -len(".running_var")] for k in inits if k.endswith(".running_var")]
    for bn in bns:
        gamma, beta = inits[f"{bn}.weight"], inits[f"{bn}.bias"]
        mean, var = inits[f"{bn}.running_mean"], inits[f"{bn}.running_var"]
        assert ((0.5 <= gamma) & (gamma <= 1.5)).all() and ((0.5 <= var) & (var <= 1.5)).all()
        assert np.abs(beta).max() > 0 and np.abs(mean).max() > 0


@pytest.mark.parametrize("name", MODELS)
def test_activations_stay_order_one(name):
    model = zoo.builtin_onnx(name)
    value_info = {v.name: v for v in model.graph.value_info}
    inner = [n.output[0] for n in model.graph.node if n.output[0] != "logits"]
    model.graph.output.extend(value_info[t] for t in inner)
    outs = session(model).run(None, {"input": random_image(name)})
    rms = {t: float(np.sqrt(np.mean(np.square(v)))) for t, v in zip(["logits"] + inner, outs)}
    bad = {t: r for t, r in rms.items() if not 0.1 < r < 10}
    assert not bad, bad


@pytest.mark.parametrize("name", MODELS)
def test_numpy_reference_matches_onnxruntime(name):
    """The builder's own numpy forward pass (used to scale the weights) agrees with onnxruntime."""
    built = zoo._build_cached(name, 1, 0)
    (y,) = session(zoo.builtin_onnx(name)).run(None, {"input": built.probe_input})
    np.testing.assert_allclose(y, built.probe_logits, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", MODELS)
def test_value_info_matches_shape_inference(name):
    model = zoo.builtin_onnx(name, batch=2)
    ours = {v.name: v.type for v in model.graph.value_info}
    del model.graph.value_info[:]
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    assert ours == {v.name: v.type for v in inferred.graph.value_info}


def test_batch_argument():
    name = "resnet20-cifar"
    x = random_image(name, batch=3)
    (y1,) = session(zoo.builtin_onnx(name)).run(None, {"input": x[:1]})
    (y3,) = session(zoo.builtin_onnx(name, batch=3)).run(None, {"input": x})
    dyn = zoo.builtin_onnx(name, batch=None)
    assert dyn.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    (yd,) = session(dyn).run(None, {"input": x})
    assert y3.shape == (3, 10)
    np.testing.assert_allclose(y3[:1], y1, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(yd, y3, rtol=1e-5, atol=1e-5)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError):
            zoo.builtin_onnx(name, batch=bad)


def test_build_speed():
    import time

    for name in MODELS:
        start = time.perf_counter()
        zoo._build_cached.__wrapped__(name, 1, 7)
        assert time.perf_counter() - start < 3.0, name  # < 1 s on an idle machine; slack for loaded CI


# ------------------------------------------------------------------------------------------------------------
# names
# ------------------------------------------------------------------------------------------------------------


def test_parse_builtin():
    assert zoo.parse_builtin("builtin:resnet18") == "resnet18"
    assert zoo.parse_builtin("builtin:resnet20-cifar") == "resnet20-cifar"
    assert zoo.parse_builtin("BUILTIN:MobileNet_V2") == "mobilenet_v2"
    assert zoo.parse_builtin("builtin:squeezenet1.1") == "squeezenet1_1"
    assert zoo.parse_builtin("builtin:resnet20") == "resnet20-cifar"
    assert zoo.parse_builtin("resnet18") == "resnet18"
    for spec in ("builtin:resnet50", "builtin:", "model.onnx", "builtin:resnet18x"):
        with pytest.raises(ValueError) as err:
            zoo.parse_builtin(spec)
        for known in zoo.BUILTIN_MODELS:
            assert known in str(err.value)
    with pytest.raises(TypeError):
        zoo.parse_builtin(None)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        zoo.builtin_onnx("builtin:nope")


def test_is_builtin():
    assert zoo.is_builtin("builtin:resnet18")
    assert zoo.is_builtin("builtin:unknown")  # a builtin spec; parse_builtin reports the unknown name
    assert not zoo.is_builtin("resnet18.onnx")
    assert not zoo.is_builtin("models/builtin_resnet18.onnx")
    assert not zoo.is_builtin(Path("builtin:resnet18"))


def test_model_info():
    assert set(MODELS) == {"resnet18", "resnet20-cifar", "squeezenet1_1", "mobilenet_v2"}
    cifar = zoo.BUILTIN_MODELS["resnet20-cifar"]
    assert cifar.input_nchw(4) == (4, 3, 32, 32) and cifar.num_classes == 10 and cifar.preprocessing == "cifar"
    assert zoo.BUILTIN_MODELS["resnet18"].preprocessing == "imagenet"
    assert all(i.name == k for k, i in zoo.BUILTIN_MODELS.items())


def test_core_modules_import_without_torch():
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from isquant_tvm.frontend import zoo, cifar_resnet\n"
        "zoo.builtin_onnx('builtin:resnet20-cifar')\n"
        "try:\n"
        "    cifar_resnet.cifar_resnet(20)\n"
        "except ImportError as e:\n"
        "    assert 'isquant-tvm[torch]' in str(e), e\n"
        "else:\n"
        "    raise SystemExit('no ImportError')\n"
    )
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


# ------------------------------------------------------------------------------------------------------------
# CIFAR ResNets: torch module vs the provided ONNX exports, on real test images
# ------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cifar_images() -> np.ndarray:
    data = np.load(CIFAR / "test_jpeg_decoded.npz")
    idx = np.linspace(0, len(data["labels"]) - 1, 8).astype(int)  # the file is sorted by class: spread out
    x = data["images"][idx].astype(np.float32) / 255.0
    return np.ascontiguousarray(((x - MEAN) / STD).transpose(0, 3, 1, 2))


@pytest.mark.data
@needs_cifar
@pytest.mark.parametrize("depth", [20, 56])
def test_cifar_checkpoint_matches_onnx(depth, cifar_images):
    torch = pytest.importorskip("torch", reason="torch not installed (pip install 'isquant-tvm[torch]')")
    from isquant_tvm.frontend.cifar_resnet import load_cifar_checkpoint

    model = load_cifar_checkpoint(CHECKPOINTS[depth])
    assert not model.training
    with torch.no_grad():
        y_torch = model(torch.from_numpy(cifar_images)).numpy()
    sess = ort.InferenceSession(str(CIFAR / f"resnet{depth}.onnx"), providers=["CPUExecutionProvider"])
    (y_ort,) = sess.run(None, {"input": cifar_images})
    np.testing.assert_allclose(y_torch, y_ort, rtol=0, atol=1e-4)


@pytest.mark.data
@needs_cifar
def test_cifar_checkpoint_depth_handling():
    pytest.importorskip("torch", reason="torch not installed (pip install 'isquant-tvm[torch]')")
    from isquant_tvm.frontend.cifar_resnet import load_cifar_checkpoint

    model = load_cifar_checkpoint(CHECKPOINTS[20], depth=20)
    assert len(model.layer1) == 3 and model.linear.out_features == 10
    with pytest.raises(ValueError, match="ResNet-20"):
        load_cifar_checkpoint(CHECKPOINTS[20], depth=56)


@pytest.mark.data
@needs_cifar
def test_builtin_resnet20_with_real_weights_matches_torch(cifar_images):
    """The built-in resnet20-cifar graph is the real architecture: fed the checkpoint, it matches torch."""
    torch = pytest.importorskip("torch", reason="torch not installed (pip install 'isquant-tvm[torch]')")
    from isquant_tvm.frontend.cifar_resnet import load_cifar_checkpoint

    module = load_cifar_checkpoint(CHECKPOINTS[20])
    state = {k: v.numpy() for k, v in module.state_dict().items() if not k.endswith("num_batches_tracked")}
    graph = zoo.builtin_onnx("resnet20-cifar", batch=len(cifar_images))
    replaced = set()
    for init in graph.graph.initializer:
        if init.name in state:
            init.CopyFrom(numpy_helper.from_array(state[init.name], init.name))
            replaced.add(init.name)
    assert replaced == set(state)
    (y_ort,) = session(graph).run(None, {"input": cifar_images})
    with torch.no_grad():
        y_torch = module(torch.from_numpy(cifar_images)).numpy()
    np.testing.assert_allclose(y_ort, y_torch, rtol=0, atol=1e-4)


def test_cifar_resnet_untrained():
    torch = pytest.importorskip("torch", reason="torch not installed (pip install 'isquant-tvm[torch]')")
    from isquant_tvm.frontend.cifar_resnet import cifar_resnet, depth_from_state_dict

    model = cifar_resnet(32).eval()
    assert depth_from_state_dict(model.state_dict()) == 32
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError):
        cifar_resnet(21)


@pytest.mark.data
@pytest.mark.skipif(not SQUEEZENET.is_file(), reason=f"SqueezeNet 1.1 not found at {SQUEEZENET} (set ISQUANT_DATA)")
def test_builtin_squeezenet_with_real_weights_matches_reference():
    """The built-in squeezenet1_1 graph, fed the real weights, reproduces the reference ONNX file."""
    real = onnx.load(str(SQUEEZENET))
    weights = {i.name: i for i in real.graph.initializer}
    graph = zoo.builtin_onnx("squeezenet1_1")
    assert {i.name for i in graph.graph.initializer} == set(weights)
    for init in graph.graph.initializer:
        init.CopyFrom(weights[init.name])
    x = random_image("squeezenet1_1", seed=5)
    (y_ref,) = session(real).run(None, {"input": x})
    (y_ours,) = session(graph).run(None, {"input": x})
    np.testing.assert_allclose(y_ours, y_ref, rtol=1e-4, atol=1e-4)
