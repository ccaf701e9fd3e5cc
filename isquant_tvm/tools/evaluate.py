"""Accuracy of the int8 build against the float model on labelled images (`isquant_tvm eval`)."""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm.auto import tqdm

from ..ranges.datasets import LabelledData, load_labelled
from ..frontend.loader import ImportedModel

log = logging.getLogger(__name__)


def topk_hits(logits: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    top = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    return (top == labels[:, None]).any(axis=1)


def sqnr_db(reference: np.ndarray, approx: np.ndarray) -> float:
    signal = float(np.sum(reference.astype(np.float64) ** 2))
    noise = float(np.sum((reference.astype(np.float64) - approx.astype(np.float64)) ** 2))
    if noise == 0:
        return float("inf")
    return 10.0 * np.log10(max(signal, 1e-30) / noise)


def layer_sqnr(quantized: Any, samples: Sequence[np.ndarray]) -> list[dict[str, Any]]:
    """SQNR (dB) of every quantized tensor against its float counterpart, on `samples` (numpy reference)."""
    from ..reference.interpreter import Interpreter

    float_interp = Interpreter(quantized.float_mod)
    int_interp = Interpreter(quantized.qnn_mod)
    by_name = {}
    for float_var, int_expr, scale in quantized.tensor_map:
        by_name.setdefault(_name(int_expr), (float_var, scale))
    refs: dict[str, list[np.ndarray]] = {}
    approx: dict[str, list[np.ndarray]] = {}
    for x in samples:
        _, fenv = float_interp.run([x], capture=True)
        _, ienv = int_interp.run([x], capture=True)
        for var, value in ienv.items():
            key = _name(var)
            if key in by_name and by_name[key][0] in fenv:
                float_var, scale = by_name[key]
                refs.setdefault(key, []).append(fenv[float_var])
                approx.setdefault(key, []).append(value.astype(np.float32) * np.float32(scale))
    labels = {_name(i): (t["layer"] or t["tensor"]) for t, (_, i, _) in zip(quantized.report["tensors"], quantized.tensor_map)}
    rows = []
    for key in refs:
        rows.append({"tensor": labels.get(key, key), "sqnr_db": sqnr_db(np.concatenate(refs[key]), np.concatenate(approx[key]))})
    return rows


def _name(var: Any) -> str:
    return str(var.name) if hasattr(var, "name") else str(var)


def evaluate(model: ImportedModel, data: str | Path | LabelledData, limit: int | None = None,
             target: Any = "x86", quant_options: dict[str, Any] | None = None, progress: bool = True,
             sqnr_samples: int = 4, compiled: Any = None) -> dict[str, Any]:
    """fp32 (onnxruntime for ONNX models, the numpy float graph otherwise) vs the int8 TVM build."""
    from .. import api

    shape = model.inputs[0].shape
    preprocess = (quant_options or {}).get("preprocess", "auto")
    dataset = data if isinstance(data, LabelledData) else load_labelled(data, shape, preprocess=preprocess)
    if compiled is None:
        compiled = api.compile(model, target=target, quantize="isquant", quant_options=quant_options, progress=progress)
    runner = compiled.runner()
    fp32 = _float_engine(model, compiled)
    n = dataset.count if limit is None else min(limit, dataset.count)
    fp_logits, q_logits, labels = [], [], []
    start = time.perf_counter()
    for x, y in tqdm(dataset.batches(1, n), total=n, desc="eval", unit="img", disable=not progress or None, leave=False):
        feed = {model.inputs[0].name: x.astype(np.float32)}
        q_logits.append(runner.run(feed)[0].reshape(1, -1))
        fp_logits.append(fp32(x.astype(np.float32)).reshape(1, -1))
        labels.append(y)
    elapsed = time.perf_counter() - start
    fp, q, lab = np.concatenate(fp_logits), np.concatenate(q_logits), np.concatenate(labels)
    cos = np.sum(fp * q, axis=1) / (np.linalg.norm(fp, axis=1) * np.linalg.norm(q, axis=1) + 1e-30)
    result = {
        "model": model.source,
        "data": dataset.name,
        "images": int(n),
        "fp32_top1": 100.0 * float(topk_hits(fp, lab, 1).mean()),
        "int8_top1": 100.0 * float(topk_hits(q, lab, 1).mean()),
        "fp32_top5": 100.0 * float(topk_hits(fp, lab, min(5, fp.shape[1])).mean()),
        "int8_top5": 100.0 * float(topk_hits(q, lab, min(5, q.shape[1])).mean()),
        "top1_agreement": 100.0 * float((fp.argmax(1) == q.argmax(1)).mean()),
        "logit_cosine_mean": float(cos.mean()),
        "logit_cosine_min": float(cos.min()),
        "seconds": elapsed,
        "quantization": compiled.report.get("summary", {}),
    }
    result["top1_drop"] = result["fp32_top1"] - result["int8_top1"]
    if sqnr_samples and compiled.quantized is not None:
        samples = [dataset.image(i)[None] for i in range(min(sqnr_samples, dataset.count))]
        result["layers_sqnr"] = layer_sqnr(compiled.quantized, samples)
    return result


def _float_engine(model: ImportedModel, compiled: Any) -> Any:
    if model.onnx_model is not None:
        try:
            import onnxruntime as ort

            sess = ort.InferenceSession(model.onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
            name = sess.get_inputs()[0].name
            return lambda x: sess.run(None, {name: x})[0]
        except ImportError:
            pass
    from ..reference.interpreter import Interpreter

    interp = Interpreter(compiled.quantized.float_mod)
    return lambda x: interp.run([x])[0][0]


def plot_sqnr(rows: Sequence[dict[str, Any]], path: str | Path, title: str, transaction: Any = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..util.fileio import atomic_write_bytes
    import io

    values = [min(r["sqnr_db"], 80.0) for r in rows]
    fig, ax = plt.subplots(figsize=(max(6, 0.22 * len(rows)), 4))
    ax.bar(range(len(rows)), values, color="#3b7dd8")
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([r["tensor"] for r in rows], rotation=90, fontsize=6)
    ax.set_ylabel("SQNR (dB)")
    ax.set_title(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    if transaction is not None:  # fileio.Transaction of the CLI: renamed together with --json
        transaction.write_bytes(Path(path), buf.getvalue())
    else:
        atomic_write_bytes(Path(path), buf.getvalue())
    return Path(path)
