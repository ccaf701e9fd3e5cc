"""Pre-quantized ONNX models at the door: `detect` tells a QDQ / QOperator model from a float one,
`validate` checks its quantization parameters on the ONNX graph (node names are lost after import)
and names the node of a bad one (PrequantError), and `import_qdq` imports it with its
DequantizeLinear nodes kept. The integer graph built from the model's own scales and zero points is
quantize/prequant.py; QOperator models are first rewritten to QDQ (qoperator.py)."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import tvm

from ..errors import IsquantError, PrequantError
from ..reference import fixed_point
from ..util import tvm_compat
from .onnx_fold import fold_constants

QOPERATOR_OPS = {"QLinearConv", "QLinearMatMul", "QLinearAdd", "QLinearMul", "QLinearConcat",
                 "QLinearGlobalAveragePool", "QLinearLeakyRelu", "QLinearSigmoid", "QLinearAveragePool",
                 "ConvInteger", "MatMulInteger", "DynamicQuantizeLinear"}
QDQ_OPS = {"QuantizeLinear", "DequantizeLinear"}
_ONNX_INT = {2: "uint8", 3: "int8", 6: "int32", 5: "int16", 4: "uint16"}

#: metadata_props key of our own `quantize` export (tools/qdq.py, tools/qdq_full.py): its settings as JSON.
ISQUANT_METADATA_KEY = "isquant.qdq"


def isquant_export(proto: Any) -> dict[str, Any] | None:
    """The settings of our own full QDQ export (int8 activations, tools/qdq_full.py), else None: such a file is
    compiled with the pipeline's float64 multipliers so it gives the integer graph it was written from."""
    import json

    for prop in proto.metadata_props:
        if prop.key == ISQUANT_METADATA_KEY:
            try:
                settings = json.loads(prop.value)
            except ValueError:
                return None
            if isinstance(settings, dict) and settings.get("activations") == "int8" \
                    and settings.get("multipliers") == "float64":
                return settings
    return None


def detect(proto: Any) -> str | None:
    """'qoperator', 'qdq' or None (a float model). A weight-only QDQ model (our own `quantize` export:
    DequantizeLinear on weights, no QuantizeLinear) has no activation parameters to use: None, so
    `--quantize auto` runs ISQuant on it as on any float model."""
    ops = {n.op_type for n in proto.graph.node}
    if ops & QOPERATOR_OPS:
        return "qoperator"
    if "DequantizeLinear" in ops and "QuantizeLinear" in ops:
        return "qdq"
    return None


# ----------------------------------------------------------------------------------------------
# validation on the ONNX graph (node names are lost after import)
# ----------------------------------------------------------------------------------------------

def _constants(proto: Any) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    out = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    for n in proto.graph.node:
        if n.op_type == "Constant" and n.attribute:
            for a in n.attribute:
                if a.name == "value":
                    out[n.output[0]] = numpy_helper.to_array(a.t)
    return out


def validate(proto: Any, source: str) -> None:
    """Scales > 0 and finite, zero points inside their type, per-channel parameters as long as the
    axis, symmetric conv / matmul weights. The error names the node; nothing has been written yet."""
    consts = _constants(proto)
    consumers: dict[str, list[Any]] = {}
    for n in proto.graph.node:
        for i, name in enumerate(n.input):
            consumers.setdefault(name, []).append((n, i))
    for node in proto.graph.node:
        if node.op_type not in QDQ_OPS:
            continue
        label = f"{source}: {node.op_type} node {node.name or node.output[0]!r}"
        scale = consts.get(node.input[1]) if len(node.input) > 1 else None
        if scale is None:
            raise PrequantError(f"{label}: the scale {node.input[1]!r} is not a constant; only static"
                                " quantization can be compiled to integers")
        scale = np.asarray(scale, np.float64)
        if not np.all(np.isfinite(scale)) or np.any(scale <= 0):
            raise PrequantError(f"{label}: scale must be finite and > 0, got {scale.reshape(-1)[:4].tolist()}"
                                " - re-export the model with valid quantization parameters")
        zp = consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        data = consts.get(node.input[0])
        qdtype = None
        if zp is not None:
            qdtype = str(zp.dtype)
        elif node.op_type == "DequantizeLinear" and data is not None:
            qdtype = str(data.dtype)
        else:
            attr = {a.name: a for a in node.attribute}
            qdtype = _ONNX_INT.get(int(attr["output_dtype"].i), "uint8") if "output_dtype" in attr else "uint8"
        if zp is not None:
            zp_arr = np.asarray(zp)
            if data is None and qdtype not in ("int8", "uint8"):
                # an activation's zero point type is its integer type: only int8 / uint8 run as integers
                # (a wider zero point would otherwise reach TVM's importer and fail there, node unnamed)
                raise PrequantError(f"{label}: zero point {zp_arr.reshape(-1)[:4].tolist()} of type {qdtype}:"
                                    " activations must be int8 (zero point in [-128, 127]) or uint8 ([0, 255]);"
                                    " re-export the model with 8-bit activations")
            if qdtype in ("int8", "uint8") and zp_arr.size:
                lo, hi = fixed_point.dtype_bounds(qdtype)
                if zp_arr.min() < lo or zp_arr.max() > hi:
                    raise PrequantError(f"{label}: zero point {zp_arr.reshape(-1)[:4].tolist()} outside {qdtype}"
                                        f" [{lo}, {hi}]")
            if node.op_type == "DequantizeLinear" and data is not None and zp_arr.dtype != data.dtype:
                raise PrequantError(f"{label}: zero point type {zp_arr.dtype} differs from the data type {data.dtype}")
        if scale.size > 1:
            axis = next((int(a.i) for a in node.attribute if a.name == "axis"), 1)
            if data is not None:
                dim = data.shape[axis] if -data.ndim <= axis < data.ndim else None
                if dim != scale.size:
                    raise PrequantError(f"{label}: per-channel scale has {scale.size} values but axis {axis} of"
                                        f" the {list(data.shape)} tensor has {dim}")
            if zp is not None and np.asarray(zp).size not in (1, scale.size):
                raise PrequantError(f"{label}: {np.asarray(zp).size} zero points for {scale.size} scales")
        if node.op_type == "DequantizeLinear" and data is not None and zp is not None and np.any(np.asarray(zp) != 0):
            for user, idx in consumers.get(node.output[0], []):
                if user.op_type in ("Conv", "Gemm", "MatMul", "ConvTranspose") and idx == 1:
                    raise PrequantError(f"{label}: asymmetric weights (zero point {np.asarray(zp).reshape(-1)[:4].tolist()})"
                                        f" for {user.op_type} {user.name!r}; the integer kernels need symmetric"
                                        " weights (zero point 0): re-quantize with symmetric weights"
                                        " (onnxruntime: WeightSymmetric=True, the default for int8)")


# ----------------------------------------------------------------------------------------------
# import
# ----------------------------------------------------------------------------------------------

def import_qdq(proto: Any, inputs: Sequence[Any], source: str) -> tvm.IRModule:
    """Relax import with the quantize / dequantize nodes kept (constant folding would turn the
    dequantized weights into float)."""
    # a QuantizeLinear of a constant (QAT exports' weight fake-quant) folds to the integer weight
    folded = fold_constants(proto, keep={"DequantizeLinear"})
    try:
        return tvm_compat.relax_from_onnx(folded, {i.name: list(i.shape) for i in inputs},
                                          {i.name: i.dtype for i in inputs})
    except Exception as err:
        raise IsquantError(f"{source}: TVM's ONNX importer failed on the quantized model:"
                           f" {str(err).strip().splitlines()[-1]}") from err
