"""Synthetic 3-D samples for intensity diffraction tomography, and a reader for measured IDT stacks.

:func:`cell_sample` draws a thin 3-D sample (cells: random ellipsoids with a smooth interior, and
small beads) on ``S`` axial slices and returns the image layout of
:class:`deqir.physics.idt.IntensityDiffractionTomography`: ``(2S, N, N)`` with the real
permittivity contrast (phase) of the slices first and the imaginary part (absorption, weaker) after,
both in [0, 1]. :func:`cell_samples` stacks a seeded set of them. :func:`read_idt_stack` reads a
user's measured stack (``.npz``: intensity images and LED illumination NAs) and normalises it into
the background-subtracted intensities the linear model predicts.

Example:
    >>> x = cell_sample(32, num_slices=3, seed=0)
    >>> tuple(x.shape), bool(x.min() >= 0), bool(x.max() <= 1)
    ((6, 32, 32), True, True)
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

from deqir.errors import DataError, InvalidValueError, ShapeError

__all__ = ["cell_sample", "cell_samples", "idt_splits", "read_idt_stack"]


def _smooth(field: torch.Tensor, width: float) -> torch.Tensor:
    """Gaussian low-pass of the last two axes (FFT, periodic), ``width`` in pixels."""
    n = field.shape[-1]
    f = torch.fft.fftfreq(n, dtype=field.dtype)
    g = torch.exp(-2 * (math.pi * width) ** 2 * (f[:, None] ** 2 + f[None, :] ** 2))
    return torch.fft.ifft2(torch.fft.fft2(field) * g).real


def cell_sample(
    image_size: int,
    num_slices: int = 4,
    seed: int = 0,
    num_cells: tuple[int, int] = (4, 8),
    num_beads: tuple[int, int] = (2, 6),
    absorption: tuple[float, float] = (0.1, 0.3),
) -> torch.Tensor:
    """One synthetic sample ``(2S, N, N)`` in [0, 1] (float32).

    Cells are ellipsoids (random centre, axes, in-plane rotation, depth extent of one to all slices)
    whose phase is a smooth random texture times a smooth edge profile; beads are small spheres of
    uniform phase. Absorption is the phase times a per-object factor drawn from ``absorption``
    (weak), plus a faint smooth texture.

    Args:
        image_size: ``N``.
        num_slices: ``S``.
        seed: the draw.
        num_cells, num_beads: ranges (inclusive) of the object counts.
        absorption: range of the absorption-to-phase ratio of each object.

    Example:
        >>> torch.equal(cell_sample(16, 2, seed=3), cell_sample(16, 2, seed=3))
        True
    """
    n, s = int(image_size), int(num_slices)
    if n < 8 or s < 1:
        raise InvalidValueError(f"cell_sample needs image_size ≥ 8 and num_slices ≥ 1; got {n}, {s}")
    g = torch.Generator().manual_seed(int(seed))

    def uniform(lo, hi, size=()):
        return lo + (hi - lo) * torch.rand(size, generator=g, dtype=torch.float64)

    coords = (torch.arange(n, dtype=torch.float64) + 0.5) / n * 2 - 1
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    zz = (
        (torch.arange(s, dtype=torch.float64) + 0.5) / s * 2 - 1
        if s > 1
        else torch.zeros(1, dtype=torch.float64)
    )
    phase = torch.zeros(s, n, n, dtype=torch.float64)
    absorb = torch.zeros(s, n, n, dtype=torch.float64)
    count = int(torch.randint(num_cells[0], num_cells[1] + 1, (1,), generator=g))
    for _ in range(count):
        cx, cy, cz = uniform(-0.6, 0.6), uniform(-0.6, 0.6), uniform(-0.5, 0.5)
        ax, ay, az = uniform(0.2, 0.5), uniform(0.15, 0.35), uniform(0.4, 1.2)
        t = uniform(0, math.pi)
        xr = (xx - cx) * math.cos(t) + (yy - cy) * math.sin(t)
        yr = -(xx - cx) * math.sin(t) + (yy - cy) * math.cos(t)
        r2 = (xr / ax) ** 2 + (yr / ay) ** 2 + ((zz[:, None, None] - cz) / az) ** 2
        edge = torch.clamp(1 - r2, min=0) ** 0.5  # thickness-like profile, smooth inside
        texture = 0.6 + 0.4 * _smooth(torch.randn(n, n, generator=g, dtype=torch.float64), n / 16)
        obj = edge * texture.clamp(0.2, 1.5) * uniform(0.4, 1.0)
        phase += obj
        absorb += obj * uniform(*absorption)
    beads = int(torch.randint(num_beads[0], num_beads[1] + 1, (1,), generator=g))
    for _ in range(beads):
        cx, cy, cz, r = uniform(-0.8, 0.8), uniform(-0.8, 0.8), uniform(-0.8, 0.8), uniform(0.04, 0.08)
        d2 = ((xx - cx) ** 2 + (yy - cy) ** 2 + (zz[:, None, None] - cz) ** 2) / r**2
        bead = torch.sigmoid(8 * (1 - d2)) * uniform(0.5, 1.0)
        phase += bead
        absorb += bead * uniform(*absorption)
    absorb += 0.03 * (1 + _smooth(torch.randn(s, n, n, generator=g, dtype=torch.float64), n / 8))
    out = torch.cat([phase.clamp(0, 1), absorb.clamp(0, 1)])
    return out.to(torch.float32)


def cell_samples(count: int, image_size: int, num_slices: int = 4, seed: int = 0) -> torch.Tensor:
    """``count`` samples ``(count, 2S, N, N)``; sample ``k`` is ``cell_sample(..., seed=seed * 100003 + k)``.

    Example:
        >>> cell_samples(2, 16, 2).shape
        torch.Size([2, 4, 16, 16])
    """
    if int(count) == 0:
        return torch.zeros(0, 2 * int(num_slices), int(image_size), int(image_size))
    return torch.stack(
        [cell_sample(image_size, num_slices, seed=int(seed) * 100003 + k) for k in range(count)]
    )


def read_idt_stack(path: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor]:
    """A measured IDT stack as ``(y, led_positions)`` for the linear model.

    The file is an ``.npz`` with ``intensities`` ``(J, N, N)`` (raw camera images, one per LED) and
    ``led_na`` ``(J, 2)`` (illumination NAs ``sin θ_x, sin θ_y``), and optionally ``background``
    ``(J,)`` or ``(J, N, N)`` (the intensity without a sample; default: each image's mean). The
    model's measurement is the background-normalised contrast ``I / I₀ − 1``: ``y`` is
    ``(1, J, N, N)`` float32; build the operator with ``led_positions=led_positions``.

    Raises:
        DataError: missing file, missing keys, shapes that do not match, NaN or non-positive
            background.

    Example:
        >>> import tempfile, numpy as np
        >>> f = Path(tempfile.mkdtemp()) / "stack.npz"
        >>> np.savez(f, intensities=np.ones((3, 8, 8)), led_na=np.zeros((3, 2)))
        >>> y, leds = read_idt_stack(f)
        >>> tuple(y.shape), float(y.abs().max())
        ((1, 3, 8, 8), 0.0)
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"IDT stack {path} not found")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: np.asarray(data[k]) for k in data.files}
    except (OSError, ValueError) as err:
        raise DataError(f"{path} is not a readable .npz file ({err}); save it with numpy.savez") from err
    missing = [k for k in ("intensities", "led_na") if k not in arrays]
    if missing:
        raise DataError(f"{path} lacks {missing}; it needs 'intensities' (J, N, N) and 'led_na' (J, 2)")
    intensities = torch.from_numpy(arrays["intensities"].astype(np.float64))
    leds = torch.from_numpy(arrays["led_na"].astype(np.float64))
    if intensities.dim() != 3 or intensities.shape[1] != intensities.shape[2]:
        raise ShapeError(
            f"{path}: intensities must be (J, N, N) square images; got {tuple(intensities.shape)}"
        )
    if tuple(leds.shape) != (intensities.shape[0], 2):
        raise ShapeError(
            f"{path}: led_na must be (J, 2) = ({intensities.shape[0]}, 2), one row per image; "
            f"got {tuple(leds.shape)}"
        )
    if "background" in arrays:
        bg = torch.from_numpy(arrays["background"].astype(np.float64))
        bg = bg[:, None, None] if bg.dim() == 1 else bg
    else:
        bg = intensities.mean(dim=(1, 2), keepdim=True)
    if not bool(torch.isfinite(intensities).all()) or not bool(torch.isfinite(bg).all()):
        raise DataError(f"{path}: intensities or background contain NaN or infinite values")
    if bool((bg <= 0).any()):
        raise DataError(f"{path}: the background intensity must be positive")
    y = (intensities / bg - 1).to(torch.float32)[None]
    return y, leds


def idt_splits(
    image_size: int = 64,
    num_train: int = 64,
    num_val: int = 4,
    num_test: int = 8,
    seed: int = 0,
    num_slices: int = 4,
) -> dict[str, list[torch.Tensor]]:
    """Training source of synthetic IDT samples (``data.source: "deqir.data.idt_samples:idt_splits"``).

    Each split draws its own seeds, so no sample is shared between splits.

    Example:
        >>> s = idt_splits(16, num_train=2, num_val=1, num_test=1, num_slices=2)
        >>> {k: len(v) for k, v in s.items()}, tuple(s["train"][0].shape)
        ({'train': 2, 'val': 1, 'test': 1}, (4, 16, 16))
    """
    counts = {"train": num_train, "val": num_val, "test": num_test}
    return {
        split: list(cell_samples(counts[split], image_size, num_slices, seed=1000 * (int(seed) + 1) + k))
        for k, split in enumerate(("train", "val", "test"))
    }
