"""Measurement noise: additive white Gaussian noise set by its level or by the input SNR.

``GaussianNoise(sigma=s)`` adds noise of standard deviation ``s`` to every real entry (complex
entries get ``s / sqrt(2)`` on each of the real and imaginary parts, so ``E|e|^2 = s^2``).
``GaussianNoise(snr_db=S)`` scales the noise of every batch element to exactly
``||e|| = ||A x|| * 10^(-S/20)``, as in ODER's demo.

Example:
    >>> import torch
    >>> from deqir.physics.noise import GaussianNoise
    >>> y = torch.ones(1, 1, 100, 100)
    >>> noisy = GaussianNoise(snr_db=20)(y, generator=torch.Generator().manual_seed(0))
    >>> round(float(20 * torch.log10(y.norm() / (noisy - y).norm())), 4)
    20.0
"""

from __future__ import annotations

import torch

from deqir.errors import InvalidValueError


class GaussianNoise(torch.nn.Module):
    """Additive white Gaussian noise; give exactly one of ``sigma`` and ``snr_db``."""

    def __init__(self, sigma: float | None = None, snr_db: float | None = None):
        super().__init__()
        if (sigma is None) == (snr_db is None):
            raise InvalidValueError("GaussianNoise needs exactly one of sigma= and snr_db=")
        if sigma is not None and not (float(sigma) >= 0):
            raise InvalidValueError(f"noise sigma must be >= 0; got {sigma}")
        self.sigma = None if sigma is None else float(sigma)
        self.snr_db = None if snr_db is None else float(snr_db)

    def forward(self, y: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Return ``y + e`` with fresh noise ``e`` drawn from ``generator``."""
        if y.is_complex():
            parts = torch.randn((*y.shape, 2), generator=generator, dtype=y.real.dtype).to(y.device)
            e = torch.complex(parts[..., 0], parts[..., 1]) / 2**0.5
        else:
            e = torch.randn(y.shape, generator=generator, dtype=y.dtype).to(y.device)
        if self.sigma is not None:
            return y + self.sigma * e
        dims = tuple(range(1, y.dim()))
        y_norm = y.abs().pow(2).sum(dims, keepdim=True).sqrt()
        e_norm = e.abs().pow(2).sum(dims, keepdim=True).sqrt().clamp_min(1e-30)
        return y + e * (y_norm * 10 ** (-self.snr_db / 20) / e_norm)

    def extra_repr(self) -> str:  # noqa: D102
        return f"sigma={self.sigma}" if self.sigma is not None else f"snr_db={self.snr_db}"
