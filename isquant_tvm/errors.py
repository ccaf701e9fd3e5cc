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


class OutputPathError(IsquantError):
    """An output path that cannot be written, or that would overwrite another output or an input."""


class InputError(IsquantError):
    """Inputs (an .npz, a flag value) that do not fit the library or the command."""


class LibraryError(IsquantError):
    """A compiled library or its metadata that is damaged, foreign or missing."""
class PrequantError(IsquantError):
    """Inconsistent quantization parameters in a pre-quantized (QDQ / QOperator) model; names the ONNX node."""
