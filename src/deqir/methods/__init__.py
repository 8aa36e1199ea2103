"""Reconstruction methods composed from physics, priors and the engine.

Baselines: classical (Tikhonov, FBP, zero-filled), TV (:func:`tv_reconstruction`), PnP-PGM,
PnP-ADMM, RED-GD and RED-FP with a denoiser ``D(x, sigma)`` (:mod:`deqir.methods.pnp`), all by
name through :func:`run_baseline`, tuned on validation images by :func:`tune_hyperparameters`.
Learned: :class:`REDEquilibrium` (RED(DEQ), ODER, RED(Unfold)), :class:`ELDER`, :class:`LoopUnrolled`
(LU-deep, LU-shallow, LUSER with :class:`ShallowEquilibrium`) and :class:`ProxGradEquilibrium`
(Gilton's DEQ).

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
    # baselines
    "BASELINE_METHODS": "baselines",
    "DENOISER_METHODS": "baselines",
    "run_baseline": "baselines",
    "tune_hyperparameters": "baselines",
    "TuningResult": "baselines",
    "default_params": "baselines",
    "simulate": "baselines",
    "tv_reconstruction": "tv",
    "total_variation": "tv",
    "tv_objective": "tv",
    "prox_tv": "tv",
    "pnp_pgm": "pnp",
    "pnp_admm": "pnp",
    "pnp_hqs": "pnp",
    "red_gd": "pnp",
    "red_fp": "pnp",
    "BaselineResult": "common",
    "initial_estimate": "common",
    "data_step": "common",
    "conjugate_gradient": "common",
    "as_denoiser": "denoisers",
    "BlindDenoiser": "denoisers",
    "GaussianSmoother": "denoisers",
    "DENOISER_NAMES": "denoisers",
    # learned methods
    "REDEquilibrium": "equilibrium",
    "ELDER": "elder",
    "LoopUnrolled": "unrolling",
    "ShallowEquilibrium": "unrolling",
    "ProxGradEquilibrium": "unrolling",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
