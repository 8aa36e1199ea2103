"""Shared pieces of the equilibrium engine: solver base class, statistics, state packing.

Solvers work on *flat* batched states ``(batch, dim)``; :class:`Structure` packs a tensor or a
tuple of tensors (real or complex, any shapes with a common batch axis) into that form and back.
:class:`Monitor` does the per-iteration bookkeeping every solver shares: residuals, per-sample
stopping, divergence and NaN detection, traces.

Residuals are per sample: ``abs = ||f(z) - z||`` and ``rel = abs / ||f(z)||`` (norms over every
non-batch entry of every component), the same definition torchdeq uses, so tolerances mean the
same thing in both libraries.

Example:
    >>> import torch
    >>> from deqir.solvers import FixedPointIteration
    >>> solver = FixedPointIteration(tol=1e-6, max_iter=200)
    >>> z, stats = solver.solve(lambda z: 0.5 * z + 1.0, torch.zeros(3, 4))
    >>> bool(stats.converged.all()), round(float(z.mean()), 4)
    (True, 2.0)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from deqir.errors import DTypeError, InvalidValueError, ShapeError

State = torch.Tensor | tuple[torch.Tensor, ...]
FlatMap = Callable[[torch.Tensor], torch.Tensor]

_STOP_MODES = ("rel", "abs")


# --------------------------------------------------------------------------- statistics
@dataclass
class BackwardStats:
    """What the last backward pass through an equilibrium layer did (filled in by backward).

    Attributes:
        calls: number of backward passes so far.
        iterations: per-sample adjoint iterations of the last pass (``None`` for adjoints that
            solve nothing: Jacobian-free, phantom, unrolled).
        abs_residual, rel_residual: per-sample final adjoint residuals (implicit adjoint only).
        converged: per-sample adjoint convergence (implicit adjoint only).
        nonfinite: per-sample flag: the incoming gradient or the adjoint solution held NaN/inf
            (or the adjoint iteration diverged) and the sample's gradient was replaced by zero,
            so no NaN reached the parameters.
    """

    calls: int = 0
    iterations: torch.Tensor | None = None
    abs_residual: torch.Tensor | None = None
    rel_residual: torch.Tensor | None = None
    converged: torch.Tensor | None = None
    nonfinite: torch.Tensor | None = None


@dataclass
class SolverStats:
    """Per-sample statistics of one fixed-point solve.

    Attributes:
        solver: name of the solver.
        iterations: ``(batch,)`` map evaluations each sample used before it stopped.
        abs_residual: ``(batch,)`` final ``||f(z) - z||``.
        rel_residual: ``(batch,)`` final ``||f(z) - z|| / ||f(z)||``.
        converged: ``(batch,)`` reached the tolerance.
        diverged: ``(batch,)`` the residual grew by more than the solver's ``divergence`` factor
            over the smallest residual seen, or became NaN/inf.
        nonfinite: ``(batch,)`` the map produced NaN or inf; the sample was stopped at its last
            finite iterate.
        abs_trace: ``(num_iterations, batch)`` absolute residual after each map evaluation
            (a stopped sample repeats its final value).
        rel_trace: ``(num_iterations, batch)`` relative residual trace.
        num_evals: total map evaluations of the solve (the whole batch is evaluated together).
        frozen: whether a stochastic map was frozen (one fixed minibatch) during the solve.
        backward: filled in when gradients flow back through the solution.
    """

    solver: str
    iterations: torch.Tensor
    abs_residual: torch.Tensor
    rel_residual: torch.Tensor
    converged: torch.Tensor
    diverged: torch.Tensor
    nonfinite: torch.Tensor
    abs_trace: torch.Tensor
    rel_trace: torch.Tensor
    num_evals: int
    frozen: bool = False
    backward: BackwardStats = field(default_factory=BackwardStats)

    @property
    def failed(self) -> torch.Tensor:
        """``(batch,)``: diverged or non-finite."""
        return self.diverged | self.nonfinite

    def summary(self) -> dict[str, float]:
        """Batch-level numbers for logging (means and maxima as Python floats)."""
        return {
            "iterations_mean": float(self.iterations.float().mean()),
            "iterations_max": int(self.iterations.max()) if self.iterations.numel() else 0,
            "abs_residual_max": float(self.abs_residual.max()),
            "rel_residual_max": float(self.rel_residual.max()),
            "converged_fraction": float(self.converged.float().mean()),
            "failed_fraction": float(self.failed.float().mean()),
            "num_evals": self.num_evals,
        }


@dataclass
class Solution:
    """The result of :func:`deqir.solvers.fixed_point`.

    Attributes:
        value: the equilibrium, with the structure of ``z0`` (a tensor or a tuple of tensors);
            differentiable through the chosen adjoint when grad mode is on.
        stats: :class:`SolverStats` of the forward solve (its ``backward`` field is filled in
            by the backward pass).
    """

    value: State
    stats: SolverStats

    @property
    def converged(self) -> bool:
        """Whether every sample reached the tolerance."""
        return bool(self.stats.converged.all())


# --------------------------------------------------------------------------- packing
class Structure:
    """Packs a tensor or a tuple of tensors with a common batch axis into ``(batch, dim)``.

    Complex components are stored as interleaved real and imaginary parts, so every solver
    works on real flat states. All components must share one real dtype and one device.

    Example:
        >>> import torch
        >>> s = Structure.of((torch.zeros(2, 3), torch.ones(2, 1, 2, 2)))
        >>> s.pack((torch.zeros(2, 3), torch.ones(2, 1, 2, 2))).shape
        torch.Size([2, 7])
    """

    def __init__(
        self,
        shapes: list[tuple[int, ...]],
        complex_: list[bool],
        is_tuple: bool,
        batch: int,
        dtype: torch.dtype,
        device: torch.device,
    ):
        self.shapes, self.complex, self.is_tuple = shapes, complex_, is_tuple
        self.batch, self.dtype, self.device = batch, dtype, device
        self.sizes = [_prod(s) * (2 if c else 1) for s, c in zip(shapes, complex_, strict=True)]
        self.dim = sum(self.sizes)

    @classmethod
    def of(cls, z0: Any, name: str = "z0") -> Structure:
        """Validate ``z0`` and describe its structure."""
        is_tuple = isinstance(z0, (tuple, list))
        comps = list(z0) if is_tuple else [z0]
        if not comps:
            raise ShapeError(f"{name} is an empty tuple: give at least one tensor")
        for i, c in enumerate(comps):
            if not isinstance(c, torch.Tensor):
                raise DTypeError(f"{name}[{i}] must be a torch.Tensor; got {type(c).__name__}")
            if not (c.is_floating_point() or c.is_complex()):
                raise DTypeError(
                    f"{name}[{i}] must be floating point or complex; got {c.dtype} (use .float())"
                )
            if c.dim() == 0:
                raise ShapeError(f"{name}[{i}] is a scalar: states need a leading batch axis (use z[None])")
        real = [_real_dtype(c.dtype) for c in comps]
        if len(set(real)) > 1:
            raise DTypeError(
                f"{name}: all components must share one precision; got {[c.dtype for c in comps]}"
            )
        if len({c.device for c in comps}) > 1:
            raise DTypeError(f"{name}: all components must be on one device")
        batches = {int(c.shape[0]) for c in comps}
        if len(batches) > 1:
            raise ShapeError(
                f"{name}: all components must share the batch size (axis 0); got "
                f"{[tuple(c.shape) for c in comps]}"
            )
        return cls(
            [tuple(c.shape[1:]) for c in comps],
            [c.is_complex() for c in comps],
            is_tuple,
            batches.pop(),
            real[0],
            comps[0].device,
        )

    def components(self, z: Any, name: str) -> list[torch.Tensor]:
        """The components of ``z``, checked against the structure."""
        comps = list(z) if isinstance(z, (tuple, list)) else [z]
        if isinstance(z, (tuple, list)) != self.is_tuple or len(comps) != len(self.shapes):
            raise ShapeError(f"{name} must have the structure of z0 ({self.describe()}); got {_describe(z)}")
        for c, s in zip(comps, self.shapes, strict=True):
            if not isinstance(c, torch.Tensor) or tuple(c.shape) != (self.batch, *s):
                raise ShapeError(
                    f"{name} must have the structure of z0 ({self.describe()}); got {_describe(z)}"
                )
        return comps

    def pack(self, z: Any, name: str = "f(z)") -> torch.Tensor:
        """``(batch, dim)`` view (single real tensor) or concatenation of the components."""
        comps = self.components(z, name)
        flat = [(torch.view_as_real(c) if c.is_complex() else c).reshape(self.batch, -1) for c in comps]
        return flat[0] if len(flat) == 1 else torch.cat(flat, dim=1)

    def unpack(self, flat: torch.Tensor) -> State:
        """Views of ``flat`` with the structure of ``z0``."""
        out, start = [], 0
        for s, c, n in zip(self.shapes, self.complex, self.sizes, strict=True):
            part = flat[:, start : start + n]
            start += n
            if c:
                part = torch.view_as_complex(part.reshape(self.batch, *s, 2))
            else:
                part = part.reshape(self.batch, *s)
            out.append(part)
        return tuple(out) if self.is_tuple else out[0]

    def describe(self) -> str:  # noqa: D102
        parts = [
            f"({self.batch}, {', '.join(map(str, s))})" + (" complex" if c else "")
            for s, c in zip(self.shapes, self.complex, strict=True)
        ]
        return ("tuple of " if self.is_tuple else "") + ", ".join(parts)


def _describe(z: Any) -> str:
    if isinstance(z, torch.Tensor):
        return f"tensor of shape {tuple(z.shape)}"
    if isinstance(z, (tuple, list)):
        return f"{type(z).__name__} of [" + ", ".join(_describe(c) for c in z) + "]"
    return type(z).__name__


def _prod(shape: Sequence[int]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def _real_dtype(dtype: torch.dtype) -> torch.dtype:
    return {
        torch.complex64: torch.float32,
        torch.complex128: torch.float64,
        torch.complex32: torch.float16,
    }.get(dtype, dtype)


# --------------------------------------------------------------------------- solver base
@dataclass(frozen=True)
class Solver:
    """Base class of the fixed-point solvers: the stopping rule and the failure guards.

    Args:
        tol: tolerance on the residual named by ``stop``.
        stop: ``"rel"`` (``||f(z) - z|| / ||f(z)|| <= tol``) or ``"abs"`` (``||f(z) - z|| <= tol``).
        max_iter: most map evaluations.
        divergence: a sample whose residual exceeds ``divergence`` times the smallest residual
            it reached is stopped and flagged as diverged.

    Subclasses implement :meth:`solve` on flat states ``(batch, dim)``.
    """

    tol: float = 1e-3
    stop: str = "rel"
    max_iter: int = 100
    divergence: float = 1e6

    #: whether the solver is valid for a map that changes between calls (a fresh minibatch).
    supports_stochastic: ClassVar[bool] = True
    #: whether the solver's iterations can be recorded by autograd (:class:`UnrolledAdjoint`).
    supports_unrolled: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.stop not in _STOP_MODES:
            raise InvalidValueError(f"stop must be 'rel' or 'abs'; got {self.stop!r}")
        if not self.tol >= 0:
            raise InvalidValueError(f"tol must be >= 0; got {self.tol}")
        if int(self.max_iter) < 1:
            raise InvalidValueError(f"max_iter must be >= 1; got {self.max_iter}")
        if not self.divergence > 1:
            raise InvalidValueError(f"divergence must be > 1; got {self.divergence}")

    @property
    def name(self) -> str:  # noqa: D102
        return type(self).__name__

    def replace(self, **changes: Any) -> Solver:
        """A copy with some settings changed (``solver.replace(tol=1e-6)``)."""
        return dataclasses.replace(self, **changes)

    def solve(self, f: FlatMap, z0: torch.Tensor) -> tuple[torch.Tensor, SolverStats]:
        """Solve ``z = f(z)`` for flat states ``(batch, dim)``.

        Returns:
            ``f(z)`` at each sample's final iterate (its last finite iterate when the map
            produced NaN), and the statistics.
        """
        raise NotImplementedError


# --------------------------------------------------------------------------- monitor
class Monitor:
    """Per-iteration bookkeeping shared by the solvers.

    :meth:`update` takes the residual norms of one map evaluation for the whole batch and
    returns the mask of samples that stop now (converged, diverged or non-finite); samples
    that stopped earlier are ignored. Everything stays on the device; the only host sync is
    :meth:`any_active`, once per iteration.
    """

    def __init__(self, solver: Solver, batch: int, device: torch.device, dtype: torch.dtype = torch.float32):
        self.solver = solver
        self.tol, self.rel = float(solver.tol), solver.stop == "rel"
        self.divergence = float(solver.divergence)
        self.active = torch.ones(batch, dtype=torch.bool, device=device)
        self.iterations = torch.zeros(batch, dtype=torch.long, device=device)
        self.converged = torch.zeros(batch, dtype=torch.bool, device=device)
        self.diverged = torch.zeros(batch, dtype=torch.bool, device=device)
        self.nonfinite = torch.zeros(batch, dtype=torch.bool, device=device)
        inf = dict(fill_value=float("inf"), device=device, dtype=dtype)
        self.best = torch.full((batch,), **inf)
        self.abs_last = torch.full((batch,), **inf)
        self.rel_last = torch.full((batch,), **inf)
        self.abs_trace: list[torch.Tensor] = []
        self.rel_trace: list[torch.Tensor] = []
        self.evals = 0
        self.bad_now = self.nonfinite
        self._all_active = True

    def update(self, abs_res: torch.Tensor, f_norm: torch.Tensor) -> torch.Tensor:
        """Record one evaluation; return the ``(batch,)`` mask of samples stopping now.

        ``abs_res`` and ``f_norm`` are the per-sample norms ``||f(z) - z||`` and ``||f(z)||``
        (without autograd graph). A handful of tiny tensor operations, no host sync.
        """
        self.evals += 1
        rel_res = abs_res / f_norm.clamp_min(1e-30)
        bad = nonfinite_rows(rel_res)  # NaN/inf anywhere in f(z) makes the ratio non-finite
        conv = (rel_res if self.rel else abs_res) <= self.tol  # False for NaN and inf
        div = abs_res > self.best * self.divergence
        if self._all_active:  # fast path: no sample has stopped yet
            stop = conv | bad | div
            self.iterations += 1
            self.abs_last, self.rel_last = abs_res, rel_res
            self.best = torch.minimum(self.best, abs_res)
            self.converged = conv
            self.bad_now = self.nonfinite = bad
            self.diverged = stop & ~conv
            self.active = ~stop
        else:
            active = self.active
            stop = active & (conv | bad | div)
            self.iterations += active
            self.abs_last = torch.where(active, abs_res, self.abs_last)
            self.rel_last = torch.where(active, rel_res, self.rel_last)
            self.best = torch.where(active, torch.minimum(self.best, abs_res), self.best)
            self.converged = self.converged | (stop & conv)
            self.bad_now = active & bad
            self.nonfinite = self.nonfinite | self.bad_now
            self.diverged = self.diverged | (stop & ~conv)
            self.active = active & ~stop
        self.abs_trace.append(self.abs_last)
        self.rel_trace.append(self.rel_last)
        return stop

    def any_active(self) -> bool:
        """Whether some sample still iterates (one host sync)."""
        self._all_active = bool(self.active.all())
        return self._all_active or bool(self.active.any())

    @property
    def all_active(self) -> bool:
        """Whether no sample has stopped (as of the last :meth:`any_active`)."""
        return self._all_active

    def stats(self, frozen: bool = False) -> SolverStats:
        """The :class:`SolverStats` of the solve so far."""
        empty = self.abs_last.new_zeros(0, self.active.numel())
        return SolverStats(
            solver=self.solver.name,
            iterations=self.iterations,
            abs_residual=self.abs_last,
            rel_residual=self.rel_last,
            converged=self.converged,
            diverged=self.diverged,
            nonfinite=self.nonfinite,
            abs_trace=torch.stack(self.abs_trace) if self.abs_trace else empty,
            rel_trace=torch.stack(self.rel_trace) if self.rel_trace else empty,
            num_evals=self.evals,
            frozen=frozen,
        )


def nonfinite_rows(x: torch.Tensor) -> torch.Tensor:
    """``~isfinite(x)`` in two operations (``x - x`` is 0 exactly when ``x`` is finite)."""
    return (x - x) != 0


def row_norm(x: torch.Tensor) -> torch.Tensor:
    """Euclidean norm of each row of a ``(batch, dim)`` tensor (no graph)."""
    return torch.linalg.vector_norm(x.detach(), dim=1)


def col(mask: torch.Tensor) -> torch.Tensor:
    """A ``(batch,)`` mask as a ``(batch, 1)`` column for broadcasting."""
    return mask[:, None]
