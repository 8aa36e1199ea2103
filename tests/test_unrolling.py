"""Loop unrolling (LU-deep, LU-shallow, LUSER), the shallow equilibrium cell and Gilton's DE-Prox."""

import pytest
import torch
from torch import nn

from deqir.bench.common import SavedTensorBytes
from deqir.errors import ConfigError, InvalidValueError
from deqir.methods.unrolling import (
    LoopUnrolled,
    ProxGradEquilibrium,
    ShallowEquilibrium,
    build_loop_unrolled,
    build_prox_grad_equilibrium,
)
from deqir.physics.registry import build_operator
from deqir.priors import DnCNN, ShallowCell

pytestmark = pytest.mark.usefixtures("one_thread")


def _problem(n=16, batch=2, seed=0, dtype=torch.float32, name="blur", **kw):
    op = build_operator(name, n, **({"kernel_size": 5} if name == "blur" else {}), **kw)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 1, n, n, generator=g, dtype=torch.float64)
    x = nn.functional.avg_pool2d(x, 3, 1, 1, count_include_pad=False).to(dtype)
    Ax = op.A(x)
    noise = torch.randn(Ax.shape, generator=g, dtype=torch.float64).to(Ax.dtype)
    return op, x, Ax + 0.01 * noise


def _cell(seed=0, width=6, dtype=torch.float32, head_scale=0.1):
    torch.manual_seed(seed)
    cell = ShallowCell(width=width, convolutions=2).to(dtype)
    with torch.no_grad():  # a non-zero readout, so that gradients reach every parameter
        cell.head.weight.normal_(0, head_scale)
    return cell


# --------------------------------------------------------------------------- the cell
def test_cell_starts_as_identity_readout_and_contraction():
    cell = ShallowCell(width=8)
    v = torch.rand(2, 1, 12, 12)
    z = torch.rand(2, 8, 12, 12)
    assert torch.equal(cell.readout(z, v), v)  # zero head: R(v) = v, plain gradient steps at first
    z2 = torch.rand(2, 8, 12, 12)
    ratio = (cell(z, v) - cell(z2, v)).norm() / (z - z2).norm()
    assert ratio < 1.0  # small z-convolutions: a contraction in z at initialisation


def test_cell_rejects_bad_sizes():
    with pytest.raises(InvalidValueError, match="odd"):
        ShallowCell(kernel_size=4)
    with pytest.raises(InvalidValueError, match="convolutions"):
        ShallowCell(convolutions=0)


@pytest.mark.parametrize("norm", [False, True])
def test_shallow_equilibrium_reaches_its_fixed_point(norm):
    cell = ShallowCell(width=6, norm=norm)
    reg = ShallowEquilibrium(cell, max_iter=60, tol=1e-5)
    v = torch.rand(2, 1, 10, 10)
    with torch.no_grad():
        reg(v)
    assert bool(reg.last_stats.converged.all())
    assert float(reg.last_stats.rel_residual.max()) <= 1e-5


# --------------------------------------------------------------------------- gradients
def _unrolled_reference(cell, v, iters=200):
    z = cell.initial_state(v)
    for _ in range(iters):
        z = cell(z, v)
    return cell.readout(z, v)


@pytest.mark.parametrize("recompute", [True, False])
def test_implicit_gradient_matches_backprop_through_convergence(recompute):
    dtype = torch.float64
    cell = _cell(seed=1, dtype=dtype)
    v = torch.rand(2, 1, 8, 8, dtype=dtype, requires_grad=True)
    target = torch.rand(2, 1, 8, 8, dtype=dtype)
    reg = ShallowEquilibrium(
        cell, max_iter=200, tol=1e-12, backward_max_iter=200, backward_tol=1e-12, recompute=recompute
    )
    (reg(v) - target).square().sum().backward()
    implicit = [p.grad.clone() for p in cell.parameters()] + [v.grad.clone()]
    cell.zero_grad()
    v.grad = None
    (_unrolled_reference(cell, v) - target).square().sum().backward()
    reference = [p.grad for p in cell.parameters()] + [v.grad]
    for a, b in zip(implicit, reference, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


def test_recompute_keeps_less_for_the_backward_and_the_same_gradient():
    cell = _cell(seed=2, width=8)
    v = torch.rand(2, 1, 16, 16)
    grads, saved = {}, {}
    for recompute in (False, True):
        cell.zero_grad()
        reg = ShallowEquilibrium(cell, max_iter=40, tol=1e-6, recompute=recompute)
        with SavedTensorBytes() as st:
            out = reg(v)
        out.square().sum().backward()
        grads[recompute] = [p.grad.clone() for p in cell.parameters()]
        saved[recompute] = st.bytes
    assert saved[True] < saved[False]
    for a, b in zip(grads[True], grads[False], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("recompute", [True, False])
def test_jacobian_free_gradient_is_one_application_at_the_fixed_point(recompute):
    dtype = torch.float64
    cell = _cell(seed=3, dtype=dtype)
    v = torch.rand(2, 1, 8, 8, dtype=dtype)
    target = torch.rand(2, 1, 8, 8, dtype=dtype)
    reg = ShallowEquilibrium(cell, max_iter=200, tol=1e-12, adjoint="jfb", recompute=recompute)
    (reg(v) - target).square().sum().backward()
    jfb = [p.grad.clone() for p in cell.parameters()]
    assert int(reg.last_stats.backward.calls) == 1
    cell.zero_grad()
    with torch.no_grad():
        z = cell.initial_state(v)
        for _ in range(200):
            z = cell(z, v)
    (cell.readout(cell(z, v), v) - target).square().sum().backward()
    for a, b in zip(jfb, [p.grad for p in cell.parameters()], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


def test_luser_activation_memory_does_not_grow_with_iterations_and_is_below_lu_deep():
    op, x, y = _problem(n=16, batch=2)

    def saved(model):
        with SavedTensorBytes() as st:
            loss = (model(y, op) - x).square().mean()
        loss.backward()
        return st.bytes

    few = saved(build_loop_unrolled(_cell(width=8), steps=3, max_iter=3, tol=0.0))
    many = saved(build_loop_unrolled(_cell(width=8), steps=3, max_iter=30, tol=0.0))
    deep = saved(build_loop_unrolled(DnCNN(depth=17, width=8), steps=3))
    assert few == many
    assert deep > 5 * many


# --------------------------------------------------------------------------- loop unrolling
def test_untied_steps_have_their_own_weights_and_tied_share_them():
    untied = build_loop_unrolled(DnCNN(depth=3, width=4), steps=4)
    tied = build_loop_unrolled(DnCNN(depth=3, width=4), steps=4, tied=True)
    n = sum(p.numel() for p in DnCNN(depth=3, width=4).parameters())
    assert sum(p.numel() for p in untied.parameters()) == 4 * n + 4
    assert sum(p.numel() for p in tied.parameters()) == n + 4
    assert untied.regulariser(0) is not untied.regulariser(1)
    assert tied.regulariser(0) is tied.regulariser(3)
    assert torch.allclose(untied.step_sizes, torch.ones(4))


def test_identity_regulariser_is_gradient_descent():
    op, x, y = _problem(name="mri_single", n=16)
    model = LoopUnrolled(nn.Identity(), steps=3, step_size=0.5, learn_step=False)
    L = 1.0  # orthonormal FFT, mask: ‖A‖ = 1
    xk = op.A_adjoint(y) / L
    for _ in range(3):
        xk = xk - 0.5 / L * op.data_grad(xk, y)
    torch.testing.assert_close(model(y, op), xk)


@pytest.mark.parametrize("kind", ["luser", "lu_shallow", "lu_deep", "deq"])
def test_training_lowers_the_loss(kind):
    torch.manual_seed(0)
    op, x, y = _problem(n=16, batch=4, seed=3)
    if kind == "deq":
        model = build_prox_grad_equilibrium(DnCNN(depth=3, width=8), max_iter=15)
    elif kind == "lu_deep":
        model = build_loop_unrolled(DnCNN(depth=3, width=8), steps=3)
    else:
        reg = "feedforward" if kind == "lu_shallow" else "equilibrium"
        model = build_loop_unrolled(ShallowCell(width=8), steps=3, regulariser=reg, max_iter=15)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    losses = []
    for _ in range(40):
        opt.zero_grad()
        loss = (model(y, op) - x).square().mean()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert min(losses[-5:]) < 0.85 * losses[0]
    assert all(p.grad is not None for p in model.parameters())


def test_deq_step_is_learnable_and_eval_uses_more_iterations():
    op, x, y = _problem()
    deq = ProxGradEquilibrium(DnCNN(depth=3, width=4), max_iter=5, eval_max_iter=12, tol=0.0)
    (deq(y, op) - x).square().mean().backward()
    assert deq.raw_step.grad is not None
    assert int(deq.last_stats.iterations.max()) == 5
    with torch.no_grad():
        deq.eval()(y, op)
    assert int(deq.last_stats.iterations.max()) == 12


def test_bad_options_are_named():
    with pytest.raises(InvalidValueError, match="shallow equilibrium cell"):
        build_loop_unrolled(DnCNN(depth=3, width=4), regulariser="equilibrium")
    with pytest.raises(ConfigError, match="max_iter"):
        build_loop_unrolled(ShallowCell(width=4), max_iters=3)
    with pytest.raises(ConfigError, match="step_size"):
        build_prox_grad_equilibrium(DnCNN(depth=3, width=4), step=1.0)
    with pytest.raises(InvalidValueError, match="regulariser"):
        build_loop_unrolled(ShallowCell(width=4), regulariser="deep")
    with pytest.raises(InvalidValueError, match="steps"):
        LoopUnrolled(nn.Identity(), steps=0)
    with pytest.raises(InvalidValueError, match="untied"):
        LoopUnrolled([nn.Identity(), nn.Identity()], steps=3)
