"""Runs over TVM RPC.

Two groups:
- loopback (fast, no qemu): a host x86 `python -m tvm.exec.rpc_server` (and tracker) on 127.0.0.1 runs the x86
  build; real RPC, real faults (no server, wedged server, server killed mid-run, session timeout);
- `board` (marked): the emulated Raspberry Pi 4 from isquant_tvm.tools.board (aarch64 python + apache-tvm under
  qemu-aarch64-static, QEMU_CPU=cortex-a72) reached through a tracker by key `rasp4b`: aarch64 builds run there and
  match the x86 build (int8 bit-exact), the CLI benches through it, and a rasp5 (+dotprod) library dies with SIGILL
  and the board is restored. The session fixture sets the board up under ./.board (about 50 s the first time, about
  a second after) and skips when that is impossible (no network to Debian/PyPI and no cached root), unless
  ISQUANT_REQUIRE_BOARD=1 makes that a failure.
"""
from __future__ import annotations

import contextlib
import faulthandler
import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import isquant_tvm as iq
from isquant_tvm.errors import RPCError
from isquant_tvm.frontend.loader import random_inputs
from isquant_tvm.build.export import export_library
from isquant_tvm.runtime.rpc import connect_runner, run_remote, tracker_summary
from isquant_tvm.runtime.runner import load_local

from ..helpers import X86Server
from ..helpers import free_port as _free_port
from ..helpers import kill_group as _kill
from ..helpers import spawn_logged as _spawn_logged
from ..helpers import wait_bind as _wait_bind

REPO = Path(__file__).resolve().parents[2]
TEST_TIMEOUT = 300  # hard per-test watchdog: dump stacks and exit rather than hang CI


@pytest.fixture(autouse=True)
def _watchdog():
    faulthandler.dump_traceback_later(TEST_TIMEOUT, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


# ----------------------------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def x86_lib(tmp_path_factory, float_build):
    """The float x86 build of resnet20-cifar as a .so (+ .json), and a reference output for one input."""
    result = float_build("resnet20-cifar")
    out = tmp_path_factory.mktemp("x86lib") / "r20_x86.so"
    export_library(result.executable, out, result.target, result.metadata)
    feed = random_inputs(iq.load("builtin:resnet20-cifar").inputs, seed=3)
    ref = result.runner().run(feed)[0]
    return SimpleNamespace(path=out, feed=feed, ref=ref)


@pytest.fixture(scope="module")
def x86_server(tmp_path_factory):
    server = X86Server(tmp_path_factory.mktemp("x86srv"))
    yield server
    server.kill()


# ----------------------------------------------------------------------------------------------- loopback


def test_loopback_run_matches_local_and_reports_versions(x86_lib, x86_server) -> None:
    import tvm

    runner, info = connect_runner(x86_lib.path, rpc=x86_server.address, session_timeout=60, quiet=True)
    try:
        out = runner.run(x86_lib.feed)[0]
        np.testing.assert_array_equal(out, x86_lib.ref)  # same .so, another process: identical
        timing = runner.benchmark(x86_lib.feed, repeat=2)
    finally:
        runner.close()
    assert timing.median_ms > 0 and timing.repeat == 2
    assert info["rpc"] == x86_server.address and info["device"].startswith("remote cpu")
    assert info["remote_tvm_version"] == tvm.__version__ == info["host_tvm_version"]
    assert info["version_match"] is True


def test_run_remote_api(x86_lib, x86_server) -> None:
    outputs, timing, info = run_remote(x86_lib.path, x86_lib.feed, rpc=x86_server.address, repeat=1,
                                       session_timeout=60)
    np.testing.assert_array_equal(outputs[0], x86_lib.ref)
    assert timing is not None and info["median_ms"] == timing.median_ms > 0


def test_two_output_model_over_rpc(x86_server, tmp_path) -> None:
    """A model with two heads (MTCNN P-Net's prob + reg): the VM returns a tuple, which reaches the client as
    an RPC object reference; `run` gives both outputs, equal to the local run (it failed with "'RPCObjectRef'
    object is not iterable")."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((2, 3, 1, 1)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((4, 3, 1, 1)).astype(np.float32), "w2")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w1"], ["prob"], name="head_prob"),
         helper.make_node("Conv", ["x", "w2"], ["reg"], name="head_reg")], "two_heads",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, [1, 2, 8, 8]),
         helper.make_tensor_value_info("reg", TensorProto.FLOAT, [1, 4, 8, 8])], [w1, w2])
    path = tmp_path / "two_heads.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    built = iq.compile(str(path), target="x86-avx2", quantize="none", output=tmp_path / "two.so", progress=False)
    feed = random_inputs(iq.load(str(path)).inputs, seed=1)
    local = load_local(built.output).run(feed)
    outputs, _, _ = run_remote(built.output, feed, rpc=x86_server.address, repeat=1, session_timeout=60)
    assert [o.shape for o in outputs] == [(1, 2, 8, 8), (1, 4, 8, 8)]
    for got, want in zip(outputs, local):
        np.testing.assert_array_equal(got, want)


def test_amx_library_runs_in_a_plain_rpc_server(tmp_path, x86_server) -> None:
    """The AMX kernels ask Linux for tile permission themselves: a stock `tvm.exec.rpc_server` (whose session
    runs in a fresh worker process that never called arch_prctl) runs an AMX library bit-exactly."""
    from isquant_tvm.util.cpu import host_has_amx

    if not host_has_amx():
        pytest.skip("host CPU has no AMX-INT8 (amx_int8/amx_tile not in /proc/cpuinfo)")
    out = tmp_path / "r20_amx.so"
    target = {"kind": "llvm", "mcpu": "cascadelake", "mattr": ["+amx-tile", "+amx-int8"], "num-cores": 2}
    iq.compile("builtin:resnet20-cifar", target=target, quantize="isquant", output=out, progress=False,
               quant_options={"synthetic_count": 2})
    if shutil.which("objdump"):
        asm = subprocess.run(["objdump", "-d", str(out)], capture_output=True, text=True, check=True).stdout
        assert re.search(r"\btdpbs[us]d\b", asm), "no AMX tile dot product in the library"
    feed = random_inputs(iq.load("builtin:resnet20-cifar").inputs, seed=5)
    local = load_local(out).run(feed)[0]
    outputs, timing, _ = run_remote(out, feed, rpc=x86_server.address, repeat=1, session_timeout=60)
    np.testing.assert_array_equal(outputs[0], local)
    assert timing is not None and timing.median_ms > 0


def test_no_server_listening_is_a_fast_clear_error(x86_lib) -> None:
    port = _free_port()
    t0 = time.monotonic()
    with pytest.raises(RPCError, match=f"no RPC server listening at 127.0.0.1:{port}"):
        connect_runner(x86_lib.path, rpc=f"127.0.0.1:{port}", quiet=True)
    with pytest.raises(RPCError, match=f"no RPC tracker at 127.0.0.1:{port}"):
        connect_runner(x86_lib.path, tracker=f"127.0.0.1:{port}", key="rasp4b", quiet=True)
    assert time.monotonic() - t0 < 10
    with pytest.raises(RPCError, match="--rpc-key"):
        connect_runner(x86_lib.path, tracker=f"127.0.0.1:{port}", quiet=True)
    with pytest.raises(RPCError, match="HOST:PORT"):
        connect_runner(x86_lib.path, rpc="127.0.0.1", quiet=True)


def test_wedged_server_gives_error_not_hang(x86_lib) -> None:
    """A socket that accepts but never answers, like a TVM server after a crashed session."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(4)
        t0 = time.monotonic()
        with pytest.raises(RPCError, match="no answer .* within 2s.*restart"):
            connect_runner(x86_lib.path, rpc=f"127.0.0.1:{sock.getsockname()[1]}", connect_timeout=2, quiet=True)
        assert time.monotonic() - t0 < 10


def test_server_killed_mid_run(x86_lib, tmp_path) -> None:
    server = X86Server(tmp_path)
    try:
        runner, _ = connect_runner(x86_lib.path, rpc=server.address, session_timeout=120, quiet=True)
        threading.Timer(1.0, server.kill).start()
        t0 = time.monotonic()
        with pytest.raises(RPCError, match="died"):
            runner.benchmark(x86_lib.feed, repeat=100000, number=10)
        assert time.monotonic() - t0 < 30
        with pytest.raises(RPCError, match="died"):  # the runner stays dead, quickly
            runner.run(x86_lib.feed)
    finally:
        server.kill()


def test_session_timeout_then_next_session_works(x86_lib, x86_server) -> None:
    runner, _ = connect_runner(x86_lib.path, rpc=x86_server.address, session_timeout=3, quiet=True)
    t0 = time.monotonic()
    with pytest.raises(RPCError, match="session timeout.*--session-timeout"):
        runner.benchmark(x86_lib.feed, repeat=100000, number=10)
    assert time.monotonic() - t0 < 30
    runner.close()
    outputs, _, _ = run_remote(x86_lib.path, x86_lib.feed, rpc=x86_server.address, session_timeout=60)
    np.testing.assert_array_equal(outputs[0], x86_lib.ref)


@contextlib.contextmanager
def loopback_tracker(tmp_path: Path, key: str):
    """A tracker on 127.0.0.1 with one host x86 server registered under `key`; yields (tracker port, server)."""
    log = tmp_path / "tracker.log"
    tport = _free_port()
    tracker = _spawn_logged([sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port",
                             str(tport), "--port-end", str(tport + 1)], log, tmp_path)
    server = None
    try:  # the server starts alongside the tracker and retries its tracker connection until it is up
        server = X86Server(tmp_path / "srv", tracker=f"127.0.0.1:{tport}", key=key)
        assert _wait_bind(tracker, log) == tport
        deadline = time.monotonic() + 60
        while tracker_summary("127.0.0.1", tport)["queue_info"].get(key, {}).get("free", 0) < 1:
            assert time.monotonic() < deadline, "server never registered"
            time.sleep(0.2)
        yield tport, server
    finally:
        if server:
            server.kill()
        _kill(tracker)


def test_loopback_tracker_by_key(x86_lib, tmp_path) -> None:
    with loopback_tracker(tmp_path, "x86loop") as (tport, server):
        outputs, _, info = run_remote(x86_lib.path, x86_lib.feed, tracker=f"127.0.0.1:{tport}", key="x86loop")
        np.testing.assert_array_equal(outputs[0], x86_lib.ref)
        assert info["tracker"] == f"127.0.0.1:{tport}" and info["key"] == "x86loop"
        t0 = time.monotonic()
        with pytest.raises(RPCError, match="no board with key 'rasp4b'.*registered: x86loop"):
            connect_runner(x86_lib.path, tracker=f"127.0.0.1:{tport}", key="rasp4b", quiet=True)
        assert time.monotonic() - t0 < 10
        with pytest.raises(RPCError, match="tracker"):  # a tracker-registered server refuses a direct session
            connect_runner(x86_lib.path, rpc=server.address, connect_timeout=10, quiet=True)


# ----------------------------------------------------------------------------------------------- board


@pytest.fixture(scope="session")
def board_session(tmp_path_factory):
    from isquant_tvm.tools import board

    root = Path(os.environ.get("ISQUANT_BOARD_ROOT") or REPO / ".board")
    try:
        board.setup(root, quiet=True)
    except board.BoardUnavailable as err:
        if os.environ.get("ISQUANT_REQUIRE_BOARD") == "1":
            pytest.fail(f"emulated board required (ISQUANT_REQUIRE_BOARD=1) but unavailable: {err}")
        pytest.skip(f"emulated aarch64 board unavailable (needs Debian's archive and PyPI once, or a cached"
                    f" {root}): {err}")
    run_dir = tmp_path_factory.mktemp("board-run")
    info = board.start(root, cpu="cortex-a72", key="rasp4b", run_dir=run_dir, quiet=True)
    yield SimpleNamespace(root=root, run_dir=run_dir, tracker=info["tracker"], key=info["key"], info=info)
    board.stop(root, run_dir=run_dir, quiet=True)


@pytest.fixture
def board_env(board_session):
    """The board, with a working server: restarted when an earlier test left it crashed or killed."""
    from isquant_tvm.tools import board

    deadline = time.monotonic() + 15  # after a session the server re-registers within a second or two
    while True:
        st = board.status(board_session.root, run_dir=board_session.run_dir)
        if not st.get("healthy") or (st.get("free", 0) < 1 and time.monotonic() > deadline):
            board.restart_server(board_session.root, run_dir=board_session.run_dir, quiet=True)
            return board_session
        if st.get("free", 0) >= 1:
            return board_session
        time.sleep(0.25)


@pytest.fixture(scope="module")
def arm_r20(tmp_path_factory):
    if shutil.which("aarch64-linux-gnu-gcc") is None:
        pytest.skip("no aarch64 cross compiler")
    out = tmp_path_factory.mktemp("armlib") / "r20_rasp4b.so"
    iq.compile("builtin:resnet20-cifar", target="rasp4b", quantize="none", output=out, progress=False)
    return out


@pytest.fixture(scope="module")
def int8_cnn(tmp_path_factory):
    from isquant_tvm.tools import board

    if shutil.which("aarch64-linux-gnu-gcc") is None:
        pytest.skip("no aarch64 cross compiler")
    d = tmp_path_factory.mktemp("int8cnn")
    libs = {t: board.build_int8_cnn(t, d / f"cnn_{t}.so") for t in ("rasp4b", "rasp5", "x86")}
    feed = board.int8_cnn_inputs(seed=1)
    return SimpleNamespace(libs=libs, feed=feed, ref=load_local(libs["x86"]).run(feed)[0])


@pytest.mark.board
def test_board_float_resnet20_matches_x86(board_env, arm_r20, x86_lib) -> None:
    runner, info = connect_runner(arm_r20, tracker=board_env.tracker, key="rasp4b", session_timeout=120, quiet=True)
    try:
        out = runner.run(x86_lib.feed)[0]
    finally:
        runner.close()
    np.testing.assert_allclose(out, x86_lib.ref, rtol=1e-4, atol=1e-4)
    assert info["key"] == "rasp4b" and info["tracker"] == board_env.tracker
    assert info["remote_tvm_version"] == info["host_tvm_version"] and info["version_match"] is True
    assert info["library_target"]["mtriple"] == "aarch64-linux-gnu"


@pytest.mark.board
def test_board_int8_bit_exact(board_env, int8_cnn) -> None:
    outputs, timing, _ = run_remote(int8_cnn.libs["rasp4b"], int8_cnn.feed, tracker=board_env.tracker, key="rasp4b",
                                    repeat=2, number=2, session_timeout=120)
    np.testing.assert_array_equal(outputs[0], int8_cnn.ref)
    assert timing is not None and timing.median_ms > 0  # never assert on emulated speed


@pytest.mark.board
def test_board_isquant_resnet20_bit_exact(board_env, tmp_path) -> None:
    if importlib.util.find_spec("isquant_tvm.pipeline") is None:
        pytest.skip("quantize='isquant' builds are not available yet (isquant_tvm.pipeline)")
    arm, x86 = tmp_path / "r20_int8_rasp4b.so", tmp_path / "r20_int8_x86.so"
    iq.compile("builtin:resnet20-cifar", target="rasp4b", quantize="isquant", output=arm, progress=False)
    iq.compile("builtin:resnet20-cifar", target="x86", quantize="isquant", output=x86, progress=False)
    feed = random_inputs(iq.load("builtin:resnet20-cifar").inputs, seed=4)
    ref, _ = iq.run(x86, feed)
    outputs, _, _ = run_remote(arm, feed, tracker=board_env.tracker, key="rasp4b", session_timeout=120)
    assert len(outputs) == len(ref)
    for got, want in zip(outputs, ref):
        np.testing.assert_array_equal(got, want)


@pytest.mark.board
def test_cli_bench_through_tracker(board_env, arm_r20, tmp_path) -> None:
    import tvm

    report = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "isquant_tvm", "-v", "bench", str(arm_r20), "--rpc-tracker",
                           board_env.tracker, "--rpc-key", "rasp4b", "--repeat", "2", "--json", str(report)],
                          capture_output=True, text=True, timeout=240, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert "Execution time summary" in proc.stdout and "median (ms)" in proc.stdout
    doc = json.loads(report.read_text())
    assert doc["median_ms"] > 0 and doc["repeat"] == 2
    assert "rasp4b" in doc["device"] and doc["remote_tvm_version"] == tvm.__version__
    assert f"tracker {board_env.tracker}" in proc.stderr  # -v shows the resolved address


@pytest.mark.board
def test_board_unknown_key_is_fast(board_env, arm_r20) -> None:
    t0 = time.monotonic()
    with pytest.raises(RPCError, match="no board with key 'rasp5'.*registered: rasp4b"):
        connect_runner(arm_r20, tracker=board_env.tracker, key="rasp5", quiet=True)
    assert time.monotonic() - t0 < 10


@pytest.mark.board
def test_board_server_killed_mid_run(board_env, arm_r20, x86_lib) -> None:
    from isquant_tvm.tools import board

    runner, _ = connect_runner(arm_r20, tracker=board_env.tracker, key="rasp4b", session_timeout=300, quiet=True)
    threading.Timer(2.0, board.kill_server, args=(board_env.root, board_env.run_dir)).start()
    t0 = time.monotonic()
    with pytest.raises(RPCError, match="died"):
        runner.benchmark(x86_lib.feed, repeat=10000, number=1)
    assert time.monotonic() - t0 < 60
    runner.close()
    board.restart_server(board_env.root, run_dir=board_env.run_dir, quiet=True)
    outputs, _, _ = run_remote(arm_r20, x86_lib.feed, tracker=board_env.tracker, key="rasp4b", session_timeout=120)
    np.testing.assert_allclose(outputs[0], x86_lib.ref, rtol=1e-4, atol=1e-4)


@pytest.mark.board
def test_board_rasp5_library_sigill_then_restored(board_env, int8_cnn) -> None:
    from isquant_tvm.tools import board

    objdump = shutil.which("aarch64-linux-gnu-objdump")
    if objdump:  # the Pi 5 build really uses the dot-product instructions a Pi 4 lacks
        disasm = subprocess.run([objdump, "-d", str(int8_cnn.libs["rasp5"])], capture_output=True, text=True).stdout
        assert re.search(r"\t[su]dot\t", disasm)
    runner, _ = connect_runner(int8_cnn.libs["rasp5"], tracker=board_env.tracker, key="rasp4b", session_timeout=120,
                               quiet=True)
    t0 = time.monotonic()
    with pytest.raises(RPCError, match=r"SIGILL.*--target rasp4b.*restart"):
        runner.run(int8_cnn.feed)
    assert time.monotonic() - t0 < 30
    runner.close()
    time.sleep(0.5)
    st = board.status(board_env.root, run_dir=board_env.run_dir)
    assert st["server_crashed"] and "SIGILL" in st["crash"]
    with pytest.raises(RPCError, match="rasp4b"):  # the crashed server is gone from the tracker: clear, fast
        connect_runner(int8_cnn.libs["rasp4b"], tracker=board_env.tracker, key="rasp4b", connect_timeout=5,
                       quiet=True)
    board.restart_server(board_env.root, run_dir=board_env.run_dir, quiet=True)
    outputs, _, _ = run_remote(int8_cnn.libs["rasp4b"], int8_cnn.feed, tracker=board_env.tracker, key="rasp4b",
                               session_timeout=120)
    np.testing.assert_array_equal(outputs[0], int8_cnn.ref)


@pytest.mark.board
def test_board_session_timeout(board_env, arm_r20, x86_lib) -> None:
    runner, _ = connect_runner(arm_r20, tracker=board_env.tracker, key="rasp4b", session_timeout=6, quiet=True)
    t0 = time.monotonic()
    with pytest.raises(RPCError, match="session timeout"):
        runner.benchmark(x86_lib.feed, repeat=10000, number=1)
    assert time.monotonic() - t0 < 60
    runner.close()
    # A timed-out session does not wedge the server: the next one works without a restart.
    outputs, _, _ = run_remote(arm_r20, x86_lib.feed, tracker=board_env.tracker, key="rasp4b", session_timeout=120,
                               connect_timeout=60)
    np.testing.assert_allclose(outputs[0], x86_lib.ref, rtol=1e-4, atol=1e-4)


@pytest.mark.board
def test_tune_on_the_board_then_compile_with_its_records(board_env, tmp_path) -> None:
    """`tune --target rasp4b --rpc-tracker --rpc-key`: kernels cross-compiled on the host, timed on the
    (emulated) board through the tracker; the records then build a library the board runs bit-exactly."""
    if shutil.which("aarch64-linux-gnu-gcc") is None:
        pytest.skip("no aarch64 cross compiler")
    from isquant_tvm import api
    from isquant_tvm.reference import interpreter as reference
    from tests.helpers import tiny_conv_onnx

    model = tiny_conv_onnx(tmp_path / "tiny.onnx")
    records = tmp_path / "records"
    # Some sampled schedules fail TVM's vectorizer ("Cannot broadcast lanes=4 to 16") and MetaSchedule
    # skips them. With 4 trials this test failed in 2 of 6 runs late in a long session (the cause was not
    # captured; at 2 trials it was "no valid tuned schedule"), so it samples 8.
    report = api.tune(str(model), target="rasp4b", out_dir=records, trials_per_task=8, max_tasks=1, number=1,
                      repeat=2, rpc_tracker=board_env.tracker, rpc_key="rasp4b", timeout=120, progress=False)
    task = report.tasks[0]
    assert task.default_ms is not None and task.tuned_ms is not None, task.note
    # the Pi 4 space tensorizes on our NEON intrinsic (its pairwise-add variant where no weight is -128)
    assert task.intrin in ("isq_dot_4x4_i8i8s32_neon", "isq_dot_4x4_i8i8s32_neon_pairs"), task.intrin
    assert task.default_ms > 0 and task.tuned_ms > 0
    summary = json.loads((records / "summary.json").read_text())
    assert summary["settings"]["runner"].startswith("rpc")
    result = api.compile(str(model), target="rasp4b", output=tmp_path / "tiny.so", tuning_records=records,
                         progress=False)
    assert result.metadata["tuning"]["records"] == str(records)
    x = np.random.default_rng(0).standard_normal(tuple(result.metadata["inputs"][0]["shape"])).astype(np.float32)
    name = result.metadata["inputs"][0]["name"]
    outputs, _, _ = run_remote(result.output, {name: x}, tracker=board_env.tracker, key="rasp4b", session_timeout=120)
    np.testing.assert_array_equal(outputs[0], reference.run(result.quantized.qnn_mod, [x])[0])


@pytest.mark.board
def test_board_issue15_ops_bit_exact(board_env, tmp_path) -> None:
    """qnn.lut (per tensor and per channel) and qnn.mul (SE gate) on NCHW16c: a rasp4b build of the
    MobileNetV3-like block equals the numpy reference bit for bit on the emulated board (the x86 build of
    the same block equals it too: tests/quantize/test_lut.py), so board == x86."""
    if shutil.which("aarch64-linux-gnu-gcc") is None:
        pytest.skip("no aarch64 cross compiler")
    from isquant_tvm.reference import interpreter as reference

    from ..helpers import mobilenet_v3_block_onnx

    model = iq.load(str(mobilenet_v3_block_onnx(tmp_path / "block.onnx", hw=8)))
    arm = iq.compile(model, target="rasp4b", output=tmp_path / "block_rasp4b.so", progress=False)
    low = arm.report["lowerings"]
    assert arm.report["fallbacks"] == {} and low.get("qnn.lut:glue") == 6 and low.get("qnn.mul:glue") == 1, low
    feed = random_inputs(model.inputs, seed=15)
    outputs, _, _ = run_remote(arm.output, feed, tracker=board_env.tracker, key="rasp4b", session_timeout=120)
    np.testing.assert_array_equal(outputs[0], reference.run(arm.quantized.qnn_mod, list(feed.values()))[0])
