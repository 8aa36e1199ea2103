"""RED as a learned equilibrium: RED(DEQ), ODER (online minibatch), RED(Unfold), RED(Denoising).

All four share one map, a RED gradient step with the data gradient normalised by ``L = ‖A‖²``::

    T(x) = P₊( x − α [ ∇̂g(x) / L + τ R_θ(x) ] ),     R_θ(x) = x − D_θ(x)

where ``D_θ`` is a denoiser (``R_θ`` the residual it removes), ``α`` the step, ``τ`` the prior
weight and ``P₊`` the optional projection onto ``x ≥ 0``. What differs is how ``∇̂g`` is formed
and how the map is solved and differentiated:

- ``mode="deq"`` (RED(DEQ)): ``∇̂g = ∇g``, all ``b`` blocks at every iteration; Anderson forward,
  implicit (IFT) backward.
- ``mode="oder"`` (ODER): ``∇̂g = (b/w) Σ_{i∈B} A_iᵀ(A_i x − y_i)`` with a fresh minibatch ``B``
  of ``w`` blocks drawn at every call (uniform or stratified), so each iteration costs ``w/b``
  of a full one. The map is stochastic: the forward solver is plain or Nesterov iteration for a
  fixed number of iterations (the paper's test-time solver); the backward solves the adjoint
  equation through one further minibatch application (the engine's ``ImplicitAdjoint``; its
  backward map is fixed, so it is a single fresh draw for the whole adjoint solve), or JFB.
  ``estimator="saga"`` replaces the plain minibatch estimate by SAGA's variance-reduced one
  (:class:`~deqir.physics.sampling.SagaGradient`): still unbiased, the same ``w/b`` operator cost
  per iteration, but its noise vanishes as the iterates converge, so ODER's iteration reaches the
  full-batch fixed point instead of jittering around it. Its stale table entries act like delayed
  gradients, so it needs ``step <= 1`` (the paper's estimator runs at 1.5).
  ``train_average=k`` makes ODER's training loss score the mean of ``k`` iterations that replace
  the solve's last ``k`` (no extra operator applications), as test time scores a tail average.
- ``mode="unfold"`` (RED(Unfold)): ``K`` iterations, backprop through all of them.
- RED(Denoising) is ``mode="deq"`` with a pretrained denoiser and no fine-tuning.

Every application of ``A_i`` or ``A_iᵀ`` is counted in :attr:`REDEquilibrium.block_applications`
(in units of one block), so operator costs can be compared exactly between modes.

Example:
    >>> import torch
    >>> from deqir.methods.equilibrium import REDEquilibrium
    >>> from deqir.physics import ParallelBeamCT
    >>> ct = ParallelBeamCT(32, num_angles=30)
    >>> smoother = torch.nn.Conv2d(1, 1, 3, padding=1, bias=False)
    >>> _ = torch.nn.init.constant_(smoother.weight, 1 / 9)
    >>> model = REDEquilibrium(smoother, mode="oder", minibatch=10, max_iter=20)
    >>> x = torch.zeros(1, 1, 32, 32); x[..., 8:24, 8:24] = 1
    >>> y = ct.A(x)
    >>> out = model(y, ct, init=ct.fbp(y))
    >>> tuple(out.shape), model.block_applications == 2 * 10 * 21  # 20 solves + 1 re-application
    ((1, 1, 32, 32), True)
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from deqir.errors import InvalidValueError, unknown_name_message
from deqir.methods.common import inverse_softplus, lipschitz

MODES = ("deq", "oder", "unfold")
ESTIMATORS = ("minibatch", "saga")
SAGA_MAX_STEP = 1.0  # on the L-normalised gradient; at 1.5 SAGA diverged in hand checks (CT)
SOLVERS = ("anderson", "nesterov", "plain")
ADJOINTS = ("implicit", "jfb", "phantom")


class REDEquilibrium(nn.Module):
    """A RED map trained as a deep equilibrium (or unfolded); see the module docstring.

    Args:
        network: the denoiser ``D_θ`` (``network(x)`` or, with ``prior_sigma``, ``network(x, sigma)``).
        mode: ``deq``, ``oder`` or ``unfold``.
        step: ``α``, the step on the ``L``-normalised data gradient (``< 2`` for a contraction
            of the data part alone); learnable with ``learn_parameters``.
        tau: ``τ``, the prior weight; learnable with ``learn_parameters``.
        learn_parameters: train ``α`` and ``τ`` (kept positive through a softplus).
        prior_sigma: noise level passed to a blind denoiser with a noise-level input
            (``None``: call ``network(x)``).
        minibatch: ``w``, blocks per iteration for ``oder`` (``None``: all blocks).
        sampling: ``stratified`` or ``uniform``.
        groups: groups of the stratified sampler (default: the sampler's).
        estimator: the ODER data-gradient estimate: ``minibatch`` (the paper's
            ``(b/w) Σ_{i∈B} A_iᵀ(A_i x − y_i)``) or ``saga`` (variance-reduced, same cost; needs
            an operator whose blocks are a measurement axis).
        solver: ``anderson`` (deq only), ``nesterov`` or ``plain``; default: ``anderson`` for
            ``deq``, ``nesterov`` for ``oder``.
        max_iter: forward iterations (the cap for ``deq``; the fixed count for ``oder``;
            ``K`` for ``unfold``).
        tol: forward relative tolerance (``deq``; ``oder`` runs a fixed count: ``tol = 0``).
        adjoint: ``implicit``, ``jfb`` or ``phantom`` (deq and oder).
        backward_max_iter, backward_tol: cap and tolerance of the implicit adjoint solve.
        phantom_steps, phantom_damping: ``k`` and ``λ`` of the phantom gradient (``adjoint="phantom"``):
            backprop through ``k`` damped applications of the map from the detached fixed point;
            for ODER each application draws a fresh minibatch.
        nonnegative: project each iterate onto ``x ≥ 0``.
        test_average: ODER without gradients (test time): run this many further iterations
            after the solve and return their mean (tail averaging), which removes most of the
            minibatch noise of the last iterate at ``w/b`` of a full iteration each. ``0``: off.
        train_average: ODER with gradients (training): the solver runs ``max_iter − k``
            iterations, then ``k`` plain iterations (fresh minibatches, without gradients) are
            averaged, so the loss scores a tail average (as test time does, there after all
            ``max_iter`` iterations and with ``test_average`` of them) instead of one noisy
            iterate. The output's gradient is the adjoint's at the solution before them: the
            plain training gradient, which is what the average's would be if every further
            iterate equalled the solution. A training step applies the operator as often as
            without it; ``last_stats`` then counts ``max_iter − k`` iterations. Ignored for a
            deterministic map (RED(DEQ), RED(Unfold), ``w >= b``). ``0``: off; for ODER it must
            be below ``max_iter``.
        seed: seed of the minibatch sampler (a training run's ``experiment.seed`` does not
            change it; a checkpoint saves where its stream stands, see :meth:`sampler_state`).
        restart: Nesterov's adaptive restart (a sample whose residual grew resets its
            momentum). On a stochastic map the residual is a noisy estimate, so for ODER it also
            fires on minibatch noise and slows the iteration: without it, ODER's iterates follow
            the full-batch ones (``results/oder_restart.json``). Default ``True`` (what the
            models shipped before it were trained with).
        restart_guard: with ``restart=False``, Nesterov still resets a sample's momentum when
            its residual exceeds this multiple of its smallest residual so far (``None``: off).
            It keeps a diverging iteration in check (the CT models trained without the restart
            diverge on some real CT slices without it, and recover with it) and ignores the
            small rises the minibatch noise causes (on the CT test split it leaves the shipped
            pair's outputs, each with its own solver, as without it: ``results/oder.json``
            against ``git show 50fb86d:results/oder_restart.json``; it does act on RED(DEQ)'s
            network run with ODER's minibatches). Redundant with the adaptive restart,
            so unused when ``restart`` is on. Default 3.
    """

    def __init__(
        self,
        network: nn.Module,
        mode: str = "deq",
        step: float = 1.0,
        tau: float = 0.5,
        learn_parameters: bool = True,
        prior_sigma: float | None = None,
        minibatch: int | None = None,
        sampling: str = "stratified",
        groups: int | None = None,
        estimator: str = "minibatch",
        solver: str | None = None,
        max_iter: int = 50,
        tol: float = 1e-4,
        adjoint: str = "implicit",
        backward_max_iter: int = 50,
        backward_tol: float = 1e-4,
        phantom_steps: int = 3,
        phantom_damping: float = 0.5,
        nonnegative: bool = True,
        test_average: int = 0,
        train_average: int = 0,
        seed: int = 0,
        restart: bool = True,
        restart_guard: float | None = 3.0,
    ):
        super().__init__()
        if mode not in MODES:
            raise InvalidValueError(unknown_name_message("RED mode", mode, MODES))
        solver = solver or ("anderson" if mode == "deq" else "nesterov")
        if solver not in SOLVERS:
            raise InvalidValueError(unknown_name_message("solver", solver, SOLVERS))
        if estimator not in ESTIMATORS:
            raise InvalidValueError(unknown_name_message("ODER gradient estimator", estimator, ESTIMATORS))
        if adjoint not in ADJOINTS:
            raise InvalidValueError(unknown_name_message("adjoint", adjoint, ADJOINTS))
        if mode == "oder" and solver == "anderson":
            raise InvalidValueError(
                "ODER draws a fresh minibatch at every iteration: use solver 'nesterov' or 'plain' "
                "(Anderson assumes the same map at every call)"
            )
        if not (step > 0 and tau >= 0):
            raise InvalidValueError(f"step must be > 0 and tau >= 0; got step={step}, tau={tau}")
        if estimator == "saga" and mode != "oder":
            raise InvalidValueError(
                f"estimator='saga' is ODER's minibatch gradient estimate; mode={mode!r} uses every block "
                f"at every iteration: use mode='oder' or leave estimator='minibatch'"
            )
        if estimator == "saga":
            _check_saga_step(float(step))
        if int(test_average) < 0 or int(train_average) < 0:
            raise InvalidValueError(
                f"test_average and train_average count iterations: use 0 (off) or more; "
                f"got test_average={test_average}, train_average={train_average}"
            )
        if mode == "oder":
            _check_train_average(int(train_average), int(max_iter))
        if minibatch is not None and int(minibatch) < 1:
            raise InvalidValueError(f"minibatch must be a positive number of blocks; got {minibatch}")
        self.network = network
        self.mode, self.solver_name, self.adjoint_name = mode, solver, adjoint
        self.prior_sigma = prior_sigma
        self.minibatch = None if minibatch is None else int(minibatch)
        self.sampling, self.groups, self.seed = sampling, groups, int(seed)
        self.estimator = estimator
        self.max_iter, self.tol = int(max_iter), float(tol)
        self.backward_max_iter, self.backward_tol = int(backward_max_iter), float(backward_tol)
        self.phantom_steps, self.phantom_damping = int(phantom_steps), float(phantom_damping)
        self.nonnegative = bool(nonnegative)
        self.test_average = int(test_average)
        self.train_average = int(train_average)
        self.restart = bool(restart)
        self.restart_guard = None if restart_guard is None else float(restart_guard)
        raw = torch.tensor([inverse_softplus(float(step)), inverse_softplus(max(float(tau), 1e-8))])
        if learn_parameters:
            self.raw_parameters = nn.Parameter(raw)
        else:
            self.register_buffer("raw_parameters", raw)
        self.block_applications = 0
        self.last_stats: Any = None
        self._sampler: Any = None

    # ------------------------------------------------------------------ pieces of the map
    @property
    def step(self) -> torch.Tensor:
        """The step ``α`` (positive)."""
        return nn.functional.softplus(self.raw_parameters[0])

    @property
    def tau(self) -> torch.Tensor:
        """The prior weight ``τ`` (positive)."""
        return nn.functional.softplus(self.raw_parameters[1])

    def lipschitz(self, physics) -> float:
        """``L = ‖A‖²`` of ``physics`` (power method, cached per operator)."""
        return lipschitz(physics)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """``R_θ(x) = x − D_θ(x)``."""
        if self.prior_sigma is None:
            return x - self.network(x)
        return x - self.network(x, self.prior_sigma)

    def _blocks_per_call(self, physics) -> int | None:
        if self.mode != "oder" or self.minibatch is None or self.minibatch >= physics.num_blocks:
            return None
        return self.minibatch

    def _sampler_for(self, physics):
        from deqir.physics.sampling import BlockSampler

        w = self._blocks_per_call(physics)
        s = self._sampler
        if w is None:
            return None
        if s is None or s.num_blocks != physics.num_blocks or s.batch_size != w:
            s = BlockSampler(
                physics.num_blocks, w, strategy=self.sampling, groups=self.groups, seed=self.seed
            )
            self._sampler = s
        return s

    def sampler_state(self) -> dict[str, Any] | None:
        """Where ODER's minibatch stream stands (``None`` before its first draw), for checkpoints:
        a resumed training run continues the same draws instead of starting over from ``seed``.

        Example:
            >>> from deqir.physics.registry import build_operator
            >>> ct = build_operator("ct", 16, num_angles=12)
            >>> model = REDEquilibrium(torch.nn.Identity(), mode="oder", minibatch=4, max_iter=2)
            >>> _ = model(ct.A(torch.rand(1, 1, 16, 16)), ct)
            >>> state = model.sampler_state()
            >>> again = REDEquilibrium(torch.nn.Identity(), mode="oder", minibatch=4, max_iter=2)
            >>> again.load_sampler_state(state)
            >>> bool((again._sampler_for(ct).sample() == model._sampler_for(ct).sample()).all())
            True
        """
        s = self._sampler
        if s is None:
            return None
        return {"num_blocks": s.num_blocks, "batch_size": s.batch_size, "generator": s.generator.get_state()}

    def load_sampler_state(self, state: dict[str, Any] | None) -> None:
        """Continue the minibatch stream saved by :meth:`sampler_state` (``None``: start over)."""
        from deqir.physics.sampling import BlockSampler

        if state is None:
            self._sampler = None
            return
        s = BlockSampler(
            int(state["num_blocks"]),
            int(state["batch_size"]),
            strategy=self.sampling,
            groups=self.groups,
            seed=self.seed,
        )
        s.generator.set_state(state["generator"])
        self._sampler = s

    def make_map(self, y: torch.Tensor, physics):
        """The map ``T`` for measurements ``y`` (stochastic for ODER with ``w < b``)."""
        from deqir.solvers import StochasticMap

        L = self.lipschitz(physics)
        sampler = self._sampler_for(physics)
        b = physics.num_blocks
        step, tau = self.step, self.tau
        frozen: list[torch.Tensor | None] = [None]
        saga = None
        if sampler is not None and self.estimator == "saga":
            from deqir.physics.sampling import SagaGradient

            _check_saga_step(float(step.detach()))  # a learned step may have grown past the limit
            saga = SagaGradient(physics, y)

        def T(x: torch.Tensor) -> torch.Tensor:
            blocks = None
            if sampler is not None:
                blocks = frozen[0] if frozen[0] is not None else sampler.sample()
            self.block_applications += 2 * (b if blocks is None else int(blocks.numel()))
            if saga is not None:  # a frozen map must stay the same map: no table updates
                grad = saga(x, blocks, update=frozen[0] is None) / L
            else:
                grad = physics.data_grad(x, y, blocks) / L
            out = x - step * (grad + tau * self.residual(x))
            return out.clamp_min(0) if self.nonnegative else out

        if sampler is None:
            return T

        @contextlib.contextmanager
        def freeze():
            frozen[0] = sampler.sample()
            try:
                yield
            finally:
                frozen[0] = None

        return StochasticMap(T, freeze=freeze)

    def _solver(self, max_iter: int | None = None):
        from deqir.solvers import Anderson, FixedPointIteration, Nesterov

        max_iter = self.max_iter if max_iter is None else max_iter

        if self.mode == "oder":  # a fixed number of iterations: the tolerance never stops it
            tol, stop = 0.0, "abs"
        else:
            tol, stop = self.tol, "rel"
        if self.solver_name == "anderson":
            return Anderson(tol=tol, stop=stop, max_iter=max_iter, memory=5, regularization=1e-4)
        if self.solver_name == "nesterov":
            return Nesterov(
                tol=tol,
                stop=stop,
                max_iter=max_iter,
                restart=self.restart,
                restart_guard=None if self.restart else self.restart_guard,
            )
        return FixedPointIteration(tol=tol, stop=stop, max_iter=max_iter)

    def _adjoint(self):
        from deqir.solvers import ImplicitAdjoint, JacobianFree, PhantomAdjoint, UnrolledAdjoint

        if self.mode == "unfold":
            return UnrolledAdjoint()
        if self.adjoint_name == "jfb":
            return JacobianFree()
        if self.adjoint_name == "phantom":
            return PhantomAdjoint(steps=self.phantom_steps, damping=self.phantom_damping)
        return ImplicitAdjoint(tol=self.backward_tol, max_iter=self.backward_max_iter)

    # ------------------------------------------------------------------ running it
    def forward(self, y: torch.Tensor, physics, init: torch.Tensor | None = None) -> torch.Tensor:
        """Reconstruct from ``y``; ``init`` defaults to ``Aᵀy / L``."""
        from deqir.solvers import fixed_point

        x0 = init if init is not None else physics.A_adjoint(y) / self.lipschitz(physics)
        x0 = x0.detach()
        if self.nonnegative:
            x0 = x0.clamp_min(0)
        f = self.make_map(y, physics)
        if self.mode == "unfold":
            from deqir.solvers import FixedPointIteration

            solver = FixedPointIteration(tol=0.0, stop="abs", max_iter=self.max_iter)
        else:
            # training with a tail average: its iterations are the solve's last ones, so a
            # training step applies the operator as often as the full-batch map's
            averaging = self.train_average > 0 and torch.is_grad_enabled() and getattr(f, "stochastic", False)
            if averaging:  # max_iter may have been lowered since construction
                _check_train_average(self.train_average, self.max_iter)
            solver = self._solver(self.max_iter - self.train_average if averaging else None)
        sol = fixed_point(f, x0, solver=solver, adjoint=self._adjoint())
        self.last_stats = sol.stats
        if not getattr(f, "stochastic", False):
            return sol.value
        if not torch.is_grad_enabled():
            return self._tail_average(f, sol.value, self.test_average)
        if self.train_average > 0:  # the tail average's value, the solution's gradient
            with torch.no_grad():
                mean = self._tail_average(f, sol.value.detach(), self.train_average)
            return mean + (sol.value - sol.value.detach())
        return sol.value

    @staticmethod
    def _tail_average(f, z: torch.Tensor, count: int) -> torch.Tensor:
        """The mean of ``count`` further iterations of ``f`` from ``z`` (``z`` itself when ``count`` is 0),
        with parametrised weights (spectral norm) computed once for all of them, as in the solve."""
        from torch.nn.utils import parametrize

        if count <= 0:
            return z
        total = torch.zeros_like(z)
        with parametrize.cached():
            for _ in range(count):
                z = f(z)
                total += z
        return total / count

    @torch.no_grad()
    def iterates(self, y: torch.Tensor, physics, init: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Every iterate of plain iteration of the map (for residual / PSNR against iteration)."""
        x = init if init is not None else physics.A_adjoint(y) / self.lipschitz(physics)
        x = x.clamp_min(0) if self.nonnegative else x
        f = self.make_map(y, physics)
        out = [x]
        for _ in range(self.max_iter):
            x = f(x)
            out.append(x)
        return out

    def extra_repr(self) -> str:  # noqa: D102
        w = "all" if self.minibatch is None else self.minibatch
        return (
            f"mode={self.mode}, solver={self.solver_name}, adjoint={self.adjoint_name}, minibatch={w}, "
            f"estimator={self.estimator}, test_average={self.test_average}, "
            f"train_average={self.train_average}, restart={self.restart}, "
            f"restart_guard={self.restart_guard}, "
            f"max_iter={self.max_iter}, step={float(self.step.detach()):.3g}, "
            f"tau={float(self.tau.detach()):.3g}"
        )


def _check_saga_step(step: float) -> None:
    if step > SAGA_MAX_STEP:
        raise InvalidValueError(
            f"the SAGA estimator's table holds residuals of earlier iterates, which act like delayed "
            f"gradients: steps above {SAGA_MAX_STEP} diverge; the step is {step:.4g}: "
            f"use step <= {SAGA_MAX_STEP} (or estimator='minibatch')"
        )


def _check_train_average(train_average: int, max_iter: int) -> None:
    if train_average > 0 and max_iter <= train_average:
        raise InvalidValueError(
            f"train_average={train_average} replaces the last iterations of the max_iter={max_iter} "
            f"forward ones: use train_average < max_iter"
        )


def build_red_equilibrium(network: nn.Module, **options: Any) -> REDEquilibrium:
    """Trainer hook (``method: {name: red_equilibrium, options: {...}}``)."""
    return REDEquilibrium(network, **options)
