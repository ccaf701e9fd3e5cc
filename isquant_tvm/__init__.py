"""isquant-tvm: data-free int8 (ISQuant / SQuant) deployment of CNNs with Apache TVM.

Python API mirroring the CLI::

    import isquant_tvm as iq
    model = iq.load("model.onnx")                       # or "builtin:resnet18", a torch.nn.Module, a .pt2
    result = iq.compile(model, target="arm", output="model.so")
    outputs, timing = iq.run("model.so", repeat=10)
    iq.tune(model, target="x86-avx512", out_dir="records/")   # then iq.compile(..., tuning_records="records/")
"""
from __future__ import annotations

from .api import CompileResult, compile, inspect, load, run, run_remote, tune
from .util.version import __version__

__all__ = ["__version__", "load", "compile", "run", "run_remote", "inspect", "tune", "CompileResult"]
