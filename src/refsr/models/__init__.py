"""The model zoo. Each model family lives in its own file and is registered here, explicitly, by import.

To add a family: write ``refsr/models/<family>.py`` with ``@register_model`` builders and import it below.
"""

from __future__ import annotations

from refsr.models import amsa as _amsa  # noqa: F401  (registers "amsa", "amsa-lite")
from refsr.models import bicubic as _bicubic  # noqa: F401  (registers "bicubic")
from refsr.models import c2_matching as _c2_matching  # noqa: F401  (registers "c2-matching", "c2-matching-lite")
from refsr.models import datsr as _datsr  # noqa: F401  (registers "datsr", "datsr-lite")
from refsr.models import masa as _masa  # noqa: F401  (registers "masa", "masa-lite")
from refsr.models import refsrnet as _refsrnet  # noqa: F401  (registers "refsrnet", "refsrnet-lite", "srresnet-x8")
from refsr.models import ssen as _ssen  # noqa: F401  (registers "ssen*" and "rcan*")
from refsr.models import ttsr as _ttsr  # noqa: F401  (registers "ttsr", "ttsr-lite")
from refsr.models._base import PaddedInputs, RefSRModel, pad_inputs, run_padded
from refsr.models._memory import GENERIC_MEMORY_COST, MemoryCost
from refsr.models._registry import (
    ModelEntry,
    WeightsInfo,
    convert_official,
    get_entry,
    list_models,
    register_converter,
    register_model,
)
from refsr.models._size import SizeRule, pad_to_rule

__all__ = ["RefSRModel", "SizeRule", "MemoryCost", "GENERIC_MEMORY_COST", "PaddedInputs", "pad_inputs", "pad_to_rule",
           "run_padded", "ModelEntry", "WeightsInfo", "get_entry", "list_models", "convert_official",
           "register_model", "register_converter", "DEFAULT_MODEL", "DEFAULT_VIDEO_MODEL"]

# What ``refsr.upscale(model="default")`` and ``refsr upscale`` run, with ``weights="default"``: masa-lite trained
# here on the open benchmark's training split (configs/default.yaml; MODEL_CARD.md says on what, for how long
# and what it reaches). Its weights ship as ``refsr/weights/masa-lite.safetensors``.
DEFAULT_MODEL = "masa-lite"
# What a video upscaled with high-resolution stills runs when no model is named (``refsr upscale clip.mp4 --ref
# ...``, ``refsr.upscale_video``, the still rows of ``refsr eval --video``): the default model fine-tuned on whole
# clips with stills a few frames away and chains of its own outputs (configs/masa-lite-video.yaml). Without
# stills a video runs DEFAULT_MODEL, which is better at using a frame as its own reference.
DEFAULT_VIDEO_MODEL = "masa-lite-video"
