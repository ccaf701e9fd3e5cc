"""Whole-model instruction checks: the int8 conv kernels in the exported .so use the target's dot product."""
from __future__ import annotations

import re
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest

import isquant_tvm as iq


def _functions(objdump: str, path: Path) -> dict[str, str]:
    text = subprocess.run([objdump, "-d", str(path)], capture_output=True, text=True, check=True).stdout
    bodies: dict[str, list[str]] = defaultdict(list)
    current = ""
    for line in text.splitlines():
        head = re.match(r"^[0-9a-f]+ <(.+)>:$", line)
        if head:
            current = head.group(1)
        elif current:
            bodies[current].append(line)
    return {name: "\n".join(lines) for name, lines in bodies.items()}


def _conv_kernels(funcs: dict[str, str]) -> dict[str, str]:
    kernels = {n: b for n, b in funcs.items() if n.startswith("qconv2d") and n.endswith("_compute_")}
    assert kernels, "no int8 conv kernel found in the library"
    return kernels


@pytest.fixture(scope="module")
def libraries(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("libs")
    targets = ["x86-avx512"]
    if shutil.which("aarch64-linux-gnu-gcc"):
        targets += ["rasp5", "rasp4b"]
    return {t: iq.compile("builtin:resnet20-cifar", target=t, output=out / f"{t}.so", progress=False).output
            for t in targets}


def test_x86_avx512_every_conv_kernel_uses_vpdpbusd(libraries) -> None:
    kernels = _conv_kernels(_functions("objdump", libraries["x86-avx512"]))
    missing = [n for n, body in kernels.items() if "vpdpbusd" not in body and "depthwise" not in n]
    assert not missing, missing


@pytest.mark.skipif(shutil.which("aarch64-linux-gnu-objdump") is None, reason="no aarch64 binutils")
def test_rasp5_every_conv_kernel_uses_sdot(libraries) -> None:
    kernels = _conv_kernels(_functions("aarch64-linux-gnu-objdump", libraries["rasp5"]))
    missing = [n for n, body in kernels.items() if "sdot" not in body and "depthwise" not in n]
    assert not missing, missing


@pytest.mark.skipif(shutil.which("aarch64-linux-gnu-objdump") is None, reason="no aarch64 binutils")
def test_rasp4b_has_no_sdot_and_uses_neon_multiply_accumulate(libraries) -> None:
    funcs = _functions("aarch64-linux-gnu-objdump", libraries["rasp4b"])
    assert not any(re.search(r"\s[su]dot\s", body) for body in funcs.values()), "a Pi 4 would SIGILL on sdot"
    kernels = _conv_kernels(funcs)
    assert all(re.search(r"\s(smull2?|smlal2?|saddlp|sadalp|mla)\s", body) for body in kernels.values())
