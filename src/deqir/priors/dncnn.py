"""DnCNN (Zhang et al., 2017): a plain stack of 3x3 convolutions that predicts the noise.

``DnCNN(depth, width)`` is ``conv-act``, ``depth - 2`` times ``conv-[BN]-act``, then ``conv``.
With ``residual=True`` (the default) the network output ``N(x)`` is read as the noise and the
denoised image is ``x - N(x)``; :meth:`DnCNN.residual_map` returns ``N(x)`` itself, the form
RED/ODER use (``x - D(x)``).

Options the equilibrium methods need:

* ``spectral_norm=True`` wraps every convolution in
  :func:`torch.nn.utils.parametrizations.spectral_norm` (the reshaped kernel has spectral norm
  at most 1, a common Lipschitz control for DEQ training);
* ``noise_level_input=True`` appends a constant channel holding the noise level ``sigma``
  (scalar or one value per batch element), for one network that covers a range of noise levels;
* ``activation="elu"`` or ``"softplus"`` gives a smooth network (ELDER needs double backprop);
* ``dilations`` (one per convolution) widens the receptive field at the same cost per pixel: depth 5 with
  ``(1, 2, 4, 2, 1)`` sees 21 × 21 pixels instead of 11 × 11 (:attr:`DnCNN.receptive_field`).

Example:
    >>> import torch
    >>> from deqir.priors.dncnn import DnCNN
    >>> net = DnCNN(depth=4, width=16, noise_level_input=True, spectral_norm=True)
    >>> x = torch.rand(2, 1, 24, 24)
    >>> tuple(net(x, sigma=torch.tensor([0.05, 0.1])).shape)
    (2, 1, 24, 24)
"""

from __future__ import annotations

import torch
from torch import nn

from deqir.errors import InvalidValueError, ShapeError, unknown_name_message

_ACTIVATIONS = {"relu": nn.ReLU, "elu": nn.ELU, "softplus": nn.Softplus, "prelu": nn.PReLU}
_PADDING = ("zeros", "reflect", "replicate", "circular")


class DnCNN(nn.Module):
    """DnCNN denoiser.

    Args:
        in_channels: image channels.
        out_channels: output channels (``in_channels`` by default).
        depth: number of convolutions (17 in the original paper), at least 2.
        width: channels of the hidden convolutions.
        batch_norm: batch normalisation after every hidden convolution.
        residual: predict the noise and return ``x - N(x)`` (needs ``out_channels == in_channels``).
        spectral_norm: spectral normalisation on every convolution.
        noise_level_input: append a noise-level channel; ``forward`` then needs ``sigma``.
        bias: convolution biases (hidden convolutions lose theirs under batch norm).
        kernel_size: odd kernel size.
        activation: ``relu``, ``elu``, ``softplus`` or ``prelu``.
        padding_mode: ``zeros``, ``reflect``, ``replicate`` or ``circular``.
        dilations: one positive dilation per convolution (``depth`` of them); ``None``: all 1.

    Example:
        >>> import torch
        >>> net = DnCNN(depth=3, width=8, batch_norm=True)
        >>> sum(p.numel() for p in net.parameters()) > 0
        True
        >>> dilated = DnCNN(depth=5, width=8, dilations=[1, 2, 4, 2, 1])
        >>> DnCNN(depth=5, width=8).receptive_field, dilated.receptive_field
        (11, 21)
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int | None = None,
        depth: int = 17,
        width: int = 64,
        batch_norm: bool = False,
        residual: bool = True,
        spectral_norm: bool = False,
        noise_level_input: bool = False,
        bias: bool = True,
        kernel_size: int = 3,
        activation: str = "relu",
        padding_mode: str = "zeros",
        dilations: list[int] | tuple[int, ...] | None = None,
    ):
        super().__init__()
        out_channels = in_channels if out_channels is None else int(out_channels)
        if int(depth) < 2:
            raise InvalidValueError(f"DnCNN depth must be at least 2; got {depth}")
        if int(width) < 1 or int(in_channels) < 1 or out_channels < 1:
            raise InvalidValueError(
                f"DnCNN channels must be positive; got in={in_channels}, out={out_channels}, width={width}"
            )
        if kernel_size % 2 != 1:
            raise InvalidValueError(f"DnCNN kernel_size must be odd; got {kernel_size}")
        if residual and out_channels != in_channels:
            raise InvalidValueError(
                "a residual DnCNN needs out_channels == in_channels; "
                f"got {in_channels} -> {out_channels} (set residual=False)"
            )
        if activation not in _ACTIVATIONS:
            raise InvalidValueError(unknown_name_message("activation", activation, list(_ACTIVATIONS)))
        if padding_mode not in _PADDING:
            raise InvalidValueError(unknown_name_message("padding_mode", padding_mode, list(_PADDING)))
        dilations = [1] * int(depth) if dilations is None else dilations
        if (
            not isinstance(dilations, list | tuple)
            or len(dilations) != int(depth)
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in dilations)
        ):
            raise InvalidValueError(
                f"DnCNN dilations must be {int(depth)} positive integers, one per convolution (depth); "
                f"got {dilations}"
            )
        self.dilations = tuple(int(d) for d in dilations)
        self.in_channels, self.out_channels = int(in_channels), out_channels
        self.depth, self.width = int(depth), int(width)
        self.residual, self.noise_level_input = bool(residual), bool(noise_level_input)

        self.receptive_field = 1 + (kernel_size - 1) * sum(self.dilations)
        dilation_of = iter(self.dilations)

        def conv(cin: int, cout: int, with_bias: bool) -> nn.Module:
            d = next(dilation_of)
            layer = nn.Conv2d(
                cin,
                cout,
                kernel_size,
                padding=d * (kernel_size // 2),
                dilation=d,
                bias=with_bias,
                padding_mode=padding_mode,
            )
            if spectral_norm:
                layer = nn.utils.parametrizations.spectral_norm(layer)
            return layer

        cin = self.in_channels + (1 if noise_level_input else 0)
        layers: list[nn.Module] = [conv(cin, width, bias), _ACTIVATIONS[activation]()]
        for _ in range(self.depth - 2):
            layers.append(conv(width, width, bias and not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(width))
            layers.append(_ACTIVATIONS[activation]())
        layers.append(conv(width, out_channels, bias))
        self.body = nn.Sequential(*layers)

    def residual_map(self, x: torch.Tensor, sigma: torch.Tensor | float | None = None) -> torch.Tensor:
        """The raw network output ``N(x)`` (the predicted noise when ``residual=True``)."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ShapeError(f"DnCNN takes (batch, {self.in_channels}, H, W); got {tuple(x.shape)}")
        if self.noise_level_input:
            if sigma is None:
                raise InvalidValueError(
                    "this DnCNN has a noise-level input: pass sigma= "
                    "(a number or one value per batch element)"
                )
            s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1, 1, 1, 1)
            if s.shape[0] not in (1, x.shape[0]):
                raise ShapeError(
                    f"sigma must be a number or hold one value per batch element "
                    f"({x.shape[0]}); got {s.shape[0]} values"
                )
            x = torch.cat([x, s.expand(x.shape[0], 1, *x.shape[2:])], dim=1)
        return self.body(x)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float | None = None) -> torch.Tensor:
        """Denoise ``x``; ``sigma`` is used only with ``noise_level_input=True``."""
        out = self.residual_map(x, sigma)
        return x - out if self.residual else out
