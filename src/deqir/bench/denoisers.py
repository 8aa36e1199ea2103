"""Benchmark of the shipped pretrained denoisers against scico's DnCNN and a classical baseline.

Test PSNR (peak 1) and SSIM at Gaussian noise sigma = 15, 25 and 50 (/255) on held-out test
images, noise from :func:`deqir.priors.pretrained.add_test_noise` (seed 0, the same noisy
images ``deqir weights export`` measures on), every output clipped to ``[0, 1]``. Domains:

* ``natural``: the test split of the ``natural`` photographs (256 x 256);
* ``ct``: the real CT slices of the ``ct`` source (test only, never trained on; 256 x 256);
* ``ct_like``: the test split of ``ct_phantoms+brain`` (what the CT denoiser trains on);
* ``mri``: the test split of the ``brain`` slices.

Methods: the noisy input; our three pretrained denoisers (``deqir_natural``, ``deqir_ct``,
``deqir_mri``; each given the true sigma) on every domain; when scico's weight files are
installed, scico's DnCNN-6 and DnCNN-17 with the variant a fair user would pick for each sigma
(the one trained nearest to it: L (0.06) for 15, M (0.10) for 25, H (0.20) for 50) and DnCNN-17M
everywhere; and total-variation denoising (``skimage.restoration.denoise_tv_chambolle``) with its
weight tuned per domain and sigma on the validation split (CT: the ``ct_like`` validation split).

Low noise: each domain's own denoiser also runs on the clean images at sigma 0 and on
sigma = 1/255 (48 dB) noise, where PnP/RED at 40-50 dB input SNR call it; it should be (near)
the identity there (rows with ``variant="low_noise_check"``; PSNR capped at 100 dB). The same
test images made at 128² (the size ``deqir bench baselines`` and ODER work at; finer detail per
pixel than at 256²) are denoised at sigma = 2/255 (rows with ``variant="low_noise_128"``).

Summary: ``natural_vs_scico17_at_25`` (our natural PSNR minus scico DnCNN-17's at sigma 25, dB;
positive: ours is ahead), the same at 15 and 50 and against 17M, our PSNR per domain and sigma
(``psnr_<domain>_<sigma>``, each domain's own denoiser) and the noisy input's;
``identity_max_abs_error_<domain>`` (``max |D(x, 0) - x|``), ``low_noise_gain_<domain>_db``
(PSNR of ``D`` minus that of its input at sigma 1/255) and ``low_noise_gain_128_<domain>_db``
(the same at 128² and sigma 2/255).

``deqir bench denoisers --json results/denoisers.json`` also writes ``results/denoisers.png``
(noisy / ours / scico DnCNN-17M / clean crops at sigma 25) next to the JSON.

Example:
    $ deqir bench denoisers --quick --json out/denoisers_quick.json
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from deqir.bench.common import BenchReport

SIGMAS = (15, 25, 50)
#: sigma (/255) of the low-noise check of each domain's own denoiser (0: the clean image itself)
LOW_SIGMAS = (0, 1)
#: sigma (/255) and image size of the low-noise check at the size PnP/RED run at in the benches
LOW_SIGMA_SMALL, SMALL_SIZE = 2, 128
#: domain -> (test source, validation source used to tune the classical baseline, our model)
DOMAINS: dict[str, tuple[str, str, str]] = {
    "natural": ("natural", "natural", "natural"),
    "ct": ("ct", "ct_phantoms+brain", "ct"),
    "ct_like": ("ct_phantoms+brain", "ct_phantoms+brain", "ct"),
    "mri": ("brain", "brain", "mri"),
}
#: the scico variant trained nearest to each sigma (L: 0.06, M: 0.10, H: 0.20).
SCICO_PICK = {15: "L", 25: "M", 50: "H"}
TV_WEIGHTS = (0.02, 0.04, 0.06, 0.09, 0.13, 0.18, 0.25)
IMAGE_SIZE = 256
QUICK_CROP = 128
FIGURE_CROP = 128


@dataclass
class DenoiserReport(BenchReport):
    """A :class:`BenchReport` that also saves a PNG figure next to its JSON."""

    panels: list[dict[str, Any]] = field(default_factory=list, repr=False)

    def save(self, path: str | Path) -> Path:
        """Write the JSON report and ``<path stem>.png`` beside it."""
        path = super().save(path)
        if self.panels:
            save_figure(self.panels, path.with_suffix(".png"))
        return path


def _images(
    source: str, split: str, limit: int | None, crop: int | None = None, size: int = IMAGE_SIZE
) -> torch.Tensor | None:
    from deqir.data import build_dataset

    part = getattr(build_dataset(source, size), split)
    if len(part) == 0:
        return None
    x = part.stack()[:limit] if limit else part.stack()
    if crop:
        top = (x.shape[-1] - crop) // 2
        x = x[..., top : top + crop, top : top + crop]
    return x


def _batched(fn, noisy: torch.Tensor, batch: int = 4) -> torch.Tensor:
    with torch.no_grad():
        out = torch.cat([fn(noisy[i : i + batch]) for i in range(0, noisy.shape[0], batch)])
    return out.clamp(0, 1)


def _tv(noisy: torch.Tensor, weight: float) -> torch.Tensor:
    from skimage.restoration import denoise_tv_chambolle

    out = [torch.from_numpy(denoise_tv_chambolle(img[0].double().numpy(), weight=weight)) for img in noisy]
    return torch.stack(out)[:, None].float().clamp(0, 1)


def _load_ours() -> tuple[dict[str, torch.nn.Module], dict[str, str]]:
    from deqir.errors import DeqirError
    from deqir.priors.pretrained import PRETRAINED, load_pretrained

    nets, missing = {}, {}
    for name in PRETRAINED:
        try:
            nets[name] = load_pretrained(name)
        except DeqirError as err:
            missing[name] = str(err)
    return nets, missing


def _load_scico(variants: set[str]) -> tuple[dict[str, torch.nn.Module], str | None]:
    from deqir.priors.scico_weights import load_scico_dncnn

    nets = {}
    try:
        for v in sorted(variants):
            nets[v] = load_scico_dncnn(v).eval()
    except Exception as err:  # scico not installed or its files unreadable: skip its rows
        return {}, f"{type(err).__name__}: {err}"
    return nets, None


def run(quick: bool = False) -> DenoiserReport:
    """Run the benchmark; ``quick``: two 128 x 128 centre crops per domain, fewer TV weights, and
    DnCNN-17M only at sigma 25.

    Example:
        >>> from deqir.bench.denoisers import run
        >>> report = run(quick=True)  # doctest: +SKIP
        >>> report.summary["natural_vs_scico17_at_25"] > -0.5  # doctest: +SKIP
        True
    """
    from deqir.metrics import psnr, ssim
    from deqir.priors.pretrained import add_test_noise

    limit = 2 if quick else 16
    crop = QUICK_CROP if quick else None
    ours, missing = _load_ours()
    scico_variants = {f"{d}{SCICO_PICK[s]}" for d in (6, 17) for s in SIGMAS} | {"17M"}
    scico, scico_error = _load_scico(scico_variants)
    report = DenoiserReport(
        "denoisers",
        config={
            "quick": quick,
            "sigmas_over_255": list(SIGMAS),
            "low_noise_sigmas_over_255": list(LOW_SIGMAS),
            "low_noise_at_small_size": {"sigma_over_255": LOW_SIGMA_SMALL, "image_size": SMALL_SIZE},
            "image_size": IMAGE_SIZE,
            "max_test_images_per_domain": limit,
            "quick_centre_crop": crop,
            "domains": {
                k: {"test": v[0], "tv_tuned_on_val_of": v[1], "own_model": v[2]} for k, v in DOMAINS.items()
            },
            "noise": "deqir.priors.pretrained.add_test_noise(clean, sigma/255, seed=0)",
            "output": "denoised outputs clipped to [0, 1] (noisy input: raw); PSNR peak 1; SSIM "
            "data_range 1 (skimage); mean over images",
            "ours": "deqir.priors.load_pretrained(name), called as net(noisy, sigma) with the true sigma",
            "scico_pick": {str(s): f"DnCNN-6{v} / DnCNN-17{v}" for s, v in SCICO_PICK.items()},
            "scico_pick_rule": "the variant trained nearest to the test sigma (L 0.06, M 0.10, H 0.20)",
            "scico_17M_everywhere": "also DnCNN-17M (trained at sigma 0.10) at every sigma (quick: 25 only)",
            "scico_error": scico_error,
            "missing_pretrained": missing,
            "tv": "skimage denoise_tv_chambolle, weight from "
            f"{list(TV_WEIGHTS if not quick else TV_WEIGHTS[1::2])} tuned on <= 3 validation images",
        },
    )
    tv_weights = TV_WEIGHTS if not quick else TV_WEIGHTS[1::2]
    results: dict[tuple[str, int, str], float] = {}
    low_noise: dict[str, Any] = {}
    for domain, (test_source, val_source, own) in DOMAINS.items():
        clean = _images(test_source, "test", limit, crop)
        if clean is None:
            continue
        val = _images(val_source, "val", 2 if quick else 3, crop)
        for s in SIGMAS:
            sigma = s / 255
            noisy = add_test_noise(clean, sigma, seed=0)
            methods: dict[str, Any] = {"noisy": None}
            variants: dict[str, str] = {}
            for name, net in ours.items():
                methods[f"deqir_{name}"] = lambda y, net=net, sigma=sigma: net(y, sigma)
            for depth in (6, 17):
                v = f"{depth}{SCICO_PICK[s]}"
                if v in scico:
                    methods[f"scico_dncnn{depth}"] = scico[v]
                    variants[f"scico_dncnn{depth}"] = v
            if "17M" in scico and not (quick and s != 25):
                methods["scico_dncnn17M"] = scico["17M"]
                variants["scico_dncnn17M"] = "17M"
            weight = None
            if val is not None:
                weight = _tune_tv_grid(val, sigma, tv_weights)
                methods["tv"] = lambda y, w=weight: _tv(y, w)
            done: dict[str, torch.Tensor] = {}
            for method, fn in methods.items():
                t0 = time.perf_counter()
                if method == "noisy":
                    out = noisy  # the raw noisy input, not clipped
                elif method == "scico_dncnn17M" and variants.get("scico_dncnn17") == "17M":
                    out = done["scico_dncnn17"]  # the same network at sigma 25
                elif method == "tv":
                    out = fn(noisy)
                else:
                    out = _batched(fn, noisy)
                done[method] = out
                seconds = time.perf_counter() - t0
                p = float(psnr(out, clean).mean())
                results[(domain, s, method)] = p
                report.add_row(
                    domain=domain,
                    sigma=s,
                    method=method,
                    psnr=round(p, 3),
                    ssim=round(float(ssim(out, clean).mean()), 4),
                    images=int(clean.shape[0]),
                    variant=variants.get(method),
                    tv_weight=weight if method == "tv" else None,
                    seconds=round(seconds, 3),
                )
                if s == 25 and method in ("noisy", f"deqir_{own}", "scico_dncnn17M") and domain != "ct_like":
                    _add_panel(report, domain, method, clean, out, p)
        if own in ours:
            low_noise.update(_low_noise(report, domain, own, ours[own], clean))
            small = _images(test_source, "test", limit, None, size=SMALL_SIZE)
            low_noise.update(
                _low_noise(
                    report,
                    domain,
                    own,
                    ours[own],
                    small,
                    sigmas=(LOW_SIGMA_SMALL,),
                    variant=f"low_noise_{SMALL_SIZE}",
                    gain_key=f"low_noise_gain_{SMALL_SIZE}_{domain}_db",
                )
            )
    _summarise(report, results)
    report.summary.update(low_noise)
    return report


def _low_noise(
    report: DenoiserReport,
    domain: str,
    own: str,
    net: Any,
    clean: torch.Tensor,
    sigmas: tuple[int, ...] = LOW_SIGMAS,
    variant: str = "low_noise_check",
    gain_key: str | None = None,
) -> dict[str, Any]:
    """Rows and summary entries of a low-noise check (see the module docstring).

    The gain at the last nonzero sigma goes to ``gain_key`` (default ``low_noise_gain_<domain>_db``).
    """
    from deqir.metrics import psnr, ssim
    from deqir.priors.pretrained import add_test_noise

    out: dict[str, Any] = {}
    for s in sigmas:
        sigma = s / 255
        noisy = add_test_noise(clean, sigma, seed=0) if s else clean
        denoised = _batched(lambda y, sigma=sigma: net(y, sigma), noisy)
        if s == 0:
            out[f"identity_max_abs_error_{domain}"] = float((denoised - clean).abs().max())
        pairs = [(f"deqir_{own}", denoised)] + ([("noisy", noisy)] if s else [])
        for method, x in pairs:
            report.add_row(
                domain=domain,
                sigma=s,
                method=method,
                psnr=round(float(psnr(x, clean).clamp_max(100.0).mean()), 3),
                ssim=round(float(ssim(x, clean).mean()), 4),
                images=int(clean.shape[0]),
                variant=variant,
                tv_weight=None,
                seconds=None,
            )
        if s:
            gain = psnr(denoised, clean) - psnr(noisy, clean)
            out[gain_key or f"low_noise_gain_{domain}_db"] = round(float(gain.mean()), 3)
    return out


def _tune_tv_grid(val: torch.Tensor, sigma: float, weights: tuple[float, ...]) -> float:
    from deqir.metrics import psnr
    from deqir.priors.pretrained import add_test_noise

    noisy = add_test_noise(val, sigma, seed=1)  # validation images, not the test noise
    scores = {w: float(psnr(_tv(noisy, w), val).mean()) for w in weights}
    return max(scores, key=scores.get)


def _add_panel(
    report: DenoiserReport, domain: str, method: str, clean: torch.Tensor, out: torch.Tensor, mean_psnr: float
) -> None:
    from deqir.metrics import psnr

    panel = next((p for p in report.panels if p["domain"] == domain), None)
    if panel is None:
        panel = {"domain": domain, "images": {}, "psnr": {}}
        report.panels.append(panel)
        panel["images"]["clean"] = _crop(clean[0])
    panel["images"][method] = _crop(out[0])
    panel["psnr"][method] = (float(psnr(out[0], clean[0])), mean_psnr)


def _crop(img: torch.Tensor) -> torch.Tensor:
    h, w = img.shape[-2:]
    c = FIGURE_CROP
    top, left = (h - c) // 2, (w - c) // 2
    return img[0, top : top + c, left : left + c].clone()


def _summarise(report: DenoiserReport, results: dict[tuple[str, int, str], float]) -> None:
    def diff(a: str, b: str, domain: str, s: int) -> float | None:
        if (domain, s, a) in results and (domain, s, b) in results:
            return round(results[(domain, s, a)] - results[(domain, s, b)], 3)
        return None

    summary: dict[str, Any] = {
        "natural_vs_scico17_at_25": diff("deqir_natural", "scico_dncnn17", "natural", 25)
    }
    for s in SIGMAS:
        if s != 25:
            summary[f"natural_vs_scico17_at_{s}"] = diff("deqir_natural", "scico_dncnn17", "natural", s)
    for s in SIGMAS:
        summary[f"natural_vs_scico17M_at_{s}"] = diff("deqir_natural", "scico_dncnn17M", "natural", s)
    for domain, (_, _, own) in DOMAINS.items():
        for s in SIGMAS:
            value = results.get((domain, s, f"deqir_{own}"))
            summary[f"psnr_{domain}_{s}"] = None if value is None else round(value, 3)
    for domain in DOMAINS:
        for s in SIGMAS:
            value = results.get((domain, s, "noisy"))
            summary[f"noisy_{domain}_{s}"] = None if value is None else round(value, 3)
    report.summary.update(summary)


def save_figure(panels: list[dict[str, Any]], path: str | Path) -> Path:
    """Crops at sigma 25: one row per domain, columns noisy / ours / scico DnCNN-17M / clean."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = ["noisy", "deqir", "scico_dncnn17M", "clean"]
    fig, axes = plt.subplots(len(panels), len(columns), figsize=(2.4 * len(columns), 2.5 * len(panels)))
    axes = [axes] if len(panels) == 1 else axes
    for row, panel in zip(axes, panels, strict=True):
        images = panel["images"]
        for ax, col in zip(row, columns, strict=True):
            key = next((k for k in images if k.startswith(col)), None)
            ax.axis("off")
            if key is None:
                ax.set_title(f"{col}: n/a", fontsize=8)
                continue
            ax.imshow(images[key].numpy(), cmap="gray", vmin=0, vmax=1)
            title = f"{panel['domain']}: {key}"
            if key in panel["psnr"]:
                title += "\n{:.2f} dB (mean {:.2f})".format(*panel["psnr"][key])
            ax.set_title(title, fontsize=8)
    fig.suptitle("Gaussian noise sigma = 25/255 (centre crops)", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
