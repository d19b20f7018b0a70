"""refsr: reference-based image super-resolution in PyTorch.

The public names below are a stable interface (the README's "Use" section):

>>> import refsr
>>> "bicubic" in refsr.list_models()
True
"""

from __future__ import annotations

from refsr import matching, metrics, ops
from refsr.errors import RefsrError
from refsr.hub import create_model
from refsr.imresize import imresize
from refsr.inference import upscale
from refsr.models import DEFAULT_MODEL, convert_official, list_models

__version__ = "0.1.0"

__all__ = [
    "RefsrError",
    "create_model",
    "convert_official",
    "list_models",
    "upscale",
    "imresize",
    "metrics",
    "matching",
    "ops",
    "DEFAULT_MODEL",
    "__version__",
]
