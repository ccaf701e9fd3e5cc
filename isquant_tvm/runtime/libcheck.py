"""Check a compiled library's ELF header before anything maps it.

`dlopen` of a truncated .so maps segments past the end of the file, and the first touch of those pages is a
SIGBUS: the review's `run` of a truncated library died with `Bus error` (exit 135), and over RPC the same load
killed the board server's child (issue 19, finding 4). The header says where every loaded segment and the
section table end; a file shorter than that, or not an ELF shared object, or for another machine, is refused
with one line before any load, locally and before an upload to a board.
"""
from __future__ import annotations

import struct
from pathlib import Path

from ..errors import LibraryError

ELF_MACHINES = {62: "x86_64", 183: "aarch64", 40: "arm", 3: "i386", 243: "riscv"}
_PT_LOAD = 1
_ET_DYN = 3


def check_library(path: str | Path) -> str:
    """The library's machine ("x86_64", "aarch64", ...) after checking it is a complete 64-bit ELF .so."""
    path = Path(path)
    rebuild = "rebuild it with `python -m isquant_tvm compile`"
    if not path.exists():
        raise LibraryError(f"{path}: no such library ({rebuild})")
    if not path.is_file():
        raise LibraryError(f"{path}: not a regular file; give the .so written by `compile`")
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(64)
        if len(head) < 64 or head[:4] != b"\x7fELF":
            raise LibraryError(f"{path}: not a shared library (no ELF header); {rebuild}")
        if head[4] != 2 or head[5] != 1:
            raise LibraryError(f"{path}: not a 64-bit little-endian library; {rebuild} for x86 or arm")
        e_type, e_machine = struct.unpack_from("<HH", head, 16)
        e_phoff, e_shoff = struct.unpack_from("<QQ", head, 32)
        e_phentsize, e_phnum, e_shentsize, e_shnum = struct.unpack_from("<HHHH", head, 54)
        machine = ELF_MACHINES.get(e_machine, f"machine {e_machine}")
        if e_type != _ET_DYN:
            raise LibraryError(f"{path}: an ELF file but not a shared library (type {e_type}); {rebuild}")
        truncated = LibraryError(f"{path}: the library is truncated or damaged ({size} bytes, its header describes"
                                 " more); copy it again or rebuild it with `python -m isquant_tvm compile`")
        if e_phentsize < 56 or e_phoff + e_phnum * e_phentsize > size:
            raise truncated
        if e_shnum and e_shoff + e_shnum * e_shentsize > size:
            raise truncated
        handle.seek(e_phoff)
        table = handle.read(e_phnum * e_phentsize)
    for i in range(e_phnum):
        p_type, _, p_offset = struct.unpack_from("<IIQ", table, i * e_phentsize)
        p_filesz = struct.unpack_from("<Q", table, i * e_phentsize + 32)[0]
        if p_type == _PT_LOAD and p_offset + p_filesz > size:
            raise truncated
    return machine
