"""Smoke test of scripts/bench.py on the small CIFAR ResNet-20 (one thread, four engines, 2 rounds of 3 runs)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "bench.py"


def test_bench_script_writes_rows(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--models", "resnet20-cifar", "--threads", "1",
         "--engines", "ort-fp32", "ort-int8", "ort-int8-noamx", "isquant-int8", "--repeat", "3", "--rounds", "2",
         "--json", str(out)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "median ms" in proc.stdout
    rows = json.loads(out.read_text())
    assert isinstance(rows, list)
    assert [(r["model"], r["engine"], r["threads"]) for r in rows] == [
        ("resnet20-cifar", e, 1) for e in ("ort-fp32", "ort-int8", "ort-int8-noamx", "isquant-int8")]
    by_engine = {r["engine"]: r for r in rows}
    for r in rows:
        assert "error" not in r, r["error"]
        assert r["median_ms"] > 0
        assert r["repeat"] == 3
        # two interleaved rounds; the row's median is the median of theirs
        assert len(r["rounds_ms"]) == 2
        assert r["median_ms"] == pytest.approx(float(np.median([x["median_ms"] for x in r["rounds_ms"]])))
        assert r["min_ms"] == min(x["min_ms"] for x in r["rounds_ms"])
        assert r["runtime_threads"] == 1
        assert r["loadavg_before"] is None or len(r["loadavg_before"]) == 3
        assert r["ratio_vs_ort_int8"] == pytest.approx(r["median_ms"] / by_engine["ort-int8"]["median_ms"])
        assert r["ratio_vs_ort_fp32"] == pytest.approx(r["median_ms"] / by_engine["ort-fp32"]["median_ms"])
        # every engine computes (approximately) the same logits on the same input
        assert r["cos_vs_ort_fp32"] > 0.98
    assert by_engine["ort-int8"]["ratio_vs_ort_int8"] == pytest.approx(1.0)
    # onnxruntime's MLAS takes the AMX tiles when it is imported on an AMX CPU; the noamx engine is denied them
    from isquant_tvm.util.cpu import host_has_amx

    assert by_engine["ort-int8"]["amx_permission"] is host_has_amx()
    assert by_engine["ort-int8-noamx"]["amx_permission"] is False
    assert by_engine["ort-int8-noamx"]["ratio_vs_ort_int8_noamx"] == pytest.approx(1.0)


def test_bench_script_help_documents_every_flag() -> None:
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import bench
    finally:
        sys.path.remove(str(REPO / "scripts"))
    for action in bench.build_parser()._actions:
        if any(flag.startswith("--_") for flag in action.option_strings):
            continue  # internal worker flags, hidden from --help
        assert action.help, f"{action.option_strings} has no help text"
