"""Backward behaviour: implicit gradients, JFB, phantom, unrolled, memory, NaN guards."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from deqir.errors import ConvergenceError, DeqirError
from deqir.solvers import (
    Anderson,
    FixedPointIteration,
    ImplicitAdjoint,
    JacobianFree,
    Nesterov,
    PhantomAdjoint,
    StochasticMap,
    UnrolledAdjoint,
    fixed_point,
    spectral_norm_all,
)

DT = torch.float64


class Cell(nn.Module):
    """A small contractive convolutional DEQ cell ``z -> a z + b Wᵀ tanh(W z + c) + U x``."""

    def __init__(self, channels: int = 4, a: float = 0.4, b: float = 0.4, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(1, channels, 3, padding=1)
        self.inject = nn.Conv2d(1, 1, 3, padding=1)
        with torch.no_grad():  # ||W||_op <= ||W||_F-ish bound: keep the cell contractive
            self.conv.weight.mul_(1.0 / (3.0 * self.conv.weight.norm()))
        self.a, self.b = a, b

    def forward(self, z, x):
        back = nn.functional.conv_transpose2d(torch.tanh(self.conv(z)), self.conv.weight, padding=1)
        return self.a * z + self.b * back + self.inject(x)


def _flat_grads(module: nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in module.parameters()])


def _grads(cell, x, target, solver, adjoint):
    cell.zero_grad(set_to_none=True)
    sol = fixed_point(lambda z: cell(z, x), torch.zeros_like(x), solver, adjoint)
    (sol.value - target).square().sum().backward()
    return _flat_grads(cell), sol


@pytest.fixture(scope="module")
def problem():
    cell = Cell().double()
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(2, 1, 8, 8, dtype=DT, generator=gen)
    target = torch.rand(2, 1, 8, 8, dtype=DT, generator=gen)
    ref, _ = _grads(cell, x, target, FixedPointIteration(tol=0.0, max_iter=120), UnrolledAdjoint())
    return cell, x, target, ref


def _rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize(
    "forward, backward",
    [
        (Anderson(tol=1e-12, max_iter=200), None),
        (FixedPointIteration(tol=1e-12, max_iter=300), FixedPointIteration()),
        (Nesterov(tol=1e-12, max_iter=300, restart=True), Anderson(regularization_mode="absolute")),
    ],
)
def test_implicit_gradient_matches_unrolled_to_convergence(problem, forward, backward):
    cell, x, target, ref = problem
    g, sol = _grads(cell, x, target, forward, ImplicitAdjoint(solver=backward, tol=1e-12, max_iter=300))
    assert _rel(g, ref) < 1e-3
    assert _rel(g, ref) < 1e-8  # in float64 it is in fact exact to the tolerances
    bs = sol.stats.backward
    assert bs.calls == 1 and bs.converged.all() and not bs.nonfinite.any()


def test_implicit_gradient_for_tuple_states():
    """An ADMM-like splitting with two state components of different shapes."""
    torch.manual_seed(2)
    lin = nn.Linear(6, 6).double()
    with torch.no_grad():
        lin.weight.mul_(0.5 / torch.linalg.matrix_norm(lin.weight, 2))
    scale = nn.Parameter(torch.tensor(0.3, dtype=DT))
    y = torch.randn(3, 6, dtype=DT)

    def f(z):
        x, u = z
        x_new = torch.tanh(lin(x - u.mean(dim=(1, 2))[:, None])) + y
        u_new = scale * torch.sin(u) + 0.2 * x_new.mean(dim=1)[:, None, None]
        return x_new, u_new

    z0 = (torch.zeros(3, 6, dtype=DT), torch.zeros(3, 2, 2, dtype=DT))

    def grads(solver, adjoint):
        lin.zero_grad(set_to_none=True)
        scale.grad = None
        x, u = fixed_point(f, z0, solver, adjoint).value
        (x.square().sum() + (u**3).sum()).backward()
        return torch.cat([lin.weight.grad.flatten(), lin.bias.grad, scale.grad[None]])

    ref = grads(FixedPointIteration(tol=0.0, max_iter=150), UnrolledAdjoint())
    for solver in (Anderson(tol=1e-12, max_iter=200), FixedPointIteration(tol=1e-12, max_iter=300)):
        g = grads(solver, ImplicitAdjoint(tol=1e-12, max_iter=300))
        assert _rel(g, ref) < 1e-3


def test_gradient_reaches_inputs_closed_over(problem):
    cell, _, target, _ = problem
    gen = torch.Generator().manual_seed(5)
    x0 = torch.rand(2, 1, 8, 8, dtype=DT, generator=gen)
    out = {}
    for name, solver, adjoint in (
        ("unrolled", FixedPointIteration(tol=0.0, max_iter=120), UnrolledAdjoint()),
        ("implicit", Anderson(tol=1e-12, max_iter=200), ImplicitAdjoint(tol=1e-12)),
    ):
        x = x0.clone().requires_grad_()
        sol = fixed_point(lambda z, x=x: cell(z, x), torch.zeros_like(x), solver, adjoint)
        (sol.value - target).square().sum().backward()
        out[name] = x.grad
    assert _rel(out["implicit"], out["unrolled"]) < 1e-3


def test_jacobian_free_and_phantom_gradients_point_the_right_way(problem):
    cell, x, target, ref = problem
    for adjoint in (JacobianFree(), PhantomAdjoint(steps=3, damping=0.7)):
        g, sol = _grads(cell, x, target, Anderson(tol=1e-10), adjoint)
        cos = float(g @ ref / (g.norm() * ref.norm()))
        assert cos > 0.5, (adjoint, cos)
        assert sol.stats.backward.calls == 1
    g1, _ = _grads(cell, x, target, Anderson(tol=1e-10), JacobianFree())
    g8, _ = _grads(cell, x, target, Anderson(tol=1e-10), PhantomAdjoint(steps=8, damping=1.0))
    assert _rel(g8, ref) < _rel(g1, ref)  # more phantom steps: closer to the implicit gradient


@pytest.mark.parametrize(
    "adjoint", [ImplicitAdjoint(), JacobianFree(), PhantomAdjoint(steps=2), UnrolledAdjoint()]
)
def test_every_parameter_of_a_conv_map_gets_a_finite_gradient(adjoint):
    torch.manual_seed(3)
    net = spectral_norm_all(
        nn.Sequential(
            nn.Conv2d(2, 8, 3, padding=1),
            nn.ELU(),
            nn.Conv2d(8, 8, 3, padding=1, bias=False),
            nn.ELU(),
            nn.Conv2d(8, 1, 3, padding=1),
        )
    )
    step = nn.Parameter(torch.tensor(0.5))
    x = torch.rand(2, 1, 8, 8)
    solver = (
        FixedPointIteration(tol=1e-4, max_iter=30)
        if isinstance(adjoint, UnrolledAdjoint)
        else Anderson(tol=1e-4, max_iter=50)
    )
    sol = fixed_point(
        lambda z: step * 0.5 * net(torch.cat([z, x], dim=1)) + x, torch.zeros_like(x), solver, adjoint
    )
    sol.value.square().mean().backward()
    params = [step, *net.parameters()]
    assert len(params) == 1 + 3 + 2  # step, the 3 spectral-normed weights ("original"), 2 biases
    for p in params:
        if not p.requires_grad:
            continue
        assert p.grad is not None and torch.isfinite(p.grad).all()
    assert step.grad.abs() > 0


def _saved_bytes(step) -> int:
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = step()
    loss.backward()
    return total


def test_activation_memory_does_not_grow_with_iterations_for_the_deq():
    cell = Cell(channels=8, a=0.9, b=0.09)  # slow enough that no iteration hits z = f(z) exactly
    x = torch.rand(2, 1, 16, 16)

    def measure(adjoint, iters):
        def step():
            sol = fixed_point(
                lambda z: cell(z, x),
                torch.zeros_like(x),
                FixedPointIteration(tol=0.0, max_iter=iters),
                adjoint,
            )
            assert sol.stats.iterations.tolist() == [iters, iters]
            return sol.value.square().mean()

        return _saved_bytes(step)

    deq10, deq100 = measure(ImplicitAdjoint(max_iter=10), 10), measure(ImplicitAdjoint(max_iter=10), 100)
    unr10, unr100 = measure(UnrolledAdjoint(), 10), measure(UnrolledAdjoint(), 100)
    assert deq10 > 0 and deq100 / deq10 <= 1.05
    assert unr100 / unr10 >= 8
    assert deq100 < unr10  # one application of the map, not ten


def test_no_graph_without_grad_mode_and_without_parameters():
    cell = Cell()
    x = torch.rand(1, 1, 8, 8)
    with torch.no_grad():
        sol = fixed_point(lambda z: cell(z, x), torch.zeros_like(x))
    assert not sol.value.requires_grad
    sol = fixed_point(lambda z: 0.5 * z + x, torch.zeros_like(x))  # nothing to differentiate
    assert not sol.value.requires_grad


def test_nan_in_the_incoming_gradient_is_zeroed_and_flagged(problem):
    cell, x, _, _ = problem
    for adjoint in (ImplicitAdjoint(), JacobianFree(), UnrolledAdjoint()):
        cell.zero_grad(set_to_none=True)
        solver = FixedPointIteration(tol=1e-6, max_iter=100)
        sol = fixed_point(lambda z: cell(z, x), torch.zeros_like(x), solver, adjoint)
        weights = torch.tensor([float("nan"), 1.0], dtype=DT).view(2, 1, 1, 1)
        (sol.value * weights).sum().backward()
        assert sol.stats.backward.nonfinite.tolist() == [True, False]
        grads = _flat_grads(cell)
        assert torch.isfinite(grads).all() and grads.abs().sum() > 0
        sol = fixed_point(lambda z: cell(z, x), torch.zeros_like(x), solver, adjoint, throw=True)
        with pytest.raises(ConvergenceError, match="NaN"):
            (sol.value * weights).sum().backward()


def test_diverging_adjoint_is_zeroed_and_flagged():
    # linear map z -> 2 z - 1 + w: Anderson solves the forward problem exactly, but the adjoint
    # iteration u = 2 u + g (plain iteration) diverges: no NaN or garbage may reach w
    w = nn.Parameter(torch.zeros(1, 3))
    sol = fixed_point(
        lambda z: 2 * z - 1 + w,
        torch.zeros(2, 3),
        Anderson(tol=1e-9),
        ImplicitAdjoint(solver=FixedPointIteration(), max_iter=500),
    )
    assert sol.converged
    sol.value.sum().backward()
    assert sol.stats.backward.nonfinite.all() and not sol.stats.backward.converged.any()
    assert torch.isfinite(w.grad).all() and float(w.grad.abs().sum()) == 0.0


def test_failed_forward_returns_last_finite_iterate_with_graph():
    w = nn.Parameter(torch.tensor(1.0))
    sol = fixed_point(lambda z: w * z * float("inf") + 1, torch.ones(2, 2), FixedPointIteration())
    assert sol.stats.nonfinite.all() and torch.isfinite(sol.value).all()


def test_stochastic_map_trains_with_implicit_and_jfb():
    """ODER-style: a fresh random block of rows per call; gradients flow to a step parameter."""
    gen = torch.Generator().manual_seed(0)
    A = torch.randn(6, 4, 8, generator=gen)
    y = torch.randn(2, 6, 4, generator=gen)
    step = nn.Parameter(torch.tensor(0.02))
    draw = torch.Generator().manual_seed(1)

    def f(z):
        blocks = torch.randperm(6, generator=draw)[:2]
        r = torch.einsum("brn,sn->sbr", A[blocks], z) - y[:, blocks]
        return z - step * 3 * torch.einsum("brn,sbr->sn", A[blocks], r) + 0.1 * torch.tanh(z)

    for adjoint in (ImplicitAdjoint(), JacobianFree()):
        step.grad = None
        sol = fixed_point(StochasticMap(f), torch.zeros(2, 8), Nesterov(max_iter=30), adjoint)
        sol.value.square().sum().backward()
        assert step.grad is not None and torch.isfinite(step.grad)


def test_unrolled_adjoint_refuses_non_differentiable_solvers():
    with pytest.raises(DeqirError, match="UnrolledAdjoint"):
        fixed_point(lambda z: 0.5 * z, torch.zeros(1, 2), Anderson(), UnrolledAdjoint())


def test_implicit_backward_is_an_autograd_function_not_a_hook(problem):
    cell, x, _, _ = problem
    sol = fixed_point(lambda z: cell(z, x), torch.zeros_like(x), Anderson(tol=1e-8))
    assert type(sol.value.grad_fn).__name__ == "_ImplicitFnBackward"
    assert not getattr(sol.value, "_backward_hooks", None)


def test_map_turning_nan_at_the_final_application_is_caught():
    w = nn.Parameter(torch.tensor(0.5))

    def f(z):  # finite during the (graph-free) solve, NaN at the differentiable re-application
        out = w * z + 1
        return out * float("nan") if torch.is_grad_enabled() else out

    solver = FixedPointIteration(tol=1e-6, max_iter=100)
    sol = fixed_point(f, torch.zeros(2, 2), solver, JacobianFree())
    assert sol.stats.nonfinite.all() and not sol.stats.converged.any()
    assert torch.isfinite(sol.value).all()
    with pytest.raises(ConvergenceError):
        fixed_point(f, torch.zeros(2, 2), solver, JacobianFree(), throw=True)


def test_parametrized_weights_are_computed_once_per_solve():
    from torch.nn.utils import parametrize

    calls = {"n": 0}

    class Halve(nn.Module):
        def forward(self, w):
            calls["n"] += 1
            return 0.5 * w / torch.linalg.matrix_norm(w, 2)

    lin = nn.Linear(4, 4)
    parametrize.register_parametrization(lin, "weight", Halve())
    calls["n"] = 0  # registering evaluates it once
    sol = fixed_point(lambda z: torch.tanh(lin(z)), torch.zeros(2, 4), FixedPointIteration(tol=1e-6))
    assert sol.stats.num_evals > 5
    assert calls["n"] == 2  # once for the whole solve, once for the differentiable application
    sol.value.sum().backward()
    assert lin.parametrizations.weight.original.grad is not None
