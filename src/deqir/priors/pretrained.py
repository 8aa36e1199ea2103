"""Pretrained blind Gaussian denoisers shipped with deqir: ``natural``, ``ct`` and ``mri``.

Each one is a pair of files in ``deqir/weights/``: ``denoiser_<name>.safetensors`` (the
weights; stored in float16 when the architecture would not fit in 1 MB as float32, and read
back as float32) and ``denoiser_<name>.json`` (the sidecar: architecture, training data, noise
range, validation and test PSNR, code version and the SHA-256 of the weights). Loading never
unpickles anything: the sidecar is JSON and the weights are safetensors.

Every network takes the noise level: ``net(noisy, sigma)`` with ``sigma`` the standard deviation
of the Gaussian noise on the ``[0, 1]`` scale (a number or one value per image), anywhere in
the training range (``[0, 60/255]``).

The files are made by ``make weights``: ``deqir train configs/denoiser_<name>.yaml`` and then
``deqir weights export runs/denoiser_<name> --name <name>``, which calls :func:`export_weights`.

Example:
    >>> import torch
    >>> from deqir.priors import load_pretrained
    >>> net = load_pretrained("natural")  # doctest: +SKIP
    >>> clean = torch.rand(1, 1, 64, 64)
    >>> noisy = clean + 0.1 * torch.randn_like(clean)
    >>> with torch.no_grad():  # doctest: +SKIP
    ...     denoised = net(noisy, sigma=0.1)
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deqir.errors import CheckpointError, ConfigError, DataError, InvalidValueError, unknown_name_message

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "PRETRAINED",
    "TEST_SIGMAS",
    "add_test_noise",
    "export_weights",
    "list_pretrained",
    "load_pretrained",
    "pretrained_info",
    "pretrained_path",
    "pretrained_table",
    "training_images",
    "weights_dir",
]

#: name -> what the denoiser is for (the files are ``weights/denoiser_<name>.*``).
PRETRAINED: dict[str, str] = {
    "natural": "grey natural photographs",
    "ct": "CT-like images (trained on synthetic phantoms and brain slices)",
    "mri": "MRI magnitude images (trained on T1 brain slices)",
}

#: noise levels (on the 0..255 scale) at which exported weights are tested.
TEST_SIGMAS: tuple[int, ...] = (15, 25, 50)

#: the most bytes a shipped weights file may take.
MAX_BYTES = 1_000_000

_REMAKE = "rebuild the shipped weights with `make weights` (or reinstall deqir)"


def weights_dir() -> Path:
    """The folder of the shipped weights (``deqir/weights`` inside the installed package).

    Example:
        >>> weights_dir().name
        'weights'
    """
    return Path(__file__).resolve().parent.parent / "weights"


def _check_name(name: str) -> str:
    if name not in PRETRAINED:
        raise InvalidValueError(unknown_name_message("pretrained denoiser", name, list(PRETRAINED)))
    return name


def pretrained_path(name: str, folder: str | Path | None = None) -> Path:
    """The weights file of pretrained denoiser ``name`` (it may not exist).

    Example:
        >>> pretrained_path("ct").name
        'denoiser_ct.safetensors'
    """
    _check_name(name)
    return Path(folder or weights_dir()) / f"denoiser_{name}.safetensors"


def pretrained_info(name: str, folder: str | Path | None = None) -> dict[str, Any]:
    """The JSON sidecar of pretrained denoiser ``name`` (architecture, data, metrics, code).

    Raises:
        CheckpointError: the weights or the sidecar are missing, or the sidecar is unreadable or
            does not describe a deqir pretrained denoiser named ``name``.

    Example:
        >>> pretrained_info("natural")["architecture"]["model"]  # doctest: +SKIP
        'drunet'
    """
    from deqir.train.checkpoint import read_sidecar, sidecar_path

    path = pretrained_path(name, folder)
    side_file = sidecar_path(path)
    if not path.is_file():
        raise CheckpointError(f"pretrained denoiser '{name}': weights file {path} not found; {_REMAKE}")
    if not side_file.is_file():
        raise CheckpointError(
            f"pretrained denoiser '{name}': sidecar {side_file} of {path.name} not found (it holds the "
            f"architecture); {_REMAKE}"
        )
    try:
        side = read_sidecar(path)
    except CheckpointError as err:
        raise CheckpointError(f"pretrained denoiser '{name}': {err}; or {_REMAKE}") from None
    arch = side.get("architecture") if isinstance(side, dict) else None
    if side.get("pretrained") != name or not isinstance(arch, dict) or "model" not in arch:
        raise CheckpointError(
            f"sidecar {side_file} does not describe the pretrained denoiser '{name}' "
            f"(found pretrained={side.get('pretrained')!r}); it belongs to another file: {_REMAKE}"
        )
    return side


def list_pretrained(folder: str | Path | None = None) -> list[dict[str, Any]]:
    """The pretrained denoisers, whether their files are here, and their headline numbers.

    Returns:
        One dictionary per name: ``name``, ``description``, ``path``, ``available``, and when
        available ``bytes``, ``parameters``, ``dtype``, ``sigma_range``, ``test_psnr``
        (``{"15": dB, "25": dB, "50": dB}`` on the held-out test split) and ``error`` for a
        file that cannot be read.

    Example:
        >>> [d["name"] for d in list_pretrained()]
        ['natural', 'ct', 'mri']
    """
    out = []
    for name, description in PRETRAINED.items():
        path = pretrained_path(name, folder)
        row: dict[str, Any] = {"name": name, "description": description, "path": str(path)}
        row["available"] = path.is_file()
        if row["available"]:
            try:
                side = pretrained_info(name, folder)
            except CheckpointError as err:
                row["error"] = str(err)
            else:
                row.update(
                    bytes=path.stat().st_size,
                    parameters=side.get("parameters"),
                    dtype=side.get("dtype"),
                    sigma_range=side.get("sigma_range"),
                    test_psnr=side.get("metrics", {}).get("test_psnr"),
                )
        out.append(row)
    return out


def _build_network(arch: dict[str, Any], where: Path) -> nn.Module:
    from deqir.train.registry import build_model

    try:
        return build_model(arch["model"], dict(arch.get("options") or {}))
    except (ConfigError, InvalidValueError, TypeError) as err:
        raise CheckpointError(
            f"sidecar {where} names an architecture this deqir cannot build ({err}); {_REMAKE}"
        ) from None


def load_pretrained(
    name: str, device: str | torch.device | None = None, folder: str | Path | None = None
) -> nn.Module:
    """Load a shipped pretrained denoiser, in evaluation mode, as float32.

    Args:
        name: ``natural``, ``ct`` or ``mri`` (see :data:`PRETRAINED`).
        device: where to put the network (default: the CPU).
        folder: read the pair of files from this folder instead of ``deqir/weights``.

    Returns:
        The network; call it as ``net(noisy, sigma)`` with ``noisy`` of shape
        ``(batch, 1, H, W)`` in ``[0, 1]`` and ``sigma`` the noise standard deviation.

    Raises:
        InvalidValueError: unknown name.
        CheckpointError: a file is missing, truncated, corrupt (SHA-256 mismatch) or does not fit
            the architecture its sidecar names; the message names the file and says what to do.

    Example:
        >>> import torch
        >>> net = load_pretrained("mri")  # doctest: +SKIP
        >>> x = torch.rand(1, 1, 32, 32)
        >>> tuple(net(x, sigma=0.05).shape)  # doctest: +SKIP
        (1, 1, 32, 32)
    """
    import torch

    from deqir.train.checkpoint import load_state_checked, load_weights, sidecar_path

    side = pretrained_info(name, folder)
    path = pretrained_path(name, folder)
    net = _build_network(side["architecture"], sidecar_path(path))
    try:
        state = load_weights(path)
    except CheckpointError as err:
        raise CheckpointError(f"pretrained denoiser '{name}': {err}. Or {_REMAKE}") from None
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    try:
        load_state_checked(net, state, path, what="pretrained architecture named in its sidecar")
    except CheckpointError as err:
        raise CheckpointError(f"{err}; or {_REMAKE}") from None
    net.eval()
    return net.to(torch.device(device) if device is not None else torch.device("cpu"))


# --------------------------------------------------------------------- evaluation helpers
def add_test_noise(clean: torch.Tensor, sigma: float, seed: int = 0) -> torch.Tensor:
    """Reproducible Gaussian noise for test images: image ``k`` uses seed ``(seed, sigma, k)``.

    The same noise for a given image index, level and seed whatever the batch, so that
    :func:`export_weights` and ``deqir bench denoisers`` measure on identical noisy images.

    Example:
        >>> import torch
        >>> a = add_test_noise(torch.zeros(2, 1, 8, 8), 0.1)
        >>> bool(torch.equal(a[1:], add_test_noise(torch.zeros(2, 1, 8, 8), 0.1)[1:]))
        True
    """
    import torch

    out = []
    level = int(round(float(sigma) * 255 * 1000))
    for k in range(clean.shape[0]):
        g = torch.Generator().manual_seed(1_000_003 * int(seed) + 7919 * level + k)
        noise = torch.randn(clean.shape[1:], generator=g, dtype=torch.float32)
        out.append(clean[k] + float(sigma) * noise.to(clean.dtype))
    return torch.stack(out)


def _denoise(net: nn.Module, noisy: torch.Tensor, sigma: float, batch: int = 4) -> torch.Tensor:
    import torch

    with torch.no_grad():
        parts = [net(noisy[i : i + batch], sigma) for i in range(0, noisy.shape[0], batch)]
    return torch.cat(parts).clamp(0, 1)


def _test_psnr(net: nn.Module, clean: torch.Tensor, sigmas: Sequence[int], seed: int) -> dict[str, float]:
    from deqir.metrics import psnr

    out = {}
    for s in sigmas:
        noisy = add_test_noise(clean, s / 255, seed)
        out[str(s)] = round(float(psnr(_denoise(net, noisy, s / 255), clean).mean()), 3)
    return out


# --------------------------------------------------------------------- export
def export_weights(
    run_dir: str | Path,
    name: str,
    out_dir: str | Path | None = None,
    weights: str = "best",
    dtype: str = "auto",
    sigmas: Sequence[int] = TEST_SIGMAS,
    num_test: int | None = None,
    max_bytes: int = MAX_BYTES,
) -> Path:
    """Turn a finished ``deqir train`` run of a blind denoiser into a shipped weights pair.

    Reads the run's ``config.yaml`` and ``weights/<weights>.safetensors``, stores the weights
    (as float16 when ``dtype="auto"`` and float32 would exceed ``max_bytes``) and writes a
    sidecar with the architecture, the training data and schedule, the noise range, the run's
    best validation PSNR, and the test PSNR measured here: on the held-out test split of the
    run's own data source, noise from :func:`add_test_noise` (seed 0), output clipped to
    ``[0, 1]``, for the stored weights and for the float32 weights (so the cost of float16 is on
    record).

    Args:
        run_dir: the run folder.
        name: ``natural``, ``ct`` or ``mri``: the files are ``denoiser_<name>.*``.
        out_dir: where to write (default: :func:`weights_dir`).
        weights: ``best`` or ``final`` weights of the run.
        dtype: ``auto``, ``float32`` or ``float16``.
        sigmas: test noise levels on the 0..255 scale.
        num_test: test images to use (default: the whole test split).
        max_bytes: refuse to write a weights file larger than this.

    Returns:
        The path of the written ``.safetensors`` file.

    Raises:
        DataError: the run folder, its configuration or its weights are missing.
        ConfigError: the run is not a blind denoiser with a noise-level input.
        InvalidValueError: bad ``dtype`` or ``weights``, or the file would exceed ``max_bytes``.

    Example:
        >>> path = export_weights("runs/denoiser_natural", "natural")  # doctest: +SKIP
        >>> path.name  # doctest: +SKIP
        'denoiser_natural.safetensors'
    """
    import json

    import torch

    from deqir.train.checkpoint import load_weights, save_weights
    from deqir.train.config import load_config
    from deqir.train.registry import build_model
    from deqir.train.sources import load_source

    _check_name(name)
    run = Path(run_dir)
    if weights not in ("best", "final"):
        raise InvalidValueError(f"weights must be 'best' or 'final'; got {weights!r}")
    if dtype not in ("auto", "float32", "float16"):
        raise InvalidValueError(f"dtype must be auto, float32 or float16; got {dtype!r}")
    cfg_path, w_path = run / "config.yaml", run / "weights" / f"{weights}.safetensors"
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise DataError(
                f"{p} not found: {run} is not a finished deqir training run (train one with "
                "`deqir train configs/denoiser_<name>.yaml`)"
            )
    cfg = load_config(cfg_path)
    if not cfg.is_denoising or cfg.physics.noise_sigma_range is None or cfg.method.name not in ("none", ""):
        raise ConfigError(
            f"{cfg_path}: a pretrained denoiser must be a blind denoising run (physics.operator: null, "
            "physics.noise_sigma_range set, no method)"
        )
    options = dict(cfg.model.options)
    if not options.get("noise_level_input"):
        raise ConfigError(f"{cfg_path}: set model.options.noise_level_input: true for a pretrained denoiser")
    net = load_weights(w_path, build_model(cfg.model.name, options)).eval()
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    n_params = sum(v.numel() for v in state.values() if v.is_floating_point())
    if dtype == "auto":
        dtype = "float32" if 4 * n_params + 4096 <= max_bytes else "float16"
    store = torch.float16 if dtype == "float16" else torch.float32
    if n_params * (2 if dtype == "float16" else 4) + 4096 > max_bytes:
        raise InvalidValueError(
            f"{n_params} parameters in {dtype} exceed {max_bytes} bytes: train a smaller model"
        )
    shipped = {k: v.to(store) if v.is_floating_point() else v for k, v in state.items()}
    rounded = copy.deepcopy(net)
    rounded.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in shipped.items()})

    d = cfg.data
    splits = load_source(
        d.source, d.image_size, d.num_train, d.num_val, d.num_test, cfg.experiment.seed, d.options
    )
    clean = torch.stack(splits["test"].images[: num_test or len(splits["test"])])
    test = _test_psnr(rounded, clean, sigmas, seed=0)
    test32 = _test_psnr(net, clean, sigmas, seed=0) if dtype != "float32" else dict(test)
    metrics_file, info_file = run / "metrics.json", run / "run.json"
    run_metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    run_info = json.loads(info_file.read_text()) if info_file.is_file() else {}
    lo, hi = cfg.physics.noise_sigma_range
    metrics = {
        "test_psnr": test,
        "test_psnr_float32": test32,
        "best_val_psnr": run_metrics.get("best_val_psnr"),
        "test_protocol": (
            f"{clean.shape[0]} test images of data source {d.source!r} {d.options or ''} at "
            f"{d.image_size}x{d.image_size}, Gaussian noise sigma/255 from add_test_noise(seed=0), "
            "output clipped to [0, 1], PSNR with peak 1, mean over images"
        ),
    }
    out = Path(out_dir) if out_dir is not None else weights_dir()
    path = out / f"denoiser_{name}.safetensors"
    extra = {
        "pretrained": name,
        "description": PRETRAINED[name],
        "architecture": {"model": cfg.model.name, "options": options},
        "parameters": int(n_params),
        "dtype": dtype,
        "sigma_range": [float(lo), float(hi)],
        "sigma_scale": "standard deviation on the [0, 1] image scale; call net(noisy, sigma)",
        "training": {
            "data": {
                "source": d.source,
                "options": d.options,
                "image_size": d.image_size,
                "patch_size": d.patch_size,
                "batch_size": d.batch_size,
                "augment": d.augment,
                "seed": cfg.experiment.seed,
            },
            "steps": run_metrics.get("step"),
            "seconds_of_last_session": run_metrics.get("seconds"),
            "resumed_at_step": run_info.get("resumed_at_step"),
            "status": run_info.get("status"),
            "lr": cfg.train.lr,
            "schedule": cfg.train.schedule,
            "loss": cfg.train.loss,
            "run": str(run),
            "weights": weights,
        },
    }
    save_weights(shipped, path, config=cfg.to_dict(), metrics=metrics, extra=extra)
    size = path.stat().st_size
    if size > max_bytes:  # cannot happen with the estimate above, but never ship an oversize file
        path.unlink()
        raise InvalidValueError(f"{path} would take {size} bytes > {max_bytes}: train a smaller model")
    if not all(math.isfinite(v) for v in test.values()):
        raise CheckpointError(f"{path}: the exported denoiser gives non-finite test PSNR {test}")
    return path


# --------------------------------------------------------------------- training data
def training_images(
    image_size: int = 256,
    seed: int = 0,
    source: str = "natural",
    native: bool = True,
    min_native: int = 256,
) -> dict[str, list[Any]]:
    """Train/val/test images of a :func:`deqir.data.build_dataset` source, with a native-size copy.

    A data source for the trainer (``data.source: "deqir.priors.pretrained:training_images"``).
    The validation and test images are the source's fixed ``image_size`` splits. The training
    split holds those ``image_size`` images and, with ``native=True``, the same training images
    at their native resolution (those at least ``min_native`` pixels on each side): twice the
    pixels to draw patches from, at two scales, without touching the held-out images (the split
    assignment depends only on the image keys and the seed).

    Args:
        image_size: side of the validation and test images (and of the resized training copies).
        seed: seed of the split assignment.
        source: a source name of :func:`deqir.data.build_dataset` (``natural``, ``brain``,
            ``ct_phantoms+brain`` ...).
        native: add the native-size training images.
        min_native: smallest side of a native-size image that is kept.

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}`` lists of ``(1, H, W)`` tensors.

    Example:
        >>> splits = training_images(64, source="ct_phantoms", native=False)  # doctest: +SKIP
        >>> sorted(splits)  # doctest: +SKIP
        ['test', 'train', 'val']
    """
    from deqir.data import build_dataset

    fixed = build_dataset(source, image_size, seed=seed)
    train = list(fixed.train)
    if native:
        full = build_dataset(source, None, seed=seed)
        keys = set(fixed.train.keys)
        train += [
            img
            for key, img in zip(full.train.keys, full.train, strict=True)
            if key in keys and min(img.shape[-2:]) >= min_native
        ]
    return {"train": train, "val": list(fixed.val), "test": list(fixed.test)}


def pretrained_table(folder: str | Path | None = None, names: Sequence[str] | None = None) -> str:
    """:func:`list_pretrained` as a Markdown table (what ``deqir weights list`` prints).

    Example:
        >>> print(pretrained_table().splitlines()[0])
        | name | available | parameters | dtype | KB | test PSNR 15/25/50 | description |
    """
    lines = [
        "| name | available | parameters | dtype | KB | test PSNR 15/25/50 | description |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in list_pretrained(folder):
        if names is not None and row["name"] not in names:
            continue
        test = row.get("test_psnr") or {}
        psnrs = "/".join(f"{test[k]:.2f}" for k in sorted(test, key=int)) if test else ""
        size = f"{row['bytes'] / 1000:.0f}" if row.get("bytes") else ""
        status = "error" if "error" in row else ("yes" if row["available"] else "no (make weights)")
        lines.append(
            f"| {row['name']} | {status} | {row.get('parameters') or ''} | {row.get('dtype') or ''} | "
            f"{size} | {psnrs} | {row['description']} |"
        )
    return "\n".join(lines)
