"""Datasets: the open benchmark built from packages, the standard RefSR benchmark layouts, synthetic references.

Every dataset returns a dict with ``lr``, ``ref``, ``hr`` (and ``ref_down`` where a model needs it) as float32
``(3, H, W)`` RGB tensors in [0, 1], made the way the official pipelines make them (PIL bicubic on uint8; see
:mod:`refsr.data.degrade`).
"""

from __future__ import annotations

from refsr.data import augment
from refsr.data.benchmarks import Manga109, Sun80, Urban100
from refsr.data.cache import data_root
from refsr.data.cufed import CUFED5, CUFEDTrain
from refsr.data.degrade import make_lr, mod_crop, pad_to_multiple
from refsr.data.fetch import FetchError, describe, fetch
from refsr.data.lightfield import LightFieldGrid
from refsr.data.open_pairs import OpenPairs
from refsr.data.sintel import SintelPairs, read_flo, write_flo
from refsr.data.synthetic import SyntheticRefConfig, SyntheticRefPairs

__all__ = [
    "augment", "data_root", "fetch", "describe", "FetchError",
    "make_lr", "mod_crop", "pad_to_multiple",
    "OpenPairs", "SyntheticRefPairs", "SyntheticRefConfig",
    "CUFEDTrain", "CUFED5", "Sun80", "Urban100", "Manga109", "SintelPairs", "LightFieldGrid",
    "read_flo", "write_flo",
]
