"""Plain, damped and Nesterov-accelerated fixed-point iteration.

Both solvers call the map once per iteration on the current point only, so they stay valid for
a *stochastic* map that draws a fresh minibatch at every call (ODER), and their iterations are
written out of place, so :class:`~deqir.solvers.UnrolledAdjoint` can backpropagate through them.

Example:
    >>> import torch
    >>> from deqir.solvers import FixedPointIteration, Nesterov
    >>> f = lambda z: 0.9 * z + 0.1
    >>> _, plain = FixedPointIteration(tol=1e-6, max_iter=500).solve(f, torch.zeros(1, 8))
    >>> _, fast = Nesterov(tol=1e-6, max_iter=500, restart=True).solve(f, torch.zeros(1, 8))
    >>> int(fast.iterations) < int(plain.iterations)
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from deqir.errors import InvalidValueError
from deqir.solvers.base import FlatMap, Monitor, Solver, SolverStats, col, row_norm


class _Values:
    """Collects each sample's returned value when it stops (out of place: differentiable)."""

    def __init__(self) -> None:
        self.out: torch.Tensor | None = None

    def capture(self, stop: torch.Tensor, bad: torch.Tensor, fz: torch.Tensor, z: torch.Tensor) -> None:
        """Samples in ``stop`` keep ``f(z)``, or ``z`` where ``f(z)`` was not finite."""
        vals = torch.where(col(bad), z, fz)
        self.out = vals if self.out is None else torch.where(col(stop), vals, self.out)

    def finish(self, active: torch.Tensor, fz: torch.Tensor) -> torch.Tensor:
        """Samples still running at the iteration cap return their last ``f(z)``."""
        return fz if self.out is None else torch.where(col(active), fz, self.out)


@dataclass(frozen=True)
class FixedPointIteration(Solver):
    """Plain (``damping=1``) or damped fixed-point iteration ``z <- (1 - λ) z + λ f(z)``.

    Valid for stochastic maps, and differentiable step by step (unrolled training).

    Args:
        damping: step ``λ`` in ``(0, 1]`` (``1``: plain iteration).
        tol, stop, max_iter, divergence: see :class:`~deqir.solvers.base.Solver`.

    Example:
        >>> import torch
        >>> z, stats = FixedPointIteration(tol=1e-8, max_iter=100).solve(
        ...     lambda z: 0.5 * z + 1, torch.zeros(2, 3))
        >>> round(float(z[0, 0]), 6), int(stats.iterations[0]) <= 30
        (2.0, True)
    """

    damping: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.damping <= 1:
            raise InvalidValueError(f"damping must lie in (0, 1]; got {self.damping}")

    def solve(self, f: FlatMap, z0: torch.Tensor) -> tuple[torch.Tensor, SolverStats]:  # noqa: D102
        mon = Monitor(self, z0.shape[0], z0.device, z0.dtype)
        values = _Values()
        z, lam = z0, float(self.damping)
        fz = z0
        for _ in range(int(self.max_iter)):
            fz = f(z)
            r = fz - z
            stop = mon.update(row_norm(r), row_norm(fz))
            running = mon.any_active()
            if not mon.all_active:
                if bool(stop.any()):
                    values.capture(stop, mon.bad_now, fz, z)
                if not running:
                    break
            step = fz if lam == 1.0 else z + lam * r
            z = step if mon.all_active else torch.where(col(mon.active), step, z)
        return values.finish(mon.active, fz), mon.stats()


@dataclass(frozen=True)
class Nesterov(Solver):
    """Nesterov / FISTA-accelerated fixed-point iteration.

    ``z_{k+1} = (1 - λ) s_k + λ f(s_k)``, ``t_{k+1} = (1 + sqrt(1 + 4 t_k^2)) / 2``,
    ``s_{k+1} = z_{k+1} + (t_k - 1) / t_{k+1} (z_{k+1} - z_k)``; the residual is measured at the
    extrapolated point ``s_k``. This is the solver ODER uses at test time. Valid for stochastic maps.

    Args:
        damping: step ``λ`` in ``(0, 1]`` applied before extrapolation.
        restart: adaptive restart: a sample whose residual grew resets its momentum (``t = 1``).
            Off by default, as in FISTA.
        restart_guard: a sample whose residual exceeds this multiple (> 1) of its smallest
            residual so far resets its momentum; ``None``: off. Unlike ``restart`` it ignores the
            small rises of a noisy residual (a stochastic map's) and catches divergence.
        tol, stop, max_iter, divergence: see :class:`~deqir.solvers.base.Solver`.

    Example:
        >>> import torch
        >>> z, stats = Nesterov(tol=1e-6, max_iter=300, restart=True).solve(
        ...     lambda z: 0.95 * z + 0.05, torch.zeros(1, 4))
        >>> bool(stats.converged.all()), round(float(z.mean()), 3)
        (True, 1.0)
    """

    damping: float = 1.0
    restart: bool = False
    restart_guard: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.damping <= 1:
            raise InvalidValueError(f"damping must lie in (0, 1]; got {self.damping}")
        if self.restart_guard is not None and not self.restart_guard > 1:
            raise InvalidValueError(
                f"restart_guard must be a number above 1 (or None for off); got {self.restart_guard}"
            )

    def solve(self, f: FlatMap, z0: torch.Tensor) -> tuple[torch.Tensor, SolverStats]:  # noqa: D102
        batch = z0.shape[0]
        mon = Monitor(self, batch, z0.device, z0.dtype)
        values = _Values()
        lam = float(self.damping)
        s = z_prev = fs = z0
        t = 1.0  # a Python float while no sample has restarted: no per-iteration tensor ops
        prev_abs: torch.Tensor | None = None
        best_abs: torch.Tensor | None = None  # each sample's smallest residual so far (restart_guard)
        for _ in range(int(self.max_iter)):
            fs = f(s)
            r = fs - s
            abs_res = row_norm(r)
            stop = mon.update(abs_res, row_norm(fs))
            running = mon.any_active()
            if not mon.all_active:
                if bool(stop.any()):
                    values.capture(stop, mon.bad_now, fs, s)
                if not running:
                    break
            z_new = fs if lam == 1.0 else s + lam * r
            if isinstance(t, float):
                t_new = (1.0 + math.sqrt(1.0 + 4.0 * t * t)) / 2.0
                beta: float | torch.Tensor = (t - 1.0) / t_new
            else:
                t_new = (1.0 + torch.sqrt(1.0 + 4.0 * t * t)) / 2.0
                beta = (t - 1.0) / t_new
            grew = None
            if self.restart and prev_abs is not None:
                grew = abs_res > prev_abs
            if self.restart_guard is not None:
                best_abs = abs_res if best_abs is None else torch.minimum(best_abs, abs_res)
                far = abs_res > self.restart_guard * best_abs
                grew = far if grew is None else grew | far
            if grew is not None and bool(grew.any()):
                t_vec = (
                    torch.full((batch,), t_new, dtype=z0.dtype, device=z0.device)
                    if isinstance(t_new, float)
                    else t_new
                )
                beta_vec = torch.full_like(t_vec, beta) if isinstance(beta, float) else beta
                t_new = torch.where(grew, torch.ones_like(t_vec), t_vec)
                beta = torch.where(grew, torch.zeros_like(beta_vec), beta_vec)
            prev_abs = abs_res
            b = beta if isinstance(beta, float) else col(beta)
            s_new = z_new + b * (z_new - z_prev)
            z_prev, t = z_new, t_new
            s = s_new if mon.all_active else torch.where(col(mon.active), s_new, s)
        return values.finish(mon.active, fs), mon.stats()
