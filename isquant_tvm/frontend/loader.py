"""Import a model (ONNX file, built-in example, torch module or .pt2 program) as a float Relax IRModule."""
from __future__ import annotations

import contextlib
import gc
import io
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import tvm

from ..util import tvm_compat
from . import validate
from .safe_load import load_exported_program
from ..errors import ModelLoadError
from . import prequant, qoperator

log = logging.getLogger(__name__)

_ONNX_DTYPES = {1: "float32", 2: "uint8", 3: "int8", 6: "int32", 7: "int64", 10: "float16", 11: "float64"}


@dataclass(frozen=True)
class InputSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass
class ImportedModel:
    """A float Relax module plus what the rest of the pipeline needs to know about its origin."""

    mod: tvm.IRModule
    inputs: list[InputSpec]
    source: str
    # Names of the conv/dense layers in graph order, when the format keeps them (ONNX node names).
    layer_names: list[str] = field(default_factory=list)
    onnx_model: Any = None  # kept for onnxruntime comparisons and QDQ export
    onnx_source: Any = None  # the model before constant folding (pre-quantized models re-import it)
    prequantized: str | None = None  # "qdq" / "qoperator" when the model carries its own quantization
    # Relax var name -> (ONNX node name, op type): the bindings are named after their node (ONNX only)
    onnx_nodes: dict[str, tuple[str, str]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return Path(self.source.replace("builtin:", "")).stem


def parse_input_shapes(text: str | None) -> dict[str, list[int]]:
    """Parse tvmc's `--input-shapes "data:[1,3,224,224] mask:[1,16]"` form."""
    if not text:
        return {}
    shapes: dict[str, list[int]] = {}
    for item in re.findall(r"[^\s,\[\]]+\s*:\s*\[[^\]]*\]|\S+", text):
        match = re.fullmatch(r"\s*([^:\s]+)\s*:\s*\[\s*([0-9,\s]*)\]\s*", item)
        if not match:
            raise ModelLoadError(
                f"bad --input-shapes entry {item!r}: expected NAME:[D1,D2,...], e.g. \"input:[1,3,224,224]\""
            )
        dims = [d.strip() for d in match.group(2).split(",") if d.strip()]
        if not dims or not all(d.isdigit() and int(d) > 0 for d in dims):
            raise ModelLoadError(f"bad --input-shapes entry {item!r}: dimensions must be positive integers")
        shapes[match.group(1)] = [int(d) for d in dims]
    return shapes


def load(
    model: str | Path | Any,
    input_shapes: dict[str, Sequence[int]] | str | None = None,
    example_inputs: Sequence[Any] | None = None,
) -> ImportedModel:
    """Import `model`: a path to .onnx / .pt2, 'builtin:NAME', or a torch.nn.Module with example_inputs."""
    shapes = parse_input_shapes(input_shapes) if isinstance(input_shapes, str) or input_shapes is None else {
        k: list(v) for k, v in input_shapes.items()
    }
    if not isinstance(model, (str, Path)):
        return _load_torch_module(model, example_inputs)
    spec = str(model)
    from . import zoo

    if zoo.is_builtin(spec):
        try:
            name = zoo.parse_builtin(spec)
        except ValueError as err:
            raise ModelLoadError(str(err)) from None
        batch = next(iter(shapes.values()))[0] if shapes else 1
        return _load_onnx_proto(zoo.builtin_onnx(name, batch=batch), shapes, source=spec)
    path = Path(spec)
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file (give an .onnx or .pt2 file, or builtin:NAME)")
    if path.is_dir():
        raise ModelLoadError(f"{path}: is a directory, expected an .onnx or .pt2 file")
    if not path.is_file():  # a FIFO or device would block or stream forever in onnx.load
        raise ModelLoadError(f"{path}: not a regular file (a pipe or device?); save the model to a file first")
    if path.suffix == ".pt2":
        return _load_pt2(path)
    return _load_onnx_file(path, shapes)


def _load_onnx_file(path: Path, shapes: dict[str, list[int]]) -> ImportedModel:
    import onnx

    try:
        proto = onnx.load(str(path))
        onnx.checker.check_model(proto)
    except Exception as err:  # onnx raises DecodeError, ValidationError, ...
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelLoadError(f"{path}: not a valid ONNX model ({first})") from err
    if not proto.graph.node:
        raise ModelLoadError(f"{path}: not a valid ONNX model (the graph has no nodes)")
    return _load_onnx_proto(proto, shapes, source=str(path))


def _onnx_inputs(proto: Any, shapes: dict[str, list[int]], source: str) -> list[InputSpec]:
    initializers = {init.name for init in proto.graph.initializer}
    graph_inputs = [i for i in proto.graph.input if i.name not in initializers]
    known = {i.name for i in graph_inputs}
    unknown = sorted(set(shapes) - known)
    if unknown:
        raise ModelLoadError(
            f"{source}: --input-shapes names {unknown} that are not model inputs (inputs: {sorted(known)})"
        )
    specs = []
    for inp in graph_inputs:
        ttype = inp.type.tensor_type
        dtype = validate.check_input_dtype(inp.name, ttype.elem_type, source)
        if inp.name in shapes:
            shape = shapes[inp.name]
        else:
            dims = [d.dim_value if d.HasField("dim_value") else None for d in ttype.shape.dim]
            if dims and (dims[0] is None or dims[0] <= 0) and all(d and d > 0 for d in dims[1:]):
                log.info("%s: input %r has a dynamic batch dimension; using batch 1", source, inp.name)
                dims[0] = 1  # a symbolic batch is the common case: deploy at batch 1 unless told otherwise
            if any(d is None or d <= 0 for d in dims):
                raise ModelLoadError(
                    f"{source}: input {inp.name!r} has a dynamic shape {dims}; "
                    f"pass --input-shapes \"{inp.name}:[1,3,224,224]\" (your sizes)"
                )
            shape = [int(d) for d in dims]
        validate.check_dims(inp.name, shape, source)
        specs.append(InputSpec(inp.name, tuple(shape), dtype))
    return specs


def _load_onnx_proto(proto: Any, shapes: dict[str, list[int]], source: str) -> ImportedModel:
    from .onnx_fold import fold_constants

    validate.check_opsets(proto, source)
    if not proto.graph.output:
        raise ModelLoadError(f"{source}: the graph declares no outputs; a model needs at least one graph output")
    inputs = _onnx_inputs(proto, shapes, source)
    source_proto = _with_static_inputs(proto, inputs)
    fmt = prequant.detect(source_proto)
    if fmt == "qoperator":  # QOperator (its com.microsoft QLinear* ops included) is imported as QDQ
        source_proto = qoperator.to_qdq(source_proto, source)
    validate.check_nodes(source_proto, source)
    validate.check_memory(source_proto, source)
    if fmt:  # bad quantization parameters are named before any import
        prequant.validate(source_proto, source)
    proto = fold_constants(source_proto)
    failure = None
    named = tvm_compat.NamedImport()
    with tvm_compat.native_stderr_filtered(), contextlib.redirect_stdout(io.StringIO()):
        # (stdout: the importer prints "Error converting operator ..." with every input's repr)
        try:
            tvm_compat.relax_from_onnx_named(
                proto, {i.name: list(i.shape) for i in inputs}, {i.name: i.dtype for i in inputs}, named
            )
        except Exception as err:  # noqa: BLE001 - the importer's own wording, last line
            lines = [ln.strip() for ln in str(err).strip().splitlines() if ln.strip()]
            failure = lines[-1] if lines else type(err).__name__
            log.debug("TVM's ONNX importer failed on %s", source, exc_info=True)
        # the failed importer's BlockBuilder warns from C++ when it is freed: free it inside the filter
        gc.collect()
    if failure is not None:
        raise ModelLoadError(_import_failure(proto, source, failure, named.failed))
    mod = named.mod
    layer_names = [n.name or f"{n.op_type}_{i}" for i, n in enumerate(proto.graph.node) if n.op_type in ("Conv", "Gemm", "MatMul")]
    return ImportedModel(mod=mod, inputs=inputs, source=source, layer_names=layer_names, onnx_model=proto,
                         onnx_source=source_proto if fmt else None, prequantized=fmt, onnx_nodes=named.nodes)


def _import_failure(proto: Any, source: str, failure: str, node: tuple[str, str] | None) -> str:
    """One line naming the ONNX node and op the importer stopped at. The importer refuses op types it
    has no converter for before converting anything: those are named by their first node."""
    missing = re.search(r"operators are not supported for frontend ONNX:\s*(.+)", failure)
    if missing:
        ops = [o.strip() for o in missing.group(1).split(",") if o.strip()]
        found = [(n.name or f"{n.op_type}_{i}", n.op_type) for i, n in enumerate(proto.graph.node) if n.op_type in ops]
        names = ", ".join(f"{name!r} (op {op})" for name, op in found[:3]) + (", ..." if len(found) > 3 else "")
        return (f"{source}: TVM's ONNX importer has no converter for {', '.join(ops)}: node {names}; nothing"
                " written (replace or remove those nodes, or export the model without them)")
    where = f" at node {node[0]!r} (op {node[1]})" if node else ""
    return f"{source}: TVM's ONNX importer failed{where}: {failure[:300]}"


def _with_static_inputs(proto: Any, inputs: list[InputSpec]) -> Any:
    """Copy of `proto` whose graph inputs carry the resolved static shapes (for constant folding)."""
    import onnx

    model = onnx.ModelProto.FromString(proto.SerializeToString())
    by_name = {i.name: i for i in inputs}
    for inp in model.graph.input:
        if inp.name in by_name:
            dims = inp.type.tensor_type.shape.dim
            for d, v in zip(dims, by_name[inp.name].shape):
                d.Clear()
                d.dim_value = int(v)
    return model


def _require_torch() -> Any:
    try:
        import torch
    except ImportError:
        raise ModelLoadError("PyTorch models need torch: pip install 'isquant-tvm[torch]'") from None
    return torch


def _load_torch_module(module: Any, example_inputs: Sequence[Any] | None) -> ImportedModel:
    torch = _require_torch()
    if not isinstance(module, torch.nn.Module):
        raise ModelLoadError(f"expected a path, 'builtin:NAME' or a torch.nn.Module, got {type(module).__name__}")
    if not example_inputs:
        raise ModelLoadError("a torch.nn.Module needs example_inputs, e.g. (torch.randn(1, 3, 224, 224),)")
    example = tuple(example_inputs)
    with torch.no_grad():
        program = torch.export.export(module.eval(), example)
    return _from_program(program, source=type(module).__name__)


def _load_pt2(path: Path) -> ImportedModel:
    _require_torch()
    return _from_program(load_exported_program(path), source=str(path))


def _from_program(program: Any, source: str) -> ImportedModel:
    from torch.export.graph_signature import InputKind

    mod = tvm_compat.relax_from_exported_program(program)
    user_inputs = [s.arg.name for s in program.graph_signature.input_specs if s.kind == InputKind.USER_INPUT]
    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    inputs = []
    for name in user_inputs:
        meta = placeholders[name].meta["val"]
        inputs.append(InputSpec(name, tuple(int(d) for d in meta.shape), str(meta.dtype).replace("torch.", "")))
    return ImportedModel(mod=mod, inputs=inputs, source=source)


def random_inputs(inputs: Sequence[InputSpec], seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic inputs for demos and benchmarks: N(0,1) floats, small integers otherwise."""
    rng = np.random.default_rng(seed)
    out = {}
    for spec in inputs:
        if spec.dtype.startswith("float"):
            out[spec.name] = rng.standard_normal(spec.shape).astype(spec.dtype)
        else:
            out[spec.name] = rng.integers(0, 10, spec.shape).astype(spec.dtype)
    return out
