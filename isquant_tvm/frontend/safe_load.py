"""Load torch files without running code from them (.pt2 programs, .th/.pt checkpoints).

A pickle is a program: unpickling can call any importable function (`os.system` included). torch's
`weights_only=True` unpickler only rebuilds tensors, containers and an allowlist of types, so it is safe,
but `torch.export.load` does not use it everywhere: in torch 2.13 it retries the sample inputs with
`weights_only=False` when the safe load fails (torch/_export/serde/serialize.py), loads pickled weights and
constants with `weights_only=False` outright, unpickles "opaque" constants with plain `pickle.loads`, and
turns the shape expressions of the program JSON into sympy objects with `sympy.sympify`, which is `eval`.
Found by the hardening review (issue 19): `inspect evil.pt2` printed "not a torch.export program" after the
payload had already run.

So a .pt2 is loaded here under three guards, none of which changes what a clean file gives:
- every `torch.load` inside `torch.export.load` is forced to `weights_only=True` (the retry included);
- plain `pickle.loads` in the archive reader and the TorchScript object unpickler are refused (they are only
  used for custom/opaque objects, which an inference graph of convs and dense layers never holds);
- before anything is unpickled, every shape expression in the archive's JSON must be arithmetic over symbol
  names (`s0 + 1`, `FloorDiv(s1, 2)`): no attribute access, no strings, no other names.
A refusal is a `ModelLoadError` naming the file, what was refused and the safe alternative (ONNX).
"""
from __future__ import annotations

import contextlib
import json
import logging
import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any, Iterator

from ..errors import ModelLoadError

SAFE_ALTERNATIVE = ("export the model to ONNX instead (torch.onnx.export(model, example, 'model.onnx')), which"
                    " holds no code; or re-save it with torch.export.save from a module whose weights are plain"
                    " tensors")

# Names a shape expression of torch.export's serializer may use: symbols (s0, u3, ...) and the sympy
# functions its deserializer registers (torch/_export/serde/serialize.py: self.sympy_functions).
_SYMPY_FUNCTIONS = frozenset({
    "FloorDiv", "ModularIndexing", "Where", "PythonMod", "Mod", "CleanDiv", "CeilToInt", "FloorToInt",
    "CeilDiv", "LShift", "RShift", "IsNonOverlappingAndDenseIndicator", "TruncToFloat", "TruncToInt",
    "RoundToInt", "RoundDecimal", "ToFloat", "FloatPow", "PowByNatural", "IntTrueDiv", "FloatTrueDiv",
    "Max", "Min", "Abs", "Identity", "sqrt", "floor", "ceiling", "oo", "zoo", "nan", "True", "False",
    "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "And", "Or", "Not",
})
_SAFE_EXPR_CHARS = re.compile(r"[A-Za-z0-9_+\-*/%(), <>=!&|~^]*")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SYMBOL = re.compile(r"[a-z]+[0-9]+")


class UnsafeModelFile(ModelLoadError):
    """A model file that would run code when loaded."""


def _refuse(path: Path, what: str) -> UnsafeModelFile:
    return UnsafeModelFile(f"{path}: refused to load: {what}; loading it could run code from the file."
                           f" To use this model, {SAFE_ALTERNATIVE}")


def _why(err: BaseException) -> str:
    """The line of torch's weights-only refusal that names the offending global, e.g. `posix.system`."""
    for line in str(err).splitlines():
        found = re.search(r"GLOBAL ([\w.]+)", line) or re.search(r"(Unsupported operand \d+)", line)
        if found:
            return f" ({found.group(1)})"
    return ""


def check_expression(expr: str) -> bool:
    """True when `expr` is a shape expression sympy can parse without evaluating anything but arithmetic."""
    if not _SAFE_EXPR_CHARS.fullmatch(expr) or "__" in expr:
        return False
    return all(_SYMBOL.fullmatch(name) or name in _SYMPY_FUNCTIONS for name in _IDENT.findall(expr))


def _expressions(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "expr_str" and isinstance(value, str):
                yield value
            else:
                yield from _expressions(value)
    elif isinstance(node, list):
        for value in node:
            yield from _expressions(value)


def check_pt2_archive(path: Path) -> None:
    """Refuse a .pt2 that is not a zip archive or whose program JSON carries a non-arithmetic expression."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise ModelLoadError(f"{path}: not a torch.export program (not a zip archive: {err});"
                             " write one with torch.export.save, or give an .onnx file") from None
    with archive:
        for info in archive.infolist():
            name = info.filename
            if name.endswith(".json") and ("/models/" in name or name.startswith("serialized_")):
                try:
                    doc = json.loads(archive.read(info))
                except Exception as err:  # noqa: BLE001 - damaged member: torch's loader says what is wrong
                    raise ModelLoadError(f"{path}: not a torch.export program (member {name} is not JSON:"
                                         f" {str(err).splitlines()[0] if str(err) else type(err).__name__})") from None
                for expr in _expressions(doc):
                    if not check_expression(expr):
                        raise _refuse(path, f"the shape expression {expr[:60]!r} in {name} is not plain arithmetic")


@contextlib.contextmanager
def weights_only_loading(path: Path) -> Iterator[None]:
    """Within the block, torch.load only runs its weights-only unpickler and plain unpickling is refused."""
    import torch
    from torch.export.pt2_archive import _package

    original_load = torch.load

    def safe_load(f: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs["weights_only"] = True
        try:
            return original_load(f, *args, **kwargs)
        except pickle.UnpicklingError as err:
            raise _refuse(path, f"it holds a pickle that is not plain tensors{_why(err)}") from None

    class _NoPickle:
        """Stands in for the `pickle` module inside torch's archive reader."""

        def __getattr__(self, name: str) -> Any:
            if name in ("loads", "load", "Unpickler"):
                def refuse(*args: Any, **kwargs: Any) -> Any:
                    raise _refuse(path, "it holds a pickled custom object")

                return refuse
            return getattr(pickle, name)

    def refuse_script_object(*args: Any, **kwargs: Any) -> Any:
        raise _refuse(path, "it holds a TorchScript custom object")

    saved_pickle = _package.pickle
    saved_script = torch._C._pickle_load_obj
    # torch logs each failed attempt with a traceback at WARNING; the refusal below is the one line to show
    loggers = [logging.getLogger(n) for n in ("torch.export", "torch._export.serde.serialize")]
    levels = [lg.level for lg in loggers]
    torch.load = safe_load
    _package.pickle = _NoPickle()  # type: ignore[assignment]
    torch._C._pickle_load_obj = refuse_script_object
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        torch.load = original_load
        _package.pickle = saved_pickle
        torch._C._pickle_load_obj = saved_script
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def load_exported_program(path: Path) -> Any:
    """torch.export.load(path) with the guards above; any other failure is a one-line ModelLoadError."""
    import torch

    check_pt2_archive(path)
    try:
        with weights_only_loading(path):
            return torch.export.load(str(path))
    except ModelLoadError:
        raise
    except Exception as err:  # noqa: BLE001 - torch raises many types for a damaged archive
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelLoadError(f"{path}: not a torch.export program ({first[:200]}); write one with"
                             " torch.export.save, or give an .onnx file") from None


def load_checkpoint(path: str | Path, allowed: tuple[Any, ...] = ()) -> Any:
    """torch.load(path, weights_only=True) on the CPU; `allowed` extends torch's safe-type allowlist
    (torch.serialization.safe_globals) for this call only. Never falls back to full unpickling."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such checkpoint file")
    try:
        with torch.serialization.safe_globals(list(allowed)):
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise UnsafeModelFile(f"{path}: refused to load: the checkpoint holds objects other than tensors and plain"
                              f" containers{_why(err)}; loading them could run code from the file. Save only"
                              " the state_dict (torch.save(model.state_dict(), path)) or export to ONNX") from None
    except Exception as err:  # noqa: BLE001 - truncated / not a torch file
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelLoadError(f"{path}: not a readable torch checkpoint ({first[:200]})") from None
