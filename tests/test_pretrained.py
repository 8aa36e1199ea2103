"""Shipped pretrained denoisers: loading, quality, export round trip and corrupt-file errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml

from deqir.errors import CheckpointError, ConfigError, DataError, InvalidValueError
from deqir.metrics import psnr
from deqir.priors.pretrained import (
    PRETRAINED,
    add_test_noise,
    list_pretrained,
    load_pretrained,
    pretrained_info,
    pretrained_path,
)
from deqir.train.export import export_weights

# domain -> a source whose test split the denoiser never saw
TEST_SOURCES = {"natural": "natural", "ct": "ct_phantoms+brain", "mri": "brain"}


@pytest.mark.parametrize("name", list(PRETRAINED))
def test_shipped_weights_load_and_denoise_a_held_out_image(name):
    from deqir.data import build_dataset

    net = load_pretrained(name)
    assert not net.training
    assert all(p.dtype == torch.float32 for p in net.parameters())
    assert pretrained_path(name).stat().st_size <= 1_000_000
    info = pretrained_info(name)
    assert info["sigma_range"][0] == 0.0 and info["sigma_range"][1] >= 50 / 255
    assert set(info["metrics"]["test_psnr"]) == {"15", "25", "50"}

    clean = build_dataset(TEST_SOURCES[name], 256).test.stack()[-1:, :, 64:192, 64:192]
    sigma = 25 / 255
    noisy = add_test_noise(clean, sigma, seed=0)
    with torch.no_grad():
        out = net(noisy, sigma).clamp(0, 1)
    gain = float(psnr(out, clean) - psnr(noisy, clean))
    assert gain > 5.0, f"{name}: only {gain:.2f} dB better than the noisy input"


@pytest.mark.parametrize("name", list(PRETRAINED))
def test_shipped_denoisers_leave_clean_and_nearly_clean_images_alone(name):
    """PnP/RED at 40-50 dB input SNR call the denoiser at sigma <= 0.01: it must be (near) the identity.

    The shipped networks scale their residual by sigma, so D(x, 0) = x; an unscaled blind network
    smoothed clean phantom edges to 35-38 dB even at sigma = 0, which capped PnP/RED there.
    """
    from deqir.data import build_dataset

    net = load_pretrained(name)
    assert net.sigma_scaled_residual
    clean = build_dataset(TEST_SOURCES[name], 128).test.stack()[:2]
    with torch.no_grad():
        assert torch.equal(net(clean, 0.0), clean)
        noisy = add_test_noise(clean, 0.005, seed=0)
        out = net(noisy, 0.005)
    # per image within 1.5 dB of the 46 dB input (the unscaled networks gave 34-38 dB here)
    assert bool((psnr(out, clean) > psnr(noisy, clean) - 1.5).all())


@pytest.mark.parametrize("name", list(PRETRAINED))
def test_denoisers_trained_with_noise_mse_gain_at_low_noise(name):
    """The noise_mse loss trains sigma = 1-5/255 as much as 50/255: at 2/255 the network must beat
    its input clearly. On these four images the plain-MSE networks gained 1.3 (CT) and 2.2 dB (MRI)
    on average, one image by 0.04 dB; the noise_mse ones 4.8 and 5.7, every image by 1.4 or more."""
    from deqir.data import build_dataset

    if pretrained_info(name)["config"]["train"].get("loss") != "noise_mse":
        pytest.skip(f"'{name}' was trained with plain MSE")
    net = load_pretrained(name)
    clean = build_dataset(TEST_SOURCES[name], 128).test.stack()[:4]
    noisy = add_test_noise(clean, 2 / 255, seed=0)
    with torch.no_grad():
        out = net(noisy, 2 / 255).clamp(0, 1)
    gain = psnr(out, clean) - psnr(noisy, clean)
    assert float(gain.mean()) > 3.5 and bool((gain > 1.0).all()), f"{name}: gains {gain.tolist()} dB"


def test_sigma_scaled_weights_refuse_an_unscaled_network():
    from deqir.priors.drunet import SmoothResUNet
    from deqir.train.checkpoint import load_weights

    opts = {"channels": (16, 32, 64, 96), "blocks_per_level": 1, "noise_level_input": True}
    with pytest.raises(CheckpointError, match="sigma_scaled_residual: true"):
        load_weights(pretrained_path("mri"), SmoothResUNet(**opts))
    net = load_weights(pretrained_path("mri"), SmoothResUNet(**opts, sigma_scaled_residual=True))
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(net(x, 0.1), load_pretrained("mri")(x, 0.1))


def test_list_pretrained_reports_every_name():
    rows = {row["name"]: row for row in list_pretrained()}
    assert set(rows) == set(PRETRAINED)
    for row in rows.values():
        assert row["available"] and "error" not in row
        assert row["bytes"] <= 1_000_000 and row["parameters"] > 0


def test_add_test_noise_is_fixed_per_image_and_level():
    x = torch.zeros(3, 1, 16, 16)
    a = add_test_noise(x, 0.1)
    assert not torch.equal(a[0], a[1])
    assert not torch.equal(add_test_noise(x, 0.2)[0] / 0.2, a[0] / 0.1)
    torch.testing.assert_close(a[0].std(), torch.tensor(0.1), atol=0.02, rtol=0)
    assert torch.equal(add_test_noise(x, 0.1), a) and torch.equal(add_test_noise(x[:2], 0.1), a[:2])


# --------------------------------------------------------------------- training and export
def _tiny_config(tmp_path):
    return {
        "experiment": {"name": "tiny_blind", "seed": 1, "output_dir": str(tmp_path)},
        "data": {"source": "synthetic", "image_size": 32, "num_train": 16, "num_val": 4, "batch_size": 8},
        "physics": {"noise_sigma_range": [0.05, 0.2]},
        "model": {
            "name": "drunet",
            "options": {"channels": [8, 16], "blocks_per_level": 1, "noise_level_input": True},
        },
        "train": {"steps": 60, "lr": 3e-3, "val_every": 5, "log_every": 5, "progress": False},
    }


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from deqir.train import train_from_config

    tmp = tmp_path_factory.mktemp("run")
    return train_from_config(_tiny_config(tmp), device="cpu")


def test_short_blind_training_raises_the_validation_psnr(tiny_run):
    log = [json.loads(line) for line in (tiny_run / "log.jsonl").read_text().splitlines()]
    vals = [r["val_psnr"] for r in log if "val_psnr" in r]
    losses = [r["loss"] for r in log if "loss" in r]
    assert len(vals) == 12
    assert vals[-1] > vals[0] + 1.0 and max(vals[-3:]) > max(vals[:3])
    assert sum(losses[-3:]) < sum(losses[:3])


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_export_then_load_round_trip_is_exact(tiny_run, tmp_path, dtype):
    from deqir.train.checkpoint import load_weights

    path = export_weights(tiny_run, "mri", out_dir=tmp_path, dtype=dtype)
    assert path == tmp_path / "denoiser_mri.safetensors" and path.with_suffix(".json").is_file()
    net = load_pretrained("mri", folder=tmp_path)
    trained = load_weights(tiny_run / "weights" / "best.safetensors")
    for key, value in net.state_dict().items():
        expected = trained[key].half().float() if dtype == "float16" else trained[key]
        assert torch.equal(value, expected), key
    info = pretrained_info("mri", folder=tmp_path)
    assert info["dtype"] == dtype and info["architecture"]["model"] == "drunet"
    assert info["training"]["data"]["source"] == "synthetic" and info["training"]["steps"] == 60
    test = info["metrics"]["test_psnr"]
    assert set(test) == {"15", "25", "50"} and test["15"] > test["50"]
    if dtype == "float32":
        assert info["metrics"]["test_psnr_float32"] == test
    # the sidecar's test PSNR is reproducible from the shipped file alone
    from deqir.train.sources import load_source

    clean = torch.stack(load_source("synthetic", 32, 16, 4, 8, 1)["test"].images)
    noisy = add_test_noise(clean, 25 / 255, seed=0)
    with torch.no_grad():
        again = float(psnr(net(noisy, 25 / 255).clamp(0, 1), clean).mean())
    assert again == pytest.approx(test["25"], abs=1e-3)


def test_export_refuses_what_it_cannot_ship(tiny_run, tmp_path):
    with pytest.raises(DataError, match="not a finished deqir training run"):
        export_weights(tmp_path / "nothing", "natural", out_dir=tmp_path)
    with pytest.raises(InvalidValueError, match="pretrained denoiser"):
        export_weights(tiny_run, "xray", out_dir=tmp_path)
    with pytest.raises(InvalidValueError, match="exceed 1000 bytes"):
        export_weights(tiny_run, "ct", out_dir=tmp_path, max_bytes=1000)
    fixed = tmp_path / "fixed"
    shutil.copytree(tiny_run, fixed)
    raw = yaml.safe_load((fixed / "config.yaml").read_text())
    raw["physics"].update(noise_sigma=0.1, noise_sigma_range=None)  # not blind
    (fixed / "config.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="blind"):
        export_weights(fixed, "ct", out_dir=tmp_path)
    assert not (tmp_path / "denoiser_ct.safetensors").exists()


# --------------------------------------------------------------------- broken files
@pytest.fixture
def shipped_copy(tmp_path):
    for suffix in (".safetensors", ".json"):
        shutil.copy(pretrained_path("natural").with_suffix(suffix), tmp_path)
    return tmp_path


def _expect_error(folder, *fragments):
    with pytest.raises(CheckpointError) as info:
        load_pretrained("natural", folder=folder)
    message = str(info.value)
    assert "denoiser_natural" in message and "make weights" in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_truncated_file_is_refused(shipped_copy):
    path = shipped_copy / "denoiser_natural.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    _expect_error(shipped_copy, "SHA-256")


def test_corrupted_byte_is_refused(shipped_copy):
    path = shipped_copy / "denoiser_natural.safetensors"
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0x55
    path.write_bytes(bytes(blob))
    _expect_error(shipped_copy, "SHA-256")


def test_truncated_file_without_digest_is_refused(shipped_copy):
    path = shipped_copy / "denoiser_natural.safetensors"
    path.write_bytes(path.read_bytes()[:1000])
    side = json.loads(path.with_suffix(".json").read_text())
    side["sha256"] = __import__("hashlib").sha256(path.read_bytes()).hexdigest()
    path.with_suffix(".json").write_text(json.dumps(side))
    _expect_error(shipped_copy, "not a valid safetensors file")


def test_wrong_architecture_sidecar_is_refused(shipped_copy):
    side_path = shipped_copy / "denoiser_natural.json"
    side = json.loads(side_path.read_text())
    options = side["architecture"]["options"]
    key = "channels" if "channels" in options else "width"
    options[key] = [c * 2 for c in options[key]] if isinstance(options[key], list) else options[key] * 2
    side_path.write_text(json.dumps(side))
    _expect_error(shipped_copy, "shape mismatch")
    side["architecture"] = {"model": "no_such_net", "options": {}}
    side_path.write_text(json.dumps(side))
    _expect_error(shipped_copy, "cannot build")


def test_sidecar_of_another_denoiser_is_refused(shipped_copy):
    side_path = shipped_copy / "denoiser_natural.json"
    side = json.loads(side_path.read_text())
    side["pretrained"] = "ct"
    side_path.write_text(json.dumps(side))
    _expect_error(shipped_copy, "does not describe")
    side_path.write_text("{not json")
    _expect_error(shipped_copy, "not valid JSON")


@pytest.mark.parametrize("suffix", [".safetensors", ".json"])
def test_missing_file_is_refused(shipped_copy, suffix):
    (shipped_copy / f"denoiser_natural{suffix}").unlink()
    _expect_error(shipped_copy, "not found")


def test_unknown_name_lists_the_names():
    with pytest.raises(InvalidValueError, match="natural"):
        load_pretrained("nautral")


def test_cli_weights_list_and_export(tiny_run, tmp_path):
    from typer.testing import CliRunner

    from deqir.cli import app

    runner = CliRunner()
    listed = runner.invoke(app, ["weights", "list"])
    assert listed.exit_code == 0 and "| natural | yes |" in listed.output
    done = runner.invoke(app, ["weights", "export", str(tiny_run), "--name", "ct", "--out", str(tmp_path)])
    assert done.exit_code == 0, done.output
    assert (tmp_path / "denoiser_ct.safetensors").is_file() and "| ct | yes |" in done.output
    bad = runner.invoke(app, ["weights", "frobnicate"])
    assert bad.exit_code != 0
