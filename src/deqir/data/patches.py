"""Random training patches with dihedral augmentation, seeded and reproducible.

Example:
    >>> import torch
    >>> from deqir.data import PatchDataset
    >>> patches = PatchDataset(torch.rand(4, 1, 64, 64), patch_size=16, patches_per_epoch=10, seed=0)
    >>> len(patches), tuple(patches[0].shape)
    (10, (1, 16, 16))
    >>> again = PatchDataset(patches.images, patch_size=16, patches_per_epoch=10, seed=0)
    >>> bool((again[3] == patches[3]).all())
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from deqir.errors import InvalidValueError, ShapeError

__all__ = ["PatchDataset", "dihedral"]


def dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """Element ``k`` (0–7) of the dihedral group D4 applied to the last two axes.

    ``k % 4`` quarter turns counter-clockwise, then a left-right flip if ``k >= 4``; ``k = 0`` is
    the identity.

    Example:
        >>> import torch
        >>> x = torch.arange(4.0).reshape(1, 2, 2)
        >>> dihedral(x, 1).tolist()
        [[[1.0, 3.0], [0.0, 2.0]]]
        >>> len({tuple(dihedral(x, k).flatten().tolist()) for k in range(8)})
        8
    """
    if not 0 <= k < 8:
        raise InvalidValueError(f"dihedral element k must be in 0..7; got {k}")
    y = torch.rot90(x, k % 4, dims=(-2, -1))
    return torch.flip(y, dims=(-1,)) if k >= 4 else y


class PatchDataset(Dataset):
    """Random ``patch_size²`` crops of a set of images, with optional flips and 90° rotations.

    Patch ``i`` of epoch ``e`` depends only on ``(seed, e, i)``: the same seed gives the same
    patches in any order, with any number of ``DataLoader`` workers. Call :meth:`set_epoch` to
    draw fresh patches each epoch. Images are drawn with probability proportional to their number
    of possible crop positions (so every patch position is equally likely over the whole set).

    Args:
        images: An :class:`~deqir.data.ImageDataset`, a tensor ``(N, C, H, W)`` or a sequence of
            ``(H, W)`` / ``(C, H, W)`` arrays or tensors (sizes may differ).
        patch_size: Side of the square patches.
        patches_per_epoch: Length of the dataset.
        augment: Apply a random element of the dihedral group (4 rotations × flip).
        seed: Seed of every random draw.

    Raises:
        ShapeError: An image is smaller than ``patch_size`` or not 2-D/3-D.

    Example:
        >>> import torch
        >>> from deqir.data import PatchDataset
        >>> ds = PatchDataset([torch.rand(40, 50)], patch_size=8, patches_per_epoch=4, seed=1)
        >>> a = ds[2]; ds.set_epoch(1); b = ds[2]
        >>> tuple(a.shape), bool((a != b).any())
        ((1, 8, 8), True)
    """

    def __init__(
        self,
        images: Any,
        patch_size: int,
        patches_per_epoch: int,
        augment: bool = True,
        seed: int = 0,
    ) -> None:
        if not isinstance(patch_size, int | np.integer) or patch_size < 1:
            raise InvalidValueError(f"patch_size must be a positive integer; got {patch_size!r}")
        if not isinstance(patches_per_epoch, int | np.integer) or patches_per_epoch < 0:
            raise InvalidValueError(
                f"patches_per_epoch must be a non-negative integer; got {patches_per_epoch!r}"
            )
        self.images = _as_image_list(images)
        if not self.images:
            raise ShapeError("PatchDataset needs at least one image")
        for i, img in enumerate(self.images):
            if img.shape[-2] < patch_size or img.shape[-1] < patch_size:
                raise ShapeError(
                    f"image {i} is {tuple(img.shape[-2:])}, smaller than patch_size {patch_size}: "
                    "use a smaller patch_size or larger images"
                )
        self.patch_size = int(patch_size)
        self.patches_per_epoch = int(patches_per_epoch)
        self.augment = bool(augment)
        self.seed = int(seed)
        self.epoch = 0
        positions = np.array(
            [(t.shape[-2] - patch_size + 1) * (t.shape[-1] - patch_size + 1) for t in self.images],
            dtype=np.float64,
        )
        self._cum = np.cumsum(positions / positions.sum())
        self._cum[-1] = 1.0

    def set_epoch(self, epoch: int) -> None:
        """Select the patches of another epoch (as with ``DistributedSampler.set_epoch``)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.patches_per_epoch

    def params(self, index: int) -> tuple[int, int, int, int]:
        """``(image, top, left, dihedral element)`` of patch ``index`` in the current epoch."""
        if not 0 <= index < self.patches_per_epoch:
            raise IndexError(f"patch index {index} out of range for {self.patches_per_epoch} patches")
        rng = np.random.default_rng([self.seed, self.epoch, int(index)])
        u, a, b, c = rng.random(4)
        img = min(int(np.searchsorted(self._cum, u, side="right")), len(self.images) - 1)
        h, w = self.images[img].shape[-2:]
        top = min(int(a * (h - self.patch_size + 1)), h - self.patch_size)
        left = min(int(b * (w - self.patch_size + 1)), w - self.patch_size)
        k = min(int(c * 8), 7) if self.augment else 0
        return img, top, left, k

    def __getitem__(self, index: int) -> torch.Tensor:
        img, top, left, k = self.params(index)
        p = self.images[img][:, top : top + self.patch_size, left : left + self.patch_size]
        return dihedral(p, k).contiguous() if k else p.clone()


def _as_image_list(images: Any) -> list[torch.Tensor]:
    if isinstance(images, torch.Tensor | np.ndarray):
        t = torch.as_tensor(images)
        if t.ndim == 2:
            t = t[None, None]
        elif t.ndim == 3:
            t = t[:, None]
        if t.ndim != 4:
            raise ShapeError(f"images must be (N, C, H, W), (N, H, W) or (H, W); got {tuple(t.shape)}")
        return [x.to(torch.float32) for x in t]
    out = []
    seq: Sequence[Any] = images
    for i in range(len(seq)):
        x = seq[i]
        t = torch.as_tensor(x if isinstance(x, torch.Tensor) else np.asarray(x))
        if t.ndim == 2:
            t = t[None]
        if t.ndim != 3:
            raise ShapeError(f"image {i} must be (H, W) or (C, H, W); got {tuple(t.shape)}")
        out.append(t.to(torch.float32))
    return out
