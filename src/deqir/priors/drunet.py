"""Smooth residual U-Net (DRUNet-style) for explicit, twice-differentiable potentials (ELDER).

ELDER's regularisers, e.g. the gradient-step potential ``R(x) = ½‖x − N_θ(x)‖²``, the RED potential
``R(x) = ½ xᵀ(x − N_θ(x))`` or ``R(x) = Σ N_θ(x)``, are differentiated once to get ``∇R`` inside the
reconstruction and a second time to train θ (``torch.autograd.grad(..., create_graph=True)`` and then
``backward``). That needs a network whose input-gradient is itself differentiable with respect to the
input and the weights: smooth activations (ELU, softplus, SiLU ...), no batch or group statistics and
no max-pooling. :class:`SmoothResUNet` is such a network: a DRUNet-like U-Net (Zhang et al., 2021) with
residual blocks, strided-convolution downsampling, transposed-convolution upsampling and additive skip
connections, written here from the architecture's description.

The output modes (``"denoised"``, ``"residual"``, ``"direct"``) and the helpers ``denoise`` and
``residual_map`` are those of :class:`deqir.priors.unet.UNet`.

Example:
    >>> import torch
    >>> from deqir.priors.drunet import SmoothResUNet
    >>> net = SmoothResUNet()  # channels (16, 32, 64), one residual block per level, ELU
    >>> x = torch.rand(1, 1, 30, 33, requires_grad=True)
    >>> R = 0.5 * (x - net(x)).pow(2).sum()
    >>> (g,) = torch.autograd.grad(R, x, create_graph=True)
    >>> g.pow(2).sum().backward()  # double backprop to the weights
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from deqir.errors import ConfigError, unknown_name_message
from deqir.priors.unet import ImageToImagePrior, maybe_spectral_norm, resolve_output_mode

__all__ = ["SMOOTH_ACTIVATIONS", "SmoothResUNet", "smooth_activation"]

#: Activations accepted by :class:`SmoothResUNet` (all at least C¹, so double backprop is meaningful).
SMOOTH_ACTIVATIONS: tuple[str, ...] = ("elu", "softplus", "silu", "gelu", "tanh", "celu")


def smooth_activation(name: str, softplus_beta: float = 1.0) -> nn.Module:
    """A smooth activation module by name (one of :data:`SMOOTH_ACTIVATIONS`).

    Example:
        >>> smooth_activation("softplus", softplus_beta=10.0)
        Softplus(beta=10.0, threshold=20.0)
    """
    if name == "relu":
        raise ConfigError(
            "relu is not differentiable twice (its second derivative is 0 almost everywhere, so double "
            f"backprop sees no curvature); use one of {', '.join(SMOOTH_ACTIVATIONS)}"
        )
    table = {
        "elu": lambda: nn.ELU(),
        "softplus": lambda: nn.Softplus(beta=softplus_beta),
        "silu": lambda: nn.SiLU(),
        "gelu": lambda: nn.GELU(),
        "tanh": lambda: nn.Tanh(),
        "celu": lambda: nn.CELU(),
    }
    if name not in table:
        raise ConfigError(unknown_name_message("activation", name, SMOOTH_ACTIVATIONS))
    return table[name]()


class _ResBlock(nn.Module):
    def __init__(self, channels: int, activation: str, softplus_beta: float, bias: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=bias)
        self.act = smooth_activation(activation, softplus_beta)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.act(self.conv1(x)))


class SmoothResUNet(ImageToImagePrior):
    """DRUNet-style residual U-Net with smooth activations and no normalisation layers.

    Structure: a 3×3 head conv; per level ``blocks_per_level`` residual blocks
    (``x + conv(act(conv(x)))``), then a 2×2 stride-2 conv to the next level; the same number of
    residual blocks at the bottom; on the way up a 2×2 stride-2 transposed conv, an added skip from the
    encoder, residual blocks; a 3×3 tail conv. Sizes are padded to multiples of
    ``2**(len(channels) − 1)`` and cropped back.

    Args:
        in_channels: Image channels (the σ map, if any, is added on top).
        out_channels: Output channels (must equal ``in_channels`` unless ``output="direct"``).
        channels: Feature channels per level; its length is the number of levels.
        blocks_per_level: Residual blocks per level (each encoder level, the bottom, each decoder level).
        activation: One of :data:`SMOOTH_ACTIVATIONS` (``"elu"`` or ``"softplus"`` for ELDER).
        softplus_beta: ``beta`` of the softplus (larger is closer to ReLU, and less smooth).
        bias: Biases in the convolutions (DRUNet has none).
        spectral_norm: Spectral normalisation of every (transposed) convolution.
        output: ``"denoised"`` (``x − body(x)``), ``"residual"`` or ``"direct"`` (``body(x)``).
        residual: Shortcut: True is ``output="denoised"``, False is ``output="direct"``.
        noise_level_input: Add an input channel filled with σ; call ``net(x, sigma)``.
        sigma_scaled_residual: With ``noise_level_input`` and a residual output: the body predicts
            the unit-variance noise ``n / σ`` and the residual is ``σ · body``, so ``D(x, 0) = x``
            exactly and at small σ the output can never stray far from the input (an unscaled
            blind network smooths clean edges even at σ = 0, which caps PnP/RED at high SNR).

    Example:
        >>> net = SmoothResUNet(channels=(8, 16), blocks_per_level=1, activation="softplus")
        >>> net(torch.rand(2, 1, 15, 16)).shape
        torch.Size([2, 1, 15, 16])
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int | None = None,
        channels: Sequence[int] = (16, 32, 64),
        blocks_per_level: int = 1,
        activation: str = "elu",
        softplus_beta: float = 1.0,
        bias: bool = False,
        spectral_norm: bool = False,
        output: str | None = None,
        residual: bool | None = None,
        noise_level_input: bool = False,
        sigma_scaled_residual: bool = False,
    ) -> None:
        super().__init__()
        chans = [int(c) for c in channels]
        if not chans or min(chans) < 1 or blocks_per_level < 0 or in_channels < 1:
            raise ConfigError(
                f"channels must be a non-empty list of positive ints, blocks_per_level ≥ 0 and "
                f"in_channels ≥ 1; got {channels}, {blocks_per_level}, {in_channels}"
            )
        smooth_activation(activation, softplus_beta)  # validate early
        self.in_channels = in_channels
        self.out_channels = in_channels if out_channels is None else out_channels
        self.output = resolve_output_mode(output, residual)
        self.noise_level_input = noise_level_input
        self.sigma_scaled_residual = bool(sigma_scaled_residual)
        if self.sigma_scaled_residual and (not noise_level_input or self.output == "direct"):
            raise ConfigError(
                "sigma_scaled_residual needs noise_level_input=True and a residual output "
                f"(output='denoised' or 'residual'); got noise_level_input={noise_level_input}, "
                f"output='{self.output}'"
            )
        self.channels = tuple(chans)
        self.multiple = 2 ** (len(chans) - 1)
        self._check_modes()

        def blocks(c: int) -> nn.Sequential:
            return nn.Sequential(
                *[_ResBlock(c, activation, softplus_beta, bias) for _ in range(blocks_per_level)]
            )

        self.head = nn.Conv2d(in_channels + int(noise_level_input), chans[0], 3, padding=1, bias=bias)
        self.enc = nn.ModuleList(blocks(c) for c in chans[:-1])
        self.down = nn.ModuleList(
            nn.Conv2d(chans[i], chans[i + 1], 2, stride=2, bias=bias) for i in range(len(chans) - 1)
        )
        self.bottom = blocks(chans[-1])
        self.up = nn.ModuleList(
            nn.ConvTranspose2d(chans[i + 1], chans[i], 2, stride=2, bias=bias)
            for i in reversed(range(len(chans) - 1))
        )
        self.dec = nn.ModuleList(blocks(chans[i]) for i in reversed(range(len(chans) - 1)))
        self.tail = nn.Conv2d(chans[0], self.out_channels, 3, padding=1, bias=bias)
        maybe_spectral_norm(self, spectral_norm)

    def body(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(x)
        skips: list[torch.Tensor] = []
        for enc, down in zip(self.enc, self.down, strict=True):
            x = enc(x)
            skips.append(x)
            x = down(x)
        x = self.bottom(x)
        for up, dec in zip(self.up, self.dec, strict=True):
            x = dec(up(x) + skips.pop())
        return self.tail(x)
