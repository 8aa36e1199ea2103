"""The equilibrium engine: fixed-point solvers and implicit differentiation.

``fixed_point(f, z0, solver, adjoint) -> Solution`` finds ``z = f(z)`` and makes it
differentiable; the solver and the adjoint are separate small objects.

Solvers (forward): :class:`FixedPointIteration` (plain / damped), :class:`Nesterov`
(FISTA momentum), :class:`Anderson`, :class:`Broyden`. Only the first two are valid for a
stochastic map (a fresh minibatch per call, ODER); Anderson and Broyden refuse one unless the
minibatch is frozen for the solve (``freeze=True``) or they are built with ``allow_stochastic=True``.

Adjoints (backward): :class:`ImplicitAdjoint` (IFT), :class:`JacobianFree` (JFB),
:class:`PhantomAdjoint` (k damped steps), :class:`UnrolledAdjoint` (backprop through all
iterations).

Stabilisers: :func:`spectral_norm_all`, :func:`lipschitz_estimate`.

Names load lazily, so ``import deqir.solvers`` is cheap.

Example:
    >>> import torch
    >>> from deqir.solvers import fixed_point, Anderson, ImplicitAdjoint
    >>> sol = fixed_point(lambda z: 0.5 * torch.cos(z), torch.zeros(2, 3),
    ...                   solver=Anderson(tol=1e-6), adjoint=ImplicitAdjoint())
    >>> sol.converged
    True
"""

from __future__ import annotations

from deqir._lazy import lazy_exports

_EXPORTS = {
    "fixed_point": "core",
    "StochasticMap": "core",
    "StochasticMapError": "core",
    "is_stochastic": "core",
    "Solution": "base",
    "SolverStats": "base",
    "BackwardStats": "base",
    "Solver": "base",
    "Structure": "base",
    "FixedPointIteration": "iterative",
    "Nesterov": "iterative",
    "Anderson": "anderson",
    "Broyden": "broyden",
    "Adjoint": "adjoints",
    "ImplicitAdjoint": "adjoints",
    "JacobianFree": "adjoints",
    "PhantomAdjoint": "adjoints",
    "UnrolledAdjoint": "adjoints",
    "raise_if_failed": "adjoints",
    "spectral_norm_all": "stabilizers",
    "lipschitz_estimate": "stabilizers",
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
