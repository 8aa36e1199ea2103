"""Pretrained DnCNN denoisers from the scico wheel, loaded without jax or flax.

The scico package (BSD-3) ships Flax DnCNN weights as msgpack files
``scico/data/flax/dncnn{6,17}{L,M,H,N}.mpk``: 6 or 17 layers, trained on images in [0, 1] at Gaussian
noise σ = 0.06 (``L``), 0.10 (``M``), 0.20 (``H``), or with a noise-level input channel (``N``). This
module finds those files through :func:`importlib.util.find_spec` (scico itself is never imported,
so neither jax nor flax is needed), decodes them with ``msgpack`` and rebuilds the network in torch.

Install the files with ``pip install --no-deps scico`` (and ``pip install msgpack``).

Flax serialisation format (as found in the files): a nested map ``{"params": ..., "batch_stats": ...}``
whose leaves are msgpack extension objects with type code 1; the payload is itself a msgpack array
``[shape, dtype_name, raw_C_order_bytes]``. Code 3 (numpy scalar) has the same payload with shape
``[]``; code 2 (Python complex) is ``[real, imag]``.

The network reproduces ``scico.flax.DnCNNNet`` applied with ``train=False``:

    conv_start (3×3, 64, no bias, circular padding) → ReLU
    (depth − 2) × [conv 3×3 (no bias, circular) → BatchNorm(ε = 1e-5, running stats) → ReLU]
    conv_end (3×3, channels, no bias, circular)
    output = input − result          (residual: the body predicts the noise)

Kernels are stored HWIO and become torch's OIHW; Flax's BatchNorm ``momentum=0.99`` corresponds to
torch's ``momentum=0.01`` (only relevant if the converted network is fine-tuned in train mode).
For the ``N`` variants the input is ``[x, σ·1]`` (two channels), the output has two channels and
scico keeps the first one. Like scico, a multi-channel image is denoised one channel at a time.

Example:
    >>> import torch
    >>> from deqir.priors.scico_weights import load_scico_dncnn
    >>> net = load_scico_dncnn("17M")  # doctest: +SKIP
    >>> x = torch.rand(1, 1, 64, 64)
    >>> with torch.no_grad():  # doctest: +SKIP
    ...     x_hat = net(x + 0.1 * torch.randn_like(x))
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deqir.errors import CheckpointError, DataError, InvalidValueError, unknown_name_message

__all__ = [
    "SCICO_DNCNN_SIGMA",
    "SCICO_DNCNN_VARIANTS",
    "SCICO_PIP_HINT",
    "ScicoDnCNN",
    "load_scico_dncnn",
    "read_flax_msgpack",
    "scico_dncnn_path",
]

#: Variants shipped by scico: depth (6 or 17) + training noise level (L/M/H) or N (σ input).
SCICO_DNCNN_VARIANTS: tuple[str, ...] = ("6L", "6M", "6H", "6N", "17L", "17M", "17H", "17N")
#: Training noise standard deviation (images in [0, 1]) of the blind variants.
SCICO_DNCNN_SIGMA: dict[str, float] = {"L": 0.06, "M": 0.10, "H": 0.20}
SCICO_PIP_HINT = "pip install --no-deps scico"

_EXT_NDARRAY = 1
_EXT_COMPLEX = 2
_EXT_NPSCALAR = 3


def scico_dncnn_path(variant: str = "17M") -> Path:
    """Path of scico's weight file for a DnCNN variant, found without importing scico.

    Args:
        variant: One of :data:`SCICO_DNCNN_VARIANTS`.

    Returns:
        The path of ``scico/data/flax/dncnn<variant>.mpk``.

    Raises:
        InvalidValueError: Unknown variant.
        DataError: scico's package files are not installed, or the file is missing.

    Example:
        >>> scico_dncnn_path("17M").name  # doctest: +SKIP
        'dncnn17M.mpk'
    """
    if variant not in SCICO_DNCNN_VARIANTS:
        raise InvalidValueError(unknown_name_message("scico DnCNN variant", variant, SCICO_DNCNN_VARIANTS))
    import importlib.util

    try:
        spec = importlib.util.find_spec("scico")
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise DataError(
            "the scico package files (pretrained DnCNN weights) are not installed; "
            f"run `{SCICO_PIP_HINT}` (jax is not needed: deqir only reads its data files)"
        )
    tried = []
    for loc in locations:
        path = Path(loc) / "data" / "flax" / f"dncnn{variant}.mpk"
        if path.is_file():
            return path
        tried.append(str(path))
    raise DataError(
        f"scico is installed but its DnCNN weight file is missing (looked for {', '.join(tried)}); "
        f"reinstall it with `{SCICO_PIP_HINT} --force-reinstall`"
    )


def _decode_ext(code: int, data: bytes) -> Any:
    import msgpack
    import numpy as np

    if code in (_EXT_NDARRAY, _EXT_NPSCALAR):
        shape, dtype_name, buffer = msgpack.unpackb(data, raw=False)
        arr = np.frombuffer(buffer, dtype=np.dtype(dtype_name))
        return arr.reshape(tuple(shape)).copy()
    if code == _EXT_COMPLEX:
        real, imag = msgpack.unpackb(data, raw=False)
        return complex(real, imag)
    raise ValueError(f"unknown msgpack extension type {code}")


def read_flax_msgpack(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Decode a Flax ``msgpack`` checkpoint into a nested dict of numpy arrays.

    Args:
        path: A file written by ``flax.serialization.msgpack_serialize``.

    Returns:
        The nested dictionary (for scico's DnCNN: ``{"params": ..., "batch_stats": ...}``).

    Raises:
        DataError: The file does not exist or msgpack is not installed.
        CheckpointError: The file is truncated or is not a Flax msgpack checkpoint.

    Example:
        >>> tree = read_flax_msgpack(scico_dncnn_path("6M"))  # doctest: +SKIP
        >>> tree["params"]["conv_start"]["kernel"].shape  # doctest: +SKIP
        (3, 3, 1, 64)
    """
    try:
        import msgpack
    except ImportError as err:
        raise DataError("reading Flax weights needs msgpack: run `pip install msgpack`") from err
    path = Path(path)
    if not path.is_file():
        raise DataError(f"weights file {path} does not exist")
    data = path.read_bytes()
    try:
        tree = msgpack.unpackb(data, ext_hook=_decode_ext, raw=False, strict_map_key=False)
    except Exception as err:  # msgpack raises several unrelated types on bad input
        raise CheckpointError(
            f"{path} is not a readable Flax msgpack checkpoint ({type(err).__name__}: {err}); "
            f"the file is corrupt or truncated: reinstall it (`{SCICO_PIP_HINT} --force-reinstall`)"
        ) from err
    if not isinstance(tree, dict):
        raise CheckpointError(f"{path} does not hold a Flax variable dictionary (got {type(tree).__name__})")
    return tree


class ScicoDnCNN(nn.Module):
    """Torch copy of scico's Flax ``DnCNNNet`` (evaluation mode), to receive its pretrained weights.

    Args:
        depth: Number of convolution layers (6 or 17 in scico's files).
        channels: Network input/output channels: 1, or 2 for the noise-level (``N``) variants.
        num_filters: Feature channels (64 in scico's files).
        noise_level_input: Whether the second input channel is a constant σ map (``N`` variants).

    Example:
        >>> net = ScicoDnCNN(depth=6).eval()
        >>> net(torch.zeros(2, 1, 17, 20)).shape
        torch.Size([2, 1, 17, 20])
    """

    def __init__(
        self, depth: int = 17, channels: int = 1, num_filters: int = 64, noise_level_input: bool = False
    ) -> None:
        super().__init__()
        if depth < 2:
            raise InvalidValueError(f"depth must be at least 2; got {depth}")
        if noise_level_input and channels != 2:
            raise InvalidValueError("the noise-level variant takes channels=2 (image and σ map)")
        self.depth = depth
        self.channels = channels
        self.noise_level_input = noise_level_input

        def conv(cin: int, cout: int) -> nn.Conv2d:
            return nn.Conv2d(cin, cout, 3, padding=1, padding_mode="circular", bias=False)

        layers: list[nn.Module] = [conv(channels, num_filters), nn.ReLU()]
        for _ in range(depth - 2):
            # Flax momentum 0.99 (weight of the old statistic) is torch momentum 0.01.
            layers += [conv(num_filters, num_filters), nn.BatchNorm2d(num_filters, eps=1e-5, momentum=0.01)]
            layers.append(nn.ReLU())
        layers.append(conv(num_filters, channels))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, sigma: float | torch.Tensor | None = None) -> torch.Tensor:
        """Denoise ``x`` of shape ``(B, C, H, W)`` (each channel separately, as scico does).

        Args:
            x: Noisy images in [0, 1].
            sigma: Noise standard deviation, required for the ``N`` variants and refused otherwise;
                a float or a tensor of shape ``(B,)``.

        Returns:
            The denoised images, same shape as ``x``.
        """
        if x.ndim != 4:
            raise InvalidValueError(f"x must be (batch, channel, H, W); got shape {tuple(x.shape)}")
        b, c, h, w = x.shape
        z = x.reshape(b * c, 1, h, w)
        if self.noise_level_input:
            if sigma is None:
                raise InvalidValueError(
                    "this DnCNN variant (N) needs the noise level: call net(x, sigma=...)"
                )
            s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1)
            if s.numel() == 1:
                s = s.expand(b)
            if s.numel() != b:
                raise InvalidValueError(f"sigma must be a float or have shape ({b},); got {tuple(s.shape)}")
            smap = s.repeat_interleave(c).reshape(b * c, 1, 1, 1).expand(b * c, 1, h, w)
            z = torch.cat([z, smap], dim=1)
        elif sigma is not None:
            raise InvalidValueError("this DnCNN variant is blind: sigma is only accepted by 6N and 17N")
        out = z - self.body(z)
        return out[:, :1].reshape(b, c, h, w)


def _get(tree: dict[str, Any], keys: tuple[str, ...], path: Path) -> Any:
    node: Any = tree
    for key in keys:
        if not isinstance(node, dict) or key not in node:
            raise CheckpointError(f"{path} lacks the entry {'/'.join(keys)}: not a scico DnCNN checkpoint")
        node = node[key]
    return node


def _tensor(tree: dict[str, Any], keys: tuple[str, ...], shape: tuple[int, ...], path: Path) -> torch.Tensor:
    import numpy as np

    arr = _get(tree, keys, path)
    if not isinstance(arr, np.ndarray) or tuple(arr.shape) != shape:
        got = tuple(arr.shape) if isinstance(arr, np.ndarray) else type(arr).__name__
        raise CheckpointError(f"{path}: entry {'/'.join(keys)} should have shape {shape}, got {got}")
    t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    if not torch.isfinite(t).all():
        raise CheckpointError(f"{path}: entry {'/'.join(keys)} contains NaN or infinite values")
    return t


def load_scico_dncnn(
    variant: str = "17M", path: str | os.PathLike[str] | None = None, device: str | torch.device = "cpu"
) -> ScicoDnCNN:
    """Build scico's pretrained DnCNN as a torch module (evaluation mode, frozen BN statistics).

    Args:
        variant: ``"6L" | "6M" | "6H" | "6N" | "17L" | "17M" | "17H" | "17N"``: depth and training noise
            σ (L 0.06, M 0.10, H 0.20 on [0, 1] images; N takes σ as input: ``net(x, sigma=0.1)``).
        path: Read this ``.mpk`` file instead of the one in the installed scico package
            (its layout must match ``variant``).
        device: Where to put the module.

    Returns:
        A :class:`ScicoDnCNN` in eval mode whose ``forward`` returns the denoised image.

    Raises:
        DataError: scico (or msgpack) is not installed: run ``pip install --no-deps scico msgpack``.
        CheckpointError: The file is corrupt or does not match the variant; the message names it.

    Example:
        >>> net = load_scico_dncnn("17M")  # doctest: +SKIP
        >>> noisy = clean + 0.1 * torch.randn_like(clean)  # doctest: +SKIP
        >>> with torch.no_grad():  # doctest: +SKIP
        ...     denoised = net(noisy)
    """
    if variant not in SCICO_DNCNN_VARIANTS:
        raise InvalidValueError(unknown_name_message("scico DnCNN variant", variant, SCICO_DNCNN_VARIANTS))
    file = Path(path) if path is not None else scico_dncnn_path(variant)
    tree = read_flax_msgpack(file)
    depth = int(variant[:-1])
    noise_input = variant.endswith("N")
    ch = 2 if noise_input else 1
    nf = 64
    net = ScicoDnCNN(depth=depth, channels=ch, num_filters=nf, noise_level_input=noise_input)

    def kernel(keys: tuple[str, ...], cin: int, cout: int) -> torch.Tensor:
        # Flax stores HWIO; torch wants OIHW (both are cross-correlations).
        return _tensor(tree, ("params", *keys, "kernel"), (3, 3, cin, cout), file).permute(3, 2, 0, 1)

    convs = [m for m in net.body if isinstance(m, nn.Conv2d)]
    bns = [m for m in net.body if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        convs[0].weight.copy_(kernel(("conv_start",), ch, nf))
        convs[-1].weight.copy_(kernel(("conv_end",), nf, ch))
        for i, (conv, bn) in enumerate(zip(convs[1:-1], bns, strict=True)):
            blk = f"ConvBNBlock_{i}"
            conv.weight.copy_(kernel((blk, "Conv_0"), nf, nf))
            bn.weight.copy_(_tensor(tree, ("params", blk, "BatchNorm_0", "scale"), (nf,), file))
            bn.bias.copy_(_tensor(tree, ("params", blk, "BatchNorm_0", "bias"), (nf,), file))
            bn.running_mean.copy_(_tensor(tree, ("batch_stats", blk, "BatchNorm_0", "mean"), (nf,), file))
            var = _tensor(tree, ("batch_stats", blk, "BatchNorm_0", "var"), (nf,), file)
            if (var < 0).any():
                raise CheckpointError(f"{file}: negative BatchNorm variance in {blk}: the file is corrupt")
            bn.running_var.copy_(var)
    extra = (
        _get(tree, ("params",), file).keys()
        - {"conv_start", "conv_end"}
        - {f"ConvBNBlock_{i}" for i in range(depth - 2)}
    )
    if extra:
        raise CheckpointError(
            f"{file} has layers {sorted(extra)} beyond a {depth}-layer DnCNN: it does not match variant "
            f"'{variant}'"
        )
    return net.to(device).eval()
