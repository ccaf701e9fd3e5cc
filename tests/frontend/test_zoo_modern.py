"""The modern built-in replicas (isquant_tvm.frontend.zoo_modern): structure, three independent evaluations
agreeing (the builder's numpy pass, onnxruntime, torch functional ops) and one TVM float build.

Cheap by design (~15 s on 2 cores, most of it the one P-Net TVM build): per-model x target compile sweeps
are scripts/check_models.py."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from isquant_tvm.frontend import zoo, zoo_modern

ort = pytest.importorskip("onnxruntime")

MODELS = list(zoo_modern.MODERN_MODELS)
# torchvision's parameter counts (weights + biases + BN affine; running stats excluded)
TORCHVISION_PARAMS = {"mobilenet_v3_small": 2_542_856, "mobilenet_v3_large": 5_483_032}
# ultralytics' yolov8n summary: "3157200 parameters, 3157184 gradients" (the 16 fixed DFL bins need none)
YOLOV8N_PARAMS = 3_157_184


def _session(model: onnx.ModelProto):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _inits(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def _params(model: onnx.ModelProto) -> int:
    """Learned parameters: every ``.weight`` / ``.bias`` but the DFL's fixed bins (a buffer in ultralytics)."""
    return sum(int(np.prod(i.dims)) for i in model.graph.initializer
               if i.name.endswith((".weight", ".bias")) and not i.name.endswith("dfl.conv.weight"))


@pytest.mark.parametrize("name", MODELS)
def test_builds_checks_and_matches_numpy(name):
    """Registered as builtin:NAME; valid ONNX; onnxruntime == the builder's independent numpy pass."""
    info = zoo.BUILTIN_MODELS[zoo.parse_builtin(f"builtin:{name}")]
    model = zoo.builtin_onnx(f"builtin:{name}")
    onnx.checker.check_model(model, full_check=True)
    built = zoo._build_cached(name, 1, 0)
    assert [o.name for o in model.graph.output] == list(built.probe_outputs)
    assert tuple(d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim) == info.input_nchw(1)
    outs = _session(model).run(None, {"input": built.probe_input})
    for y, (out, ref) in zip(outs, built.probe_outputs.items()):
        assert y.shape == ref.shape, out
        np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(ref).max())))
    if name in ("mtcnn_pnet", "mobilenet_v3_small"):  # deterministic: a genuinely second build, same bytes
        assert zoo._build_cached.__wrapped__(name, 1, 0).model.SerializeToString() == model.SerializeToString()


def test_architecture_facts():
    """The op mix each replica exists for, and parameter counts equal to the originals'."""
    ops = {n: Counter(nd.op_type for nd in zoo.builtin_onnx(n).graph.node) for n in MODELS}
    small, large = ops["mobilenet_v3_small"], ops["mobilenet_v3_large"]
    assert small["HardSigmoid"] == 9 and large["HardSigmoid"] == 8  # SE gates
    assert (small["Conv"], small["BatchNormalization"], small["HardSwish"]) == (52, 34, 19)
    assert (large["Conv"], large["BatchNormalization"], large["HardSwish"]) == (62, 46, 21)
    for n, count in TORCHVISION_PARAMS.items():
        assert _params(zoo.builtin_onnx(n)) == count, n
    yolo = ops["yolov8n"]
    assert yolo["Split"] == 8 + 2 and yolo["Resize"] == 2 and yolo["Softmax"] == 1 and yolo["MaxPool"] == 3
    assert yolo["Sigmoid"] == yolo["BatchNormalization"] + 1  # SiLU = x * Sigmoid(x), plus the scores
    assert _params(zoo.builtin_onnx("yolov8n")) == YOLOV8N_PARAMS
    assert ops["dbnet_mv3"]["ConvTranspose"] == 2 and ops["dbnet_mv3"]["Resize"] == 6
    assert ops["mtcnn_pnet"]["PRelu"] == 3 and "BatchNormalization" not in ops["mtcnn_pnet"]
    built = zoo._build_cached("yolov8n", 1, 0)
    (y,) = built.probe_outputs.values()
    assert y.shape == (1, 84, 2100)
    scores = y[:, 4:]
    assert 0.0 < scores.min() < 0.01 and scores.max() > 0.5  # a real dynamic range for the head tests


@pytest.mark.parametrize("name", MODELS)
def test_activations_well_scaled(name):
    """Every intermediate stays O(1) on a normalised random image (boxes in pixels excepted)."""
    model = zoo.builtin_onnx(name)
    inner = [v for v in model.graph.value_info]
    model.graph.output.extend(inner)
    x = np.random.default_rng(5).standard_normal(zoo.BUILTIN_MODELS[name].input_nchw(1)).astype(np.float32)
    outs = _session(model).run(None, {"input": x})
    names = [o.name for o in model.graph.output]
    rms = {t: float(np.sqrt(np.mean(np.square(v, dtype=np.float64)))) for t, v in zip(names, outs)}
    # the Detect head after its last convs carries the priors (class bias -4) and pixel-space boxes
    head = re.compile(r"model\.22\.(?!cv[23]\.\d\.[01]\.)|output0")
    bad = {t: r for t, r in rms.items() if not 0.02 < r < 5 and not head.match(t)}
    assert not bad, bad


# ------------------------------------------------------------------------------------------------------------
# torch functional evaluation of the exported graphs: a third, independent implementation of each op
# ------------------------------------------------------------------------------------------------------------


def _torch_run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    env = {k: torch.from_numpy(np.array(v)) for k, v in _inits(model).items()}
    env["input"] = torch.from_numpy(x)
    for nd in model.graph.node:
        a = {at.name: onnx.helper.get_attribute_value(at) for at in nd.attribute}
        i = [env[n] if n else None for n in nd.input]
        op = nd.op_type
        if op == "Conv":
            p = a.get("pads", [0] * 4)
            y = F.conv2d(i[0], i[1], i[2] if len(i) > 2 else None, a.get("strides", 1), p[:2], 1, a.get("group", 1))
        elif op == "ConvTranspose":
            y = F.conv_transpose2d(i[0], i[1], i[2] if len(i) > 2 else None, a["strides"])
        elif op == "BatchNormalization":
            y = F.batch_norm(i[0], i[3], i[4], i[1], i[2], False, 0.0, a["epsilon"])
        elif op in ("Relu", "Sigmoid"):
            y = {"Relu": torch.relu, "Sigmoid": torch.sigmoid}[op](i[0])
        elif op == "HardSwish":
            y = F.hardswish(i[0])
        elif op == "HardSigmoid":
            assert abs(a["alpha"] - 1 / 6) < 1e-6 and a["beta"] == 0.5
            y = F.hardsigmoid(i[0])
        elif op == "PRelu":
            y = F.prelu(i[0], i[1].reshape(-1))
        elif op in ("Add", "Sub", "Mul", "Div"):
            y = {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": torch.div}[op](i[0], i[1])
        elif op == "GlobalAveragePool":
            y = F.adaptive_avg_pool2d(i[0], 1)
        elif op == "Flatten":
            y = torch.flatten(i[0], 1)
        elif op == "Gemm":
            y = F.linear(i[0], i[1], i[2])
        elif op == "MaxPool":
            y = F.max_pool2d(i[0], a["kernel_shape"], a["strides"], a["pads"][0], ceil_mode=bool(a["ceil_mode"]))
        elif op == "Concat":
            y = torch.cat(i, a["axis"])
        elif op == "Split":
            for n, part in zip(nd.output, torch.split(i[0], i[1].tolist(), a["axis"])):
                env[n] = part
            continue
        elif op == "Resize":
            y = F.interpolate(i[0], scale_factor=float(i[2][2]), mode="nearest")
        elif op == "Reshape":
            y = i[0].reshape([i[0].shape[k] if d == 0 else int(d) for k, d in enumerate(i[1].tolist())])
        elif op == "Transpose":
            y = i[0].permute(a["perm"])
        elif op == "Softmax":
            y = torch.softmax(i[0], a["axis"])
        else:
            raise AssertionError(f"no torch rule for {op}")
        env[nd.output[0]] = y
    return [env[o.name].numpy() for o in model.graph.output]


@pytest.mark.parametrize("name", MODELS)
def test_onnx_matches_torch(name):
    built = zoo._build_cached(name, 1, 0)
    model = zoo.builtin_onnx(name)
    ys = _torch_run(model, built.probe_input)
    outs = _session(model).run(None, {"input": built.probe_input})
    for y, o, out in zip(ys, outs, built.probe_outputs):
        np.testing.assert_allclose(o, y, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(y).max())), err_msg=out)


# ------------------------------------------------------------------------------------------------------------
# TVM float build (one model: the sweep over models and targets is scripts/check_models.py)
# ------------------------------------------------------------------------------------------------------------


def test_pnet_tvm_float_matches_numpy(float_build):
    built = zoo._build_cached("mtcnn_pnet", 1, 0)
    outs = float_build("mtcnn_pnet").runner().run({"input": built.probe_input})
    assert len(outs) == 2
    for y, (out, ref) in zip(outs, built.probe_outputs.items()):
        np.testing.assert_allclose(np.asarray(y), ref, rtol=1e-4, atol=1e-4, err_msg=out)
