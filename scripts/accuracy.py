#!/usr/bin/env python3
"""The accuracy table: fp32 vs quantized top-1 on real trained models and real labelled images.

Models and data (../shared/data, see its README):
  squeezenet1_1  SqueezeNet 1.1 ONNX on imagenet-val-1300 (1,300 ImageNet validation images)
  resnet20       CIFAR ResNet-20 on the CIFAR-10 test set (10,000 images)
  resnet56       CIFAR ResNet-56 on the CIFAR-10 test set (10,000 images)
The CIFAR ResNets are imported from their .th checkpoints through the torch path, so BatchNorm
statistics are available to the data-free range rule; their fp32 reference runs in onnxruntime on
the .onnx export of the same checkpoint.

Columns (each reports fp32 top-1, quantized top-1, drop, top-1 agreement with fp32):
  isquant             ours: data-free W8A8 per-tensor symmetric, SQuant rounding, integer graph in TVM
  isquant-noeq        the same with --equalize off (isquant runs the default, auto)
  isquant-rtn         the same with round-to-nearest weights
  isquant-onnx        ours, data-free, on the .onnx file (BatchNorm folded by the exporter: no BN statistics,
                      ranges from images inverted against the model, ranges/datafree.py); what `compile
                      model.onnx` gives. For SqueezeNet (no checkpoint) it is the same model as `isquant`
  isquant-onnx-rtn    the same with round-to-nearest weights
  isquant-calibrated  ours with activation ranges from minmax calibration on 100 evenly spaced images
                      of the evaluated set (a reference point, not data-free)
  ort-static          onnxruntime quantize_static (QDQ, per-tensor, uint8 activations, int8 symmetric
                      weights, MinMax on the same 100 images) after quant_pre_process, run in onnxruntime
  w4-rtn w4-squant w6-rtn w6-squant
                      weight-only QDQ ONNX (export_qdq, per-tensor, 4 / 6 bits, rtn / squant rounding),
                      activations float, run in onnxruntime

    .venv/bin/python scripts/accuracy.py --limit 200
    .venv/bin/python scripts/accuracy.py --json out/accuracy.json --markdown out/accuracy.md
    .venv/bin/python scripts/accuracy.py --models resnet20 --columns isquant w4-squant

The JSON (a list of rows {model, column, images, fp32_top1, int8_top1, top1_drop, top1_agreement,
seconds, ...}) and the Markdown are rewritten atomically after every column, so an interrupted run
leaves the finished part.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MODELS: dict[str, dict[str, Any]] = {
    "squeezenet1_1": {"onnx": "squeezenet1.1/squeezenet1_1.onnx", "checkpoint": None,
                      "data": "imagenet-val-1300", "title": "SqueezeNet 1.1", "set": "imagenet-val-1300"},
    "resnet20": {"onnx": "cifar10/resnet20.onnx", "checkpoint": "cifar10/resnet20-12fca82f.th",
                 "data": "cifar10/test_jpeg_decoded.npz", "title": "ResNet-20 (CIFAR-10)", "set": "CIFAR-10 test"},
    "resnet56": {"onnx": "cifar10/resnet56.onnx", "checkpoint": "cifar10/resnet56-4bfd9763.th",
                 "data": "cifar10/test_jpeg_decoded.npz", "title": "ResNet-56 (CIFAR-10)", "set": "CIFAR-10 test"},
}
TVM_COLUMNS = ("isquant", "isquant-noeq", "isquant-rtn", "isquant-onnx", "isquant-onnx-rtn", "isquant-calibrated")
ONNX_COLUMNS = ("isquant-onnx", "isquant-onnx-rtn")  # imported from the .onnx file, not the checkpoint
ORT_COLUMNS = ("ort-static", "w4-rtn", "w4-squant", "w6-rtn", "w6-squant")
COLUMNS = TVM_COLUMNS + ORT_COLUMNS
WEIGHT_ONLY = {"w4-rtn": (4, "rtn"), "w4-squant": (4, "squant"), "w6-rtn": (6, "rtn"), "w6-squant": (6, "squant")}
DESCRIPTIONS = {
    "isquant": "ours, data-free W8A8 per-tensor symmetric, SQuant rounding, integer graph in TVM (x86)",
    "isquant-noeq": "ours as isquant with --equalize off (no cross-layer equalization / bias correction)",
    "isquant-rtn": "ours, data-free W8A8, round-to-nearest weights, TVM",
    "isquant-calibrated": "ours, W8A8 SQuant, activation ranges from minmax calibration (CALIB images), TVM",
    "isquant-onnx": "ours, data-free W8A8 on the BN-folded .onnx (synthetic ranges: inverted images), TVM",
    "isquant-onnx-rtn": "ours, data-free W8A8 on the BN-folded .onnx, round-to-nearest weights, TVM",
    "ort-static": "onnxruntime quantize_static: QDQ, per-tensor, U8 activations / S8 symmetric weights,"
                  " MinMax (CALIB images), quant_pre_process; run in onnxruntime",
    "w4-rtn": "weight-only 4-bit per-tensor, round-to-nearest (export_qdq); activations float; onnxruntime",
    "w4-squant": "weight-only 4-bit per-tensor, SQuant rounding (export_qdq); activations float; onnxruntime",
    "w6-rtn": "weight-only 6-bit per-tensor, round-to-nearest (export_qdq); activations float; onnxruntime",
    "w6-squant": "weight-only 6-bit per-tensor, SQuant rounding (export_qdq); activations float; onnxruntime",
}
ENGINES = {**{c: "tvm" for c in TVM_COLUMNS}, **{c: "onnxruntime" for c in ORT_COLUMNS}}
CALIB_IMAGES = 100
ORT_BATCH = 50


def _log(msg: str) -> None:
    from tqdm.auto import tqdm

    tqdm.write(msg, file=sys.stderr)


def default_data_dir() -> Path:
    env = os.environ.get("ISQUANT_DATA")
    return Path(env) if env else ROOT.parent / "shared" / "data"


def check_data(data_dir: Path, models: list[str]) -> None:
    """Fail with one message naming every missing file, before any work."""
    missing = []
    for name in models:
        spec = MODELS[name]
        for key in ("onnx", "checkpoint", "data"):
            if spec[key] and not (data_dir / spec[key]).exists():
                missing.append(str(data_dir / spec[key]))
    if missing:
        raise SystemExit(
            "accuracy.py: missing model/data files:\n  " + "\n  ".join(missing)
            + f"\nThe data folder is {data_dir} (set by --data-dir, else $ISQUANT_DATA, else ../shared/data"
              " beside the repository); see its README.md.")


# ------------------------------------------------------------------------------------------------
# metrics
# ------------------------------------------------------------------------------------------------

def _row(model: str, column: str, images: int, fp: np.ndarray, q: np.ndarray, labels: np.ndarray,
         seconds: float, **extra: Any) -> dict[str, Any]:
    fp32_top1 = 100.0 * float((fp.argmax(1) == labels).mean())
    int8_top1 = 100.0 * float((q.argmax(1) == labels).mean())
    return {"model": model, "column": column, "images": int(images),
            "fp32_top1": round(fp32_top1, 4), "int8_top1": round(int8_top1, 4),
            "top1_drop": round(fp32_top1 - int8_top1, 4),
            "top1_agreement": round(100.0 * float((fp.argmax(1) == q.argmax(1)).mean()), 4),
            "seconds": round(seconds, 1), "engine": ENGINES[column], **extra}


# ------------------------------------------------------------------------------------------------
# onnxruntime columns: ort-static and the weight-only QDQ exports, all run in one batched pass
# ------------------------------------------------------------------------------------------------

class _Reader:
    """onnxruntime CalibrationDataReader over labelled images (one sample per feed)."""

    def __init__(self, name: str, images: Iterator[np.ndarray]) -> None:
        self._items = ({name: x[None].astype(np.float32)} for x in images)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._items, None)


def make_ort_static(fp32_path: Path, out_path: Path, input_name: str, dataset: Any) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = out_path.with_name(out_path.stem + ".pre.onnx")
    quant_pre_process(str(fp32_path), str(pre))
    calib = (dataset.image(int(i)) for i in dataset.subset(CALIB_IMAGES))
    quantize_static(str(pre), str(out_path), _Reader(input_name, calib),
                    quant_format=QuantFormat.QDQ, per_channel=False, reduce_range=False,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax,
                    extra_options={"WeightSymmetric": True, "ActivationSymmetric": False})


def _session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _batch_dim(path: Path) -> int | None:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    return int(dim.dim_value) if dim.HasField("dim_value") else None


def run_ort_columns(name: str, columns: list[str], fp32_path: Path, dataset: Any, limit: int | None,
                    work: Path, threads: int, record: Callable[[dict[str, Any]], None]) -> None:
    import onnx

    from isquant_tvm.tools.qdq import export_qdq

    input_name = onnx.load(str(fp32_path), load_external_data=False).graph.input[0].name
    paths: dict[str, Path] = {"fp32": fp32_path}
    prep_s: dict[str, float] = {}
    errors: dict[str, str] = {}
    for column in columns:
        t0 = time.perf_counter()
        dst = work / f"{name}.{column}.onnx"
        try:
            if column == "ort-static":
                make_ort_static(fp32_path, dst, input_name, dataset)
            else:
                bits, rounding = WEIGHT_ONLY[column]
                export_qdq(onnx.load(str(fp32_path)), dst, rounding=rounding, granularity="per-tensor",
                           weight_bits=bits, source=str(fp32_path))
            paths[column] = dst
        except Exception as err:  # keep the other columns
            errors[column] = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
            _log(f"[{name}] {column}: preparation failed: {errors[column]}\n{traceback.format_exc()}")
        prep_s[column] = time.perf_counter() - t0

    # Batch 50 where every file takes a dynamic batch, else batch 1.
    batch = ORT_BATCH if all(_batch_dim(p) is None for p in paths.values()) else 1
    sessions = {key: _session(p, threads) for key, p in paths.items()}
    logits: dict[str, list[np.ndarray]] = {key: [] for key in sessions}
    run_s = {key: 0.0 for key in sessions}
    labels = []
    order = dataset.subset(limit)
    from tqdm.auto import tqdm

    bar = tqdm(total=len(order), desc=f"{name} onnxruntime ({', '.join(paths)})", unit="img", leave=False,
               file=sys.stderr)
    for x, y in dataset.batches(batch, limit):
        feed = {input_name: x.astype(np.float32)}
        for key, sess in sessions.items():
            t0 = time.perf_counter()
            logits[key].append(sess.run(None, feed)[0].reshape(len(x), -1))
            run_s[key] += time.perf_counter() - t0
        labels.append(y)
        bar.update(len(x))
    bar.close()
    lab = np.concatenate(labels)
    fp = np.concatenate(logits["fp32"])
    for column in columns:
        if column in errors:
            record({"model": name, "column": column, "images": int(len(order)), "fp32_top1": None,
                    "int8_top1": None, "top1_drop": None, "top1_agreement": None,
                    "seconds": round(prep_s[column], 1), "engine": ENGINES[column], "error": errors[column]})
            continue
        extra = {"calibration_images": CALIB_IMAGES} if column == "ort-static" else {}
        record(_row(name, column, len(order), fp, np.concatenate(logits[column]), lab,
                    prep_s[column] + run_s[column], batch=batch, **extra))


# ------------------------------------------------------------------------------------------------
# TVM columns (isquant_tvm.tools.evaluate: int8 build at batch 1, fp32 in onnxruntime)
# ------------------------------------------------------------------------------------------------

def import_model(name: str, data_dir: Path) -> Any:
    import onnx

    import isquant_tvm as iq

    spec = MODELS[name]
    if spec["checkpoint"]:
        import torch

        from isquant_tvm.frontend.cifar_resnet import load_cifar_checkpoint

        module = load_cifar_checkpoint(data_dir / spec["checkpoint"])
        model = iq.load(module, example_inputs=(torch.zeros(1, 3, 32, 32),))
        model.onnx_model = onnx.load(str(data_dir / spec["onnx"]))  # fp32 side in onnxruntime
        return model
    return iq.load(data_dir / spec["onnx"])


def run_tvm_column(name: str, column: str, model: Any, dataset: Any, data_path: Path, limit: int | None,
                   record: Callable[[dict[str, Any]], None]) -> None:
    from isquant_tvm.tools.evaluate import evaluate

    options: dict[str, Any] = {}
    if column.endswith("-rtn"):
        options = {"rounding": "rtn"}
    elif column == "isquant-noeq":
        options = {"equalize": "off"}
    elif column == "isquant-calibrated":
        options = {"calibration": str(data_path), "calibration_method": "minmax", "calibration_count": CALIB_IMAGES}
    t0 = time.perf_counter()
    try:
        res = evaluate(model, dataset, limit=limit, quant_options=options or None, progress=True, sqnr_samples=0)
    except Exception as err:  # keep the other columns
        msg = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
        _log(f"[{name}] {column}: failed: {msg}\n{traceback.format_exc()}")
        record({"model": name, "column": column, "images": None, "fp32_top1": None, "int8_top1": None,
                "top1_drop": None, "top1_agreement": None, "seconds": round(time.perf_counter() - t0, 1),
                "engine": ENGINES[column], "error": msg})
        return
    summary = res.get("quantization") or {}
    record({"model": name, "column": column, "images": res["images"],
            "fp32_top1": round(res["fp32_top1"], 4), "int8_top1": round(res["int8_top1"], 4),
            "top1_drop": round(res["top1_drop"], 4), "top1_agreement": round(res["top1_agreement"], 4),
            "seconds": round(time.perf_counter() - t0, 1), "engine": ENGINES[column],
            "logit_cosine_mean": round(res["logit_cosine_mean"], 6),
            "activation_ranges": summary.get("activation_ranges"), "rounding": summary.get("rounding"),
            **({"calibration_images": summary["calibration_samples"]} if "calibration_samples" in summary else {})})


# ------------------------------------------------------------------------------------------------
# output
# ------------------------------------------------------------------------------------------------

def _pct(v: Any) -> str:
    return "—" if v is None else f"{v:.2f}"


def _drop(v: Any) -> str:
    return "—" if v is None else f"{v:+.2f}".replace("+0.00", "0.00").replace("-0.00", "0.00")


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    models = list(dict.fromkeys(r["model"] for r in rows))
    columns = [c for c in COLUMNS if any(r["column"] == c for r in rows)]
    by = {(r["model"], r["column"]): r for r in rows}
    out = ["| model | data | column | images | fp32 top-1 % | quant top-1 % | drop (pt) | top-1 agreement % | s |",
           "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for m in models:
        for c in columns:
            r = by.get((m, c))
            if r is None:
                continue
            cells = [MODELS[m]["title"], MODELS[m]["set"], f"`{c}`", str(r["images"] or "—"), _pct(r["fp32_top1"]),
                     _pct(r["int8_top1"]), _drop(r["top1_drop"]), _pct(r["top1_agreement"]), f"{r['seconds']:.0f}"]
            if r.get("error"):
                cells[5] = f"failed: {r['error'][:80]}"
            out.append("| " + " | ".join(cells) + " |")
    out += ["", "Top-1 drop (fp32 − quantized, points) at a glance:", "",
            "| model | " + " | ".join(f"`{c}`" for c in columns) + " |",
            "|---|" + "---:|" * len(columns)]
    for m in models:
        out.append(f"| {MODELS[m]['title']} | " + " | ".join(_drop(by[(m, c)]["top1_drop"]) if (m, c) in by else ""
                                                          for c in columns) + " |")
    out += ["", "Columns:", ""]
    for c in columns:
        out.append(f"- `{c}`: {DESCRIPTIONS[c].replace('CALIB', str(CALIB_IMAGES))}.")
    out += ["", "drop = fp32 top-1 − quantized top-1 (positive = worse); agreement = share of images whose "
                "quantized top-1 class equals the fp32 top-1 class. fp32 runs in onnxruntime in every column "
                "(batch 1 beside the TVM int8 build, batch "
                f"{ORT_BATCH} for the onnxruntime columns). Calibrated columns use {CALIB_IMAGES} evenly spaced "
                "images of the evaluated set (a reference point; `isquant` and `isquant-rtn` see no data: "
                "BatchNorm-statistics ranges for the CIFAR ResNets, loaded from their .th checkpoints, "
                "synthetic-input ranges for SqueezeNet, which has no BatchNorm). s = wall seconds of the "
                "column (compile/quantize + inference).", ""]
    out.append(f"Run: {meta['date']}, {meta['machine']}; onnxruntime {meta['onnxruntime']}, TVM {meta['tvm']}; "
               f"total {meta['total_s'] / 60:.1f} min{' (partial)' if meta.get('partial') else ''}"
               f"{'; --limit ' + str(meta['limit']) if meta.get('limit') else ''}.")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS), metavar="MODEL",
                   help=f"models to evaluate (default: all of {', '.join(MODELS)})")
    p.add_argument("--columns", nargs="+", choices=list(COLUMNS), default=list(COLUMNS), metavar="COLUMN",
                   help=f"columns to compute (default: all of {', '.join(COLUMNS)})")
    p.add_argument("--limit", type=int, metavar="N",
                   help="evaluate an evenly spaced subset of N images per set (default: all)")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="the models and data (default: $ISQUANT_DATA, else ../shared/data beside the repository)")
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1),
                   help="onnxruntime intra-op threads (default: 2)")
    p.add_argument("--json", type=Path, metavar="PATH", help="write the rows as JSON to PATH (atomically)")
    p.add_argument("--markdown", type=Path, metavar="PATH", help="write the table as Markdown to PATH (atomically)")
    args = p.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        p.error("--limit must be a positive number of images")
    data_dir = (args.data_dir or default_data_dir()).resolve()
    check_data(data_dir, args.models)

    import onnxruntime
    import tvm
    from tqdm.auto import tqdm

    import isquant_tvm as iq
    from isquant_tvm.ranges.datasets import load_labelled
    from isquant_tvm.util.fileio import atomic_write_bytes, atomic_write_json

    start = time.perf_counter()
    meta = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "onnxruntime": onnxruntime.__version__, "tvm": tvm.__version__, "limit": args.limit, "total_s": 0.0}
    rows: list[dict[str, Any]] = []
    columns = [c for c in COLUMNS if c in args.columns]

    def write(partial: bool) -> None:
        meta["total_s"], meta["partial"] = time.perf_counter() - start, partial
        if args.json:
            atomic_write_json(args.json, rows)
        if args.markdown:
            atomic_write_bytes(args.markdown, markdown(rows, meta).encode())

    def record(row: dict[str, Any]) -> None:
        rows.append(row)
        if row.get("error") is None:
            _log(f"[{row['model']}] {row['column']:<18} fp32 {row['fp32_top1']:6.2f}  quant {row['int8_top1']:6.2f}  "
                 f"drop {row['top1_drop']:+6.2f}  agree {row['top1_agreement']:6.2f}  ({row['images']} img, "
                 f"{row['seconds']:.0f} s)")
        write(partial=True)

    tasks = tqdm(total=len(args.models) * len(columns), desc="accuracy", unit="column", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="isquant-accuracy-") as tmp:
        for name in args.models:
            spec = MODELS[name]
            fp32_path, data_path = data_dir / spec["onnx"], data_dir / spec["data"]
            shape = (1, 3, 224, 224) if name == "squeezenet1_1" else (1, 3, 32, 32)
            dataset = load_labelled(data_path, shape)
            ort_cols = [c for c in columns if c in ORT_COLUMNS]
            if ort_cols:
                tasks.set_postfix_str(f"{name}: {', '.join(ort_cols)}")
                run_ort_columns(name, ort_cols, fp32_path, dataset, args.limit, Path(tmp), args.threads, record)
                tasks.update(len(ort_cols))
            tvm_cols = [c for c in columns if c in TVM_COLUMNS]
            if tvm_cols:
                model = import_model(name, data_dir)
                onnx_model = iq.load(fp32_path) if any(c in ONNX_COLUMNS for c in tvm_cols) else None
                if tuple(model.inputs[0].shape) != shape:
                    raise SystemExit(f"{name}: unexpected input shape {model.inputs[0].shape}, expected {shape}")
                for column in tvm_cols:
                    tasks.set_postfix_str(f"{name}: {column}")
                    run_tvm_column(name, column, onnx_model if column in ONNX_COLUMNS else model, dataset,
                                   data_path, args.limit, record)
                    tasks.update()
    tasks.close()
    write(partial=False)
    total = time.perf_counter() - start
    print(markdown(rows, meta))
    _log(f"total {total / 60:.1f} min")
    return 1 if any(r.get("error") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
