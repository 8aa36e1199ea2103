"""Every baseline by name, with scale-free hyperparameters and a validation-set tuning helper.

Methods (:data:`BASELINE_METHODS`): the classical ``tikhonov``, ``fbp``, ``zero_filled``
(:mod:`deqir.methods.classical`), ``tv`` (:mod:`deqir.methods.tv`) and the denoiser-based
``pnp_pgm``, ``pnp_admm``, ``pnp_hqs``, ``red_gd``, ``red_fp`` (:mod:`deqir.methods.pnp`).

Hyperparameters given to :func:`run_baseline` are *scale-free*, so one value suits an operator
of any norm (CT's ``‖A‖²`` is ~10⁴, blur's 1): with ``L = ‖A‖²``,

===============  ==========================================  ==================================
name             meaning                                     default (:data:`DEFAULTS`)
===============  ==========================================  ==================================
``lam``          TV weight ``λ / L``                         1e-3
``sigma``        the denoiser's noise level on [0, 1]        0.01 (PnP; HQS: the last one),
                 images                                      0.02 (RED)
``sigma_start``  HQS's first noise level                     0.2
``gamma``        step ``γ·L`` (PnP-PGM step, ADMM's          1 (PGM), 16 (ADMM), 8 (HQS)
                 ``1/ρ``, HQS's last data step)
``tau``          RED weight ``τ / L``                        0.01
===============  ==========================================  ==================================

:func:`tune_hyperparameters` picks them by grid search (:data:`DEFAULT_GRIDS`) on images the
caller provides: give it the *validation* split, never the test split.

Example:
    >>> import torch
    >>> from deqir.methods.baselines import run_baseline
    >>> from deqir.methods.denoisers import GaussianSmoother
    >>> from deqir.physics.registry import build_operator
    >>> op = build_operator("blur", image_size=32)
    >>> x = torch.zeros(1, 1, 32, 32); x[..., 8:24, 8:24] = 1
    >>> res = run_baseline(op, op.A(x), "pnp_pgm", denoiser=GaussianSmoother(), iterations=10)
    >>> res.method, res.x.shape
    ('pnp_pgm', torch.Size([1, 1, 32, 32]))
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from deqir.errors import InvalidValueError, unknown_name_message
from deqir.methods.common import BaselineResult, check_inputs, lipschitz, project

CLASSICAL = ("tikhonov", "fbp", "zero_filled")
DENOISER_METHODS = ("pnp_pgm", "pnp_admm", "pnp_hqs", "red_gd", "red_fp")
#: Every method :func:`run_baseline` accepts.
BASELINE_METHODS = (*CLASSICAL, "tv", *DENOISER_METHODS)

#: Scale-free defaults per method (see the module docstring), from tuning at 64² with scico's
#: DnCNN on the validation splits of the bench's tasks.
DEFAULTS: dict[str, dict[str, float]] = {
    "tv": {"lam": 1e-3},
    "pnp_pgm": {"sigma": 0.01, "gamma": 1.0},
    "pnp_admm": {"sigma": 0.01, "gamma": 16.0},
    "pnp_hqs": {"sigma": 0.01, "sigma_start": 0.2, "gamma": 8.0},
    "red_gd": {"sigma": 0.02, "tau": 0.01},
    "red_fp": {"sigma": 0.02, "tau": 0.01},
}
#: Default iteration counts.
ITERATIONS: dict[str, int] = {
    "tv": 200,
    "pnp_pgm": 50,
    "pnp_admm": 30,
    "pnp_hqs": 60,
    "red_gd": 100,
    "red_fp": 30,
}
#: Default tuning grids (scale-free values). PnP-PGM's ``gamma`` stays below 2 (convergence of
#: the gradient step).
DEFAULT_GRIDS: dict[str, dict[str, list[float]]] = {
    "tv": {"lam": [1e-6, 3e-6, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2]},
    "pnp_pgm": {"gamma": [1.0, 1.9], "sigma": [0.005, 0.01, 0.02]},
    "pnp_admm": {"gamma": [4.0, 16.0, 64.0], "sigma": [0.0025, 0.005, 0.01, 0.02]},
    "pnp_hqs": {"gamma": [8.0, 32.0, 128.0], "sigma": [0.0025, 0.005, 0.01, 0.02]},
    "red_gd": {"tau": [0.003, 0.01, 0.03, 0.1], "sigma": [0.01, 0.02, 0.04]},
    "red_fp": {"tau": [0.003, 0.01, 0.03, 0.1], "sigma": [0.01, 0.02, 0.04]},
}
#: Search strategies of :func:`tune_hyperparameters`.
STRATEGIES = ("coordinate", "grid")


def _check_method(method: str) -> None:
    if method not in BASELINE_METHODS:
        raise InvalidValueError(unknown_name_message("method", method, BASELINE_METHODS))


def default_params(method: str) -> dict[str, float]:
    """The scale-free defaults of ``method`` (empty for the classical methods).

    Example:
        >>> default_params("red_gd")
        {'sigma': 0.02, 'tau': 0.01}
    """
    _check_method(method)
    return dict(DEFAULTS.get(method, {}))


def run_baseline(
    op,
    y: torch.Tensor,
    method: str,
    *,
    denoiser: Any = None,
    params: dict[str, float] | None = None,
    x0: torch.Tensor | None = None,
    iterations: int | None = None,
    tol: float = 0.0,
    bounds: tuple[float | None, float | None] | None = (0.0, 1.0),
    noise_sigma: float | None = None,
) -> BaselineResult:
    """Reconstruct ``y`` with baseline ``method``.

    Args:
        op: the measurement operator (real images).
        y: measurements.
        method: one of :data:`BASELINE_METHODS`.
        denoiser: for PnP/RED: a denoiser ``D(x, sigma)``, a module, a callable or a name
            (``"natural"``, ``"ct"``, ``"mri"``, ``"scico17"``, ``"scico17M"``); see
            :func:`~deqir.methods.denoisers.as_denoiser`.
        params: scale-free hyperparameters overriding :data:`DEFAULTS` (unknown keys raise).
        x0: starting point (default :func:`~deqir.methods.common.initial_estimate`).
        iterations: most iterations (default :data:`ITERATIONS`).
        tol: engine tolerance (``0``: run exactly ``iterations``).
        bounds: clip the iterates (and the classical results) to ``(low, high)``; default
            ``(0, 1)``, the range of the images (and of the denoisers' training data).
        noise_sigma: noise standard deviation per measurement entry, for ``tikhonov``'s
            discrepancy principle (estimated from ``y`` when ``None``).

    Returns:
        :class:`~deqir.methods.common.BaselineResult` (``stats`` is ``None`` for classical ones).

    Raises:
        InvalidValueError: unknown method or parameter, a denoiser-based method without a
            denoiser, a method the operator cannot run, NaN in ``y``.

    Example:
        >>> import torch
        >>> from deqir.physics.registry import build_operator
        >>> op = build_operator("ct", image_size=32)
        >>> run_baseline(op, op.A(torch.rand(1, 1, 32, 32)), "fbp").x.shape
        torch.Size([1, 1, 32, 32])
    """
    _check_method(method)
    check_inputs(op, y, x0)
    given = dict(params or {})
    allowed = DEFAULTS.get(method, {})
    unknown = [k for k in given if k not in allowed]
    if unknown:
        valid = ", ".join(allowed) or "none"
        raise InvalidValueError(f"unknown parameter(s) {unknown} for method '{method}'; valid: {valid}")
    p = {**allowed, **given}
    if method in CLASSICAL:
        from deqir.methods.classical import classical_reconstruction

        t0 = time.perf_counter()
        x = classical_reconstruction(op, y, method, noise_sigma=noise_sigma)
        x = project(x, bounds)
        return BaselineResult(x, None, {}, method, time.perf_counter() - t0)
    iters = int(ITERATIONS[method] if iterations is None else iterations)
    L = lipschitz(op)
    if method == "tv":
        from deqir.methods.tv import tv_reconstruction

        res = tv_reconstruction(op, y, p["lam"] * L, x0=x0, iterations=iters, tol=tol, bounds=bounds)
    else:
        if denoiser is None:
            raise InvalidValueError(
                f"method '{method}' needs a denoiser: pass denoiser= a name (natural, ct, mri, "
                "scico17), a torch module D(x, sigma) or a callable"
            )
        from deqir.methods import pnp

        common = {"x0": x0, "iterations": iters, "tol": tol, "bounds": bounds, "sigma": p["sigma"]}
        if method in ("pnp_pgm", "pnp_admm"):
            res = getattr(pnp, method)(op, y, denoiser, gamma=p["gamma"] / L, **common)
        elif method == "pnp_hqs":
            res = pnp.pnp_hqs(op, y, denoiser, gamma=p["gamma"] / L, sigma_start=p["sigma_start"], **common)
        else:
            res = getattr(pnp, method)(op, y, denoiser, tau=p["tau"] * L, **common)
    res.params = {**res.params, **{f"{k}_rel": v for k, v in p.items()}}
    return res


@dataclass
class TuningResult:
    """What :func:`tune_hyperparameters` found.

    Attributes:
        method: the method tuned.
        best: the best scale-free parameters.
        best_score: their mean metric on the validation images.
        scores: every ``(params, score)`` tried, in grid order.
    """

    method: str
    best: dict[str, float]
    best_score: float
    scores: list[tuple[dict[str, float], float]] = field(default_factory=list)


def simulate(
    op, images: torch.Tensor, noise_sigma: float | None = None, noise_snr_db: float | None = None, seed=0
) -> torch.Tensor:
    """Noisy measurements ``A x + e`` of ``images`` with a seeded Gaussian noise draw.

    Example:
        >>> import torch
        >>> from deqir.physics.registry import build_operator
        >>> op = build_operator("blur", 16)
        >>> simulate(op, torch.rand(2, 1, 16, 16), noise_sigma=0.01).shape
        torch.Size([2, 1, 16, 16])
    """
    from deqir.physics.noise import GaussianNoise

    with torch.no_grad():
        clean = op.A(images)
        noise = GaussianNoise(sigma=noise_sigma, snr_db=None if noise_sigma is not None else noise_snr_db)
        return noise(clean, generator=torch.Generator().manual_seed(int(seed)))


def tune_hyperparameters(
    op,
    method: str,
    images: torch.Tensor,
    *,
    noise_sigma: float | None = None,
    noise_snr_db: float | None = None,
    denoiser: Any = None,
    grid: dict[str, Sequence[float]] | None = None,
    iterations: int | None = None,
    bounds: tuple[float | None, float | None] | None = (0.0, 1.0),
    seed: int = 0,
    strategy: str = "coordinate",
    on_run: Callable[[], None] | None = None,
) -> TuningResult:
    """Grid search of ``method``'s scale-free hyperparameters by mean PSNR on ``images``.

    Pass *validation* images, never test images: the chosen values are then applied unchanged
    to the test split. Measurements are simulated with a seeded noise draw (``noise_sigma`` per
    entry, or ``noise_snr_db`` input SNR); reconstructions are clipped to [0, 1] before scoring.

    Args:
        op: the operator.
        method: a method of :data:`BASELINE_METHODS` (classical ones have nothing to tune and
            return their score with empty parameters).
        images: validation images ``(B, C, H, W)`` in [0, 1].
        noise_sigma, noise_snr_db: the noise of the task.
        denoiser: for PnP/RED (resolved once).
        grid: ``{name: values}`` (default :data:`DEFAULT_GRIDS`); missing names keep defaults.
        iterations: iterations per run (default :data:`ITERATIONS`).
        bounds: as in :func:`run_baseline`.
        seed: seed of the noise draw.
        strategy: ``"coordinate"`` (default: one pass over the parameters in grid order, each
            scanned with the others at their best so far; cost = sum of the grid sizes) or
            ``"grid"`` (every combination; cost = their product).
        on_run: called after each reconstruction of the validation images (a progress bar's
            tick; a point the coordinate search already scored is not run again).

    Returns:
        :class:`TuningResult`.

    Example:
        >>> import torch
        >>> from deqir.physics.registry import build_operator
        >>> op = build_operator("blur", image_size=32)
        >>> x = torch.zeros(1, 1, 32, 32); x[..., 8:24, 8:24] = 1
        >>> res = tune_hyperparameters(op, "tv", x, noise_sigma=0.01, grid={"lam": [1e-3, 1e-2]},
        ...                            iterations=30)
        >>> sorted(res.best), len(res.scores)
        (['lam'], 2)
    """
    from deqir.methods.denoisers import as_denoiser
    from deqir.metrics import psnr

    _check_method(method)
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise InvalidValueError("images must be a (B, C, H, W) tensor of validation images")
    y = simulate(op, images, noise_sigma, noise_snr_db, seed)
    sigma_entry = float((y - op.A(images)).abs().pow(2).mean().sqrt())
    D = as_denoiser(denoiser) if method in DENOISER_METHODS else None
    space = dict(DEFAULT_GRIDS.get(method, {}) if grid is None else grid)
    unknown = [k for k in space if k not in DEFAULTS.get(method, {})]
    if unknown:
        raise InvalidValueError(f"unknown parameter(s) {unknown} in the grid of method '{method}'")
    if strategy not in STRATEGIES:
        raise InvalidValueError(unknown_name_message("tuning strategy", strategy, STRATEGIES))
    names = list(space)
    scores: list[tuple[dict[str, float], float]] = []
    seen: dict[tuple, float] = {}

    def score(p: dict[str, float]) -> float:
        key = tuple(sorted(p.items()))
        if key not in seen:
            res = run_baseline(
                op,
                y,
                method,
                denoiser=D,
                params=p,
                iterations=iterations,
                bounds=bounds,
                noise_sigma=sigma_entry,
            )
            seen[key] = float(psnr(res.x.clamp(0, 1), images).mean())
            scores.append((dict(p), seen[key]))
            if on_run is not None:
                on_run()
        return seen[key]

    if strategy == "grid" or len(names) <= 1:
        for values in itertools.product(*(space[n] for n in names)) if names else [()]:
            score(dict(zip(names, (float(v) for v in values), strict=True)))
    else:
        current = {k: float(v) for k, v in DEFAULTS[method].items()}
        for name in names:
            best_v = max((float(v) for v in space[name]), key=lambda v: score({**current, name: v}))
            current[name] = best_v
    best, best_score = max(scores, key=lambda s: s[1])
    return TuningResult(method, {**DEFAULTS.get(method, {}), **best}, best_score, scores)
