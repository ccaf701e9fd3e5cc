"""The one place that knows TVM 0.27's renamed APIs.

apache-tvm 0.27 renamed much of the Python API (tir -> tirx, StructInfo -> TensorType,
Constant.data -> GenericConst.value, tvm.contrib.cc -> tvm.support.cc, string targets rejected).
Everything else in the package goes through these helpers so the next rename is a one-file change.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import tvm
from tvm import relax

TVM_VERSION: str = tvm.__version__

# 0.27 made GenericConst the constant node; relax.const builds one.
ConstType = type(relax.const(np.zeros((1,), "float32")))


# relax.PrimValue is gone: prim_value() returns a plain IntImm / FloatImm expression.
PrimTypes = (type(relax.prim_value(tvm.tirx.FloatImm("float32", 0.0))), type(relax.prim_value(tvm.tirx.IntImm("int64", 0))))


def is_prim(expr: Any) -> bool:
    return isinstance(expr, PrimTypes)


def prim_int(value: int, dtype: str = "int64") -> Any:
    return relax.prim_value(tvm.tirx.IntImm(dtype, int(value)))


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


_ONNX_PATCHED = False


def _patch_onnx_importer() -> None:
    """0.27's ONNX importer lowers Clip (tensor bounds) and constant Pad straight to TIR via emit_te,
    which hides ReLU6 and channel padding from graph passes. Emit the Relax ops instead when the
    bounds / pads are constants, so the quantize pass can fold ReLU6 into requantize bounds."""
    global _ONNX_PATCHED
    if _ONNX_PATCHED:
        return
    from tvm.relax.frontend.onnx import onnx_frontend as of

    original_clip = of.Clip._impl_v13.__func__
    original_pad = of.Pad._lower_pad.__func__

    def scalar(expr: Any, params: Any) -> float | None:
        const = of.get_constant(expr, params) if expr is not None else None
        if is_const(const) and const.value.numpy().size == 1:
            return float(const.value.numpy().reshape(()))
        return None

    def clip_v13(cls: Any, bb: Any, inputs: Any, attr: Any, params: Any) -> Any:
        lo = scalar(inputs[1], params) if len(inputs) > 1 else None
        hi = scalar(inputs[2], params) if len(inputs) > 2 else None
        present = [i for i in inputs[1:3] if i is not None]
        if len(present) == sum(v is not None for v in (lo, hi)) and present:
            dtype = str(inputs[0].ty.dtype)
            lo_v = prim_float(lo if lo is not None else -3.4e38, dtype)
            hi_v = prim_float(hi if hi is not None else 3.4e38, dtype)
            return bb.emit(relax.op.clip(inputs[0], lo_v, hi_v))
        return original_clip(cls, bb, inputs, attr, params)

    def lower_pad(cls: Any, bb: Any, inputs: Any, attr: Any, params: Any, allowed_modes: Any) -> Any:
        if attr.get("mode", b"constant").decode("utf-8") == "constant":
            before, after, value = cls._parse_pads_and_axes(inputs, params)
            widths = [int(v) for pair in zip(before, after) for v in pair]
            return bb.emit(relax.op.nn.pad(inputs[0], widths, "constant", float(value)))
        return original_pad(cls, bb, inputs, attr, params, allowed_modes)

    of.Clip._impl_v13 = classmethod(clip_v13)
    of.Clip._impl_v11 = classmethod(clip_v13)
    of.Pad._lower_pad = classmethod(lower_pad)
    _ONNX_PATCHED = True


def relax_from_onnx(model: Any, shape_dict: dict[str, list[int]], dtype_dict: dict[str, str]) -> tvm.IRModule:
    from tvm.relax.frontend.onnx import from_onnx

    _patch_onnx_importer()
    return from_onnx(model, shape_dict=shape_dict, dtype_dict=dtype_dict)


def relax_from_exported_program(program: Any) -> tvm.IRModule:
    from tvm.relax.frontend.torch import from_exported_program

    return from_exported_program(program)


def build(mod: tvm.IRModule, target: tvm.target.Target, relax_pipeline: Any = "default") -> Any:
    return tvm.compile(mod, target=target, relax_pipeline=relax_pipeline)


def cpu_pipeline(target: tvm.target.Target, legalize_overrides: dict[str, Any],
                 after_fusion: Sequence[Any] = ()) -> tvm.transform.Pass:
    """TVM 0.27's CPU Relax pipeline (relax.backend.cpu_generic) with op legalization overrides and extra
    passes on the fused PrimFuncs (kernels/float_ops.py schedules the float remainder with both)."""
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    @tvm.transform.module_pass(opt_level=0, name="IsquantCPUPipeline")
    def _pipeline(mod: tvm.IRModule, _ctx: Any) -> tvm.IRModule:
        with target:
            legalize = [relax.transform.LegalizeOps(customize_legalize_map=legalize_overrides),
                        relax.transform.AnnotateTIROpPattern(), relax.transform.FoldConstant(),
                        relax.transform.FuseOps(), relax.transform.FuseTIR(), *after_fusion]
            seq = tvm.transform.Sequential(cpu.library_dispatch_passes(target) + legalize
                                           + cpu.dataflow_lower_passes(target) + cpu.finalize_passes(target))
            return seq(mod)

    return _pipeline


def virtual_machine(lib: Any, device: Any) -> relax.VirtualMachine:
    return relax.VirtualMachine(lib, device)


def load_module(path: str) -> Any:
    return tvm.runtime.load_module(path)


def prim_float(value: float, dtype: str = "float32") -> Any:
    return relax.prim_value(tvm.tirx.FloatImm(dtype, value))


def bindings(func: relax.Function) -> Iterator[relax.VarBinding]:
    """Every var binding of a Relax function's body, block by block."""
    for block in func.body.blocks:
        yield from block.bindings
# TVM's C++ warnings that follow a failure we already report in one line (printed to fd 2, not via logging)
_NATIVE_NOISE = ("BlockBuilder destroyed with remaining blocks",
                 # topi.take's advice to kernel authors, printed for every Gather the importer converts
                 "Fast mode segfaults when there are out-of-bounds indices")


@contextlib.contextmanager
def native_stderr_filtered() -> Iterator[None]:
    """Within the block, fd 2 goes to a temporary file; on exit its lines are replayed except TVM's known
    after-failure noise. C++ writes to the file descriptor directly, so Python-level redirection cannot."""
    import os
    import sys
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            for line in capture.read().decode(errors="replace").splitlines(keepends=True):
                if not any(noise in line for noise in _NATIVE_NOISE):
                    sys.stderr.write(line)
            sys.stderr.flush()
