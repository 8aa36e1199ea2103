"""Export a finished ``deqir train`` run of a blind denoiser as a shipped pretrained denoiser.

``deqir weights export runs/denoiser_<name> --name <name>`` calls :func:`export_weights`; the
files it writes are read by :func:`deqir.priors.load_pretrained`.

Example:
    >>> from deqir.train.export import export_weights
    >>> path = export_weights("runs/denoiser_natural", "natural")  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from deqir.errors import CheckpointError, ConfigError, DataError, InvalidValueError
from deqir.priors.pretrained import (
    MAX_BYTES,
    PRETRAINED,
    TEST_SIGMAS,
    _check_name,
    add_test_noise,
    weights_dir,
)

if TYPE_CHECKING:
    import torch
    from torch import nn


def _denoise(net: nn.Module, noisy: torch.Tensor, sigma: float, batch: int = 4) -> torch.Tensor:
    import torch

    with torch.no_grad():
        parts = [net(noisy[i : i + batch], sigma) for i in range(0, noisy.shape[0], batch)]
    return torch.cat(parts).clamp(0, 1)


def _test_psnr(net: nn.Module, clean: torch.Tensor, sigmas: Sequence[int], seed: int) -> dict[str, float]:
    """PSNR (dB) of ``net`` on ``clean`` with :func:`~deqir.priors.pretrained.add_test_noise` at
    each of ``sigmas`` (0..255 scale), output clipped to ``[0, 1]``."""
    from deqir.metrics import psnr

    out = {}
    for s in sigmas:
        noisy = add_test_noise(clean, s / 255, seed)
        out[str(s)] = round(float(psnr(_denoise(net, noisy, s / 255), clean).mean()), 3)
    return out


def export_weights(
    run_dir: str | Path,
    name: str,
    out_dir: str | Path | None = None,
    weights: str = "best",
    dtype: str = "auto",
    sigmas: Sequence[int] = TEST_SIGMAS,
    num_test: int | None = None,
    max_bytes: int = MAX_BYTES,
) -> Path:
    """Turn a finished ``deqir train`` run of a blind denoiser into a shipped weights pair.

    Reads the run's ``config.yaml`` and ``weights/<weights>.safetensors``, stores the weights
    (as float16 when ``dtype="auto"`` and float32 would exceed ``max_bytes``) and writes a
    sidecar with the architecture, the training data and schedule, the noise range, the run's
    best validation PSNR, and the test PSNR measured here: on the held-out test split of the
    run's own data source, noise from :func:`deqir.priors.pretrained.add_test_noise` (seed 0),
    output clipped to ``[0, 1]``, for the stored weights and for the float32 weights (so the cost
    of float16 is on record).

    Args:
        run_dir: the run folder.
        name: ``natural``, ``ct`` or ``mri``: the files are ``denoiser_<name>.*``.
        out_dir: where to write (default: :func:`deqir.priors.pretrained.weights_dir`).
        weights: ``best`` or ``final`` weights of the run.
        dtype: ``auto``, ``float32`` or ``float16``.
        sigmas: test noise levels on the 0..255 scale.
        num_test: test images to use (default: the whole test split).
        max_bytes: refuse to write a weights file larger than this.

    Returns:
        The path of the written ``.safetensors`` file.

    Raises:
        DataError: the run folder, its configuration or its weights are missing.
        ConfigError: the run is not a blind denoiser with a noise-level input.
        InvalidValueError: bad ``dtype`` or ``weights``, or the file would exceed ``max_bytes``.

    Example:
        >>> path = export_weights("runs/denoiser_natural", "natural")  # doctest: +SKIP
        >>> path.name  # doctest: +SKIP
        'denoiser_natural.safetensors'
    """
    import json

    import torch

    from deqir.storage import load_weights, save_weights
    from deqir.train.config import load_config
    from deqir.train.registry import build_model
    from deqir.train.sources import load_source

    _check_name(name)
    run = Path(run_dir)
    if weights not in ("best", "final"):
        raise InvalidValueError(f"weights must be 'best' or 'final'; got {weights!r}")
    if dtype not in ("auto", "float32", "float16"):
        raise InvalidValueError(f"dtype must be auto, float32 or float16; got {dtype!r}")
    cfg_path, w_path = run / "config.yaml", run / "weights" / f"{weights}.safetensors"
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise DataError(
                f"{p} not found: {run} is not a finished deqir training run (train one with "
                "`deqir train configs/denoiser_<name>.yaml`)"
            )
    cfg = load_config(cfg_path)
    if not cfg.is_denoising or cfg.physics.noise_sigma_range is None or cfg.method.name not in ("none", ""):
        raise ConfigError(
            f"{cfg_path}: a pretrained denoiser must be a blind denoising run (physics.operator: null, "
            "physics.noise_sigma_range set, no method)"
        )
    options = dict(cfg.model.options)
    if not options.get("noise_level_input"):
        raise ConfigError(f"{cfg_path}: set model.options.noise_level_input: true for a pretrained denoiser")
    net = load_weights(w_path, build_model(cfg.model.name, options)).eval()
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    n_params = sum(v.numel() for v in state.values() if v.is_floating_point())
    if dtype == "auto":
        dtype = "float32" if 4 * n_params + 4096 <= max_bytes else "float16"
    store = torch.float16 if dtype == "float16" else torch.float32
    if n_params * (2 if dtype == "float16" else 4) + 4096 > max_bytes:
        raise InvalidValueError(
            f"{n_params} parameters in {dtype} exceed {max_bytes} bytes: train a smaller model"
        )
    shipped = {k: v.to(store) if v.is_floating_point() else v for k, v in state.items()}
    rounded = copy.deepcopy(net)
    rounded.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in shipped.items()})

    d = cfg.data
    splits = load_source(
        d.source, d.image_size, d.num_train, d.num_val, d.num_test, cfg.experiment.seed, d.options
    )
    clean = torch.stack(splits["test"].images[: num_test or len(splits["test"])])
    test = _test_psnr(rounded, clean, sigmas, seed=0)
    test32 = _test_psnr(net, clean, sigmas, seed=0) if dtype != "float32" else dict(test)
    metrics_file, info_file = run / "metrics.json", run / "run.json"
    run_metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    run_info = json.loads(info_file.read_text()) if info_file.is_file() else {}
    lo, hi = cfg.physics.noise_sigma_range
    metrics = {
        "test_psnr": test,
        "test_psnr_float32": test32,
        "best_val_psnr": run_metrics.get("best_val_psnr"),
        "test_protocol": (
            f"{clean.shape[0]} test images of data source {d.source!r} {d.options or ''} at "
            f"{d.image_size}x{d.image_size}, Gaussian noise sigma/255 from add_test_noise(seed=0), "
            "output clipped to [0, 1], PSNR with peak 1, mean over images"
        ),
    }
    out = Path(out_dir) if out_dir is not None else weights_dir()
    path = out / f"denoiser_{name}.safetensors"
    extra = {
        "pretrained": name,
        "description": PRETRAINED[name],
        "architecture": {"model": cfg.model.name, "options": options},
        "parameters": int(n_params),
        "dtype": dtype,
        "sigma_range": [float(lo), float(hi)],
        "sigma_scale": "standard deviation on the [0, 1] image scale; call net(noisy, sigma)",
        "training": {
            "data": {
                "source": d.source,
                "options": d.options,
                "image_size": d.image_size,
                "patch_size": d.patch_size,
                "batch_size": d.batch_size,
                "augment": d.augment,
                "seed": cfg.experiment.seed,
            },
            "steps": run_metrics.get("step"),
            "seconds_of_last_session": run_metrics.get("seconds"),
            "resumed_at_step": run_info.get("resumed_at_step"),
            "status": run_info.get("status"),
            "lr": cfg.train.lr,
            "schedule": cfg.train.schedule,
            "loss": cfg.train.loss,
            "run": str(run),
            "weights": weights,
        },
    }
    save_weights(shipped, path, config=cfg.to_dict(), metrics=metrics, extra=extra)
    size = path.stat().st_size
    if size > max_bytes:  # cannot happen with the estimate above, but never ship an oversize file
        path.unlink()
        raise InvalidValueError(f"{path} would take {size} bytes > {max_bytes}: train a smaller model")
    if not all(math.isfinite(v) for v in test.values()):
        raise CheckpointError(f"{path}: the exported denoiser gives non-finite test PSNR {test}")
    return path
