"""User-facing errors: the CLI prints these as one line, without a traceback."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class PefsError(ValueError):
    """A problem with what the user asked for (bad name, value, path); never a bug in pefs."""


def choices_hint(value: str, valid: Iterable[str], limit: int = 12) -> str:
    """Say which valid values are closest to ``value`` (or list them all when few)."""
    valid = sorted(set(valid))
    close = difflib.get_close_matches(value, valid, n=5, cutoff=0.5)
    if len(valid) <= limit:
        return "valid choices: " + ", ".join(valid)
    if close:
        return "did you mean: " + ", ".join(close) + f" ({len(valid)} choices in all)"
    return f"{len(valid)} valid choices, e.g. " + ", ".join(valid[:limit])


def unknown(what: str, value: str, valid: Iterable[str], extra: str = "") -> PefsError:
    """An error for a value that is not one of the known names."""
    msg = f"unknown {what} {value!r}; {choices_hint(value, valid)}"
    return PefsError(msg + (f". {extra}" if extra else ""))
