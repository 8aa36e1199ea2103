"""Weights and training checkpoints, written atomically and loaded without unpickling code.

Two formats:

* **weights** (what is shared): a safetensors file plus a JSON sidecar, from
  :mod:`deqir.storage` (its names are re-exported here: ``save_weights``, ``load_weights``,
  ``read_sidecar``, ``fits_module``, ``fold_spectral_norm``, ``load_state_checked`` ...).
* **training checkpoints** (what resumes a run): model, optimiser, scheduler, step, best metric
  and random-number states, written with ``torch.save`` and read back only with
  ``torch.load(weights_only=True)``. The state is serialised, hashed, and stored as a byte
  tensor next to its digest in one file, so a single ``os.replace`` publishes it atomically and
  :func:`load_checkpoint` detects any change to it.

Every problem raises :class:`~deqir.errors.CheckpointError` naming the file and what to do.

Example:
    >>> import tempfile, pathlib, torch
    >>> from deqir.train.checkpoint import save_weights, load_weights
    >>> net = torch.nn.Linear(3, 2)
    >>> path = save_weights(net, pathlib.Path(tempfile.mkdtemp()) / "net.safetensors",
    ...                     metrics={"psnr": 30.0})
    >>> sorted(load_weights(path))
    ['bias', 'weight']
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import torch

from deqir.errors import CheckpointError
from deqir.storage import (  # noqa: F401 (re-exported: the weights half of this module)
    FORMAT_VERSION,
    WEIGHTS_FORMAT,
    _atomic_write_bytes,
    code_version,
    fits_module,
    fold_spectral_norm,
    load_state_checked,
    load_weights,
    read_sidecar,
    save_weights,
    sidecar_path,
)

CHECKPOINT_FORMAT = "deqir-checkpoint"


# --------------------------------------------------------------------- checkpoints
def _first_line(err: Exception) -> str:
    lines = [line for line in str(err).splitlines() if line.strip()]
    detail = next((line.strip() for line in lines if "Unsupported global" in line), lines[0] if lines else "")
    return f"{type(err).__name__}: {detail}"[:300]


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write a training checkpoint atomically (serialise, hash, temporary file, ``os.replace``).

    ``state`` must hold only tensors and plain Python types: it is read back with
    ``weights_only=True``, and checked to be readable so before it is written.
    """
    path = Path(path)
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    try:
        torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as err:
        raise TypeError(
            "a training checkpoint may hold only tensors and plain Python types "
            f"(it is loaded with weights_only=True): {_first_line(err)}"
        ) from None
    outer = {
        "format": CHECKPOINT_FORMAT,
        "version": FORMAT_VERSION,
        "sha256": hashlib.sha256(payload).hexdigest(),
        "payload": torch.frombuffer(bytearray(payload), dtype=torch.uint8),
    }
    _atomic_write_bytes(path, lambda f: torch.save(outer, f))
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a training checkpoint (CPU tensors) with ``torch.load(weights_only=True)`` only.

    Raises:
        CheckpointError: missing, truncated, tampered or not a deqir checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {path} not found; a run writes RUN/checkpoint.pt every "
            "train.checkpoint_every steps: check the run folder"
        )
    advice = "it is truncated or corrupt: resume from another copy or start the run again"
    try:
        outer = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # zip, pickle and weights-only errors
        raise CheckpointError(f"checkpoint {path} cannot be read ({_first_line(err)}); {advice}") from None
    if not isinstance(outer, dict) or outer.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} is not a deqir training checkpoint; pass a file written by "
            "deqir's trainer (RUN/checkpoint.pt)"
        )
    if outer.get("version") != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {outer.get('version')}; this "
            f"deqir reads version {FORMAT_VERSION}: use the deqir that wrote it"
        )
    payload = outer.get("payload")
    if not isinstance(payload, torch.Tensor) or payload.dtype != torch.uint8:
        raise CheckpointError(f"checkpoint {path} has no payload; {advice}")
    data = payload.numpy().tobytes()
    if hashlib.sha256(data).hexdigest() != outer.get("sha256"):
        raise CheckpointError(
            f"checkpoint {path} does not match its SHA-256: it was modified; "
            "do not resume from it (restore a copy or start the run again)"
        )
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(
            f"checkpoint {path} holds data that cannot be loaded safely ({_first_line(err)}); {advice}"
        ) from None
