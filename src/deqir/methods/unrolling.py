"""Loop unrolling with feed-forward or shallow-equilibrium regularisers (LUSER), and Gilton's DEQ.

Loop unrolling (LU) runs ``K`` proximal-gradient-like steps with a learned regulariser ``R_k``::

    v_k = x_k − (η_k / L) Aᵀ(A x_k − y),      x_{k+1} = R_k(v_k)

(``L = ‖A‖²``; ``η_k > 0`` learnable, kept positive by a softplus) and backpropagates through all of
them. What ``R_k`` is decides the method:

* **LU-deep**: a feed-forward CNN (DnCNN of depth 5, 10, 17 ...): every layer of every step keeps its
  activations for the backward pass;
* **LUSER** (Guan et al., arXiv 2210.04987): a *shallow equilibrium*
  :class:`ShallowEquilibrium`: ``R_k(v) = v − head(z*)`` with ``z* = f_θ(z*, v)`` for a two- or
  three-convolution cell (:class:`deqir.priors.ShallowCell`), solved by the engine
  (:func:`deqir.solvers.fixed_point`, Anderson) without a graph and differentiated implicitly (or
  Jacobian-free): a step keeps the activations of *one* application of the cell;
* **LU-shallow**: the same cell used once from ``z = 0``, no equilibrium.

:class:`ProxGradEquilibrium` is Gilton et al.'s DEQ (DE-Prox, IEEE TCI 2021): the equilibrium of one
such step with shared weights, ``x = R(x − (η/L)∇g(x))``, Anderson forward and implicit backward.

Example:
    >>> import torch
    >>> from deqir.physics.registry import build_operator
    >>> from deqir.priors import DnCNN, ShallowCell
    >>> op = build_operator("blur", 16, kernel_size=5)
    >>> y = op.A(torch.rand(2, 1, 16, 16))
    >>> lu_deep = build_loop_unrolled(DnCNN(depth=5, width=8), steps=3)
    >>> luser = build_loop_unrolled(ShallowCell(width=8), steps=3)
    >>> tuple(lu_deep(y, op).shape), tuple(luser(y, op).shape), luser.regulariser_kind
    ((2, 1, 16, 16), (2, 1, 16, 16), 'equilibrium')
"""

from __future__ import annotations

import copy
import inspect
from typing import Any

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from deqir.errors import ConfigError, InvalidValueError, unknown_name_message
from deqir.methods.common import inverse_softplus, lipschitz

__all__ = [
    "LoopUnrolled",
    "ProxGradEquilibrium",
    "ShallowEquilibrium",
    "build_loop_unrolled",
    "build_prox_grad_equilibrium",
]

SOLVERS = ("anderson", "plain")
ADJOINTS = ("implicit", "jfb")
REGULARISERS = ("auto", "feedforward", "equilibrium")


def _solver(name: str, max_iter: int, tol: float):
    from deqir.solvers import Anderson, FixedPointIteration

    if name not in SOLVERS:
        raise InvalidValueError(unknown_name_message("solver", name, SOLVERS))
    if name == "anderson":
        return Anderson(tol=tol, max_iter=max_iter, memory=5, regularization=1e-4)
    return FixedPointIteration(tol=tol, max_iter=max_iter)


def _adjoint(name: str, max_iter: int, tol: float):
    from deqir.solvers import ImplicitAdjoint, JacobianFree

    if name not in ADJOINTS:
        raise InvalidValueError(unknown_name_message("adjoint", name, ADJOINTS))
    return JacobianFree() if name == "jfb" else ImplicitAdjoint(tol=tol, max_iter=max_iter)


class ShallowEquilibrium(nn.Module):
    """The regulariser ``R(v) = cell.readout(z*, v)`` with ``z* = cell(z*, v)`` (one LUSER step).

    Args:
        cell: a :class:`deqir.priors.ShallowCell` (or any module with ``initial_state(v)``,
            ``forward(z, v)`` and ``readout(z, v)``).
        solver: ``anderson`` or ``plain`` (fixed-point iteration).
        max_iter, tol: forward solve (relative residual).
        adjoint: ``implicit`` (IFT, the adjoint equation solved by fixed-point iteration) or
            ``jfb`` (Jacobian-free: the gradient of one application at ``z*``).
        backward_max_iter, backward_tol: the implicit adjoint solve.
        recompute: keep only ``z*`` and ``v`` for the backward pass (the readout reads the same
            ``z*``) and rebuild the graph of one cell application there: the memory a DEQ needs,
            one feature map per step, at the price of one more cell application in the backward
            pass. Without it the backward keeps the graph of ``f(z*)``: the cell's activations and
            a second feature map.

    Attributes:
        last_stats: the engine's statistics of the last solve.

    Example:
        >>> import torch
        >>> from deqir.priors import ShallowCell
        >>> reg = ShallowEquilibrium(ShallowCell(width=8), max_iter=20)
        >>> out = reg(torch.rand(1, 1, 8, 8))
        >>> tuple(out.shape), int(reg.last_stats.iterations.max()) <= 20
        ((1, 1, 8, 8), True)
    """

    def __init__(
        self,
        cell: nn.Module,
        solver: str = "anderson",
        max_iter: int = 30,
        tol: float = 1e-3,
        adjoint: str = "implicit",
        backward_max_iter: int = 30,
        backward_tol: float = 1e-3,
        recompute: bool = True,
    ) -> None:
        super().__init__()
        for attr in ("initial_state", "readout"):
            if not callable(getattr(cell, attr, None)):
                raise InvalidValueError(f"the equilibrium cell must have a method {attr}(); use ShallowCell")
        self.cell = cell
        self.solver = _solver(solver, int(max_iter), float(tol))
        self.adjoint = _adjoint(adjoint, int(backward_max_iter), float(backward_tol))
        self.recompute = bool(recompute)
        self.last_stats: Any = None

    def forward(self, v: torch.Tensor) -> torch.Tensor:  # noqa: D102
        from deqir.solvers import fixed_point

        cell = self.cell
        params = [p for p in cell.parameters() if p.requires_grad]
        needs_grad = torch.is_grad_enabled() and (v.requires_grad or bool(params))
        if not (self.recompute and needs_grad):
            sol = fixed_point(lambda z: cell(z, v), cell.initial_state(v), self.solver, self.adjoint)
            self.last_stats = sol.stats
            return cell.readout(sol.value, v)
        with torch.no_grad():
            sol = fixed_point(lambda z: cell(z, v), cell.initial_state(v), self.solver)
        self.last_stats = sol.stats
        z_star = _RecomputedEquilibrium.apply(self, sol.stats.backward, sol.value, v, *params)
        return cell.readout(z_star, v)


class _RecomputedEquilibrium(torch.autograd.Function):
    """``z*`` itself in forward (saving only ``z*`` and ``v``); backward rebuilds ``f(z*, v)``.

    The backward pass solves the adjoint equation through the rebuilt single application and
    returns ``(∂f/∂v)ᵀu`` and ``(∂f/∂θ)ᵀu``: the implicit-function-theorem gradient of ``z*``.
    """

    @staticmethod
    def forward(ctx: Any, layer: ShallowEquilibrium, backward_stats: Any, z_star, v, *params):  # noqa: D102
        ctx.layer, ctx.backward_stats = layer, backward_stats
        ctx.save_for_backward(z_star, v)
        return z_star.view_as(z_star)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor):  # noqa: D102
        z_star, v = ctx.saved_tensors
        layer = ctx.layer
        params = [p for p in layer.cell.parameters() if p.requires_grad]
        with torch.enable_grad():
            z_req = z_star.detach().requires_grad_()
            v_req = v.detach().requires_grad_(ctx.needs_input_grad[3])
            out = layer.cell(z_req, v_req)
            batch = grad.shape[0]

            def vjp(w: torch.Tensor) -> torch.Tensor:
                (res,) = torch.autograd.grad(out, z_req, w.view_as(out), retain_graph=True)
                return res.reshape(batch, -1)

            g = grad.reshape(batch, -1)
            u = layer.adjoint.solve_adjoint(vjp, g, ctx.backward_stats).view_as(out)
            wrt = ([v_req] if v_req.requires_grad else []) + params
            grads = list(torch.autograd.grad(out, wrt, u, allow_unused=True)) if wrt else []
        grad_v = grads.pop(0) if v_req.requires_grad else None
        return (None, None, None, grad_v, *grads)


class _FeedForwardCell(nn.Module):
    """A cell used once from ``z = 0`` (LU-shallow)."""

    def __init__(self, cell: nn.Module) -> None:
        super().__init__()
        self.cell = cell

    def forward(self, v: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.cell.feedforward(v)


def _as_regulariser(network: nn.Module, kind: str, equilibrium: dict[str, Any]) -> tuple[nn.Module, str]:
    if kind not in REGULARISERS:
        raise InvalidValueError(unknown_name_message("regulariser", kind, REGULARISERS))
    is_cell = bool(getattr(network, "is_equilibrium_cell", False))
    if kind == "auto":
        kind = "equilibrium" if is_cell else "feedforward"
    if kind == "equilibrium":
        if not is_cell:
            raise InvalidValueError(
                "regulariser 'equilibrium' needs a shallow equilibrium cell (model name: shallow_cell); "
                f"got {type(network).__name__}"
            )
        return ShallowEquilibrium(network, **equilibrium), kind
    return (_FeedForwardCell(network) if is_cell else network), kind


class LoopUnrolled(nn.Module):
    """``K`` unrolled steps ``x ← R_k(x − (η_k/L)∇g(x))``, backpropagated through all of them.

    Args:
        regularisers: one module per step (untied) or a single module used by every step (tied);
            each maps an image ``v`` to an image.
        steps: ``K`` (must equal the number of regularisers when several are given).
        step_size: initial ``η_k`` (relative to ``1/L``).
        learn_step: learn the ``η_k``.
        regulariser_kind: a label kept for reports (``feedforward`` / ``equilibrium``).

    Example:
        >>> import torch
        >>> from deqir.physics.registry import build_operator
        >>> op = build_operator("mri_single", 16)
        >>> model = LoopUnrolled(nn.Identity(), steps=4)
        >>> x = torch.rand(1, 1, 16, 16)
        >>> bool((model(op.A(x), op) - x).norm() < (op.zero_filled(op.A(x)).real - x).norm())
        True
    """

    def __init__(
        self,
        regularisers: nn.Module | list[nn.Module],
        steps: int = 5,
        step_size: float = 1.0,
        learn_step: bool = True,
        regulariser_kind: str = "feedforward",
    ) -> None:
        super().__init__()
        if int(steps) < 1:
            raise InvalidValueError(f"steps must be ≥ 1; got {steps}")
        if not step_size > 0:
            raise InvalidValueError(f"step_size must be > 0; got {step_size}")
        several = isinstance(regularisers, (list, tuple, nn.ModuleList))
        regs = list(regularisers) if several else [regularisers]
        if len(regs) not in (1, int(steps)):
            raise InvalidValueError(f"give 1 (tied) or {steps} (untied) regularisers; got {len(regs)}")
        self.regularisers = nn.ModuleList(regs)
        self.steps, self.tied = int(steps), len(regs) == 1
        self.regulariser_kind = regulariser_kind
        raw = torch.full((self.steps,), inverse_softplus(float(step_size)))
        if learn_step:
            self.raw_steps = nn.Parameter(raw)
        else:
            self.register_buffer("raw_steps", raw)

    @property
    def step_sizes(self) -> torch.Tensor:
        """``η_k`` (relative to ``1/L``), one per step."""
        return nn.functional.softplus(self.raw_steps)

    def regulariser(self, k: int) -> nn.Module:
        """``R_k``."""
        return self.regularisers[0 if self.tied else k]

    def forward(self, y: torch.Tensor, physics: Any, init: torch.Tensor | None = None) -> torch.Tensor:
        """Reconstruct from ``y``; ``init`` defaults to ``Aᵀy / L``."""
        L = lipschitz(physics)
        x = physics.A_adjoint(y) / L if init is None else init
        etas = self.step_sizes
        for k in range(self.steps):
            v = x - (etas[k] / L) * physics.data_grad(x, y)
            x = self.regulariser(k)(v)
        return x

    def extra_repr(self) -> str:  # noqa: D102
        return f"steps={self.steps}, tied={self.tied}, regulariser={self.regulariser_kind}"


class ProxGradEquilibrium(nn.Module):
    """Gilton's DE-Prox: the fixed point of ``x ↦ R(x − (η/L)∇g(x))``, Anderson + implicit backward.

    Args:
        network: the regulariser ``R`` (a DnCNN in Gilton et al.).
        step_size: initial ``η`` (relative to ``1/L``), learnable with ``learn_step``.
        max_iter, tol: forward Anderson solve; eval mode uses ``eval_max_iter``.
        adjoint, backward_max_iter, backward_tol: as in :class:`ShallowEquilibrium`.

    Example:
        >>> import torch
        >>> from deqir.physics.registry import build_operator
        >>> from deqir.priors import DnCNN
        >>> op = build_operator("blur", 16, kernel_size=5)
        >>> deq = ProxGradEquilibrium(DnCNN(depth=3, width=4), max_iter=10)
        >>> deq(op.A(torch.rand(1, 1, 16, 16)), op).shape
        torch.Size([1, 1, 16, 16])
    """

    def __init__(
        self,
        network: nn.Module,
        step_size: float = 1.0,
        learn_step: bool = True,
        max_iter: int = 30,
        tol: float = 1e-3,
        eval_max_iter: int = 50,
        adjoint: str = "implicit",
        backward_max_iter: int = 30,
        backward_tol: float = 1e-3,
    ) -> None:
        super().__init__()
        self.network = network
        self.max_iter, self.eval_max_iter, self.tol = int(max_iter), int(eval_max_iter), float(tol)
        self.adjoint = _adjoint(adjoint, int(backward_max_iter), float(backward_tol))
        raw = torch.tensor(inverse_softplus(float(step_size)))
        if learn_step:
            self.raw_step = nn.Parameter(raw)
        else:
            self.register_buffer("raw_step", raw)
        self.last_stats: Any = None

    @property
    def step_size(self) -> torch.Tensor:
        """``η`` (relative to ``1/L``)."""
        return nn.functional.softplus(self.raw_step)

    def forward(self, y: torch.Tensor, physics: Any, init: torch.Tensor | None = None) -> torch.Tensor:  # noqa: D102
        from deqir.solvers import fixed_point

        L = lipschitz(physics)
        x0 = (physics.A_adjoint(y) / L if init is None else init).detach()
        eta, net = self.step_size / L, self.network
        iters = self.max_iter if self.training else self.eval_max_iter
        sol = fixed_point(
            lambda x: net(x - eta * physics.data_grad(x, y)),
            x0,
            _solver("anderson", iters, self.tol),
            self.adjoint,
        )
        self.last_stats = sol.stats
        return sol.value


def _check_options(cls_or_fn, options: dict[str, Any], what: str, extra: tuple[str, ...] = ()) -> None:
    valid = [p for p in inspect.signature(cls_or_fn).parameters if p not in ("self", "network")]
    valid += list(extra)
    for key in options:
        if key not in valid:
            raise ConfigError(unknown_name_message(what, key, valid))


def build_loop_unrolled(
    network: nn.Module,
    steps: int = 5,
    tied: bool = False,
    regulariser: str = "auto",
    step_size: float = 1.0,
    learn_step: bool = True,
    **equilibrium: Any,
) -> LoopUnrolled:
    """Trainer hook (``method: {name: loop_unrolled}``): LU-deep, LU-shallow or LUSER.

    Args:
        network: a feed-forward image network (LU-deep) or a
            :class:`~deqir.priors.ShallowCell` (LUSER; LU-shallow with ``regulariser="feedforward"``).
        steps: ``K``.
        tied: one regulariser shared by every step; otherwise ``K`` copies of ``network`` (same
            initialisation, trained separately).
        regulariser: ``auto`` (equilibrium for a cell, feed-forward otherwise), ``feedforward`` or
            ``equilibrium``.
        step_size, learn_step: the ``η_k``.
        **equilibrium: :class:`ShallowEquilibrium` options (solver, max_iter, tol, adjoint,
            backward_max_iter, backward_tol).

    Example:
        >>> from deqir.priors import ShallowCell
        >>> build_loop_unrolled(ShallowCell(width=4), steps=2, regulariser="feedforward").regulariser_kind
        'feedforward'
        >>> build_loop_unrolled(ShallowCell(width=4), max_iters=3)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        deqir.errors.ConfigError: unknown loop-unrolling option 'max_iters'; did you mean 'max_iter'? ...
    """
    _check_options(ShallowEquilibrium.__init__, equilibrium, "loop-unrolling option", ("steps", "tied"))
    regs, kind = [], regulariser
    for k in range(1 if tied else int(steps)):
        net = network if k == 0 else copy.deepcopy(network)
        reg, kind = _as_regulariser(net, regulariser, {k: v for k, v in equilibrium.items() if k != "cell"})
        regs.append(reg)
    return LoopUnrolled(regs, steps=steps, step_size=step_size, learn_step=learn_step, regulariser_kind=kind)


def build_prox_grad_equilibrium(network: nn.Module, **options: Any) -> ProxGradEquilibrium:
    """Trainer hook (``method: {name: prox_grad_equilibrium}``): Gilton's DE-Prox.

    Example:
        >>> from deqir.priors import DnCNN
        >>> build_prox_grad_equilibrium(DnCNN(depth=3, width=4), max_iter=5).max_iter
        5
    """
    _check_options(ProxGradEquilibrium.__init__, options, "DEQ option")
    return ProxGradEquilibrium(network, **options)
