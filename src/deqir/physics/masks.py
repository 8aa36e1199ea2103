"""Seeded k-space sampling masks in *centred* k-space (zero frequency at index ``N // 2``).

* :func:`cartesian_mask`: phase-encode column masks with a fully sampled centre, in fastMRI's
  conventions (``center_fraction`` of the columns around the centre always sampled; default 0.08
  at 4x and 0.04 at 8x, i.e. ``0.32 / acceleration``). Kinds: ``"random"`` (uniformly chosen outer
  columns), ``"equispaced"`` (outer columns on a regular grid, with a random offset, over the
  columns outside the centre block) and ``"gaussian"`` (outer columns
  drawn with a Gaussian variable density around the centre).
  Unlike fastMRI's ``RandomMaskFunc``, which keeps each outer column independently with a
  probability so that the acceleration holds only on average, every kind here samples *exactly*
  ``round(W / acceleration)`` columns in all, so every mask has the stated acceleration (up to
  rounding).
* :func:`radial_mask`: spokes through the centre at golden-angle increments (with a seeded random
  rotation), as many as reach the requested sampling fraction (ELDER uses 10-50 %).

Masks are boolean tensors of the requested shape; every draw comes from its own
``torch.Generator`` seeded by ``seed``, so masks are reproducible.

Example:
    >>> from deqir.physics.masks import cartesian_mask, radial_mask
    >>> m = cartesian_mask((320, 320), acceleration=4, seed=0)
    >>> int(m[0].sum()), bool(m[:, 150:170].all())  # 80 of 320 columns; the centre is sampled
    (80, True)
    >>> r = radial_mask((128, 128), 0.25, seed=0)
    >>> abs(float(r.float().mean()) - 0.25) < 0.01
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from deqir.errors import InvalidValueError, ShapeError, unknown_name_message

CARTESIAN_KINDS = ("random", "equispaced", "gaussian")
GOLDEN_ANGLE = math.pi * (math.sqrt(5) - 1) / 2  # about 111.25 degrees, for spokes over [0, pi)


def default_center_fraction(acceleration: float) -> float:
    """fastMRI's centre fraction: ``0.32 / acceleration`` (0.08 at 4x, 0.04 at 8x).

    Example:
        >>> from deqir.physics.masks import default_center_fraction
        >>> default_center_fraction(4), default_center_fraction(8)
        (0.08, 0.04)
    """
    return 0.32 / float(acceleration)


def _check_shape(shape: int | Sequence[int]) -> tuple[int, ...]:
    if isinstance(shape, int) and not isinstance(shape, bool):
        shape = (shape, shape)
    try:
        shape = tuple(int(s) for s in shape)
    except TypeError:
        raise ShapeError(f"mask shape must be an int N or a tuple like (N, N); got {shape!r}") from None
    if len(shape) < 2 or any(s < 1 for s in shape):
        raise ShapeError(f"mask shape must have at least two positive sizes (rows, columns); got {shape}")
    return shape


def _centre_columns(num_cols: int, num_low: int) -> slice:
    """fastMRI's placement of the ``num_low`` centre columns (symmetric about ``num_cols // 2``)."""
    pad = (num_cols - num_low + 1) // 2
    return slice(pad, pad + num_low)


def cartesian_mask(
    shape: int | Sequence[int],
    acceleration: float,
    center_fraction: float | None = None,
    kind: str = "random",
    seed: int = 0,
) -> torch.Tensor:
    """A column (phase-encode line) mask with a fully sampled centre, in centred k-space.

    Args:
        shape: mask shape, an int ``N`` for ``(N, N)`` or a tuple whose last axis indexes the
            columns (phase-encode lines); the column pattern is broadcast over the other axes.
        acceleration: undersampling factor ``R >= 1``: ``round(W / R)`` columns are sampled
            exactly.
        center_fraction: fraction of the columns around the centre that are always sampled;
            default ``0.32 / R`` (fastMRI: 0.08 at 4x, 0.04 at 8x). At least one column.
        kind: ``"random"``, ``"equispaced"`` or ``"gaussian"`` (see the module docstring).
        seed: seed of the mask's random draws.

    Raises:
        InvalidValueError: unknown ``kind``, ``acceleration < 1`` or larger than the number of
            columns, ``center_fraction`` outside ``(0, 1]`` or too large for ``acceleration``.

    Example:
        >>> from deqir.physics.masks import cartesian_mask
        >>> m = cartesian_mask((64, 64), 8, kind="equispaced", seed=1)
        >>> m.dtype, tuple(m.shape), int(m[0].sum())
        (torch.bool, (64, 64), 8)
    """
    if kind not in CARTESIAN_KINDS:
        raise InvalidValueError(unknown_name_message("Cartesian mask kind", kind, CARTESIAN_KINDS))
    shape = _check_shape(shape)
    num_cols = shape[-1]
    try:
        acc = float(acceleration)
    except (TypeError, ValueError):
        raise InvalidValueError(
            f"acceleration must be a number >= 1 (e.g. 4 or 8); got {acceleration!r}"
        ) from None
    if not (math.isfinite(acc) and acc >= 1):
        raise InvalidValueError(f"acceleration must be a number >= 1 (e.g. 4 or 8); got {acceleration!r}")
    target = round(num_cols / acc)
    if target < 1:
        raise InvalidValueError(
            f"acceleration {acc:g} samples no column of {num_cols}; use an acceleration of at most {num_cols}"
        )
    cf = default_center_fraction(acc) if center_fraction is None else center_fraction
    try:
        cf = float(cf)
    except (TypeError, ValueError):
        raise InvalidValueError(
            f"center_fraction must be a number in (0, 1]; got {center_fraction!r}"
        ) from None
    if not (0 < cf <= 1):
        raise InvalidValueError(
            f"center_fraction must lie in (0, 1] (e.g. 0.08 at 4x); got {center_fraction!r}"
        )
    num_low = max(1, round(num_cols * cf))
    if num_low > target:
        raise InvalidValueError(
            f"center_fraction {cf:g} keeps {num_low} centre columns, more than the {target} that "
            f"acceleration {acc:g} allows for {num_cols} columns; lower center_fraction to at most "
            f"{1 / acc:.4g} (or lower the acceleration)"
        )

    gen = torch.Generator().manual_seed(int(seed))
    cols = torch.zeros(num_cols, dtype=torch.bool)
    cols[_centre_columns(num_cols, num_low)] = True
    outer = (~cols).nonzero().flatten()
    need = target - num_low
    if need > 0 and kind == "random":
        cols[outer[torch.randperm(outer.numel(), generator=gen)[:need]]] = True
    elif need > 0 and kind == "gaussian":
        dist = (outer - num_cols // 2).double()
        weights = torch.exp(-0.5 * (dist / (num_cols / 4)) ** 2)
        cols[outer[torch.multinomial(weights, need, replacement=False, generator=gen)]] = True
    elif need > 0:  # equispaced: a regular grid over the outer columns, random offset
        spacing = outer.numel() / need  # >= 1, so the picks are distinct
        offset = float(torch.rand(1, generator=gen, dtype=torch.float64)) * spacing
        pos = (offset + spacing * torch.arange(need, dtype=torch.float64)).floor().long()
        cols[outer[pos.clamp(max=outer.numel() - 1)]] = True
    return cols.expand(shape).clone()


def radial_spokes(shape: int | Sequence[int], num_spokes: int, seed: int = 0) -> torch.Tensor:
    """For every k-space pixel, the index of the first of ``num_spokes`` spokes that hits it.

    Spoke ``j`` passes through the centre ``(N // 2, N // 2)`` at angle
    ``theta_0 + j * golden_angle`` (mod pi), with ``theta_0`` drawn from ``seed``, and spans the
    whole grid (corners included). Pixels no spoke hits get ``-1``; ``labels >= 0`` is the mask,
    and ``labels < n`` is the mask of the first ``n`` spokes.

    Example:
        >>> from deqir.physics.masks import radial_spokes
        >>> lab = radial_spokes((32, 32), 10)
        >>> int(lab[16, 16]), int(lab.max())  # the centre is on spoke 0; all ten spokes used
        (0, 9)
    """
    shape = _check_shape(shape)
    if len(shape) != 2:
        raise ShapeError(f"radial masks are 2-D; got shape {shape}")
    h, w = shape
    gen = torch.Generator().manual_seed(int(seed))
    theta0 = float(torch.rand(1, generator=gen, dtype=torch.float64)) * math.pi
    theta = theta0 + GOLDEN_ANGLE * torch.arange(num_spokes, dtype=torch.float64)
    radius = math.hypot(h, w) / 2 + 1
    t = torch.arange(-radius, radius + 0.25, 0.25, dtype=torch.float64)
    rows = torch.round(h // 2 - t[None, :] * torch.sin(theta)[:, None]).long()
    cols = torch.round(w // 2 + t[None, :] * torch.cos(theta)[:, None]).long()
    spoke = torch.arange(num_spokes)[:, None].expand_as(rows)
    keep = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
    flat = (rows * w + cols)[keep]
    labels = torch.full((h * w,), num_spokes, dtype=torch.long)
    labels.scatter_reduce_(0, flat, spoke[keep], reduce="amin")
    labels[labels == num_spokes] = -1
    return labels.reshape(h, w)


def radial_mask(shape: int | Sequence[int], sampling_fraction: float, seed: int = 0) -> torch.Tensor:
    """A radial (spoke) mask in centred k-space sampling about ``sampling_fraction`` of the grid.

    Spokes at golden-angle increments are added until the sampled fraction reaches the target;
    the count (``n`` or ``n - 1`` spokes) closest to the target is kept, so the error is at most
    half of one spoke's new pixels (under 0.5 % of a 256 x 256 grid).

    Args:
        shape: ``N`` or ``(H, W)``.
        sampling_fraction: target fraction of sampled pixels in ``(0, 1)`` (ELDER: 0.1 to 0.5).
        seed: seed of the random rotation of the spoke pattern.

    Raises:
        InvalidValueError: ``sampling_fraction`` outside ``(0, 1)`` or beyond what spokes reach.

    Example:
        >>> from deqir.physics.masks import radial_mask
        >>> m = radial_mask(256, 0.1, seed=3)
        >>> round(float(m.float().mean()), 2), bool(m[128, 128])
        (0.1, True)
    """
    shape = _check_shape(shape)
    if len(shape) != 2:
        raise ShapeError(f"radial masks are 2-D; got shape {shape}")
    try:
        frac = float(sampling_fraction)
    except (TypeError, ValueError):
        raise InvalidValueError(
            f"sampling_fraction must be a number in (0, 1) (e.g. 0.3); got {sampling_fraction!r}"
        ) from None
    if not (0 < frac < 1):
        raise InvalidValueError(
            f"sampling_fraction must lie strictly between 0 and 1 (e.g. 0.3 for 30 %); "
            f"got {sampling_fraction!r}"
        )
    h, w = shape
    total = h * w
    target = frac * total
    max_spokes = 4 * max(h, w)
    spokes = min(max_spokes, max(16, math.ceil(2 * frac * max(h, w))))
    while True:  # the spoke sequence is nested: more spokes only add pixels
        labels = radial_spokes(shape, spokes, seed)
        first = labels[labels >= 0]
        counts = torch.cumsum(torch.bincount(first, minlength=spokes), 0)  # pixels of spokes 0..n
        if int(counts[-1]) >= target or spokes >= max_spokes:
            break
        spokes = min(2 * spokes, max_spokes)
    reach = int(counts[-1])
    if reach < target:
        raise InvalidValueError(
            f"radial spokes reach at most {reach / total:.3f} of a {h} x {w} grid; ask for a "
            f"sampling_fraction below that (got {frac:g}) or use a Cartesian mask"
        )
    n = int(torch.searchsorted(counts, torch.tensor(math.ceil(target))))  # first n: counts[n] >= target
    if n > 0 and target - float(counts[n - 1]) < float(counts[n]) - target:
        n -= 1
    return (labels >= 0) & (labels <= n)
