"""Reconstruction methods composed from physics, priors and the engine.

Example:
    >>> from deqir.methods import classical_reconstruction, CLASSICAL_METHODS
    >>> sorted(CLASSICAL_METHODS)
    ['fbp', 'tikhonov', 'zero_filled']
"""

from __future__ import annotations

from deqir._lazy import lazy_exports

_EXPORTS = {
    "CLASSICAL_METHODS": "classical",
    "classical_reconstruction": "classical",
    "tikhonov_discrepancy": "classical",
    "estimate_noise_sigma": "classical",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
