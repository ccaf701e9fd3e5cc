#!/usr/bin/env python3
"""Time cross-layer equalization (issue 20's budget: <= 1 s for a MobileNetV2) and write JSON.

Per model: the numpy equalizer alone (rounding/equalize.py: sweeps, auto's measure, absorption, the
report) and the whole stage (links found on the Relax graph, BatchNorm statistics, constants written
back), median of --repeat interleaved rounds, for --mode auto and on. Say how loaded the machine was.

    .venv/bin/python scripts/bench_equalize.py --json out/bench_equalize.json
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["builtin:mobilenet_v2"])
    p.add_argument("--modes", nargs="+", choices=["auto", "on"], default=["auto", "on"])
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)

    import isquant_tvm as iq
    from isquant_tvm.fold import chains
    from isquant_tvm.fold.layers import find_layers
    from isquant_tvm.quantize import equalize_stage as stage_mod
    from isquant_tvm.rounding import equalize as eqz
    from isquant_tvm.util.fileio import atomic_write_json

    rows = []
    for name in args.models:
        model = iq.load(name)
        folded = iq.api.prepare(model)
        layers = find_layers(folded["main"], model.layer_names)
        # the numpy inputs, built once as the stage builds them
        stage = stage_mod.equalize_stage(model, folded, layers, "on")
        links_g = chains.find_links(folded["main"], layers)
        index = {layer.id: i for i, layer in enumerate(layers)}
        params = [eqz.LayerParams(layer.weight, p.bias, layer.groups, p.bn, layer.name)
                  for layer, p in zip(layers, stage.params)]
        links = [eqz.Link(index[g.a], index[g.b], g.act, g.hi, g.b_padded) for g in links_g]
        times: dict[str, list[float]] = {f"{kind}_{m}": [] for m in args.modes for kind in ("numpy", "stage")}
        for _ in range(args.repeat):
            for mode in args.modes:  # interleaved
                t0 = time.perf_counter()
                eqz.equalize(params, links, mode=mode)
                times[f"numpy_{mode}"].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                stage_mod.equalize_stage(model, folded, layers, mode)
                times[f"stage_{mode}"].append(time.perf_counter() - t0)
        row = {"model": name, "layers": len(layers), "links": len(links),
               "weights": int(sum(layer.weight.size for layer in layers)),
               **{f"{k}_median_s": round(statistics.median(v), 4) for k, v in times.items()},
               **{f"{k}_min_s": round(min(v), 4) for k, v in times.items()}}
        rows.append(row)
        print(row, flush=True)
    doc = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cores": os.cpu_count(),
           "load_average": os.getloadavg(), "repeat": args.repeat, "rows": rows}
    if args.json:
        atomic_write_json(args.json, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
