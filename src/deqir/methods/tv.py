"""Isotropic total-variation reconstruction ``min_x ½‖Ax − y‖² + λ TV(x)`` for any operator.

``TV(x) = Σ_pixels sqrt((∂₁x)² + (∂₂x)²)`` with forward differences and Neumann boundaries
(the last difference is zero), summed over channels. Two algorithms, both run through the
engine's :func:`~deqir.solvers.fixed_point`:

* ``"fista"`` (default): accelerated proximal gradient (the engine's
  :class:`~deqir.solvers.Nesterov`) with step ``γ = 1/‖A‖²`` and an inner TV prox by the fast
  gradient projection of Beck and Teboulle (2009) on the dual (``inner_iterations`` steps, cold
  start). It converges fastest on ill-conditioned operators (sparse-view CT: 48 dB on ellipse
  phantoms after 200 iterations where PDHG with equal steps needs ~1000).
* ``"pdhg"``: Chambolle–Pock primal–dual iteration on ``K = [A; ∇]``. The problem is
  first rescaled by ``s = ‖A‖`` (``Ã = A/s``, ``ỹ = y/s``, ``λ̃ = λ/s²``: the same minimiser),
  so ``‖K‖² ≤ 1 + 8`` (the gradient's norm bound is √8) and the steps are
  ``τ = 0.99 r/3``, ``σ = 0.99/(3r)`` (``τσ‖K‖² < 1``) with the ratio ``r = pdhg_ratio``
  (default 10: larger primal steps converge 3-10x faster than ``r = 1`` on blur, CT and MRI).
  State: the tuple ``(x, p, q)`` of primal, data dual and gradient dual.

Optional bounds (``bounds=(0, None)``: nonnegativity; ``(0, 1)``: a box) constrain the primal
(inside the TV prox for FISTA, as Beck and Teboulle's constrained FGP does).

Example:
    >>> import torch
    >>> from deqir.methods.tv import tv_reconstruction, tv_objective
    >>> from deqir.physics.registry import build_operator
    >>> op = build_operator("blur", image_size=32)
    >>> x = torch.zeros(1, 1, 32, 32); x[..., 8:24, 8:24] = 1
    >>> y = op.A(x) + 0.01 * torch.randn(1, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    >>> res = tv_reconstruction(op, y, lam=0.01, iterations=100)
    >>> bool(tv_objective(op, y, res.x, 0.01) < tv_objective(op, y, y, 0.01))
    True
"""

from __future__ import annotations

import math
import time

import torch

from deqir.errors import InvalidValueError, unknown_name_message
from deqir.methods.common import (
    BaselineResult,
    Bounds,
    check_bounds,
    check_inputs,
    initial_estimate,
    lipschitz,
    make_solver,
    positive,
    project,
)

#: Algorithms of :func:`tv_reconstruction`.
TV_ALGORITHMS = ("fista", "pdhg")
#: Default TV weight relative to ``‖A‖²``: ``λ = DEFAULT_TV_WEIGHT * ‖A‖²``.
DEFAULT_TV_WEIGHT = 1e-3


def grad2d(x: torch.Tensor) -> torch.Tensor:
    """Forward differences ``(B, C, H, W) -> (B, 2, C, H, W)`` (Neumann: last difference 0).

    Example:
        >>> import torch
        >>> grad2d(torch.arange(4.0).reshape(1, 1, 1, 4))[0, 1, 0, 0].tolist()
        [1.0, 1.0, 1.0, 0.0]
    """
    d1 = torch.zeros_like(x)
    d2 = torch.zeros_like(x)
    d1[..., :-1, :] = x[..., 1:, :] - x[..., :-1, :]
    d2[..., :, :-1] = x[..., :, 1:] - x[..., :, :-1]
    return torch.stack([d1, d2], dim=1)


def grad2d_adjoint(q: torch.Tensor) -> torch.Tensor:
    """The exact adjoint ``∇ᵀ = −div`` of :func:`grad2d`: ``(B, 2, C, H, W) -> (B, C, H, W)``.

    Example:
        >>> import torch
        >>> x, q = torch.randn(2, 1, 5, 6), torch.randn(2, 2, 1, 5, 6)
        >>> bool(torch.isclose((grad2d(x) * q).sum(), (x * grad2d_adjoint(q)).sum(), atol=1e-5))
        True
    """
    q1, q2 = q[:, 0], q[:, 1]
    out = torch.zeros_like(q1)
    out[..., :-1, :] -= q1[..., :-1, :]
    out[..., 1:, :] += q1[..., :-1, :]
    out[..., :, :-1] -= q2[..., :, :-1]
    out[..., :, 1:] += q2[..., :, :-1]
    return out


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Isotropic TV per image: ``(B,)``.

    Example:
        >>> import torch
        >>> x = torch.zeros(1, 1, 4, 4); x[..., :, 2:] = 1
        >>> total_variation(x).tolist()
        [4.0]
    """
    g = grad2d(x)
    return g.pow(2).sum(1).sqrt().flatten(1).sum(1)


def tv_objective(op, y: torch.Tensor, x: torch.Tensor, lam: float) -> torch.Tensor:
    """``½‖Ax − y‖² + λ TV(x)`` per image: ``(B,)``.

    Example:
        >>> import torch
        >>> from deqir.physics.registry import build_operator
        >>> op = build_operator("blur", 16)
        >>> x = torch.rand(1, 1, 16, 16)
        >>> bool(tv_objective(op, op.A(x), x, 0.0).abs().max() < 1e-8)
        True
    """
    with torch.no_grad():
        r = op.A(x) - y
        r = torch.view_as_real(r) if r.is_complex() else r
        return 0.5 * r.flatten(1).pow(2).sum(1) + lam * total_variation(x)


def _project_ball(q: torch.Tensor, radius: float | torch.Tensor) -> torch.Tensor:
    """Project each pixel's 2-vector onto the ball of ``radius`` (isotropic TV dual)."""
    norm = q.pow(2).sum(1, keepdim=True).sqrt()
    return q / torch.clamp(norm / radius, min=1.0)


def prox_tv(v: torch.Tensor, alpha: float, iterations: int = 20, bounds: Bounds = None) -> torch.Tensor:
    """``argmin_u ½‖u − v‖² + α TV(u)`` (``u`` within ``bounds``), by FGP on the dual.

    Beck and Teboulle's fast gradient projection with step ``1/(8α)``, cold started.

    Example:
        >>> import torch
        >>> v = torch.rand(1, 1, 16, 16)
        >>> bool(total_variation(prox_tv(v, 0.1)) < total_variation(v))
        True
    """
    if alpha <= 0:
        return project(v, bounds)
    q = torch.zeros((v.shape[0], 2, *v.shape[1:]), dtype=v.dtype, device=v.device)
    r, t = q, 1.0
    step = 1.0 / (8.0 * alpha)

    def primal(dual: torch.Tensor) -> torch.Tensor:
        return project(v - alpha * grad2d_adjoint(dual), bounds)

    for _ in range(int(iterations)):
        q_new = _project_ball(r + step * grad2d(primal(r)), 1.0)
        t_new = (1 + math.sqrt(1 + 4 * t * t)) / 2
        r = q_new + ((t - 1) / t_new) * (q_new - q)
        q, t = q_new, t_new
    return primal(q)


def tv_reconstruction(
    op,
    y: torch.Tensor,
    lam: float | None = None,
    *,
    x0: torch.Tensor | None = None,
    algorithm: str = "fista",
    iterations: int = 200,
    tol: float = 0.0,
    bounds: Bounds = None,
    inner_iterations: int = 20,
    pdhg_ratio: float = 10.0,
) -> BaselineResult:
    """TV-regularised reconstruction ``argmin_x ½‖Ax − y‖² + λ TV(x)``.

    Args:
        op: any :class:`~deqir.physics.base.LinearOperator` with real images.
        y: measurements ``(B, *op.measurement_shape())``.
        lam: TV weight ``λ`` (absolute). Default ``DEFAULT_TV_WEIGHT * ‖A‖²``; tune it with
            :func:`deqir.methods.baselines.tune_hyperparameters`.
        x0: starting point (default :func:`~deqir.methods.common.initial_estimate`).
        algorithm: ``"fista"`` (default) or ``"pdhg"`` (Chambolle–Pock); see the module docstring.
        iterations: most iterations (exactly this many when ``tol == 0``).
        tol: relative residual tolerance of the engine (``0``: fixed count).
        bounds: ``(low, high)`` constraint on ``x`` (``(0, None)``: nonnegativity); ``None``: none.
        inner_iterations: TV-prox iterations per FISTA step.
        pdhg_ratio: primal/dual step ratio ``r`` of PDHG.

    Returns:
        :class:`~deqir.methods.common.BaselineResult` (``x``, engine ``stats``, ``params``).

    Raises:
        InvalidValueError: unknown algorithm, non-positive ``lam``, NaN in ``y``.

    Example:
        >>> import torch
        >>> from deqir.physics.registry import build_operator
        >>> op = build_operator("mri_single", image_size=32)
        >>> x = torch.zeros(1, 1, 32, 32); x[..., 8:24, 8:24] = 1
        >>> res = tv_reconstruction(op, op.A(x), lam=0.005, iterations=50, bounds=(0, None))
        >>> res.x.shape, int(res.stats.iterations[0])
        (torch.Size([1, 1, 32, 32]), 50)
    """
    from deqir.solvers import fixed_point

    if algorithm not in TV_ALGORITHMS:
        raise InvalidValueError(unknown_name_message("TV algorithm", algorithm, TV_ALGORITHMS))
    check_inputs(op, y, x0)
    if bounds is not None:
        check_bounds(bounds)
    t0 = time.perf_counter()
    L = lipschitz(op)
    lam = DEFAULT_TV_WEIGHT * L if lam is None else positive("lam", lam)
    with torch.no_grad():
        x0 = initial_estimate(op, y) if x0 is None else x0.detach()
        x0 = x0.to(_real(y.dtype))
        x0 = project(x0, bounds)
        if algorithm == "pdhg":
            sol = _pdhg(op, y, lam, x0, L, iterations, tol, bounds, positive("pdhg_ratio", pdhg_ratio))
            x = sol.value[0]
        else:
            gamma = 1.0 / L

            def step(x: torch.Tensor) -> torch.Tensor:
                v = x - gamma * op.data_grad(x, y)
                return prox_tv(v, gamma * lam, inner_iterations, bounds)

            sol = fixed_point(step, x0, solver=make_solver(iterations, tol, accelerate=True))
            x = sol.value
    params = {"lam": lam, "algorithm": algorithm}
    return BaselineResult(x.detach(), sol.stats, params, "tv", time.perf_counter() - t0)


def _real(dtype: torch.dtype) -> torch.dtype:
    return {torch.complex64: torch.float32, torch.complex128: torch.float64}.get(dtype, dtype)


def _pdhg(op, y, lam, x0, L, iterations, tol, bounds, ratio):
    from deqir.solvers import fixed_point

    s = math.sqrt(L)
    y_s = y / s
    lam_s = lam / L
    tau, sigma = 0.99 * ratio / 3.0, 0.99 / (3.0 * ratio)  # tau sigma ||K||^2 < 1, ||K||^2 <= 1 + 8

    def step(state):
        x, p, q = state
        x_new = project(x - tau * (op.A_adjoint(p) / s + grad2d_adjoint(q)), bounds)
        x_bar = 2 * x_new - x
        p_new = (p + sigma * (op.A(x_bar) / s - y_s)) / (1 + sigma)
        q_new = _project_ball(q + sigma * grad2d(x_bar), lam_s)
        return x_new, p_new, q_new

    p0 = torch.zeros_like(y_s)
    q0 = torch.zeros((x0.shape[0], 2, *x0.shape[1:]), dtype=x0.dtype, device=x0.device)
    return fixed_point(step, (x0, p0, q0), solver=make_solver(iterations, tol, accelerate=False))
