"""U-Net prior of ODER: 4 levels, 32 base channels, GroupNorm(4), PReLU, spectral norm on every conv.

What the network returns is chosen by ``output`` (the body is the same in every case):

* ``"denoised"`` (default, residual learning as in DnCNN): ``forward(x) = x − body(x)``, a denoiser
  ``D_θ``; train it with the clean image as target.
* ``"residual"`` (ODER's convention): ``forward(x) = body(x) = N_θ(x) ≈ x − D_θ(x)``, the noise /
  artefact estimate; train it with ``noisy − clean`` as target. ODER's RED step then reads
  ``T(x) = x − γ [∇g(x) + τ N_θ(x)]``.
* ``"direct"``: ``forward(x) = body(x)``, a plain image-to-image map (e.g. U-Net post-processing of
  an FBP), no skip connection from the input.

Whatever the mode, :meth:`UNet.denoise` returns ``D_θ(x)`` and :meth:`UNet.residual_map` returns
``N_θ(x) = x − D_θ(x)``, so the RED/ODER maps can use any of them without knowing the mode.
The shortcut ``residual=True`` means ``output="denoised"`` (output = x − net(x)) and
``residual=False`` means ``output="direct"``.

Images whose sides are not multiples of ``2**(levels − 1)`` are reflection-padded before the network
and cropped afterwards, so any size works. With ``noise_level_input=True`` the network takes an extra
input channel filled with the noise standard deviation σ (``net(x, sigma=0.1)``).

Spectral normalisation uses :func:`torch.nn.utils.parametrizations.spectral_norm`: it divides each
kernel by the largest singular value of the kernel reshaped to ``(out, in·kh·kw)`` (estimated by
power iteration, one step per training forward). That bounds the matrix norm by 1; the operator
norm of the convolution itself is then at most ``sqrt(kh·kw)`` (3 for a 3×3 kernel), not 1.

Example:
    >>> import torch
    >>> from deqir.priors.unet import UNet
    >>> net = UNet(levels=3, base_channels=8, output="residual")
    >>> net(torch.rand(2, 1, 37, 50)).shape
    torch.Size([2, 1, 37, 50])
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from deqir.errors import ConfigError, InvalidValueError, ShapeError, unknown_name_message

__all__ = ["OUTPUT_MODES", "ImageToImagePrior", "UNet", "count_parameters"]

#: What an image-to-image prior returns: see the module docstring.
OUTPUT_MODES: tuple[str, ...] = ("denoised", "residual", "direct")

SigmaLike = float | torch.Tensor | None


def resolve_output_mode(output: str | None, residual: bool | None) -> str:
    """Combine the ``output`` name and the ``residual`` shortcut into one of :data:`OUTPUT_MODES`."""
    from_flag = None if residual is None else ("denoised" if residual else "direct")
    if output is None:
        return from_flag or "denoised"
    if output not in OUTPUT_MODES:
        raise ConfigError(unknown_name_message("output mode", output, OUTPUT_MODES))
    if from_flag is not None and from_flag != output:
        raise ConfigError(
            f"output='{output}' contradicts residual={residual} (residual=True means output='denoised', "
            "residual=False means output='direct'): pass only one of them"
        )
    return output


def maybe_spectral_norm(module: nn.Module, enabled: bool, n_power_iterations: int = 1) -> nn.Module:
    """Wrap every ``Conv2d`` / ``ConvTranspose2d`` inside ``module`` (or ``module`` itself) with
    :func:`torch.nn.utils.parametrizations.spectral_norm` when ``enabled``."""
    if not enabled:
        return module
    from torch.nn.utils.parametrizations import spectral_norm

    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)]
    for conv in convs:
        spectral_norm(conv, n_power_iterations=n_power_iterations)
    return module


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """Pad the last two axes of ``x`` up to multiples of ``multiple``, split evenly on both sides.

    Reflection padding where the image is large enough, replication otherwise (both are linear, so
    twice differentiable). Returns the padded tensor and ``(left, right, top, bottom)`` for
    :func:`crop_padding`.
    """
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    pads = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
    if ph == 0 and pw == 0:
        return x, pads
    mode = "reflect" if max(pads[0], pads[1]) < w and max(pads[2], pads[3]) < h else "replicate"
    return F.pad(x, pads, mode=mode), pads


def crop_padding(x: torch.Tensor, pads: tuple[int, int, int, int]) -> torch.Tensor:
    """Undo :func:`pad_to_multiple`."""
    left, right, top, bottom = pads
    h, w = x.shape[-2:]
    return x[..., top : h - bottom, left : w - right]


def append_noise_map(x: torch.Tensor, sigma: SigmaLike) -> torch.Tensor:
    """Concatenate a channel filled with ``sigma`` (a float or one value per batch item) to ``x``."""
    b = x.shape[0]
    smap = noise_levels(x, sigma).reshape(b, 1, 1, 1).expand(b, 1, *x.shape[-2:])
    return torch.cat([x, smap], dim=1)


def noise_levels(x: torch.Tensor, sigma: SigmaLike) -> torch.Tensor:
    """``sigma`` (a float or one value per batch item) as one checked value per batch item of ``x``.

    Example:
        >>> noise_levels(torch.zeros(3, 1, 4, 4), 0.1).shape
        torch.Size([3])
    """
    if sigma is None:
        raise InvalidValueError(
            "this network was built with noise_level_input=True: pass the noise level, net(x, sigma=...)"
        )
    b = x.shape[0]
    s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1)
    if s.numel() == 1:
        s = s.expand(b)
    if s.numel() != b:
        raise ShapeError(f"sigma must be a float or hold one value per batch item ({b}); got {s.numel()}")
    if not torch.isfinite(s).all():
        raise InvalidValueError("sigma must be finite")
    return s


class ImageToImagePrior(nn.Module):
    """Shared input checks, padding, noise map and output modes of deqir's U-Nets.

    Subclasses set ``in_channels``, ``out_channels``, ``noise_level_input``, ``output``, ``multiple``
    and implement :meth:`body`, which sees padded inputs (noise map included).
    """

    in_channels: int
    out_channels: int
    noise_level_input: bool
    output: str
    multiple: int
    #: the body predicts the unit-variance noise and the residual is ``sigma * body`` (see
    #: :class:`~deqir.priors.drunet.SmoothResUNet`); off unless a subclass sets it.
    sigma_scaled_residual: bool = False

    def body(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def residual(self) -> bool:
        """True when ``forward`` returns ``x − raw(x)`` (``output="denoised"``), as ``DnCNN.residual``."""
        return self.output == "denoised"

    def _check_modes(self) -> None:
        if self.output != "direct" and self.in_channels != self.out_channels:
            raise ConfigError(
                f"output='{self.output}' subtracts the network output from its input, so out_channels "
                f"({self.out_channels}) must equal in_channels ({self.in_channels}); use output='direct'"
            )

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ShapeError(
                f"x must be (batch, {self.in_channels}, H, W); got {tuple(x.shape)}"
                + (": add batch and channel axes" if x.ndim == 2 else "")
            )
        if x.is_complex():
            raise InvalidValueError("x must be real: split complex images into two channels")

    def raw(self, x: torch.Tensor, sigma: SigmaLike = None) -> torch.Tensor:
        """The body's output on ``x`` (padding, noise map and cropping handled), without any skip."""
        self._check_input(x)
        if sigma is not None and not self.noise_level_input:
            raise InvalidValueError("sigma is only accepted by networks built with noise_level_input=True")
        z = append_noise_map(x, sigma) if self.noise_level_input else x
        z, pads = pad_to_multiple(z, self.multiple)
        r = crop_padding(self.body(z), pads)
        if self.sigma_scaled_residual:
            r = r * noise_levels(x, sigma).reshape(-1, *([1] * (r.dim() - 1)))
        return r

    def forward(self, x: torch.Tensor, sigma: SigmaLike = None) -> torch.Tensor:
        """Apply the network; what it returns depends on ``output`` (see the module docstring).

        Args:
            x: Images ``(batch, in_channels, H, W)``, any H and W.
            sigma: Noise level (float or one per batch item) if ``noise_level_input``; else None.
        """
        r = self.raw(x, sigma)
        return x - r if self.output == "denoised" else r

    def denoise(self, x: torch.Tensor, sigma: SigmaLike = None) -> torch.Tensor:
        """``D_θ(x)``, the denoised image, whatever the output mode."""
        r = self.raw(x, sigma)
        return r if self.output == "direct" else x - r

    def residual_map(self, x: torch.Tensor, sigma: SigmaLike = None) -> torch.Tensor:
        """``N_θ(x) = x − D_θ(x)`` (ODER's network output), whatever the output mode."""
        r = self.raw(x, sigma)
        return x - r if self.output == "direct" else r


def _conv_block(cin: int, cout: int, groups: int, act: Callable[[int], nn.Module]) -> list[nn.Module]:
    use_norm = groups > 0
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1, bias=not use_norm)]
    if use_norm:
        layers.append(nn.GroupNorm(groups, cout))
    layers.append(act(cout))
    return layers


class UNet(ImageToImagePrior):
    """U-Net with GroupNorm and PReLU, ODER's prior (4 levels × 32 base channels by default).

    Level ``l`` (0 = full resolution) has ``base_channels · 2**l`` channels and two 3×3 conv →
    GroupNorm → PReLU layers; the encoder goes down by 2×2 max-pooling, the decoder up by bilinear
    upsampling and a 3×3 conv, with concatenated skip connections; a final 1×1 conv (with bias) maps to
    ``out_channels``.

    Args:
        in_channels: Image channels (the σ map, if any, is added on top).
        out_channels: Output channels (must equal ``in_channels`` unless ``output="direct"``).
        base_channels: Channels at full resolution.
        levels: Resolution levels, including the full one (``levels − 1`` poolings); sizes are padded
            to multiples of ``2**(levels − 1)``.
        norm_groups: GroupNorm groups (each level's channels must be divisible); 0 disables the norm
            (the convs then get biases).
        spectral_norm: Spectral normalisation of every convolution (ODER uses it).
        output: ``"denoised"`` (``x − body(x)``), ``"residual"`` (``body(x) ≈ x − D(x)``, ODER) or
            ``"direct"`` (``body(x)``).
        residual: Shortcut: True is ``output="denoised"``, False is ``output="direct"``.
        noise_level_input: Add an input channel filled with σ; call ``net(x, sigma)``.
        prelu_per_channel: One PReLU slope per channel instead of one per layer.
        n_power_iterations: Power iterations per training forward of the spectral norm.

    Example:
        >>> net = UNet()  # 4 levels, 32 channels, GroupNorm(4), PReLU, spectral norm, x − body(x)
        >>> net(torch.rand(1, 1, 65, 64)).shape
        torch.Size([1, 1, 65, 64])
        >>> oder = UNet(output="residual")  # returns N(x) ≈ x − D(x), as in ODER's code
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int | None = None,
        base_channels: int = 32,
        levels: int = 4,
        norm_groups: int = 4,
        spectral_norm: bool = True,
        output: str | None = None,
        residual: bool | None = None,
        noise_level_input: bool = False,
        prelu_per_channel: bool = False,
        n_power_iterations: int = 1,
    ) -> None:
        super().__init__()
        if levels < 1 or base_channels < 1 or in_channels < 1:
            raise ConfigError(
                f"levels, base_channels and in_channels must be ≥ 1; got {levels}, {base_channels}, "
                f"{in_channels}"
            )
        self.in_channels = in_channels
        self.out_channels = in_channels if out_channels is None else out_channels
        self.output = resolve_output_mode(output, residual)
        self.noise_level_input = noise_level_input
        self.levels = levels
        self.multiple = 2 ** (levels - 1)
        self._check_modes()
        chans = [base_channels * 2**lvl for lvl in range(levels)]
        if norm_groups < 0 or (norm_groups > 0 and any(c % norm_groups for c in chans)):
            raise ConfigError(f"norm_groups={norm_groups} must be 0 or divide every level's channels {chans}")

        def act(c: int) -> nn.Module:
            return nn.PReLU(c if prelu_per_channel else 1)

        cin = in_channels + int(noise_level_input)
        self.encoders = nn.ModuleList()
        for lvl, c in enumerate(chans):
            prev = cin if lvl == 0 else chans[lvl - 1]
            self.encoders.append(
                nn.Sequential(*_conv_block(prev, c, norm_groups, act), *_conv_block(c, c, norm_groups, act))
            )
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for lvl in range(levels - 2, -1, -1):
            c = chans[lvl]
            self.ups.append(nn.Sequential(*_conv_block(chans[lvl + 1], c, norm_groups, act)))
            self.decoders.append(
                nn.Sequential(*_conv_block(2 * c, c, norm_groups, act), *_conv_block(c, c, norm_groups, act))
            )
        self.final = nn.Conv2d(chans[0], self.out_channels, 1)
        maybe_spectral_norm(self, spectral_norm, n_power_iterations)

    def body(self, x: torch.Tensor) -> torch.Tensor:
        skips: list[torch.Tensor] = []
        for lvl, enc in enumerate(self.encoders):
            if lvl > 0:
                x = F.max_pool2d(x, 2)
            x = enc(x)
            skips.append(x)
        x = skips.pop()
        for up, dec in zip(self.ups, self.decoders, strict=True):
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            x = dec(torch.cat([skips.pop(), up(x)], dim=1))
        return self.final(x)


def count_parameters(module: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters of ``module``.

    Example:
        >>> count_parameters(UNet(levels=2, base_channels=4, spectral_norm=False)) > 0
        True
    """
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
