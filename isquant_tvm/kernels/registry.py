"""The int8 conv / dense kernels by name and priority: each backend module registers its own.

A kernel says which targets it is for (``applies(target)``) and which calls it takes (``accepts(data
shape, params, blocked_in, blocked_out)``); the highest-priority kernel that takes a call lowers it. The
same table serves the legalize registry (kernels/rules.py registers one ``qnn.conv2d`` / ``qnn.dense``
lowering per kernel, so the report names the kernel that ran, e.g. ``qnn.conv2d:x86_amx_blocked``) and
the direct entry points of kernels/__init__.py: there is one dispatch decision, not two.

Priorities (higher first): x86_amx_blocked 50, x86_amx 40, depthwise 30, the instruction-set families
20 .. 18 (x86_vnni > x86_avx2 > x86_int32; arm_sdot > arm_neon)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Kernel:
    name: str
    priority: int
    applies: Callable[[Any], bool]
    accepts: Callable[[Shape, Any, bool, bool], bool]
    # (bb, data, params, target, blocked_in, blocked_out) -> the output expression
    lower: Callable[..., Any]


CONV: list[Kernel] = []
DENSE: list[Kernel] = []


def _add(table: list[Kernel], kernel: Kernel) -> None:
    table[:] = sorted([k for k in table if k.name != kernel.name] + [kernel], key=lambda k: -k.priority)


def register_conv(kernel: Kernel) -> None:
    _add(CONV, kernel)


def register_dense(kernel: Kernel) -> None:
    _add(DENSE, kernel)


def choose(table: list[Kernel], target: Any, shape: Shape, p: Any, blocked_in: bool = False,
           blocked_out: bool = False) -> Optional[Kernel]:
    """The kernel that lowers a conv / dense call, or None when no kernel takes it."""
    load_backends()
    for k in table:
        if k.applies(target) and k.accepts(shape, p, blocked_in, blocked_out):
            return k
    return None


_LOADED = False


def load_backends() -> None:
    """Import every backend module once: each registers its kernels when imported."""
    global _LOADED
    if not _LOADED:
        from . import arm_dot, x86_amx, x86_amx_blocked, x86_vnni  # noqa: F401

        _LOADED = True
