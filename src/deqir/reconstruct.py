"""Reconstruct one image file (simulating its measurements) or one measurement file.

What ``deqir reconstruct`` runs. Methods (``--method``): the classical ``tikhonov``, ``fbp``,
``zero_filled`` and the iterative baselines ``tv``, ``pnp_pgm``, ``pnp_admm``, ``pnp_hqs``,
``red_gd``, ``red_fp`` (:func:`deqir.methods.baselines.run_baseline`, iterates clipped to [0, 1];
hyperparameters and iterations as the baselines bench tuned them for ``deblur``, ``ct``, ``mri``
and ``mri_multi`` (:data:`TUNED`), else the generic defaults; ``params=`` / ``--param`` override
them); the PnP/RED methods use ``--denoiser`` (``natural``, ``ct``, ``mri``,
``scico17``; default: the task's domain, :data:`DEFAULT_DENOISERS`).

With ``image=`` the image is read (PNG/TIFF/JPG, DICOM, NIfTI middle slice, fastMRI ``.h5``),
made square, measured through the task's operator with Gaussian
noise, and reconstructed; metrics against the image are reported. With ``measurements=`` (a
``.npy`` file holding one measurement ``measurement_shape`` or a batch of them) there is no ground
truth and only the reconstruction is written.

Outputs in ``out``: ``reconstruction.png`` (figure), ``reconstruction.npy``, ``measurements.npy``
(simulated ones), ``metrics.json`` and ``metrics.md`` (with a ground truth).

Example:
    >>> from deqir.reconstruct import reconstruct
    >>> summary = reconstruct("ct", image="slice.dcm", out="out/ct")  # doctest: +SKIP
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deqir.errors import DataError, InvalidValueError, ShapeError, unknown_name_message

#: The denoiser PnP/RED methods use by default for each task.
DEFAULT_DENOISERS: dict[str, str] = {
    "deblur": "natural",
    "motion_deblur": "natural",
    "superres": "natural",
    "ct": "ct",
    "mri": "mri",
    "mri_radial": "mri",
    "mri_multi": "mri",
}


#: The hyperparameters and iterations ``deqir bench baselines`` chose on the validation split
#: (128², the task's default noise, the task's shipped denoiser; the ``params`` column of
#: ``results/baselines.json``, run at 0fef9d4). :func:`reconstruct` starts from them for these
#: tasks when the method runs with the task's own denoiser (or is TV); ``params`` and
#: ``iterations`` override them. Other tasks and denoisers get the methods' generic defaults
#: (:data:`deqir.methods.baselines.DEFAULTS`). A test checks this table against the results file.
TUNED: dict[str, dict[str, tuple[dict[str, float], int]]] = {
    "deblur": {
        "tv": ({"lam": 1e-3}, 200),
        "pnp_pgm": ({"sigma": 0.02, "gamma": 1.9}, 100),
        "pnp_admm": ({"sigma": 0.06, "gamma": 64.0}, 60),
        "pnp_hqs": ({"sigma": 0.02, "sigma_start": 0.2, "gamma": 8.0}, 60),
        "red_gd": ({"sigma": 0.02, "tau": 0.1}, 100),
        "red_fp": ({"sigma": 0.02, "tau": 0.1}, 30),
    },
    "ct": {
        "tv": ({"lam": 3e-5}, 200),
        "pnp_pgm": ({"sigma": 0.005, "gamma": 1.9}, 100),
        "pnp_admm": ({"sigma": 0.015, "gamma": 256.0}, 60),
        "pnp_hqs": ({"sigma": 0.005, "sigma_start": 0.2, "gamma": 128.0}, 60),
        "red_gd": ({"sigma": 0.01, "tau": 0.01}, 100),
        "red_fp": ({"sigma": 0.01, "tau": 0.01}, 30),
    },
    "mri": {  # the bench's mri_single
        "tv": ({"lam": 3e-5}, 200),
        "pnp_pgm": ({"sigma": 0.01, "gamma": 1.9}, 100),
        "pnp_admm": ({"sigma": 0.01, "gamma": 16.0}, 60),
        "pnp_hqs": ({"sigma": 0.0025, "sigma_start": 0.2, "gamma": 32.0}, 60),
        "red_gd": ({"sigma": 0.04, "tau": 0.01}, 100),
        "red_fp": ({"sigma": 0.04, "tau": 0.001}, 30),
    },
    "mri_multi": {
        "tv": ({"lam": 3e-5}, 200),
        "pnp_pgm": ({"sigma": 0.005, "gamma": 1.9}, 100),
        "pnp_admm": ({"sigma": 0.005, "gamma": 64.0}, 60),
        "pnp_hqs": ({"sigma": 0.0025, "sigma_start": 0.2, "gamma": 32.0}, 60),
        "red_gd": ({"sigma": 0.01, "tau": 0.01}, 100),
        "red_fp": ({"sigma": 0.01, "tau": 0.01}, 30),
    },
}


@dataclass(frozen=True)
class ReconstructionTask:
    """A task name mapped to an operator of the registry, its default method and image fit."""

    operator: str
    default_method: str
    fit: str
    noise_sigma: float | None = None
    noise_snr_db: float | None = None


#: Tasks of ``deqir reconstruct``.
TASKS: dict[str, ReconstructionTask] = {
    "deblur": ReconstructionTask("blur", "tikhonov", "crop", noise_sigma=0.01),
    "motion_deblur": ReconstructionTask("motion_blur", "tikhonov", "crop", noise_sigma=0.01),
    "superres": ReconstructionTask("superres", "tikhonov", "crop", noise_sigma=0.01),
    "ct": ReconstructionTask("ct", "fbp", "pad", noise_snr_db=50.0),
    "mri": ReconstructionTask("mri_single", "zero_filled", "pad", noise_snr_db=40.0),
    "mri_radial": ReconstructionTask("mri_radial", "zero_filled", "pad", noise_snr_db=40.0),
    "mri_multi": ReconstructionTask("mri_multi", "zero_filled", "pad", noise_snr_db=40.0),
}


def _task(name: str) -> ReconstructionTask:
    if name not in TASKS:
        raise InvalidValueError(unknown_name_message("task", name, list(TASKS)))
    return TASKS[name]


def _read_measurements(path: Path, op) -> torch.Tensor:
    if not path.exists():
        raise DataError(f"measurement file {path} does not exist")
    if path.suffix != ".npy":
        raise DataError(f"measurement file {path}: expected a .npy array (got '{path.suffix}')")
    try:
        a = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as err:
        raise DataError(f"measurement file {path} is not a readable .npy array: {err}") from None
    want = tuple(op.measurement_shape())
    if tuple(a.shape) == want:
        a = a[None]
    if tuple(a.shape[1:]) != want:
        raise ShapeError(
            f"measurement file {path} has shape {tuple(a.shape)}; this task at this --size expects "
            f"{want} or (batch, {', '.join(map(str, want))}). Change --size or --task."
        )
    y = torch.from_numpy(np.ascontiguousarray(a))
    y = y.to(torch.complex64) if y.is_complex() else y.float()
    if op.complex_measurements and not y.is_complex():
        raise InvalidValueError(f"measurement file {path} is real; task needs complex k-space data")
    if not bool(torch.isfinite(y).all()):
        raise InvalidValueError(f"measurement file {path} holds NaN or inf values; clean it first")
    return y


def _read_image(path: Path, size: int, fit: str) -> torch.Tensor:
    from deqir.data.readers import read_path
    from deqir.data.splits import fit_image

    images = read_path(path)
    if not images:
        raise DataError(f"{path} holds no image")
    image = images[len(images) // 2]  # the middle slice of a volume, the only image of a file
    x = fit_image(image, size, fit)
    return torch.from_numpy(np.ascontiguousarray(x)).float()[None, None]


def reconstruct(
    task: str,
    out: str | Path,
    image: str | Path | None = None,
    measurements: str | Path | None = None,
    method: str | None = None,
    size: int = 256,
    noise_sigma: float | None = None,
    noise_snr_db: float | None = None,
    seed: int = 0,
    denoiser: Any = None,
    iterations: int | None = None,
    params: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Reconstruct an image file (simulated measurements) or a ``.npy`` measurement file.

    Args:
        task: one of :data:`TASKS`.
        out: output folder.
        image: image file to measure (give exactly one of ``image`` and ``measurements``).
        measurements: ``.npy`` measurements of the task's operator at ``size``.
        method: reconstruction method of :data:`deqir.methods.baselines.BASELINE_METHODS`
            (default: the task's classical one).
        size: image side in pixels.
        noise_sigma, noise_snr_db: noise of simulated measurements (default: the task's).
        seed: seed of the noise.
        denoiser: for ``pnp_pgm``, ``pnp_admm``, ``pnp_hqs``, ``red_gd``, ``red_fp``: a name (``natural``,
            ``ct``, ``mri``, ``scico17``), a torch module ``D(x, sigma)`` or a callable; default
            the task's (:data:`DEFAULT_DENOISERS`).
        iterations: iterations of an iterative method (default: :data:`TUNED`'s for the task,
            else the method's).
        params: the method's hyperparameters (default: :data:`TUNED`'s for the task), scale-free as in
            :func:`~deqir.methods.baselines.run_baseline` and in the ``params`` column of
            ``results/baselines.json`` (``gamma`` in units of ``1/‖A‖²``, ``tau`` and ``lam`` of
            ``‖A‖²``); unset ones keep their defaults, unknown ones raise.

    Returns:
        ``{"task", "method", "files": [...], "metrics": {...} or None, "denoiser", "params",
        "iterations"}``.

    Raises:
        InvalidValueError, DataError, ShapeError: bad arguments or files, with what to change.
    """
    from deqir.figures import Panel, as_picture, panel_grid
    from deqir.methods.baselines import BASELINE_METHODS, DENOISER_METHODS, run_baseline
    from deqir.methods.denoisers import DENOISER_NAMES, as_denoiser, denoiser_label
    from deqir.metrics import compute_metrics
    from deqir.physics.noise import GaussianNoise
    from deqir.physics.registry import build_operator

    spec = _task(task)
    if (image is None) == (measurements is None):
        raise InvalidValueError(
            "give exactly one of --input (an image file) and --measurements (a .npy file)"
        )
    if int(size) < 16:
        raise InvalidValueError(f"--size must be at least 16 pixels; got {size}")
    method = method or spec.default_method
    if method not in BASELINE_METHODS:
        raise InvalidValueError(unknown_name_message("method", method, BASELINE_METHODS))
    D = None
    # the tuned values hold for TV and for PnP/RED with the task's own denoiser only
    own_denoiser = denoiser is None or (isinstance(denoiser, str) and denoiser == DEFAULT_DENOISERS[task])
    tuned = method not in DENOISER_METHODS or own_denoiser
    tuned_params, tuned_iterations = TUNED.get(task, {}).get(method, ({}, None)) if tuned else ({}, None)
    params = {**tuned_params, **(params or {})}
    iterations = tuned_iterations if iterations is None else iterations
    if method in DENOISER_METHODS:
        denoiser = DEFAULT_DENOISERS[task] if denoiser is None else denoiser
        if isinstance(denoiser, str) and denoiser not in DENOISER_NAMES:
            raise InvalidValueError(unknown_name_message("denoiser", denoiser, list(DENOISER_NAMES)))
        D = as_denoiser(denoiser)
    op = build_operator(spec.operator, image_size=int(size))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    truth = None
    sigma = noise_sigma
    if image is not None:
        truth = _read_image(Path(image), int(size), spec.fit)
        if noise_sigma is None and noise_snr_db is None:
            noise_sigma, noise_snr_db = spec.noise_sigma, spec.noise_snr_db
        clean = op.A(truth)
        y = GaussianNoise(sigma=noise_sigma, snr_db=None if noise_sigma is not None else noise_snr_db)(
            clean, generator=torch.Generator().manual_seed(seed)
        )
        sigma = float((y - clean).abs().pow(2).mean().sqrt())
        np.save(out / "measurements.npy", y.numpy())
        files.append(out / "measurements.npy")
    else:
        y = _read_measurements(Path(measurements), op)
    result = run_baseline(op, y, method, denoiser=D, params=params, iterations=iterations, noise_sigma=sigma)
    x = result.x.clamp(0, 1)
    np.save(out / "reconstruction.npy", x.numpy())
    files.append(out / "reconstruction.npy")
    metrics = None
    panels = [Panel(as_picture(y), "measurements"), Panel(as_picture(x), method, limits=(0, 1))]
    if truth is not None:
        values = compute_metrics(x, truth)
        metrics = {k: round(float(values[k]), 4) for k in ("psnr", "snr", "ssim")}
        panels[1].title = f"{method}\nPSNR {metrics['psnr']:.2f} dB, SSIM {metrics['ssim']:.3f}"
        panels = [Panel(as_picture(truth), "ground truth", limits=(0, 1)), *panels]
        panels.append(Panel(as_picture((x - truth).abs()), "|error|", cmap="magma", limits=(0, 0.25)))
        record = {
            "task": task,
            "method": method,
            "image": str(image),
            "size": int(size),
            "denoiser": None if D is None else denoiser_label(denoiser),
            "params": {k: v for k, v in result.params.items() if isinstance(v, int | float | str)},
            "iterations": result.iterations,
            "seconds": round(result.seconds, 3),
            **metrics,
        }
        (out / "metrics.json").write_text(json.dumps(record, indent=2))
        (out / "metrics.md").write_text(
            "| task | method | PSNR | SNR | SSIM |\n|---|---|---:|---:|---:|\n"
            f"| {task} | {method} | {metrics['psnr']:.2f} | {metrics['snr']:.2f} | {metrics['ssim']:.3f} |\n"
        )
        files += [out / "metrics.json", out / "metrics.md"]
    files.append(panel_grid(out / "reconstruction.png", [panels]))
    return {
        "task": task,
        "method": method,
        "files": [str(f) for f in files],
        "metrics": metrics,
        "denoiser": None if D is None else denoiser_label(denoiser),
        "params": result.params,
        "iterations": result.iterations,
    }
