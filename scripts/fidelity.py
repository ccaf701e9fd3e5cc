#!/usr/bin/env python3
"""Output fidelity of data-free int8 against onnxruntime's calibrated int8, on the same real photos.

For one model (default builtin:mobilenet_v2) and the ImageNet photos of ../shared/data/imagenet-val-1300:
  float       the fp32 ONNX model in onnxruntime (the reference)
  ort-int8    onnxruntime quantize_static after quant_pre_process: QDQ, per-tensor, U8 activations /
              S8 symmetric weights, MinMax calibrated on the LAST --calib photos of the set
  isquant-E   ours, data-free W8A8 per-tensor (x86 TVM build), --equalize E for each E of --equalize
evaluated on --limit evenly spaced photos among the others (disjoint from the calibration photos).
Per column: mean / min / median output cosine against float (and the mean without the worst photo),
top-1 agreement with float, and the report's equalization summary. JSON written atomically.

    .venv/bin/python scripts/fidelity.py --limit 200 --json out/fidelity.json
    .venv/bin/python scripts/fidelity.py --model builtin:mobilenet_v2 --equalize off auto on
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


def _summary(name: str, ref: np.ndarray, out: np.ndarray, seconds: float, **extra: Any) -> dict[str, Any]:
    cos = _cosine(ref, out)
    return {"column": name, "images": int(ref.shape[0]), "cosine_mean": float(cos.mean()),
            "cosine_min": float(cos.min()), "cosine_median": float(np.median(cos)),
            # one far-out photo can move a 50-photo mean by 0.01: the mean without the worst one beside it
            "cosine_mean_without_worst": float(np.sort(cos)[1:].mean()) if cos.size > 1 else float(cos.mean()),
            "worst_position": int(np.argmin(cos)),  # among the evaluated photos
            "top1_agreement": 100.0 * float(np.mean(ref.argmax(1) == out.argmax(1))),
            "seconds": round(seconds, 1), **extra}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="builtin:mobilenet_v2", help="builtin:NAME or an .onnx (224x224 ImageNet input)")
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

    def run_all(fn: Any) -> np.ndarray:
        return np.concatenate([np.asarray(fn(x[None])).reshape(1, -1) for x in images])

    def record(row: dict[str, Any]) -> None:
        rows.append(row)
        print(f"{row['column']:<16} cosine mean {row['cosine_mean']:.5f} min {row['cosine_min']:.4f}"
              f" median {row['cosine_median']:.5f} mean-without-worst {row['cosine_mean_without_worst']:.5f}"
              f"  top-1 agreement {row['top1_agreement']:.1f} %  ({row['seconds']} s)", flush=True)
        if args.json:
            atomic_write_json(args.json, meta)

    with tempfile.TemporaryDirectory(prefix="isquant-fidelity-") as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        fp32.write_bytes(model.onnx_model.SerializeToString())
        t0 = time.perf_counter()
        float_sess = sess(str(fp32))
        ref = run_all(lambda x: float_sess.run(None, {name: x})[0])
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
        record(_summary("ort-int8", ref, run_all(lambda x: q_sess.run(None, {name: x})[0]),
                        time.perf_counter() - t0, float_seconds=round(t_float, 1)))
        for mode in args.equalize:
            t0 = time.perf_counter()
            compiled = iq.compile(model, target="x86", quantize="isquant", quant_options={"equalize": mode},
                                  progress=False)
            runner = compiled.runner()
            out = run_all(lambda x: runner.run({name: x})[0])
            summary = compiled.report.get("summary", {})
            record(_summary(f"isquant-{mode}", ref, out, time.perf_counter() - t0,
                            equalize=summary.get("equalize"),
                            timings={k: round(v, 3) for k, v in compiled.report.get("timings", {}).items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
