"""Errors a user can cause, each saying what to change.

Every error deqir raises on bad input derives from :class:`DeqirError`, so a caller can catch them
all at once, while each subclass also derives from the matching built-in (``ValueError``,
``FileNotFoundError`` ...) so generic handlers keep working.

Example:
    >>> from deqir.errors import ShapeError
    >>> try:
    ...     raise ShapeError("x must be (batch, 1, 64, 64); got (64, 64): add batch and channel axes")
    ... except ValueError as err:
    ...     print(type(err).__name__)
    ShapeError
"""

from __future__ import annotations


class DeqirError(Exception):
    """Base class of every error deqir raises on input a user can fix."""


class ShapeError(DeqirError, ValueError):
    """A tensor has the wrong shape for the operator or model it was given to."""


class DTypeError(DeqirError, TypeError):
    """A tensor has a dtype the operation does not accept (for example complex where real is needed)."""


class InvalidValueError(DeqirError, ValueError):
    """A value is out of range, NaN or infinite, or a name (mask, kernel, solver ...) is unknown."""


class ConfigError(DeqirError, ValueError):
    """A configuration file or dictionary has an unknown key or an invalid value."""


class DataError(DeqirError, OSError):
    """A data file or folder is missing, unreadable or corrupt."""


class CheckpointError(DeqirError, OSError):
    """A checkpoint or weights file is missing, truncated, tampered with or does not match the model."""


class ConvergenceError(DeqirError, RuntimeError):
    """A fixed-point solve diverged or produced NaN, and the caller asked for an exception."""


def unknown_name_message(kind: str, name: str, valid: list[str] | tuple[str, ...]) -> str:
    """Message for an unknown name, suggesting the closest valid one.

    Example:
        >>> unknown_name_message("kernel", "gausian", ["gaussian", "uniform", "motion"])
        "unknown kernel 'gausian'; did you mean 'gaussian'? Valid: gaussian, uniform, motion"
    """
    import difflib

    close = difflib.get_close_matches(str(name), list(valid), n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ";"
    return f"unknown {kind} '{name}'{hint} Valid: {', '.join(valid)}"
