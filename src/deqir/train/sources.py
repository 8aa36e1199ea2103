"""Clean images for training and evaluation, and the seeded crops a training step draws.

A *source* returns ``{"train": [...], "val": [...], "test": [...]}``: lists of ``(C, H, W)``
float tensors in ``[0, 1]`` with ``H, W >= image_size``. Built-in sources:

* ``synthetic`` (:data:`SOURCES`): random piecewise-smooth images (ellipses and rectangles on a
  smooth background), generated from the seed; any size, no files, instant;
* ``"package.module:function"``: any function ``f(image_size=..., num_train=..., num_val=...,
  num_test=..., seed=..., **options)`` (it takes those it names) returning that mapping;
* any other name goes to :func:`deqir.data.build_dataset` (``natural``, ``ct``, ``ct_phantoms``,
  ``brain``, ``a+b``, or a path to the user's images) with ``image_size``, ``seed`` and
  ``data.options`` (e.g. ``count``, ``splits``, ``fit``, ``cache_dir``); ``num_*`` are then unused.

Training crops (``patch_size``, or ``image_size`` for whole images) are drawn per sample from
:func:`deqir.train.seeding.generator`; validation and test images are fixed crops of
``image_size``.

Example:
    >>> from deqir.train.sources import ImageBank, synthetic_images
    >>> bank = ImageBank(synthetic_images(4, 32, seed=0))
    >>> tuple(bank.training_batch(seed=0, step=0, indices=range(3), size=16).shape)
    (3, 1, 16, 16)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch

from deqir.errors import ConfigError, DataError
from deqir.train import seeding

SPLITS = ("train", "val", "test")


def synthetic_images(
    num: int, size: int, seed: int = 0, channels: int = 1, stream: int = 0, max_shapes: int = 8
) -> list[torch.Tensor]:
    """``num`` random piecewise-smooth images of shape ``(channels, size, size)`` in ``[0, 1]``.

    Example:
        >>> imgs = synthetic_images(2, 16, seed=1)
        >>> len(imgs), tuple(imgs[0].shape), bool(imgs[0].min() >= 0 and imgs[0].max() <= 1)
        (2, (1, 16, 16), True)
    """
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    out = []
    for i in range(num):
        g = seeding.generator(seed, 0xD47A, stream, i)
        coarse = torch.rand(1, channels, 4, 4, generator=g)
        img = (
            0.3
            * torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)[
                0
            ]
        )
        for _ in range(int(torch.randint(2, max_shapes + 1, (1,), generator=g))):
            cy, cx, ry, rx, theta, kind = torch.rand(6, generator=g).tolist()
            value = torch.rand(channels, 1, 1, generator=g) * 0.8 - 0.2
            ry, rx, theta = 0.05 + 0.3 * ry, 0.05 + 0.3 * rx, 3.1416 * theta
            dy, dx = yy - cy, xx - cx
            c, s = torch.cos(torch.tensor(theta)), torch.sin(torch.tensor(theta))
            u, v = (c * dx + s * dy) / rx, (-s * dx + c * dy) / ry
            mask = (u.abs().maximum(v.abs()) <= 1) if kind < 0.3 else (u * u + v * v <= 1)
            img = img + value * mask.float()
        out.append(img.clamp(0, 1))
    return out


def _synthetic_source(
    image_size: int,
    num_train: int,
    num_val: int,
    num_test: int,
    seed: int,
    channels: int = 1,
    max_shapes: int = 8,
) -> dict[str, list[torch.Tensor]]:
    nums = {"train": num_train, "val": num_val, "test": num_test}
    return {
        s: synthetic_images(nums[s], image_size, seed, channels, stream=k, max_shapes=max_shapes)
        for k, s in enumerate(SPLITS)
    }


SOURCES: dict[str, Callable[..., dict[str, Sequence[torch.Tensor]]]] = {
    "synthetic": _synthetic_source,
}
#: data sources named by a path they no longer have (run folders and sidecars written before the
#: move still name the old one) -> the path now
MOVED_SOURCES = {"deqir.priors.pretrained:training_images": "deqir.data.splits:training_images"}


def load_source(
    name: str,
    image_size: int,
    num_train: int,
    num_val: int,
    num_test: int,
    seed: int,
    options: dict[str, Any] | None = None,
    extra_train_sizes: Sequence[int] = (),
) -> dict[str, ImageBank]:
    """Load the splits of source ``name`` as :class:`ImageBank` objects (checked).

    ``extra_train_sizes``: the training split is also made at these sizes (same images, same
    seed) and the training bank holds every version (multi-scale training crops).

    Example:
        >>> banks = load_source("synthetic", 32, 2, 1, 1, seed=0, extra_train_sizes=[16])
        >>> len(banks["train"]), len(banks["val"])
        (4, 1)
    """
    counts = {"num_train": num_train, "num_val": num_val, "num_test": num_test}
    options = dict(options or {})
    splits = _source_splits(name, image_size, counts, seed, options)
    train = list(splits["train"])
    for size in extra_train_sizes:  # the whole source is made again; only its training split is kept
        train += list(_source_splits(name, int(size), counts, seed, options)["train"])
    splits = {s: train if s == "train" else splits[s] for s in SPLITS}
    min_size = {s: image_size for s in SPLITS}
    if extra_train_sizes:
        min_size["train"] = min(image_size, *map(int, extra_train_sizes))
    return {s: ImageBank(splits[s], name=f"{name}/{s}", min_size=min_size[s]) for s in SPLITS}


def _source_splits(name: str, image_size: int, counts: dict[str, int], seed: int, options: dict) -> dict:
    """The raw ``{split: images}`` mapping of a source at one size."""
    from deqir.train.registry import check_options, resolve

    name = MOVED_SOURCES.get(name, name)
    if name not in SOURCES and ":" not in name:
        from deqir.data import build_dataset

        check_options(
            build_dataset,
            options,
            "data.options",
            f"deqir.data source '{name}'",
            exclude=("source", "image_size", "seed"),
        )
        return build_dataset(name, image_size=image_size, seed=seed, **options)
    fn = resolve("data.source", SOURCES, name)
    kwargs = {"image_size": image_size, **counts, "seed": seed}
    check_options(fn, options, "data.options", f"data source '{name}'", exclude=tuple(kwargs))
    params = inspect.signature(fn).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        kwargs = {k: v for k, v in kwargs.items() if k in params}
    splits = fn(**kwargs, **options)
    if not isinstance(splits, dict) or not set(SPLITS) <= set(splits):
        raise ConfigError(f"data source '{name}' must return a mapping with keys {', '.join(SPLITS)}")
    return splits


class ImageBank:
    """A list of clean ``(C, H, W)`` images on the CPU, and seeded crops of them.

    Args:
        images: the images (a list, or any sequence/``Dataset`` of tensors).
        name: for error messages.
        min_size: every image must be at least this large in both axes.
    """

    def __init__(self, images: Sequence[torch.Tensor], name: str = "images", min_size: int = 1):
        self.images = [torch.as_tensor(img).float() for img in images]
        if not self.images:
            raise DataError(
                f"{name}: no images; raise data.num_train/num_val/num_test or pick another data.source"
            )
        for k, img in enumerate(self.images):
            if img.dim() != 3:
                raise DataError(f"{name}: image {k} must have shape (C, H, W); got {tuple(img.shape)}")
            if min(img.shape[1:]) < min_size:
                raise DataError(
                    f"{name}: image {k} of shape {tuple(img.shape)} is smaller than "
                    f"data.image_size {min_size}; lower data.image_size"
                )
        self.name = name

    def __len__(self) -> int:
        return len(self.images)

    @property
    def channels(self) -> int:
        """Channels of the images."""
        return int(self.images[0].shape[0])

    def _crop(self, g: torch.Generator, size: int, augment: bool) -> torch.Tensor:
        img = self.images[int(torch.randint(len(self.images), (1,), generator=g))]
        top = int(torch.randint(img.shape[1] - size + 1, (1,), generator=g))
        left = int(torch.randint(img.shape[2] - size + 1, (1,), generator=g))
        crop = img[:, top : top + size, left : left + size]
        if augment:
            k, flip = torch.randint(4, (2,), generator=g).tolist()
            crop = torch.rot90(crop, k, dims=(1, 2))
            if flip % 2:
                crop = crop.flip(2)
        return crop

    def training_batch(
        self, seed: int, step: int, indices: Sequence[int], size: int, augment: bool = False
    ) -> torch.Tensor:
        """Crops for the samples ``indices`` of the global batch at ``step``: ``(len, C, size, size)``."""
        return torch.stack(
            [self._crop(seeding.generator(seed, seeding.DATA, step, j), size, augment) for j in indices]
        )

    def fixed_crops(self, size: int, num: int | None = None, seed: int = 0) -> torch.Tensor:
        """``num`` deterministic crops of ``size`` (image ``k % len``; centred when it fits exactly)."""
        num = len(self.images) if num is None else int(num)
        out = []
        for k in range(num):
            img = self.images[k % len(self.images)]
            g = seeding.generator(seed, seeding.VAL, k)
            top = int(torch.randint(img.shape[1] - size + 1, (1,), generator=g))
            left = int(torch.randint(img.shape[2] - size + 1, (1,), generator=g))
            out.append(img[:, top : top + size, left : left + size])
        return torch.stack(out)
