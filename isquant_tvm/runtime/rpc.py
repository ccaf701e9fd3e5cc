"""Run a compiled library on a board through TVM RPC: directly (`--rpc HOST:PORT`) or through a tracker by key
(`--rpc-tracker HOST[:PORT] --rpc-key rasp4b`).

TVM's RPC client has no timeouts of its own: a connect to a wedged server (one whose session crashed, e.g. by
SIGILL) or a call to a board that vanished blocks forever. Every remote step here therefore runs in a watchdog
thread (TVM releases the GIL while it waits), and every failure becomes one clear `RPCError` line.
"""
from __future__ import annotations

import json
import logging
import os
import re
import socket
import struct
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

import numpy as np

from ..errors import InputError, IsquantError, RPCError
from ..build.export import read_metadata
from .libcheck import check_library
from .runner import Timing, VMRunner, read_inputs
from .runner import check_finite as _check_finite

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_TRACKER_PORT = 9190
DEFAULT_CONNECT_TIMEOUT = 15.0
# Every remote step (version query, upload, load, one run, one timed measurement) must answer within this, or
# within 4x the step's measured duration when that is longer: a board that vanished without a TCP reset
# (power cut, cable) used to be noticed only when the 600 s session timeout ran out (about 630 s, issue 19
# finding 6); now within STEP_TIMEOUT_S of its last answer.
STEP_TIMEOUT_S = 45.0
RESTART_HINT = ("restart the server (emulated board: python scripts/board.py restart; a real board: stop and start"
                " python -m tvm.exec.rpc_server again)")

# Where to listen: the board's own LAN address, not 0.0.0.0 — TVM RPC runs any uploaded library for anyone
# who can reach the port (issue 19, finding 10).
LAN_HINT = "<the board's LAN address>"
NO_AUTH_NOTE = ("TVM RPC has no authentication: whoever reaches the port can run code on the board, so listen"
                " on a trusted LAN address only, never 0.0.0.0 on an open network")

# tvm/rpc/base.py
RPC_TRACKER_MAGIC = 0x2F271
TRACKER_SUCCESS = 0
TRACKER_REQUEST = 4
TRACKER_SUMMARY = 6

# Where the board's apache-tvm usually lives; the board's TVM version is read from <site>/tvm/_version.py
# (the stock RPC server exposes no version function). $ISQUANT_BOARD_SITE names another site-packages folder.
_PYTHONS = ("3.11", "3.12", "3.13", "3.10", "3.14")
SITE_CANDIDATES = tuple(
    [f"/usr/local/lib/python{v}/dist-packages" for v in _PYTHONS]
    + [f"/opt/tvm-rpc/lib/python{v}/site-packages" for v in _PYTHONS]
    + [f"/home/pi/tvm-rpc/lib/python{v}/site-packages" for v in _PYTHONS]
    + [f"/home/pi/.local/lib/python{v}/site-packages" for v in _PYTHONS]
    + ["/usr/lib/python3/dist-packages"]
)

# Instruction sets a Raspberry Pi 4 (Cortex-A72, ARMv8.0-A + NEON) does not have.
_NEWER_THAN_A72 = ("dotprod", "i8mm", "sve", "sve2", "fullfp16", "fp16fml", "bf16", "v8.2a", "v8.4a", "v8.6a", "v9a")
_A72_COMPATIBLE = ("cortex-a72", "cortex-a73", "cortex-a57", "cortex-a53", "cortex-a35")
_ELF_MACHINES = {62: "x86-64", 183: "aarch64", 40: "32-bit ARM", 3: "x86 (32-bit)"}


def parse_address(text: str, default_port: int | None, flag: str) -> tuple[str, int]:
    """'host:port' or 'host' (with a default port) -> (host, port)."""
    text = (text or "").strip()
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = text, ""
    if not host:
        raise RPCError(f"{flag} {text!r}: expected HOST:PORT")
    if not port:
        if default_port is None:
            raise RPCError(f"{flag} {text!r}: expected HOST:PORT (e.g. 192.168.1.20:9090)")
        return host, default_port
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise RPCError(f"{flag} {text!r}: the port must be a number from 1 to 65535")
    return host, int(port)


# ----------------------------------------------------------------------------------------------- tracker


def _sendjson(sock: socket.socket, value: Any) -> None:
    data = json.dumps(value).encode()
    sock.sendall(struct.pack("<i", len(data)) + data)


def _recvall(sock: socket.socket, n: int) -> bytes:
    chunks = []
    while n:
        chunk = sock.recv(min(n, 1 << 16))
        if not chunk:
            raise ConnectionResetError("connection closed by the peer")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _recvjson(sock: socket.socket) -> Any:
    (size,) = struct.unpack("<i", _recvall(sock, 4))
    return json.loads(_recvall(sock, size).decode())


class TrackerClient:
    """The tracker's small JSON protocol over a plain socket with timeouts (tvm.rpc.TrackerSession has none,
    and retries a refused connection for a minute)."""

    def __init__(self, host: str, port: int, timeout: float = 10.0) -> None:
        self.address = f"{host}:{port}"
        try:
            self.sock = socket.create_connection((host, port), timeout=timeout)
            self.sock.sendall(struct.pack("<i", RPC_TRACKER_MAGIC))
            (magic,) = struct.unpack("<i", _recvall(self.sock, 4))
        except socket.timeout as err:
            raise RPCError(f"the RPC tracker at {self.address} did not answer within {timeout:g}s") from err
        except OSError as err:
            raise RPCError(f"no RPC tracker at {self.address} ({err.strerror or err}): start one with"
                           f" python -m tvm.exec.rpc_tracker --host {LAN_HINT} --port {port}"
                           f" ({NO_AUTH_NOTE}; emulated board: python scripts/board.py start)") from err
        if magic != RPC_TRACKER_MAGIC:
            self.close()
            raise RPCError(f"{self.address} is not a TVM RPC tracker")

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def summary(self) -> dict[str, Any]:
        try:
            _sendjson(self.sock, [TRACKER_SUMMARY])
            value = _recvjson(self.sock)
        except OSError as err:
            raise RPCError(f"the RPC tracker at {self.address} failed to answer a summary request: {err}") from err
        if value[0] != TRACKER_SUCCESS:
            raise RPCError(f"the RPC tracker at {self.address} answered {value!r}")
        return value[1]

    def request(self, key: str, timeout: float, priority: int = 1) -> tuple[str, int, str]:
        """(host, port, matchkey) of a free server with `key`; waits at most `timeout` s for one to be free."""
        self.sock.settimeout(timeout)
        try:
            _sendjson(self.sock, [TRACKER_REQUEST, key, "", priority])
            value = _recvjson(self.sock)
        except socket.timeout as err:
            raise RPCError(f"no board with key {key!r} became free at the tracker {self.address} within"
                           f" {timeout:g}s: it is busy with another session, or its server is wedged after a"
                           f" crash ({RESTART_HINT})") from err
        except OSError as err:
            raise RPCError(f"the RPC tracker at {self.address} dropped the request for {key!r}: {err}") from err
        if value[0] != TRACKER_SUCCESS:
            raise RPCError(f"the RPC tracker at {self.address} refused the request for {key!r}: {value!r}")
        url, port, matchkey = value[1]
        return str(url), int(port), str(matchkey)


def tracker_summary(host: str, port: int, timeout: float = 10.0) -> dict[str, Any]:
    """The tracker's summary: {"queue_info": {key: {"free", "pending"}}, "server_info": [...]}."""
    client = TrackerClient(host, port, timeout)
    try:
        return client.summary()
    finally:
        client.close()


def registered_keys(summary: Mapping[str, Any]) -> list[str]:
    keys = {str(item.get("key", "")).split(":", 1)[-1] for item in summary.get("server_info", [])}
    keys |= {k for k, q in summary.get("queue_info", {}).items() if q.get("free", 0)}
    return sorted(k for k in keys if k)


# ----------------------------------------------------------------------------------------------- watchdog


def _short(err: BaseException) -> str:
    """The meaningful last line(s) of a TVM error (they carry C++ and Python backtraces)."""
    text = str(err).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith(("File ", "Traceback", "[bt]", "Stack trace"))]
    if not lines:
        return type(err).__name__
    last = lines[-1]
    if last.endswith(":") and len(lines) > 1:
        last = lines[-2] + " " + last
    return re.sub(r"^(tvm\.error\.)?\w*Error: ", "", last)


def _elf_machine(path: Path) -> str | None:
    try:
        head = path.read_bytes()[:20]
    except OSError:
        return None
    if len(head) < 20 or head[:4] != b"\x7fELF":
        return None
    (machine,) = struct.unpack("<H", head[18:20])
    return _ELF_MACHINES.get(machine, f"machine {machine}")


def newer_cpu_features(target: Mapping[str, Any]) -> list[str]:
    """The features of a library's target a Raspberry Pi 4 (Cortex-A72) lacks, e.g. ['cortex-a76', '+dotprod']."""
    found = []
    mcpu = str(target.get("mcpu", ""))
    if mcpu.startswith(("cortex-", "neoverse", "apple-")) and mcpu not in _A72_COMPATIBLE:
        found.append(mcpu)
    attrs = target.get("mattr", [])
    attrs = [attrs] if isinstance(attrs, str) else list(attrs)
    found += [a for a in attrs if str(a).lstrip("+") in _NEWER_THAN_A72 and str(a).startswith("+")]
    return found


class _Session:
    """One RPC session with a deadline; runs each remote step under a watchdog and explains failures."""

    def __init__(self, address: str, key: str | None, session_timeout: float, connect_timeout: float,
                 library: Path | None = None, metadata: Mapping[str, Any] | None = None) -> None:
        self.address = address
        self.key = key
        self.session_timeout = float(session_timeout or 0)
        self.connect_timeout = float(connect_timeout)
        self.library = library
        self.metadata = dict(metadata or {})
        self.started = time.monotonic()
        self.remote: Any = None
        self.dead: str | None = None
        self.step_timeout = STEP_TIMEOUT_S

    def _timeout(self) -> float:
        if self.session_timeout <= 0:
            return self.step_timeout  # no session deadline: each step still has its own
        remaining = self.session_timeout - (time.monotonic() - self.started)
        return min(max(remaining, 0.0) + max(self.connect_timeout, 10.0), self.step_timeout)

    def learn_step(self, seconds: float) -> None:
        """A step took `seconds`: allow slow boards 4x that per step (never less than STEP_TIMEOUT_S)."""
        self.step_timeout = max(self.step_timeout, 4.0 * seconds)

    def call(self, fn: Callable[[], T], stage: str, timeout: float | None = -1.0) -> T:
        if self.dead:
            raise RPCError(self.dead)
        limit = self._timeout() if timeout == -1.0 else timeout
        box: dict[str, Any] = {}

        def target() -> None:
            try:
                box["value"] = fn()
            except BaseException as err:  # noqa: BLE001 - handed to the caller's thread
                box["error"] = err

        worker = threading.Thread(target=target, name=f"isquant-rpc: {stage}", daemon=True)
        worker.start()
        worker.join(limit)
        if worker.is_alive():
            # Unblock the stuck TVM call: a thread still inside TVM's C++ socket code at interpreter exit
            # aborts the process ("terminate called without an active exception").
            _shutdown_sockets_to(self.address)
            worker.join(5.0)
            self.dead = (f"{stage}: no answer from the board at {self.address} within {limit:.0f}s"
                         f" (the board is unreachable, or its server is wedged after a crashed session: {RESTART_HINT})")
            raise RPCError(self.dead)
        if "error" in box:
            err = box["error"]
            if isinstance(err, IsquantError):
                raise err
            raise self.explain(err, stage) from err
        return box["value"]

    def explain(self, err: BaseException, stage: str) -> RPCError:
        text = str(err)
        short = _short(err)
        elapsed = time.monotonic() - self.started
        if "RPCSessionTimeoutError" in text or (
                self.session_timeout > 0 and elapsed >= self.session_timeout * 0.95 and _is_disconnect(text)):
            self.dead = (f"{stage}: the board ended the session when its {self.session_timeout:g}s session timeout"
                         " expired; give it more time with --session-timeout SECONDS (untuned models on a small"
                         " board are slow)")
            return RPCError(self.dead)
        if _is_disconnect(text):
            msg = (f"{stage}: the board's RPC session at {self.address} died (the server process crashed or was"
                   " killed)")
            features = newer_cpu_features(self.metadata.get("target", {}))
            if features:
                msg += (f"; this library uses {', '.join(features)}, which a Raspberry Pi 4 (Cortex-A72) lacks, so"
                        " it dies there with SIGILL (illegal instruction): rebuild it with --target rasp4b")
            self.dead = f"{msg}. A stock TVM server takes no new session after a crash: {RESTART_HINT}"
            return RPCError(self.dead)
        if stage.startswith("connect"):
            return RPCError(f"{stage}: {short}")
        if stage.startswith("load"):
            arch = _elf_machine(self.library) if self.library else None
            hint = ""
            if arch and re.search(r"ELF|wrong|invalid|cannot open shared object|format", text, re.I):
                hint = (f"; {self.library.name} is an {arch} library: the board must be the same architecture"
                        " (compile with --target rasp4b or rasp5 for a Raspberry Pi)")
            elif re.search(r"version", text, re.I):
                hint = ("; the board's TVM runtime cannot read this library: install the host's apache-tvm version"
                        " on the board")
            return RPCError(f"the board could not load {self.library.name if self.library else 'the library'}:"
                            f" {short}{hint}")
        return RPCError(f"{stage} on the board failed: {short}")


def _shutdown_sockets_to(address: str) -> int:
    """shutdown() this process's TCP sockets connected to `address` (host:port), which makes a TVM call blocked
    on them return with an error. The sockets stay open (TVM closes them); returns how many were shut down."""
    host, _, port = address.rpartition(":")
    try:
        peers = {info[4][0] for info in socket.getaddrinfo(host, int(port), proto=socket.IPPROTO_TCP)}
    except (OSError, ValueError):
        return 0
    fd_dir = "/proc/self/fd" if os.path.isdir("/proc/self/fd") else "/dev/fd"
    count = 0
    for name in os.listdir(fd_dir):
        try:
            dup = os.dup(int(name))
        except (OSError, ValueError):
            continue
        try:
            sock = socket.socket(fileno=dup)
        except OSError:  # not a socket
            os.close(dup)
            continue
        try:
            peer = sock.getpeername()
            if sock.type == socket.SOCK_STREAM and peer[0] in peers and peer[1] == int(port):
                sock.shutdown(socket.SHUT_RDWR)
                count += 1
        except (OSError, IndexError, TypeError):
            pass
        finally:
            sock.close()  # closes only the duplicate
    return count


def _is_disconnect(text: str) -> bool:
    return bool(re.search(r"kShutdown|RPCCode::k|Socket|connection (?:reset|closed|refused|aborted)|Broken pipe|"
                          r"closed by|end of file|\bEOF\b|RPCSessionTimeoutError", text, re.I))


# ----------------------------------------------------------------------------------------------- versions


def host_versions() -> dict[str, str]:
    import tvm
    import tvm_ffi

    return {"tvm": str(tvm.__version__), "tvm_ffi": str(getattr(tvm_ffi, "__version__", "unknown"))}


def remote_versions(remote: Any) -> dict[str, str | None]:
    """The board's apache-tvm / apache-tvm-ffi versions, read from <site-packages>/tvm/_version.py on the board.

    TVM 0.27's RPC server registers no version function (`runtime.GetVersion` and friends do not exist), but it
    serves `tvm.rpc.server.download`, which reads a file by absolute path; the wheel records its version in
    tvm/_version.py. The usual site-packages folders are tried (and $ISQUANT_BOARD_SITE first)."""
    sites = list(SITE_CANDIDATES)
    extra = os.environ.get("ISQUANT_BOARD_SITE")
    if extra:
        sites.insert(0, extra.rstrip("/"))
    try:  # a board laid out like this host (same venv path), or a loopback server
        import tvm

        sites.append(str(Path(tvm.__file__).resolve().parent.parent))
    except Exception:  # noqa: BLE001
        pass
    for site in sites:
        try:
            text = bytes(remote.download(f"{site}/tvm/_version.py")).decode("utf-8", "replace")
        except Exception:  # noqa: BLE001 - not there: try the next folder
            continue
        found = re.search(r"""^(?:__)?version(?:__)?\s*=\s*(?:version\s*=\s*)?['"]([^'"]+)['"]""", text, re.M)
        if not found:
            continue
        out: dict[str, str | None] = {"tvm": found.group(1), "tvm_ffi": None, "site": site}
        try:
            ffi = bytes(remote.download(f"{site}/tvm_ffi/_version.py")).decode("utf-8", "replace")
            m = re.search(r"""^(?:__)?version(?:__)?\s*=\s*(?:version\s*=\s*)?['"]([^'"]+)['"]""", ffi, re.M)
            out["tvm_ffi"] = m.group(1) if m else None
        except Exception:  # noqa: BLE001
            pass
        return out
    return {"tvm": None, "tvm_ffi": None, "site": None}


# ----------------------------------------------------------------------------------------------- sessions


def open_session(rpc: str | None = None, tracker: str | None = None, key: str | None = None,
                 session_timeout: float = 600.0, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
                 library: Path | None = None, metadata: Mapping[str, Any] | None = None,
                 quiet: bool = False) -> tuple[Any, _Session, dict[str, Any]]:
    """Connect (directly or through the tracker); returns the tvm RPCSession, its watchdog and the info dict."""
    from tvm import rpc as tvm_rpc

    if rpc and tracker:
        raise RPCError("use either --rpc HOST:PORT or --rpc-tracker HOST[:PORT] --rpc-key KEY, not both")
    if not rpc and not tracker:
        raise RPCError("no board given: --rpc HOST:PORT or --rpc-tracker HOST[:PORT] --rpc-key KEY")
    info: dict[str, Any] = {"key": key, "tracker": None}
    t0 = time.monotonic()
    if tracker:
        thost, tport = parse_address(tracker, DEFAULT_TRACKER_PORT, "--rpc-tracker")
        info["tracker"] = f"{thost}:{tport}"
        if not key:
            raise RPCError(f"--rpc-tracker {thost}:{tport} needs --rpc-key KEY (the board's key, e.g. rasp4b)")
        _note(quiet, f"rpc: tracker {thost}:{tport}, key {key!r}")
        client = TrackerClient(thost, tport, timeout=min(connect_timeout, 10.0))
        try:
            summary = client.summary()
            servers = [s for s in summary.get("server_info", []) if str(s.get("key", "")).split(":", 1)[-1] == key]
            if not servers and not summary.get("queue_info", {}).get(key, {}).get("free"):
                keys = registered_keys(summary)
                raise RPCError(f"no board with key {key!r} is registered at the tracker {thost}:{tport}"
                               f" (registered: {', '.join(keys) or 'none'}); start the board's server with"
                               f" --tracker {thost}:{tport} --key {key}, or, if it was there before, it stopped or"
                               f" crashed: {RESTART_HINT}")
            host, port, matchkey = client.request(key, timeout=connect_timeout)
        finally:
            client.close()
        conn_key = matchkey
    else:
        host, port = parse_address(rpc, None, "--rpc")
        conn_key = key or ""
    address = f"{host}:{port}"
    info["rpc"] = address
    _note(quiet, f"rpc: board {address}" + (f" (key {key!r})" if key else ""))
    sess = _Session(address, key, session_timeout, connect_timeout, library, metadata)

    def connect() -> Any:
        return tvm_rpc.connect(host, port, conn_key, session_timeout=session_timeout or 0)

    try:
        remote = sess.call(connect, f"connecting to the RPC server at {address}", timeout=connect_timeout)
    except RPCError as err:
        cause = str(err.__cause__ or err)
        if re.search(r"Connect to .* failed|refused", cause):
            raise RPCError(f"no RPC server listening at {address}: start one on the board with"
                           f" python -m tvm.exec.rpc_server --host {LAN_HINT} --port {port}"
                           f" ({NO_AUTH_NOTE}; emulated board: python scripts/board.py start)") from err
        if re.search(r"mismatch|cannot find server that matches", cause, re.I):
            raise RPCError(f"the RPC server at {address} refused key {conn_key!r}: a server registered at a tracker"
                           " only takes sessions handed out by that tracker (use --rpc-tracker HOST:PORT"
                           " --rpc-key KEY)") from err
        raise
    sess.started = time.monotonic()  # the server's session clock starts at the handshake
    sess.remote = remote
    ours = host_versions()
    theirs = sess.call(lambda: remote_versions(remote), "reading the board's TVM version", timeout=connect_timeout)
    info.update({
        "device": f"remote cpu {key!r} at {address}" if key else f"remote cpu at {address}",
        "remote_tvm_version": theirs["tvm"] or "unknown",
        "remote_tvm_ffi_version": theirs["tvm_ffi"] or "unknown",
        "host_tvm_version": ours["tvm"],
        "host_tvm_ffi_version": ours["tvm_ffi"],
        "session_timeout": session_timeout,
        "connect_s": round(time.monotonic() - t0, 3),
    })
    if theirs["tvm"] is None:
        info["version_match"] = None
        log.info("could not read the board's TVM version (not in %s); make sure it runs apache-tvm==%s",
                 ", ".join(SITE_CANDIDATES[:1]) + ", ...", ours["tvm"])
    else:
        info["version_match"] = theirs["tvm"] == ours["tvm"] and theirs["tvm_ffi"] in (None, ours["tvm_ffi"])
        if not info["version_match"]:
            log.warning("version mismatch: the board at %s runs apache-tvm %s (apache-tvm-ffi %s), this host %s (%s):"
                        " libraries built here may fail to load there. Fix it on the board: pip install"
                        " apache-tvm==%s apache-tvm-ffi==%s", address, theirs["tvm"], theirs["tvm_ffi"],
                        ours["tvm"], ours["tvm_ffi"], ours["tvm"], ours["tvm_ffi"])
    return remote, sess, info


def _note(quiet: bool, msg: str) -> None:
    log.info(msg)
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


class RemoteRunner(VMRunner):
    """A VMRunner whose VM lives on the board; every call is watched (no hangs) and explained (RPCError)."""

    def __init__(self, remote: Any, lib: Any, metadata: Mapping[str, Any], session: _Session) -> None:
        self.remote = remote
        self.session = session
        device = remote.cpu(0)
        session.call(lambda: VMRunner.__init__(self, lib, device, metadata), "starting the Relax VM")

    def run(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        started = time.monotonic()
        # inputs were checked against the metadata before upload; a failure here is the board's
        out = self.session.call(lambda: VMRunner.run_unchecked(self, inputs), "running the model")
        self.session.learn_step(time.monotonic() - started)
        return out

    def benchmark(self, inputs: Mapping[str, np.ndarray], repeat: int = 10, number: int = 1,
                  warmup: int = 1) -> Timing:
        """One watched remote call per measurement, so a vanished board is noticed within a step's timeout
        and a Ctrl-C between measurements at once."""
        if repeat < 1 or number < 1:
            raise InputError("--repeat and --number must be at least 1")
        args = self.session.call(lambda: self._device_args(inputs), "uploading the inputs")
        for i in range(warmup):
            started = time.monotonic()
            self.session.call(lambda: self.vm["main"](*args), "warm-up run")
            self.session.learn_step((time.monotonic() - started) * number)
        timer = self.session.call(lambda: self.vm.time_evaluator("main", self.device, number=number, repeat=1),
                                  "preparing the timer")
        results: list[float] = []
        for i in range(repeat):
            results.extend(self.session.call(lambda: list(timer(*args).results), f"timed run {i + 1}/{repeat}"))
        return Timing.from_seconds(results, number)

    def close(self) -> None:
        """Drop the VM and the session (the server ends the session and takes the next one)."""
        self.vm = None
        self.device = None  # an RPC device holds its session (dev._rpc_sess)
        self.remote = None
        self.session.remote = None
        self.session.dead = "the RPC session was closed"


def connect_runner(library: str | Path, rpc: str | None = None, tracker: str | None = None, key: str | None = None,
                   session_timeout: float = 600.0, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
                   quiet: bool = False) -> tuple[RemoteRunner, dict[str, Any]]:
    """Connect to a board, upload `library` (a .so from `compile`), load it there and return a runner on the
    board's CPU plus an info dict (device, rpc, tracker, key, remote/host TVM versions).

    `session_timeout` (s) is enforced by the board; every step also has a client-side watchdog, so a dead or
    wedged board gives an RPCError instead of a hang. `connect_timeout` bounds the tracker request and the
    handshake."""
    path = Path(library)
    if not path.is_file():
        raise RPCError(f"{path}: no such library (build one with `python -m isquant_tvm compile`)")
    if path.suffix in (".tar", ".o"):
        raise RPCError(f"{path}: a {path.suffix} makes the board link it with its own C compiler; export a .so"
                       " (compile -o model.so cross-links it on this host)")
    check_library(path)  # a truncated .so crashed the board server's child: refuse it before the upload
    metadata = read_metadata(path)
    remote, sess, info = open_session(rpc, tracker, key, session_timeout, connect_timeout, path, metadata, quiet)
    name = path.name
    # at least 1 MB/s on top of the step timeout: a 45 MB ResNet library over slow Wi-Fi still fits
    sess.call(lambda: remote.upload(str(path), name), f"uploading {name}",
              timeout=sess.step_timeout + path.stat().st_size / 1e6)
    lib = sess.call(lambda: remote.load_module(name), f"loading {name}")
    runner = RemoteRunner(remote, lib, metadata, sess)
    info["library"] = str(path)
    target = metadata.get("target", {})
    if target:
        info["library_target"] = {k: target[k] for k in ("mtriple", "mcpu", "mattr") if k in target}
    return runner, info


def run_remote(library: str | Path, inputs: Mapping[str, np.ndarray] | str | Path | None = None,
               rpc: str | None = None, tracker: str | None = None, key: str | None = None, repeat: int = 0,
               number: int = 1, session_timeout: float = 600.0, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
               fill_mode: str = "random", quiet: bool = True, check_finite: bool = False
               ) -> tuple[list[np.ndarray], Timing | None, dict[str, Any]]:
    """`iq.run` on a board: outputs, timing (with repeat > 0) and the info dict (median_ms added when timed)."""
    runner, info = connect_runner(library, rpc=rpc, tracker=tracker, key=key, session_timeout=session_timeout,
                                  connect_timeout=connect_timeout, quiet=quiet)
    try:
        feed = read_inputs(inputs, runner, fill_mode)
        _check_finite(feed, strict=check_finite, source=str(inputs) if isinstance(inputs, (str, Path)) else None)
        outputs = runner.run(feed)
        timing = runner.benchmark(feed, repeat=repeat, number=number) if repeat > 0 else None
    finally:
        runner.close()
    if timing:
        info.update(timing.to_json())
    return outputs, timing, info


__all__ = ["connect_runner", "run_remote", "open_session", "tracker_summary", "remote_versions", "RemoteRunner",
           "TrackerClient", "parse_address", "DEFAULT_TRACKER_PORT", "newer_cpu_features"]
