"""The fuzz and fault suite of issue 19: a generated corpus through the real CLI, one JSON summary.

    python scripts/fuzz.py --json out/fuzz.json [--work DIR] [--only GROUP,...] [--limit N]

Corpus (tests/fuzz/corpus.py): >= 200 malformed models (truncations, byte flips, broken graphs, bad dims and
attributes, bad opsets, unknown ops, ops that may only compile through a float fallback, NaN/Inf weights,
unsupported input dtypes, seeded random attribute soup), >= 50 bad flags / paths / targets / inputs /
libraries, loopback RPC faults, and SIGINT/SIGTERM at several points of compile and bench.
The JSON holds {"summary": {"cases", "clear", "accepted", "unclear", "crashes", "hangs", "left_output",
"tracebacks"}, "cases": [...]}; see tests/fuzz/runner.py for the verdicts. Exit 1 if any case is a crash,
hang, traceback, left output or unclear.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", metavar="PATH", help="write the summary and every case here")
    parser.add_argument("--work", metavar="DIR", help="work folder (default: a fresh temporary folder)")
    parser.add_argument("--only", metavar="GROUPS", help="comma-separated case groups to run")
    parser.add_argument("--limit", type=int, metavar="N", help="run only the first N cases (after --only)")
    parser.add_argument("--no-rpc", action="store_true", help="skip the loopback RPC faults")
    args = parser.parse_args()

    os.environ.pop("ISQUANT_NO_SUPERVISOR", None)
    import isquant_tvm.api  # noqa: F401 - warm the parent: forked cases start with TVM and onnx imported
    from tests.fuzz import corpus, rpc_faults
    from tests.fuzz.runner import run_case, summarize

    work = Path(args.work or tempfile.mkdtemp(prefix="isquant-fuzz-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    corpus.prepare_library(work)
    cases = corpus.model_cases(work) + corpus.argument_cases() + corpus.interrupt_cases()
    servers = None
    if not args.no_rpc:
        servers = rpc_faults.start(work)
        cases += rpc_faults.cases(servers)
    if args.only:
        groups = set(args.only.split(","))
        cases = [c for c in cases if c.group in groups]
    if args.limit:
        cases = cases[: args.limit]
    results = []
    started = time.monotonic()
    try:
        for i, case in enumerate(cases):
            result = run_case(case, work, work / "logs")
            results.append(result)
            mark = "" if result["verdict"] in ("clear", "accepted") else "   <-- " + result["stderr"][:160].replace("\n", " | ")
            print(f"[{i + 1}/{len(cases)}] {result['verdict']:<11} {result['exit']!s:>4} {result['seconds']:6.1f}s "
                  f"{case.group}/{case.name}{mark}", flush=True)
    finally:
        if servers is not None:
            rpc_faults.stop(servers)
    summary = summarize(results)
    summary["seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(summary))
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_text(json.dumps({"summary": summary, "work": str(work), "cases": results}, indent=1) + "\n")
        os.replace(tmp, out)
    bad = summary["crashes"] + summary["hangs"] + summary["tracebacks"] + summary["left_output"] + summary["unclear"]
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
