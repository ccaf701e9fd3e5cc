#!/usr/bin/env python3
"""Full-set accuracy of data-free range settings through the TVM build, the same measurement as
`python -m isquant_tvm eval MODEL --data NPZ` (tools/evaluate.py), for several settings in one process
(issue 16). The 1,000-image numpy proxy (scripts/ranges_sweep.py) has a 0.8 pt seed spread and read
0.5 pt above the full set, too coarse for a 98.2 % bar; this one costs about 1-2 min per setting on an
idle 2-core machine. A setting is comma-separated k=v: runs/steps/images (datafree.InvertedImages),
rule (a datafree range rule, e.g. synthetic-tail@1e4) and seed. It swaps `datafree.INVERTED` and wraps
`datafree.plan` to pass the seed: a research sweep, not a test.

    python scripts/ranges_full.py MODEL.onnx --data test.npz --setting runs=1 --setting runs=3,steps=10
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--data", required=True)
    p.add_argument("--limit", type=int)
    p.add_argument("--setting", action="append", default=[])
    p.add_argument("--json", help="append one JSON line per setting")
    a = p.parse_args(argv)

    from isquant_tvm import api
    from isquant_tvm.ranges import datafree
    from isquant_tvm.ranges.datasets import load_labelled
    from isquant_tvm.tools.evaluate import evaluate

    model = api.load(a.model)
    data = load_labelled(a.data, model.inputs[0].shape)
    orig_plan = datafree.plan
    for text in a.setting or ["runs=1"]:
        kv = dict(item.split("=", 1) for item in text.split(",") if item)
        seed = int(kv.pop("seed", 0))
        rule = kv.pop("rule", "auto")
        datafree.INVERTED = datafree.InvertedImages(**{k: int(v) for k, v in kv.items()})

        def plan(*args, _seed=seed, _rule=rule, **kw):  # type: ignore[no-untyped-def]
            kw["seed"] = _seed
            args = list(args)
            if _rule != "auto":  # pipeline.quantize_model passes range_rule as the 6th positional argument
                args[5] = _rule
            return orig_plan(*args, **kw)

        datafree.plan = plan
        t0 = time.perf_counter()
        r = evaluate(model, data, limit=a.limit, progress=False, sqnr_samples=0)
        datafree.plan = orig_plan
        row = {"model": Path(a.model).name, "setting": text, "images": r["images"],
               "agreement": r["top1_agreement"], "drop": r["top1_drop"], "fp32": r["fp32_top1"],
               "int8": r["int8_top1"], "method": r["quantization"].get("activation_ranges"),
               "s": time.perf_counter() - t0, "load": os.getloadavg()}
        print(json.dumps(row), flush=True)
        if a.json:
            with open(a.json, "a") as f:
                f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
