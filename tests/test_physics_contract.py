"""One contract for every operator in the registry (deepinv-style parametrised physics test).

Each operator must be exact (adjoint, gradients), block-consistent (``select``, ``restrict``),
give unbiased minibatch gradients, handle batches and dtypes, and reject bad input clearly.
"""

from __future__ import annotations

import pytest
import torch

from deqir.errors import DeqirError, DTypeError, InvalidValueError, ShapeError
from deqir.physics.registry import OPERATORS, build_operator
from deqir.physics.sampling import BlockSampler

NAMES = sorted(OPERATORS)
SIZE = 16
# fewer blocks where the defaults make gradcheck slow (it applies the operator once per entry);
# the contract does not depend on the count
SMALL = {"idt": {"num_slices": 2, "led_rings": ((0.12, 3), (0.3, 5))}}


@pytest.fixture(params=NAMES)
def op(request):
    return build_operator(request.param, image_size=SIZE, **SMALL.get(request.param, {}))


def _blocks_of(op, count):
    """A deterministic, non-trivial subset of blocks (all blocks for one-block operators)."""
    if op.num_blocks == 1:
        return None
    return torch.arange(0, op.num_blocks, max(1, op.num_blocks // count))[:count]


def test_adjoint_float32(op):
    assert op.adjointness_error(dtype=torch.float32) < 1e-5


def test_adjoint_float64(op):
    assert op.adjointness_error(dtype=torch.float64) < 1e-10


def test_adjoint_of_a_block_subset(op):
    blocks = _blocks_of(op, 3)
    assert op.adjointness_error(dtype=torch.float64, blocks=blocks) < 1e-10


def test_gradcheck_forward_and_adjoint(op):
    gen = torch.Generator().manual_seed(1)
    x = op.random_image(1, torch.float64, generator=gen).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: op.A(t), (x,), eps=1e-6, atol=1e-7)
    y = op.random_measurement(1, None, torch.float64, generator=gen).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: op.A_adjoint(t), (y,), eps=1e-6, atol=1e-7)


def test_twice_differentiable(op):
    """Second derivatives through the operator exist and match finite differences."""
    gen = torch.Generator().manual_seed(2)
    x = op.random_image(1, torch.float64, generator=gen).requires_grad_(True)
    y = op.random_measurement(1, None, torch.float64, generator=gen)
    assert torch.autograd.gradgradcheck(lambda t: op.data_fidelity(t, y), (x,), eps=1e-6, atol=1e-6)


def test_norm_matches_dense_matrix(op):
    """Power-method norm agrees with the largest singular value of the explicit matrix."""
    n = op.random_image(1).numel()
    eye = torch.eye(n, dtype=torch.float64).reshape(n, *op.image_shape)
    if op.complex_image:
        eye = eye.to(torch.complex128)
    with torch.no_grad():
        cols = op.A(eye)
    cols = torch.view_as_real(cols) if cols.is_complex() else cols
    dense = cols.reshape(n, -1).T
    sigma = torch.linalg.matrix_norm(dense, ord=2).item()
    assert op.norm(iterations=500, tol=1e-10) == pytest.approx(sigma, rel=1e-3)


def test_minibatch_gradients_partition_exactly(op):
    """Over a partition of the blocks, (w/b)-weighted minibatch gradients sum to the full one."""
    gen = torch.Generator().manual_seed(3)
    x = op.random_image(2, torch.float64, generator=gen)
    y = op.random_measurement(2, None, torch.float64, generator=gen)
    full = op.data_grad(x, y)
    if op.num_blocks == 1:
        torch.testing.assert_close(op.data_grad(x, y, blocks=[0]), full)
        return
    parts = torch.arange(op.num_blocks).chunk(min(op.num_blocks, 4))
    total = sum(op.data_grad(x, y, p) * (p.numel() / op.num_blocks) for p in parts)
    torch.testing.assert_close(total, full, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("strategy", ["uniform", "stratified"])
def test_minibatch_gradient_unbiased_monte_carlo(op, strategy):
    """The average of b/w-scaled minibatch gradients over random draws tends to the full one."""
    if op.num_blocks == 1:
        pytest.skip("single-block operator: the minibatch gradient is the full gradient")
    b = op.num_blocks
    w = b // 2 if b % 2 == 0 else 1
    sampler = BlockSampler(b, w, strategy=strategy, seed=4)  # default groups when stratified
    gen = torch.Generator().manual_seed(5)
    x = op.random_image(1, torch.float64, generator=gen)
    y = op.random_measurement(1, None, torch.float64, generator=gen)
    full = op.data_grad(x, y)
    draws = 400
    mean = sum(op.data_grad(x, y, sampler.sample()) for _ in range(draws)) / draws
    rel = ((mean - full).norm() / full.norm()).item()
    # the spread of one draw, to set a fair Monte-Carlo tolerance (5 standard errors)
    single = torch.stack([(op.data_grad(x, y, sampler.sample()) - full).norm() for _ in range(20)])
    tol = 5 * single.pow(2).mean().sqrt().item() / full.norm().item() / draws**0.5
    assert rel < max(tol, 1e-12)
    # and a *biased* estimator (no b/w factor) is detected by the same tolerance
    biased = mean * (w / b)
    assert ((biased - full).norm() / full.norm()).item() > tol


def test_select_consistent_with_full_operator(op):
    blocks = _blocks_of(op, 3)
    if blocks is None:
        blocks = torch.tensor([0])
    gen = torch.Generator().manual_seed(6)
    x = op.random_image(2, torch.float64, generator=gen)
    sub = op.select(blocks)
    assert sub.num_blocks == blocks.numel()
    y_sub = sub.A(x)
    torch.testing.assert_close(y_sub, op.A(x, blocks))
    torch.testing.assert_close(y_sub, op.restrict(op.A(x), blocks))
    r = op.random_measurement(2, blocks, torch.float64, generator=gen)
    torch.testing.assert_close(sub.A_adjoint(r), op.A_adjoint(r, blocks))
    assert sub.adjointness_error(dtype=torch.float64) < 1e-10


def test_batches_are_independent(op):
    gen = torch.Generator().manual_seed(7)
    x = op.random_image(3, torch.float32, generator=gen)
    together = op.A(x)
    one_by_one = torch.cat([op.A(x[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(together, one_by_one, rtol=1e-5, atol=1e-5)


def test_dtype_is_preserved(op):
    for dtype in (torch.float32, torch.float64):
        x = op.random_image(1, dtype)
        y = op.A(x)
        assert y.real.dtype == dtype
        assert op.A_adjoint(y).real.dtype == dtype


def test_device_move_keeps_values(op):
    x = op.random_image(1, torch.float32, generator=torch.Generator().manual_seed(8))
    ref = op.A(x)
    moved = op.to(torch.device("cpu"))
    torch.testing.assert_close(moved.A(x), ref)
    if torch.cuda.is_available():
        torch.testing.assert_close(op.to("cuda").A(x.cuda()).cpu(), ref, rtol=1e-4, atol=1e-4)


def test_wrong_image_shape_is_a_clear_error(op):
    with pytest.raises(ShapeError, match="must have shape"):
        op.A(torch.zeros(SIZE + 1, SIZE + 1))
    with pytest.raises(ShapeError, match="add batch and channel axes"):
        op.A(torch.zeros(*op.image_shape[1:]))


def test_wrong_measurement_shape_is_a_clear_error(op):
    y = op.random_measurement(1)
    with pytest.raises(ShapeError, match="measurement y"):
        op.A_adjoint(y[..., :-1])


def test_integer_image_is_a_clear_error(op):
    with pytest.raises(DTypeError, match="floating point"):
        op.A(torch.zeros(1, *op.image_shape, dtype=torch.int64))


def test_nan_measurement_is_a_clear_error(op):
    x = op.random_image(1)
    y = op.A(x).clone()
    y.view(-1)[0] = float("nan")
    with pytest.raises(InvalidValueError, match="NaN"):
        op.data_grad(x, y)


def test_bad_blocks_are_a_clear_error(op):
    with pytest.raises(InvalidValueError, match="block indices"):
        op.A(op.random_image(1), blocks=[op.num_blocks])
    with pytest.raises(DeqirError):
        op.A(op.random_image(1), blocks=[])
