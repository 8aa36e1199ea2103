"""PNG figures of image panels, written atomically (used by the demo and ``deqir reconstruct``).

Example:
    >>> import numpy as np, tempfile, os
    >>> from deqir.figures import Panel, panel_grid
    >>> path = os.path.join(tempfile.mkdtemp(), "fig.png")
    >>> panel_grid(path, [[Panel(np.zeros((8, 8)), "zeros")]]).name
    'fig.png'
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch


@dataclass
class Panel:
    """One image of a figure: the array, a title, a colour map and optional display limits."""

    image: np.ndarray
    title: str = ""
    cmap: str = "gray"
    limits: tuple[float, float] | None = None


def as_picture(t: torch.Tensor) -> np.ndarray:
    """A 2-D array to show: first batch element and channel (or coil); log-magnitude if complex.

    Example:
        >>> import torch
        >>> as_picture(torch.ones(2, 3, 4, 5)).shape
        (4, 5)
    """
    a = t.detach().cpu()
    if a.is_complex():
        a = torch.log1p(a.abs() * 50.0)
    while a.dim() > 2:
        a = a[0]
    return a.float().numpy()


def panel_grid(path: str | Path, rows: Sequence[Sequence[Panel]], dpi: int = 80) -> Path:
    """Draw rows of panels into one PNG (temporary file, then rename); returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cols = max(len(r) for r in rows)
    fig, axes = plt.subplots(len(rows), cols, figsize=(2.75 * cols, 2.8 * len(rows)), squeeze=False)
    for ax_row, row in zip(axes, rows, strict=True):
        for j, ax in enumerate(ax_row):
            ax.axis("off")
            if j >= len(row):
                continue
            p = row[j]
            kw = {} if p.limits is None else {"vmin": p.limits[0], "vmax": p.limits[1]}
            square = p.image.shape[0] == p.image.shape[1]
            ax.imshow(p.image, cmap=p.cmap, aspect="equal" if square else "auto", **kw)
            ax.set_title(p.title, fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path, dpi)


def save_figure(fig: Any, path: str | Path, dpi: int = 90) -> Path:
    """Write a matplotlib figure as PNG atomically (temporary file, then rename) and close it.

    Example:
        >>> import tempfile, matplotlib
        >>> matplotlib.use("Agg")
        >>> import matplotlib.pyplot as plt
        >>> save_figure(plt.figure(), Path(tempfile.mkdtemp()) / "f.png").suffix
        '.png'
    """
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    tmp.replace(path)
    return path
