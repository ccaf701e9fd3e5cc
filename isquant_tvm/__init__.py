"""isquant-tvm: data-free int8 (ISQuant / SQuant) deployment of CNNs with Apache TVM.

Python API mirroring the CLI::

    import isquant_tvm as iq
    model = iq.load("model.onnx")                       # or "builtin:resnet18", a torch.nn.Module, a .pt2
    result = iq.compile(model, target="arm", output="model.so")
    outputs, timing = iq.run("model.so", repeat=10)
    iq.tune(model, target="x86-avx512", out_dir="records/")   # then iq.compile(..., tuning_records="records/")
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .util.version import __version__

__all__ = ["__version__", "load", "compile", "run", "run_remote", "inspect", "tune", "CompileResult"]

if TYPE_CHECKING:  # pragma: no cover
    from .api import CompileResult, compile, inspect, load, run, run_remote, tune  # noqa: F401


def __getattr__(name: str) -> Any:
    """Import the API (and TVM, about 3 s) on first use: the CLI refuses a bad flag or path before that."""
    import importlib

    if name in __all__:
        return getattr(importlib.import_module(".api", __name__), name)
    try:
        return importlib.import_module(f".{name}", __name__)
    except ModuleNotFoundError as err:
        if err.name != f"{__name__}.{name}":
            raise
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
