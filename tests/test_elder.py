"""ELDER: potentials, the monotone proximal-gradient algorithm, and the learned DEQ model."""

import pytest
import torch
from torch import nn

from deqir.errors import DeqirError, InvalidValueError
from deqir.methods.elder import (
    ELDER,
    GradientStepPotential,
    ImplicitPrior,
    REDPotential,
    ScalarPotential,
    build_elder,
    build_potential,
    proximal_gradient,
)
from deqir.physics.registry import build_operator
from deqir.priors import DnCNN, SmoothResUNet

pytestmark = pytest.mark.usefixtures("one_thread")


class HalfSquare(nn.Module):
    """``N(x) = ½ x²``: with the scalar potential, ``R(x) = ½‖x‖²``."""

    def forward(self, x):
        return 0.5 * x**2


def _dncnn(seed=0, residual=True, dtype=torch.float32, scale=None):
    torch.manual_seed(seed)
    net = DnCNN(depth=3, width=4, activation="elu", residual=residual).to(dtype)
    if scale is not None:
        with torch.no_grad():
            for p in net.parameters():
                p.mul_(scale)
    return net


def _blur_problem(n=16, batch=2, kernel_size=5, sigma=0.01, dtype=torch.float32, seed=0):
    op = build_operator("blur", n, kernel_size=kernel_size, sigma=1.6)
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 1, n, n, generator=gen, dtype=torch.float64)
    x = torch.nn.functional.avg_pool2d(x, 3, 1, 1, count_include_pad=False).to(dtype)
    y = op.A(x) + sigma * torch.randn(x.shape, generator=gen, dtype=torch.float64).to(dtype)
    return op, x, y


# --------------------------------------------------------------------------- potentials
@pytest.mark.parametrize("kind", ["gradient_step", "red", "scalar"])
def test_potential_gradient_matches_finite_differences(kind):
    net = _dncnn(seed=1, residual=kind != "scalar", dtype=torch.float64)
    R = build_potential(kind, net)
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(2, 1, 8, 8, generator=gen, dtype=torch.float64)
    v = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    eps = 1e-5
    with torch.no_grad():
        fd = (R.value(x + eps * v) - R.value(x - eps * v)) / (2 * eps)
    g = R.grad(x)
    assert g.shape == x.shape and not g.requires_grad
    exact = (g * v).flatten(1).sum(1)
    torch.testing.assert_close(exact, fd, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("cls", [GradientStepPotential, REDPotential, ScalarPotential])
def test_potential_gradient_is_differentiable_again(cls):
    """gradcheck of x -> ∇R(x) with create_graph: the Hessian-vector products double backprop uses."""
    R = cls(_dncnn(seed=3, dtype=torch.float64))
    x = torch.rand(1, 1, 5, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: R.grad(v, create_graph=True), (x,), eps=1e-6, atol=1e-6)


def test_closed_form_potentials():
    x = torch.rand(2, 1, 6, 6, dtype=torch.float64)
    zero = ScalarPotential(HalfSquare())
    torch.testing.assert_close(zero.grad(x), x)
    ident = GradientStepPotential(nn.Conv2d(1, 1, 1, bias=False).double())
    with torch.no_grad():
        ident.network.weight.fill_(0.5)  # N(x) = x/2: R = ⅛‖x‖², ∇R = x/4
    torch.testing.assert_close(ident.grad(x), x / 4)
    red = REDPotential(ident.network)  # R = ½ xᵀ(x/2) = ¼‖x‖², ∇R = x/2
    torch.testing.assert_close(red.grad(x), x / 2)
    torch.testing.assert_close(red.value(x), 0.25 * x.flatten(1).pow(2).sum(1))


def test_relu_network_is_rejected_with_the_fix_named():
    net = DnCNN(depth=3, width=4, activation="relu")
    for kind in ("gradient_step", "red", "scalar"):
        with pytest.raises(InvalidValueError, match=r"ReLU.*(ELU|elu).*softplus"):
            ELDER(net, potential=kind)
    with pytest.raises(InvalidValueError, match="PReLU"):
        GradientStepPotential(DnCNN(depth=2, width=4, activation="prelu"))
    ELDER(net, potential="implicit")  # one derivative suffices for the implicit baseline


def test_unknown_names_suggest_the_closest():
    net = _dncnn()
    with pytest.raises(InvalidValueError, match="did you mean 'gradient_step'"):
        ELDER(net, potential="gradient_stp")
    with pytest.raises(DeqirError, match="did you mean 'anderson'"):
        ELDER(net, solver="andersen")
    with pytest.raises(DeqirError, match="did you mean 'implicit'"):
        build_elder(net, adjoint="implict")
    with pytest.raises(InvalidValueError, match="no potential value"):
        ImplicitPrior(net).value(torch.zeros(1, 1, 4, 4))


# --------------------------------------------------------------------------- algorithm
@pytest.mark.parametrize("momentum", [False, True])
def test_objective_never_increases_with_backtracking(momentum):
    op, _, y = _blur_problem(n=32, batch=2, kernel_size=9, sigma=0.03)
    torch.manual_seed(0)
    R = GradientStepPotential(SmoothResUNet(channels=(4, 8)))
    x, trace = proximal_gradient(
        y, op, R, lam=1.0, tau=100.0, max_iter=25, tol=0.0, momentum=momentum
    )  # untrained network, a far too large step
    obj = trace.objective
    assert obj.shape[1] == 2 and obj.shape[0] == int(trace.iterations.max()) + 1
    assert torch.isfinite(obj).all()
    assert bool((obj[1:] <= obj[:-1]).all()) and trace.monotone
    assert float(obj[-1].max()) < float(obj[0].min())  # it did decrease
    assert int(trace.backtracks.min()) > 0 and float(trace.tau.min()) < 100.0
    assert bool((x >= 0).all())
    # without backtracking the same step is unstable: the objective goes up
    _, fixed = proximal_gradient(y, op, R, lam=1.0, tau=100.0, max_iter=5, tol=0.0, backtracking=False)
    assert not fixed.monotone


@pytest.mark.parametrize("momentum", [False, True])
@pytest.mark.parametrize("backtracking", [False, True])
def test_quadratic_potential_converges_to_the_closed_form(momentum, backtracking):
    op, _, y = _blur_problem(n=16, dtype=torch.float64)
    lam = 0.5
    x, trace = proximal_gradient(
        y,
        op,
        ScalarPotential(HalfSquare()),
        lam=lam,
        tau=1.0,
        max_iter=300,
        tol=1e-12,
        nonnegative=False,
        momentum=momentum,
        backtracking=backtracking,
    )
    want = op.prox_data(torch.zeros_like(y), y, 1 / lam)  # argmin ½‖Ax−y‖² + λ/2‖x‖²
    assert bool(trace.converged.all()) and not bool(trace.stalled.any())
    assert trace.monotone or not backtracking  # guaranteed with backtracking only
    # a monotone line search resolves steps down to sqrt(rounding error of F) only
    torch.testing.assert_close(x, want, rtol=0, atol=1e-6 if backtracking else 1e-10)


def test_starting_at_the_minimiser_stops_at_once():
    op, _, y = _blur_problem(n=16, dtype=torch.float64)
    want = op.prox_data(torch.zeros_like(y), y, 2.0)
    x, trace = proximal_gradient(
        y, op, ScalarPotential(HalfSquare()), 0.5, 1.0, init=want, tol=1e-12, nonnegative=False
    )
    assert bool(trace.converged.all()) and int(trace.iterations.max()) <= 1
    assert trace.step_norm.shape[0] == trace.objective.shape[0] - 1 == int(trace.iterations.max())
    torch.testing.assert_close(x, want, rtol=0, atol=1e-12)


def test_gradient_data_step_for_operators_without_prox():
    op, _, y = _blur_problem(n=16, dtype=torch.float64)
    R = ScalarPotential(HalfSquare())
    x, trace = proximal_gradient(
        y, op, R, lam=0.5, tau=1.0, max_iter=400, tol=1e-12, nonnegative=False, data_mode="gradient"
    )
    torch.testing.assert_close(x, op.prox_data(torch.zeros_like(y), y, 2.0), rtol=0, atol=1e-8)
    assert trace.monotone


def test_implicit_prior_refuses_backtracking():
    op, _, y = _blur_problem()
    with pytest.raises(InvalidValueError, match="backtracking=False"):
        proximal_gradient(y, op, ImplicitPrior(_dncnn()), lam=0.1, tau=1.0)
    _, trace = proximal_gradient(y, op, ImplicitPrior(_dncnn()), 0.1, 1.0, max_iter=3, backtracking=False)
    assert bool(torch.isnan(trace.objective).all()) and trace.monotone


# --------------------------------------------------------------------------- learned model
def _contractive_model(adjoint, solver="plain", max_iter=400, potential="gradient_step"):
    # a non-residual network with small weights: R(x) ≈ ½‖x‖², the map contracts by ≈ 1 − λτ
    net = _dncnn(seed=4, residual=False, dtype=torch.float64, scale=0.3)
    model = ELDER(
        net,
        potential=potential,
        lam=0.5,
        tau=1.0,
        solver=solver,
        max_iter=max_iter,
        tol=1e-13,
        adjoint=adjoint,
        backward_tol=1e-13,
        backward_max_iter=400,
        nonnegative=False,
    ).double()
    return model


def _param_grads(model, y, op, x_true):
    model.zero_grad()
    out = model(y, op)
    (out - x_true).square().sum().backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()])


@pytest.mark.parametrize("potential", ["gradient_step", "implicit"])
def test_implicit_gradient_matches_unrolled_backprop(potential):
    op, x_true, y = _blur_problem(n=16, batch=1, dtype=torch.float64)
    model = _contractive_model("implicit", potential=potential)
    g_ift = _param_grads(model, y, op, x_true)
    assert bool(model.last_stats.converged.all())
    model.adjoint_name = "unrolled"  # same parameters, backprop through 60 steps
    model.max_iter = 60
    g_unr = _param_grads(model, y, op, x_true)
    rel = float((g_ift - g_unr).norm() / g_unr.norm())
    assert rel < 1e-3, rel
    assert float(g_ift.norm()) > 0


@pytest.mark.parametrize(
    "options",
    [
        {"potential": "gradient_step", "adjoint": "implicit"},
        {"potential": "red", "adjoint": "jfb", "solver": "plain"},
        {"potential": "scalar", "adjoint": "implicit", "solver": "nesterov"},
        {"potential": "implicit", "adjoint": "implicit"},
    ],
)
def test_every_parameter_gets_a_finite_gradient(options):
    op, x_true, y = _blur_problem(n=16, batch=2)
    torch.manual_seed(0)
    net = SmoothResUNet(channels=(4, 8))
    model = build_elder(net, lam=0.1, tau=1.0, max_iter=15, backward_max_iter=15, **options).train()
    out = model(y, op, init=op.A_adjoint(y))
    (out - x_true).square().mean().backward()
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert "raw_parameters" in names
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert bool(torch.isfinite(p.grad).all()), name
    assert float(model.raw_parameters.grad.abs().sum()) > 0


def test_eval_mode_runs_the_monotone_algorithm_and_keeps_the_trace():
    op, x_true, y = _blur_problem(n=16, batch=2)
    torch.manual_seed(0)
    model = ELDER(SmoothResUNet(channels=(4, 8)), tau=50.0, lam=0.5, eval_max_iter=15, momentum=True).eval()
    with torch.no_grad():  # ∇R is taken with autograd inside, even under no_grad
        out = model(y, op)
    assert not out.requires_grad and model.last_trace is not None and model.last_trace.monotone
    its = model.iterates(y, op)
    assert len(its) == int(model.last_trace.iterations.max()) + 1
    torch.testing.assert_close(its[-1], out)
    fixed = ELDER(SmoothResUNet(channels=(4, 8)), potential="implicit", learn_parameters=False).eval()
    assert fixed(y, op).shape == y.shape
    assert "raw_parameters" not in dict(fixed.named_parameters())  # λ, τ fixed: a buffer


def test_trainer_registry_and_config_options():
    from deqir.errors import ConfigError
    from deqir.train.registry import build_method

    net = SmoothResUNet(channels=(4, 8))
    model = build_method("elder", net, {"potential": "red", "lam": 0.05, "tau": 5.0})
    assert isinstance(model, ELDER) and abs(float(model.tau.detach()) - 5.0) < 1e-5
    with pytest.raises(ConfigError, match="did you mean 'lam'"):
        build_method("elder", net, {"lamb": 0.05})
