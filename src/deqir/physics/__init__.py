"""Exact, block-structured measurement operators (no learning here).

Names load lazily, so ``import deqir.physics`` stays cheap.

Example:
    >>> import torch
    >>> from deqir.physics import ParallelBeamCT
    >>> ct = ParallelBeamCT(64, num_angles=90)
    >>> y = ct.A(torch.rand(1, 1, 64, 64))
    >>> tuple(y.shape)
    (1, 1, 90, 91)
"""

from __future__ import annotations

from deqir._lazy import lazy_exports

_EXPORTS = {
    "LinearOperator": "base",
    "SelectedBlocks": "base",
    "ComposedOperator": "base",
    "BlockSampler": "sampling",
    "SagaGradient": "sampling",
    "GaussianNoise": "noise",
    "Blur": "blur",
    "SuperResolution": "blur",
    "blur_kernel": "blur",
    "ParallelBeamCT": "ct",
    "SingleCoilMRI": "mri",
    "MultiCoilMRI": "mri",
    "cartesian_mask": "masks",
    "radial_mask": "masks",
    "coil_sensitivities": "mri",
    "OPERATORS": "registry",
    "build_operator": "registry",
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
