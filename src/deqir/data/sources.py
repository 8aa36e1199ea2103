"""Named offline image sources: photos, CT slices, brain MRI slices and synthetic phantoms.

Nothing is downloaded: every image comes from files that installed packages ship (scikit-image,
PyWavelets, matplotlib, pydicom, pydicom-data, and optionally scikit-learn, sporco, mahotas,
nilearn, dipy, Debian's ``mricron-data``) or is generated. A *source* is a named list of
*providers* (one per package); a provider whose package is missing is skipped with one log line
(logger ``deqir.data``) that says how to add it.

Registered sources (see :func:`list_sources`):

- ``"natural"``: grey natural photos (8-bit, divided by 255; colour → Rec. 709 luma).
- ``"ct"``: real CT slices from pydicom's test files and pydicom-data, for tests and demos only
  (four images); Hounsfield units mapped linearly by the window ``[-1000, 2000]`` HU → ``[0, 1]``,
  so values stay proportional to attenuation.
- ``"ct_phantoms"``: the Shepp–Logan phantom and seeded random-ellipse phantoms, made at the size asked.
- ``"brain"``: axial T1 MRI slices of the Colin27 and MNI152 heads plus single slices, scaled per
  volume by robust percentiles (0.5th → 0, 99.5th → 1), keeping slices with at least 15 % of
  their pixels above 0.1.

Example:
    >>> from deqir.data.sources import list_sources, load_source
    >>> [s["name"] for s in list_sources()]
    ['natural', 'ct', 'ct_phantoms', 'brain']
    >>> samples = load_source("ct_phantoms", image_size=32, count=2)
    >>> [s.key for s in samples]
    ['shepp_logan', 'ellipses/0000', 'ellipses/0001']
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from deqir.errors import DataError, InvalidValueError, unknown_name_message

__all__ = [
    "Sample",
    "Entry",
    "Provider",
    "Source",
    "SOURCES",
    "CT_WINDOW",
    "get_source",
    "list_sources",
    "load_source",
    "register_source",
]

logger = logging.getLogger("deqir.data")

#: Hounsfield window mapped to [0, 1] for the real CT slices (linear in attenuation).
CT_WINDOW = (-1000.0, 2000.0)
#: A volume slice is kept if at least this fraction of its pixels exceeds 0.1 (after scaling).
MIN_FOREGROUND = 0.15
#: Default number of random-ellipse phantoms in ``"ct_phantoms"``.
DEFAULT_PHANTOMS = 200

_WARNED: set[str] = set()


@dataclass(frozen=True)
class Sample:
    """One 2-D image of a source.

    Attributes:
        key: Stable identifier, e.g. ``"skimage/camera"`` or ``"mricron/ch2:z=090"``.
        image: ``float32`` array ``(H, W)`` in ``[0, 1]``.
        group: Images of one group (the slices of one volume) are correlated; splits keep
            neighbouring slices of a group apart.
        index: Position of a slice in its volume (``None`` for a single image).
    """

    key: str
    image: np.ndarray = field(repr=False)
    group: str = ""
    index: int | None = None


@dataclass(frozen=True)
class Entry:
    """One loadable item of a provider (an image file, a volume or a phantom).

    ``load(size)`` returns its samples; ``size`` matters only to synthetic entries.
    """

    key: str
    loader: Callable[[int | None], list[Sample]] = field(repr=False)

    def load(self, size: int | None = None) -> list[Sample]:
        """Load the samples of this entry (raises :class:`DataError` if the file is unreadable)."""
        return self.loader(size)


@dataclass(frozen=True)
class Provider:
    """A package (or system package) that ships some images of a source.

    Attributes:
        name: Short name shown to users (``"nilearn"``).
        hint: How to install it (``"pip install nilearn --no-deps"``).
        available: Cheap check (finds files; imports nothing heavy).
        entries: ``entries(count)`` lists the entries (``count`` is for synthetic providers).
        license: Licence of the shipped images.
    """

    name: str
    hint: str
    available: Callable[[], bool] = field(repr=False)
    entries: Callable[[int | None], list[Entry]] = field(repr=False)
    license: str = ""


@dataclass(frozen=True)
class Source:
    """A named collection of providers.

    Attributes:
        name: Registry name.
        description: One line for ``list_sources``/the CLI.
        providers: The providers, tried in order.
        fit: How :func:`deqir.data.build_dataset` makes images square: ``"crop"`` (central square,
            photos) or ``"pad"`` (zero padding, medical images with a dark background).
        default_splits: ``(train, val, test)`` fractions used when none are given.
        synthetic: Images are generated at the requested size.
    """

    name: str
    description: str
    providers: tuple[Provider, ...]
    fit: str = "crop"
    default_splits: tuple[float, float, float] = (0.8, 0.1, 0.1)
    synthetic: bool = False

    def status(self) -> list[tuple[Provider, bool]]:
        """Each provider with whether it is available here."""
        out = []
        for p in self.providers:
            try:
                ok = bool(p.available())
            except Exception:  # noqa: BLE001 - a broken install counts as missing
                ok = False
            out.append((p, ok))
        return out

    def entries(self, count: int | None = None, warn: bool = True) -> list[Entry]:
        """Entries of the available providers; a missing provider is logged once per process."""
        out: list[Entry] = []
        for p, ok in self.status():
            if ok:
                out.extend(p.entries(count))
            elif warn and p.name not in _WARNED:
                _WARNED.add(p.name)
                logger.warning(
                    "data source '%s': %s not installed, skipped (to add it: %s)", self.name, p.name, p.hint
                )
        return out

    def skipped(self) -> list[dict[str, str]]:
        """The providers that are not available, with the line that installs each."""
        return [
            {"source": self.name, "provider": p.name, "hint": p.hint} for p, ok in self.status() if not ok
        ]

    def load(self, image_size: int | None = None, count: int | None = None) -> list[Sample]:
        """Load every sample (see :func:`load_source`)."""
        return _load_entries(self.entries(count), image_size)


def _load_entries(entries: Sequence[Entry], image_size: int | None) -> list[Sample]:
    out: list[Sample] = []
    for e in entries:
        try:
            out.extend(e.load(image_size))
        except (DataError, OSError, ValueError, RuntimeError, ImportError) as err:
            logger.warning("data entry '%s' skipped: %s", e.key, err)
    return out


# --------------------------------------------------------------------------------------------
# locating package files without importing the package
# --------------------------------------------------------------------------------------------
def _package_dir(name: str) -> Path | None:
    """Folder of an installed top-level package, found without importing it."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _package_file(package: str, *parts: str) -> Path | None:
    d = _package_dir(package)
    if d is None:
        return None
    f = d.joinpath(*parts)
    return f if f.exists() else None


def _files_provider(
    name: str,
    hint: str,
    files: Callable[[], list[tuple[str, Path | None]]],
    reader: Callable[[Path], list[Sample] | np.ndarray],
    license: str = "",
) -> Provider:
    """A provider of image files: ``files()`` lists ``(key, path or None)``."""

    def available() -> bool:
        return any(p is not None for _, p in files())

    def entries(count: int | None) -> list[Entry]:
        out = []
        for key, path in files():
            if path is None:
                continue
            out.append(Entry(key, _file_loader(key, path, reader)))
        return out

    return Provider(name, hint, available, entries, license)


def _file_loader(key: str, path: Path, reader) -> Callable[[int | None], list[Sample]]:
    def load(size: int | None) -> list[Sample]:
        res = reader(path)
        if isinstance(res, np.ndarray):
            return [Sample(key, np.ascontiguousarray(res, dtype=np.float32), key)]
        return [
            Sample(s.key if s.key.startswith(key) else f"{key}{s.key}", s.image, key, s.index) for s in res
        ]

    return load


# --------------------------------------------------------------------------------------------
# readers for the shipped files
# --------------------------------------------------------------------------------------------
def _read_photo(path: Path, max_side: int | None = None) -> np.ndarray:
    from PIL import Image

    from deqir.data.readers import _raster_images

    if max_side is not None:
        with Image.open(path) as im:
            if max(im.size) > max_side:
                im.draft("RGB", (max_side, max_side))
                im.thumbnail((max_side, max_side))
                return _grey_u8(np.asarray(im.convert("RGB")))
    return _raster_images(path, "auto")[0]


def _grey_u8(a: np.ndarray) -> np.ndarray:
    from deqir.data.readers import to_grey

    return np.clip(to_grey(a), 0, 1) if a.ndim == 3 else a.astype(np.float32) / 255.0


def _read_npz(path: Path) -> np.ndarray:
    with np.load(path, allow_pickle=False) as z:
        a = z[z.files[0]]
    return _grey_u8(a) if a.dtype == np.uint8 else np.clip(a.astype(np.float32), 0, 1)


def _read_ct(path: Path) -> np.ndarray:
    from deqir.data.readers import read_dicom

    return read_dicom(path, window=CT_WINDOW)


def _read_s1045(path: Path) -> np.ndarray:
    import gzip

    from deqir.data.readers import normalize_image

    with gzip.open(path) as fh:
        raw = fh.read()
    a = np.frombuffer(raw, ">u2").reshape(256, 256)  # big-endian 16-bit, 256 x 256 head MRI
    return normalize_image(a, "percentile")


def _read_npy_slice(path: Path) -> np.ndarray:
    from deqir.data.readers import normalize_image

    a = np.load(path, allow_pickle=False)
    return normalize_image(a, "percentile")  # stored upright (superior up)


def _volume_reader(min_foreground: float = MIN_FOREGROUND):
    def read(path: Path) -> list[Sample]:
        from deqir.data.readers import read_nifti

        vol = read_nifti(path)  # (S, H, W) axial, scaled per volume
        frac = (vol > 0.1).mean(axis=(1, 2))
        return [
            Sample(f":z={z:03d}", np.ascontiguousarray(vol[z]), "", z)
            for z in np.flatnonzero(frac >= min_foreground)
        ]

    return read


# --------------------------------------------------------------------------------------------
# natural photos
# --------------------------------------------------------------------------------------------
SKIMAGE_PHOTOS = (
    "astronaut",
    "brick",
    "camera",
    "cat",
    "coffee",
    "coins",
    "grass",
    "gravel",
    "immunohistochemistry",
    "moon",
    "retina",
    "rocket",
    "stereo_motorcycle",
    "clock",
    "cell",
    "microaneurysms",
)


def _skimage_entries(count: int | None) -> list[Entry]:
    def loader(name: str):
        def load(size: int | None) -> list[Sample]:
            import skimage.data

            try:
                a = getattr(skimage.data, name)()
            except Exception as err:  # noqa: BLE001 - some images need pooch and the network
                raise DataError(
                    f"skimage.data.{name}() failed offline ({type(err).__name__}: {err})"
                ) from None
            if isinstance(a, tuple):  # stereo_motorcycle: (left, right, disparity)
                a = a[0]
            img = _grey_u8(a) if a.dtype == np.uint8 else np.clip(a.astype(np.float32), 0, 1)
            return [Sample(f"skimage/{name}", np.ascontiguousarray(img, dtype=np.float32), f"skimage/{name}")]

        return load

    return [Entry(f"skimage/{n}", loader(n)) for n in SKIMAGE_PHOTOS]


def _natural_providers() -> tuple[Provider, ...]:
    def pkg_files(pkg: str, sub: tuple[str, ...], names: Sequence[str], prefix: str):
        return lambda: [(f"{prefix}/{Path(n).stem}", _package_file(pkg, *sub, n)) for n in names]

    def wallpapers() -> list[tuple[str, Path | None]]:
        out: list[tuple[str, Path | None]] = []
        mate = Path("/usr/share/backgrounds/mate/nature")
        if mate.is_dir():
            out += [
                (f"wallpapers/{p.stem}", p)
                for p in sorted(mate.iterdir())
                if p.suffix.lower() in (".jpg", ".jpeg", ".png")
            ]
        plasma = Path("/usr/share/wallpapers")
        if plasma.is_dir():
            for theme in sorted(t for t in plasma.iterdir() if t.is_dir()):
                imgs = sorted(
                    p
                    for p in (theme / "contents" / "images").glob("*.*")
                    if p.suffix.lower() in (".jpg", ".jpeg", ".png")
                )
                if imgs:  # one image per theme (several sizes of the same picture are shipped)
                    out.append((f"wallpapers/{theme.name}", max(imgs, key=lambda p: p.stat().st_size)))
        return out

    return (
        Provider(
            "scikit-image",
            "pip install scikit-image",
            lambda: _package_dir("skimage") is not None,
            _skimage_entries,
            "BSD-3-Clause / public domain",
        ),
        _files_provider(
            "pywavelets",
            "pip install PyWavelets",
            pkg_files("pywt", ("data",), ["aero.npz", "ascent.npz"], "pywt"),
            _read_npz,
            "MIT",
        ),
        _files_provider(
            "scikit-learn",
            "pip install scikit-learn --no-deps",
            pkg_files("sklearn", ("datasets", "images"), ["china.jpg", "flower.jpg"], "sklearn"),
            _read_photo,
            "CC BY 2.0",
        ),
        _files_provider(
            "matplotlib",
            "pip install matplotlib",
            pkg_files("matplotlib", ("mpl-data", "sample_data"), ["grace_hopper.jpg"], "matplotlib"),
            _read_photo,
            "public domain",
        ),
        _files_provider(
            "sporco",
            "pip install sporco --no-deps",
            pkg_files(
                "sporco",
                ("data",),
                ["barbara.png", "kodim23.png", "monarch.png", "sail.png", "tulips.png"],
                "sporco",
            ),
            _read_photo,
            "see sporco/data/README.rst",
        ),
        _files_provider(
            "mahotas",
            "pip install mahotas --no-deps",
            pkg_files("mahotas", ("demos", "data"), ["DepartmentStore.jpg", "luispedro.jpg"], "mahotas"),
            _read_photo,
            "MIT",
        ),
        _files_provider(
            "wallpapers",
            "apt-get install mate-backgrounds plasma-workspace-wallpapers",
            wallpapers,
            lambda p: _read_photo(p, max_side=1024),
            "GPL (Debian packages)",
        ),
    )


# --------------------------------------------------------------------------------------------
# CT, brain, phantoms
# --------------------------------------------------------------------------------------------
def _ct_providers() -> tuple[Provider, ...]:
    return (
        _files_provider(
            "pydicom",
            "pip install pydicom",
            lambda: [
                (f"pydicom/{Path(n).stem}", _package_file("pydicom", "data", "test_files", n))
                for n in ("CT_small.dcm", "J2K_pixelrep_mismatch.dcm")
            ],
            _read_ct,
            "MIT (pydicom test files)",
        ),
        _files_provider(
            "pydicom-data",
            "pip install pydicom-data",
            lambda: [
                (f"pydicom-data/{Path(n).stem}", _package_file("data_store", "data", n))
                for n in ("693_UNCI.dcm", "explicit_VR-UN.dcm")
            ],
            _read_ct,
            "see pydicom-data",
        ),
    )


def _brain_providers() -> tuple[Provider, ...]:
    ch2 = Path("/usr/share/mricron/templates/ch2.nii.gz")
    return (
        _files_provider(
            "mricron-data",
            "apt-get install mricron-data",
            lambda: [("mricron/ch2", ch2 if ch2.exists() else None)],
            _volume_reader(),
            "BSD",
        ),
        _files_provider(
            "nilearn",
            "pip install nilearn --no-deps",
            lambda: [
                (
                    "nilearn/mni152",
                    _package_file(
                        "nilearn", "datasets", "data", "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
                    ),
                )
            ],
            _volume_reader(),
            "MNI ICBM152 (free use with attribution)",
        ),
        _files_provider(
            "matplotlib",
            "pip install matplotlib",
            lambda: [
                ("matplotlib/s1045", _package_file("matplotlib", "mpl-data", "sample_data", "s1045.ima.gz"))
            ],
            _read_s1045,
            "matplotlib sample data",
        ),
        _files_provider(
            "dipy",
            "pip install dipy --no-deps",
            lambda: [
                ("dipy/t1_coronal_slice", _package_file("dipy", "data", "files", "t1_coronal_slice.npy"))
            ],
            _read_npy_slice,
            "BSD",
        ),
    )


def _phantom_entries(count: int | None) -> list[Entry]:
    from deqir.data.phantoms import phantom_seed, random_ellipses, shepp_logan

    n = DEFAULT_PHANTOMS if count is None else int(count)
    if n < 0:
        raise InvalidValueError(f"count must be >= 0; got {count}")

    def sl(size: int | None) -> list[Sample]:
        return [Sample("shepp_logan", shepp_logan(size or 256), "shepp_logan")]

    def ellipse(i: int):
        def load(size: int | None) -> list[Sample]:
            key = f"ellipses/{i:04d}"
            return [Sample(key, random_ellipses(size or 256, phantom_seed(0, i)), key)]

        return load

    return [Entry("shepp_logan", sl)] + [Entry(f"ellipses/{i:04d}", ellipse(i)) for i in range(n)]


def _phantom_providers() -> tuple[Provider, ...]:
    return (Provider("phantoms", "built in", lambda: True, _phantom_entries, "generated"),)


SOURCES: dict[str, Source] = {}


def register_source(source: Source, overwrite: bool = False) -> Source:
    """Add a :class:`Source` to the registry (for a project's own collections).

    Example:
        >>> from deqir.data.sources import Source, register_source, SOURCES
        >>> src = register_source(Source("empty", "nothing", ()), overwrite=True)
        >>> "empty" in SOURCES
        True
        >>> _ = SOURCES.pop("empty")
    """
    if not overwrite and source.name in SOURCES:
        raise InvalidValueError(
            f"a data source named '{source.name}' exists; pass overwrite=True to replace it"
        )
    if "+" in source.name or "/" in source.name:
        raise InvalidValueError(f"source names cannot contain '+' or '/': {source.name!r}")
    SOURCES[source.name] = source
    return source


register_source(
    Source(
        "natural",
        "grey natural photos shipped by installed packages (8-bit / 255)",
        _natural_providers(),
        fit="crop",
        default_splits=(0.7, 0.1, 0.2),
    )
)
register_source(
    Source(
        "ct",
        "real CT slices (pydicom test files; test and demo only), HU window "
        f"[{CT_WINDOW[0]:g}, {CT_WINDOW[1]:g}] -> [0, 1]",
        _ct_providers(),
        fit="pad",
        default_splits=(0.0, 0.0, 1.0),
    )
)
register_source(
    Source(
        "ct_phantoms",
        "Shepp-Logan and seeded random-ellipse phantoms (synthetic)",
        _phantom_providers(),
        fit="pad",
        default_splits=(0.8, 0.1, 0.1),
        synthetic=True,
    )
)
register_source(
    Source(
        "brain",
        "T1 brain MRI slices (NIfTI templates, matplotlib, dipy), per-volume percentile scaling",
        _brain_providers(),
        fit="pad",
        default_splits=(0.8, 0.1, 0.1),
    )
)


def get_source(name: str) -> Source:
    """The registered :class:`Source` called ``name``.

    Raises:
        InvalidValueError: Unknown name (the message suggests the closest one).

    Example:
        >>> from deqir.data.sources import get_source
        >>> get_source("brain").fit
        'pad'
    """
    if name not in SOURCES:
        raise InvalidValueError(unknown_name_message("data source", name, list(SOURCES)))
    return SOURCES[name]


def list_sources() -> list[dict]:
    """Every registered source with its providers and whether each is available here.

    Nothing is loaded, so this is fast. Each item is
    ``{"name", "description", "available", "providers": [{"name", "available", "hint", "entries"}]}``
    where ``entries`` counts the files or volumes (``None`` for a missing provider).

    Example:
        >>> from deqir.data.sources import list_sources
        >>> info = {s["name"]: s for s in list_sources()}
        >>> info["ct_phantoms"]["available"]
        True
    """
    out = []
    for src in SOURCES.values():
        provs = []
        for p, ok in src.status():
            provs.append(
                {
                    "name": p.name,
                    "available": ok,
                    "hint": p.hint,
                    "license": p.license,
                    "entries": len(p.entries(None)) if ok else None,
                }
            )
        out.append(
            {
                "name": src.name,
                "description": src.description,
                "available": any(p["available"] for p in provs),
                "providers": provs,
            }
        )
    return out


def load_source(name: str, image_size: int | None = None, count: int | None = None) -> list[Sample]:
    """Load every image of a source (or of several joined by ``+``, e.g. ``"ct_phantoms+brain"``).

    Images keep their native size (synthetic ones are made at ``image_size``, default 256);
    :func:`deqir.data.build_dataset` resizes, splits and caches. An entry that fails to load is
    skipped with a log line.

    Args:
        name: Source name(s).
        image_size: Size of synthetic images.
        count: Number of random phantoms (synthetic sources).

    Raises:
        InvalidValueError: Unknown source name.
        DataError: No image of the source is available on this machine.

    Example:
        >>> from deqir.data.sources import load_source
        >>> imgs = load_source("natural")  # doctest: +SKIP
    """
    samples: list[Sample] = []
    for part in name.split("+"):
        samples.extend(get_source(part.strip()).load(image_size, count))
    if not samples:
        hints = "; ".join(
            f"{s['provider']}: {s['hint']}"
            for part in name.split("+")
            for s in get_source(part.strip()).skipped()
        )
        raise DataError(
            f"data source '{name}' has no images on this machine ({hints or 'all entries failed'})"
        )
    return samples
