"""The denoiser protocol of the plug-and-play / RED baselines: ``D(x, sigma) -> x_denoised``.

A *denoiser* is any callable taking images ``(B, C, H, W)`` in ``[0, 1]`` and a noise standard
deviation ``sigma`` (a float or a ``(B,)`` tensor) and returning denoised images of the same
shape. :func:`as_denoiser` turns what a user has into one:

* a name: ``"natural"``, ``"ct"``, ``"mri"`` (deqir's pretrained blind DnCNNs, loaded lazily
  through :func:`deqir.priors.pretrained.load_pretrained`), ``"scico17"`` (scico's 17-layer DnCNN
  that takes the noise level as input, variant ``17N``) or ``"scico17M"`` (scico's blind 17-layer
  DnCNN trained at σ = 0.1, driven at other levels by rescaling, see :class:`BlindDenoiser`);
* a module whose ``forward`` takes ``(x, sigma)``: used as is (evaluation mode);
* a module or function taking only ``x``: wrap it in :class:`BlindDenoiser` to give it a σ;
* :class:`GaussianSmoother`: a network-free smoother, for tests and quick checks.

Example:
    >>> import torch
    >>> from deqir.methods.denoisers import as_denoiser, GaussianSmoother
    >>> D = as_denoiser(GaussianSmoother())
    >>> D(torch.rand(2, 1, 16, 16), 0.05).shape
    torch.Size([2, 1, 16, 16])
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import torch

from deqir.errors import DataError, InvalidValueError, unknown_name_message

Denoiser = Callable[[torch.Tensor, float | torch.Tensor], torch.Tensor]

#: Names :func:`as_denoiser` resolves, with what they load.
DENOISER_NAMES: dict[str, str] = {
    "natural": "deqir pretrained blind DnCNN for natural images (load_pretrained('natural'))",
    "ct": "deqir pretrained blind DnCNN for CT slices (load_pretrained('ct'))",
    "mri": "deqir pretrained blind DnCNN for MRI magnitude images (load_pretrained('mri'))",
    "scico17": "scico DnCNN-17 with a noise-level input (variant 17N), trained on natural images",
    "scico17M": "scico blind DnCNN-17 trained at sigma 0.1 (variant 17M), driven by rescaling",
}


class GaussianSmoother(torch.nn.Module):
    """A network-free denoiser: Gaussian smoothing whose width grows with ``sigma``.

    The filter's standard deviation in pixels is ``scale * sigma / 0.05`` (clamped to
    ``[0.3, 4]``), with circular padding. Useful for tests and as a sanity baseline.

    Args:
        scale: pixels of smoothing at ``sigma = 0.05``.

    Example:
        >>> import torch
        >>> D = GaussianSmoother()
        >>> x = torch.rand(1, 1, 16, 16)
        >>> float(D(x, 0.1).std()) < float(x.std())
        True
    """

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.scale = float(scale)

    def forward(self, x: torch.Tensor, sigma: float | torch.Tensor = 0.05) -> torch.Tensor:  # noqa: D102
        s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1)
        s = s.expand(x.shape[0]) if s.numel() == 1 else s
        out = torch.empty_like(x)
        for i in range(x.shape[0]):
            width = min(max(self.scale * float(s[i]) / 0.05, 0.3), 4.0)
            out[i] = _gaussian_filter(x[i : i + 1], width)[0]
        return out


def _gaussian_filter(x: torch.Tensor, width: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(3 * width)))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / width) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    xp = torch.nn.functional.pad(x, (radius, radius, radius, radius), mode="circular")
    kh = k.reshape(1, 1, 1, -1).expand(c, 1, 1, -1)
    kv = k.reshape(1, 1, -1, 1).expand(c, 1, -1, 1)
    xp = torch.nn.functional.conv2d(xp, kh, groups=c)
    return torch.nn.functional.conv2d(xp, kv, groups=c)


class BlindDenoiser(torch.nn.Module):
    """Give a blind denoiser (``net(x)``) a noise level by rescaling its input.

    A network trained at noise level ``train_sigma`` denoises noise ``sigma`` when the image is
    scaled by ``train_sigma / sigma`` before and by ``sigma / train_sigma`` after:
    ``D(x, σ) = (σ/σ₀) · net((σ₀/σ) · x)``. With ``rescale=False``, ``sigma`` is ignored.

    Args:
        net: a module or function of ``x`` only.
        train_sigma: noise level ``σ₀`` the network was trained at.
        rescale: apply the rescaling (otherwise every σ gives the same output).

    Example:
        >>> import torch
        >>> D = BlindDenoiser(lambda x: 0.5 * x, train_sigma=0.1)
        >>> float(D(torch.ones(1, 1, 4, 4), 0.05).mean())
        0.5
    """

    def __init__(self, net: Callable[[torch.Tensor], torch.Tensor], train_sigma: float = 0.1, rescale=True):
        super().__init__()
        self.net = net
        self.train_sigma = float(train_sigma)
        self.rescale = bool(rescale)

    def forward(self, x: torch.Tensor, sigma: float | torch.Tensor | None = None) -> torch.Tensor:  # noqa: D102
        if sigma is None or not self.rescale:
            return self.net(x)
        s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1, 1, 1, 1)
        factor = self.train_sigma / s.clamp_min(1e-6)
        return self.net(x * factor) / factor


class _SigmaNet(torch.nn.Module):
    """A module whose forward takes ``(x, sigma)``: calls it with a float or a ``(B,)`` tensor."""

    def __init__(self, net: Callable[..., torch.Tensor]):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.net(x, sigma)


def resolve_denoiser(name: str, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Load the denoiser called ``name`` (see :data:`DENOISER_NAMES`), in evaluation mode.

    Raises:
        InvalidValueError: unknown name (the message suggests the closest one).
        DataError: the weights are not installed here; the message says what to use instead.

    Example:
        >>> D = resolve_denoiser("scico17")  # doctest: +SKIP
    """
    if name not in DENOISER_NAMES:
        raise InvalidValueError(unknown_name_message("denoiser", name, list(DENOISER_NAMES)))
    if name in ("scico17", "scico17M"):
        from deqir.priors.scico_weights import load_scico_dncnn

        if name == "scico17":
            return _SigmaNet(load_scico_dncnn("17N", device=device)).eval()
        return BlindDenoiser(load_scico_dncnn("17M", device=device), train_sigma=0.1).eval()
    try:
        from deqir.priors.pretrained import load_pretrained
    except ImportError as err:
        raise DataError(
            f"the pretrained '{name}' denoiser is not part of this installation ({err}); "
            "use denoiser='scico17' (scico's DnCNN, pip install --no-deps scico msgpack) or pass "
            "a torch module D(x, sigma)"
        ) from None
    try:
        net = load_pretrained(name)
    except (FileNotFoundError, OSError) as err:
        raise DataError(
            f"the pretrained '{name}' denoiser weights could not be loaded ({err}); use "
            "denoiser='scico17' or pass a torch module D(x, sigma)"
        ) from None
    return as_denoiser(net.to(device).eval())


def _takes_sigma(fn: Any) -> bool:
    target = fn.forward if isinstance(fn, torch.nn.Module) else fn
    try:
        params = list(inspect.signature(target).parameters.values())
    except (TypeError, ValueError):
        return False
    positional = [
        p
        for p in params
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name not in ("self",)
    ]
    return len(positional) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in params)


def as_denoiser(denoiser: Any, device: str | torch.device = "cpu") -> Denoiser:
    """Turn a name, a module or a function into a denoiser ``D(x, sigma)``.

    A module or function with a second positional parameter is called as ``D(x, sigma)``,
    except a network whose ``noise_level_input`` attribute is ``False`` (a blind DnCNN such as
    ``load_scico_dncnn("17M")``); those and functions of ``x`` only are wrapped in
    :class:`BlindDenoiser` without rescaling (σ ignored); wrap one yourself with
    ``BlindDenoiser(net, train_sigma)`` to drive it at other levels.
    Modules are put in evaluation mode.

    Args:
        denoiser: a name of :data:`DENOISER_NAMES`, a module or a callable.
        device: where a named denoiser is loaded.

    Raises:
        InvalidValueError: unknown name or an object that is not callable.
        DataError: named weights not installed.

    Example:
        >>> import torch
        >>> D = as_denoiser(lambda x: x.clamp(0, 1))  # a function of x only: sigma is ignored
        >>> D(torch.full((1, 1, 4, 4), 2.0), 0.1).max().item()
        1.0
    """
    if isinstance(denoiser, str):
        return resolve_denoiser(denoiser, device)
    if denoiser is None or not callable(denoiser):
        raise InvalidValueError(
            f"denoiser must be a name ({', '.join(DENOISER_NAMES)}), a torch module or a callable "
            f"D(x, sigma); got {type(denoiser).__name__}"
        )
    if isinstance(denoiser, torch.nn.Module):
        denoiser.eval()
        if getattr(denoiser, "noise_level_input", None) is False:  # a blind DnCNN: never pass sigma
            return BlindDenoiser(denoiser, rescale=False)
    if _takes_sigma(denoiser):
        return denoiser
    return BlindDenoiser(denoiser, rescale=False)


def denoiser_label(denoiser: Any) -> str:
    """A short description of a denoiser for reports (its name, or its class).

    Example:
        >>> denoiser_label("scico17")
        'scico17'
    """
    if isinstance(denoiser, str):
        return denoiser
    inner = getattr(denoiser, "net", denoiser)
    return type(inner).__name__
