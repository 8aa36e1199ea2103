"""How gradients flow back through an equilibrium: the adjoint is a separate choice.

Every adjoint but :class:`UnrolledAdjoint` solves the forward problem under ``torch.no_grad``
(no graph, so memory does not grow with the number of iterations) and then *re-applies the map
once with grad enabled* at the detached fixed point ``z*``. That single application connects the
output to everything the map reaches through its closure (network parameters, measurements, step
sizes), so no parameter list has to be passed. What happens to the incoming gradient ``∇ℓ``
before it flows through that application is the adjoint's choice:

* :class:`ImplicitAdjoint` (IFT): a ``torch.autograd.Function`` whose backward solves
  ``u = J_fᵀ u + ∇ℓ`` (one vector-Jacobian product per iteration, through the saved graph of the
  single application) and hands ``u`` on, so parameters receive ``(∂f/∂θ)ᵀ u``, the exact
  implicit gradient. No tensor hooks are used.
* :class:`JacobianFree` (JFB): ``u = ∇ℓ`` (backprop through one application of ``f``).
* :class:`PhantomAdjoint`: backprop through ``k`` damped steps from ``z*`` (``k = 1``, ``λ = 1``
  is JFB).
* :class:`UnrolledAdjoint`: backprop through every forward iteration (deep unfolding / the
  RED(Unfold) baseline); memory grows linearly with the iterations.

For a stochastic map (a fresh minibatch per call) the re-application draws one more minibatch,
and the implicit adjoint differentiates that draw (its backward map is fixed, so Anderson is
valid there); with ``fixed_point(..., freeze=True)`` it happens inside the frozen minibatch.

During the graph-free solve, parametrised weights (``spectral_norm`` ...) are cached
(``torch.nn.utils.parametrize.cached``): computed once per solve instead of once per iteration,
so the map does not drift while the solver runs (a spectral-norm power-iteration step per call
would otherwise change it).

Every adjoint guards the backward pass: a sample whose incoming gradient or adjoint solution
holds NaN/inf contributes zero and is flagged in ``Solution.stats.backward.nonfinite`` (or a
:class:`~deqir.errors.ConvergenceError` is raised with ``throw=True``), so NaN never reaches the
parameters.

Example:
    >>> import torch
    >>> from deqir.solvers import fixed_point, ImplicitAdjoint, FixedPointIteration
    >>> w = torch.tensor(0.5, requires_grad=True)
    >>> sol = fixed_point(lambda z: w * z + 1, torch.zeros(1, 1),
    ...                   solver=FixedPointIteration(tol=1e-10, max_iter=200),
    ...                   adjoint=ImplicitAdjoint(tol=1e-10))
    >>> sol.value.sum().backward()          # z* = 1 / (1 - w), dz*/dw = 1 / (1 - w)^2 = 4
    >>> round(float(w.grad), 5)
    4.0
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.autograd.function import once_differentiable

from deqir.errors import ConvergenceError, InvalidValueError
from deqir.solvers.base import (
    BackwardStats,
    Solution,
    Solver,
    SolverStats,
    State,
    Structure,
    col,
)


@dataclass
class Problem:
    """Everything an adjoint needs to solve and differentiate one fixed point (internal)."""

    f: Callable[[State], State]
    spec: Structure
    z0: torch.Tensor  # flat (batch, dim)
    solver: Solver
    throw: bool
    frozen: bool = False

    def f_flat(self, z: torch.Tensor) -> torch.Tensor:
        """The map on flat states."""
        return self.spec.pack(self.f(self.spec.unpack(z)))


# --------------------------------------------------------------------------- base
class Adjoint:
    """Base class: how the solution is made differentiable."""

    def solve(self, problem: Problem) -> Solution:
        """Solve ``problem`` and return its differentiable :class:`Solution`."""
        z_star, stats = _solve_without_graph(problem)
        if not torch.is_grad_enabled():
            return Solution(problem.spec.unpack(z_star), stats)
        with torch.enable_grad():
            value = self._attach(problem, z_star, stats)
            value = _keep_finite(problem, value, z_star, stats)
        return Solution(value, stats)

    def _attach(self, problem: Problem, z_star: torch.Tensor, stats: SolverStats) -> State:
        raise NotImplementedError

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


def _keep_finite(problem: Problem, value: State, z_star: torch.Tensor, stats: SolverStats) -> State:
    """Failed samples (and any whose re-applied map is not finite) return ``z*`` itself."""
    spec = problem.spec
    flat = spec.pack(value, name="f(z)")
    nonfinite = ~torch.isfinite(flat.detach()).all(dim=1)
    bad = stats.failed | nonfinite
    if not bool(bad.any()):
        return value
    stats.nonfinite = stats.nonfinite | nonfinite
    stats.diverged = stats.diverged | nonfinite
    stats.converged = stats.converged & ~nonfinite
    if problem.throw:
        raise_if_failed(stats)
    return spec.unpack(torch.where(col(bad), z_star, flat))


def _solve_without_graph(problem: Problem) -> tuple[torch.Tensor, SolverStats]:
    from torch.nn.utils import parametrize

    # parametrised weights (spectral norm ...) are computed once per solve, not once per
    # iteration: faster, and the map stays the same map from one iteration to the next
    with torch.no_grad(), parametrize.cached():
        z_star, stats = problem.solver.solve(problem.f_flat, problem.z0.detach())
    stats.frozen = problem.frozen
    if problem.throw:
        raise_if_failed(stats)
    return z_star.detach(), stats


def raise_if_failed(stats: SolverStats) -> None:
    """Raise :class:`~deqir.errors.ConvergenceError` if a sample diverged or produced NaN/inf."""
    failed = stats.failed
    if not bool(failed.any()):
        return
    idx = failed.nonzero().flatten().tolist()
    kind = "produced NaN/inf" if bool(stats.nonfinite.any()) else "diverged"
    res = [f"{float(stats.abs_residual[i]):.3g}" for i in idx[:5]]
    raise ConvergenceError(
        f"{stats.solver}: the fixed-point iteration {kind} for batch element(s) {idx[:10]} "
        f"after {int(stats.iterations.max())} iterations (absolute residuals {res}). The map is "
        "probably not contractive: lower the step size, use damping "
        "(FixedPointIteration(damping=0.5)), spectral normalisation "
        "(deqir.solvers.spectral_norm_all), or pass throw=False to get the last finite iterate "
        "with the failure flagged in Solution.stats"
    )


# --------------------------------------------------------------------------- guard
class _State:
    """What a backward Function needs; held by its ctx (not a saved tensor)."""

    def __init__(self, spec: Structure, throw: bool, backward: BackwardStats):
        self.spec, self.throw, self.backward = spec, throw, backward

    def flat_grads(self, grads: tuple[torch.Tensor | None, ...]) -> torch.Tensor:
        spec = self.spec
        full = []
        for g, shape, is_c in zip(grads, spec.shapes, spec.complex, strict=True):
            if g is None:
                dtype = _complex_of(spec.dtype) if is_c else spec.dtype
                g = torch.zeros((spec.batch, *shape), dtype=dtype, device=spec.device)
            full.append(g)
        return spec.pack(tuple(full) if spec.is_tuple else full[0], name="gradient")

    def sanitize(
        self, g: torch.Tensor, what: str, failed: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Zero the rows of ``g`` holding NaN/inf (or flagged in ``failed``).

        Returns the cleaned ``g`` and the ``(batch,)`` mask of zeroed rows; raises
        :class:`ConvergenceError` instead when the layer was built with ``throw=True``.
        """
        clean, bad = _zero_nonfinite(g, failed)
        if self.throw and bool(bad.any()):
            raise ConvergenceError(
                f"the {what} is NaN/inf or diverged for batch element(s) "
                f"{bad.nonzero().flatten().tolist()[:10]}; check the loss and the map (is it "
                "contractive at the fixed point?), or pass throw=False to zero those samples' "
                "gradients and flag them in Solution.stats.backward.nonfinite"
            )
        return clean, bad

    def unflat(self, g: torch.Tensor) -> tuple[torch.Tensor, ...]:
        parts = self.spec.unpack(g)
        return parts if isinstance(parts, tuple) else (parts,)


class _GuardFn(torch.autograd.Function):
    """Identity whose backward zeroes (or raises on) non-finite incoming gradients."""

    @staticmethod
    def forward(ctx: Any, state: _State, *outs: torch.Tensor):
        ctx.state = state
        return tuple(o.view_as(o) for o in outs)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, *grads: torch.Tensor | None):
        st: _State = ctx.state
        g, bad = st.sanitize(st.flat_grads(grads), "incoming gradient")
        bs = st.backward
        bs.calls += 1
        bs.nonfinite = bad
        return (None, *st.unflat(g))


def _guard(problem: Problem, value: State, stats: SolverStats) -> State:
    comps = value if isinstance(value, tuple) else (value,)
    if not any(c.requires_grad for c in comps):
        return value
    out = _GuardFn.apply(_State(problem.spec, problem.throw, stats.backward), *comps)
    return out if problem.spec.is_tuple else out[0]


# --------------------------------------------------------------------------- implicit
class _ImplicitState(_State):
    def __init__(self, spec, throw, backward, z_req, outs, solver):
        super().__init__(spec, throw, backward)
        self.z_req, self.outs, self.solver = z_req, outs, solver

    def vjp(self, u: torch.Tensor) -> torch.Tensor:
        """``J_fᵀ u`` at the fixed point, through the saved graph of the single application."""
        pairs = [(o, g) for o, g in zip(self.outs, self.unflat(u), strict=True) if o.requires_grad]
        if not pairs:
            return torch.zeros_like(u)
        (res,) = torch.autograd.grad(
            [o for o, _ in pairs], [self.z_req], [g for _, g in pairs], retain_graph=True, allow_unused=True
        )
        return torch.zeros_like(u) if res is None else res


class _ImplicitFn(torch.autograd.Function):
    """Identity in forward; backward solves the adjoint fixed point ``u = J_fᵀ u + ∇ℓ``."""

    @staticmethod
    def forward(ctx: Any, state: _ImplicitState, *outs: torch.Tensor):
        ctx.state = state
        return tuple(o.view_as(o) for o in outs)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, *grads: torch.Tensor | None):
        st: _ImplicitState = ctx.state
        g, bad_in = st.sanitize(st.flat_grads(grads), "incoming gradient")
        with torch.no_grad():
            u, ustats = st.solver.solve(lambda v: st.vjp(v) + g, g)
        u, bad_u = st.sanitize(u, "implicit adjoint solution", ustats.failed)
        _record_adjoint(st.backward, ustats, bad_in | bad_u)
        return (None, *st.unflat(u))


def _record_adjoint(backward: BackwardStats, ustats: SolverStats | None, bad: torch.Tensor) -> None:
    """Fill ``backward`` after one backward pass (``ustats``: the adjoint solve's, if any)."""
    backward.calls += 1
    backward.nonfinite = bad
    if ustats is not None:
        backward.iterations, backward.converged = ustats.iterations, ustats.converged
        backward.abs_residual, backward.rel_residual = ustats.abs_residual, ustats.rel_residual


def _zero_nonfinite(u: torch.Tensor, failed: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero the rows of flat ``u`` holding NaN/inf (or flagged in ``failed``); returns ``(u, mask)``."""
    bad = ~torch.isfinite(u).all(dim=1)
    if failed is not None:
        bad = bad | failed
    if bool(bad.any()):
        u = torch.where(col(bad), torch.zeros_like(u), u)
    return u, bad


@dataclass
class ImplicitAdjoint(Adjoint):
    """Implicit-function-theorem gradients: solve ``u = J_fᵀ u + ∇ℓ`` in the backward pass.

    Args:
        solver: solver of the adjoint fixed point (the adjoint map is linear and fixed, so
            Anderson is valid even when the forward map is stochastic). Default:
            ``Anderson(memory=5, regularization=1e-4)`` (scale-free regularisation, which matters
            here: adjoint vectors are often tiny).
        tol, stop, max_iter: override the solver's stopping rule (``None`` keeps it).

    Example:
        >>> import torch
        >>> from deqir.solvers import fixed_point, FixedPointIteration
        >>> lin = torch.nn.Linear(4, 4)
        >>> with torch.no_grad():
        ...     _ = lin.weight.mul_(0.5 / torch.linalg.matrix_norm(lin.weight, 2))
        >>> sol = fixed_point(lambda z: torch.tanh(lin(z)), torch.zeros(2, 4),
        ...                   adjoint=ImplicitAdjoint(solver=FixedPointIteration(), tol=1e-8))
        >>> sol.value.square().sum().backward()
        >>> lin.weight.grad.shape, int(sol.stats.backward.calls)
        (torch.Size([4, 4]), 1)
    """

    solver: Solver | None = None
    tol: float | None = 1e-5
    stop: str | None = None
    max_iter: int | None = 100

    def __post_init__(self) -> None:
        if self.solver is None:
            from deqir.solvers.anderson import Anderson

            self.solver = Anderson(memory=5, regularization=1e-4)
        changes = {
            k: v
            for k, v in (("tol", self.tol), ("stop", self.stop), ("max_iter", self.max_iter))
            if v is not None
        }
        self.adjoint_solver = self.solver.replace(**changes) if changes else self.solver

    def solve_adjoint(
        self, vjp: Callable[[torch.Tensor], torch.Tensor], g: torch.Tensor, backward: BackwardStats
    ) -> torch.Tensor:
        """``u = J_fᵀ u + g`` for flat ``(batch, dim)`` ``g``, given ``vjp(u) = J_fᵀ u``.

        For layers that rebuild ``f``'s graph in their own backward pass (e.g.
        :class:`deqir.methods.unrolling.ShallowEquilibrium`). Samples whose solution is NaN/inf
        get ``u = 0`` and are flagged in ``backward.nonfinite``; ``backward`` records the solve.

        Example:
            >>> from deqir.solvers.base import BackwardStats
            >>> stats = BackwardStats()
            >>> u = ImplicitAdjoint(tol=1e-8).solve_adjoint(lambda w: 0.5 * w, torch.ones(1, 2), stats)
            >>> [round(v, 6) for v in u[0].tolist()], stats.calls
            ([2.0, 2.0], 1)
        """
        with torch.no_grad():
            u, ustats = self.adjoint_solver.solve(lambda w: vjp(w) + g, g)
        u, bad = _zero_nonfinite(u, ustats.failed)
        _record_adjoint(backward, ustats, bad)
        return u

    def _attach(self, problem, z_star, stats):
        spec = problem.spec
        z_req = z_star.detach().requires_grad_()
        out = problem.f(spec.unpack(z_req))
        outs = tuple(spec.components(out, "f(z)"))
        if not _reaches_other_leaves(outs, z_req):
            return spec.unpack(spec.pack(out).detach())  # nothing upstream to differentiate
        state = _ImplicitState(spec, problem.throw, stats.backward, z_req, outs, self.adjoint_solver)
        res = _ImplicitFn.apply(state, *outs)
        return res if spec.is_tuple else res[0]


def _reaches_other_leaves(outs: tuple[torch.Tensor, ...], z_req: torch.Tensor) -> bool:
    """Whether the graph of ``outs`` reaches any tensor requiring grad other than ``z_req``."""
    stack = [o.grad_fn for o in outs if o.grad_fn is not None]
    seen: set[int] = set()
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        var = getattr(node, "variable", None)  # AccumulateGrad of a leaf
        if var is not None:
            if var is not z_req:
                return True
            continue
        stack.extend(nxt for nxt, _ in node.next_functions)
    return False


# --------------------------------------------------------------------------- JFB / phantom
@dataclass
class PhantomAdjoint(Adjoint):
    """Phantom gradient: backprop through ``k`` damped steps from the detached fixed point.

    ``z_0 = z*`` (detached), ``z_{i+1} = (1 - λ) z_i + λ f(z_i)``; the output is ``z_k``.

    Args:
        steps: number ``k`` of steps (``k = 1``, ``damping = 1`` is Jacobian-free backprop).
        damping: ``λ`` in ``(0, 1]``.

    Example:
        >>> import torch
        >>> from deqir.solvers import fixed_point
        >>> w = torch.tensor(0.5, requires_grad=True)
        >>> sol = fixed_point(lambda z: w * z + 1, torch.zeros(1, 1), adjoint=PhantomAdjoint(steps=5))
        >>> sol.value.sum().backward()
        >>> 0 < float(w.grad) < 4
        True
    """

    steps: int = 5
    damping: float = 0.5

    def __post_init__(self) -> None:
        if int(self.steps) < 1:
            raise InvalidValueError(f"steps must be >= 1; got {self.steps}")
        if not 0 < self.damping <= 1:
            raise InvalidValueError(f"damping must lie in (0, 1]; got {self.damping}")

    def _attach(self, problem, z_star, stats):
        z, lam = z_star.detach(), float(self.damping)
        if int(self.steps) == 1 and lam == 1.0:
            value = problem.f(problem.spec.unpack(z))  # no pack/unpack round trip for JFB
            problem.spec.components(value, "f(z)")
            return _guard(problem, value, stats)
        for _ in range(int(self.steps)):
            fz = problem.f_flat(z)
            z = fz if lam == 1.0 else (1.0 - lam) * z + lam * fz
        return _guard(problem, problem.spec.unpack(z), stats)


@dataclass
class JacobianFree(PhantomAdjoint):
    """Jacobian-free backprop (JFB): ``u = ∇ℓ``, i.e. backprop through one application of ``f``.

    Example:
        >>> import torch
        >>> from deqir.solvers import fixed_point
        >>> w = torch.tensor(0.5, requires_grad=True)
        >>> sol = fixed_point(lambda z: w * z + 1, torch.zeros(1, 1), adjoint=JacobianFree())
        >>> sol.value.sum().backward()      # JFB: dz/dw = z* = 2 (the implicit gradient is 4)
        >>> round(float(w.grad), 3)
        2.0
    """

    steps: int = field(default=1, init=False)
    damping: float = field(default=1.0, init=False)

    def solve_adjoint(
        self, vjp: Callable[[torch.Tensor], torch.Tensor], g: torch.Tensor, backward: BackwardStats
    ) -> torch.Tensor:
        """``u = g`` (the Jacobian-free adjoint); the interface of :meth:`ImplicitAdjoint.solve_adjoint`.

        Example:
            >>> from deqir.solvers.base import BackwardStats
            >>> JacobianFree().solve_adjoint(lambda w: 0.5 * w, torch.ones(1, 2), BackwardStats()).tolist()
            [[1.0, 1.0]]
        """
        u, bad = _zero_nonfinite(g)
        _record_adjoint(backward, None, bad)
        return u


# --------------------------------------------------------------------------- unrolled
@dataclass
class UnrolledAdjoint(Adjoint):
    """Backprop through every forward iteration (deep unfolding, RED(Unfold)).

    The forward solver runs with grad enabled, so activation memory grows linearly with the
    number of iterations. Only solvers whose steps are differentiable qualify
    (:class:`~deqir.solvers.FixedPointIteration`, :class:`~deqir.solvers.Nesterov`); to unroll a
    fixed number ``K`` of steps use ``FixedPointIteration(tol=0, max_iter=K)``.

    Example:
        >>> import torch
        >>> from deqir.solvers import fixed_point, FixedPointIteration
        >>> w = torch.tensor(0.5, requires_grad=True)
        >>> sol = fixed_point(lambda z: w * z + 1, torch.zeros(1, 1),
        ...                   solver=FixedPointIteration(tol=0, max_iter=60), adjoint=UnrolledAdjoint())
        >>> sol.value.sum().backward()
        >>> round(float(w.grad), 4)
        4.0
    """

    def solve(self, problem: Problem) -> Solution:  # noqa: D102
        if not problem.solver.supports_unrolled:
            raise InvalidValueError(
                f"UnrolledAdjoint cannot backpropagate through {problem.solver.name}; use "
                "FixedPointIteration or Nesterov (or another adjoint for this solver)"
            )
        from torch.nn.utils import parametrize

        with parametrize.cached():  # parametrised weights: computed (and saved) once, not per step
            value, stats = problem.solver.solve(problem.f_flat, problem.z0)
        stats.frozen = problem.frozen
        if problem.throw:
            raise_if_failed(stats)
        value_s = problem.spec.unpack(value)
        if torch.is_grad_enabled():
            value_s = _guard(problem, value_s, stats)
        return Solution(value_s, stats)


def _complex_of(dtype: torch.dtype) -> torch.dtype:
    return torch.complex128 if dtype == torch.float64 else torch.complex64
