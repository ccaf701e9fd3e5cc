"""Wall time of the activation-range step (pipeline timings `ranges_s`, inversion included) per model and
range mode, median of interleaved rounds, written as JSON.

    python scripts/bench_ranges.py --json ranges_bench.json            # default cases below
    python scripts/bench_ranges.py --case builtin:resnet18:synthetic --rounds 1

A case is MODEL[:MODE]; MODE is an --activation-ranges value (auto by default). `builtin:resnet18:synthetic`
is the 224x224 ResNet-18 without BatchNorm statistics (what a BN-folded export of it gets), the budget's
case (<= 60 s on 2 cores); the CIFAR ResNet-56 ONNX (BN folded) has a 30 s budget. Other sessions may load
the machine: the JSON records the load average and the CPU seconds of the step (all threads; on an idle
2-core machine the wall time is at most that) beside the wall times."""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

DATA = Path(os.environ.get("ISQUANT_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
DEFAULT_CASES = ["builtin:resnet18:synthetic", "builtin:resnet18:auto", f"{DATA}/cifar10/resnet56.onnx:auto",
                 f"{DATA}/cifar10/resnet20.onnx:auto"]
BUDGET_S = {"builtin:resnet18:synthetic": 60.0, f"{DATA}/cifar10/resnet56.onnx:auto": 30.0}


def _split(case: str) -> tuple[str, str]:
    head, _, mode = case.rpartition(":")
    if mode in ("auto", "synthetic", "bn") and head:
        return head, mode
    return case, "auto"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", action="append", metavar="MODEL[:MODE]", help="a model and range mode (repeatable)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--json", metavar="PATH", help="write the results here")
    args = parser.parse_args(argv)

    from isquant_tvm import api
    from isquant_tvm.pipeline import quantize_model
    from isquant_tvm.util.fileio import atomic_write_json

    cases = args.case or [c for c in DEFAULT_CASES if c.startswith("builtin:") or Path(_split(c)[0]).exists()]
    loaded = {}
    for case in cases:
        path, _ = _split(case)
        if path not in loaded:
            model = api.load(path)
            loaded[path] = (model, api.prepare(model))
    times: dict[str, list[float]] = {c: [] for c in cases}
    cpu: dict[str, list[float]] = {c: [] for c in cases}
    summaries: dict[str, dict] = {}
    for _ in range(args.rounds):
        for case in cases:
            path, mode = _split(case)
            model, fmod = loaded[path]
            q = quantize_model(model, fmod, activation_ranges=mode, progress=False, only_reference=True)
            times[case].append(q.report["timings"]["ranges_s"])
            cpu[case].append(q.report["timings"]["ranges_cpu_s"])
            summaries[case] = {**q.report["summary"], **{k: v for k, v in q.report["timings"].items()
                                                        if k in ("inversion_s", "matched_forward_s")}}
    rows = []
    for case in cases:
        med = statistics.median(times[case])
        budget = BUDGET_S.get(case)
        rows.append({"case": case, "ranges_s_median": med, "ranges_s": times[case],
                     "ranges_cpu_s_median": statistics.median(cpu[case]), "budget_s": budget,
                     "within_budget": None if budget is None else med <= budget, "summary": summaries[case]})
        print(f"{case:60} ranges {med:7.1f} s wall, {statistics.median(cpu[case]):7.1f} s CPU (all threads)"
              + (f" (budget {budget:.0f} s)" if budget else ""))
    result = {"rounds": args.rounds, "cpus": os.cpu_count(), "loadavg": os.getloadavg(), "time": time.time(),
              "cases": rows}
    if args.json:
        atomic_write_json(Path(args.json), result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
