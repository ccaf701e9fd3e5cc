"""Process lifecycle of the CLI: interrupts that always work, and a private scratch folder.

Python runs a signal handler only between bytecodes of the main thread, and TVM holds the GIL through long
C++ calls (codegen, `time_evaluator` with --repeat 1000000, a blocked RPC read): a Ctrl-C waited for the
call — the review saw a local bench still running 170 s after SIGINT (issue 19, finding 5) — and a watcher
thread in the same process cannot help, it needs the GIL too (measured: 2.7 s to stop during export).
So `python -m isquant_tvm` is two processes:
- the supervisor (this module, the standard library and cli.py's module level: no TVM) forks the worker, which runs
  the command, and waits. On the first SIGINT/SIGTERM it passes the signal on: the worker raises
  KeyboardInterrupt / Terminated, its `finally` blocks close RPC sessions and remove temporaries, and it
  exits 130 / 143. If the worker has not ended GRACE_S later (stuck in C code), or at a second signal, the
  supervisor SIGKILLs it and its children (a linker would keep writing), removes the output temporaries the
  worker announced over a pipe and the scratch folder, and exits with the same code.
- renames of a committed output set are never cut in half: the worker announces a commit and the
  supervisor waits for its end (`deferred_interrupts` holds the worker's own handler off meanwhile).
The scratch folder: TVM's export writes lib0.o / devc.o under $TMPDIR and the linker its own files; a killed
process left them there. Each command gets one private folder as TMPDIR (for TVM and child compilers),
removed by the supervisor whatever happened to the worker.
A worker killed by another signal (SIGSEGV, SIGBUS) is reported in one line with its exit status.
The entry point (`cli.cli_entry`, behind `python -m isquant_tvm` and the `isquant-tvm` script) runs
`cli.main` under `supervise`: the supervisor has loaded argparse and numpy by then, only the worker TVM.
Without the supervisor (the Python API, tests calling cli.main) the worker behaviour alone applies.
"""
from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import sys
import tempfile
import time
from typing import Callable, Iterator

GRACE_S = 1.5
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}
NO_SUPERVISOR_ENV = "ISQUANT_NO_SUPERVISOR"


class Terminated(BaseException):
    """SIGTERM, raised in the main thread like KeyboardInterrupt is for SIGINT."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"terminated by signal {signum}")
        self.signum = signum


_state: dict = {"deferring": 0, "pending": None, "first": None, "installed": False, "notify_fd": None}


# ------------------------------------------------------------------------------------------------ worker


def _handler(signum: int, frame: object) -> None:
    if _state["first"] is not None:
        return  # the supervisor's copy of a terminal's Ctrl-C, or a repeat: the first is being handled
    _state["first"] = signum
    if _state["deferring"]:
        _state["pending"] = signum
        return
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Terminated(signum)


def install() -> None:
    """Worker-side handlers: SIGINT -> KeyboardInterrupt, SIGTERM -> Terminated (main thread only)."""
    import threading

    if _state["installed"] or threading.current_thread() is not threading.main_thread():
        return
    signal.signal(signal.SIGINT, _handler)
    signal.signal(signal.SIGTERM, _handler)
    _state["installed"] = True


def notify(message: str) -> None:
    """Tell the supervisor (if any) about a temporary ("+path" / "-path") or a commit ("C" / "c")."""
    fd = _state["notify_fd"]
    if fd is None:
        return
    try:
        os.write(fd, (message + "\n").encode())
    except OSError:
        pass


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Hold SIGINT/SIGTERM until the block is done (the supervisor waits too), then act on them."""
    _state["deferring"] += 1
    notify("C")
    try:
        yield
    finally:
        _state["deferring"] -= 1
        notify("c")
        pending = _state["pending"] if _state["deferring"] == 0 else None
        if pending is not None:
            _state["pending"] = None
            if pending == signal.SIGINT:
                raise KeyboardInterrupt
            raise Terminated(pending)


def exit_code(err: BaseException) -> int:
    if isinstance(err, Terminated):
        return EXIT_CODES.get(err.signum, 143)
    return 130


def interrupted_message() -> None:
    print("interrupted", file=sys.stderr)


# -------------------------------------------------------------------------------------------- supervisor


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for pid in entries:
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as handle:
                ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(pid))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _kill_tree(pid: int) -> None:
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGSTOP)  # no new children while we collect them
    for child in _descendants(pid):
        with contextlib.suppress(OSError):
            os.kill(child, signal.SIGKILL)
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGKILL)


def supervise(run: Callable[[], int]) -> int:
    """Run `run()` (the CLI's main) in a forked worker; see the module docstring."""
    if os.environ.get(NO_SUPERVISOR_ENV) or not hasattr(os, "fork"):
        install()
        return run()
    scratch = tempfile.mkdtemp(prefix="isquant-")
    os.environ["TMPDIR"] = scratch
    tempfile.tempdir = scratch
    reader, writer = os.pipe()
    received: list[int] = []
    signal.signal(signal.SIGINT, lambda s, f: received.append(s))
    signal.signal(signal.SIGTERM, lambda s, f: received.append(s))
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the worker
        os.close(reader)
        _state["notify_fd"] = writer
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        install()
        code = 1
        try:
            code = run()
        except SystemExit as done:  # argparse, --help, --version
            code = done.code if isinstance(done.code, int) else (0 if done.code is None else 2)
            if not isinstance(done.code, (int, type(None))):
                print(done.code, file=sys.stderr)
        except (KeyboardInterrupt, Terminated) as err:
            interrupted_message()
            code = exit_code(err)
        except BaseException:  # noqa: BLE001 - last resort: show it, exit 1
            import traceback

            traceback.print_exc()
            code = 1
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
            with contextlib.suppress(Exception):
                sys.stderr.flush()
        os._exit(code)
    os.close(writer)
    return _wait(pid, reader, scratch, received)


def _wait(pid: int, reader: int, scratch: str, received: list[int]) -> int:
    temporaries: set[str] = set()
    committing = False
    buffered = b""
    first_at: float | None = None
    forwarded = 0
    status = None
    try:
        while status is None:
            if received[forwarded:]:
                for signum in received[forwarded:]:
                    with contextlib.suppress(OSError):
                        os.kill(pid, signum)
                forwarded = len(received)
                if first_at is None:
                    first_at = time.monotonic()
            now = time.monotonic()
            stuck = first_at is not None and now - first_at >= GRACE_S
            if (len(received) >= 2 or stuck) and not (committing and now - (first_at or now) < GRACE_S + 5.0):
                _kill_tree(pid)
            with contextlib.suppress(InterruptedError):
                ready, _, _ = select.select([reader], [], [], 0.02)
                if ready:
                    chunk = os.read(reader, 65536)
                    buffered += chunk
                    *lines, buffered = buffered.split(b"\n")
                    for raw in lines:
                        line = raw.decode(errors="replace")
                        if line.startswith("+"):
                            temporaries.add(line[1:])
                        elif line.startswith("-"):
                            temporaries.discard(line[1:])
                        elif line == "C":
                            committing = True
                        elif line == "c":
                            committing = False
            with contextlib.suppress(ChildProcessError, InterruptedError):
                done, st = os.waitpid(pid, os.WNOHANG)
                if done:
                    status = st
    finally:
        for name in temporaries:
            with contextlib.suppress(OSError):
                os.unlink(name)
        shutil.rmtree(scratch, ignore_errors=True)
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status)
    signum = os.WTERMSIG(status)
    if received:
        if signum == signal.SIGKILL:
            print("interrupted", file=sys.stderr)
        return EXIT_CODES.get(received[0], 130)
    name = signal.Signals(signum).name if signum in signal.Signals.__members__.values() else str(signum)
    print(f"error: the command died of {name}; please report it with the command line"
          " (run with -v to see how far it got)", file=sys.stderr)
    return 128 + signum
