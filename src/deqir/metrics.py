"""Image-quality metrics: PSNR, SNR and SSIM, per image of a batch.

Conventions (METHODS.md §8): images in ``[0, 1]`` and PSNR with ``peak = 1``;
``SNR = 20 log10(‖x‖ / ‖x − x̂‖)``; SSIM as defined by Wang et al. (2004), computed by
scikit-image's :func:`skimage.metrics.structural_similarity` with a Gaussian window
(σ = 1.5, 11 × 11) and population statistics, which matches the reference implementation.

Inputs are real tensors ``(B, C, H, W)`` (one value per image: a ``(B,)`` tensor) or a single image
``(C, H, W)`` / ``(H, W)`` (a 0-dim tensor). Complex MRI images: pass their magnitude.
:func:`psnr` and :func:`snr` are differentiable; :func:`ssim` is not (it runs in NumPy).

Example:
    >>> import torch
    >>> from deqir.metrics import psnr, snr, ssim
    >>> x = torch.full((2, 1, 16, 16), 0.5)
    >>> psnr(x + 0.1, x).round(decimals=3).tolist()  # 10 log10(1 / 0.01)
    [20.0, 20.0]
    >>> round(float(snr(x + 0.05, x)[0]), 3)  # 20 log10(0.5 / 0.05)
    20.0
    >>> ssim(x, x).tolist()
    [1.0, 1.0]
"""

from __future__ import annotations

import math

import torch

from deqir.errors import DTypeError, InvalidValueError, ShapeError

__all__ = ["psnr", "snr", "ssim", "mse", "compute_metrics"]


def _check(x_hat: torch.Tensor, x: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Validate a pair; returns both as (B, C, H, W) and whether the input was a single image."""
    if not isinstance(x_hat, torch.Tensor) or not isinstance(x, torch.Tensor):
        raise DTypeError(f"{name} expects torch tensors; got {type(x_hat).__name__} and {type(x).__name__}")
    if x_hat.shape != x.shape:
        raise ShapeError(
            f"{name}: x_hat has shape {tuple(x_hat.shape)} but x has {tuple(x.shape)}; "
            "they must match (same batch, channels and size)"
        )
    if x.is_complex() or x_hat.is_complex():
        raise DTypeError(f"{name} needs real images; pass magnitudes (x.abs()) of complex images")
    if x.ndim not in (2, 3, 4):
        raise ShapeError(f"{name} expects (B, C, H, W), (C, H, W) or (H, W); got {tuple(x.shape)}")
    single = x.ndim < 4
    while x.ndim < 4:
        x, x_hat = x[None], x_hat[None]
    if not x.is_floating_point():
        x = x.to(torch.float32)
    if not x_hat.is_floating_point():
        x_hat = x_hat.to(torch.float32)
    return x_hat, x, single


def _out(values: torch.Tensor, single: bool) -> torch.Tensor:
    return values[0] if single else values


def mse(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Mean squared error per image.

    Example:
        >>> import torch
        >>> mse(torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)).tolist()
        [1.0]
    """
    x_hat, x, single = _check(x_hat, x, "mse")
    diff = x_hat.to(torch.float64) - x.to(torch.float64)
    return _out(diff.pow(2).flatten(1).mean(1).to(x.dtype), single)


def psnr(x_hat: torch.Tensor, x: torch.Tensor, peak: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image: ``10 log10(peak² / MSE)``.

    Args:
        x_hat: Estimate ``(B, C, H, W)`` (or one image).
        x: Reference of the same shape.
        peak: Peak value (1 for images in ``[0, 1]``).

    Returns:
        ``(B,)`` tensor (0-dim for a single image); ``inf`` where the images are equal.

    Raises:
        ShapeError: Shapes differ.

    Example:
        >>> import torch
        >>> x = torch.zeros(1, 1, 8, 8)
        >>> psnr(x + 0.01, x).round().tolist()
        [40.0]
    """
    if not peak > 0:
        raise InvalidValueError(f"peak must be positive; got {peak}")
    x_hat, x, single = _check(x_hat, x, "psnr")
    diff = x_hat.to(torch.float64) - x.to(torch.float64)
    err = diff.pow(2).flatten(1).mean(1)
    return _out((10.0 * torch.log10(float(peak) ** 2 / err)).to(x.dtype), single)


def snr(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio in dB per image: ``20 log10(‖x‖ / ‖x − x̂‖)``.

    Unlike PSNR it does not depend on the intensity scale (scaling both images leaves it unchanged).

    Example:
        >>> import torch
        >>> x = torch.ones(1, 1, 4, 4)
        >>> snr(0.9 * x, x).round(decimals=4).tolist()  # 20 log10(1 / 0.1)
        [20.0]
    """
    x_hat, x, single = _check(x_hat, x, "snr")
    x64 = x.to(torch.float64)
    num = x64.flatten(1).norm(dim=1)
    den = (x64 - x_hat.to(torch.float64)).flatten(1).norm(dim=1)
    return _out((20.0 * torch.log10(num / den)).to(x.dtype), single)


def ssim(x_hat: torch.Tensor, x: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Structural similarity per image (mean SSIM over pixels and channels).

    Computed with :func:`skimage.metrics.structural_similarity` (Gaussian window σ = 1.5,
    ``use_sample_covariance=False``, K1 = 0.01, K2 = 0.03), channels averaged. Not differentiable.

    Args:
        x_hat: Estimate ``(B, C, H, W)`` (or one image), at least 7 × 7 pixels.
        x: Reference of the same shape.
        data_range: Range of the images (1 for ``[0, 1]``).

    Returns:
        ``(B,)`` tensor of the input's dtype on its device (0-dim for a single image).

    Raises:
        ShapeError: Shapes differ or images are smaller than 7 × 7.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.rand(1, 1, 32, 32, generator=g)
        >>> noisy = x + 0.2 * torch.randn(1, 1, 32, 32, generator=g)
        >>> bool(ssim(noisy, x)[0] < ssim(x, x)[0] == 1.0)
        True
    """
    x_hat, x, single = _check(x_hat, x, "ssim")
    if not data_range > 0:
        raise InvalidValueError(f"data_range must be positive; got {data_range}")
    if min(x.shape[-2:]) < 7:
        raise ShapeError(f"ssim needs images of at least 7 x 7 pixels; got {tuple(x.shape[-2:])}")
    from skimage.metrics import structural_similarity

    a = x_hat.detach().to("cpu", torch.float64).numpy()
    b = x.detach().to("cpu", torch.float64).numpy()
    vals = []
    for i in range(a.shape[0]):
        per_channel = [
            structural_similarity(
                a[i, c],
                b[i, c],
                data_range=float(data_range),
                gaussian_weights=True,
                sigma=1.5,
                use_sample_covariance=False,
            )
            for c in range(a.shape[1])
        ]
        vals.append(math.fsum(per_channel) / len(per_channel))
    return _out(torch.tensor(vals, dtype=x.dtype, device=x.device), single)


def compute_metrics(x_hat: torch.Tensor, x: torch.Tensor, peak: float = 1.0) -> dict[str, torch.Tensor]:
    """PSNR, SNR and SSIM per image in one dictionary (SSIM uses ``data_range=peak``).

    Example:
        >>> import torch
        >>> x = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
        >>> sorted(compute_metrics(x * 0.9, x))
        ['psnr', 'snr', 'ssim']
    """
    return {"psnr": psnr(x_hat, x, peak), "snr": snr(x_hat, x), "ssim": ssim(x_hat, x, data_range=peak)}
