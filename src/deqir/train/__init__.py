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

from deqir._lazy import lazy_exports

_EXPORTS = {
    "Config": "config",
    "load_config": "config",
    "config_from_dict": "config",
    "save_config": "config",
    "Trainer": "trainer",
    "train_from_config": "trainer",
    "evaluate_run": "report",
    "load_run_model": "report",
    "save_weights": "checkpoint",
    "load_weights": "checkpoint",
    "save_checkpoint": "checkpoint",
    "load_checkpoint": "checkpoint",
    "export_weights": "export",
    "DenoisingTask": "tasks",
    "ReconstructionTask": "tasks",
    "Task": "tasks",
    "register_model": "registry",
    "register_method": "registry",
    "build_model": "registry",
    "spawn": "distributed",
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
