"""Synthetic phantoms: the Shepp–Logan head and seeded random-ellipse CT-like images.

Every phantom is a ``float32`` image in ``[0, 1]``. Random phantoms take a seed or a
``torch.Generator``, so the same seed always gives the same image, on any machine.

Example:
    >>> from deqir.data.phantoms import random_ellipses, shepp_logan
    >>> img = random_ellipses(64, generator=3)
    >>> img.shape, str(img.dtype), bool(img.min() >= 0 and img.max() <= 1)
    ((64, 64), 'float32', True)
    >>> bool((random_ellipses(64, generator=3) == img).all())
    True
    >>> shepp_logan(32).shape
    (32, 32)
"""

from __future__ import annotations

import math

import numpy as np
import torch

from deqir.errors import InvalidValueError

__all__ = ["shepp_logan", "random_ellipses", "ellipse_phantoms", "render_ellipses"]


def _as_generator(generator: torch.Generator | int | None) -> torch.Generator:
    if isinstance(generator, torch.Generator):
        return generator
    g = torch.Generator()
    g.manual_seed(0 if generator is None else int(generator))
    return g


def _check_size(size: int) -> int:
    if not isinstance(size, int | np.integer) or size < 4:
        raise InvalidValueError(f"phantom size must be an integer >= 4; got {size!r}")
    return int(size)


def render_ellipses(ellipses: torch.Tensor, size: int, supersample: int = 2) -> torch.Tensor:
    """Rasterise additive ellipses on ``[-1, 1]²`` into a ``(size, size)`` image (anti-aliased).

    Args:
        ellipses: ``(n, 6)`` rows of ``(value, a, b, x0, y0, angle_rad)``: each ellipse adds
            ``value`` inside ``((x'/a)² + (y'/b)² <= 1)``, with ``(x', y')`` the coordinates
            relative to the centre ``(x0, y0)`` rotated by ``-angle``; ``y`` points up.
        size: Output size in pixels.
        supersample: Each pixel averages ``supersample²`` sub-samples (smooth edges).

    Returns:
        ``float32`` tensor ``(size, size)``, not clipped.

    Example:
        >>> import torch
        >>> disk = render_ellipses(torch.tensor([[1.0, 0.5, 0.5, 0.0, 0.0, 0.0]]), 64)
        >>> round(float(disk.mean()), 2)  # area pi * 0.25 / 4
        0.2
    """
    size = _check_size(size)
    s = max(1, int(supersample))
    n = size * s
    # NumPy, not torch: small element-wise loops run single-threaded, free of thread-pool overhead
    coords = ((np.arange(n, dtype=np.float64) + 0.5) / n * 2 - 1).astype(np.float32)  # pixel centres
    img = np.zeros((n, n), dtype=np.float32)
    rows = ellipses.tolist() if isinstance(ellipses, torch.Tensor) else np.asarray(ellipses).tolist()
    for value, a, b, x0, y0, ang in rows:
        if a <= 0 or b <= 0:
            raise InvalidValueError(f"ellipse semi-axes must be positive; got a={a}, b={b}")
        c, si = math.cos(ang), math.sin(ang)
        # bounding box of the rotated ellipse: evaluate only the pixels inside it
        hx, hy = math.hypot(a * c, b * si), math.hypot(a * si, b * c)
        c0 = max(0, int(math.floor((x0 - hx + 1) / 2 * n)) - 1)
        c1 = min(n, int(math.ceil((x0 + hx + 1) / 2 * n)) + 1)
        r0 = max(0, int(math.floor((1 - (y0 + hy)) / 2 * n)) - 1)  # row 0 is the top (y = +1)
        r1 = min(n, int(math.ceil((1 - (y0 - hy)) / 2 * n)) + 1)
        if c0 >= c1 or r0 >= r1:
            continue
        dx = coords[c0:c1][None, :] - np.float32(x0)
        dy = -coords[r0:r1][:, None] - np.float32(y0)
        xr = dx * np.float32(c / a) + dy * np.float32(si / a)
        yr = dy * np.float32(c / b) - dx * np.float32(si / b)
        img[r0:r1, c0:c1] += np.float32(value) * (xr * xr + yr * yr <= 1.0)
    if s > 1:
        img = img.reshape(size, s, size, s).mean(axis=(1, 3), dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))


#: Modified Shepp–Logan head (Toft, 1996): rows of (value, a, b, x0, y0, angle in degrees).
SHEPP_LOGAN = (
    (1.0, 0.69, 0.92, 0.0, 0.0, 0.0),
    (-0.8, 0.6624, 0.874, 0.0, -0.0184, 0.0),
    (-0.2, 0.11, 0.31, 0.22, 0.0, -18.0),
    (-0.2, 0.16, 0.41, -0.22, 0.0, 18.0),
    (0.1, 0.21, 0.25, 0.0, 0.35, 0.0),
    (0.1, 0.046, 0.046, 0.0, 0.1, 0.0),
    (0.1, 0.046, 0.046, 0.0, -0.1, 0.0),
    (0.1, 0.046, 0.023, -0.08, -0.605, 0.0),
    (0.1, 0.023, 0.023, 0.0, -0.606, 0.0),
    (0.1, 0.023, 0.046, 0.06, -0.605, 0.0),
)


def shepp_logan(size: int = 256, supersample: int = 4) -> np.ndarray:
    """The modified (Toft) Shepp–Logan head phantom rendered at ``size``, in ``[0, 1]``.

    Rendered analytically from the ellipse table (:data:`SHEPP_LOGAN`), so any size is exact; it
    matches ``skimage.data.shepp_logan_phantom()`` (which is 400 × 400) without resampling.

    Example:
        >>> from deqir.data.phantoms import shepp_logan
        >>> img = shepp_logan(128)
        >>> img.shape, float(img.max())
        ((128, 128), 1.0)
    """
    size = _check_size(size)
    table = torch.tensor(SHEPP_LOGAN, dtype=torch.float64)
    table[:, 5] = torch.deg2rad(table[:, 5])
    return render_ellipses(table, size, supersample).clamp_(0.0, 1.0).numpy()


def random_ellipses(
    size: int = 256,
    generator: torch.Generator | int | None = None,
    num_ellipses: tuple[int, int] = (4, 12),
    supersample: int = 2,
) -> np.ndarray:
    """A random CT-like phantom: a body ellipse with a dense rim and inner ellipses, in ``[0, 1]``.

    The body (value 0.2–0.45, semi-axes 0.55–0.9 of the half-width, slightly rotated) carries a
    bone-like rim (value 0.9–1) of random thickness, and ``num_ellipses`` inner ellipses (sizes 0.03–0.3,
    contrasts ±0.05–0.35, some overlapping) lie inside it; the sum is clipped to ``[0, 1]``.

    Args:
        size: Image size in pixels.
        generator: A ``torch.Generator`` (advanced by the draws) or an integer seed.
        num_ellipses: Inclusive range of the number of inner ellipses.
        supersample: Anti-aliasing factor (see :func:`render_ellipses`).

    Returns:
        ``float32`` array ``(size, size)`` in ``[0, 1]``.

    Example:
        >>> from deqir.data.phantoms import random_ellipses
        >>> a = random_ellipses(32, generator=1)
        >>> b = random_ellipses(32, generator=2)
        >>> bool((a != b).any())
        True
    """
    size = _check_size(size)
    lo, hi = int(num_ellipses[0]), int(num_ellipses[1])
    if not 0 <= lo <= hi:
        raise InvalidValueError(f"num_ellipses must be (low, high) with 0 <= low <= high; got {num_ellipses}")
    g = _as_generator(generator)

    def u(a: float, b: float) -> float:
        return a + (b - a) * float(torch.rand((), generator=g, dtype=torch.float64))

    rows: list[list[float]] = []
    # body with a rim: outer ellipse of bone value, inner ellipse back down to soft tissue
    a_body, b_body = u(0.6, 0.9), u(0.55, 0.85)
    ang = u(-0.3, 0.3)
    x0, y0 = u(-0.05, 0.05), u(-0.05, 0.05)
    rim_value, tissue = u(0.85, 1.0), u(0.2, 0.45)
    thick = u(0.02, 0.06)
    rows.append([rim_value, a_body, b_body, x0, y0, ang])
    rows.append([tissue - rim_value, a_body - thick, b_body - thick, x0, y0, ang])
    count = int(torch.randint(lo, hi + 1, (), generator=g))
    for _ in range(count):
        a, b = u(0.03, 0.3), u(0.03, 0.3)
        # centre inside the inner body, far enough from the rim for most of the ellipse
        r, t = math.sqrt(u(0.0, 1.0)) * 0.75, u(0.0, 2 * math.pi)
        cx = x0 + r * (a_body - thick - 0.5 * max(a, b)) * math.cos(t)
        cy = y0 + r * (b_body - thick - 0.5 * max(a, b)) * math.sin(t)
        sign = 1.0 if u(0.0, 1.0) < 0.6 else -1.0
        rows.append([sign * u(0.05, 0.35), a, b, cx, cy, u(0.0, math.pi)])
    return np.clip(render_ellipses(torch.tensor(rows, dtype=torch.float64), size, supersample).numpy(), 0, 1)


def ellipse_phantoms(
    count: int, size: int = 256, seed: int = 0, num_ellipses: tuple[int, int] = (4, 12)
) -> torch.Tensor:
    """A batch ``(count, 1, size, size)`` of random-ellipse phantoms.

    Phantom ``i`` depends only on ``(seed, i)``, so the first phantoms of a larger batch equal those
    of a smaller one.

    Example:
        >>> from deqir.data.phantoms import ellipse_phantoms
        >>> batch = ellipse_phantoms(3, 32, seed=0)
        >>> batch.shape
        torch.Size([3, 1, 32, 32])
        >>> bool((ellipse_phantoms(2, 32, seed=0) == batch[:2]).all())
        True
    """
    if count < 0:
        raise InvalidValueError(f"count must be >= 0; got {count}")
    imgs = [random_ellipses(size, phantom_seed(seed, i), num_ellipses) for i in range(count)]
    if not imgs:
        return torch.zeros(0, 1, size, size)
    return torch.from_numpy(np.stack(imgs))[:, None]


def phantom_seed(seed: int, index: int) -> int:
    """The generator seed of phantom ``index`` in a series started from ``seed`` (well mixed)."""
    return int(np.random.SeedSequence([int(seed), int(index), 0x5EED]).generate_state(1, np.uint64)[0] >> 1)
