"""RED(DEQ), ODER and RED(Unfold): exact operator accounting, unbiased steps, gradients, memory."""

import pytest
import torch

from deqir.errors import InvalidValueError
from deqir.methods.equilibrium import REDEquilibrium
from deqir.physics import ParallelBeamCT
from deqir.physics.registry import build_operator
from deqir.priors import DnCNN


@pytest.fixture(scope="module")
def ct():
    return ParallelBeamCT(32, num_angles=30)


@pytest.fixture(scope="module")
def batch(ct):
    gen = torch.Generator().manual_seed(0)
    x = torch.zeros(2, 1, 32, 32)
    x[:, :, 8:24, 10:22] = 0.8
    x = x + 0.1 * torch.rand(x.shape, generator=gen)
    y = ct.A(x)
    return x, y, ct.fbp(y).clamp_min(0)


def _net(seed=0):
    torch.manual_seed(seed)
    return DnCNN(depth=3, width=8)


def test_operator_applications_scale_exactly_with_the_minibatch(ct, batch):
    _, y, x0 = batch
    full = REDEquilibrium(_net(), mode="deq", solver="plain", tol=0.0, max_iter=12)
    oder = REDEquilibrium(_net(), mode="oder", minibatch=10, solver="plain", max_iter=12)
    with torch.no_grad():
        full(y, ct, init=x0)
        oder(y, ct, init=x0)
    assert oder.block_applications / full.block_applications == pytest.approx(10 / 30, abs=0)


def test_oder_step_is_unbiased(ct, batch):
    _, y, x0 = batch
    net = _net()
    full = REDEquilibrium(net, mode="deq", nonnegative=False)
    oder = REDEquilibrium(net, mode="oder", minibatch=6, sampling="uniform", nonnegative=False, seed=3)
    with torch.no_grad():
        want = full.make_map(y, ct)(x0)
        f = oder.make_map(y, ct)
        draws = torch.stack([f(x0) for _ in range(600)])
    mean, sem = draws.mean(0), draws.std(0) / 600**0.5
    assert float(((mean - want).abs() / (sem + 1e-7)).quantile(0.99)) < 5
    assert float((draws[0] - want).abs().max()) > 1e-3  # single draws really differ


@pytest.mark.parametrize(
    "kwargs",
    [
        {"mode": "deq"},
        {"mode": "deq", "adjoint": "jfb"},
        {"mode": "oder", "minibatch": 10, "max_iter": 15},
        {"mode": "unfold", "max_iter": 5},
    ],
)
def test_training_step_gives_every_parameter_a_finite_gradient(ct, batch, kwargs):
    x, y, x0 = batch
    model = REDEquilibrium(_net(), max_iter=kwargs.pop("max_iter", 30), **kwargs)
    loss = (model(y, ct, init=x0) - x).square().mean()
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    assert float(model.raw_parameters.grad.abs().sum()) > 0


def test_training_lowers_the_loss(ct, batch):
    x, y, x0 = batch
    model = REDEquilibrium(_net(1), mode="oder", minibatch=10, max_iter=20, tau=0.2)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        opt.zero_grad()
        loss = (model(y, ct, init=x0) - x).square().mean()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert min(losses[-5:]) < 0.8 * losses[0]


def _saved_bytes(model, y, ct, x0):
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(y, ct, init=x0).square().mean()
    return total[0]


def test_deq_memory_is_flat_and_unfolding_memory_grows(ct, batch):
    _, y, x0 = batch
    deq = [
        _saved_bytes(REDEquilibrium(_net(), mode="oder", minibatch=10, max_iter=k), y, ct, x0)
        for k in (5, 40)
    ]
    unf = [_saved_bytes(REDEquilibrium(_net(), mode="unfold", max_iter=k), y, ct, x0) for k in (5, 40)]
    assert deq[1] == deq[0]
    assert unf[1] / unf[0] > 6


def test_mri_coils_as_blocks():
    op = build_operator("mri_multi", image_size=32, num_coils=8)
    x = torch.rand(1, 1, 32, 32)
    y = op.A(x)
    model = REDEquilibrium(_net(), mode="oder", minibatch=4, max_iter=10)
    out = model(y, op, init=op.zero_filled(y).abs())
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_bad_options_are_rejected():
    with pytest.raises(InvalidValueError, match="nesterov"):
        REDEquilibrium(_net(), mode="oder", solver="anderson")
    with pytest.raises(InvalidValueError, match="did you mean 'oder'"):
        REDEquilibrium(_net(), mode="odr")
    with pytest.raises(InvalidValueError, match="step"):
        REDEquilibrium(_net(), step=0.0)


def test_trainer_builds_it_from_a_config():
    from deqir.train.registry import build_method

    model = build_method("red_equilibrium", _net(), {"mode": "oder", "minibatch": 10})
    assert isinstance(model, REDEquilibrium) and model.minibatch == 10


def test_phantom_gradient_draws_fresh_minibatches(ct, batch):
    x, y, x0 = batch
    model = REDEquilibrium(_net(), mode="oder", minibatch=10, max_iter=8, adjoint="phantom", phantom_steps=3)
    (model(y, ct, init=x0) - x).square().mean().backward()
    # 8 graph-free solves + 3 phantom applications with grad, 10 of 30 blocks each, A and A^T
    assert model.block_applications == 2 * 10 * (8 + 3)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_bench_cost_meter_counts_blocks_exactly(batch, memory_meter):
    from deqir.bench.common import BenchReport
    from deqir.bench.oder import _cost_rows

    op = ParallelBeamCT(32, num_angles=30)
    x = batch[0]
    report = BenchReport("t")
    costs = _cost_rows(
        "ct",
        "tiny",
        op,
        _net(),
        x,
        50.0,
        "fbp",
        (10, 30),
        1,
        report,
        memory_meter,
        iterations=6,
        train_average=2,
    )
    # ODER's averaged training iterations are its solve's last ones: still exactly w/b, and as
    # many as without averaging
    assert costs[10]["operator_block_applications"] / costs[30]["operator_block_applications"] == 10 / 30
    plain = _cost_rows("ct", "tiny", op, _net(), x, 50.0, "fbp", (10,), 1, BenchReport("t"), memory_meter, 6)
    assert costs[10]["operator_block_applications"] == plain[10]["operator_block_applications"]
    assert costs[30]["saved_bytes"] > 0 and 0 < costs[30]["operator_share"] < 1
    assert [r["train_average"] for r in report.rows] == [2, 0]  # the full-batch map is not averaged


def test_tail_averaging_only_at_test_time_for_stochastic_maps(ct, batch):
    _, y, x0 = batch
    model = REDEquilibrium(_net(), mode="oder", minibatch=10, max_iter=6, test_average=4)
    with torch.no_grad():
        model(y, ct, init=x0)
    assert model.block_applications == 2 * 10 * (6 + 4)
    full = REDEquilibrium(_net(), mode="deq", solver="plain", tol=0.0, max_iter=6, test_average=4)
    with torch.no_grad():
        full(y, ct, init=x0)
    assert full.block_applications == 2 * 30 * 6  # a deterministic map is not averaged


def test_training_scores_the_tail_average_with_the_solutions_gradient(ct, batch):
    x, y, x0 = batch
    n, k = 5, 3
    model = REDEquilibrium(
        _net(), mode="oder", minibatch=10, solver="plain", max_iter=n, adjoint="jfb", train_average=k
    )
    out = model(y, ct, init=x0)
    # the same sampler seed draws the same minibatches in the same order: n - k solver
    # iterations, JFB's re-application at the solution, then the k averaged ones
    reference = REDEquilibrium(_net(), mode="oder", minibatch=10, solver="plain", max_iter=n + 1)
    iterates = reference.iterates(y, ct, init=x0)
    mean = torch.stack(iterates[n - k + 2 :]).mean(0)
    torch.testing.assert_close(out.detach(), mean)
    assert model.block_applications == 2 * 10 * (n + 1)  # as many as without averaging
    (out - x).square().mean().backward()
    # the gradient: the loss's gradient at the average, sent back through the solution
    single = REDEquilibrium(_net(), mode="oder", minibatch=10, solver="plain", max_iter=n - k, adjoint="jfb")
    solution = single(y, ct, init=x0)
    torch.testing.assert_close(solution.detach(), iterates[n - k + 1])
    solution.backward(2 * (mean - x) / x.numel())
    named = dict(single.named_parameters())
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
        torch.testing.assert_close(p.grad, named[name].grad)
    full = REDEquilibrium(
        _net(), mode="deq", solver="plain", tol=0.0, max_iter=n, adjoint="jfb", train_average=k
    )
    full(y, ct, init=x0)
    assert full.block_applications == 2 * 30 * (n + 1)  # a deterministic map is not averaged
    with torch.no_grad():  # at test: max_iter iterations, then test_average further ones
        model.block_applications, model.test_average = 0, 2
        model(y, ct, init=x0)
    assert model.block_applications == 2 * 10 * (n + 2)


@pytest.mark.parametrize("adjoint", ["phantom", "implicit"])
def test_training_on_the_tail_average_with_the_shipped_solver_and_other_adjoints(ct, batch, adjoint):
    x, y, x0 = batch
    n = 6

    def model(max_iter, k=0):
        return REDEquilibrium(
            _net(),
            mode="oder",
            minibatch=10,
            solver="nesterov",
            max_iter=max_iter,
            adjoint=adjoint,
            train_average=k,
        )

    for k in (2, n - 1):  # the last one leaves a single solver iteration
        averaged, plain, single = model(n, k), model(n), model(n - k)
        out = averaged(y, ct, init=x0)
        plain(y, ct, init=x0)
        solution = single(y, ct, init=x0)
        # forward: as many operator applications as without averaging
        assert averaged.block_applications == plain.block_applications
        assert averaged.block_applications == single.block_applications + 2 * 10 * k
        assert averaged.last_stats.iterations.max() == n - k
        assert not torch.allclose(out, solution)  # the value is the average, not the solution
        (out - x).square().mean().backward()
        grads = [p.grad for p in averaged.parameters()]
        assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)
        if adjoint == "phantom":  # its graph is built in the forward: the same draws as `single`
            solution.backward(2 * (out.detach() - x) / x.numel())
            for mine, theirs in zip(averaged.parameters(), single.parameters(), strict=True):
                torch.testing.assert_close(mine.grad, theirs.grad)


def test_negative_or_too_long_tail_averages_are_refused():
    for kwargs in ({"test_average": -1}, {"train_average": -2}):
        with pytest.raises(InvalidValueError, match="use 0 \\(off\\) or more"):
            REDEquilibrium(_net(), mode="oder", minibatch=10, **kwargs)
    with pytest.raises(InvalidValueError, match="use train_average < max_iter"):
        REDEquilibrium(_net(), mode="oder", minibatch=10, max_iter=10, train_average=10)
    model = REDEquilibrium(_net(), mode="oder", minibatch=10, max_iter=10, train_average=4, adjoint="jfb")
    model.max_iter = 4  # lowered after construction (as the bench's cost rows do): refused when training
    ct = ParallelBeamCT(32, num_angles=30)
    y = ct.A(torch.rand(1, 1, 32, 32))
    with pytest.raises(InvalidValueError, match="train_average=4 .* max_iter=4"):
        model(y, ct)
    with torch.no_grad():  # at test time it does not apply
        assert model(y, ct).shape == (1, 1, 32, 32)
    # a deterministic map ignores it
    REDEquilibrium(_net(), mode="deq", max_iter=10, train_average=10)


def test_oder_bench_groups_test_images_by_their_source():
    from deqir.bench.common import split_images
    from deqir.bench.oder import _sources

    groups = _sources("ct_phantoms", "test", None, size=32)
    indices = sorted(i for idx in groups.values() for i in idx)
    assert indices == list(range(split_images("ct_phantoms", "test", None, size=32).shape[0]))
    assert "ellipses" in groups and all(idx for idx in groups.values())
    assert sum(map(len, _sources("ct_phantoms", "test", 3, size=32).values())) == 3


def test_oder_bench_tests_each_model_with_the_iterations_it_was_trained_with(monkeypatch, tmp_path):
    from deqir.bench import oder
    from deqir.train.checkpoint import save_weights

    monkeypatch.setattr(oder, "WEIGHTS_DIR", tmp_path)
    net = _net()
    save_weights(net, tmp_path / "m100.safetensors", config={"method": {"options": {"max_iter": 100}}})
    save_weights(net, tmp_path / "plain.safetensors", config={"method": {"options": {}}})
    assert oder._trained_iterations("m100") == 100
    assert oder._trained_iterations("plain") == oder.DEFAULT_ITERATIONS  # no max_iter in the config
    assert oder._trained_iterations("absent") == oder.DEFAULT_ITERATIONS
    assert oder._trained_iterations(None) == oder.DEFAULT_ITERATIONS
    save_weights(net, tmp_path / "avg.safetensors", config={"method": {"options": {"train_average": 10}}})
    assert oder._trained_option("avg", "train_average", 0) == 10
    assert oder._trained_option("m100", "train_average", 0) == 0


# ----------------------------------------------------------------------------- SAGA estimator
@pytest.mark.parametrize("name", ["ct", "mri_multi", "idt"])
def test_saga_estimate_is_exactly_unbiased_for_any_table(name):
    """Over every minibatch of 2 of 4 blocks, the SAGA estimate averages to the full gradient,
    whatever residuals its table holds (here: those of two earlier, different points)."""
    import itertools

    from deqir.physics.sampling import SagaGradient

    options = {"ct": {"num_angles": 4}, "mri_multi": {"num_coils": 4}, "idt": {}}[name]
    op = build_operator(name, image_size=12, **options).double()
    if op.num_blocks != 4:
        op = op.select([0, 1, 2, 3])
    gen = torch.Generator().manual_seed(1)
    image = lambda: torch.rand(1, *op.image_shape, generator=gen, dtype=torch.float64)  # noqa: E731
    x, y = image(), op.A(image())
    saga = SagaGradient(op, y)
    saga(image(), [0, 2])
    saga(image(), [1, 2])
    assert float(saga.table.abs().amax()) > 0 and float(saga.table.select(op.block_dim, 3).abs().amax()) == 0
    subsets = list(itertools.combinations(range(4), 2))
    mean = sum(saga(x, list(s), update=False) for s in subsets) / len(subsets)
    torch.testing.assert_close(mean, op.data_grad(x, y), rtol=1e-10, atol=1e-12)
    single = saga(x, [0, 1], update=False)
    assert float((single - op.data_grad(x, y)).abs().amax()) > 1e-6  # one draw is still noisy


def _count_block_applications(op):
    """Wrap ``op``'s kernels to count the blocks they are applied to (what the operator really does)."""
    counts = {"blocks": 0}
    for name in ("_forward", "_adjoint"):
        kernel = getattr(op, name)

        def counted(t, blocks, kernel=kernel):
            counts["blocks"] += op.num_blocks if blocks is None else int(torch.as_tensor(blocks).numel())
            return kernel(t, blocks)

        setattr(op, name, counted)
    return counts


@pytest.mark.parametrize("solver,tolerance", [("plain", 1e-4), ("nesterov", 1e-3)])
def test_saga_oder_reaches_the_full_batch_fixed_point_at_the_same_operator_cost(batch, solver, tolerance):
    """Plain ODER stalls at a noise floor around RED(DEQ)'s fixed point; ODER with the SAGA
    estimate converges to it, applying the operator to exactly as many blocks."""
    from deqir.methods.common import lipschitz

    _, y, x0 = batch
    smoother = torch.nn.Conv2d(1, 1, 3, padding=1, bias=False)
    torch.nn.init.constant_(smoother.weight, 1 / 9)
    common = dict(step=1.0, tau=0.5, learn_parameters=False)
    full = REDEquilibrium(smoother, mode="deq", solver="anderson", tol=1e-7, max_iter=500, **common)
    with torch.no_grad():
        want = full(y, ParallelBeamCT(32, num_angles=30), init=x0)
    assert bool(full.last_stats.converged.all())
    errors, applied = {}, {}
    for estimator in ("minibatch", "saga"):
        op = ParallelBeamCT(32, num_angles=30)
        lipschitz(op)  # computed (and cached) before counting: its power method uses every block
        counts = _count_block_applications(op)
        model = REDEquilibrium(
            smoother, mode="oder", minibatch=10, estimator=estimator, solver=solver, max_iter=400, **common
        )
        with torch.no_grad():
            out = model(y, op, init=x0)
        errors[estimator] = float((out - want).norm() / want.norm())
        applied[estimator] = counts["blocks"]
    assert applied["saga"] == applied["minibatch"] == 2 * 10 * 400, applied
    assert errors["saga"] < errors["minibatch"] / 10, errors
    assert errors["saga"] < tolerance, errors


def test_saga_estimate_has_the_minibatch_gradient_in_x(ct, batch):
    """The table is a constant: the estimate's derivative in x is the plain minibatch one's."""
    from deqir.physics.sampling import SagaGradient

    x, y, _ = batch
    saga = SagaGradient(ct, y)
    saga(x.flip(-1), torch.arange(0, 30, 2))  # a non-zero table
    blocks = torch.tensor([1, 4, 9, 20])
    probe = torch.rand(x.shape, generator=torch.Generator().manual_seed(3))
    z = x.clone().requires_grad_(True)
    (want,) = torch.autograd.grad((ct.data_grad(z, y, blocks) * probe).sum(), z)
    (got,) = torch.autograd.grad((saga(z, blocks) * probe).sum(), z)
    torch.testing.assert_close(got, want)
    assert float(want.abs().amax()) > 0


def test_saga_accepts_measurements_of_another_precision(ct, batch):
    from deqir.physics.sampling import SagaGradient

    x, y, _ = batch
    saga = SagaGradient(ct.double(), y.float())
    first = saga(x.double(), [0, 1, 2])
    assert first.dtype == torch.float64 and saga.table.dtype == torch.float32


def test_saga_keeps_a_frozen_map_fixed(ct, batch):
    from deqir.solvers import StochasticMap

    _, y, x0 = batch
    model = REDEquilibrium(_net(), mode="oder", minibatch=10, estimator="saga", max_iter=5, adjoint="phantom")
    f = model.make_map(y, ct)
    assert isinstance(f, StochasticMap)
    with torch.no_grad():
        f(x0)
        with f.freeze():
            first, second = f(x0), f(x0)
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    model(y, ct, init=x0).square().mean().backward()
    grads = [p.grad for p in model.network.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_saga_errors_name_what_to_change(batch):
    from deqir.physics.sampling import SagaGradient

    with pytest.raises(InvalidValueError, match="estimator.*saga|minibatch"):
        REDEquilibrium(_net(), mode="oder", minibatch=2, estimator="svrg")
    single = build_operator("mri_single", image_size=16)
    y = single.A(torch.rand(1, 1, 16, 16))
    with pytest.raises(InvalidValueError, match="no block axis.*estimator='minibatch'"):
        SagaGradient(single, y)


def test_saga_refuses_steps_at_which_it_diverges(ct, batch):
    _, y, _ = batch
    with pytest.raises(InvalidValueError, match="step <= 1"):
        REDEquilibrium(_net(), mode="oder", minibatch=2, estimator="saga", step=1.5)
    model = REDEquilibrium(_net(), mode="oder", minibatch=10, estimator="saga", step=1.0)
    with torch.no_grad():  # a learned step that grew past the limit
        model.raw_parameters[0] += 1.0
    with pytest.raises(InvalidValueError, match="the step is 1.7.*step <= 1"):
        model.make_map(y, ct)
    with pytest.raises(InvalidValueError, match="mode='oder'"):
        REDEquilibrium(_net(), mode="deq", estimator="saga", step=1.0)
