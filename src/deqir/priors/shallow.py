"""Shallow equilibrium cells: the per-step regulariser of LUSER (Guan et al., arXiv 2210.04987).

A cell is a *shallow* network ``f_θ(z, v)`` on a feature state ``z`` with the step's image ``v``
injected at every application. The regulariser it defines is the readout of the equilibrium
``z* = f_θ(z*, v)``::

    R(v) = v − readout(z*)        (a residual denoiser of v)

Solving for ``z*`` (and differentiating through it) is the engine's job, done by
:class:`deqir.methods.unrolling.ShallowEquilibrium`; this module only defines the network, with no
solver and no physics. The same cell applied once from ``z = 0`` (:meth:`ShallowCell.feedforward`)
is the LU-shallow baseline: the same parameters and cost per application, without the equilibrium.

The map is ``f(z, v) = relu(W₂ relu(W₁ z) + inject(v))`` (``convolutions`` convolutions on ``z``):
ReLU is 1-Lipschitz, so ``f`` is a contraction in ``z`` while ``‖W₂‖‖W₁‖ < 1``; the ``z`` convolutions
start small (``z_scale``) to begin there. ``norm=True`` adds the two GroupNorms of the multiscale-DEQ
residual cell, ``GroupNorm(relu(z + GroupNorm(inject(v) + W₂ relu(W₁ z))))``: more robust, but each
normalisation keeps another feature map for the backward pass.

Example:
    >>> import torch
    >>> cell = ShallowCell(width=8)
    >>> v = torch.rand(2, 1, 16, 16)
    >>> z = cell.initial_state(v)
    >>> tuple(cell(z, v).shape), tuple(cell.readout(z, v).shape)
    ((2, 8, 16, 16), (2, 1, 16, 16))
"""

from __future__ import annotations

import torch
from torch import nn

from deqir.errors import InvalidValueError

__all__ = ["ShallowCell"]


def _groups(width: int, wanted: int) -> int:
    g = min(wanted, width)
    while width % g:
        g -= 1
    return g


class ShallowCell(nn.Module):
    """A shallow equilibrium cell ``f_θ(z, v)`` with a residual image readout.

    Args:
        in_channels: image channels of ``v``.
        width: feature channels of the state ``z``.
        convolutions: convolutions on ``z`` per application (2 or 3 in LUSER).
        kernel_size: odd kernel size.
        groups: GroupNorm groups (reduced to a divisor of ``width``).
        z_scale: initial scale of the ``z`` convolutions (small: a contraction at the start).
        norm: the GroupNorm residual form (see the module docstring).

    Attributes:
        is_equilibrium_cell: marks the network for :func:`deqir.methods.unrolling.build_loop_unrolled`.

    Example:
        >>> cell = ShallowCell(width=8, convolutions=3)
        >>> sum(p.numel() for p in cell.parameters()) > 0
        True
    """

    is_equilibrium_cell = True

    def __init__(
        self,
        in_channels: int = 1,
        width: int = 32,
        convolutions: int = 2,
        kernel_size: int = 3,
        groups: int = 4,
        z_scale: float = 0.5,
        norm: bool = False,
    ) -> None:
        super().__init__()
        if int(convolutions) < 1 or int(width) < 1 or int(in_channels) < 1:
            raise InvalidValueError(
                f"ShallowCell needs convolutions ≥ 1, width ≥ 1, in_channels ≥ 1; got "
                f"{convolutions}, {width}, {in_channels}"
            )
        if int(kernel_size) % 2 != 1:
            raise InvalidValueError(f"kernel_size must be odd; got {kernel_size}")
        pad = int(kernel_size) // 2
        self.in_channels, self.width = int(in_channels), int(width)
        self.inject = nn.Conv2d(in_channels, width, kernel_size, padding=pad)
        self.convs = nn.ModuleList(
            nn.Conv2d(width, width, kernel_size, padding=pad, bias=False) for _ in range(int(convolutions))
        )
        with torch.no_grad():
            for conv in self.convs:
                conv.weight.mul_(float(z_scale))
        self.norm = bool(norm)
        if self.norm:
            g = _groups(self.width, int(groups))
            self.norm_inner = nn.GroupNorm(g, width)
            self.norm_outer = nn.GroupNorm(g, width)
        self.head = nn.Conv2d(width, in_channels, kernel_size, padding=pad)
        with torch.no_grad():  # R(v) = v at the start: the unrolled steps begin as plain gradient steps
            self.head.weight.zero_()
            self.head.bias.zero_()

    def initial_state(self, v: torch.Tensor) -> torch.Tensor:
        """``z_0 = 0`` with the shape the cell's state has for image ``v``."""
        return v.new_zeros(v.shape[0], self.width, *v.shape[2:])

    def forward(self, z: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """One application ``f_θ(z, v)``."""
        h = z
        for i, conv in enumerate(self.convs):
            h = conv(h if i == 0 else torch.relu(h))
        if not self.norm:
            return torch.relu(h + self.inject(v))
        h = self.norm_inner(self.inject(v) + h)
        return self.norm_outer(torch.relu(z + h))

    def readout(self, z: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """The regularised image ``v − head(z)`` (a residual denoiser of ``v``)."""
        return v - self.head(z)

    def feedforward(self, v: torch.Tensor) -> torch.Tensor:
        """The cell used once from ``z = 0``, no equilibrium (the LU-shallow regulariser)."""
        return self.readout(self(self.initial_state(v), v), v)
