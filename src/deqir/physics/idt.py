"""Intensity diffraction tomography (IDT): a linear multi-slice model under the first Born approximation.

Following Ling, Tian et al. ("High-throughput intensity diffraction tomography with a computational
microscope", Biomed. Opt. Express 9, 2130, 2018): a thin 3-D sample is described on ``S`` axial
slices at depths ``z_m`` by its permittivity contrast ``Δε = Δε_re + i Δε_im``. Under LED ``j``, a
plane wave with transverse spatial frequency ``ρ_j = (sin θ_x, sin θ_y)/λ`` (a bright-field LED,
``|ρ_j| < NA/λ``), the background-subtracted intensity image is linear in ``Δε``::

    Î_j(u) = Σ_m  H^re_{j,m}(u) Δε̂_re,m(u) + H^im_{j,m}(u) Δε̂_im,m(u)

with, for a slice of thickness ``Δz`` and the scattered field propagated by the Born Green's function
(``η(u) = sqrt((n/λ)² − |u|²)`` the axial frequency, ``k0 = 2π/λ``, ``P`` the objective's pupil
``|u| ≤ NA/λ``, ``P(ρ_j) = 1`` for a bright-field LED)::

    a_{j,m}(u) = P(ρ_j + u) · exp(i 2π z_m (η(ρ_j + u) − η(ρ_j))) / (4π η(ρ_j + u))
    H^re_{j,m}(u) = i k0² Δz · (a_{j,m}(u) − conj(a_{j,m}(−u)))
    H^im_{j,m}(u) =  −k0² Δz · (a_{j,m}(u) + conj(a_{j,m}(−u)))

(the defocus phase of each slice is the exponential; the two terms are the interference of the
scattered field with the unscattered illumination at ``+u`` and its conjugate twin at ``−u``, so
each ``H(−u) = conj(H(u))`` and the intensities are real). Each LED is a block: the forward and
adjoint of ``w`` LEDs cost ``w`` inverse FFTs and ``w·2S`` spectral products.

Images are real ``(B, 2S, N, N)``: channels ``0..S−1`` are ``Δε_re`` of the slices and ``S..2S−1``
``Δε_im``, each in units of ``contrast`` (default 0.02: an image value of 1 is ``Δε = 0.02``, so
samples live in [0, 1] like every other image here). Measurements are ``(B, J, N, N)`` real
(``block_dim = 1``). The FFTs are orthonormal, so the adjoint
``x = Re F⁻¹ Hᴴ F y`` is exact.

Example:
    >>> import torch
    >>> op = IntensityDiffractionTomography(32, num_slices=2, led_rings=((0.2, 6),))
    >>> x = torch.rand(1, 4, 32, 32)
    >>> tuple(op.A(x).shape), tuple(op.A(x, blocks=[0, 3]).shape), op.num_blocks
    ((1, 6, 32, 32), (1, 2, 32, 32), 6)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from deqir.errors import InvalidValueError, ShapeError
from deqir.physics.base import LinearOperator

__all__ = ["IntensityDiffractionTomography", "led_ring_positions"]

DEFAULT_RINGS = ((0.12, 12), (0.24, 24), (0.36, 36))  # (illumination NA, LEDs): 72 bright-field LEDs


def led_ring_positions(rings: Sequence[tuple[float, int]]) -> torch.Tensor:
    """``(J, 2)`` illumination NAs ``(sin θ_x, sin θ_y)`` of LEDs on concentric rings.

    Args:
        rings: ``(illumination NA, number of LEDs)`` per ring; each ring starts at a rotated angle
            so that rings do not line up.

    Example:
        >>> led_ring_positions([(0.2, 4)]).shape
        torch.Size([4, 2])
    """
    out = []
    for r, (na, count) in enumerate(rings):
        if not (0 <= float(na) < 1) or int(count) < 1:
            raise InvalidValueError(f"LED ring {r}: need 0 ≤ NA < 1 and ≥ 1 LED; got ({na}, {count})")
        phase = math.pi * r / (len(rings) + 1)
        for k in range(int(count)):
            t = phase + 2 * math.pi * k / int(count)
            out.append((float(na) * math.cos(t), float(na) * math.sin(t)))
    return torch.tensor(out, dtype=torch.float64)


class IntensityDiffractionTomography(LinearOperator):
    """The linear IDT model of the module docstring; LEDs are the blocks.

    Args:
        image_size: ``N``, pixels per side of each slice.
        wavelength: illumination wavelength in μm.
        na: numerical aperture of the objective.
        pixel_size: pixel size at the sample plane in μm (Nyquist needs ``pixel_size < λ/(4 NA)``
            for the intensity spectrum, which reaches ``2 NA/λ``).
        medium_index: refractive index of the medium around the sample.
        num_slices: ``S``.
        slice_spacing: ``Δz`` in μm (also each slice's thickness); slices are centred on the focus.
        led_positions: ``(J, 2)`` illumination NAs ``(sin θ_x, sin θ_y)``; default: rings.
        led_rings: ``(NA, count)`` rings used when ``led_positions`` is not given (default: 12, 24 and
            36 LEDs at NA 0.12, 0.24, 0.36: 72 LEDs).
        contrast: permittivity contrast of an image value of 1.

    Raises:
        InvalidValueError: a non-physical setting (dark-field LED, undersampled spectrum...).

    Example:
        >>> op = IntensityDiffractionTomography(16, num_slices=1, led_rings=((0.2, 4),))
        >>> op.adjointness_error(dtype=torch.float64) < 1e-10
        True
    """

    block_dim = 1

    def __init__(
        self,
        image_size: int,
        wavelength: float = 0.52,
        na: float = 0.4,
        pixel_size: float = 0.3,
        medium_index: float = 1.33,
        num_slices: int = 4,
        slice_spacing: float = 2.0,
        led_positions: torch.Tensor | Sequence[Sequence[float]] | None = None,
        led_rings: Sequence[tuple[float, int]] | None = None,
        contrast: float = 0.02,
    ) -> None:
        super().__init__()
        n, s = int(image_size), int(num_slices)
        if n < 4:
            raise InvalidValueError(f"IDT image_size must be ≥ 4; got {image_size}")
        if s < 1:
            raise InvalidValueError(f"num_slices must be ≥ 1; got {num_slices}")
        for name, val in (("wavelength", wavelength), ("pixel_size", pixel_size), ("contrast", contrast)):
            if not float(val) > 0:
                raise InvalidValueError(f"IDT {name} must be > 0; got {val}")
        if not (0 < float(na) < float(medium_index)):
            raise InvalidValueError(f"need 0 < na < medium_index; got na={na}, medium_index={medium_index}")
        if float(pixel_size) >= float(wavelength) / (4 * float(na)):
            raise InvalidValueError(
                f"pixel_size {pixel_size} μm undersamples the intensity spectrum (up to 2 NA/λ): use "
                f"pixel_size < λ/(4 NA) = {float(wavelength) / (4 * float(na)):.3f} μm"
            )
        leds = led_ring_positions(led_rings or DEFAULT_RINGS) if led_positions is None else led_positions
        leds = torch.as_tensor(leds, dtype=torch.float64)
        if leds.dim() != 2 or leds.shape[1] != 2 or leds.shape[0] < 1:
            raise ShapeError(f"led_positions must have shape (J, 2); got {tuple(leds.shape)}")
        if bool((leds.norm(dim=1) >= float(na)).any()):
            raise InvalidValueError(
                f"every LED must be bright-field (illumination NA < objective NA {na}): the first Born "
                "model here has no dark-field term; move the LEDs inside the objective's NA"
            )
        self.n, self.num_slices = n, s
        self.image_shape = (2 * s, n, n)
        self.num_blocks = int(leds.shape[0])
        self.wavelength, self.na, self.pixel_size = float(wavelength), float(na), float(pixel_size)
        self.medium_index, self.slice_spacing, self.contrast = (
            float(medium_index),
            float(slice_spacing),
            float(contrast),
        )
        self.register_buffer("led_positions", leds.clone())
        # stored LED-major, (J, N², 2S): a minibatch of LEDs is a copy of w contiguous chunks, and
        # forward and adjoint are one batched matrix product over the N² frequencies
        H = self._transfer_functions(leds).permute(0, 2, 3, 1).reshape(-1, n * n, 2 * s).contiguous()
        self.register_buffer("spectral", H.to(torch.complex64))  # float32 images
        # the full operator's two frequency-major layouts, contiguous for the batched products
        full = H.permute(1, 2, 0).to(torch.complex64)  # (N², 2S, J)
        self.register_buffer("_full_forward", full.contiguous(), persistent=False)
        self.register_buffer("_full_adjoint", full.conj().transpose(1, 2).contiguous(), persistent=False)
        self.register_buffer("spectral_double", H, persistent=False)  # float64 images (exact tests)
        # AᵀA per frequency, M(u) = Σ_j H_j(u)ᴴ H_j(u), (N², 2S, 2S): the system of prox_data
        self.register_buffer("gram", torch.einsum("jum,juk->umk", H.conj(), H), persistent=False)

    # ------------------------------------------------------------------ physics
    def slice_depths(self) -> torch.Tensor:
        """``z_m`` in μm, centred on the focal plane."""
        s = self.num_slices
        return (torch.arange(s, dtype=torch.float64) - (s - 1) / 2) * self.slice_spacing

    def _transfer_functions(self, leds: torch.Tensor) -> torch.Tensor:
        lam, n_med = self.wavelength, self.medium_index
        f = torch.fft.fftfreq(self.n, d=self.pixel_size, dtype=torch.float64)
        fy, fx = torch.meshgrid(f, f, indexing="ij")
        k0 = 2 * math.pi / lam
        dz = self.slice_spacing
        z = self.slice_depths()
        rho = leds / lam  # (J, 2) spatial frequencies (x, y)

        def eta(ux, uy):
            return torch.sqrt(((n_med / lam) ** 2 - ux**2 - uy**2).clamp_min(1e-12))

        H = torch.zeros(self.num_blocks, 2 * self.num_slices, self.n, self.n, dtype=torch.complex128)
        for j in range(self.num_blocks):
            rx, ry = float(rho[j, 0]), float(rho[j, 1])
            eta0 = eta(torch.tensor(rx), torch.tensor(ry))
            for sign, store in ((1.0, "plus"), (-1.0, "minus")):
                ux, uy = rx + sign * fx, ry + sign * fy
                pupil = ((ux**2 + uy**2) <= (self.na / lam) ** 2).to(torch.float64)
                e = eta(ux, uy)
                # a(±u) for every slice: (S, N, N)
                a = pupil * torch.exp(1j * 2 * math.pi * z[:, None, None] * (e - eta0)) / (4 * math.pi * e)
                if store == "plus":
                    a_plus = a
                else:
                    a_minus_conj = a.conj()
            H[j, : self.num_slices] = 1j * k0**2 * dz * (a_plus - a_minus_conj)
            H[j, self.num_slices :] = -(k0**2) * dz * (a_plus + a_minus_conj)
        return H * self.contrast

    # ------------------------------------------------------------------ operator
    def transfer_functions(self, double: bool = True) -> torch.Tensor:
        """``(J, 2S, N, N)``: ``H^re`` of the slices then ``H^im``, per LED, on the FFT grid (a view)."""
        H = self.spectral_double if double else self.spectral
        return H.reshape(-1, self.n, self.n, 2 * self.num_slices).permute(0, 3, 1, 2)

    def _spectral(self, like: torch.Tensor, blocks) -> torch.Tensor:
        double = like.dtype in (torch.float64, torch.complex128)
        H = (self.spectral_double if double else self.spectral).to(like.device)
        return H if blocks is None else H.index_select(0, blocks.to(H.device))

    def _forward(self, x, blocks):
        b, m, n = x.shape[0], x.shape[1], self.n
        X = torch.fft.fft2(x, norm="ortho").permute(2, 3, 0, 1).reshape(n * n, b, m)
        if blocks is None and X.dtype == torch.complex64:
            H = self._full_forward.to(x.device)
        else:
            H = self._spectral(x, blocks).permute(1, 2, 0)  # (N², 2S, w)
        Y = torch.bmm(X, H).reshape(n, n, b, -1).permute(2, 3, 0, 1)  # (B, w, N, N)
        return torch.fft.ifft2(Y, norm="ortho").real

    def _adjoint(self, y, blocks):
        b, w, n = y.shape[0], y.shape[1], self.n
        Y = torch.fft.fft2(y, norm="ortho").permute(2, 3, 0, 1).reshape(n * n, b, w)
        if blocks is None and Y.dtype == torch.complex64:
            Hh = self._full_adjoint.to(y.device)  # (N², J, 2S), conjugated
        else:
            Hh = self._spectral(y, blocks).conj().permute(1, 0, 2)  # (N², w, 2S)
        X = torch.bmm(Y, Hh).reshape(n, n, b, -1).permute(2, 3, 0, 1)
        return torch.fft.ifft2(X, norm="ortho").real

    def prox_data(self, z: torch.Tensor, y: torch.Tensor, gamma) -> torch.Tensor:
        """``argmin_x ½‖A x − y‖² + 1/(2γ)‖x − z‖²``, exactly: one ``2S × 2S`` solve per frequency.

        ``AᵀA = F⁻¹ M F`` with ``M(u) = Σ_j H_j(u)ᴴ H_j(u)`` (the slices and parts couple, the
        frequencies do not), so ``F x = (I + γ M(u))⁻¹ (F z + γ Σ_j H_j(u)ᴴ F y_j)``.

        Args:
            z: images ``(B, 2S, N, N)``.
            y: measurements ``(B, J, N, N)``.
            gamma: positive step: a number or one value per batch element.

        Example:
            >>> import torch
            >>> op = IntensityDiffractionTomography(16, num_slices=1, led_rings=((0.2, 4),))
            >>> x = torch.rand(1, 2, 16, 16, dtype=torch.float64)
            >>> z = op.prox_data(x, op.A(x), 1e8)   # a huge γ: (close to) a solution of A x = y
            >>> bool((op.A(z) - op.A(x)).abs().max() < 1e-6)
            True
        """
        from deqir.physics.blur import _as_gamma

        self.check_image(z)
        self.check_measurement(y, None)
        g = _as_gamma(gamma, z)
        Z = torch.fft.fft2(z, norm="ortho")
        rhs = Z + g * torch.fft.fft2(self._adjoint(y.to(z.dtype), None), norm="ortho")  # F(z + γAᵀy)
        n, m = self.n, 2 * self.num_slices
        M = self.gram.to(device=z.device, dtype=Z.dtype).reshape(n, n, m, m)
        eye = torch.eye(m, dtype=M.dtype, device=M.device)
        g_b = g.reshape(-1, 1, 1, 1, 1) if isinstance(g, torch.Tensor) and g.dim() > 0 else g
        system = eye + g_b * M  # (N, N, 2S, 2S) or (B, N, N, 2S, 2S)
        b = rhs.permute(0, 2, 3, 1).unsqueeze(-1)  # (B, N, N, 2S, 1)
        X = torch.linalg.solve(system, b).squeeze(-1).permute(0, 3, 1, 2)
        return torch.fft.ifft2(X, norm="ortho").real

    def measurement_shape(self, blocks=None):  # noqa: D102
        b = self.as_blocks(blocks)
        return (self.num_blocks if b is None else b.numel(), self.n, self.n)

    def extra_repr(self) -> str:  # noqa: D102
        return (
            f"n={self.n}, slices={self.num_slices}, leds={self.num_blocks}, λ={self.wavelength} μm, "
            f"NA={self.na}, pixel={self.pixel_size} μm, Δz={self.slice_spacing} μm"
        )
