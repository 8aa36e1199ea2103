"""Small linear-algebra helpers shared by operators and methods.

Example:
    >>> import torch
    >>> from deqir.physics.linalg import conjugate_gradient
    >>> x = conjugate_gradient(lambda v: 2 * v, torch.ones(2, 3), torch.zeros(2, 3))
    >>> round(float(x[0, 0]), 6)
    0.5
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def batch_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Real inner product ``Re <a, b>`` per batch element (complex tensors included)."""
    if a.is_complex():
        return (a.conj() * b).real.flatten(1).sum(1)
    return (a * b).flatten(1).sum(1)


def conjugate_gradient(
    normal: Callable[[torch.Tensor], torch.Tensor],
    rhs: torch.Tensor,
    x0: torch.Tensor,
    tol: float = 1e-6,
    max_iter: int = 50,
) -> torch.Tensor:
    """Solve ``normal(x) = rhs`` (self-adjoint positive definite) per batch element by CG.

    Stops when every element's residual norm is below ``tol`` times its right-hand side's, or
    after ``max_iter`` iterations. Differentiable by autograd through the iterations.
    """
    shape = (-1, *([1] * (rhs.dim() - 1)))
    x = x0
    r = rhs - normal(x)
    p = r
    rs = batch_dot(r, r)
    stop = (tol**2) * batch_dot(rhs, rhs).clamp_min(1e-300)
    for _ in range(int(max_iter)):
        if bool((rs <= stop).all()):
            break
        ap = normal(p)
        alpha = rs / batch_dot(p, ap).clamp_min(1e-300)
        x = x + alpha.reshape(shape) * p
        r = r - alpha.reshape(shape) * ap
        rs_new = batch_dot(r, r)
        p = r + (rs_new / rs.clamp_min(1e-300)).reshape(shape) * p
        rs = rs_new
    return x
