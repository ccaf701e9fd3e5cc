"""Our requantize rounding vs onnxruntime's, one requantize in isolation, on the real multipliers of an
onnxruntime-quantized model (its QLinearConv nodes: M = float32(x_scale · w_scale) / y_scale in float32).

    python scripts/prequant_rounding.py ../shared/data/cifar10/resnet20.onnx --json out/rounding.json

ours (quantize/prequant.py, reference/fixed_point.py): M as m·2^-n with a 31-bit m (exact: a float32 M has
a 24-bit mantissa), y = (acc·m + 2^(n-1) + z·2^n) >> n in int64, i.e. floor(acc·M + 1/2) + z exactly.
onnxruntime (MLAS MlasRequantizeOutput): y = nearbyint(float32(float32(acc) · M)) + z, round half to even.
Every accumulator whose output lands in [-300, 300] LSB is tried for each multiplier (up to --max-per-layer,
evenly strided beyond that), so the counts are exact for the ranges covered.

Bound: |ours - acc·M| <= 1/2, |ort - acc·M| <= 1/2 + 2^-24·|acc·M| + float32(acc)'s error (|acc| >= 2^24
only), so the two differ by at most 1 LSB per requantize; they differ only at exact ties (half up vs half
even) and where acc·M lies within ~2^-24·|acc·M| (<= 2^-16 LSB for 8-bit outputs) of a half."""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def ours(acc: np.ndarray, mult: float, z: int = 0) -> np.ndarray:
    from isquant_tvm.reference import fixed_point

    m, n = fixed_point.quantize_multiplier(mult)
    return fixed_point.requantize(acc, m, n, -(2**40), 2**40, zero_point=z)


def ort(acc: np.ndarray, mult: float, z: int = 0) -> np.ndarray:
    prod = acc.astype(np.float32) * np.float32(mult)  # float32 multiply, rounded to float32
    return np.rint(prod).astype(np.int64) + z  # np.rint: round half to even, like nearbyint / cvtps2dq


def multipliers(model: Path, per_channel: bool) -> list[tuple[str, np.ndarray]]:
    import onnx
    from onnx import numpy_helper
    from onnxruntime import quantization as q

    tmp = Path(tempfile.mkdtemp())
    proto = onnx.load(str(model))
    inp = proto.graph.input[0]
    shape = [d.dim_value or 1 for d in inp.type.tensor_type.shape.dim]
    rng = np.random.default_rng(0)
    calib = [rng.standard_normal(shape).astype(np.float32) for _ in range(8)]

    class Reader(q.CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{inp.name: c} for c in calib])

        def get_next(self):
            return next(self.it, None)

    dst = tmp / "m.onnx"
    q.quantize_static(str(model), str(dst), Reader(), quant_format=q.QuantFormat.QOperator, per_channel=per_channel,
                      weight_type=q.QuantType.QInt8, activation_type=q.QuantType.QUInt8)
    qp = onnx.load(str(dst))
    init = {i.name: numpy_helper.to_array(i) for i in qp.graph.initializer}
    out = []
    for node in qp.graph.node:
        if node.op_type == "QLinearConv":
            xs, ws, ys = (np.float32(init[node.input[i]]) for i in (1, 4, 6))
            out.append((node.name, ((xs * ws).astype(np.float32) / ys).astype(np.float32).reshape(-1)))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path, help="a float ONNX model to quantize with onnxruntime")
    p.add_argument("--per-channel", action="store_true")
    p.add_argument("--max-per-layer", type=int, default=4_000_000, help="accumulators tried per multiplier")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    tried = differ = ties = 0
    worst = 0
    for _, mults in multipliers(args.model, args.per_channel):
        for mult in mults[:8]:  # a few channels per layer: the counts scale, the bound does not
            span = int(300 / float(mult))
            acc = np.arange(-span, span + 1, max(1, (2 * span + 1) // args.max_per_layer), dtype=np.int64)
            a, b = ours(acc, float(mult)), ort(acc, float(mult))
            d = np.abs(a - b)
            tried += acc.size
            differ += int((d > 0).sum())
            worst = max(worst, int(d.max()))
            exact = acc.astype(np.float64) * np.float64(mult)  # exact: 24-bit M times |acc| < 2^29
            ties += int(((exact - np.floor(exact)) == 0.5).sum())
    row = {"model": str(args.model), "per_channel": args.per_channel, "accumulators": tried, "differ": differ,
           "rate": differ / max(tried, 1), "exact_ties": ties, "max_lsb": worst}
    print(json.dumps(row))
    if args.json:
        from isquant_tvm.util.fileio import atomic_write_json

        atomic_write_json(args.json, row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
