"""Lazy package exports: a name is imported from its submodule on first use, keeping imports cheap.

Example:
    >>> from deqir._lazy import lazy_exports
    >>> __getattr__, __dir__, __all__ = lazy_exports("deqir.metrics", {})
    >>> __all__
    []
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(
    package: str, exports: dict[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """Module-level ``__getattr__``, ``__dir__`` and ``__all__`` for ``{name: submodule}`` exports."""
    names = sorted(exports)

    def __getattr__(name: str) -> Any:  # noqa: N807
        if name in exports:
            value = getattr(importlib.import_module(f"{package}.{exports[name]}"), name)
            importlib.import_module(package).__dict__[name] = value  # cache: next access is direct
            return value
        raise AttributeError(f"module '{package}' has no attribute '{name}'")

    def __dir__() -> list[str]:  # noqa: N807
        return names

    return __getattr__, __dir__, names
