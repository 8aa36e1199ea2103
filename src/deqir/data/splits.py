"""Fixed train/validation/test splits of a source, built once and cached.

:func:`build_dataset` loads a source (a registered name such as ``"natural"``, several joined by
``+``, or a path to the user's own files), makes every image square and ``image_size`` pixels
wide, assigns each image to a split, writes the result once to an ``.npz`` cache file and
loads it from there afterwards.

How the split is made (deterministic for a given ``seed`` and set of images):

- the *unit* of assignment is a single image, or a block of ``block`` consecutive slices of a
  volume; the last ``gap`` slices of each block are dropped, so slices of different splits are at
  least ``gap + 1`` slices apart and near-duplicate neighbours never straddle train and test;
- units are ordered by a hash of ``(seed, unit key)``, which does not depend on the order the
  files are listed in; test is filled first, then validation, then train; a unit that would
  overshoot a requested count is cut and its remaining slices are dropped (never moved to another
  split);
- the cache file name holds a hash of everything that decides the content (source entries,
  size, fit, splits, seed, format version), so a changed request never reads a stale file.

Cache folder: the ``cache_dir`` argument, else ``$DEQIR_CACHE``, else ``$XDG_CACHE_HOME/deqir``
or ``~/.cache/deqir``. Files are written to a temporary name and renamed (atomic); a corrupt file
is rebuilt with a log line.

Example:
    >>> import tempfile
    >>> from deqir.data import build_dataset
    >>> ds = build_dataset("ct_phantoms", 32, splits=(6, 2, 2), count=9, cache_dir=tempfile.mkdtemp())
    >>> len(ds.train), len(ds.val), len(ds.test), tuple(ds.test[0].shape)
    (6, 2, 2, (1, 32, 32))
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from deqir.errors import DataError, InvalidValueError, ShapeError, unknown_name_message

__all__ = [
    "ImageDataset",
    "DatasetSplits",
    "build_dataset",
    "build_all",
    "default_cache_dir",
    "fit_image",
    "split_samples",
    "training_images",
    "STANDARD_SOURCES",
]

logger = logging.getLogger("deqir.data")

CACHE_FORMAT = 1
SPLIT_NAMES = ("train", "val", "test")
FIT_MODES = ("crop", "pad", "resize")
#: Sources built by :func:`build_all` (the ``deqir data`` command).
STANDARD_SOURCES = ("natural", "ct", "ct_phantoms", "brain")


# --------------------------------------------------------------------------------------------
# datasets
# --------------------------------------------------------------------------------------------
class ImageDataset(Dataset):
    """Images as ``(1, H, W)`` ``float32`` tensors with their keys.

    Args:
        images: A tensor ``(N, 1, H, W)`` / ``(N, H, W)`` or a list of ``(H, W)`` / ``(1, H, W)``
            arrays or tensors (sizes may differ when no ``image_size`` was asked for).
        keys: One identifier per image (defaults to ``"0"``, ``"1"`` ...).
        info: Free-form facts (source, split, cache path ...).

    Example:
        >>> import torch
        >>> from deqir.data import ImageDataset
        >>> ds = ImageDataset(torch.rand(3, 1, 8, 8))
        >>> len(ds), tuple(ds[0].shape), tuple(ds.stack().shape)
        (3, (1, 8, 8), (3, 1, 8, 8))
    """

    def __init__(self, images: Any, keys: Sequence[str] | None = None, info: dict | None = None) -> None:
        if isinstance(images, torch.Tensor | np.ndarray):
            t = torch.as_tensor(images)
            if t.ndim == 3:
                t = t[:, None]
            if t.ndim != 4 or t.shape[1] != 1:
                raise ShapeError(f"images must be (N, 1, H, W) or (N, H, W); got {tuple(t.shape)}")
            self._images = [img for img in t.to(torch.float32)]
        else:
            self._images = []
            for i, img in enumerate(images):
                t = torch.as_tensor(np.asarray(img) if not isinstance(img, torch.Tensor) else img)
                if t.ndim == 2:
                    t = t[None]
                if t.ndim != 3 or t.shape[0] != 1:
                    raise ShapeError(f"image {i} must be (H, W) or (1, H, W); got {tuple(t.shape)}")
                self._images.append(t.to(torch.float32))
        self.keys = list(keys) if keys is not None else [str(i) for i in range(len(self._images))]
        if len(self.keys) != len(self._images):
            raise ShapeError(f"{len(self.keys)} keys for {len(self._images)} images")
        self.info = dict(info or {})

    def __len__(self) -> int:
        return len(self._images)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self._images[index]

    def __iter__(self) -> Iterator[torch.Tensor]:
        return iter(self._images)

    def __repr__(self) -> str:
        shapes = {tuple(t.shape[-2:]) for t in self._images}
        size = next(iter(shapes)) if len(shapes) == 1 else "mixed"
        return f"ImageDataset({len(self)} images, size {size}, info={self.info.get('source', '')!r})"

    def stack(self) -> torch.Tensor:
        """All images as one ``(N, 1, H, W)`` tensor (they must share a size)."""
        if not self._images:
            return torch.zeros(0, 1, 0, 0)
        shapes = {tuple(t.shape) for t in self._images}
        if len(shapes) > 1:
            raise ShapeError(f"images have different sizes {sorted(shapes)[:4]}...; build with image_size=N")
        return torch.stack(self._images)


@dataclass
class DatasetSplits:
    """The train, validation and test :class:`ImageDataset` of one build.

    ``splits["test"]`` works too; ``info`` holds the source, size, seed, counts, cache path and
    skipped providers.
    """

    train: ImageDataset
    val: ImageDataset
    test: ImageDataset
    info: dict = field(default_factory=dict)

    def __getitem__(self, name: str) -> ImageDataset:
        if name not in SPLIT_NAMES:
            raise InvalidValueError(unknown_name_message("split", name, SPLIT_NAMES))
        return getattr(self, name)

    def counts(self) -> dict[str, int]:
        """Number of images per split."""
        return {n: len(getattr(self, n)) for n in SPLIT_NAMES}


# --------------------------------------------------------------------------------------------
# fitting to a square size
# --------------------------------------------------------------------------------------------
def fit_image(image: np.ndarray, size: int, mode: str = "crop") -> np.ndarray:
    """Make an image square and ``size × size``, clipped to ``[0, 1]``.

    Args:
        image: ``(H, W)`` array.
        size: Output side.
        mode: ``"crop"`` (central square, then resize), ``"pad"`` (zero-pad to a square, then
            resize: keeps a whole head or body) or ``"resize"`` (stretch).

    Resizing is bilinear with anti-aliasing (Pillow's ``resize``, the same values as
    ``torch.nn.functional.interpolate(..., mode="bilinear", antialias=True)``, single-threaded).

    Example:
        >>> import numpy as np
        >>> fit_image(np.ones((20, 40), np.float32), 10, "pad").shape
        (10, 10)
    """
    if mode not in FIT_MODES:
        raise InvalidValueError(unknown_name_message("fit mode", mode, FIT_MODES))
    a = np.asarray(image, dtype=np.float32)
    if a.ndim != 2:
        raise ShapeError(f"fit_image expects a 2-D image; got shape {a.shape}")
    h, w = a.shape
    if mode == "crop" and h != w:
        s = min(h, w)
        top, left = (h - s) // 2, (w - s) // 2
        a = a[top : top + s, left : left + s]
    elif mode == "pad" and h != w:
        s = max(h, w)
        out = np.zeros((s, s), np.float32)
        top, left = (s - h) // 2, (s - w) // 2
        out[top : top + h, left : left + w] = a
        a = out
    if a.shape != (size, size):
        a = _resize(np.ascontiguousarray(a), size)
    return np.clip(a, 0.0, 1.0).astype(np.float32)


def _resize(a: np.ndarray, size: int) -> np.ndarray:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow comes with matplotlib and scikit-image
        t = torch.nn.functional.interpolate(
            torch.from_numpy(a)[None, None],
            size=(size, size),
            mode="bilinear",
            align_corners=False,
            antialias=True,
        )
        return t[0, 0].numpy()
    return np.asarray(Image.fromarray(a).resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32)


# --------------------------------------------------------------------------------------------
# splitting
# --------------------------------------------------------------------------------------------
def _split_counts(splits: Sequence[float], n: int) -> tuple[int | None, int, int]:
    """Target (train, val, test) counts; train ``None`` means "all the rest"."""
    if len(splits) != 3:
        raise InvalidValueError(f"splits must be (train, val, test); got {tuple(splits)}")
    if any(
        isinstance(s, bool) or not isinstance(s, int | float | np.integer | np.floating) or s < 0
        for s in splits
    ):
        raise InvalidValueError(f"splits must be three non-negative counts or fractions; got {tuple(splits)}")
    if all(isinstance(s, int | np.integer) for s in splits):
        tr, va, te = (int(s) for s in splits)
        if tr + va + te > n:
            raise DataError(
                f"asked for {tr} + {va} + {te} = {tr + va + te} images but the source has {n}: "
                "ask for fewer, or pass fractions such as (0.8, 0.1, 0.1)"
            )
        return tr, va, te
    fr = [float(s) for s in splits]
    if any(f > 1 for f in fr) or sum(fr) > 1 + 1e-6:
        raise InvalidValueError(
            f"split fractions must lie in [0, 1] and sum to at most 1; got {tuple(splits)} "
            "(use integers for counts)"
        )

    def count(f: float) -> int:
        return 0 if f == 0 else max(1, round(f * n))

    # a tiny source fills test first, then val, then train (and says so)
    te = min(count(fr[2]), n)
    va = min(count(fr[1]), n - te)
    if (fr[1] > 0 and va == 0) or (fr[0] > 0 and n - te - va == 0):
        logger.warning(
            "only %d images: test gets %d, val %d, train %d; add more data for useful splits",
            n,
            te,
            va,
            n - te - va,
        )
    tr = None if abs(sum(fr) - 1) < 1e-6 else min(count(fr[0]), n - va - te)
    return tr, va, te


def _unit_hash(seed: int, key: str) -> str:
    return hashlib.sha256(f"{seed}\x00{key}".encode()).hexdigest()


def split_samples(
    samples: Sequence[Any], splits: Sequence[float], seed: int = 0, block: int = 8, gap: int = 2
) -> dict[str, list[Any]]:
    """Assign samples (objects with ``key``, ``group`` and ``index``) to train/val/test.

    See the module docstring for the rules. Returns ``{"train": [...], "val": [...], "test": [...]}``
    with each list sorted by key.

    Example:
        >>> from deqir.data.sources import Sample
        >>> s = [Sample(f"img{i}", None, f"img{i}") for i in range(10)]
        >>> parts = split_samples(s, (0.8, 0.1, 0.1), seed=0)
        >>> [len(parts[k]) for k in ("train", "val", "test")]
        [8, 1, 1]
    """
    if block < 1 or gap < 0 or gap >= block:
        raise InvalidValueError(f"need block >= 1 and 0 <= gap < block; got block={block}, gap={gap}")
    units: dict[str, list[Any]] = {}
    for s in samples:
        if s.index is None:
            units.setdefault(f"{s.key}", []).append(s)
        elif s.index % block < block - gap:
            units.setdefault(f"{s.group}#{s.index // block}", []).append(s)
    for members in units.values():
        members.sort(key=lambda s: (s.index if s.index is not None else -1, s.key))
    n = sum(len(m) for m in units.values())
    tr, va, te = _split_counts(splits, n)
    order = sorted(units, key=lambda u: _unit_hash(seed, u))
    out: dict[str, list[Any]] = {"train": [], "val": [], "test": []}
    targets = [("test", te), ("val", va), ("train", tr)]
    t = 0
    for u in order:
        while t < len(targets) and targets[t][1] is not None and len(out[targets[t][0]]) >= targets[t][1]:
            t += 1
        if t == len(targets):
            break
        name, target = targets[t]
        room = len(units[u]) if target is None else target - len(out[name])
        out[name].extend(units[u][:room])  # the rest of a cut unit is dropped, never reassigned
    for name in out:
        out[name].sort(key=lambda s: s.key)
    return out


# --------------------------------------------------------------------------------------------
# cache
# --------------------------------------------------------------------------------------------
def default_cache_dir() -> Path:
    """``$DEQIR_CACHE``, else ``$XDG_CACHE_HOME/deqir``, else ``~/.cache/deqir``.

    Example:
        >>> import os
        >>> before = os.environ.get("DEQIR_CACHE")
        >>> os.environ["DEQIR_CACHE"] = "/tmp/deqir-cache"
        >>> str(default_cache_dir())
        '/tmp/deqir-cache'
        >>> _ = os.environ.pop("DEQIR_CACHE") if before is None else os.environ.update(DEQIR_CACHE=before)
    """
    env = os.environ.get("DEQIR_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "deqir"


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:60]


def _write_npz_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise DataError(
            f"cannot write the data cache in '{path.parent}' ({err.strerror or err}): set DEQIR_CACHE or "
            "pass cache_dir= to a writable folder"
        ) from None
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _save_cache(path: Path, parts: dict[str, list], meta: dict) -> None:
    arrays: dict[str, np.ndarray] = {"meta": np.array(json.dumps(meta))}
    for name in SPLIT_NAMES:
        imgs = [np.asarray(s.image, np.float32) for s in parts[name]]
        arrays[f"{name}_keys"] = np.array([s.key for s in parts[name]], dtype=str)
        if imgs and len({i.shape for i in imgs}) == 1:
            arrays[name] = np.stack(imgs)
        else:
            for i, img in enumerate(imgs):
                arrays[f"{name}_{i:05d}"] = img
    _write_npz_atomic(path, arrays)


def _load_cache(path: Path) -> tuple[dict[str, ImageDataset], dict]:
    """Read a cache file; any defect raises ``ValueError`` (the caller rebuilds)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta.get("format") != CACHE_FORMAT:
                raise ValueError(f"cache format {meta.get('format')} != {CACHE_FORMAT}")
            out = {}
            for name in SPLIT_NAMES:
                keys = [str(k) for k in z[f"{name}_keys"]]
                if name in z.files:
                    stack = np.asarray(z[name], dtype=np.float32)
                    arrays = list(stack) if stack.ndim == 3 else []
                else:
                    arrays = [np.asarray(z[f"{name}_{i:05d}"], dtype=np.float32) for i in range(len(keys))]
                if len(arrays) != len(keys):
                    raise ValueError(f"split {name}: {len(arrays)} images for {len(keys)} keys")
                # NumPy checks run single-threaded: no thread-pool overhead on a busy host
                if any(a.ndim != 2 or not np.isfinite(a).all() for a in arrays):
                    raise ValueError(f"split {name} holds a malformed image or NaN/infinite values")
                imgs = [torch.from_numpy(a)[None] for a in arrays]
                out[name] = ImageDataset(
                    imgs, keys, {**meta.get("info", {}), "split": name, "cache": str(path)}
                )
    except (OSError, EOFError, KeyError, ValueError, TypeError, zipfile.BadZipFile) as err:
        raise ValueError(f"{type(err).__name__}: {err}") from None
    return out, meta


# --------------------------------------------------------------------------------------------
# building
# --------------------------------------------------------------------------------------------
def _user_source(path: Path, recursive: bool) -> tuple[list[str], Callable[[int | None], list]]:
    """Fingerprint and loader of a user path (file or folder)."""
    from deqir.data.readers import read_path_items
    from deqir.data.sources import Sample

    p = path.expanduser()
    if not p.exists():
        raise DataError(
            f"data path '{p}' does not exist: check the path, or use a source name "
            f"({', '.join(STANDARD_SOURCES)})"
        )
    listing = [p] if p.is_file() else (p.rglob("*") if recursive else p.iterdir())
    files = sorted(f for f in listing if f.is_file())
    fingerprint = [
        f"{f.relative_to(p) if f != p else f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files
    ]

    def load(_size: int | None) -> list:
        samples = []
        for key, img in read_path_items(p, recursive=recursive):
            file_key, _, idx = key.partition(":")
            index = int(idx) if idx.isdigit() else None
            samples.append(Sample(key, img, file_key, index))
        return samples

    return [f"path:{p.resolve()}"] + fingerprint, load


def build_dataset(
    source: str | os.PathLike,
    image_size: int | None = 256,
    splits: Sequence[float] | None = None,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    *,
    count: int | None = None,
    fit: str | None = None,
    use_cache: bool = True,
    rebuild: bool = False,
    block: int = 8,
    gap: int = 2,
    recursive: bool = False,
) -> DatasetSplits:
    """Build (or load from the cache) fixed train/val/test splits of a source.

    Args:
        source: A registered source name (``"natural"``, ``"ct"``, ``"ct_phantoms"``, ``"brain"``),
            several joined by ``+`` (``"ct_phantoms+brain"``), or a path to a file or folder of the
            user's images, DICOM, NIfTI or fastMRI ``.h5`` files.
        image_size: Side of the square output images; ``None`` keeps native sizes (for patch
            training; synthetic images are then 256).
        splits: ``(train, val, test)`` as counts (ints) or fractions (floats). With fractions,
            val and test get ``round(f * n)`` images (at least one if ``f > 0``); if the fractions
            sum to 1 train gets all the rest. Default: the source's own (e.g. ``(0.7, 0.1, 0.2)``
            for ``natural``, ``(0, 0, 1)`` for ``ct``; ``(0.8, 0.1, 0.1)`` otherwise).
        seed: Seed of the assignment to splits.
        cache_dir: Cache folder (default :func:`default_cache_dir`).
        count: Number of random phantoms for synthetic sources (default 200).
        fit: ``"crop"``, ``"pad"`` or ``"resize"`` (see :func:`fit_image`); default per source
            (photos crop, medical images pad).
        use_cache: ``False`` builds in memory without reading or writing a cache file.
        rebuild: Rebuild and overwrite the cache file even if it is valid.
        block, gap: Volume slices are assigned in blocks of ``block`` consecutive slices, dropping
            the last ``gap`` of each block.
        recursive: For a folder path, also read its sub-folders.

    Returns:
        :class:`DatasetSplits` whose ``train``, ``val`` and ``test`` are :class:`ImageDataset` of
        ``(1, image_size, image_size)`` tensors in ``[0, 1]``.

    Raises:
        InvalidValueError: Unknown source name, bad ``splits`` or ``fit``.
        DataError: The source has no image here, a path is missing or unreadable, too few images
            for the counts asked, or the cache folder is not writable.

    Example:
        >>> from deqir.data import build_dataset
        >>> ds = build_dataset("natural", 128)  # doctest: +SKIP
        >>> ds.counts()  # doctest: +SKIP
        {'train': 20, 'val': 3, 'test': 6}
    """
    from deqir.data.sources import SOURCES, _load_entries, get_source

    t0 = time.perf_counter()
    if image_size is not None and (not isinstance(image_size, int | np.integer) or image_size < 8):
        raise InvalidValueError(f"image_size must be an integer >= 8 or None; got {image_size!r}")
    name = os.fspath(source)
    names = [n.strip() for n in name.split("+")]
    skipped: list[dict[str, str]] = []
    if all(n in SOURCES for n in names):
        srcs = [get_source(n) for n in names]
        entries = [e for s in srcs for e in s.entries(count)]
        skipped = [x for s in srcs for x in s.skipped()]
        if not entries:
            hints = "; ".join(f"{x['provider']}: {x['hint']}" for x in skipped)
            raise DataError(f"data source '{name}' has no images on this machine (to add some: {hints})")
        fingerprint = [e.key for e in entries]
        default_fit = srcs[0].fit
        default_splits = srcs[0].default_splits

        def load() -> list:
            return _load_entries(entries, image_size)
    elif os.sep in name or "/" in name or Path(name).expanduser().exists() or Path(name).suffix:
        fingerprint, loader = _user_source(Path(name), recursive)
        default_fit, default_splits = "pad", (0.8, 0.1, 0.1)

        def load() -> list:
            return loader(image_size)
    else:
        bad = next(n for n in names if n not in SOURCES)
        raise InvalidValueError(
            unknown_name_message("data source", bad, list(SOURCES)) + " (or give a path to your own files)"
        )
    fit = fit or default_fit
    if fit not in FIT_MODES:
        raise InvalidValueError(unknown_name_message("fit mode", fit, FIT_MODES))
    splits = tuple(splits) if splits is not None else tuple(default_splits)
    request = {
        "format": CACHE_FORMAT,
        "source": name,
        "entries": fingerprint,
        "image_size": image_size,
        "fit": fit,
        "splits": [float(s) if isinstance(s, float) else int(s) for s in splits],
        "seed": int(seed),
        "count": count,
        "block": block,
        "gap": gap,
    }
    digest = hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()[:16]
    label = _safe(name if name.replace("+", "").replace("_", "").isalnum() else Path(name).name or "data")
    path = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    path = path / f"{label}-{image_size or 'native'}-{digest}.npz"

    if use_cache and not rebuild and path.exists():
        try:
            parts, meta = _load_cache(path)
        except ValueError as err:
            logger.warning("data cache '%s' is unreadable (%s); rebuilding it", path, err)
        else:
            info = {
                **meta.get("info", {}),
                "cache": str(path),
                "from_cache": True,
                "skipped": skipped,
                "seconds": round(time.perf_counter() - t0, 3),
            }
            return DatasetSplits(parts["train"], parts["val"], parts["test"], info)

    samples = load()
    if not samples:
        raise DataError(f"data source '{name}': no image could be loaded (see the log lines above)")
    if image_size is not None:
        from dataclasses import replace

        samples = [replace(s, image=fit_image(s.image, image_size, fit)) for s in samples]
    parts = split_samples(samples, splits, seed=seed, block=block, gap=gap)
    info = {
        "source": name,
        "image_size": image_size,
        "fit": fit,
        "splits": list(request["splits"]),
        "seed": int(seed),
        "counts": {k: len(v) for k, v in parts.items()},
        "available": len(samples),
        "groups": len({s.group for s in samples}),
    }
    if use_cache:
        _save_cache(path, parts, {"format": CACHE_FORMAT, "request": request, "info": info})
    datasets = {
        k: ImageDataset(
            [s.image for s in v],
            [s.key for s in v],
            {**info, "split": k, "cache": str(path) if use_cache else None},
        )
        for k, v in parts.items()
    }
    info = {
        **info,
        "cache": str(path) if use_cache else None,
        "from_cache": False,
        "skipped": skipped,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    return DatasetSplits(datasets["train"], datasets["val"], datasets["test"], info)


def build_all(
    image_size: int = 256,
    cache_dir: str | os.PathLike | None = None,
    seed: int = 0,
    sources: Sequence[str] = STANDARD_SOURCES,
    rebuild: bool = False,
) -> dict:
    """Build the standard splits of every source (what ``deqir data`` runs) and summarise them.

    Returns:
        ``{"image_size", "cache_dir", "seed", "sources": {name: {"train", "val", "test", "cache",
        "from_cache", "seconds"} or {"error": message}}, "skipped": [{"source", "provider", "hint"}]}``.
        A source with no image here is reported under ``error``, not raised.

    Example:
        >>> import tempfile
        >>> from deqir.data import build_all
        >>> summary = build_all(32, tempfile.mkdtemp(), sources=["ct_phantoms"])
        >>> summary["sources"]["ct_phantoms"]["test"]
        20
    """
    from deqir.errors import DeqirError

    cdir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    summary: dict[str, Any] = {
        "image_size": image_size,
        "cache_dir": str(cdir),
        "seed": seed,
        "sources": {},
        "skipped": [],
    }
    for name in sources:
        try:
            ds = build_dataset(name, image_size, seed=seed, cache_dir=cdir, rebuild=rebuild)
        except DeqirError as err:
            summary["sources"][name] = {"error": str(err)}
            from deqir.data.sources import SOURCES

            if name in SOURCES:
                summary["skipped"].extend(SOURCES[name].skipped())
            continue
        summary["sources"][name] = {
            **ds.counts(),
            "cache": ds.info["cache"],
            "from_cache": ds.info["from_cache"],
            "seconds": ds.info["seconds"],
        }
        summary["skipped"].extend(ds.info["skipped"])
    return summary


def training_images(
    image_size: int = 256,
    seed: int = 0,
    source: str = "natural",
    native: bool = True,
    min_native: int = 256,
) -> dict[str, list[Any]]:
    """Train/val/test images of a :func:`deqir.data.build_dataset` source, with a native-size copy.

    A data source for the trainer (``data.source: "deqir.data.splits:training_images"``).
    The validation and test images are the source's fixed ``image_size`` splits. The training
    split holds those ``image_size`` images and, with ``native=True``, the same training images
    at their native resolution (those at least ``min_native`` pixels on each side): twice the
    pixels to draw patches from, at two scales, without touching the held-out images (the split
    assignment depends only on the image keys and the seed).

    Args:
        image_size: side of the validation and test images (and of the resized training copies).
        seed: seed of the split assignment.
        source: a source name of :func:`deqir.data.build_dataset` (``natural``, ``brain``,
            ``ct_phantoms+brain`` ...).
        native: add the native-size training images.
        min_native: smallest side of a native-size image that is kept.

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}`` lists of ``(1, H, W)`` tensors.

    Example:
        >>> splits = training_images(64, source="ct_phantoms", native=False)  # doctest: +SKIP
        >>> sorted(splits)  # doctest: +SKIP
        ['test', 'train', 'val']
    """
    fixed = build_dataset(source, image_size, seed=seed)
    train = list(fixed.train)
    if native:
        full = build_dataset(source, None, seed=seed)
        keys = set(fixed.train.keys)
        train += [
            img
            for key, img in zip(full.train.keys, full.train, strict=True)
            if key in keys and min(img.shape[-2:]) >= min_native
        ]
    return {"train": train, "val": list(fixed.val), "test": list(fixed.test)}
