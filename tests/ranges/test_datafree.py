"""Data-free ranges without BatchNorm statistics (issue 16): inverted images, the report's rule and
confidence, the CLI hint, determinism down to the .so, the torch translation, --preprocess."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import isquant_tvm as iq
from isquant_tvm.api import prepare
from isquant_tvm.pipeline import quantize_model
from isquant_tvm.ranges import datafree
from isquant_tvm.ranges.datasets import load_labelled
from tests.helpers import tiny_conv_onnx

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tiny_conv_onnx(tmp_path_factory.mktemp("tiny") / "tiny.onnx")
    model = iq.load(str(path))
    return path, model, prepare(model)


def _ranges(q) -> list[tuple[str, float, str]]:
    return [(t["tensor"], t["alpha"], t["rule"]) for t in q.report["tensors"]]


def test_no_batchnorm_takes_inverted_minmax_and_says_so(tiny) -> None:
    _, model, folded = tiny
    q = quantize_model(model, folded, progress=False, only_reference=True)
    summary = q.report["summary"]
    assert summary["range_confidence"] == "medium"
    assert "no BatchNorm statistics used" in summary["ranges_note"]
    rules = {t["rule"] for t in q.report["tensors"] if t["rule"]}
    assert "synthetic min-max (inverted images)" in rules, rules
    assert "inversion_s" in q.report["timings"]
    line = datafree.hint(summary)
    assert line and "--calibration" in line and str(datafree.HINT_IMAGES) in line
    assert datafree.hint({**summary, "range_confidence": "high"}) is None


def test_same_seed_same_ranges_report_and_library(tiny, tmp_path: Path) -> None:
    path, model, folded = tiny
    a = quantize_model(model, folded, progress=False, only_reference=True)
    b = quantize_model(model, folded, progress=False, only_reference=True)
    assert _ranges(a) == _ranges(b)
    libs = []
    for name in ("a.so", "b.so"):
        result = iq.api.compile(str(path), output=str(tmp_path / name), progress=False)
        libs.append((tmp_path / name).read_bytes())
        report = result.report
        report["timings"] = None  # wall times differ
        libs.append(repr(report).encode())
    assert libs[0] == libs[2], "the .so differs between two runs with the same seed"
    assert libs[1] == libs[3], "the report differs between two runs with the same seed"


def test_torch_translation_matches_the_numpy_reference() -> None:
    from isquant_tvm.reference.interpreter import Interpreter
    from isquant_tvm.ranges.torch_graph import TorchGraph

    folded = prepare(iq.load("builtin:resnet20-cifar"))
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32)
    ref = Interpreter(folded).run([x])[0][0]
    with torch.no_grad():
        got = TorchGraph(folded)([torch.from_numpy(x)])[0].numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


def test_preprocess_modes(tmp_path: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    Image.fromarray(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)).save(tmp_path / "images" / "big.png")
    Image.fromarray(rng.integers(0, 255, (227, 227, 3), dtype=np.uint8)).save(tmp_path / "images" / "small.png")
    (tmp_path / "labels.txt").write_text("big.png 1\nsmall.png 2\n")
    shape = (1, 3, 224, 224)
    load = {mode: load_labelled(tmp_path, shape, preprocess=mode) for mode in ("auto", "resize-crop", "center-crop")}
    # full-size photo: auto = resize the short side to 256, then crop; the pre-scaled 227 one: crop only
    np.testing.assert_array_equal(load["auto"].image(0), load["resize-crop"].image(0))
    np.testing.assert_array_equal(load["auto"].image(1), load["center-crop"].image(1))
    assert not np.array_equal(load["resize-crop"].image(0), load["center-crop"].image(0))
    assert load["auto"].image(0).shape == (3, 224, 224)
    with pytest.raises(iq.IsquantError if hasattr(iq, "IsquantError") else Exception, match="--preprocess"):
        load_labelled(tmp_path, shape, preprocess="stretch").image(0)


def test_margin_objective_is_deterministic_and_moves_the_images(tiny) -> None:
    from isquant_tvm.ranges import inversion

    _, model, folded = tiny
    shape = model.inputs[0].shape
    config = inversion.InversionConfig(images=4, steps=3, objective="margin")
    a = inversion.invert(folded, shape, config)
    b = inversion.invert(folded, shape, config)
    ce = inversion.invert(folded, shape, inversion.InversionConfig(images=4, steps=3))
    assert a is not None and a.shape == (4, *shape[1:])
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, ce), "the objective must change the optimised images"


def test_tail_alpha_extrapolates_a_gumbel_sample() -> None:
    from isquant_tvm.ranges.activation import tail_alpha

    rng = np.random.default_rng(0)
    mu, beta = 5.0, 0.5
    sample = rng.gumbel(mu, beta, 64)
    # the expected largest of 10,000 draws of Gumbel(mu, beta) is mu + beta (ln 1e4 + γ) = 9.89
    got = tail_alpha(sample, 1e4)
    assert abs(got - (mu + beta * (np.log(1e4) + 0.5772))) < 0.6, got
    assert got > sample.max()
    assert tail_alpha(sample, 2) == sample.max(), "never below the largest seen"
    assert tail_alpha([3.0], 1e4) == 3.0


def test_several_inversion_runs_are_a_deterministic_union(tiny, monkeypatch) -> None:
    _, model, folded = tiny
    # few images and steps: the union logic, not the inversion, is under test (and this stays fast)
    monkeypatch.setattr(datafree, "INVERTED", datafree.InvertedImages(runs=1, steps=3, images=4))
    one = quantize_model(model, folded, progress=False, only_reference=True)
    monkeypatch.setattr(datafree, "INVERTED", datafree.InvertedImages(runs=2, steps=3, images=4))
    a = quantize_model(model, folded, progress=False, only_reference=True)
    b = quantize_model(model, folded, progress=False, only_reference=True)
    assert _ranges(a) == _ranges(b)
    # run 0 is the one-run images, so the union's ranges can only be wider
    wide = {t: alpha for t, alpha, _ in _ranges(a)}
    assert all(wide[t] >= alpha for t, alpha, _ in _ranges(one))
    assert any(wide[t] > alpha for t, alpha, _ in _ranges(one))
