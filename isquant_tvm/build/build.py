"""Lower a Relax module to an executable for a target."""
from __future__ import annotations

import logging
import time
from typing import Any

import tvm

from ..util import tvm_compat

log = logging.getLogger(__name__)


def build(mod: tvm.IRModule, target: tvm.target.Target) -> Any:
    """tvm.compile with the default Relax pipeline (LegalizeOps + VM codegen).

    Integer ops arrive here already legalized by our own pass (legalize/), so the default
    pipeline only has the float remainder and glue to lower."""
    start = time.perf_counter()
    executable = tvm_compat.build(mod, target)
    log.info("built for %s in %.1f s", target.attrs.get("mcpu", target.kind.name), time.perf_counter() - start)
    return executable
