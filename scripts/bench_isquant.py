#!/usr/bin/env python3
"""Time SQuant vs RTN weight rounding over ResNet-18's conv and dense weights (numpy only).

The weights are seeded random normals with torchvision resnet18's shapes (no download):
20 convs (7×7 stem, 3×3 stages, 1×1 downsamples) and the 1000×512 fc, ≈11.7 M weights.
Each repeat quantises every layer with quantize_weight(w, 8, "per-tensor", method), i.e. the
scale, the division onto the grid and the rounding, exactly what a deployment run pays.

    .venv/bin/python scripts/bench_isquant.py --repeat 7 --json out/bench_isquant.json
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

# torchvision resnet18 weight shapes (OC, IC, KH, KW) / (OC, IC), in module order.
RESNET18_SHAPES: list[tuple[str, tuple[int, ...]]] = [("conv1", (64, 3, 7, 7))]
for _stage, (_c, _cin) in enumerate([(64, 64), (128, 64), (256, 128), (512, 256)], start=1):
    for _blk in range(2):
        _in = _cin if _blk == 0 else _c
        RESNET18_SHAPES.append((f"layer{_stage}.{_blk}.conv1", (_c, _in, 3, 3)))
        RESNET18_SHAPES.append((f"layer{_stage}.{_blk}.conv2", (_c, _c, 3, 3)))
        if _blk == 0 and _stage > 1:
            RESNET18_SHAPES.append((f"layer{_stage}.{_blk}.downsample.0", (_c, _cin, 1, 1)))
RESNET18_SHAPES.append(("fc", (1000, 512)))


def _load_isquant():
    # isquant.py is numpy-only; loading it by path keeps the benchmark independent of the
    # package __init__, which imports TVM.
    name = "_isquant_bench_mod"
    spec = importlib.util.spec_from_file_location(name, ROOT / "isquant_tvm" / "isquant.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses resolve their module through sys.modules
    spec.loader.exec_module(mod)
    return mod


def make_weights(seed: int) -> list[np.ndarray]:
    """He-normal float32 weights (std sqrt(2 / fan_in)) for every ResNet-18 layer."""
    rng = np.random.default_rng(seed)
    out = []
    for _, shape in RESNET18_SHAPES:
        fan_in = int(np.prod(shape[1:]))
        out.append((rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32))
    return out


def time_method(iq, weights: list[np.ndarray], method: str,
                repeat: int) -> tuple[list[float], list[float]]:
    """Wall and process-CPU seconds per full pass over all layers, after an untimed warm-up.

    CPU time (summed over threads) is reported too because the machine is shared: when other
    jobs compete for the cores, wall time grows while CPU time mostly does not.
    """
    for w in weights:
        iq.quantize_weight(w, 8, "per-tensor", method)
    wall, cpu = [], []
    for _ in range(repeat):
        c0, t0 = time.process_time(), time.perf_counter()
        for w in weights:
            iq.quantize_weight(w, 8, "per-tensor", method)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return wall, cpu


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="Benchmark SQuant vs RTN int8 per-tensor weight quantisation on ResNet-18's "
        "conv+dense weight shapes (seeded random weights, numpy only).",
    )
    ap.add_argument("--repeat", type=int, default=7, metavar="N",
                    help="timed repeats per method after one warm-up (>= 5; default 7)")
    ap.add_argument("--method", default="squant",
                    help="SQuant variant to time against RTN (default: squant)")
    ap.add_argument("--seed", type=int, default=0, help="weight RNG seed (default 0)")
    ap.add_argument("--threads", type=int, metavar="N",
                    help="worker threads (sets ISQUANT_THREADS; default: its value, else 1)")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    args = ap.parse_args(argv)
    if args.repeat < 5:
        ap.error("--repeat must be at least 5")
    if args.threads is not None:
        if args.threads < 1:
            ap.error("--threads must be at least 1")
        os.environ["ISQUANT_THREADS"] = str(args.threads)

    iq = _load_isquant()
    if args.method not in iq.METHODS:
        ap.error(f"--method must be one of {iq.METHODS}")
    weights = make_weights(args.seed)
    n = sum(w.size for w in weights)
    load_before = os.getloadavg()[0]
    sq, sq_cpu = time_method(iq, weights, args.method, args.repeat)
    rtn, rtn_cpu = time_method(iq, weights, "rtn", args.repeat)
    sq_med, rtn_med = statistics.median(sq), statistics.median(rtn)
    res = {
        "model": "resnet18",
        "weights": int(n),
        "layers": len(weights),
        "method": args.method,
        "repeats": args.repeat,
        "squant_s_median": sq_med,
        "rtn_s_median": rtn_med,
        "ratio": sq_med / rtn_med,
        "squant_s_all": sq,
        "rtn_s_all": rtn,
        "squant_cpu_s_median": statistics.median(sq_cpu),
        "rtn_cpu_s_median": statistics.median(rtn_cpu),
        "ns_per_weight": sq_med / n * 1e9,
        "threads": iq._threads(),
        "cpus": os.cpu_count(),
        "loadavg_1min": [load_before, os.getloadavg()[0]],
    }
    if args.json:  # written first, so that a closed stdout cannot lose the numbers
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(res, indent=2) + "\n")
    print(f"resnet18: {len(weights)} layers, {n:,} weights, {args.repeat} repeats, "
          f"{res['threads']} threads, load average {load_before:.2f} -> {os.getloadavg()[0]:.2f}")
    print(f"  {args.method:9s} median {sq_med * 1e3:8.1f} ms  (min {min(sq) * 1e3:.1f}, "
          f"cpu {res['squant_cpu_s_median'] * 1e3:.1f} ms, {res['ns_per_weight']:.1f} ns/weight)")
    print(f"  {'rtn':9s} median {rtn_med * 1e3:8.1f} ms  (min {min(rtn) * 1e3:.1f}, "
          f"cpu {res['rtn_cpu_s_median'] * 1e3:.1f} ms)")
    print(f"  ratio {args.method}/rtn = {res['ratio']:.2f}")
    if args.json:
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
