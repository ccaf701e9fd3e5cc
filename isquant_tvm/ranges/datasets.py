"""Labelled image sets and calibration samples, preprocessed to the model's NCHW float input.

Two layouts are understood (those of ../shared/data):
- an ImageNet-style folder: `images/*.JPEG` + `labels.txt` ("filename label"), /255, ImageNet
  mean/std, cut to the model's input size by `preprocess` (PREPROCESS): `resize-crop` resizes the short
  side to 256/224 of the input size and centre-crops (the standard ImageNet evaluation: SqueezeNet 1.1
  fp32 reads 61.40 % on a one-per-class sample of full-size photos against 57.70 % for a bare 224 crop),
  `center-crop` cuts the crop directly (the shared set's images are pre-scaled to 227: 69.85 % against
  69.77 % resized), `auto` picks per image: centre crop when its short side is at most 1.25x the input
  size (already scaled, like 227 for 224), resize + crop above;
- a CIFAR-style .npz with `images` uint8 (N, H, W, 3) and `labels`, /255, mean/std.
A plain .npz with an array named like the model input (or `input`/`x`) is taken as preprocessed."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ..errors import IsquantError
from .activation import IMAGENET_MEAN, IMAGENET_STD

IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png", ".bmp", ".ppm", ".webp"}
PREPROCESS = ("auto", "resize-crop", "center-crop")
#: `auto`: a short side up to this multiple of the input size is taken as pre-scaled (227 for 224)
PRESCALED_RATIO = 1.25


@dataclass
class LabelledData:
    """Lazily preprocessed labelled images."""

    name: str
    count: int
    labels: np.ndarray
    _load: object  # callable(index) -> (C, H, W) float32

    def image(self, index: int) -> np.ndarray:
        return self._load(index)  # type: ignore[operator]

    def subset(self, limit: int | None) -> np.ndarray:
        """Evenly spaced indices: data sets are often sorted by class, so the first N would be one class."""
        if limit is None or limit >= self.count:
            return np.arange(self.count)
        return np.linspace(0, self.count - 1, limit).round().astype(np.int64)

    def batches(self, batch: int = 1, limit: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        order = self.subset(limit)
        for start in range(0, len(order), batch):
            idx = order[start:start + batch]
            yield np.stack([self.image(int(i)) for i in idx]), self.labels[idx]


def _normalize(x: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    return ((x - np.asarray(mean, np.float32)[:, None, None]) / np.asarray(std, np.float32)[:, None, None]).astype(np.float32)


def _load_image(path: Path, size: int | tuple[int, int], mean: Sequence[float], std: Sequence[float],
                preprocess: str = "auto") -> np.ndarray:
    """One photo as a normalised (C, H, W) array. `size` is the square side or (height, width) of the
    model input: the short side goes to the larger of the two (or its 256/224 multiple), then a centre crop,
    so a 120x160 detector input gets a 4:3 crop of the photo, not a squeeze."""
    from PIL import Image

    if preprocess not in PREPROCESS:
        raise IsquantError(f"--preprocess must be one of {', '.join(PREPROCESS)}, got {preprocess!r}")
    oh, ow = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    side = max(oh, ow)
    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        short = min(w, h)
        resize = preprocess == "resize-crop" or (preprocess == "auto" and short > PRESCALED_RATIO * side)
        target = round(side * 256 / 224) if resize else side  # 256 for a 224 input
        if resize or short < side:  # short side to `target` (upscaled when smaller than the crop)
            im = im.resize((max(target, round(w * target / short)), max(target, round(h * target / short))),
                           Image.BILINEAR)
            w, h = im.size
        left, top = (w - ow) // 2, (h - oh) // 2
        im = im.crop((left, top, left + ow, top + oh))
        arr = np.asarray(im, dtype=np.float32).transpose(2, 0, 1) / 255.0
    return _normalize(arr, mean, std)


def load_labelled(path: str | Path, input_shape: Sequence[int], mean: Sequence[float] = IMAGENET_MEAN,
                  std: Sequence[float] = IMAGENET_STD, preprocess: str = "auto") -> LabelledData:
    """A labelled set from an ImageNet-style folder or a CIFAR-style .npz, for a model input NCHW shape."""
    path = Path(path)
    size = (int(input_shape[-2]), int(input_shape[-1])) if len(input_shape) >= 2 else int(input_shape[-1])
    if path.is_dir():
        labels_file = path / "labels.txt"
        if not labels_file.exists():
            raise IsquantError(f"{path}: expected labels.txt (\"filename label\" per line) beside images/")
        entries = [ln.split() for ln in labels_file.read_text().splitlines() if ln.strip()]
        image_dir = path / "images" if (path / "images").is_dir() else path
        files = [image_dir / e[0] for e in entries]
        missing = [f for f in files if not f.exists()]
        if missing:
            raise IsquantError(f"{path}: {len(missing)} images listed in labels.txt are missing (e.g. {missing[0].name})")
        labels = np.array([int(e[1]) for e in entries], np.int64)
        return LabelledData(path.name, len(files), labels, lambda i: _load_image(files[i], size, mean, std, preprocess))
    if path.suffix == ".npz" and path.exists():
        with np.load(path) as data:
            if "images" not in data.files or "labels" not in data.files:
                raise IsquantError(f"{path}: a labelled .npz needs arrays 'images' (N,H,W,3 uint8) and 'labels'")
            images, labels = data["images"], data["labels"].astype(np.int64)
        if images.ndim != 4 or images.shape[-1] != 3:
            raise IsquantError(f"{path}: 'images' must be (N, H, W, 3), got {images.shape}")

        def load(i: int) -> np.ndarray:
            return _normalize(images[i].astype(np.float32).transpose(2, 0, 1) / 255.0, mean, std)

        return LabelledData(path.stem, len(images), labels, load)
    raise IsquantError(f"{path}: not a labelled data set (an images folder with labels.txt, or an .npz)")


def load_calibration(path: str | Path, inputs: Sequence[object], limit: int = 64,
                     preprocess: str = "auto") -> list[list[np.ndarray]]:
    """Calibration batches (one sample each) for `inputs` (InputSpec list) from a folder of images,
    a labelled set, or an .npz of preprocessed inputs keyed by input name."""
    path = Path(path)
    if not path.exists():
        raise IsquantError(f"{path}: no such calibration folder or .npz")
    specs = list(inputs)
    shape = tuple(specs[0].shape)  # type: ignore[attr-defined]
    if path.suffix == ".npz":
        with np.load(path) as data:
            if "images" in data.files:
                labelled = load_labelled(path, shape, preprocess=preprocess)
                return [[labelled.image(int(i))[None]] for i in labelled.subset(limit)]
            name = specs[0].name  # type: ignore[attr-defined]
            key = name if name in data.files else next((k for k in ("input", "x") if k in data.files), None)
            if key is None:
                raise IsquantError(f"{path}: no array named {name!r} (or 'input'/'x'/'images') in the .npz")
            arr = data[key].astype(np.float32)
        if arr.shape[1:] != shape[1:]:
            raise IsquantError(f"{path}: samples have shape {arr.shape[1:]}, the model input is {shape[1:]}")
        return [[arr[i:i + 1]] for i in range(min(limit, len(arr)))]
    if (path / "labels.txt").exists():
        labelled = load_labelled(path, shape, preprocess=preprocess)
        return [[labelled.image(int(i))[None]] for i in labelled.subset(limit)]
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
    if not files:
        raise IsquantError(f"{path}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found")
    return [[_load_image(f, (int(shape[-2]), int(shape[-1])), IMAGENET_MEAN, IMAGENET_STD, preprocess)[None]] for f in files]
