"""Anderson acceleration (type II, with a constraint-sum mixing and Tikhonov regularisation).

With the last ``n <= m`` iterates ``x_i``, their images ``f_i = f(x_i)`` and residuals
``g_i = f_i - x_i``, each step solves the small regularised least-squares problem

    min_α ||Σ α_i g_i||² + λ ||α||²   subject to  Σ α_i = 1,

whose solution is ``α = w / Σ w`` with ``(G Gᵀ + λ I) w = 1``, and moves to
``x⁺ = Σ α_i (β f_i + (1 - β) x_i)`` (mixing ``β``). This is the same iteration as torchdeq's
and the DEQ reference code (the bordered ``(m+1)``-system there has the same solution); here it is
done with little work per step:

* the Gram matrix ``G Gᵀ`` is kept up to date with one new row per step (``O(m·dim)`` instead of
  ``O(m²·dim)``), and the new row's diagonal entry is the squared residual norm, so the
  residual costs no extra pass over the state;
* the ``m × m`` systems of the whole batch are solved together by one batched LU
  factorisation; a sample whose system is singular or non-finite takes a plain step
  (``α`` = the newest iterate) instead of raising;
* histories live in preallocated ring buffers; nothing loops over batch elements.

Anderson assumes the *same* map at every call: it refuses a stochastic map (a fresh minibatch
per call) unless the map is frozen for the solve (``fixed_point(..., freeze=True)``) or the
solver is built with ``allow_stochastic=True``.

Example:
    >>> import torch
    >>> from deqir.solvers import Anderson, FixedPointIteration
    >>> W = 0.95 * torch.linalg.qr(torch.randn(16, 16, generator=torch.Generator().manual_seed(0)))[0]
    >>> f = lambda z: z @ W.T + 1.0
    >>> _, a = Anderson(tol=1e-6, max_iter=200).solve(f, torch.zeros(2, 16))
    >>> _, p = FixedPointIteration(tol=1e-6, max_iter=400).solve(f, torch.zeros(2, 16))
    >>> int(a.iterations.max()) < int(p.iterations.max())
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from deqir.errors import InvalidValueError
from deqir.solvers.base import FlatMap, Monitor, Solver, SolverStats, col, nonfinite_rows

_REG_MODES = ("absolute", "relative")


@dataclass(frozen=True)
class Anderson(Solver):
    """Anderson acceleration with memory ``m``, Tikhonov ``λ`` and mixing ``β``.

    Args:
        memory: number ``m`` of past iterates combined (the authors use 5).
        regularization: Tikhonov ``λ`` added to the Gram matrix.
        mixing: ``β`` in ``(0, 1]``; ``1`` combines the images ``f_i`` only.
        regularization_mode: ``"relative"`` (default) adds ``λ · max_i ||g_i||² · I``: the
            regularisation follows the scale of the residuals, so the condition number of the
            system stays below about ``m / λ`` and the acceleration survives tight tolerances.
            ``"absolute"`` adds ``λ I`` as torchdeq and the DEQ reference code do; once the
            residuals are small (``||g||² << λ``) that turns the step into a plain average of
            the last images, which can be slower than plain iteration (see
            ``deqir bench solvers``).
        allow_stochastic: accept a stochastic map without freezing it (the acceleration is then
            a heuristic: the history mixes different maps).
        tol, stop, max_iter, divergence: see :class:`~deqir.solvers.base.Solver`.

    Example:
        >>> import torch
        >>> z, stats = Anderson(memory=5, tol=1e-6).solve(lambda z: 0.5 * torch.cos(z),
        ...                                               torch.zeros(4, 3))
        >>> bool(stats.converged.all()), bool(torch.allclose(z, 0.5 * torch.cos(z), atol=1e-5))
        (True, True)
    """

    memory: int = 5
    regularization: float = 1e-4
    mixing: float = 1.0
    regularization_mode: str = "relative"
    allow_stochastic: bool = False

    supports_stochastic = False
    supports_unrolled = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if int(self.memory) < 1:
            raise InvalidValueError(f"memory must be >= 1; got {self.memory}")
        if not self.regularization >= 0:
            raise InvalidValueError(f"regularization must be >= 0; got {self.regularization}")
        if not 0 < self.mixing <= 1:
            raise InvalidValueError(f"mixing must lie in (0, 1]; got {self.mixing}")
        if self.regularization_mode not in _REG_MODES:
            raise InvalidValueError(
                f"regularization_mode must be 'absolute' or 'relative'; got {self.regularization_mode!r}"
            )

    @torch.no_grad()
    def solve(self, f: FlatMap, z0: torch.Tensor) -> tuple[torch.Tensor, SolverStats]:  # noqa: D102
        batch, dim = z0.shape
        m, beta = int(self.memory), float(self.mixing)
        lam, relative = float(self.regularization), self.regularization_mode == "relative"
        dtype, device = z0.dtype, z0.device
        mon = Monitor(self, batch, device, dtype)
        F = torch.empty(batch, m, dim, dtype=dtype, device=device)  # images f(x_i)
        G = torch.empty(batch, m, dim, dtype=dtype, device=device)  # residuals f(x_i) - x_i
        H = torch.zeros(batch, m, m, dtype=dtype, device=device)  # Gram matrix G Gᵀ
        eye = torch.eye(m, dtype=dtype, device=device)
        ones = torch.ones(batch, m, 1, dtype=dtype, device=device)
        # row-major working copy: z0 may come in an exotic layout (e.g. batch-fastest), which
        # every later map evaluation would inherit through clone()/empty_like()
        x = z0.detach().clone(memory_format=torch.contiguous_format)
        x_mix = torch.empty_like(x)
        out: torch.Tensor | None = None
        fx = x
        for k in range(int(self.max_iter)):
            fx = f(x)
            slot, n = k % m, min(k + 1, m)
            g = G[:, slot]
            torch.sub(fx, x, out=g)
            F[:, slot].copy_(fx)
            # new Gram row (its diagonal entry is ||g||²: the residual for free)
            # (as a row vector times Gᵀ: BLAS handles the transpose, far faster than G @ g)
            h = torch.bmm(g.unsqueeze(1), G[:, :n].transpose(1, 2)).squeeze(1)
            abs_res = h[:, slot].clamp_min(0).sqrt()
            stop = mon.update(abs_res, torch.linalg.vector_norm(fx, dim=1))
            running = mon.any_active()
            if not mon.all_active:
                if bool(stop.any()):
                    if out is None:
                        out = torch.empty_like(x)
                    vals = torch.where(col(mon.bad_now), x, fx)
                    out[stop] = vals[stop]
                if not running:
                    break
            if k == int(self.max_iter) - 1:
                break
            H[:, slot, :n] = h
            H[:, :n, slot] = h
            alpha = self._coefficients(H[:, :n, :n], eye[:n, :n], ones[:, :n], slot, lam, relative)
            # x⁺ = α F (- (1-β) α G): one batched product over the memory
            torch.bmm(alpha.unsqueeze(1), F[:, :n], out=x_mix.unsqueeze(1))
            if beta != 1.0:
                x_mix -= (1.0 - beta) * torch.bmm(alpha.unsqueeze(1), G[:, :n]).squeeze(1)
            if mon.all_active:
                x, x_mix = x_mix, x
            else:
                x.copy_(torch.where(col(mon.active), x_mix, x))
        if out is None:
            return fx if fx is not x else fx.clone(), mon.stats()
        out[mon.active] = fx[mon.active]
        return out, mon.stats()

    @staticmethod
    def _coefficients(
        Hn: torch.Tensor, eye: torch.Tensor, ones: torch.Tensor, slot: int, lam: float, relative: bool
    ) -> torch.Tensor:
        """Mixing weights ``α`` (batch, n) from the Gram matrices (batch, n, n)."""
        n = Hn.shape[-1]
        if n == 1:
            return ones[:, :1, 0]
        if relative:
            scale = Hn.diagonal(dim1=1, dim2=2).amax(dim=1).clamp_min(torch.finfo(Hn.dtype).tiny)
            A = torch.addcmul(Hn, scale[:, None, None], eye, value=lam)
        else:
            A = torch.add(Hn, eye, alpha=lam)
        # LU of the tiny SPD systems: as fast as Cholesky here and, unlike cholesky_ex, free of
        # an intra-op parallel tril per call (milliseconds on a busy host)
        w, info = torch.linalg.solve_ex(A, ones)
        w = w.squeeze(2)
        alpha = w / w.sum(dim=1, keepdim=True)
        if math.isfinite(float(alpha.sum())) and not bool(info.any()):
            return alpha  # the usual case: one host sync, no per-sample checks
        ok = (info == 0) & ~nonfinite_rows(alpha).any(dim=1)
        plain = torch.zeros_like(alpha)
        plain[:, slot] = 1.0  # a plain step from the newest iterate
        return torch.where(col(ok), alpha, plain)
