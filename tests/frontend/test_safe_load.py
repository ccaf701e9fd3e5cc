"""A pickle payload in a .pt2 program or a checkpoint never runs (issue 19, finding 1)."""
from __future__ import annotations

import io
import json
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from isquant_tvm.errors import ModelLoadError  # noqa: E402
from isquant_tvm.frontend.safe_load import check_expression  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


class _Payload:
    """Unpickling this runs a shell command that creates `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _clean_pt2(path: Path) -> Path:
    class Block(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return torch.relu(self.conv(x))

    program = torch.export.export(Block().eval(), (torch.randn(1, 3, 8, 8),))
    torch.export.save(program, str(path))
    return path


def _rewrite(src: Path, dst: Path, replace: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info, replace.get(info.filename, zin.read(info)))
    return dst


def _evil_variants(tmp_path: Path, marker: Path) -> dict[str, Path]:
    clean = _clean_pt2(tmp_path / "clean.pt2")
    with zipfile.ZipFile(clean) as z:
        names = z.namelist()
        prefix = names[0].split("/")[0]
        weights_config = json.loads(z.read(f"{prefix}/data/weights/model_weights_config.json"))
        model_json = z.read(f"{prefix}/models/model.json").decode()
    raw = pickle.dumps(_Payload(marker))
    buf = io.BytesIO()
    torch.save({"x": _Payload(marker)}, buf)
    variants = {
        # torch retries the sample inputs with weights_only=False after the safe load fails
        "sample_inputs": _rewrite(clean, tmp_path / "evil_inputs.pt2", {f"{prefix}/data/sample_inputs/model.pt": buf.getvalue()}),
        "sample_inputs_raw": _rewrite(clean, tmp_path / "evil_inputs_raw.pt2", {f"{prefix}/data/sample_inputs/model.pt": raw}),
    }
    # a weight marked use_pickle is loaded with weights_only=False outright
    first = next(iter(weights_config["config"]))
    weights_config["config"][first]["use_pickle"] = True
    path_name = weights_config["config"][first]["path_name"]
    variants["pickled_weight"] = _rewrite(clean, tmp_path / "evil_weight.pt2", {
        f"{prefix}/data/weights/model_weights_config.json": json.dumps(weights_config).encode(),
        f"{prefix}/data/weights/{path_name}": buf.getvalue(),
    })
    # sympy.sympify evaluates shape expressions: an expression that is code
    evil_expr = f"__import__('os').system('touch {marker}')"
    doc = json.loads(model_json)
    doc.setdefault("graph_module", {}).setdefault("graph", {})["sym_int_values"] = {
        "s0": {"as_expr": {"expr_str": evil_expr, "hint": None}}}
    variants["sympy_expr"] = _rewrite(clean, tmp_path / "evil_expr.pt2", {f"{prefix}/models/model.json": json.dumps(doc).encode()})
    return variants


def test_clean_pt2_still_loads(tmp_path) -> None:
    import isquant_tvm as iq

    model = iq.load(_clean_pt2(tmp_path / "m.pt2"))
    assert [i.shape for i in model.inputs] == [(1, 3, 8, 8)]


def test_pt2_payloads_never_run(tmp_path) -> None:
    import isquant_tvm as iq

    marker = tmp_path / "pwned"
    for name, path in _evil_variants(tmp_path, marker).items():
        with pytest.raises(ModelLoadError) as err:
            iq.load(path)
        assert not marker.exists(), f"{name}: the payload ran"
        assert str(path) in str(err.value), name
        assert "\n" not in str(err.value)
        if name != "sample_inputs_raw" or "refused" in str(err.value):
            assert "ONNX" in str(err.value), (name, str(err.value))


def test_pt2_payload_cli_exit_2_one_line(tmp_path) -> None:
    marker = tmp_path / "pwned"
    path = _evil_variants(tmp_path, marker)["sample_inputs"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "isquant_tvm", "inspect", str(path)], capture_output=True,
                          text=True, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert not marker.exists()
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "refused to load" in lines[0] and str(path) in lines[0], proc.stderr


def test_checkpoint_payload_never_runs(tmp_path) -> None:
    from isquant_tvm.frontend.cifar_resnet import load_cifar_checkpoint

    marker = tmp_path / "pwned"
    path = tmp_path / "evil.th"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(16, 3, 3, 3)}, "note": _Payload(marker)}, str(path))
    with pytest.raises(ModelLoadError, match="refused to load"):
        load_cifar_checkpoint(path)
    assert not marker.exists()


def test_shared_checkpoints_load_weights_only(shared_data) -> None:
    from isquant_tvm.frontend.cifar_resnet import load_cifar_checkpoint

    path = shared_data / "cifar10" / "resnet20-12fca82f.th"
    if not path.exists():
        pytest.skip(f"{path} absent")
    model = load_cifar_checkpoint(path)
    assert sum(p.numel() for p in model.parameters()) > 200_000


@pytest.mark.parametrize("expr,ok", [("s0", True), ("s0 + 2*s1", True), ("FloorDiv(s0, 2)", True),
                                     ("__import__('os')", False), ("s0.__class__", False), ("exec(s0)", False),
                                     ("bytes((95, 95))", False)])
def test_expression_allowlist(expr: str, ok: bool) -> None:
    assert check_expression(expr) is ok
