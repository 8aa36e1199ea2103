"""The job ``make demo`` runs: every modality simulated on an offline image, reconstructed classically.

For each task (Gaussian and motion deblurring, ×2 super-resolution, sparse-view CT, single-coil
Cartesian and radial MRI, multi-coil MRI) the demo takes an image that ships with an installed
package (a photo, a real CT slice, a brain MRI slice; the Shepp–Logan phantom when a source is
missing), simulates noisy measurements, reconstructs with the task's classical baseline and
writes, under ``out/``:

- ``demo.png``: ground truth, measurements, reconstruction and error map, one row per task;
- ``demo_metrics.json`` and ``demo_metrics.md``: PSNR, SNR and SSIM of the initial estimate
  (the blurred or upsampled input, where there is one) and of the reconstruction, per task.

Baselines: Tikhonov (closed-form prox of the data term with the regularisation weight set by
the discrepancy principle, which uses the noise level and never the ground truth) for blur and
super-resolution, FBP with the Hann filter for CT, zero-filled ``A^H y`` for MRI.

Example:
    >>> from deqir.demo import run_demo
    >>> table = run_demo("out", size=64, tasks=["blur"], progress=False)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deqir.errors import DeqirError, InvalidValueError, unknown_name_message

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoTask:
    """One row of the demo: an operator from the registry, an image source and a noise level."""

    name: str
    operator: str
    source: str
    baseline: str
    noise_sigma: float | None = None
    noise_snr_db: float | None = None
    operator_kwargs: tuple[tuple[str, Any], ...] = ()


#: The demo's tasks, in figure order.
TASKS: tuple[DemoTask, ...] = (
    DemoTask("deblur (Gaussian)", "blur", "natural", "tikhonov", noise_sigma=0.01),
    DemoTask("deblur (motion)", "motion_blur", "natural", "tikhonov", noise_sigma=0.01),
    DemoTask("super-resolution x2", "superres", "natural", "tikhonov", noise_sigma=0.01),
    DemoTask("sparse-view CT (90 angles)", "ct", "ct", "fbp", noise_snr_db=50.0),
    DemoTask("MRI single-coil (4x random)", "mri_single", "brain", "zero_filled", noise_snr_db=40.0),
    DemoTask("MRI single-coil (30% radial)", "mri_radial", "brain", "zero_filled", noise_snr_db=40.0),
    DemoTask("MRI 8 coils (4x random)", "mri_multi", "brain", "zero_filled", noise_snr_db=40.0),
)

_TASK_KEYS = {t.operator: t for t in TASKS}


def demo_image(source: str, size: int) -> tuple[torch.Tensor, str]:
    """An offline ``(1, 1, size, size)`` image of ``source`` and its key.

    ``natural`` takes scikit-image's camera man, ``ct`` the first real CT slice, ``brain`` the
    slice of the first volume with the most tissue; a source not installed here falls back to
    the Shepp–Logan phantom with one log line.

    Example:
        >>> x, key = demo_image("ct_phantoms", 32)
        >>> tuple(x.shape), key
        ((1, 1, 32, 32), 'shepp_logan')
    """
    from deqir.data.sources import get_source
    from deqir.data.splits import fit_image

    src = get_source(source)
    preferred = {"natural": "skimage/camera"}.get(source)
    try:
        entries = src.entries()
        if not entries:
            raise DeqirError(f"data source '{source}' has no images here")
        chosen = next((e for e in entries if e.key == preferred), entries[0])
        samples = chosen.load(size)
        if not samples:
            raise DeqirError(f"'{chosen.key}' holds no image")
        best = max(samples, key=lambda s: float((s.image > 0.1).mean()))
        image, key = fit_image(best.image, size, src.fit), best.key
    except DeqirError as err:
        from deqir.data.phantoms import shepp_logan

        logger.warning("demo: %s; using the Shepp-Logan phantom instead", err)
        image, key = fit_image(shepp_logan(size), size, "resize"), "shepp_logan"
    return torch.from_numpy(np.ascontiguousarray(image)).float()[None, None], key


def _input_estimate(task: DemoTask, y: torch.Tensor, size: int) -> torch.Tensor | None:
    """The measured image itself where there is one (blurred, or upsampled low-resolution)."""
    if task.operator in ("blur", "motion_blur"):
        return y
    if task.operator == "superres":
        return torch.nn.functional.interpolate(y, size=(size, size), mode="bicubic", align_corners=False)
    return None


_LABELS = {
    "tikhonov": "Tikhonov (discrepancy principle)",
    "fbp": "FBP, Hann filter",
    "zero_filled": "zero-filled A^H y",
}


def run_demo(
    out: str | Path = "out",
    size: int = 128,
    seed: int = 0,
    tasks: Sequence[str] | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Simulate and reconstruct every task; write ``demo.png`` and the metrics tables to ``out``.

    Args:
        out: output folder (created).
        size: image side in pixels (at least 32).
        seed: seed of the noise.
        tasks: operator names to run (default: all of :data:`TASKS`).
        progress: show a progress bar.

    Returns:
        One row per task: task, operator, image, baseline, noise, and metrics of the initial
        estimate and the reconstruction.

    Example:
        >>> rows = run_demo("out", size=64, tasks=["ct"], progress=False)  # doctest: +SKIP
        >>> rows[0]["recon_psnr"] > rows[0]["init_psnr"]  # doctest: +SKIP
        True
    """
    from tqdm.auto import tqdm

    from deqir.figures import as_picture
    from deqir.methods.classical import classical_reconstruction
    from deqir.metrics import compute_metrics
    from deqir.physics.noise import GaussianNoise
    from deqir.physics.registry import build_operator

    if int(size) < 32:
        raise InvalidValueError(f"demo size must be at least 32 pixels; got {size}")
    chosen = list(TASKS)
    if tasks is not None:
        for name in tasks:
            if name not in _TASK_KEYS:
                raise InvalidValueError(unknown_name_message("demo task", name, list(_TASK_KEYS)))
        chosen = [_TASK_KEYS[n] for n in tasks]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    rows: list[dict[str, Any]] = []
    pictures: list[tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
    bar = tqdm(chosen, desc="demo", unit="task", disable=not progress)
    for task in bar:
        bar.set_postfix_str(task.operator)
        start = time.perf_counter()
        x, key = demo_image(task.source, size)
        op = build_operator(task.operator, image_size=size, **dict(task.operator_kwargs))
        clean = op.A(x)
        noise = GaussianNoise(sigma=task.noise_sigma, snr_db=task.noise_snr_db)
        y = noise(clean, generator=generator)
        sigma = float((y - clean).abs().pow(2).mean().sqrt())
        with torch.no_grad():
            x_init = _input_estimate(task, y, size)
            x_rec = classical_reconstruction(op, y, task.baseline, noise_sigma=sigma)
        how = _LABELS[task.baseline]
        x_rec = x_rec.clamp(0, 1)
        row: dict[str, Any] = {
            "task": task.name,
            "operator": task.operator,
            "image": key,
            "baseline": how,
            "noise": f"σ={task.noise_sigma}" if task.noise_sigma is not None else f"{task.noise_snr_db:g} dB",
        }
        if x_init is not None:
            init = compute_metrics(x_init.clamp(0, 1), x)
            row.update(
                {f"init_{k}": round(float(v), 3) for k, v in init.items() if k in ("psnr", "snr", "ssim")}
            )
        rec = compute_metrics(x_rec, x)
        row.update({f"recon_{k}": round(float(v), 3) for k, v in rec.items() if k in ("psnr", "snr", "ssim")})
        row["seconds"] = round(time.perf_counter() - start, 3)
        rows.append(row)
        pictures.append(
            (
                task.name,
                x[0, 0].numpy(),
                as_picture(y),
                x_rec[0, 0].numpy(),
                (x_rec - x)[0, 0].abs().numpy(),
            )
        )
    _write_tables(out, rows, size, seed)
    _write_figure(out / "demo.png", pictures, rows)
    if tasks is None:
        oder_demo(out, seed=seed)
    return rows


def oder_demo(out: str | Path = "out", seed: int = 0) -> list[dict[str, Any]] | None:
    """A real CT slice (128², 90 angles, 50 dB) by FBP, RED(DEQ) and ODER (30 of 90 angles).

    Uses the shipped ODER weights (``make oder`` trains them); without them it logs one line
    and returns ``None``. Writes ``demo_oder.png`` and ``demo_oder.{json,md}`` under ``out``.

    Example:
        >>> rows = oder_demo("out")  # doctest: +SKIP
    """
    from deqir.bench.common import WEIGHTS_DIR, load_shipped
    from deqir.figures import Panel, panel_grid
    from deqir.methods.baselines import simulate
    from deqir.metrics import compute_metrics
    from deqir.physics.registry import build_operator

    names = {"RED(DEQ)": "oder_ct_red_deq", "ODER w=30/90": "oder_ct_w30"}
    if not all((WEIGHTS_DIR / f"{n}.safetensors").is_file() for n in names.values()):
        logger.warning("demo: no shipped ODER weights (run `make oder`); skipping the ODER CT demo")
        return None
    out = Path(out)
    x, key = demo_image("ct", 128)
    op = build_operator("ct", image_size=128, num_angles=90)
    y = simulate(op, x, noise_snr_db=50.0, seed=seed)
    x0 = op.fbp(y).clamp_min(0)
    recs = {"FBP (Hann)": op.fbp(y, filter="hann").clamp(0, 1)}
    for label, name in names.items():
        model = load_shipped(name)
        with torch.no_grad():
            recs[label] = model(y, op, init=x0).clamp(0, 1)
    rows, panels = [], [Panel(x[0, 0].numpy(), f"{key}\nground truth", limits=(0, 1))]
    for label, rec in recs.items():
        m = compute_metrics(rec, x)
        row = {"method": label, **{k: round(float(m[k]), 3) for k in ("snr", "psnr", "ssim")}}
        rows.append(row)
        panels.append(Panel(rec[0, 0].numpy(), f"{label}\nSNR {row['snr']:.2f} dB", limits=(0, 1)))
    panel_grid(out / "demo_oder.png", [panels])
    (out / "demo_oder.json").write_text(json.dumps({"image": key, "rows": rows}, indent=2))
    lines = ["| method | SNR | PSNR | SSIM |", "|---|---:|---:|---:|"]
    lines += [f"| {r['method']} | {r['snr']:.2f} | {r['psnr']:.2f} | {r['ssim']:.3f} |" for r in rows]
    (out / "demo_oder.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {out / 'demo_oder.png'}, {out / 'demo_oder.md'}")
    return rows


def _write_tables(out: Path, rows: list[dict[str, Any]], size: int, seed: int) -> None:
    import deqir

    payload = {"deqir_version": deqir.__version__, "image_size": size, "seed": seed, "rows": rows}
    tmp = out / "demo_metrics.json.tmp"
    tmp.write_text(json.dumps(payload, indent=2, ensure_ascii=False))
    tmp.replace(out / "demo_metrics.json")
    lines = [
        "| task | image | baseline | noise | init PSNR | PSNR | SNR | SSIM |",
        "|---|---|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        init = f"{r['init_psnr']:.2f}" if "init_psnr" in r else "–"
        lines.append(
            f"| {r['task']} | {r['image']} | {r['baseline']} | {r['noise']} | {init} | "
            f"{r['recon_psnr']:.2f} | {r['recon_snr']:.2f} | {r['recon_ssim']:.3f} |"
        )
    (out / "demo_metrics.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {out / 'demo.png'}, {out / 'demo_metrics.json'}, {out / 'demo_metrics.md'}")


def _write_figure(path: Path, pictures, rows) -> None:
    from deqir.figures import Panel, panel_grid

    grid = []
    for (name, gt, meas, rec, err), row in zip(pictures, rows, strict=True):
        title = f"{row['baseline']}\nPSNR {row['recon_psnr']:.2f} dB, SSIM {row['recon_ssim']:.3f}"
        grid.append(
            [
                Panel(gt, f"{name}\nground truth", limits=(0, 1)),
                Panel(meas, "measurements"),
                Panel(rec, title, limits=(0, 1)),
                Panel(err, "|error|", cmap="magma", limits=(0, 0.25)),
            ]
        )
    panel_grid(path, grid)
