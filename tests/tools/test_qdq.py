"""Tests for isquant_tvm.tools.qdq: weight-only QDQ ONNX export with ISQuant rounding, run in onnxruntime."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from isquant_tvm.errors import IsquantError, ModelLoadError
from isquant_tvm.tools.qdq import QDQ_METADATA_KEY, export_qdq
from isquant_tvm.frontend.zoo import BUILTIN_MODELS, CLASSIC_MODELS, builtin_onnx

from ..conftest import onnxruntime_outputs, shared_data_dir

ort = pytest.importorskip("onnxruntime")

# Cosine of the logits, 8-bit per-tensor SQuant vs the float model (measured 0.9987-0.9999 for
# the ResNets and SqueezeNet). MobileNetV2's depthwise convs, once BN is folded, have per-channel
# ranges that differ up to ~18x inside one layer, so one scale per tensor costs it more
# (measured 0.979-0.987, RTN the same); per-channel scales bring it back above 0.99 (0.995).
PER_TENSOR_MIN_COS = {"resnet18": 0.99, "resnet20-cifar": 0.99, "squeezenet1_1": 0.99, "mobilenet_v2": 0.97}


def _images(name: str, n: int = 4, seed: int = 0) -> np.ndarray:
    """Uniform [0, 1] pixels normalised with the model's mean / std (ImageNet's)."""
    info = BUILTIN_MODELS[name]
    x = np.random.default_rng(seed).uniform(0.0, 1.0, (n, *info.input_shape))
    mean = np.asarray(info.mean)[:, None, None]
    std = np.asarray(info.std)[:, None, None]
    return ((x - mean) / std).astype(np.float32)


@lru_cache(maxsize=None)
def _model(name: str) -> onnx.ModelProto:
    return builtin_onnx(name, batch=None)


@lru_cache(maxsize=None)
def _float_logits(name: str) -> np.ndarray:
    return onnxruntime_outputs(_model(name), {"input": _images(name)})[0]


def _run_file(path: Path, x: np.ndarray) -> np.ndarray:
    return onnxruntime_outputs(onnx.load(str(path)), {"input": x})[0]


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _check_qdq_structure(proto: onnx.ModelProto, qmax: int = 127) -> None:
    """Every Conv/Gemm weight comes from DequantizeLinear over an int8 initializer; no BN after Conv."""
    inits = {t.name: t for t in proto.graph.initializer}
    producer = {o: n for n in proto.graph.node for o in n.output}
    layers = [n for n in proto.graph.node if n.op_type in ("Conv", "Gemm")]
    assert layers
    for node in layers:
        dq = producer.get(node.input[1])
        assert dq is not None and dq.op_type == "DequantizeLinear", node.name
        q = inits[dq.input[0]]
        assert q.data_type == TensorProto.INT8, node.name
        arr = numpy_helper.to_array(q)
        assert arr.min() >= -qmax and arr.max() <= qmax, node.name
        assert numpy_helper.to_array(inits[dq.input[1]]).dtype == np.float32
        assert not np.any(numpy_helper.to_array(inits[dq.input[2]]))  # zero point 0
        if len(node.input) > 2 and node.input[2]:
            assert inits[node.input[2]].data_type == TensorProto.FLOAT  # bias stays float
    for node in proto.graph.node:
        if node.op_type == "BatchNormalization":
            src = producer.get(node.input[0])
            assert src is None or src.op_type != "Conv", f"BN {node.name} still follows a Conv"
    # No float weight of a quantised layer is left behind.
    assert not [t.name for t in proto.graph.initializer
                if t.data_type == TensorProto.FLOAT and len(t.dims) == 4]


# ----------------------------------------------------------------------------------------------
# Built-in models in onnxruntime
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CLASSIC_MODELS))
def test_builtin_qdq_matches_float(name: str, tmp_path: Path) -> None:
    model = _model(name)
    before = model.SerializeToString()
    x = _images(name)
    ref = _float_logits(name)
    cos = {}
    for rounding in ("squant", "rtn"):
        out = tmp_path / f"{name}.{rounding}.onnx"
        report = export_qdq(model, out, rounding=rounding, source=f"builtin:{name}")
        proto = onnx.load(str(out))
        onnx.checker.check_model(proto)
        _check_qdq_structure(proto)
        assert not [n for n in proto.graph.node if n.op_type == "BatchNormalization"]
        n_bn = sum(1 for n in model.graph.node if n.op_type == "BatchNormalization")
        assert report["summary"]["bn_folded"] == n_bn
        assert report["summary"]["layers"] == sum(1 for n in model.graph.node if n.op_type in ("Conv", "Gemm"))
        assert report["summary"]["sha256"] and report["summary"]["file_bytes"] == out.stat().st_size
        lay = report["layers"][0]
        assert {"name", "shape", "scale", "metrics"} <= set(lay) and "mse" in lay["metrics"]
        y = _run_file(out, x)
        assert y.shape == ref.shape
        cos[rounding] = _cosine(ref, y)
    print(f"\n{name}: logits cosine 8-bit per-tensor squant {np.round(cos['squant'], 5).tolist()} "
          f"rtn {np.round(cos['rtn'], 5).tolist()}")
    assert cos["squant"].min() >= PER_TENSOR_MIN_COS[name], cos
    assert model.SerializeToString() == before  # the caller's model is not modified
    if name == "mobilenet_v2":
        out = tmp_path / "mbv2.pc.onnx"
        export_qdq(model, out, granularity="per-channel")
        cos_pc = _cosine(ref, _run_file(out, x))
        print(f"{name}: logits cosine 8-bit per-channel squant {np.round(cos_pc, 5).tolist()}")
        assert cos_pc.min() >= 0.99


def test_deterministic(tmp_path: Path) -> None:
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    ra = export_qdq(_model("resnet20-cifar"), a)
    rb = export_qdq(builtin_onnx("resnet20-cifar", batch=None), b)
    assert a.read_bytes() == b.read_bytes()
    assert ra["summary"]["sha256"] == rb["summary"]["sha256"]


def test_per_channel(tmp_path: Path) -> None:
    name = "resnet20-cifar"
    out = tmp_path / "pc.onnx"
    report = export_qdq(_model(name), out, granularity="per-channel")
    proto = onnx.load(str(out))
    _check_qdq_structure(proto)
    assert report["opset"] >= 13
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    for dq in (n for n in proto.graph.node if n.op_type == "DequantizeLinear"):
        axis = next(a.i for a in dq.attribute if a.name == "axis")
        assert axis == 0  # Conv, and Gemm with transB=1
        assert inits[dq.input[1]].shape == (inits[dq.input[0]].shape[0],)
    for lay in report["layers"]:
        assert isinstance(lay["scale"], list) and len(lay["scale"]) == lay["shape"][0]
    cos = _cosine(_float_logits(name), _run_file(out, _images(name)))
    assert cos.min() >= 0.999, cos


def test_rtn_differs_from_squant(tmp_path: Path) -> None:
    reports, ints = {}, {}
    for rounding in ("squant", "rtn"):
        out = tmp_path / f"{rounding}.onnx"
        reports[rounding] = export_qdq(_model("resnet20-cifar"), out, rounding=rounding)
        proto = onnx.load(str(out))
        ints[rounding] = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer
                          if t.data_type == TensorProto.INT8 and t.dims}
    assert ints["squant"].keys() == ints["rtn"].keys()
    assert any(not np.array_equal(ints["squant"][k], ints["rtn"][k]) for k in ints["squant"])
    assert reports["squant"]["summary"]["flipped"] > 0 and reports["rtn"]["summary"]["flipped"] == 0
    # Same scales: only the rounding differs.
    assert [lay["scale"] for lay in reports["squant"]["layers"]] == [lay["scale"] for lay in reports["rtn"]["layers"]]


def test_low_bits_in_int8_container(tmp_path: Path) -> None:
    out = tmp_path / "w4.onnx"
    report = export_qdq(_model("resnet20-cifar"), out, weight_bits=4)
    proto = onnx.load(str(out))
    _check_qdq_structure(proto, qmax=7)
    assert report["qmax"] == 7
    meta = {p.key: p.value for p in proto.metadata_props}
    assert '"weight_bits": 4' in meta[QDQ_METADATA_KEY]


# ----------------------------------------------------------------------------------------------
# Gemm / MatMul layouts and opset raising, on a small hand-built graph
# ----------------------------------------------------------------------------------------------


def _dense_model(opset: int) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    rng = np.random.default_rng(1)
    w_gemm = rng.standard_normal((8, 6)).astype(np.float32)  # K×N, transB=0
    w_mm = rng.standard_normal((6, 5)).astype(np.float32)  # K×N for X·B
    w_conv = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    bn = [rng.uniform(0.5, 1.5, 8), rng.normal(0, 0.1, 8), rng.normal(0, 0.1, 8), rng.uniform(0.5, 1.5, 8)]
    inits = [numpy_helper.from_array(w_gemm, "w_gemm"), numpy_helper.from_array(np.zeros(6, np.float32), "b_gemm"),
             numpy_helper.from_array(w_mm, "w_mm"), numpy_helper.from_array(w_conv, "w_conv")]
    inits += [numpy_helper.from_array(v.astype(np.float32), f"bn_{k}") for k, v in zip("sbmv", bn)]
    nodes = [
        helper.make_node("Conv", ["x", "w_conv"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "bn_s", "bn_b", "bn_m", "bn_v"], ["bn"], name="bn"),
        helper.make_node("GlobalAveragePool", ["bn"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "w_gemm", "b_gemm"], ["g"], name="gemm"),
        helper.make_node("MatMul", ["g", "w_mm"], ["y"], name="mm"),
    ]
    graph = helper.make_graph(nodes, "dense", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 6
    return model, {"x": np.random.default_rng(2).standard_normal((2, 3, 8, 8)).astype(np.float32)}


@pytest.mark.parametrize("granularity", ["per-tensor", "per-channel"])
def test_gemm_matmul_layouts_and_opset(granularity: str, tmp_path: Path) -> None:
    model, feed = _dense_model(opset=11)
    onnx.checker.check_model(model)
    out = tmp_path / "dense.onnx"
    report = export_qdq(model, out, granularity=granularity)
    proto = onnx.load(str(out))
    opset = next(o.version for o in proto.opset_import if o.domain == "")
    assert opset == (13 if granularity == "per-channel" else 11)
    assert [lay["name"] for lay in report["layers"]] == ["conv", "gemm", "mm"]
    assert report["layers"][0]["bn_folded"] == "bn"
    dq = {n.output[0]: n for n in proto.graph.node if n.op_type == "DequantizeLinear"}
    nodes = {n.name: n for n in proto.graph.node}
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    for layer, axis, shape in (("conv", 0, (8, 3, 3, 3)), ("gemm", 1, (8, 6)), ("mm", 1, (6, 5))):
        d = dq[nodes[layer].input[1]]
        assert inits[d.input[0]].dtype == np.int8 and inits[d.input[0]].shape == shape
        axes = [a.i for a in d.attribute if a.name == "axis"]
        if granularity == "per-channel":
            assert axes == [axis] and inits[d.input[1]].shape == (shape[axis],)
        else:
            assert inits[d.input[1]].shape == ()
    ref = onnxruntime_outputs(model, feed)[0]
    y = onnxruntime_outputs(proto, feed)[0]
    assert _cosine(ref, y).min() >= 0.999
    assert not [n for n in proto.graph.node if n.op_type == "BatchNormalization"]
    assert not {"w_gemm", "w_mm", "w_conv", "bn_s", "bn_v"} & set(inits)


def test_constant_node_shared_weight_and_old_opset(tmp_path: Path) -> None:
    """Constant-node weights, a weight shared by two convs, initializers listed as graph inputs
    (IR 3) and opset 9 (raised to 10 for DequantizeLinear)."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Constant", [], ["wc"], value=numpy_helper.from_array(w, "wcv")),
             helper.make_node("Conv", ["x", "wc"], ["a"], name="c1", pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["x", "ws"], ["b"], name="c2", pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["x", "ws"], ["c"], name="c3", pads=[1, 1, 1, 1]),
             helper.make_node("Sum", ["a", "b", "c"], ["y"])]
    graph = helper.make_graph(
        nodes, "edge", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 5, 5]),
                        helper.make_tensor_value_info("ws", TensorProto.FLOAT, [4, 3, 3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 5, 5])], [numpy_helper.from_array(w * 2, "ws")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)])
    model.ir_version = 3
    out = tmp_path / "edge.onnx"
    report = export_qdq(model, out)
    proto = onnx.load(str(out))
    assert report["opset"] == 10 and proto.ir_version >= 5
    assert [n.op_type for n in proto.graph.node].count("DequantizeLinear") == 2
    assert "Constant" not in [n.op_type for n in proto.graph.node]
    assert [i.name for i in proto.graph.input] == ["x"]
    assert [lay["shared_with"] for lay in report["layers"]] == [None, None, "c2"]
    assert report["summary"]["weights"] == 2 * w.size
    feed = {"x": rng.standard_normal((1, 3, 5, 5)).astype(np.float32)}
    assert _cosine(onnxruntime_outputs(model, feed)[0], onnxruntime_outputs(proto, feed)[0]).min() >= 0.999


# ----------------------------------------------------------------------------------------------
# Errors and atomicity
# ----------------------------------------------------------------------------------------------


def _no_leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_bad_settings_write_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out.onnx"
    for kwargs in ({"weight_bits": 9}, {"weight_bits": 1}, {"weight_bits": True},
                   {"rounding": "nearest"}, {"granularity": "per-row"}):
        with pytest.raises(IsquantError):
            export_qdq(_model("resnet20-cifar"), out, **kwargs)
    assert _no_leftovers(tmp_path) == []


def test_nothing_to_quantize(tmp_path: Path) -> None:
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    out = tmp_path / "out.onnx"
    with pytest.raises(IsquantError, match="no Conv, Gemm or MatMul"):
        export_qdq(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), out, source="relu.onnx")
    assert _no_leftovers(tmp_path) == []


def test_unreadable_model(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00not an onnx model at all\xff" * 10)
    with pytest.raises(ModelLoadError, match="bad.onnx"):
        export_qdq(bad, tmp_path / "out.onnx")
    with pytest.raises(ModelLoadError, match="no such"):
        export_qdq(tmp_path / "missing.onnx", tmp_path / "out.onnx")
    assert _no_leftovers(tmp_path) == ["bad.onnx"]


def test_failing_export_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out.onnx"

    def boom(*args, **kwargs):
        raise OSError(28, "No space left on device")

    # A failure inside the write itself: the temporary file is removed, nothing appears.
    import isquant_tvm.util.fileio as export_mod

    real_replace = export_mod.os.replace
    monkeypatch.setattr(export_mod.os, "replace", boom)
    with pytest.raises(IsquantError, match="cannot write"):
        export_qdq(_model("resnet20-cifar"), out)
    assert _no_leftovers(tmp_path) == []
    monkeypatch.setattr(export_mod.os, "replace", real_replace)

    # A failure before the write keeps an existing file intact.
    out.write_bytes(b"previous")
    monkeypatch.setattr(onnx.checker, "check_model", lambda *a, **k: (_ for _ in ()).throw(
        onnx.checker.ValidationError("broken")))
    with pytest.raises(IsquantError, match="onnx.checker"):
        export_qdq(_model("resnet20-cifar"), out)
    assert out.read_bytes() == b"previous" and _no_leftovers(tmp_path) == ["out.onnx"]


# ----------------------------------------------------------------------------------------------
# Real SqueezeNet 1.1 on real ImageNet images (skipped without ../shared/data)
# ----------------------------------------------------------------------------------------------


@pytest.mark.data
def test_real_squeezenet_top1_agreement(tmp_path: Path) -> None:
    data = shared_data_dir()
    model_path = data / "squeezenet1.1" / "squeezenet1_1.onnx"
    images = data / "imagenet-val-1300"
    if not model_path.exists() or not (images / "labels.txt").exists():
        pytest.skip(f"real SqueezeNet 1.1 / ImageNet images not found under {data}")
    from isquant_tvm.ranges.datasets import load_labelled

    labelled = load_labelled(images, (1, 3, 224, 224))  # center-crop 224, /255, ImageNet mean/std
    idx = labelled.subset(16)
    x = np.stack([labelled.image(int(i)) for i in idx])
    out = tmp_path / "squeezenet_qdq.onnx"
    report = export_qdq(model_path, out)
    assert report["summary"]["layers"] == 26
    ref = onnxruntime_outputs(onnx.load(str(model_path)), {"input": x})[0]
    y = _run_file(out, x)
    agree = int((ref.argmax(1) == y.argmax(1)).sum())
    print(f"\nreal squeezenet1.1, 8-bit per-tensor squant: top-1 agreement {agree}/16, "
          f"cosine min {_cosine(ref, y).min():.5f}, float top-1 correct "
          f"{int((ref.argmax(1) == labelled.labels[idx]).sum())}/16, QDQ {int((y.argmax(1) == labelled.labels[idx]).sum())}/16")
    assert agree >= 14
