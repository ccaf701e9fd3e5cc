"""The CLI end to end, through a real subprocess."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "isquant_tvm", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=600)


def test_help_explains_every_flag() -> None:
    import argparse

    from isquant_tvm.cli import build_parser

    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in subparsers.choices.items():
        assert cli(name, "--help").returncode == 0
        for action in sub._actions:
            assert action.help, f"{name} {action.option_strings or action.dest} has no help text"
            for flag in action.option_strings:
                assert flag == flag.lower() and "_" not in flag, f"{flag}: flags are kebab-case"


def test_version_and_targets() -> None:
    assert "isquant-tvm" in cli("--version").stdout
    out = cli("targets").stdout
    for name in ["x86", "x86-avx2", "x86-avx512", "arm", "rasp4b", "rasp5"]:
        assert f"\n{name} " in "\n" + out


def test_compile_run_bench_float(tmp_path: Path) -> None:
    lib = tmp_path / "r20.so"
    proc = cli("compile", "builtin:resnet20-cifar", "--quantize", "none", "-o", str(lib))
    assert proc.returncode == 0, proc.stderr
    assert lib.exists() and Path(str(lib) + ".json").exists()
    inputs = tmp_path / "x.npz"
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype("float32")
    np.savez(inputs, input=x)
    outputs = tmp_path / "y.npz"
    proc = cli("run", str(lib), "--inputs", str(inputs), "--outputs", str(outputs), "--print-top", "3")
    assert proc.returncode == 0, proc.stderr
    assert "top classes" in proc.stdout
    assert np.load(outputs)["output_0"].shape == (1, 10)
    report = tmp_path / "t.json"
    proc = cli("bench", str(lib), "--repeat", "3", "--json", str(report))
    assert proc.returncode == 0, proc.stderr
    assert "median (ms)" in proc.stdout
    assert json.loads(report.read_text())["median_ms"] > 0


def test_inspect_prints_ops_and_ir() -> None:
    proc = cli("inspect", "builtin:squeezenet1_1", "--print-ir")
    assert proc.returncode == 0, proc.stderr
    assert "nn.conv2d" in proc.stdout and "concat" in proc.stdout and "def main" in proc.stdout


@pytest.mark.parametrize(
    "args,needle",
    [
        (["compile", "missing.onnx", "-o", "{out}"], "no such file"),
        (["compile", "{junk}", "-o", "{out}"], "not a valid ONNX model"),
        (["compile", "builtin:resnet20-cifar", "--target", "nosuch", "-o", "{out}"], "unknown target"),
        (["compile", "builtin:resnet20-cifar", "--input-shapes", "input:[1,3", "-o", "{out}"], "--input-shapes"),
    ],
)
def test_bad_input_is_one_clear_line(tmp_path: Path, args: list[str], needle: str) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00\x01 definitely not protobuf")
    out = tmp_path / "out" / "m.so"
    proc = cli(*[a.format(out=out, junk=junk) for a in args])
    assert proc.returncode != 0
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and needle in err[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists() and not Path(str(out) + ".json").exists()


def test_verbose_shows_traceback(tmp_path: Path) -> None:
    proc = cli("-v", "compile", "missing.onnx", "-o", str(tmp_path / "m.so"))
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_int8_compile_quantize_and_eval(tmp_path: Path) -> None:
    lib, report = tmp_path / "r20.so", tmp_path / "report.json"
    proc = cli("compile", "builtin:resnet20-cifar", "-o", str(lib), "--report", str(report))
    assert proc.returncode == 0, proc.stderr
    assert "quantized: layers=20" in proc.stdout
    rep = json.loads(report.read_text())
    assert rep["summary"]["float_fallback_ops"] == 0 and len(rep["layers"]) == 20
    meta = json.loads(Path(str(lib) + ".json").read_text())
    assert meta["quantization"]["granularity"] == "per-tensor" and meta["quantization"]["layers"]

    qdq = tmp_path / "r20.qdq.onnx"
    proc = cli("quantize", "builtin:resnet20-cifar", "-o", str(qdq))
    assert proc.returncode == 0, proc.stderr
    import onnx

    assert any(n.op_type == "DequantizeLinear" for n in onnx.load(str(qdq)).graph.node)
    # issue 17's round trip, as a user does it: compile of our own export = compile of the float model
    assert "int8 activations" in proc.stdout
    lib_qdq = tmp_path / "r20_qdq.so"
    proc = cli("compile", str(qdq), "-o", str(lib_qdq))
    assert proc.returncode == 0, proc.stderr
    assert "quantization=model (qdq)" in proc.stdout and "float_fallback_ops=0" in proc.stdout
    from isquant_tvm import api
    from .tools.test_qdq_full import _cifar

    try:
        images = _cifar(4)
    except pytest.skip.Exception:  # no shared data: the integer graphs must agree on any input
        images = np.random.default_rng(1).normal(0, 1, (4, 3, 32, 32)).astype(np.float32)
    for i in range(len(images)):
        a, b = (api.run(str(p), {"input": images[i:i + 1]})[0][0] for p in (lib, lib_qdq))
        assert np.array_equal(a, b), f"CIFAR image {i}: compile(float) and compile(quantize -o) differ"

    rng = np.random.default_rng(0)
    data = tmp_path / "set.npz"
    np.savez(data, images=rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8), labels=rng.integers(0, 10, 12))
    out = tmp_path / "eval.json"
    proc = cli("eval", "builtin:resnet20-cifar", "--data", str(data), "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    for key in ("model", "images", "fp32_top1", "int8_top1", "top1_drop", "top1_agreement"):
        assert key in result
    assert result["images"] == 12 and out.with_suffix(".png").stat().st_size > 1000
