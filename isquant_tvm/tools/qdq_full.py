"""`quantize -o model.qdq.onnx` as a full QDQ model that round-trips: the export *is* compile's integer graph.

:func:`export_qdq_full` runs the real pipeline (`pipeline.quantize_model` with the same options `compile` takes:
BatchNorm folding, equalization, ISQuant / SQuant rounding, activation ranges) and writes its qnn-level graph
as standard ONNX QDQ, op by op::

    qnn.quantize(x)            -> QuantizeLinear(x, s, 0)                     (int8 / uint8, zero point 0)
    qnn.conv2d / qnn.dense     -> DQ(x) . DQ(w int8, w_s) . DQ(b int32, float32(x_s*w_s)) -> Conv | MatMul+Add
                                  [-> Relu | Clip] -> QuantizeLinear(y_s)      (requantized output)
                                  -> graph output                              (float-output classifier)
    qnn.add                    -> DQ(a) + DQ(b) [-> Relu | Clip] -> QuantizeLinear(y_s)
    qnn.max_pool2d             -> DQ -> MaxPool -> QuantizeLinear(same s)
    qnn.global_avg_pool2d      -> DQ -> GlobalAveragePool [-> QuantizeLinear(y_s)]  (int32 sums stay float)
    qnn.requantize             -> DQ -> QuantizeLinear(new s)
    slice / pad / reshape / flatten / transpose / concat on integers -> the ONNX op on DQ'd values
                                  -> QuantizeLinear(the tensor's s)
    qnn.dequantize             -> DequantizeLinear

so onnxruntime runs the file as any QDQ model (`tests/tools/test_qdq_full.py` checks it; scripts/qdq_roundtrip.py:
trained cifar10/resnet20.onnx, 500 test images, top-1 agreement with our build 100.0 % per-tensor, 99.8 %
per-channel, logit cosine >= 0.9997: onnxruntime rounds with float32 multipliers, half to even, and runs the float
ops between DequantizeLinear and QuantizeLinear in float), and
`compile model.qdq.onnx` takes the pre-quantized path (`--quantize auto`: the file's own scales, no range
estimation, no re-rounding: quantize/prequant.py).

Bit-exact round trip, decided so (measured on builtin:resnet20-cifar, per-tensor SQuant, equalize auto):
- ONNX holds scales as float32; the pipeline chose them in float64. The pipeline now rounds every activation
  and weight scale to float32 *before* deriving anything from it (quantize/rewrite.py `_f32`). The int8
  weights and int32 biases do not change (0 of 698 bias integers, 0 weights); 706 of 1404
  multiplier / shift / dequantize-scale constants move, m by at most 123 in 2^30..2^31 (< 1.2e-7 relative);
  the x86 build's logits on 200 CIFAR-10 test images: 0 of 2000 differ from before the change.
- onnxruntime forms a requantize multiplier in float32 (float32(x_s*w_s)/y_s, 24 bits); the pipeline in
  float64 (31 bits). The export writes `isquant.qdq` metadata {"activations": "int8", "multipliers":
  "float64"}; the pre-quantized path recognises it and forms multipliers in float64 from the same float32 scales,
  in the same order as the pipeline, so every m, n, bias and weight is identical (asserted by the tests on
  the qnn constants). Making the pipeline use onnxruntime's float32 multipliers instead was rejected: it
  would throw away 7 bits of every multiplier for all ISQuant builds to serve one file format.
- The classifier keeps its int32 accumulator and dequantizes straight to float (no 8-bit logits): written as
  a conv / matmul with no QuantizeLinear after it; pooled int32 features into the classifier (ResNet's
  pool -> flatten -> dense) are the float GlobalAveragePool of a DequantizeLinear; SqueezeNet's conv + ReLU +
  global pool classifier (int32 accumulator, ReLU clamped in accumulator units) is DQ -> Conv -> Relu ->
  GlobalAveragePool, all float. The pre-quantized path turns these back into the same integer ops only for files
  with the metadata above (other producers' models are unchanged).

Measured (qnn ops with identical constants, compile(float) vs compile(export)): resnet20-cifar 31/31 per-tensor and
per-channel (500/500 CIFAR-10 outputs bit-exact, trained resnet20.onnx), mobilenet_v2 65/65 (ReLU6, depthwise,
residual adds; 10/10 outputs bit-exact), squeezenet1_1 31/31 (concat of requantized parts, max pool, the
conv + ReLU + pool classifier).

No faithful QDQ form (the export refuses them, naming the op; `quantize --activations auto`, the default,
then writes the weight-only file of tools/qdq.py instead and says why): lookup-table activations (qnn.lut:
the table is the function sampled at 256 points, a QDQ Sigmoid / HardSwish is recomputed in float by its
consumer), qnn.mul, qnn.avg_pool2d (non-global), qnn.resize2d, float regions (--float-nodes / fallbacks), and
zero points (ISQuant's graphs have none). Clip (a narrower requantize clamp) has its QDQ form, untested end to end.
The graph is written at batch 1 (the pipeline's shapes) and opset 13 (per-channel DequantizeLinear).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..errors import IsquantError
from .qdq import QDQ_METADATA_KEY, write_model

__all__ = ["export_qdq_full", "QdqUnsupported", "OPSET"]

OPSET = 13
_INT_ONNX = {"int8": 3, "uint8": 2, "int32": 6}


class QdqUnsupported(IsquantError):
    """The integer graph holds an op with no faithful QDQ form."""


def export_qdq_full(model: Any, output: str | Path, quant_options: Mapping[str, Any] | None = None,
                    transaction: Any = None, quantized: Any = None) -> dict[str, Any]:
    """Quantize ``model`` (an ImportedModel) as `compile` would and write its integer graph as a QDQ ONNX file.

    ``quantized``: an existing pipeline result (`pipeline.QuantizedModel`, e.g. `api.compile(...).quantized`) to
    write instead of quantizing again (``quant_options`` then only names its settings).
    Returns a JSON-able report (source, output, settings, the pipeline's summary, node counts, sha256). Raises
    QdqUnsupported (nothing written) when the integer graph has an op with no QDQ form."""
    from ..api import prepare
    from ..pipeline import quantize_model

    options = {"progress": False, **dict(quant_options or {})}
    q = quantized if quantized is not None else quantize_model(model, prepare(model), None, only_reference=True,
                                                               **options)
    if "quantization" in q.metadata:
        raise IsquantError(f"{model.source}: this build used the model's own quantization; export the ISQuant one")
    proto = _Emitter(q.qnn_mod, model).run()
    settings = {"activations": "int8", "multipliers": "float64", "zero_point": 0,
                "rounding": q.metadata.get("rounding"), "granularity": q.metadata.get("granularity"),
                "weight_bits": 8, "activation_ranges": q.metadata.get("activation_ranges"),
                "equalize": options.get("equalize", "auto")}
    meta = proto.metadata_props.add()
    meta.key, meta.value = QDQ_METADATA_KEY, json.dumps(settings, sort_keys=True)
    import onnx

    try:
        onnx.checker.check_model(proto)
    except Exception as err:  # noqa: BLE001 - onnx raises several types
        raise IsquantError(f"{model.source}: the QDQ export fails onnx.checker ({str(err).strip()[:200]})") from err
    output = Path(output)
    data = write_model(proto, output, model.source, transaction)
    counts: dict[str, int] = {}
    for n in proto.graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return {"source": model.source, "output": str(output), "format": "onnx-qdq (int8 activations, compile's graph)",
            **settings, "opset": OPSET, "pipeline": q.report["summary"], "nodes": counts,
            "summary": {"layers": q.report["summary"]["layers"], "activation_ranges": settings["activation_ranges"],
                        "nodes": len(proto.graph.node), "file_bytes": len(data),
                        "sha256": hashlib.sha256(data).hexdigest()}}


class _Emitter:
    """One pass over the qnn-level `main` in binding order, writing ONNX nodes."""

    def __init__(self, mod: Any, model: Any) -> None:
        self.mod, self.model = mod, model
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self.vals: dict[Any, tuple] = {}  # relax var -> ("int", name, scale, dtype) | ("float", name)
        self._dq: dict[str, str] = {}
        self._n = 0

    # --- plumbing -----------------------------------------------------------------------------
    def fresh(self, base: str) -> str:
        self._n += 1
        return f"{base}_{self._n}"

    def init(self, base: str, array: np.ndarray) -> str:
        from onnx import numpy_helper

        name = self.fresh(base)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(self, op: str, inputs: list[str], base: str, **attrs: Any) -> str:
        from onnx import helper

        out = self.fresh(base)
        self.nodes.append(helper.make_node(op, inputs, [out], name=f"{out}_{op}", **attrs))
        return out

    def quantize(self, x: str, scale: float, dtype: str, base: str) -> tuple:
        s = self.init(f"{base}_scale", np.asarray(scale, np.float32))
        z = self.init(f"{base}_zero_point", np.zeros((), dtype))
        return ("int", self.node("QuantizeLinear", [x, s, z], f"{base}_q"), float(scale), dtype)

    def float_of(self, v: tuple) -> str:
        if v[0] == "acc":
            raise QdqUnsupported(f"{self.model.source}: an int32 accumulator read by something other than a pool")
        if v[0] == "float":
            return v[1]
        _, name, scale, dtype = v
        if name not in self._dq:
            s = self.init(f"{name}_scale", np.asarray(scale, np.float32))
            z = self.init(f"{name}_zero_point", np.zeros((), dtype))
            self._dq[name] = self.node("DequantizeLinear", [name, s, z], f"{name}_dq")
        return self._dq[name]

    def const_dq(self, q: np.ndarray, scale: np.ndarray, base: str, axis: int) -> str:
        scale = np.asarray(scale, np.float32).reshape(-1)
        qn = self.init(f"{base}_quantized", q)
        if scale.size == 1:
            sn = self.init(f"{base}_scale", scale.reshape(()))
            zn = self.init(f"{base}_zero_point", np.zeros((), q.dtype))
            return self.node("DequantizeLinear", [qn, sn, zn], f"{base}_dq")
        sn = self.init(f"{base}_scale", scale)
        zn = self.init(f"{base}_zero_point", np.zeros(scale.shape, q.dtype))
        return self.node("DequantizeLinear", [qn, sn, zn], f"{base}_dq", axis=axis)

    def val(self, expr: Any) -> tuple:
        if expr in self.vals:
            return self.vals[expr]
        raise QdqUnsupported(f"{self.model.source}: the integer graph reads {expr!r}, which the QDQ export"
                             " cannot express")

    def bounds(self, y: str, attrs: Mapping[str, Any], scale: float, dtype: str) -> str:
        """The requantize's clamp as Relu / Clip before QuantizeLinear (which saturates to the dtype itself)."""
        from ..reference import fixed_point

        lo, hi = fixed_point.dtype_bounds(dtype)
        out_min, out_max = int(attrs["out_min"]), int(attrs["out_max"])
        if out_min <= lo and out_max >= hi:
            return self.node("Relu", [y], "relu") if dtype == "uint8" else y
        if out_min == 0 and out_max >= hi:
            return self.node("Relu", [y], "relu")
        inputs = [y, self.init("clip_min", np.asarray(np.float32(max(out_min, lo) * scale))),
                  self.init("clip_max", np.asarray(np.float32(min(out_max, hi) * scale)))]
        return self.node("Clip", inputs, "clip")

    # --- driver -------------------------------------------------------------------------------
    def run(self) -> Any:
        import onnx
        from onnx import helper
        from ..qnn import ops as qnn_ops
        from ..util import tvm_compat

        main = self.mod["main"]
        graph_inputs = []
        for p in main.params:
            name = tvm_compat.var_name(p)
            dt = tvm_compat.expr_dtype(p)
            if dt != "float32":
                raise QdqUnsupported(f"{self.model.source}: input {name} is {dt}; the QDQ export needs float inputs")
            graph_inputs.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT,
                                                              list(tvm_compat.expr_shape(p))))
            self.vals[p] = ("float", name)
        for b in tvm_compat.bindings(main):
            value = b.value
            qop = qnn_ops.qnn_op_of(self.mod, value)
            if qop is not None:
                attrs = qnn_ops.attrs_of(self.mod[value.op])
                self.vals[b.var] = self.qnn(qop, value, attrs, b.var)
            elif hasattr(value, "op") and hasattr(value.op, "name"):
                self.vals[b.var] = self.movement(str(value.op.name), value)
            elif value in self.vals:
                self.vals[b.var] = self.vals[value]
            else:
                raise QdqUnsupported(f"{self.model.source}: binding {tvm_compat.var_name(b.var)} has no QDQ form")
        out = self.val(main.body.body)
        if out[0] != "float":
            raise QdqUnsupported(f"{self.model.source}: the graph output is an integer tensor")
        outputs = self.model.onnx_model.graph.output if self.model.onnx_model is not None else []
        out_name = outputs[0].name if len(outputs) == 1 else "output"
        self.nodes.append(helper.make_node("Identity", [out[1]], [out_name], name="output_Identity"))
        shape = list(tvm_compat.expr_shape(main.body.body))
        graph = helper.make_graph(self.nodes, (self.model.onnx_model.graph.name if self.model.onnx_model is not None
                                               else "isquant") or "isquant", graph_inputs,
                                  [helper.make_tensor_value_info(out_name, onnx.TensorProto.FLOAT, shape)],
                                  initializer=self.inits)
        proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="isquant-tvm")
        proto.ir_version = 7  # opset 13
        return proto

    # --- qnn ops ------------------------------------------------------------------------------
    def qnn(self, op: str, call: Any, attrs: Mapping[str, Any], var: Any) -> tuple:
        from ..util import tvm_compat

        args = list(call.args)
        consts = [tvm_compat.const_value(a) if tvm_compat.is_const(a) else None for a in args]
        label = tvm_compat.var_name(var)
        if op == "qnn.quantize":
            if int(attrs.get("zero_point", 0)):
                raise QdqUnsupported(f"{self.model.source}: {op} with a zero point")
            return self.quantize(self.float_of(self.val(args[0])), float(attrs["scale"]), str(attrs["out_dtype"]), label)
        if op == "qnn.dequantize":
            x = self.val(args[0])
            return ("float", self.float_of(x))
        if op in ("qnn.conv2d", "qnn.dense"):
            return self.layer(op, args, consts, attrs, label)
        if op == "qnn.add":
            if len(args) > 4:
                raise QdqUnsupported(f"{self.model.source}: qnn.add with zero points")
            y = self.node("Add", [self.float_of(self.val(args[0])), self.float_of(self.val(args[1]))], f"{label}_add")
            return self.requantized(y, attrs, label)
        if op == "qnn.requantize":
            return self.requantized(self.float_of(self.val(args[0])), attrs, label,
                                    scale=float(attrs.get("output_scale", 0)) or None)
        if op == "qnn.max_pool2d":
            x = self.val(args[0])
            pad = [int(v) for v in attrs["padding"]]
            y = self.node("MaxPool", [self.float_of(x)], f"{label}_maxpool",
                          kernel_shape=[int(v) for v in attrs["pool_size"]], strides=[int(v) for v in attrs["strides"]],
                          pads=[pad[0], pad[1], pad[2], pad[3]] if len(pad) == 4 else pad * 2,
                          dilations=[int(v) for v in attrs["dilation"]], ceil_mode=int(bool(attrs["ceil_mode"])))
            return self.quantize(y, x[2], x[3], label)
        if op == "qnn.global_avg_pool2d":
            x = self.val(args[0])
            if x[0] == "acc":  # SqueezeNet's classifier: conv + ReLU + pool, all float after the DequantizeLinears
                y = self.node("GlobalAveragePool", [x[1]], f"{label}_gap")
                return ("float", y if bool(attrs["keepdims"]) else self.node("Flatten", [y], f"{label}_flatten", axis=1))
            if x[0] != "int":
                raise QdqUnsupported(f"{self.model.source}: a global pool of a float tensor")
            y = self.node("GlobalAveragePool", [self.float_of(x)], f"{label}_gap")
            if not bool(attrs["keepdims"]):
                y = self.node("Flatten", [y], f"{label}_flatten", axis=1)
            dtype = str(attrs["out_dtype"])
            if dtype == "int32":
                return ("float", y)  # the int32 sums: the classifier's pre-quantized rule (_pooled_sums)
            if dtype == "float32":
                return ("float", y)
            return self.quantize(self.bounds(y, attrs, float(attrs["output_scale"]), dtype),
                                 float(attrs["output_scale"]), dtype, label)
        raise QdqUnsupported(f"{self.model.source}: {op} ({label}) has no faithful QDQ form (a lookup table / fused"
                             " integer op is not recomputed identically from DequantizeLinear -> float op ->"
                             " QuantizeLinear)")

    def requantized(self, y: str, attrs: Mapping[str, Any], label: str, scale: float | None = None) -> tuple:
        scale = float(attrs["output_scale"]) if scale is None else scale
        dtype = str(attrs["out_dtype"])
        return self.quantize(self.bounds(y, attrs, scale, dtype), scale, dtype, label)

    def layer(self, op: str, args: list, consts: list, attrs: Mapping[str, Any], label: str) -> tuple:
        x = self.val(args[0])
        w, b = consts[1], consts[2]
        if w is None or b is None:
            raise QdqUnsupported(f"{self.model.source}: {op} {label} without constant weights")
        w_scale = np.asarray([float(v) for v in attrs["weight_scale"]], np.float64)
        x_scale = float(attrs["input_scale"])
        out_channels = w.shape[0]
        s_acc = x_scale * np.broadcast_to(w_scale, (out_channels,))
        if np.abs(b.astype(np.int64)).max(initial=0) >= 2**31:
            raise QdqUnsupported(f"{self.model.source}: {label}'s bias does not fit int32")
        b_scale = s_acc.astype(np.float32) if w_scale.size > 1 else np.asarray([s_acc[0]], np.float32)
        xf = self.float_of(x)
        if op == "qnn.conv2d":
            wd = self.const_dq(w.astype(np.int8), w_scale, f"{label}_weight", 0)
            bd = self.const_dq(b.astype(np.int32), b_scale, f"{label}_bias", 0)
            t, left, bottom, right = [int(v) for v in attrs["padding"]]
            y = self.node("Conv", [xf, wd, bd], f"{label}_conv", strides=[int(v) for v in attrs["strides"]],
                          pads=[t, left, bottom, right], dilations=[int(v) for v in attrs["dilation"]],
                          group=int(attrs["groups"]), kernel_shape=list(w.shape[2:]))
        else:
            wd = self.const_dq(np.ascontiguousarray(w.T).astype(np.int8), w_scale, f"{label}_weight", 1)
            bd = self.const_dq(b.astype(np.int32), b_scale, f"{label}_bias", 0)
            y = self.node("Add", [self.node("MatMul", [xf, wd], f"{label}_matmul"), bd], f"{label}_bias_add")
        dtype = str(attrs["out_dtype"])
        if dtype == "float32":
            return ("float", y)
        if dtype == "int32":  # the int32 accumulator of a conv + ReLU + pool classifier: stays float in QDQ
            if int(attrs["out_max"]) < 2**31 - 1 or int(attrs["out_min"]) not in (0, -(2**31)):
                raise QdqUnsupported(f"{self.model.source}: {label}'s int32 clamp has no QDQ form")
            return ("acc", self.node("Relu", [y], "relu") if int(attrs["out_min"]) == 0 else y)
        return self.requantized(y, attrs, label)

    # --- data movement on integers ------------------------------------------------------------
    def movement(self, op: str, call: Any) -> tuple:
        from ..util import tvm_compat

        args = list(call.args)
        if op == "relax.concat":
            parts = [self.val(f) for f in args[0].fields]
            if any(p[0] != "int" for p in parts) or len({(p[2], p[3]) for p in parts}) != 1:
                raise QdqUnsupported(f"{self.model.source}: a concat of tensors with different scales")
            y = self.node("Concat", [self.float_of(p) for p in parts], "concat", axis=int(call.attrs.axis))
            return self.quantize(y, parts[0][2], parts[0][3], "concat")
        x = self.val(args[0])
        xf = self.float_of(x)
        if op == "relax.strided_slice":
            axes, begin, end, strides = ([int(v.value) for v in a.fields] for a in args[1:5])
            big = 2**63 - 1
            ins = [xf, self.init("starts", np.asarray(begin, np.int64)),
                   self.init("ends", np.asarray([min(e, big) for e in end], np.int64)),
                   self.init("axes", np.asarray(axes, np.int64)), self.init("steps", np.asarray(strides, np.int64))]
            y = self.node("Slice", ins, "slice")
        elif op == "relax.nn.pad":
            if str(call.attrs.pad_mode) != "constant" or float(call.attrs.pad_value) != 0.0:
                raise QdqUnsupported(f"{self.model.source}: a non-zero / non-constant pad")
            width = [int(v) for v in call.attrs.pad_width]
            pads = width[0::2] + width[1::2]
            y = self.node("Pad", [xf, self.init("pads", np.asarray(pads, np.int64))], "pad", mode="constant")
        elif op == "relax.reshape":
            shape = [int(d) for d in tvm_compat.expr_shape(call)]
            y = self.node("Reshape", [xf, self.init("shape", np.asarray(shape, np.int64))], "reshape")
        elif op == "relax.flatten":
            y = self.node("Flatten", [xf], "flatten", axis=1)
        elif op == "relax.permute_dims":
            perm = [int(a) for a in call.attrs.axes] if call.attrs.axes is not None else None
            y = self.node("Transpose", [xf], "transpose", **({"perm": perm} if perm else {}))
        else:
            raise QdqUnsupported(f"{self.model.source}: {op} runs in float in the integer graph (a float region or"
                                 " fallback): no faithful QDQ form")
        if x[0] == "float":
            return ("float", y)
        return self.quantize(y, x[2], x[3], op.split(".")[-1])
