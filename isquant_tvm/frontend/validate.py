"""Checks of an ONNX graph before TVM sees it, each refusal one line naming the node, op or input and what to do.

The review (issue 19, findings 7 and 8) found what got through to TVM or numpy and came back as raw text, or
was silently accepted: a declared dim of 10^9 ended in `MemoryError: Unable to allocate 37.3 GiB`, INT64-sized
dims in `Divide by zero`; opset 99 was accepted; Conv `kernel_shape`/`pads` that contradict the weights; bool,
string and int16 graph inputs silently became float32; NaN/Inf weights quantize to garbage scales.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from ..errors import ModelLoadError

# dtypes the pipeline takes at a graph input (ONNX TensorProto codes)
INPUT_DTYPES = {1: "float32", 2: "uint8", 3: "int8", 6: "int32", 7: "int64", 10: "float16", 11: "float64"}
MIN_OPSET = 7  # TVM's Relax ONNX importer has converters from opset 1 on, but nothing older than 7 is tested
MAX_DIM = 2**31 - 1
# A single intermediate tensor above this share of the available memory will not build or run.
MEMORY_SHARE = 0.5


def onnx_dtype_name(code: int) -> str:
    from onnx import TensorProto

    try:
        return TensorProto.DataType.Name(code).lower()
    except ValueError:
        return f"type {code}"


def check_opsets(proto: Any, source: str) -> None:
    import onnx.defs

    newest = onnx.defs.onnx_opset_version()
    for imp in proto.opset_import:
        if imp.domain in ("", "ai.onnx"):
            if not MIN_OPSET <= imp.version <= newest:
                raise ModelLoadError(f"{source}: ONNX opset {imp.version} is not supported (this installation reads"
                                     f" opsets {MIN_OPSET}..{newest}); re-export the model with an opset in that"
                                     " range, e.g. torch.onnx.export(..., opset_version=17)")


def check_input_dtype(name: str, elem_type: int, source: str) -> str:
    if elem_type not in INPUT_DTYPES:
        raise ModelLoadError(f"{source}: input {name!r} is {onnx_dtype_name(elem_type)}; isquant-tvm takes"
                             f" {', '.join(sorted(set(INPUT_DTYPES.values())))} inputs: cast it in the model"
                             " (a Cast node after the input) or re-export with a float32 input")
    return INPUT_DTYPES[elem_type]


def check_dims(name: str, dims: Sequence[int], source: str) -> None:
    if any(d > MAX_DIM for d in dims):
        raise ModelLoadError(f"{source}: input {name!r} declares shape {list(dims)}, a dimension above 2^31-1;"
                             " pass real sizes with --input-shapes")


def _available_bytes() -> int:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 16 * 2**30


def _itemsize(elem_type: int) -> int:
    try:
        from onnx import helper

        return int(np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).itemsize)
    except Exception:  # noqa: BLE001 - strings, unknown codes: count 4 bytes
        return 4


def check_memory(proto: Any, source: str) -> None:
    """Refuse when one tensor of the shape-inferred graph (inputs included) would not fit in memory."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=False)
    except Exception:  # noqa: BLE001 - a graph shape inference cannot follow: TVM's importer will say more
        inferred = proto
    limit = _available_bytes() * MEMORY_SHARE
    values = list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output)
    worst: tuple[float, str, list[int]] | None = None
    for info in values:
        ttype = info.type.tensor_type
        dims = [d.dim_value for d in ttype.shape.dim if d.HasField("dim_value")]
        if not dims or len(dims) != len(ttype.shape.dim):
            continue
        size = math.prod(max(d, 0) for d in dims) * _itemsize(ttype.elem_type)
        if worst is None or size > worst[0]:
            worst = (size, info.name, dims)
    if worst is not None and worst[0] > limit:
        size, name, dims = worst
        raise ModelLoadError(f"{source}: tensor {name!r} of shape {dims} would need {size / 2**30:.1f} GiB, more"
                             f" than half of the {_available_bytes() / 2**30:.1f} GiB this machine has free; check"
                             " the declared input shapes (pass smaller ones with --input-shapes)")


def _ints(node: Any, name: str) -> list[int] | None:
    for attr in node.attribute:
        if attr.name == name:
            return list(attr.ints) if attr.ints else [int(attr.i)]
    return None


def check_nodes(proto: Any, source: str) -> None:
    """Attributes that contradict the weights, and non-finite weights."""
    from onnx import numpy_helper

    inits = {init.name: init for init in proto.graph.initializer}
    users: dict[str, str] = {}
    for node in proto.graph.node:
        if node.domain not in ("", "ai.onnx"):
            raise ModelLoadError(f"{source}: node {node.name or node.output[0]!r} is {node.op_type} of domain"
                                 f" {node.domain!r}; only standard ONNX ops (domain ai.onnx) are supported:"
                                 " re-export the model without custom ops")
        for attr in node.attribute:
            values = [attr.f] if attr.type == 1 else list(attr.floats) if attr.type == 6 else []
            if any(not math.isfinite(v) for v in values):
                raise ModelLoadError(f"{source}: {node.op_type} node {node.name or node.output[0]!r} has attribute"
                                     f" {attr.name} = {values if len(values) > 1 else values[0]}; it must be finite:"
                                     " fix the model")
        for inp in node.input:
            users.setdefault(inp, f"{node.op_type} node {node.name or node.output[0]!r}")
        if node.op_type not in ("Conv", "ConvTranspose") or len(node.input) < 2 or node.input[1] not in inits:
            continue
        where = f"{source}: {node.op_type} node {node.name or node.output[0]!r}"
        w = inits[node.input[1]]
        wshape = list(w.dims)
        if len(wshape) < 3:
            raise ModelLoadError(f"{where}: weight {node.input[1]!r} has shape {wshape}; a Conv weight is"
                                 " [out_channels, in_channels/group, k...]: fix the model")
        spatial = len(wshape) - 2
        kernel = _ints(node, "kernel_shape")
        if kernel is not None and kernel != wshape[2:]:
            raise ModelLoadError(f"{where}: kernel_shape {kernel} contradicts the weight's {wshape[2:]}: fix the"
                                 " model's attribute (or drop it: ONNX infers it from the weight)")
        for attr, count, low in (("strides", spatial, 1), ("dilations", spatial, 1), ("pads", 2 * spatial, 0)):
            values = _ints(node, attr)
            if values is None:
                continue
            if len(values) != count or any(v < low for v in values):
                raise ModelLoadError(f"{where}: {attr} {values} is invalid for a {spatial}-d conv (expected"
                                     f" {count} values, each at least {low}): fix the model")
        group = (_ints(node, "group") or [1])[0]
        if group < 1 or (node.op_type == "Conv" and wshape[0] % group):
            raise ModelLoadError(f"{where}: group {group} does not divide the {wshape[0]} output channels: fix the"
                                 " model")
    for init in proto.graph.initializer:
        if init.data_type not in (1, 10, 11):  # float32 / float16 / float64 only
            continue
        try:
            arr = numpy_helper.to_array(init)
        except Exception as err:  # noqa: BLE001 - raw_data of the wrong size, ...
            raise ModelLoadError(f"{source}: initializer {init.name!r} is damaged ({str(err).splitlines()[0][:120]});"
                                 " re-export the model") from None
        bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        if bad:
            used = users.get(init.name, "no node")
            raise ModelLoadError(f"{source}: initializer {init.name!r} (used by {used}) holds {bad} NaN/Inf values;"
                                 " int8 quantization needs finite weights: fix or retrain the model")
