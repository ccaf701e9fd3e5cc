"""Bounded waits and clean interrupts over RPC (issue 19, findings 5 and 6), on a loopback x86 TVM RPC server:
a real `tvm.exec.rpc_server`, no board needed for these faults."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from isquant_tvm.errors import RPCError
from isquant_tvm.runtime.rpc import STEP_TIMEOUT_S, connect_runner, run_remote
from ..helpers import X86Server

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_lib(tmp_path_factory):
    from tests.fuzz.corpus import prepare_library

    work = tmp_path_factory.mktemp("rpcfaults")
    prepare_library(work)
    feed = {"input": np.load(work / "good.npz")["input"]}
    return work / "m.so", feed


def _signal_group(server: X86Server, signum: int) -> None:
    os.killpg(server.proc.pid, signum)


def test_vanished_board_fails_within_60s_and_recovers(tiny_lib, tmp_path) -> None:
    """SIGSTOP freezes the server without a TCP reset, like a board that lost power or its cable."""
    lib, feed = tiny_lib
    assert STEP_TIMEOUT_S < 60
    server = X86Server(tmp_path)
    try:
        runner, _ = connect_runner(lib, rpc=server.address, session_timeout=600, quiet=True)
        threading.Timer(1.0, _signal_group, (server, signal.SIGSTOP)).start()
        t0 = time.monotonic()
        with pytest.raises(RPCError, match=f"no answer from the board at {server.address}"):
            runner.benchmark(feed, repeat=10**8, number=1)
        assert time.monotonic() - t0 < 60
        _signal_group(server, signal.SIGCONT)
        runner.close()
        deadline = time.monotonic() + 30
        while True:  # the resumed server drops the dead session and takes the next one
            try:
                outputs, _, _ = run_remote(lib, feed, rpc=server.address, session_timeout=60)
                break
            except RPCError:
                assert time.monotonic() < deadline
                time.sleep(1.0)
        assert outputs[0].shape == (1, 4)
    finally:
        _signal_group(server, signal.SIGCONT)
        server.kill()


def test_sigint_during_rpc_bench_exits_130_within_2s(tiny_lib, tmp_path) -> None:
    lib, feed = tiny_lib
    server = X86Server(tmp_path)
    try:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        proc = subprocess.Popen([sys.executable, "-m", "isquant_tvm", "bench", str(lib), "--rpc", server.address,
                                 "--repeat", "100000000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=env)
        deadline = time.monotonic() + 300
        while "load_module" not in server.log.read_text(errors="replace") and \
                "connection from" not in server.log.read_text(errors="replace"):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.1)
        time.sleep(3.0)  # inside the timed runs
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGINT)
        sent = time.monotonic()
        _, err = proc.communicate(timeout=30)
        elapsed = time.monotonic() - sent
        assert proc.returncode == 130, err
        assert elapsed < 2.0, f"took {elapsed:.2f}s"
        deadline = time.monotonic() + 30
        while True:  # the server is still there for the next session
            try:
                outputs, _, _ = run_remote(lib, feed, rpc=server.address, session_timeout=60)
                break
            except RPCError:
                assert time.monotonic() < deadline
                time.sleep(1.0)
        assert outputs[0].shape == (1, 4)
    finally:
        server.kill()
