"""deqir.data: readers (on small files made here), offline sources, splits and cache, patches, phantoms."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from deqir.data import (
    ImageDataset,
    PatchDataset,
    build_all,
    build_dataset,
    default_cache_dir,
    dihedral,
    fit_image,
    get_source,
    list_sources,
    normalize_image,
    random_ellipses,
    read_dicom,
    read_dicom_series,
    read_fastmri,
    read_fastmri_kspace,
    read_image,
    read_image_folder,
    read_nifti,
    read_path,
    rss_from_kspace,
    shepp_logan,
    split_samples,
)
from deqir.data.sources import Entry, Provider, Sample, Source, register_source
from deqir.errors import DataError, InvalidValueError, ShapeError

RNG = np.random.default_rng(0)


# ----------------------------------------------------------------------------------------------
# helpers writing small files of each format
# ----------------------------------------------------------------------------------------------
def _png(path: Path, array: np.ndarray) -> Path:
    from PIL import Image

    Image.fromarray(array).save(path)
    return path


def _dicom(
    path: Path,
    pixels: np.ndarray,
    instance: int = 1,
    z: float = 0.0,
    intercept: float = -1024.0,
    with_pixels: bool = True,
) -> Path:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = [0.0, 0.0, z]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.RescaleSlope = 1
    ds.RescaleIntercept = intercept
    if with_pixels:
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.PixelData = pixels.astype("<i2").tobytes()
    try:
        ds.save_as(path, enforce_file_format=True)
    except TypeError:  # pydicom < 3
        ds.is_little_endian, ds.is_implicit_VR = True, False
        ds.save_as(path, write_like_original=False)
    return path


def _nifti(path: Path, volume: np.ndarray) -> Path:
    import nibabel as nib

    nib.save(nib.Nifti1Image(volume.astype(np.float32), np.eye(4)), str(path))
    return path


def _fastmri(path: Path, rss: np.ndarray | None, kspace: np.ndarray | None) -> Path:
    import h5py

    with h5py.File(path, "w") as f:
        if rss is not None:
            f["reconstruction_rss"] = rss.astype(np.float32)
        if kspace is not None:
            f["kspace"] = kspace.astype(np.complex64)
        f.attrs["acquisition"] = "CORPD_FBK"
        f.attrs["max"] = 1.5
    return path


# ----------------------------------------------------------------------------------------------
# import cost and normalisation
# ----------------------------------------------------------------------------------------------
def test_import_is_cheap():
    code = (
        "import sys, deqir.data; heavy = [m for m in ('skimage', 'pydicom', 'nibabel', 'h5py', 'PIL', "
        "'matplotlib') if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_normalize_image_modes():
    u8 = np.array([0, 51, 255], np.uint8)
    np.testing.assert_allclose(normalize_image(u8), [0, 0.2, 1], atol=1e-6)
    f = np.linspace(-5, 5, 1001)
    f[0] = 1e6  # one hot pixel does not squash the robust range
    out = normalize_image(f, "percentile")
    assert out.dtype == np.float32 and out.min() == 0 and out.max() == 1
    assert 0.45 < out[500] < 0.55
    hu = np.array([-1000.0, 500, 3000])
    np.testing.assert_allclose(normalize_image(hu, window=(-1000, 2000)), [0, 0.5, 1])
    assert not normalize_image(np.full((3, 3), 7.0)).any()
    assert np.isfinite(normalize_image(np.array([np.nan, 1.0, 2.0]))).all()
    with pytest.raises(InvalidValueError, match="did you mean"):
        normalize_image(u8, "percentil")


# ----------------------------------------------------------------------------------------------
# raster images
# ----------------------------------------------------------------------------------------------
def test_read_png_grey_colour_and_16bit(tmp_path):
    grey = RNG.integers(0, 256, (12, 10), dtype=np.uint8)
    img = read_image(_png(tmp_path / "g.png", grey))
    assert img.shape == (12, 10) and img.dtype == np.float32
    np.testing.assert_allclose(img, grey / 255.0, atol=1e-6)
    rgb = np.zeros((6, 7, 3), np.uint8)
    rgb[..., 1] = 255
    np.testing.assert_allclose(read_image(_png(tmp_path / "c.png", rgb)), 0.7154, atol=1e-4)
    deep = np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000
    out = read_image(_png(tmp_path / "d.png", deep))
    assert out.min() == 0 and out.max() == 1 and out.shape == (8, 8)


def test_read_jpg_and_tiff_stack(tmp_path):
    import tifffile
    from PIL import Image

    Image.fromarray(np.full((16, 16, 3), 128, np.uint8)).save(tmp_path / "a.jpg")
    assert abs(float(read_image(tmp_path / "a.jpg").mean()) - 128 / 255) < 0.02
    tifffile.imwrite(tmp_path / "s.tif", RNG.random((3, 8, 9)).astype(np.float32), photometric="minisblack")
    stack = read_path(tmp_path / "s.tif")
    assert len(stack) == 3 and stack[0].shape == (8, 9)
    with pytest.raises(DataError, match="stack of 3"):
        read_image(tmp_path / "s.tif")


def test_read_image_folder_sorted_and_errors(tmp_path):
    for i in (2, 0, 1):
        _png(tmp_path / f"im{i}.png", np.full((5, 5), 50 * i, np.uint8))
    (tmp_path / "notes.txt").write_text("not an image")
    imgs = read_image_folder(tmp_path)
    assert [round(float(im.mean()) * 255) for im in imgs] == [0, 50, 100]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no images in folder"):
        read_image_folder(empty)
    with pytest.raises(DataError, match="does not exist"):
        read_image_folder(tmp_path / "missing")
    with pytest.raises(DataError, match="does not exist"):
        read_image(tmp_path / "missing.png")


def test_corrupt_image_names_the_file(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(DataError, match="broken.png") as info:
        read_image(bad)
    assert info.value.__cause__ is None and info.value.__suppress_context__
    _png(tmp_path / "good.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(DataError, match="broken.png"):
        read_image_folder(tmp_path)


# ----------------------------------------------------------------------------------------------
# DICOM
# ----------------------------------------------------------------------------------------------
def test_read_dicom_rescale_and_window(tmp_path):
    pytest.importorskip("pydicom")
    raw = np.array([[0, 1024], [2024, 3024]], np.int16)  # HU = raw - 1024: -1024, 0, 1000, 2000
    path = _dicom(tmp_path / "ct.dcm", raw)
    out = read_dicom(path, window=(-1000, 1000))
    np.testing.assert_allclose(out, [[0, 0.5], [1, 1]])
    auto = read_dicom(path)
    assert auto.dtype == np.float32 and auto.min() == 0 and auto.max() == 1


def test_read_dicom_series_sorts_by_position(tmp_path):
    pytest.importorskip("pydicom")
    series = tmp_path / "series"
    series.mkdir()
    # file names in reverse order of position; instance numbers scrambled
    for name, value, z, inst in [("a.dcm", 300, 20.0, 2), ("b.dcm", 200, 10.0, 3), ("c.dcm", 100, 0.0, 1)]:
        _dicom(series / name, np.full((4, 4), value, np.int16), instance=inst, z=z, intercept=0)
    vol = read_dicom_series(series, normalize="minmax")
    assert vol.shape == (3, 4, 4)
    np.testing.assert_allclose(vol[:, 0, 0], [0, 0.5, 1])
    assert [len(x) for x in [read_path(series)]] == [3]


def test_dicom_errors(tmp_path):
    pytest.importorskip("pydicom")
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"this is not dicom at all" * 20)
    with pytest.raises(DataError, match="bad.dcm"):
        read_dicom(bad)
    nopix = _dicom(tmp_path / "nopix.dcm", np.zeros((2, 2)), with_pixels=False)
    with pytest.raises(DataError, match="no pixel data"):
        read_dicom(nopix)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no DICOM files"):
        read_dicom_series(empty)
    with pytest.raises(DataError, match="does not exist"):
        read_dicom(tmp_path / "nope.dcm")


# ----------------------------------------------------------------------------------------------
# NIfTI
# ----------------------------------------------------------------------------------------------
def test_read_nifti_axial_slices_anterior_up(tmp_path):
    pytest.importorskip("nibabel")
    vol = np.zeros((6, 5, 4), np.float32)  # (x: right, y: anterior, z: superior)
    vol[:, 4, :] = 1.0  # the most anterior row
    vol[:, :, 3] += 2.0  # the top slice is brighter
    slices = read_nifti(_nifti(tmp_path / "v.nii.gz", vol), normalize="minmax")
    assert slices.shape == (4, 5, 6) and slices.dtype == np.float32
    assert slices[0, 0].min() > 0 and slices[0, 1:].max() == 0  # anterior is the top row
    assert slices[3].mean() > slices[0].mean()
    assert read_nifti(tmp_path / "v.nii.gz", axis=0).shape == (6, 4, 5)


def test_read_nifti_4d_and_errors(tmp_path):
    pytest.importorskip("nibabel")
    path = _nifti(tmp_path / "t.nii", RNG.random((4, 4, 3, 2)))
    assert read_nifti(path, volume_index=1).shape == (3, 4, 4)
    with pytest.raises(DataError, match="volume_index"):
        read_nifti(path, volume_index=5)
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"\x1f\x8b" + b"broken gzip")
    with pytest.raises(DataError, match="bad.nii.gz"):
        read_nifti(bad)


# ----------------------------------------------------------------------------------------------
# fastMRI
# ----------------------------------------------------------------------------------------------
def _kspace(shape=(2, 3, 8, 8)):
    img = RNG.random(shape) + 1j * RNG.random(shape)
    k = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(img, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
    return k, img


def test_read_fastmri_images_and_kspace(tmp_path):
    pytest.importorskip("h5py")
    kspace, img = _kspace()
    rss = np.sqrt((np.abs(img) ** 2).sum(1))
    path = _fastmri(tmp_path / "file1.h5", rss, kspace)
    raw = read_fastmri(path, normalize="none")
    np.testing.assert_allclose(raw, rss, rtol=1e-5)
    assert read_fastmri(path, slices=[1]).shape == (1, 8, 8)
    k, attrs = read_fastmri_kspace(path)
    assert k.dtype == np.complex64 and k.shape == (2, 3, 8, 8)
    assert attrs["acquisition"] == "CORPD_FBK" and attrs["max"] == 1.5
    np.testing.assert_allclose(rss_from_kspace(k), rss, rtol=1e-4)
    only_k = _fastmri(tmp_path / "test_set.h5", None, kspace)
    np.testing.assert_allclose(read_fastmri(only_k, normalize="none"), rss, rtol=1e-4)


def test_fastmri_errors(tmp_path):
    pytest.importorskip("h5py")
    path = _fastmri(tmp_path / "images_only.h5", np.ones((1, 4, 4)), None)
    with pytest.raises(DataError, match="no 'kspace'"):
        read_fastmri_kspace(path)
    with pytest.raises(DataError, match="reconstruction_esc"):
        read_fastmri(path, key="reconstruction_esc")
    bad = tmp_path / "truncated.h5"
    bad.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    with pytest.raises(DataError, match="truncated.h5"):
        read_fastmri(bad)


def test_read_path_mixed_folder(tmp_path):
    pytest.importorskip("nibabel")
    _png(tmp_path / "a.png", np.zeros((6, 6), np.uint8))
    _nifti(tmp_path / "b.nii.gz", RNG.random((6, 6, 2)))
    (tmp_path / "readme.txt").write_text("ignored")
    assert len(read_path(tmp_path)) == 3
    with pytest.raises(DataError, match="don't know how to read"):
        read_path(tmp_path / "readme.txt")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no readable data"):
        read_path(empty)


# ----------------------------------------------------------------------------------------------
# phantoms
# ----------------------------------------------------------------------------------------------
def test_phantoms_seeded_and_in_range():
    a = random_ellipses(48, generator=5)
    assert a.shape == (48, 48) and a.dtype == np.float32
    assert a.min() >= 0 and a.max() <= 1 and a.std() > 0.05
    np.testing.assert_array_equal(a, random_ellipses(48, generator=torch.Generator().manual_seed(5)))
    assert not np.array_equal(a, random_ellipses(48, generator=6))
    g = torch.Generator().manual_seed(1)
    assert not np.array_equal(random_ellipses(32, g), random_ellipses(32, g))  # the generator advances
    sl = shepp_logan(64)
    assert sl.shape == (64, 64) and sl.max() <= 1 and sl.min() >= 0


def test_shepp_logan_matches_scikit_image():
    from skimage.data import shepp_logan_phantom

    ref = shepp_logan_phantom()  # 400 x 400, same ellipse table
    ours = shepp_logan(400)
    assert np.abs(ours - ref).mean() < 0.01 and (np.abs(ours - ref) > 0.05).mean() < 0.02
    with pytest.raises(InvalidValueError):
        random_ellipses(2)


# ----------------------------------------------------------------------------------------------
# sources
# ----------------------------------------------------------------------------------------------
def test_list_sources_reports_availability():
    info = {s["name"]: s for s in list_sources()}
    assert {"natural", "ct", "ct_phantoms", "brain"} <= set(info)
    assert info["ct_phantoms"]["available"] and info["natural"]["available"]
    for s in info.values():
        for p in s["providers"]:
            assert p["hint"] and (p["entries"] is None) == (not p["available"])


def test_missing_provider_logs_one_line_with_hint(caplog):
    never = Provider(
        "not-a-real-package-xyz",
        "pip install not-a-real-package-xyz --no-deps",
        lambda: False,
        lambda count: [],
    )
    here = Provider(
        "here",
        "built in",
        lambda: True,
        lambda count: [Entry("one", lambda size: [Sample("one", np.zeros((8, 8), np.float32))])],
    )
    src = register_source(Source("test_missing_xyz", "test", (never, here)), overwrite=True)
    try:
        with caplog.at_level(logging.WARNING, logger="deqir.data"):
            assert [e.key for e in src.entries()] == ["one"]
            src.entries()
        lines = [r.getMessage() for r in caplog.records if "not-a-real-package-xyz" in r.getMessage()]
        assert len(lines) == 1 and "pip install not-a-real-package-xyz --no-deps" in lines[0]
        assert src.skipped()[0]["hint"].startswith("pip install")
    finally:
        from deqir.data.sources import SOURCES

        SOURCES.pop("test_missing_xyz", None)


def test_unknown_source_suggests():
    with pytest.raises(InvalidValueError, match="did you mean 'natural'"):
        build_dataset("natral", 32, use_cache=False)


def test_real_ct_slices_offline():
    pytest.importorskip("pydicom")
    samples = get_source("ct").load()
    assert len(samples) >= 2  # pydicom's own test files; four with pydicom-data
    for s in samples:
        assert s.image.ndim == 2 and s.image.dtype == np.float32
        assert s.image.min() >= 0 and s.image.max() <= 1 and s.image.std() > 0.01


def test_natural_and_brain_entries_load():
    natural = {e.key: e for e in get_source("natural").entries()}
    cam = natural["skimage/camera"].load()[0].image
    assert cam.shape == (512, 512) and cam.min() >= 0 and cam.max() <= 1
    brain = {e.key: e for e in get_source("brain").entries()}
    head = brain["matplotlib/s1045"].load()[0].image
    assert head.shape == (256, 256) and head.max() == 1 and (head > 0.1).mean() > 0.2


# ----------------------------------------------------------------------------------------------
# splits and cache
# ----------------------------------------------------------------------------------------------
def _samples(n_photos=10, n_slices=40):
    out = [Sample(f"photo{i}", np.zeros((2, 2), np.float32), f"photo{i}") for i in range(n_photos)]
    out += [Sample(f"vol:z={z:03d}", np.zeros((2, 2), np.float32), "vol", z) for z in range(n_slices)]
    return out


def test_split_samples_deterministic_disjoint_and_order_free():
    s = _samples()
    a = split_samples(s, (0.6, 0.2, 0.2), seed=0)
    b = split_samples(list(reversed(s)), (0.6, 0.2, 0.2), seed=0)
    keys = {k: [x.key for x in v] for k, v in a.items()}
    assert keys == {k: [x.key for x in v] for k, v in b.items()}
    sets = [set(v) for v in keys.values()]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    c = split_samples(s, (0.6, 0.2, 0.2), seed=1)
    assert [x.key for x in c["test"]] != keys["test"]
    n = len(keys["train"]) + len(keys["val"]) + len(keys["test"])
    assert len(keys["test"]) == len(keys["val"]) == round(0.2 * 40)  # 10 photos + 30 kept slices
    assert n <= 40


def test_split_keeps_volume_neighbours_apart():
    parts = split_samples(_samples(0, 64), (0.5, 0.25, 0.25), seed=3, block=8, gap=2)
    z = {k: {x.index for x in v} for k, v in parts.items()}
    for a in z:
        for b in z:
            if a != b:
                assert min(abs(i - j) for i in z[a] for j in z[b]) >= 3


def test_split_counts_and_errors():
    s = _samples(10, 0)
    parts = split_samples(s, (5, 2, 3))
    assert [len(parts[k]) for k in ("train", "val", "test")] == [5, 2, 3]
    with pytest.raises(DataError, match="has 10"):
        split_samples(s, (8, 2, 3))
    with pytest.raises(InvalidValueError):
        split_samples(s, (0.8, 0.3, 0.1))
    tiny = split_samples(s[:1], (0.8, 0.1, 0.1))  # one image: it goes to test, nothing leaks
    assert [len(tiny[k]) for k in ("train", "val", "test")] == [0, 0, 1]
    with pytest.raises(InvalidValueError):
        split_samples(s, (1, 2))


def test_build_dataset_caches_and_reloads(tmp_path, caplog):
    kw = dict(splits=(8, 2, 2), count=11, cache_dir=tmp_path)
    first = build_dataset("ct_phantoms", 32, **kw)
    assert first.counts() == {"train": 8, "val": 2, "test": 2} and not first.info["from_cache"]
    assert first.train[0].shape == (1, 32, 32) and first.train[0].dtype == torch.float32
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and files[0].suffix == ".npz"  # no temporary file left behind
    second = build_dataset("ct_phantoms", 32, **kw)
    assert second.info["from_cache"]
    for name in ("train", "val", "test"):
        assert first[name].keys == second[name].keys
        torch.testing.assert_close(first[name].stack(), second[name].stack(), rtol=0, atol=0)
    held_out = set(first.test.keys) | set(first.val.keys)
    assert not held_out & set(first.train.keys)
    # a corrupt cache file is rebuilt, with a log line
    files[0].write_bytes(files[0].read_bytes()[:200])
    with caplog.at_level(logging.WARNING, logger="deqir.data"):
        third = build_dataset("ct_phantoms", 32, **kw)
    assert not third.info["from_cache"] and any("rebuilding" in r.getMessage() for r in caplog.records)
    torch.testing.assert_close(third.test.stack(), first.test.stack(), rtol=0, atol=0)
    assert build_dataset("ct_phantoms", 32, **kw).info["from_cache"]


def test_build_dataset_cache_dir_from_env_and_unwritable(tmp_path, monkeypatch):
    monkeypatch.setenv("DEQIR_CACHE", str(tmp_path / "envcache"))
    assert default_cache_dir() == tmp_path / "envcache"
    ds = build_dataset("ct_phantoms", 16, splits=(2, 1, 1), count=3)
    assert Path(ds.info["cache"]).parent == tmp_path / "envcache"
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(DataError, match="DEQIR_CACHE"):
        build_dataset("ct_phantoms", 16, splits=(2, 1, 1), count=3, cache_dir=blocker / "sub")


def test_build_dataset_from_user_folder(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(6):
        _png(photos / f"p{i}.png", RNG.integers(0, 256, (20, 30), dtype=np.uint8))
    ds = build_dataset(photos, 16, splits=(4, 1, 1), cache_dir=tmp_path / "cache", fit="crop")
    assert ds.counts() == {"train": 4, "val": 1, "test": 1}
    assert ds.train.stack().shape == (4, 1, 16, 16)
    again = build_dataset(photos, 16, splits=(4, 1, 1), cache_dir=tmp_path / "cache", fit="crop")
    assert again.info["from_cache"] and again.test.keys == ds.test.keys
    with pytest.raises(DataError, match="does not exist"):
        build_dataset(tmp_path / "nothing_here", 16)


def test_fit_image_modes():
    padded = fit_image(np.ones((20, 40), np.float32), 40, "pad")
    assert padded.shape == (40, 40) and padded[:10].max() == 0 and padded[15:25].min() == 1
    cropped = fit_image(np.arange(800, dtype=np.float32).reshape(20, 40) / 800, 20, "crop")
    assert abs(float(cropped[0, 0]) - 10 / 800) < 1e-6
    assert fit_image(np.ones((20, 40), np.float32), 10, "resize").shape == (10, 10)
    with pytest.raises(InvalidValueError):
        fit_image(np.ones((4, 4)), 4, "zoom")


def test_build_dataset_native_size():
    pytest.importorskip("pydicom")
    ds = build_dataset("ct", None, use_cache=False)
    sizes = {tuple(t.shape) for t in ds.test}
    assert (1, 128, 128) in sizes and (1, 512, 512) in sizes
    assert ds.counts()["train"] == 0


def test_build_all_summary(tmp_path):
    summary = build_all(32, tmp_path, sources=["ct_phantoms"])
    entry = summary["sources"]["ct_phantoms"]
    assert entry["train"] + entry["val"] + entry["test"] == 201 and entry["test"] == 20
    assert summary["cache_dir"] == str(tmp_path) and isinstance(summary["skipped"], list)


# ----------------------------------------------------------------------------------------------
# datasets and patches
# ----------------------------------------------------------------------------------------------
def test_image_dataset_shapes():
    ds = ImageDataset([np.zeros((4, 5)), torch.zeros(1, 6, 6)], keys=["a", "b"])
    assert ds[0].shape == (1, 4, 5) and ds[1].shape == (1, 6, 6)
    with pytest.raises(ShapeError):
        ds.stack()
    with pytest.raises(ShapeError):
        ImageDataset(torch.zeros(2, 3, 4, 4))
    with pytest.raises(ShapeError):
        ImageDataset([np.zeros((4, 4))], keys=["a", "b"])


def test_dihedral_group():
    x = torch.arange(9.0).reshape(1, 3, 3)
    outs = {tuple(dihedral(x, k).flatten().tolist()) for k in range(8)}
    assert len(outs) == 8
    assert torch.equal(dihedral(x, 0), x)
    with pytest.raises(InvalidValueError):
        dihedral(x, 8)


def test_patch_dataset_reproducible_and_augmented():
    images = [torch.rand(1, 40, 50, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    ds = PatchDataset(images, patch_size=8, patches_per_epoch=50, seed=7)
    again = PatchDataset(images, patch_size=8, patches_per_epoch=50, seed=7)
    assert len(ds) == 50 and ds[0].shape == (1, 8, 8)
    for i in (49, 0, 17):  # any order gives the same patches
        assert torch.equal(ds[i], again[i])
    other = PatchDataset(images, patch_size=8, patches_per_epoch=50, seed=8)
    assert any(not torch.equal(ds[i], other[i]) for i in range(10))
    before = [ds[i] for i in range(5)]
    ds.set_epoch(1)
    assert any(not torch.equal(b, ds[i]) for i, b in enumerate(before))
    ks = {ds.params(i)[3] for i in range(50)}
    assert len(ks) > 4
    with pytest.raises(IndexError):
        ds[50]


def test_patch_dataset_without_augment_is_a_crop():
    img = torch.rand(1, 20, 24, generator=torch.Generator().manual_seed(0))
    ds = PatchDataset(torch.stack([img]), patch_size=5, patches_per_epoch=10, augment=False, seed=0)
    for i in range(10):
        n, top, left, k = ds.params(i)
        assert n == 0 and k == 0 and 0 <= top <= 15 and 0 <= left <= 19
        assert torch.equal(ds[i], img[:, top : top + 5, left : left + 5])
    loader = torch.utils.data.DataLoader(ds, batch_size=4)
    assert next(iter(loader)).shape == (4, 1, 5, 5)


def test_patch_dataset_errors():
    with pytest.raises(ShapeError, match="smaller than patch_size"):
        PatchDataset([torch.zeros(1, 4, 4)], patch_size=8, patches_per_epoch=1)
    with pytest.raises(InvalidValueError):
        PatchDataset([torch.zeros(1, 4, 4)], patch_size=0, patches_per_epoch=1)
    with pytest.raises(ShapeError):
        PatchDataset([], patch_size=2, patches_per_epoch=1)


def test_patch_dataset_from_built_split(tmp_path):
    ds = build_dataset("ct_phantoms", 32, splits=(3, 1, 1), count=4, cache_dir=tmp_path)
    patches = PatchDataset(ds.train, patch_size=16, patches_per_epoch=6, seed=0)
    assert torch.stack([patches[i] for i in range(6)]).shape == (6, 1, 16, 16)


@pytest.mark.skipif(os.environ.get("DEQIR_TEST_ALL_SOURCES") != "1", reason="set DEQIR_TEST_ALL_SOURCES=1")
def test_all_standard_sources_build(tmp_path):  # pragma: no cover - slow, run by hand
    summary = build_all(64, tmp_path)
    assert all("error" not in v for v in summary["sources"].values())
