"""Readers for images a user brings: PNG/TIFF/JPG folders, DICOM files and series, NIfTI volumes
and fastMRI ``.h5`` files.

Every reader returns ``float32`` arrays. By default they are scaled into ``[0, 1]``
(:func:`normalize_image`): 8-bit images are divided by 255, anything else (16-bit, float, CT
Hounsfield units, MRI intensities) is mapped *robustly* so that its 0.5th percentile goes to 0 and
its 99.5th percentile to 1, then clipped. Volumes (NIfTI, DICOM series, fastMRI) are scaled once per
volume so that slices keep their relative brightness.

A missing path, an empty folder or a file that cannot be decoded raises
:class:`deqir.errors.DataError` naming the file and what to do; no reader lets a deep traceback
of a third-party package escape. Heavy packages (PIL, pydicom, nibabel, h5py) load inside the
functions.

Example:
    >>> import numpy as np, tempfile, pathlib
    >>> from PIL import Image
    >>> from deqir.data.readers import read_image
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "ramp.png"
    >>> Image.fromarray(np.tile(np.arange(0, 256, 16, dtype=np.uint8), (4, 1))).save(path)
    >>> img = read_image(path)
    >>> img.shape, img.dtype, float(img.max())
    ((4, 16), dtype('float32'), 0.9411764740943909)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from deqir.errors import DataError, InvalidValueError, unknown_name_message

__all__ = [
    "IMAGE_SUFFIXES",
    "NORMALIZE_MODES",
    "normalize_image",
    "to_grey",
    "read_image",
    "read_image_folder",
    "read_dicom",
    "read_dicom_series",
    "read_nifti",
    "read_fastmri",
    "read_fastmri_kspace",
    "rss_from_kspace",
    "read_path",
]

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".pgm", ".ppm")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
NIFTI_SUFFIXES = (".nii", ".nii.gz", ".hdr", ".img")
H5_SUFFIXES = (".h5", ".hdf5")
NORMALIZE_MODES = ("auto", "percentile", "minmax", "dtype", "none")

#: Percentiles mapped to 0 and 1 by the robust ("percentile") normalisation.
PERCENTILES = (0.5, 99.5)


# --------------------------------------------------------------------------------------------
# normalisation
# --------------------------------------------------------------------------------------------
def normalize_image(
    image: np.ndarray,
    mode: str = "auto",
    percentiles: tuple[float, float] = PERCENTILES,
    window: tuple[float, float] | None = None,
) -> np.ndarray:
    """Scale an image (or a whole volume) into ``[0, 1]`` as ``float32``.

    Args:
        image: Array of any real dtype and shape; NaN and infinite values become 0.
        mode: ``"auto"`` (``uint8`` / ``bool`` by dtype, anything else by percentile),
            ``"percentile"`` (the given percentiles go to 0 and 1, then clip: robust to a few hot
            pixels), ``"minmax"``, ``"dtype"`` (divide unsigned integers by their dtype's maximum;
            floats are only clipped) or ``"none"`` (cast to float32, no scaling).
        percentiles: Low and high percentile for ``"percentile"``.
        window: If given, ``(low, high)`` in the image's own units (e.g. Hounsfield units) is mapped
            to ``[0, 1]`` and clipped; overrides ``mode``.

    Returns:
        ``float32`` array of the same shape. A constant image becomes all zeros.

    Example:
        >>> import numpy as np
        >>> [round(float(v), 3) for v in normalize_image(np.array([0, 128, 255], dtype=np.uint8))]
        [0.0, 0.502, 1.0]
        >>> normalize_image(np.array([-1000.0, 0.0, 1000.0]), window=(-1000, 1000)).tolist()
        [0.0, 0.5, 1.0]
    """
    if mode not in NORMALIZE_MODES:
        raise InvalidValueError(unknown_name_message("normalisation", mode, NORMALIZE_MODES))
    a = np.asarray(image)
    if a.dtype == bool:
        return a.astype(np.float32)
    if np.iscomplexobj(a):
        a = np.abs(a)
    if window is not None:
        lo, hi = float(window[0]), float(window[1])
        if not hi > lo:
            raise InvalidValueError(f"window must be (low, high) with high > low; got {window}")
        out = (np.nan_to_num(a.astype(np.float64), nan=lo, posinf=hi, neginf=lo) - lo) / (hi - lo)
        return np.clip(out, 0.0, 1.0).astype(np.float32)
    if mode == "auto":
        mode = "dtype" if a.dtype == np.uint8 else "percentile"
    if mode == "none":
        return np.nan_to_num(a.astype(np.float32))
    if mode == "dtype":
        if np.issubdtype(a.dtype, np.unsignedinteger):
            return (a.astype(np.float64) / np.iinfo(a.dtype).max).astype(np.float32)
        return np.clip(np.nan_to_num(a.astype(np.float32)), 0.0, 1.0)
    f = a.astype(np.float64)
    finite = np.isfinite(f)
    if not finite.all():
        f = np.where(finite, f, 0.0)
    if f.size == 0:
        return f.astype(np.float32)
    if mode == "percentile":
        lo, hi = np.percentile(f, percentiles)
        if not hi > lo:  # e.g. a mostly empty background: fall back to the full range
            lo, hi = f.min(), f.max()
    else:
        lo, hi = f.min(), f.max()
    if not hi > lo:
        return np.zeros(f.shape, np.float32)
    return np.clip((f - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def to_grey(image: np.ndarray) -> np.ndarray:
    """Colour ``(H, W, 3|4)`` to grey ``(H, W)`` with Rec. 709 luma weights (alpha dropped).

    Integer images are first scaled by their dtype's maximum, so ``uint8`` RGB gives grey in
    ``[0, 1]``; a 2-D image is returned as ``float32`` unchanged.

    Example:
        >>> import numpy as np
        >>> to_grey(np.full((2, 2, 3), 255, np.uint8)).tolist()
        [[1.0, 1.0], [1.0, 1.0]]
    """
    a = np.asarray(image)
    if a.ndim == 2:
        return a.astype(np.float32)
    if a.ndim != 3 or a.shape[-1] not in (3, 4):
        raise InvalidValueError(f"to_grey expects (H, W) or (H, W, 3|4); got shape {a.shape}")
    f = a[..., :3].astype(np.float64)
    if np.issubdtype(a.dtype, np.unsignedinteger):
        f /= np.iinfo(a.dtype).max
    return (f @ np.array([0.2125, 0.7154, 0.0721])).astype(np.float32)


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def _existing(path: str | os.PathLike, what: str) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"{what} '{p}' does not exist: check the path (relative paths start at {Path.cwd()})")
    return p


@contextlib.contextmanager
def _reading(path: Path, what: str, hint: str = "") -> Iterator[None]:
    """Turn any failure of a third-party reader into one :class:`DataError` line."""
    try:
        yield
    except DataError:
        raise
    except MemoryError:
        raise
    except Exception as err:  # noqa: BLE001 - every decoder has its own exception zoo
        msg = f"cannot read {what} '{path}': {type(err).__name__}: {err}".rstrip()
        msg += f". {hint}" if hint else ". Check that the file is complete and not corrupt"
        raise DataError(msg) from None


def _need(module: str, pip_name: str, path: Path):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise DataError(
            f"reading '{path}' needs the '{pip_name}' package: pip install {pip_name} "
            "(or: pip install 'deqir[data]')"
        ) from None


def _suffix(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return path.suffix.lower()


def _is_dicom(path: Path) -> bool:
    if _suffix(path) in DICOM_SUFFIXES:
        return True
    if path.suffix:  # other known extensions are not DICOM
        return False
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _stack_to_list(a: np.ndarray) -> list[np.ndarray]:
    return [np.ascontiguousarray(s) for s in a]


# --------------------------------------------------------------------------------------------
# PNG / TIFF / JPG
# --------------------------------------------------------------------------------------------
def _read_raster(p: Path) -> np.ndarray:
    """Decode a raster file to an array: (H, W), (H, W, C) or a TIFF stack (N, H, W[, C])."""
    if _suffix(p) in (".tif", ".tiff"):
        tifffile = _need("tifffile", "tifffile", p)
        with _reading(p, "TIFF file"):
            return np.asarray(tifffile.imread(p))
    PIL_Image = _need("PIL.Image", "pillow", p)
    with _reading(p, "image file"), PIL_Image.open(p) as im:
        im.load()
        if im.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
            im = im.convert("RGBA" if "A" in im.mode or "transparency" in im.info else "RGB")
        elif im.mode == "LA" or im.mode == "1":
            im = im.convert("L")
        return np.asarray(im)


def read_image(path: str | os.PathLike, normalize: str = "auto") -> np.ndarray:
    """Read one PNG, TIFF, JPG, BMP... file as a grey ``(H, W)`` ``float32`` image.

    Colour images become grey (:func:`to_grey`); ``normalize`` is as in :func:`normalize_image`
    (``"auto"``: 8-bit divided by 255, 16-bit and float by robust percentiles).

    Args:
        path: The image file.
        normalize: Normalisation mode.

    Raises:
        DataError: The file is missing, cannot be decoded, or is a multi-page stack (use
            :func:`read_path` for stacks).

    Example:
        >>> from deqir.data.readers import read_image
        >>> img = read_image("photo.png")  # doctest: +SKIP
    """
    p = _existing(path, "image file")
    if p.is_dir():
        raise DataError(f"'{p}' is a folder; use read_image_folder or read_path for folders")
    imgs = _raster_images(p, normalize)
    if len(imgs) != 1:
        raise DataError(
            f"'{p}' is a stack of {len(imgs)} images, not one 2-D image: use read_path to get every "
            "page as a list"
        )
    return imgs[0]


def _raster_images(p: Path, normalize: str) -> list[np.ndarray]:
    """All 2-D grey images of one raster file (a TIFF stack gives one per page)."""
    a = _read_raster(p)
    if a.size == 0:
        raise DataError(f"'{p}' holds an empty image")
    if a.ndim == 2:
        return [normalize_image(a, normalize)]
    if a.ndim == 3 and a.shape[-1] in (3, 4):
        return [_grey_keep_scale(a, normalize)]
    if a.ndim == 3:  # (N, H, W) stack: one normalisation for the stack
        return _stack_to_list(normalize_image(a, normalize))
    if a.ndim == 4 and a.shape[-1] in (3, 4):
        return [_grey_keep_scale(s, normalize) for s in a]
    raise DataError(f"'{p}' holds an array of shape {a.shape}; expected 2-D images, colour images or stacks")


def _grey_keep_scale(a: np.ndarray, normalize: str) -> np.ndarray:
    """Colour to grey; 8-bit colour keeps the 1/255 scale under "auto" like 8-bit grey."""
    grey = to_grey(a)  # integers are already divided by their dtype maximum
    if normalize == "auto":
        return np.clip(grey, 0, 1) if a.dtype == np.uint8 else normalize_image(grey, "percentile")
    if normalize == "dtype":
        return np.clip(grey, 0, 1)
    return normalize_image(grey, normalize)


def read_image_folder(
    folder: str | os.PathLike, normalize: str = "auto", recursive: bool = False
) -> list[np.ndarray]:
    """Read every PNG/TIFF/JPG/BMP image in a folder (sorted by name) as grey ``float32`` arrays.

    Args:
        folder: The folder.
        normalize: Normalisation mode (:func:`normalize_image`).
        recursive: Also look in sub-folders.

    Raises:
        DataError: The folder is missing or holds no image, or one file cannot be decoded.

    Example:
        >>> from deqir.data.readers import read_image_folder
        >>> images = read_image_folder("my_photos/")  # doctest: +SKIP
    """
    return [img for _, img in _image_folder_items(folder, normalize, recursive)]


def _image_files(folder: Path, recursive: bool) -> list[Path]:
    it = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(
        f for f in it if f.is_file() and _suffix(f) in IMAGE_SUFFIXES and not f.name.startswith(".")
    )


def _image_folder_items(folder, normalize: str, recursive: bool) -> list[tuple[str, np.ndarray]]:
    d = _existing(folder, "image folder")
    if not d.is_dir():
        raise DataError(f"'{d}' is a file, not a folder; use read_image for one file")
    files = _image_files(d, recursive)
    if not files:
        raise DataError(
            f"no images in folder '{d}' (looked for {', '.join(IMAGE_SUFFIXES)}"
            f"{' in sub-folders too' if recursive else '; pass recursive=True to search sub-folders'})"
        )
    out: list[tuple[str, np.ndarray]] = []
    for f in files:
        imgs = _raster_images(f, normalize)
        rel = f.relative_to(d).as_posix()
        out.extend((rel if len(imgs) == 1 else f"{rel}:{i}", im) for i, im in enumerate(imgs))
    return out


# --------------------------------------------------------------------------------------------
# DICOM
# --------------------------------------------------------------------------------------------
_DICOM_DECODER_HINT = (
    "If it is compressed (JPEG, JPEG 2000, JPEG-LS, RLE), install a decoder: "
    "pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg"
)


def _dicom_pixels(path: Path) -> tuple[np.ndarray, object]:
    """Pixel data of one DICOM file in modality units (rescale slope/intercept applied)."""
    pydicom = _need("pydicom", "pydicom", path)
    with _reading(path, "DICOM file", "Check that it is a complete DICOM file (pydicom.dcmread)"):
        ds = pydicom.dcmread(path)
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise DataError(f"DICOM file '{path}' has no pixel data (is it a report or a DICOMDIR?)")
    with _reading(path, "the pixel data of DICOM file", _DICOM_DECODER_HINT):
        a = ds.pixel_array
    a = np.asarray(a)
    if str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).startswith("MONOCHROME"):
        slope = float(getattr(ds, "RescaleSlope", 1) or 1)
        intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
        if slope != 1 or intercept != 0:
            a = a.astype(np.float64) * slope + intercept
        if str(getattr(ds, "PhotometricInterpretation", "")) == "MONOCHROME1":
            a = a.max() - a  # MONOCHROME1: high values are dark
    elif a.ndim >= 3 and a.shape[-1] in (3, 4):
        a = np.stack([to_grey(f) for f in a]) if a.ndim == 4 else to_grey(a)
    return a, ds


def read_dicom(
    path: str | os.PathLike,
    normalize: str = "auto",
    window: tuple[float, float] | None = None,
) -> np.ndarray:
    """Read one DICOM file as a ``float32`` image ``(H, W)`` (or ``(frames, H, W)`` if multi-frame).

    The rescale slope and intercept are applied first, so CT values are in Hounsfield units; then
    the image is scaled into ``[0, 1]`` robustly (``normalize``) or by a fixed ``window`` in those
    units, e.g. ``window=(-1000, 2000)`` for a CT attenuation range.

    Raises:
        DataError: The file is missing, is not DICOM, has no pixel data, or its compression has no
            decoder installed (the message names the pip line).

    Example:
        >>> from deqir.data.readers import read_dicom
        >>> ct = read_dicom("slice.dcm", window=(-1000, 2000))  # doctest: +SKIP
    """
    p = _existing(path, "DICOM file")
    if p.is_dir():
        raise DataError(f"'{p}' is a folder; use read_dicom_series for a series of DICOM files")
    a, _ = _dicom_pixels(p)
    return normalize_image(a, "percentile" if normalize == "auto" else normalize, window=window)


def read_dicom_series(
    folder: str | os.PathLike,
    normalize: str = "auto",
    window: tuple[float, float] | None = None,
) -> np.ndarray:
    """Read a folder of single-frame DICOM slices as one ``(S, H, W)`` ``float32`` volume.

    Slices are ordered by their position along the slice normal (``ImagePositionPatient`` and
    ``ImageOrientationPatient``), else by ``InstanceNumber``, else by file name. The whole volume is
    scaled once (so slices keep their relative brightness). Files with a ``.dcm``/``.ima`` suffix,
    or no suffix and the ``DICM`` magic, are read.

    Raises:
        DataError: The folder is missing or empty, a file is unreadable, or slices differ in size.

    Example:
        >>> from deqir.data.readers import read_dicom_series
        >>> vol = read_dicom_series("patient01/series3/")  # doctest: +SKIP
    """
    d = _existing(folder, "DICOM folder")
    if not d.is_dir():
        raise DataError(f"'{d}' is a file, not a folder; use read_dicom for one file")
    files = sorted(f for f in d.iterdir() if f.is_file() and _is_dicom(f))
    if not files:
        raise DataError(
            f"no DICOM files in folder '{d}' (looked for {', '.join(DICOM_SUFFIXES)} or files with "
            "the DICM magic)"
        )
    return normalize_image(
        _dicom_volume(files), "percentile" if normalize == "auto" else normalize, window=window
    )


def _dicom_volume(files: Sequence[Path]) -> np.ndarray:
    slices = []
    for i, f in enumerate(files):
        a, ds = _dicom_pixels(f)
        pos = None
        with contextlib.suppress(Exception):
            iop = np.asarray([float(v) for v in ds.ImageOrientationPatient])
            normal = np.cross(iop[:3], iop[3:])
            pos = float(np.dot(normal, [float(v) for v in ds.ImagePositionPatient]))
        inst = getattr(ds, "InstanceNumber", None)
        frames = _stack_to_list(a) if a.ndim == 3 else [a]
        for j, fr in enumerate(frames):
            slices.append(
                (
                    (pos, j) if pos is not None else None,
                    (int(inst), j) if inst is not None else None,
                    (i, j),
                    f,
                    fr,
                )
            )
    if all(s[0] is not None for s in slices):
        slices.sort(key=lambda s: s[0])
    elif all(s[1] is not None for s in slices):
        slices.sort(key=lambda s: s[1])
    shapes = {s[4].shape for s in slices}
    if len(shapes) > 1:
        detail = ", ".join(f"{s[3].name}: {s[4].shape}" for s in slices[:6])
        raise DataError(
            f"DICOM files in '{files[0].parent}' have different sizes ({detail}...): put each series in its "
            "own folder"
        )
    return np.stack([s[4].astype(np.float64) for s in slices])


# --------------------------------------------------------------------------------------------
# NIfTI
# --------------------------------------------------------------------------------------------
def read_nifti(
    path: str | os.PathLike,
    normalize: str = "auto",
    axis: int = 2,
    volume_index: int = 0,
) -> np.ndarray:
    """Read a NIfTI volume as a stack of 2-D slices ``(S, H, W)``, ``float32`` in ``[0, 1]``.

    The volume is reoriented to the closest canonical (RAS+) orientation, so ``axis=2`` gives axial
    slices from feet to head, ``axis=1`` coronal and ``axis=0`` sagittal ones; each slice is rotated
    so anterior (or superior) is up. A 4-D file gives the volume ``volume_index``. The whole volume
    is scaled once (robust percentiles under ``"auto"``).

    Raises:
        DataError: The file is missing or corrupt, or is not 3-D/4-D.

    Example:
        >>> from deqir.data.readers import read_nifti
        >>> slices = read_nifti("/usr/share/mricron/templates/ch2.nii.gz")  # doctest: +SKIP
        >>> slices.shape  # doctest: +SKIP
        (181, 217, 181)
    """
    p = _existing(path, "NIfTI file")
    nib = _need("nibabel", "nibabel", p)
    with _reading(p, "NIfTI file", "Check that the file is a complete .nii or .nii.gz volume"):
        img = nib.load(str(p))
        img = nib.as_closest_canonical(img)
        vol = np.asarray(img.dataobj, dtype=np.float32)
    if vol.ndim == 4:
        if not 0 <= volume_index < vol.shape[3]:
            raise DataError(f"'{p}' has {vol.shape[3]} volumes; volume_index {volume_index} is out of range")
        vol = vol[..., volume_index]
    while vol.ndim > 3 and vol.shape[-1] == 1:
        vol = vol[..., 0]
    if vol.ndim == 2:
        vol = vol[:, :, None]
    if vol.ndim != 3:
        raise DataError(f"'{p}' holds an array of shape {vol.shape}; expected a 3-D (or 4-D) volume")
    if axis not in (0, 1, 2):
        raise InvalidValueError(f"axis must be 0 (sagittal), 1 (coronal) or 2 (axial); got {axis}")
    vol = np.moveaxis(vol, axis, 0)  # (S, a, b) with a, b in RAS order
    vol = np.rot90(vol, k=1, axes=(1, 2))  # second in-plane axis points up
    return np.ascontiguousarray(normalize_image(vol, "percentile" if normalize == "auto" else normalize))


# --------------------------------------------------------------------------------------------
# fastMRI
# --------------------------------------------------------------------------------------------
FASTMRI_IMAGE_KEYS = ("reconstruction_rss", "reconstruction_esc")


def rss_from_kspace(kspace: np.ndarray) -> np.ndarray:
    """Root-sum-of-squares magnitude of multi-coil k-space with the centred orthonormal FFT.

    Args:
        kspace: Complex array ``(..., coils, H, W)`` (multi-coil) or ``(..., H, W)`` with
            ``coils`` absent (single coil: the magnitude is returned).

    Example:
        >>> import numpy as np
        >>> k = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(np.ones((2, 4, 4))), norm="ortho"))
        >>> rss_from_kspace(k[None]).shape
        (1, 4, 4)
    """
    k = np.asarray(kspace)
    img = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
    if k.ndim >= 4:
        return np.sqrt((np.abs(img) ** 2).sum(axis=-3)).astype(np.float32)
    return np.abs(img).astype(np.float32)


def _open_h5(p: Path):
    h5py = _need("h5py", "h5py", p)
    hint = "Check that the .h5 file is complete (an interrupted download leaves it truncated)"
    with _reading(p, "HDF5 file", hint):
        return h5py.File(p, "r")


def read_fastmri(
    path: str | os.PathLike,
    key: str = "auto",
    normalize: str = "auto",
    slices: slice | Sequence[int] | None = None,
) -> np.ndarray:
    """Read the magnitude images of a fastMRI ``.h5`` file as ``(S, H, W)`` ``float32``.

    Args:
        path: The ``.h5`` file.
        key: ``"reconstruction_rss"``, ``"reconstruction_esc"`` or ``"auto"`` (the first of those
            present; for files that hold only ``kspace``, as in the challenge test sets, the
            root-sum-of-squares of the k-space, uncropped).
        normalize: Normalisation mode, applied once to the whole volume (``"none"`` keeps raw values).
        slices: Read only these slices (a ``slice`` or indices), e.g. to save memory.

    Raises:
        DataError: The file is missing, corrupt, or has neither the key nor ``kspace``.

    Example:
        >>> from deqir.data.readers import read_fastmri
        >>> vol = read_fastmri("file1000001.h5", slices=slice(10, 20))  # doctest: +SKIP
    """
    p = _existing(path, "fastMRI file")
    with _open_h5(p) as f:
        names = list(f.keys())
        if key == "auto":
            key = next((k for k in FASTMRI_IMAGE_KEYS if k in f), "kspace")
        if key not in f:
            raise DataError(
                f"'{p}' has no dataset '{key}' (it has: {', '.join(names) or 'nothing'}); "
                "use key='auto' or read_fastmri_kspace for raw k-space"
            )
        with _reading(p, f"dataset '{key}' of HDF5 file"):
            ds = f[key]
            data = np.asarray(ds[()] if slices is None else ds[_h5_index(slices)])
    if key == "kspace" or np.iscomplexobj(data):
        data = rss_from_kspace(data) if np.iscomplexobj(data) else data
    if data.ndim == 2:
        data = data[None]
    if data.ndim != 3:
        raise DataError(f"dataset '{key}' of '{p}' has shape {data.shape}; expected (slices, H, W)")
    return normalize_image(data, "percentile" if normalize == "auto" else normalize)


def _h5_index(slices):
    if isinstance(slices, slice):
        return slices
    idx = sorted({int(i) for i in slices})
    return idx


def read_fastmri_kspace(
    path: str | os.PathLike, slices: slice | Sequence[int] | None = None
) -> tuple[np.ndarray, dict]:
    """Read the raw ``kspace`` of a fastMRI ``.h5`` file and its attributes.

    Returns:
        ``(kspace, attrs)``: ``kspace`` is ``complex64`` ``(S, coils, H, W)`` for multi-coil data or
        ``(S, H, W)`` for single-coil; ``attrs`` holds the file attributes (``acquisition``,
        ``max``, ``norm``, ``patient_id`` ...) and ``"mask"`` if the file has one (test sets).

    Raises:
        DataError: The file is missing, corrupt or has no ``kspace``.

    Example:
        >>> from deqir.data.readers import read_fastmri_kspace
        >>> kspace, attrs = read_fastmri_kspace("file1000001.h5", slices=[15])  # doctest: +SKIP
    """
    p = _existing(path, "fastMRI file")
    with _open_h5(p) as f:
        if "kspace" not in f:
            raise DataError(
                f"'{p}' has no 'kspace' dataset (it has: {', '.join(f.keys()) or 'nothing'}); "
                "use read_fastmri for the reconstructed images"
            )
        with _reading(p, "dataset 'kspace' of HDF5 file"):
            ds = f["kspace"]
            k = np.asarray(ds[()] if slices is None else ds[_h5_index(slices)])
            attrs = {name: (v.item() if isinstance(v, np.generic) else v) for name, v in f.attrs.items()}
            if "mask" in f:
                attrs["mask"] = np.asarray(f["mask"][()])
    return k.astype(np.complex64, copy=False), attrs


# --------------------------------------------------------------------------------------------
# dispatcher
# --------------------------------------------------------------------------------------------
def read_path(path: str | os.PathLike, normalize: str = "auto", recursive: bool = False) -> list[np.ndarray]:
    """Read any supported file or folder as a list of 2-D ``float32`` images in ``[0, 1]``.

    A file is read by its suffix (images, DICOM, NIfTI axial slices, fastMRI ``.h5``); a folder of
    DICOM files is read as one series, any other folder as the images and volumes it holds.

    Raises:
        DataError: The path is missing, empty, of an unknown type, or unreadable.

    Example:
        >>> from deqir.data.readers import read_path
        >>> images = read_path("scans/brain.nii.gz")  # doctest: +SKIP
    """
    return [img for _, img in read_path_items(path, normalize, recursive)]


def read_path_items(
    path: str | os.PathLike, normalize: str = "auto", recursive: bool = False
) -> list[tuple[str, np.ndarray]]:
    """Like :func:`read_path`, with a key for each image: ``file`` or ``file:index`` (slice index)."""
    p = _existing(path, "data path")
    if p.is_file():
        return [(f"{p.name}{k}", im) for k, im in _file_items(p, normalize)]
    files = sorted(
        f for f in (p.rglob("*") if recursive else p.iterdir()) if f.is_file() and not f.name.startswith(".")
    )
    dicoms = [f for f in files if _is_dicom(f)]
    others = [f for f in files if f not in dicoms and _kind(f) is not None]
    if not dicoms and not others:
        raise DataError(
            f"no readable data in folder '{p}' (looked for images {', '.join(IMAGE_SUFFIXES)}, DICOM, "
            f"NIfTI {', '.join(NIFTI_SUFFIXES)} and fastMRI .h5"
            f"{'' if recursive else '; pass recursive=True to search sub-folders'})"
        )
    out: list[tuple[str, np.ndarray]] = []
    by_folder: dict[Path, list[Path]] = {}
    for f in dicoms:
        by_folder.setdefault(f.parent, []).append(f)
    for folder, group in sorted(by_folder.items()):
        vol = normalize_image(_dicom_volume(group), "percentile" if normalize == "auto" else normalize)
        rel = folder.relative_to(p).as_posix()
        out.extend((f"{rel}:{i}", s) for i, s in enumerate(vol))
    for f in others:
        rel = f.relative_to(p).as_posix()
        out.extend((f"{rel}{k}", im) for k, im in _file_items(f, normalize))
    return out


def _kind(f: Path) -> str | None:
    s = _suffix(f)
    if s in IMAGE_SUFFIXES:
        return "image"
    if s in NIFTI_SUFFIXES and s != ".img":
        return "nifti"
    if s in H5_SUFFIXES:
        return "h5"
    if _is_dicom(f):
        return "dicom"
    return None


def _file_items(f: Path, normalize: str) -> list[tuple[str, np.ndarray]]:
    kind = _kind(f)
    if kind == "image":
        imgs = _raster_images(f, normalize)
    elif kind == "nifti":
        imgs = _stack_to_list(read_nifti(f, normalize))
    elif kind == "h5":
        imgs = _stack_to_list(read_fastmri(f, normalize=normalize))
    elif kind == "dicom":
        a = read_dicom(f, normalize)
        imgs = _stack_to_list(a) if a.ndim == 3 else [a]
    else:
        raise DataError(
            f"don't know how to read '{f}': supported are images ({', '.join(IMAGE_SUFFIXES)}), DICOM "
            f"({', '.join(DICOM_SUFFIXES)}), NIfTI ({', '.join(NIFTI_SUFFIXES[:2])}) and fastMRI .h5"
        )
    if len(imgs) == 1:
        return [("", imgs[0])]
    return [(f":{i}", im) for i, im in enumerate(imgs)]
