"""The full QDQ export round-trips (issue 17): `quantize -o model.qdq.onnx` then `compile model.qdq.onnx` gives the
integer graph `compile` builds from the float model, constant for constant, and the same outputs bit for bit;
onnxruntime runs the export too. Real TVM builds, real CIFAR-10 images (skipped without the shared data)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from isquant_tvm import api
from isquant_tvm.frontend.zoo import BUILTIN_MODELS
from isquant_tvm.pipeline import quantize_model, quantize_prequantized
from isquant_tvm.qnn import ops as qnn_ops
from isquant_tvm.tools.qdq_full import export_qdq_full
from isquant_tvm.util import tvm_compat

from ..conftest import onnxruntime_outputs, shared_data_dir

MODEL = "builtin:resnet20-cifar"
N_IMAGES = 8


def _cifar(n: int = N_IMAGES) -> np.ndarray:
    path = shared_data_dir() / "cifar10" / "test_jpeg_decoded.npz"
    if not path.is_file():
        pytest.skip(f"no CIFAR-10 test set at {path} (set ISQUANT_DATA)")
    info = BUILTIN_MODELS["resnet20-cifar"]
    images = np.load(path)["images"][:: 10000 // n][:n].astype(np.float32) / 255.0  # spread over the set
    mean, std = np.asarray(info.mean, np.float32), np.asarray(info.std, np.float32)
    return ((images - mean) / std).transpose(0, 3, 1, 2).astype(np.float32)


def _qnn_calls(mod: Any) -> list[tuple[str, list[np.ndarray], dict[str, Any]]]:
    """Every qnn op of `main` in order: its name, its constant arguments, and the attributes that shape the integers."""
    keys = ("out_dtype", "out_min", "out_max", "shift", "strides", "padding", "dilation", "groups", "scale",
            "keepdims", "pool_size")
    calls = []
    for b in tvm_compat.bindings(mod["main"]):
        op = qnn_ops.qnn_op_of(mod, b.value)
        if op:
            attrs = qnn_ops.attrs_of(mod[b.value.op])
            calls.append((op, [tvm_compat.const_value(a) for a in b.value.args if tvm_compat.is_const(a)],
                          {k: str(attrs.get(k)) for k in keys}))
    return calls


def _assert_same_graph(ours: Any, theirs: Any) -> None:
    a, b = _qnn_calls(ours), _qnn_calls(theirs)
    assert [c[0] for c in a] == [c[0] for c in b]
    for i, ((op, ca, aa), (_, cb, ab)) in enumerate(zip(a, b)):
        assert aa == ab, f"op {i} {op}: attributes {aa} != {ab}"
        assert len(ca) == len(cb), f"op {i} {op}: {len(ca)} vs {len(cb)} constants"
        for j, (x, y) in enumerate(zip(ca, cb)):
            assert x.dtype == y.dtype and x.shape == y.shape, f"op {i} {op} constant {j}: {x.dtype}{x.shape} vs {y.dtype}{y.shape}"
            assert np.array_equal(x, y), f"op {i} {op} constant {j} differs: {x.reshape(-1)[:4]} vs {y.reshape(-1)[:4]}"


@pytest.fixture(scope="module")
def model() -> Any:
    return api.load(MODEL)


@pytest.fixture(scope="module")
def float_compile(model: Any) -> Any:
    """compile of the float model (x86), in process: its qnn graph and its build."""
    return api.compile(model, "x86", progress=False)


@pytest.fixture(scope="module")
def roundtrip(model: Any, float_compile: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The export of that very compile, and compile of the export (x86). The CLI's own `quantize` then `compile`
    (an independent pipeline run) is tests/test_cli.py::test_int8_compile_quantize_and_eval."""
    path = tmp_path_factory.mktemp("roundtrip") / "r20.qdq.onnx"
    report = export_qdq_full(model, path, quantized=float_compile.quantized)
    return {"qdq": path, "report": report, "compiled": api.compile(str(path), "x86", progress=False)}


def test_roundtrip_same_graph_and_outputs(float_compile: Any, roundtrip: dict[str, Any]) -> None:
    """compile(float) and compile(export): identical qnn constants (int8 weights, int32 biases, multipliers, shifts,
    dequantize scales, clamps), outputs equal bit for bit on real CIFAR-10 images."""
    meta = onnx.load(str(roundtrip["qdq"])).metadata_props
    assert any(p.key == "isquant.qdq" and '"activations": "int8"' in p.value for p in meta)
    again = roundtrip["compiled"]
    assert again.report["summary"]["quantization"] == "model (qdq)"
    assert again.report["summary"]["float_fallback_ops"] == 0
    _assert_same_graph(float_compile.quantized.qnn_mod, again.quantized.qnn_mod)
    x = _cifar()
    ours, theirs = float_compile.runner(), again.runner()
    for i in range(len(x)):
        a, b = ours.run({"input": x[i:i + 1]})[0], theirs.run({"input": x[i:i + 1]})[0]
        assert a.dtype == np.float32 and np.array_equal(a, b), f"image {i}"


def test_onnxruntime_runs_the_export(float_compile: Any, roundtrip: dict[str, Any]) -> None:
    """onnxruntime computes the QDQ graph its own way (float32 multipliers, half-even rounding, float ops between
    DequantizeLinear and QuantizeLinear): close to ours, not equal."""
    x = _cifar()
    theirs = onnxruntime_outputs(onnx.load(str(roundtrip["qdq"])), {"input": x[:1]})[0]
    assert theirs.shape == (1, 10)
    runner = float_compile.runner()
    ours = np.concatenate([runner.run({"input": x[i:i + 1]})[0] for i in range(len(x))])
    theirs = np.concatenate([onnxruntime_outputs(onnx.load(str(roundtrip["qdq"])), {"input": x[i:i + 1]})[0]
                             for i in range(len(x))])
    cos = (ours * theirs).sum(1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(theirs, axis=1))
    assert cos.min() > 0.99, cos
    assert (ours.argmax(1) == theirs.argmax(1)).mean() >= 0.75


def test_same_integer_graph_per_channel(model: Any, tmp_path: Path) -> None:
    """Per-channel weights (DequantizeLinear axis 0 / 1): the same qnn ops with identical int8 weights, int32
    biases, multipliers, shifts, dequantize scales and clamps."""
    granularity = "per-channel"
    out = tmp_path / "m.qdq.onnx"
    float_q = quantize_model(model, api.prepare(model), None, granularity=granularity, progress=False,
                             only_reference=True)
    report = export_qdq_full(model, out, {"granularity": granularity}, quantized=float_q)
    assert report["pipeline"]["float_fallback_ops"] == 0
    assert any(n.op_type == "DequantizeLinear" and n.attribute for n in onnx.load(str(out)).graph.node)
    export_q = quantize_prequantized(api.load(str(out)), None, only_reference=True)
    assert export_q.report["summary"]["float_fallback_ops"] == 0
    assert export_q.report["isquant_export"]["granularity"] == granularity
    _assert_same_graph(float_q.qnn_mod, export_q.qnn_mod)


def test_no_qdq_form_is_refused_and_cli_falls_back(tmp_path: Path) -> None:
    """A lookup-table activation (HardSigmoid) has no faithful QDQ form: the export names it; the CLI's default
    writes the weight-only file and says why."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32), "w")
    w2 = numpy_helper.from_array(rng.normal(0, 0.3, (4, 8, 3, 3)).astype(np.float32), "w2")
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
                           helper.make_node("HardSigmoid", ["c"], ["h"], name="hs"),
                           helper.make_node("Conv", ["h", "w2"], ["y"], pads=[1, 1, 1, 1], name="conv2")], "lut",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], initializer=[w, w2])
    path = tmp_path / "lut.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    out = tmp_path / "w.qdq.onnx"
    proc = subprocess.run([sys.executable, "-m", "isquant_tvm", "quantize", str(path), "-o", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "weight-only" in proc.stderr and "qnn.lut" in proc.stderr and "no faithful QDQ form" in proc.stderr
    assert not any(n.op_type == "QuantizeLinear" for n in onnx.load(str(out)).graph.node)
