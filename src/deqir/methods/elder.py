"""ELDER: an explicit learned regulariser trained as a deep equilibrium (Zou et al., OJSP 2023).

ELDER reconstructs by proximal gradient on the objective ``F(x) = g(x) + λ R_θ(x)``, with
``g(x) = ½‖A x − y‖²`` and an *explicit* scalar regulariser ``R_θ``::

    z = x − λ τ ∇R_θ(x),    x⁺ = P₊( prox_{τ g}(z) )

(``P₊`` the optional clamp at zero; ``prox_{τ g}`` the operator's closed-form ``prox_data``, or a
gradient step ``z − τ ∇g(x)`` for operators that have none). Because ``R_θ`` is explicit, ``F`` is
evaluated at every iteration; with Armijo backtracking (accept when
``F(x) − F(x⁺) ≥ (γ_bt/τ)‖x⁺ − x‖²``, else ``τ ← τ/2``) it never increases, the convergence
guarantee ELDER inherits. θ is trained so that the *fixed points* of the map are MSE-optimal: a
deep equilibrium (fixed ``τ``, no backtracking) whose implicit gradient needs double backprop
through ``∇R_θ`` (hence smooth activations).

Pieces:

* potentials (``value(x) -> (batch,)``, ``grad(x, create_graph) -> ∇R``, by autograd):
  :class:`GradientStepPotential` ``R(x) = ½‖x − N_θ(x)‖²`` (the ELDER default),
  :class:`REDPotential` ``R(x) = ½ xᵀ(x − N_θ(x))``, :class:`ScalarPotential`
  ``R(x) = Σ N_θ(x)``, and :class:`ImplicitPrior`, the implicit baseline whose "gradient" is
  ``x − D_θ(x)`` with no potential behind it; :func:`build_potential` picks one by name;
* :func:`proximal_gradient`: the monotone reconstruction algorithm (backtracking, optional
  Nesterov momentum with a monotone safeguard), returning the result and a :class:`ELDERTrace`;
* :class:`ELDER`: the learned model ``forward(y, physics, init=None)``; :func:`build_elder` is its
  trainer hook (``method: {name: elder}``).

Example:
    >>> import torch
    >>> from deqir.methods.elder import ELDER
    >>> from deqir.physics.registry import build_operator
    >>> from deqir.priors import DnCNN
    >>> _ = torch.manual_seed(0)
    >>> op = build_operator("blur", 16, kernel_size=5)
    >>> model = ELDER(DnCNN(depth=3, width=4, activation="elu"), lam=0.1, tau=1.0, max_iter=20)
    >>> y = op.A(torch.rand(2, 1, 16, 16))
    >>> model(y, op).square().mean().backward()          # training mode: a DEQ, implicit gradient
    >>> _ = model.eval()
    >>> x = model(y, op)                                 # eval: monotone backtracking
    >>> model.last_trace.monotone
    True
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from deqir.errors import ConfigError, InvalidValueError, unknown_name_message
from deqir.methods.common import inverse_softplus

POTENTIALS = ("gradient_step", "red", "scalar", "implicit")
SOLVERS = ("anderson", "plain", "nesterov")
ADJOINTS = ("implicit", "jfb", "unrolled")
DATA_STEPS = ("auto", "prox", "gradient")

#: Activation modules that are not twice differentiable (their second derivative vanishes almost
#: everywhere): double backprop through ``∇R`` would see no curvature.
NONSMOOTH_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.RReLU,
    nn.Hardtanh,
    nn.Hardsigmoid,
    nn.Hardswish,
    nn.Hardshrink,
    nn.Softshrink,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
)


def check_smooth(network: nn.Module, what: str = "an explicit ELDER potential") -> None:
    """Raise :class:`InvalidValueError` if ``network`` holds a non-smooth activation module.

    Only modules are inspected: a ``torch.relu`` called inside a ``forward`` is not seen.

    Example:
        >>> from torch import nn
        >>> check_smooth(nn.Sequential(nn.Conv2d(1, 4, 3), nn.ELU()))
        >>> check_smooth(nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU()))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        deqir.errors.InvalidValueError: ... contains ReLU (module '1')...
    """
    for name, module in network.named_modules():
        if isinstance(module, NONSMOOTH_MODULES):
            kind = type(module).__name__
            raise InvalidValueError(
                f"the network of {what} contains {kind} (module '{name or type(network).__name__}'), "
                "which is not twice differentiable: ∇R would have no curvature for double backprop "
                "(DEQ training differentiates ∇R once more). Use a smooth activation: "
                "DnCNN(activation='elu') or 'softplus', SmoothResUNet(activation='elu') (model "
                "'drunet'), or replace the module with nn.ELU / nn.Softplus"
            )


# --------------------------------------------------------------------------- potentials
class Potential(nn.Module):
    """Base class of the regularisers: ``value(x) -> (batch,)`` and ``grad(x) -> ∇R(x)``.

    Args:
        network: the network ``N_θ``, called as ``network(x)`` (or ``network(x, prior_sigma)``).
        prior_sigma: noise level passed to a network with a noise-level input (``None``: none).
        check: refuse a network with non-smooth activations (see :func:`check_smooth`).

    Subclasses implement :meth:`value`; :meth:`grad` differentiates it with autograd.
    """

    #: whether the regulariser has a value (an objective can be evaluated and backtracked on).
    has_value = True

    def __init__(self, network: nn.Module, prior_sigma: float | None = None, check: bool = True):
        super().__init__()
        if not isinstance(network, nn.Module):
            raise InvalidValueError(f"network must be a torch.nn.Module; got {type(network).__name__}")
        if check:
            check_smooth(network, f"the {self.name} potential")
        self.network = network
        self.prior_sigma = prior_sigma

    @property
    def name(self) -> str:  # noqa: D102
        return type(self).__name__

    def net(self, x: torch.Tensor) -> torch.Tensor:
        """``N_θ(x)``."""
        return self.network(x) if self.prior_sigma is None else self.network(x, self.prior_sigma)

    def value(self, x: torch.Tensor) -> torch.Tensor:
        """``R(x)``, one value per batch element ``(batch,)``."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.value(x)

    def grad(self, x: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
        """``∇R(x)`` by autograd (works under ``torch.no_grad`` too).

        Args:
            x: images ``(batch, C, H, W)``.
            create_graph: keep the graph of the gradient (to differentiate it again, with
                respect to ``x`` and θ: DEQ training). Otherwise the result is detached.
        """
        with torch.enable_grad():
            # with create_graph, stay connected to whatever x depends on
            inp = x if create_graph and x.requires_grad else x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self.value(inp).sum(), inp, create_graph=create_graph)
        return g if create_graph else g.detach()


class GradientStepPotential(Potential):
    """``R(x) = ½‖x − N_θ(x)‖²`` (ELDER's default; ``N_θ`` a denoiser).

    Example:
        >>> import torch
        >>> from deqir.priors import DnCNN
        >>> R = GradientStepPotential(DnCNN(depth=3, width=4, activation="elu"))
        >>> x = torch.rand(2, 1, 8, 8)
        >>> tuple(R.value(x).shape), tuple(R.grad(x).shape)
        ((2,), (2, 1, 8, 8))
    """

    def value(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return 0.5 * (x - self.net(x)).flatten(1).pow(2).sum(1)


class REDPotential(Potential):
    """``R(x) = ½ xᵀ(x − N_θ(x))`` (the RED regulariser of a denoiser ``N_θ``).

    Example:
        >>> import torch
        >>> R = REDPotential(torch.nn.Conv2d(1, 1, 3, padding=1))
        >>> tuple(R.grad(torch.rand(1, 1, 8, 8)).shape)
        (1, 1, 8, 8)
    """

    def value(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return 0.5 * (x * (x - self.net(x))).flatten(1).sum(1)


class ScalarPotential(Potential):
    """``R(x) = Σ N_θ(x)``: the network's output, of any shape, summed per batch element.

    Example:
        >>> import torch
        >>> class HalfSquare(torch.nn.Module):
        ...     def forward(self, x):
        ...         return 0.5 * x**2
        >>> R = ScalarPotential(HalfSquare())      # R(x) = ½‖x‖², ∇R(x) = x
        >>> x = torch.rand(1, 1, 4, 4)
        >>> bool(torch.allclose(R.grad(x), x))
        True
    """

    def value(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        out = self.net(x)
        return out.reshape(out.shape[0], -1).sum(1)


class ImplicitPrior(Potential):
    """The implicit baseline: the step direction ``x − D_θ(x)`` has no potential behind it.

    ``grad`` returns ``x − D_θ(x)`` (differentiable when grad mode is on); there is no ``value``,
    so no objective and no backtracking: the algorithm runs with a fixed ``τ``. One derivative of
    ``D_θ`` suffices (DEQ training), so non-smooth activations are accepted.

    Example:
        >>> import torch
        >>> P = ImplicitPrior(torch.nn.Identity())
        >>> float(P.grad(torch.ones(1, 1, 4, 4)).abs().max())
        0.0
    """

    has_value = False

    def __init__(self, network: nn.Module, prior_sigma: float | None = None, check: bool = False):
        super().__init__(network, prior_sigma, check=check)

    def value(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        raise InvalidValueError(
            "the implicit prior x − D(x) has no potential value: use an explicit potential "
            "('gradient_step', 'red' or 'scalar') to evaluate or backtrack on the objective"
        )

    def grad(self, x: torch.Tensor, create_graph: bool = False) -> torch.Tensor:  # noqa: D102
        if create_graph:
            return x - self.net(x)
        with torch.no_grad():
            return x - self.net(x)


_POTENTIAL_CLASSES: dict[str, type[Potential]] = {
    "gradient_step": GradientStepPotential,
    "red": REDPotential,
    "scalar": ScalarPotential,
    "implicit": ImplicitPrior,
}


def build_potential(
    name: str, network: nn.Module, prior_sigma: float | None = None, check: bool | None = None
) -> Potential:
    """The potential ``name`` (one of :data:`POTENTIALS`) around ``network``.

    Args:
        name: ``gradient_step``, ``red``, ``scalar`` or ``implicit``.
        network: ``N_θ``.
        prior_sigma: noise level for a network with a noise-level input.
        check: refuse non-smooth activations (default: for the explicit potentials only).

    Raises:
        InvalidValueError: unknown name (the closest valid one is suggested), or a non-smooth
            network for an explicit potential.

    Example:
        >>> from deqir.priors import DnCNN
        >>> type(build_potential("red", DnCNN(depth=2, width=4, activation="softplus"))).__name__
        'REDPotential'
    """
    if name not in _POTENTIAL_CLASSES:
        raise InvalidValueError(unknown_name_message("ELDER potential", name, POTENTIALS))
    cls = _POTENTIAL_CLASSES[name]
    if check is None:
        check = cls.has_value
    return cls(network, prior_sigma=prior_sigma, check=check)


# --------------------------------------------------------------------------- algorithm
@dataclass
class ELDERTrace:
    """What one run of :func:`proximal_gradient` did, per batch element.

    Attributes:
        objective: ``(n + 1, batch)``: ``F(x_k) = g(x_k) + λ R(x_k)`` from ``x_0`` on (NaN for the
            implicit prior, which has no objective).
        step_norm: ``(n, batch)``: ``‖x_{k+1} − x_k‖``.
        tau: ``(n, batch)``: the step ``τ`` the accepted step used.
        iterations: ``(batch,)``: iterations each sample ran before it stopped.
        converged: ``(batch,)``: reached ``‖x_{k+1} − x_k‖ ≤ tol ‖x_k‖``, or (with backtracking)
            no step could be accepted while both the decrease asked and the change of ``F`` were
            below the rounding error of ``F`` (the precision limit of a monotone line search).
        stalled: ``(batch,)``: no step passed the Armijo test after ``max_backtracks`` halvings
            (the sample was stopped where it was; its objective still never increased).
        backtracks: ``(batch,)``: total halvings of ``τ``.
        restarts: ``(batch,)``: momentum restarts by the monotone safeguard.
    """

    objective: torch.Tensor
    step_norm: torch.Tensor
    tau: torch.Tensor
    iterations: torch.Tensor
    converged: torch.Tensor
    stalled: torch.Tensor
    backtracks: torch.Tensor
    restarts: torch.Tensor

    @property
    def monotone(self) -> bool:
        """Whether the recorded objective never increased (``True`` when there is none)."""
        obj = self.objective
        if bool(torch.isnan(obj).all()):
            return True
        return bool((obj[1:] <= obj[:-1]).all())

    def summary(self) -> dict[str, float]:
        """Batch-level numbers for logging."""
        return {
            "iterations_mean": float(self.iterations.float().mean()),
            "iterations_max": int(self.iterations.max()) if self.iterations.numel() else 0,
            "objective_final_mean": float(self.objective[-1].mean()),
            "converged_fraction": float(self.converged.float().mean()),
            "backtracks_mean": float(self.backtracks.float().mean()),
            "monotone": float(self.monotone),
        }


def data_step(physics: Any, x: torch.Tensor, z: torch.Tensor, y: torch.Tensor, tau, mode: str = "auto"):
    """``prox_{τ g}(z)`` when the operator has ``prox_data`` (``mode`` auto/prox), else ``z − τ ∇g(x)``.

    ``tau`` is a number, a 0-d tensor, or one value per batch element.

    Example:
        >>> import torch
        >>> from deqir.physics.registry import build_operator
        >>> op = build_operator("blur", 8, kernel_size=3)
        >>> x = torch.rand(1, 1, 8, 8)
        >>> tuple(data_step(op, x, x, op.A(x), 1.0).shape)
        (1, 1, 8, 8)
    """
    if mode not in DATA_STEPS:
        raise InvalidValueError(unknown_name_message("data step", mode, DATA_STEPS))
    has_prox = callable(getattr(physics, "prox_data", None))
    if mode == "prox" and not has_prox:
        raise InvalidValueError(
            f"{type(physics).__name__} has no prox_data: use data_step='gradient' (or 'auto')"
        )
    if has_prox and mode != "gradient":
        return physics.prox_data(z, y, tau)
    t = tau.reshape(-1, *([1] * (x.dim() - 1))) if isinstance(tau, torch.Tensor) and tau.dim() else tau
    return z - t * physics.data_grad(x, y)


def _row_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1)


def _col(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (like.dim() - 1)))


def proximal_gradient(
    y: torch.Tensor,
    physics: Any,
    potential: Potential,
    lam: float | torch.Tensor,
    tau: float | torch.Tensor,
    init: torch.Tensor | None = None,
    *,
    max_iter: int = 100,
    tol: float = 1e-5,
    backtracking: bool = True,
    momentum: bool = False,
    gamma_bt: float = 0.1,
    max_backtracks: int = 30,
    nonnegative: bool = True,
    data_mode: str = "auto",
    callback: Callable[[int, torch.Tensor], None] | None = None,
) -> tuple[torch.Tensor, ELDERTrace]:
    """Minimise ``F(x) = ½‖A x − y‖² + λ R(x)`` by (accelerated) proximal gradient.

    Each iteration: ``z = s − λτ∇R(s)``, ``x⁺ = P₊(prox_{τ g}(z))`` with ``s = x_k`` (or the
    Nesterov point ``s = P₊(x_k + β_k (x_k − x_{k−1}))`` with ``momentum``). With ``backtracking``
    a step is accepted when ``F(s) − F(x⁺) ≥ (γ_bt/τ)‖x⁺ − s‖²``, else ``τ ← τ/2`` (per sample;
    the halved ``τ`` is kept for later iterations). The momentum's monotone safeguard: a sample
    whose accelerated step would raise ``F`` above ``F(x_k)`` restarts its momentum and takes a
    plain step from ``x_k``. So with backtracking the recorded objective never increases. Runs
    without an autograd graph; the result is detached.

    Args:
        y: measurements ``(batch, ...)``.
        physics: the operator (with ``prox_data`` for an exact data step; otherwise a gradient
            step on ``g`` is taken, see :func:`data_step`).
        potential: a :class:`Potential` (the :class:`ImplicitPrior` needs ``backtracking=False``).
        lam: ``λ``, the regularisation weight.
        tau: ``τ``, the initial step.
        init: ``x_0`` (default ``Aᵀy``), clamped at zero with ``nonnegative``.
        max_iter: most iterations.
        tol: stop a sample when ``‖x_{k+1} − x_k‖ ≤ tol ‖x_k‖``.
        backtracking: Armijo backtracking (the monotone algorithm).
        momentum: Nesterov (FISTA) momentum with the monotone safeguard.
        gamma_bt: ``γ_bt`` of the Armijo test.
        max_backtracks: halvings tried per iteration before a sample is declared stalled.
        nonnegative: clamp every iterate at zero.
        data_mode: ``auto``, ``prox`` or ``gradient`` (see :func:`data_step`).
        callback: called as ``callback(k, x_k)`` for ``k = 0, 1, ...``.

    Returns:
        The reconstruction and its :class:`ELDERTrace`.

    Example:
        >>> import torch
        >>> from deqir.physics.registry import build_operator
        >>> class HalfSquare(torch.nn.Module):
        ...     def forward(self, x):
        ...         return 0.5 * x**2
        >>> op = build_operator("blur", 16, kernel_size=5)
        >>> y = op.A(torch.rand(1, 1, 16, 16))
        >>> x, trace = proximal_gradient(y, op, ScalarPotential(HalfSquare()), lam=0.5, tau=4.0,
        ...                              nonnegative=False, tol=1e-7)
        >>> bool(torch.allclose(x, op.prox_data(torch.zeros_like(x), y, 2.0), atol=1e-5)), trace.monotone
        (True, True)
    """
    if not isinstance(potential, Potential):
        raise InvalidValueError(f"potential must be a deqir Potential; got {type(potential).__name__}")
    if backtracking and not potential.has_value:
        raise InvalidValueError(
            "backtracking needs an objective, but the implicit prior x − D(x) has none: pass "
            "backtracking=False (fixed τ) or use an explicit potential"
        )
    if not (0 < gamma_bt < 1):
        raise InvalidValueError(f"gamma_bt must lie in (0, 1); got {gamma_bt}")
    if int(max_iter) < 1 or int(max_backtracks) < 0:
        raise InvalidValueError(
            f"max_iter must be >= 1 and max_backtracks >= 0; got {max_iter}, {max_backtracks}"
        )
    with torch.no_grad():
        lam_v = float(lam)
        tau0 = float(tau)
        if not (lam_v >= 0 and tau0 > 0 and math.isfinite(lam_v) and math.isfinite(tau0)):
            raise InvalidValueError(f"lam must be >= 0 and tau > 0 (finite); got lam={lam_v}, tau={tau0}")
        x = physics.A_adjoint(y) if init is None else init.detach()
        if nonnegative:
            x = x.clamp_min(0)
        batch, dtype, device = x.shape[0], x.dtype, x.device
        explicit = potential.has_value

        def objective(v: torch.Tensor) -> torch.Tensor:
            if not explicit:
                return torch.full((batch,), float("nan"), dtype=dtype, device=device)
            return physics.data_fidelity(v, y).to(dtype) + lam_v * potential.value(v)

        def candidate(s: torch.Tensor, grad_r: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            z = s - lam_v * _col(t, s) * grad_r
            out = data_step(physics, s, z, y, t, data_mode)
            return out.clamp_min(0) if nonnegative else out

        eps = torch.finfo(dtype).eps

        def step(s, f_s, t, rows):
            """Backtracking from ``s`` for the samples in ``rows``.

            Returns ``(u, F(u), τ, halvings, stuck, precise)``: ``stuck`` samples found no
            acceptable step (``u = s``); ``precise`` ones (a subset) stopped because both the
            decrease asked and the change of ``F`` are below the objective's rounding error.
            """
            grad_r = potential.grad(s)
            u, f_u, t = s.clone(), f_s.clone(), t.clone()
            halvings = torch.zeros(batch, dtype=torch.long, device=device)
            need = rows.clone()
            precise = torch.zeros_like(need)
            for _ in range(int(max_backtracks) + 1):
                cand = candidate(s, grad_r, t)
                f_c = objective(cand)
                if backtracking:
                    dec = (gamma_bt / t) * _row_norm(cand - s).pow(2)
                    ok = torch.isfinite(f_c) & (f_s - f_c >= dec)
                    rounding = 8 * eps * torch.maximum(f_s.abs(), f_c.abs())
                    limited = need & ~ok & torch.isfinite(f_c) & (dec <= rounding) & (f_c - f_s <= rounding)
                    precise |= limited
                else:
                    ok = torch.ones_like(need)
                    limited = torch.zeros_like(need)
                take = need & ok
                u = torch.where(_col(take, s), cand, u)
                f_u = torch.where(take, f_c, f_u)
                need = need & ~ok & ~limited
                if not bool(need.any()):
                    break
                t = torch.where(need, t / 2, t)
                halvings += need.long()
            return u, f_u, t, halvings, need | precise, precise

        f_x = objective(x)
        tau_b = torch.full((batch,), tau0, dtype=dtype, device=device)
        active = torch.ones(batch, dtype=torch.bool, device=device)
        converged = torch.zeros_like(active)
        stalled = torch.zeros_like(active)
        iterations = torch.zeros(batch, dtype=torch.long, device=device)
        backtracks = torch.zeros_like(iterations)
        restarts = torch.zeros_like(iterations)
        objs, steps, taus = [f_x.clone()], [], []
        x_prev = x
        t_mom = torch.ones(batch, dtype=dtype, device=device)
        if callback is not None:
            callback(0, x)
        for k in range(int(max_iter)):
            if momentum:
                t_new = (1 + torch.sqrt(1 + 4 * t_mom * t_mom)) / 2
                s = x + _col((t_mom - 1) / t_new, x) * (x - x_prev)
                if nonnegative:  # the Armijo test needs a feasible point: as τ → 0, x⁺ → P₊(s)
                    s = s.clamp_min(0)
                f_s = objective(s) if explicit else f_x
            else:
                t_new, s, f_s = t_mom, x, f_x
            u, f_u, tau_new, halv, stuck, precise = step(s, f_s, tau_b, active)
            if momentum:
                # monotone safeguard: an accelerated step may not raise F above F(x_k)
                bad = active & (stuck | ~(f_u <= f_x)) if explicit else torch.zeros_like(active)
                if bool(bad.any()):
                    # from the step τ held before the accelerated attempt
                    u2, f_u2, tau2, halv2, stuck2, precise2 = step(x, f_x, tau_b, bad)
                    u = torch.where(_col(bad, x), u2, u)
                    f_u = torch.where(bad, f_u2, f_u)
                    tau_new = torch.where(bad, tau2, tau_new)
                    halv = halv + torch.where(bad, halv2, torch.zeros_like(halv2))
                    stuck = torch.where(bad, stuck2, stuck)
                    precise = torch.where(bad, precise2, precise)
                    t_new = torch.where(bad, torch.ones_like(t_new), t_new)
                    restarts += bad.long()
            # a stuck sample stays where it is; inactive samples do not move
            move = active & ~stuck
            if not bool(move.any()):  # every running sample is stuck: stop, recording no null step
                converged |= active & precise
                stalled |= active & ~precise
                backtracks += torch.where(active, halv, torch.zeros_like(halv))
                break
            x_next = torch.where(_col(move, x), u, x)
            f_next = torch.where(move, f_u, f_x)
            dx = _row_norm(x_next - x)
            taus.append(torch.where(active, tau_new, tau_b))
            steps.append(dx)
            backtracks += torch.where(active, halv, torch.zeros_like(halv))
            iterations += active.long()
            newly_conv = move & (dx <= tol * _row_norm(x).clamp_min(torch.finfo(dtype).tiny))
            newly_conv |= active & stuck & precise  # converged to the precision F can resolve
            converged |= newly_conv
            stalled |= active & stuck & ~precise
            tau_b = torch.where(active, tau_new, tau_b)
            x_prev = torch.where(_col(move, x), x, x_prev)
            t_mom = torch.where(move, t_new, t_mom)
            x, f_x = x_next, f_next
            active = active & ~newly_conv & ~stuck
            objs.append(f_x.clone())
            if callback is not None:
                callback(k + 1, x)
            if not bool(active.any()):
                break
    empty = torch.zeros(0, batch, dtype=dtype, device=device)
    trace = ELDERTrace(
        objective=torch.stack(objs),
        step_norm=torch.stack(steps) if steps else empty,
        tau=torch.stack(taus) if taus else empty,
        iterations=iterations,
        converged=converged,
        stalled=stalled,
        backtracks=backtracks,
        restarts=restarts,
    )
    return x, trace


# --------------------------------------------------------------------------- learned model
class ELDER(nn.Module):
    """ELDER (or the implicit baseline) as a learned reconstruction ``forward(y, physics, init)``.

    In training mode the output is the fixed point of the proximal-gradient map with a fixed
    ``τ`` (no backtracking), found by the engine's :func:`~deqir.solvers.fixed_point` without a
    graph and differentiated with the implicit function theorem (``adjoint="implicit"``: the map
    is re-applied with ``create_graph=True`` so the adjoint solve and the parameter gradient
    backpropagate through ``∇R_θ`` a second time), Jacobian-free backprop (``"jfb"``) or
    backprop through every iteration (``"unrolled"``, ELDER(Unfold)). In eval mode an explicit
    potential runs the monotone backtracking algorithm (:func:`proximal_gradient`) and keeps its
    trace in :attr:`last_trace`; the implicit baseline runs the same fixed-τ solve as in training.
    Eval-mode outputs are detached.

    Args:
        network: ``N_θ`` (smooth activations for the explicit potentials).
        potential: ``gradient_step`` (ELDER), ``red``, ``scalar`` or ``implicit`` (the implicit
            DEQ baseline ``z = x − λτ(x − D_θ(x))``).
        lam: ``λ`` (ELDER's tuned 0.045).
        tau: ``τ`` (ELDER's tuned 6.0).
        learn_parameters: train ``λ`` and ``τ`` (kept positive through a softplus).
        prior_sigma: noise level for a network with a noise-level input.
        solver: forward solver of training: ``anderson``, ``plain`` or ``nesterov``.
        max_iter, tol: forward iterations cap and relative-residual tolerance of training. The
            ELDER map converges slowly on ill-conditioned operators (blur): a loose ``tol``
            (1e-3) stops far enough from the fixed point that training would fit an early-stopped
            iterate rather than the equilibrium the eval-mode algorithm converges to.
        adjoint: ``implicit``, ``jfb`` or ``unrolled``.
        backward_max_iter, backward_tol: the implicit adjoint solve.
        eval_max_iter, eval_tol: the eval-mode algorithm (iterations cap and relative-change stop).
        backtracking, momentum, gamma_bt, max_backtracks: the eval-mode algorithm
            (see :func:`proximal_gradient`).
        nonnegative: clamp every iterate at zero.
        data_step: ``auto`` (the operator's ``prox_data`` when it has one), ``prox`` or ``gradient``.
        check_smooth: refuse non-smooth activations (default: for explicit potentials).

    Attributes:
        last_stats: the engine's :class:`~deqir.solvers.SolverStats` of the last DEQ solve.
        last_trace: the :class:`ELDERTrace` of the last eval-mode reconstruction.

    Example:
        >>> import torch
        >>> from deqir.physics.registry import build_operator
        >>> from deqir.priors import SmoothResUNet
        >>> op = build_operator("blur", 16, kernel_size=5)
        >>> model = ELDER(SmoothResUNet(channels=(4, 8)), max_iter=10).eval()
        >>> x = model(op.A(torch.rand(1, 1, 16, 16)), op)
        >>> model.last_trace.monotone, model.lam.item() > 0
        (True, True)
    """

    #: validation runs with autograd on (∇R is computed by autograd inside ``forward``)
    requires_grad_in_forward = True

    def __init__(
        self,
        network: nn.Module,
        potential: str = "gradient_step",
        lam: float = 0.045,
        tau: float = 6.0,
        learn_parameters: bool = True,
        prior_sigma: float | None = None,
        solver: str = "anderson",
        max_iter: int = 50,
        tol: float = 1e-4,
        adjoint: str = "implicit",
        backward_max_iter: int = 50,
        backward_tol: float = 1e-4,
        eval_max_iter: int = 100,
        eval_tol: float = 1e-5,
        backtracking: bool = True,
        momentum: bool = False,
        gamma_bt: float = 0.1,
        max_backtracks: int = 30,
        nonnegative: bool = True,
        data_step: str = "auto",
        check_smooth: bool | None = None,
    ):
        super().__init__()
        if solver not in SOLVERS:
            raise InvalidValueError(unknown_name_message("solver", solver, SOLVERS))
        if adjoint not in ADJOINTS:
            raise InvalidValueError(unknown_name_message("adjoint", adjoint, ADJOINTS))
        if data_step not in DATA_STEPS:
            raise InvalidValueError(unknown_name_message("data step", data_step, DATA_STEPS))
        if adjoint == "unrolled" and solver == "anderson":
            raise InvalidValueError(
                "adjoint='unrolled' backpropagates through each step: use solver 'plain' or 'nesterov'"
            )
        if not (lam > 0 and tau > 0):
            raise InvalidValueError(f"lam and tau must be > 0; got lam={lam}, tau={tau}")
        if not (0 < gamma_bt < 1):
            raise InvalidValueError(f"gamma_bt must lie in (0, 1); got {gamma_bt}")
        for key, val in (
            ("max_iter", max_iter),
            ("eval_max_iter", eval_max_iter),
            ("backward_max_iter", backward_max_iter),
        ):
            if int(val) < 1:
                raise InvalidValueError(f"{key} must be >= 1; got {val}")
        self.prior = build_potential(potential, network, prior_sigma=prior_sigma, check=check_smooth)
        self.potential_name = potential
        self.solver_name, self.adjoint_name = solver, adjoint
        self.max_iter, self.tol = int(max_iter), float(tol)
        self.backward_max_iter, self.backward_tol = int(backward_max_iter), float(backward_tol)
        self.eval_max_iter, self.eval_tol = int(eval_max_iter), float(eval_tol)
        self.backtracking, self.momentum = bool(backtracking), bool(momentum)
        self.gamma_bt, self.max_backtracks = float(gamma_bt), int(max_backtracks)
        self.nonnegative, self.data_step = bool(nonnegative), data_step
        raw = torch.tensor([inverse_softplus(float(lam)), inverse_softplus(float(tau))])
        if learn_parameters:
            self.raw_parameters = nn.Parameter(raw)
        else:
            self.register_buffer("raw_parameters", raw)
        self.last_stats: Any = None
        self.last_trace: ELDERTrace | None = None

    @property
    def network(self) -> nn.Module:
        """``N_θ``."""
        return self.prior.network

    @property
    def lam(self) -> torch.Tensor:
        """``λ`` (positive)."""
        return nn.functional.softplus(self.raw_parameters[0])

    @property
    def tau(self) -> torch.Tensor:
        """``τ`` (positive)."""
        return nn.functional.softplus(self.raw_parameters[1])

    # ------------------------------------------------------------------ the map
    def make_map(self, y: torch.Tensor, physics: Any) -> Callable[[torch.Tensor], torch.Tensor]:
        """The fixed-τ map ``T(x) = P₊(prox_{τg}(x − λτ∇R(x)))`` for measurements ``y``.

        ``∇R`` keeps its graph (``create_graph=True``) whenever grad mode is on, so ``T`` can be
        differentiated with respect to ``x`` and θ (double backprop).
        """
        lam, tau = self.lam, self.tau
        prior, nonneg, mode = self.prior, self.nonnegative, self.data_step

        def T(x: torch.Tensor) -> torch.Tensor:
            grad_r = prior.grad(x, create_graph=torch.is_grad_enabled())
            z = x - lam * tau * grad_r
            out = data_step(physics, x, z, y, tau, mode)
            return out.clamp_min(0) if nonneg else out

        return T

    def initial(self, y: torch.Tensor, physics: Any, init: torch.Tensor | None) -> torch.Tensor:
        """``x_0``: ``init`` (default ``Aᵀy``), detached, clamped at zero with ``nonnegative``."""
        x0 = physics.A_adjoint(y) if init is None else init
        x0 = x0.detach()
        return x0.clamp_min(0) if self.nonnegative else x0

    def _solver(self):
        from deqir.solvers import Anderson, FixedPointIteration, Nesterov

        if self.adjoint_name == "unrolled":  # a fixed number of differentiable steps
            cls = Nesterov if self.solver_name == "nesterov" else FixedPointIteration
            return cls(tol=0.0, stop="abs", max_iter=self.max_iter)
        if self.solver_name == "anderson":
            return Anderson(tol=self.tol, max_iter=self.max_iter, memory=5, regularization=1e-4)
        if self.solver_name == "nesterov":
            return Nesterov(tol=self.tol, max_iter=self.max_iter, restart=True)
        return FixedPointIteration(tol=self.tol, max_iter=self.max_iter)

    def _adjoint(self):
        from deqir.solvers import ImplicitAdjoint, JacobianFree, UnrolledAdjoint

        if self.adjoint_name == "jfb":
            return JacobianFree()
        if self.adjoint_name == "unrolled":
            return UnrolledAdjoint()
        return ImplicitAdjoint(tol=self.backward_tol, max_iter=self.backward_max_iter)

    def solve(self, y: torch.Tensor, physics: Any, init: torch.Tensor | None = None) -> torch.Tensor:
        """The DEQ output: the fixed point of :meth:`make_map`, differentiable by the adjoint."""
        from deqir.solvers import fixed_point

        sol = fixed_point(
            self.make_map(y, physics), self.initial(y, physics, init), self._solver(), self._adjoint()
        )
        self.last_stats = sol.stats
        return sol.value

    def reconstruct(
        self, y: torch.Tensor, physics: Any, init: torch.Tensor | None = None, callback=None
    ) -> tuple[torch.Tensor, ELDERTrace]:
        """The eval-mode algorithm (:func:`proximal_gradient` with this model's settings)."""
        explicit = self.prior.has_value
        return proximal_gradient(
            y,
            physics,
            self.prior,
            float(self.lam.detach()),
            float(self.tau.detach()),
            self.initial(y, physics, init),
            max_iter=self.eval_max_iter,
            tol=self.eval_tol,
            backtracking=self.backtracking and explicit,
            momentum=self.momentum and explicit,
            gamma_bt=self.gamma_bt,
            max_backtracks=self.max_backtracks,
            nonnegative=self.nonnegative,
            data_mode=self.data_step,
            callback=callback,
        )

    def forward(self, y: torch.Tensor, physics: Any, init: torch.Tensor | None = None) -> torch.Tensor:
        """Reconstruct from ``y`` (training: DEQ; eval: monotone algorithm, detached output)."""
        if self.training:
            return self.solve(y, physics, init)
        if not self.prior.has_value:
            with torch.no_grad():
                return self.solve(y, physics, init)
        x, trace = self.reconstruct(y, physics, init)
        self.last_trace = trace
        return x

    def iterates(self, y: torch.Tensor, physics: Any, init: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Every iterate ``x_0, x_1, ...`` of the eval-mode algorithm (for iteration figures).

        The implicit baseline iterates its fixed-τ map (no objective, no backtracking).
        """
        out: list[torch.Tensor] = []
        x, trace = self.reconstruct(y, physics, init, callback=lambda k, v: out.append(v.detach().clone()))
        self.last_trace = trace
        return out

    def extra_repr(self) -> str:  # noqa: D102
        return (
            f"potential={self.potential_name}, solver={self.solver_name}, adjoint={self.adjoint_name}, "
            f"max_iter={self.max_iter}, lam={float(self.lam):.3g}, tau={float(self.tau):.3g}, "
            f"backtracking={self.backtracking}, momentum={self.momentum}"
        )


def build_elder(network: nn.Module, **options: Any) -> ELDER:
    """Trainer hook (``method: {name: elder, options: {...}}``): ``ELDER(network, **options)``.

    Example:
        >>> from deqir.priors import SmoothResUNet
        >>> build_elder(SmoothResUNet(channels=(4, 8)), potential="red").potential_name
        'red'
        >>> build_elder(SmoothResUNet(channels=(4, 8)), lamb=0.1)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        deqir.errors.ConfigError: unknown ELDER option 'lamb'; did you mean 'lam'? ...
    """
    import inspect

    valid = [p for p in inspect.signature(ELDER.__init__).parameters if p not in ("self", "network")]
    for key in options:
        if key not in valid:
            raise ConfigError(unknown_name_message("ELDER option", key, valid))
    return ELDER(network, **options)
