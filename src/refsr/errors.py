"""The one exception type that user-facing code raises for bad input.

``RefsrError`` subclasses ``ValueError`` so that callers who already catch ``ValueError`` keep working.
Its message is a single line that says what was wrong and what to do; the command line prints it as
``refsr: error: <message>`` and exits with status 2.
"""

from __future__ import annotations

__all__ = ["RefsrError"]


class RefsrError(ValueError):
    """Bad input: an unreadable or non-image file, a wrong shape, an unknown model, weights that don't fit."""

    def __init__(self, message: str) -> None:
        # One line only: the CLI contract prints exactly one line on stderr.
        super().__init__(" ".join(str(message).split("\n")))
