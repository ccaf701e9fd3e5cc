"""Write a compiled library (.so, cross-compiled where needed) and its metadata JSON, atomically."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import tvm

from ..util import tvm_compat
from ..errors import LibraryError, ToolchainError
from ..util.fileio import Transaction
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
    transaction: Transaction | None = None,
) -> Path:
    """Export `executable` to `output` (.so) and `output`.json. Neither file exists half-written and a failure
    leaves any previous pair untouched: both are staged as temporaries in the destination folder and renamed
    together by the transaction (the caller's, when it has more outputs to add, else one of our own)."""
    output = Path(output)
    if output.suffix not in (".so", ".tar"):
        raise ToolchainError(f"{output}: the output must end in .so (shared library) or .tar")
    compiler = resolve_cross_compiler(target, cross_compiler)
    txn = transaction if transaction is not None else Transaction()
    try:
        tmp = txn.reserve(output, executable=True)
        kwargs: dict[str, Any] = {}
        if compiler and output.suffix == ".so":
            kwargs["fcompile"] = tvm_compat.cross_compiler(compiler)
        try:
            executable.export_library(str(tmp), **kwargs)
        except Exception as err:  # noqa: BLE001 - the linker's failure, as TVM reports it
            lines = [ln.strip() for ln in str(err).strip().splitlines() if ln.strip()]
            tail = lines[-1] if lines else type(err).__name__
            who = f"the cross compiler {compiler!r}" if compiler else "the system C compiler"
            raise ToolchainError(f"{output}: linking the library with {who} failed ({tail[:200]}); check the"
                                 " compiler (--cross-compiler PATH) and that it targets "
                                 f"{target.attrs.get('mtriple', 'this machine')}") from err
        txn.write_json(metadata_path(output), metadata)
        if transaction is None:
            txn.commit()
    except BaseException:
        if transaction is None:
            txn.abort()
        raise
    return output


_DTYPES = ("float32", "float16", "float64", "uint8", "int8", "int32", "int64")


def read_metadata(library: str | Path) -> dict[str, Any]:
    """The library's `.so.json`, checked: {} when absent; a damaged or foreign file is a LibraryError naming it."""
    path = metadata_path(library)
    if not path.exists():
        return {}
    try:
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError) as err:
        raise LibraryError(f"{path}: the library's metadata is not readable JSON ({str(err).splitlines()[0][:120]});"
                           f" rebuild it with `compile`, or delete it and pass --inputs") from None
    if not isinstance(doc, dict):
        raise LibraryError(f"{path}: the library's metadata is not a JSON object; rebuild it with `compile`")
    inputs = doc.get("inputs", [])
    ok = isinstance(inputs, list) and all(
        isinstance(m, dict) and isinstance(m.get("name"), str) and isinstance(m.get("dtype"), str)
        and m["dtype"] in _DTYPES and isinstance(m.get("shape"), list)
        and all(isinstance(d, int) and not isinstance(d, bool) and 0 < d < 2**31 for d in m["shape"])
        for m in inputs)
    if not ok:
        raise LibraryError(f"{path}: the library's metadata has a malformed \"inputs\" list (each needs a name,"
                           f" a shape of positive ints and one of the dtypes {', '.join(_DTYPES)}); rebuild it"
                           " with `compile`")
    target = doc.get("target", {})
    if target is not None and not isinstance(target, dict):
        raise LibraryError(f"{path}: the library's metadata has a malformed \"target\"; rebuild it with `compile`")
    return doc
