"""Stabilisers of equilibrium models: spectral normalisation and Lipschitz estimates.

Example:
    >>> import torch
    >>> from deqir.solvers import spectral_norm_all, lipschitz_estimate
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(),
    ...                           torch.nn.Conv2d(4, 1, 3, padding=1))
    >>> net = spectral_norm_all(net)
    >>> lip = lipschitz_estimate(lambda z: 0.5 * net(z), torch.rand(2, 1, 16, 16), iterations=10)
    >>> lip.shape, bool((lip < 1.0).all())
    (torch.Size([2]), True)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from deqir.errors import InvalidValueError

_CONV_TRANSPOSE = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_DEFAULT_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, *_CONV_TRANSPOSE, nn.Linear)


def spectral_norm_all(
    module: nn.Module,
    n_power_iterations: int = 1,
    eps: float = 1e-12,
    types: tuple[type[nn.Module], ...] = _DEFAULT_TYPES,
) -> nn.Module:
    """Apply ``torch.nn.utils.parametrizations.spectral_norm`` to every conv and linear layer.

    Layers already carrying a parametrised ``weight`` are left alone, so calling it twice is
    harmless. Transposed convolutions are normalised along their output axis (``dim=1``). Note
    that the spectral norm of a convolution's *reshaped kernel* bounds, but is not, the norm of
    the convolution operator (use :func:`lipschitz_estimate` for the map itself).

    Args:
        module: the network (modified in place and returned).
        n_power_iterations: power iterations per training step of each normalisation.
        eps: numerical guard of the normalisation.
        types: layer classes to normalise.

    Returns:
        ``module``.

    Example:
        >>> import torch
        >>> net = spectral_norm_all(torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Tanh()))
        >>> torch.nn.utils.parametrize.is_parametrized(net[0], "weight")
        True
    """
    from torch.nn.utils import parametrize
    from torch.nn.utils.parametrizations import spectral_norm

    for sub in module.modules():
        if not isinstance(sub, types) or getattr(sub, "weight", None) is None:
            continue
        if parametrize.is_parametrized(sub, "weight"):
            continue
        dim = 1 if isinstance(sub, _CONV_TRANSPOSE) else 0
        spectral_norm(sub, n_power_iterations=n_power_iterations, eps=eps, dim=dim)
    return module


def lipschitz_estimate(
    f: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor, iterations: int = 20, seed: int = 0
) -> torch.Tensor:
    """Per-sample estimate of ``||J_f(z)||_2`` by power iteration on ``J_fᵀ J_f``.

    ``J v`` is obtained from vector-Jacobian products by the double-backward trick (so maps
    built from custom ``autograd.Function`` operators, which lack forward-mode rules, work as
    long as they are twice differentiable), ``Jᵀ w`` by one more vector-Jacobian product. A value
    below 1 at the points that matter is the contraction a fixed-point solver needs. Samples
    along axis 0 are assumed independent (the Jacobian is block diagonal).

    Args:
        f: the map, ``(batch, ...) -> (batch, ...)`` of the same shape.
        z: the point(s) ``(batch, ...)``.
        iterations: power iterations.
        seed: seed of the random start vector.

    Returns:
        ``(batch,)`` estimates (lower bounds that tighten with ``iterations``).

    Example:
        >>> import torch
        >>> [round(v, 4) for v in lipschitz_estimate(lambda z: 3 * z, torch.ones(2, 5)).tolist()]
        [3.0, 3.0]
    """
    if int(iterations) < 1:
        raise InvalidValueError(f"iterations must be >= 1; got {iterations}")
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    batch = z.shape[0]
    with torch.enable_grad():
        zr = z.detach().requires_grad_()
        fz = f(zr)
        if fz.shape != zr.shape:
            raise InvalidValueError(
                f"lipschitz_estimate needs f(z) shaped like z {tuple(z.shape)}; got {tuple(fz.shape)}"
            )
        if not fz.requires_grad:
            return torch.zeros(batch, dtype=z.dtype, device=z.device)
        w = torch.zeros_like(fz, requires_grad=True)  # dummy for the double-backward JVP
        (jtw,) = torch.autograd.grad(fz, zr, w, create_graph=True)
        v = torch.randn(z.shape, generator=gen, dtype=z.dtype).to(z.device)
        v = v / _norms(v)
        sigma = torch.zeros(batch, dtype=z.dtype, device=z.device)
        for _ in range(int(iterations)):
            (jv,) = torch.autograd.grad(jtw, w, v, retain_graph=True)  # J v
            (jtjv,) = torch.autograd.grad(fz, zr, jv, retain_graph=True)  # Jᵀ J v
            sigma = _norms(jv).flatten()
            v = jtjv / _norms(jtjv).clamp_min(torch.finfo(z.dtype).tiny)
    return sigma.detach()


def _norms(x: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(x.flatten(1), dim=1).view(-1, *([1] * (x.dim() - 1)))
