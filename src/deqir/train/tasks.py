"""Tasks: how clean images become training pairs, and how a model is called on them.

A task simulates measurements on the fly, every step, from clean images: sample ``j`` of the
global batch at step ``t`` draws its noise from ``seeding.generator(seed, stream, t, j)``, so a
run is reproducible, resumable and independent of the number of processes.

* :class:`DenoisingTask`: ``noisy = clean + sigma * e`` with ``sigma`` fixed or drawn uniformly
  per image from a range (blind denoising); the model is called as ``model(noisy)``, or
  ``model(noisy, sigma=sigma)`` when its ``forward`` takes ``sigma``.
* :class:`ReconstructionTask`: ``y = A clean + e`` with an operator of :mod:`deqir.physics`;
  the model is called as ``model(x0)`` (``input="init"``, e.g. a post-processing network) or
  ``model(y, physics, init=x0)`` (``input="measurements"``; ``init`` only when ``forward``
  accepts it), where ``x0`` is the initialisation (``A^T y`` by default).

Example:
    >>> import torch
    >>> from deqir.train.tasks import DenoisingTask
    >>> task = DenoisingTask(sigma_range=(0.0, 0.2))
    >>> s = task.simulate(torch.zeros(3, 1, 8, 8), seed=0, step=0, indices=range(3))
    >>> tuple(s.init.shape), tuple(s.sigma.shape)
    ((3, 1, 8, 8), (3,))
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from deqir.errors import ConfigError, InvalidValueError
from deqir.physics.noise import GaussianNoise
from deqir.train import seeding


@dataclass
class Sample:
    """One simulated batch.

    Attributes:
        target: clean images ``(batch, C, H, W)``.
        init: the initialisation (denoising: the noisy image; reconstruction: ``x0``).
        args: positional arguments of the model call.
        kwargs: keyword arguments of the model call.
        measurement: the measurements ``y`` (reconstruction) or ``None``.
        sigma: noise level of each batch element, or ``None`` when set by an SNR.
    """

    target: torch.Tensor
    init: torch.Tensor
    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)
    measurement: torch.Tensor | None = None
    sigma: torch.Tensor | None = None


class Task:
    """Base class: :meth:`simulate` a batch, :meth:`predict` with a model."""

    physics: nn.Module | None = None

    def __init__(
        self,
        sigma: float | None = None,
        sigma_range: tuple[float, float] | None = None,
        snr_db: float | None = None,
    ):
        if sum(v is not None for v in (sigma, sigma_range, snr_db)) > 1:
            raise InvalidValueError("give at most one of sigma, sigma_range and snr_db")
        self.sigma = sigma
        self.sigma_range = None if sigma_range is None else (float(sigma_range[0]), float(sigma_range[1]))
        self.snr_db = snr_db
        self._model_params: set[str] | None = None

    def bind(self, model: nn.Module) -> None:
        """Inspect the (unwrapped) model's ``forward`` signature once, to know how to call it."""
        model = getattr(model, "module", model)  # DistributedDataParallel
        params = inspect.signature(model.forward).parameters
        names = {p.name for p in params.values()}
        if any(p.kind is p.VAR_KEYWORD for p in params.values()):
            names.add("**")
        if getattr(model, "noise_level_input", True) is False:
            names.discard("sigma")  # a denoiser built without a noise-level input ignores sigma
        self._model_params = names

    def accepts(self, name: str) -> bool:
        """Whether the bound model's ``forward`` takes keyword ``name``."""
        if self._model_params is None:
            raise RuntimeError("call task.bind(model) first")
        return name in self._model_params or "**" in self._model_params

    def to(self, device: torch.device | str) -> Task:
        """Move the physics (if any) to ``device``."""
        if self.physics is not None:
            self.physics = self.physics.to(device)
        return self

    def _add_noise(
        self, y: torch.Tensor, generators: list[torch.Generator]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-sample Gaussian noise; returns the noisy batch and the levels (``None`` for SNR)."""
        out, levels = [], []
        for k, g in enumerate(generators):
            if self.snr_db is not None:
                noise = GaussianNoise(snr_db=self.snr_db)
            else:
                s = self.sigma if self.sigma is not None else 0.0
                if self.sigma_range is not None:
                    lo, hi = self.sigma_range
                    s = lo + (hi - lo) * float(torch.rand(1, generator=g))
                levels.append(s)
                noise = GaussianNoise(sigma=s)
            out.append(noise(y[k : k + 1], generator=g))
        sig = torch.tensor(levels, dtype=y.real.dtype, device=y.device) if levels else None
        return torch.cat(out), sig

    def simulate(
        self, clean: torch.Tensor, seed: int, step: int, indices: Sequence[int], stream: int = seeding.TASK
    ) -> Sample:
        """Simulate the samples ``indices`` of the global batch at ``step`` from ``clean``."""
        raise NotImplementedError

    def predict(self, model: nn.Module, sample: Sample) -> torch.Tensor:
        """Run ``model`` on a simulated batch."""
        return model(*sample.args, **sample.kwargs)


class DenoisingTask(Task):
    """Gaussian denoising with a fixed ``sigma`` or a blind ``sigma_range``.

    Example:
        >>> import torch
        >>> from deqir.priors import DnCNN
        >>> task = DenoisingTask(sigma=0.1)
        >>> net = DnCNN(depth=3, width=8)
        >>> task.bind(net)
        >>> s = task.simulate(torch.rand(2, 1, 8, 8), seed=0, step=5, indices=[0, 1])
        >>> tuple(task.predict(net, s).shape)
        (2, 1, 8, 8)
    """

    def __init__(self, sigma: float | None = None, sigma_range: tuple[float, float] | None = None):
        if (sigma is None) == (sigma_range is None):
            raise InvalidValueError("a denoising task needs exactly one of sigma and sigma_range")
        super().__init__(sigma=sigma, sigma_range=sigma_range)

    def simulate(self, clean, seed, step, indices, stream=seeding.TASK):  # noqa: D102
        gens = [seeding.generator(seed, stream, step, j) for j in indices]
        noisy, sigma = self._add_noise(clean, gens)
        kwargs = {"sigma": sigma} if self._model_params is not None and self.accepts("sigma") else {}
        return Sample(target=clean, init=noisy, args=(noisy,), kwargs=kwargs, sigma=sigma)


class ReconstructionTask(Task):
    """Reconstruction from ``y = A x + e`` with a :class:`~deqir.physics.base.LinearOperator`.

    Args:
        physics: the operator.
        sigma, sigma_range, snr_db: the measurement noise (at most one; none: noiseless).
        init: ``adjoint``, ``scaled_adjoint``, ``zeros`` or a method name of ``physics``.
        input: ``auto``, ``init`` or ``measurements`` (see the module docstring).

    Example:
        >>> import torch
        >>> from deqir.physics.base import LinearOperator
        >>> class Half(LinearOperator):
        ...     image_shape = (1, 8, 8)
        ...     def _forward(self, x, blocks): return 0.5 * x
        ...     def _adjoint(self, y, blocks): return 0.5 * y
        ...     def measurement_shape(self, blocks=None): return (1, 8, 8)
        >>> task = ReconstructionTask(Half(), sigma=0.01, init="scaled_adjoint")
        >>> s = task.simulate(torch.ones(2, 1, 8, 8), seed=0, step=0, indices=[0, 1])
        >>> round(float(s.init.mean()), 1)
        1.0
    """

    def __init__(
        self,
        physics: nn.Module,
        sigma: float | None = None,
        sigma_range: tuple[float, float] | None = None,
        snr_db: float | None = None,
        init: str = "adjoint",
        input: str = "auto",
    ):
        super().__init__(sigma=sigma, sigma_range=sigma_range, snr_db=snr_db)
        builtin = ("adjoint", "scaled_adjoint", "zeros")
        if init not in builtin and not callable(getattr(physics, init, None)):
            raise ConfigError(
                f"config method.init: unknown initialisation '{init}'; use one of "
                f"{', '.join(builtin)} or a method of {type(physics).__name__}"
            )
        if input not in ("auto", "init", "measurements"):
            raise ConfigError(
                f"config method.input: unknown value '{input}'; expected auto, init or measurements"
            )
        self.physics, self.init, self.input = physics, init, input
        self._norm2: float | None = None

    def initialise(self, y: torch.Tensor) -> torch.Tensor:
        """The initialisation ``x0`` from measurements ``y``."""
        if self.init == "adjoint":
            return self.physics.A_adjoint(y)
        if self.init == "scaled_adjoint":
            if self._norm2 is None:
                self._norm2 = float(self.physics.norm()) ** 2
            return self.physics.A_adjoint(y) / self._norm2
        if self.init == "zeros":
            return torch.zeros_like(self.physics.A_adjoint(y))
        return getattr(self.physics, self.init)(y)

    def simulate(self, clean, seed, step, indices, stream=seeding.TASK):  # noqa: D102
        gens = [seeding.generator(seed, stream, step, j) for j in indices]
        with torch.no_grad():
            y, sigma = self._add_noise(self.physics.A(clean), gens)
            x0 = self.initialise(y)
        mode = self.input
        if mode == "auto":
            mode = "measurements" if self._model_params is not None and self.accepts("physics") else "init"
        if mode == "init":
            args, kwargs = (x0,), {}
        else:
            args = (y, self.physics)
            kwargs = {"init": x0} if self._model_params is not None and self.accepts("init") else {}
        return Sample(target=clean, init=x0, args=args, kwargs=kwargs, measurement=y, sigma=sigma)


def build_task(config: Any) -> Task:
    """The task a :class:`~deqir.train.config.Config` describes (operator built from the registry)."""
    p = config.physics
    if config.is_denoising:
        return DenoisingTask(sigma=p.noise_sigma, sigma_range=p.noise_sigma_range)
    from deqir.physics.registry import build_operator

    physics = build_operator(p.operator, image_size=config.data.image_size, **p.options)
    return ReconstructionTask(
        physics,
        sigma=p.noise_sigma,
        sigma_range=p.noise_sigma_range,
        snr_db=p.noise_snr_db,
        init=config.method.init,
        input=config.method.input,
    )
