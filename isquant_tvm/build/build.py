"""Lower a Relax module to an executable for a target."""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import tvm

from ..util import tvm_compat

log = logging.getLogger(__name__)


def apply_tuning_records(mod: tvm.IRModule, target: tvm.target.Target,
                         records: str | Path | None) -> tuple[tvm.IRModule, list[str]]:
    """Swap in the tuned schedule of every kernel whose task `records` (a `tune -o` folder) kept, i.e. whose
    tuned schedule measured faster than our hand schedule; returns the module and the replaced functions."""
    if records is None:
        return mod, []
    from ..tuning.tune import apply_records

    return apply_records(mod, target, records)


def build(mod: tvm.IRModule, target: tvm.target.Target) -> Any:
    """tvm.compile with the default Relax pipeline (LegalizeOps + VM codegen).

    Integer ops arrive here already legalized by our own pass (passes/legalize.py), so the default
    pipeline only has the float remainder and glue to lower."""
    start = time.perf_counter()
    executable = tvm_compat.build(mod, target)
    log.info("built for %s in %.1f s", target.attrs.get("mcpu", target.kind.name), time.perf_counter() - start)
    return executable
