"""Compile every modern built-in (frontend/zoo_modern.py) for each target and check TVM against the numpy
reference; JSON out.  The model x target sweep the tests leave out (tests/frontend/test_zoo_modern.py builds
one model once).

For each (model, target, quantize mode):
  - ``none``: the float build (scheduled kernels, kernels/float_ops.py) must match the builder's independent
    numpy forward pass to 1e-4 (relative to the output's magnitude); run on this host for x86 targets the
    host can execute, compile-only for the ARM boards (rasp4b, rasp5: cross-compiled, no board run here;
    `scripts/board.py` runs them on the emulated board).
  - ``isquant``: the int8 build must equal the numpy reference interpreter bit for bit (reference/), on x86;
    compile-only for ARM.  Until every op of a model has a numpy/integer rule (issue 15, cov-ranges /
    cov-rules) this may report the compile error, recorded as is.

    .venv/bin/python scripts/check_models.py --json check.json                      # everything
    .venv/bin/python scripts/check_models.py --models mtcnn_pnet --targets x86 --modes none
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

TARGETS = ("x86", "x86-avx512", "rasp4b", "rasp5")
MODES = ("none", "isquant")


def _runs_here(target: str) -> bool:
    """x86 builds run on an x86 host (x86-avx512 only where the CPU has AVX-512 VNNI); ARM builds do not."""
    import platform

    if not target.startswith("x86") or platform.machine() not in ("x86_64", "AMD64"):
        return False
    if target == "x86-avx512":
        flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
        return "avx512_vnni" in flags or "avx512vnni" in flags
    return True


def check(model: str, target: str, mode: str, tmp: Path) -> dict[str, Any]:
    import isquant_tvm as iq
    from isquant_tvm.frontend import zoo

    built = zoo._build_cached(model, 1, 0)
    row: dict[str, Any] = {"model": model, "target": target, "quantize": mode}
    t0 = time.perf_counter()
    try:
        res = iq.compile(f"builtin:{model}", target=target, quantize="none" if mode == "none" else "isquant",
                         progress=False, output=tmp / f"{model}.{target}.{mode}.so")
    except Exception as err:  # noqa: BLE001 - recorded per row, the sweep goes on
        row.update(ok=False, error=f"{type(err).__name__}: {err}".splitlines()[0][:500],
                   compile_s=round(time.perf_counter() - t0, 1))
        return row
    row["compile_s"] = round(time.perf_counter() - t0, 1)
    if not _runs_here(target):
        row.update(ok=True, ran=False, note="compiled only (not executable on this host)")
        return row
    feed = {"input": built.probe_input}
    outs = res.runner().run(feed)
    row["ran"] = True
    if mode == "none":
        errs = {}
        for y, (name, ref) in zip(outs, built.probe_outputs.items()):
            errs[name] = float(np.abs(np.asarray(y) - ref).max() / max(1.0, float(np.abs(ref).max())))
        row.update(ok=all(e <= 1e-4 for e in errs.values()), rel_err=errs)
    else:
        from isquant_tvm.reference import interpreter

        # the qnn-level graph evaluated from the ops' definitions (as tests/kernels/test_models.py does)
        refs = interpreter.run(res.quantized.qnn_mod, [built.probe_input])
        same = [bool(np.array_equal(np.asarray(a), np.asarray(b))) for a, b in zip(outs, refs)]
        rel = [float(np.abs(np.asarray(a, np.float64) - b).max() / max(1.0, float(np.abs(b).max())))
               for a, b in zip(outs, refs)]
        fallbacks = res.report.get("fallbacks") if isinstance(res.report, dict) else None
        # An output computed by float head ops (softmax, box decode) after the integer graph differs from
        # numpy's float by rounding only; one LSB of a dequantized accumulator feeding it is ~1e-3 relative,
        # so 1e-5 still catches any integer mismatch upstream.
        ok = [s_ or (bool(fallbacks) and r <= 1e-5) for s_, r in zip(same, rel)]
        row.update(ok=all(ok), bit_exact=same, rel_err=rel, fallbacks=fallbacks)
    return row


def main(argv: list[str] | None = None) -> int:
    from isquant_tvm.frontend import zoo_modern

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(zoo_modern.MODERN_MODELS), metavar="NAME",
                   help=f"modern built-ins to check (default: all: {' '.join(zoo_modern.MODERN_MODELS)})")
    p.add_argument("--targets", nargs="+", default=list(TARGETS), metavar="TARGET",
                   help=f"target presets (default: {' '.join(TARGETS)})")
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES,
                   help="quantize modes: none (float build vs numpy) and isquant (int8 vs the reference)")
    p.add_argument("--json", type=Path, metavar="PATH", help="write the rows to PATH (atomically)")
    args = p.parse_args(argv)
    import tempfile

    from isquant_tvm.util.fileio import atomic_write_json

    rows = []
    with tempfile.TemporaryDirectory(prefix="isq-check-") as tmp:
        for model in args.models:
            for target in args.targets:
                for mode in args.modes:
                    try:
                        row = check(model, target, mode, Path(tmp))
                    except Exception as err:  # noqa: BLE001
                        row = {"model": model, "target": target, "quantize": mode, "ok": False,
                               "error": "".join(traceback.format_exception_only(type(err), err)).strip()[:500]}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    if args.json:
        atomic_write_json(args.json, rows)
    return 0 if all(r.get("ok") is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
