"""Blur kernels, circular-convolution deblurring and super-resolution, and their exact proxes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from deqir.errors import DeqirError, DTypeError, InvalidValueError, ShapeError
from deqir.physics.blur import Blur, SuperResolution, blur_kernel

F64 = torch.float64


def _circular_conv(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Reference: circular convolution with an odd kernel centred at its middle pixel."""
    c = k.shape[-1] // 2
    xp = F.pad(x, (c, c, c, c), mode="circular")
    weight = k.flip(0, 1).to(x.dtype)[None, None].repeat(x.shape[1], 1, 1, 1)
    return F.conv2d(xp, weight, groups=x.shape[1])


def _dense(op, n_in: int) -> torch.Tensor:
    eye = torch.eye(n_in, dtype=F64).reshape(n_in, *op.image_shape)
    return op.A(eye).reshape(n_in, -1).T


# --------------------------------------------------------------------------- kernels
@pytest.mark.parametrize("name", ["gaussian", "uniform", "motion"])
@pytest.mark.parametrize("size", [1, 4, 9, 25])
def test_kernels_are_normalised_and_non_negative(name, size):
    k = blur_kernel(name, size, sigma=1.6, seed=2)
    assert k.shape == (size, size) and k.dtype == torch.float32
    assert (k >= 0).all()
    assert float(k.sum()) == pytest.approx(1.0, abs=1e-6)


def test_gaussian_kernel_values():
    k = blur_kernel("gaussian", 5, sigma=1.0).double()
    t = torch.arange(5, dtype=F64) - 2
    ref = torch.exp(-(t[:, None] ** 2 + t[None, :] ** 2) / 2)
    torch.testing.assert_close(k, ref / ref.sum(), rtol=1e-6, atol=1e-7)
    assert torch.equal(k, k.T) and torch.equal(k, k.flip(0))
    assert torch.allclose(blur_kernel("uniform", 9), torch.full((9, 9), 1 / 81))


def test_motion_kernel_is_seeded():
    a, b, c = (blur_kernel("motion", 25, seed=s) for s in (3, 3, 4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    support = int((a > 1e-4).sum())
    assert 20 < support < 300  # a thin path, neither a dot nor a blob
    # the trajectory is centred: the bounding box of the support is centred on the middle pixel
    rows, cols = (a > 0).nonzero().T
    assert abs((rows.min() + rows.max()) / 2 - 12) <= 1 and abs((cols.min() + cols.max()) / 2 - 12) <= 1


def test_linear_motion_kernel_follows_angle():
    horizontal = blur_kernel("motion", 9, angle=0)
    assert torch.equal((horizontal > 1e-6).nonzero()[:, 0].unique(), torch.tensor([4]))
    vertical = blur_kernel("motion", 9, angle=90)
    torch.testing.assert_close(vertical, horizontal.T)


def test_kernel_errors_say_what_to_change():
    with pytest.raises(InvalidValueError, match="did you mean 'gaussian'"):
        blur_kernel("gausian", 5)
    with pytest.raises(InvalidValueError, match="positive integer"):
        blur_kernel("uniform", 0)
    with pytest.raises(InvalidValueError, match="sigma"):
        blur_kernel("gaussian", 5, sigma=-1)
    with pytest.raises(InvalidValueError, match="angle only applies"):
        blur_kernel("gaussian", 5, angle=30)


# --------------------------------------------------------------------------- Blur
@pytest.mark.parametrize("kernel", ["gaussian", "motion"])
def test_blur_is_circular_convolution(kernel):
    gen = torch.Generator().manual_seed(0)
    op = Blur(20, kernel=kernel, kernel_size=7, sigma=1.3, channels=3, seed=5)
    x = torch.rand(2, 3, 20, 20, generator=gen, dtype=F64)
    ref = _circular_conv(x, op.kernel.double())
    torch.testing.assert_close(op.A(x), ref)
    y = torch.rand(2, 3, 20, 20, generator=gen, dtype=F64)
    # the adjoint is correlation = convolution with the flipped kernel
    torch.testing.assert_close(op.A_adjoint(y), _circular_conv(y, op.kernel.double().flip(0, 1)))


def test_blur_with_a_given_kernel_tensor():
    k = torch.zeros(3, 3)
    k[1, 2] = 1.0  # convolution with a delta one pixel right of the centre: shift right
    op = Blur(8, kernel=k)
    x = torch.rand(1, 1, 8, 8)
    torch.testing.assert_close(op.A(x), torch.roll(x, shifts=1, dims=-1))


def test_kernel_larger_than_image_wraps_around():
    """Circular convolution of an 8-periodic image with an 11x11 kernel folds the kernel."""
    x = torch.rand(1, 1, 8, 8, dtype=F64, generator=torch.Generator().manual_seed(1))
    small = Blur(8, kernel="gaussian", kernel_size=11, sigma=3.0).A(x)
    big = Blur(24, kernel="gaussian", kernel_size=11, sigma=3.0).A(x.repeat(1, 1, 3, 3))
    torch.testing.assert_close(small, big[..., 8:16, 8:16])


@pytest.mark.parametrize("gamma", [0.05, 3.0, "per-sample"])
def test_blur_prox_optimality(gamma):
    gen = torch.Generator().manual_seed(2)
    op = Blur(16, kernel="motion", kernel_size=7, channels=2)
    z = torch.randn(3, 2, 16, 16, generator=gen, dtype=F64)
    y = torch.randn(3, 2, 16, 16, generator=gen, dtype=F64)
    g = torch.tensor([0.1, 1.0, 10.0], dtype=F64) if gamma == "per-sample" else gamma
    x = op.prox_data(z, y, g)
    gb = g.view(-1, 1, 1, 1) if isinstance(g, torch.Tensor) else g
    residual = op.data_grad(x, y) + (x - z) / gb
    assert residual.abs().max() < 1e-10


def test_blur_prox_limits():
    op = Blur(16, kernel="gaussian", kernel_size=5, sigma=1.0)
    x = torch.rand(1, 1, 16, 16, dtype=F64)
    z = torch.rand(1, 1, 16, 16, dtype=F64)
    torch.testing.assert_close(op.prox_data(z, op.A(x), 1e-12), z)  # tiny step: stay at z
    p = op.prox_data(z, op.A(x), 1e12)  # huge step: fit the data
    assert (op.A(p) - op.A(x)).abs().max() < 1e-6


# --------------------------------------------------------------------------- super-resolution
@pytest.mark.parametrize("factor", [2, 3])
def test_superres_is_blur_then_decimation(factor):
    gen = torch.Generator().manual_seed(3)
    op = SuperResolution(24, factor=factor, kernel="gaussian", kernel_size=9, sigma=1.6, channels=3)
    blur = Blur(24, kernel="gaussian", kernel_size=9, sigma=1.6, channels=3)
    x = torch.rand(2, 3, 24, 24, generator=gen, dtype=F64)
    y = op.A(x)
    assert y.shape == (2, 3, 24 // factor, 24 // factor)
    torch.testing.assert_close(y, blur.A(x)[..., ::factor, ::factor])
    assert op.adjointness_error(dtype=F64) < 1e-12


@pytest.mark.parametrize("factor", [2, 3])
def test_superres_prox_optimality(factor):
    gen = torch.Generator().manual_seed(4)
    op = SuperResolution(18, factor=factor, kernel="motion", kernel_size=7, channels=2, seed=1)
    z = torch.randn(2, 2, 18, 18, generator=gen, dtype=F64)
    y = torch.randn(2, 2, 18 // factor, 18 // factor, generator=gen, dtype=F64)
    g = torch.tensor([0.3, 20.0], dtype=F64)
    x = op.prox_data(z, y, g)
    residual = op.data_grad(x, y) + (x - z) / g.view(-1, 1, 1, 1)
    assert residual.abs().max() < 1e-10


def test_superres_prox_matches_dense_solve():
    op = SuperResolution(8, factor=2, kernel="gaussian", kernel_size=5, sigma=1.0)
    gen = torch.Generator().manual_seed(5)
    z = torch.randn(1, 1, 8, 8, generator=gen, dtype=F64)
    y = torch.randn(1, 1, 4, 4, generator=gen, dtype=F64)
    gamma = 0.7
    a = _dense(op, 64)
    lhs = a.T @ a + torch.eye(64, dtype=F64) / gamma
    ref = torch.linalg.solve(lhs, a.T @ y.flatten() + z.flatten() / gamma)
    torch.testing.assert_close(op.prox_data(z, y, gamma).flatten(), ref)


def test_superres_size_must_be_divisible():
    with pytest.raises(ShapeError, match="not divisible by factor 3.*e.g. 24 or 27"):
        SuperResolution(25, factor=3)
    with pytest.raises(InvalidValueError, match="factor"):
        SuperResolution(24, factor=0)


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ShapeError, match="square"):
        Blur((16, 20))
    with pytest.raises(InvalidValueError, match="image_size"):
        Blur(1)
    with pytest.raises(DTypeError, match="real floating point"):
        Blur(16, kernel=torch.ones(3, 3, dtype=torch.complex64))
    with pytest.raises(ShapeError, match="2-D"):
        Blur(16, kernel=torch.ones(2, 3, 3))
    with pytest.raises(InvalidValueError, match="did you mean"):
        Blur(16, kernel="motoin")
    with pytest.raises(InvalidValueError, match="channels"):
        Blur(16, channels=0)
    op = Blur(16, kernel_size=5)
    x = torch.rand(1, 1, 16, 16)
    with pytest.raises(InvalidValueError, match="gamma"):
        op.prox_data(x, op.A(x), 0.0)
    with pytest.raises(ShapeError, match="one value per batch element"):
        op.prox_data(x, op.A(x), torch.ones(3))
    with pytest.raises(DeqirError, match="must have shape"):
        op.prox_data(x, torch.rand(1, 1, 8, 8), 1.0)
