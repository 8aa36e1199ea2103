"""Pieces shared by the iterative baselines: inputs, initial estimates, step sizes, data steps.

* :func:`initial_estimate`: the default starting point per operator: Hann-filtered FBP clipped at
  0 for CT, the zero-filled image for MRI, bicubic upsampling for super-resolution, the
  measurement itself for blur, and ``c Aᵀy`` (``c`` the least-squares scale) otherwise;
* :func:`lipschitz`: ``‖A‖²`` (the Lipschitz constant of ``∇g``), cached per operator;
* :func:`data_step`: ``argmin_x ½‖Ax − y‖² + 1/(2γ)‖x − z‖²`` by the operator's ``prox_data``
  when it has one, else by conjugate gradients on ``(I + γAᵀA) x = z + γAᵀy``;
* :class:`BaselineResult`: reconstruction, the engine's per-sample statistics, the
  hyperparameters used and the wall time.

Example:
    >>> import torch
    >>> from deqir.methods.common import initial_estimate, lipschitz
    >>> from deqir.physics.registry import build_operator
    >>> op = build_operator("blur", image_size=32)
    >>> y = op.A(torch.rand(1, 1, 32, 32))
    >>> bool(torch.equal(initial_estimate(op, y), y)), round(lipschitz(op), 3)
    (True, 1.0)
"""

from __future__ import annotations

import contextlib
import math
import weakref
from dataclasses import dataclass, field
from typing import Any

import torch

from deqir.errors import DTypeError, InvalidValueError, unknown_name_message
from deqir.physics.linalg import conjugate_gradient

#: Data-step modes of :func:`data_step`.
DATA_STEPS = ("auto", "prox", "cg")

_NORMS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@dataclass
class BaselineResult:
    """What a baseline reconstruction returns.

    Attributes:
        x: the reconstruction ``(B, C, H, W)``, real.
        stats: the engine's :class:`~deqir.solvers.SolverStats` (per-sample iterations and
            residuals); ``None`` for the closed-form classical methods.
        params: the hyperparameters used (after defaults were filled in).
        method: the method name.
        seconds: wall time of the reconstruction.
    """

    x: torch.Tensor
    stats: Any = None
    params: dict[str, float] = field(default_factory=dict)
    method: str = ""
    seconds: float = 0.0

    @property
    def iterations(self) -> float:
        """Mean iterations per sample (0 for a closed-form method)."""
        if self.stats is None:
            return 0.0
        return float(self.stats.iterations.float().mean())


def check_inputs(op, y: torch.Tensor, x0: torch.Tensor | None = None) -> None:
    """Validate a measurement (shape, dtype, finite values) and an optional starting point.

    Raises:
        ShapeError, DTypeError: wrong shapes or dtypes.
        InvalidValueError: NaN or infinite values in ``y`` or ``x0``.
    """
    if getattr(op, "complex_image", False):
        raise DTypeError(
            f"{type(op).__name__} has complex images; the baselines reconstruct real images: "
            "build the operator with complex_image=False"
        )
    op.check_measurement(y, None)
    if not bool(torch.isfinite(y).all()):
        bad = int((~torch.isfinite(y)).sum())
        raise InvalidValueError(
            f"{type(op).__name__}: measurement y contains {bad} NaN or infinite values; remove or "
            "interpolate them before reconstructing"
        )
    if x0 is not None:
        op.check_image(x0)
        if not bool(torch.isfinite(x0).all()):
            raise InvalidValueError("the initial estimate x0 contains NaN or infinite values")


def lipschitz(op) -> float:
    """``‖A‖²``, the Lipschitz constant of ``∇g``; computed once per operator and cached.

    Example:
        >>> from deqir.physics.registry import build_operator
        >>> round(lipschitz(build_operator("mri_single", 32)), 3)
        1.0
    """
    try:
        cached = _NORMS.get(op)
    except TypeError:
        cached = None
    if cached is None:
        cached = float(op.norm()) ** 2
        with contextlib.suppress(TypeError):
            _NORMS[op] = cached
    return cached


def inverse_softplus(value: float) -> float:
    """The raw parameter whose softplus is ``value`` (> 0): how positive learnable weights start.

    Example:
        >>> import torch
        >>> round(float(torch.nn.functional.softplus(torch.tensor(inverse_softplus(0.3)))), 6)
        0.3
    """
    return value + math.log(-math.expm1(-value))


def _real_dtype_of(y: torch.Tensor) -> torch.dtype:
    return y.real.dtype if y.is_complex() else y.dtype


def initial_estimate(op, y: torch.Tensor) -> torch.Tensor:
    """Default starting point of the iterative baselines for operator ``op``.

    * CT (``op.fbp``): Hann-filtered FBP, clipped at 0 (ODER's initialisation);
    * MRI (``op.zero_filled``): the zero-filled image ``Aᴴy``;
    * super-resolution (``op.factor``): bicubic upsampling of ``y``;
    * blur (measurements shaped like images): ``y`` itself;
    * anything else: ``c Aᵀy`` with ``c = <AAᵀy, y> / ‖AAᵀy‖²``.

    Pass ``x0=`` to any baseline to override it.

    Example:
        >>> import torch
        >>> from deqir.physics.registry import build_operator
        >>> op = build_operator("superres", image_size=32)
        >>> initial_estimate(op, op.A(torch.rand(1, 1, 32, 32))).shape
        torch.Size([1, 1, 32, 32])
    """
    with torch.no_grad():
        if hasattr(op, "fbp"):
            return op.fbp(y, filter="hann").clamp_min(0)
        if hasattr(op, "zero_filled"):
            x = op.zero_filled(y)
            return x.abs() if x.is_complex() else x
        factor = getattr(op, "factor", None)
        if isinstance(factor, int) and factor > 1 and not y.is_complex():
            x = torch.nn.functional.interpolate(y, scale_factor=factor, mode="bicubic", align_corners=False)
            if tuple(x.shape[1:]) == tuple(op.image_shape):
                return x
        if tuple(y.shape[1:]) == tuple(op.image_shape) and not y.is_complex():
            return y.clone()
        x = op.A_adjoint(y)
        ax = op.A(x)
        num = (ax.conj() * y).real.flatten(1).sum(1) if ax.is_complex() else (ax * y).flatten(1).sum(1)
        den = ax.abs().pow(2).flatten(1).sum(1).clamp_min(1e-30)
        return x * (num / den).reshape(-1, *([1] * (x.dim() - 1)))


def data_step(
    op,
    z: torch.Tensor,
    y: torch.Tensor,
    gamma: float,
    mode: str = "auto",
    x0: torch.Tensor | None = None,
    cg_tol: float = 1e-5,
    cg_iter: int = 30,
) -> torch.Tensor:
    """``argmin_x ½‖Ax − y‖² + 1/(2γ)‖x − z‖²``.

    Args:
        op: the operator.
        z: the point ``(B, C, H, W)``.
        y: the measurements.
        gamma: the step ``γ > 0`` (``1/ρ`` in ADMM notation).
        mode: ``"prox"`` (the operator's ``prox_data``; an error if it has none), ``"cg"``
            (conjugate gradients on ``(I + γAᵀA) x = z + γAᵀy``) or ``"auto"`` (``prox`` when
            available).
        x0: CG warm start (default ``z``).
        cg_tol, cg_iter: CG relative tolerance and most iterations.

    CG solves for the correction ``d = x − x0`` of the warm start,
    ``(I + γAᵀA) d = (z − x0) + γAᵀ(y − A x0)``, so ``cg_tol`` is relative to the warm start's
    own residual. (Solving ``(I + γAᵀA) x = z + γAᵀy`` with a tolerance relative to that large
    right-hand side stopped at once near a solution: with ``γ ~ 256/‖A‖²`` PnP-ADMM on CT
    returned its warm start unchanged from about iteration 35 on, a data step left unsolved.)

    Example:
        >>> import torch
        >>> from deqir.physics.registry import build_operator
        >>> op = build_operator("blur", image_size=16)
        >>> z = torch.rand(1, 1, 16, 16); y = op.A(z)
        >>> a = data_step(op, z, y, 0.5, "prox"); b = data_step(op, z, y, 0.5, "cg", cg_tol=1e-8)
        >>> bool((a - b).abs().max() < 1e-4)
        True
    """
    if mode not in DATA_STEPS:
        raise InvalidValueError(unknown_name_message("data step", mode, DATA_STEPS))
    if mode == "prox" and not hasattr(op, "prox_data"):
        raise InvalidValueError(f"{type(op).__name__} has no prox_data(); use data_step='cg' (or 'auto')")
    if mode in ("prox", "auto") and hasattr(op, "prox_data"):
        x = op.prox_data(z, y, gamma)
        return x.real if x.is_complex() else x
    start = z if x0 is None else x0
    rhs = (z - start) + gamma * op.A_adjoint(y - op.A(start))
    correction = conjugate_gradient(
        lambda v: v + gamma * op.A_adjoint_A(v), rhs, torch.zeros_like(start), tol=cg_tol, max_iter=cg_iter
    )
    return start + correction


def make_solver(iterations: int, tol: float, accelerate: bool):
    """The engine solver of the baselines: a fixed count when ``tol == 0``.

    Example:
        >>> make_solver(10, 0.0, accelerate=True).name
        'Nesterov'
    """
    from deqir.solvers import FixedPointIteration, Nesterov

    if int(iterations) < 1:
        raise InvalidValueError(f"iterations must be at least 1; got {iterations}")
    if not tol >= 0:
        raise InvalidValueError(f"tol must be >= 0; got {tol}")
    cls = Nesterov if accelerate else FixedPointIteration
    return cls(tol=float(tol), max_iter=int(iterations), divergence=1e12)


Bounds = tuple[float | None, float | None] | None


def project(x: torch.Tensor, bounds: Bounds) -> torch.Tensor:
    """Clip ``x`` to ``bounds = (low, high)`` (either may be ``None``; ``None``: no clipping).

    Example:
        >>> import torch
        >>> project(torch.tensor([-1.0, 0.5, 2.0]), (0.0, None)).tolist()
        [0.0, 0.5, 2.0]
    """
    if bounds is None:
        return x
    lo, hi = check_bounds(bounds)
    return x.clamp(min=lo, max=hi)


def check_bounds(bounds: Any) -> tuple[float | None, float | None]:
    """Validate ``(low, high)`` bounds of the iterate."""
    try:
        lo, hi = bounds
    except (TypeError, ValueError):
        raise InvalidValueError(
            f"bounds must be a pair (low, high), e.g. (0, 1) or (0, None); got {bounds!r}"
        ) from None
    if lo is not None and hi is not None and not float(lo) < float(hi):
        raise InvalidValueError(f"bounds must have low < high; got {bounds!r}")
    return (None if lo is None else float(lo)), (None if hi is None else float(hi))


def positive(name: str, value: Any) -> float:
    """``float(value)``, checked to be finite and positive (an actionable error otherwise)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InvalidValueError(f"{name} must be a positive number; got {value!r}") from None
    if not (v > 0 and v < float("inf")):
        raise InvalidValueError(f"{name} must be a positive finite number; got {value!r}")
    return v
