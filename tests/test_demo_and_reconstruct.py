"""The demo, classical baselines, `deqir reconstruct` and `deqir data` end to end."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from deqir.cli import app
from deqir.errors import DataError, InvalidValueError, ShapeError
from deqir.methods.classical import classical_reconstruction, estimate_noise_sigma, tikhonov_discrepancy
from deqir.metrics import psnr
from deqir.physics.registry import build_operator


@pytest.fixture(scope="module")
def phantom():
    from deqir.data.phantoms import shepp_logan
    from deqir.data.splits import fit_image

    return torch.from_numpy(fit_image(shepp_logan(64), 64, "resize"))[None, None]


def test_demo_writes_figure_and_tables_and_baselines_beat_their_input(tmp_path):
    from deqir.demo import run_demo

    rows = run_demo(tmp_path, size=48, tasks=["blur", "superres", "ct", "mri_multi"], progress=False)
    assert [r["operator"] for r in rows] == ["blur", "superres", "ct", "mri_multi"]
    png = (tmp_path / "demo.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((tmp_path / "demo_metrics.json").read_text())
    assert [r["operator"] for r in saved["rows"]] == ["blur", "superres", "ct", "mri_multi"]
    md = (tmp_path / "demo_metrics.md").read_text()
    assert md.count("\n") == 2 + len(rows)
    for r in rows[:2]:  # Tikhonov sharpens the blurred / upsampled input
        assert r["recon_psnr"] > r["init_psnr"] + 0.5
    assert rows[2]["recon_psnr"] > 25  # FBP of 90 noiseless-ish angles is already good
    for r in rows:
        assert np.isfinite([r["recon_psnr"], r["recon_snr"], r["recon_ssim"]]).all()


def test_demo_rejects_unknown_task(tmp_path):
    from deqir.demo import run_demo

    with pytest.raises(InvalidValueError, match="did you mean 'superres'"):
        run_demo(tmp_path, size=32, tasks=["superes"], progress=False)


@pytest.mark.parametrize("name", ["blur", "superres", "mri_single"])
def test_tikhonov_meets_the_discrepancy_target(phantom, name):
    op = build_operator(name, image_size=64)
    sigma = 0.02
    clean = op.A(phantom)
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(clean.shape, generator=gen, dtype=clean.real.dtype)
    y = clean + sigma * noise.to(clean.dtype)
    x, lam = tikhonov_discrepancy(op, y, sigma)
    residual = float((op.A(x) - y).abs().pow(2).sum())
    assert residual == pytest.approx(y.numel() * sigma**2, rel=0.05)
    assert lam > 0
    # and the regularised solution is better than the least-squares-ish one with lambda -> 0
    x_small, _ = op.prox_data(torch.zeros_like(phantom), y, 1e6), None
    assert float(psnr(x.clamp(0, 1), phantom)) > float(psnr(x_small.real.clamp(0, 1), phantom)) - 0.1


def test_noise_estimate_is_close():
    gen = torch.Generator().manual_seed(1)
    y = 0.3 + 0.03 * torch.randn(1, 1, 128, 128, generator=gen)
    assert estimate_noise_sigma(y) == pytest.approx(0.03, rel=0.1)


def test_classical_method_errors_name_what_works():
    op = build_operator("mri_single", image_size=32)
    with pytest.raises(InvalidValueError, match="supports: tikhonov, zero_filled"):
        classical_reconstruction(op, op.A(torch.rand(1, 1, 32, 32)), "fbp")
    with pytest.raises(InvalidValueError, match="did you mean 'zero_filled'"):
        classical_reconstruction(op, op.A(torch.rand(1, 1, 32, 32)), "zero_fill")


def _save_png(path, phantom):
    from PIL import Image

    Image.fromarray((phantom[0, 0].numpy() * 255).astype(np.uint8)).save(path)


def test_reconstruct_image_then_its_measurements(tmp_path, phantom):
    from deqir.reconstruct import reconstruct

    image = tmp_path / "phantom.png"
    _save_png(image, phantom)
    first = reconstruct("ct", tmp_path / "a", image=image, size=64)
    assert first["metrics"]["psnr"] > 20
    assert (tmp_path / "a" / "reconstruction.png").exists()
    second = reconstruct("ct", tmp_path / "b", measurements=tmp_path / "a" / "measurements.npy", size=64)
    assert second["metrics"] is None
    a = np.load(tmp_path / "a" / "reconstruction.npy")
    b = np.load(tmp_path / "b" / "reconstruction.npy")
    np.testing.assert_allclose(a, b, atol=1e-6)  # FBP is deterministic: same data, same image


def test_reconstruct_bad_inputs_say_what_to_change(tmp_path, phantom):
    from deqir.reconstruct import reconstruct

    with pytest.raises(InvalidValueError, match="exactly one of --input"):
        reconstruct("ct", tmp_path)
    with pytest.raises(InvalidValueError, match="did you mean 'deblur'"):
        reconstruct("deblr", tmp_path, image=tmp_path / "x.png")
    with pytest.raises(DataError, match="does not exist"):
        reconstruct("ct", tmp_path, measurements=tmp_path / "missing.npy", size=32)
    np.save(tmp_path / "wrong.npy", np.zeros((3, 3), np.float32))
    with pytest.raises(ShapeError, match="Change --size or --task"):
        reconstruct("ct", tmp_path, measurements=tmp_path / "wrong.npy", size=32)
    op = build_operator("ct", image_size=32)
    bad = np.zeros(op.measurement_shape(), np.float32)
    bad[0, 0, 0] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    with pytest.raises(InvalidValueError, match="NaN"):
        reconstruct("ct", tmp_path, measurements=tmp_path / "nan.npy", size=32)
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="not a readable .npy"):
        reconstruct("ct", tmp_path, measurements=tmp_path / "obj.npy", size=32)
    (tmp_path / "corrupt.png").write_bytes(b"not a png")
    with pytest.raises(DataError):
        reconstruct("deblur", tmp_path, image=tmp_path / "corrupt.png", size=32)


@pytest.mark.parametrize("command", ["demo", "data", "train", "eval", "reconstruct", "bench", "tables"])
def test_every_command_has_help(command):
    result = CliRunner().invoke(app, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_cli_bench_saves_the_report_with_its_wall_time(tmp_path, monkeypatch):
    import json
    import time
    import types

    import deqir.bench
    from deqir.bench.common import BenchReport

    def run(quick=False):
        time.sleep(0.2)
        return BenchReport("fake", config={"quick": quick}, summary={"answer": 42})

    monkeypatch.setattr(deqir.bench, "load_bench", lambda name: types.SimpleNamespace(run=run))
    result = CliRunner().invoke(app, ["bench", "fake", "--quick", "--json", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["summary"]["answer"] == 42 and saved["config"]["quick"] is True
    assert saved["machine"]["wall_seconds"] >= 0.2


def test_cli_bench_writes_the_figure_beside_the_report(tmp_path, monkeypatch):
    import types

    import deqir.bench
    from deqir.bench.common import BenchReport

    calls = []

    def drawing_run(quick=False, figure_path=None):
        calls.append(figure_path)
        return BenchReport("fake")

    monkeypatch.setattr(deqir.bench, "load_bench", lambda name: types.SimpleNamespace(run=drawing_run))
    result = CliRunner().invoke(app, ["bench", "fake", "--json", str(tmp_path / "trial" / "r.json")])
    assert result.exit_code == 0, result.output
    # not the committed results/fake.png the bench would use on its own
    assert calls == [tmp_path / "trial" / "r.png"]
    result = CliRunner().invoke(app, ["bench", "fake"])
    assert result.exit_code == 0, result.output
    assert calls[-1] is None  # no report path: the bench keeps its own default


@pytest.mark.parametrize("name", ["baselines", "oder", "oder_finetunes", "elder", "luser", "idt"])
def test_benches_that_draw_accept_a_figure_path(name):
    import inspect

    from deqir.bench import load_bench

    assert "figure_path" in inspect.signature(load_bench(name).run).parameters


def test_cli_data_builds_a_cached_split(tmp_path):
    result = CliRunner().invoke(
        app, ["data", "--size", "32", "--cache-dir", str(tmp_path), "--source", "ct_phantoms"]
    )
    assert result.exit_code == 0, result.output
    assert "ct_phantoms: train" in result.output
    assert list(tmp_path.rglob("*.npz"))


def test_cli_reconstruct_reports_metrics(tmp_path, phantom):
    image = tmp_path / "p.png"
    _save_png(image, phantom)
    result = CliRunner().invoke(
        app,
        [
            "reconstruct",
            "--task",
            "deblur",
            "--input",
            str(image),
            "--out",
            str(tmp_path / "o"),
            "--size",
            "64",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "psnr=" in result.output
    assert (tmp_path / "o" / "metrics.md").exists()


def test_cli_reconstruct_passes_hyperparameters(tmp_path, phantom):
    image = tmp_path / "p.png"
    _save_png(image, phantom)
    psnrs = {}
    for lam in ("1e-5", "1e-1"):
        out = tmp_path / lam
        result = CliRunner().invoke(
            app,
            ["reconstruct", "--task", "ct", "--input", str(image), "--out", str(out), "--size", "64"]
            + ["--method", "tv", "--iterations", "40", "--param", f"lam={lam}"],
        )
        assert result.exit_code == 0, result.output
        psnrs[lam] = json.loads((out / "metrics.json").read_text())["psnr"]
    # a weight 10^4 times larger over-smooths the phantom: the parameter reached the solver
    assert psnrs["1e-5"] > psnrs["1e-1"] + 3


def test_reconstruct_hyperparameter_errors_name_what_to_change(tmp_path, phantom):
    from deqir.cli import _key_values
    from deqir.reconstruct import reconstruct

    image = tmp_path / "p.png"
    _save_png(image, phantom)
    with pytest.raises(InvalidValueError, match="unknown parameter.*valid: lam"):
        reconstruct("ct", tmp_path / "o", image=image, size=32, method="tv", params={"lamda": 1e-4})
    with pytest.raises(InvalidValueError, match="iterations must be at least 1"):
        reconstruct("ct", tmp_path / "o", image=image, size=32, method="tv", iterations=0)
    with pytest.raises(InvalidValueError, match="write KEY=VALUE"):
        _key_values(["sigma"], "--param")
    with pytest.raises(InvalidValueError, match="'abc' is not a number"):
        _key_values(["sigma=abc"], "--param")
    with pytest.raises(InvalidValueError, match="finite"):
        _key_values(["sigma=nan"], "--param")


def test_tuned_reconstruct_defaults_match_the_baselines_bench():
    from pathlib import Path

    from deqir.reconstruct import TUNED

    report = Path(__file__).resolve().parents[1] / "results" / "baselines.json"
    if not report.is_file():
        pytest.skip("results/baselines.json is not in this checkout")
    saved = json.loads(report.read_text())
    bench_task = {"deblur": "deblur", "ct": "ct", "mri": "mri_single", "mri_multi": "mri_multi"}
    rows = {(r["task"], r["method"]): r for r in saved["rows"]}
    assert set(TUNED) == set(bench_task)
    for task, methods in TUNED.items():
        for method, (params, iterations) in methods.items():
            row = rows[(bench_task[task], method)]
            assert params == json.loads(row["params"]), (task, method)
            assert iterations == saved["config"]["iterations"][method], (task, method)


def test_reconstruct_starts_from_the_tuned_hyperparameters(tmp_path, phantom):
    from deqir.methods.baselines import DEFAULTS
    from deqir.methods.denoisers import GaussianSmoother
    from deqir.reconstruct import TUNED, reconstruct

    image = tmp_path / "p.png"
    _save_png(image, phantom)
    tuned = reconstruct("ct", tmp_path / "a", image=image, size=64, method="tv")
    assert tuned["params"]["lam_rel"] == TUNED["ct"]["tv"][0]["lam"]
    assert tuned["iterations"] == TUNED["ct"]["tv"][1]
    given = reconstruct(
        "ct", tmp_path / "b", image=image, size=64, method="tv", params={"lam": 1e-2}, iterations=20
    )
    assert given["params"]["lam_rel"] == 1e-2 and given["iterations"] == 20
    # a denoiser other than the task's own gets the generic defaults, not values tuned for another
    other = reconstruct(
        "ct", tmp_path / "c", image=image, size=64, method="red_gd", denoiser=GaussianSmoother(), iterations=5
    )
    generic = {k: other["params"][f"{k}_rel"] for k in DEFAULTS["red_gd"]}
    assert generic == DEFAULTS["red_gd"] != TUNED["ct"]["red_gd"][0]
