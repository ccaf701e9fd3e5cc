"""Exported libraries: reloadable, cross-compiled where asked, written atomically."""
from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

import isquant_tvm as iq
from isquant_tvm.errors import ToolchainError
from isquant_tvm.frontend.loader import random_inputs
from isquant_tvm.build.export import metadata_path, read_metadata


def test_x86_so_reloaded_matches_in_memory(tmp_path, float_build) -> None:
    result = float_build("resnet20-cifar")
    out = tmp_path / "m.so"
    from isquant_tvm.build.export import export_library

    export_library(result.executable, out, result.target, result.metadata)
    feed = random_inputs(iq.load("builtin:resnet20-cifar").inputs, seed=2)
    in_memory = result.runner().run(feed)[0]
    from_disk, _ = iq.run(out, feed)
    np.testing.assert_array_equal(from_disk[0], in_memory)
    meta = read_metadata(out)
    assert meta["inputs"][0] == {"name": "input", "shape": [1, 3, 32, 32], "dtype": "float32"}
    assert meta["tvm_version"] and meta["target"]["kind"] == "llvm"


@pytest.mark.skipif(shutil.which("aarch64-linux-gnu-gcc") is None, reason="no aarch64 cross compiler")
def test_aarch64_cross_compile(tmp_path) -> None:
    out = tmp_path / "m.so"
    iq.compile("builtin:resnet20-cifar", target="rasp4b", quantize="none", output=out, progress=False)
    kind = subprocess.run(["file", str(out)], capture_output=True, text=True).stdout
    assert "ARM aarch64" in kind
    assert read_metadata(out)["target"]["mtriple"] == "aarch64-linux-gnu"
    with pytest.raises(iq.errors.IsquantError, match="board"):
        iq.run(out)


def test_missing_cross_compiler_is_one_line_and_leaves_nothing(tmp_path) -> None:
    out = tmp_path / "m.so"
    with pytest.raises(ToolchainError, match="gcc-aarch64-linux-gnu"):
        iq.compile("builtin:resnet20-cifar", target="arm", quantize="none", output=out,
                   cross_compiler="no-such-gcc", progress=False)
    assert list(tmp_path.iterdir()) == []
    assert not metadata_path(out).exists()


def test_failed_export_leaves_no_partial_file(tmp_path, float_build) -> None:
    from isquant_tvm.build.export import export_library

    result = float_build("resnet20-cifar")
    out = tmp_path / "m.so"
    # `false` as the linker: the export fails after work has started.
    with pytest.raises(Exception):
        export_library(result.executable, out, iq.targets.presets.resolve_target("arm"), result.metadata,
                       cross_compiler="false")
    assert list(tmp_path.iterdir()) == []
