"""Write a compiled library (.so, cross-compiled where needed) and its metadata JSON, atomically."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import tvm

from ..util import tvm_compat
from ..errors import ToolchainError
from ..util.fileio import atomic_write_json
from ..targets.presets import is_aarch64, needs_cross_compiler

DEFAULT_CROSS_COMPILER = "aarch64-linux-gnu-gcc"
CROSS_PACKAGES = "gcc-aarch64-linux-gnu libc6-dev-arm64-cross"


def metadata_path(library: str | Path) -> Path:
    """`model.so` -> `model.so.json`: the runner finds input specs and quantization data there."""
    return Path(str(library) + ".json")


def resolve_cross_compiler(target: tvm.target.Target, cross_compiler: str | None) -> str | None:
    if not needs_cross_compiler(target):
        return cross_compiler
    compiler = cross_compiler or (DEFAULT_CROSS_COMPILER if is_aarch64(target) else None)
    if compiler is None:
        raise ToolchainError(f"target triple {target.attrs['mtriple']} needs --cross-compiler")
    if shutil.which(compiler) is None:
        raise ToolchainError(
            f"cross compiler {compiler!r} not found: apt-get install {CROSS_PACKAGES}"
            " (Debian/Ubuntu), or pass --cross-compiler PATH"
        )
    return compiler


def export_library(
    executable: Any,
    output: str | Path,
    target: tvm.target.Target,
    metadata: dict[str, Any],
    cross_compiler: str | None = None,
) -> Path:
    """Export `executable` to `output` (.so) and `output`.json. Neither file exists half-written:
    both are built under temporary names in the destination folder and renamed into place."""
    output = Path(output)
    if output.suffix not in (".so", ".tar"):
        raise ToolchainError(f"{output}: the output must end in .so (shared library) or .tar")
    compiler = resolve_cross_compiler(target, cross_compiler)
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=output.parent, prefix=f".{output.stem}.", suffix=output.suffix)
    os.close(fd)
    try:
        kwargs: dict[str, Any] = {}
        if compiler and output.suffix == ".so":
            kwargs["fcompile"] = tvm_compat.cross_compiler(compiler)
        executable.export_library(tmp, **kwargs)
        atomic_write_json(metadata_path(output), metadata)
        os.replace(tmp, output)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        metadata_path(output).unlink(missing_ok=True)
        raise
    return output


def read_metadata(library: str | Path) -> dict[str, Any]:
    path = metadata_path(library)
    if not path.exists():
        return {}
    return json.loads(path.read_text())
