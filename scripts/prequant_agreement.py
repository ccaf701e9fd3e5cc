"""Sweep: onnxruntime-quantized models compiled by us with `--quantize auto` (their own scales and zero
points) vs onnxruntime running the same quantized model on real images. Per (model, format, weights)
combination: top-1 agreement, the share of output elements within 1 LSB of onnxruntime's int8 output and
the largest distance, optionally the emulated board (rasp4b, qemu) against our x86 build bit for bit.

    nice -n 15 python scripts/prequant_agreement.py --json out/prequant.json            # the full sweep
    python scripts/prequant_agreement.py --models resnet20 --formats qdq --weights per-channel --limit 100
    python scripts/prequant_agreement.py --board-images 2 --board-root ../main/.board ...  # + board == x86

Models: resnet20 / resnet56 (../shared/data/cifar10, CIFAR-10 test images), squeezenet1_1
(../shared/data/squeezenet1.1, the 1,300 ImageNet validation images, centre crop 224), and the built-in
(synthetic-weight) mobilenet_v2 and resnet18 exported to ONNX by our API, fed the same ImageNet images.
Each is quantized here with onnxruntime's quantize_static (MinMax, int8 symmetric weights, uint8 asymmetric
activations unless --activation int8), calibrated on images from the END of the test set
(--calibration-count), evaluated on the first --limit-cifar / --limit-imagenet (disjoint).
`quant_pre_process` runs first for the built-in models (they keep BatchNorm, which onnxruntime only folds
after pre-processing; otherwise BatchNormalization stays float between DQ/Q, counted as fallbacks).

LSB: both outputs are the dequantization of an int8/uint8 tensor with the same (scale, zero point), so
rint((ours - theirs) / scale) is exactly the integer distance before the final dequantize.
Both engines run one thread (the figures are about agreement, not speed)."""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
DATA = Path(os.environ.get("ISQUANT_DATA", ROOT.parent / "shared" / "data"))
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
# name -> (source, dataset, quant_pre_process first)
MODELS = {"resnet20": (str(DATA / "cifar10" / "resnet20.onnx"), "cifar", False),
          "resnet56": (str(DATA / "cifar10" / "resnet56.onnx"), "cifar", False),
          "squeezenet1_1": (str(DATA / "squeezenet1.1" / "squeezenet1_1.onnx"), "imagenet", False),
          "mobilenet_v2": ("builtin:mobilenet_v2", "imagenet", True),
          "resnet18": ("builtin:resnet18", "imagenet", True)}


def images(kind: str, sl: slice) -> tuple[np.ndarray, np.ndarray]:
    """(N,3,H,W) normalised float32 images and their labels."""
    if kind == "cifar":
        npz = np.load(DATA / "cifar10" / "test_jpeg_decoded.npz")
        x, labels = npz["images"][sl].astype(np.float32) / 255, npz["labels"][sl]
    else:
        from PIL import Image

        root = DATA / "imagenet-val-1300"
        rows = sorted(line.split() for line in (root / "labels.txt").read_text().splitlines() if line.strip())[sl]
        x = np.stack([np.asarray(Image.open(root / "images" / f).convert("RGB"), np.float32)[1:225, 1:225] / 255
                      for f, _ in rows])
        labels = np.array([int(lab) for _, lab in rows])
    return ((x - MEAN) / STD).transpose(0, 3, 1, 2).astype(np.float32), labels


def float_model(name: str, tmp: Path) -> Path:
    import onnx

    src, _, pre = MODELS[name]
    path = Path(src)
    if src.startswith("builtin:"):
        from isquant_tvm.frontend import zoo

        path = tmp / f"{name}.float.onnx"
        onnx.save(zoo.builtin_onnx(src.split(":", 1)[1], batch=1), path)
    if pre:
        from onnxruntime.quantization.shape_inference import quant_pre_process

        quant_pre_process(str(path), str(tmp / f"{name}.pre.onnx"))
        path = tmp / f"{name}.pre.onnx"
    return path


def ort_quantize(src: Path, dst: Path, calib: np.ndarray, fmt: str, per_channel: bool, act: str) -> None:
    import onnx
    from onnxruntime import quantization as q

    name = onnx.load(str(src)).graph.input[0].name

    class Reader(q.CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{name: calib[i:i + 1]} for i in range(len(calib))])

        def get_next(self):
            return next(self.it, None)

    q.quantize_static(str(src), str(dst), Reader(), per_channel=per_channel, weight_type=q.QuantType.QInt8,
                      quant_format=q.QuantFormat.QDQ if fmt == "qdq" else q.QuantFormat.QOperator,
                      activation_type=q.QuantType.QUInt8 if act == "uint8" else q.QuantType.QInt8)


def ort_session(path: Path, optimized: bool = True) -> Any:
    """optimized=False: graph optimizations off, so a QDQ model runs literally (DQ, float op, Q) instead of
    fused into QLinearConv & co.: onnxruntime against itself, the noise floor of a chaotic model."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if not optimized:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def one(name: str, fmt: str, weights: str, act: str, args: argparse.Namespace, tmp: Path,
        board: dict[str, Any] | None) -> dict[str, Any]:
    import isquant_tvm as iq

    dataset = MODELS[name][1]
    limit = args.limit_cifar if dataset == "cifar" else args.limit_imagenet
    t0 = time.monotonic()
    calib, _ = images(dataset, slice(-args.calibration_count, None))
    dst = tmp / f"{name}.{fmt}.{weights}.{act}.onnx"
    ort_quantize(float_model(name, tmp), dst, calib, fmt, weights == "per-channel", act)
    res = iq.compile(str(dst), target="x86", progress=False)
    summary = res.report["summary"]
    scale = res.quantized.report["tensors"][-1]["scale"]
    sess, literal = ort_session(dst), ort_session(dst, optimized=False)
    in_name = sess.get_inputs()[0].name
    runner = res.runner()
    x, labels = images(dataset, slice(0, limit))
    agree = within = total = top1_ours = top1_ort = self_agree = self_within = ties = tie_misses = 0
    worst = 0
    hist = np.zeros(4, np.int64)  # |d| = 0, 1, 2, >= 3 LSB
    ours_first: list[np.ndarray] = []
    for i in range(len(x)):
        theirs = sess.run(None, {in_name: x[i:i + 1]})[0]
        plain = literal.run(None, {in_name: x[i:i + 1]})[0]
        self_within += int((np.abs(np.rint((plain.astype(np.float64) - theirs) / scale)) <= 1).sum())
        self_agree += int(plain.argmax() == theirs.argmax())
        ours = runner.run({in_name: x[i:i + 1]})[0]
        if i < args.board_images:
            ours_first.append(ours)
        lsb = np.abs(np.rint((ours.astype(np.float64) - theirs) / scale)).astype(np.int64)
        worst = max(worst, int(lsb.max()))
        hist += np.bincount(np.minimum(lsb.reshape(-1), 3), minlength=4)
        within += int((lsb <= 1).sum())
        total += lsb.size
        agree += int(ours.argmax() == theirs.argmax())
        top2 = np.sort(theirs.reshape(-1))[-2:]
        if np.rint((top2[1] - top2[0]) / scale) <= 1:  # ORT's top two within 1 LSB: a 1-LSB change flips it
            ties += 1
            tie_misses += int(ours.argmax() != theirs.argmax())
        top1_ours += int(ours.argmax() == labels[i])
        top1_ort += int(theirs.argmax() == labels[i])
    row = {"model": name, "format": fmt, "weights": weights, "activations": act, "dataset": dataset,
           "images": len(x), "top1_agreement": agree / len(x), "agree": agree,
           "within_1_lsb": within / total, "elements": total, "max_lsb": worst,
           "lsb_histogram_0_1_2_3plus": hist.tolist(), "top1_ours": top1_ours / len(x),
           "top1_ort": top1_ort / len(x), "ort_top2_within_1_lsb": ties, "disagreements_on_those": tie_misses,
           "ort_unoptimized_vs_ort": {"top1_agreement": self_agree / len(x), "within_1_lsb": self_within / total},
           "layers": summary["layers"],
           "float_fallback_ops": summary["float_fallback_ops"], "fallbacks": res.report["fallbacks"],
           "quantization": summary["quantization"]}
    if board is not None and args.board_images:
        from isquant_tvm.runtime.rpc import connect_runner

        arm = tmp / f"{dst.stem}.rasp4b.so"
        iq.compile(str(dst), target="rasp4b", output=arm, progress=False)
        remote, _ = connect_runner(arm, tracker=board["tracker"], key=board["key"], session_timeout=1800, quiet=True)
        same = [bool(np.array_equal(remote.run({in_name: x[i:i + 1]})[0], ours_first[i]))
                for i in range(len(ours_first))]
        row["board_rasp4b_equal_x86"] = f"{sum(same)}/{len(same)}"
    row["seconds"] = round(time.monotonic() - t0, 1)
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--formats", nargs="+", default=["qdq", "qoperator"], choices=["qdq", "qoperator"])
    p.add_argument("--weights", nargs="+", default=["per-tensor", "per-channel"], choices=["per-tensor", "per-channel"])
    p.add_argument("--activation", choices=["uint8", "int8"], default="uint8",
                   help="activation type of quantize_static (default uint8 asymmetric, onnxruntime's QUInt8)")
    p.add_argument("--limit-cifar", type=int, default=500, help="CIFAR-10 test images evaluated (default 500)")
    p.add_argument("--limit-imagenet", type=int, default=300, help="ImageNet images evaluated (default 300)")
    p.add_argument("--calibration-count", type=int, default=32, help="calibration images (from the end of the set)")
    p.add_argument("--board-images", type=int, default=0,
                   help="also build for rasp4b and compare the emulated board with x86 on this many images")
    p.add_argument("--board-only", nargs="+", default=None, metavar="MODEL:FORMAT:WEIGHTS",
                   help="board runs only for these combinations (e.g. squeezenet1_1:qdq:per-channel; default: all)")
    p.add_argument("--skip", nargs="+", default=[], metavar="MODEL:FORMAT:WEIGHTS",
                   help="combinations not to run (e.g. measured by an earlier run)")
    p.add_argument("--board-root", default=os.environ.get("ISQUANT_BOARD_ROOT"), help="the board's root folder")
    p.add_argument("--json", type=Path, help="write the rows here (rewritten after every combination)")
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a killed sweep still stops its board
    board = None
    if args.board_images:
        run_dir = Path(tempfile.mkdtemp(prefix="prequant-board-"))
        from isquant_tvm.tools import board as board_mod

        board = board_mod.start(args.board_root, cpu="cortex-a72", run_dir=run_dir, tracker_port=9290,
                                server_port=9390, quiet=True)
    rows: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="prequant-sweep-") as tmp:
            for name in args.models:
                for fmt in args.formats:
                    for weights in args.weights:
                        key = f"{name}:{fmt}:{weights}"
                        if key in args.skip:
                            continue
                        on_board = board if args.board_only is None or key in args.board_only else None
                        row = one(name, fmt, weights, args.activation, args, Path(tmp), on_board)
                        rows.append(row)
                        print(json.dumps(row), flush=True)
                        if args.json:
                            from isquant_tvm.util.fileio import atomic_write_json

                            atomic_write_json(args.json, {"rows": rows, "loadavg": list(os.getloadavg())})
    finally:
        if board is not None:
            board_mod.stop(args.board_root, run_dir=run_dir, quiet=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
