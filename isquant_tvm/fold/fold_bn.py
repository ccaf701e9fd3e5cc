"""Fold inference BatchNorm into the preceding conv, so weights are rounded in their deployed form."""
from __future__ import annotations

from typing import Any

import tvm
from tvm import relax


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
            relax.transform.DeadCodeElimination(),
        ],
        name="FoldBatchNorm",
    )


def prepare(model: Any) -> tvm.IRModule:
    """The float graph every later stage starts from (an imported model's module, BatchNorm folded)."""
    return fold_batchnorm()(model.mod)
