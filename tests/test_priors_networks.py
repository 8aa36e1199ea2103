"""Tests of the U-Net priors and of the scico DnCNN weight loader."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from deqir.errors import CheckpointError, ConfigError, DataError, DeqirError, InvalidValueError, ShapeError
from deqir.priors.drunet import SmoothResUNet
from deqir.priors.unet import UNet

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1.0 / (a - b).pow(2).mean()))


# --------------------------------------------------------------------------- UNet


def test_unet_default_shapes_odd_sizes():
    net = UNet()  # ODER's defaults: 4 levels, 32 channels, GroupNorm(4), PReLU, spectral norm
    assert len(net.encoders) == 4 and net.encoders[0][0].out_channels == 32
    for shape in [(2, 1, 37, 45), (1, 1, 7, 9), (1, 1, 1, 3)]:
        with torch.no_grad():
            out = net(torch.rand(shape))
        assert out.shape == shape
        assert torch.isfinite(out).all()


def test_unet_configurations_and_noise_map():
    x = torch.rand(3, 2, 21, 34)
    net = UNet(in_channels=2, base_channels=8, levels=3, spectral_norm=False, noise_level_input=True)
    assert net(x, sigma=0.1).shape == x.shape
    assert net(x, sigma=torch.tensor([0.05, 0.1, 0.2])).shape == x.shape
    # the sigma channel really feeds the network
    assert not torch.allclose(net(x, sigma=0.05), net(x, sigma=0.3))
    with pytest.raises(InvalidValueError, match="sigma"):
        net(x)
    with pytest.raises(ShapeError):
        net(x, sigma=torch.tensor([0.1, 0.2]))
    direct = UNet(in_channels=1, out_channels=3, base_channels=4, levels=2, output="direct")
    assert direct(torch.rand(1, 1, 11, 13)).shape == (1, 3, 11, 13)
    one_level = UNet(base_channels=4, levels=1, norm_groups=0)
    assert one_level(torch.rand(1, 1, 5, 6)).shape == (1, 1, 5, 6)


def test_output_modes_are_consistent():
    x = torch.rand(2, 1, 19, 24)
    nets = {
        m: UNet(base_channels=8, levels=3, output=m, spectral_norm=False) for m in ("denoised", "residual")
    }
    nets["residual"].load_state_dict(nets["denoised"].state_dict())
    with torch.no_grad():
        d, r = nets["denoised"](x), nets["residual"](x)
        torch.testing.assert_close(d, x - r)  # same body: D(x) = x − N(x)
        for net in nets.values():
            torch.testing.assert_close(net.denoise(x) + net.residual_map(x), x)
        torch.testing.assert_close(nets["residual"].denoise(x), d)
    assert UNet(base_channels=4, levels=2, residual=True).output == "denoised"
    assert nets["denoised"].residual and not nets["residual"].residual
    assert UNet(base_channels=4, levels=2, residual=False).output == "direct"


def test_unet_errors():
    with pytest.raises(ConfigError, match="out_channels"):
        UNet(in_channels=1, out_channels=2)
    with pytest.raises(ConfigError, match="contradicts"):
        UNet(output="residual", residual=True)
    with pytest.raises(ConfigError, match="did you mean"):
        UNet(output="residul")
    with pytest.raises(ConfigError, match="norm_groups"):
        UNet(base_channels=6, norm_groups=4)
    net = UNet(base_channels=4, levels=2)
    with pytest.raises(ShapeError, match="add batch and channel"):
        net(torch.rand(16, 16))
    with pytest.raises(InvalidValueError):
        net(torch.rand(1, 1, 8, 8), sigma=0.1)  # blind network


def _conv_operator_norm(conv: torch.nn.Conv2d, size: int = 12, iters: int = 30) -> float:
    """Largest singular value of the convolution as a linear map on size×size images (power iteration)."""
    w = conv.weight.detach()
    pad, stride = conv.padding, conv.stride
    v = torch.randn(1, w.shape[1], size, size)
    for _ in range(iters):
        v = v / v.norm()
        u = torch.nn.functional.conv2d(v, w, padding=pad, stride=stride)
        v = torch.nn.functional.conv_transpose2d(u, w, padding=pad, stride=stride)
    v = v / v.norm()
    return float(torch.nn.functional.conv2d(v, w, padding=pad, stride=stride).norm())


@pytest.mark.parametrize(
    "factory", [lambda: UNet(spectral_norm=True), lambda: SmoothResUNet(spectral_norm=True)]
)
def test_spectral_norm_bounds_every_conv(factory):
    net = factory().train()
    x = torch.rand(1, 1, 8, 8)
    with torch.no_grad():
        for _ in range(25):  # power-iteration steps, one per training forward (15 more at construction)
            net(x)
    net.eval()
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.ConvTranspose2d)]
    assert convs
    for k, conv in enumerate(convs):
        assert hasattr(conv, "parametrizations"), "every convolution must be spectrally normalised"
        w = conv.weight.detach()
        mat = (w.transpose(0, 1) if isinstance(conv, torch.nn.ConvTranspose2d) else w).flatten(1)
        sigma = float(torch.linalg.matrix_norm(mat, ord=2))
        # torch normalises the reshaped kernel matrix: its norm is 1 up to the error of the power
        # iteration (measured: ≤ 1.02 after 40 iterations on a fresh network; it keeps tracking in training)
        assert 0.97 <= sigma <= 1.03, sigma
        if isinstance(conv, torch.nn.Conv2d) and k < 4:
            # ... which bounds the convolution operator by sqrt(kh·kw) (3 for 3×3), not by 1
            op = _conv_operator_norm(conv)
            assert op <= math.sqrt(w.shape[-1] * w.shape[-2]) * 1.01, op


# --------------------------------------------------------------------------- SmoothResUNet


def test_smooth_resunet_shapes():
    net = SmoothResUNet()
    for shape in [(2, 1, 30, 33), (1, 1, 5, 3), (1, 1, 64, 48)]:
        assert net(torch.rand(shape)).shape == shape
    wide = SmoothResUNet(in_channels=2, channels=(8, 16, 16, 32), blocks_per_level=2, noise_level_input=True)
    assert wide(torch.rand(1, 2, 17, 23), sigma=0.1).shape == (1, 2, 17, 23)
    assert not any(
        isinstance(m, torch.nn.BatchNorm2d | torch.nn.GroupNorm | torch.nn.ReLU | torch.nn.MaxPool2d)
        for m in net.modules()
    )
    with pytest.raises(ConfigError, match="relu"):
        SmoothResUNet(activation="relu")
    with pytest.raises(ConfigError, match="did you mean"):
        SmoothResUNet(activation="softpls")


def test_sigma_scaled_residual_is_the_identity_at_sigma_zero():
    torch.manual_seed(0)
    plain = SmoothResUNet(channels=(8, 16), noise_level_input=True)
    scaled = SmoothResUNet(channels=(8, 16), noise_level_input=True, sigma_scaled_residual=True)
    scaled.load_state_dict(plain.state_dict())  # same parameters: only the read-out differs
    x = torch.rand(3, 1, 15, 16)
    sigma = torch.tensor([0.0, 0.05, 0.2])
    assert torch.equal(scaled(x, sigma)[0], x[0]) and not torch.equal(plain(x, sigma)[0], x[0])
    # residual = sigma * body, per batch item, in every output mode that has a residual
    expected = plain.residual_map(x, sigma) * sigma.reshape(3, 1, 1, 1)
    torch.testing.assert_close(scaled.residual_map(x, sigma), expected)
    torch.testing.assert_close(scaled(x, 0.1), x - 0.1 * plain.residual_map(x, 0.1))
    with pytest.raises(ConfigError, match="noise_level_input"):
        SmoothResUNet(sigma_scaled_residual=True)
    with pytest.raises(ConfigError, match="residual output"):
        SmoothResUNet(noise_level_input=True, output="direct", sigma_scaled_residual=True)


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"activation": "softplus", "bias": True, "output": "direct"}, {"spectral_norm": True}],
    ids=["elu-default", "softplus-bias-direct", "elu-spectral"],
)
def test_smooth_resunet_double_backprop(kwargs):
    net = SmoothResUNet(**kwargs)
    x = torch.rand(2, 1, 30, 33, requires_grad=True)
    target = torch.rand(2, 1, 30, 33)
    # ELDER's gradient-step potential R(x) = ½‖x − N(x)‖², trained through ∇R
    potential = 0.5 * (x - net(x)).pow(2).sum()
    (grad_r,) = torch.autograd.grad(potential, x, create_graph=True)
    loss = (x - 0.5 * grad_r - target).pow(2).mean()
    loss.backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().max() > 0, name


def test_smooth_resunet_second_derivatives_match_finite_differences():
    net = SmoothResUNet(channels=(2, 4), activation="softplus", bias=True).double()
    x = torch.rand(1, 1, 6, 6, dtype=torch.float64, requires_grad=True)

    def grad_potential(z):
        (g,) = torch.autograd.grad(0.5 * (z - net(z)).pow(2).sum(), z, create_graph=True)
        return g

    assert torch.autograd.gradcheck(grad_potential, (x,), eps=1e-6, atol=1e-5)


# --------------------------------------------------------------------------- scico weights


def _scico_path_or_skip(variant: str):
    pytest.importorskip("msgpack", reason="msgpack not installed (pip install msgpack)")
    from deqir.priors.scico_weights import scico_dncnn_path

    try:
        return scico_dncnn_path(variant)
    except DataError as err:
        pytest.skip(f"scico's pretrained DnCNN files are not installed ({err})")


def _probe() -> np.ndarray:
    """A deterministic, non-square, anisotropic noisy test image (no RNG involved)."""
    i, j = np.meshgrid(np.arange(24.0), np.arange(36.0), indexing="ij")
    clean = 0.5 + 0.3 * np.sin(0.45 * i + 0.15 * j) * np.cos(0.3 * j) + 0.15 * (j > 2 * i)
    noise = 2 * (np.sin(12.9898 * i + 78.233 * j) * 43758.5453 % 1.0) - 1
    return (clean + 0.12 * noise).astype(np.float32)


# Outputs of scico 0.0.7's own `scico.denoiser.DnCNN(variant)(probe[, sigma])` (jax 0.10.2, flax 0.12.8),
# at pixels (0,0) (0,35) (23,0) (23,35) (5,17) (12,7) (17,30), then the mean and std of the whole image.
_PIXELS = [(0, 0), (0, 35), (23, 0), (23, 35), (5, 17), (12, 7), (17, 30)]
_SCICO_REFERENCE = {
    ("6M", None): ([0.53321, 0.70733, 0.29133, 0.42986, 0.62298, 0.46322, 0.6234], 0.554293, 0.139958),
    ("17M", None): ([0.58402, 0.74551, 0.3082, 0.39893, 0.59311, 0.48842, 0.60013], 0.555046, 0.156969),
    ("17N", 0.1): ([0.61757, 0.75633, 0.31904, 0.39504, 0.59212, 0.48053, 0.58476], 0.554643, 0.152843),
}


@pytest.mark.parametrize("variant,sigma", list(_SCICO_REFERENCE))
def test_scico_dncnn_matches_scico_outputs(variant, sigma):
    _scico_path_or_skip(variant)
    from deqir.priors.scico_weights import load_scico_dncnn

    net = load_scico_dncnn(variant)
    assert not net.training
    y = torch.from_numpy(_probe())[None, None]
    with torch.no_grad():
        out = (net(y, sigma=sigma) if sigma is not None else net(y))[0, 0].double().numpy()
    pixels, mean, std = _SCICO_REFERENCE[(variant, sigma)]
    np.testing.assert_allclose([out[p] for p in _PIXELS], pixels, atol=2e-5)
    assert out.mean() == pytest.approx(mean, abs=2e-6)
    assert out.std() == pytest.approx(std, abs=2e-6)


def test_scico_dncnn17M_denoises_camera():
    _scico_path_or_skip("17M")
    from skimage.data import camera

    from deqir.priors.scico_weights import load_scico_dncnn

    net = load_scico_dncnn("17M")
    # central 256×256 crop of camera; full 512×512 image gives 29.83 dB (DATA.md: 29.9 dB)
    x = torch.from_numpy(camera()[128:384, 128:384].astype(np.float32) / 255)[None, None]
    y = x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        x_hat = net(y)
    noisy, denoised = _psnr(y, x), _psnr(x_hat, x)
    assert noisy == pytest.approx(20.0, abs=0.1)
    # measured: 20.01 dB -> 29.37 dB (+9.4 dB)
    assert denoised - noisy > 8.5, (noisy, denoised)
    with pytest.raises(InvalidValueError, match="blind"):
        net(y, sigma=0.1)
    with pytest.raises(InvalidValueError, match="sigma"):
        load_scico_dncnn("6N")(y)


def test_scico_corrupt_file_raises_checkpoint_error(tmp_path):
    msgpack = pytest.importorskip("msgpack", reason="msgpack not installed (pip install msgpack)")
    from deqir.priors.scico_weights import load_scico_dncnn, read_flax_msgpack

    garbage = tmp_path / "garbage.mpk"
    garbage.write_bytes(b"\xc1\xff\x00not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.mpk"):
        load_scico_dncnn("6M", path=garbage)
    wrong = tmp_path / "wrong.mpk"
    wrong.write_bytes(msgpack.packb({"params": {"conv_start": {}}}))
    with pytest.raises(CheckpointError, match="wrong.mpk"):
        load_scico_dncnn("6M", path=wrong)
    with pytest.raises(DataError, match="does not exist"):
        read_flax_msgpack(tmp_path / "absent.mpk")
    try:
        from deqir.priors.scico_weights import scico_dncnn_path

        real = scico_dncnn_path("6M")
    except DataError:
        return
    truncated = tmp_path / "dncnn6M_truncated.mpk"
    truncated.write_bytes(real.read_bytes()[:100_000])
    with pytest.raises(CheckpointError, match="dncnn6M_truncated.mpk"):
        load_scico_dncnn("6M", path=truncated)
    with pytest.raises(CheckpointError, match="beyond a 6-layer"):
        load_scico_dncnn("6M", path=scico_dncnn_path("17M"))


def test_scico_missing_package_raises_data_error(monkeypatch):
    import importlib.util

    from deqir.priors import scico_weights

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "scico" else real_find_spec(name, *a)
    )
    with pytest.raises(DataError, match="pip install --no-deps scico") as info:
        scico_weights.load_scico_dncnn("17M")
    assert isinstance(info.value, DeqirError)
    with pytest.raises(InvalidValueError, match="did you mean"):
        scico_weights.load_scico_dncnn("17m")


def test_import_is_cheap():
    import subprocess
    import sys

    code = (
        "import sys; import deqir.priors.unet, deqir.priors.drunet, deqir.priors.scico_weights; "
        "bad = [m for m in ('jax', 'flax', 'scico', 'msgpack', 'skimage', 'scipy') if m in sys.modules]; "
        "print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
