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
``deqir weights export runs/denoiser_<name> --name <name>``, which calls
:func:`deqir.train.export.export_weights`.

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

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deqir.errors import CheckpointError, ConfigError, InvalidValueError, unknown_name_message

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "PRETRAINED",
    "TEST_SIGMAS",
    "add_test_noise",
    "list_pretrained",
    "load_pretrained",
    "pretrained_info",
    "pretrained_path",
    "pretrained_table",
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
    from deqir.storage import read_sidecar, sidecar_path

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
    from deqir.priors.registry import build_model

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

    from deqir.storage import load_state_checked, load_weights, sidecar_path

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
    :func:`deqir.train.export.export_weights` and ``deqir bench denoisers`` measure on identical noisy images.

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
