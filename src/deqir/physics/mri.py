"""Compressed-sensing MRI: single-coil and multi-coil (SENSE) Fourier sampling.

Conventions (fastMRI): centred, orthonormal 2-D FFT (:func:`deqir.physics.fft.fft2c`); masks and
k-space are centred (zero frequency at ``N // 2``); measurements are complex tensors on the
*full* k-space grid with the unmeasured entries zero, so ``y = M . F x`` (single coil) or
``y_c = M . F(S_c x)`` (coil ``c``).

Images are real by default (magnitude images, as in ELDER's brain and Gilton's knee
experiments); the adjoint is then ``Re(F^H M y)``, the adjoint over the real vector space of
images. Pass ``complex_image=True`` for complex images.

* :class:`SingleCoilMRI`: blocks are groups of sampled k-space lines (Cartesian masks) or of
  sampled points (radial and other masks); for unbiased stochastic gradients, *not* for speed:
  a minibatch still costs one full-size FFT pair.
* :class:`MultiCoilMRI`: blocks are coils; a subset of ``w`` coils costs ``w`` FFTs.
* :func:`coil_sensitivities`: simulated birdcage or Gaussian coil maps with
  ``sum_c |S_c|^2 = 1`` at every pixel.

Example:
    >>> import torch
    >>> from deqir.physics.mri import SingleCoilMRI
    >>> op = SingleCoilMRI(64, acceleration=4, mask_type="equispaced", seed=0)
    >>> y = op.A(torch.rand(1, 1, 64, 64))
    >>> y.dtype, tuple(y.shape), op.num_blocks
    (torch.complex64, (1, 1, 64, 64), 8)
"""

from __future__ import annotations

import math

import torch

from deqir.errors import DTypeError, InvalidValueError, ShapeError, unknown_name_message
from deqir.physics.base import LinearOperator
from deqir.physics.blur import _as_gamma, _check_image_size
from deqir.physics.fft import fft2c, flip_frequencies, ifft2c
from deqir.physics.masks import CARTESIAN_KINDS, cartesian_mask, radial_mask

MASK_TYPES = (*CARTESIAN_KINDS, "radial")
COIL_KINDS = ("birdcage", "gaussian")


# --------------------------------------------------------------------------- helpers
def _complex_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.complex128 if t.real.dtype == torch.float64 else torch.complex64


def _build_mask(
    n: int, mask, acceleration, mask_type, center_fraction, sampling_fraction, seed, owner: str
) -> torch.Tensor:
    """The ``(n, n)`` boolean mask given by the user or drawn from the named pattern."""
    if mask is not None:
        return _check_mask(mask, n, owner)
    if mask_type not in MASK_TYPES:
        raise InvalidValueError(unknown_name_message("mask type", mask_type, MASK_TYPES))
    if mask_type == "radial":
        if center_fraction is not None:
            raise InvalidValueError(
                f"{owner}: center_fraction applies to Cartesian masks; "
                "drop it for mask_type='radial' (set sampling_fraction instead)"
            )
        if sampling_fraction is None:
            try:
                sampling_fraction = 1.0 / float(acceleration)
            except (TypeError, ValueError, ZeroDivisionError):
                raise InvalidValueError(
                    f"{owner}: give sampling_fraction (e.g. 0.3) for a radial mask; got "
                    f"acceleration={acceleration!r}"
                ) from None
        return radial_mask((n, n), sampling_fraction, seed=seed)
    if sampling_fraction is not None:
        raise InvalidValueError(
            f"{owner}: sampling_fraction applies to radial masks; for "
            f"mask_type='{mask_type}' set acceleration instead"
        )
    return cartesian_mask((n, n), acceleration, center_fraction=center_fraction, kind=mask_type, seed=seed)


def _check_mask(mask, n: int, owner: str) -> torch.Tensor:
    if not isinstance(mask, torch.Tensor):
        raise DTypeError(
            f"{owner}: mask must be a torch.Tensor of shape ({n}, {n}); got {type(mask).__name__}"
        )
    if mask.is_complex():
        raise DTypeError(f"{owner}: mask must be boolean (or 0/1 real); got {mask.dtype}")
    m = mask.detach().to("cpu")
    while m.dim() > 2 and m.shape[0] == 1:
        m = m[0]
    if m.dim() == 1 and m.shape[0] == n:  # a column (phase-encode line) pattern
        m = m[None, :].expand(n, n)
    if m.dim() != 2 or tuple(m.shape) != (n, n):
        raise ShapeError(
            f"{owner}: mask must have shape ({n}, {n}) (square, like the image), or "
            f"({n},) for a column pattern; got {tuple(mask.shape)}"
        )
    if m.dtype != torch.bool:
        if not bool(((m == 0) | (m == 1)).all()):
            raise InvalidValueError(
                f"{owner}: mask must hold only 0 and 1 (or be boolean); use "
                "mask > 0.5 to binarise a soft mask"
            )
        m = m != 0
    if not bool(m.any()):
        raise InvalidValueError(f"{owner}: the mask samples no k-space point; pass a non-empty mask")
    return m.clone()


def _block_labels(mask: torch.Tensor, num_blocks: int, owner: str) -> tuple[torch.Tensor, int, str]:
    """Split the sampled points into ``num_blocks`` interleaved groups: ``(labels, b, unit)``.

    ``labels`` is ``-1`` where nothing is sampled. Cartesian masks are grouped by whole sampled
    columns (or rows), dealt round-robin from left to right; other masks by sampled points,
    ordered by distance to the centre, then angle, and dealt round-robin, so that every block
    spans all of k-space, low frequencies included. ``b`` is reduced to the number of sampled
    lines (points) when there are fewer.
    """
    if isinstance(num_blocks, bool) or not isinstance(num_blocks, int) or num_blocks < 1:
        raise InvalidValueError(f"{owner}: num_blocks must be a positive integer; got {num_blocks!r}")
    n = mask.shape[-1]
    labels = torch.full(mask.shape, -1, dtype=torch.long)
    cols, rows = mask.any(0), mask.any(1)
    if bool((mask == cols[None, :]).all()):
        idx = cols.nonzero().flatten()
        b = min(num_blocks, idx.numel())
        lab = torch.full((n,), -1, dtype=torch.long)
        lab[idx] = torch.arange(idx.numel()) % b
        return lab[None, :].expand_as(mask).clone(), b, "columns"
    if bool((mask == rows[:, None]).all()):
        idx = rows.nonzero().flatten()
        b = min(num_blocks, idx.numel())
        lab = torch.full((mask.shape[0],), -1, dtype=torch.long)
        lab[idx] = torch.arange(idx.numel()) % b
        return lab[:, None].expand_as(mask).clone(), b, "rows"
    pts = mask.nonzero()
    d = pts - torch.tensor([mask.shape[0] // 2, n // 2])
    radius2 = d.pow(2).sum(1)
    angle = torch.atan2(d[:, 0].double(), d[:, 1].double())
    order = torch.sort(angle, stable=True).indices
    order = order[torch.sort(radius2[order], stable=True).indices]
    b = min(num_blocks, pts.shape[0])
    labels[pts[order, 0], pts[order, 1]] = torch.arange(pts.shape[0]) % b
    return labels, b, "points"


# --------------------------------------------------------------------------- single coil
class SingleCoilMRI(LinearOperator):
    """Single-coil Cartesian or radial MRI: ``y = M . fft2c(x)`` on the full k-space grid.

    Args:
        image_size: side ``N`` of the square images (an int, or ``(N, N)``).
        mask: a boolean (or 0/1) ``(N, N)`` mask in centred k-space, or an ``(N,)`` column pattern;
            when given, ``acceleration``, ``mask_type`` and the fractions are not used.
        acceleration: Cartesian undersampling factor (also ``1 / sampling_fraction`` for a radial
            mask when ``sampling_fraction`` is not given).
        mask_type: ``"random"``, ``"equispaced"``, ``"gaussian"`` (Cartesian, see
            :func:`deqir.physics.masks.cartesian_mask`) or ``"radial"``.
        center_fraction: fully sampled centre of a Cartesian mask (default ``0.32 / acceleration``).
        sampling_fraction: fraction of k-space a radial mask samples.
        num_blocks: number of blocks ``b``: interleaved groups of the sampled columns (Cartesian)
            or of the sampled points (radial and other masks); reduced to the number of sampled
            lines when there are fewer (e.g. 4 lines at 16 x 16, 4x).
        complex_image: complex images instead of real ones.
        seed: seed of the mask.

    Images are ``(B, 1, N, N)`` (real, or complex with ``complex_image=True``); measurements
    ``(B, 1, N, N)`` complex, for every block subset (a restricted measurement keeps the grid and
    is zero outside the chosen blocks). Blocks give *unbiased stochastic gradients*, not speed:
    for a single coil, a minibatch of blocks still costs one full ``N x N`` FFT and inverse FFT.

    Buffers: ``mask`` (bool), ``labels`` (block of every k-space point, ``-1`` if unsampled) and
    ``mask_sym`` (``(M(k) + M(-k)) / 2``, which diagonalises the real-image normal operator).

    Example:
        >>> import torch
        >>> from deqir.physics.mri import SingleCoilMRI
        >>> op = SingleCoilMRI(32, mask_type="radial", sampling_fraction=0.3, num_blocks=4)
        >>> x = torch.rand(2, 1, 32, 32, dtype=torch.float64)
        >>> y = op.A(x)
        >>> z = op.prox_data(torch.zeros_like(x), y, gamma=1e8)  # ~ least-norm data fit
        >>> bool((op.A(z) - y).abs().max() < 1e-6)
        True
    """

    block_dim = None

    def __init__(
        self,
        image_size,
        mask: torch.Tensor | None = None,
        acceleration: float = 4,
        mask_type: str = "random",
        center_fraction: float | None = None,
        sampling_fraction: float | None = None,
        num_blocks: int = 8,
        complex_image: bool = False,
        seed: int = 0,
    ):
        super().__init__()
        owner = type(self).__name__
        n = _check_image_size(image_size, owner)
        self.n = n
        self.image_shape = (1, n, n)
        self.complex_image = bool(complex_image)
        m = _build_mask(n, mask, acceleration, mask_type, center_fraction, sampling_fraction, seed, owner)
        labels, self.num_blocks, self.block_unit = _block_labels(m, num_blocks, owner)
        self.register_buffer("mask", m)
        self.register_buffer("labels", labels)
        self.register_buffer("mask_sym", (m.double() + flip_frequencies(m).double()) / 2)

    @property
    def complex_measurements(self) -> bool:  # noqa: D102
        return True

    @property
    def sampling_fraction(self) -> float:
        """Fraction of k-space points sampled."""
        return float(self.mask.float().mean())

    def block_mask(self, blocks=None) -> torch.Tensor:
        """Boolean ``(N, N)`` mask of the k-space points in ``blocks`` (all sampled points for ``None``).

        Example:
            >>> from deqir.physics.mri import SingleCoilMRI
            >>> op = SingleCoilMRI(64, acceleration=4, num_blocks=8)
            >>> parts = [op.block_mask([i]) for i in range(8)]
            >>> bool(sum(p.long() for p in parts).eq(op.mask.long()).all())  # a partition
            True
        """
        b = self.as_blocks(blocks)
        if b is None:
            return self.mask
        return torch.isin(self.labels, b.to(self.labels.device))

    def _forward(self, x, blocks):
        m = self.block_mask(blocks)
        return fft2c(x) * m.to(x.device)

    def _adjoint(self, y, blocks):
        m = self.block_mask(blocks)
        x = ifft2c(y * m.to(y.device))
        return x if self.complex_image else x.real

    def measurement_shape(self, blocks=None):  # noqa: D102
        return (1, self.n, self.n)

    def restrict(self, y, blocks=None):  # noqa: D102
        b = self.as_blocks(blocks)
        if b is None:
            return y
        return y * self.block_mask(b).to(y.device)

    def zero_filled(self, y: torch.Tensor) -> torch.Tensor:
        """The zero-filled reconstruction ``A^H y = ifft2c(M y)`` (real part for real images).

        No density compensation: with the orthonormal FFT a fully sampled ``y`` gives back ``x``
        exactly, and since the k-space centre is always sampled the image's mean (DC) and
        coarse contrast keep their scale; only undersampled high frequencies lose energy.

        Example:
            >>> import torch
            >>> from deqir.physics.mri import SingleCoilMRI
            >>> op = SingleCoilMRI(16, mask=torch.ones(16, 16, dtype=torch.bool))
            >>> x = torch.rand(1, 1, 16, 16)
            >>> bool(torch.allclose(op.zero_filled(op.A(x)), x, atol=1e-6))
            True
        """
        return self.A_adjoint(y)

    def prox_data(self, z: torch.Tensor, y: torch.Tensor, gamma) -> torch.Tensor:
        """``argmin_x 1/2 ||M F x - y||^2 + 1/(2 gamma) ||x - z||^2``, exactly, by FFT.

        Complex images: ``F x = (gamma M y + F z) / (gamma M + 1)``. Real images: the minimum is
        over real ``x``, whose normal operator ``Re(F^H M F)`` is diagonalised by ``F`` with the
        *symmetrised* mask ``M_s(k) = (M(k) + M(-k)) / 2`` (a real image's spectrum is Hermitian),
        so ``F x = (gamma F Re(F^H M y) + F z) / (gamma M_s + 1)``.

        Args:
            z: images ``(B, 1, N, N)``.
            y: measurements ``(B, 1, N, N)``.
            gamma: positive step: a number or a tensor with one value per batch element.

        Example:
            >>> import torch
            >>> from deqir.physics.mri import SingleCoilMRI
            >>> op = SingleCoilMRI(32, acceleration=4)
            >>> x = torch.rand(1, 1, 32, 32, dtype=torch.float64)
            >>> z = torch.rand(1, 1, 32, 32, dtype=torch.float64)
            >>> p = op.prox_data(z, op.A(x), 2.0)
            >>> float((op.data_grad(p, op.A(x)) + (p - z) / 2.0).abs().max()) < 1e-12  # optimal
            True
        """
        self.check_image(z)
        self.check_measurement(y, None)
        g = _as_gamma(gamma, z)
        cdtype = _complex_dtype(z)
        y = y.to(cdtype)
        if self.complex_image:
            m = self.mask.to(device=z.device, dtype=z.real.dtype)
            return ifft2c((g * m * y + fft2c(z)) / (g * m + 1))
        ms = self.mask_sym.to(device=z.device, dtype=z.dtype)
        rhs = g * fft2c(self._adjoint(y, None)) + fft2c(z)
        return ifft2c(rhs / (g * ms + 1)).real

    def extra_repr(self) -> str:  # noqa: D102
        return (
            f"image_size={self.n}, sampling_fraction={self.sampling_fraction:.3f}, "
            f"num_blocks={self.num_blocks} ({self.block_unit}), complex_image={self.complex_image}"
        )


# --------------------------------------------------------------------------- coil maps
def coil_sensitivities(
    num_coils: int, image_size, kind: str = "birdcage", seed: int = 0, dtype: torch.dtype = torch.complex64
) -> torch.Tensor:
    """Simulated coil sensitivity maps ``(num_coils, N, N)``, with ``sum_c |S_c|^2 = 1`` everywhere.

    Pixel coordinates are scaled to ``[-1, 1)`` across the image.

    * ``"birdcage"``: coil ``c`` is a straight wire along the bore at angle ``2 pi c / C`` on a
      ring of radius 1.5; in complex notation its in-plane field is proportional to
      ``e^{i 2 pi c / C} / (p - p_c)`` (magnitude falling as one over the distance, phase turning
      around the wire). Deterministic (``seed`` unused).
    * ``"gaussian"``: coil centres on a ring of radius ~1 with seeded jitter, Gaussian magnitude
      of width ~0.7 around each centre, and a seeded smooth (linear) phase per coil.

    Both are then divided by their root-sum-of-squares.

    Args:
        num_coils: number of coils ``C >= 1``.
        image_size: side ``N`` of the square images.
        kind: ``"birdcage"`` or ``"gaussian"``.
        seed: seed of the ``"gaussian"`` maps.
        dtype: ``torch.complex64`` or ``torch.complex128``.

    Example:
        >>> import torch
        >>> from deqir.physics.mri import coil_sensitivities
        >>> s = coil_sensitivities(8, 64)
        >>> s.dtype, tuple(s.shape), bool(torch.allclose(s.abs().pow(2).sum(0), torch.ones(64, 64)))
        (torch.complex64, (8, 64, 64), True)
    """
    if kind not in COIL_KINDS:
        raise InvalidValueError(unknown_name_message("coil sensitivity kind", kind, COIL_KINDS))
    if isinstance(num_coils, bool) or not isinstance(num_coils, int) or num_coils < 1:
        raise InvalidValueError(f"num_coils must be a positive integer; got {num_coils!r}")
    if dtype not in (torch.complex64, torch.complex128):
        raise DTypeError(f"coil maps are complex: use dtype=torch.complex64 or torch.complex128; got {dtype}")
    n = _check_image_size(image_size, "coil_sensitivities")
    t = (torch.arange(n, dtype=torch.float64) - n // 2) / (n / 2)
    p = t[None, :] + 1j * (-t[:, None])  # x to the right, y up
    phi = 2 * math.pi * torch.arange(num_coils, dtype=torch.float64) / num_coils
    if kind == "birdcage":
        centres = 1.5 * torch.exp(1j * phi)
        maps = torch.exp(1j * phi)[:, None, None] / (p[None] - centres[:, None, None])
    else:
        gen = torch.Generator().manual_seed(int(seed))
        jitter = torch.rand(num_coils, 3, generator=gen, dtype=torch.float64) - 0.5
        angles = phi + jitter[:, 0] * (2 * math.pi / num_coils) * 0.5
        radius = 1.0 + 0.2 * jitter[:, 1]
        centres = radius * torch.exp(1j * angles)
        width = 0.7 * (1 + 0.3 * jitter[:, 2])
        dist2 = (p[None] - centres[:, None, None]).abs().pow(2)
        mag = torch.exp(-dist2 / (2 * width[:, None, None] ** 2))
        ph = torch.rand(num_coils, 3, generator=gen, dtype=torch.float64)
        phase = (
            2 * math.pi * ph[:, 0, None, None]
            + math.pi * (ph[:, 1, None, None] - 0.5) * p.real
            + math.pi * (ph[:, 2, None, None] - 0.5) * p.imag
        )
        maps = mag.clamp_min(1e-12) * torch.exp(1j * phase)
    rss = maps.abs().pow(2).sum(0, keepdim=True).sqrt()
    return (maps / rss).to(dtype)


# --------------------------------------------------------------------------- multi coil
class MultiCoilMRI(LinearOperator):
    """Multi-coil (SENSE) MRI: ``y_c = M . fft2c(S_c x)`` for every coil ``c``; blocks are coils.

    Args:
        image_size: side ``N`` of the square images.
        num_coils: number of simulated coils (ignored when ``sensitivities`` is given).
        mask: a boolean ``(N, N)`` mask (or ``(N,)`` column pattern) shared by all coils.
        acceleration, mask_type, center_fraction, sampling_fraction: the mask pattern, as in
            :class:`SingleCoilMRI`.
        coil_type: ``"birdcage"`` or ``"gaussian"`` simulated maps (:func:`coil_sensitivities`).
        sensitivities: ``(C, N, N)`` complex coil maps to use instead (kept as given, not
            renormalised).
        complex_image: complex images instead of real ones.
        seed: seed of the mask and of Gaussian coil maps.

    Images are ``(B, 1, N, N)``; measurements ``(B, C, N, N)`` complex, with ``block_dim = 1``:
    the blocks ``[i, j, ...]`` give measurements ``(B, w, N, N)`` of those coils, and cost ``w``
    FFTs instead of ``C``.

    Example:
        >>> import torch
        >>> from deqir.physics.mri import MultiCoilMRI
        >>> op = MultiCoilMRI(32, num_coils=4, acceleration=4)
        >>> x = torch.rand(1, 1, 32, 32)
        >>> tuple(op.A(x).shape), tuple(op.A(x, blocks=[1, 3]).shape)
        ((1, 4, 32, 32), (1, 2, 32, 32))
    """

    block_dim = 1

    def __init__(
        self,
        image_size,
        num_coils: int = 8,
        mask: torch.Tensor | None = None,
        acceleration: float = 4,
        mask_type: str = "random",
        center_fraction: float | None = None,
        coil_type: str = "birdcage",
        sensitivities: torch.Tensor | None = None,
        complex_image: bool = False,
        seed: int = 0,
        sampling_fraction: float | None = None,
    ):
        super().__init__()
        owner = type(self).__name__
        n = _check_image_size(image_size, owner)
        self.n = n
        self.image_shape = (1, n, n)
        self.complex_image = bool(complex_image)
        m = _build_mask(n, mask, acceleration, mask_type, center_fraction, sampling_fraction, seed, owner)
        if sensitivities is None:
            s = coil_sensitivities(num_coils, n, kind=coil_type, seed=seed)
        else:
            s = self._check_sensitivities(sensitivities, n, owner)
        self.num_blocks = int(s.shape[0])
        self.register_buffer("mask", m)
        self.register_buffer("sensitivities", s)

    @staticmethod
    def _check_sensitivities(s, n: int, owner: str) -> torch.Tensor:
        if not isinstance(s, torch.Tensor):
            raise DTypeError(
                f"{owner}: sensitivities must be a complex tensor (C, {n}, {n}); got {type(s).__name__}"
            )
        if not (s.is_complex() or s.is_floating_point()):
            raise DTypeError(
                f"{owner}: sensitivities must be complex (or real floating point); got {s.dtype}"
            )
        s = s.detach().to("cpu")
        if s.dim() == 4 and s.shape[0] == 1:
            s = s[0]
        if s.dim() == 2:
            s = s[None]
        if s.dim() != 3 or tuple(s.shape[1:]) != (n, n):
            raise ShapeError(
                f"{owner}: sensitivities must have shape (num_coils, {n}, {n}); got {tuple(s.shape)}"
            )
        if not bool(torch.isfinite(s).all()):
            raise InvalidValueError(f"{owner}: sensitivities contain NaN or infinite values")
        if not s.is_complex():
            s = s.to(torch.complex128 if s.dtype == torch.float64 else torch.complex64)
        return s.clone()

    @property
    def complex_measurements(self) -> bool:  # noqa: D102
        return True

    @property
    def num_coils(self) -> int:
        """Number of coils (= blocks)."""
        return self.num_blocks

    def _maps(self, like: torch.Tensor, blocks) -> torch.Tensor:
        s = self.sensitivities
        if blocks is not None:
            s = s.index_select(0, blocks.to(s.device))
        return s.to(device=like.device, dtype=_complex_dtype(like))

    def _forward(self, x, blocks):
        s = self._maps(x, blocks)
        return fft2c(x * s) * self.mask.to(x.device)  # (B, 1, N, N) * (w, N, N) -> (B, w, N, N)

    def _adjoint(self, y, blocks):
        s = self._maps(y, blocks)
        coils = ifft2c(y * self.mask.to(y.device))
        x = (coils * s.conj()).sum(1, keepdim=True)
        return x if self.complex_image else x.real

    def measurement_shape(self, blocks=None):  # noqa: D102
        b = self.as_blocks(blocks)
        return (self.num_blocks if b is None else b.numel(), self.n, self.n)

    def zero_filled(self, y: torch.Tensor) -> torch.Tensor:
        """Coil-combined zero-filled image ``A^H y = sum_c conj(S_c) ifft2c(M y_c)``.

        With maps normalised to ``sum_c |S_c|^2 = 1`` a fully sampled ``y`` gives back ``x``
        exactly (no density compensation, as in :meth:`SingleCoilMRI.zero_filled`).

        Example:
            >>> import torch
            >>> from deqir.physics.mri import MultiCoilMRI
            >>> op = MultiCoilMRI(16, num_coils=4, mask=torch.ones(16, 16, dtype=torch.bool))
            >>> x = torch.rand(1, 1, 16, 16)
            >>> bool(torch.allclose(op.zero_filled(op.A(x)), x, atol=1e-5))
            True
        """
        return self.A_adjoint(y)

    def prox_data(
        self, z: torch.Tensor, y: torch.Tensor, gamma, tol: float = 1e-6, max_iter: int = 100
    ) -> torch.Tensor:
        """``argmin_x 1/2 ||A x - y||^2 + 1/(2 gamma) ||x - z||^2`` by conjugate gradients.

        Solves ``(gamma A^H A + I) x = gamma A^H y + z`` from ``x = z``, per batch element, until
        the residual norm falls below ``tol`` times the right-hand side's (or ``max_iter``).
        Differentiable by autograd through the iterations.

        Example:
            >>> import torch
            >>> from deqir.physics.mri import MultiCoilMRI
            >>> op = MultiCoilMRI(16, num_coils=4)
            >>> x = torch.rand(1, 1, 16, 16, dtype=torch.float64)
            >>> p = op.prox_data(torch.zeros_like(x), op.A(x), 1.0, tol=1e-12)
            >>> float((op.data_grad(p, op.A(x)) + p / 1.0).abs().max()) < 1e-9
            True
        """
        self.check_image(z)
        self.check_measurement(y, None)
        g = _as_gamma(gamma, z)
        y = y.to(_complex_dtype(z))

        def normal(v):
            return g * self._adjoint(self._forward(v, None), None) + v

        from deqir.physics.linalg import conjugate_gradient

        rhs = g * self._adjoint(y, None) + z
        return conjugate_gradient(normal, rhs, z, tol=tol, max_iter=max_iter)

    def extra_repr(self) -> str:  # noqa: D102
        frac = float(self.mask.float().mean())
        return (
            f"image_size={self.n}, num_coils={self.num_blocks}, "
            f"sampling_fraction={frac:.3f}, complex_image={self.complex_image}"
        )
