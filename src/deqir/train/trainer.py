"""One training loop for every method: simulate, predict, loss, Adam, validate, checkpoint.

Each step draws the clean crops and the measurement noise of its samples from counter-based
generators (:mod:`deqir.train.seeding`), runs the model through the task, takes an Adam step
under a schedule (``constant``, ``cosine`` or ``step``, with optional warm-up) and optional
gradient clipping. Every ``val_every`` steps it measures the validation PSNR, keeps the best
weights and stops early after ``patience`` validations without improvement. Every
``checkpoint_every`` steps it writes ``checkpoint.pt`` atomically (model, optimiser, scheduler,
step, best metric, rollback state and the random-number states of every process), so a run killed
at any moment resumes exactly where its last checkpoint stood.

A NaN or exploding loss (above ``max_loss``, or ``explode_factor`` times its running average)
or a non-finite gradient rolls the run back to the last checkpoint, multiplies the learning rate
by ``rollback_lr_factor``, logs it, and after ``max_rollbacks`` rollbacks gives up with a
:class:`~deqir.errors.ConvergenceError`.

The run folder (``experiment.output_dir/experiment.name``) holds ``config.yaml`` (resolved),
``run.json`` (seed, deqir version, git commit, torch version, device, processes, status),
``log.jsonl`` (one JSON record per logged step and event), ``checkpoint.pt``,
``weights/best.safetensors`` and ``weights/final.safetensors`` (with JSON sidecars) and
``metrics.json``.

Hooks a model may offer: ``requires_grad_in_forward = True`` (validation then runs with autograd
enabled, for models that differentiate inside their forward, e.g. ELDER's explicit regulariser).

Example:
    >>> from deqir.train import train_from_config
    >>> run = train_from_config("configs/denoiser_tiny.yaml", overrides=["train.steps=20"])  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import math
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deqir.errors import CheckpointError, ConfigError, ConvergenceError
from deqir.metrics import psnr
from deqir.train import checkpoint as ckpt
from deqir.train import distributed as D
from deqir.train import seeding
from deqir.train.config import Config, load_config, save_config
from deqir.train.sources import ImageBank
from deqir.train.tasks import Task

log = logging.getLogger("deqir.train")

#: keys that may differ between the saved and the given configuration on ``--resume``.
RESUMABLE_CHANGES = (
    "train.steps",
    "train.progress",
    "train.log_every",
    "train.val_every",
    "train.checkpoint_every",
    "train.patience",
    "train.min_delta",
    "eval.",
)


def lr_schedule(step: int, cfg: Any) -> float:
    """Learning-rate factor after ``step`` optimiser steps (``cfg`` is the ``train`` section).

    Example:
        >>> from deqir.train.config import TrainSection
        >>> cfg = TrainSection(steps=10, schedule="cosine")
        >>> lr_schedule(0, cfg), lr_schedule(10, cfg)
        (1.0, 0.01)
    """
    if step < cfg.warmup_steps:
        return (step + 1) / (cfg.warmup_steps + 1)
    t = step - cfg.warmup_steps
    if cfg.schedule == "cosine":
        frac = min(1.0, t / max(1, cfg.steps - cfg.warmup_steps))
        m = cfg.min_lr_factor
        return m + (1 - m) * 0.5 * (1 + math.cos(math.pi * frac))
    if cfg.schedule == "step":
        return cfg.gamma ** (t // cfg.step_size)
    return 1.0


#: The floor of :func:`noise_weighted_mse`'s weight: one grey level of an 8-bit image.
NOISE_MSE_FLOOR = 1.0 / 255


def noise_weighted_mse(pred: torch.Tensor, target: torch.Tensor, sigma: torch.Tensor | None) -> torch.Tensor:
    """Mean over images of ``‖pred − target‖² / (σ² + (1/255)²)`` (``sigma``: one level per image).

    Per image, about ``10^(−gain/10)`` for a denoiser that gains ``gain`` dB, at every noise level
    alike (the identity scores about 1 for ``σ ≫ 1/255``, 0.5 at ``σ = 1/255`` and 0 at ``σ = 0``;
    the floor keeps clean images from dividing by zero). Complex predictions are scored by their
    magnitude.

    Example:
        >>> import torch
        >>> clean = torch.zeros(2, 1, 4, 4); sigma = torch.tensor([0.1, 0.01])
        >>> noisy = clean + sigma.view(2, 1, 1, 1) * torch.tensor([1.0, -1.0]).repeat(8).view(1, 1, 4, 4)
        >>> round(float(noise_weighted_mse(noisy, clean, sigma)), 2)  # ≈ 1 for the identity
        0.93
    """
    if sigma is None:
        raise ConfigError(
            "train.loss: noise_mse needs the noise level of every image: a denoising task with "
            "physics.noise_sigma or noise_sigma_range"
        )
    if pred.is_complex():
        pred = pred.abs()
    per_image = (pred - target).pow(2).flatten(1).mean(1)
    level = torch.as_tensor(sigma, dtype=per_image.dtype, device=per_image.device).flatten()
    return (per_image / (level**2 + NOISE_MSE_FLOOR**2)).mean()


def _rng_state(device: torch.device) -> dict[str, Any]:
    import numpy as np

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "python": [version, list(internal), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
    }


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    import numpy as np

    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))


#: Names of the methods' learned scalars (softplus-coded steps and prior weights): RED's and ELDER's
#: ``raw_parameters``, the unrolled methods' ``raw_steps`` and the proximal-gradient DEQ's ``raw_step``.
LEARNED_SCALARS = ("raw_parameters", "raw_steps", "raw_step")


def _is_learned_scalar(name: str) -> bool:
    return name.rsplit(".", 1)[-1] in LEARNED_SCALARS


def build_model_from_config(config: Config, initial_weights: bool = True) -> nn.Module:
    """The network of ``config.model`` (with ``model.weights`` loaded) wrapped by ``config.method``.

    ``model.weights`` is a network's weights (a pretrained prior) or a trained method's (a run's
    ``weights/best.safetensors``). A file whose parameter names are the network's is loaded into
    the network before the method is built (methods that copy their network get it in every copy);
    any other file sets the whole method after it is built, its learned parameters (step, τ)
    included (unless ``model.load_scalars`` is false), so a run can be fine-tuned further with
    other settings, and a file that fits neither is refused naming the differences. Either may
    come from a spectral-normalised network while ``model.options`` turn the normalisation off
    (:func:`deqir.storage.fold_spectral_norm`).

    Example:
        >>> from deqir.train.config import config_from_dict
        >>> cfg = config_from_dict({"physics": {"noise_sigma": 0.1},
        ...                         "model": {"options": {"depth": 3, "width": 4}}})
        >>> type(build_model_from_config(cfg)).__name__
        'DnCNN'
    """
    from deqir.train.registry import build_method, build_model

    network = build_model(config.model.name, config.model.options)
    path = resolve_weights_path(config.model.weights) if initial_weights and config.model.weights else None
    if path is not None:
        _check_same_dilations(path, network)
    has_method = config.method.name not in ("none", "", None)
    whole_method = path is not None and has_method and not ckpt.fits_module(path, network)
    if path is not None and not whole_method:
        ckpt.load_weights(path, network)  # before the method is built: some copy the network
    method = build_method(config.method.name, network, config.method.options)
    if path is not None and not config.model.load_scalars and not whole_method:
        raise ConfigError(
            f"config model.load_scalars is false, but model.weights {path} holds a network's weights, "
            "not a trained method's: it has no learned scalars to leave out; remove the key"
        )
    if whole_method:
        own = {k: v.clone() for k, v in method.state_dict().items() if _is_learned_scalar(k)}
        if not own and not config.model.load_scalars:
            raise ConfigError(
                f"config model.load_scalars is false, but method '{config.method.name}' has no learned "
                f"scalars ({', '.join(LEARNED_SCALARS)}) to keep from its options; remove the key"
            )
        try:
            ckpt.load_weights(path, method)
        except CheckpointError as err:
            raise CheckpointError(
                f"model.weights {path} fits neither the network ({type(network).__name__}: other "
                f"parameter names) nor the whole method: {err}"
            ) from None
        if not config.model.load_scalars:  # the options' step and τ, not the file's
            method.load_state_dict(own, strict=False)
    return method


def _check_same_dilations(path: Path, network: nn.Module) -> None:
    """Refuse weights trained with other convolution dilations than ``network``'s: dilations leave
    no trace in the tensors, so only the file's sidecar (its training config) can tell.

    Example:
        >>> from deqir.priors.dncnn import DnCNN
        >>> from deqir.bench.common import WEIGHTS_DIR
        >>> _check_same_dilations(WEIGHTS_DIR / "oder_ct_prior.safetensors", DnCNN(depth=5, width=24))
    """
    mine = getattr(network, "dilations", None)
    config = (ckpt.read_sidecar(path) or {}).get("config")
    model = config.get("model") if isinstance(config, dict) else None
    if mine is None or not isinstance(model, dict) or model.get("name") != "dncnn":
        return  # not a DnCNN, or a file without its training config: nothing to compare
    options = model.get("options") or {}
    theirs = tuple(options.get("dilations") or [1] * int(options.get("depth", len(mine))))
    if theirs != tuple(mine):
        raise ConfigError(
            f"model.weights {path} was trained with DnCNN dilations {list(theirs)}, but model.options "
            f"build dilations {list(mine)}: the weights fit the shapes but not the network; set "
            f"model.options.dilations to {list(theirs)} or pick weights trained with {list(mine)}"
        )


def resolve_weights_path(spec: str | Path) -> Path:
    """A ``model.weights`` entry as a file: ``pretrained:NAME`` is a shipped network, else a path.

    Example:
        >>> resolve_weights_path("pretrained:natural").name
        'denoiser_natural.safetensors'
        >>> resolve_weights_path("runs/x/weights/best.safetensors").as_posix()
        'runs/x/weights/best.safetensors'
    """
    text = str(spec)
    if text.startswith("pretrained:"):
        from deqir.priors.pretrained import pretrained_path

        return pretrained_path(text.split(":", 1)[1])
    return Path(text)


class Trainer:
    """Trains the model a configuration describes; see the module docstring.

    Args:
        config: the experiment.
        run_dir: the run folder.
        dist: the process's place in a distributed run (one CPU process by default).
        model: the model to train (default: built from ``config.model`` and ``config.method``).
        task: the task (default: from ``config.physics``).
        data: ``{"train": ImageBank, "val": ImageBank, ...}`` (default: from ``config.data``).

    Example:
        >>> from deqir.train.config import config_from_dict
        >>> cfg = config_from_dict({"physics": {"noise_sigma": 0.1}, "train": {"steps": 2},
        ...                         "model": {"options": {"depth": 3, "width": 8}}})
        >>> import tempfile
        >>> Trainer(cfg, tempfile.mkdtemp()).fit()["step"]  # doctest: +SKIP
        2
    """

    def __init__(
        self,
        config: Config,
        run_dir: str | Path,
        dist: D.DistInfo | None = None,
        model: nn.Module | None = None,
        task: Task | None = None,
        data: dict[str, ImageBank] | None = None,
    ):
        from deqir.train.sources import load_source
        from deqir.train.tasks import build_task

        self.cfg, self.run_dir = config, Path(run_dir)
        self.dist = dist or D.DistInfo()
        self.device = self.dist.device
        e, d, t = config.experiment, config.data, config.train
        if t.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        torch.manual_seed(e.seed)  # identical initial weights on every process
        if model is None:
            model = build_model_from_config(config)
        self.model = model.to(self.device)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        if not self.params:
            raise ConfigError(f"model '{config.model.name}' has no trainable parameters")
        self.task = (task or build_task(config)).to(self.device)
        self.task.bind(self.model)
        self.data = data or load_source(
            d.source,
            d.image_size,
            d.num_train,
            d.num_val,
            d.num_test,
            e.seed,
            d.options,
            extra_train_sizes=d.extra_train_sizes,
        )
        self.val_images = self.data["val"].fixed_crops(d.image_size, d.num_val, seed=e.seed)
        self.shard = D.shard(d.batch_size, self.dist)
        self.net = self.model
        if self.dist.distributed:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DistributedDataParallel(self.model, device_ids=ids)
        self.optimizer = torch.optim.Adam(
            self._param_groups(t), lr=t.lr, betas=t.betas, weight_decay=t.weight_decay
        )
        self.lr_scale = 1.0
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: self.lr_scale * lr_schedule(s, self.cfg.train)
        )
        torch.manual_seed(seeding.derive_seed(e.seed, 0x7EA1, self.dist.rank))
        self.step, self.best, self.bad_validations, self.rollbacks = 0, -math.inf, 0, 0
        self.loss_avg: float | None = None
        self.last_val: float | None = None
        self.stopped_early = False
        self.ckpt_path = self.run_dir / "checkpoint.pt"

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Everything a checkpoint holds (tensors and plain types only)."""
        rng = D.all_gather_objects(_rng_state(self.device), self.dist)
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "best": self.best,
            "bad_validations": self.bad_validations,
            "rollbacks": self.rollbacks,
            "lr_scale": self.lr_scale,
            "loss_avg": self.loss_avg,
            "last_val": self.last_val,
            "stopped_early": self.stopped_early,
            "rng": rng,
            "samplers": self._sampler_states(),
            "world_size": self.dist.world_size,
            "seed": self.cfg.experiment.seed,
            "config": self.cfg.to_dict(),
            "code": dict(ckpt.code_version()),
        }

    def load_state_dict(self, state: dict[str, Any], path: Path, restore_rng: bool = True) -> None:
        """Restore a checkpoint's state (model, optimiser, scheduler, counters, RNG)."""
        try:
            ckpt.load_state_checked(self.model, state["model"], path)
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            for key in ("step", "best", "bad_validations", "rollbacks", "lr_scale", "loss_avg", "last_val"):
                setattr(self, key, state[key])
            self.stopped_early = bool(state.get("stopped_early", False))
        except (KeyError, ValueError, RuntimeError) as err:
            raise CheckpointError(
                f"checkpoint {path} does not fit this run ({type(err).__name__}: {err}); "
                "resume with the configuration that wrote it (RUN/config.yaml)"
            ) from None
        self._apply_lr()
        if restore_rng:
            self._load_sampler_states(state.get("samplers") or {}, path)
            if state["world_size"] == self.dist.world_size:
                _set_rng_state(state["rng"][self.dist.rank], self.device)
            else:
                log.warning(
                    "checkpoint %s was written by %d processes, this run has %d: the global "
                    "random state is reseeded (data and noise still continue exactly)",
                    path,
                    state["world_size"],
                    self.dist.world_size,
                )

    def _sampler_states(self) -> dict[str, Any]:
        """Each minibatch stream of the model (ODER's), by module name: where its draws stand."""
        states = {
            name: module.sampler_state()
            for name, module in self.model.named_modules()
            if hasattr(module, "sampler_state")
        }
        return {name: state for name, state in states.items() if state is not None}

    def _load_sampler_states(self, states: dict[str, Any], path: Path) -> None:
        modules = dict(self.model.named_modules())
        for name, sampler in states.items():
            if not hasattr(modules.get(name), "load_sampler_state"):
                raise CheckpointError(
                    f"checkpoint {path} holds a minibatch stream for module '{name}', which this "
                    "model does not have: resume with the configuration that wrote it (RUN/config.yaml)"
                )
            modules[name].load_sampler_state(sampler)

    def _param_groups(self, t: Any) -> list[dict[str, Any]]:
        """Adam's parameter groups: one, or with ``train.scalar_lr_factor`` the method's learned
        scalars (:data:`LEARNED_SCALARS`) in a second group at ``lr`` times that factor, without
        weight decay (it would pull a softplus-coded step or τ towards log 2)."""
        if t.scalar_lr_factor == 1.0:
            return [{"params": self.params}]
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        scalars = [p for n, p in named if _is_learned_scalar(n)]
        if not scalars:
            raise ConfigError(
                f"config train.scalar_lr_factor is {t.scalar_lr_factor}, but method "
                f"'{self.cfg.method.name}' has no trainable step or prior weight "
                f"({', '.join(LEARNED_SCALARS)}): remove train.scalar_lr_factor or set it to 1, or "
                "let the method learn them (method.options.learn_parameters or learn_step true)"
            )
        ids = {id(p) for p in scalars}
        rest = [p for _, p in named if id(p) not in ids]
        scalar_group = {"params": scalars, "lr": t.lr * t.scalar_lr_factor, "weight_decay": 0.0}
        return [{"params": rest}] * bool(rest) + [scalar_group]

    def _apply_lr(self) -> None:
        factor = self.lr_scale * lr_schedule(self.scheduler.last_epoch, self.cfg.train)
        for group, base in zip(self.optimizer.param_groups, self.scheduler.base_lrs, strict=True):
            group["lr"] = base * factor

    def save_checkpoint(self) -> None:
        """Write ``checkpoint.pt`` (rank 0) and wait for every process."""
        state = self.state_dict()
        if self.dist.is_main:
            ckpt.save_checkpoint(state, self.ckpt_path)
        D.barrier(self.dist)

    # ------------------------------------------------------------------ run folder
    def _log(self, record: dict[str, Any]) -> None:
        if self.dist.is_main:
            with open(self.run_dir / "log.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    def _write_run_info(self, status: str, **extra: Any) -> None:
        if not self.dist.is_main:
            return
        path = self.run_dir / "run.json"
        info = json.loads(path.read_text()) if path.is_file() else {}
        info.update(
            {
                "seed": self.cfg.experiment.seed,
                **ckpt.code_version(),
                "device": str(self.device),
                "world_size": self.dist.world_size,
                "status": status,
                "step": self.step,
                **extra,
            }
        )
        info.setdefault("started", time.strftime("%Y-%m-%dT%H:%M:%S"))
        info["argv"] = sys.argv
        path.write_text(json.dumps(info, indent=2) + "\n")

    def _prepare_run_dir(self, resume: bool) -> dict[str, Any] | None:
        """Create the folder; on resume, check the configuration and return the checkpoint."""
        if not resume:
            if self.ckpt_path.exists():
                raise ConfigError(
                    f"run folder {self.run_dir} already holds a run: pass --resume to continue it, "
                    "choose another experiment.name (e.g. --override experiment.name=NEW), or delete it"
                )
            if self.dist.is_main:
                self.run_dir.mkdir(parents=True, exist_ok=True)
                (self.run_dir / "log.jsonl").write_text("")
                save_config(self.cfg, self.run_dir / "config.yaml")
            D.barrier(self.dist)
            return None
        if not self.ckpt_path.exists():
            raise CheckpointError(
                f"nothing to resume: {self.ckpt_path} does not exist; run without --resume to start the run"
            )
        saved = load_config(self.run_dir / "config.yaml") if (self.run_dir / "config.yaml").exists() else None
        if saved is not None:
            changed = _diff(saved.to_dict(), self.cfg.to_dict())
            bad = [k for k in changed if not k.startswith(RESUMABLE_CHANGES)]
            if bad:
                raise ConfigError(
                    f"cannot resume {self.run_dir} with a different configuration: "
                    f"{', '.join(bad)} changed. Use the run's own config.yaml, or start a "
                    "new run under another experiment.name"
                )
        state = ckpt.load_checkpoint(self.ckpt_path)
        if self.dist.is_main:
            save_config(self.cfg, self.run_dir / "config.yaml")
            self._truncate_log(int(state.get("step", 0)))
        return state

    def _truncate_log(self, step: int) -> None:
        """Drop log records written after the checkpoint being resumed (they will be redone)."""
        path = self.run_dir / "log.jsonl"
        if path.is_file():
            keep = [
                line
                for line in path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step
            ]
            path.write_text("".join(line + "\n" for line in keep))

    # ------------------------------------------------------------------ steps
    def _loss(
        self, pred: torch.Tensor, target: torch.Tensor, sigma: torch.Tensor | None = None
    ) -> torch.Tensor:
        if pred.is_complex():
            pred = pred.abs()
        if self.cfg.train.loss == "l1":
            return (pred - target).abs().mean()
        if self.cfg.train.loss == "noise_mse":
            return noise_weighted_mse(pred, target, sigma)
        return (pred - target).pow(2).mean()

    def _bad_loss(self, value: float) -> str | None:
        t = self.cfg.train
        if not math.isfinite(value):
            return f"loss is {value}"
        if t.max_loss is not None and value > t.max_loss:
            return f"loss {value:.4g} exceeds train.max_loss {t.max_loss:.4g}"
        if self.loss_avg is not None and value > t.explode_factor * self.loss_avg:
            return (
                f"loss {value:.4g} exceeds train.explode_factor {t.explode_factor:.4g} times its "
                f"running average {self.loss_avg:.4g}"
            )
        return None

    def _rollback(self, reason: str, pbar: Any) -> None:
        t = self.cfg.train
        self.rollbacks += 1
        if self.rollbacks > t.max_rollbacks:
            self._write_run_info("failed", error=reason)
            raise ConvergenceError(
                f"training diverged at step {self.step} ({reason}) after {t.max_rollbacks} rollbacks "
                f"with learning rate lowered to {t.lr * self.lr_scale:.3g}: lower train.lr, set "
                "train.grad_clip, or check the data and model"
            )
        rollbacks, scale = self.rollbacks, self.lr_scale * t.rollback_lr_factor
        state = ckpt.load_checkpoint(self.ckpt_path)
        self.load_state_dict(state, self.ckpt_path, restore_rng=True)
        self.rollbacks, self.lr_scale = rollbacks, scale
        self._apply_lr()
        msg = (
            f"rollback {rollbacks}/{t.max_rollbacks}: {reason}; back to step {self.step}, "
            f"learning rate x{t.rollback_lr_factor} (now {self.optimizer.param_groups[0]['lr']:.3g})"
        )
        log.warning(msg)
        self._log({"step": self.step, "event": "rollback", "reason": reason, "lr_scale": scale})
        if pbar is not None:
            pbar.write(msg)
            pbar.n = self.step
            pbar.refresh()

    def validate(self) -> float:
        """Mean validation PSNR (dB) over all processes; each process takes every n-th image."""
        model = self.model
        was_training = model.training
        model.eval()
        total = torch.zeros(2, dtype=torch.float64, device=self.device)
        mine = list(range(self.dist.rank, len(self.val_images), self.dist.world_size))
        bs = self.cfg.eval.batch_size
        grad = bool(getattr(model, "requires_grad_in_forward", False))
        with torch.set_grad_enabled(grad):
            for i in range(0, len(mine), bs):
                idx = mine[i : i + bs]
                clean = self.val_images[idx].to(self.device)
                sample = self.task.simulate(clean, self.cfg.experiment.seed, 0, idx, stream=seeding.VAL)
                pred = self.task.predict(model, sample).detach()
                pred = pred.abs() if pred.is_complex() else pred
                total[0] += psnr(pred, clean).double().sum()
                total[1] += len(idx)
        total = D.all_reduce_sum(total, self.dist)
        model.train(was_training)
        return float(total[0] / total[1].clamp_min(1))

    def _save_weights(self, name: str, metrics: dict[str, Any]) -> None:
        if self.dist.is_main:
            ckpt.save_weights(
                self.model,
                self.run_dir / "weights" / f"{name}.safetensors",
                config=self.cfg.to_dict(),
                metrics=metrics,
                extra={"step": self.step},
            )

    def fit(self, resume: bool = False, progress: bool | None = None) -> dict[str, Any]:
        """Train to ``train.steps`` (or early stop); returns the final metrics.

        Args:
            resume: continue from ``checkpoint.pt`` in the run folder.
            progress: show the progress bar (default: ``train.progress``, main process only).
        """
        from tqdm.auto import tqdm

        t, e, d = self.cfg.train, self.cfg.experiment, self.cfg.data
        state = self._prepare_run_dir(resume)
        if state is not None:
            self.load_state_dict(state, self.ckpt_path)
            log.info("resumed %s at step %d", self.run_dir, self.step)
        else:
            self.save_checkpoint()  # step 0: the first rollback target
        self._write_run_info("running", **({"resumed_at_step": self.step} if resume else {}))
        self._log({"step": self.step, "event": "resume" if resume else "start"})
        show = (t.progress if progress is None else progress) and self.dist.is_main
        pbar = tqdm(
            total=t.steps,
            initial=self.step,
            desc=e.name,
            unit="step",
            disable=not show,
            dynamic_ncols=True,
            mininterval=0.25,
        )
        size = d.patch_size or d.image_size
        bank = self.data["train"]
        start_time, start_step = time.perf_counter(), self.step
        train_psnr = None
        self.model.train()
        while self.step < t.steps and not self.stopped_early:
            s = self.step
            clean = bank.training_batch(e.seed, s, self.shard, size, d.augment).to(self.device)
            sample = self.task.simulate(clean, e.seed, s, self.shard)
            pred = self.task.predict(self.net, sample)
            loss = self._loss(pred, sample.target, sample.sigma)
            stats = (
                D.all_reduce_sum(
                    torch.stack(
                        [
                            loss.detach().double(),
                            psnr(pred.detach().abs() if pred.is_complex() else pred.detach(), clean)
                            .double()
                            .mean(),
                        ]
                    ),
                    self.dist,
                )
                / self.dist.world_size
            )
            loss_value, train_psnr = float(stats[0]), float(stats[1])
            reason = self._bad_loss(loss_value)
            if reason is None:
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if t.grad_clip is not None:
                    gnorm = float(torch.nn.utils.clip_grad_norm_(self.params, t.grad_clip))
                else:
                    gnorm = _grad_norm(self.params)
                if not math.isfinite(gnorm):
                    reason = f"gradient norm is {gnorm}"
            if reason is not None:
                self._rollback(reason, pbar)
                continue
            self.optimizer.step()
            self.scheduler.step()
            self.step += 1
            self.loss_avg = loss_value if self.loss_avg is None else 0.9 * self.loss_avg + 0.1 * loss_value
            if self.step % t.log_every == 0 or self.step == t.steps:
                self._log(
                    {
                        "step": self.step,
                        "loss": loss_value,
                        "psnr": train_psnr,
                        "grad_norm": gnorm,
                        "lr": self.optimizer.param_groups[0]["lr"],
                    }
                )
            if self.step % t.val_every == 0 or self.step == t.steps:
                self._validation_step()
            if self.step % t.checkpoint_every == 0 or self.step == t.steps or self.stopped_early:
                self.save_checkpoint()
            pbar.update(1)
            pbar.set_postfix(
                loss=f"{loss_value:.3g}",
                psnr=f"{train_psnr:.2f}",
                val=f"{self.last_val:.2f}" if self.last_val is not None else "-",
                refresh=False,
            )
        pbar.close()
        seconds = time.perf_counter() - start_time
        if self.last_val is None:  # resumed a finished run, or zero steps
            self.last_val = self.validate()
        metrics = {
            "step": self.step,
            "final_val_psnr": self.last_val,
            "best_val_psnr": self.best if math.isfinite(self.best) else self.last_val,
            "train_loss": self.loss_avg,
            "stopped_early": self.stopped_early,
            "rollbacks": self.rollbacks,
            "seconds": seconds,
            "steps_per_second": (self.step - start_step) / seconds if seconds > 0 else None,
        }
        self._save_weights("final", metrics)
        if self.dist.is_main and not (self.run_dir / "weights" / "best.safetensors").exists():
            self._save_weights("best", metrics)
        if self.dist.is_main:
            (self.run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        self._write_run_info("stopped early" if self.stopped_early else "finished")
        D.barrier(self.dist)
        return metrics

    def _validation_step(self) -> None:
        t = self.cfg.train
        val = self.validate()
        self.last_val = val
        improved = val > self.best + t.min_delta
        if improved:
            self.best, self.bad_validations = val, 0
            self._save_weights("best", {"val_psnr": val})
        else:
            self.bad_validations += 1
            if t.patience is not None and self.bad_validations >= t.patience:
                self.stopped_early = True
        self._log(
            {
                "step": self.step,
                "val_psnr": val,
                "best_val_psnr": self.best,
                **({"event": "early_stop"} if self.stopped_early else {}),
            }
        )


def _grad_norm(params: list[torch.Tensor]) -> float:
    norms = [p.grad.detach().norm() for p in params if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def train_from_config(
    path: str | Path | dict[str, Any] | Config,
    resume: bool = False,
    device: str = "auto",
    overrides: list[str] | dict[str, Any] | None = None,
    run_dir: str | Path | None = None,
    progress: bool | None = None,
) -> Path:
    """Train the experiment a YAML file (or dictionary) describes; returns the run folder.

    Runs data-parallel when launched by ``torchrun`` (or :func:`deqir.train.distributed.spawn`).

    Args:
        path: the YAML configuration (or a dictionary / :class:`Config`).
        resume: continue the run in the run folder from its last checkpoint.
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``.
        overrides: ``["train.steps=100", ...]`` applied on top of the file.
        run_dir: the run folder (default ``experiment.output_dir/experiment.name``).
        progress: show the progress bar (default: ``train.progress``).

    Example:
        >>> run = train_from_config("configs/denoiser_tiny.yaml", device="cpu")  # doctest: +SKIP
        >>> sorted(p.name for p in run.iterdir())  # doctest: +SKIP
        ['checkpoint.pt', 'config.yaml', 'log.jsonl', 'metrics.json', 'run.json', 'weights']
    """
    cfg = load_config(path, overrides)
    info = D.setup(device)
    try:
        folder = Path(run_dir or Path(cfg.experiment.output_dir) / cfg.experiment.name)
        Trainer(cfg, folder, dist=info).fit(resume=resume, progress=progress)
    finally:
        D.teardown(info)
    return folder
