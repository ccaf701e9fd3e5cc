#!/usr/bin/env python3
"""Record or compare what the built-in models compile to: "behaviour unchanged" for refactors.

For every (model, target) pair the script compiles the built-in model int8 (`isquant_tvm.compile`, the
public API, so it survives internal moves), exports the .so + .so.json, and records:

  so_sha256 / json_sha256   the exported files (byte-deterministic per build, issue 19)
  outputs_sha256            x86 targets only: the outputs of the .so on fixed seeded inputs (run through
                            `isquant_tvm.run`); cross-compiled targets are recorded by file hashes only
  report                    the compile report (op/lowering counts, ...)

    .venv/bin/python scripts/check_identical.py --record baseline.json
    .venv/bin/python scripts/check_identical.py --compare baseline.json [--json after.json]

--compare exits 1 when an output or a file hash differs; report differences are printed but are not a
failure by themselves (a refactor may rename report keys, e.g. to name the kernel that ran).

A .so can differ with identical code: TVM writes the source line numbers of TVMScript-parsed functions
(the VNNI / AVX2 / sdot / NEON intrinsics in kernels/x86_vnni.py and kernels/arm_dot.py) into the
library's debug line table, so adding a line above them changes .debug_line (and the build-id note)
and nothing else. `readelf --debug-dump=decodedline` on both libraries shows it (measured in issue 14:
lines 48/50 -> 49/51 of x86_vnni.py were the only difference)."""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MODELS = ("resnet18", "squeezenet1_1", "mobilenet_v2", "resnet20-cifar")
TARGETS = ("x86", "x86-avx512", "rasp4b")
RUNNABLE = ("x86", "x86-avx512")
INPUT_SEED = 20261202


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _inputs(meta: dict[str, Any]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(INPUT_SEED)
    return {i["name"]: rng.standard_normal(i["shape"]).astype(i["dtype"]) for i in meta["inputs"]}


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def record(models: list[str], targets: list[str], workdir: Path) -> dict[str, Any]:
    import isquant_tvm as iq

    results: dict[str, Any] = {}
    for model in models:
        imported = iq.load(f"builtin:{model}")
        for target in targets:
            key = f"{model}@{target}"
            out = workdir / f"{model}-{target}.so"
            res = iq.compile(imported, target=target, output=out, progress=False)
            entry: dict[str, Any] = {
                "so_sha256": _sha(out.read_bytes()),
                "json_sha256": _sha(Path(str(out) + ".json").read_bytes()),
                "report": _jsonable(res.report),
            }
            if target in RUNNABLE:
                feed = _inputs(res.metadata)
                outputs, _ = iq.run(out, feed)
                entry["outputs_sha256"] = [_sha(np.ascontiguousarray(o).tobytes()) for o in outputs]
                entry["outputs_dtype_shape"] = [[str(o.dtype), list(o.shape)] for o in outputs]
            results[key] = entry
            print(f"{key}: so {entry['so_sha256'][:12]} outputs {entry.get('outputs_sha256', ['-'])[0][:12]}",
                  flush=True)
    return results


def compare(before: dict[str, Any], after: dict[str, Any]) -> bool:
    same = True
    for key in sorted(set(before) | set(after)):
        if key not in before or key not in after:
            print(f"{key}: only in {'after' if key in after else 'before'}")
            same = False
            continue
        b, a = before[key], after[key]
        for field in ("outputs_sha256", "so_sha256", "json_sha256"):
            if b.get(field) != a.get(field):
                print(f"{key}: {field} DIFFERS")
                same = False
        if b["report"] != a["report"]:
            bk, ak = b["report"], a["report"]
            for k in sorted(set(bk) | set(ak)):
                if bk.get(k) != ak.get(k):
                    print(f"{key}: report[{k!r}]: {bk.get(k)!r} -> {ak.get(k)!r}")
        if same:
            print(f"{key}: identical")
    return same


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--record", metavar="JSON", help="compile everything and write the hashes to JSON")
    mode.add_argument("--compare", metavar="JSON", help="compile everything and compare with a recorded JSON")
    parser.add_argument("--json", metavar="JSON", help="with --compare: also write this run's hashes here")
    parser.add_argument("--models", nargs="+", default=list(MODELS), help="built-in models (default: all four)")
    parser.add_argument("--targets", nargs="+", default=list(TARGETS), help="target presets")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="check-identical-") as tmp:
        results = record(args.models, args.targets, Path(tmp))
    if args.record:
        Path(args.record).write_text(json.dumps(results, indent=1) + "\n")
        return 0
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    before = json.loads(Path(args.compare).read_text())
    before = {k: v for k, v in before.items() if k in results}
    return 0 if compare(before, results) else 1


if __name__ == "__main__":
    sys.exit(main())
