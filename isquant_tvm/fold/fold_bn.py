"""Fold inference BatchNorm into the preceding conv, so weights are rounded in their deployed form."""
from __future__ import annotations

import gc
import logging
from typing import Any

import tvm
from tvm import relax

from ..errors import IsquantError
from ..util import tvm_compat

log = logging.getLogger(__name__)


def fold_batchnorm() -> tvm.transform.Pass:
    """BN -> conv weights/bias. FoldBatchnormToConv2D only matches constant weights; FoldConstant
    then evaluates the scaled weights so later passes see plain `conv2d(x, W_const) + b_const`."""
    return tvm.transform.Sequential(
        [
            relax.transform.FoldConstant(),
            relax.transform.FoldBatchnormToConv2D(),
            relax.transform.FoldConstant(),
            # BN left unfolded (no conv before it) still has to run: decompose it into float arithmetic.
            relax.transform.DecomposeOpsForInference(),
            relax.transform.FoldConstant(),
            # the decomposed BN still returns (y, mean, var) and its user reads y through TupleGetItem, which
            # FuseOps does not fuse across: a BN after a ConvTranspose left its ReLU as a separate pass
            # (0.9 ms of dbnet_mv3's float build). Resolving tuple[0] lets the whole chain fuse into the conv.
            relax.transform.CanonicalizeBindings(),
            relax.transform.DeadCodeElimination(),
        ],
        name="FoldBatchNorm",
    )


def prepare(model: Any) -> tvm.IRModule:
    """The float graph every later stage starts from (an imported model's module, BatchNorm folded). This is
    the first pass that infers every op's shapes, so a graph the importer took but that cannot run (a conv
    whose dilation leaves a negative output size) fails here: named as the model's fault, in one line."""
    failure = None
    with tvm_compat.native_stderr_filtered():
        try:
            return fold_batchnorm()(model.mod)
        except Exception as err:  # noqa: BLE001 - TVM raises ValueError / TVMError with its own wording
            lines = [ln.strip() for ln in str(err).strip().splitlines() if ln.strip()]
            failure = (lines[-1] if lines else type(err).__name__)[:240]
            log.debug("preparing %s failed", model.source, exc_info=True)
        gc.collect()  # the failed pass's BlockBuilder warns from C++ when freed: inside the filter
    raise IsquantError(f"{model.source}: TVM cannot shape the imported graph ({failure}); check the model's op"
                       " attributes and input shapes")
