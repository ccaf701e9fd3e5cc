"""The emulated Raspberry Pi: a stand-in board for RPC tests, CI and demos without hardware.

Debian's arm64 CPython 3.11 plus the aarch64 ``apache-tvm`` wheel from PyPI, run by ``qemu-aarch64-static``
in user mode (no binfmt_misc, no chroot, no kernel state), serve the real ``tvm.exec.rpc_server``. A host
``tvm.exec.rpc_tracker`` on 127.0.0.1 hands the server out by key (``rasp4b``), exactly as with a real Pi.
``QEMU_CPU=cortex-a72`` (Pi 4) or ``cortex-a76`` (Pi 5) makes instructions the real CPU lacks die with SIGILL.

Everything lives under one root (default ``./.board``, or ``$ISQUANT_BOARD_ROOT``)::

    sysroot/            Debian arm64 python3.11 + wheels in usr/local/lib/python3.11/dist-packages
    sysroot/usr/bin/python3   launcher script: qemu -L sysroot -0 <launcher> python3.11 "$@"
    bin/qemu-aarch64-static   unpacked from Debian's qemu-user-static .deb when not installed
    apt-arm64/          private apt configuration and lists (the host's apt state is not touched)
    cache/              downloaded .debs and wheels (deletable)
    run/                state.json, tracker.log, server.log of the running board

Emulated timings say nothing about a real Pi: never assert on them or tune against this board.
"""
from __future__ import annotations

import contextlib
import fcntl
import glob
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

from ..errors import IsquantError
from ..util.fileio import atomic_write_bytes

log = logging.getLogger(__name__)

DEFAULT_ROOT = Path(".board")
HOST = "127.0.0.1"
CPUS = {"cortex-a72": "rasp4b", "cortex-a76": "rasp5"}  # qemu -cpu model -> the key a Pi of that kind uses
BOARD_DEBS = ("python3.11-minimal", "libpython3.11-stdlib", "libstdc++6")  # apt resolves their dependencies
# Installed on the board with the host's exact versions, so both RPC peers match.
BOARD_DISTS = ("apache-tvm", "apache-tvm-ffi", "numpy", "ml-dtypes", "typing-extensions", "psutil", "cloudpickle")
HOST_MODULES = ("tvm", "tvm_ffi", "tornado", "cloudpickle", "psutil")
CROSS_PACKAGES = ("gcc-aarch64-linux-gnu", "libc6-dev-arm64-cross")
WHEEL_PLATFORMS = ("manylinux_2_28_aarch64", "manylinux_2_17_aarch64", "manylinux2014_aarch64")
BIND_RE = re.compile(r"bind to ([0-9.]+):(\d+)")
CRASH_RE = re.compile(r"exited unsuccessfully with error code (-?\d+)")


class BoardError(IsquantError):
    """The emulated board could not be set up, started or reached."""


class BoardUnavailable(BoardError):
    """This machine cannot build the board (no apt, no network to Debian/PyPI, not root, not x86-64)."""


# ----------------------------------------------------------------------------------------------- paths


def default_root() -> Path:
    return Path(os.environ.get("ISQUANT_BOARD_ROOT") or DEFAULT_ROOT)


class Layout:
    """Paths under a board root."""

    def __init__(self, root: str | Path | None = None, run_dir: str | Path | None = None) -> None:
        self.root = Path(root if root is not None else default_root()).resolve()
        self.sysroot = self.root / "sysroot"
        self.site = self.sysroot / "usr/local/lib/python3.11/dist-packages"
        self.launcher = self.sysroot / "usr/bin/python3"
        self.board_python = self.sysroot / "usr/bin/python3.11"
        self.cache = self.root / "cache"
        self.aptdir = self.root / "apt-arm64"
        self.bin = self.root / "bin"
        self.run = Path(run_dir).resolve() if run_dir is not None else self.root / "run"
        self.debs_stamp = self.sysroot / ".debs.stamp"
        self.wheels_stamp = self.site / ".wheels.stamp"
        self.check_stamp = self.root / ".check.stamp"
        self.state = self.run / "state.json"


# ----------------------------------------------------------------------------------------------- helpers


def _say(quiet: bool, msg: str) -> None:
    log.info(msg)
    if not quiet:
        print(f"board: {msg}", file=sys.stderr, flush=True)


def _run(cmd: Sequence[str], what: str, timeout: float = 600, env: dict[str, str] | None = None,
         cwd: str | Path | None = None, unavailable: bool = False) -> str:
    """Run a command; on failure raise BoardError (or BoardUnavailable) with the tail of its output."""
    try:
        proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, env=env,
                              cwd=cwd, stdin=subprocess.DEVNULL)
    except FileNotFoundError as err:
        raise BoardUnavailable(f"{what}: {cmd[0]} not found on this machine") from err
    except subprocess.TimeoutExpired as err:
        raise BoardError(f"{what}: `{' '.join(cmd[:4])} ...` took over {timeout:.0f}s") from err
    if proc.returncode != 0:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-4:])
        cls = BoardUnavailable if unavailable else BoardError
        raise cls(f"{what} failed (exit {proc.returncode}): {tail}")
    return proc.stdout


def _apt_get(args: Sequence[str], what: str, env: dict[str, str] | None = None, cwd: str | Path | None = None,
             tries: int = 3) -> str:
    """apt-get with a dpkg lock timeout and a few retries (a concurrent apt run or a network hiccup)."""
    extra = ["-o", "DPkg::Lock::Timeout=300"]
    if os.geteuid() == 0:
        extra += ["-o", "APT::Sandbox::User=root"]
    full_env = dict(os.environ if env is None else env, DEBIAN_FRONTEND="noninteractive")
    for attempt in range(tries):
        try:
            return _run(["apt-get", *extra, *args], what, env=full_env, cwd=cwd, unavailable=True)
        except BoardUnavailable:
            if attempt == tries - 1:
                raise
            time.sleep(5)
    raise AssertionError("unreachable")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock, so two concurrent setups of one root do not interleave."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _write_atomic(path: Path, text: str, mode: int | None = None) -> None:
    atomic_write_bytes(path, text.encode(), mode=0o644 if mode is None else mode)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def host_versions(host_python: str | None = None) -> dict[str, str]:
    """Installed versions of the board's packages in the host python (the board gets exactly these)."""
    code = ("import importlib.metadata as m, json, sys\n"
            "out = {}\n"
            f"for d in {list(BOARD_DISTS)!r}:\n"
            "    try: out[d] = m.version(d)\n"
            "    except m.PackageNotFoundError: pass\n"
            "print(json.dumps(out))\n")
    text = _run([host_python or sys.executable, "-c", code], "reading the host's package versions")
    versions = json.loads(text.strip().splitlines()[-1])
    for need in ("apache-tvm", "apache-tvm-ffi"):
        if need not in versions:
            raise BoardError(f"the host python {host_python or sys.executable} has no {need}: install the project"
                             " first (bash scripts/setup.sh)")
    return versions


# ----------------------------------------------------------------------------------------------- setup


def setup(root: str | Path | None = None, host_python: str | None = None, refresh: bool = False,
          quiet: bool = False) -> Layout:
    """Build (or check) the board root. Idempotent: a re-run with everything in place takes about a second.

    Needs Debian's archive and PyPI the first time (apt-get and pip, their ordinary clients); afterwards the
    root works offline. `refresh` re-resolves the arm64 packages and re-installs the wheels."""
    import platform

    lay = Layout(root)
    if platform.machine() not in ("x86_64", "AMD64"):
        raise BoardUnavailable(f"the emulated board is set up on x86-64 hosts; this is {platform.machine()}")
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise BoardUnavailable("the emulated board is built from Debian packages: apt-get and dpkg-deb are needed")
    host_py = host_python or sys.executable
    start = time.monotonic()
    with _locked(lay.root / ".setup.lock"):
        _ensure_cross_toolchain(quiet)
        qemu = _ensure_qemu(lay, quiet)
        versions = _check_host_python(host_py)
        _ensure_debs(lay, refresh, quiet)
        _write_launcher(lay, qemu)
        _ensure_wheels(lay, host_py, versions, refresh, quiet)
        _check_board(lay, qemu, versions, quiet)
    _say(quiet, f"ready in {lay.root} ({time.monotonic() - start:.1f}s)")
    return lay


def _ensure_cross_toolchain(quiet: bool) -> None:
    """aarch64-linux-gnu-gcc links the libraries the board runs (the board itself needs no compiler)."""
    if shutil.which("aarch64-linux-gnu-gcc") and Path("/usr/aarch64-linux-gnu/lib/crti.o").exists():
        return
    if os.geteuid() != 0:
        raise BoardUnavailable("the aarch64 cross compiler is missing: sudo apt-get install "
                               + " ".join(CROSS_PACKAGES))
    _say(quiet, "installing the aarch64 cross compiler (apt-get)")
    _apt_get(["update", "-qq"], "apt-get update")
    _apt_get(["install", "-y", "-qq", "--no-install-recommends", *CROSS_PACKAGES], "installing the cross compiler")


def qemu_binary(root: str | Path | None = None) -> Path | None:
    """qemu-aarch64-static: the board root's own copy, else an installed one."""
    own = Layout(root).bin / "qemu-aarch64-static"
    if own.exists():
        return own
    found = shutil.which("qemu-aarch64-static")
    return Path(found) if found else None


def _ensure_qemu(lay: Layout, quiet: bool) -> Path:
    """Use an installed qemu-aarch64-static; otherwise unpack just that 13 MB static binary from Debian's
    qemu-user-static .deb (`apt-get download`: no 380 MB install, no change to the host's packages)."""
    found = qemu_binary(lay.root)
    if found:
        return found
    _say(quiet, "fetching qemu-aarch64-static from Debian's qemu-user-static package")
    debs = lay.cache / "host-debs"
    debs.mkdir(parents=True, exist_ok=True)
    for old in debs.glob("qemu-user-static_*.deb"):
        old.unlink()
    try:
        _apt_get(["download", "-qq", "qemu-user-static"], "apt-get download qemu-user-static", cwd=debs, tries=1)
    except BoardUnavailable:
        if os.geteuid() != 0:
            raise
        _apt_get(["update", "-qq"], "apt-get update")  # a fresh machine has no package lists yet
        _apt_get(["download", "-qq", "qemu-user-static"], "apt-get download qemu-user-static", cwd=debs)
    deb = next(iter(sorted(debs.glob("qemu-user-static_*.deb"))), None)
    if deb is None:
        raise BoardUnavailable("apt-get download qemu-user-static produced no .deb")
    lay.bin.mkdir(parents=True, exist_ok=True)
    tmp = lay.bin / "qemu-aarch64-static.tmp"
    with open(tmp, "wb") as out:
        deb_proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
        tar = subprocess.run(["tar", "-x", "-O", "./usr/bin/qemu-aarch64-static"], stdin=deb_proc.stdout,
                             stdout=out, stderr=subprocess.PIPE)
        deb_proc.wait()
    if tar.returncode != 0 or deb_proc.returncode != 0 or tmp.stat().st_size < 1_000_000:
        raise BoardError(f"could not unpack qemu-aarch64-static from {deb.name}: {tar.stderr.decode().strip()}")
    tmp.chmod(0o755)
    os.replace(tmp, lay.bin / "qemu-aarch64-static")
    return lay.bin / "qemu-aarch64-static"


def _check_host_python(host_py: str) -> dict[str, str]:
    code = ("import importlib.util, sys\n"
            f"missing = [m for m in {list(HOST_MODULES)!r} if importlib.util.find_spec(m) is None]\n"
            "sys.exit(f'missing: {missing}' if missing else 0)\n")
    try:
        _run([host_py, "-c", code], "checking the host python")
    except BoardError as err:
        raise BoardError(f"the host python {host_py} lacks the RPC packages ({err}); install the project with"
                         " bash scripts/setup.sh (apache-tvm, tornado, cloudpickle, psutil)") from err
    return host_versions(host_py)


def _apt_env(lay: Layout) -> dict[str, str]:
    return dict(os.environ, APT_CONFIG=str(lay.aptdir / "etc/apt.conf"))


def _write_apt_config(lay: Layout) -> None:
    """A private apt configuration for arm64 over the host's own Debian sources (no dpkg --add-architecture)."""
    apt = lay.aptdir
    for sub in ("lists/partial", "archives/partial", "cache", "etc/sources.list.d"):
        (apt / sub).mkdir(parents=True, exist_ok=True)
    if not (apt / "status").exists():
        (apt / "status").write_text("")  # empty dpkg status: nothing counts as installed
    sources = ""
    deb822 = Path("/etc/apt/sources.list.d/debian.sources")
    if deb822.exists():
        lines = []
        for line in deb822.read_text().splitlines():
            if line.startswith("Architectures:"):
                continue
            lines.append(line)
            if line.startswith("Types:"):
                lines.append("Architectures: arm64")
        sources = "\n".join(lines) + "\n"
    _write_atomic(apt / "etc/sources.list.d/debian.sources", sources)
    one_line = ""
    if Path("/etc/apt/sources.list").exists():
        for line in Path("/etc/apt/sources.list").read_text().splitlines():
            m = re.match(r"^deb (\[([^]]*)\] )?(.*)$", line.strip())
            if m:
                one_line += f"deb [arch=arm64 {m.group(2) or ''}] {m.group(3)}\n"
    _write_atomic(apt / "etc/sources.list", one_line)
    if "Types: deb" not in sources and not one_line:
        raise BoardUnavailable("no Debian apt source found on this host (/etc/apt/sources.list.d/debian.sources"
                               " or /etc/apt/sources.list): the board's arm64 python comes from Debian")
    conf = (f'APT::Architecture "arm64";\nAPT::Architectures {{ "arm64"; }};\n'
            f'Dir::Etc::sourcelist "{apt}/etc/sources.list";\nDir::Etc::sourceparts "{apt}/etc/sources.list.d";\n'
            f'Dir::State::lists "{apt}/lists";\nDir::State::status "{apt}/status";\n'
            f'Dir::Cache "{apt}/cache";\nDir::Cache::archives "{apt}/archives";\nAcquire::Languages "none";\n')
    if os.geteuid() == 0:
        conf += 'APT::Sandbox::User "root";\n'
    _write_atomic(apt / "etc/apt.conf", conf)


def _ensure_debs(lay: Layout, refresh: bool, quiet: bool) -> None:
    if not refresh and _read(lay.debs_stamp).strip() and lay.board_python.exists():
        return
    _say(quiet, "resolving Debian arm64 python3.11 (private apt configuration)")
    _write_apt_config(lay)
    env = _apt_env(lay)
    if refresh or not list((lay.aptdir / "lists").glob("*Packages*")):
        _apt_get(["update", "-qq"], "apt-get update (arm64 lists)", env=env)
    sim = _apt_get(["install", "-s", "--no-install-recommends", *BOARD_DEBS], "resolving arm64 packages", env=env)
    want = sorted(f"{m.group(1)}={m.group(2)}" for m in re.finditer(r"^Inst (\S+) (?:\[[^]]*\] )?\(([^ )]+)",
                                                                      sim, re.M))
    if not want:
        raise BoardError(f"apt resolved no arm64 packages for {' '.join(BOARD_DEBS)}")
    if _read(lay.debs_stamp).split() == want and lay.board_python.exists():
        return
    debs = lay.cache / "arm64-debs"
    debs.mkdir(parents=True, exist_ok=True)

    def deb_file(spec: str) -> str | None:
        name, ver = spec.split("=", 1)
        hits = glob.glob(str(debs / f"{glob.escape(name)}_{glob.escape(ver.replace(':', '%3a'))}_*.deb"))
        return hits[0] if hits else None

    missing = [spec for spec in want if deb_file(spec) is None]
    if missing:
        _say(quiet, f"downloading {len(missing)} arm64 .debs")
        _apt_get(["download", "-qq", *missing], "apt-get download (arm64)", env=env, cwd=debs)
    shutil.rmtree(lay.sysroot, ignore_errors=True)
    lay.sysroot.mkdir(parents=True)
    for spec in want:
        path = deb_file(spec)
        if path is None:
            raise BoardError(f"apt-get download did not fetch {spec}")
        _run(["dpkg-deb", "-x", path, str(lay.sysroot)], f"unpacking {Path(path).name}")
    _write_atomic(lay.debs_stamp, "\n".join(want) + "\n")


LAUNCHER = """#!/bin/sh
# Host-side launcher for the board's aarch64 CPython 3.11 under qemu user-mode emulation (isquant_tvm.tools.board).
# sys.executable is this file (qemu -0), so the python processes the TVM RPC server spawns go through
# qemu as well, without binfmt_misc.
export QEMU_CPU="${{BOARD_CPU:-cortex-a72}}"
# Board PATH: nothing from the host (a host g++ would silently build x86 code for the board).
export PATH="${{BOARD_PATH:-{sr}/usr/local/bin:{sr}/usr/bin}}"
if [ "${{BOARD_RUNTIME_ONLY:-1}}" = 1 ]; then export TVM_USE_RUNTIME_LIB=1; fi
ulimit -c 0 2>/dev/null  # no qemu core files when a library dies with SIGILL
exec {qemu} -L {sr} -0 {sr}/usr/bin/python3 {sr}/usr/bin/python3.11 "$@"
"""


def _write_launcher(lay: Layout, qemu: Path) -> None:
    text = LAUNCHER.format(sr=lay.sysroot, qemu=qemu.resolve())
    if _read(lay.launcher) != text:
        if lay.launcher.is_symlink():
            lay.launcher.unlink()  # Debian's python3 -> python3.11 symlink
        _write_atomic(lay.launcher, text, 0o755)
    link = lay.bin / "board-python3"
    if not link.is_symlink():
        lay.bin.mkdir(parents=True, exist_ok=True)
        link.symlink_to(lay.launcher)


def _ensure_wheels(lay: Layout, host_py: str, versions: dict[str, str], refresh: bool, quiet: bool) -> None:
    pins = " ".join(f"{d}=={versions[d]}" for d in BOARD_DISTS if d in versions)
    if not refresh and _read(lay.wheels_stamp).strip() == pins and (lay.site / "tvm/lib/libtvm_runtime.so").exists():
        return
    _say(quiet, f"installing aarch64 wheels: {pins}")
    plat = ["--only-binary=:all:"] + [f"--platform={p}" for p in WHEEL_PLATFORMS] + [
        "--python-version", "3.11", "--implementation", "cp"]
    wheels = lay.cache / "wheels-aarch64"
    wheels.mkdir(parents=True, exist_ok=True)
    pip_env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1")
    _run([host_py, "-m", "pip", "download", "-q", *plat, "-d", str(wheels), *pins.split()],
         "pip download (aarch64 wheels from PyPI)", env=pip_env, unavailable=True)
    shutil.rmtree(lay.site, ignore_errors=True)
    lay.site.mkdir(parents=True)
    _run([host_py, "-m", "pip", "install", "-q", "--no-compile", "--no-index", "--find-links", str(wheels),
          "--target", str(lay.site), *plat, *pins.split()], "pip install --target (board site-packages)", env=pip_env)
    if not (lay.site / "tvm/lib/libtvm_runtime.so").exists():
        raise BoardError("the aarch64 apache-tvm wheel did not install (no tvm/lib/libtvm_runtime.so)")
    # Pre-compiled .pyc halve the emulated start-up; same magic number when the host python is 3.11.
    _say(quiet, "compiling the board's python files")
    same = subprocess.run([host_py, "-c", "import sys; sys.exit(sys.version_info[:2] != (3, 11))"]).returncode == 0
    compiler = host_py if same else str(lay.launcher)
    subprocess.run([compiler, "-m", "compileall", "-q", "-j0", str(lay.sysroot / "usr/lib/python3.11"), str(lay.site)],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/")  # best effort
    _write_atomic(lay.wheels_stamp, pins + "\n")


def _check_board(lay: Layout, qemu: Path, versions: dict[str, str], quiet: bool) -> None:
    stamp = f"{_read(lay.debs_stamp)}{_read(lay.wheels_stamp)}{qemu.resolve()}\n"
    if _read(lay.check_stamp) == stamp:
        return
    _say(quiet, "checking that the board imports TVM under qemu")
    out = _run([str(lay.launcher), "-c",
                "import platform, tvm; print(platform.machine(), platform.python_version(), tvm.__version__)"],
               "starting the board's python under qemu", timeout=300, cwd="/")
    fields = out.split()
    if len(fields) < 3 or fields[0] != "aarch64" or fields[2] != versions["apache-tvm"]:
        raise BoardError(f"board check: expected 'aarch64 3.11.x {versions['apache-tvm']}', got {out.strip()!r}")
    _say(quiet, f"board python: {fields[0]} python {fields[1]} tvm {fields[2]}")
    _write_atomic(lay.check_stamp, stamp)


def is_set_up(root: str | Path | None = None) -> bool:
    lay = Layout(root)
    return bool(_read(lay.debs_stamp).strip() and _read(lay.wheels_stamp).strip() and lay.launcher.exists()
                and _read(lay.check_stamp))


# ----------------------------------------------------------------------------------------------- processes


_CHILDREN: dict[int, subprocess.Popen] = {}  # started by this process: polled so they do not linger as zombies


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    child = _CHILDREN.get(pid)
    if child is not None:
        return child.poll() is None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _spawn(name: str, cmd: Sequence[str], lay: Layout, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start a process in its own process group (so stop() ends its children too), logging to run/NAME.log."""
    lay.run.mkdir(parents=True, exist_ok=True)
    logfile = lay.run / f"{name}.log"
    with open(logfile, "wb") as out:
        proc = subprocess.Popen(list(cmd), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=str(lay.run), env=dict(env or os.environ, PYTHONUNBUFFERED="1"),
                                start_new_session=True)
    _CHILDREN[proc.pid] = proc
    return proc


def _wait_for_bind(name: str, proc: subprocess.Popen, lay: Layout, timeout: float) -> int:
    logfile = lay.run / f"{name}.log"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = BIND_RE.search(_read(logfile))
        if m:
            return int(m.group(2))
        if proc.poll() is not None:
            raise BoardError(f"the {name} exited (code {proc.returncode}) before listening: {_tail(logfile)}")
        time.sleep(0.25)
    _kill_group(proc.pid)
    raise BoardError(f"the {name} did not listen within {timeout:.0f}s: {_tail(logfile)}")


def _tail(path: Path, lines: int = 6) -> str:
    text = [ln for ln in _read(path).splitlines() if ln.strip()]
    return " | ".join(text[-lines:]) or "(empty log)"


def _kill_group(pid: int | None, grace: float = 10.0) -> None:
    """SIGTERM the process group `pid` leads (its forked RPC workers included), SIGKILL after `grace` s."""
    if not pid:
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            break
        except PermissionError:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and (_alive(pid) or _group_alive(pid)):
            time.sleep(0.1)
        if not _alive(pid) and not _group_alive(pid):
            break
    child = _CHILDREN.pop(pid, None)
    if child is not None:
        with contextlib.suppress(Exception):
            child.wait(timeout=1)


def _group_alive(pgid: int) -> bool:
    """Any non-zombie process left in process group `pgid`."""
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            fields = Path(stat).read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def _load_state(lay: Layout) -> dict[str, Any]:
    try:
        return json.loads(lay.state.read_text())
    except (OSError, ValueError):
        return {}


def _save_state(lay: Layout, state: dict[str, Any]) -> None:
    _write_atomic(lay.state, json.dumps(state, indent=2) + "\n")
    t, s = state.get("tracker", {}), state.get("server", {})
    _write_atomic(lay.run / "endpoints", f"TRACKER={HOST}:{t.get('port')} BOARD={HOST}:{s.get('port')}"
                                          f" KEY={s.get('key')} CPU={s.get('cpu')}\n")


def _wait_registered(tracker_port: int, key: str, timeout: float, proc: subprocess.Popen | None = None,
                     lay: Layout | None = None) -> None:
    from ..runtime.rpc import tracker_summary

    deadline = time.monotonic() + timeout
    summary: Any = None
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            summary = tracker_summary(HOST, tracker_port, timeout=5.0)
            if summary["queue_info"].get(key, {}).get("free", 0) > 0:
                return
        if proc is not None and proc.poll() is not None:
            raise BoardError(f"the board server exited (code {proc.returncode}): "
                             f"{_tail(lay.run / 'server.log') if lay else ''}")
        time.sleep(0.25)
    raise BoardError(f"key {key!r} never became free at the tracker {HOST}:{tracker_port} within {timeout:.0f}s:"
                     f" {summary}")


def start(root: str | Path | None = None, cpu: str = "cortex-a72", key: str | None = None,
          tracker_port: int = 9190, server_port: int = 9090, host: str = HOST, run_dir: str | Path | None = None,
          host_python: str | None = None, timeout: float = 180.0, quiet: bool = False) -> dict[str, Any]:
    """Start a tracker (host python) and the board's RPC server (aarch64 under qemu, `QEMU_CPU=cpu`) registered
    with `key` (default: rasp4b for cortex-a72, rasp5 for cortex-a76). Both bind to 127.0.0.1 only; a taken
    port moves to the next free one. Returns the actual endpoints once the key is free at the tracker."""
    if host != HOST:
        raise BoardError("the emulated board binds to 127.0.0.1 only")
    if cpu not in CPUS:
        raise BoardError(f"unknown board cpu {cpu!r}: {', '.join(CPUS)}")
    key = key or CPUS[cpu]
    lay = Layout(root, run_dir)
    setup(lay.root, host_python=host_python, quiet=quiet if not is_set_up(lay.root) else True)
    stop(lay.root, run_dir=lay.run, quiet=True)
    host_py = host_python or sys.executable
    t0 = time.monotonic()
    # The tracker and the board server start in parallel (each takes seconds to import TVM; the emulated one
    # most): the tracker's port is chosen first, and the server retries its tracker connection until it is up.
    want = _free_port(tracker_port, tracker_port + 10)
    tracker_cmd = [host_py, "-m", "tvm.exec.rpc_tracker", "--host", HOST, "--port", str(want),
                   "--port-end", str(tracker_port + 10)]
    tracker = _spawn("tracker", tracker_cmd, lay, env=dict(os.environ, TVM_USE_RUNTIME_LIB="1"))
    state: dict[str, Any] = {"root": str(lay.root), "host_python": host_py,
                             "tracker": {"pid": tracker.pid, "port": want}}
    _save_state(lay, state)
    try:
        server = _spawn_server(lay, state, cpu, key, server_port)
        tport = _wait_for_bind("tracker", tracker, lay, 60)
        if tport != want:  # the port was taken in between: point a new server at the real one
            _kill_group(server.pid)
            state["tracker"]["port"] = tport
            server = _spawn_server(lay, state, cpu, key, server_port)
        info = _finish_server(lay, state, server, timeout)
    except BaseException:
        stop(lay.root, run_dir=lay.run, quiet=True)
        raise
    _say(quiet, f"tracker {HOST}:{tport}, board {info['server']} (key {key}, QEMU_CPU={cpu}) up in"
                f" {time.monotonic() - t0:.1f}s")
    return info


def _free_port(first: int, end: int) -> int:
    """The first port in [first, end) that 127.0.0.1 can bind now (TVM's own search does the same)."""
    import socket

    for port in range(first, end):
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((HOST, port))
                return port
            except OSError:
                continue
    raise BoardError(f"no free port in {first}..{end - 1} on {HOST}")


def _spawn_server(lay: Layout, state: dict[str, Any], cpu: str, key: str, server_port: int) -> subprocess.Popen:
    tport = state["tracker"]["port"]
    tmp = lay.run / "tmp"  # each RPC session works in a fresh temp dir; a crashed one leaves it behind
    tmp.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, BOARD_CPU=cpu, TMPDIR=str(tmp))
    env.pop("PYTHONPATH", None)  # host paths must not leak into the board's python
    server = _spawn("server", [str(lay.launcher), "-m", "tvm.exec.rpc_server", "--host", HOST, "--port",
                               str(server_port), "--port-end", str(server_port + 10), "--tracker", f"{HOST}:{tport}",
                               "--key", key, "--custom-addr", HOST], lay, env=env)
    state["server"] = {"pid": server.pid, "port": None, "cpu": cpu, "key": key, "requested_port": server_port,
                       "started": time.time()}
    _save_state(lay, state)
    return server


def _finish_server(lay: Layout, state: dict[str, Any], server: subprocess.Popen, timeout: float) -> dict[str, Any]:
    sport = _wait_for_bind("server", server, lay, timeout)
    state["server"]["port"] = sport
    _save_state(lay, state)
    _wait_registered(state["tracker"]["port"], state["server"]["key"], 60, server, lay)
    return endpoints(state)


def endpoints(state: dict[str, Any]) -> dict[str, Any]:
    t, s = state.get("tracker", {}), state.get("server", {})
    return {"tracker": f"{HOST}:{t.get('port')}", "tracker_port": t.get("port"), "server": f"{HOST}:{s.get('port')}",
            "server_port": s.get("port"), "key": s.get("key"), "cpu": s.get("cpu")}


def restart_server(root: str | Path | None = None, run_dir: str | Path | None = None, cpu: str | None = None,
                   timeout: float = 180.0, quiet: bool = False) -> dict[str, Any]:
    """Replace the board's RPC server (same key and tracker; optionally another cpu model). Needed after a
    crashed session (SIGILL, a kill): stock TVM's server then still holds its port but never answers."""
    lay = Layout(root, run_dir)
    state = _load_state(lay)
    if not _alive(state.get("tracker", {}).get("pid")) or not state.get("server"):
        raise BoardError("no running board to restart: start it first (python scripts/board.py start)")
    old = state["server"]
    _kill_group(old.get("pid"))
    t0 = time.monotonic()
    server = _spawn_server(lay, state, cpu or old["cpu"], old["key"], old.get("requested_port") or old["port"])
    info = _finish_server(lay, state, server, timeout)
    _say(quiet, f"board server restarted at {info['server']} in {time.monotonic() - t0:.1f}s")
    return info


def kill_server(root: str | Path | None = None, run_dir: str | Path | None = None,
                sig: int = signal.SIGKILL) -> None:
    """Kill the board's RPC server processes abruptly (fault tests); the tracker stays."""
    lay = Layout(root, run_dir)
    pid = _load_state(lay).get("server", {}).get("pid")
    if pid:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, sig)


def stop(root: str | Path | None = None, run_dir: str | Path | None = None, quiet: bool = False) -> None:
    """Stop the board server, then the tracker (whole process groups)."""
    lay = Layout(root, run_dir)
    state = _load_state(lay)
    stopped = []
    for name in ("server", "tracker"):
        pid = state.get(name, {}).get("pid")
        if pid and (_alive(pid) or _group_alive(pid)):
            _kill_group(pid)
            stopped.append(name)
    with contextlib.suppress(FileNotFoundError):
        lay.state.unlink()
    with contextlib.suppress(FileNotFoundError):
        (lay.run / "endpoints").unlink()
    shutil.rmtree(lay.run / "tmp", ignore_errors=True)
    if stopped:
        _say(quiet, f"stopped {' and '.join(stopped)}")


def status(root: str | Path | None = None, run_dir: str | Path | None = None) -> dict[str, Any]:
    """Whether the board is set up and running, its endpoints, and whether the server crashed (then it must be
    restarted: restart_server())."""
    lay = Layout(root, run_dir)
    state = _load_state(lay)
    out: dict[str, Any] = {"root": str(lay.root), "set_up": is_set_up(lay.root), "qemu": str(qemu_binary(lay.root))}
    if not state:
        out["running"] = False
        return out
    out.update(endpoints(state))
    tracker_ok = _alive(state.get("tracker", {}).get("pid"))
    server_ok = _alive(state.get("server", {}).get("pid"))
    crash = CRASH_RE.search(_read(lay.run / "server.log"))
    out.update({"tracker_alive": tracker_ok, "server_alive": server_ok, "running": tracker_ok and server_ok,
                "server_crashed": bool(crash), "free": 0})
    if crash:
        out["crash"] = f"a session exited with code {crash.group(1)}" + (
            " (SIGILL: an instruction this cpu lacks)" if crash.group(1) == "-4" else "")
    if tracker_ok:
        from ..runtime.rpc import tracker_summary

        with contextlib.suppress(Exception):
            summary = tracker_summary(HOST, state["tracker"]["port"], timeout=5.0)
            out["free"] = summary["queue_info"].get(state.get("server", {}).get("key"), {}).get("free", 0)
    out["healthy"] = bool(out["running"] and not crash)
    return out


# ----------------------------------------------------------------------------------------------- selftest


def int8_cnn_module() -> Any:
    """A small int8 conv net (conv -> relu -> requant -> conv -> relu -> maxpool) used by selftest and the tests:
    integer arithmetic, so the board's output must be bit-exact against x86; with +dotprod it contains sdot."""
    from tvm.script import ir as I
    from tvm.script import relax as R

    @I.ir_module
    class CNN:
        @R.function
        def main(x: R.Tensor((1, 3, 32, 32), "int8"), w1: R.Tensor((16, 3, 3, 3), "int8"),
                 w2: R.Tensor((32, 16, 3, 3), "int8")) -> R.Tensor((1, 32, 16, 16), "int32"):
            with R.dataflow():
                c1 = R.nn.relu(R.nn.conv2d(x, w1, padding=(1, 1), out_dtype="int32"))
                q1 = R.astype(R.clip(R.right_shift(c1, R.const(6, "int32")), -128, 127), "int8")
                c2 = R.nn.relu(R.nn.conv2d(q1, w2, padding=(1, 1), out_dtype="int32"))
                p = R.nn.max_pool2d(c2, pool_size=(2, 2), strides=(2, 2))
                R.output(p)
            return p

    return CNN


INT8_CNN_INPUTS = (("x", (1, 3, 32, 32)), ("w1", (16, 3, 3, 3)), ("w2", (32, 16, 3, 3)))


def build_int8_cnn(target: str, output: str | Path) -> Path:
    """Build int8_cnn_module() for a preset (rasp4b, rasp5, x86) into `output` (.so + .json metadata)."""
    from ..util import tvm_compat
    from ..build.export import export_library
    from ..targets.presets import describe, resolve_target

    tgt = resolve_target(target)
    exe = tvm_compat.build(int8_cnn_module(), tgt)
    meta = {"tool": "isquant-tvm", "tvm_version": tvm_compat.TVM_VERSION, "source": "board:int8-cnn",
            "target": describe(tgt), "inputs": [{"name": n, "shape": list(s), "dtype": "int8"}
                                                for n, s in INT8_CNN_INPUTS], "quantization": None}
    return export_library(exe, output, tgt, meta)


def int8_cnn_inputs(seed: int = 0) -> dict[str, Any]:
    import numpy as np

    rng = np.random.default_rng(seed)
    return {n: rng.integers(-128, 128, s, dtype=np.int8) for n, s in INT8_CNN_INPUTS}


def _selftest_models(models: Sequence[str], target: str, info: dict, tmp: Path, quiet: bool) -> tuple[int, int]:
    import numpy as np

    from .. import api
    from ..frontend.loader import random_inputs
    from ..runtime.rpc import run_remote

    passed = failed = 0
    for name in models:
        t = time.monotonic()
        arm, x86 = tmp / f"{name}_{target}.so", tmp / f"{name}_x86.so"
        api.compile(f"builtin:{name}", target=target, quantize="isquant", output=arm, progress=False)
        api.compile(f"builtin:{name}", target="x86", quantize="isquant", output=x86, progress=False)
        feed = random_inputs(api.load(f"builtin:{name}").inputs, seed=7)
        ref, _ = api.run(x86, feed)
        out, _, _ = run_remote(arm, feed, tracker=info["tracker"], key=info["key"], session_timeout=900)
        same = len(out) == len(ref) and all(np.array_equal(a, b) for a, b in zip(out, ref))
        passed, failed = passed + same, failed + (not same)
        _say(quiet, f"{name} int8 for {target}: {'bit-exact' if same else 'DIFFERS'} vs x86"
                    f" ({time.monotonic() - t:.0f}s with both builds)")
    return passed, failed


def selftest(root: str | Path | None = None, cpu: str = "cortex-a72", key: str | None = None,
             tracker_port: int = 9190, server_port: int = 9090, quiet: bool = False,
             models: Sequence[str] = ()) -> bool:
    """Set up, start, run an int8 CNN built for the board through the tracker (bit-exact against x86, timed),
    then each of `models` (built-in names) compiled with quantize="isquant" for the board and for x86 (bit-exact
    board vs x86: the x86 build is itself checked against the numpy reference by the test suite), stop.
    Prints `selftest: N passed, M failed`."""
    import tempfile

    import numpy as np

    from ..runtime.rpc import connect_runner
    from ..runtime.runner import load_local

    target = "rasp5" if cpu == "cortex-a76" else "rasp4b"
    setup(root, quiet=quiet)
    info = start(root, cpu=cpu, key=key, tracker_port=tracker_port, server_port=server_port, quiet=quiet)
    passed = failed = 0
    try:
        with tempfile.TemporaryDirectory(prefix="isquant-board-") as tmp:
            t = time.monotonic()
            arm = build_int8_cnn(target, Path(tmp) / f"cnn_{target}.so")
            x86 = build_int8_cnn("x86", Path(tmp) / "cnn_x86.so")
            _say(quiet, f"built int8 CNN for {target} and x86 in {time.monotonic() - t:.1f}s")
            feed = int8_cnn_inputs()
            ref = load_local(x86).run(feed)[0]
            t = time.monotonic()
            runner, rinfo = connect_runner(arm, tracker=info["tracker"], key=info["key"], session_timeout=120,
                                           quiet=True)
            out = runner.run(feed)[0]
            first = time.monotonic() - t
            if np.array_equal(out, ref):
                passed += 1
                _say(quiet, f"tracker request + upload + load + first run {first:.2f}s; output bit-exact vs x86"
                            f" (board tvm {rinfo['remote_tvm_version']})")
            else:
                failed += 1
                _say(quiet, f"output differs from x86: max |diff| {np.abs(out.astype(np.int64) - ref).max()}")
            timing = runner.benchmark(feed, repeat=3, number=5)
            if timing.median_ms > 0:
                passed += 1
                _say(quiet, f"time_evaluator on the emulated board: median {timing.median_ms:.2f} ms"
                            " (emulated timings say nothing about a real Pi)")
            else:
                failed += 1
            runner.close()
            ok, bad = _selftest_models(models, target, info, Path(tmp), quiet)
            passed, failed = passed + ok, failed + bad
    except IsquantError as err:
        failed += 1
        _say(quiet, f"FAILED: {err}")
    finally:
        stop(root, quiet=quiet)
    print(f"selftest: {passed} passed, {failed} failed")
    return failed == 0


def cli_main(argv: Sequence[str] | None = None, prog: str = "board.py") -> int:
    """`setup | start | stop | restart | status | selftest` (scripts/board.py is a thin wrapper)."""
    import argparse

    parser = argparse.ArgumentParser(prog=prog, description="The emulated aarch64 board (Raspberry Pi 4/5 stand-in):"
                                     " Debian arm64 python + apache-tvm under qemu-aarch64-static, TVM RPC server"
                                     " and tracker on 127.0.0.1.")
    parser.add_argument("action", choices=["setup", "start", "stop", "restart", "status", "selftest"])
    parser.add_argument("--root", type=Path, default=None, help="board root (default ./.board or $ISQUANT_BOARD_ROOT)")
    parser.add_argument("--cpu", choices=list(CPUS), default=None,
                        help="qemu cpu model: cortex-a72 = Pi 4 (default), cortex-a76 = Pi 5 (restart: keep the"
                             " running one unless given)")
    parser.add_argument("--key", default=None, help="tracker key (default rasp4b for cortex-a72, rasp5 for cortex-a76)")
    parser.add_argument("--tracker-port", type=int, default=9190, help="first tracker port to try (default 9190)")
    parser.add_argument("--server-port", type=int, default=9090, help="first board server port to try (default 9090)")
    parser.add_argument("--refresh", action="store_true", help="setup: re-resolve packages and reinstall wheels")
    parser.add_argument("--models", nargs="+", default=[], metavar="NAME",
                        help="selftest: also compile these built-in models (e.g. resnet18 squeezenet1_1 mobilenet_v2"
                             " resnet20-cifar) int8 for the board and for x86 and check the board's output is"
                             " bit-exact (a minute or so per model under emulation)")
    parser.add_argument("-q", "--quiet", action="store_true")
    args = parser.parse_args(argv)
    try:
        if args.action == "setup":
            setup(args.root, refresh=args.refresh, quiet=args.quiet)
        elif args.action == "start":
            info = start(args.root, cpu=args.cpu or "cortex-a72", key=args.key, tracker_port=args.tracker_port,
                         server_port=args.server_port, quiet=args.quiet)
            print(json.dumps(info))
        elif args.action == "stop":
            stop(args.root, quiet=args.quiet)
        elif args.action == "restart":
            print(json.dumps(restart_server(args.root, cpu=args.cpu, quiet=args.quiet)))
        elif args.action == "status":
            st = status(args.root)
            print(json.dumps(st, indent=2))
            return 0 if st.get("healthy") else 1
        elif args.action == "selftest":
            return 0 if selftest(args.root, cpu=args.cpu or "cortex-a72", key=args.key, tracker_port=args.tracker_port,
                                 server_port=args.server_port, quiet=args.quiet, models=args.models) else 1
    except IsquantError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


__all__ = ["setup", "start", "stop", "status", "restart_server", "kill_server", "selftest", "is_set_up",
           "BoardError", "BoardUnavailable", "Layout", "CPUS", "build_int8_cnn", "int8_cnn_inputs", "cli_main"]
