"""``deqir bench oder_restart`` and the ``restart`` option of RED's Nesterov solver."""

import pytest
import torch

from deqir.errors import InvalidValueError
from deqir.methods.equilibrium import REDEquilibrium, build_red_equilibrium
from deqir.physics.registry import build_operator
from deqir.priors import DnCNN
from deqir.solvers import Nesterov


def _stand_in(name):  # the same small weights at every load, without touching the global stream
    with torch.random.fork_rng():
        torch.manual_seed(len(name))
        mode, w = ("oder", 30) if "w30" in name else ("deq", None)
        return REDEquilibrium(DnCNN(depth=3, width=4), mode=mode, minibatch=w, tau=0.05, step=1.5, max_iter=8)


def test_restart_option_reaches_the_nesterov_solver_from_a_config():
    model = build_red_equilibrium(
        torch.nn.Identity(), mode="oder", minibatch=4, solver="nesterov", restart=False
    )
    solver = model._solver()
    assert isinstance(solver, Nesterov) and solver.restart is False
    assert (
        REDEquilibrium(torch.nn.Identity(), solver="nesterov")._solver().restart is True
    )  # as shipped before
    assert "restart=False" in model.extra_repr()


def test_restart_guard_keeps_a_diverging_nesterov_iteration_bounded_and_leaves_a_calm_one_alone():
    def oscillating(z):  # a contraction with a negative eigenvalue: Nesterov's momentum diverges
        return -0.7 * z + 1.0

    z0 = torch.zeros(2, 3)
    free, free_stats = Nesterov(tol=1e-6, max_iter=200).solve(oscillating, z0)
    guarded, _ = Nesterov(tol=1e-6, max_iter=200, restart_guard=3.0).solve(oscillating, z0)
    assert float(free.abs().max()) > 1e3 and not bool(free_stats.converged.any())
    assert float(guarded.abs().max()) < 3.0  # the fixed point is 1 / 1.7
    calm = Nesterov(tol=0.0, max_iter=60).solve(lambda z: 0.5 * z + 0.5, z0)[0]
    assert torch.equal(
        calm, Nesterov(tol=0.0, max_iter=60, restart_guard=3.0).solve(lambda z: 0.5 * z + 0.5, z0)[0]
    )
    for bad in (1.0, 0.5, -2.0):
        with pytest.raises(InvalidValueError, match="restart_guard"):
            Nesterov(restart_guard=bad)


def test_restart_guard_reaches_the_solver_only_without_the_adaptive_restart():
    model = build_red_equilibrium(torch.nn.Identity(), solver="nesterov", restart=False, restart_guard=5.0)
    assert model._solver().restart_guard == 5.0 and "restart_guard=5.0" in model.extra_repr()
    assert (
        build_red_equilibrium(torch.nn.Identity(), solver="nesterov", restart=False)._solver().restart_guard
        == 3.0
    )
    assert (
        REDEquilibrium(torch.nn.Identity(), solver="nesterov", restart_guard=5.0)._solver().restart_guard
        is None
    )
    off = build_red_equilibrium(torch.nn.Identity(), solver="nesterov", restart=False, restart_guard=None)
    assert off._solver().restart_guard is None


def test_restart_changes_oders_iterates_and_rows_use_the_named_setting():
    from deqir.bench import oder, oder_restart

    networks = {"red_deq": ("oder_ct_red_deq", (True, False)), "oder_w30": ("oder_ct_w30", (False,))}
    rows = oder_restart.split_rows("test", 2, networks, load=_stand_in, size=32)
    assert set(rows) == {
        "red_deq|full|restart",
        "red_deq|full|no_restart",
        "red_deq|w30|restart",
        "red_deq|w30|no_restart",
        "oder_w30|full|no_restart",
        "oder_w30|w30|no_restart",
    }
    # each row is the named network with that solver: rebuilt here with the option set at construction
    from deqir.bench.common import split_images
    from deqir.metrics import compute_metrics

    op = build_operator("ct", image_size=32, num_angles=90)
    x = split_images(oder_restart.SOURCE, "test", 2, size=32)
    y = oder._simulate(op, x, 50.0, seed=2)
    x0 = oder._init(op, y, "fbp")
    model = _stand_in("oder_ct_red_deq")
    direct = REDEquilibrium(
        model.network,
        mode="oder",
        minibatch=30,
        tau=0.05,
        step=1.5,
        max_iter=8,
        solver="nesterov",
        tol=0.0,
        restart=False,
        test_average=oder.TEST_AVERAGE,
    )
    with torch.no_grad():  # one image at a time, as the bench (each draws its own minibatches)
        out = torch.cat([direct(y[i : i + 1], op, init=x0[i : i + 1]) for i in range(2)])
    torch.testing.assert_close(
        rows["red_deq|w30|no_restart"], compute_metrics(out.clamp(0, 1), x)["snr"].flatten().double()
    )
    assert not torch.equal(rows["red_deq|w30|restart"], rows["red_deq|w30|no_restart"])


def test_summary_compares_solvers_per_network_and_the_pair_trained_without_restart():
    from deqir.bench import oder_restart

    t = torch.tensor
    per_image = {
        "test": {
            "red_deq_no_restart|full|no_restart": t([30.0, 34.0]),
            "red_deq_no_restart|w30|no_restart": t([29.0, 34.0]),
            "oder_w30_no_restart|full|no_restart": t([31.0, 31.0]),
            "oder_w30_no_restart|w30|no_restart": t([29.0, 33.0]),
            "tv": t([32.0, 30.0]),
        }
    }
    s = oder_restart.summarise(per_image, {"test": {"ellipses": [0], "nilearn": [1]}})
    assert s["test_solver_gap_red_deq_no_restart_no_restart_db"] == 0.5
    assert s["test_solver_gap_oder_w30_no_restart_no_restart_db"] == 0.0
    assert s["ct_snr_gap_no_restart_db"] == 1.0  # (30 - 29 + 34 - 33) / 2
    assert s["ct_snr_gap_no_restart_by_source"] == {
        "ellipses": {"images": 1, "db": 1.0},
        "nilearn": {"images": 1, "db": 1.0},
    }
    assert s["ct_oder_no_restart_minus_tv_db"] == 0.0
    assert "ct_val_snr_gap_no_restart_db" not in s


def test_mri_rows_are_each_model_with_its_own_solver_and_the_summary_pairs_them():
    from deqir.bench import oder, oder_restart
    from deqir.bench.common import split_images
    from deqir.metrics import compute_metrics

    def load(name):
        with torch.random.fork_rng():
            torch.manual_seed(len(name))
            w = 4 if "w4" in name else None  # MRI_NETWORKS' weights names
            return REDEquilibrium(
                DnCNN(depth=3, width=4),
                mode="deq" if w is None else "oder",
                minibatch=w,
                tau=0.05,
                step=1.0,
                max_iter=6,
                restart="restart" in name,
            )

    rows = oder_restart.mri_rows("test", 2, load=load, size=32)
    assert set(rows) == set(oder_restart.MRI_NETWORKS)
    op = build_operator("mri_multi", image_size=32, num_coils=8, acceleration=4)  # as the ODER bench
    x = split_images("brain", "test", 2, size=32)
    y = oder._simulate(op, x, 40.0, seed=2)
    x0 = oder._init(op, y, "zero_filled")
    direct = load("oder_mri_w4")  # ODER with its own restart setting (off) and tail averaging
    direct.test_average = oder.MRI_TEST_AVERAGE
    with torch.no_grad():
        out = torch.cat([direct(y[i : i + 1], op, init=x0[i : i + 1]) for i in range(2)])
    assert torch.allclose(
        rows["oder_w4_guard"], compute_metrics(out.clamp(0, 1), x)["snr"].flatten().double()
    )
    s = oder_restart.mri_summary({"test": rows, "val": rows})
    gap = float((rows["red_deq_guard"] - rows["oder_w4_guard"]).mean())
    assert s["mri_snr_gap_guard_db"] == pytest.approx(gap) and s["mri_val_snr_gap_guard_db"] == pytest.approx(
        gap
    )
    assert s["mri_snr_gap_restart_db"] == pytest.approx(float((rows["red_deq"] - rows["oder_w4"]).mean()))
