"""Every operator by name, with small defaults: the contract tests and benchmarks loop over it.

Example:
    >>> from deqir.physics.registry import build_operator
    >>> op = build_operator("ct", image_size=32)
    >>> op.num_blocks
    90
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from deqir.errors import InvalidValueError, unknown_name_message
from deqir.physics.base import LinearOperator


def _blur(image_size: int, **kw: Any) -> LinearOperator:
    from deqir.physics.blur import Blur

    kw.setdefault("kernel", "gaussian")
    kw.setdefault("kernel_size", 25)
    kw.setdefault("sigma", 1.6)
    return Blur(image_size, **kw)


def _motion_blur(image_size: int, **kw: Any) -> LinearOperator:
    from deqir.physics.blur import Blur

    kw.setdefault("kernel", "motion")
    kw.setdefault("kernel_size", 15)
    return Blur(image_size, **kw)


def _superres(image_size: int, **kw: Any) -> LinearOperator:
    from deqir.physics.blur import SuperResolution

    kw.setdefault("factor", 2)
    kw.setdefault("kernel", "gaussian")
    kw.setdefault("kernel_size", 9)
    kw.setdefault("sigma", 1.6)
    return SuperResolution(image_size, **kw)


def _ct(image_size: int, **kw: Any) -> LinearOperator:
    from deqir.physics.ct import ParallelBeamCT

    kw.setdefault("num_angles", 90)
    return ParallelBeamCT(image_size, **kw)


def _mri_single(image_size: int, **kw: Any) -> LinearOperator:
    from deqir.physics.mri import SingleCoilMRI

    kw.setdefault("acceleration", 4)
    kw.setdefault("mask_type", "random")
    return SingleCoilMRI(image_size, **kw)


def _mri_radial(image_size: int, **kw: Any) -> LinearOperator:
    from deqir.physics.mri import SingleCoilMRI

    kw.setdefault("mask_type", "radial")
    kw.setdefault("sampling_fraction", 0.3)
    return SingleCoilMRI(image_size, **kw)


def _mri_multi(image_size: int, **kw: Any) -> LinearOperator:
    from deqir.physics.mri import MultiCoilMRI

    kw.setdefault("num_coils", 8)
    kw.setdefault("acceleration", 4)
    return MultiCoilMRI(image_size, **kw)


def _idt(image_size: int, **kw: Any) -> LinearOperator:
    from deqir.physics.idt import IntensityDiffractionTomography

    return IntensityDiffractionTomography(image_size, **kw)


OPERATORS: dict[str, Callable[..., LinearOperator]] = {
    "blur": _blur,
    "motion_blur": _motion_blur,
    "superres": _superres,
    "ct": _ct,
    "mri_single": _mri_single,
    "mri_radial": _mri_radial,
    "mri_multi": _mri_multi,
    "idt": _idt,
}


def build_operator(name: str, image_size: int = 64, **kwargs: Any) -> LinearOperator:
    """Build operator ``name`` for square images of side ``image_size``.

    Args:
        name: one of :data:`OPERATORS`.
        image_size: image side in pixels.
        **kwargs: passed to the operator's constructor (override the defaults above).
    """
    if name not in OPERATORS:
        raise InvalidValueError(unknown_name_message("operator", name, list(OPERATORS)))
    return OPERATORS[name](image_size, **kwargs)
