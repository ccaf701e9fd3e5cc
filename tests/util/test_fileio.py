"""Outputs are transactional and validated first (issue 19, findings 2 and 3); interrupts end a bench at once."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _env(tmpdir: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": str(tmpdir)}


def _cli(args: list[str], tmpdir: Path, cwd: Path, umask: int | None = None, timeout: float = 600):
    return subprocess.run([sys.executable, "-m", "isquant_tvm", *args], capture_output=True, text=True,
                          env=_env(tmpdir), cwd=cwd, timeout=timeout,
                          preexec_fn=(lambda: os.umask(umask)) if umask is not None else None)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A working m.so + m.so.json of the fuzz suite's tiny CNN, built with umask 027."""
    from tests.fuzz.corpus import tiny_model

    import onnx

    work = tmp_path_factory.mktemp("outputs")
    scratch = work / "tmp"
    scratch.mkdir()
    onnx.save(tiny_model(), str(work / "tiny.onnx"))
    proc = _cli(["compile", "tiny.onnx", "-o", "m.so"], scratch, work, umask=0o027)
    assert proc.returncode == 0, proc.stderr
    return work


def _snapshot(work: Path) -> dict[str, bytes]:
    return {name: (work / name).read_bytes() for name in ("m.so", "m.so.json")}


def _assert_clean(work: Path, before: dict[str, bytes]) -> None:
    assert _snapshot(work) == before, "the previous library or its metadata changed"
    assert sorted(p.name for p in work.iterdir()) == ["m.so", "m.so.json", "tiny.onnx", "tmp"], list(work.iterdir())
    assert list((work / "tmp").iterdir()) == [], "temporaries left in $TMPDIR"


def test_outputs_follow_the_umask(built) -> None:
    assert (built / "m.so").stat().st_mode & 0o777 == 0o750
    assert (built / "m.so.json").stat().st_mode & 0o777 == 0o640


def test_failed_recompile_keeps_previous_library(built) -> None:
    before = _snapshot(built)
    proc = _cli(["compile", "tiny.onnx", "-o", "m.so", "--target", "arm", "--cross-compiler", "false"],
                built / "tmp", built)
    assert proc.returncode == 2, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "m.so" in errors[0] and "false" in errors[0], proc.stderr
    _assert_clean(built, before)


@pytest.mark.parametrize("signum,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupted_recompile_keeps_previous_library(built, signum: int, code: int) -> None:
    before = _snapshot(built)
    proc = subprocess.Popen([sys.executable, "-m", "isquant_tvm", "compile", "tiny.onnx", "-o", "m.so", "--report",
                             "r.json"], cwd=built, env=_env(built / "tmp"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    try:
        # the export stage has begun when the staged library appears beside m.so
        while not any(p.name.startswith(".m.so.") for p in built.iterdir()):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.005)
        proc.send_signal(signum)
        sent = time.monotonic()
        _, err = proc.communicate(timeout=30)
        elapsed = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, err
    assert elapsed < 2.5, f"took {elapsed:.1f}s to stop"
    _assert_clean(built, before)


def test_output_paths_checked_before_work(built) -> None:
    cases = [
        (["compile", "tiny.onnx", "-o", "r.so", "--report", "r.so"], "the same file as -o"),
        (["compile", "tiny.onnx", "-o", "m.so", "--report", "m.so.json"], "metadata"),
        (["bench", "m.so", "--json", "m.so.json"], "replace the input"),
        (["compile", "tiny.onnx", "-o", "tiny.onnx.so", "--report", "tiny.onnx"], "the input MODEL"),
        (["compile", "tiny.onnx", "-o", "tiny.onnx/x.so"], "is a file, not a folder"),
        (["compile", "tiny.onnx", "-o", "m.so", "--report", "tmp"], "is a directory"),
        (["quantize", "tiny.onnx", "-o", "tiny.onnx"], "the input MODEL"),
        (["run", "m.so", "--outputs", "m.so"], "the input LIBRARY"),
    ]
    before = _snapshot(built)
    for args, needle in cases:
        started = time.monotonic()
        proc = _cli(args, built / "tmp", built)
        assert proc.returncode == 2, (args, proc.stderr)
        assert proc.stderr.count("\n") == 1 and needle in proc.stderr, (args, proc.stderr)
        assert time.monotonic() - started < 60  # refused before the compile, not after
    _assert_clean(built, before)


def _maps_library(pid: int, library: Path) -> bool:
    """`library` is mapped by `pid` or one of its children (the CLI's worker process)."""
    pids = [pid] + [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    for p in pids:
        try:
            if str(library) in Path(f"/proc/{p}/maps").read_text():
                return True
        except OSError:
            continue
    return False


def test_sigint_during_local_bench_exits_130_quickly(built) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "isquant_tvm", "bench", "m.so", "--repeat", "100000000"],
                            cwd=built, env=_env(built / "tmp"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + 600
        while not _maps_library(proc.pid, built / "m.so"):  # the library is loaded: the bench is under way
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        sent = time.monotonic()
        _, err = proc.communicate(timeout=30)
        elapsed = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert elapsed < 2.0, f"took {elapsed:.2f}s"
    assert "interrupted" in err
