"""The int8 conv/dense kernels' contract: parameters (QConv2dParams, QDenseParams), constants, the numpy
oracle, the TVMScript helpers the backends' intrinsics use. The shared machinery is split by job:
geometry.py (loop extents, constant packing), compute.py (TE computes), schedule.py (hand schedules,
KernelConfig, the build hook), depthwise.py (NCHW and NCHW16c depthwise kernels), emit.py (Relax emission).

The quantized conv contract (zero points 0, numpy reference in :func:`ref_conv2d`):

    acc = conv2d(data, weight) in int32 (zero padding) + bias[o]
    int8/uint8 out: y = clip((acc * multiplier[o] + 2^(shift[o]-1)) >> shift[o], out_min, out_max)
    float32 out:    y = float32(acc) * dequant_scale[o]
    int32 out:      y = clip(acc, out_min, out_max)  (no requantize: a classifier's raw accumulators)

The kernels compute in a channel-blocked layout:

* data is packed (and spatially zero padded) to ``pack[n, cb, hp, wp, ic_bn]`` (ic_bn = 4 or 16),
  optionally shifted by +-128 so the dot instruction sees the signedness it wants; the shift is folded
  exactly into the bias (``bias - shift * sum(w)``) and the spatial padding uses the shifted zero;
* the weight is pre-packed at compile time to ``wpk[ocb, icb4, kh, kw, 16, 4]`` (16 output channels x 4
  input channels: the register layout of x86 ``vpdpbusd`` and, split 4x4, of ARM ``sdot``);
* groups: each group's input channels are padded to a multiple of 4 (of ic_bn) and its output channels to
  a multiple of 16, so grouped convs use the same kernel without wasted cross-group work.
"""
from __future__ import annotations

import contextlib
import inspect
import linecache
import sys
from dataclasses import dataclass
from typing import Optional

import numpy as np
from tvm import tirx

from ..reference import interpreter


@contextlib.contextmanager
def cheap_tvmscript_parsing():
    """TVMScript's T.prim_func calls inspect.stack(), which resolves the module and reads the source of
    every frame (~0.15 s per function once torch/onnx are loaded: 0.6-1.6 s per process for the intrinsic
    definitions). The parser only uses the frame objects and the caller's source line, so hand it those."""
    original = inspect.stack

    def stack(context: int = 1):
        frames = []
        f = sys._getframe(1)
        while f is not None:
            code = f.f_code
            line = linecache.getline(code.co_filename, f.f_lineno)
            frames.append(inspect.FrameInfo(f, code.co_filename, f.f_lineno, code.co_name,
                                            [line] if line else None, 0 if line else None))
            f = f.f_back
        return frames

    inspect.stack = stack
    try:
        yield
    finally:
        inspect.stack = original


def dot_desc(lanes: int, k: int, a_dtype: str, b_dtype: str) -> tirx.PrimFunc:
    """What every dot-product intrinsic of the kernels computes (its TensorIntrin description):
    C[lanes] (int32) += sum over k of A[k] x B[lanes, k]. The implementations differ per instruction."""
    from tvm.script import tirx as T

    with cheap_tvmscript_parsing():
        @T.prim_func(s_tir=True)
        def desc(
            A: T.Buffer((k,), a_dtype, offset_factor=1),
            B: T.Buffer((lanes, k), b_dtype, offset_factor=1),
            C: T.Buffer((lanes,), "int32", offset_factor=1),
        ) -> None:
            with T.sblock("root"):
                T.reads(C[0:lanes], A[0:k], B[0:lanes, 0:k])
                T.writes(C[0:lanes])
                for i in T.serial(0, lanes):
                    for j in T.serial(0, k):
                        with T.sblock("update"):
                            vi, vj = T.axis.remap("SR", [i, j])
                            C[vi] = C[vi] + T.cast(A[vj], "int32") * T.cast(B[vi, vj], "int32")

    return desc


OC_BN = 16  # output-channel block (vpdpbusd lanes; 4 x sdot)
IC_DOT = 4  # input channels per dot-product lane

OUT_DTYPES = ("int8", "uint8", "float32", "int32")


@dataclass(frozen=True)
class QConv2dParams:
    weight: np.ndarray  # int8 (O, C/groups, KH, KW)
    bias: np.ndarray  # int32 (O,)
    multiplier: np.ndarray  # int64 (O,) in [2^30, 2^31)
    shift: np.ndarray  # int64 (O,) >= 1
    strides: tuple = (1, 1)
    padding: tuple = (0, 0, 0, 0)  # top, left, bottom, right
    dilation: tuple = (1, 1)
    groups: int = 1
    out_dtype: str = "int8"
    out_min: int = -128
    out_max: int = 127
    dequant_scale: Optional[np.ndarray] = None  # float32 (O,), for out_dtype == "float32"
    out_zero_point: int = 0  # added after the shift (folded into the rounding constant: quantize/prequant.py)


@dataclass(frozen=True)
class QDenseParams:
    weight: np.ndarray  # int8 (O, K)
    bias: np.ndarray  # int32 (O,)
    multiplier: np.ndarray
    shift: np.ndarray
    out_dtype: str = "int8"
    out_min: int = -128
    out_max: int = 127
    dequant_scale: Optional[np.ndarray] = None
    out_zero_point: int = 0


# ----------------------------------------------------------------------------------------------
# numpy references (int64, exact)
# ----------------------------------------------------------------------------------------------

def _qnn_args_attrs(p) -> tuple[list[np.ndarray], dict]:
    """A kernel's parameters as the qnn op's constant arguments and attributes (qnn/ops.py)."""
    args = [p.weight, p.bias]
    attrs = {"out_dtype": p.out_dtype, "out_min": p.out_min, "out_max": p.out_max,
             "out_zero_point": int(p.out_zero_point)}
    if p.out_dtype == "float32":
        args.append(np.asarray(p.dequant_scale, np.float32))
    elif p.out_dtype != "int32":
        args += [np.asarray(p.multiplier, np.int64), np.asarray(p.shift, np.int64)]
    return args, attrs


def ref_conv2d(data: np.ndarray, p: QConv2dParams) -> np.ndarray:
    """The contract's numpy oracle: the reference interpreter's qnn.conv2d (one conv2d and one requantize
    oracle for the whole package, reference/)."""
    args, attrs = _qnn_args_attrs(p)
    attrs.update(strides=list(p.strides), padding=list(p.padding), dilation=list(p.dilation), groups=int(p.groups))
    return interpreter.qnn_conv2d([data] + args, attrs)


def ref_dense(data: np.ndarray, p: QDenseParams) -> np.ndarray:
    args, attrs = _qnn_args_attrs(p)
    return interpreter.qnn_dense([data] + args, attrs)
