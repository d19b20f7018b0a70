from __future__ import annotations

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
