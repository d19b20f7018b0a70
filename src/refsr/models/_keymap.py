"""Renaming state_dict keys between an official layout and refsr's, and checking an official checkpoint.

A :class:`KeyMap` is a table of ``(official prefix, our prefix)`` templates in which ``{a}``, ``{b}``, ``{c}``
stand for numbers carried from one name to the other (a block index, a level); the part after the prefix is
the parameter's own name (``weight``, ``bias``, ``relative_position_bias_table``), kept as it is.
:func:`check_keys` compares a checkpoint with the keys and shapes a complete one has, and raises one
:class:`~refsr.errors.RefsrError` that lists what is missing, unexpected or misshapen.
"""

from __future__ import annotations

import re
from typing import Mapping, Sequence

import torch

from refsr.errors import RefsrError

__all__ = ["KeyMap", "check_keys", "listing"]

_NUMBERED = "abc"


def _compile(template: str) -> re.Pattern[str]:
    """A prefix template as a regex matching ``<prefix><name>`` with ``<name>`` one identifier."""
    pattern = re.escape(template)
    for name in _NUMBERED:
        pattern = pattern.replace(re.escape("{" + name + "}"), rf"(?P<{name}>\d+)")
    return re.compile(pattern + r"(?P<leaf>[A-Za-z_][A-Za-z0-9_]*)$")


class KeyMap:
    """Two-way renaming by prefix templates.

    >>> table = KeyMap([("MainNet.RB{a}.{b}.conv{c}.", "level{a}.blocks.{b}.conv{c}.")])
    >>> table.to_ours("MainNet.RB11.3.conv2.bias"), table.to_official("level11.blocks.3.conv2.bias")
    ('level11.blocks.3.conv2.bias', 'MainNet.RB11.3.conv2.bias')
    """

    def __init__(self, pairs: Sequence[tuple[str, str]]) -> None:
        self.pairs = tuple(pairs)
        self._to_ours = tuple((_compile(official), ours) for official, ours in self.pairs)
        self._to_official = tuple((_compile(ours), official) for official, ours in self.pairs)

    @staticmethod
    def _rename(key: str, table: Sequence[tuple[re.Pattern[str], str]]) -> str | None:
        for pattern, template in table:
            found = pattern.match(key)
            if found:
                groups = found.groupdict()
                return template.format(**groups) + groups["leaf"]
        return None

    def to_ours(self, official_key: str) -> str | None:
        """Our name for ``official_key``, or ``None`` when no template matches."""
        return self._rename(official_key, self._to_ours)

    def to_official(self, our_key: str) -> str | None:
        """The official name for ``our_key``, or ``None`` when no template matches."""
        return self._rename(our_key, self._to_official)


def listing(keys: Sequence[str], limit: int = 6) -> str:
    """``a, b, c, ... (N in all)``: the first ``limit`` keys, sorted."""
    keys = sorted(keys)
    return ", ".join(keys[:limit]) + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def check_keys(
    state_dict: Mapping[str, object],
    expected: Mapping[str, tuple[int, ...]],
    *,
    what: str,
    optional: Mapping[str, tuple[int, ...]] | None = None,
) -> None:
    """Raise :class:`RefsrError` unless ``state_dict`` holds exactly the ``expected`` keys with their shapes.

    Args:
        state_dict: the checkpoint part, official names.
        expected: ``{key: shape}`` that must all be there.
        what: names the checkpoint in the message (``"official TTSR checkpoint (model/TTSR.py)"``).
        optional: ``{key: shape}`` that may be there (constants the converter drops).
    """
    allowed = {**expected, **(optional or {})}
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k, v in state_dict.items() if k not in allowed or not isinstance(v, torch.Tensor)]
    misshapen = [f"{k} {tuple(v.shape)} != {allowed[k]}" for k, v in state_dict.items()
                 if k in allowed and isinstance(v, torch.Tensor) and tuple(v.shape) != tuple(allowed[k])]
    problems = [(label, found) for label, found in
                (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", misshapen)) if found]
    if problems:
        raise RefsrError(f"not an {what}: " + "; ".join(f"{label}: {listing(found)}" for label, found in problems))
