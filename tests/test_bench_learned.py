"""The ELDER and LUSER benchmarks end to end on tiny settings, and their measuring helpers."""

import json

import pytest
import torch

from deqir.bench import common, elder, luser
from deqir.bench.common import PeakRSS, SavedTensorBytes

pytestmark = pytest.mark.usefixtures("one_thread")


def test_saved_tensor_bytes_counts_each_storage_once():
    w = torch.ones(1000, requires_grad=True)
    with SavedTensorBytes() as once:
        h = (w * 2).relu()  # relu saves its output
        loss = (h * h).sum()  # h saved twice more (same storage)
    assert once.bytes == 1000 * 4  # h, saved three times, counted once (w * 2 keeps only the scalar)
    loss.backward()


def test_peak_rss_sees_a_large_allocation():
    with PeakRSS() as peak:
        big = torch.ones(64, 1024, 1024)  # 256 MiB
        big += 1
    del big
    assert peak.delta > 100 * 2**20


@pytest.fixture()
def tiny_elder(monkeypatch, tmp_path):
    monkeypatch.setattr(elder, "IMAGE_SIZE", 32)
    monkeypatch.setattr(elder, "EVAL_ITERATIONS", 5)
    monkeypatch.setattr(elder, "SIGMA_GRID", (15 / 255, 25 / 255))
    monkeypatch.setattr(elder, "LAM_GRID", (0.05,))
    monkeypatch.setattr(elder, "LAM_FACTORS", (1.0,))
    monkeypatch.setattr(elder, "BASELINE_GRIDS", {"pnp_pgm": {"gamma": [1.0]}})
    monkeypatch.setattr(elder, "BASELINE_ITERATIONS", 3)
    keep = {k: elder.SETTINGS[k] for k in ("deblur_gaussian_2.55", "superres_x2_2.55")}
    monkeypatch.setattr(elder, "SETTINGS", keep)
    monkeypatch.setattr(elder, "RESULTS_JSON", tmp_path / "elder.json")
    return tmp_path


def test_elder_bench_end_to_end(tiny_elder):
    report = elder.run(figure_path=tiny_elder / "elder.png")
    rows = [r for r in report.rows if r["kind"] == "quality"]
    methods = {r["method"] for r in rows}
    assert {"gs_pretrained", "red_pretrained", "pnp_pgm"} <= methods
    for r in rows:
        assert 5 < r["psnr"] < 60 and json.loads(r["chosen"]) is not None
    # every explicit-potential reconstruction with backtracking is monotone
    assert report.summary["monotone_fraction"] == 1.0
    assert report.summary["monotone_reconstructions"] >= 4
    assert (tiny_elder / "elder.png").stat().st_size > 0
    # --quick reuses the values chosen on validation by the last full run
    report.save(elder.RESULTS_JSON)
    chosen = elder._previous_choices(elder.RESULTS_JSON)
    assert chosen["deblur_gaussian_2.55"]["gs_pretrained"]["lam"] == 0.05


def test_elder_measurements_use_the_training_initialisation():
    setting = elder.SETTINGS["superres_x2_2.55"]
    op = elder._operator(setting, 32)
    x = torch.full((1, 1, 32, 32), 0.5)
    _, x0 = elder._measure(op, x, 0.0, seed=0)
    assert abs(float(x0.mean()) - 0.5) < 0.02  # Aᵀy rescaled by factor²: the mean is kept


def test_luser_step_cost_reports_memory_and_time(memory_meter):
    from deqir.methods.unrolling import build_loop_unrolled
    from deqir.physics.registry import build_operator
    from deqir.priors import DnCNN, ShallowCell

    op = build_operator("blur", 64, kernel_size=5)
    x = torch.rand(2, 1, 64, 64)
    y = op.A(x)
    x0 = op.A_adjoint(y)
    deep_model = build_loop_unrolled(DnCNN(depth=10, width=16), steps=3)
    deep = luser._step_cost(deep_model, op, x, y, x0, 1, memory_meter)
    eq = luser._step_cost(build_loop_unrolled(ShallowCell(width=16), steps=3), op, x, y, x0, 1, memory_meter)
    # LUSER keeps one 16-channel map per step; DnCNN-10 about 19 (every layer's input and ReLU mask)
    assert deep["activation_bytes"] > 8 * eq["activation_bytes"] > 0
    # the worker's allocator is exact: everything kept for the backward was resident at the peak
    assert deep["peak_bytes"] >= deep["activation_bytes"]
    assert deep["step_seconds"] > 0
    assert deep_model.training is False and all(p.grad is None for p in deep_model.parameters())


def test_isolated_memory_leaves_the_callers_model_untouched(memory_meter):
    from deqir.methods.unrolling import build_loop_unrolled
    from deqir.physics.registry import build_operator
    from deqir.priors import DnCNN

    op = build_operator("blur", 32, kernel_size=5)
    x = torch.rand(1, 1, 32, 32)
    model = build_loop_unrolled(DnCNN(depth=3, width=4), steps=2).eval()
    before = [p.detach().clone() for p in model.parameters()]
    memory = memory_meter.step(model, op, x, op.A(x), op.A_adjoint(op.A(x)))
    assert memory["saved_bytes"] > 0
    assert not model.training and all(p.grad is None for p in model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_memory_worker_keeps_recent_operators_and_measures_each_one(memory_meter, monkeypatch):
    from deqir.methods.unrolling import build_loop_unrolled
    from deqir.physics.registry import build_operator
    from deqir.priors import DnCNN

    monkeypatch.setattr(memory_meter, "max_operators", 2)
    model = build_loop_unrolled(DnCNN(depth=3, width=4), steps=2)
    small, large = build_operator("blur", 16, kernel_size=5), build_operator("blur", 48, kernel_size=5)
    sent, send = [], memory_meter._send

    def recording_send(op):  # was the operator itself sent with the message?
        message = send(op)
        sent.append(message[1] is not None)
        return message

    monkeypatch.setattr(memory_meter, "_send", recording_send)

    def saved(op):
        x = torch.rand(1, 1, op.image_shape[-1], op.image_shape[-1])
        return memory_meter.step(model, op, x, op.A(x), op.A_adjoint(op.A(x)))["saved_bytes"]

    memory_meter.prepare(large)
    first_large = saved(large)  # the prepared copy: not sent again
    assert sent == [True, False]
    first_small = saved(small)
    assert first_large > 4 * first_small  # each step ran on its own operator
    memory_meter.prepare(build_operator("ct", 16, num_angles=4))  # a third: `large` is dropped
    sent.clear()
    assert (saved(small), saved(large)) == (first_small, first_large)
    assert sent == [False, True]  # `small` was kept, `large` was sent again
    assert len(memory_meter._sent) == 2


def test_luser_bench_reports_missing_weights_as_rows(monkeypatch, tmp_path):
    monkeypatch.setattr(common, "WEIGHTS_DIR", tmp_path)
    monkeypatch.setattr(luser, "TASKS", ("deblur",))
    report = luser.run(quick=True, figure_path=tmp_path / "luser.png")
    assert {r["kind"] for r in report.rows} == {"missing"}
    assert report.summary["tasks"] == 0


def test_idt_bench_end_to_end_on_a_small_grid(monkeypatch, tmp_path, capsys):
    from deqir.bench import idt, oder

    monkeypatch.setattr(idt, "SIZE", 32)
    monkeypatch.setattr(idt, "WIDTHS", (24, 72))
    for name, value in (("TRAIN_ITERATIONS", 3), ("TEST_ITERATIONS", 3), ("TEST_AVERAGE", 2)):
        monkeypatch.setattr(oder, name, value)
    monkeypatch.setattr(oder, "RED_DENOISING_TAUS", (0.02,))
    monkeypatch.setattr(oder, "QUICK_TV_GRID", [1e-3])
    report = idt.run(quick=True, figure_path=tmp_path / "idt.png")
    s = report.summary
    assert s["operator_applications_ratio"] == pytest.approx(24 / 72)  # exact block accounting
    for key in ("snr_gap_db", "step_time_ratio", "oder_minus_tikhonov_db", "memory_ratio"):
        assert key in s and s[key] == s[key]  # present and not NaN
    assert s["test_samples"] == 2 and s["snr_gap_se_db"] >= 0
    methods = {r["method"] for r in report.rows if r.get("section") == "quality"}
    assert {"tikhonov", "tv", "red_denoising", "red_deq", "oder_w24"} <= methods
    assert (tmp_path / "idt.png").stat().st_size > 0
    # progress names each tuning, reconstruction and costed width while it runs
    progress = capsys.readouterr().err
    for shown in (
        "idt tuning on validation",
        "idt test",
        "oder_w24",
        "red_denoising",
        "w=24 of 72",
        "w=72 of 72",
    ):
        assert shown in progress, shown


def test_run_jobs_runs_in_order_and_shows_each_job(capsys):
    from deqir.bench.common import run_jobs

    order = []
    results = run_jobs(
        [("first", lambda: order.append(1) or "a"), ("second", lambda: order.append(2) or "b")], "jobs"
    )
    assert results == {"first": "a", "second": "b"} and order == [1, 2]
    progress = capsys.readouterr().err
    with pytest.raises(ValueError, match="unique"):
        run_jobs([("same", lambda: 1), ("same", lambda: 2)], "jobs")
    assert "jobs" in progress and "first" in progress and "second" in progress and "/2 " in progress


def test_oder_bench_solves_the_full_batch_map_to_its_fixed_point():
    from deqir.bench import oder
    from deqir.methods.equilibrium import REDEquilibrium
    from deqir.physics.registry import build_operator

    op = build_operator("ct", 24, num_angles=12)
    x = torch.rand(2, 1, 24, 24, generator=torch.Generator().manual_seed(0))
    y = op.A(x)
    smoother = torch.nn.Conv2d(1, 1, 3, padding=1, bias=False)  # a box filter: x - D(x) is monotone
    with torch.no_grad():
        smoother.weight.fill_(1 / 9)
    model = REDEquilibrium(smoother, mode="deq", tau=0.1, step=1.0)
    (out, seconds), info = oder._solve_to_fixed_point(model, op, y, oder._init(op, y, "fbp"))
    assert out.shape == x.shape and seconds > 0
    assert info["images"] == 2 and info["converged"] == 2  # a contraction: both reach the tolerance
    assert info["max_rel_residual"] <= oder.FIXED_POINT_TOL
    f = model.make_map(y, op)
    with torch.no_grad():  # the returned images are fixed points of the map
        residual = (f(out) - out).flatten(1).norm(dim=1) / f(out).flatten(1).norm(dim=1)
    assert float(residual.max()) < 10 * oder.FIXED_POINT_TOL


def test_paired_gap_is_the_mean_difference_and_its_standard_error():
    from deqir.bench.common import paired_gap

    a = torch.tensor([30.0, 31.0, 32.0, 33.0])
    mean, se = paired_gap(a, a - torch.tensor([0.1, 0.3, 0.1, 0.3]))
    assert mean == pytest.approx(0.2, abs=1e-5) and se == pytest.approx(0.1 / 2 * (4 / 3) ** 0.5, abs=1e-5)
    assert paired_gap(a + 1, a) == pytest.approx((1.0, 0.0))  # a constant shift: no spread
    assert paired_gap(a[:1], a[:1] - 2) == (2.0, 0.0)  # one image: no standard error


def test_spectral_norm_models_survive_the_trip_to_the_memory_worker():
    import pickle

    from deqir.priors import DnCNN

    model = DnCNN(depth=3, width=4, spectral_norm=True)
    x = torch.rand(1, 1, 8, 8)
    clone, removed = common._picklable(model)
    restored = common._reparametrize(pickle.loads(pickle.dumps(clone)), removed)
    assert len(removed) == 3
    torch.testing.assert_close(restored(x), model(x))
    restored(x).sum().backward()
    model(x).sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None for g in grads)
    for a, b in zip(grads, [p.grad for p in restored.parameters()], strict=True):
        torch.testing.assert_close(a, b)
    with pytest.raises(RuntimeError, match="Serialization of parametrized modules"):
        pickle.dumps(model)  # the original is still parametrized


def test_memory_worker_that_never_answers_gives_a_clear_error(monkeypatch):
    import os
    import signal

    from deqir.methods.unrolling import build_loop_unrolled
    from deqir.physics.registry import build_operator
    from deqir.priors import DnCNN

    op = build_operator("blur", 16, kernel_size=5)
    x = torch.rand(1, 1, 16, 16)
    model = build_loop_unrolled(DnCNN(depth=3, width=4), steps=2)
    with common.IsolatedMemory() as meter:
        meter.timeout_s = 20.0
        assert meter.step(model, op, x, op.A(x), op.A_adjoint(op.A(x)))["saved_bytes"] > 0
        workers = [w.pid for w in meter._pool._pool]
        for pid in workers:
            os.kill(pid, signal.SIGSTOP)  # a worker that hangs (or was killed) never answers
        meter.timeout_s = 2.0
        try:
            with pytest.raises(RuntimeError, match="memory worker gave no answer"):
                meter.step(model, op, x, op.A(x), op.A_adjoint(op.A(x)))
        finally:
            for pid in workers:
                os.kill(pid, signal.SIGCONT)
        meter.timeout_s = 20.0  # the worker resumes, answers the late request, then this one
        assert meter.step(model, op, x, op.A(x), op.A_adjoint(op.A(x)))["saved_bytes"] > 0


def test_oder_bench_gap_by_source_averages_within_each_group():
    from deqir.bench.oder import gap_by_source

    a, b = torch.tensor([33.0, 30.0, 35.0, 31.0]), torch.tensor([32.0, 31.0, 33.0, 31.5])
    out = gap_by_source(a, b, {"ellipses": [0, 2], "nilearn": [1, 3]})
    assert out == {"ellipses": {"images": 2, "db": 1.5}, "nilearn": {"images": 2, "db": -0.75}}


def test_oder_bench_tests_replicates_with_the_solver_of_the_model_they_repeat():
    from deqir.bench import oder
    from deqir.methods.equilibrium import REDEquilibrium

    model = REDEquilibrium(torch.nn.Conv2d(1, 1, 3, padding=1), mode="deq", solver="anderson", max_iter=7)
    full = oder._as_tested(model, None, 12, 50)
    assert (full.mode, full.solver_name, full.max_iter, full.minibatch, full.tol) == (
        "deq",
        "nesterov",
        12,
        None,
        0.0,
    )
    minibatch = oder._as_tested(model, 30, 12, 50)
    assert (minibatch.mode, minibatch.minibatch, minibatch.test_average) == ("oder", 30, 50)
    assert oder._as_tested(model, 30, 12, None).test_average == oder.TEST_AVERAGE


def _stand_in_oder_model(name):
    """Small stand-ins for the shipped ODER bench models: the same weights at every load of a
    name, without touching the global random stream."""
    from deqir.methods.equilibrium import REDEquilibrium
    from deqir.priors import DnCNN

    with torch.random.fork_rng():
        torch.manual_seed({"prior": 0, "full": 1, "oder": 2}[name])
        net = DnCNN(depth=3, width=4)
        if name == "prior":
            return net
        mode, w = ("deq", None) if name == "full" else ("oder", 4)
        return REDEquilibrium(net, mode=mode, minibatch=w, tau=0.05, step=1.0, max_iter=6)


def test_oder_bench_crossed_rows_test_one_network_with_the_other_solver(monkeypatch):
    from deqir.bench import oder
    from deqir.bench.common import BenchReport
    from deqir.metrics import compute_metrics
    from deqir.physics.registry import build_operator

    stand_in = _stand_in_oder_model
    monkeypatch.setattr(oder, "load_shipped", stand_in)
    monkeypatch.setattr(oder, "TEST_ITERATIONS", 6)
    op = build_operator("ct", 16, num_angles=12)
    x = torch.rand(3, 1, 16, 16) * 0.5 + 0.25
    names = {"prior": "prior", "red_deq": "full", "w4": "oder"}
    variants = {"red_deq": None, "w4": 4}
    crosses = {"red_deq_as_oder_w4": ("red_deq", 4), "oder_w4_full_batch": ("w4", None)}

    def quality(crosses):
        report, per_image = BenchReport("oder"), {}
        q = oder._quality(
            "ct",
            op,
            names,
            {"test": x},
            x[:1],
            50.0,
            "fbp",
            variants,
            report,
            {},
            True,
            per_image,
            crosses=crosses,
        )
        return q["test"], per_image["test"]

    plain, _ = quality(None)
    crossed, per_image = quality(crosses)
    assert set(crossed) == set(plain) | set(crosses)
    for method, snr in plain.items():  # the crossed rows come last, on copies: no other row moves
        assert crossed[method] == snr, method
    y = oder._simulate(op, x, 50.0, seed=2)
    x0 = oder._init(op, y, "fbp")
    for row, (variant, w) in crosses.items():  # each is that network with the other width's solver
        out, _ = oder._reconstruct_as_tested(stand_in(names[variant]), w, 6, None, op, y, x0)
        expected = compute_metrics(out.clamp(0, 1), x)["snr"].flatten().double()
        torch.testing.assert_close(per_image[row], expected)
    assert crossed["red_deq_as_oder_w4"] != crossed["red_deq"]  # the solver changes the result
    assert crossed["oder_w4_full_batch"] != crossed["oder_w4"]


def test_oder_bench_snr_by_source_averages_each_method_within_each_group():
    from deqir.bench.oder import snr_by_source

    values = {"a": torch.tensor([30.0, 20.0, 34.0, 22.0]), "b": torch.tensor([1.0, 2.0, 3.0, 4.0])}
    out = snr_by_source(values, {"ellipses": [0, 2], "nilearn": [1, 3]})
    assert out == {"a": {"ellipses": 32.0, "nilearn": 21.0}, "b": {"ellipses": 2.0, "nilearn": 3.0}}


def test_memory_submitted_before_the_operator_is_wrapped_measures_the_step_as_step_does(memory_meter):
    # --quick times a step while the worker measures it: the bench wraps the operator's methods in
    # local functions right after submitting, which must not reach the worker (they do not pickle)
    from deqir.bench.oder import _OperatorMeter
    from deqir.methods.unrolling import build_loop_unrolled
    from deqir.physics.registry import build_operator
    from deqir.priors import DnCNN

    op = build_operator("blur", 16, kernel_size=5)
    x = torch.rand(1, 1, 16, 16)
    y, x0 = op.A(x), op.A_adjoint(op.A(x))
    model = build_loop_unrolled(DnCNN(depth=3, width=4), steps=2)
    pending = memory_meter.submit(model, op, x, y, x0)
    wrapped = _OperatorMeter(op)
    try:
        model(y, op, init=x0).sum().backward()  # this process goes on with the wrapped operator
        submitted = pending()
    finally:
        wrapped.close()
    assert submitted["saved_bytes"] == memory_meter.step(model, op, x, y, x0)["saved_bytes"] > 0


def test_oder_quick_mri_quality_in_a_second_process_equals_the_in_process_rows():
    """--quick scores MRI in a spawned process while CT runs: same rows as in this process, whose
    global RNG state differs (the ODER samplers and the noise draws are seeded per model and set)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from deqir.bench import oder

    torch.manual_seed(123)  # another global state than the fresh process's
    here = oder._mri_quality(True, 1, 1)
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        there = pool.submit(oder._mri_quality, True, 1, 1, 1).result()
    means, rows, panels, per_image = here

    def scores(records):  # every field but the timing
        return [{k: v for k, v in r.items() if k != "seconds_per_image"} for r in records]

    assert there[0] == means and scores(there[1]) == scores(rows)
    assert {"red_deq", "oder_w4", "tv", "zero_filled"} <= set(means["test"])
    assert panels.keys() == there[2].keys() == {"mri"}
    for method, snr in per_image["test"].items():
        assert torch.equal(snr, there[3]["test"][method])


def test_oder_bench_error_split_adds_up_to_each_images_error(monkeypatch):
    """Edge plus flat squared error is each reconstruction's whole error (its SNR follows), and
    the edge pixels are those next to a jump of the true image."""
    from deqir.bench import oder
    from deqir.bench.common import BenchReport
    from deqir.physics.registry import build_operator

    monkeypatch.setattr(oder, "load_shipped", _stand_in_oder_model)
    monkeypatch.setattr(oder, "TEST_ITERATIONS", 6)
    op = build_operator("ct", 16, num_angles=12)
    x = torch.full((2, 1, 16, 16), 0.3)
    x[:, :, 4:10, 5:12] = 0.8  # a bright rectangle: its border pixels are the edges
    per_image, split = {}, {}
    oder._quality(
        "ct", op, {"prior": "prior", "red_deq": "full", "w4": "oder"}, {"test": x}, x[:1], 50.0, "fbp",
        {"red_deq": None, "w4": 4}, BenchReport("oder"), {}, True, per_image, error_split=split,
    )  # fmt: skip
    mask = oder.edge_mask(x)
    assert mask[0, 0, 6, 8] == 0 and mask[0, 0, 4, 8] == 1 and mask[0, 0, 3, 8] == 1 and mask[0, 0, 0, 0] == 0
    assert set(split) == set(per_image["test"])
    for method, (edge, flat) in split.items():
        snr = 10 * torch.log10(x.square().flatten(1).sum(1).double() / (edge + flat))
        torch.testing.assert_close(snr, per_image["test"][method], atol=1e-3, rtol=0, msg=method)
        assert (edge >= 0).all() and (flat >= 0).all()
    summary = oder.error_split_summary(split, [0, 1])
    tv, minibatch = summary["ct_error_split_ellipses"]["tv"], summary["ct_error_split_ellipses"]["oder_w4"]
    assert "ct_oder_over_tv_edge_error" not in summary  # no w = 30 row here
    assert tv["edge_sse"] == pytest.approx(float(split["tv"][0].mean()))
    assert minibatch["flat_sse"] == pytest.approx(float(split["oder_w4"][1].mean()))


def test_oder_bench_figure_wraps_many_methods_into_rows_of_six(tmp_path):
    from PIL import Image

    from deqir.bench import oder

    truth = torch.zeros(16, 16)
    truth[4:12, 4:12] = 1.0
    methods = ["truth"] + [f"method_{k}" for k in range(16)]
    figure = {"ct": {m: truth.clone() for m in methods}, "mri": {m: truth.clone() for m in methods[:9]}}
    row = {"step_seconds": 1.0, "peak_bytes": 100}
    costs = {f"setting_{k}": {10: row, 30: row, 90: row} for k in range(3)}
    grid = oder.figure_grid(figure, costs)
    # 17 CT panels -> 6 + 6 + 5, 9 MRI panels -> 6 + 3, then the three cost plots
    assert [len(r) for r in grid] == [6, 6, 5, 6, 3, 3]
    assert [p[1] for r in grid[:3] for p in r] == ["ct"] * 17
    assert [p[2] for r in grid[:3] for p in r] == methods
    assert grid[-1] == [("costs", f"setting_{k}") for k in range(3)]
    width, height = Image.open(oder._figure(figure, costs, tmp_path / "f.png")).size
    assert width <= 6 * 2.4 * 90 + 1 and height > width  # six columns, not one per method
