"""Intensity diffraction tomography: the physics of the transfer functions, samples and stack reading.

(The operator contract, adjoint, gradcheck, unbiased minibatch gradients, runs for ``idt`` in
test_physics_contract.py with every other operator.)
"""

import numpy as np
import pytest
import torch

from deqir.data import cell_sample, cell_samples, read_idt_stack
from deqir.errors import DataError, InvalidValueError, ShapeError
from deqir.physics.idt import IntensityDiffractionTomography, led_ring_positions

pytestmark = pytest.mark.usefixtures("one_thread")


def _op(**kw):
    kw.setdefault("num_slices", 2)
    kw.setdefault("led_rings", ((0.15, 4), (0.3, 6)))
    return IntensityDiffractionTomography(32, **kw)


def _mirror(H):
    """``H(−u)`` on the FFT grid."""
    return torch.roll(H.flip(-1).flip(-2), shifts=(1, 1), dims=(-2, -1))


def test_transfer_functions_are_hermitian_so_intensities_are_real():
    op = _op()
    H = op.transfer_functions(double=True)
    torch.testing.assert_close(_mirror(H), H.conj(), rtol=0, atol=1e-12 * float(H.abs().max()))


def test_uniform_phase_is_invisible_and_uniform_absorption_darkens():
    op = _op()
    s = op.num_slices
    x = torch.zeros(1, 2 * s, 32, 32, dtype=torch.float64)
    x[:, :s] = 1.0  # a uniform phase shift on every slice
    assert float(op.A(x).abs().max()) < 1e-10
    x = torch.zeros(1, 2 * s, 32, 32, dtype=torch.float64)
    x[:, s:] = 1.0  # uniform absorption
    y = op.A(x)
    assert bool((y < 0).all())  # less light under every LED
    torch.testing.assert_close(y, y.mean(dim=(-2, -1), keepdim=True).expand_as(y))


def test_in_focus_phase_needs_oblique_illumination():
    """A weak phase object in focus is invisible under on-axis light (symmetric pupil), not oblique."""
    op = IntensityDiffractionTomography(
        32, num_slices=1, led_positions=torch.tensor([[0.0, 0.0], [0.3, 0.0]], dtype=torch.float64)
    )
    x = torch.zeros(1, 2, 32, 32, dtype=torch.float64)
    x[0, 0, 12:20, 10:22] = 1.0  # phase only
    y = op.A(x)
    assert float(y[0, 0].abs().max()) < 1e-10
    assert float(y[0, 1].abs().max()) > 1e-3


def test_defocus_changes_the_image_of_a_slice():
    op = _op(num_slices=3)
    x = torch.zeros(1, 6, 32, 32, dtype=torch.float64)
    x[0, 0, 10:22, 10:22] = 1.0
    top = op.A(x)
    x = torch.roll(x, 1, dims=1)  # the same object one slice deeper
    assert float((op.A(x) - top).norm()) > 0.1 * float(top.norm())


def test_led_blocks_and_positions():
    leds = led_ring_positions([(0.1, 3), (0.2, 5)])
    assert leds.shape == (8, 2)
    torch.testing.assert_close(leds.norm(dim=1), torch.tensor([0.1] * 3 + [0.2] * 5, dtype=torch.float64))
    op = _op()
    x = torch.rand(2, 4, 32, 32)
    torch.testing.assert_close(op.A(x, blocks=[1, 7]), op.A(x)[:, [1, 7]])
    every = list(range(op.num_blocks))  # the full-operator fast path equals the block path
    torch.testing.assert_close(op.A(x), op.A(x, blocks=every))
    y = op.A(x)
    torch.testing.assert_close(op.A_adjoint(y), op.A_adjoint(y, blocks=every))


def test_bad_settings_are_named():
    with pytest.raises(InvalidValueError, match="bright-field"):
        _op(led_rings=((0.5, 4),))  # NA 0.4 objective: dark field
    with pytest.raises(InvalidValueError, match="undersamples"):
        _op(pixel_size=0.5)
    with pytest.raises(ShapeError, match=r"\(J, 2\)"):
        IntensityDiffractionTomography(32, led_positions=torch.zeros(4, 3))
    with pytest.raises(InvalidValueError, match="num_slices"):
        IntensityDiffractionTomography(32, num_slices=0)


def test_cell_samples_are_seeded_in_range_and_3d():
    x = cell_samples(3, 32, num_slices=4, seed=1)
    assert x.shape == (3, 8, 32, 32) and float(x.min()) >= 0 and float(x.max()) <= 1
    assert not torch.equal(x[0], x[1])
    torch.testing.assert_close(x[2], cell_sample(32, 4, seed=100003 + 2))
    phase, absorb = x[:, :4], x[:, 4:]
    assert float(absorb.mean()) < float(phase.mean()) + 0.05  # weak absorption
    assert float((phase[:, 0] - phase[:, -1]).abs().mean()) > 0  # slices differ


def test_read_idt_stack_normalises_and_checks(tmp_path):
    f = tmp_path / "stack.npz"
    intens = np.full((4, 16, 16), 200.0)
    intens[:, 4:8, 4:8] = 220.0
    np.savez(f, intensities=intens, led_na=np.zeros((4, 2)), background=np.full(4, 200.0))
    y, leds = read_idt_stack(f)
    assert y.shape == (1, 4, 16, 16) and leds.shape == (4, 2)
    assert abs(float(y.max()) - 0.1) < 1e-6 and float(y.min()) == 0.0
    np.savez(tmp_path / "bad.npz", intensities=intens, led_na=np.zeros((3, 2)))
    with pytest.raises(ShapeError, match="one row per image"):
        read_idt_stack(tmp_path / "bad.npz")
    np.savez(tmp_path / "nokey.npz", intensities=intens)
    with pytest.raises(DataError, match="led_na"):
        read_idt_stack(tmp_path / "nokey.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="readable"):
        read_idt_stack(tmp_path / "junk.npz")
    with pytest.raises(DataError, match="not found"):
        read_idt_stack(tmp_path / "missing.npz")


@pytest.mark.parametrize("gamma", [0.3, torch.tensor([0.1, 5.0], dtype=torch.float64)])
def test_prox_data_is_the_exact_minimiser(gamma):
    op = _op()
    g = torch.Generator().manual_seed(0)
    z = torch.rand(2, 4, 32, 32, generator=g, dtype=torch.float64)
    y = op.A(torch.rand(2, 4, 32, 32, generator=g, dtype=torch.float64))
    x = op.prox_data(z, y, gamma)
    gam = gamma.reshape(-1, 1, 1, 1) if isinstance(gamma, torch.Tensor) else gamma
    optimality = op.A_adjoint(op.A(x) - y) + (x - z) / gam  # the gradient of the objective at x
    assert float(optimality.abs().max()) < 1e-8
