"""Errors shared by every layer, and the small checks that raise them.

A leaf module (standard library only), so the fixed-point core can use it without importing
anything above itself.
"""

from __future__ import annotations

import difflib
import math
import numbers
import operator
from collections.abc import Callable, Iterable


class ConfigError(ValueError):
    """A name, option or value that the caller got wrong; the CLI prints it as one line (exit 2)."""


class DiskFullError(OSError):
    """A write that ran out of space (or quota); the CLI prints it as one line (exit 1). The
    message names the directory and the space the write needed; nothing earlier was damaged."""


class Interrupted(Exception):
    """A run stopped by a signal after saving its state; the CLI prints the message as one line
    and exits with `exit_code` (130 for SIGINT, 143 for SIGTERM: 128 + the signal number)."""

    def __init__(self, message: str, exit_code: int = 130):
        super().__init__(message)
        self.exit_code = exit_code


def check_name(name: str, allowed: Iterable[str], what: str) -> None:
    """Raise ConfigError naming the closest matches if `name` is not in `allowed`."""
    allowed = sorted(allowed)
    if not isinstance(name, str):
        raise ConfigError(f"{what} {name!r} must be a name, one of: {', '.join(allowed)}")
    if name not in allowed:
        close = difflib.get_close_matches(name, allowed, n=3)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ConfigError(f"unknown {what} {name!r}{hint} (known: {', '.join(allowed) or 'none'})")


def check_int(value, what: str, minimum: int = 0) -> int:
    """`value` as a plain int >= minimum, else ConfigError "{what}={value!r} must be an int >= ...".

    Anything with `__index__` counts (numpy integers too); bools, floats (even 5.0), strings and
    None do not, since each of those is a likelier typo than an intended count.
    """
    if not isinstance(value, bool):
        try:
            number = operator.index(value)
        except TypeError:
            pass
        else:
            if number >= minimum:
                return number
    raise ConfigError(f"{what}={value!r} must be an int >= {minimum}")


def check_real(value, what: str, ok: Callable[[float], bool], expect: str) -> float:
    """`value` as a finite float for which ok(value) holds, else ConfigError naming `expect`.

    Ints and floats (numpy's too) count; bools, strings ("1e-4"), None and NaN do not.
    Example: check_real(beta, "Anderson beta", lambda b: 0 < b <= 1, "in (0, 1]").
    """
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        number = float(value)
        if math.isfinite(number) and ok(number):
            return number
    raise ConfigError(f"{what}={value!r} must be a number {expect}")


def check_bool(value, what: str) -> bool:
    """`value` if it is True or False, else ConfigError (1, "yes" and None are refused)."""
    if isinstance(value, bool):
        return value
    raise ConfigError(f"{what}={value!r} must be True or False")
