"""Learned priors (networks): DnCNN, U-Nets and, later, explicit potentials and equilibrium cells.

No physics here. Names load lazily, so ``import deqir.priors`` stays cheap.

Example:
    >>> import torch
    >>> from deqir.priors import DnCNN
    >>> net = DnCNN(depth=3, width=8)
    >>> tuple(net(torch.rand(2, 1, 16, 16)).shape)
    (2, 1, 16, 16)
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DnCNN": "dncnn",
    "UNet": "unet",
    "SmoothResUNet": "drunet",
    "ScicoDnCNN": "scico_weights",
    "load_scico_dncnn": "scico_weights",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"deqir.priors.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'deqir.priors' has no attribute '{name}'")
