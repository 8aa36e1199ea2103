"""Benchmarks: each module ``deqir.bench.<name>`` has ``run(quick: bool) -> BenchReport``.

The JSON written by ``deqir bench NAME --json PATH`` has one shape (see DESIGN.md)::

    {"bench": NAME, "machine": {...}, "config": {...}, "rows": [flat records],
     "summary": {name: number}}

Example:
    >>> from deqir.bench import available_benches
    >>> "operators" in available_benches()
    True
"""

from __future__ import annotations

import importlib

_BENCHES = (
    "operators",
    "solvers",
    "denoisers",
    "baselines",
    "oder",
    "oder_restart",
    "oder_finetunes",
    "elder",
    "luser",
    "idt",
)


def available_benches() -> tuple[str, ...]:
    """Names accepted by ``deqir bench``."""
    return _BENCHES


def load_bench(name: str):
    """The module implementing benchmark ``name`` (raises a clear error for an unknown name)."""
    from deqir.errors import InvalidValueError, unknown_name_message

    if name not in _BENCHES:
        raise InvalidValueError(unknown_name_message("benchmark", name, _BENCHES))
    return importlib.import_module(f"deqir.bench.{name}")
