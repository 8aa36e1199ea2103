"""Centred, orthonormal 2-D Fourier transforms (fastMRI conventions) and k-space index helpers.

``fft2c`` maps an image whose centre pixel is the origin to k-space whose centre pixel (index
``N // 2`` along each axis) is the zero frequency, with ``norm="ortho"`` so that the transform is
unitary: ``ifft2c(fft2c(x)) == x`` and ``||fft2c(x)|| == ||x||``.

Example:
    >>> import torch
    >>> from deqir.physics.fft import fft2c, ifft2c
    >>> x = torch.randn(1, 1, 8, 8, dtype=torch.float64)
    >>> k = fft2c(x)
    >>> bool(torch.allclose(ifft2c(k).real, x)), round(float(k.abs().pow(2).sum() / x.pow(2).sum()), 6)
    (True, 1.0)
"""

from __future__ import annotations

import torch

_DIMS = (-2, -1)


def fft2c(x: torch.Tensor) -> torch.Tensor:
    """Centred orthonormal 2-D FFT over the last two axes (real or complex input).

    Example:
        >>> import torch
        >>> from deqir.physics.fft import fft2c
        >>> k = fft2c(torch.ones(4, 4))
        >>> float(k[2, 2].real), float(k.abs().sum())  # all energy at the centre (DC)
        (4.0, 4.0)
    """
    x = torch.fft.ifftshift(x, dim=_DIMS)
    return torch.fft.fftshift(torch.fft.fft2(x, dim=_DIMS, norm="ortho"), dim=_DIMS)


def ifft2c(k: torch.Tensor) -> torch.Tensor:
    """Centred orthonormal 2-D inverse FFT over the last two axes; the adjoint of :func:`fft2c`.

    Example:
        >>> import torch
        >>> from deqir.physics.fft import fft2c, ifft2c
        >>> x = torch.randn(3, 5, 6, dtype=torch.complex128)
        >>> bool(torch.allclose(ifft2c(fft2c(x)), x))
        True
    """
    k = torch.fft.ifftshift(k, dim=_DIMS)
    return torch.fft.fftshift(torch.fft.ifft2(k, dim=_DIMS, norm="ortho"), dim=_DIMS)


def negative_frequency_index(n: int) -> torch.Tensor:
    """Index ``j`` of frequency ``-k`` for every index ``i`` of frequency ``k`` on a centred grid.

    On the centred grid the zero frequency sits at ``n // 2``, so ``-k`` lives at
    ``(2 * (n // 2) - i) mod n``: ``n - i`` (mod ``n``) for even ``n`` (the Nyquist row ``0``
    maps to itself) and ``n - 1 - i`` for odd ``n``.

    Example:
        >>> from deqir.physics.fft import negative_frequency_index
        >>> negative_frequency_index(4).tolist(), negative_frequency_index(5).tolist()
        ([0, 3, 2, 1], [4, 3, 2, 1, 0])
    """
    return (2 * (n // 2) - torch.arange(n)) % n


def flip_frequencies(m: torch.Tensor) -> torch.Tensor:
    """``m(-k)`` for a centred k-space array ``m`` (last two axes).

    Example:
        >>> import torch
        >>> from deqir.physics.fft import flip_frequencies
        >>> m = torch.zeros(4, 4, dtype=torch.bool)
        >>> m[2, 3] = True  # frequency (0, +1)
        >>> flip_frequencies(m).nonzero().tolist()  # frequency (0, -1)
        [[2, 1]]
    """
    rows = negative_frequency_index(m.shape[-2]).to(m.device)
    cols = negative_frequency_index(m.shape[-1]).to(m.device)
    return m.index_select(-2, rows).index_select(-1, cols)
