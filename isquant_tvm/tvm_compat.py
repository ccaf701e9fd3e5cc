"""The one place that knows TVM 0.27's renamed APIs.

apache-tvm 0.27 renamed much of the Python API (tir -> tirx, StructInfo -> TensorType,
Constant.data -> GenericConst.value, tvm.contrib.cc -> tvm.support.cc, string targets rejected).
Everything else in the package goes through these helpers so the next rename is a one-file change.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np
import tvm
from tvm import relax

TVM_VERSION: str = tvm.__version__

# 0.27 made GenericConst the constant node; relax.const builds one.
ConstType = type(relax.const(np.zeros((1,), "float32")))


def is_const(expr: Any) -> bool:
    return isinstance(expr, ConstType)


def const_value(expr: Any) -> np.ndarray:
    """Numpy copy of a Relax constant."""
    return expr.value.numpy()


def expr_shape(expr: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in expr.ty.shape)


def expr_dtype(expr: Any) -> str:
    return str(expr.ty.dtype)


def var_name(var: Any) -> str:
    return str(var.name if hasattr(var, "name") else var.name_hint)


def make_target(spec: Mapping[str, Any] | str) -> tvm.target.Target:
    """TVM 0.27 rejects 'llvm -mcpu=..' strings; callers pass a JSON dict or a tag name."""
    return tvm.target.Target(dict(spec) if isinstance(spec, Mapping) else spec)


def target_dict(target: tvm.target.Target) -> dict[str, Any]:
    exported = dict(target.export())
    exported.pop("host", None)
    out: dict[str, Any] = {}
    for key, value in exported.items():
        if isinstance(value, (str, int, float, bool)):
            if value != "":
                out[key] = value
        elif value is not None and len(value):
            out[key] = [str(v) for v in value]  # ffi Array -> JSON list
    return out


def system_cpu() -> str:
    """LLVM's name for the host CPU ('znver4', 'sapphirerapids', ...)."""
    from tvm.target import codegen

    return str(codegen.llvm_get_system_cpu())


def has_feature(target: tvm.target.Target, feature: str) -> bool:
    """Whether LLVM enables `feature` (e.g. 'avx512vnni', 'dotprod') for this target."""
    from tvm.target import codegen

    with target:
        return bool(codegen.llvm_cpu_has_features(feature, target))


def cross_compiler(compiler: str) -> Callable[..., Any]:
    from tvm.support import cc

    return cc.cross_compiler(compiler)


def tensor(array: np.ndarray, device: Any) -> Any:
    return tvm.runtime.tensor(array, device)


def relax_from_onnx(model: Any, shape_dict: dict[str, list[int]], dtype_dict: dict[str, str]) -> tvm.IRModule:
    from tvm.relax.frontend.onnx import from_onnx

    return from_onnx(model, shape_dict=shape_dict, dtype_dict=dtype_dict)


def relax_from_exported_program(program: Any) -> tvm.IRModule:
    from tvm.relax.frontend.torch import from_exported_program

    return from_exported_program(program)


def build(mod: tvm.IRModule, target: tvm.target.Target, relax_pipeline: Any = "default") -> Any:
    return tvm.compile(mod, target=target, relax_pipeline=relax_pipeline)


def virtual_machine(lib: Any, device: Any) -> relax.VirtualMachine:
    return relax.VirtualMachine(lib, device)


def load_module(path: str) -> Any:
    return tvm.runtime.load_module(path)


def prim_float(value: float, dtype: str = "float32") -> Any:
    return relax.prim_value(tvm.tirx.FloatImm(dtype, value))
