"""Experiment configuration: YAML files validated into typed, nested dataclasses.

A configuration has seven sections; every key is optional and has a documented default::

    experiment: {name, seed, output_dir}
    data:       {source, image_size, patch_size, num_train, num_val, num_test, batch_size,
                 augment, extra_train_sizes, options}
    physics:    {operator, options, noise_sigma, noise_sigma_range, noise_snr_db}
    model:      {name, options, weights, load_scalars}
    method:     {name, options, init, input}
    train:      {steps, lr, weight_decay, betas, schedule, warmup_steps, step_size, gamma,
                 min_lr_factor, grad_clip, scalar_lr_factor, loss, val_every, log_every,
                 checkpoint_every, patience,
                 min_delta, max_rollbacks, rollback_lr_factor, max_loss, explode_factor,
                 deterministic, progress}
    eval:       {split, num_images, num_figures, weights, batch_size}

``physics.operator: null`` (the default) means denoising: the "measurement" is the clean image
plus Gaussian noise of level ``noise_sigma`` (or drawn uniformly from ``noise_sigma_range`` for a
blind denoiser). Any other value names an operator of :mod:`deqir.physics.registry`.

An unknown key is rejected with a :class:`~deqir.errors.ConfigError` that names the section, the
key and the closest valid name; a value of the wrong type is rejected with what was expected.

Example:
    >>> from deqir.train.config import config_from_dict
    >>> cfg = config_from_dict({"physics": {"noise_sigma": 0.1}, "train": {"steps": 10, "lr": "1e-3"}})
    >>> cfg.train.steps, cfg.train.lr, cfg.model.name
    (10, 0.001, 'dncnn')
    >>> config_from_dict({"train": {"step": 10}})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    deqir.errors.ConfigError: config section 'train': unknown key 'step'; did you mean 'steps'? ...
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from deqir.errors import ConfigError, DataError


@dataclass
class ExperimentConfig:
    """Naming and seeding of a run.

    Attributes:
        name: run name; the run folder is ``output_dir/name``.
        seed: seed of every random draw (model initialisation, data, noise).
        output_dir: parent folder of run folders.
    """

    name: str = "experiment"
    seed: int = 0
    output_dir: str = "runs"


@dataclass
class DataConfig:
    """Clean training images.

    Attributes:
        source: ``synthetic`` (random shapes and smooth fields, any size, no files), a source of
            :func:`deqir.data.build_dataset` (``natural``, ``ct_phantoms``, ``brain``, a folder
            ...; ``options`` go to it), or ``"package.module:function"`` returning
            ``{"train": [...], "val": [...], "test": [...]}`` lists of ``(C, H, W)`` tensors
            (see :mod:`deqir.train.sources`).
        image_size: side of the images the source produces (reconstruction: the operator's).
        patch_size: side of the random training crops; ``None`` trains on whole images.
        num_train, num_val, num_test: images per split (synthetic source); ``num_val`` also
            caps the validation crops.
        batch_size: global batch (split over the processes of a distributed run).
        augment: random flips and 90-degree rotations of training crops.
        extra_train_sizes: more sides the *training* images are also made at (multi-scale
            training: crops are drawn from every size, so a denoiser that will be called at 128²
            also learns that density of detail); each at least ``patch_size``, which must be set.
            Validation and test images stay at ``image_size``.
        options: extra keyword arguments for the source.
    """

    source: str = "synthetic"
    image_size: int = 64
    patch_size: int | None = None
    num_train: int = 64
    num_val: int = 8
    num_test: int = 8
    batch_size: int = 8
    augment: bool = True
    extra_train_sizes: list[int] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class PhysicsConfig:
    """The measurement model.

    Attributes:
        operator: ``None`` for denoising, else a name of :mod:`deqir.physics.registry`.
        options: keyword arguments of ``build_operator`` (image size comes from ``data``).
        noise_sigma: standard deviation of white Gaussian noise on the measurements.
        noise_sigma_range: ``[low, high]``: a blind task, ``sigma ~ U(low, high)`` per image.
        noise_snr_db: noise set by the input SNR instead (reconstruction only).
    """

    operator: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    noise_sigma: float | None = None
    noise_sigma_range: tuple[float, float] | None = None
    noise_snr_db: float | None = None


@dataclass
class ModelConfig:
    """The network.

    Attributes:
        name: a name of :data:`deqir.priors.registry.MODELS` or ``"package.module:callable"``.
        options: keyword arguments of the model's constructor (checked against its signature).
        weights: safetensors file to initialise the network from (e.g. a pretrained denoiser,
            ``pretrained:NAME``), or a run's weights (``runs/NAME/weights/best.safetensors``), which
            initialise the whole method, its learned step and τ included. Spectral-normalised
            weights also load into the network without spectral normalisation.
        load_scalars: with a run's weights, take its learned scalars too (RED's step and τ,
            ELDER's λ and τ, the unrolled methods' steps); ``false`` keeps the method's options'
            values, to fine-tune a trained network at another τ.
    """

    name: str = "dncnn"
    options: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None
    load_scalars: bool = True


@dataclass
class MethodConfig:
    """How the network becomes a reconstruction method.

    Attributes:
        name: ``none`` (the network is the method) or a name of
            :data:`deqir.train.registry.METHODS` / ``"package.module:callable"``; the builder
            gets the network and ``options`` and returns the model to train.
        options: keyword arguments of the method builder.
        init: initialisation of a reconstruction: ``adjoint`` (``A^T y``), ``scaled_adjoint``
            (``A^T y / ||A||^2``), ``zeros``, or the name of a method of the operator
            (e.g. ``A_dagger``).
        input: what the model is called with: ``init`` (``model(x0)``), ``measurements``
            (``model(y, physics, init=x0)``) or ``auto`` (``measurements`` when the model's
            ``forward`` has a ``physics`` argument).
    """

    name: str = "none"
    options: dict[str, Any] = field(default_factory=dict)
    init: str = "adjoint"
    input: Literal["auto", "init", "measurements"] = "auto"


@dataclass
class TrainSection:
    """Optimisation.

    Attributes:
        steps: number of optimiser steps.
        lr: peak learning rate of Adam.
        weight_decay: Adam weight decay.
        betas: Adam betas.
        schedule: ``constant``, ``cosine`` (to ``min_lr_factor * lr``) or ``step``
            (times ``gamma`` every ``step_size`` steps).
        warmup_steps: linear warm-up steps before the schedule.
        step_size, gamma: of the ``step`` schedule.
        min_lr_factor: final learning rate of the cosine schedule, relative to ``lr``.
        grad_clip: clip the global gradient norm to this value (``None``: no clipping).
        scalar_lr_factor: learning rate of the method's learned scalars (softplus-coded: RED's
            step and τ, ELDER's λ and τ, the unrolled methods' steps), relative to ``lr``. Adam
            moves every parameter by at most about the learning rate per step, whatever its
            gradient, so at ``lr`` 3e-4 such a scalar barely moves in a training (the shipped CT
            ODER's τ: 0.0100 to 0.0097 in 900 steps).
        loss: ``mse``, ``l1`` or ``noise_mse`` (denoising only: each image's squared error over
            ``σ² + (1/255)²``, the noise-prediction loss of diffusion models. Plain MSE weighs an
            image by ``σ²`` once the residual is scaled by ``σ``, so low noise levels, where PnP
            and RED call the denoiser at 40-50 dB, would barely be trained).
        val_every: validate (PSNR) every this many steps (and at the end).
        log_every: write a line to ``log.jsonl`` every this many steps.
        checkpoint_every: write the training checkpoint every this many steps (and at the end).
        patience: stop after this many validations without improvement (``None``: never).
        min_delta: improvement in dB that counts.
        max_rollbacks: give up after this many rollbacks.
        rollback_lr_factor: multiply the learning rate by this at each rollback.
        max_loss: a loss above this counts as exploding (``None``: no absolute limit).
        explode_factor: a loss above this times the running average counts as exploding.
        deterministic: ask PyTorch for deterministic algorithms (slower on GPU).
        progress: show a progress bar.
    """

    steps: int = 1000
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: Literal["constant", "cosine", "step"] = "cosine"
    warmup_steps: int = 0
    step_size: int = 1000
    gamma: float = 0.5
    min_lr_factor: float = 0.01
    grad_clip: float | None = None
    scalar_lr_factor: float = 1.0
    loss: Literal["mse", "l1", "noise_mse"] = "mse"
    val_every: int = 100
    log_every: int = 10
    checkpoint_every: int = 100
    patience: int | None = None
    min_delta: float = 0.0
    max_rollbacks: int = 3
    rollback_lr_factor: float = 0.5
    max_loss: float | None = None
    explode_factor: float = 1e3
    deterministic: bool = False
    progress: bool = True


@dataclass
class EvalSection:
    """Evaluation of a finished run.

    Attributes:
        split: ``val`` or ``test`` images.
        num_images: images to evaluate (``None``: the whole split).
        num_figures: images shown in the comparison figure.
        weights: ``best`` or ``final`` weights of the run.
        batch_size: images per forward pass.
    """

    split: Literal["val", "test"] = "test"
    num_images: int | None = None
    num_figures: int = 4
    weights: Literal["best", "final"] = "best"
    batch_size: int = 4


@dataclass
class Config:
    """A whole experiment; see the module docstring."""

    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)
    data: DataConfig = field(default_factory=DataConfig)
    physics: PhysicsConfig = field(default_factory=PhysicsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainSection = field(default_factory=TrainSection)
    eval: EvalSection = field(default_factory=EvalSection)

    @property
    def is_denoising(self) -> bool:
        """Whether this is a denoising task (no operator)."""
        return self.physics.operator is None

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dictionary (tuples as lists), as written to ``config.yaml``."""
        return _plain(dataclasses.asdict(self))


# --------------------------------------------------------------------- loading
def load_config(
    source: str | Path | dict[str, Any] | Config, overrides: list[str] | dict[str, Any] | None = None
) -> Config:
    """Load and validate a configuration from a YAML file, a dictionary or a :class:`Config`.

    Args:
        source: path of a YAML file, a nested dictionary or a :class:`Config`.
        overrides: ``["train.steps=50", "model.options.width=16"]`` (values parsed as YAML) or
            ``{"train.steps": 50}``; applied before validation.

    Raises:
        ConfigError: unknown key, wrong type or inconsistent values.
        DataError: the file is missing or is not valid YAML.

    Example:
        >>> cfg = load_config({"experiment": {"name": "a"}},
        ...                   overrides=["train.steps=5", "physics.noise_sigma=0.1"])
        >>> cfg.experiment.name, cfg.train.steps
        ('a', 5)
    """
    if isinstance(source, Config):
        raw = source.to_dict()
    elif isinstance(source, dict):
        raw = copy.deepcopy(source)
    else:
        raw = read_yaml(source)
    if overrides:
        apply_overrides(raw, overrides)
    return config_from_dict(raw)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, raising :class:`DataError`/:class:`ConfigError` with the file name."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise DataError(f"config file {path} not found; check the path (examples are in configs/)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections; got {type(raw).__name__}")
    return raw


def save_config(config: Config, path: str | Path) -> Path:
    """Write the resolved configuration as YAML (atomically).

    Example:
        >>> import tempfile, pathlib
        >>> cfg = config_from_dict({"physics": {"noise_sigma": 0.1}})
        >>> p = save_config(cfg, pathlib.Path(tempfile.mkdtemp()) / "config.yaml")
        >>> load_config(p) == cfg
        True
    """
    import os

    import yaml

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    os.replace(tmp, path)
    return path


def apply_overrides(raw: dict[str, Any], overrides: list[str] | dict[str, Any]) -> dict[str, Any]:
    """Set dotted keys in a raw configuration dictionary, in place.

    Example:
        >>> apply_overrides({}, ["train.lr=0.01", "model.options.depth=5"])
        {'train': {'lr': 0.01}, 'model': {'options': {'depth': 5}}}
    """
    import yaml

    if isinstance(overrides, dict):
        items = list(overrides.items())
    else:
        items = []
        for text in overrides:
            key, sep, value = str(text).partition("=")
            if not sep or not key.strip():
                raise ConfigError(
                    f"override {text!r} must look like section.key=value (for example train.steps=100)"
                )
            items.append((key.strip(), yaml.safe_load(value)))
    for key, value in items:
        parts = key.split(".")
        if len(parts) < 2:
            raise ConfigError(
                f"override key {key!r} must name a section and a key, "
                f"e.g. train.{key}; sections: {', '.join(_SECTIONS)}"
            )
        node = raw
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {key!r}: '{part}' is a value, not a section")
            node = child
        node[parts[-1]] = value
    return raw


def config_from_dict(raw: dict[str, Any]) -> Config:
    """Validate a nested dictionary into a :class:`Config` (see :func:`load_config`)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"a configuration must be a mapping of sections; got {type(raw).__name__}")
    cfg = _build(Config, raw, "")
    _check_consistency(cfg)
    return cfg


_SECTIONS = [f.name for f in dataclasses.fields(Config)]


def _build(cls: type, raw: Any, where: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        place = f"config section '{where}'" if where else "the configuration"
        raise ConfigError(f"{place} must be a mapping of keys; got {type(raw).__name__} {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            if where:
                msg = f"config section '{where}': unknown key '{key}'{hint} Valid keys: {', '.join(names)}"
            else:
                msg = f"unknown config section '{key}'{hint} Valid sections: {', '.join(names)}"
            raise ConfigError(msg)
        path = f"{where}.{key}" if where else key
        kwargs[key] = _coerce(hints[key], value, path)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, path: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert it (lists to tuples ...)."""
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        errors = []
        for a in inner:
            try:
                return _coerce(a, value, path)
            except ConfigError as err:
                errors.append(err)
        if len(inner) == 1:
            raise errors[0]
        raise ConfigError(f"config {path}: expected {_describe(tp)}; got {value!r}")
    if origin is Literal:
        if value not in args:
            close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(
                f"config {path}: unknown value {value!r}{hint} Expected one of: {', '.join(map(str, args))}"
            )
        return value
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config {path}: expected true or false; got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"config {path}: expected an integer; got {value!r} ({type(value).__name__})")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"config {path}: expected a number; got {value!r} ({type(value).__name__})")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"config {path}: expected a string; got {value!r} ({type(value).__name__})")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple) or len(value) != len(args):
            raise ConfigError(
                f"config {path}: expected a list of {len(args)} values ({_describe(tp)}); got {value!r}"
            )
        return tuple(_coerce(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True)))
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"config {path}: expected a list; got {value!r}")
        return [_coerce(args[0], v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config {path}: expected a mapping of keys to values; got {value!r}")
        return dict(value)
    raise TypeError(f"unsupported annotation {tp!r} at {path}")  # programming error


def _describe(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is tuple:
        return "[" + ", ".join(_describe(a) for a in args) + "]"
    if origin is Literal:
        return "one of " + ", ".join(map(str, args))
    return {
        type(None): "null",
        int: "an integer",
        float: "a number",
        str: "a string",
        bool: "true/false",
    }.get(tp, getattr(tp, "__name__", str(tp)))


def _positive(value: Any, path: str, allow_zero: bool = False) -> None:
    if value is not None and (value < 0 or (value == 0 and not allow_zero)):
        raise ConfigError(f"config {path}: must be {'>= 0' if allow_zero else '> 0'}; got {value}")


def _check_consistency(cfg: Config) -> None:
    d, p, t, e = cfg.data, cfg.physics, cfg.train, cfg.eval
    for path, value in [
        ("data.image_size", d.image_size),
        ("data.patch_size", d.patch_size),
        ("data.batch_size", d.batch_size),
        ("data.num_train", d.num_train),
        ("data.num_val", d.num_val),
        ("data.num_test", d.num_test),
        ("train.steps", t.steps),
        ("train.lr", t.lr),
        ("train.val_every", t.val_every),
        ("train.log_every", t.log_every),
        ("train.checkpoint_every", t.checkpoint_every),
        ("train.step_size", t.step_size),
        ("train.grad_clip", t.grad_clip),
        ("train.scalar_lr_factor", t.scalar_lr_factor),
        ("train.patience", t.patience),
        ("train.max_loss", t.max_loss),
        ("train.explode_factor", t.explode_factor),
        ("eval.batch_size", e.batch_size),
        ("eval.num_images", e.num_images),
    ]:
        _positive(value, path)
    for path, value in [
        ("train.weight_decay", t.weight_decay),
        ("train.warmup_steps", t.warmup_steps),
        ("train.max_rollbacks", t.max_rollbacks),
        ("train.min_delta", t.min_delta),
        ("eval.num_figures", e.num_figures),
        ("physics.noise_sigma", p.noise_sigma),
    ]:
        _positive(value, path, allow_zero=True)
    for path, value in [
        ("train.gamma", t.gamma),
        ("train.rollback_lr_factor", t.rollback_lr_factor),
        ("train.min_lr_factor", t.min_lr_factor),
    ]:
        if not 0 < value <= 1:
            raise ConfigError(f"config {path}: must lie in (0, 1]; got {value}")
    if not cfg.model.load_scalars and cfg.model.weights is None:
        raise ConfigError(
            "config model.load_scalars is false, but model.weights is not set: there is no trained "
            "method to leave the scalars of; remove model.load_scalars or set model.weights"
        )
    if d.patch_size is not None and d.patch_size > d.image_size:
        raise ConfigError(
            f"config data.patch_size ({d.patch_size}) is larger than data.image_size "
            f"({d.image_size}); lower it or set it to null for whole images"
        )
    for i, size in enumerate(d.extra_train_sizes):
        _positive(size, f"data.extra_train_sizes[{i}]")
        if d.patch_size is None or size < d.patch_size:
            raise ConfigError(
                f"config data.extra_train_sizes[{i}] ({size}) needs data.patch_size set and at most "
                f"{size} (crops of one size from images of several); got patch_size {d.patch_size}"
            )
    levels = [
        k
        for k, v in [
            ("noise_sigma", p.noise_sigma),
            ("noise_sigma_range", p.noise_sigma_range),
            ("noise_snr_db", p.noise_snr_db),
        ]
        if v is not None
    ]
    if len(levels) > 1:
        raise ConfigError(
            f"config section 'physics': give only one of noise_sigma, noise_sigma_range "
            f"and noise_snr_db; got {', '.join(levels)}"
        )
    if p.noise_sigma_range is not None:
        lo, hi = p.noise_sigma_range
        if not 0 <= lo <= hi:
            raise ConfigError(
                f"config physics.noise_sigma_range must satisfy 0 <= low <= high; got [{lo}, {hi}]"
            )
    if cfg.is_denoising:
        if not levels:
            raise ConfigError(
                "config section 'physics': a denoising task (operator: null) needs "
                "noise_sigma (e.g. 0.1) or noise_sigma_range (e.g. [0, 0.2])"
            )
        if p.noise_snr_db is not None:
            raise ConfigError(
                "config physics.noise_snr_db applies to reconstruction only; a denoising "
                "task takes noise_sigma or noise_sigma_range"
            )
        if p.options:
            raise ConfigError(
                "config physics.options needs an operator; set physics.operator or remove the options"
            )
    else:
        if t.loss == "noise_mse":
            raise ConfigError(
                "config train.loss: noise_mse weighs each image by its denoising noise level and needs "
                "a denoising task (physics.operator: null); use mse or l1 for reconstruction"
            )
        if d.patch_size not in (None, d.image_size):
            raise ConfigError(
                f"config data.patch_size ({d.patch_size}) must be null for a reconstruction "
                f"task: the operator '{p.operator}' takes whole {d.image_size}x{d.image_size} "
                "images (set data.image_size instead)"
            )


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    return obj
