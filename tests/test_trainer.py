"""The training loop: learning, run folder, exact resume after SIGKILL, rollbacks, early stopping,
reconstruction tasks, reports and the command line. Everything runs on synthetic images."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from deqir.errors import CheckpointError, ConfigError, ConvergenceError
from deqir.physics.base import LinearOperator
from deqir.train import seeding
from deqir.train.checkpoint import load_checkpoint, load_weights, read_sidecar, save_weights
from deqir.train.config import TrainSection, config_from_dict
from deqir.train.report import evaluate_run
from deqir.train.sources import ImageBank, load_source, synthetic_images
from deqir.train.tasks import DenoisingTask, ReconstructionTask
from deqir.train.trainer import Trainer, lr_schedule, noise_weighted_mse, train_from_config

SRC = str(Path(__file__).resolve().parents[1] / "src")


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(tmp_path, **over):
    """A configuration that trains in well under a second per 50 steps."""
    raw = {
        "experiment": {"name": "tiny", "seed": 3, "output_dir": str(tmp_path)},
        "data": {
            "image_size": 16,
            "patch_size": 12,
            "num_train": 8,
            "num_val": 4,
            "num_test": 4,
            "batch_size": 4,
        },
        "physics": {"noise_sigma": 0.1},
        "model": {"options": {"depth": 3, "width": 8}},
        "train": {
            "steps": 30,
            "lr": 3e-3,
            "val_every": 10,
            "log_every": 5,
            "checkpoint_every": 10,
            "progress": False,
            "warmup_steps": 2,
        },
        "eval": {"num_figures": 2},
    }
    for key, value in over.items():
        section, _, name = key.partition("__")
        raw.setdefault(section, {})[name] = value
    return raw


def final_weights(run):
    return load_weights(Path(run) / "weights" / "final.safetensors")


# ----------------------------------------------------------------------------- basics
def test_lr_schedules():
    cos = TrainSection(steps=100, schedule="cosine", warmup_steps=10, min_lr_factor=0.1)
    assert lr_schedule(0, cos) == pytest.approx(1 / 11) and lr_schedule(10, cos) == 1.0
    assert lr_schedule(55, cos) == pytest.approx(0.55) and lr_schedule(100, cos) == pytest.approx(0.1)
    step = TrainSection(schedule="step", step_size=10, gamma=0.5)
    assert [lr_schedule(s, step) for s in (0, 9, 10, 25)] == [1.0, 1.0, 0.5, 0.25]
    assert lr_schedule(1234, TrainSection(schedule="constant")) == 1.0


def test_seeded_samples_do_not_depend_on_the_shard():
    bank = ImageBank(synthetic_images(5, 16, seed=1))
    full = bank.training_batch(seed=0, step=4, indices=range(4), size=8, augment=True)
    half = bank.training_batch(seed=0, step=4, indices=range(2, 4), size=8, augment=True)
    assert torch.equal(full[2:], half)
    task = DenoisingTask(sigma_range=(0.0, 0.3))
    a = task.simulate(full, seed=0, step=4, indices=range(4))
    b = task.simulate(full[2:], seed=0, step=4, indices=range(2, 4))
    assert torch.equal(a.init[2:], b.init) and torch.equal(a.sigma[2:], b.sigma)
    c = task.simulate(full, seed=0, step=5, indices=range(4))
    assert not torch.equal(a.init, c.init)
    assert bool((a.sigma >= 0).all() and (a.sigma <= 0.3).all())


def test_training_learns_and_writes_the_run_folder(tmp_path):
    run = train_from_config(tiny(tmp_path, train__steps=60), device="cpu")
    assert run == tmp_path / "tiny"
    names = {p.name for p in run.iterdir()}
    assert {"config.yaml", "run.json", "log.jsonl", "checkpoint.pt", "metrics.json", "weights"} <= names
    info = json.loads((run / "run.json").read_text())
    assert info["seed"] == 3 and info["deqir"] and info["torch"] == torch.__version__
    assert "git_commit" in info and info["status"] == "finished" and info["device"] == "cpu"
    metrics = json.loads((run / "metrics.json").read_text())
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    vals = [r["val_psnr"] for r in log if "val_psnr" in r]
    assert len(vals) == 6 and metrics["best_val_psnr"] == max(vals)
    assert metrics["final_val_psnr"] > 21.5  # the noisy input is at 20 dB
    side = read_sidecar(run / "weights" / "best.safetensors")
    assert side["config"]["experiment"]["seed"] == 3 and side["metrics"]["val_psnr"] == max(vals)
    assert load_checkpoint(run / "checkpoint.pt")["step"] == 60
    with pytest.raises(ConfigError, match="already holds a run"):
        train_from_config(tiny(tmp_path), device="cpu")


def test_same_seed_same_weights(tmp_path):
    a = train_from_config(tiny(tmp_path, train__steps=6), run_dir=tmp_path / "a", device="cpu")
    b = train_from_config(tiny(tmp_path, train__steps=6), run_dir=tmp_path / "b", device="cpu")
    c = train_from_config(tiny(tmp_path, train__steps=6, experiment__seed=4), run_dir=tmp_path / "c")
    wa, wb, wc = final_weights(a), final_weights(b), final_weights(c)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)


# ----------------------------------------------------------------------------- resume
def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path):
    """Kill a training process after it wrote a checkpoint, resume, compare with a clean run."""
    raw = tiny(
        tmp_path,
        train__steps=150,
        train__checkpoint_every=10,
        train__val_every=50,
        train__grad_clip=0.5,
        physics__noise_sigma=None,
        physics__noise_sigma_range=[0.05, 0.2],
        model__options={"depth": 3, "width": 8, "spectral_norm": True, "noise_level_input": True},
    )
    cfg_path = tmp_path / "cfg.json"  # JSON is YAML
    cfg_path.write_text(json.dumps(raw))
    threads = torch.get_num_threads()
    killed_dir = tmp_path / "killed"
    code = (
        "import torch, sys; torch.set_num_threads(int(sys.argv[1])); "
        "from deqir.train import train_from_config; "
        "train_from_config(sys.argv[2], device='cpu', run_dir=sys.argv[3])"
    )
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(threads), str(cfg_path), str(killed_dir)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    log = killed_dir / "log.jsonl"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            lines = log.read_text().splitlines() if log.exists() else []
            if any(json.loads(x).get("step", 0) >= 25 for x in lines if x.strip()):
                break
            time.sleep(0.01)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed_dir / "metrics.json").exists()
    step = load_checkpoint(killed_dir / "checkpoint.pt")["step"]
    assert 10 <= step < 150

    train_from_config(cfg_path, resume=True, device="cpu", run_dir=killed_dir)
    reference = train_from_config(cfg_path, device="cpu", run_dir=tmp_path / "reference")
    resumed, clean = final_weights(killed_dir), final_weights(reference)
    assert set(resumed) == set(clean)
    for k in clean:  # bitwise in practice; 1e-6 allowed for library-level nondeterminism
        torch.testing.assert_close(resumed[k], clean[k], rtol=0, atol=1e-6, msg=k)
    m1 = json.loads((killed_dir / "metrics.json").read_text())
    m2 = json.loads((reference / "metrics.json").read_text())
    assert m1["best_val_psnr"] == pytest.approx(m2["best_val_psnr"], abs=1e-5)
    steps = [json.loads(x)["step"] for x in log.read_text().splitlines() if "loss" in x]
    assert steps == sorted(set(steps))  # records after the checkpoint were not duplicated


def test_resume_errors(tmp_path):
    with pytest.raises(CheckpointError, match="nothing to resume"):
        train_from_config(tiny(tmp_path), resume=True, device="cpu")
    run = train_from_config(tiny(tmp_path, train__steps=5), device="cpu")
    with pytest.raises(ConfigError, match=r"model.options.width changed"):
        train_from_config(tiny(tmp_path, model__options={"depth": 3, "width": 16}), resume=True)
    # more steps may be asked for on resume
    train_from_config(tiny(tmp_path, train__steps=8), resume=True, device="cpu")
    assert json.loads((run / "metrics.json").read_text())["step"] == 8
    # a checkpoint of another architecture is refused with advice
    cfg = config_from_dict(tiny(tmp_path, model__options={"depth": 3, "width": 16}))
    with pytest.raises(CheckpointError, match="does not fit this model"):
        Trainer(cfg, run).load_state_dict(load_checkpoint(run / "checkpoint.pt"), run / "checkpoint.pt")


# ----------------------------------------------------------------------------- divergence
class Flaky(nn.Module):
    """A small CNN whose output turns NaN on the training calls listed in ``bad_calls``."""

    def __init__(self, bad_calls=()):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)
        self.bad_calls, self.calls = set(bad_calls), 0

    def forward(self, x):
        out = x + self.conv(x)
        if self.training:
            self.calls += 1
            if self.calls in self.bad_calls or "all" in self.bad_calls and self.calls > 3:
                out = out * float("nan")
        return out


def test_nan_rolls_back_lowers_lr_and_continues(tmp_path):
    cfg = config_from_dict(
        tiny(
            tmp_path,
            train__steps=12,
            train__checkpoint_every=5,
            train__rollback_lr_factor=0.25,
            train__schedule="constant",
            train__warmup_steps=0,
        )
    )
    trainer = Trainer(cfg, tmp_path / "run", model=Flaky(bad_calls={8}))
    metrics = trainer.fit()
    assert metrics["rollbacks"] == 1 and metrics["step"] == 12
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(3e-3 * 0.25)
    log = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    event = next(r for r in log if r.get("event") == "rollback")
    assert event["step"] == 5 and "loss is nan" in event["reason"]
    assert torch.isfinite(torch.cat([p.flatten() for p in trainer.model.parameters()])).all()
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["lr_scale"] == 0.25


def test_gives_up_after_max_rollbacks(tmp_path):
    cfg = config_from_dict(tiny(tmp_path, train__max_rollbacks=2))
    with pytest.raises(ConvergenceError, match=r"diverged at step \d+ \(loss is nan\) after 2 rollbacks"):
        Trainer(cfg, tmp_path / "run", model=Flaky(bad_calls={"all"})).fit()
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "failed"


def test_exploding_loss_threshold(tmp_path):
    cfg = config_from_dict(tiny(tmp_path, train__max_loss=1e-9, train__max_rollbacks=1))
    with pytest.raises(ConvergenceError, match="exceeds train.max_loss"):
        train_from_config(cfg, device="cpu")


def test_early_stopping(tmp_path):
    run = train_from_config(
        tiny(tmp_path, train__steps=100, train__val_every=5, train__patience=2, train__min_delta=100.0),
        device="cpu",
    )
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["stopped_early"] and metrics["step"] == 15
    assert load_checkpoint(run / "checkpoint.pt")["step"] == 15


# ----------------------------------------------------------------------------- tasks
class Decimate(LinearOperator):
    """Keep every other pixel in each axis (a toy operator with a 4x smaller measurement)."""

    image_shape = (1, 16, 16)

    def _forward(self, x, blocks):
        return x[..., ::2, ::2]

    def _adjoint(self, y, blocks):
        x = y.new_zeros((*y.shape[:-2], 16, 16))
        x[..., ::2, ::2] = y
        return x

    def measurement_shape(self, blocks=None):
        return (1, 8, 8)


class GradientSteps(nn.Module):
    """K learned gradient steps ``x <- x - eta A^T(Ax - y) + cnn(x)``: takes (y, physics, init)."""

    def __init__(self):
        super().__init__()
        self.eta = nn.Parameter(torch.tensor(0.5))
        self.cnn = nn.Conv2d(1, 1, 3, padding=1)
        self.seen = None

    def iterates(self, y, physics, init):
        xs = [init]
        for _ in range(4):
            x = xs[-1]
            xs.append(x - self.eta * physics.data_grad(x, y) + 0.1 * self.cnn(x))
        return xs

    def forward(self, y, physics, init):
        self.seen = (tuple(y.shape), type(physics).__name__)
        return self.iterates(y, physics, init)[-1]


def _recon_cfg(tmp_path, **over):
    return config_from_dict(
        tiny(tmp_path, data__patch_size=None, physics__operator="decimate", physics__noise_sigma=0.01, **over)
    )


def test_reconstruction_task_calls_model_with_measurements_and_physics(tmp_path):
    cfg = _recon_cfg(tmp_path, train__steps=10)
    task = ReconstructionTask(Decimate(), sigma=0.01, init="adjoint")
    model = GradientSteps()
    metrics = Trainer(cfg, tmp_path / "r", model=model, task=task).fit()
    assert model.seen == ((4, 1, 8, 8), "Decimate") and metrics["step"] == 10
    # input "init": a plain image-to-image network gets A^T y
    net = nn.Conv2d(1, 1, 3, padding=1)
    task2 = ReconstructionTask(Decimate(), snr_db=30, init="scaled_adjoint", input="init")
    task2.bind(net)
    s = task2.simulate(torch.rand(2, 1, 16, 16), seed=0, step=0, indices=[0, 1])
    assert len(s.args) == 1 and s.args[0] is s.init and s.sigma is None
    with pytest.raises(ConfigError, match="unknown initialisation 'fbp'"):
        ReconstructionTask(Decimate(), init="fbp")


def test_reconstruction_task_from_the_operator_registry(tmp_path):
    pytest.importorskip("deqir.physics.blur")
    from deqir.train.tasks import build_task

    cfg = config_from_dict(
        tiny(
            tmp_path,
            data__patch_size=None,
            physics__operator="blur",
            physics__options={"kernel_size": 5},
            physics__noise_sigma=0.01,
        )
    )
    task = build_task(cfg)
    assert isinstance(task, ReconstructionTask) and tuple(task.physics.image_shape) == (1, 16, 16)


def test_blind_denoiser_receives_sigma(tmp_path):
    cfg = config_from_dict(
        tiny(
            tmp_path,
            train__steps=4,
            physics__noise_sigma=None,
            physics__noise_sigma_range=[0.0, 0.2],
            model__options={"depth": 3, "width": 4, "noise_level_input": True},
        )
    )
    trainer = Trainer(cfg, tmp_path / "b")
    clean = torch.rand(4, 1, 12, 12)
    s = trainer.task.simulate(clean, seed=0, step=0, indices=range(4))
    assert set(s.kwargs) == {"sigma"} and s.kwargs["sigma"].shape == (4,)
    torch.testing.assert_close((s.init - clean).flatten(1).std(1), s.sigma, atol=0.05, rtol=0.3)
    assert trainer.fit()["step"] == 4


def test_noise_mse_weighs_every_noise_level_alike():
    torch.manual_seed(0)
    clean = torch.rand(3, 1, 8, 8)
    sigma = torch.tensor([0.2, 0.02, 0.0])
    noisy = clean + sigma.view(3, 1, 1, 1) * torch.randn(3, 1, 8, 8)
    identity = noise_weighted_mse(noisy, clean, sigma)
    mse = (noisy - clean).pow(2).mean()
    # the identity scores about 1 per image with sigma >> 1/255 (0 for sigma = 0); plain MSE is
    # dominated by the noisiest image
    assert 0.4 < float(identity) < 1.0 and float(mse) < 0.02
    halved = clean + (noisy - clean) / 2  # 6 dB better at every level: a quarter of the loss
    torch.testing.assert_close(noise_weighted_mse(halved, clean, sigma), identity / 4)
    one = noise_weighted_mse(noisy[:1], clean[:1], torch.tensor([0.2]))
    torch.testing.assert_close(noise_weighted_mse(noisy[:1], clean[:1], 0.2), one)  # a float level
    with pytest.raises(ConfigError, match="noise level of every image"):
        noise_weighted_mse(noisy, clean, None)


def test_noise_mse_trains_a_blind_denoiser_and_is_refused_for_reconstruction(tmp_path):
    cfg = tiny(
        tmp_path,
        train__loss="noise_mse",
        train__steps=60,
        physics__noise_sigma=None,
        physics__noise_sigma_range=[0.0, 0.2],
        model__options={"depth": 3, "width": 8, "noise_level_input": True},
    )
    run = train_from_config(cfg, device="cpu")
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    vals = [r["val_psnr"] for r in log if "val_psnr" in r]
    # validation PSNR, not one batch's loss: that swings with the sigmas drawn for the batch (an
    # image near sigma = 0 divides by about (1/255)^2); validation rose for each of seeds 0-5
    assert vals[-1] > vals[0]
    bad = tiny(tmp_path, train__loss="noise_mse", physics__operator="blur")
    with pytest.raises(ConfigError, match="train.loss: noise_mse .* needs a denoising task"):
        config_from_dict(bad)


def test_deqir_data_sources_plug_in():
    pytest.importorskip("deqir.data")
    banks = load_source(
        "ct_phantoms", 16, 0, 0, 0, seed=0, options={"count": 6, "use_cache": False, "splits": [4, 1, 1]}
    )
    assert [len(banks[s]) for s in ("train", "val", "test")] == [4, 1, 1]
    assert banks["train"].images[0].shape == (1, 16, 16)


def test_a_moved_data_source_loads_under_its_old_path():
    """Runs and sidecars written before training_images moved to deqir.data.splits name the old path."""
    pytest.importorskip("deqir.data")
    opts = {"source": "ct_phantoms", "native": False}
    old = load_source("deqir.priors.pretrained:training_images", 16, 0, 0, 0, seed=0, options=opts)
    new = load_source("deqir.data.splits:training_images", 16, 0, 0, 0, seed=0, options=opts)
    assert len(old["train"]) == len(new["train"]) > 0
    assert torch.equal(old["val"].images[0], new["val"].images[0])


def test_extra_train_sizes_add_the_same_training_images_at_other_sizes():
    pytest.importorskip("deqir.data")
    opts = {"count": 6, "use_cache": False, "splits": [4, 1, 1]}
    plain = load_source("ct_phantoms", 32, 0, 0, 0, seed=0, options=opts)
    multi = load_source("ct_phantoms", 32, 0, 0, 0, seed=0, options=opts, extra_train_sizes=[16])
    train = multi["train"].images
    assert [tuple(im.shape) for im in train] == [(1, 32, 32)] * 4 + [(1, 16, 16)] * 4
    # the first copies are the plain training split; validation and test are untouched
    for a, b in zip(train[:4], plain["train"].images, strict=True):
        assert torch.equal(a, b)
    assert torch.equal(multi["val"].images[0], plain["val"].images[0])
    # the 16-pixel copies are the same phantoms, not other ones: each is closest to its own
    small = torch.stack(
        [torch.nn.functional.interpolate(im[None], size=16, mode="area")[0] for im in train[:4]]
    )
    dist = (small[:, None] - torch.stack(train[4:])[None]).abs().mean(dim=(2, 3, 4))
    assert torch.equal(dist.argmin(dim=1), torch.arange(4))
    # crops of one size come from both scales (a 16-pixel crop of a 16-pixel image is all of it)
    crops = multi["train"].training_batch(seed=0, step=0, indices=range(64), size=16)
    whole = [any(torch.equal(c, im) for im in train[4:]) for c in crops]
    assert 0 < sum(whole) < 64


# ----------------------------------------------------------------------------- reports and CLI
def test_evaluate_run_writes_metrics_and_figures(tmp_path):
    run = train_from_config(tiny(tmp_path, train__steps=20), device="cpu")
    other = train_from_config(tiny(tmp_path, train__steps=5, experiment__name="short"), device="cpu")
    result = evaluate_run(run, compare=[other], device="cpu")
    names = [m["name"] for m in result["methods"]]
    assert names == ["noisy input", "tiny", "short"] and result["num_images"] == 4
    psnrs = {m["name"]: m["psnr"] for m in result["methods"]}
    assert psnrs["tiny"] > psnrs["noisy input"]
    assert psnrs["noisy input"] == pytest.approx(20.0, abs=0.5)
    report = run / "report"
    for name in ("metrics.json", "metrics.md", "comparison.png", "training.png"):
        assert (report / name).stat().st_size > 0, name
    assert (report / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    assert "| tiny |" in (report / "metrics.md").read_text()
    assert json.loads((report / "metrics.json").read_text())["per_image"]["tiny"]
    with pytest.raises(ConfigError, match="their 'physics' sections differ"):
        bad = train_from_config(
            tiny(tmp_path, train__steps=2, experiment__name="bad", physics__noise_sigma=0.2), device="cpu"
        )
        evaluate_run(run, compare=[bad])


def test_iteration_figure_for_models_with_iterates(tmp_path):
    from deqir.train import registry

    ops = {"decimate": lambda image_size, **kw: Decimate()}
    registry.register_model("test_gradient_steps", lambda: GradientSteps())
    import deqir.physics.registry as preg

    old = dict(preg.OPERATORS)
    preg.OPERATORS.update(ops)
    try:
        raw = tiny(
            tmp_path,
            data__patch_size=None,
            physics__operator="decimate",
            physics__noise_sigma=0.01,
            model__name="test_gradient_steps",
            model__options={},
            train__steps=3,
        )
        run = train_from_config(raw, device="cpu")
        result = evaluate_run(run, device="cpu", num_images=2)
    finally:
        preg.OPERATORS.clear()
        preg.OPERATORS.update(old)
        registry.MODELS.pop("test_gradient_steps")
    assert (run / "report" / "iterations.png").exists()
    assert result["methods"][0]["name"] == "initialisation (adjoint)"


def test_cli_train_and_eval(tmp_path):
    from typer.testing import CliRunner

    from deqir.cli import app

    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps(tiny(tmp_path, train__steps=4)))
    runner = CliRunner()
    res = runner.invoke(app, ["train", str(cfg), "--device", "cpu", "-o", "experiment.name=cli"])
    assert res.exit_code == 0, res.output
    assert "run folder" in res.output and (tmp_path / "cli" / "weights" / "final.safetensors").exists()
    res = runner.invoke(app, ["eval", str(tmp_path / "cli"), "--weights", "final", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "| cli |" in res.output and (tmp_path / "cli" / "report" / "comparison.png").exists()
    res = runner.invoke(app, ["train", str(cfg), "-o", "train.stpes=3"])
    assert res.exit_code != 0 and "did you mean 'steps'" in str(res.exception)


def test_seeding_streams_differ():
    assert seeding.derive_seed(1, seeding.DATA, 0, 0) != seeding.derive_seed(1, seeding.TASK, 0, 0)


def test_fixed_sigma_denoiser_without_noise_input_is_not_given_sigma():
    from deqir.priors.drunet import SmoothResUNet
    from deqir.train.tasks import DenoisingTask

    task = DenoisingTask(sigma=0.1)
    net = SmoothResUNet(channels=(4, 8))
    task.bind(net)
    assert not task.accepts("sigma")
    s = task.simulate(torch.rand(1, 1, 16, 16), seed=0, step=0, indices=[0])
    assert task.predict(net, s).shape == (1, 1, 16, 16)


def _tiny_oder(tmp_path, steps):
    """ODER on a 16² CT with 12 angles (4 per iteration): trains in about a second."""
    raw = tiny(
        tmp_path,
        train__steps=steps,
        train__checkpoint_every=4,
        train__val_every=4,
        train__schedule="constant",
    )
    raw["data"].pop("patch_size")
    raw["physics"] = {"operator": "ct", "options": {"num_angles": 12}, "noise_snr_db": 40}
    raw["method"] = {
        "name": "red_equilibrium",
        "init": "fbp",
        "input": "measurements",
        "options": {
            "mode": "oder",
            "minibatch": 4,
            "solver": "nesterov",
            "max_iter": 4,
            "adjoint": "phantom",
        },
    }
    return raw


def test_resumed_oder_run_continues_its_minibatch_draws(tmp_path):
    """Stop after the step-4 checkpoint, resume to step 8: the same weights as 8 steps in one go.

    The minibatch stream is the model's own generator, not the global one: without it in the
    checkpoint, the resumed run would draw step 5's angles from the start of the stream again.
    """
    straight = train_from_config(_tiny_oder(tmp_path, 8), run_dir=tmp_path / "straight", device="cpu")
    stopped = train_from_config(_tiny_oder(tmp_path, 4), run_dir=tmp_path / "stopped", device="cpu")
    state = load_checkpoint(stopped / "checkpoint.pt")
    assert set(state["samplers"]) == {""} and state["samplers"][""]["batch_size"] == 4
    train_from_config(_tiny_oder(tmp_path, 8), run_dir=stopped, resume=True, device="cpu")
    a, b = final_weights(straight), final_weights(stopped)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6, msg=k)


def test_model_weights_of_a_trained_method_set_the_whole_method(tmp_path):
    """``model.weights`` = a run's weights: network and learned step/τ come from it, here into the
    same network without spectral normalisation (fine-tuning a trained DEQ unconstrained)."""
    from deqir.train.trainer import build_model_from_config

    raw = _tiny_oder(tmp_path, 4)
    raw["model"]["options"]["spectral_norm"] = True
    raw["method"]["options"]["tau"] = 0.05
    run = train_from_config(raw, run_dir=tmp_path / "sn", device="cpu")
    trained = build_model_from_config(config_from_dict(raw), initial_weights=False)
    load_weights(run / "weights" / "final.safetensors", trained)
    trained.eval()
    from deqir.train.report import load_run_model  # the benches' reader of a run folder

    best = load_run_model(run)
    assert not best.training and best.mode == "oder"
    assert set(best.state_dict()) == set(trained.state_dict())

    again = dict(raw, model={"options": {"depth": 3, "width": 8, "spectral_norm": False}})
    again["model"]["weights"] = str(run / "weights" / "final.safetensors")
    again["method"] = {**raw["method"], "options": {**raw["method"]["options"], "step": 0.3, "tau": 0.2}}
    method = build_model_from_config(config_from_dict(again)).eval()
    torch.testing.assert_close(method.raw_parameters, trained.raw_parameters, rtol=0, atol=0)
    assert abs(float(method.tau.detach()) - 0.2) > 1e-3  # the config's τ was replaced by the learned one
    assert not any("parametrizations" in k for k in method.state_dict())
    x = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(method.network(x), trained.network(x), rtol=0, atol=1e-6)

    # model.load_scalars false: the trained network, the options' step and τ (another τ to tune at)
    own = build_model_from_config(
        config_from_dict({**again, "model": {**again["model"], "load_scalars": False}})
    )
    torch.testing.assert_close(own.tau.detach(), torch.tensor(0.2), rtol=1e-5, atol=0)
    torch.testing.assert_close(own.step.detach(), torch.tensor(0.3), rtol=1e-5, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(own.network(x), trained.network(x), rtol=0, atol=1e-6)
    prior = dict(raw, model={**raw["model"], "load_scalars": False})  # a network's file: nothing to leave out
    save_weights(trained.network, tmp_path / "net.safetensors")
    prior["model"]["weights"] = str(tmp_path / "net.safetensors")
    with pytest.raises(ConfigError, match="load_scalars is false, but .* a network's weights"):
        build_model_from_config(config_from_dict(prior))

    # a network-only model cannot take a method's file: a clear error, not a silent partial load
    plain = dict(again, method={"name": "none"})
    with pytest.raises(CheckpointError, match="does not fit"):
        build_model_from_config(config_from_dict(plain))


def test_model_weights_of_a_network_reach_every_copy_and_a_misfit_names_both(tmp_path):
    """A network's file loads before the method is built, so an untied unrolled method's K copies
    all start from it; a file that fits neither network nor method is refused naming both."""
    from deqir.train.checkpoint import save_weights
    from deqir.train.trainer import build_model_from_config

    torch.manual_seed(0)
    raw = {
        "model": {"name": "shallow_cell", "options": {"width": 4}},
        "method": {"name": "loop_unrolled", "options": {"steps": 3, "regulariser": "feedforward"}},
        "physics": {"noise_sigma": 0.1},
    }
    from deqir.train.registry import build_model

    donor = build_model("shallow_cell", {"width": 4})
    for p in donor.parameters():
        p.data.normal_()
    path = save_weights(donor, tmp_path / "cell.safetensors")
    method = build_model_from_config(
        config_from_dict({**raw, "model": {**raw["model"], "weights": str(path)}})
    )
    assert len(method.regularisers) == 3 and not method.tied
    for copy in method.regularisers:
        for (k, a), b in zip(donor.state_dict().items(), copy.cell.state_dict().values(), strict=True):
            assert torch.equal(a, b), k

    other = save_weights(torch.nn.Linear(3, 2), tmp_path / "other.safetensors")
    with pytest.raises(CheckpointError, match="fits neither the network"):
        build_model_from_config(config_from_dict({**raw, "model": {**raw["model"], "weights": str(other)}}))


def test_scalar_lr_factor_lets_the_learned_step_and_tau_move(tmp_path):
    """Adam moves every parameter by at most about the learning rate per step: at the network's rate τ and
    the step barely move; ``train.scalar_lr_factor`` gives them their own, larger rate."""

    from deqir.train.trainer import build_model_from_config

    def moved(factor):
        raw = _tiny_oder(tmp_path, 4)
        raw["train"]["lr"] = 1e-4
        raw["train"]["scalar_lr_factor"] = factor
        raw["experiment"]["name"] = f"scalars_{factor}"
        start = build_model_from_config(config_from_dict(raw)).raw_parameters.detach()
        run = train_from_config(raw, device="cpu")
        return (final_weights(run)["raw_parameters"] - start).abs()

    slow, fast = moved(1.0), moved(100.0)
    assert (fast > 30 * slow).all() and (fast > 1e-3).all()


def test_scalar_lr_factor_without_learned_scalars_or_not_positive_is_refused(tmp_path):
    with pytest.raises(
        ConfigError, match="has no trainable step or prior weight .*remove train.scalar_lr_factor"
    ):
        train_from_config(tiny(tmp_path, train__scalar_lr_factor=10.0), device="cpu")
    with pytest.raises(ConfigError, match=r"train.scalar_lr_factor: must be > 0"):
        config_from_dict(tiny(tmp_path, train__scalar_lr_factor=0.0))


def test_load_scalars_false_keeps_an_unrolled_methods_configured_steps(tmp_path):
    """The unrolled methods' learned steps (``raw_steps``) are scalars too: a trained method's file
    sets them, unless ``model.load_scalars`` is false; without ``model.weights`` the key is refused."""
    from deqir.train.checkpoint import save_weights
    from deqir.train.trainer import build_model_from_config

    raw = {
        "model": {"name": "shallow_cell", "options": {"width": 4}},
        "method": {"name": "loop_unrolled", "options": {"steps": 3, "regulariser": "feedforward"}},
        "physics": {"noise_sigma": 0.1},
    }
    trained = build_model_from_config(config_from_dict(raw))
    configured = trained.raw_steps.detach().clone()
    with torch.no_grad():
        trained.raw_steps.fill_(3.0)
    path = save_weights(trained, tmp_path / "method.safetensors")
    loaded = build_model_from_config(
        config_from_dict({**raw, "model": {**raw["model"], "weights": str(path)}})
    )
    assert bool((loaded.raw_steps == 3.0).all())
    kept = build_model_from_config(
        config_from_dict({**raw, "model": {**raw["model"], "weights": str(path), "load_scalars": False}})
    )
    torch.testing.assert_close(kept.raw_steps, configured, rtol=0, atol=0)
    for (k, a), b in zip(
        trained.regularisers.state_dict().items(), kept.regularisers.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), k  # the networks still come from the file
    with pytest.raises(ConfigError, match="load_scalars is false, but model.weights is not set"):
        config_from_dict({**raw, "model": {**raw["model"], "load_scalars": False}})


def test_model_weights_with_other_dilations_are_refused(tmp_path):
    """Dilations leave no trace in the tensors: the sidecar's training config is compared instead."""
    import json
    import shutil

    from deqir.bench.common import WEIGHTS_DIR
    from deqir.train.trainer import build_model_from_config

    shipped = WEIGHTS_DIR / "oder_ct_prior.safetensors"  # an undilated depth-5 DnCNN
    raw = {
        "physics": {"noise_sigma": 0.1},
        "model": {"options": {"depth": 5, "width": 24, "spectral_norm": True}},
    }
    raw["model"]["weights"] = str(shipped)
    build_model_from_config(config_from_dict(raw))  # the same network: loads
    dilated = {
        **raw,
        "model": {**raw["model"], "options": {**raw["model"]["options"], "dilations": [1, 2, 4, 2, 1]}},
    }
    with pytest.raises(
        ConfigError, match=r"trained with DnCNN dilations \[1, 1, 1, 1, 1\].*\[1, 2, 4, 2, 1\]"
    ):
        build_model_from_config(config_from_dict(dilated))

    # and the other way: a dilated network's file into an undilated network
    copy = tmp_path / "dilated.safetensors"
    shutil.copy(shipped, copy)
    side = json.loads(shipped.with_suffix(".json").read_text())
    side["config"]["model"]["options"]["dilations"] = [1, 2, 4, 2, 1]
    copy.with_suffix(".json").write_text(json.dumps(side))
    build_model_from_config(
        config_from_dict({**dilated, "model": {**dilated["model"], "weights": str(copy)}})
    )
    with pytest.raises(ConfigError, match="set model.options.dilations to"):
        build_model_from_config(config_from_dict({**raw, "model": {**raw["model"], "weights": str(copy)}}))
