"""Deblurring and super-resolution with circular convolution, diagonalised by the FFT.

* :func:`blur_kernel`: Gaussian, uniform (box) and seeded camera-shake (motion) kernels;
* :class:`Blur`: ``y = k * x`` (circular convolution, same shape as ``x``), one block;
* :class:`SuperResolution`: ``y = (k * x)[::s, ::s]`` (blur then decimation by ``s``), one block.

Both operators have a closed-form data proximal map
``prox_data(z, y, gamma) = argmin_x 1/2 ||A x - y||^2 + 1/(2 gamma) ||x - z||^2`` computed with
FFTs (for super-resolution, the aliasing formula of Zhao et al., "Fast single image
super-resolution using a new analytical solution for l2-l2 problems", IEEE TIP 2016).

The kernel is centred: its middle pixel (index ``size // 2``) is the origin, so a symmetric kernel
does not shift the image.

Example:
    >>> import torch
    >>> from deqir.physics.blur import Blur
    >>> op = Blur(32, kernel="gaussian", kernel_size=9, sigma=1.6)
    >>> x = torch.rand(2, 1, 32, 32)
    >>> y = op.A(x)
    >>> tuple(y.shape), round(float(y.mean() / x.mean()), 4)  # a normalised kernel keeps the mean
    ((2, 1, 32, 32), 1.0)
"""

from __future__ import annotations

import math

import torch

from deqir.errors import DTypeError, InvalidValueError, ShapeError, unknown_name_message
from deqir.physics.base import LinearOperator

KERNELS = ("gaussian", "uniform", "motion")


# --------------------------------------------------------------------------- kernels
def blur_kernel(
    name: str, size: int, sigma: float | None = None, seed: int = 0, angle: float | None = None
) -> torch.Tensor:
    """A ``size x size`` blur kernel (float32, non-negative, sums to 1).

    Args:
        name: ``"gaussian"`` (isotropic, standard deviation ``sigma`` pixels; 1.6 when ``None``,
            ELDER's setting), ``"uniform"`` (box) or ``"motion"`` (camera shake).
        size: side of the kernel in pixels.
        sigma: Gaussian standard deviation; ignored by ``"uniform"`` and ``"motion"``.
        seed: seed of the random camera-shake trajectory (``"motion"`` only).
        angle: ``"motion"`` only: ``None`` draws a random camera-shake trajectory (a smooth random
            walk with inertia, a synthetic stand-in for Levin's recorded kernels); a number gives
            a straight linear motion of length ``size - 1`` pixels along ``angle`` degrees
            (counter-clockwise from the horizontal axis).

    Raises:
        InvalidValueError: unknown ``name``, ``size < 1``, ``sigma <= 0``, or ``angle`` given for a
            kernel other than ``"motion"``.

    Example:
        >>> from deqir.physics.blur import blur_kernel
        >>> k = blur_kernel("motion", 15, seed=3)
        >>> tuple(k.shape), round(float(k.sum()), 5), bool((k >= 0).all())
        ((15, 15), 1.0, True)
    """
    if name not in KERNELS:
        raise InvalidValueError(unknown_name_message("kernel", name, KERNELS))
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise InvalidValueError(f"kernel size must be a positive integer; got {size!r}")
    if angle is not None and name != "motion":
        raise InvalidValueError(f"angle only applies to 'motion' kernels; drop angle= for '{name}'")
    if name == "gaussian":
        s = 1.6 if sigma is None else float(sigma)
        if not (s > 0 and math.isfinite(s)):
            raise InvalidValueError(f"Gaussian kernel sigma must be a positive number; got {sigma!r}")
        t = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
        g = torch.exp(-(t**2) / (2 * s**2))
        k = g[:, None] * g[None, :]
    elif name == "uniform":
        k = torch.ones(size, size, dtype=torch.float64)
    else:
        k = _motion_kernel(size, seed, angle)
    return (k / k.sum()).float()


def _motion_kernel(size: int, seed: int, angle: float | None) -> torch.Tensor:
    """Splat a (random or straight) 2-D trajectory into a ``size x size`` grid, bilinearly."""
    if size == 1:
        return torch.ones(1, 1, dtype=torch.float64)
    if angle is not None:
        theta = math.radians(float(angle))
        t = torch.linspace(-0.5, 0.5, 8 * size, dtype=torch.float64) * (size - 1)
        pts = torch.stack([-t * math.sin(theta), t * math.cos(theta)], 1)  # (row, col) offsets
    else:
        pts = _shake_trajectory(size, seed)
    c = (size - 1) / 2
    rows, cols = pts[:, 0] + c, pts[:, 1] + c
    r0, c0 = rows.floor().clamp(0, size - 1), cols.floor().clamp(0, size - 1)
    fr, fc = rows - r0, cols - c0
    k = torch.zeros(size, size, dtype=torch.float64)
    for dr, dc, w in (
        (0, 0, (1 - fr) * (1 - fc)),
        (1, 0, fr * (1 - fc)),
        (0, 1, (1 - fr) * fc),
        (1, 1, fr * fc),
    ):
        rr = (r0 + dr).clamp(max=size - 1).long()
        cc = (c0 + dc).clamp(max=size - 1).long()
        k.index_put_((rr, cc), w, accumulate=True)
    return k


def _shake_trajectory(size: int, seed: int, steps: int = 400) -> torch.Tensor:
    """A smooth random walk with inertia and a weak pull back to its start, fitted to the kernel.

    The velocity turns by small random accelerations (and, rarely, a larger jerk, as in recorded
    camera shake); the path is then centred on its mean and scaled so that its larger extent spans
    the kernel minus a one-pixel margin.
    """
    gen = torch.Generator().manual_seed(int(seed))
    noise = torch.randn(steps, 2, generator=gen, dtype=torch.float64).tolist()
    jerks = (torch.rand(steps, generator=gen, dtype=torch.float64) < 0.02).tolist()
    speed = torch.randn(steps // 50 + 2, generator=gen, dtype=torch.float64)
    speed = torch.nn.functional.interpolate(speed[None, None], size=steps, mode="linear")[0, 0]
    speed = (0.25 + speed.abs()).tolist()  # slow stretches leave brighter streaks
    heading = float(torch.rand(1, generator=gen, dtype=torch.float64)) * 2 * math.pi
    vr, vc, pr, pc = math.sin(heading), math.cos(heading), 0.0, 0.0
    out = []
    for i in range(steps):
        a = 0.6 if jerks[i] else 0.06
        vr, vc = vr + a * noise[i][0] - 0.004 * pr, vc + a * noise[i][1] - 0.004 * pc
        norm = max(math.hypot(vr, vc), 1e-12)
        vr, vc = vr / norm, vc / norm
        pr, pc = pr + 0.1 * speed[i] * vr, pc + 0.1 * speed[i] * vc
        out.append((pr, pc))
    out = torch.tensor(out, dtype=torch.float64)
    out = out - out.mean(0)
    extent = (out.max(0).values - out.min(0).values).max().clamp_min(1e-12)
    out = out * ((size - 2 if size > 2 else size - 1) / extent)
    return out - (out.max(0).values + out.min(0).values) / 2  # centre the bounding box


# --------------------------------------------------------------------------- helpers
def _check_image_size(image_size, owner: str) -> int:
    if isinstance(image_size, (tuple, list, torch.Size)):
        if len(image_size) != 2 or image_size[0] != image_size[1]:
            raise ShapeError(
                f"{owner} needs square images; got image_size={tuple(image_size)}. "
                "Pass one integer N for N x N images (crop or pad to a square)"
            )
        image_size = image_size[0]
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 2:
        raise InvalidValueError(f"{owner}: image_size must be an integer >= 2; got {image_size!r}")
    return int(image_size)


def _check_channels(channels, owner: str) -> int:
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
        raise InvalidValueError(f"{owner}: channels must be a positive integer; got {channels!r}")
    return channels


def _make_kernel(kernel, kernel_size, sigma, seed, n: int, owner: str) -> torch.Tensor:
    if isinstance(kernel, str):
        k = blur_kernel(kernel, kernel_size, sigma=sigma, seed=seed)
    elif isinstance(kernel, torch.Tensor):
        if kernel.is_complex() or not kernel.is_floating_point():
            raise DTypeError(f"{owner}: a kernel tensor must be real floating point; got {kernel.dtype}")
        k = kernel.detach().to("cpu")
        while k.dim() > 2 and k.shape[0] == 1:
            k = k[0]
        if k.dim() != 2:
            raise ShapeError(
                f"{owner}: a kernel tensor must be 2-D (kh, kw); got shape {tuple(kernel.shape)}"
            )
        if not torch.isfinite(k).all():
            raise InvalidValueError(f"{owner}: the kernel contains NaN or infinite values")
    else:
        raise InvalidValueError(f"{owner}: kernel must be a name {KERNELS} or a 2-D tensor; got {kernel!r}")
    return k.to(torch.float64)


def _transfer_function(k: torch.Tensor, n: int) -> torch.Tensor:
    """FFT of the kernel embedded in an ``n x n`` grid with its centre pixel at the origin.

    A kernel larger than the image is folded (wrapped) onto the grid, which is exactly what
    circular convolution with it does to an ``n``-periodic image.
    """
    rows = (torch.arange(k.shape[0]) - k.shape[0] // 2) % n
    cols = (torch.arange(k.shape[1]) - k.shape[1] // 2) % n
    pad = torch.zeros(n * n, dtype=torch.float64)
    pad.index_add_(0, (rows[:, None] * n + cols[None, :]).flatten(), k.flatten())
    return torch.fft.fft2(pad.reshape(n, n))


def _as_gamma(gamma, z: torch.Tensor) -> torch.Tensor | float:
    """A positive step size: a number, or one per batch element, broadcast over ``z``."""
    if isinstance(gamma, torch.Tensor):
        g = gamma.detach() if not gamma.requires_grad else gamma
        if g.is_complex() or not bool(torch.isfinite(g).all()) or not bool((g > 0).all()):
            raise InvalidValueError("gamma must be positive and finite (a number or one per batch element)")
        if g.numel() == 1:
            return g.reshape(()).to(z.real.dtype)
        if g.numel() != z.shape[0]:
            raise ShapeError(
                f"gamma must be a number or hold one value per batch element "
                f"({z.shape[0]}); got shape {tuple(g.shape)}"
            )
        return g.reshape(-1, *([1] * (z.dim() - 1))).to(device=z.device, dtype=z.real.dtype)
    g = float(gamma)
    if not (g > 0 and math.isfinite(g)):
        raise InvalidValueError(f"gamma must be a positive finite number; got {gamma!r}")
    return g


# --------------------------------------------------------------------------- operators
class Blur(LinearOperator):
    """Circular convolution ``y = k * x`` of every channel with one kernel (one block).

    Args:
        image_size: side ``N`` of the square images (an int, or ``(N, N)``).
        kernel: a kernel name for :func:`blur_kernel` or a 2-D real tensor (used as given, not
            renormalised).
        kernel_size: side of a named kernel (default 25, ELDER's Gaussian).
        sigma: standard deviation of a Gaussian kernel (default 1.6).
        channels: number of image channels ``C``; images and measurements are ``(B, C, N, N)``.
        seed: seed of a ``"motion"`` kernel.

    The operator is computed with real FFTs, so it costs ``O(C N^2 log N)`` whatever the kernel
    size. ``kernel`` (the spatial kernel) and ``transfer`` (its full ``N x N`` FFT, complex128) are
    buffers.

    Example:
        >>> import torch
        >>> from deqir.physics.blur import Blur
        >>> op = Blur(16, kernel="uniform", kernel_size=3, channels=3)
        >>> x = torch.rand(1, 3, 16, 16)
        >>> z = op.prox_data(x, op.A(x), gamma=1e6)  # nearly exact data consistency
        >>> bool((op.A(z) - op.A(x)).abs().max() < 1e-3)
        True
    """

    num_blocks = 1
    block_dim = None

    def __init__(
        self,
        image_size,
        kernel: str | torch.Tensor = "gaussian",
        kernel_size: int = 25,
        sigma: float = 1.6,
        channels: int = 1,
        seed: int = 0,
    ):
        super().__init__()
        name = type(self).__name__
        n = _check_image_size(image_size, name)
        self.n = n
        self.channels = _check_channels(channels, name)
        self.image_shape = (self.channels, n, n)
        k = _make_kernel(kernel, kernel_size, sigma, seed, n, name)
        self.register_buffer("kernel", k.float())
        self.register_buffer("transfer", _transfer_function(k, n))

    # transfer function in the working precision: the full one and its rfft half
    def _h(self, like: torch.Tensor, half: bool) -> torch.Tensor:
        cdtype = torch.complex128 if like.real.dtype == torch.float64 else torch.complex64
        h = self.transfer[:, : self.n // 2 + 1] if half else self.transfer
        return h.to(device=like.device, dtype=cdtype)

    def _conv(self, x: torch.Tensor, adjoint: bool) -> torch.Tensor:
        if x.is_complex():  # only reached through the generic machinery; keep it exact
            h = self._h(x, half=False)
            return torch.fft.ifft2(torch.fft.fft2(x) * (h.conj() if adjoint else h))
        h = self._h(x, half=True)
        return torch.fft.irfft2(torch.fft.rfft2(x) * (h.conj() if adjoint else h), s=(self.n, self.n))

    def _forward(self, x, blocks):
        return self._conv(x, adjoint=False)

    def _adjoint(self, y, blocks):
        return self._conv(y, adjoint=True)

    def measurement_shape(self, blocks=None):  # noqa: D102
        return self.image_shape

    def prox_data(self, z: torch.Tensor, y: torch.Tensor, gamma) -> torch.Tensor:
        """``argmin_x 1/2 ||k * x - y||^2 + 1/(2 gamma) ||x - z||^2``, exactly, by FFT.

        ``x = F^-1[(gamma conj(H) F y + F z) / (gamma |H|^2 + 1)]``.

        Args:
            z: images ``(B, C, N, N)``.
            y: measurements ``(B, C, N, N)``.
            gamma: positive step: a number or a tensor with one value per batch element.

        Example:
            >>> import torch
            >>> from deqir.physics.blur import Blur
            >>> op = Blur(16, kernel_size=5, sigma=1.0)
            >>> y = op.A(torch.rand(1, 1, 16, 16))
            >>> op.prox_data(torch.zeros(1, 1, 16, 16), y, 0.5).shape
            torch.Size([1, 1, 16, 16])
        """
        self.check_image(z)
        self.check_measurement(y, None)
        g = _as_gamma(gamma, z)
        h = self._h(z, half=True)
        num = g * h.conj() * torch.fft.rfft2(y.to(z.dtype)) + torch.fft.rfft2(z)
        den = g * h.abs().pow(2) + 1
        return torch.fft.irfft2(num / den, s=(self.n, self.n))

    def extra_repr(self) -> str:  # noqa: D102
        return f"image_size={self.n}, channels={self.channels}, kernel={tuple(self.kernel.shape)}"


class SuperResolution(Blur):
    """Blur then decimation by ``factor``: ``y = (k * x)[..., ::s, ::s]`` (one block).

    Images are ``(B, C, N, N)`` and measurements ``(B, C, N/s, N/s)``; ``N`` must be divisible by
    ``s``. The adjoint (zero-filling upsampling, then correlation with ``k``) is exact, and
    :meth:`prox_data` is the closed-form FFT solution for decimated circular convolution.

    Args:
        image_size: side ``N`` of the high-resolution images.
        factor: decimation factor ``s`` (ELDER: 2 or 3).
        kernel, kernel_size, sigma, channels, seed: as in :class:`Blur` (registry defaults:
            9 x 9 Gaussian, ``sigma = 1.6``).

    Example:
        >>> import torch
        >>> from deqir.physics.blur import SuperResolution
        >>> op = SuperResolution(24, factor=3, kernel="gaussian", kernel_size=9, sigma=1.6)
        >>> tuple(op.A(torch.rand(2, 1, 24, 24)).shape)
        (2, 1, 8, 8)
    """

    def __init__(
        self,
        image_size,
        factor: int = 2,
        kernel: str | torch.Tensor = "gaussian",
        kernel_size: int = 9,
        sigma: float = 1.6,
        channels: int = 1,
        seed: int = 0,
    ):
        n = _check_image_size(image_size, type(self).__name__)
        if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
            raise InvalidValueError(f"SuperResolution: factor must be a positive integer; got {factor!r}")
        if n % factor:
            lo = n - n % factor
            raise ShapeError(
                f"SuperResolution: image_size {n} is not divisible by factor {factor}; "
                f"use an image size that is a multiple of {factor} (e.g. {lo} or "
                f"{lo + factor}), cropping or padding the images"
            )
        super().__init__(n, kernel=kernel, kernel_size=kernel_size, sigma=sigma, channels=channels, seed=seed)
        self.factor = factor
        self.m = n // factor

    def _forward(self, x, blocks):
        s = self.factor
        return self._conv(x, adjoint=False)[..., ::s, ::s]

    def _adjoint(self, y, blocks):
        s = self.factor
        up = y.new_zeros((*y.shape[:-2], self.n, self.n))
        up[..., ::s, ::s] = y
        return self._conv(up, adjoint=True)

    def measurement_shape(self, blocks=None):  # noqa: D102
        return (self.channels, self.m, self.m)

    def _alias_sum(self, u: torch.Tensor) -> torch.Tensor:
        """``sum_j u(k + j N/s)`` over the ``s x s`` aliases of every low-resolution frequency."""
        s, m = self.factor, self.m
        return u.reshape(*u.shape[:-2], s, m, s, m).sum(dim=(-4, -2))

    def prox_data(self, z: torch.Tensor, y: torch.Tensor, gamma) -> torch.Tensor:
        """``argmin_x 1/2 ||S(k * x) - y||^2 + 1/(2 gamma) ||x - z||^2``, exactly, by FFT.

        With ``B = F(gamma A^T y + z)`` and the aliasing sum ``P`` over the ``s^2`` frequencies
        that fold onto one low-resolution frequency (Woodbury identity, Zhao et al. 2016)::

            F x = B - gamma conj(H) . tile( P(H B) / (s^2 + gamma P(|H|^2)) )

        Args:
            z: images ``(B, C, N, N)``.
            y: measurements ``(B, C, N/s, N/s)``.
            gamma: positive step: a number or a tensor with one value per batch element.

        Example:
            >>> import torch
            >>> from deqir.physics.blur import SuperResolution
            >>> op = SuperResolution(16, factor=2)
            >>> x = torch.rand(1, 1, 16, 16, dtype=torch.float64)
            >>> z = op.prox_data(x, op.A(x), 10.0)
            >>> bool(torch.allclose(z, x))  # x already fits the data: the prox returns it
            True
        """
        self.check_image(z)
        self.check_measurement(y, None)
        g = _as_gamma(gamma, z)
        h = self._h(z, half=False)
        b = torch.fft.fft2(g * self._adjoint(y.to(z.dtype), None) + z)
        num = self._alias_sum(h * b)
        den = self.factor**2 + g * self._alias_sum(h.abs().pow(2))
        ratio = (num / den).repeat(*([1] * (z.dim() - 2)), self.factor, self.factor)
        return torch.fft.ifft2(b - g * h.conj() * ratio).real

    def extra_repr(self) -> str:  # noqa: D102
        return super().extra_repr() + f", factor={self.factor}"
