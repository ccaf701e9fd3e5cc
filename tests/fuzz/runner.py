"""Run fuzz cases through the real CLI and classify what happened.

Two ways to start a case, both the real `python -m isquant_tvm` code path including its supervisor:
- "fork": from this warm process (TVM, onnx already imported, no TVM threads started), a child redirects its
  output to files and calls lifecycle.supervise(cli.main). About 5x faster than a fresh interpreter per case,
  which matters on a shared 2-core machine;
- "subprocess": a fresh interpreter, for the interrupt cases (signals go to the real top process).
Classification, per the issue's definition: clear = exit 2 with exactly one stderr line (warnings aside) and
no exception class name in it; accepted = exit 0 where the case allows it; crash = death by a signal or a
128+ exit not asked for; hang = no exit within the case's timeout; traceback = "Traceback" in stderr;
left_output = a temporary left beside an output or in $TMPDIR, or a protected file changed.
"""
from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .corpus import Case

REPO = Path(__file__).resolve().parents[2]
CLASS_NAME = re.compile(r"\b[A-Z][A-Za-z]*(Error|Exception|Exit|Interrupt)\b|\bCheck failed\b|\bErrorContext\b")


def _digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _temporaries(work: Path) -> list[str]:
    found = []
    for root, dirs, files in os.walk(work):
        for name in files + dirs:
            if name.startswith(".") and (".tmp" in name or name.startswith(".isquant-probe")):
                found.append(os.path.relpath(os.path.join(root, name), work))
    return found


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _maps(pid: int, needle: str) -> bool:
    for p in [pid] + _children(pid):
        try:
            if needle in Path(f"/proc/{p}/maps").read_text():
                return True
        except OSError:
            continue
    return False


def _start_fork(case: Case, work: Path, out: Path, err: Path, tmpdir: Path) -> int:
    pid = os.fork()
    if pid == 0:
        try:
            os.setpgid(0, 0)
            os.chdir(work)
            fd_out = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            fd_err = os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd_out, 1)
            os.dup2(fd_err, 2)
            sys.stdout = open(1, "w", closefd=False)
            sys.stderr = open(2, "w", closefd=False)
            os.environ["TMPDIR"] = str(tmpdir)
            import tempfile

            tempfile.tempdir = None
            from isquant_tvm import cli
            from isquant_tvm.util import lifecycle

            code = lifecycle.supervise(lambda: cli.main(case.argv))
        except BaseException:  # noqa: BLE001
            import traceback

            traceback.print_exc()
            code = 1
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)
    return pid


def run_case(case: Case, work: Path, logs: Path) -> dict[str, Any]:
    logs.mkdir(parents=True, exist_ok=True)
    safe = re.sub(r"[^A-Za-z0-9_.=-]", "_", case.name)
    out, err = logs / f"{safe}.out", logs / f"{safe}.err"
    tmpdir = logs / f"{safe}.tmp"
    tmpdir.mkdir(exist_ok=True)
    before = {p: _digest(work / p) for p in case.protect}
    started = time.monotonic()
    signalled_at = None
    if case.mode == "fork":
        pid = _start_fork(case, work, out, err, tmpdir)
        popen = None
    else:
        env = {**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": str(tmpdir)}
        env.pop("ISQUANT_NO_SUPERVISOR", None)
        with open(out, "w") as fo, open(err, "w") as fe:
            popen = subprocess.Popen([sys.executable, "-m", "isquant_tvm", *case.argv], cwd=work, env=env, stdout=fo,
                                     stderr=fe, start_new_session=True)
        pid = popen.pid
    status: int | None = None
    hang = False
    sent = 0
    while True:
        if popen is not None:
            rc = popen.poll()
            if rc is not None:
                status = rc
                break
        else:
            done, st = os.waitpid(pid, os.WNOHANG)
            if done:
                status = os.waitstatus_to_exitcode(st)
                break
        now = time.monotonic()
        if case.signal is not None and sent == 0:
            trigger = case.signal_after
            fire = False
            if isinstance(trigger, (int, float)):
                fire = now - started >= trigger
            elif isinstance(trigger, str) and trigger.startswith("maps:"):
                fire = _maps(pid, str(work / trigger.split(":")[1]))
                if fire:
                    time.sleep(0.5)
            elif isinstance(trigger, str):
                fire = any(p.name.startswith(trigger) for p in work.iterdir())
            if fire:
                os.kill(pid, case.signal)
                if isinstance(trigger, str) and trigger.endswith(":twice"):
                    time.sleep(0.05)
                    os.kill(pid, case.signal)
                signalled_at = time.monotonic()
                sent = 1
        if now - started > case.timeout:
            hang = True
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass
            if popen is not None:
                popen.wait()
            else:
                os.waitpid(pid, 0)
            break
        time.sleep(0.01)
    ended = time.monotonic()
    stderr = err.read_text(errors="replace") if err.exists() else ""
    lines = [ln for ln in stderr.splitlines() if ln.strip() and not ln.startswith("warning:")]
    left = _temporaries(work) + [f"$TMPDIR/{p.name}" for p in tmpdir.iterdir()]
    changed = [p for p, d in before.items() if _digest(work / p) != d]
    for name in _temporaries(work):  # do not let one case's leftovers blame the next
        try:
            (work / name).unlink()
        except OSError:
            pass
    result: dict[str, Any] = {"name": case.name, "group": case.group, "argv": case.argv, "expect": case.expect,
                              "exit": None if hang else status, "seconds": round(ended - started, 2),
                              "stderr": "\n".join(lines)[:600]}
    if signalled_at is not None:
        result["stop_seconds"] = round(ended - signalled_at, 2)
    if hang:
        verdict = "hang"
    elif status is not None and (status < 0 or (status >= 128 and status not in (130, 143))):
        verdict = "crash"
    elif "Traceback" in stderr:
        verdict = "traceback"
    elif left or changed:
        verdict = "left_output"
        result["left"] = left + [f"changed:{p}" for p in changed]
    elif case.expect == "interrupt":
        ok = status == (130 if case.signal == signal.SIGINT else 143) and result.get("stop_seconds", 99) <= 2.5
        verdict = "clear" if ok else ("unclear" if status is not None else "hang")
        if status == 0 and signalled_at is None:
            verdict = "accepted"  # finished before the trigger fired
    elif status == 2 and len(lines) == 1 and not CLASS_NAME.search(lines[0]):
        verdict = "clear"
    elif status == 0 and case.expect == "any":
        verdict = "accepted"
    else:
        verdict = "unclear"
    result["verdict"] = verdict
    return result


def summarize(results: list[dict[str, Any]]) -> dict[str, int]:
    count = lambda v: sum(1 for r in results if r["verdict"] == v)  # noqa: E731
    return {"cases": len(results), "clear": count("clear"), "accepted": count("accepted"), "unclear": count("unclear"),
            "crashes": count("crash"), "hangs": count("hang"), "left_output": count("left_output"),
            "tracebacks": count("traceback")}
