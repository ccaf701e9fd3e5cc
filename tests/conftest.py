from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """../shared/data beside the repository (or $ISQUANT_DATA)."""
    return Path(os.environ.get("ISQUANT_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"real models and data not found at {path} (set ISQUANT_DATA or place ../shared/data)")
    return path


@lru_cache(maxsize=None)
def _float_build(name: str):
    import isquant_tvm as iq

    return iq.compile(f"builtin:{name}", target="x86", quantize="none", progress=False)


@pytest.fixture(scope="session")
def float_build():
    """Session cache of float x86 builds of the built-in models (each takes seconds)."""
    return _float_build


def onnxruntime_outputs(proto, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    ort = pytest.importorskip("onnxruntime")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, feed)
