"""The one place that knows TVM 0.27's renamed APIs.

apache-tvm 0.27 renamed much of the Python API (tir -> tirx, StructInfo -> TensorType,
Constant.data -> GenericConst.value, tvm.contrib.cc -> tvm.support.cc, string targets rejected).
Everything else in the package goes through these helpers so the next rename is a one-file change.
"""
from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field
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
    return relax_from_onnx_named(model, shape_dict, dtype_dict).mod


def onnx_var_name(node_name: str, op_type: str, index: int) -> str:
    """The Relax var name the bindings of an ONNX node get: its name as an identifier."""
    base = re.sub(r"\W+", "_", node_name).strip("_") or f"{op_type}_{index}"
    return base if not base[0].isdigit() else f"n{base}"


@dataclass
class NamedImport:
    """A Relax module whose bindings are named after the ONNX node that emitted them.
    `nodes`: var name -> (ONNX node name, op type); `failed`: the node being converted when the
    importer raised (None on success)."""

    mod: Any = None
    nodes: dict[str, tuple[str, str]] = field(default_factory=dict)
    failed: tuple[str, str] | None = None


def relax_from_onnx_named(model: Any, shape_dict: dict[str, list[int]], dtype_dict: dict[str, str],
                          result: NamedImport | None = None) -> NamedImport:
    """0.27's importer names every binding `lv<k>` and binds a converter's result only where a later
    node uses it, so nothing downstream could say which ONNX node a float op came from. Here a node's
    result (a Relax call) is bound as soon as its converter returns, so the bindings of one node are
    contiguous and end with its output; the module is then re-emitted with every binding named after
    its node (later passes re-emit bindings under the same name, so the name reaches the quantize pass
    and the report). On failure `result.failed` names the node (pass `result` in to read it after the
    raise)."""
    from tvm.relax.frontend.onnx import from_onnx
    from tvm.relax.frontend.onnx import onnx_frontend as of

    _patch_onnx_importer()
    result = result if result is not None else NamedImport()
    converted: list[tuple[str, str]] = []  # (node name, op type) in conversion order
    owner: dict[Any, int] = {}  # a node's output var -> index into converted
    original_convert = of.ONNXGraphImporter._convert_operator

    def own(expr: Any, index: int) -> None:
        if isinstance(expr, relax.Var) and expr not in owner:
            owner[expr] = index
        elif isinstance(expr, relax.Tuple):
            for f in expr.fields:
                own(f, index)

    def convert(self: Any, op_name: str, inputs: Any, attrs: Any, opset: int) -> Any:
        node_name = str(attrs.get("tvm_custom", {}).get("name", "") or "")
        index = len(converted)
        converted.append((node_name or f"{op_name}_{index}", op_name))
        result.failed = converted[-1]
        out = original_convert(self, op_name, inputs, attrs, opset)
        # bind a tensor-valued call now (constants and shapes stay unbound: converters test for them)
        if isinstance(out, relax.Call) and isinstance(getattr(out, "ty", None), (relax.TensorType, relax.TupleType)):
            out = self.bb.emit(out)
        own(out, index)
        return out

    of.ONNXGraphImporter._convert_operator = convert
    try:
        mod = from_onnx(model, shape_dict=shape_dict, dtype_dict=dtype_dict)
    finally:
        of.ONNXGraphImporter._convert_operator = original_convert
    result.failed = None
    names: dict[Any, tuple[str, str]] = {}  # binding var -> its node
    pending: list[Any] = []
    for binding in bindings(mod["main"]):
        value = binding.value
        if isinstance(value, relax.TupleGetItem) and value.tuple_value in names:  # a split's parts
            names[binding.var] = names[value.tuple_value]
            continue
        pending.append(binding.var)
        if binding.var in owner:
            names.update({v: converted[owner[binding.var]] for v in pending})
            pending = []
    hints = {v: onnx_var_name(node, op, 0) for v, (node, op) in names.items()}
    result.mod, actual = _renamed(mod, hints)
    # the builder makes names unique (act_HardSwish, act_HardSwish1, ...): map each one it chose
    result.nodes = {actual[v]: names[v] for v in names if v in actual}
    return result


def _renamed(mod: tvm.IRModule, names: Mapping[Any, str]) -> tuple[tvm.IRModule, dict[Any, str]]:
    """`mod` with main's binding vars renamed by `names` (others keep their name), and the unique
    name each old var got."""
    actual: dict[Any, str] = {}

    @relax.expr_functor.mutator
    class Renamer(relax.PyExprMutator):
        def visit_var_binding_(self, binding: relax.VarBinding) -> None:
            value = self.visit_expr(binding.value)
            hint = names.get(binding.var, var_name(binding.var))
            if isinstance(binding.var, relax.DataflowVar):
                new = self.builder_.emit(value, name_hint=hint)
            else:
                new = self.builder_.emit_output(value, name_hint=hint)
            actual[binding.var] = var_name(new)
            self.set_var_remap(binding.var, new)

    out = tvm.IRModule(dict(mod.functions_items()), attrs=mod.attrs)
    gv = out.get_global_var("main")
    func = Renamer(out).visit_expr(mod["main"])
    out[gv] = func.with_attrs(mod["main"].attrs) if mod["main"].attrs else func
    return out, actual


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


#: what a refused schedule primitive or a failed TVM check raises: TVM 0.27 has no tvm.TVMError
#: (s_tir.ScheduleError, InternalError, both RuntimeErrors)
TVM_ERRORS: tuple[type[BaseException], ...] = (RuntimeError,)


def remote_items(remote: Any, value: Any) -> list[Any] | None:
    """The fields of a tuple that a VM on an RPC board returned, or None when `value` is not one.

    A multi-output model's VM returns an ffi Array; over RPC it arrives as an opaque RPCObjectRef (no len, no
    indexing: `run` on the board failed with "'RPCObjectRef' object is not iterable" for MTCNN P-Net's two
    heads). The board's own ffi.ArraySize / ffi.ArrayGetItem read it there; each field comes back as a
    remote tensor (or another ref, for nested tuples)."""
    if remote is None or type(value).__name__ != "RPCObjectRef":
        return None
    size = remote.get_function("ffi.ArraySize")
    get = remote.get_function("ffi.ArrayGetItem")
    return [get(value, i) for i in range(int(size(value)))]


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


def count_uses(func: relax.Function) -> dict[Any, int]:
    """How many times each var is used by the bindings and the result of `func`."""
    uses: dict[Any, int] = {}

    def visit(expr: Any) -> None:
        if isinstance(expr, relax.Var):
            uses[expr] = uses.get(expr, 0) + 1
        elif isinstance(expr, relax.Call):
            for a in expr.args:
                visit(a)
        elif isinstance(expr, relax.Tuple):
            for f in expr.fields:
                visit(f)
        elif isinstance(expr, relax.TupleGetItem):
            visit(expr.tuple_value)

    for binding in bindings(func):
        visit(binding.value)
    visit(func.body.body)
    return uses
