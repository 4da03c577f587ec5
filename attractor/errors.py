"""Errors shared by every layer, and the one name-lookup helper that raises them.

A leaf module (standard library only), so the fixed-point core can use it without importing
anything above itself.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ConfigError(ValueError):
    """A name, option or value that the caller got wrong; the CLI prints it as one line."""


def check_name(name: str, allowed: Iterable[str], what: str) -> None:
    """Raise ConfigError naming the closest matches if `name` is not in `allowed`."""
    allowed = sorted(allowed)
    if name not in allowed:
        close = difflib.get_close_matches(name, allowed, n=3)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ConfigError(f"unknown {what} {name!r}{hint} (known: {', '.join(allowed)})")
