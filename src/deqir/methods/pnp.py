"""Plug-and-play and RED baselines with a pretrained denoiser ``D(x, σ)`` (METHODS.md §2).

With ``g(x) = ½‖Ax − y‖²``, ``L = ‖A‖²`` and a denoiser ``D`` (see
:mod:`deqir.methods.denoisers`):

* :func:`pnp_pgm`: PnP proximal gradient ``x⁺ = D(x − γ∇g(x), σ)``, ``γ = 1/L`` by default;
* :func:`pnp_admm`: PnP-ADMM (scaled form, ``γ = 1/ρ``)::

      x = argmin ½‖Ax − y‖² + 1/(2γ)‖x − (z − u)‖²   (prox_data, or CG on (I + γAᵀA))
      z⁺ = D(x + u, σ),   u⁺ = u + x − z⁺

  state ``(z, u)``; the reconstruction is ``z``; ``γ = 1/L`` by default;
* :func:`pnp_hqs`: PnP half-quadratic splitting with an annealed noise level (DPIR, Zhang et
  al. 2021)::

      x_k = argmin ½‖Ax − y‖² + 1/(2γ_k)‖x − z_{k−1}‖²,   z_k = D(x_k, σ_k)

  with ``σ_k`` falling geometrically from ``σ_start`` to ``σ`` over the iterations and
  ``γ_k = γ (σ_k/σ)²`` (DPIR's data weight ``∝ 1/σ_k²``: first a step that fits the data
  closely followed by a strong denoiser, at the end a weak denoiser and a data step that stays
  close to it); the reconstruction is ``z``;
* :func:`red_gd`: RED gradient descent ``x⁺ = x − γ(∇g(x) + τ(x − D(x, σ)))`` with
  ``γ = 1/(L + τ)`` and Nesterov acceleration by default;
* :func:`red_fp`: RED fixed-point iteration (Romano, Elad and Milanfar 2017): solve
  ``(AᵀA + τI) x⁺ = Aᵀy + τ D(x, σ)``, i.e. ``x⁺ = prox_{g/τ}(D(x, σ))``, with the operator's
  ``prox_data`` or warm-started CG.

Default hyperparameters (:data:`DEFAULT_PARAMS`; ``τ`` is given relative to ``L`` so one value
suits operators of any scale): denoiser ``σ = 0.02``, RED ``τ = 0.1 L``. Every method runs
through the engine's :func:`~deqir.solvers.fixed_point` under ``torch.no_grad()`` (no autograd
graph), a fixed number of iterations by default (``tol=0``) or until the relative residual falls
below ``tol``, and returns a :class:`~deqir.methods.common.BaselineResult` with the engine's
per-sample statistics.

Example:
    >>> import torch
    >>> from deqir.methods.pnp import pnp_pgm
    >>> from deqir.methods.denoisers import GaussianSmoother
    >>> from deqir.physics.registry import build_operator
    >>> op = build_operator("blur", image_size=32)
    >>> x = torch.zeros(1, 1, 32, 32); x[..., 8:24, 8:24] = 1
    >>> res = pnp_pgm(op, op.A(x), GaussianSmoother(), sigma=0.02, iterations=20)
    >>> res.x.shape, int(res.stats.iterations[0])
    (torch.Size([1, 1, 32, 32]), 20)
"""

from __future__ import annotations

import time
from typing import Any

import torch

from deqir.errors import InvalidValueError
from deqir.methods.common import (
    BaselineResult,
    Bounds,
    check_inputs,
    data_step,
    initial_estimate,
    lipschitz,
    make_solver,
    positive,
    project,
)
from deqir.methods.denoisers import as_denoiser

#: Documented defaults (``gamma``: multiple of ``1/L``; ``tau``: multiple of ``L``).
DEFAULT_PARAMS: dict[str, dict[str, float]] = {
    "pnp_pgm": {"sigma": 0.02, "gamma": 1.0},
    "pnp_admm": {"sigma": 0.02, "gamma": 1.0},
    "pnp_hqs": {"sigma": 0.01, "sigma_start": 0.2, "gamma": 8.0},
    "red_gd": {"sigma": 0.02, "tau": 0.1},
    "red_fp": {"sigma": 0.02, "tau": 0.1},
}
#: Default iteration counts.
DEFAULT_ITERATIONS: dict[str, int] = {
    "pnp_pgm": 50,
    "pnp_admm": 30,
    "pnp_hqs": 60,
    "red_gd": 100,
    "red_fp": 30,
}


def _prepare(op, y, x0, denoiser):
    check_inputs(op, y, x0)
    with torch.no_grad():
        x0 = initial_estimate(op, y) if x0 is None else x0.detach()
    real = y.real.dtype if y.is_complex() else y.dtype
    return x0.to(real), as_denoiser(denoiser), lipschitz(op)


def _finish(x, stats, params, method, t0) -> BaselineResult:
    return BaselineResult(x.detach(), stats, params, method, time.perf_counter() - t0)


def pnp_pgm(
    op,
    y: torch.Tensor,
    denoiser: Any,
    *,
    sigma: float = DEFAULT_PARAMS["pnp_pgm"]["sigma"],
    gamma: float | None = None,
    x0: torch.Tensor | None = None,
    iterations: int = DEFAULT_ITERATIONS["pnp_pgm"],
    tol: float = 0.0,
    accelerate: bool = False,
    bounds: Bounds = None,
) -> BaselineResult:
    """PnP proximal gradient ``x⁺ = D(x − γ∇g(x), σ)``.

    Args:
        op: the operator (real images).
        y: measurements.
        denoiser: a denoiser, module or name (see :func:`~deqir.methods.denoisers.as_denoiser`).
        sigma: the denoiser's noise level ``σ`` (images in [0, 1]).
        gamma: step (absolute); default ``1/‖A‖²``.
        x0: starting point (default :func:`~deqir.methods.common.initial_estimate`).
        iterations: most iterations (exactly this many with ``tol=0``).
        tol: relative residual tolerance (``0``: fixed count).
        accelerate: Nesterov momentum (the engine's :class:`~deqir.solvers.Nesterov`).
        bounds: ``(low, high)`` to clip every iterate to (``(0, 1)`` for images in [0, 1],
            ``(0, None)`` for nonnegativity; ``None``: no clipping). Clipping to [0, 1] keeps
            pretrained denoisers in the range they were trained on: without it a DnCNN can
            amplify out-of-range values and PnP diverges (single-coil MRI).

    Returns:
        :class:`~deqir.methods.common.BaselineResult`.

    Example:
        >>> import torch
        >>> from deqir.methods.denoisers import GaussianSmoother
        >>> from deqir.physics.registry import build_operator
        >>> op = build_operator("mri_single", image_size=32)
        >>> res = pnp_pgm(op, op.A(torch.rand(1, 1, 32, 32)), GaussianSmoother(), iterations=5)
        >>> round(res.params["gamma"], 4)
        1.0
    """
    from deqir.solvers import fixed_point

    t0 = time.perf_counter()
    x0, D, L = _prepare(op, y, x0, denoiser)
    gamma = 1.0 / L if gamma is None else positive("gamma", gamma)
    sigma = positive("sigma", sigma)

    def step(x: torch.Tensor) -> torch.Tensor:
        return project(D(x - gamma * op.data_grad(x, y), sigma), bounds)

    with torch.no_grad():
        sol = fixed_point(step, x0, solver=make_solver(iterations, tol, accelerate))
    return _finish(sol.value, sol.stats, {"sigma": sigma, "gamma": gamma}, "pnp_pgm", t0)


def pnp_admm(
    op,
    y: torch.Tensor,
    denoiser: Any,
    *,
    sigma: float = DEFAULT_PARAMS["pnp_admm"]["sigma"],
    gamma: float | None = None,
    data_step_mode: str = "auto",
    cg_iter: int = 20,
    cg_tol: float = 1e-5,
    x0: torch.Tensor | None = None,
    iterations: int = DEFAULT_ITERATIONS["pnp_admm"],
    tol: float = 0.0,
    bounds: Bounds = None,
) -> BaselineResult:
    """PnP-ADMM with a closed-form or conjugate-gradient data step (see the module docstring).

    Args:
        op, y, denoiser, sigma, x0, iterations, tol, bounds: as in :func:`pnp_pgm`.
        gamma: the data step's ``γ = 1/ρ`` (absolute); default ``1/‖A‖²``.
        data_step_mode: ``"auto"`` (the operator's ``prox_data`` when it has one, else CG),
            ``"prox"`` or ``"cg"`` (CG on ``(I + γAᵀA)``, warm-started at the previous ``x``).
        cg_iter, cg_tol: CG settings.

    Returns:
        :class:`~deqir.methods.common.BaselineResult` whose ``x`` is the denoised variable ``z``.

    Example:
        >>> import torch
        >>> from deqir.methods.denoisers import GaussianSmoother
        >>> from deqir.physics.registry import build_operator
        >>> op = build_operator("blur", image_size=32)
        >>> y = op.A(torch.rand(1, 1, 32, 32))
        >>> a = pnp_admm(op, y, GaussianSmoother(), iterations=5, data_step_mode="prox")
        >>> b = pnp_admm(op, y, GaussianSmoother(), iterations=5, data_step_mode="cg", cg_tol=1e-8)
        >>> bool((a.x - b.x).abs().max() < 1e-3)
        True
    """
    from deqir.solvers import fixed_point

    t0 = time.perf_counter()
    x0, D, L = _prepare(op, y, x0, denoiser)
    gamma = 1.0 / L if gamma is None else positive("gamma", gamma)
    sigma = positive("sigma", sigma)

    def step(state):
        z, u = state
        x = data_step(op, z - u, y, gamma, data_step_mode, x0=z, cg_tol=cg_tol, cg_iter=cg_iter)
        z_new = project(D(x + u, sigma), bounds)
        return z_new, u + x - z_new

    with torch.no_grad():
        # validate the data-step mode once, before iterating
        data_step(op, x0, y, gamma, data_step_mode, cg_iter=1)
        sol = fixed_point(step, (x0, torch.zeros_like(x0)), solver=make_solver(iterations, tol, False))
    params = {"sigma": sigma, "gamma": gamma, "data_step": data_step_mode}
    return _finish(sol.value[0], sol.stats, params, "pnp_admm", t0)


def pnp_hqs(
    op,
    y: torch.Tensor,
    denoiser: Any,
    *,
    sigma: float = DEFAULT_PARAMS["pnp_hqs"]["sigma"],
    sigma_start: float = DEFAULT_PARAMS["pnp_hqs"]["sigma_start"],
    gamma: float | None = None,
    data_step_mode: str = "auto",
    cg_iter: int = 20,
    cg_tol: float = 1e-5,
    x0: torch.Tensor | None = None,
    iterations: int = DEFAULT_ITERATIONS["pnp_hqs"],
    tol: float = 0.0,
    bounds: Bounds = None,
) -> BaselineResult:
    """PnP half-quadratic splitting with an annealed noise level (DPIR; see the module docstring).

    The map changes at every iteration (its ``σ_k`` and ``γ_k``), so this is a schedule of
    ``iterations`` steps run by the engine, not a search for a fixed point: with ``tol > 0`` the
    engine may stop it before the schedule ends (``params["sigma_reached"]`` says where).

    Args:
        op, y, denoiser, x0, iterations, tol, bounds: as in :func:`pnp_pgm`.
        sigma: the denoiser's noise level at the last iteration.
        sigma_start: its noise level at the first iteration (at least ``sigma``; DPIR: 49/255).
        gamma: the data step's ``γ`` at the last iteration (absolute); default ``8/‖A‖²``.
        data_step_mode, cg_iter, cg_tol: how the data step is solved (see :func:`pnp_admm`).

    Returns:
        :class:`~deqir.methods.common.BaselineResult` whose ``x`` is the denoised variable ``z``.

    Example:
        >>> import torch
        >>> from deqir.methods.denoisers import GaussianSmoother
        >>> from deqir.physics.registry import build_operator
        >>> op = build_operator("blur", image_size=32)
        >>> res = pnp_hqs(op, op.A(torch.rand(1, 1, 32, 32)), GaussianSmoother(), iterations=8)
        >>> [round(s, 4) for s in res.params["sigma_schedule"][:: 7]]
        [0.2, 0.01]
    """
    from deqir.solvers import fixed_point

    t0 = time.perf_counter()
    x0, D, L = _prepare(op, y, x0, denoiser)
    gamma = DEFAULT_PARAMS["pnp_hqs"]["gamma"] / L if gamma is None else positive("gamma", gamma)
    sigma, sigma_start = positive("sigma", sigma), positive("sigma_start", sigma_start)
    if sigma_start < sigma:
        raise InvalidValueError(
            f"sigma_start ({sigma_start}) must be at least sigma ({sigma}): the noise level falls"
        )
    solver = make_solver(iterations, tol, accelerate=False)
    count = solver.max_iter
    sigmas = (
        [sigma_start * (sigma / sigma_start) ** (k / (count - 1)) for k in range(count)]
        if count > 1
        else [sigma]
    )
    calls = [0]

    def step(z: torch.Tensor) -> torch.Tensor:
        s_k = sigmas[min(calls[0], count - 1)]
        calls[0] += 1
        x = data_step(op, z, y, gamma * (s_k / sigma) ** 2, data_step_mode, cg_tol=cg_tol, cg_iter=cg_iter)
        return project(D(x, s_k), bounds)

    with torch.no_grad():
        data_step(op, x0, y, gamma, data_step_mode, cg_iter=1)  # validate the mode once
        sol = fixed_point(step, x0, solver=solver)
    params = {
        "sigma": sigma,
        "sigma_start": sigma_start,
        "gamma": gamma,
        "data_step": data_step_mode,
        "sigma_schedule": sigmas,
        "sigma_reached": sigmas[min(calls[0], count) - 1],
    }
    return _finish(sol.value, sol.stats, params, "pnp_hqs", t0)


def red_gd(
    op,
    y: torch.Tensor,
    denoiser: Any,
    *,
    sigma: float = DEFAULT_PARAMS["red_gd"]["sigma"],
    tau: float | None = None,
    gamma: float | None = None,
    x0: torch.Tensor | None = None,
    iterations: int = DEFAULT_ITERATIONS["red_gd"],
    tol: float = 0.0,
    accelerate: bool = True,
    bounds: Bounds = None,
) -> BaselineResult:
    """RED gradient descent ``x⁺ = x − γ(∇g(x) + τ(x − D(x, σ)))``.

    Args:
        op, y, denoiser, sigma, x0, iterations, tol, bounds: as in :func:`pnp_pgm`.
        tau: regularisation weight ``τ`` (absolute); default ``0.1 ‖A‖²``.
        gamma: step (absolute); default ``1/(‖A‖² + τ)``.
        accelerate: Nesterov momentum (default on, as ODER's test-time solver).

    Returns:
        :class:`~deqir.methods.common.BaselineResult`.

    Example:
        >>> import torch
        >>> from deqir.methods.denoisers import GaussianSmoother
        >>> from deqir.physics.registry import build_operator
        >>> op = build_operator("blur", image_size=32)
        >>> res = red_gd(op, op.A(torch.rand(1, 1, 32, 32)), GaussianSmoother(), iterations=5)
        >>> round(res.params["gamma"], 4)
        0.9091
    """
    from deqir.solvers import fixed_point

    t0 = time.perf_counter()
    x0, D, L = _prepare(op, y, x0, denoiser)
    tau = DEFAULT_PARAMS["red_gd"]["tau"] * L if tau is None else positive("tau", tau)
    gamma = 1.0 / (L + tau) if gamma is None else positive("gamma", gamma)
    sigma = positive("sigma", sigma)

    def step(x: torch.Tensor) -> torch.Tensor:
        return project(x - gamma * (op.data_grad(x, y) + tau * (x - D(x, sigma))), bounds)

    with torch.no_grad():
        sol = fixed_point(step, x0, solver=make_solver(iterations, tol, accelerate))
    return _finish(sol.value, sol.stats, {"sigma": sigma, "tau": tau, "gamma": gamma}, "red_gd", t0)


def red_fp(
    op,
    y: torch.Tensor,
    denoiser: Any,
    *,
    sigma: float = DEFAULT_PARAMS["red_fp"]["sigma"],
    tau: float | None = None,
    data_step_mode: str = "auto",
    cg_iter: int = 10,
    cg_tol: float = 1e-5,
    x0: torch.Tensor | None = None,
    iterations: int = DEFAULT_ITERATIONS["red_fp"],
    tol: float = 0.0,
    bounds: Bounds = None,
) -> BaselineResult:
    """RED fixed-point iteration: ``(AᵀA + τI) x⁺ = Aᵀy + τ D(x, σ)``.

    Args:
        op, y, denoiser, sigma, x0, iterations, tol, bounds: as in :func:`pnp_pgm`.
        tau: regularisation weight ``τ`` (absolute); default ``0.1 ‖A‖²``.
        data_step_mode, cg_iter, cg_tol: how the linear system is solved (see :func:`pnp_admm`);
            CG is warm-started at the current ``x``.

    Returns:
        :class:`~deqir.methods.common.BaselineResult`.

    Example:
        >>> import torch
        >>> from deqir.methods.denoisers import GaussianSmoother
        >>> from deqir.physics.registry import build_operator
        >>> op = build_operator("ct", image_size=32)
        >>> res = red_fp(op, op.A(torch.rand(1, 1, 32, 32)), GaussianSmoother(), iterations=3)
        >>> res.params["data_step"]
        'auto'
    """
    from deqir.solvers import fixed_point

    t0 = time.perf_counter()
    x0, D, L = _prepare(op, y, x0, denoiser)
    tau = DEFAULT_PARAMS["red_fp"]["tau"] * L if tau is None else positive("tau", tau)
    sigma = positive("sigma", sigma)

    def step(x: torch.Tensor) -> torch.Tensor:
        z = D(x, sigma)
        return project(
            data_step(op, z, y, 1.0 / tau, data_step_mode, x0=x, cg_tol=cg_tol, cg_iter=cg_iter), bounds
        )

    with torch.no_grad():
        data_step(op, x0, y, 1.0 / tau, data_step_mode, cg_iter=1)
        sol = fixed_point(step, x0, solver=make_solver(iterations, tol, False))
    params = {"sigma": sigma, "tau": tau, "data_step": data_step_mode}
    return _finish(sol.value, sol.stats, params, "red_fp", t0)
