"""``fixed_point``: find ``z = f(z)`` with a chosen solver, differentiate with a chosen adjoint.

Example:
    >>> import torch
    >>> from deqir.solvers import fixed_point, Anderson, ImplicitAdjoint
    >>> conv = torch.nn.Conv2d(1, 1, 3, padding=1)
    >>> x = torch.rand(2, 1, 8, 8)
    >>> f = lambda z: 0.5 * torch.tanh(conv(z)) + x      # closes over conv's parameters and x
    >>> sol = fixed_point(f, torch.zeros_like(x), Anderson(tol=1e-5), ImplicitAdjoint())
    >>> sol.value.square().mean().backward()
    >>> conv.weight.grad is not None, bool(sol.stats.converged.all())
    (True, True)

Stochastic maps:
    A map that draws a fresh minibatch of measurement blocks at every call (ODER) is marked
    either by an attribute ``stochastic = True`` on the callable (wrap a plain function in
    :class:`StochasticMap`) or by ``fixed_point(..., stochastic=True)``. Plain/damped iteration
    and Nesterov are valid for such maps. Anderson and Broyden assume the same map at every call
    and raise :class:`StochasticMapError` unless either the minibatch is frozen for the solve
    (``freeze=True``; the map must provide ``freeze()``, a context manager that fixes its draw),
    or the solver is built with ``allow_stochastic=True``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from deqir.errors import InvalidValueError
from deqir.solvers.adjoints import Adjoint, ImplicitAdjoint, Problem
from deqir.solvers.base import Solution, Solver, State, Structure


class StochasticMapError(InvalidValueError):
    """A solver that needs the same map at every call was given a stochastic map."""


class StochasticMap:
    """Marks a map that draws a fresh minibatch at every call (``stochastic = True``).

    Args:
        fn: the map ``z -> f(z)``.
        freeze: optional factory of a context manager inside which ``fn`` keeps one fixed
            minibatch (drawn on entry); needed by ``fixed_point(..., freeze=True)``.

    Any callable with an attribute ``stochastic = True`` (and optionally a ``freeze()`` method
    returning a context manager) is treated the same way; this class only spares writing one.

    Example:
        >>> import torch
        >>> gen = torch.Generator().manual_seed(0)
        >>> f = StochasticMap(lambda z: 0.5 * z + 1 + 0.01 * torch.randn(z.shape, generator=gen))
        >>> f.stochastic
        True
    """

    stochastic = True

    def __init__(
        self,
        fn: Callable[[State], State],
        freeze: Callable[[], contextlib.AbstractContextManager] | None = None,
    ):
        self.fn, self._freeze = fn, freeze

    def __call__(self, z: State) -> State:
        return self.fn(z)

    def freeze(self) -> contextlib.AbstractContextManager:
        """A context manager inside which the map uses one fixed minibatch."""
        if self._freeze is None:
            raise StochasticMapError(
                "this StochasticMap has no freeze(): build it as StochasticMap(fn, freeze=...) "
                "with a context-manager factory that fixes the minibatch, or use "
                "FixedPointIteration / Nesterov, which are valid for stochastic maps"
            )
        return self._freeze()


def is_stochastic(f: Any, stochastic: bool | None = None) -> bool:
    """Whether ``f`` counts as stochastic (``stochastic`` overrides the map's own attribute)."""
    return bool(getattr(f, "stochastic", False)) if stochastic is None else bool(stochastic)


def fixed_point(
    f: Callable[[State], State],
    z0: State,
    solver: Solver | None = None,
    adjoint: Adjoint | None = None,
    *,
    stochastic: bool | None = None,
    freeze: bool = False,
    throw: bool = False,
) -> Solution:
    """Solve ``z = f(z)`` from ``z0``; the result is differentiable through ``adjoint``.

    The forward solve builds no autograd graph (except with :class:`UnrolledAdjoint`), so the
    memory of a training step does not depend on the number of iterations. ``f`` may close over
    anything (network parameters, measurements): they all receive gradients.

    Args:
        f: the map; takes and returns the structure of ``z0``. Samples along axis 0 must be
            independent (per-sample stopping freezes converged samples).
        z0: initial point: a tensor ``(batch, ...)`` or a tuple of such tensors (splittings
            such as ADMM), real or complex, one precision.
        solver: a :class:`~deqir.solvers.base.Solver`. Default: ``Anderson()`` for a
            deterministic map, ``FixedPointIteration()`` for a stochastic one.
        adjoint: how gradients flow back. Default :class:`ImplicitAdjoint`.
        stochastic: whether ``f`` draws a fresh minibatch at every call; ``None`` reads the
            map's ``stochastic`` attribute (see :class:`StochasticMap`).
        freeze: run the solve (and the final differentiable application) inside ``f.freeze()``,
            one fixed minibatch, which makes Anderson and Broyden valid for a stochastic map.
        throw: raise :class:`~deqir.errors.ConvergenceError` when a sample diverges or
            produces NaN/inf (forward), or when the backward pass meets NaN/inf. Otherwise the
            failure is flagged in ``Solution.stats`` and the last finite iterate is returned.

    Returns:
        :class:`~deqir.solvers.base.Solution` with ``value`` and per-sample ``stats``.

    Raises:
        StochasticMapError: a stochastic map given to Anderson/Broyden without ``freeze`` or
            ``allow_stochastic``, or ``freeze=True`` for a map without ``freeze()``.
        ShapeError, DTypeError: ``z0`` or ``f(z)`` has an invalid structure.

    Example:
        >>> import torch
        >>> from deqir.solvers import fixed_point, FixedPointIteration
        >>> sol = fixed_point(lambda z: 0.5 * z + 1, torch.zeros(3, 2),
        ...                   solver=FixedPointIteration(tol=1e-6, max_iter=100))
        >>> sol.converged, round(float(sol.value.mean()), 4), sol.stats.iterations.tolist()
        (True, 2.0, [20, 20, 20])
    """
    spec = Structure.of(z0)
    stoch = is_stochastic(f, stochastic)
    if solver is None:
        from deqir.solvers.anderson import Anderson
        from deqir.solvers.iterative import FixedPointIteration

        solver = FixedPointIteration() if stoch and not freeze else Anderson()
    if not isinstance(solver, Solver):
        raise InvalidValueError(
            f"solver must be a deqir.solvers Solver (e.g. Anderson()); got {type(solver).__name__}"
        )
    adjoint = ImplicitAdjoint() if adjoint is None else adjoint
    if not isinstance(adjoint, Adjoint):
        raise InvalidValueError(
            f"adjoint must be a deqir.solvers Adjoint (e.g. ImplicitAdjoint()); got {type(adjoint).__name__}"
        )
    if (
        stoch
        and not freeze
        and not solver.supports_stochastic
        and not getattr(solver, "allow_stochastic", False)
    ):
        raise StochasticMapError(
            f"{solver.name} assumes the same map at every call, but this map is stochastic (it "
            "draws a fresh minibatch per call). Use FixedPointIteration or Nesterov, freeze the "
            f"minibatch for the solve with fixed_point(..., freeze=True) (the map needs a "
            f"freeze() context manager, see StochasticMap), or build {solver.name}("
            "allow_stochastic=True) to accept the mismatch"
        )
    problem = Problem(
        f=f, spec=spec, z0=spec.pack(z0, name="z0"), solver=solver, throw=throw, frozen=bool(stoch and freeze)
    )
    with _frozen(f, stoch and freeze):
        return adjoint.solve(problem)


@contextlib.contextmanager
def _frozen(f: Any, active: bool) -> Iterator[None]:
    if not active:
        yield
        return
    freeze = getattr(f, "freeze", None)
    if freeze is None:
        raise StochasticMapError(
            f"freeze=True needs a map with a freeze() method returning a context manager; "
            f"{type(f).__name__} has none (wrap it: StochasticMap(fn, freeze=...))"
        )
    with freeze():
        yield
