"""`tune` + `compile --tuning-records`: MetaSchedule on the VNNI kernels of a tiny two-conv model.

One tuning run (the heavier of the two tasks, 2 trials, forced to keep what it tuned) is shared by the
tests; they then check that the tuned kernel really is a MetaSchedule schedule on our VNNI intrinsic, that
only it is replaced, that a build with it is bit-exact with the untuned build, and that a task whose tuned
record measured slower is not applied."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ..helpers import tiny_conv_onnx

TARGET = "x86-avx512"  # VNNI kernels everywhere (the host preset may send convs to AMX)


def _host_has_vnni() -> bool:
    from isquant_tvm.util import tvm_compat
    from isquant_tvm.targets.presets import resolve_target

    host = resolve_target("x86")
    return tvm_compat.has_feature(host, "avx512vnni") and tvm_compat.has_feature(host, "avx512bw")


pytestmark = pytest.mark.skipif(not _host_has_vnni(), reason="needs an AVX-512 VNNI host to run the kernels")


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    from isquant_tvm import api

    root = tmp_path_factory.mktemp("tune")
    model = tiny_conv_onnx(root / "tiny.onnx")
    records = root / "records"
    # min_speedup=0 keeps every task whatever it measured, so the substitution path is always exercised.
    saved = os.environ.get("TVM_NUM_THREADS")  # tune sets it for the measuring processes
    try:
        report = api.tune(str(model), target=TARGET, out_dir=records, trials_per_task=2, max_tasks=1, number=2,
                          repeat=3, min_speedup=0.0, progress=False, num_threads=1)
    finally:
        if saved is None:
            os.environ.pop("TVM_NUM_THREADS", None)
        else:
            os.environ["TVM_NUM_THREADS"] = saved
    return model, records, report


def _compile(model, records=None):
    from isquant_tvm import api

    return api.compile(str(model), target=TARGET, progress=False, tuning_records=records)


def _outputs(result) -> np.ndarray:
    x = np.random.default_rng(1).standard_normal((1, 16, 8, 8)).astype("float32")
    return result.runner().run({"input": x})[0]


def test_tune_writes_database_and_summary(tuned) -> None:
    _, records, report = tuned
    assert (records / "database_workload.json").stat().st_size > 0
    assert (records / "database_tuning_record.json").stat().st_size > 0
    doc = json.loads((records / "summary.json").read_text())
    assert [t["name"] for t in doc["tasks"]] == [t.name for t in report.tasks]
    assert len(report.tasks) == 1 and report.tasks[0].trials == 2
    assert doc["settings"]["threads"] == "1"  # the thread count the timings hold for
    for t in doc["tasks"]:
        assert t["default_ms"] > 0 and t["tuned_ms"] > 0 and t["kept"] is True
        assert t["speedup"] == pytest.approx(t["default_ms"] / t["tuned_ms"])
    table = report.table()
    for word in ("default ms", "tuned ms", "speed-up", "kept", report.tasks[0].name):
        assert word in table


def test_tuned_kernels_are_vnni_and_bit_exact(tuned) -> None:
    import tvm_ffi

    model, records, report = tuned
    base = _compile(model)
    tuned_build = _compile(model, records)
    name = report.tasks[0].name
    assert tuned_build.metadata["tuning"]["applied"] == [name]
    kernels = [gv.name_hint for gv, f in base.mod.functions_items() if gv.name_hint.startswith("qconv2d")]
    assert len(kernels) == 2
    for kernel in kernels:
        same = tvm_ffi.structural_equal(base.mod[kernel], tuned_build.mod[kernel])
        assert same == (kernel != name), kernel  # only the tuned task is replaced
    assert "vpdpbusd" in tuned_build.mod[name].script(), "the tuned kernel does not use the VNNI intrinsic"
    np.testing.assert_array_equal(_outputs(base), _outputs(tuned_build))


def test_slower_task_is_not_applied(tuned, tmp_path: Path) -> None:
    import tvm_ffi

    from isquant_tvm.tuning.tune import keep_decision

    assert keep_decision(1.0, 1.5, 1.0) == (False, "not faster")
    assert keep_decision(1.0, 0.99, 1.02)[0] is False
    assert keep_decision(1.0, 0.5, 1.02) == (True, "")
    assert keep_decision(None, 0.5, 1.0)[0] is False
    model, records, report = tuned
    # The same records, with the task measured slower than the hand schedule (so not kept).
    copy = tmp_path / "records"
    shutil.copytree(records, copy)
    doc = json.loads((copy / "summary.json").read_text())
    slow = doc["tasks"][0]
    slow["tuned_ms"], slow["default_ms"] = 2.0, 1.0
    slow["kept"], slow["note"] = keep_decision(1.0, 2.0, 1.02)
    (copy / "summary.json").write_text(json.dumps(doc))
    base = _compile(model)
    result = _compile(model, copy)
    assert result.metadata["tuning"]["applied"] == []
    for gv, func in base.mod.functions_items():
        if gv.name_hint != "main":  # (main refers to its own module's GlobalVars)
            assert tvm_ffi.structural_equal(result.mod[gv.name_hint], func), gv.name_hint


def test_whole_model_is_timed_with_and_without_the_kept_kernels(tuned) -> None:
    _, records, report = tuned
    doc = json.loads((records / "summary.json").read_text())
    w = doc["whole_model"]
    assert w["checked"] is True and w["untuned_ms"] > 0 and w["tuned_ms"] > 0 and w["threads"] == "1"
    assert w["kept"] is True and w["applied"] == [report.tasks[0].name]  # min_speedup 0: kept regardless
    assert "whole model: untuned" in report.table()


def test_records_not_faster_as_a_whole_are_dropped(tuned, tmp_path: Path, monkeypatch) -> None:
    """A task that won alone but whose whole model measured slower: summary.json keeps no task, and a
    compile with the records is the untuned build."""
    import tvm_ffi

    from isquant_tvm.tuning import tune as tune_mod

    assert tune_mod.whole_model_keeps(2.0, 1.9, 1.02) and not tune_mod.whole_model_keeps(2.0, 2.0, 1.02)
    assert tune_mod.whole_model_keeps(2.0, 2.5, 0.0)  # forced keep
    model, records, report = tuned
    copy = tmp_path / "records"
    shutil.copytree(records, copy)
    forced = tune_mod.TuneReport(copy, report.target, report.source,
                                 [tune_mod.TaskResult.from_json(t.to_json()) for t in report.tasks], 1.0)
    base = _compile(model)
    monkeypatch.setattr(tune_mod, "time_whole_model", lambda mods, target, **kw: [1.0, 1.1])  # the verdict only
    tune_mod.check_whole_model(forced, base.mod, base.target, min_speedup=1.02, remote=False)
    doc = json.loads((copy / "summary.json").read_text())
    assert doc["whole_model"]["kept"] is False
    assert [t["kept"] for t in doc["tasks"]] == [False] and doc["tasks"][0]["note"] == "whole model not faster"
    result = _compile(model, copy)
    assert result.metadata["tuning"]["applied"] == []
    for gv, func in base.mod.functions_items():
        if gv.name_hint != "main":
            assert tvm_ffi.structural_equal(result.mod[gv.name_hint], func), gv.name_hint


def test_records_for_another_target_are_refused(tuned) -> None:
    from isquant_tvm.errors import IsquantError
    from isquant_tvm.targets.presets import resolve_target
    from isquant_tvm.tuning.tune import load_kept

    _, records, _ = tuned
    with pytest.raises(IsquantError, match="tuned for target"):
        load_kept(records, resolve_target("x86-avx2"))
    with pytest.raises(IsquantError, match="summary.json"):
        load_kept(records / "logs", resolve_target(TARGET))


def test_cli_compile_with_tuning_records(tuned, tmp_path: Path) -> None:
    model, records, report = tuned
    lib = tmp_path / "tiny.so"
    proc = subprocess.run([sys.executable, "-m", "isquant_tvm", "compile", str(model), "--target", TARGET,
                           "--tuning-records", str(records), "-o", str(lib)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "1 tuned kernels used" in proc.stdout
    meta = json.loads(Path(str(lib) + ".json").read_text())
    assert meta["tuning"]["applied"] == [report.tasks[0].name]


def test_cli_tune_rejects_float_build(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "isquant_tvm", "tune", "builtin:resnet20-cifar", "--quantize",
                           "none", "-o", str(tmp_path / "r")], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and "integer graph" in proc.stderr


def test_rpc_runner_arguments() -> None:
    from isquant_tvm.errors import IsquantError
    from isquant_tvm.tuning.tune import make_runner, parse_tracker

    assert parse_tracker("10.0.0.2") == ("10.0.0.2", 9190)
    assert parse_tracker("board:9000") == ("board", 9000)
    with pytest.raises(IsquantError, match="--rpc-key"):
        make_runner(10, 1, 1, rpc_tracker="127.0.0.1:9190", rpc_key=None)
    runner = make_runner(10, 1, 1, rpc_tracker="127.0.0.1:9190", rpc_key="rasp4b")
    assert type(runner).__name__ == "RPCRunner"


@pytest.mark.slow
def test_tune_through_loopback_tracker(tmp_path: Path) -> None:
    """The RPC runner path end to end: a host x86 RPC server registered at a tracker on 127.0.0.1."""
    from isquant_tvm import api
    from tests.runtime.test_rpc import loopback_tracker

    with loopback_tracker(tmp_path, "tune-x86") as (tport, _):
        model = tiny_conv_onnx(tmp_path / "tiny.onnx")
        report = api.tune(str(model), target=TARGET, out_dir=tmp_path / "records", trials_per_task=1, max_tasks=1,
                          number=1, repeat=2, rpc_tracker=f"127.0.0.1:{tport}", rpc_key="tune-x86", timeout=60,
                          progress=False)
        task = report.tasks[0]
        assert task.default_ms is not None and task.tuned_ms is not None, task.note
        assert task.trials == 1 and task.default_ms > 0 and task.tuned_ms > 0, task
        assert json.loads((tmp_path / "records" / "summary.json").read_text())["settings"]["runner"].startswith("rpc")
