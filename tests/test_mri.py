"""k-space masks, coil maps, single- and multi-coil MRI operators and their data proxes."""

from __future__ import annotations

import itertools

import pytest
import torch

from deqir.errors import DTypeError, InvalidValueError, ShapeError
from deqir.physics import mri as mri_module
from deqir.physics.fft import fft2c, flip_frequencies, ifft2c, negative_frequency_index
from deqir.physics.masks import cartesian_mask, radial_mask
from deqir.physics.mri import MultiCoilMRI, SingleCoilMRI, coil_sensitivities
from deqir.physics.registry import build_operator

F64 = torch.float64


def _prox_residual(op, x, z, y, gamma):
    """Gradient of the prox objective at x: zero at the minimiser."""
    return op.data_grad(x, y) + (x - z) / gamma


# --------------------------------------------------------------------------- FFT
def test_fft2c_is_centred_and_unitary():
    x = torch.randn(2, 1, 10, 10, dtype=torch.complex128)
    k = fft2c(x)
    torch.testing.assert_close(k.abs().pow(2).sum(), x.abs().pow(2).sum())
    torch.testing.assert_close(ifft2c(k), x)
    ones = fft2c(torch.ones(6, 6, dtype=F64))
    assert ones.abs().argmax() == 3 * 6 + 3  # the zero frequency sits at (N//2, N//2)


@pytest.mark.parametrize("n", [8, 9])
def test_negative_frequency_index_matches_hermitian_symmetry(n):
    """For a real image, X(-k) = conj(X(k)) on the centred grid, odd and even sizes."""
    k = fft2c(torch.randn(n, n, dtype=F64))
    torch.testing.assert_close(flip_frequencies(k), k.conj())
    assert torch.equal(negative_frequency_index(n)[negative_frequency_index(n)], torch.arange(n))


# --------------------------------------------------------------------------- Cartesian masks
@pytest.mark.parametrize("kind", ["random", "equispaced", "gaussian"])
@pytest.mark.parametrize("n,acc", [(64, 4), (100, 4), (320, 8), (96, 6)])
def test_cartesian_mask_acceleration_and_centre(kind, n, acc):
    m = cartesian_mask((n, n), acc, kind=kind, seed=1)
    assert m.dtype == torch.bool and m.shape == (n, n)
    assert (m == m[0]).all()  # whole columns (phase-encode lines)
    assert abs(n / int(m[0].sum()) - acc) <= 0.05 * acc
    num_low = round(n * 0.32 / acc)
    pad = (n - num_low + 1) // 2
    assert m[0, pad : pad + num_low].all() and m[0, n // 2]


def test_cartesian_default_center_fraction_is_fastmri():
    m4 = cartesian_mask((320, 320), 4, kind="equispaced", seed=0)
    m8 = cartesian_mask((320, 320), 8, kind="equispaced", seed=0)
    # 0.08 * 320 = 26 centre columns at 4x, 0.04 * 320 = 13 at 8x (fully sampled runs)
    assert m4[0, 160 - 13 : 160 + 13].all()
    assert m8[0, 160 - 6 : 160 + 7].all()
    custom = cartesian_mask((64, 64), 4, center_fraction=0.25, seed=0)
    assert custom[0, 24:40].all()


@pytest.mark.parametrize("kind", ["random", "equispaced", "gaussian"])
def test_cartesian_mask_is_seeded(kind):
    a = cartesian_mask(128, 4, kind=kind, seed=7)
    assert torch.equal(a, cartesian_mask(128, 4, kind=kind, seed=7))
    assert not torch.equal(a, cartesian_mask(128, 4, kind=kind, seed=8))


def test_gaussian_mask_is_denser_near_the_centre():
    counts = sum(cartesian_mask(128, 4, kind="gaussian", seed=s)[0].float() for s in range(20))
    near = torch.cat([counts[40:58], counts[70:88]]).mean()
    far = torch.cat([counts[:18], counts[-18:]]).mean()
    assert near > 2 * far


def test_cartesian_mask_errors_say_what_to_change():
    with pytest.raises(InvalidValueError, match="did you mean 'equispaced'"):
        cartesian_mask(64, 4, kind="equispace")
    with pytest.raises(InvalidValueError, match=">= 1"):
        cartesian_mask(64, 0.5)
    with pytest.raises(InvalidValueError, match="at most 64"):
        cartesian_mask(64, 200)
    with pytest.raises(InvalidValueError, match="lower center_fraction"):
        cartesian_mask(64, 4, center_fraction=0.5)
    with pytest.raises(InvalidValueError, match=r"\(0, 1\]"):
        cartesian_mask(64, 4, center_fraction=0.0)
    with pytest.raises(ShapeError):
        cartesian_mask((0, 64), 4)


# --------------------------------------------------------------------------- radial masks
@pytest.mark.parametrize("fraction", [0.1, 0.2, 0.3, 0.5])
def test_radial_mask_reaches_the_fraction(fraction):
    m = radial_mask((128, 128), fraction, seed=2)
    assert m.dtype == torch.bool and m.shape == (128, 128)
    assert abs(float(m.float().mean()) - fraction) < 0.01
    assert m[64, 64]  # every spoke passes through the centre
    centre = m[56:73, 56:73].float().mean()
    assert centre > min(2 * fraction, 0.95)  # denser near the centre, as radial sampling is


def test_radial_mask_is_seeded_and_errors():
    a = radial_mask(64, 0.25, seed=1)
    assert torch.equal(a, radial_mask(64, 0.25, seed=1))
    assert not torch.equal(a, radial_mask(64, 0.25, seed=2))
    for bad in (0.0, 1.0, 1.5, -0.2):
        with pytest.raises(InvalidValueError, match="between 0 and 1"):
            radial_mask(64, bad)


# --------------------------------------------------------------------------- coil maps
@pytest.mark.parametrize("kind", ["birdcage", "gaussian"])
@pytest.mark.parametrize("n", [16, 33])
def test_coil_maps_are_normalised(kind, n):
    s = coil_sensitivities(6, n, kind=kind, seed=3)
    assert s.shape == (6, n, n) and s.dtype == torch.complex64
    torch.testing.assert_close(s.abs().pow(2).sum(0), torch.ones(n, n), rtol=1e-5, atol=1e-5)
    assert (s.abs().amax(dim=(1, 2)) > 1.5 * s.abs().mean(dim=(1, 2))).all()  # each coil is local
    assert not torch.allclose(s[0], s[1])


def test_coil_maps_seed_and_errors():
    a = coil_sensitivities(4, 16, kind="gaussian", seed=0)
    assert torch.equal(a, coil_sensitivities(4, 16, kind="gaussian", seed=0))
    assert not torch.equal(a, coil_sensitivities(4, 16, kind="gaussian", seed=1))
    assert coil_sensitivities(2, 8, dtype=torch.complex128).dtype == torch.complex128
    with pytest.raises(InvalidValueError, match="did you mean 'birdcage'"):
        coil_sensitivities(4, 16, kind="birdcag")
    with pytest.raises(InvalidValueError, match="num_coils"):
        coil_sensitivities(0, 16)


# --------------------------------------------------------------------------- single coil
def test_single_coil_forward_is_masked_fft():
    op = SingleCoilMRI(32, acceleration=4, mask_type="equispaced", seed=3)
    x = torch.rand(2, 1, 32, 32, dtype=F64)
    y = op.A(x)
    assert y.dtype == torch.complex128 and y.shape == (2, 1, 32, 32)
    torch.testing.assert_close(y, fft2c(x) * op.mask)
    assert (y[..., ~op.mask] == 0).all()


@pytest.mark.parametrize("mask_type", ["random", "radial"])
def test_single_coil_blocks_partition_the_mask(mask_type):
    fraction = 0.3 if mask_type == "radial" else None
    op = SingleCoilMRI(32, mask_type=mask_type, acceleration=4, sampling_fraction=fraction, num_blocks=5)
    assert op.num_blocks == 5
    parts = torch.stack([op.block_mask([i]) for i in range(5)])
    assert torch.equal(parts.sum(0), op.mask.long())
    sizes = parts.flatten(1).sum(1)
    if mask_type == "random":  # whole columns, dealt round-robin from left to right
        assert op.block_unit == "columns"
        cols = op.mask[0].nonzero().flatten()
        for i, c in enumerate(cols.tolist()):
            assert parts[i % 5, :, c].all()
    else:
        assert op.block_unit == "points"
        assert sizes.max() - sizes.min() <= 1
    # a restricted measurement keeps the grid; a block subset equals the restricted full one
    x = torch.rand(1, 1, 32, 32, dtype=F64)
    blocks = torch.tensor([1, 3])
    assert op.measurement_shape(blocks) == (1, 32, 32)
    torch.testing.assert_close(op.A(x, blocks), op.restrict(op.A(x), blocks))


def test_fewer_lines_than_blocks_reduces_blocks():
    op = SingleCoilMRI(16, acceleration=4, num_blocks=8)  # 4 lines
    assert op.num_blocks == 4
    assert build_operator("mri_single", image_size=16).num_blocks == 4


def test_minibatch_gradient_is_exactly_unbiased_over_all_subsets():
    op = SingleCoilMRI(24, mask_type="radial", sampling_fraction=0.3, num_blocks=4)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 1, 24, 24, generator=gen, dtype=F64)
    y = op.A(torch.randn(1, 1, 24, 24, generator=gen, dtype=F64))
    full = op.data_grad(x, y)
    subsets = list(itertools.combinations(range(4), 2))
    mean = sum(op.data_grad(x, y, list(s)) for s in subsets) / len(subsets)
    torch.testing.assert_close(mean, full, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "n,mask_type,complex_image",
    [
        (16, "random", False),
        (17, "random", False),
        (16, "radial", False),
        (15, "radial", False),
        (16, "gaussian", True),
        (17, "radial", True),
    ],
)
def test_single_coil_prox_optimality(n, mask_type, complex_image):
    op = SingleCoilMRI(
        n,
        mask_type=mask_type,
        acceleration=3,
        sampling_fraction=0.3 if mask_type == "radial" else None,
        complex_image=complex_image,
        seed=4,
    )
    gen = torch.Generator().manual_seed(1)
    z = op.random_image(3, F64, generator=gen)
    y = op.random_measurement(3, None, F64, generator=gen)
    gamma = torch.tensor([0.05, 1.0, 30.0], dtype=F64)
    x = op.prox_data(z, y, gamma)
    assert x.dtype == z.dtype and x.shape == z.shape
    assert _prox_residual(op, x, z, y, gamma.view(-1, 1, 1, 1)).abs().max() < 1e-10


def test_real_image_prox_needs_the_symmetrised_mask():
    """The naive k-space formula with M instead of (M(k) + M(-k))/2 is *not* the real prox."""
    op = SingleCoilMRI(16, acceleration=3, mask_type="random", seed=2)
    assert not torch.equal(op.mask, flip_frequencies(op.mask))  # an asymmetric mask
    gen = torch.Generator().manual_seed(2)
    z = torch.randn(1, 1, 16, 16, generator=gen, dtype=F64)
    y = op.A(torch.randn(1, 1, 16, 16, generator=gen, dtype=F64))
    gamma = 2.0
    m = op.mask.double()
    naive = ifft2c((gamma * m * y + fft2c(z)) / (gamma * m + 1)).real
    assert _prox_residual(op, naive, z, y, gamma).abs().max() > 1e-3
    good = op.prox_data(z, y, gamma)
    assert _prox_residual(op, good, z, y, gamma).abs().max() < 1e-10
    # and it agrees with a dense solve of the real normal equations
    eye = torch.eye(256, dtype=F64).reshape(256, 1, 16, 16)
    a = torch.view_as_real(op.A(eye)).reshape(256, -1).T
    rhs = a.T @ torch.view_as_real(y).flatten() + z.flatten() / gamma
    ref = torch.linalg.solve(a.T @ a + torch.eye(256, dtype=F64) / gamma, rhs)
    torch.testing.assert_close(good.flatten(), ref)


def test_zero_filled_is_identity_with_a_full_mask():
    x = torch.rand(2, 1, 16, 16, dtype=F64)
    op = SingleCoilMRI(16, mask=torch.ones(16, 16, dtype=torch.bool))
    torch.testing.assert_close(op.zero_filled(op.A(x)), x)
    under = SingleCoilMRI(16, acceleration=4)
    zf = under.zero_filled(under.A(x))
    torch.testing.assert_close(zf.mean(), x.mean())  # the sampled centre keeps the image's mean
    complex_op = SingleCoilMRI(16, acceleration=4, complex_image=True)
    xc = torch.randn(1, 1, 16, 16, dtype=torch.complex128)
    assert complex_op.zero_filled(complex_op.A(xc)).is_complex()


def test_column_pattern_and_float_masks_are_accepted():
    cols = torch.zeros(16)
    cols[[2, 7, 8, 9, 13]] = 1
    op = SingleCoilMRI(16, mask=cols)
    assert op.mask.shape == (16, 16) and int(op.mask.sum()) == 5 * 16
    assert op.num_blocks == 5
    rows = SingleCoilMRI(16, mask=cols.bool()[:, None].expand(16, 16), num_blocks=2)
    assert rows.block_unit == "rows" and rows.num_blocks == 2


# --------------------------------------------------------------------------- multi coil
def test_multicoil_subset_equals_selected_coils():
    op = MultiCoilMRI(16, num_coils=6, acceleration=4, coil_type="gaussian", seed=1)
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(2, 1, 16, 16, generator=gen, dtype=F64)
    full = op.A(x)
    assert full.shape == (2, 6, 16, 16) and full.dtype == torch.complex128
    blocks = torch.tensor([0, 2, 5])
    torch.testing.assert_close(op.A(x, blocks), full[:, blocks])
    assert op.measurement_shape(blocks) == (3, 16, 16)
    s = op.sensitivities.to(torch.complex128)
    torch.testing.assert_close(full, fft2c(x * s) * op.mask)
    y = torch.randn(2, 6, 16, 16, generator=gen, dtype=torch.complex128)
    per_coil = [op.A_adjoint(y[:, [c]], [c]) for c in range(6)]
    torch.testing.assert_close(op.A_adjoint(y), sum(per_coil))
    torch.testing.assert_close(op.A_adjoint(y[:, blocks], blocks), sum(per_coil[c] for c in blocks.tolist()))
    assert op.adjointness_error(dtype=F64, blocks=blocks) < 1e-12


def test_multicoil_subset_transforms_only_the_selected_coils(monkeypatch):
    sizes = []
    real_fft2c, real_ifft2c = mri_module.fft2c, mri_module.ifft2c
    monkeypatch.setattr(mri_module, "fft2c", lambda t: (sizes.append(t.shape[1]), real_fft2c(t))[1])
    monkeypatch.setattr(mri_module, "ifft2c", lambda t: (sizes.append(t.shape[1]), real_ifft2c(t))[1])
    op = MultiCoilMRI(16, num_coils=8)
    x = torch.rand(1, 1, 16, 16)
    op.data_grad(x, op.A(x), blocks=[1, 6])
    assert sizes[1:] == [2, 2]  # the full forward above, then two coils forward and back


@pytest.mark.parametrize("complex_image", [False, True])
def test_multicoil_zero_filled_and_prox(complex_image):
    full = MultiCoilMRI(
        16, num_coils=4, mask=torch.ones(16, 16, dtype=torch.bool), complex_image=complex_image
    )
    x = full.random_image(2, F64, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(full.zero_filled(full.A(x)), x)
    op = MultiCoilMRI(16, num_coils=4, acceleration=4, complex_image=complex_image, seed=2)
    gen = torch.Generator().manual_seed(5)
    z = op.random_image(2, F64, generator=gen)
    y = op.random_measurement(2, None, F64, generator=gen)
    p = op.prox_data(z, y, 0.8, tol=1e-12, max_iter=300)
    assert _prox_residual(op, p, z, y, 0.8).abs().max() < 1e-8


def test_given_sensitivities_are_used():
    s = coil_sensitivities(3, 16, kind="gaussian", seed=9)
    op = MultiCoilMRI(16, sensitivities=s)  # num_coils (default 8) yields to the given maps
    assert op.num_blocks == op.num_coils == 3
    assert torch.equal(op.sensitivities, s)


# --------------------------------------------------------------------------- errors
def test_mri_errors_say_what_to_change():
    with pytest.raises(ShapeError, match="square"):
        SingleCoilMRI((16, 12))
    with pytest.raises(ShapeError, match=r"\(16, 16\)"):
        SingleCoilMRI(16, mask=torch.ones(16, 12, dtype=torch.bool))
    with pytest.raises(ShapeError, match=r"\(16, 16\)"):
        SingleCoilMRI(16, mask=torch.ones(8, 8, dtype=torch.bool))
    with pytest.raises(DTypeError, match="boolean"):
        SingleCoilMRI(16, mask=torch.ones(16, 16, dtype=torch.complex64))
    with pytest.raises(DTypeError, match="torch.Tensor"):
        SingleCoilMRI(16, mask=[[1] * 16] * 16)
    with pytest.raises(InvalidValueError, match="mask > 0.5"):
        SingleCoilMRI(16, mask=torch.full((16, 16), 0.5))
    with pytest.raises(InvalidValueError, match="no k-space point"):
        SingleCoilMRI(16, mask=torch.zeros(16, 16, dtype=torch.bool))
    with pytest.raises(InvalidValueError, match="did you mean 'radial'"):
        SingleCoilMRI(16, mask_type="radail")
    with pytest.raises(InvalidValueError, match="sampling_fraction applies to radial"):
        SingleCoilMRI(16, mask_type="random", sampling_fraction=0.3)
    with pytest.raises(InvalidValueError, match="center_fraction applies to Cartesian"):
        SingleCoilMRI(16, mask_type="radial", center_fraction=0.08)
    with pytest.raises(InvalidValueError, match="num_blocks"):
        SingleCoilMRI(16, num_blocks=0)
    with pytest.raises(InvalidValueError, match="did you mean 'gaussian'"):
        MultiCoilMRI(16, coil_type="gausian")
    with pytest.raises(ShapeError, match=r"\(num_coils, 16, 16\)"):
        MultiCoilMRI(16, sensitivities=torch.ones(4, 8, 8, dtype=torch.complex64))
    with pytest.raises(DTypeError, match="complex"):
        MultiCoilMRI(16, sensitivities=torch.ones(4, 16, 16, dtype=torch.int64))
    op = SingleCoilMRI(16)
    with pytest.raises(DTypeError, match="real images"):
        op.A(torch.zeros(1, 1, 16, 16, dtype=torch.complex64))
    with pytest.raises(InvalidValueError, match="gamma"):
        op.prox_data(torch.zeros(1, 1, 16, 16), op.A(torch.zeros(1, 1, 16, 16)), -1.0)
