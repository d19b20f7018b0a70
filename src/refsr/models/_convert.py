"""What the official-checkpoint converters of the model files share: renaming keys by prefix templates, and
checking a checkpoint part against the keys and shapes a complete one has.

A converter states its mapping as data: ``(official prefix, our prefix)`` pairs in which ``{a}``, ``{b}`` and
``{c}`` stand for a number (a level, a block, a conv) carried from one name to the other, e.g.
``("enc.blk_L{a}.{b}.conv{c}.", "encoder.level{a}.blocks.{b}.conv{c}.")``; the part after the prefix is the
parameter's own name (``weight``, ``bias``, ``relative_position_bias_table``), kept as it is.
:class:`KeyRenames` compiles the pairs once and maps keys either way; :func:`check_keys` raises one
:class:`~refsr.errors.RefsrError` listing what is missing, unexpected or misshapen.
"""

from __future__ import annotations

import re
from typing import Mapping, Sequence

import torch

from refsr.errors import RefsrError

__all__ = ["KeyRenames", "check_keys", "listing"]

_NUMBERS = "abc"


def _compile(template: str) -> re.Pattern[str]:
    """A prefix template as a regex matching ``<prefix><name>`` with ``<name>`` one identifier."""
    pattern = re.escape(template)
    for name in _NUMBERS:
        pattern = pattern.replace(re.escape("{" + name + "}"), rf"(?P<{name}>\d+)")
    return re.compile(pattern + r"(?P<leaf>[A-Za-z_][A-Za-z0-9_]*)$")


def _rename(key: str, table: tuple[tuple[re.Pattern[str], str], ...]) -> str | None:
    for pattern, template in table:
        found = pattern.match(key)
        if found:
            groups = found.groupdict()
            return template.format(**groups) + groups["leaf"]
    return None


class KeyRenames:
    """A two-way key mapping from ``(official prefix, our prefix)`` templates (see the module docstring).

    >>> renames = KeyRenames([("enc.conv_L{a}.", "encoder.level{a}.conv.")])
    >>> renames.to_ours("enc.conv_L2.weight"), renames.to_official("encoder.level2.conv.bias")
    ('encoder.level2.conv.weight', 'enc.conv_L2.bias')
    >>> renames.to_ours("decoder.x.weight") is None
    True
    """

    def __init__(self, pairs: Sequence[tuple[str, str]]) -> None:
        self.pairs = tuple(pairs)
        self._to_ours = tuple((_compile(official), ours) for official, ours in self.pairs)
        self._to_official = tuple((_compile(ours), official) for official, ours in self.pairs)

    def to_ours(self, official_key: str) -> str | None:
        """Our name of an official key, or ``None`` when no template matches."""
        return _rename(official_key, self._to_ours)

    def to_official(self, our_key: str) -> str | None:
        """The official name of one of our keys, or ``None`` when no template matches."""
        return _rename(our_key, self._to_official)

    def official_key(self, our_key: str) -> str:
        """:meth:`to_official`, raising ``KeyError`` for a key with no official counterpart."""
        official = self.to_official(our_key)
        if official is None:
            raise KeyError(our_key)
        return official


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
    misshapen = [f"{k} {tuple(v.shape)} != {tuple(allowed[k])}" for k, v in state_dict.items()
                 if k in allowed and isinstance(v, torch.Tensor) and tuple(v.shape) != tuple(allowed[k])]
    problems = [(label, found) for label, found in
                (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", misshapen)) if found]
    if problems:
        raise RefsrError(f"not an {what}: " + "; ".join(f"{label}: {listing(found)}" for label, found in problems))
