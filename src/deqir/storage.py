"""Weights files: safetensors plus a JSON sidecar, written atomically, read without unpickling.

The sidecar ``<name>.json`` holds the configuration, the metrics, the code version and the
SHA-256 of the weights file. :func:`load_weights` checks the digest (a tampered or truncated file
is refused) and the parameter names and shapes against the model (a wrong architecture is
refused, naming the first differences). Weights of a spectral-normalised network load into the
same network without spectral normalisation (:func:`fold_spectral_norm`).

A base module like :mod:`deqir.errors`: the priors read their shipped files with it, the trainer
writes and reads run weights with it (:mod:`deqir.train.checkpoint` adds training checkpoints).
Every problem raises :class:`~deqir.errors.CheckpointError` naming the file and what to do.

Example:
    >>> import tempfile, pathlib, torch
    >>> from deqir.storage import save_weights, load_weights
    >>> net = torch.nn.Linear(3, 2)
    >>> path = save_weights(net, pathlib.Path(tempfile.mkdtemp()) / "net.safetensors",
    ...                     metrics={"psnr": 30.0})
    >>> sorted(load_weights(path))
    ['bias', 'weight']
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deqir.errors import CheckpointError

WEIGHTS_FORMAT = "deqir-weights"
FORMAT_VERSION = 1


def git_commit() -> str | None:
    """The current git commit of the source tree, or ``None`` outside a checkout."""
    import subprocess

    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parent,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


@functools.lru_cache(maxsize=1)
def code_version() -> dict[str, Any]:
    """The deqir version, git commit and torch version (cached for the process).

    Example:
        >>> sorted(code_version())
        ['deqir', 'git_commit', 'python', 'torch']
    """
    import platform

    import deqir

    return {
        "deqir": deqir.__version__,
        "git_commit": git_commit(),
        "torch": str(torch.__version__),
        "python": platform.python_version(),
    }


def sidecar_path(path: str | Path) -> Path:
    """The JSON sidecar of a weights file: ``net.safetensors`` -> ``net.json``."""
    return Path(path).with_suffix(".json")


def _atomic_write_bytes(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _state_of(obj: nn.Module | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    state = obj.state_dict() if isinstance(obj, nn.Module) else obj
    return {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}


# --------------------------------------------------------------------- weights
def save_weights(
    model: nn.Module | dict[str, torch.Tensor],
    path: str | Path,
    config: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Save a model's ``state_dict`` as safetensors plus a JSON sidecar (both atomically).

    Args:
        model: a module or a ``state_dict``.
        path: the ``.safetensors`` file to write.
        config: the configuration (plain dictionary) the model was trained with.
        metrics: numbers to keep with the weights (e.g. validation PSNR).
        extra: any other JSON-serialisable facts.

    Returns:
        The path of the weights file.
    """
    from safetensors.torch import save

    path = Path(path)
    if path.suffix != ".safetensors":
        raise CheckpointError(f"weights file {path} must end in .safetensors")
    tensors = _state_of(model)
    blob = save(tensors, metadata={"format": WEIGHTS_FORMAT})
    _atomic_write_bytes(path, lambda f: f.write(blob))
    sidecar = {
        "format": WEIGHTS_FORMAT,
        "version": FORMAT_VERSION,
        "file": path.name,
        "sha256": hashlib.sha256(blob).hexdigest(),
        "shapes": {k: list(v.shape) for k, v in tensors.items()},
        "config": config,
        "metrics": metrics or {},
        "code": code_version(),
        **(extra or {}),
    }
    text = json.dumps(sidecar, indent=2, default=str) + "\n"
    _atomic_write_bytes(sidecar_path(path), lambda f: f.write(text.encode()))
    return path


def read_sidecar(path: str | Path) -> dict[str, Any] | None:
    """The JSON sidecar of a weights file, or ``None`` when there is none."""
    side = sidecar_path(path)
    if not side.is_file():
        return None
    try:
        data = json.loads(side.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(
            f"sidecar {side} of {path} is not valid JSON ({err}); restore it from "
            "the run that wrote the weights, or delete it to skip the checks"
        ) from None
    if not isinstance(data, dict) or data.get("format") != WEIGHTS_FORMAT:
        raise CheckpointError(f"{side} is not a deqir weights sidecar; delete it or restore the original")
    return data


def load_weights(
    path: str | Path, model: nn.Module | None = None, device: str | torch.device = "cpu", strict: bool = True
) -> dict[str, torch.Tensor] | nn.Module:
    """Load safetensors weights, checking the sidecar digest and the model's architecture.

    Args:
        path: a ``.safetensors`` file (its ``.json`` sidecar is checked when present).
        model: if given, the weights are loaded into it (names and shapes checked) and it is
            returned; otherwise the ``state_dict`` is returned.
        device: where the tensors go when no model is given.
        strict: with a model, refuse missing or unexpected parameters.

    A file of a spectral-normalised network loads into ``model`` without spectral normalisation
    through :func:`fold_spectral_norm` (the layers get the normalised weights they used).

    Raises:
        CheckpointError: missing, tampered, truncated or mismatched file.
    """
    from safetensors.torch import load

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"weights file {path} not found; check the path (a run keeps its "
            "weights in RUN/weights/best.safetensors and final.safetensors)"
        )
    side = read_sidecar(path)
    blob = path.read_bytes()
    if side is None:
        warnings.warn(f"{path} has no JSON sidecar: its integrity and origin are not checked", stacklevel=2)
    elif side.get("sha256") != hashlib.sha256(blob).hexdigest():
        raise CheckpointError(
            f"weights file {path} does not match the SHA-256 in its sidecar {sidecar_path(path).name}: "
            "it was modified, truncated or only partly written. Re-copy it from its source or "
            "retrain; do not use it as is"
        )
    try:
        state = load(blob)
    except Exception as err:  # safetensors raises its own error types
        raise CheckpointError(
            f"weights file {path} is not a valid safetensors file ({err}); it is "
            "truncated or corrupt: re-copy it from its source or retrain"
        ) from None
    if model is None:
        return {k: v.to(device) for k, v in state.items()}
    _check_read_out(side, model, path)
    load_state_checked(model, fold_spectral_norm(state, model), path, strict=strict)
    return model


_SN_WEIGHT = "parametrizations.weight.original"
_SN_VECTORS = ("parametrizations.weight.0._u", "parametrizations.weight.0._v")


def fits_module(path: str | Path, module: nn.Module) -> bool:
    """Whether a weights file's parameter names are ``module``'s, spectral normalisation aside
    (either side may have it). A file that cannot be read counts as fitting, so that
    :func:`load_weights` names its problem.

    Example:
        >>> import tempfile, pathlib, torch
        >>> path = save_weights(torch.nn.Linear(3, 2), pathlib.Path(tempfile.mkdtemp()) / "w.safetensors")
        >>> fits_module(path, torch.nn.utils.parametrizations.spectral_norm(torch.nn.Linear(3, 2)))
        True
    """
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            names = set(f.keys())  # noqa: SIM118 (not iterable)
    except Exception:  # missing or corrupt: load_weights names the problem
        return True
    return _unnormalised_names(names) == _unnormalised_names(module.state_dict())


def _unnormalised_names(names) -> set[str]:
    """Parameter names with spectral normalisation's renaming undone (``….weight``, no ``_u``/``_v``)."""
    return {k.removesuffix(_SN_WEIGHT) + "weight" if k.endswith(_SN_WEIGHT) else k for k in names} - {
        k for k in names if k.endswith(_SN_VECTORS)
    }


def fold_spectral_norm(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """A spectral-normalised network's ``state_dict`` for ``model``, which lacks the normalisation.

    :func:`torch.nn.utils.parametrizations.spectral_norm` stores the raw kernel ``W`` and its
    power-iteration vectors ``u``, ``v``; in eval mode the layer computes with ``W / σ``,
    ``σ = uᵀ W v`` (``W`` as a matrix, rows along dimension 1 for transposed convolutions,
    else 0; a 1-D ``W`` has no ``u``, ``v`` and is divided by its norm). Each layer that
    ``model`` has without the normalisation gets that ``W / σ``, so it computes what the
    normalised layer computed; every other entry is returned unchanged.

    Example:
        >>> import torch
        >>> sn = torch.nn.utils.parametrizations.spectral_norm(torch.nn.Linear(3, 2)).eval()
        >>> plain = torch.nn.Linear(3, 2)
        >>> _ = plain.load_state_dict(fold_spectral_norm(sn.state_dict(), plain))
        >>> x = torch.randn(4, 3)
        >>> torch.allclose(plain(x), sn(x))
        True
    """
    own = model.state_dict()
    out = dict(state)
    for key in state:
        if not key.endswith(_SN_WEIGHT):
            continue
        prefix = key[: -len(_SN_WEIGHT)]
        if prefix + "weight" not in own or key in own:
            continue  # the model keeps this layer normalised (or has no such layer: a mismatch later)
        weight = state[key]
        u, v = (state.get(prefix + part) for part in _SN_VECTORS)
        if weight.dim() == 1:  # torch keeps no u, v here: the layer computes W / ||W||
            out[prefix + "weight"] = torch.nn.functional.normalize(weight, dim=0)
            out.pop(key)
            continue
        if u is None or v is None:
            raise CheckpointError(
                f"weights entry {key} has no power-iteration vectors (_u, _v) beside it: the file "
                "is not a complete spectral-normalised state; re-export it from its run"
            )
        layer = model.get_submodule(prefix[:-1]) if prefix else model
        dim = 1 if isinstance(layer, nn.ConvTranspose1d | nn.ConvTranspose2d | nn.ConvTranspose3d) else 0
        matrix = weight.movedim(dim, 0).reshape(weight.shape[dim], -1)
        sigma = torch.dot(u, matrix @ v)
        out[prefix + "weight"] = weight / sigma
        for part in (_SN_WEIGHT, *_SN_VECTORS):
            out.pop(prefix + part)
    return out


def _check_read_out(side: dict[str, Any] | None, model: nn.Module, path: Path) -> None:
    """Refuse weights trained with another ``sigma_scaled_residual`` than ``model`` has.

    The parameters fit either way, so only the sidecar's model options can tell: loading σ-scaled
    weights into an unscaled network (or the reverse) would give wrong outputs, not an error.
    """
    options = (((side or {}).get("config") or {}).get("model") or {}).get("options") or {}
    model = getattr(model, "network", model)  # a whole method: its network reads out
    if not hasattr(model, "sigma_scaled_residual"):
        return
    saved, own = bool(options.get("sigma_scaled_residual", False)), bool(model.sigma_scaled_residual)
    if saved != own:
        raise CheckpointError(
            f"{path} was trained with model.options.sigma_scaled_residual: {str(saved).lower()} but "
            f"this {type(model).__name__} has {str(own).lower()}: set model.options."
            f"sigma_scaled_residual: {str(saved).lower()} (the parameters fit either way, the "
            "outputs would not)"
        )


def load_state_checked(
    module: nn.Module, state: dict[str, Any], path: str | Path, strict: bool = True, what: str = "model"
) -> None:
    """``module.load_state_dict(state)`` that explains a mismatch with a :class:`CheckpointError`."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [
        (k, tuple(state[k].shape), tuple(v.shape))
        for k, v in own.items()
        if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(v.shape)
    ]
    problems = []
    if wrong:
        problems.append(
            "shape mismatch for "
            + ", ".join(f"{k} (file {a}, model {b})" for k, a, b in wrong[:3])
            + (" ..." if len(wrong) > 3 else "")
        )
    if strict and missing:
        problems.append(
            f"{len(missing)} missing ({', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''})"
        )
    if strict and unexpected:
        problems.append(
            f"{len(unexpected)} unexpected ({', '.join(unexpected[:3])}"
            f"{' ...' if len(unexpected) > 3 else ''})"
        )
    if problems:
        raise CheckpointError(
            f"{path} does not fit this {what} ({type(module).__name__}): {'; '.join(problems)}. "
            "It was written for another architecture: use the configuration it was trained with "
            "(its sidecar or the run's config.yaml)"
        )
    try:
        module.load_state_dict(state, strict=strict)
    except (RuntimeError, KeyError, ValueError) as err:
        raise CheckpointError(f"{path} cannot be loaded into this {what}: {err}") from None
