"""Linear measurement operators split into blocks.

Every operator ``A`` is a stack of ``num_blocks`` blocks ``A = [A_1; ...; A_b]`` (CT angles, MRI
coils or groups of k-space lines, IDT illuminations; blur has one block). A minibatch of blocks
``B`` gives the unbiased gradient estimate of ``g(x) = 1/2 ||A x - y||^2``::

    data_grad(x, y, B) = (b / |B|) * sum_{i in B} A_i^T (A_i x - y_i)

Method names follow deepinv (``A``, ``A_adjoint``, ``A_adjoint_A``). The backward of ``A`` is
``A_adjoint`` and the backward of ``A_adjoint`` is ``A`` (a pair of ``torch.autograd.Function``),
so gradients through an operator are exact and twice differentiable, and no autograd graph of
the operator's internals is ever stored.

Subclasses implement three things:

* ``_forward(x, blocks)`` and ``_adjoint(y, blocks)``: the raw maps restricted to ``blocks``
  (``None`` means all blocks; otherwise a sorted 1-D ``LongTensor`` on the CPU). Their cost
  should scale with the number of blocks;
* ``image_shape``: ``(channels, height, width)`` of one image;
* ``measurement_shape(blocks)``: the shape of one measurement restricted to ``blocks``, and
  ``restrict(y, blocks)`` when the block axis is not simply ``block_dim`` of ``y`` (for
  masked k-space, where a restricted measurement keeps the grid and zeroes other blocks).

Example:
    >>> import torch
    >>> from deqir.physics.base import LinearOperator
    >>> class Scale(LinearOperator):
    ...     image_shape = (1, 4, 4)
    ...     def _forward(self, x, blocks):
    ...         return 2 * x
    ...     def _adjoint(self, y, blocks):
    ...         return 2 * y
    ...     def measurement_shape(self, blocks=None):
    ...         return (1, 4, 4)
    >>> op = Scale()
    >>> round(op.norm(), 3)
    2.0
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from deqir.errors import DTypeError, InvalidValueError, ShapeError

Blocks = torch.Tensor | Sequence[int] | None


class _ApplyForward(torch.autograd.Function):
    """``y = A x`` whose backward is ``A^T``: exact and twice differentiable."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, op: LinearOperator, blocks: torch.Tensor | None):
        ctx.op, ctx.blocks, ctx.x_is_complex = op, blocks, x.is_complex()
        return op._forward(x, blocks)

    @staticmethod
    def backward(ctx: Any, grad_y: torch.Tensor):
        grad_x = _ApplyAdjoint.apply(grad_y, ctx.op, ctx.blocks)
        if not ctx.x_is_complex and grad_x.is_complex():
            grad_x = grad_x.real
        return grad_x, None, None


class _ApplyAdjoint(torch.autograd.Function):
    """``x = A^T y`` whose backward is ``A``."""

    @staticmethod
    def forward(ctx: Any, y: torch.Tensor, op: LinearOperator, blocks: torch.Tensor | None):
        ctx.op, ctx.blocks, ctx.y_is_complex = op, blocks, y.is_complex()
        return op._adjoint(y, blocks)

    @staticmethod
    def backward(ctx: Any, grad_x: torch.Tensor):
        grad_y = _ApplyForward.apply(grad_x, ctx.op, ctx.blocks)
        if not ctx.y_is_complex and grad_y.is_complex():
            grad_y = grad_y.real
        return grad_y, None, None


class LinearOperator(torch.nn.Module):
    """A linear operator with block structure; see the module docstring.

    Attributes:
        num_blocks: number of measurement blocks ``b``.
        block_dim: axis of a batched measurement ``(batch, ...)`` that indexes blocks, used by
            the default :meth:`restrict`; ``None`` when a subclass overrides it.
        image_shape: ``(channels, height, width)`` of one image.
        complex_image: whether images are complex (real images are the default; the adjoint of
            an operator from real images to complex measurements then takes the real part).
    """

    num_blocks: int = 1
    block_dim: int | None = None
    image_shape: tuple[int, ...] = ()
    complex_image: bool = False

    # ----------------------------------------------------------------- to implement
    def _forward(self, x: torch.Tensor, blocks: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def _adjoint(self, y: torch.Tensor, blocks: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def measurement_shape(self, blocks: Blocks = None) -> tuple[int, ...]:
        """Shape of one measurement (no batch axis) restricted to ``blocks``."""
        raise NotImplementedError

    @property
    def complex_measurements(self) -> bool:
        """Whether measurements are complex (MRI k-space)."""
        return False

    # ----------------------------------------------------------------- public maps
    def A(self, x: torch.Tensor, blocks: Blocks = None) -> torch.Tensor:
        """Apply the operator restricted to ``blocks`` (all blocks when ``None``)."""
        self.check_image(x)
        return _ApplyForward.apply(x, self, self.as_blocks(blocks))

    def A_adjoint(self, y: torch.Tensor, blocks: Blocks = None) -> torch.Tensor:
        """Apply the adjoint of the operator restricted to ``blocks``."""
        b = self.as_blocks(blocks)
        self.check_measurement(y, b)
        x = _ApplyAdjoint.apply(y, self, b)
        if not self.complex_image and x.is_complex():
            x = x.real
        return x

    def A_adjoint_A(self, x: torch.Tensor, blocks: Blocks = None) -> torch.Tensor:
        """``A^T A x`` restricted to ``blocks`` (no b/w scaling)."""
        return self.A_adjoint(self.A(x, blocks), blocks)

    def forward(self, x: torch.Tensor, blocks: Blocks = None) -> torch.Tensor:  # noqa: D102
        return self.A(x, blocks)

    def restrict(self, y: torch.Tensor, blocks: Blocks = None) -> torch.Tensor:
        """The part of a full measurement ``y`` that belongs to ``blocks``."""
        b = self.as_blocks(blocks)
        if b is None:
            return y
        if self.block_dim is None:
            raise NotImplementedError(f"{type(self).__name__} must override restrict()")
        return y.index_select(self.block_dim, b.to(y.device))

    def select(self, blocks: Blocks) -> SelectedBlocks:
        """The operator restricted to ``blocks``, as an operator of its own (one block each)."""
        b = self.as_blocks(blocks)
        if b is None:
            b = torch.arange(self.num_blocks)
        return SelectedBlocks(self, b)

    def minibatch_scale(self, blocks: Blocks) -> float:
        """``b / w``: the factor that makes a minibatch gradient unbiased."""
        b = self.as_blocks(blocks)
        return 1.0 if b is None else self.num_blocks / b.numel()

    def data_grad(self, x: torch.Tensor, y: torch.Tensor, blocks: Blocks = None) -> torch.Tensor:
        """Gradient of ``1/2 ||A x - y||^2``, or its unbiased minibatch estimate.

        Args:
            x: images ``(batch, *image_shape)``.
            y: *full* measurements ``(batch, *measurement_shape())``.
            blocks: indices of the blocks to use; ``None`` for all.
        """
        b = self.as_blocks(blocks)
        self.check_measurement(y, None)
        self.check_finite(y)
        residual = self.A(x, b) - self.restrict(y, b)
        grad = self.A_adjoint(residual, b)
        scale = self.minibatch_scale(b)
        return grad if scale == 1.0 else grad * scale

    def data_fidelity(self, x: torch.Tensor, y: torch.Tensor, blocks: Blocks = None) -> torch.Tensor:
        """``1/2 ||A x - y||^2`` per batch element (scaled by b/w for a minibatch)."""
        b = self.as_blocks(blocks)
        self.check_measurement(y, None)
        self.check_finite(y)
        r = self.A(x, b) - self.restrict(y, b)
        r = torch.view_as_real(r) if r.is_complex() else r
        return 0.5 * self.minibatch_scale(b) * r.flatten(1).pow(2).sum(1)

    # ----------------------------------------------------------------- diagnostics
    def random_image(self, batch: int = 1, dtype=torch.float32, device=None, generator=None):
        """A standard normal image of the operator's shape."""
        shape = (batch, *self.image_shape)
        if self.complex_image:
            dtype = _complex_of(dtype)
        return torch.randn(shape, dtype=dtype, device=device, generator=generator)

    def random_measurement(
        self, batch: int = 1, blocks: Blocks = None, dtype=torch.float32, device=None, generator=None
    ):
        """A standard normal measurement of the operator's shape restricted to ``blocks``."""
        shape = (batch, *self.measurement_shape(self.as_blocks(blocks)))
        if self.complex_measurements:
            dtype = _complex_of(dtype)
        return torch.randn(shape, dtype=dtype, device=device, generator=generator)

    def adjointness_error(
        self, batch: int = 2, dtype=torch.float64, seed: int = 0, blocks: Blocks = None
    ) -> float:
        """Relative error ``|<A x, y> - <x, A^T y>| / (||A x|| ||y||)`` for random x, y."""
        gen = torch.Generator().manual_seed(seed)
        device = _device_of(self)
        x = self.random_image(batch, dtype, device=None, generator=gen).to(device)
        y = self.random_measurement(batch, blocks, dtype, device=None, generator=gen).to(device)
        with torch.no_grad():
            ax, aty = self.A(x, blocks), self.A_adjoint(y, blocks)
            lhs, rhs = _real_dot(ax, y), _real_dot(x, aty)
            scale = ax.abs().pow(2).sum().sqrt() * y.abs().pow(2).sum().sqrt()
        return float((lhs - rhs).abs() / scale.clamp_min(1e-30))

    def norm(self, iterations: int = 100, tol: float = 1e-6, seed: int = 0, dtype=torch.float64) -> float:
        """Spectral norm ``||A||_2`` by the power method on ``A^T A`` (float64 by default).

        The Lipschitz constant of ``data_grad`` is ``norm() ** 2``.
        """
        gen = torch.Generator().manual_seed(seed)
        device = _device_of(self)
        x = self.random_image(1, dtype, generator=gen).to(device)
        x = x / x.abs().pow(2).sum().sqrt()
        sigma2 = 0.0
        with torch.no_grad():
            for _ in range(iterations):
                z = self.A_adjoint_A(x)
                new = float(_real_dot(x, z))
                x = z / z.abs().pow(2).sum().sqrt().clamp_min(1e-30)
                if abs(new - sigma2) <= tol * max(abs(new), 1e-30):
                    sigma2 = new
                    break
                sigma2 = new
        return math.sqrt(max(sigma2, 0.0))

    # ----------------------------------------------------------------- validation
    def as_blocks(self, blocks: Blocks) -> torch.Tensor | None:
        """Validate ``blocks`` into a sorted, unique CPU ``LongTensor`` (or ``None`` for all)."""
        if blocks is None:
            return None
        b = torch.as_tensor(blocks).detach().to("cpu")
        if b.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
            raise DTypeError(f"blocks must be integer indices; got dtype {b.dtype}")
        b = b.long().flatten()
        if b.numel() == 0:
            raise InvalidValueError("blocks is empty: select at least one block")
        if int(b.min()) < 0 or int(b.max()) >= self.num_blocks:
            raise InvalidValueError(
                f"block indices must lie in [0, {self.num_blocks}); got min {int(b.min())}, "
                f"max {int(b.max())} for {type(self).__name__} with {self.num_blocks} blocks"
            )
        b = torch.unique(b)  # sorted
        return None if b.numel() == self.num_blocks else b

    def check_image(self, x: torch.Tensor) -> None:
        """Raise a :class:`ShapeError`/:class:`DTypeError` unless ``x`` is a batch of images."""
        _check_tensor(x, "image x", (-1, *self.image_shape), type(self).__name__)
        if x.is_complex() and not self.complex_image:
            raise DTypeError(
                f"{type(self).__name__} takes real images; got complex x. Pass x.real or x.abs(), "
                "or build the operator with complex images"
            )

    def check_measurement(self, y: torch.Tensor, blocks: torch.Tensor | None) -> None:
        """Raise unless ``y`` is a batch of measurements restricted to ``blocks``."""
        _check_tensor(y, "measurement y", (-1, *self.measurement_shape(blocks)), type(self).__name__)
        if y.is_complex() and not self.complex_measurements:
            raise DTypeError(f"{type(self).__name__} has real measurements; got complex y")

    def check_finite(self, y: torch.Tensor, name: str = "measurement y") -> None:
        """Raise :class:`InvalidValueError` if ``y`` holds NaN or infinite values.

        The verdict is cached per tensor and version, so a solver calling ``data_grad`` with the
        same measurement at every iteration pays for the check once.
        """
        key = (id(y), y._version, y.data_ptr())
        if getattr(self, "_finite_checked", None) == key:
            return
        if not torch.isfinite(y).all():
            bad = int((~torch.isfinite(y)).sum())
            raise InvalidValueError(
                f"{type(self).__name__}: {name} contains {bad} NaN or infinite values; "
                "remove or interpolate them before reconstructing"
            )
        self._finite_checked = key

    # ----------------------------------------------------------------- composition
    def __matmul__(self, other: LinearOperator) -> ComposedOperator:
        """``self @ other`` is the operator ``x -> self.A(other.A(x))``; blocks are ``self``'s."""
        return ComposedOperator(self, other)


class SelectedBlocks(LinearOperator):
    """An operator restricted to a fixed set of blocks; each kept block is one block of it.

    Example:
        >>> from deqir.physics import ParallelBeamCT
        >>> ct = ParallelBeamCT(32, num_angles=12)
        >>> sub = ct.select([0, 4, 8])
        >>> sub.num_blocks, sub.measurement_shape()
        (3, (1, 3, 46))
    """

    def __init__(self, parent: LinearOperator, blocks: torch.Tensor):
        super().__init__()
        self.parent = parent
        self.register_buffer("kept", blocks.clone(), persistent=False)
        self.num_blocks = int(blocks.numel())
        self.block_dim = parent.block_dim
        self.image_shape = parent.image_shape
        self.complex_image = parent.complex_image

    @property
    def complex_measurements(self) -> bool:  # noqa: D102
        return self.parent.complex_measurements

    def _parent_blocks(self, blocks: torch.Tensor | None) -> torch.Tensor:
        kept = self.kept.cpu()
        return kept if blocks is None else kept[blocks]

    def _forward(self, x, blocks):
        return self.parent._forward(x, self._parent_blocks(blocks))

    def _adjoint(self, y, blocks):
        return self.parent._adjoint(y, self._parent_blocks(blocks))

    def measurement_shape(self, blocks=None):  # noqa: D102
        return self.parent.measurement_shape(self._parent_blocks(self.as_blocks(blocks)))

    def restrict(self, y, blocks=None):  # noqa: D102
        b = self.as_blocks(blocks)
        if b is None:
            return y
        if self.block_dim is not None:
            return y.index_select(self.block_dim, b.to(y.device))
        return self.parent.restrict(y, self._parent_blocks(b))  # mask-based blocks


class ComposedOperator(LinearOperator):
    """``outer ∘ inner``: first ``inner``, then ``outer``. Blocks are those of ``outer``.

    Example:
        >>> from deqir.physics import Blur
        >>> op = Blur(16, kernel="gaussian", kernel_size=5, sigma=1.0)
        >>> both = op @ op
        >>> both.measurement_shape()
        (1, 16, 16)
    """

    def __init__(self, outer: LinearOperator, inner: LinearOperator):
        super().__init__()
        if tuple(inner.measurement_shape()) != tuple(outer.image_shape):
            raise ShapeError(
                f"cannot compose: {type(inner).__name__} gives measurements of shape "
                f"{tuple(inner.measurement_shape())} but {type(outer).__name__} takes images of "
                f"shape {tuple(outer.image_shape)}"
            )
        self.outer, self.inner = outer, inner
        self.num_blocks = outer.num_blocks
        self.block_dim = outer.block_dim
        self.image_shape = inner.image_shape
        self.complex_image = inner.complex_image

    @property
    def complex_measurements(self) -> bool:  # noqa: D102
        return self.outer.complex_measurements

    def _forward(self, x, blocks):
        return self.outer._forward(self.inner._forward(x, None), blocks)

    def _adjoint(self, y, blocks):
        z = self.outer._adjoint(y, blocks)
        if self.inner.complex_measurements is False and z.is_complex():
            z = z.real
        return self.inner._adjoint(z, None)

    def measurement_shape(self, blocks=None):  # noqa: D102
        return self.outer.measurement_shape(self.as_blocks(blocks))

    def restrict(self, y, blocks=None):  # noqa: D102
        return self.outer.restrict(y, blocks)


# --------------------------------------------------------------------- helpers
def _complex_of(dtype: torch.dtype) -> torch.dtype:
    return torch.complex128 if dtype in (torch.float64, torch.complex128) else torch.complex64


def _real_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Real inner product ``Re <a, b>`` summed over everything."""
    if a.is_complex() or b.is_complex():
        return (a.conj() * b).real.sum() if a.is_complex() else (a * b.real).sum()
    return (a * b).sum()


def _device_of(module: torch.nn.Module) -> torch.device:
    for t in module.buffers():
        return t.device
    return torch.device("cpu")


def _check_tensor(t: Any, name: str, expected: tuple[int, ...], owner: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise DTypeError(f"{owner}: {name} must be a torch.Tensor; got {type(t).__name__}")
    if t.dim() != len(expected) or any(e not in (-1, s) for e, s in zip(expected, t.shape, strict=True)):
        want = "(batch, " + ", ".join(str(e) for e in expected[1:]) + ")"
        hint = ""
        if t.dim() == len(expected) - 1:
            hint = " (add a batch axis with x[None])"
        elif t.dim() == len(expected) - 2:
            hint = " (add batch and channel axes with x[None, None])"
        raise ShapeError(f"{owner}: {name} must have shape {want}; got {tuple(t.shape)}{hint}")
    if not (t.is_floating_point() or t.is_complex()):
        raise DTypeError(f"{owner}: {name} must be floating point; got {t.dtype} (use .float())")
