"""Training infrastructure: configurations, the trainer, checkpoints, distributed runs, reports.

Names load lazily, so ``import deqir.train`` stays cheap (no torch.distributed, no matplotlib).

Example:
    >>> from deqir.train import load_config
    >>> cfg = load_config("configs/denoiser_tiny.yaml")  # doctest: +SKIP
    >>> from deqir.train import train_from_config, evaluate_run
    >>> run = train_from_config("configs/denoiser_tiny.yaml", device="cpu")  # doctest: +SKIP
    >>> evaluate_run(run)["methods"][0]["psnr"]  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Config": "config",
    "load_config": "config",
    "config_from_dict": "config",
    "save_config": "config",
    "Trainer": "trainer",
    "train_from_config": "trainer",
    "evaluate_run": "report",
    "save_weights": "checkpoint",
    "load_weights": "checkpoint",
    "save_checkpoint": "checkpoint",
    "load_checkpoint": "checkpoint",
    "DenoisingTask": "tasks",
    "ReconstructionTask": "tasks",
    "Task": "tasks",
    "register_model": "registry",
    "register_method": "registry",
    "build_model": "registry",
    "spawn": "distributed",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"deqir.train.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'deqir.train' has no attribute '{name}'")
