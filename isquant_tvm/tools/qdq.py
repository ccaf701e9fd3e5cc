"""Export a weight-only QDQ ONNX model whose int8 weights are rounded by ISQuant / SQuant.

This is `quantize --activations float` (and the fallback of the default `auto` when the integer graph has an
op with no QDQ form, or for ``--weight-bits`` < 8): weights only, rounded on the ONNX graph by this module's own
BatchNorm folding, so `compile` of such a file re-estimates activation ranges and re-rounds (it is not detected
as pre-quantized). The default export, whose compile gives back the same integer graph, is tools/qdq_full.py.

:func:`export_qdq` rewrites a float ONNX model so that every quantisable layer reads its weight
through ``DequantizeLinear``::

    W_quantized (int8) ─┐
    W_scale (float32)  ─┼─ DequantizeLinear ── W_dequantized ──> Conv / Gemm / MatMul
    W_zero_point (0)   ─┘

Quantised layers: ``Conv`` (weight = input 1), ``Gemm`` (constant 2-D ``B``) and ``MatMul`` with
a constant 2-D operand. Everything else, activations included, stays float (weight-only QDQ), so
any ONNX runtime can execute the file and an int8 toolchain can pick up the exact integers.

* **BatchNorm folding first.** A ``BatchNormalization`` (inference form, constant parameters)
  that is the only consumer of a ``Conv``'s output is folded into the conv's weight and bias with
  :func:`isquant.fold_batchnorm` and removed; ISQuant then rounds the *folded* weight, as the
  deployed kernel sees it. Biases stay float.
* **Rounding.** :func:`isquant.quantize_weight` on the weight laid out output-channel first
  (``OC×IC×KH×KW`` for Conv; ``B`` for ``Gemm(transB=1)``, ``Bᵀ`` for ``Gemm(transB=0)`` and for
  ``MatMul(X, B)``; ``A`` for ``MatMul(A, X)``), so SQuant's kernel and channel stages work on the
  real kernels and output channels.
* **Scales.** Symmetric, zero-point 0 (an explicit int8 zero point is written). ``per-tensor``:
  one scalar scale. ``per-channel``: one scale per output channel with ``DequantizeLinear``'s
  ``axis`` = 0 for Conv, ``Gemm(transB=1)`` and ``MatMul(A, X)``, 1 for ``Gemm(transB=0)`` and
  ``MatMul(X, B)``.
* **Narrow range.** Integers lie in ``[-(2^(b-1)-1), 2^(b-1)-1]`` for ``weight_bits = b``: ``[-127,
  127]`` at 8 bits. For ``b < 8`` the int8 container holds that smaller range (e.g. ``[-7, 7]`` at
  4 bits); the file format does not record ``b``, the model's ``isquant.qdq`` metadata does.
* **Opset.** The model's opset is kept, and raised with :mod:`onnx.version_converter` only where
  needed: to 10 for ``DequantizeLinear`` at all, to 13 for a per-channel ``axis``. The IR version is
  raised to the minimum that opset needs.
* **Checked, atomic, deterministic.** The result passes :func:`onnx.checker.check_model`; it is
  serialised in memory (deterministic protobuf serialisation) and written with
  :func:`util.fileio.atomic_write_bytes`, so a failed export leaves no file and the same input
  gives a byte-identical file.

Constant weights may be initializers or ``Constant`` nodes. Layers whose weight is not a
constant float32 tensor of the right rank are left float and listed in the report's ``skipped``.
Only the main graph is rewritten (not ``If`` / ``Loop`` bodies).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..rounding import isquant
from ..errors import IsquantError, ModelLoadError
from ..frontend.prequant import ISQUANT_METADATA_KEY

__all__ = ["export_qdq", "QDQ_METADATA_KEY"]

#: metadata_props key holding the export settings (JSON) in the written model.
QDQ_METADATA_KEY = ISQUANT_METADATA_KEY

_MIN_OPSET_DQ = 10  # DequantizeLinear appears in opset 10
_MIN_OPSET_AXIS = 13  # DequantizeLinear's per-axis form appears in opset 13


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def export_qdq(
    model: Any,
    output: str | Path,
    rounding: str = "squant",
    granularity: str = "per-tensor",
    weight_bits: int = 8,
    source: str = "",
    transaction: Any = None,
    float_nodes: Sequence[str] = (),
) -> dict[str, Any]:
    """Write ``model`` as a weight-only QDQ ONNX file at ``output``; return a JSON-able report.

    ``model`` is an ``onnx.ModelProto`` (not modified), or a path to / the bytes of an ONNX file.
    ``rounding`` is one of :data:`isquant.METHODS` ("squant", "rtn", ...), ``granularity``
    "per-tensor" or "per-channel", ``weight_bits`` 2..8. ``source`` names the model in messages
    and in the report (default: the path, else the graph name).

    The report has ``source``, ``output``, the settings, ``opset``, ``layers`` (one entry per
    quantised layer: ``name``, ``op``, ``weight``, ``shape``, ``axis``, ``scale`` (a float, or a
    list of per-channel floats), ``bn_folded`` (the folded BatchNorm's name or None),
    ``metrics`` (:func:`isquant.weight_metrics` of the folded float weight, output channel first)
    and ``shared_with`` (the layer whose quantised weight this one reuses, or None)), ``skipped``
    (layers left float, with the reason) and a
    ``summary`` (counts, sizes, numel-weighted error figures, the file's bytes and sha256).

    Raises :class:`IsquantError` (one line naming the model / layer) for bad settings, an
    unreadable or invalid model, or a model with nothing to quantise; nothing is written then.
    """
    import onnx

    if rounding not in isquant.METHODS:
        raise IsquantError(f"rounding must be one of {', '.join(isquant.METHODS)}; got {rounding!r}")
    if granularity not in isquant.GRANULARITIES:
        raise IsquantError(
            f"granularity must be one of {', '.join(isquant.GRANULARITIES)}; got {granularity!r}")
    if isinstance(weight_bits, bool) or not isinstance(weight_bits, (int, np.integer)) \
            or not 2 <= int(weight_bits) <= 8:
        raise IsquantError(
            f"weight_bits must be an integer from 2 to 8 (the int8 container holds "
            f"[-(2^(b-1)-1), 2^(b-1)-1]); got {weight_bits!r}")
    weight_bits = int(weight_bits)
    output = Path(output)

    proto, source = _read_model(model, source)
    qmax = (1 << (weight_bits - 1)) - 1
    need_opset = _MIN_OPSET_AXIS if granularity == "per-channel" else _MIN_OPSET_DQ
    proto = _ensure_opset(proto, need_opset, source)

    rewriter = _Rewriter(proto, source, rounding, granularity, weight_bits)
    rewriter.float_nodes = _check_float_nodes(proto, float_nodes, source)
    layers, skipped = rewriter.run()
    if not layers:
        why = f" (skipped: {'; '.join(s['name'] + ': ' + s['reason'] for s in skipped)})" if skipped else ""
        raise IsquantError(
            f"{source}: no Conv, Gemm or MatMul with a constant float32 weight to quantize{why}; "
            "pass a float CNN exported to ONNX")

    settings = {"rounding": rounding, "granularity": granularity, "weight_bits": weight_bits,
                "qmin": -qmax, "qmax": qmax, "zero_point": 0, "activations": "float"}
    _set_metadata(proto, QDQ_METADATA_KEY, json.dumps(settings, sort_keys=True))

    try:
        onnx.checker.check_model(proto)
    except Exception as err:  # onnx raises ValidationError and, for some protos, others
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise IsquantError(f"{source}: the QDQ model fails onnx.checker ({msg}); "
                           "check that the input model itself passes onnx.checker") from err
    data = write_model(proto, output, source, transaction)

    return {
        "source": source,
        "output": str(output),
        "format": "onnx-qdq (weight-only)",
        **settings,
        "opset": _opset_version(proto),
        "ir_version": int(proto.ir_version),
        "layers": layers,
        "skipped": skipped,
        "summary": _summary(layers, skipped, data),
    }


# --------------------------------------------------------------------------------------------
# Reading, opset
# --------------------------------------------------------------------------------------------


def write_model(proto: Any, output: Path, source: str, transaction: Any = None) -> bytes:
    """Serialise deterministically (the same input gives a byte-identical file) and write atomically, or
    through the CLI's fileio.Transaction (renamed with --report, or not at all); returns the bytes written."""
    try:
        data = proto.SerializeToString(deterministic=True)
    except Exception as err:  # protobuf refuses messages over 2 GiB
        raise IsquantError(f"{source}: cannot serialise the QDQ model ({err}); models over 2 GiB "
                           "are not supported") from err

    from ..util.fileio import atomic_write_bytes

    try:
        if transaction is not None:
            transaction.write_bytes(output, data)
        else:
            atomic_write_bytes(output, data)
    except OSError as err:
        raise IsquantError(f"{output}: cannot write the QDQ model ({err.strerror or err}); "
                           "choose a writable output path") from err
    return data


def _check_float_nodes(proto: Any, names: Sequence[str], source: str) -> set[str]:
    """--float-nodes names, checked against the graph's node names (close matches on a typo)."""
    import difflib

    known = [n.name for n in proto.graph.node if n.name]
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
            hint = f"; close matches: {', '.join(close)}" if close else ""
            raise IsquantError(f"{source}: --float-nodes {name!r} is not a node of the model{hint}")
    return set(names)


def _read_model(model: Any, source: str) -> tuple[Any, str]:
    """A private copy of the model as a ModelProto, and the name used in messages."""
    import onnx

    if isinstance(model, onnx.ModelProto):
        proto = onnx.ModelProto()
        proto.CopyFrom(model)
        return proto, source or (model.graph.name or "model")
    if isinstance(model, (bytes, bytearray)):
        try:
            proto = onnx.ModelProto.FromString(bytes(model))
        except Exception as err:
            raise ModelLoadError(f"{source or 'model bytes'}: not a readable ONNX model ({err})") from err
        return proto, source or (proto.graph.name or "model")
    if isinstance(model, (str, Path)):
        path = Path(model)
        name = source or str(path)
        if not path.is_file():
            raise ModelLoadError(f"{name}: no such ONNX file")
        try:
            return onnx.load(str(path)), name
        except Exception as err:
            raise ModelLoadError(f"{name}: not a readable ONNX model ({type(err).__name__}: {err}); "
                                 "re-export it with onnx >= 1.16") from err
    raise ModelLoadError(
        f"{source or 'model'}: expected an onnx.ModelProto, ONNX bytes or a path, got {type(model).__name__}")


def _opset_version(proto: Any) -> int:
    for op in proto.opset_import:
        if op.domain in ("", "ai.onnx"):
            return int(op.version)
    return 0


def _ensure_opset(proto: Any, minimum: int, source: str) -> Any:
    """Raise the default-domain opset to ``minimum`` (converting the nodes) and fix the IR version."""
    from onnx import helper, version_converter

    current = _opset_version(proto)
    if current == 0:
        raise IsquantError(f"{source}: the model imports no default ONNX opset; re-export it")
    if current < minimum:
        try:
            proto = version_converter.convert_version(proto, minimum)
        except Exception as err:
            hint = "use per-tensor granularity or " if minimum == _MIN_OPSET_AXIS else ""
            raise IsquantError(
                f"{source}: cannot raise the opset from {current} to {minimum} for DequantizeLinear "
                f"({str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__}); "
                f"{hint}re-export the model at opset >= {minimum}") from err
    try:
        min_ir = helper.find_min_ir_version_for(list(proto.opset_import), ignore_unknown=True)
    except TypeError:  # older onnx without ignore_unknown
        min_ir = helper.find_min_ir_version_for(list(proto.opset_import))
    except Exception:
        min_ir = 0
    if proto.ir_version < min_ir:
        proto.ir_version = min_ir
    return proto


def _set_metadata(proto: Any, key: str, value: str) -> None:
    kept = [p for p in proto.metadata_props if p.key != key]
    del proto.metadata_props[:]
    for p in kept:
        proto.metadata_props.add(key=p.key, value=p.value)
    proto.metadata_props.add(key=key, value=value)


# --------------------------------------------------------------------------------------------
# Graph rewrite
# --------------------------------------------------------------------------------------------


def _subgraph_inputs(node: Any) -> set[str]:
    """Names an If / Loop / Scan body reads from the enclosing scope (conservatively: all inputs)."""
    from onnx import AttributeProto

    names: set[str] = set()
    for attr in node.attribute:
        graphs = [attr.g] if attr.type == AttributeProto.GRAPH else (
            list(attr.graphs) if attr.type == AttributeProto.GRAPHS else [])
        for g in graphs:
            for n in g.node:
                names.update(i for i in n.input if i)
                names |= _subgraph_inputs(n)
            names.update(o.name for o in g.output)
    return names


class _Rewriter:
    """One pass over the main graph: fold BN, quantise weights, insert DequantizeLinear nodes."""

    def __init__(self, proto: Any, source: str, rounding: str, granularity: str, bits: int):
        from onnx import numpy_helper

        self.proto, self.graph = proto, proto.graph
        self.source, self.rounding, self.granularity, self.bits = source, rounding, granularity, bits
        self.float_nodes: set[str] = set()
        self.to_array = numpy_helper.to_array
        self.from_array = numpy_helper.from_array
        g = self.graph
        self.inits = {t.name: t for t in g.initializer}
        # Constant nodes with a tensor value count as constants too.
        self.const_nodes = {}
        for n in g.node:
            if n.op_type == "Constant" and n.domain in ("", "ai.onnx") and len(n.output) == 1:
                attr = next((a for a in n.attribute if a.name == "value"), None)
                if attr is not None:
                    self.const_nodes[n.output[0]] = attr.t
        # Initializers that are also graph inputs (IR < 4 style) are treated as constants: the
        # weights are what is being quantised; their graph-input entry goes with them.
        graph_inputs = {i.name for i in g.input}
        self.graph_outputs = {o.name for o in g.output}
        self.names: set[str] = set(self.inits) | graph_inputs | self.graph_outputs
        for n in g.node:
            self.names.update(n.input)
            self.names.update(n.output)
            if n.name:
                self.names.add(n.name)
        self.names.update(v.name for v in g.value_info)
        self.sub_uses = set()
        for n in g.node:
            self.sub_uses |= _subgraph_inputs(n)

    # -- helpers --------------------------------------------------------------------------------

    def fresh(self, base: str) -> str:
        name, i = base, 1
        while name in self.names:
            name = f"{base}_{i}"
            i += 1
        self.names.add(name)
        return name

    def const(self, name: str) -> np.ndarray | None:
        """The value of constant ``name``, or None when it is not a (loadable) constant."""
        import onnx

        t = self.inits.get(name)
        if t is None:
            t = self.const_nodes.get(name)
        if t is None:
            return None
        if t.data_location == onnx.TensorProto.EXTERNAL:
            raise IsquantError(
                f"{self.source}: tensor {name!r} keeps its data in an external file; load the model "
                "with its external data (onnx.load from the model's folder) before exporting")
        return self.to_array(t)

    def consumers(self, nodes: list, name: str) -> list:
        return [n for n in nodes if name in n.input]

    # -- main -----------------------------------------------------------------------------------

    def run(self) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
        from onnx import helper

        g = self.graph
        nodes = list(g.node)
        removed: set[int] = set()  # ids of BN nodes folded away
        renamed_away: set[str] = set()  # conv outputs replaced by their BN's output
        new_inits: list = []
        before: dict[int, list] = {}  # id(node) -> DequantizeLinear nodes to insert before it
        layers: list[dict[str, Any]] = []
        skipped: list[dict[str, str]] = []
        replaced_weights: set[str] = set()
        dq_cache: dict[str, str] = {}  # unfolded weight name -> its DequantizeLinear output

        for node in nodes:
            if node.domain not in ("", "ai.onnx") or node.op_type not in ("Conv", "Gemm", "MatMul"):
                continue
            label = node.name or (node.output[0] if node.output else node.op_type)
            if node.name and node.name in self.float_nodes:
                skipped.append({"name": label, "reason": "kept float by --float-nodes"})
                continue
            plan = self.plan(node, label, skipped)
            if plan is None:
                continue
            widx, w, oc_first, axis = plan
            wname = node.input[widx]

            # BatchNorm after Conv, as the conv output's only consumer.
            bn = None
            if node.op_type == "Conv":
                bn = self.foldable_bn(nodes, node, removed)
            bias_name = None
            if bn is not None:
                b = self.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
                gamma, beta, mean, var = (self.const(bn.input[i]).astype(np.float64) for i in range(1, 5))
                eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
                try:
                    w, bf = isquant.fold_batchnorm(w, b, gamma, beta, mean, var, eps)
                except ValueError as err:
                    raise IsquantError(f"{self.source}: cannot fold BatchNorm {bn.name or bn.output[0]!r} "
                                       f"into Conv {label!r}: {err}") from err
                oc_first = w
                bias_name = self.fresh(f"{node.name or wname}.bias_bn_folded")
                new_inits.append(self.from_array(bf.astype(np.float32), bias_name))

            if bn is None and wname in dq_cache:  # a shared weight, quantised already
                node.input[widx] = dq_cache[wname]
                first = next(lay for lay in layers if lay["weight"] == wname and not lay["bn_folded"])
                layers.append({**first, "name": label, "op": node.op_type, "shared_with": first["name"]})
                continue

            qw = isquant.quantize_weight(oc_first, self.bits, self.granularity, self.rounding)
            metrics = isquant.weight_metrics(oc_first, qw)
            q = qw.q if axis == 0 else np.ascontiguousarray(qw.q.T)
            stem = wname if bn is None else f"{node.name or wname}.weight_bn_folded"
            qname = self.fresh(f"{stem}_quantized")
            sname = self.fresh(f"{stem}_scale")
            zname = self.fresh(f"{stem}_zero_point")
            dqname = self.fresh(f"{stem}_dequantized")
            scale = np.asarray(qw.scale, dtype=np.float32)
            zp = np.zeros(scale.shape, dtype=np.int8)
            new_inits += [self.from_array(q.astype(np.int8), qname), self.from_array(scale, sname),
                          self.from_array(zp, zname)]
            attrs = {"axis": axis} if scale.ndim == 1 else {}
            dq = helper.make_node("DequantizeLinear", [qname, sname, zname], [dqname],
                                  name=self.fresh(f"{stem}_DequantizeLinear"), **attrs)
            before.setdefault(id(node), []).append(dq)
            node.input[widx] = dqname
            replaced_weights.add(wname)
            if bn is None:
                dq_cache[wname] = dqname

            if bn is not None:
                while len(node.input) < 3:
                    node.input.append("")
                if node.input[2]:
                    replaced_weights.add(node.input[2])
                node.input[2] = bias_name
                renamed_away.add(node.output[0])
                node.output[0] = bn.output[0]
                removed.add(id(bn))
                replaced_weights.update(bn.input[1:5])

            layers.append({
                "name": label,
                "op": node.op_type,
                "weight": wname,
                "shape": [int(d) for d in q.shape],
                "axis": axis if scale.ndim == 1 else None,
                "scale": [float(s) for s in scale] if scale.ndim == 1 else float(scale),
                "bn_folded": (bn.name or bn.output[0]) if bn is not None else None,
                "metrics": metrics,
                "shared_with": None,
            })

        if not layers:
            return layers, skipped

        # Rebuild the node list: DequantizeLinear right before its consumer, folded BNs gone.
        kept = []
        for n in nodes:
            if id(n) in removed:
                continue
            kept.extend(before.get(id(n), []))
            kept.append(n)
        del g.node[:]
        g.node.extend(kept)

        # Drop constants nothing reads any more (old float weights, BN parameters, old biases).
        used = {i for n in kept for i in n.input} | self.graph_outputs | self.sub_uses
        dead = {name for name in replaced_weights if name not in used}
        keep_inits = [t for t in g.initializer if t.name not in dead]
        del g.initializer[:]
        g.initializer.extend(keep_inits + new_inits)
        keep_nodes = [n for n in g.node if not (n.op_type == "Constant" and n.output and n.output[0] in dead)]
        if len(keep_nodes) != len(g.node):
            del g.node[:]
            g.node.extend(keep_nodes)
        keep_in = [i for i in g.input if i.name not in dead]
        del g.input[:]
        g.input.extend(keep_in)
        gone = dead | renamed_away
        keep_vi = [v for v in g.value_info if v.name not in gone]
        del g.value_info[:]
        g.value_info.extend(keep_vi)
        return layers, skipped

    def plan(self, node: Any, label: str, skipped: list) -> tuple[int, np.ndarray, np.ndarray, int] | None:
        """(weight input index, weight as stored, weight output-channel first, output-channel axis)."""
        op = node.op_type
        if op == "Conv":
            candidates = [1]
        elif op == "Gemm":
            candidates = [1]
        else:  # MatMul: X·B with constant B, else A·X with constant A
            candidates = [1, 0]
        for widx in candidates:
            if len(node.input) <= widx or not node.input[widx]:
                continue
            w = self.const(node.input[widx])
            if w is None:
                continue
            if op == "MatMul" and widx == 1 and len(node.input) > 0 and self.const(node.input[0]) is not None:
                skipped.append({"name": label, "reason": "both MatMul operands are constant"})
                return None
            if w.dtype != np.float32:
                skipped.append({"name": label, "reason": f"weight {node.input[widx]!r} is {w.dtype}, not float32"})
                return None
            if op == "Conv":
                if w.ndim < 3:
                    skipped.append({"name": label, "reason": f"Conv weight has rank {w.ndim}"})
                    return None
                return widx, w, w, 0
            if w.ndim != 2:
                skipped.append({"name": label, "reason": f"{op} weight has rank {w.ndim}, not 2"})
                return None
            if op == "Gemm":
                trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
                return (widx, w, w, 0) if trans_b else (widx, w, np.ascontiguousarray(w.T), 1)
            if widx == 1:
                return widx, w, np.ascontiguousarray(w.T), 1
            return widx, w, w, 0
        if op != "MatMul":  # a MatMul between two activations is not a layer with weights
            skipped.append({"name": label, "reason": "weight is not a constant"})
        return None

    def foldable_bn(self, nodes: list, conv: Any, removed: set[int]) -> Any:
        out = conv.output[0]
        if out in self.graph_outputs or out in self.sub_uses:
            return None
        users = self.consumers(nodes, out)
        if len(users) != 1:
            return None
        bn = users[0]
        if bn.op_type != "BatchNormalization" or bn.domain not in ("", "ai.onnx") or id(bn) in removed:
            return None
        if bn.input[0] != out or len(bn.input) < 5 or sum(1 for o in bn.output if o) != 1 or not bn.output[0]:
            return None  # training form (extra outputs) is not an inference BN
        attrs = {a.name: a for a in bn.attribute}
        if "training_mode" in attrs and attrs["training_mode"].i:
            return None
        if "spatial" in attrs and attrs["spatial"].i == 0:
            return None
        params = [self.const(bn.input[i]) for i in range(1, 5)]
        oc = self.const(conv.input[1]).shape[0]
        if any(p is None or p.shape != (oc,) for p in params):
            return None
        return bn


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def _summary(all_layers: list[dict[str, Any]], skipped: list, data: bytes) -> dict[str, Any]:
    layers = [lay for lay in all_layers if not lay["shared_with"]]  # count a shared weight once
    numel = np.array([lay["metrics"]["numel"] for lay in layers], dtype=np.float64)
    total = float(numel.sum())

    def wmean(key: str) -> float:
        return float(sum(lay["metrics"][key] * n for lay, n in zip(layers, numel)) / total)

    return {
        "layers": len(all_layers),
        "weight_tensors": len(layers),
        "bn_folded": sum(1 for lay in layers if lay["bn_folded"]),
        "skipped": len(skipped),
        "weights": int(total),
        "float_weight_bytes": int(total) * 4,
        "int8_weight_bytes": int(total),
        "flipped": wmean("flipped"),
        "mse": wmean("mse"),
        "mse_rtn": wmean("mse_rtn"),
        "max_err_steps": max(lay["metrics"]["max_err_steps"] for lay in layers),
        "channel_ase_max": max(lay["metrics"]["channel_ase_max"] for lay in layers),
        "channel_ase_max_rtn": max(lay["metrics"]["channel_ase_max_rtn"] for lay in layers),
        "file_bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
