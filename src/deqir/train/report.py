"""Evaluate a finished run: a metrics table (JSON and Markdown) and PNG figures.

:func:`evaluate_run` rebuilds the run's model from its ``config.yaml``, loads its best (or
final) weights, simulates the evaluation measurements (seeded, so every evaluation and every
compared run sees the same ones) and writes into ``RUN/report/``:

* ``metrics.json`` and ``metrics.md``: PSNR (peak 1) and SNR (``20 log10 ||x|| / ||x - x̂||``),
  mean and standard deviation over the images, for the initialisation (the noisy input, or
  ``A^T y``), the run's model and any runs given in ``compare``;
* ``comparison.png``: ground truth, initialisation, each reconstruction and its error map,
  side by side, one row per image;
* ``training.png``: training loss and validation PSNR against the step (from ``log.jsonl``);
* ``iterations.png``: residual and PSNR against the iteration, for models that expose their
  iterates through the optional hook ``model.iterates(*args, **kwargs) -> list[Tensor]``
  (same arguments as ``forward``).

Matplotlib is imported only here, with the Agg canvas (no display needed).

Example:
    >>> from deqir.train.report import evaluate_run
    >>> result = evaluate_run("runs/denoiser_tiny")  # doctest: +SKIP
    >>> print(result["table"])  # doctest: +SKIP
    | method | psnr | psnr_std | snr | snr_std |
    ...
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from deqir.errors import ConfigError, DataError
from deqir.metrics import psnr, snr
from deqir.train import seeding

_TASK_SECTIONS = ("data", "physics")


def _read_config(run_dir: Path) -> Any:
    from deqir.train.config import load_config

    if not (run_dir / "config.yaml").is_file():
        raise DataError(
            f"{run_dir} is not a run folder (no config.yaml); pass the folder that "
            "`deqir train` printed, e.g. runs/NAME"
        )
    return load_config(run_dir / "config.yaml")


def load_run_model(run_dir: str | Path, weights: str = "best", device: str = "cpu") -> torch.nn.Module:
    """The model of a training run's folder (its ``config.yaml`` and ``weights/<weights>.safetensors``),
    in eval mode; its initial weights (``model.weights``) are not read.

    Example:
        >>> load_run_model("runs/oder_ct_w30_nosn").mode  # doctest: +SKIP
        'oder'
    """
    run_dir = Path(run_dir)
    return _load_model(run_dir, _read_config(run_dir), weights, torch.device(device))


def _load_model(run_dir: Path, cfg: Any, weights: str, device: torch.device) -> torch.nn.Module:
    from deqir.train.checkpoint import load_weights
    from deqir.train.trainer import build_model_from_config

    model = build_model_from_config(cfg, initial_weights=False)
    load_weights(run_dir / "weights" / f"{weights}.safetensors", model)
    return model.to(device).eval()


def _run_model(task: Any, model: torch.nn.Module, sample: Any) -> torch.Tensor:
    with torch.set_grad_enabled(bool(getattr(model, "requires_grad_in_forward", False))):
        out = task.predict(model, sample).detach()
    return out.abs() if out.is_complex() else out


def evaluate_run(
    run_dir: str | Path,
    weights: str | None = None,
    split: str | None = None,
    num_images: int | None = None,
    out_dir: str | Path | None = None,
    device: str = "auto",
    compare: list[str | Path] | None = None,
    figures: bool = True,
) -> dict[str, Any]:
    """Evaluate a run folder and write its report (see the module docstring).

    Args:
        run_dir: the run folder written by :func:`deqir.train.train_from_config`.
        weights: ``best`` or ``final`` (default: ``eval.weights`` of the run's config).
        split: ``val`` or ``test`` (default: ``eval.split``).
        num_images: images to evaluate (default: ``eval.num_images``, else the split's size).
        out_dir: where the report goes (default ``RUN/report``).
        device: ``cpu``, ``cuda`` or ``auto``.
        compare: other run folders trained on the same data and physics, evaluated on the same
            measurements and shown side by side.
        figures: write the PNG figures.

    Returns:
        ``{"run", "weights", "split", "num_images", "methods": [{"name", "psnr", "psnr_std",
        "snr", "snr_std", "seconds_per_image"}], "per_image": {name: [psnr, ...]},
        "table": Markdown, "files": [paths]}``.
    """
    from deqir.train.distributed import resolve_device
    from deqir.train.sources import load_source
    from deqir.train.tasks import build_task

    run_dir = Path(run_dir)
    dev = resolve_device(device)
    cfg = _read_config(run_dir)
    ecfg = cfg.eval
    weights = weights or ecfg.weights
    split = split or ecfg.split
    if weights not in ("best", "final"):
        raise ConfigError(f"weights must be 'best' or 'final'; got {weights!r}")
    if split not in ("val", "test"):
        raise ConfigError(f"split must be 'val' or 'test'; got {split!r}")
    runs = [(cfg.experiment.name, _load_model(run_dir, cfg, weights, dev))]
    for other in compare or []:
        ocfg = _read_config(Path(other))
        omodel = _load_model(Path(other), ocfg, weights, dev)
        for section in _TASK_SECTIONS:
            if getattr(ocfg, section) != getattr(cfg, section):
                raise ConfigError(
                    f"cannot compare {other} with {run_dir}: their '{section}' sections "
                    "differ, so they solve different problems"
                )
        name = ocfg.experiment.name
        runs.append((name if name not in dict(runs) else f"{name} ({Path(other).name})", omodel))

    d, e = cfg.data, cfg.experiment
    bank = load_source(d.source, d.image_size, d.num_train, d.num_val, d.num_test, e.seed, d.options)[split]
    n = num_images or ecfg.num_images or len(bank)
    images = bank.fixed_crops(d.image_size, n, seed=e.seed)
    task = build_task(cfg).to(dev)

    init_name = "noisy input" if cfg.is_denoising else f"initialisation ({cfg.method.init})"
    names = [init_name] + [name for name, _ in runs]
    outputs: dict[str, list[torch.Tensor]] = {k: [] for k in names}
    seconds = dict.fromkeys(names, 0.0)
    for i in range(0, n, ecfg.batch_size):
        idx = list(range(i, min(n, i + ecfg.batch_size)))
        clean = images[idx].to(dev)
        for name, net in runs:
            task.bind(net)
            sample = task.simulate(clean, e.seed, 0, idx, stream=seeding.TEST)
            if name == runs[0][0]:
                init = sample.init.abs() if sample.init.is_complex() else sample.init
                outputs[init_name].append(init.cpu())
            start = time.perf_counter()
            outputs[name].append(_run_model(task, net, sample).cpu())
            seconds[name] += time.perf_counter() - start
    stacked = {k: torch.cat(v) for k, v in outputs.items()}
    rows, per_image = [], {}
    for name in names:
        p, s = psnr(stacked[name], images).double(), snr(stacked[name], images).double()
        per_image[name] = [float(v) for v in p]
        rows.append(
            {
                "name": name,
                "psnr": float(p.mean()),
                "psnr_std": float(p.std()) if n > 1 else 0.0,
                "snr": float(s.mean()),
                "snr_std": float(s.std()) if n > 1 else 0.0,
                "seconds_per_image": seconds[name] / n,
            }
        )
    table = _markdown(rows)
    out = Path(out_dir) if out_dir is not None else run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "run": str(run_dir),
        "weights": weights,
        "split": split,
        "num_images": n,
        "methods": rows,
        "per_image": per_image,
        "table": table,
        "files": [],
    }
    files = [out / "metrics.json", out / "metrics.md"]
    if figures:
        k = min(ecfg.num_figures, n)
        if k > 0:
            files.append(
                comparison_figure(images[:k], {m: stacked[m][:k] for m in names}, out / "comparison.png")
            )
        if (run_dir / "log.jsonl").is_file():
            fig = training_figure(run_dir / "log.jsonl", out / "training.png")
            if fig is not None:
                files.append(fig)
        traces = _iterate_traces(task, runs, images[:1].to(dev), e.seed)
        if traces:
            files.append(iterations_figure(traces, out / "iterations.png"))
    result["files"] = [str(f) for f in files]
    (out / "metrics.json").write_text(
        json.dumps({k: v for k, v in result.items() if k != "table"}, indent=2) + "\n"
    )
    (out / "metrics.md").write_text(
        f"# {cfg.experiment.name}: {split} split, {n} images, {weights} weights\n\n{table}\n"
    )
    return result


def _markdown(rows: list[dict[str, Any]]) -> str:
    cols = ["method", "psnr", "psnr_std", "snr", "snr_std", "seconds_per_image"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        vals = [r["name"]] + [
            f"{r[c]:.4g}" if isinstance(r[c], float) and math.isfinite(r[c]) else str(r[c]) for c in cols[1:]
        ]
        lines.append("| " + " | ".join(vals) + " |")
    return "\n".join(lines)


def _figure(rows: int, cols: int, size: float = 2.2):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size * cols, size * rows), layout="constrained")
    return fig, fig.subplots(rows, cols, squeeze=False)


def _show(img: torch.Tensor) -> torch.Tensor:
    """``(C, H, W)`` -> something ``imshow`` takes (grayscale or RGB)."""
    img = img.detach().float().cpu()
    return (img[0] if img.shape[0] == 1 else img[:3].permute(1, 2, 0).clamp(0, 1)).numpy()


def comparison_figure(truth: torch.Tensor, outputs: dict[str, torch.Tensor], path: str | Path) -> Path:
    """Ground truth, then for each method its image and error map; one row per image."""
    names = list(outputs)
    fig, axes = _figure(truth.shape[0], 1 + 2 * len(names))
    err = {
        m: (outputs[m] - truth).abs().flatten(1, 1)
        if truth.shape[1] == 1
        else (outputs[m] - truth).abs().mean(1)
        for m in names
    }
    vmax = max(float(v.max()) for v in err.values()) or 1.0
    for i in range(truth.shape[0]):
        axes[i, 0].imshow(_show(truth[i]), cmap="gray", vmin=0, vmax=1)
        axes[i, 0].set_title("ground truth" if i == 0 else "", fontsize=8)
        for j, m in enumerate(names):
            p = float(psnr(outputs[m][i : i + 1], truth[i : i + 1]))
            ax, axe = axes[i, 1 + 2 * j], axes[i, 2 + 2 * j]
            ax.imshow(_show(outputs[m][i]), cmap="gray", vmin=0, vmax=1)
            ax.set_title(f"{m}\n{p:.2f} dB" if i == 0 else f"{p:.2f} dB", fontsize=8)
            im = axe.imshow(err[m][i].reshape(truth.shape[-2:]).numpy(), cmap="inferno", vmin=0, vmax=vmax)
            axe.set_title(f"|error| {m}" if i == 0 else "", fontsize=8)
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.colorbar(im, ax=axes[:, -1].tolist(), shrink=0.6, label="|error|")
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path


def training_figure(log_path: str | Path, path: str | Path) -> Path | None:
    """Training loss and validation PSNR against the step, from a run's ``log.jsonl``."""
    records = [json.loads(line) for line in Path(log_path).read_text().splitlines() if line.strip()]
    loss = [(r["step"], r["loss"]) for r in records if "loss" in r]
    val = [(r["step"], r["val_psnr"]) for r in records if "val_psnr" in r]
    if not loss and not val:
        return None
    fig, axes = _figure(1, 2, size=3.2)
    if loss:
        axes[0, 0].semilogy(*zip(*loss, strict=True))
    axes[0, 0].set(xlabel="step", ylabel="training loss")
    if val:
        axes[0, 1].plot(*zip(*val, strict=True), marker="o")
    axes[0, 1].set(xlabel="step", ylabel="validation PSNR (dB)")
    for r in records:
        if r.get("event") == "rollback":
            axes[0, 0].axvline(r["step"], color="red", lw=0.8, ls="--")
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path


def _iterate_traces(task: Any, runs: list, clean: torch.Tensor, seed: int) -> dict[str, dict[str, list]]:
    traces = {}
    for name, net in runs:
        hook = getattr(net, "iterates", None)
        if not callable(hook):
            continue
        task.bind(net)
        sample = task.simulate(clean, seed, 0, [0], stream=seeding.TEST)
        with torch.set_grad_enabled(bool(getattr(net, "requires_grad_in_forward", False))):
            its = [x.detach() for x in hook(*sample.args, **sample.kwargs)]
        res = [
            float((b - a).norm() / a.norm().clamp_min(1e-20)) for a, b in zip(its[:-1], its[1:], strict=True)
        ]
        ps = [float(psnr(x.abs() if x.is_complex() else x, clean).mean()) for x in its]
        traces[name] = {"residual": res, "psnr": ps}
    return traces


def iterations_figure(traces: dict[str, dict[str, list]], path: str | Path) -> Path:
    """Relative residual ``||x_{k+1} - x_k|| / ||x_k||`` and PSNR against the iteration."""
    fig, axes = _figure(1, 2, size=3.2)
    for name, t in traces.items():
        axes[0, 0].semilogy(range(1, len(t["residual"]) + 1), t["residual"], label=name)
        axes[0, 1].plot(range(len(t["psnr"])), t["psnr"], label=name)
    axes[0, 0].set(xlabel="iteration", ylabel="relative residual")
    axes[0, 1].set(xlabel="iteration", ylabel="PSNR (dB)")
    axes[0, 1].legend(fontsize=7)
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path
