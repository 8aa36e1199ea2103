"""Experiment configurations: typed sections, strict keys with suggestions, overrides, examples."""

from __future__ import annotations

from pathlib import Path

import pytest

from deqir.errors import ConfigError, DataError
from deqir.train.config import Config, apply_overrides, config_from_dict, load_config, save_config
from deqir.train.registry import METHODS, MODELS, build_method, build_model, register_method

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
DENOISE = {"physics": {"noise_sigma": 0.1}}


def _cfg(**sections):
    raw = {"physics": {"noise_sigma": 0.1}}
    raw.update(sections)
    return config_from_dict(raw)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_committed_configs_validate(path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    assert cfg.experiment.name == path.stem


def test_denoiser_tiny_is_committed():
    assert any(p.name == "denoiser_tiny.yaml" for p in CONFIGS)


def test_defaults_and_typed_sections():
    cfg = _cfg()
    assert cfg.model.name == "dncnn" and cfg.method.name == "none"
    assert cfg.train.schedule == "cosine" and cfg.train.betas == (0.9, 0.999)
    assert cfg.is_denoising


@pytest.mark.parametrize(
    "section, key, suggestion",
    [
        ("train", "learning_rate", None),
        ("train", "step", "steps"),
        ("data", "batchsize", "batch_size"),
        ("model", "option", "options"),
        ("eval", "num_figure", "num_figures"),
    ],
)
def test_unknown_key_names_section_key_and_closest(section, key, suggestion):
    with pytest.raises(ConfigError) as err:
        _cfg(**{section: {key: 1}})
    msg = str(err.value)
    assert f"section '{section}'" in msg and f"'{key}'" in msg and "Valid keys" in msg
    if suggestion:
        assert f"did you mean '{suggestion}'" in msg


def test_unknown_section_suggests_closest():
    with pytest.raises(ConfigError, match=r"unknown config section 'trian'; did you mean 'train'"):
        config_from_dict({"trian": {}})


@pytest.mark.parametrize(
    "raw, expected",
    [
        ({"train": {"steps": "ten"}}, r"train.steps: expected an integer; got 'ten'"),
        ({"train": {"steps": True}}, r"train.steps: expected an integer"),
        ({"train": {"lr": "fast"}}, r"train.lr: expected a number"),
        ({"train": {"progress": "yes"}}, r"train.progress: expected true or false"),
        ({"train": {"betas": [0.9]}}, r"train.betas: expected a list of 2 values"),
        ({"train": {"schedule": "cosin"}}, r"train.schedule: unknown value 'cosin'; did you mean 'cosine'"),
        ({"model": {"options": [1, 2]}}, r"model.options: expected a mapping"),
        ({"model": {"name": 3}}, r"model.name: expected a string"),
        ({"data": {"patch_size": 1.5}}, r"data.patch_size: expected"),
        ({"data": 5}, r"section 'data' must be a mapping"),
    ],
)
def test_wrong_types_say_what_was_expected(raw, expected):
    raw = {**DENOISE, **raw}
    with pytest.raises(ConfigError, match=expected):
        config_from_dict(raw)


def test_yaml_scientific_strings_and_int_floats_are_numbers():
    cfg = _cfg(train={"lr": "1e-3", "weight_decay": 0, "steps": 10.0})
    assert cfg.train.lr == 1e-3 and isinstance(cfg.train.weight_decay, float) and cfg.train.steps == 10


@pytest.mark.parametrize(
    "raw, expected",
    [
        ({"physics": {}}, "needs noise_sigma"),
        ({"physics": {"noise_sigma": 0.1, "noise_sigma_range": [0, 0.2]}}, "only one of"),
        ({"physics": {"noise_sigma_range": [0.3, 0.1]}}, "0 <= low <= high"),
        ({"physics": {"noise_snr_db": 30}}, "reconstruction only"),
        ({"physics": {"noise_sigma": 0.1}, "data": {"patch_size": 80, "image_size": 64}}, "larger than"),
        ({"physics": {"operator": "ct", "noise_sigma": 0.1}, "data": {"patch_size": 32}}, "must be null"),
        ({"physics": {"noise_sigma": 0.1}, "data": {"extra_train_sizes": [32]}}, r"needs data.patch_size"),
        (
            {"physics": {"noise_sigma": 0.1}, "data": {"patch_size": 48, "extra_train_sizes": [32]}},
            r"extra_train_sizes\[0\] \(32\) needs",
        ),
        (
            {"physics": {"noise_sigma": 0.1}, "data": {"extra_train_sizes": [0]}},
            r"extra_train_sizes\[0\]: must be > 0",
        ),
        ({"physics": {"noise_sigma": 0.1}, "train": {"steps": 0}}, r"train.steps: must be > 0"),
        ({"physics": {"noise_sigma": 0.1}, "train": {"gamma": 2}}, r"train.gamma: must lie in"),
    ],
)
def test_inconsistent_values_are_rejected(raw, expected):
    with pytest.raises(ConfigError, match=expected):
        config_from_dict(raw)


def test_overrides_strings_and_dicts():
    raw = apply_overrides(
        {}, ["train.steps=7", "model.options.depth=4", "physics.noise_sigma_range=[0, 0.2]"]
    )
    assert raw == {
        "train": {"steps": 7},
        "model": {"options": {"depth": 4}},
        "physics": {"noise_sigma_range": [0, 0.2]},
    }
    cfg = load_config(raw, overrides={"train.lr": 0.01})
    assert cfg.train.lr == 0.01 and cfg.physics.noise_sigma_range == (0.0, 0.2)
    with pytest.raises(ConfigError, match="section.key=value"):
        apply_overrides({}, ["train.steps"])
    with pytest.raises(ConfigError, match="must name a section"):
        apply_overrides({}, ["steps=3"])
    with pytest.raises(ConfigError, match="unknown key 'stesp'"):
        load_config(DENOISE, overrides=["train.stesp=3"])


def test_files_missing_or_invalid(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping of sections"):
        load_config(bad)


def test_save_and_reload_roundtrip(tmp_path):
    cfg = _cfg(train={"steps": 5, "betas": [0.8, 0.9]}, model={"options": {"depth": 3}})
    path = save_config(cfg, tmp_path / "c.yaml")
    assert load_config(path) == cfg
    assert load_config(cfg) == cfg


def test_model_registry_checks_options_and_names():
    net = build_model("dncnn", {"depth": 3, "width": 4})
    assert type(net).__name__ == "DnCNN"
    with pytest.raises(ConfigError, match=r"unknown option 'dept' of model 'dncnn'; did you mean 'depth'"):
        build_model("dncnn", {"dept": 3})
    with pytest.raises(ConfigError, match=r"unknown model 'dncn'; did you mean 'dncnn'"):
        build_model("dncn")
    # import paths need no registration
    lin = build_model("torch.nn:Linear", {"in_features": 2, "out_features": 3})
    assert lin.out_features == 3
    with pytest.raises(ConfigError, match="cannot import"):
        build_model("deqir.nothing_here:Net")
    assert "dncnn" in MODELS


def test_method_registry_hook():
    calls = {}

    @register_method("test_wrap")
    def wrap(network, gamma=1.0):
        calls["gamma"] = gamma
        return network

    net = build_model("dncnn", {"depth": 2, "width": 2})
    assert build_method("test_wrap", net, {"gamma": 0.5}) is net and calls["gamma"] == 0.5
    with pytest.raises(ConfigError, match="unknown option 'gama'.*did you mean 'gamma'"):
        build_method("test_wrap", net, {"gama": 0.5})
    assert build_method("none", net) is net
    with pytest.raises(ConfigError, match="needs a method"):
        build_method("none", net, {"gamma": 1})
    METHODS.pop("test_wrap")
