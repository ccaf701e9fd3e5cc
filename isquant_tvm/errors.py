"""User-facing errors: one clear line on the CLI, a traceback only with -v."""
from __future__ import annotations


class IsquantError(Exception):
    """A problem with the user's input or environment, worded so the user knows what to do."""


class ModelLoadError(IsquantError):
    pass


class TargetError(IsquantError):
    pass


class ToolchainError(IsquantError):
    pass


class RPCError(IsquantError):
    pass


class PrequantError(IsquantError):
    """Inconsistent quantization parameters in a pre-quantized (QDQ / QOperator) model; names the ONNX node."""
