"""Learned priors (networks): DnCNN, U-Nets, smooth U-Nets, shallow equilibrium cells, pretrained denoisers.

No physics here. Names load lazily, so ``import deqir.priors`` stays cheap.

Example:
    >>> import torch
    >>> from deqir.priors import DnCNN
    >>> net = DnCNN(depth=3, width=8)
    >>> tuple(net(torch.rand(2, 1, 16, 16)).shape)
    (2, 1, 16, 16)
"""

from __future__ import annotations

from deqir._lazy import lazy_exports

_EXPORTS = {
    "DnCNN": "dncnn",
    "UNet": "unet",
    "SmoothResUNet": "drunet",
    "ShallowCell": "shallow",
    "ScicoDnCNN": "scico_weights",
    "load_scico_dncnn": "scico_weights",
    "list_pretrained": "pretrained",
    "load_pretrained": "pretrained",
    "pretrained_info": "pretrained",
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
