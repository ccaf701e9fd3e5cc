"""Issue 17's round trip, measured: compile a float model, write compile's integer graph as QDQ
(tools/qdq_full.py), compile that file, and compare the two integer graphs (qnn constants) and their outputs;
run the export in onnxruntime and compare it with ours.

    python scripts/qdq_roundtrip.py --models resnet20-cifar --images 200 --json ../main/out/roundtrip-qdq.json

resnet20-cifar (synthetic weights) and a CIFAR .onnx path (e.g. $ISQUANT_DATA/cifar10/resnet20.onnx, trained) run
on the first N CIFAR-10 test images; other built-ins on N seeded normal inputs."""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def qnn_calls(mod: Any) -> list[tuple[str, list[np.ndarray]]]:
    from isquant_tvm.qnn import ops as qnn_ops
    from isquant_tvm.util import tvm_compat

    out = []
    for b in tvm_compat.bindings(mod["main"]):
        op = qnn_ops.qnn_op_of(mod, b.value)
        if op:
            out.append((op, [tvm_compat.const_value(a) for a in b.value.args if tvm_compat.is_const(a)]))
    return out


def inputs(name: str, n: int) -> np.ndarray:
    import os

    from isquant_tvm.frontend.zoo import BUILTIN_MODELS

    info = BUILTIN_MODELS["resnet20-cifar" if name.endswith(".onnx") else name]
    if name == "resnet20-cifar" or name.endswith(".onnx"):
        path = Path(os.environ.get("ISQUANT_DATA", "../shared/data")) / "cifar10" / "test_jpeg_decoded.npz"
        images = np.load(path)["images"][:n].astype(np.float32) / 255.0
        mean, std = np.asarray(info.mean, np.float32), np.asarray(info.std, np.float32)
        return ((images - mean) / std).transpose(0, 3, 1, 2).astype(np.float32)
    return np.random.default_rng(0).normal(0, 1, (n, *info.input_shape)).astype(np.float32)


def measure(name: str, granularity: str, n: int) -> dict[str, Any]:
    import onnx
    import onnxruntime as ort

    from isquant_tvm import api
    from isquant_tvm.tools.qdq_full import export_qdq_full

    model = api.load(name if name.endswith(".onnx") else f"builtin:{name}")
    feed_name = model.inputs[0].name
    t0 = time.perf_counter()
    float_c = api.compile(model, "x86", progress=False, quant_options={"granularity": granularity})
    t1 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.qdq.onnx"
        report = export_qdq_full(model, path, {"granularity": granularity}, quantized=float_c.quantized)
        t2 = time.perf_counter()
        again = api.compile(str(path), "x86", progress=False)
        t3 = time.perf_counter()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        sess = ort.InferenceSession(onnx.load(str(path)).SerializeToString(), opts, providers=["CPUExecutionProvider"])
        a_calls, b_calls = qnn_calls(float_c.quantized.qnn_mod), qnn_calls(again.quantized.qnn_mod)
        same_ops = sum(1 for (oa, ca), (ob, cb) in zip(a_calls, b_calls)
                       if oa == ob and len(ca) == len(cb) and all(x.dtype == y.dtype and np.array_equal(x, y)
                                                                  for x, y in zip(ca, cb)))
        x = inputs(name, n)
        ra, rb = float_c.runner(), again.runner()
        ours = np.stack([ra.run({feed_name: x[i:i + 1]})[0][0] for i in range(n)])
        theirs = np.stack([rb.run({feed_name: x[i:i + 1]})[0][0] for i in range(n)])
        onnxrt = np.stack([sess.run(None, {feed_name: x[i:i + 1]})[0][0] for i in range(n)])
    labels = None
    if name == "resnet20-cifar" or name.endswith(".onnx"):
        import os

        labels = np.load(Path(os.environ.get("ISQUANT_DATA", "../shared/data")) / "cifar10" / "test_jpeg_decoded.npz")["labels"][:n]
    cos = (ours * onnxrt).sum(1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(onnxrt, axis=1))
    return {"model": name, "granularity": granularity, "images": n, "qnn_ops": len(a_calls),
            "qnn_ops_identical": same_ops if len(a_calls) == len(b_calls) else 0,
            "outputs_bit_exact": int(np.sum(np.all(ours == theirs, axis=1))),
            "export_nodes": report["nodes"], "export_bytes": report["summary"]["file_bytes"],
            "top1_vs_labels": None if labels is None else float(np.mean(ours.argmax(1) == labels)),
            "ort_top1_vs_labels": None if labels is None else float(np.mean(onnxrt.argmax(1) == labels)),
            "ort_top1_agreement": float(np.mean(ours.argmax(1) == onnxrt.argmax(1))),
            "ort_cosine_min": float(cos.min()), "ort_cosine_mean": float(cos.mean()),
            "ort_max_abs_diff": float(np.abs(ours - onnxrt).max()),
            "ort_max_abs_logit": float(np.abs(onnxrt).max()),
            "seconds": {"compile_float": t1 - t0, "export": t2 - t1, "compile_export": t3 - t2}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["resnet20-cifar"])
    p.add_argument("--granularity", nargs="+", default=["per-tensor", "per-channel"])
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    rows = []
    for name in args.models:
        for gran in args.granularity:
            row = measure(name, gran, args.images)
            print(json.dumps(row))
            rows.append(row)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
