#!/usr/bin/env python3
"""Batch-1 CPU latency of the built-in CNNs under four engines, measured in one run:

  ort-fp32      onnxruntime CPU EP on the built-in float ONNX model
  ort-int8      onnxruntime quantize_static (QOperator, per-tensor, uint8 activations, int8 symmetric
                weights, MinMax calibration on synthetic images) after quant_pre_process
  ort-int8-noamx  the same model with AMX denied to onnxruntime (a seccomp filter fails its tile-permission
                request, so MLAS uses its AVX-512 VNNI kernels): on AMX CPUs, the like-for-like peer of
                isquant-int8-vnni. Every onnxruntime row records in "amx_permission" whether it had AMX.
  tvm-fp32      isquant_tvm.compile(..., quantize="none"): the TVM float build (kernels/float_ops.py schedules)
  isquant-int8  isquant_tvm.compile(..., quantize="isquant", target="x86"): the data-free int8 build for
                this CPU as a user gets it (AMX tiles where the CPU has them, else AVX-512 VNNI / AVX2)
  isquant-int8-vnni   the same with target x86-avx512 (AVX-512 VNNI kernels, no AMX)
  isquant-int8-amx    the same with target x86-amx (AMX tdpbusd kernels; needs an AMX CPU)
  isquant-int8-tuned  target x86-avx512 plus --tuning-records DIR (`python -m isquant_tvm tune ... --target
                      x86-avx512`): compare with isquant-int8-vnni
  prequant-int8       the ort-int8 model itself compiled by isquant_tvm with its own scales and zero points
                      (--quantize auto, quantize/prequant.py), target x86; prequant-int8-vnni: target x86-avx512

Every (model, engine, threads) measurement runs in a fresh worker subprocess: TVM reads
TVM_NUM_THREADS once, when its per-process thread pool starts, so a thread count can only be set
per process (onnxruntime workers get intra_op_num_threads=T, inter_op_num_threads=1 likewise).
Models are compiled once per run to .so files in a temporary folder, which the workers load.
All engines get the same input (one synthetic image). Reported figures are medians; the machine's
load average is recorded with every row, because shared machines are noisy. At one thread every worker
also records its calling thread's CPU time per call (`cpu_median_ms`, ratio `cpu_ratio_vs_ort_int8`):
both engines then run on that thread, so it leaves out the time other processes held the core. Measured
at load 5-6 on this 2-vCPU machine (other jobs running), onnxruntime int8's MobileNetV2 wall median was
7.96 ms against 3.96 ms of thread CPU (3.41 ms wall when quiet), while ours moved 6.04 vs 2.43.

    .venv/bin/python scripts/bench.py --json out/bench.json
    .venv/bin/python scripts/bench.py --models resnet20-cifar --threads 1 --engines ort-int8 isquant-int8
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

ENGINES = ("ort-fp32", "ort-int8", "ort-int8-noamx", "tvm-fp32", "isquant-int8", "isquant-int8-vnni", "isquant-int8-amx",
           "isquant-int8-tuned", "prequant-int8", "prequant-int8-vnni")
DEFAULT_ENGINES = ("ort-fp32", "ort-int8", "tvm-fp32", "isquant-int8")
# engine -> (quantize mode, target preset)
TVM_ENGINES = {"tvm-fp32": ("none", "x86"), "isquant-int8": ("isquant", "x86"),
               "isquant-int8-vnni": ("isquant", "x86-avx512"), "isquant-int8-amx": ("isquant", "x86-amx"),
               # MetaSchedule tunes the VNNI kernels (AMX kernels are hand-written IRBuilder code, not tunable)
               "isquant-int8-tuned": ("isquant", "x86-avx512"),
               # the ort-int8 model itself compiled by us with its own scales (--quantize auto, quantize/prequant.py)
               "prequant-int8": ("auto", "x86"), "prequant-int8-vnni": ("auto", "x86-avx512")}
# engines timed over --repeat-slow runs in one round; empty since the float build is scheduled
# (kernels/float_ops.py: mobilenet_v3_small float went from ~1 s unscheduled to tens of ms)
SLOW_ENGINES: tuple[str, ...] = ()
REFERENCES = ("ort-int8", "ort-fp32", "ort-int8-noamx")  # ratio columns, when measured in the run
DEFAULT_MODELS = ("resnet18", "squeezenet1_1", "mobilenet_v2")
INPUT_SEED = 1234  # the timed input; calibration images use other seeds


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


# ------------------------------------------------------------------------------------------------
# artifacts (main process)
# ------------------------------------------------------------------------------------------------

def _input_shape(proto: Any) -> tuple[str, tuple[int, ...]]:
    inp = proto.graph.input[0]
    dims = tuple(int(d.dim_value) for d in inp.type.tensor_type.shape.dim)
    return inp.name, dims


class _SyntheticReader:
    """onnxruntime CalibrationDataReader over the package's synthetic (1/f noise) images."""

    def __init__(self, name: str, shape: tuple[int, ...], count: int, mean: Any, std: Any) -> None:
        from isquant_tvm.ranges.activation import synthetic_inputs

        self._items = iter([{name: b[0]} for b in synthetic_inputs([shape], count=count, seed=0, mean=mean, std=std)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._items, None)

    def rewind(self) -> None:  # some onnxruntime versions call it
        pass


def make_ort_int8(fp32_path: Path, out_path: Path, name: str, shape: tuple[int, ...], calib_count: int,
                  mean: Any, std: Any) -> dict[str, Any]:
    """onnxruntime's usual static int8 recipe: quant_pre_process, then quantize_static (QOperator,
    per-tensor, U8 activations / S8 symmetric weights, MinMax) calibrated on synthetic images."""
    import onnxruntime
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = out_path.with_name(out_path.stem + ".pre.onnx")
    quant_pre_process(str(fp32_path), str(pre))
    config = dict(quant_format=QuantFormat.QOperator, per_channel=False, reduce_range=False,
                  activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                  calibrate_method=CalibrationMethod.MinMax,
                  extra_options={"WeightSymmetric": True, "ActivationSymmetric": False})
    quantize_static(str(pre), str(out_path), _SyntheticReader(name, shape, calib_count, mean, std), **config)
    return {"onnxruntime": onnxruntime.__version__, "quant_format": "QOperator", "per_channel": False,
            "reduce_range": False, "activation": "uint8 asymmetric", "weight": "int8 symmetric",
            "calibration": f"MinMax on {calib_count} synthetic images", "pre_process": "quant_pre_process"}


def prepare_model(model: str, engines: list[str], work: Path, calib_count: int, log: Any,
                  tuning_records: Path | None = None) -> dict[str, Any]:
    """Write what the workers need for `model` into `work`: input .npy, ONNX files, TVM .so files."""
    import onnx

    from isquant_tvm.frontend import zoo

    info = zoo.BUILTIN_MODELS[model]
    proto = zoo.builtin_onnx(model, batch=1)
    name, shape = _input_shape(proto)
    out: dict[str, Any] = {"input_name": name, "input_shape": list(shape), "paths": {}, "notes": {}, "errors": {},
                           "prepare_s": {}}
    # a synthetic (1/f noise) image rather than N(0,1) noise, so activations look like a real input's
    from isquant_tvm.ranges.activation import synthetic_inputs

    x = synthetic_inputs([shape], count=1, seed=INPUT_SEED, mean=info.mean, std=info.std)[0][0]
    out["input"] = str(work / f"{model}.input.npy")
    np.save(out["input"], x)
    fp32 = work / f"{model}.fp32.onnx"
    onnx.save(proto, str(fp32))
    if "ort-fp32" in engines:
        out["paths"]["ort-fp32"] = str(fp32)
    if any(e in engines for e in ("ort-int8", "ort-int8-noamx", "prequant-int8", "prequant-int8-vnni")):
        t0 = time.perf_counter()
        log(f"[{model}] onnxruntime quantize_static ...")
        try:
            dst = work / f"{model}.ort-int8.onnx"
            out["notes"]["ort-int8"] = make_ort_int8(fp32, dst, name, shape, calib_count, info.mean, info.std)
            out["paths"]["ort-int8"] = out["paths"]["ort-int8-noamx"] = str(dst)
            out["notes"]["ort-int8-noamx"] = out["notes"]["ort-int8"]
        except Exception as err:  # keep benchmarking the other engines
            out["errors"]["ort-int8"] = out["errors"]["ort-int8-noamx"] = \
                f"quantize_static failed: {type(err).__name__}: {err}"
        out["prepare_s"]["ort-int8"] = out["prepare_s"]["ort-int8-noamx"] = round(time.perf_counter() - t0, 1)
    for engine, (mode, target) in TVM_ENGINES.items():
        if engine not in engines:
            continue
        import isquant_tvm as iq

        t0 = time.perf_counter()
        log(f"[{model}] iq.compile(quantize={mode!r}, target={target!r}) ...")
        try:
            dst = work / f"{model}.{engine}.so"
            extra: dict[str, Any] = {}
            if engine == "isquant-int8-tuned":
                if tuning_records is None:
                    raise ValueError("isquant-int8-tuned needs --tuning-records DIR")
                extra["tuning_records"] = tuning_records / model if (tuning_records / model).is_dir() else tuning_records
            source = f"builtin:{model}"
            if mode == "auto":
                if "ort-int8" not in out["paths"]:
                    raise ValueError(f"{engine} compiles the ort-int8 model, which failed")
                source = out["paths"]["ort-int8"]
            res = iq.compile(source, target=target, quantize=mode, progress=False, output=dst, **extra)
            out["paths"][engine] = str(res.output)
            out["notes"][engine] = {"target": res.metadata.get("target"), "tvm": res.metadata.get("tvm_version")}
        except Exception as err:
            out["errors"][engine] = f"iq.compile failed: {type(err).__name__}: {err}"
        out["prepare_s"][engine] = round(time.perf_counter() - t0, 1)
    return out


# ------------------------------------------------------------------------------------------------
# workers (one fresh process per measurement)
# ------------------------------------------------------------------------------------------------

def _worker_ort(spec: dict[str, Any], x: np.ndarray) -> dict[str, Any]:
    from isquant_tvm.util import cpu as amx

    if spec["engine"] == "ort-int8-noamx":
        amx.deny_amx_permission()  # before the import: MLAS asks for the tiles when it is loaded
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = spec["threads"]
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(spec["path"], opts, providers=["CPUExecutionProvider"])
    feed = {spec["input_name"]: x}
    out = sess.run(None, feed)[0]
    for _ in range(spec["warmup"]):
        sess.run(None, feed)
    times, cpu = [], []
    for _ in range(spec["repeat"]):
        t0, c0 = time.perf_counter(), time.thread_time()
        for _ in range(spec["number"]):
            sess.run(None, feed)
        times.append((time.perf_counter() - t0) / spec["number"])
        cpu.append((time.thread_time() - c0) / spec["number"])
    return {"times_s": times, "output": out, "runtime_threads": spec["threads"], **_cpu_result(spec, cpu),
            "amx_permission": amx.tile_permission_granted() if amx.host_has_amx() else False}


def _worker_tvm(spec: dict[str, Any], x: np.ndarray) -> dict[str, Any]:
    # TVM_NUM_THREADS was set in this process's environment by the parent, before tvm was imported.
    import tvm

    from isquant_tvm.runtime.runner import load_local

    runner = load_local(spec["path"])
    feed = {spec["input_name"]: x}
    out = runner.run(feed)[0]
    timing = runner.benchmark(feed, repeat=spec["repeat"], number=spec["number"], warmup=spec["warmup"])
    threads = int(tvm.get_global_func("runtime.NumThreads")())
    cpu = []
    if spec["threads"] == 1:
        args = runner._device_args(feed)
        for _ in range(spec["repeat"]):
            c0 = time.thread_time()
            for _ in range(spec["number"]):
                runner.vm["main"](*args)
            cpu.append((time.thread_time() - c0) / spec["number"])
    return {"timing": timing.to_json(), "output": out, "runtime_threads": threads, **_cpu_result(spec, cpu)}


def _cpu_result(spec: dict[str, Any], cpu: list[float]) -> dict[str, Any]:
    """At one thread both engines run on the calling thread, so its CPU time is the latency without the
    time other processes took the core (on this shared 2-vCPU machine the wall medians moved 2x with the
    load; SMT siblings still slow it). More threads: wall only."""
    if spec["threads"] != 1 or not cpu:
        return {}
    return {"cpu_median_ms": float(np.median(cpu)) * 1e3}


def worker_main(spec_path: str, result_path: str) -> int:
    from isquant_tvm.util.fileio import atomic_write_json

    spec = json.loads(Path(spec_path).read_text())
    x = np.load(spec["input"])
    try:
        res = _worker_tvm(spec, x) if spec["engine"] in TVM_ENGINES else _worker_ort(spec, x)
        out = np.asarray(res.pop("output"), dtype=np.float64).ravel()
        if "timing" in res:
            t = res.pop("timing")
            result = {k: t[k] for k in ("median_ms", "mean_ms", "min_ms", "max_ms", "std_ms")}
        else:
            ms = np.asarray(res.pop("times_s")) * 1e3
            result = {"median_ms": float(np.median(ms)), "mean_ms": float(ms.mean()), "min_ms": float(ms.min()),
                      "max_ms": float(ms.max()), "std_ms": float(ms.std())}
        result.update(res, output=out.tolist())
    except Exception as err:
        result = {"error": f"{type(err).__name__}: {err}"}
    atomic_write_json(Path(result_path), result)
    return 0


def run_worker(spec: dict[str, Any], work: Path, timeout: float) -> dict[str, Any]:
    tag = f"{spec['model']}.{spec['engine']}.t{spec['threads']}"
    spec_path, result_path = work / f"{tag}.spec.json", work / f"{tag}.result.json"
    spec_path.write_text(json.dumps(spec))
    result_path.unlink(missing_ok=True)
    env = dict(os.environ)
    env["TVM_NUM_THREADS"] = str(spec["threads"])
    # keep numpy/BLAS in the worker from adding threads of its own
    env.update(OMP_NUM_THREADS=str(spec["threads"]), OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_worker", str(spec_path), "--_result", str(result_path)]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=str(ROOT))
    except subprocess.TimeoutExpired:
        return {"error": f"worker timed out after {timeout:g} s"}
    if not result_path.exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        return {"error": f"worker exited {proc.returncode}: " + " | ".join(tail)}
    return json.loads(result_path.read_text())


# ------------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------------

def _merge_rounds(results: list[dict[str, Any]]) -> dict[str, Any]:
    """One row from the rounds of an engine: the median of the rounds' medians (each round's own median,
    min and max are kept in `rounds_ms`), the first round's output and load average."""
    failed = [r for r in results if "error" in r]
    if failed:
        return dict(failed[0])
    row = dict(results[0])
    if len(results) > 1:
        row["median_ms"] = float(np.median([r["median_ms"] for r in results]))
        row["mean_ms"] = float(np.mean([r["mean_ms"] for r in results]))
        row["min_ms"] = min(r["min_ms"] for r in results)
        row["max_ms"] = max(r["max_ms"] for r in results)
        row["std_ms"] = float(np.std([r["median_ms"] for r in results]))
        row["loadavg_after"] = results[-1].get("loadavg_after")
        if all(r.get("cpu_median_ms") for r in results):
            row["cpu_median_ms"] = float(np.median([r["cpu_median_ms"] for r in results]))
    row["rounds_ms"] = [{k: r[k] for k in ("median_ms", "min_ms", "max_ms", "cpu_median_ms") if k in r}
                        for r in results]
    return row


def _cosine(a: list[float] | None, b: list[float] | None) -> float | None:
    if not a or not b or len(a) != len(b):
        return None
    va, vb = np.asarray(a), np.asarray(b)
    den = float(np.linalg.norm(va) * np.linalg.norm(vb))
    return float(va @ vb / den) if den > 0 else None


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def ratio_key(reference: str) -> str:
    """The JSON key of a row's latency ratio against `reference` (e.g. ratio_vs_ort_int8)."""
    return "ratio_vs_" + reference.replace("-", "_")


def print_table(model: str, rows: list[dict[str, Any]]) -> None:
    shape = rows[0].get("input_shape") if rows else None
    refs = [e for e in REFERENCES if any(r.get(ratio_key(e)) for r in rows)] or ["ort-int8"]
    print(f"\n== {model}  (input {shape}, batch 1; median ms; ratio = engine ms / reference ms, < 1 is faster)")
    head = (f"{'engine':<20}{'threads':>8}{'median ms':>12}{'runs':>6}" + "".join(f"{'/' + e:>16}" for e in refs)
            + f"{'cos vs ort-fp32':>17}{'load1':>7}{'cpu ms':>9}{'cpu/ort-int8':>14}")
    print(head)
    print("-" * len(head))
    for r in rows:
        if r.get("error"):
            print(f"{r['engine']:<20}{r['threads']:>8}  ERROR: {r['error']}")
            continue
        ratios = "".join(f"{_fmt(r.get(ratio_key(e)), '.2f'):>16}" for e in refs)
        print(f"{r['engine']:<20}{r['threads']:>8}{r['median_ms']:>12.2f}{r['repeat']:>6}{ratios}"
              f"{_fmt(r['cos_vs_ort_fp32'], '.4f'):>17}{_fmt((r['loadavg_before'] or [None])[0], '.2f'):>7}"
              f"{_fmt(r.get('cpu_median_ms'), '.2f'):>9}{_fmt(r.get('cpu_ratio_vs_ort_int8'), '.2f'):>14}")


def build_parser() -> argparse.ArgumentParser:
    cores = _cores()
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] + "\n\n" + __doc__.split("\n\n")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Ratios are time ratios against ort-int8 / ort-fp32 (/ ort-int8-noamx) measured in the same run at the same "
               "thread count (0.5 = twice as fast). 'cos' is the cosine similarity of the engine's logits "
               "with ort-fp32's on the same input (a sanity check, not an accuracy figure: the built-in "
               "models have synthetic weights).")
    p.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), metavar="NAME",
                   help="built-in models (with or without 'builtin:'): resnet18, squeezenet1_1, mobilenet_v2, "
                        "resnet20-cifar, mobilenet_v3_small, mobilenet_v3_large, yolov8n, dbnet_mv3, mtcnn_pnet "
                        f"(default: {' '.join(DEFAULT_MODELS)})")
    p.add_argument("--engines", nargs="+", default=list(DEFAULT_ENGINES), choices=ENGINES, metavar="ENGINE",
                   help=f"engines to time, a subset of {', '.join(ENGINES)} (default: {' '.join(DEFAULT_ENGINES)})")
    p.add_argument("--tuning-records", type=Path, metavar="DIR",
                   help="records from `python -m isquant_tvm tune` for the isquant-int8-tuned engine: DIR, or "
                        "DIR/<model> when it exists (one tune run per model)")
    p.add_argument("--threads", nargs="+", type=int, default=sorted({1, cores}), metavar="T",
                   help="thread counts: onnxruntime intra_op_num_threads / TVM_NUM_THREADS, each measured in "
                        f"its own process (default: 1 and all {cores} usable cores)")
    p.add_argument("--repeat", type=int, default=20,
                   help="timed runs per measurement; the median is reported (default: 20)")
    p.add_argument("--repeat-slow", type=int, default=3,
                   help="timed runs for the slow untuned tvm-fp32 engine, seconds per run on resnet18 "
                        "(default: 3)")
    p.add_argument("--rounds", type=int, default=1,
                   help="measure every engine this many times, interleaved (engine A, B, C, A, B, C, ...), and "
                        "report the median of the rounds' medians: on a shared machine a burst of another "
                        "job's load then hits one round of each engine instead of all of one engine's runs "
                        "(default: 1)")
    p.add_argument("--number", type=int, default=1,
                   help="inferences averaged inside each timed run (default: 1)")
    p.add_argument("--warmup", type=int, default=3,
                   help="untimed inferences before timing (tvm-fp32 uses 1) (default: 3)")
    p.add_argument("--calib-count", type=int, default=16,
                   help="synthetic images that calibrate onnxruntime's quantize_static (default: 16)")
    p.add_argument("--timeout", type=float, default=1800.0,
                   help="seconds before a measurement's worker process is killed (default: 1800)")
    p.add_argument("--json", type=Path, metavar="PATH",
                   help="write the rows (a JSON list, one object per model/engine/threads) to PATH, atomically")
    p.add_argument("--_worker", help=argparse.SUPPRESS)
    p.add_argument("--_result", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args._worker:
        return worker_main(args._worker, args._result)

    from isquant_tvm.frontend import zoo
    from isquant_tvm.util.fileio import atomic_write_json

    try:
        models = list(dict.fromkeys(zoo.parse_builtin(m) for m in args.models))
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if min(args.repeat, args.repeat_slow, args.number, args.rounds) < 1 or args.warmup < 0 or min(args.threads) < 1:
        print("error: --repeat, --repeat-slow, --number, --rounds and --threads must be >= 1, --warmup >= 0",
              file=sys.stderr)
        return 2
    engines = [e for e in ENGINES if e in args.engines]
    threads = list(dict.fromkeys(args.threads))

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    host = {"machine": platform.machine(), "cores": _cores(), "python": platform.python_version()}
    if any(e in SLOW_ENGINES for e in engines) and args.repeat_slow != args.repeat:
        print(f"note: tvm-fp32 (untuned TVM float build) is timed over --repeat-slow {args.repeat_slow} runs, "
              f"the other engines over --repeat {args.repeat}")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="isq-bench-") as tmp:
        work = Path(tmp)
        for model in models:
            prep = prepare_model(model, engines, work, args.calib_count, log, args.tuning_records)
            model_rows: list[dict[str, Any]] = []
            for t in threads:
                rounds: dict[str, list[dict[str, Any]]] = {e: [] for e in engines}
                for rnd in range(args.rounds):
                    for engine in engines:
                        if engine in prep["errors"] or (engine in SLOW_ENGINES and rnd > 0):
                            continue  # the untuned float build is far off any ratio: one round is enough
                        slow = engine in SLOW_ENGINES
                        log(f"[{model}] {engine} threads={t}" + (f" round {rnd + 1}/{args.rounds}" if args.rounds > 1
                                                                  else "") + " ...")
                        spec = {"model": model, "engine": engine, "threads": t, "path": prep["paths"][engine],
                                "input": prep["input"], "input_name": prep["input_name"],
                                "repeat": args.repeat_slow if slow else args.repeat, "number": args.number,
                                "warmup": min(args.warmup, 1) if slow else args.warmup}
                        res = {"loadavg_before": _loadavg(), "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
                        res.update(run_worker(spec, work, args.timeout))
                        res["loadavg_after"] = _loadavg()
                        rounds[engine].append(res)
                for engine in engines:
                    slow = engine in SLOW_ENGINES
                    row: dict[str, Any] = {
                        "model": model, "engine": engine, "threads": t, "batch": 1,
                        "input_shape": prep["input_shape"], "median_ms": None,
                        "repeat": args.repeat_slow if slow else args.repeat, "number": args.number,
                        "warmup": min(args.warmup, 1) if slow else args.warmup,
                    }
                    if engine in prep["errors"]:
                        row["error"] = prep["errors"][engine]
                    else:
                        row.update(_merge_rounds(rounds[engine]))
                        if "error" not in row and row.get("runtime_threads") not in (None, t):
                            row["warning"] = f"runtime reports {row['runtime_threads']} threads, asked for {t}"
                    row.setdefault("loadavg_before", None)
                    row["engine_config"] = prep["notes"].get(engine)
                    row["prepare_s"] = prep["prepare_s"].get(engine)
                    model_rows.append(row)
            # ratios and output checks against the references measured in this run
            for r in model_rows:
                refs = {e: next((x for x in model_rows if x["engine"] == e and x["threads"] == r["threads"]
                                 and x.get("median_ms")), None) for e in REFERENCES}
                for e, ref in refs.items():
                    r[ratio_key(e)] = r["median_ms"] / ref["median_ms"] if ref and r.get("median_ms") else None
                    if ref and r.get("cpu_median_ms") and ref.get("cpu_median_ms"):
                        r["cpu_" + ratio_key(e)] = r["cpu_median_ms"] / ref["cpu_median_ms"]
                fp = refs["ort-fp32"]
                r["cos_vs_ort_fp32"] = _cosine(r.get("output"), fp.get("output") if fp else None)
                if r.get("output") and fp and fp.get("output"):
                    r["top1_matches_ort_fp32"] = bool(np.argmax(r["output"]) == np.argmax(fp["output"]))
            for r in model_rows:
                r.pop("output", None)
                r["host"] = host
            print_table(model, model_rows)
            rows.extend(model_rows)
            if args.json:  # rewrite after every model: a crash late in a long run keeps the earlier rows
                atomic_write_json(args.json, rows)
    print("\nAll latencies are medians; the machine's 1-minute load average at the start of each "
          "measurement is in the 'load1' column" + (f" and in {args.json}" if args.json else "") + ".")
    errors = [r for r in rows if r.get("error")]
    if errors:
        print(f"{len(errors)} measurement(s) failed", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
