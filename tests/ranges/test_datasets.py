"""Photo preprocessing for non-square model inputs (a 120x160 detector, issue 15's mtcnn_pnet)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from isquant_tvm.ranges.datasets import load_calibration, load_labelled


def _photo(tmp_path: Path, w: int = 227, h: int = 227) -> Path:
    from PIL import Image

    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([x * 255 // (w - 1), y * 255 // (h - 1), (x + y) * 255 // (w + h - 2)], -1).astype(np.uint8)
    (tmp_path / "images").mkdir()
    Image.fromarray(rgb).save(tmp_path / "images" / "a.png")
    (tmp_path / "labels.txt").write_text("a.png 0\n")
    return tmp_path


def test_a_non_square_input_gets_a_centre_crop_of_its_own_aspect(tmp_path: Path) -> None:
    data = load_labelled(_photo(tmp_path), (1, 3, 120, 160))
    img = data.image(0)
    assert img.shape == (3, 120, 160)
    # a crop, not a squeeze: the same resize as a 160x160 input (short side 227 -> 183), then the central 120
    # of those rows, pixel for pixel
    square = load_labelled(tmp_path, (1, 3, 160, 160)).image(0)
    np.testing.assert_array_equal(img, square[:, 20:140, :])
    calib = load_calibration(tmp_path / "images", [type("Spec", (), {"shape": (1, 3, 120, 160), "name": "x"})()])
    assert calib[0][0].shape == (1, 3, 120, 160)
