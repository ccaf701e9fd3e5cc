"""Pre-quantized ONNX models (frontend/prequant.py, frontend/qoperator.py, quantize/prequant.py):
onnxruntime quantize_static models compiled by us with their own scales and zero points, bit-exact
against the numpy reference and within 1 LSB of onnxruntime."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from isquant_tvm.errors import PrequantError
from isquant_tvm.frontend.prequant import detect
from isquant_tvm.reference import interpreter as reference

ort = pytest.importorskip("onnxruntime")
quantization = pytest.importorskip("onnxruntime.quantization")

SHAPE = (1, 3, 16, 16)


def _float_model() -> onnx.ModelProto:
    """conv-relu-conv + shortcut conv, add, relu, max pool, conv (no relu), global pool, flatten, gemm:
    every integer rule of quantize/prequant.py with both ReLU'd (zero point at the bottom) and signed tensors."""
    rng = np.random.default_rng(0)

    def init(name: str, *shape: int, scale: float = 0.3) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    inits = [init("w1", 8, 3, 3, 3), init("b1", 8, scale=0.1), init("w2", 8, 8, 3, 3, scale=0.15),
             init("b2", 8, scale=0.1), init("ws", 8, 3, 1, 1), init("w3", 16, 8, 3, 3, scale=0.15),
             init("b3", 16, scale=0.1), init("wf", 10, 16), init("bf", 10, scale=0.1)]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["x", "ws"], ["cs"], name="shortcut"),
        helper.make_node("Add", ["c2", "cs"], ["a"], name="add"),
        helper.make_node("Relu", ["a"], ["r2"], name="relu2"),
        helper.make_node("MaxPool", ["r2"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p", "w3", "b3"], ["c3"], name="conv3", pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["c3"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], name="fc", transB=1),
    ]
    graph = helper.make_graph(nodes, "small", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(SHAPE))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _inputs(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n,) + SHAPE[1:]).astype(np.float32)


def _quantized(tmp_path: Path, fmt: str, per_channel: bool, act: str) -> Path:
    src = tmp_path / "float.onnx"
    onnx.save(_float_model(), src)
    calib = _inputs(16, seed=1)

    class Reader(quantization.CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{"x": calib[i:i + 1]} for i in range(len(calib))])

        def get_next(self):
            return next(self.it, None)

    dst = tmp_path / f"small.{fmt}.onnx"
    quantization.quantize_static(
        str(src), str(dst), Reader(),
        quant_format=quantization.QuantFormat.QDQ if fmt == "qdq" else quantization.QuantFormat.QOperator,
        per_channel=per_channel, weight_type=quantization.QuantType.QInt8,
        activation_type=quantization.QuantType.QUInt8 if act == "uint8" else quantization.QuantType.QInt8)
    return dst


def _ort(path: Path, x: np.ndarray) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, {"x": x[i:i + 1]})[0] for i in range(len(x))])


def _check(path: Path, expect_format: str) -> None:
    import isquant_tvm as iq

    model = iq.load(str(path))
    assert model.prequantized == expect_format
    result = iq.compile(model, target="x86", progress=False)
    summary = result.report["summary"]
    assert summary["quantization"] == f"model ({expect_format})"
    assert summary["layers"] == 5 and summary["float_fallback_ops"] == 0, result.report["fallbacks"]
    qm = result.quantized
    x = _inputs(24, seed=2)
    runner = result.runner()
    ours = np.concatenate([runner.run({"x": x[i:i + 1]})[0] for i in range(len(x))])
    interp = reference.Interpreter(qm.qnn_mod)
    ref = np.concatenate([interp.run([x[i:i + 1]])[0][0] for i in range(len(x))])
    np.testing.assert_array_equal(ours, ref)  # the TVM build is bit-exact against the qnn definitions
    theirs = _ort(path, x)
    scale = qm.report["tensors"][-1]["scale"]
    lsb = np.abs(np.rint((ours - theirs) / scale))
    assert (lsb <= 1).mean() >= 0.99 and lsb.max() <= 2, lsb.max()
    assert (ours.argmax(1) == theirs.argmax(1)).mean() >= 0.95


@pytest.mark.parametrize("per_channel,act", [(False, "uint8"), (True, "uint8"), (True, "int8")])
def test_qdq_matches_onnxruntime(tmp_path: Path, per_channel: bool, act: str) -> None:
    _check(_quantized(tmp_path, "qdq", per_channel, act), "qdq")


@pytest.mark.parametrize("per_channel", [False, True])
def test_qoperator_matches_onnxruntime(tmp_path: Path, per_channel: bool) -> None:
    path = _quantized(tmp_path, "qoperator", per_channel, "uint8")
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "QLinearConv" in ops
    _check(path, "qoperator")


def test_float_and_weight_only_models_are_not_prequantized(tmp_path: Path) -> None:
    assert detect(_float_model()) is None
    from isquant_tvm.tools.qdq import export_qdq

    export_qdq(_float_model(), tmp_path / "w.qdq.onnx")
    assert detect(onnx.load(str(tmp_path / "w.qdq.onnx"))) is None  # weight-only: ISQuant's ranges apply


def _corrupt(path: Path, tmp_path: Path, what: str) -> tuple[Path, str]:
    proto = onnx.load(str(path))
    inits = {i.name: i for i in proto.graph.initializer}
    nodes = list(proto.graph.node)
    weight_dq = next(n for n in nodes if n.op_type == "DequantizeLinear" and n.input[0] in inits
                     and numpy_helper.to_array(inits[n.input[0]]).ndim == 4)
    act_q = next(n for n in nodes if n.op_type == "QuantizeLinear")
    if what == "scale":
        node = act_q
        inits[node.input[1]].CopyFrom(numpy_helper.from_array(np.asarray(-0.5, np.float32), node.input[1]))
    elif what == "axis":
        node = weight_dq
        w = numpy_helper.to_array(inits[node.input[0]])
        wrong = np.full(w.shape[0] + 1, 0.01, np.float32)
        inits[node.input[1]].CopyFrom(numpy_helper.from_array(wrong, node.input[1]))
        inits[node.input[2]].CopyFrom(numpy_helper.from_array(np.zeros(w.shape[0] + 1, np.int8), node.input[2]))
    elif what == "zp_range":  # 300 fits no 8-bit type: the file stores it as int32
        node = act_q
        inits[node.input[2]].CopyFrom(numpy_helper.from_array(np.asarray(300, np.int32), node.input[2]))
    elif what == "asymmetric":
        node = weight_dq
        zp = numpy_helper.to_array(inits[node.input[2]])
        inits[node.input[2]].CopyFrom(numpy_helper.from_array(np.full_like(zp, 3), node.input[2]))
    else:  # a zero point whose type is not the data's
        node = weight_dq
        zp = numpy_helper.to_array(inits[node.input[2]])
        inits[node.input[2]].CopyFrom(numpy_helper.from_array(zp.astype(np.uint8), node.input[2]))
    out = tmp_path / f"bad-{what}.onnx"
    onnx.save(proto, out)
    return out, node.name


@pytest.mark.parametrize("what,needle", [("scale", "scale must be finite and > 0"),
                                         ("axis", "per-channel scale has"),
                                         ("zp_range", "of type int32: activations must be int8"),
                                         ("asymmetric", "asymmetric weights"),
                                         ("zp_type", "zero point type")])
def test_bad_parameters_name_the_node_and_write_nothing(tmp_path: Path, what: str, needle: str,
                                                        capsys: pytest.CaptureFixture) -> None:
    from isquant_tvm.cli import main

    good = _quantized(tmp_path, "qdq", per_channel=True, act="uint8")
    bad, node = _corrupt(good, tmp_path, what)
    from isquant_tvm import pipeline
    from isquant_tvm.frontend import loader

    with pytest.raises(PrequantError, match=needle) as err:
        pipeline.quantize_prequantized(loader._load_onnx_proto(onnx.load(str(bad)), {}, str(bad)))
    assert node in str(err.value)
    out = tmp_path / "out.so"
    assert main(["compile", str(bad), "--target", "x86", "-o", str(out)]) == 2
    assert needle in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "out.so.json").exists()


def test_torch_qat_export_matches_its_fake_quant(tmp_path: Path) -> None:
    """torch 2.13 has no PT2E (it moved to torchao, not installed): eager-mode QAT (torch.ao.quantization
    prepare_qat with FakeQuantize: uint8 affine activations, int8 symmetric per-channel weights), a few
    training steps, then torch.onnx's QuantizeLinear/DequantizeLinear export. Its float bias and the
    unquantized pooled features (eager QAT leaves them float) exercise the float-bias and int32-sums rules."""
    torch = pytest.importorskip("torch")
    tq = torch.ao.quantization
    import isquant_tvm as iq

    torch.manual_seed(0)

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.quant, self.dequant = tq.QuantStub(), tq.DeQuantStub()
            self.c1, self.r1 = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU()
            self.c2, self.r2 = torch.nn.Conv2d(8, 16, 3, padding=1, stride=2), torch.nn.ReLU()
            self.pool, self.fc = torch.nn.AdaptiveAvgPool2d(1), torch.nn.Linear(16, 10)

        def forward(self, x):
            x = self.r2(self.c2(self.r1(self.c1(self.quant(x)))))
            return self.dequant(self.fc(self.pool(x).flatten(1)))

    net = Net().train()
    tq.fuse_modules_qat(net, [["c1", "r1"], ["c2", "r2"]], inplace=True)
    net.qconfig = tq.QConfig(
        activation=tq.FakeQuantize.with_args(observer=tq.MovingAverageMinMaxObserver, quant_min=0, quant_max=255,
                                             dtype=torch.quint8, qscheme=torch.per_tensor_affine),
        weight=tq.FakeQuantize.with_args(observer=tq.MovingAveragePerChannelMinMaxObserver, quant_min=-128,
                                         quant_max=127, dtype=torch.qint8, qscheme=torch.per_channel_symmetric,
                                         ch_axis=0))
    tq.prepare_qat(net, inplace=True)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    for _ in range(10):
        loss = net(torch.randn(8, 3, 16, 16)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    net.apply(tq.disable_observer)
    path = tmp_path / "qat.onnx"
    torch.onnx.export(net, (torch.randn(1, 3, 16, 16),), str(path), opset_version=13, dynamo=False,
                      input_names=["x"], output_names=["y"])
    result = iq.compile(str(path), target="x86", progress=False)
    assert result.report["summary"]["quantization"] == "model (qdq)"
    assert result.report["summary"]["layers"] == 3 and result.report["summary"]["float_fallback_ops"] == 0
    scale = result.quantized.report["tensors"][-1]["scale"]
    runner, interp = result.runner(), reference.Interpreter(result.quantized.qnn_mod)
    lsb = []
    for x in torch.randn(12, 1, 3, 16, 16):
        with torch.no_grad():
            theirs = net(x).numpy()
        ours = runner.run({"x": x.numpy()})[0]
        np.testing.assert_array_equal(ours, interp.run([x.numpy()])[0][0])
        lsb.append(np.abs(np.rint((ours - theirs) / scale)))
    lsb = np.concatenate(lsb)
    assert (lsb <= 1).mean() >= 0.99 and lsb.max() <= 2
