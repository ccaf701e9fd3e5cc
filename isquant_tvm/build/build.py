"""Lower a Relax module to an executable for a target."""
from __future__ import annotations

import logging
import time
from typing import Any

import tvm

from ..util import tvm_compat

log = logging.getLogger(__name__)


def build(mod: tvm.IRModule, target: tvm.target.Target, schedule_float: bool = True) -> Any:
    """tvm.compile with TVM's CPU Relax pipeline (LegalizeOps + fusion + VM codegen).

    Integer ops arrive here already legalized by our own pass (legalize/), so the pipeline only has the
    float remainder and glue to lower; with ``schedule_float`` (the default) that remainder gets the
    scheduled float kernels of kernels/float_ops.py instead of TVM's unscheduled loops."""
    start = time.perf_counter()
    if schedule_float and target.kind.name == "llvm":
        from ..kernels import float_ops

        pipeline = tvm_compat.cpu_pipeline(target, float_ops.legalize_map(target),
                                           [float_ops.schedule_generic(target)])
        executable = tvm_compat.build(mod, target, relax_pipeline=pipeline)
    else:
        executable = tvm_compat.build(mod, target)
    log.info("built for %s in %.1f s", target.attrs.get("mcpu", target.kind.name), time.perf_counter() - start)
    return executable
