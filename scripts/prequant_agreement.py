"""Compile an onnxruntime-quantized model with `--quantize auto` for x86 and compare it with onnxruntime
running the same quantized model on real images: top-1 agreement and the LSB distance of the output.

    python scripts/prequant_agreement.py ../shared/data/cifar10/resnet20.onnx --format qdq --per-channel \
        --activation uint8 --data cifar --limit 300

The model is quantized here with onnxruntime's quantize_static, calibrated on images from the END of the test
set (--calibration-count, default 64), evaluated on the first --limit images (disjoint)."""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

DATA = Path(os.environ.get("ISQUANT_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def images(kind: str, sl: slice) -> np.ndarray:
    if kind == "cifar":
        x = np.load(DATA / "cifar10" / "test_jpeg_decoded.npz")["images"][sl].astype(np.float32) / 255
    else:
        from PIL import Image

        root = DATA / "imagenet-val-1300" / "images"
        files = sorted(os.listdir(root))[sl]
        x = np.stack([np.asarray(Image.open(root / f).convert("RGB"), np.float32)[1:225, 1:225] / 255 for f in files])
    return ((x - MEAN) / STD).transpose(0, 3, 1, 2).astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="float ONNX model or builtin:NAME")
    p.add_argument("--format", choices=["qdq", "qoperator"], default="qdq")
    p.add_argument("--per-channel", action="store_true")
    p.add_argument("--activation", choices=["uint8", "int8"], default="uint8")
    p.add_argument("--data", choices=["cifar", "imagenet"], default="cifar")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--calibration-count", type=int, default=64)
    p.add_argument("--pre-process", action="store_true",
                   help="onnxruntime's quant_pre_process first (folds BatchNorm into the convs, as its docs advise)")
    args = p.parse_args(argv)
    import onnx
    import onnxruntime as ort
    from onnxruntime import quantization as q

    import isquant_tvm as iq

    tmp = Path(tempfile.mkdtemp())
    src = args.model
    if src.startswith("builtin:"):
        from isquant_tvm.frontend import zoo

        onnx.save(zoo.builtin_onnx(src.split(":", 1)[1], batch=1), tmp / "float.onnx")
        src = str(tmp / "float.onnx")
    if args.pre_process:
        from onnxruntime.quantization.shape_inference import quant_pre_process

        quant_pre_process(src, str(tmp / "pre.onnx"))
        src = str(tmp / "pre.onnx")
    name = onnx.load(src).graph.input[0].name
    calib = images(args.data, slice(-args.calibration_count, None))

    class Reader(q.CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{name: calib[i:i + 1]} for i in range(len(calib))])

        def get_next(self):
            return next(self.it, None)

    dst = tmp / "model.quant.onnx"
    q.quantize_static(src, str(dst), Reader(), per_channel=args.per_channel, weight_type=q.QuantType.QInt8,
                      quant_format=q.QuantFormat.QDQ if args.format == "qdq" else q.QuantFormat.QOperator,
                      activation_type=q.QuantType.QUInt8 if args.activation == "uint8" else q.QuantType.QInt8)
    res = iq.compile(str(dst), target="x86", progress=False)
    print(res.report["summary"], "fallbacks:", res.report["fallbacks"])
    scale = res.quantized.report["tensors"][-1]["scale"]
    sess = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"])
    runner = res.runner()
    x = images(args.data, slice(0, args.limit))
    agree = within = total = 0
    worst = 0.0
    for i in range(len(x)):
        theirs = sess.run(None, {name: x[i:i + 1]})[0]
        ours = runner.run({name: x[i:i + 1]})[0]
        lsb = np.abs(np.rint((ours - theirs) / scale))
        worst = max(worst, float(lsb.max()))
        within += int((lsb <= 1).sum())
        total += lsb.size
        agree += int(ours.argmax() == theirs.argmax())
    print(f"{args.model} {args.format} {'per-channel' if args.per_channel else 'per-tensor'} {args.activation}:"
          f" top-1 agreement {agree}/{len(x)}, within 1 LSB {within}/{total}, max {worst:.0f} LSB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
