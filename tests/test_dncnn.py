"""DnCNN: shapes, residual form, batch norm, spectral norm, noise-level input, errors."""

from __future__ import annotations

import pytest
import torch

from deqir.errors import InvalidValueError, ShapeError
from deqir.priors.dncnn import DnCNN


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_structure_and_residual_form():
    net = DnCNN(depth=5, width=16)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 5 and convs[0].in_channels == 1 and convs[-1].out_channels == 1
    x = torch.rand(2, 1, 20, 24)
    torch.testing.assert_close(net(x), x - net.residual_map(x))
    plain = DnCNN(depth=3, width=4, residual=False, out_channels=2)
    assert plain(x).shape == (2, 2, 20, 24)


def test_batch_norm_drops_hidden_biases():
    net = DnCNN(depth=4, width=8, batch_norm=True)
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(bns) == 2 and [c.bias is None for c in convs] == [False, True, True, False]


def test_spectral_norm_bounds_every_conv():
    net = DnCNN(depth=4, width=8, spectral_norm=True).train()
    for _ in range(30):  # power iterations run in training forwards
        net(torch.rand(1, 1, 8, 8))
    net.eval()
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            w = m.weight.detach().reshape(m.weight.shape[0], -1)
            assert float(torch.linalg.matrix_norm(w, ord=2)) == pytest.approx(1.0, abs=1e-3)


def test_noise_level_input():
    net = DnCNN(depth=3, width=8, noise_level_input=True)
    x = torch.rand(3, 1, 8, 8)
    a, b = net(x, sigma=0.05), net(x, sigma=torch.tensor([0.05, 0.05, 0.05]))
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, net(x, sigma=0.2))
    with pytest.raises(InvalidValueError, match="pass sigma="):
        net(x)
    with pytest.raises(ShapeError, match="one value per batch element"):
        net(x, sigma=torch.tensor([0.1, 0.2]))


def test_smooth_activation_is_twice_differentiable():
    net = DnCNN(depth=3, width=4, activation="softplus")
    x = torch.rand(1, 1, 8, 8, requires_grad=True)
    (g,) = torch.autograd.grad(net(x).pow(2).sum(), x, create_graph=True)
    g.sum().backward()
    assert all(p.grad is not None for p in net.parameters())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"depth": 1}, "depth must be at least 2"),
        ({"kernel_size": 4}, "odd"),
        ({"activation": "relu6"}, "unknown activation"),
        ({"padding_mode": "mirror"}, "unknown padding_mode"),
        ({"out_channels": 3}, "residual DnCNN needs"),
        ({"width": 0}, "positive"),
        ({"depth": 3, "dilations": [1, 2]}, "3 positive integers"),
        ({"depth": 2, "dilations": [1, 0]}, "2 positive integers"),
        ({"depth": 2, "dilations": 2}, "2 positive integers"),
        ({"depth": 2, "dilations": [1, True]}, "2 positive integers"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(InvalidValueError, match=match):
        DnCNN(**kwargs)


@pytest.mark.parametrize("dilations, field", [(None, 11), ([1, 2, 4, 2, 1], 21), ([1, 1, 3, 1, 1], 15)])
def test_dilations_set_the_receptive_field(dilations, field):
    """The centre output depends on a square of input pixels of the stated side, centred, reaching
    its corners; the output keeps the input's size."""
    net = DnCNN(depth=5, width=4, dilations=dilations, residual=False).double()
    assert net.receptive_field == field
    x = torch.zeros(1, 1, 41, 41, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(net(x + 0.1)[0, 0, 20, 20], x)
    g = g[0, 0].abs()
    lo, hi = 20 - field // 2, 20 + field // 2
    for support in (g.sum(1).nonzero().flatten(), g.sum(0).nonzero().flatten()):  # rows, columns
        assert (int(support.min()), int(support.max())) == (lo, hi)
    assert all(float(g[r, c]) > 0 for r in (lo, hi) for c in (lo, hi))
    assert x.shape == net(x).shape


def test_dilations_keep_the_state_dict_layout():
    """So a file cannot tell them apart (the trainer checks a weights file's sidecar instead)."""
    plain, dilated = DnCNN(depth=5, width=4), DnCNN(depth=5, width=4, dilations=[1, 2, 4, 2, 1])
    dilated.load_state_dict(plain.state_dict())
    x = torch.rand(1, 1, 16, 16)
    assert not torch.allclose(plain(x), dilated(x))


def test_wrong_input_shape():
    with pytest.raises(ShapeError, match=r"\(batch, 1, H, W\)"):
        DnCNN(depth=2, width=2)(torch.rand(8, 8))
