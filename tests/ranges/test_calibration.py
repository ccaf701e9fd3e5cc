"""Calibrated activation ranges (the optional, not data-free, path): sample count, rule, clear errors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import isquant_tvm as iq
from isquant_tvm.api import prepare
from isquant_tvm.errors import IsquantError
from isquant_tvm.pipeline import quantize_model


@pytest.fixture(scope="module")
def resnet20():
    model = iq.load("builtin:resnet20-cifar")
    return model, prepare(model)


def test_calibration_count_selects_the_samples(resnet20, tmp_path: Path) -> None:
    model, folded = resnet20
    x = np.random.default_rng(0).standard_normal((10, 3, 32, 32)).astype(np.float32)
    x[5:] *= 3  # samples past the count would widen every range
    np.savez(tmp_path / "calib.npz", input=x)
    q = quantize_model(model, folded, calibration=str(tmp_path / "calib.npz"), calibration_method="minmax",
                       calibration_count=4, progress=False, only_reference=True)
    summary = q.report["summary"]
    assert summary["calibration_samples"] == 4 and summary["activation_ranges"] == "minmax"
    assert q.report["input_range"] == pytest.approx(float(np.abs(x[:4]).max()))
    assert "calibration min-max" in {t["rule"] for t in q.report["tensors"]}


def test_bad_calibration_count_is_refused(resnet20, tmp_path: Path) -> None:
    model, folded = resnet20
    np.savez(tmp_path / "calib.npz", input=np.zeros((2, 3, 32, 32), np.float32))
    with pytest.raises(IsquantError, match="--calibration-count must be at least 1"):
        quantize_model(model, folded, calibration=str(tmp_path / "calib.npz"), calibration_count=0, progress=False,
                       only_reference=True)
