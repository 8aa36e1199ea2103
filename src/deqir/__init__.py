"""deqir: deep-equilibrium reconstruction for imaging inverse problems.

Importing ``deqir`` is cheap: subpackages (``deqir.physics``, ``deqir.data``, ...) load on first
use, and optional heavy packages are imported inside the functions that need them.

Example:
    >>> import deqir
    >>> deqir.__version__
    '0.1.0'
"""

from __future__ import annotations

import importlib
from typing import Any

from deqir.errors import DeqirError

__version__ = "0.1.0"
__all__ = ["DeqirError", "__version__", "physics", "metrics", "data"]

_SUBMODULES = {"physics", "metrics", "storage", "data", "solvers", "priors", "methods", "train", "bench"}


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"deqir.{name}")
    raise AttributeError(f"module 'deqir' has no attribute '{name}'")
