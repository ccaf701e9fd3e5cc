"""Intel AMX on Linux: the per-process tile-data permission.

Linux keeps the AMX tile data state (8 KiB per thread) off until a process asks for it with
``arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)``; the first tile instruction of a process that did
not ask dies with SIGILL. The permission is per process and covers threads created before and after the
call, so asking once before running an AMX library is enough (the kernels' own ldtilecfg is per call).

    from isquant_tvm.util.cpu import host_has_amx, request_amx_permission
    if host_has_amx():
        request_amx_permission()   # True, or IsquantError with the reason
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import platform

from ..errors import IsquantError

SYS_ARCH_PRCTL = 158  # x86-64
ARCH_GET_XCOMP_PERM = 0x1022
ARCH_REQ_XCOMP_PERM = 0x1023
XFEATURE_XTILEDATA = 18

_granted: bool = False


@functools.lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc


def _arch_prctl(code: int, arg: object) -> int:
    """arch_prctl(code, arg); `arg` a ctypes value (c_long, byref(...))."""
    return _libc().syscall(ctypes.c_long(SYS_ARCH_PRCTL), ctypes.c_long(code), arg)


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def host_has_amx() -> bool:
    """x86-64 Linux host whose CPU (and kernel) report AMX tiles with int8 dot products."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return False
    flags = _cpu_flags()
    return "amx_tile" in flags and "amx_int8" in flags


def request_amx_permission() -> bool:
    """Ask Linux for AMX tile-data permission for this process (idempotent, cheap).

    Returns True when granted (now or earlier), False on hosts without AMX (nothing to do). Raises
    IsquantError when the host has AMX but the kernel refuses (e.g. a kernel older than 5.16, or a
    seccomp/sandbox policy blocking arch_prctl)."""
    global _granted
    if _granted:
        return True
    if not host_has_amx():
        return False
    rc = _arch_prctl(ARCH_REQ_XCOMP_PERM, ctypes.c_long(XFEATURE_XTILEDATA))
    if rc != 0:
        err = ctypes.get_errno()
        raise IsquantError(
            f"the CPU has AMX but Linux refused AMX tile-data permission (arch_prctl(ARCH_REQ_XCOMP_PERM, "
            f"XFEATURE_XTILEDATA) failed: {os.strerror(err) if err else 'rc=' + str(rc)}); AMX needs Linux >= 5.16 "
            "and no sandbox blocking arch_prctl. Rebuild for a target without AMX (e.g. mcpu rocketlake / "
            "cascadelake) to use the AVX-512 VNNI kernels instead")
    _granted = True
    return True


def target_uses_amx(target) -> bool:
    """Whether an LLVM target (tvm Target or its JSON dict) enables AMX int8 tiles (amx-int8, amx-tile)."""
    try:
        import tvm

        from . import tvm_compat

        t = target if isinstance(target, tvm.target.Target) else tvm_compat.make_target(target)
        return (str(t.kind.name) == "llvm" and tvm_compat.has_feature(t, "amx-int8")
                and tvm_compat.has_feature(t, "amx-tile"))
    except Exception:  # noqa: BLE001 - a foreign/unknown target: not AMX
        return False


def tile_permission_granted() -> bool:
    """Whether this process holds AMX tile-data permission (someone in it asked and Linux agreed)."""
    mask = ctypes.c_uint64(0)
    rc = _arch_prctl(ARCH_GET_XCOMP_PERM, ctypes.byref(mask))
    return rc == 0 and bool(mask.value >> XFEATURE_XTILEDATA & 1)


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


def deny_amx_permission() -> None:
    """Make every later ARCH_REQ_XCOMP_PERM of this process fail with EPERM (a seccomp filter, which
    cannot be undone and is inherited by child processes), so libraries that probe for AMX (e.g.
    onnxruntime's MLAS, which asks when it is imported) fall back to their AVX-512 VNNI kernels.
    For like-for-like benchmarks on AMX machines; call it before importing such a library."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        raise IsquantError("denying AMX permission needs x86-64 Linux")
    ld_abs_w, jeq_k, ret_k = 0x20, 0x15, 0x06
    prog = [
        _SockFilter(ld_abs_w, 0, 0, 0),  # seccomp_data.nr
        _SockFilter(jeq_k, 0, 3, SYS_ARCH_PRCTL),
        _SockFilter(ld_abs_w, 0, 0, 16),  # seccomp_data.args[0], low 32 bits
        _SockFilter(jeq_k, 0, 1, ARCH_REQ_XCOMP_PERM),
        _SockFilter(ret_k, 0, 0, 0x00050000 | 1),  # SECCOMP_RET_ERRNO | EPERM
        _SockFilter(ret_k, 0, 0, 0x7FFF0000),  # SECCOMP_RET_ALLOW
    ]
    filters = (_SockFilter * len(prog))(*prog)
    fprog = _SockFprog(len(prog), filters)
    libc = _libc()
    pr_set_no_new_privs, pr_set_seccomp, seccomp_mode_filter = 38, 22, 2
    if libc.prctl(pr_set_no_new_privs, 1, 0, 0, 0) != 0 or \
            libc.prctl(pr_set_seccomp, seccomp_mode_filter, ctypes.byref(fprog), 0, 0) != 0:
        raise IsquantError(f"could not install the seccomp filter that denies AMX: {os.strerror(ctypes.get_errno())}")


def is_aarch64(target) -> bool:
    """Whether a tvm Target generates 64-bit ARM code (its mtriple; no mtriple means the x86 host)."""
    attrs = target.attrs
    triple = str(attrs["mtriple"] or "") if "mtriple" in attrs else ""
    return triple.startswith(("aarch64", "arm64"))
