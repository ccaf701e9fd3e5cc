"""Target presets and translation of every target spelling users bring (presets, TVM tags, JSON,
old tvmc strings) into the JSON-dict form TVM 0.27 requires."""
from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tvm

from ..util import tvm_compat
from ..errors import TargetError
from ..util.cpu import is_aarch64  # noqa: F401 - export and the tests use it from here

AARCH64_TRIPLE = "aarch64-linux-gnu"


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    spec: dict[str, Any] | str  # JSON dict, or a TVM tag name
    enables: tuple[str, ...] = field(default_factory=tuple)


def _host_spec() -> dict[str, Any]:
    # mcpu=native is rejected by TVM 0.27's LLVM; name the detected CPU instead.
    spec: dict[str, Any] = {"kind": "llvm", "mcpu": tvm_compat.system_cpu(), "num-cores": os.cpu_count() or 1}
    # Virtualised Xeons can report a CPU model LLVM maps to a client core without AMX (this machine's
    # Sapphire-Rapids-class vCPU is 'rocketlake'): trust the kernel's flags and switch the tiles on.
    from ..util.cpu import host_has_amx, target_uses_amx

    if host_has_amx() and not target_uses_amx(spec):
        spec["mattr"] = ["+amx-tile", "+amx-int8"]
    return spec


def presets() -> dict[str, Preset]:
    host = _host_spec()
    return {
        p.name: p
        for p in [
            Preset("x86", f"this machine's CPU ({host['mcpu']}{' + AMX' if host.get('mattr') else ''}), "
                   "every ISA extension it has (AMX int8 tiles where the CPU has them)", host, ("host ISA",)),
            Preset("x86-avx2", "any x86-64 with AVX2/FMA (Haswell and newer, Zen)",
                   {"kind": "llvm", "mcpu": "haswell"}, ("avx2", "fma")),
            Preset("x86-avx512", "x86-64 with AVX-512 VNNI (Cascade Lake and newer, Zen 4)",
                   {"kind": "llvm", "mcpu": "cascadelake"}, ("avx512f", "avx512bw", "avx512vnni")),
            Preset("x86-amx", "Sapphire Rapids and newer Xeons: AVX-512 VNNI plus AMX int8 tiles",
                   {"kind": "llvm", "mcpu": "sapphirerapids"}, ("avx512vnni", "amx-int8", "amx-tile")),
            Preset("arm", "generic 64-bit ARM Linux (aarch64, NEON), no dot-product instructions",
                   {"kind": "llvm", "mtriple": AARCH64_TRIPLE, "mattr": ["+neon"]}, ("neon",)),
            Preset("rasp4b", "Raspberry Pi 4 Model B, 64-bit OS (Cortex-A72, NEON; TVM tag raspberry-pi/4b-aarch64)",
                   "raspberry-pi/4b-aarch64", ("neon", "cortex-a72")),
            Preset("rasp5", "Raspberry Pi 5, 64-bit OS (Cortex-A76, NEON + dotprod: sdot/udot)",
                   {"kind": "llvm", "mtriple": AARCH64_TRIPLE, "mcpu": "cortex-a76",
                    "mattr": ["+neon", "+dotprod"], "num-cores": 4}, ("neon", "dotprod", "cortex-a76")),
        ]
    }


def translate_tvmc_string(text: str) -> dict[str, Any]:
    """'llvm -mtriple=aarch64-linux-gnu -mcpu=cortex-a72 -mattr=+neon' -> JSON dict."""
    tokens = shlex.split(text)
    if not tokens or tokens[0].startswith("-"):
        raise TargetError(f"unknown target {text!r}: an old-style string starts with the kind, e.g. 'llvm -mcpu=...'")
    spec: dict[str, Any] = {"kind": tokens[0]}
    for tok in tokens[1:]:
        if not tok.startswith("-") or "=" not in tok:
            raise TargetError(f"target {text!r}: cannot read option {tok!r} (expected -key=value)")
        key, value = tok.lstrip("-").split("=", 1)
        if key in ("mattr", "keys", "libs"):
            spec[key] = [v for v in value.split(",") if v]
        elif key in ("num-cores", "max-num-threads"):
            spec[key] = int(value)
        elif key in ("device", "model") and spec["kind"] == "llvm" and value in ("arm_cpu",):
            spec["keys"] = ["arm_cpu", "cpu"]
        else:
            spec[key] = value
    if spec.get("mcpu") == "native":
        spec["mcpu"] = tvm_compat.system_cpu()
    return spec


SUPPORTED_TRIPLES = ("x86_64", "aarch64", "arm64")


def resolve_target(spec: str | dict[str, Any] | tvm.target.Target) -> tvm.target.Target:
    """Accept a preset name, a TVM tag, a JSON dict / JSON string / JSON file, or an old tvmc string; refuse
    what the int8 kernels cannot serve. The review's `--target nvidia/geforce-rtx-3090` wrote a CUDA .so with
    exit 0 and `apple/m1-gpu` ran for minutes in TVM's GPU pipeline (issue 19, finding 8)."""
    declared = spec.get("kind") if isinstance(spec, dict) else None
    if isinstance(spec, str) and spec.strip().startswith("{"):
        try:
            declared = json.loads(spec).get("kind")
        except (ValueError, AttributeError):
            declared = None  # _resolve_any says what is wrong with it
    if declared is not None and declared not in ("llvm", "c"):  # before TVM builds it and warns about CUDA
        raise TargetError(f"target {_spec_text(spec)!r} is a {declared} target; isquant-tvm builds CPU libraries"
                          " only (llvm kind: presets x86, x86-avx2, x86-avx512, x86-amx, arm, rasp4b, rasp5)")
    target = _resolve_any(spec)
    kind = target.kind.name
    host = target.host.kind.name if target.host is not None else None
    if kind not in ("llvm", "c") or (host is not None and host not in ("llvm", "c")):
        raise TargetError(f"target {_spec_text(spec)!r} is a {kind} target; isquant-tvm builds CPU libraries only"
                          " (llvm kind: presets x86, x86-avx2, x86-avx512, x86-amx, arm, rasp4b, rasp5)")
    triple = str(target.attrs["mtriple"]) if "mtriple" in target.attrs else ""
    if triple and not triple.startswith(SUPPORTED_TRIPLES):
        raise TargetError(f"target {_spec_text(spec)!r}: triple {triple} is not supported; isquant-tvm builds for"
                          " x86_64 and aarch64 (e.g. --target x86 or --target arm)")
    return target


def _spec_text(spec: Any) -> str:
    return spec if isinstance(spec, str) else json.dumps(spec) if isinstance(spec, dict) else str(spec)


def _resolve_any(spec: str | dict[str, Any] | tvm.target.Target) -> tvm.target.Target:
    if isinstance(spec, tvm.target.Target):
        return spec
    known = presets()
    try:
        if isinstance(spec, dict):
            return tvm_compat.make_target(spec)
        text = spec.strip()
        if text in known:
            return tvm_compat.make_target(known[text].spec)
        if text.startswith("{"):
            return tvm_compat.make_target(json.loads(text))
        if text.endswith(".json") and Path(text).is_file():
            return tvm_compat.make_target(json.loads(Path(text).read_text()))
        if " " in text or text.startswith("llvm -"):
            return tvm_compat.make_target(translate_tvmc_string(text))
        if text in _tvm_tags():
            return tvm_compat.make_target(text)
        if text in ("llvm", "c"):
            return tvm_compat.make_target({"kind": text})
    except TargetError:
        raise
    except Exception as err:
        raise TargetError(f"target {spec!r} is not valid: {str(err).strip().splitlines()[-1]}") from err
    raise TargetError(
        f"unknown target {spec!r}: use a preset ({', '.join(known)}), a TVM tag (e.g. raspberry-pi/4b-aarch64), "
        "a JSON dict, or 'llvm -mtriple=... -mcpu=...'; `python -m isquant_tvm targets` lists the presets"
    )


def _tvm_tags() -> set[str]:
    from tvm.target import tag

    return set(tag.list_tags().keys())


def needs_cross_compiler(target: tvm.target.Target) -> bool:
    import platform

    if "mtriple" not in target.attrs:
        return False
    triple = str(target.attrs["mtriple"])
    return not triple.startswith(platform.machine())


def describe(target: tvm.target.Target) -> dict[str, Any]:
    return tvm_compat.target_dict(target)
