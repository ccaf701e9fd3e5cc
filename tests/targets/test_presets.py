"""Every target spelling users bring is translated to the JSON form TVM 0.27 accepts."""
from __future__ import annotations

import pytest

from isquant_tvm.errors import TargetError
from isquant_tvm.targets.presets import (describe, is_aarch64, needs_cross_compiler, presets, resolve_target,
                                         translate_tvmc_string)

CASES = [
    # (spelling, expected subset of the resolved target)
    ("x86-avx2", {"kind": "llvm", "mcpu": "haswell"}),
    ("x86-avx512", {"mcpu": "cascadelake"}),
    ("x86-amx", {"mcpu": "sapphirerapids"}),
    ("arm", {"mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]}),
    ("rasp4b", {"mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72"}),
    ("rasp5", {"mcpu": "cortex-a76", "mattr": ["+neon", "+dotprod"]}),
    ("raspberry-pi/4b-aarch64", {"mcpu": "cortex-a72"}),
    ('{"kind": "llvm", "mcpu": "skylake-avx512"}', {"mcpu": "skylake-avx512"}),
    ("llvm -mtriple=aarch64-linux-gnu -mcpu=cortex-a72 -mattr=+neon",
     {"mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72", "mattr": ["+neon"]}),
    ("llvm -mtriple=aarch64-linux-gnu -mcpu=cortex-a76 -mattr=+neon,+dotprod",
     {"mcpu": "cortex-a76", "mattr": ["+neon", "+dotprod"]}),
    ("llvm -mcpu=haswell", {"mcpu": "haswell"}),
    ("llvm", {"kind": "llvm"}),
]


@pytest.mark.parametrize("spelling,expected", CASES)
def test_translation_table(spelling: str, expected: dict) -> None:
    resolved = describe(resolve_target(spelling))
    for key, value in expected.items():
        assert resolved.get(key) == value, (spelling, key, resolved)


def test_x86_preset_names_the_host_cpu() -> None:
    resolved = describe(resolve_target("x86"))
    assert resolved["mcpu"] not in ("native", "generic", "")


def test_dict_and_json_file(tmp_path) -> None:
    assert describe(resolve_target({"kind": "llvm", "mcpu": "haswell"}))["mcpu"] == "haswell"
    path = tmp_path / "t.json"
    path.write_text('{"kind": "llvm", "mtriple": "aarch64-linux-gnu"}')
    assert is_aarch64(resolve_target(str(path)))


def test_native_is_mapped_to_a_cpu_name() -> None:
    assert translate_tvmc_string("llvm -mcpu=native")["mcpu"] != "native"


def test_cross_detection() -> None:
    assert needs_cross_compiler(resolve_target("rasp5"))
    assert not needs_cross_compiler(resolve_target("x86"))


@pytest.mark.parametrize("bad", ["foo", "-mcpu=x", "llvm mcpu", "{not json"])
def test_unknown_targets_are_clear_errors(bad: str) -> None:
    with pytest.raises(TargetError):
        resolve_target(bad)


def test_every_preset_resolves() -> None:
    for name in presets():
        resolve_target(name)
