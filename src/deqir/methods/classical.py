"""Classical reconstructions: Tikhonov (discrepancy principle), FBP, zero-filled.

These are the references every learned method is compared with; they use the physics layer only.

Example:
    >>> import torch
    >>> from deqir.methods.classical import classical_reconstruction
    >>> from deqir.physics.registry import build_operator
    >>> op = build_operator("ct", image_size=32)
    >>> x = torch.zeros(1, 1, 32, 32); x[..., 8:24, 8:24] = 1
    >>> classical_reconstruction(op, op.A(x), "fbp").shape
    torch.Size([1, 1, 32, 32])
"""

from __future__ import annotations

import math

import torch

from deqir.errors import InvalidValueError, unknown_name_message

#: Classical methods and what each needs from the operator.
CLASSICAL_METHODS = {
    "tikhonov": "prox_data",
    "fbp": "fbp",
    "zero_filled": "zero_filled",
}


def tikhonov_discrepancy(op, y: torch.Tensor, sigma: float, tau: float = 1.0) -> tuple[torch.Tensor, float]:
    """Tikhonov ``argmin ½‖Ax − y‖² + ½λ‖x‖²`` with λ set by Morozov's discrepancy principle.

    Bisects ``log λ`` until ``‖Ax_λ − y‖² = τ² m σ²`` (``m`` measurements), using the operator's
    closed-form ``prox_data`` (``x_λ = prox_{γ f}(0)`` with ``γ = 1/λ``). Needs the noise level,
    never the ground truth.

    Returns:
        The reconstruction and the chosen λ.

    Example:
        >>> import torch
        >>> from deqir.physics.blur import Blur
        >>> op = Blur(32, kernel_size=5, sigma=1.0)
        >>> x = torch.rand(1, 1, 32, 32)
        >>> y = op.A(x) + 0.01 * torch.randn(1, 1, 32, 32)
        >>> rec, lam = tikhonov_discrepancy(op, y, 0.01)
        >>> rec.shape, lam > 0
        (torch.Size([1, 1, 32, 32]), True)
    """
    if not hasattr(op, "prox_data"):
        raise InvalidValueError(f"{type(op).__name__} has no closed-form prox_data; use another baseline")
    target = tau**2 * y.numel() * sigma**2
    dtype = y.dtype if getattr(op, "complex_image", False) else y.real.dtype
    z = torch.zeros((y.shape[0], *op.image_shape), dtype=dtype, device=y.device)
    lo, hi = math.log(1e-8), math.log(1e2)  # residual grows with lambda
    x = op.prox_data(z, y, 1.0 / math.exp(hi))
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        x = op.prox_data(z, y, 1.0 / math.exp(mid))
        residual = float((op.A(x) - y).abs().pow(2).sum())
        if residual > target:
            hi = mid
        else:
            lo = mid
        if hi - lo < 1e-3:
            break
    lam = math.exp(0.5 * (lo + hi))
    return op.prox_data(z, y, 1.0 / lam), lam


def estimate_noise_sigma(y: torch.Tensor) -> float:
    """Noise level of an image-like measurement by the wavelet MAD rule (scikit-image).

    Example:
        >>> import torch
        >>> y = 0.5 + 0.05 * torch.randn(1, 1, 128, 128, generator=torch.Generator().manual_seed(0))
        >>> abs(estimate_noise_sigma(y) - 0.05) < 0.005
        True
    """
    from skimage.restoration import estimate_sigma

    a = y.detach().abs() if y.is_complex() else y.detach()
    values = [
        estimate_sigma(a[b, c].double().cpu().numpy()) for b in range(a.shape[0]) for c in range(a.shape[1])
    ]
    return float(sum(values) / len(values))


def classical_reconstruction(
    op, y: torch.Tensor, method: str, noise_sigma: float | None = None
) -> torch.Tensor:
    """Reconstruct ``y`` with a classical method of :data:`CLASSICAL_METHODS`.

    Args:
        op: the measurement operator.
        y: measurements.
        method: ``"tikhonov"`` (needs ``op.prox_data``; ``noise_sigma`` defaults to the wavelet
            MAD estimate on ``y``), ``"fbp"`` (Hann filter; CT) or ``"zero_filled"`` (MRI).
        noise_sigma: per-entry noise standard deviation, if known.

    Returns:
        Real images ``(B, C, N, N)`` (magnitude for complex images).

    Raises:
        InvalidValueError: unknown method, or one the operator cannot run.
    """
    if method not in CLASSICAL_METHODS:
        raise InvalidValueError(unknown_name_message("classical method", method, list(CLASSICAL_METHODS)))
    needed = CLASSICAL_METHODS[method]
    if not hasattr(op, needed):
        usable = [m for m, attr in CLASSICAL_METHODS.items() if hasattr(op, attr)]
        raise InvalidValueError(
            f"method '{method}' needs an operator with {needed}(); {type(op).__name__} supports: "
            f"{', '.join(usable) or 'none'}"
        )
    with torch.no_grad():
        if method == "tikhonov":
            sigma = estimate_noise_sigma(y) if noise_sigma is None else float(noise_sigma)
            x, _ = tikhonov_discrepancy(op, y, sigma)
        elif method == "fbp":
            x = op.fbp(y, filter="hann")
        else:
            x = op.zero_filled(y)
    return x.abs() if x.is_complex() else x
