#!/usr/bin/env python3
"""The peers of our .so on a real Raspberry Pi: onnxruntime int8 and TFLite (XNNPACK) int8, batch 1.

Two halves (docs/raspberry-pi.md section 6 has the whole recipe):

    host:  python scripts/pi_peers.py export --models resnet18 mobilenet_v2 --out pi-peers/
           # the built-in float ONNX models + onnxruntime's usual static int8 recipe (the same
           # quantize_static settings as scripts/bench.py's ort-int8 engine), copied to the Pi
    Pi:    python3 pi_peers.py run --onnx pi-peers/resnet18.int8.onnx --threads 1 4
           python3 pi_peers.py run --tflite mobilenet_v2_1.0_224_quant.tflite --threads 1 4

`run` needs only numpy plus onnxruntime and/or tflite-runtime (or ai-edge-litert) on the board, no TVM and
no isquant-tvm; it prints one JSON line per (model, engine, threads): median / min ms over --repeat runs
after --warmup runs. TFLite uses XNNPACK, its default CPU delegate for int8 since 2.x, with num_threads.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def export(models: list[str], out: Path, calib_count: int) -> None:
    repo = Path(__file__).resolve().parents[1]
    sys.path[:0] = [str(repo), str(repo / "scripts")]
    import onnx
    from bench import _input_shape, make_ort_int8  # scripts/bench.py: one ORT int8 recipe for the project

    from isquant_tvm.frontend import zoo

    out.mkdir(parents=True, exist_ok=True)
    for model in models:
        info = zoo.BUILTIN_MODELS[model]
        proto = zoo.builtin_onnx(model, batch=1)
        name, shape = _input_shape(proto)
        fp32 = out / f"{model}.fp32.onnx"
        onnx.save(proto, str(fp32))
        note = make_ort_int8(fp32, out / f"{model}.int8.onnx", name, shape, calib_count,
                             info.mean, info.std)
        print(json.dumps({"model": model, "int8": str(out / f"{model}.int8.onnx"), "input": name,
                          "shape": list(shape), **note}))


def _time(fn, warmup: int, repeat: int) -> dict:
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1e3)
    return {"median_ms": float(np.median(ts)), "min_ms": float(np.min(ts))}


def run_onnx(path: str, threads: int, warmup: int, repeat: int) -> dict:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    x = np.random.default_rng(1234).standard_normal([d if isinstance(d, int) else 1 for d in inp.shape])
    feed = {inp.name: x.astype(np.float32)}
    return {"engine": f"onnxruntime {ort.__version__}", **_time(lambda: sess.run(None, feed), warmup, repeat)}


def run_tflite(path: str, threads: int, warmup: int, repeat: int) -> dict:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        from tflite_runtime.interpreter import Interpreter
    it = Interpreter(model_path=path, num_threads=threads)
    it.allocate_tensors()
    d = it.get_input_details()[0]
    info = np.iinfo(d["dtype"]) if np.issubdtype(d["dtype"], np.integer) else None
    rng = np.random.default_rng(1234)
    x = rng.integers(info.min, info.max + 1, d["shape"]).astype(d["dtype"]) if info else \
        rng.standard_normal(d["shape"]).astype(d["dtype"])
    it.set_tensor(d["index"], x)
    return {"engine": "tflite (XNNPACK)", **_time(it.invoke, warmup, repeat)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export", help="host: write float + onnxruntime-int8 ONNX files of built-in models")
    e.add_argument("--models", nargs="+", default=["resnet18", "mobilenet_v2"], help="built-in model names")
    e.add_argument("--out", type=Path, default=Path("pi-peers"), help="output folder")
    e.add_argument("--calib-count", type=int, default=16, help="synthetic calibration images (as scripts/bench.py)")
    r = sub.add_parser("run", help="board: time onnxruntime / TFLite models")
    r.add_argument("--onnx", nargs="*", default=[], help="ONNX models for onnxruntime")
    r.add_argument("--tflite", nargs="*", default=[], help=".tflite models for TFLite + XNNPACK")
    r.add_argument("--threads", nargs="+", type=int, default=[1, 4], help="thread counts")
    r.add_argument("--warmup", type=int, default=5, help="untimed runs first")
    r.add_argument("--repeat", type=int, default=50, help="timed runs")
    args = ap.parse_args()
    if args.cmd == "export":
        export(args.models, args.out, args.calib_count)
        return 0
    if not args.onnx and not args.tflite:
        ap.error("run: give --onnx and/or --tflite models")
    for th in args.threads:  # interleaved: every model at one thread count, then the next
        for path in args.onnx:
            print(json.dumps({"model": path, "threads": th, **run_onnx(path, th, args.warmup, args.repeat)}), flush=True)
        for path in args.tflite:
            print(json.dumps({"model": path, "threads": th, **run_tflite(path, th, args.warmup, args.repeat)}),
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
