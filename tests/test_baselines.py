"""Classical, TV and PnP/RED baselines (deqir.methods.tv, .pnp, .baselines, .denoisers)."""

import numpy as np
import pytest
import torch

from deqir.errors import DeqirError, InvalidValueError
from deqir.methods.baselines import (
    BASELINE_METHODS,
    DENOISER_METHODS,
    run_baseline,
    simulate,
    tune_hyperparameters,
)
from deqir.methods.common import data_step, initial_estimate, lipschitz
from deqir.methods.denoisers import BlindDenoiser, GaussianSmoother, as_denoiser
from deqir.methods.pnp import pnp_admm, pnp_hqs, pnp_pgm, red_fp, red_gd
from deqir.methods.tv import grad2d, grad2d_adjoint, total_variation, tv_objective, tv_reconstruction
from deqir.metrics import psnr
from deqir.physics.registry import build_operator

SIZE = 48
ITERS = {"tv": 50, "pnp_pgm": 20, "pnp_admm": 15, "pnp_hqs": 20, "red_gd": 30, "red_fp": 10}
NOISE = {"blur": {"noise_sigma": 0.02}, "ct": {"noise_snr_db": 30.0}, "mri_single": {"noise_snr_db": 30.0}}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def phantom():
    from deqir.data.phantoms import shepp_logan
    from deqir.data.splits import fit_image

    return torch.from_numpy(fit_image(shepp_logan(SIZE), SIZE, "resize"))[None, None].float()


@pytest.fixture(scope="module")
def problems(phantom):
    out = {}
    for name, noise in NOISE.items():
        op = build_operator(name, image_size=SIZE)
        out[name] = (op, simulate(op, phantom, seed=0, **noise))
    return out


@pytest.mark.parametrize("task", list(NOISE))
def test_every_baseline_improves_over_its_initialisation(task, problems, phantom):
    op, y = problems[task]
    start = float(psnr(initial_estimate(op, y).clamp(0, 1), phantom))
    D = GaussianSmoother()
    for method, iterations in ITERS.items():
        res = run_baseline(op, y, method, denoiser=D, iterations=iterations)
        gain = float(psnr(res.x.clamp(0, 1), phantom)) - start
        assert gain > 0.5, f"{task}/{method} gained only {gain:.2f} dB over its initialisation"
        assert int(res.stats.iterations[0]) == iterations  # tol=0: a fixed count, run by the engine
        assert res.seconds > 0 and not res.x.requires_grad


def test_initialisation_defaults_per_operator(problems):
    op, y = problems["ct"]
    np.testing.assert_allclose(initial_estimate(op, y), op.fbp(y, filter="hann").clamp_min(0))
    op, y = problems["mri_single"]
    np.testing.assert_allclose(initial_estimate(op, y), op.zero_filled(y))
    op, y = problems["blur"]
    assert torch.equal(initial_estimate(op, y), y)
    sr = build_operator("superres", image_size=SIZE)
    ys = sr.A(torch.rand(1, 1, SIZE, SIZE))
    up = torch.nn.functional.interpolate(ys, scale_factor=2, mode="bicubic", align_corners=False)
    assert torch.equal(initial_estimate(sr, ys), up)
    x0 = torch.full((1, 1, SIZE, SIZE), 0.5)  # an explicit x0 overrides the default
    res = pnp_pgm(op, y, GaussianSmoother(), iterations=1, x0=x0, gamma=1e-9, sigma=1e-3)
    assert float((res.x - 0.5).abs().max()) < 1e-3


@pytest.mark.parametrize("algorithm", ["fista", "pdhg"])
def test_tv_objective_decreases(algorithm, problems):
    op, y = problems["blur"]
    lam = 0.01
    x0 = initial_estimate(op, y)
    values = [float(tv_objective(op, y, x0, lam))]
    for iterations in (10, 40, 160):
        res = tv_reconstruction(op, y, lam, algorithm=algorithm, iterations=iterations)
        values.append(float(tv_objective(op, y, res.x, lam)))
    assert all(b < a for a, b in zip(values, values[1:], strict=False)), values
    assert values[-1] < 0.8 * values[0]


def test_tv_gradient_is_adjoint_and_fista_agrees_with_pdhg(problems):
    x, q = torch.randn(2, 1, 9, 7, dtype=torch.float64), torch.randn(2, 2, 1, 9, 7, dtype=torch.float64)
    assert torch.isclose((grad2d(x) * q).sum(), (x * grad2d_adjoint(q)).sum())
    op, y = problems["mri_single"]
    a = tv_reconstruction(op, y, 1e-3, algorithm="fista", iterations=200).x
    b = tv_reconstruction(op, y, 1e-3, algorithm="pdhg", iterations=1000).x
    assert float(psnr(a, b)) > 35  # the same minimiser, two algorithms
    noisy = a + 0.05 * torch.randn(a.shape, generator=torch.Generator().manual_seed(0))
    assert float(total_variation(a)) < float(total_variation(noisy))


@pytest.mark.parametrize("name", ["blur", "mri_single", "superres"])
def test_admm_cg_data_step_agrees_with_closed_form_prox(name, phantom):
    op = build_operator(name, image_size=SIZE)
    y = simulate(op, phantom, noise_sigma=0.01)
    z = torch.rand(1, 1, SIZE, SIZE, dtype=torch.float32, generator=torch.Generator().manual_seed(0))
    exact = data_step(op, z, y, 3.0, "prox")
    cg = data_step(op, z, y, 3.0, "cg", cg_tol=1e-7, cg_iter=200)
    assert float((exact - cg).abs().max()) < 1e-4
    D = GaussianSmoother()
    a = pnp_admm(op, y, D, iterations=10, gamma=3.0, data_step_mode="prox")
    b = pnp_admm(op, y, D, iterations=10, gamma=3.0, data_step_mode="cg", cg_tol=1e-7, cg_iter=200)
    assert float((a.x - b.x).abs().max()) < 1e-3


def test_cg_data_step_improves_a_warm_start_close_to_the_solution(phantom):
    # with a large gamma (PnP-ADMM on CT is tuned to ~256/L) the right-hand side z + gamma A^T y is
    # huge; a tolerance relative to it accepted a warm start near the solution as it was
    op = build_operator("ct", image_size=SIZE)
    y = simulate(op, phantom, noise_snr_db=50.0)
    gamma = 256.0 / lipschitz(op)
    gen = torch.Generator().manual_seed(0)
    z = phantom + 0.02 * torch.randn(phantom.shape, generator=gen)
    exact = data_step(op, z, y, gamma, "cg", cg_tol=1e-7, cg_iter=1000)
    optimality = op.data_grad(exact, y) + (exact - z) / gamma
    assert float(optimality.norm()) < 1e-3 * float((z / gamma).norm())
    warm = exact + 1e-3 * torch.randn(phantom.shape, generator=gen)
    x = data_step(op, z, y, gamma, "cg", x0=warm, cg_tol=1e-5, cg_iter=30)
    assert float((x - exact).norm()) < 0.1 * float((warm - exact).norm())


def test_step_sizes_default_from_the_operator_norm(problems):
    op, y = problems["ct"]
    L = op.norm() ** 2
    assert L > 100  # CT is unnormalised: a fixed step would be wrong by orders of magnitude
    assert lipschitz(op) == pytest.approx(L, rel=1e-6)
    D = GaussianSmoother()
    assert pnp_pgm(op, y, D, iterations=1).params["gamma"] == pytest.approx(1 / L, rel=1e-6)
    assert pnp_admm(op, y, D, iterations=1).params["gamma"] == pytest.approx(1 / L, rel=1e-6)
    res = red_gd(op, y, D, iterations=1)
    assert res.params["tau"] == pytest.approx(0.1 * L, rel=1e-6)
    assert res.params["gamma"] == pytest.approx(1 / (L + res.params["tau"]), rel=1e-6)
    assert red_fp(op, y, D, iterations=1).params["tau"] == pytest.approx(0.1 * L, rel=1e-6)
    # run_baseline's scale-free parameters are multiples of L (tau, lam) or 1/L (gamma)
    rb = run_baseline(op, y, "pnp_pgm", denoiser=D, params={"gamma": 1.5}, iterations=1)
    assert rb.params["gamma"] == pytest.approx(1.5 / L, rel=1e-6)
    tv = run_baseline(op, y, "tv", params={"lam": 1e-3}, iterations=1)
    assert tv.params["lam"] == pytest.approx(1e-3 * L, rel=1e-6)


def test_unknown_names_suggest_the_closest(problems, tmp_path):
    op, y = problems["blur"]
    with pytest.raises(InvalidValueError, match="did you mean 'pnp_admm'"):
        run_baseline(op, y, "pnp_adm", denoiser=GaussianSmoother())
    with pytest.raises(InvalidValueError, match="did you mean 'scico17'"):
        as_denoiser("scico71")
    with pytest.raises(InvalidValueError, match="did you mean 'red_fp'"):
        tune_hyperparameters(op, "red_pf", torch.rand(1, 1, SIZE, SIZE), noise_sigma=0.01)
    with pytest.raises(InvalidValueError, match="unknown parameter"):
        run_baseline(op, y, "tv", params={"tau": 1.0})
    with pytest.raises(InvalidValueError, match="needs a denoiser"):
        run_baseline(op, y, "red_gd")
    with pytest.raises(InvalidValueError, match="did you mean 'cg'"):
        pnp_admm(op, y, GaussianSmoother(), data_step_mode="cgs")
    with pytest.raises(InvalidValueError, match="no prox_data"):
        pnp_admm(build_operator("ct", SIZE), problems["ct"][1], GaussianSmoother(), data_step_mode="prox")
    from deqir.reconstruct import reconstruct

    with pytest.raises(InvalidValueError, match="did you mean 'red_gd'"):
        reconstruct("deblur", tmp_path, image=tmp_path / "x.png", method="red_dg")
    with pytest.raises(InvalidValueError, match="did you mean 'natural'"):
        reconstruct("deblur", tmp_path, image=tmp_path / "x.png", method="pnp_pgm", denoiser="natual")


@pytest.mark.parametrize("method", BASELINE_METHODS)
def test_nan_measurement_raises(method, problems):
    op_name = "ct" if method == "fbp" else "mri_single" if method == "zero_filled" else "blur"
    op, y = problems[op_name]
    bad = y.clone()
    bad.view(-1)[3] = float("nan")
    with pytest.raises(DeqirError, match="NaN"):
        run_baseline(op, bad, method, denoiser=GaussianSmoother(), noise_sigma=0.01)


def test_no_autograd_graph_even_with_trainable_denoiser(problems):
    from deqir.priors import DnCNN

    net = DnCNN(depth=3, width=8)
    assert any(p.requires_grad for p in net.parameters())
    op, y = problems["blur"]
    for method in DENOISER_METHODS:
        res = run_baseline(op, y, method, denoiser=net, iterations=2)
        assert res.x.grad_fn is None and not res.x.requires_grad


def test_denoiser_protocol_wraps_blind_networks():
    x = torch.rand(2, 1, 8, 8)
    blind = as_denoiser(lambda v: 0.5 * v)  # no sigma: wrapped, sigma ignored
    assert torch.allclose(blind(x, 0.3), 0.5 * x)
    rescaled = BlindDenoiser(lambda v: v.clamp(max=1.0), train_sigma=0.1)
    assert torch.allclose(rescaled(torch.full((1, 1, 2, 2), 0.5), 0.05), torch.full((1, 1, 2, 2), 0.5))
    smoother = as_denoiser(GaussianSmoother())
    assert smoother(x, torch.tensor([0.01, 0.1])).shape == x.shape
    from deqir.priors import ScicoDnCNN

    blind_net = as_denoiser(ScicoDnCNN(depth=3))  # refuses sigma itself: called as net(x)
    assert blind_net(x, 0.1).shape == x.shape
    sigma_net = as_denoiser(ScicoDnCNN(depth=3, channels=2, noise_level_input=True))
    assert sigma_net(x, 0.1).shape == x.shape
    with pytest.raises(InvalidValueError, match="denoiser must be"):
        as_denoiser(3)


def test_tuning_uses_the_given_images_and_picks_the_best(phantom):
    op = build_operator("blur", image_size=SIZE)
    res = tune_hyperparameters(op, "tv", phantom, noise_sigma=0.02, grid={"lam": [1e-5, 1e-2]}, iterations=30)
    assert [p["lam"] for p, _ in res.scores] == [1e-5, 1e-2]
    assert res.best_score == max(s for _, s in res.scores)
    assert res.scores[[s for _, s in res.scores].index(res.best_score)][0]["lam"] == res.best["lam"]
    grid = {"sigma": [0.01, 0.05], "gamma": [0.5, 1.0]}
    D = GaussianSmoother()
    runs = {"grid": 0, "coordinate": 0}
    found = {}
    for strategy in runs:
        found[strategy] = tune_hyperparameters(
            op,
            "pnp_pgm",
            phantom,
            noise_sigma=0.02,
            denoiser=D,
            grid=grid,
            iterations=5,
            strategy=strategy,
            on_run=lambda strategy=strategy: runs.__setitem__(strategy, runs[strategy] + 1),
        )
    full, coord = found["grid"], found["coordinate"]
    assert len(full.scores) == 4 and len(coord.scores) <= 4
    # on_run ticks once per reconstruction: a point the coordinate search revisits is not run again
    assert runs == {"grid": 4, "coordinate": len(coord.scores)}
    assert coord.best_score <= full.best_score + 1e-9


def test_reconstruct_runs_the_iterative_baselines(tmp_path, phantom):
    from PIL import Image

    from deqir.reconstruct import reconstruct

    image = tmp_path / "p.png"
    Image.fromarray((phantom[0, 0].numpy() * 255).round().astype(np.uint8)).save(image)
    fbp = reconstruct("ct", tmp_path / "fbp", image=image, size=SIZE, method="fbp")
    tv = reconstruct("ct", tmp_path / "tv", image=image, size=SIZE, method="tv", iterations=60)
    red = reconstruct(
        "ct",
        tmp_path / "red",
        image=image,
        size=SIZE,
        method="red_gd",
        denoiser=GaussianSmoother(),
        iterations=30,
    )
    assert tv["metrics"]["psnr"] > fbp["metrics"]["psnr"]
    assert red["metrics"]["psnr"] > fbp["metrics"]["psnr"]
    assert red["denoiser"] == "GaussianSmoother" and red["iterations"] == 30


def test_shipped_pretrained_denoiser_in_pnp(problems, phantom):
    from deqir.methods.denoisers import resolve_denoiser

    try:
        from deqir.priors.pretrained import pretrained_path
    except ImportError:
        pytest.skip("deqir.priors.pretrained is not part of this checkout")
    if not pretrained_path("natural").exists():
        pytest.skip("the shipped 'natural' denoiser weights are absent (src/deqir/weights/)")
    D = resolve_denoiser("natural")
    op, y = problems["blur"]
    start = float(psnr(initial_estimate(op, y).clamp(0, 1), phantom))
    res = run_baseline(op, y, "pnp_admm", denoiser=D, iterations=10)
    assert float(psnr(res.x.clamp(0, 1), phantom)) > start + 0.5


def test_hqs_anneals_the_noise_level_and_the_data_step(problems):
    op, y = problems["blur"]
    seen = []

    def recording(x, sigma):
        seen.append(float(sigma))
        return GaussianSmoother()(x, sigma)

    res = pnp_hqs(op, y, recording, sigma=0.01, sigma_start=0.16, gamma=2.0, iterations=5)
    assert seen == pytest.approx([0.16, 0.08, 0.04, 0.02, 0.01])  # geometric, first to last
    assert int(res.stats.iterations[0]) == 5 and res.params["sigma_reached"] == pytest.approx(0.01)
    # the same steps by hand: data step with gamma * (sigma_k / sigma)^2, then the denoiser
    z = initial_estimate(op, y)
    for s in seen:
        z = GaussianSmoother()(op.prox_data(z, y, 2.0 * (s / 0.01) ** 2), s)
    assert float((res.x - z).abs().max()) < 1e-5
    seen.clear()
    pnp_hqs(op, y, recording, sigma=0.01, iterations=1)
    assert seen == [0.01]  # one iteration: the last noise level
    with pytest.raises(InvalidValueError, match="sigma_start .* must be at least sigma"):
        pnp_hqs(op, y, recording, sigma=0.05, sigma_start=0.01)


def test_hqs_through_run_baseline_uses_scale_free_parameters(problems):
    op, y = problems["ct"]
    L = lipschitz(op)
    res = run_baseline(op, y, "pnp_hqs", denoiser=GaussianSmoother(), params={"gamma": 8.0}, iterations=3)
    assert res.params["gamma"] == pytest.approx(8.0 / L, rel=1e-6)
    assert res.params["sigma_start"] == 0.2 and res.params["data_step"] == "auto"


def test_baselines_bench_chooses_the_classical_method_on_validation(monkeypatch):
    """The 'best classical' row that TV is compared with is picked by validation PSNR, not on test."""
    import deqir.methods.baselines as baselines
    from deqir.bench import baselines as bench
    from deqir.methods.baselines import TuningResult

    val_scores = {"zero_filled": 30.0, "tikhonov": 20.0}  # validation prefers zero-filling

    def fake_tuning(op, method, images, **kwargs):
        return TuningResult(method=method, best={}, best_score=val_scores.get(method, 25.0), scores=[])

    monkeypatch.setattr(baselines, "tune_hyperparameters", fake_tuning)
    setup = {**bench.QUICK, "size": 32, "iterations": dict(ITERS)}
    spec = bench.TASKS["mri_single"]
    out = bench._run_task("mri_single", spec, setup, GaussianSmoother(), "smoother", {})
    test_psnr = {r["method"]: r["psnr"] for r in out["rows"]}
    assert test_psnr["tikhonov"] > test_psnr["zero_filled"]  # on test the other one wins
    assert out["summary"]["mri_single_classical_psnr"] == round(test_psnr["zero_filled"], 3)
    chosen = [r["method"] for r in out["rows"] if r["best_in_kind"] and r["kind"] == "classical"]
    assert chosen == ["zero_filled"]


@pytest.mark.parametrize("task", ["mri_single", "ct_real"])
def test_baselines_bench_progress_counts_the_reconstructions_it_runs(task, monkeypatch):
    """The bar's planned units are the reconstructions a task really runs (tuning and test)."""
    import deqir.methods.baselines as baselines
    from deqir.bench import baselines as bench

    calls, run = [], baselines.run_baseline
    monkeypatch.setattr(baselines, "run_baseline", lambda *a, **k: calls.append(1) or run(*a, **k))
    iterations = {m: 2 for m in ITERS}
    setup = {**bench.QUICK, "size": 32, "iterations": iterations}
    tuned = {}
    if task == "ct_real":  # reuses the ct task's tuning, as in the bench
        bench._run_task("ct", bench.TASKS["ct"], setup, GaussianSmoother(), "smoother", tuned)
        calls.clear()
    bar = _CountingBar()
    bench._run_task(task, bench.TASKS[task], setup, GaussianSmoother(), "smoother", tuned, bar=bar)
    assert bar.n == len(calls) == bench._planned_runs(bench.TASKS[task], setup)
    assert bar.ticks == bar.n  # one tick per reconstruction, tuning included, as each finishes


class _CountingBar:
    n = 0
    ticks = 0  # single-unit updates: the tuning's grid points, as they finish

    def update(self, k):
        self.n += k
        self.ticks += k == 1

    def set_postfix_str(self, text):
        pass
