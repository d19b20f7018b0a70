"""refsr: reference-based image super-resolution in PyTorch.

The public names below are a stable interface (the README's "Use" section):

>>> import refsr
>>> "bicubic" in refsr.list_models()
True

The names are imported on first use (PEP 562): ``import refsr`` itself does not import torch, so the
``refsr`` command starts inside its own error handling (an interrupt while torch loads is one line, not a
traceback) and ``refsr --help`` is quick.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> (the module that defines it, the attribute; None: the module itself)
_LAZY: dict[str, tuple[str, str | None]] = {
    "RefsrError": ("refsr.errors", "RefsrError"),
    "create_model": ("refsr.hub", "create_model"),
    "convert_official": ("refsr.models", "convert_official"),
    "list_models": ("refsr.models", "list_models"),
    "DEFAULT_MODEL": ("refsr.models", "DEFAULT_MODEL"),
    "DEFAULT_VIDEO_MODEL": ("refsr.models", "DEFAULT_VIDEO_MODEL"),
    "upscale": ("refsr.inference", "upscale"),
    "upscale_video": ("refsr.video", "upscale_video"),
    "imresize": ("refsr.imresize", "imresize"),
    "metrics": ("refsr.metrics", None),
    "matching": ("refsr.matching", None),
    "ops": ("refsr.ops", None),
}

__all__ = [
    "RefsrError",
    "create_model",
    "convert_official",
    "list_models",
    "upscale",
    "upscale_video",
    "imresize",
    "metrics",
    "matching",
    "ops",
    "DEFAULT_MODEL",
    "DEFAULT_VIDEO_MODEL",
    "__version__",
]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from refsr import matching, metrics, ops
    from refsr.errors import RefsrError
    from refsr.hub import create_model
    from refsr.imresize import imresize
    from refsr.inference import upscale
    from refsr.video import upscale_video
    from refsr.models import DEFAULT_MODEL, DEFAULT_VIDEO_MODEL, convert_official, list_models


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'refsr' has no attribute {name!r}")
    module_name, attribute = _LAZY[name]
    module = importlib.import_module(module_name)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value  # the next access is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """The package's module type: importing the submodule ``refsr.imresize`` binds the package attribute
    ``imresize`` to that module (the import system does so for every submodule), but the public name is the
    function; keep the function, as the eager ``from refsr.imresize import imresize`` did."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and name in _LAZY and _LAZY[name][1] is not None:
            value = getattr(value, _LAZY[name][1])
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
