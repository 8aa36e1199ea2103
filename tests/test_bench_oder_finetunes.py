"""``deqir bench oder_finetunes``: the fine-tuned CT runs tested as ``deqir bench oder`` tests the
shipped pair, next to TV; runs read from a run folder; missing runs listed, not guessed."""

from pathlib import Path

import pytest
import torch

from deqir.bench import oder_finetunes
from deqir.errors import DataError, InvalidValueError
from deqir.methods.equilibrium import REDEquilibrium
from deqir.priors import DnCNN

pytestmark = pytest.mark.usefixtures("one_thread")


def _stand_in(name):  # small weights that differ by name, without touching the global stream
    with torch.random.fork_rng():
        torch.manual_seed(len(name))
        mode, w = ("oder", 30) if "w30" in name else ("deq", None)
        return REDEquilibrium(DnCNN(depth=3, width=4), mode=mode, minibatch=w, tau=0.05, step=1.5, max_iter=6)


def test_rows_are_each_model_with_its_own_solver():
    from deqir.bench import oder
    from deqir.bench.common import split_images
    from deqir.metrics import compute_metrics
    from deqir.physics.registry import build_operator

    variants = {"shipped": oder_finetunes.VARIANTS["shipped"], "nosn": oder_finetunes.VARIANTS["nosn"]}
    rows = oder_finetunes.split_rows("test", 2, variants, load=_stand_in, size=32)
    assert set(rows) == {"shipped|oder_w30", "shipped|red_deq", "nosn|oder_w30", "nosn|red_deq"}
    assert all(v.shape == (2,) and bool(torch.isfinite(v).all()) for v in rows.values())
    # RED(DEQ)'s row is deterministic: rebuilt here with the full-batch test solver it matches
    op = build_operator("ct", image_size=32, num_angles=90)
    x = split_images(oder_finetunes.SOURCE, "test", 2, size=32)
    y = oder._simulate(op, x, 50.0, seed=2)
    model = _stand_in("oder_ct_red_deq_nosn")
    out, _ = oder._reconstruct_as_tested(model, None, model.max_iter, None, op, y, oder._init(op, y, "fbp"))
    expected = compute_metrics(out.clamp(0, 1), x)["snr"].flatten().double()
    torch.testing.assert_close(rows["nosn|red_deq"], expected)
    assert not torch.equal(rows["nosn|red_deq"], rows["shipped|red_deq"])  # other weights, other row


def test_summary_gaps_against_tv_and_between_the_pair():
    t = torch.tensor
    per_image = {
        "test": {
            "nosn|oder_w30": t([30.0, 34.0, 32.0], dtype=torch.float64),
            "nosn|red_deq": t([29.0, 33.0, 33.0], dtype=torch.float64),
            "tv": t([31.0, 31.0, 31.0], dtype=torch.float64),
            "k20|oder_w30": t([1.0, 1.0, 1.0], dtype=torch.float64),  # its partner is missing: no keys
        },
        "val": {"nosn|oder_w30": t([1.0, 2.0]), "nosn|red_deq": t([2.0, 2.0])},
    }
    s = oder_finetunes.summarise(per_image, {"ellipses": [0, 1], "nilearn": [2]})
    assert s["ct_oder_minus_tv_nosn_db"] == pytest.approx(1.0)
    assert s["ct_oder_minus_tv_nosn_se_db"] == pytest.approx(float(t([-1.0, 3.0, 1.0]).std() / 3**0.5))
    assert s["ct_oder_minus_tv_nosn_by_source"]["ellipses"]["db"] == pytest.approx(1.0)
    assert s["ct_snr_gap_nosn_db"] == pytest.approx(-1 / 3)
    assert s["ct_val_snr_gap_nosn_db"] == pytest.approx(0.5)
    assert s["ct_snr_nosn_oder_w30"] == pytest.approx(32.0)
    assert not [k for k in s if "k20" in k]


def test_variants_found_in_a_runs_folder_and_a_run_without_weights_is_named(tmp_path):
    found, missing = oder_finetunes.available_variants(tmp_path)
    assert list(found) == ["shipped"] and "oder_ct_w30_implicit" in missing
    for name in oder_finetunes.VARIANTS["k20"]:
        (tmp_path / name / "weights").mkdir(parents=True)
        (tmp_path / name / "weights" / "best.safetensors").write_bytes(b"")
    found, missing = oder_finetunes.available_variants(tmp_path)
    assert list(found) == ["shipped", "k20"] and "oder_ct_w30_k20" not in missing
    from deqir.train.report import load_run_model

    with pytest.raises(DataError, match="no config.yaml"):
        load_run_model(tmp_path / "oder_ct_w30_k20")


def test_a_variant_whose_prior_run_is_missing_is_missing_and_names_it_once(tmp_path):
    def make(name):
        (tmp_path / name / "weights").mkdir(parents=True)
        (tmp_path / name / "weights" / "best.safetensors").write_bytes(b"")

    for name in oder_finetunes.VARIANTS["sigma"]:
        make(name)
    found, missing = oder_finetunes.available_variants(tmp_path, only=["sigma", "sigma_implicit"])
    assert list(found) == ["shipped"]  # the priors table needs runs/oder_ct_prior_sigma
    assert missing.count("oder_ct_prior_sigma") == 1 and "oder_ct_w30_sigma" not in missing
    make("oder_ct_prior_sigma")
    found, missing = oder_finetunes.available_variants(tmp_path, only=["sigma", "sigma_implicit"])
    assert list(found) == ["shipped", "sigma"] and missing == list(oder_finetunes.VARIANTS["sigma_implicit"])
    _, missing = oder_finetunes.available_variants(tmp_path, only=["lr1e3_600", "lr1e3_600_pair"])
    assert missing.count("oder_ct_w30_lr1e3_600") == 1  # a run two variants share is named once


def test_an_oder_only_variant_has_an_oder_row_and_gap_to_tv_only(tmp_path):
    rows = oder_finetunes.split_rows(
        "test", 1, {"tau03": ("oder_ct_w30_tau03", None)}, load=_stand_in, size=32
    )
    assert list(rows) == ["tau03|oder_w30"]
    t = torch.tensor
    per_image = {"test": {"tau03|oder_w30": t([32.0, 30.0]), "tv": t([31.0, 31.0])}}
    s = oder_finetunes.summarise(per_image, {"ellipses": [0, 1]})
    assert s["ct_oder_minus_tv_tau03_db"] == pytest.approx(0.0) and s["ct_snr_tau03_oder_w30"] == 31.0
    assert not [k for k in s if k.startswith(("ct_snr_gap", "ct_snr_tau03_red"))]
    s |= {"ct_oder_minus_tv_tau03_se_db": 1.0}
    config = {
        "variants": {"tau03": {"oder_w30": "oder_ct_w30_tau03", "red_deq": None}},
        "runs": {"oder_ct_w30_tau03": {"best_val_psnr": 44.0, "learned_step": 1.5901, "learned_tau": 0.0294}},
    }
    table = oder_finetunes.markdown_tables({"bench": "oder_finetunes", "summary": s, "config": config})
    head, _, line = table.splitlines()
    assert head.endswith("| ODER best val. PSNR | ODER step / τ |")
    assert line.split(" | ")[1:4] == ["31.00", "", "0.00 ± 1.00"] and line.endswith(
        "| 44.00 | 1.59 / 0.0294 |"
    )
    # --only picks variants (shipped always), names an unknown one
    (tmp_path / "oder_ct_w30_tau03" / "weights").mkdir(parents=True)
    (tmp_path / "oder_ct_w30_tau03" / "weights" / "best.safetensors").write_bytes(b"")
    found, missing = oder_finetunes.available_variants(tmp_path, only=["tau03", "tau06"])
    assert found == {"shipped": oder_finetunes.VARIANTS["shipped"], "tau03": ("oder_ct_w30_tau03", None)}
    assert missing == ["oder_ct_w30_tau06"]
    with pytest.raises(InvalidValueError, match=r"--only: unknown variants \['tau3'\]; choose from"):
        oder_finetunes.available_variants(tmp_path, only=["tau3"])
    with pytest.raises(InvalidValueError, match="--only names no variant"):
        oder_finetunes.available_variants(tmp_path, only=[])
    with pytest.raises(DataError, match=r"--only: runs \['oder_ct_w30_tau06'\] have no weights"):
        oder_finetunes.run(only=["tau03", "tau06"], runs_dir=tmp_path)


def test_bench_only_is_refused_by_a_bench_without_variants():
    from typer.testing import CliRunner

    from deqir.cli import app

    result = CliRunner().invoke(app, ["bench", "operators", "--quick", "--only", "x"], env={"COLUMNS": "200"})
    assert result.exit_code != 0 and "has no variants to pick; drop --only" in result.output


def test_learned_scalars_of_a_run_and_of_a_file_without_them(tmp_path):
    from deqir.methods.common import inverse_softplus
    from deqir.train.checkpoint import save_weights

    model = _stand_in("oder_ct_w30_x")
    with torch.no_grad():
        model.raw_parameters.copy_(torch.tensor([inverse_softplus(1.25), inverse_softplus(0.02)]))
    save_weights(model, tmp_path / "run" / "weights" / "best.safetensors")
    (tmp_path / "run" / "metrics.json").write_text('{"step": 3, "best_val_psnr": 40.0}')
    status = oder_finetunes.run_status(tmp_path, ["run"])["run"]
    assert status["learned_tau"] == pytest.approx(0.02, rel=1e-5) and status["learned_step"] == pytest.approx(
        1.25
    )
    assert status["step"] == 3 and status["best_val_psnr"] == 40.0  # the training's steps, not the method's
    save_weights(model.network, tmp_path / "net.safetensors")
    assert oder_finetunes.learned_scalars(tmp_path / "net.safetensors") == {}
    (tmp_path / "bad.safetensors").write_bytes(b"not a file")
    assert oder_finetunes.learned_scalars(tmp_path / "bad.safetensors") == {}


def test_run_status_reads_the_end_of_training(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "metrics.json").write_text('{"step": 300, "best_val_psnr": 44.9, "seconds": 1}')
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "metrics.json").write_text("{not json")
    status = oder_finetunes.run_status(tmp_path, ["a", "b", "c"])
    assert status == {
        "a": {"finished": True, "step": 300, "best_val_psnr": 44.9, "train_seconds": 1},
        "b": {"finished": False},
        "c": {"finished": False},
    }


def test_markdown_table_shows_every_summary_number():
    summary = {
        "ct_snr_shipped_oder_w30": 34.55,
        "ct_snr_shipped_red_deq": 33.38,
        "ct_snr_gap_shipped_db": -1.17,
        "ct_snr_gap_shipped_se_db": 0.1,
        "ct_val_snr_gap_shipped_db": -0.9,
        "ct_oder_minus_tv_shipped_db": -1.77,
        "ct_oder_minus_tv_shipped_se_db": 0.39,
        "ct_oder_minus_tv_shipped_by_source": {"ellipses": {"images": 22, "db": -2.81}},
        "ct_snr_implicit_oder_w30": 35.0,
        "ct_snr_implicit_red_deq": 34.0,
        "ct_snr_gap_implicit_db": -1.0,
        "ct_snr_gap_implicit_se_db": 0.2,
        "ct_oder_minus_tv_implicit_db": -1.3,
        "ct_oder_minus_tv_implicit_se_db": 0.3,
        "ct_oder_minus_tv_implicit_by_source": {"ellipses": {"images": 22, "db": -2.2}},
        "gradient_phantom_3_cosine": 0.8785,
        "gradient_phantom_3_norm_ratio": 0.009933,
        "gradient_implicit_1e-3_cosine": 0.9918,
        "gradient_implicit_1e-3_norm_ratio": 0.8798,
    }
    config = {
        "variants": {"implicit": {"oder_w30": "oder_ct_w30_implicit", "red_deq": "x"}},
        "runs": {"oder_ct_w30_implicit": {"finished": True, "step": 300, "best_val_psnr": 45.123}},
    }
    table = oder_finetunes.markdown_tables({"bench": "oder_finetunes", "summary": summary, "config": config})
    variants, gradients = table.split("\n\n")
    head, _, shipped, implicit = variants.splitlines()
    assert gradients.splitlines()[2:] == [
        "| phantom, 3 steps, λ = 0.5 (the shipped pair) | 0.88 | 0.0099 |",
        "| implicit, Anderson to 1e-3 | 0.99 | 0.88 |",
    ]
    assert "ODER − TV, ellipses (22)" in head
    assert shipped.split(" | ")[1:] == [
        "34.55",
        "33.38",
        "-1.77 ± 0.39",
        "-2.81",
        "-1.17 ± 0.10",
        "-0.90",
        " |",
    ]
    assert implicit.split(" | ")[1:] == [
        "35.00",
        "34.00",
        "-1.30 ± 0.30",
        "-2.20",
        "-1.00 ± 0.20",
        "",
        "45.12 |",
    ]
    summary |= {
        "gradient_exact_converged": 1.0,
        "gradient_exact_iterations": 201.0,
        "gradient_exact_rel_residual": 9.9e-8,
    }
    table = oder_finetunes.markdown_tables({"bench": "oder_finetunes", "summary": summary, "config": config})
    assert table.split("\n\n")[-1] == (
        "The exact gradient: the adjoint equation solved by Anderson to 1e-07, reached on 100 % of the "
        "images in at most 201 iterations (largest relative residual 9.9e-08)."
    )
    with pytest.raises(InvalidValueError, match="oder_finetunes"):
        oder_finetunes.markdown_tables({"bench": "oder", "summary": {}})


def test_gradient_agreement_the_loose_implicit_gradient_is_closest_to_the_exact_one():
    # the shipped RED(DEQ) (a random stand-in's map is no contraction: its adjoint never converges)
    out = oder_finetunes.gradient_agreement("oder_ct_red_deq", count=1, size=32)
    exact = out.pop("exact")
    assert set(out) == set(oder_finetunes.GRADIENTS)
    # the reference solve reached its tolerance (the comparison means nothing otherwise)
    assert (
        exact["converged"] == 1.0 and exact["rel_residual"] <= oder_finetunes.EXACT_GRADIENT["backward_tol"]
    )
    assert 1 <= exact["iterations"] < oder_finetunes.EXACT_GRADIENT["backward_max_iter"]
    assert exact["tol"] == oder_finetunes.EXACT_GRADIENT["backward_tol"]
    for values in out.values():
        assert -1.0 <= values["cosine"] <= 1.0 and values["norm_ratio"] > 0
    assert out["implicit_1e-3"]["cosine"] > 0.99
    assert out["implicit_1e-3"]["cosine"] >= max(out["phantom_3"]["cosine"], out["phantom_20"]["cosine"])


def test_snr_bars_by_source_draws_one_panel_per_source(tmp_path):
    from deqir.bench.common import snr_bars_by_source

    rows = [{"snr_ellipses": 30.0, "snr_nilearn": 31.0}, {"snr_ellipses": 31.5, "snr_nilearn": 29.0}]
    path = snr_bars_by_source(rows, ["tv", "ODER"], ["C2", "C0"], tmp_path / "bars.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_noise_free_rows_come_last_and_leave_the_others_unchanged():
    from deqir.bench import oder
    from deqir.bench.oder_restart import ct_split
    from deqir.metrics import compute_metrics

    variants = {"shipped": oder_finetunes.VARIANTS["shipped"], "tau03": ("oder_ct_w30_tau03", None)}
    plain = oder_finetunes.split_rows("test", 2, variants, load=_stand_in, size=32)
    rows = oder_finetunes.split_rows("test", 2, variants, load=_stand_in, size=32, noise_free=True)
    assert list(rows) == list(plain) + ["shipped|oder_w30_noise_free", "tau03|oder_w30_noise_free"]
    for key, value in plain.items():
        torch.testing.assert_close(rows[key], value, rtol=0, atol=0)
    # the noise-free row is ODER's test solve from A x itself
    op, x, _, _ = ct_split("test", 2, size=32)  # the bench's operator and images
    model = _stand_in("oder_ct_w30_tau03")
    clean = op.A(x)
    out, _ = oder._reconstruct_as_tested(
        model, 30, model.max_iter, oder.TEST_AVERAGE, op, clean, oder._init(op, clean, "fbp")
    )
    expected = compute_metrics(out.clamp(0, 1), x)["snr"].flatten().double()
    torch.testing.assert_close(rows["tau03|oder_w30_noise_free"], expected)
    assert not torch.equal(rows["tau03|oder_w30_noise_free"], rows["tau03|oder_w30"])

    t = torch.tensor
    per_image = {
        "test": {
            "tau03|oder_w30": t([30.0, 32.0]),
            "tau03|oder_w30_noise_free": t([33.0, 36.0]),
            "tv": t([31.0, 34.0]),
        }
    }
    s = oder_finetunes.summarise(per_image, {"ellipses": [0, 1]})
    assert s["ct_snr_tau03_oder_w30_noise_free"] == pytest.approx(34.5)
    assert s["ct_oder_noise_free_minus_tv_tau03_db"] == pytest.approx(2.0)
    assert s["ct_oder_noise_free_minus_tv_tau03_se_db"] == pytest.approx(0.0)
    report = {"bench": "oder_finetunes", "summary": s, "config": {}}
    head, _, line = oder_finetunes.markdown_tables(report).splitlines()
    assert head.endswith("| ODER from noise-free data − TV |") and line.endswith("| 2.00 ± 0.00 |")


def test_every_variant_run_has_a_committed_config_of_its_kind():
    """Each run a variant names is trained by ``configs/<run>.yaml``: the ODER one with minibatches of
    30 angles, the RED(DEQ) one with all of them; and a pair's two runs are trained alike (same data,
    physics, solver and gradient settings, training section but for early stopping, network, and
    pretrained prior, starting from the same weights or from a pair's), so RED(DEQ) minus ODER
    compares the minibatch with all angles only. A variant of :data:`VARIANT_PRIORS` descends from
    the prior it names."""
    pairs = {pair for pair in oder_finetunes.VARIANTS.values() if pair[1] is not None}
    minibatch_only = {"minibatch", "sampling", "groups", "test_average", "mode"}
    for variant, (oder_run, red_run) in oder_finetunes.VARIANTS.items():
        loaded = {}
        for run, mode in ((oder_run, "oder"), (red_run, "deq")):
            if run is None:
                continue
            cfg = _config(run)
            assert cfg["experiment"]["name"] == run, variant
            options = cfg["method"]["options"]
            assert options["mode"] == mode, (variant, run)
            assert options.get("minibatch") == (oder_finetunes.W if mode == "oder" else None), (variant, run)
            loaded[mode] = cfg
        if variant in oder_finetunes.VARIANT_PRIORS:
            assert _prior_of(oder_run) == oder_finetunes.VARIANT_PRIORS[variant], variant
        if red_run is None:
            continue
        oder_cfg, red_cfg = loaded["oder"], loaded["deq"]
        assert oder_cfg["train"] | {"patience": None} == red_cfg["train"] | {"patience": None}, variant
        for section in ("data", "physics"):
            assert oder_cfg[section] == red_cfg[section], (variant, section)
        assert oder_cfg["model"]["options"] == red_cfg["model"]["options"], variant
        shared = [
            {k: v for k, v in cfg["method"]["options"].items() if k not in minibatch_only}
            for cfg in loaded.values()
        ]
        assert shared[0] == shared[1], variant
        starts = tuple(_run_of(cfg["model"]["weights"]) for cfg in (oder_cfg, red_cfg))
        assert starts[0] == starts[1] or starts in pairs, (variant, starts)
        assert _prior_of(oder_run) == _prior_of(red_run), variant


def _config(run: str) -> dict:
    import yaml

    return yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / f"{run}.yaml").read_text())


def _run_of(weights: str) -> str:
    """The run a config's ``model.weights`` names: ``runs/<run>/weights/*``, or the run that
    ``src/deqir/weights/<name>.safetensors`` is exported from (:func:`deqir.bench.oder.training_run`)."""
    from deqir.bench.oder import training_run

    path = Path(weights)
    if path.parent.name == "weights" and path.parts[0] == "runs":
        return path.parents[1].name
    return training_run(path.stem)


def _prior_of(run: str) -> str:
    """The pretrained prior a fine-tuning run descends from, following ``model.weights`` back
    through the runs it continues."""
    cfg = _config(run)
    if cfg.get("method") is None:  # a denoiser pretraining: the prior itself
        return run
    return _prior_of(_run_of(cfg["model"]["weights"]))


def test_prior_noise_response_measures_bias_and_the_noise_removed():
    x = torch.rand(3, 1, 16, 16) + 0.5
    identity = oder_finetunes.prior_noise_response(lambda v: v, x, sigmas=(0.01, 0.02))
    assert identity["clean_residual"] == 0.0
    assert identity["error_over_noise"] == pytest.approx({"0.01": 1.0, "0.02": 1.0})
    # a denoiser that halves the deviation from the truth: half the noise is left, no bias
    halving = oder_finetunes.prior_noise_response(lambda v: x + 0.5 * (v - x), x, sigmas=(0.01,))
    assert halving["clean_residual"] == 0.0
    assert halving["error_over_noise"]["0.01"] == pytest.approx(0.5)
    # a biased one (a 2 % gain) is worse than the noise when the noise is small
    biased = oder_finetunes.prior_noise_response(lambda v: 1.02 * v, x, sigmas=(0.0025,))
    assert biased["clean_residual"] == pytest.approx(0.02, rel=1e-5)
    assert biased["error_over_noise"]["0.0025"] > 1.5


def test_markdown_table_shows_the_priors_when_there_are_two():
    summary = {
        "ct_snr_shipped_oder_w30": 34.55,
        "ct_oder_minus_tv_shipped_by_source": {},
        "priors": {
            "oder_ct_prior": {"clean_residual": 0.02638, "error_over_noise": {"0.005": 1.652, "0.01": 0.847}},
            "oder_ct_prior_sigma": {
                "clean_residual": 0.0165,
                "error_over_noise": {"0.005": 1.058, "0.01": 0.569},
            },
        },
    }
    table = oder_finetunes.markdown_tables({"bench": "oder_finetunes", "summary": summary, "config": {}})
    priors = table.split("\n\n")[1].splitlines()
    assert priors[0] == (
        "| pretrained prior | residual on the clean image / image | error / noise, σ = 0.005 | "
        "error / noise, σ = 0.01 |"
    )
    assert priors[2:] == [
        "| oder_ct_prior | 0.0264 | 1.652 | 0.847 |",
        "| oder_ct_prior_sigma | 0.0165 | 1.058 | 0.569 |",
    ]
    summary["priors"].pop("oder_ct_prior_sigma")  # the shipped prior alone: no table
    assert (
        len(oder_finetunes.markdown_tables({"bench": "oder_finetunes", "summary": summary}).split("\n\n"))
        == 1
    )


# shipped weights trained in a run folder of another name, before their configs were renamed (the
# restart pairs were the headline pairs then; the MRI guard pair was trained beside them): their
# sidecar records the folder, their config's experiment name the new one
TRAINED_IN_FOLDER = {
    "oder_ct_red_deq_restart": "oder_ct_red_deq",
    "oder_ct_w30_restart": "oder_ct_w30",
    "oder_mri_red_deq_restart": "oder_mri_red_deq",
    "oder_mri_w4_restart": "oder_mri_w4",
    "oder_mri_red_deq": "oder_mri_red_deq_guard",
    "oder_mri_w4": "oder_mri_w4_guard",
}


def test_every_shipped_oder_model_names_the_run_and_config_it_is_exported_from():
    import json

    from deqir.bench import oder
    from deqir.bench.common import WEIGHTS_DIR

    for name in (*oder.CT_RUNS, *oder.MRI_RUNS):
        run = oder.training_run(name)
        cfg = _config(run)
        assert cfg["experiment"]["name"] == run, name
        sidecar = json.loads((WEIGHTS_DIR / f"{name}.json").read_text())
        assert sidecar["run"] in (run, TRAINED_IN_FOLDER.get(name)), name  # either, once retrained
        assert sidecar["file"] == f"{name}.safetensors", name
        assert sidecar["config"]["experiment"]["name"] == run, name
        assert sidecar["config"]["model"].get("weights") == cfg["model"].get("weights"), name
        assert oder.shipped_name(run) == name


SHIPPED_CT_LEARNED = (
    "oder_ct_red_deq",
    "oder_ct_red_deq_anderson",
    "oder_ct_w30",
    "oder_ct_w10",
    "oder_ct_unfold",
    "oder_ct_red_deq_seed1",
    "oder_ct_w30_seed1",
)


def _stages(run: str) -> list[dict]:
    """The training sections of a fine-tuning run and of the runs it continues, newest first, without
    early stopping (the ODER runs validate on random minibatches and do not stop early)."""
    cfg = _config(run)
    if cfg.get("method") is None:
        return []
    return [cfg["train"] | {"patience": None}] + _stages(_run_of(cfg["model"]["weights"]))


def _shipped_recipe_problems() -> list[str]:
    """Why the shipped CT models do not follow one recipe: each descends from the shipped prior; the
    equilibrium ones (all but RED(Unfold)) are trained in the same stages (RED(DEQ) trained with Anderson
    in the first of them only); seed-1 runs use seed 1."""
    from deqir.bench import oder

    prior = oder.training_run("oder_ct_prior")
    reference = _stages(oder.training_run("oder_ct_red_deq"))
    problems = []
    for name in SHIPPED_CT_LEARNED:
        run = oder.training_run(name)
        if _prior_of(run) != prior:
            problems.append(f"{name}: prior {_prior_of(run)}, not {prior}")
        # RED(DEQ) trained with Anderson is shipped after the first stage (its config says why)
        expected = reference[1:] if name == "oder_ct_red_deq_anderson" else reference
        if name != "oder_ct_unfold" and _stages(run) != expected:
            problems.append(f"{name}: trained in other stages than oder_ct_red_deq")
        if _config(run)["experiment"]["seed"] != (1 if name.endswith("_seed1") else 0):
            problems.append(f"{name}: seed")
    if _prior_of(oder.training_run("oder_ct_w30_first")) != oder.training_run("oder_ct_prior_first"):
        problems.append("oder_ct_w30_first: not from oder_ct_prior_first")
    return problems


def test_shipped_ct_models_descend_from_one_prior_and_are_trained_alike(monkeypatch):
    from deqir.bench import oder

    assert _shipped_recipe_problems() == []
    with pytest.raises(InvalidValueError, match="oder_ct_w10_sigma_implicit"):
        oder.shipped_name("oder_ct_w10")  # a first-recipe run that is not shipped
    assert len(_stages(oder.training_run("oder_ct_w30"))) == 2  # 600 steps at lr 1e-3, then implicit
    # a model of the first recipe among them is caught
    monkeypatch.setitem(oder.SHIPPED_FROM, "oder_ct_w10", "oder_ct_w10")
    assert _shipped_recipe_problems() == ["oder_ct_w10: prior oder_ct_prior, not oder_ct_prior_sigma"] + [
        "oder_ct_w10: trained in other stages than oder_ct_red_deq"
    ]
