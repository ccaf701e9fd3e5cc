"""Outputs written transactionally: every file a command writes appears together, or none does.

This is the one way the package writes a file (libraries and their metadata, CLI JSON/NPZ, QDQ models,
tuning summaries, evaluation plots, the board's files): a `Transaction`, or `atomic_write_bytes` /
`atomic_write_json`, which are a transaction of one file.

Before: `export_library` renamed the .so into place but wrote the .so.json first, and its `except
BaseException` cleanup unlinked `m.so.json` — the *previous* library's metadata — when a re-compile to the same
`-o` failed or was interrupted (issue 19, finding 2); a report was written after the library, so a failed
report left a new .so beside a stale state; temporaries were mkstemp's 0600 whatever the umask.

Now a command opens one `Transaction`, validates every output path before any work (`check_outputs`), and
stages each output as a temporary in the output's own folder (so the final rename never crosses a file
system). `commit()` renames them all with interrupts deferred (lifecycle.deferred_interrupts); any failure
before it removes the temporaries and leaves the previous files byte-identical. The temporaries are also
announced to the CLI's supervisor process (lifecycle), which removes them if it has to kill the worker.
Files get the mode a plain `open()` would give (0666 & ~umask; 0777 & ~umask for a .so, like the linker).
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

from ..errors import OutputPathError
from .lifecycle import deferred_interrupts, notify

_UMASK: int | None = None


def _umask() -> int:
    global _UMASK
    if _UMASK is None:
        _UMASK = os.umask(0)
        os.umask(_UMASK)
    return _UMASK


def file_mode(executable: bool = False) -> int:
    return (0o777 if executable else 0o666) & ~_umask()


def _same(a: Path, b: Path) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _existing_ancestor(path: Path) -> Path:
    parent = path.parent if str(path.parent) else Path(".")
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    return parent


def check_output_path(path: Path, flag: str) -> None:
    """The output can be written: not a directory or special file, its folder a writable directory. A missing
    folder is created at write time (`-o out/m.so` in a fresh checkout), provided its nearest existing
    ancestor is a writable directory."""
    if path.is_dir():
        raise OutputPathError(f"{flag} {path}: is a directory; give a file path, e.g. {path / 'model.so'}")
    if path.exists() and not path.is_file():
        raise OutputPathError(f"{flag} {path}: exists and is not a regular file (a device or pipe); give a file path")
    folder = _existing_ancestor(path)
    if not folder.is_dir():
        raise OutputPathError(f"{flag} {path}: {folder} is a file, not a folder; choose another output path")
    try:  # os.access says yes to root on a read-only file system; a real probe does not
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".isquant-probe.")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise OutputPathError(f"{flag} {path}: cannot write in {folder} ({err.strerror}); choose a writable folder") from None


def check_outputs(outputs: Sequence[tuple[str, str | Path | None]],
                  inputs: Sequence[tuple[str, str | Path | None]] = ()) -> None:
    """Validate output paths before any work: each writable, distinct from each other and from the inputs.
    `outputs`/`inputs` are (flag, path) pairs; None paths are skipped."""
    seen: list[tuple[str, Path]] = []
    for flag, raw in outputs:
        if raw is None:
            continue
        path = Path(raw)
        check_output_path(path, flag)
        for other_flag, other in seen:
            if _same(path, other):
                raise OutputPathError(f"{flag} {path}: the same file as {other_flag}; give each output its own path")
        for in_flag, in_raw in inputs:
            if in_raw is not None and _same(path, Path(in_raw)):
                raise OutputPathError(f"{flag} {path}: the same file as the input {in_flag}; writing it would"
                                      " replace the input: choose another path")
        seen.append((flag, path))


class Transaction:
    """Stage outputs as temporaries beside their targets; `commit` renames them all, `abort` removes them."""

    def __init__(self) -> None:
        self._staged: list[tuple[Path, Path, int]] = []
        self.committed = False

    def reserve(self, path: str | Path, executable: bool = False, mode: int | None = None) -> Path:
        """A fresh temporary in `path`'s folder (same suffix, for tools that look at it) to write `path` into;
        its final mode is `mode`, else the umask's (`executable` for a .so)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp" + path.suffix)
        os.close(fd)
        notify("+" + tmp)
        self._staged.append((Path(tmp), path, file_mode(executable) if mode is None else mode))
        return Path(tmp)

    def write_bytes(self, path: str | Path, data: bytes, mode: int | None = None) -> None:
        tmp = self.reserve(path, mode=mode)
        with open(tmp, "wb") as handle:
            handle.write(data)

    def write_json(self, path: str | Path, obj: Any) -> None:
        self.write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())

    @property
    def targets(self) -> list[Path]:
        return [final for _, final, _ in self._staged]

    def commit(self) -> None:
        with deferred_interrupts():
            for tmp, final, mode in self._staged:
                os.chmod(tmp, mode)
            for tmp, final, _ in self._staged:
                os.replace(tmp, final)
                notify("-" + str(tmp))
            self.committed = True
            self._staged.clear()

    def abort(self) -> None:
        for tmp, _, _ in self._staged:
            try:
                tmp.unlink()
            except OSError:
                pass
            notify("-" + str(tmp))
        self._staged.clear()

    def __enter__(self) -> "Transaction":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            if not self.committed:
                try:
                    self.commit()
                except BaseException:  # a rename failed (disk full, EXDEV): the rest must not stay behind
                    self.abort()
                    raise
        else:
            self.abort()


def atomic_write_bytes(path: str | Path, data: bytes, mode: int | None = None) -> None:
    """Write one file as a transaction; `mode` sets its permission bits (default: the umask's, like open())."""
    with Transaction() as txn:
        txn.write_bytes(path, data, mode=mode)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())
