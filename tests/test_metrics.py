"""Metrics: PSNR, SNR and SSIM on known values, batching and errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from deqir.errors import DTypeError, InvalidValueError, ShapeError
from deqir.metrics import compute_metrics, mse, psnr, snr, ssim


def _rand(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def test_psnr_constant_offset_is_known():
    x = _rand(3, 1, 16, 16) * 0.8
    for offset, expected in [(0.1, 20.0), (0.01, 40.0), (0.5, 10 * math.log10(4))]:
        got = psnr(x + offset, x)
        assert got.shape == (3,)
        torch.testing.assert_close(got, torch.full((3,), expected), atol=1e-4, rtol=0)


def test_psnr_peak_and_per_image_values():
    x = torch.zeros(2, 1, 8, 8)
    x_hat = torch.stack([torch.full((1, 8, 8), 25.5), torch.full((1, 8, 8), 2.55)])
    torch.testing.assert_close(psnr(x_hat, x, peak=255.0), torch.tensor([20.0, 40.0]), atol=1e-4, rtol=0)
    assert torch.isinf(psnr(x, x)).all()
    with pytest.raises(InvalidValueError):
        psnr(x, x, peak=0)


def test_snr_matches_definition_and_is_scale_invariant():
    x = _rand(4, 2, 8, 8, seed=1) + 0.1
    noise = 0.05 * torch.randn(4, 2, 8, 8, generator=torch.Generator().manual_seed(2))
    got = snr(x + noise, x)
    want = torch.stack([20 * torch.log10(x[i].norm() / noise[i].norm()) for i in range(4)])
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    torch.testing.assert_close(snr(3 * (x + noise), 3 * x), got, atol=1e-4, rtol=0)
    torch.testing.assert_close(
        snr(0.9 * torch.ones(1, 1, 4, 4), torch.ones(1, 1, 4, 4)), torch.tensor([20.0]), atol=1e-4, rtol=0
    )


def test_ssim_identical_is_one_and_decreases_with_noise():
    x = _rand(2, 1, 48, 48, seed=3)
    torch.testing.assert_close(ssim(x, x), torch.ones(2))
    g = torch.Generator().manual_seed(4)
    values = [ssim(x + s * torch.randn(x.shape, generator=g), x) for s in (0.02, 0.1, 0.3)]
    assert all((a > b).all() for a, b in zip(values, values[1:], strict=False))
    assert (values[0] > 0.95).all() and (values[-1] < 0.8).all()


def test_ssim_matches_skimage_and_averages_channels():
    from skimage.metrics import structural_similarity

    x = _rand(1, 3, 32, 32, seed=5)
    y = (x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(6))).clamp(0, 1)
    want = np.mean(
        [
            structural_similarity(
                y[0, c].double().numpy(),
                x[0, c].double().numpy(),
                data_range=1.0,
                gaussian_weights=True,
                sigma=1.5,
                use_sample_covariance=False,
            )
            for c in range(3)
        ]
    )
    assert abs(float(ssim(y, x)[0]) - want) < 1e-6


def test_single_image_gives_scalar_and_dtype_device_kept():
    x = _rand(16, 16, seed=7)
    assert psnr(x + 0.1, x).ndim == 0
    assert snr(x + 0.1, x).ndim == 0
    assert ssim(x, x).ndim == 0
    x64 = _rand(1, 1, 16, 16).double()
    assert psnr(x64 + 0.1, x64).dtype == torch.float64
    assert ssim(x64, x64).dtype == torch.float64
    assert float(mse(torch.ones(2, 2), torch.zeros(2, 2))) == 1.0


def test_psnr_and_snr_are_differentiable():
    x = _rand(2, 1, 8, 8, seed=8)
    x_hat = (x + 0.1).requires_grad_()
    (psnr(x_hat, x).sum() + snr(x_hat, x).sum()).backward()
    assert x_hat.grad is not None and torch.isfinite(x_hat.grad).all()


def test_errors():
    x = torch.zeros(2, 1, 16, 16)
    for fn in (psnr, snr, ssim, mse):
        with pytest.raises(ShapeError, match="shape"):
            fn(x, torch.zeros(2, 1, 16, 15))
    with pytest.raises(ShapeError, match="7 x 7"):
        ssim(torch.zeros(1, 1, 5, 5), torch.zeros(1, 1, 5, 5))
    with pytest.raises(DTypeError, match="abs"):
        psnr(torch.zeros(1, 1, 4, 4, dtype=torch.complex64), torch.zeros(1, 1, 4, 4, dtype=torch.complex64))
    with pytest.raises(ShapeError):
        psnr(torch.zeros(1, 1, 1, 4, 4), torch.zeros(1, 1, 1, 4, 4))
    with pytest.raises(DTypeError):
        psnr(np.zeros((4, 4)), np.zeros((4, 4)))


def test_compute_metrics():
    x = _rand(2, 1, 16, 16, seed=9)
    out = compute_metrics(x * 0.9, x)
    assert sorted(out) == ["psnr", "snr", "ssim"]
    assert all(v.shape == (2,) for v in out.values())
