"""Limited-memory ("good") Broyden's method for the root of ``g(z) = f(z) - z``.

The inverse Jacobian of ``g`` is approximated by ``B = -I + Σ_i u_i v_iᵀ`` (at most ``memory``
rank-one terms, kept in ring buffers); each step moves ``z⁺ = z - B g(z)`` (the first step is a
plain fixed-point step) and applies the Sherman-Morrison update
``B⁺ = B + (Δz - B Δg)(Δzᵀ B) / (Δzᵀ B Δg)``. A sample whose update denominator vanishes
skips its update. Like Anderson, Broyden assumes the same map at every call and refuses a
stochastic map unless it is frozen or ``allow_stochastic=True``.

Example:
    >>> import torch
    >>> from deqir.solvers import Broyden
    >>> z, stats = Broyden(tol=1e-6, max_iter=50).solve(lambda z: 0.5 * torch.cos(z), torch.zeros(2, 3))
    >>> bool(stats.converged.all())
    True
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from deqir.errors import InvalidValueError
from deqir.solvers.base import FlatMap, Monitor, Solver, SolverStats, col


@dataclass(frozen=True)
class Broyden(Solver):
    """Limited-memory Broyden solver (no line search).

    Args:
        memory: number of rank-one updates kept (older ones are overwritten).
        allow_stochastic: accept a stochastic map without freezing it.
        tol, stop, max_iter, divergence: see :class:`~deqir.solvers.base.Solver`.

    Example:
        >>> import torch
        >>> A = torch.tensor([[0.6, 0.3], [-0.2, 0.7]])
        >>> z, stats = Broyden(tol=1e-8, max_iter=40).solve(lambda z: z @ A.T + 1, torch.zeros(1, 2))
        >>> bool(stats.converged.all())
        True
    """

    memory: int = 20
    allow_stochastic: bool = False

    supports_stochastic = False
    supports_unrolled = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if int(self.memory) < 1:
            raise InvalidValueError(f"memory must be >= 1; got {self.memory}")

    @torch.no_grad()
    def solve(self, f: FlatMap, z0: torch.Tensor) -> tuple[torch.Tensor, SolverStats]:  # noqa: D102
        batch, dim = z0.shape
        m = int(self.memory)
        dtype, device = z0.dtype, z0.device
        mon = Monitor(self, batch, device, dtype)
        U = torch.zeros(batch, m, dim, dtype=dtype, device=device)
        V = torch.zeros(batch, m, dim, dtype=dtype, device=device)
        tiny = torch.finfo(dtype).eps ** 2
        out: torch.Tensor | None = None
        # row-major working copy: z0 may come in an exotic layout (e.g. batch-fastest), which
        # every later map evaluation would inherit through clone()/empty_like()
        x = z0.detach().clone(memory_format=torch.contiguous_format)
        fx = f(x)
        g = fx - x
        n = 0  # rank-one terms stored
        for k in range(int(self.max_iter)):
            if k > 0:
                # step dx = -B g = g - Σ u_i (v_i·g)
                dx = g - _mix(U[:, :n], V[:, :n], g)
                if not mon.all_active:
                    dx = torch.where(col(mon.active), dx, torch.zeros_like(dx))
                x_new = x + dx
                fx = f(x_new)
                g_new = fx - x_new
                dg = g_new - g
                # vᵀ = Δzᵀ B = -Δz + Σ (Δz·u_i) v_i ;  u = (Δz - B Δg) / (vᵀ Δg)
                v = -dx + _mix(V[:, :n], U[:, :n], dx)
                Bdg = -dg + _mix(U[:, :n], V[:, :n], dg)
                denom = (v * dg).sum(dim=1)
                ok = (denom.abs() > tiny * (v.norm(dim=1) * dg.norm(dim=1)).clamp_min(tiny)) & torch.isfinite(
                    denom
                )
                u = (dx - Bdg) / torch.where(ok, denom, torch.ones_like(denom))[:, None]
                u = torch.where(col(ok & torch.isfinite(u).all(dim=1)), u, torch.zeros_like(u))
                slot = (k - 1) % m
                U[:, slot] = u
                V[:, slot] = v
                n = min(n + 1, m)
                x, g = x_new, g_new
            stop = mon.update(torch.linalg.vector_norm(g, dim=1), torch.linalg.vector_norm(fx, dim=1))
            running = mon.any_active()
            if not mon.all_active:
                if bool(stop.any()):
                    if out is None:
                        out = torch.empty_like(x)
                    vals = torch.where(col(mon.bad_now), x, fx)
                    out[stop] = vals[stop]
                if not running:
                    break
            if not torch.isfinite(g).all():
                g = torch.where(torch.isfinite(g), g, torch.zeros_like(g))
        if out is None:
            return fx, mon.stats()
        out[mon.active] = fx[mon.active]
        return out, mon.stats()


def _mix(A: torch.Tensor, Bm: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``Σ_i A_i (B_i · x)`` for stacks ``A, Bm`` of shape (batch, n, dim) and ``x`` (batch, dim)."""
    if A.shape[1] == 0:
        return torch.zeros_like(x)
    coef = torch.bmm(x.unsqueeze(1), Bm.transpose(1, 2))  # (batch, 1, n); fast BLAS path
    return torch.bmm(coef, A).squeeze(1)
