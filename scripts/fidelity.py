#!/usr/bin/env python3
"""Output fidelity of data-free int8 against onnxruntime's calibrated int8, on the same real photos.

For one model (default builtin:mobilenet_v2) and the ImageNet photos of ../shared/data/imagenet-val-1300:
  float       the fp32 ONNX model in onnxruntime (the reference)
  ort-int8    onnxruntime quantize_static after quant_pre_process: QDQ, per-tensor, U8 activations /
              S8 symmetric weights, MinMax calibrated on the LAST --calib photos of the set
  isquant-E   ours, data-free W8A8 per-tensor (x86 TVM build), --equalize E for each E of --equalize
evaluated on --limit evenly spaced photos among the others (disjoint from the calibration photos).
Per column and per model output: mean / min / median cosine against float (and the mean without the worst
photo), the distinct values of the output on the first 8 photos (a detector head that an 8-bit range clips
reads a few dozen), top-1 agreement with float for a class-vector output, and the report's equalization
summary. Any input size: the photos are resized for the model (`builtin:yolov8n` reads 320x320, `mtcnn_pnet`
120x160), so the detector and segmenter built-ins are measured on real photos too (issue 15). JSON written
atomically.

    .venv/bin/python scripts/fidelity.py --limit 200 --json out/fidelity.json
    .venv/bin/python scripts/fidelity.py --model builtin:mobilenet_v2 --equalize off auto on
    .venv/bin/python scripts/fidelity.py --model builtin:yolov8n --limit 50 --equalize auto
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(a.shape[0], -1).astype(np.float64), b.reshape(b.shape[0], -1).astype(np.float64)
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-30)


def _output_stats(ref: np.ndarray, out: np.ndarray) -> dict[str, Any]:
    cos = _cosine(ref, out)
    stats = {"cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()), "cosine_median": float(np.median(cos)),
             # one far-out photo can move a 50-photo mean by 0.01: the mean without the worst one beside it
             "cosine_mean_without_worst": float(np.sort(cos)[1:].mean()) if cos.size > 1 else float(cos.mean()),
             "worst_position": int(np.argmin(cos)),  # among the evaluated photos
             "distinct_values_first8": int(np.unique(out[:8]).size)}
    if sum(d > 1 for d in ref.shape[1:]) <= 1:  # a class vector per photo
        stats["top1_agreement"] = 100.0 * float(np.mean(ref.reshape(len(ref), -1).argmax(1)
                                                        == out.reshape(len(out), -1).argmax(1)))
    return stats


def _summary(name: str, refs: list[np.ndarray], outs: list[np.ndarray], seconds: float,
             **extra: Any) -> dict[str, Any]:
    """The first output's figures at the top level (as before), every output's under "outputs"."""
    per = [_output_stats(r, o) for r, o in zip(refs, outs)]
    return {"column": name, "images": int(refs[0].shape[0]), **per[0],
            "cosine_mean_worst_output": min(p["cosine_mean"] for p in per),
            "outputs": per, "seconds": round(seconds, 1), **extra}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="builtin:mobilenet_v2", help="builtin:NAME or an .onnx (RGB image input of any size; ImageNet normalisation)")
    p.add_argument("--data", type=Path, default=None, help="default: $ISQUANT_DATA/imagenet-val-1300")
    p.add_argument("--limit", type=int, default=200, help="photos evaluated (default 200)")
    p.add_argument("--calib", type=int, default=64, help="photos onnxruntime calibrates on (the set's last; default 64)")
    p.add_argument("--equalize", nargs="+", choices=["off", "auto", "on"], default=["off", "auto", "on"])
    p.add_argument("--json", type=Path, help="write the rows here (atomically)")
    args = p.parse_args(argv)
    data = args.data or Path(os.environ.get("ISQUANT_DATA", ROOT.parent / "shared" / "data")) / "imagenet-val-1300"
    if not data.is_dir():
        raise SystemExit(f"{data}: no such folder (the imagenet-val-1300 photos; set --data or ISQUANT_DATA)")

    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    import isquant_tvm as iq
    from isquant_tvm.ranges.datasets import load_labelled
    from isquant_tvm.util.fileio import atomic_write_json

    model = iq.load(args.model)
    name = model.inputs[0].name
    dataset = load_labelled(data, tuple(model.inputs[0].shape))
    calib_idx = np.arange(dataset.count - args.calib, dataset.count)
    pool = dataset.count - args.calib
    eval_idx = np.unique(np.linspace(0, pool - 1, min(args.limit, pool)).round().astype(int))
    images = np.stack([dataset.image(int(i)) for i in eval_idx]).astype(np.float32)
    rows: list[dict[str, Any]] = []
    meta = {"model": args.model, "data": str(data), "eval_images": int(len(eval_idx)),
            "calibration_images": int(args.calib), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "onnxruntime": ort.__version__, "rows": rows}

    def sess(path: str) -> Any:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])

    def run_all(fn: Any) -> list[np.ndarray]:
        """Every output of the model, stacked over the photos."""
        per_photo = [[np.asarray(o) for o in fn(x[None])] for x in images]
        return [np.concatenate([p[k] for p in per_photo]) for k in range(len(per_photo[0]))]

    def record(row: dict[str, Any]) -> None:
        rows.append(row)
        for k, o in enumerate(row["outputs"]):
            top1 = f"  top-1 agreement {o['top1_agreement']:.1f} %" if "top1_agreement" in o else ""
            print(f"{row['column']:<16} out{k} cosine mean {o['cosine_mean']:.5f} min {o['cosine_min']:.4f}"
                  f" median {o['cosine_median']:.5f} mean-without-worst {o['cosine_mean_without_worst']:.5f}"
                  f"  distinct(8) {o['distinct_values_first8']}{top1}  ({row['seconds']} s)", flush=True)
        if args.json:
            atomic_write_json(args.json, meta)

    with tempfile.TemporaryDirectory(prefix="isquant-fidelity-") as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        fp32.write_bytes(model.onnx_model.SerializeToString())
        t0 = time.perf_counter()
        float_sess = sess(str(fp32))
        ref = run_all(lambda x: float_sess.run(None, {name: x}))
        t_float = time.perf_counter() - t0
        pre, q8 = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        quant_pre_process(str(fp32), str(pre))

        class Reader:
            def __init__(self) -> None:
                self._it = ({name: dataset.image(int(i))[None].astype(np.float32)} for i in calib_idx)

            def get_next(self) -> dict[str, np.ndarray] | None:
                return next(self._it, None)

        t0 = time.perf_counter()
        quantize_static(str(pre), str(q8), Reader(), quant_format=QuantFormat.QDQ, per_channel=False,
                        reduce_range=False, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax,
                        extra_options={"WeightSymmetric": True, "ActivationSymmetric": False})
        q_sess = sess(str(q8))
        record(_summary("ort-int8", ref, run_all(lambda x: q_sess.run(None, {name: x})),
                        time.perf_counter() - t0, float_seconds=round(t_float, 1)))
        for mode in args.equalize:
            t0 = time.perf_counter()
            compiled = iq.compile(model, target="x86", quantize="isquant", quant_options={"equalize": mode},
                                  progress=False)
            runner = compiled.runner()
            out = run_all(lambda x: runner.run({name: x}))
            summary = compiled.report.get("summary", {})
            record(_summary(f"isquant-{mode}", ref, out, time.perf_counter() - t0,
                            equalize=summary.get("equalize"),
                            timings={k: round(v, 3) for k, v in compiled.report.get("timings", {}).items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
