"""Smoke test of scripts/bench_arm.py's cycle model (llvm-mca only, < 2 s): the peaks it reports as 100 %, and
that it ranks the Pi 4 NEON inner loops the way kernels/arm_dot.py chose between them. The full pipeline
(build, qemu trace of whole models) is a benchmark, run from scripts/, not here."""
from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _bench_arm():
    spec = importlib.util.spec_from_file_location("bench_arm", REPO / "scripts" / "bench_arm.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_arm", mod)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def ba():
    mod = _bench_arm()
    try:
        mod.find_mca()
    except SystemExit as err:
        pytest.skip(f"no llvm-mca with a Neoverse-N1 model: {err}")
    if shutil.which("llvm-nm") is None:
        pytest.skip("llvm-nm not installed")
    return mod


def test_peaks(ba):
    mca = ba.find_mca()
    # A76 (N1 model): two 128-bit sdot per cycle = 32 int8 MACs; A72: one widening smlal (.8h) per cycle = 8
    assert ba.peak_macs_per_cycle(ba.BOARDS["rasp5"], mca) == pytest.approx(32, rel=0.05)
    assert ba.peak_macs_per_cycle(ba.BOARDS["rasp4b"], mca) == pytest.approx(8, rel=0.05)


def test_neon_pairs_loop_is_cheaper(ba):
    """The int16-pair NEON dot (smull x2, addp .8h, sadalp) against the shipped one (smull x2, saddlp x2,
    addp .4s, add), 8 independent accumulators, as llvm-mca's Cortex-A72 model sees them."""
    old, new = [], []
    for i in range(8):
        old += [f"smull v{16 + i}.8h, v0.8b, v{8 + i % 4}.8b", f"saddlp v{16 + i}.4s, v{16 + i}.8h",
                f"smull v24.8h, v0.8b, v{12 + i % 4}.8b", "saddlp v24.4s, v24.8h",
                f"addp v{16 + i}.4s, v{16 + i}.4s, v24.4s", f"add v{i}.4s, v{i}.4s, v{16 + i}.4s"]
        new += [f"smull v{16 + i}.8h, v0.8b, v{8 + i % 4}.8b", f"smull v24.8h, v0.8b, v{12 + i % 4}.8b",
                f"addp v{16 + i}.8h, v{16 + i}.8h, v24.8h", f"sadalp v{i}.4s, v{16 + i}.8h"]
    cyc = ba.mca_cycles({0: old, 1: new}, "aarch64", ba.find_mca(), "cortex-a72", "+neon")
    assert set(cyc) == {0, 1}
    assert cyc[1] < 0.8 * cyc[0], cyc
    assert sum(ba.macs_of(*ln.split(" ", 1)) for ln in new) == 8 * 16  # smull .8h = 8 MACs each


def test_kernel_names(ba):
    assert ba.kernel_of("__tvm_ffi_qconv2d_neon_blk3") == "qconv2d_neon_blk3"
    assert ba.kernel_of("qconv2d_neon_blk3_compute_") == "qconv2d_neon_blk3"
    assert ba.macs_of("sdot", "v1.4s, v2.16b, v3.16b") == 16
    assert ba.macs_of("add", "v1.4s, v2.4s, v3.4s") == 0
