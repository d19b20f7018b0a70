"""What the official-checkpoint converters of several model files share: renaming keys by prefix templates.

A converter states its mapping as data: ``(official prefix, our prefix)`` pairs in which ``{a}``, ``{b}`` and
``{c}`` stand for a number (a level, a block, a conv) carried from one name to the other, e.g.
``("enc.blk_L{a}.{b}.conv{c}.", "encoder.level{a}.blocks.{b}.conv{c}.")``. :class:`KeyRenames` compiles the
pairs once and maps ``<prefix>weight`` / ``<prefix>bias`` keys either way.
"""

from __future__ import annotations

import re
from typing import Sequence

__all__ = ["KeyRenames"]

_NUMBERS = "abc"


def _compile(template: str) -> re.Pattern[str]:
    """A prefix template as a regex matching ``<prefix>weight`` or ``<prefix>bias``."""
    pattern = re.escape(template)
    for name in _NUMBERS:
        pattern = pattern.replace(re.escape("{" + name + "}"), rf"(?P<{name}>\d+)")
    return re.compile(pattern + r"(?P<kind>weight|bias)$")


def _rename(key: str, table: tuple[tuple[re.Pattern[str], str], ...]) -> str | None:
    for pattern, template in table:
        found = pattern.match(key)
        if found:
            groups = found.groupdict()
            return template.format(**groups) + groups["kind"]
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
