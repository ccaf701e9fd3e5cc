"""Loopback RPC faults for the fuzz suite: a real TVM RPC server and tracker on 127.0.0.1 (x86, no board).

Faults: no server at the port, a silent port (accepts, never answers), a tracker without the key, a
truncated library uploaded to a live server (the server must stay up: a later run still works).
"""
from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

from .corpus import Case


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, timeout: float = 120.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                return True
        except OSError:
            time.sleep(0.3)
    return False


def start(work: Path) -> dict:
    servers: dict = {"procs": []}
    tracker_port = _free_port()
    tracker = subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port",
                                str(tracker_port), "--port-end", str(tracker_port + 1)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    servers["procs"].append(tracker)
    server_port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_server", "--host", "127.0.0.1", "--port",
                               str(server_port), "--port-end", str(server_port + 1)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    servers["procs"].append(server)
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    servers["silent"] = silent
    servers["tracker_port"] = tracker_port
    servers["server_port"] = server_port
    servers["up"] = _wait_port(tracker_port) and _wait_port(server_port)
    return servers


def stop(servers: dict) -> None:
    for proc in servers["procs"]:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
    servers["silent"].close()


def cases(servers: dict) -> list[Case]:
    server = f"127.0.0.1:{servers['server_port']}"
    tracker = f"127.0.0.1:{servers['tracker_port']}"
    silent = f"127.0.0.1:{servers['silent'].getsockname()[1]}"
    out = [
        Case("rpc_no_server", "rpc_fault", ["run", "m.so", "--rpc", f"127.0.0.1:{_free_port()}"], timeout=120),
        Case("rpc_silent_port", "rpc_fault", ["run", "m.so", "--rpc", silent], timeout=120),
        Case("rpc_tracker_absent", "rpc_fault", ["run", "m.so", "--rpc-tracker", f"127.0.0.1:{_free_port()}", "--rpc-key", "k"], timeout=120),
        Case("rpc_tracker_no_key", "rpc_fault", ["run", "m.so", "--rpc-tracker", tracker, "--rpc-key", "nosuchkey"], timeout=120),
        Case("rpc_key_missing", "rpc_fault", ["run", "m.so", "--rpc-tracker", tracker], timeout=120),
        Case("rpc_bad_address", "rpc_fault", ["run", "m.so", "--rpc", "127.0.0.1:notaport"], timeout=60),
        Case("rpc_truncated_library", "rpc_fault", ["run", "trunc5.so", "--rpc", server], timeout=120),
        Case("rpc_random_library", "rpc_fault", ["run", "rand.so", "--rpc", server], timeout=120),
        Case("rpc_server_still_up", "rpc_fault", ["run", "m.so", "--rpc", server], expect="any", timeout=180),
    ]
    return out
