"""Images for training and testing: offline sources, readers, cached splits, patches, phantoms.

Importing ``deqir.data`` is cheap: the names below load their module on first use, and heavy
packages (scikit-image, pydicom, nibabel, h5py, PIL) are imported inside the functions.

- Sources (:mod:`deqir.data.sources`): ``"natural"``, ``"ct"``, ``"ct_phantoms"``, ``"brain"``;
  :func:`list_sources` says which providers are installed here.
- Readers (:mod:`deqir.data.readers`): PNG/TIFF/JPG, DICOM files and series, NIfTI, fastMRI ``.h5``.
- Splits and cache (:mod:`deqir.data.splits`): :func:`build_dataset`, :func:`build_all`.
- Patches (:mod:`deqir.data.patches`): :class:`PatchDataset`.
- Phantoms (:mod:`deqir.data.phantoms`): Shepp–Logan and random ellipses.

Example:
    >>> import tempfile
    >>> from deqir.data import build_dataset, PatchDataset
    >>> ds = build_dataset("ct_phantoms", 64, count=10, cache_dir=tempfile.mkdtemp())
    >>> ds.counts()
    {'train': 9, 'val': 1, 'test': 1}
    >>> patches = PatchDataset(ds.train, patch_size=32, patches_per_epoch=100, seed=0)
    >>> tuple(patches[0].shape)
    (1, 32, 32)
"""

from __future__ import annotations

from deqir._lazy import lazy_exports

_EXPORTS = {
    # sources
    "Sample": "sources",
    "Source": "sources",
    "Provider": "sources",
    "Entry": "sources",
    "SOURCES": "sources",
    "get_source": "sources",
    "list_sources": "sources",
    "load_source": "sources",
    "register_source": "sources",
    # readers
    "normalize_image": "readers",
    "to_grey": "readers",
    "read_image": "readers",
    "read_image_folder": "readers",
    "read_dicom": "readers",
    "read_dicom_series": "readers",
    "read_nifti": "readers",
    "read_fastmri": "readers",
    "read_fastmri_kspace": "readers",
    "rss_from_kspace": "readers",
    "read_path": "readers",
    # splits and cache
    "ImageDataset": "splits",
    "DatasetSplits": "splits",
    "build_dataset": "splits",
    "build_all": "splits",
    "default_cache_dir": "splits",
    "fit_image": "splits",
    "split_samples": "splits",
    "training_images": "splits",
    # patches
    "PatchDataset": "patches",
    "dihedral": "patches",
    # phantoms
    "shepp_logan": "phantoms",
    "cell_sample": "idt_samples",
    "cell_samples": "idt_samples",
    "read_idt_stack": "idt_samples",
    "random_ellipses": "phantoms",
    "ellipse_phantoms": "phantoms",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
