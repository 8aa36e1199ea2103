"""LUSER benchmark: loop unrolling with shallow equilibrium regularisers against deep unrolling.

For each task (Gaussian deblurring, 45-view CT, single-coil 4× MRI; ``configs/luser_*.yaml``, 64×64
images) and each model of :data:`VARIANTS` (LUSER, LU-deep with DnCNN regularisers of depth 5, 10 and
17, LU-shallow, Gilton's DE-Prox DEQ), it reports:

* test PSNR / SSIM of the shipped weights ``luser_<task>_<variant>`` (test split of the config);
* parameters;
* one training step (forward and backward of the MSE on a batch of 4 training-size images):
  seconds (timed in this process), *activation memory* (bytes of the distinct tensors autograd
  keeps between forward and backward, :class:`~deqir.bench.common.SavedTensorBytes`) and peak
  process memory above the step's starting point (:class:`~deqir.bench.common.PeakRSS`), both
  measured in a worker process with an exact allocator (:class:`~deqir.bench.common.IsolatedMemory`).

Summary, each the mean over the three tasks: ``gap_to_lu_deep_db`` (the best LU-deep by test PSNR
minus LUSER), ``memory_ratio_lu_deep_over_luser`` (activation memory of the deepest LU-deep, DnCNN-17,
over LUSER's: the comparison behind the paper's "up to 8×"; ``peak_memory_ratio_lu_deep_over_luser``
the same with peak memory), ``memory_ratio_best_lu_deep_over_luser`` (the best-PSNR LU-deep over
LUSER) and ``gain_over_lu_shallow_db`` (LUSER minus LU-shallow).

Nothing is trained here: :func:`train_all` and :func:`export_all` (``make luser``) do that.
``--quick`` evaluates 2 test images per task and measures each step once.

Example:
    >>> from deqir.bench.luser import VARIANTS
    >>> sorted(VARIANTS)[:3]
    ['deq', 'lu_deep10', 'lu_deep17']
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import torch

from deqir.bench.common import (
    BenchReport,
    IsolatedMemory,
    export_run,
    load_shipped,
    mean_scores,
)

TASKS = ("deblur", "ct", "mri")
CONFIGS = Path("configs")


def _lu_deep(depth: int) -> list[str]:
    return ["model.name=dncnn", f"model.options={{depth: {depth}, width: 32}}", "method.options={steps: 5}"]


#: the comparison models: overrides of ``configs/luser_<task>.yaml`` (which is LUSER itself)
VARIANTS: dict[str, list[str]] = {
    "luser": [],
    "lu_shallow": ["method.options.regulariser=feedforward"],
    "lu_deep5": _lu_deep(5),
    "lu_deep10": _lu_deep(10),
    "lu_deep17": _lu_deep(17),
    "deq": [
        "model.name=dncnn",
        "model.options={depth: 10, width: 32}",
        "method.name=prox_grad_equilibrium",
        "method.options={max_iter: 15}",
        "train.steps=250",
    ],
}
LABELS = {
    "luser": "LUSER",
    "lu_shallow": "LU-shallow",
    "lu_deep5": "LU-deep-5",
    "lu_deep10": "LU-deep-10",
    "lu_deep17": "LU-deep-17",
    "deq": "DEQ (DE-Prox)",
}


def run_name(task: str, variant: str) -> str:
    """``luser_<task>_<variant>``: the run folder and the shipped weights name."""
    return f"luser_{task}_{variant}"


def train_all(
    tasks: tuple[str, ...] = TASKS, variants: tuple[str, ...] | None = None, runs_dir: str | Path = "runs"
) -> list[Path]:
    """Train every (task, variant) from ``configs/luser_<task>.yaml`` and its overrides.

    Example:
        >>> train_all(tasks=("deblur",), variants=("luser",))  # doctest: +SKIP
    """
    import shutil

    from deqir.train import train_from_config

    out = []
    for task in tasks:
        for variant in variants or tuple(VARIANTS):
            name = run_name(task, variant)
            run_dir = Path(runs_dir) / name
            shutil.rmtree(run_dir, ignore_errors=True)
            overrides = [f"experiment.name={name}", *VARIANTS[variant]]
            config = CONFIGS / f"luser_{task}.yaml"
            out.append(train_from_config(config, device="cpu", overrides=overrides, run_dir=run_dir))
    return out


def export_all(runs_dir: str | Path = "runs") -> list[Path]:
    """Export every LUSER-bench run found under ``runs_dir`` into the package."""
    names = [run_name(t, v) for t in TASKS for v in VARIANTS]
    return [export_run(Path(runs_dir) / n) for n in names if (Path(runs_dir) / n).is_dir()]


# ----------------------------------------------------------------------------- pieces
def _data(cfg: Any, split: str, count: int, seed: int):
    """``(op, x, y, x0)``: images of a config's split, measured and initialised as in training."""
    from deqir.train.sources import load_source
    from deqir.train.tasks import build_task

    d = cfg.data
    seed0 = cfg.experiment.seed
    banks = load_source(d.source, d.image_size, d.num_train, d.num_val, d.num_test, seed0, d.options)
    bank = banks[split]
    n = min(count, len(bank)) if split != "train" else count
    x = bank.fixed_crops(d.image_size, n, seed=seed)
    task = build_task(cfg)
    sample = task.simulate(x, seed, 0, range(n))
    return task.physics, x, sample.measurement, sample.init


def _step_cost(model, op, x, y, x0, repeat: int, meter: IsolatedMemory) -> dict[str, float]:
    """Time of a training step here (default allocator); its memory in the isolated worker."""
    model.train()
    times = []
    for r in range(repeat + 1):
        model.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        loss = (model(y, op, init=x0) - x).square().mean()
        loss.backward()
        if r:  # r == 0 warms up
            times.append(time.perf_counter() - t0)
    model.zero_grad(set_to_none=True)
    model.eval()
    memory = meter.step(model, op, x, y, x0, repeat=1)
    return {
        "step_seconds": statistics.median(times),
        "activation_bytes": memory["saved_bytes"],
        "peak_bytes": memory["peak_bytes"],
    }


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


# ----------------------------------------------------------------------------- run
def run(quick: bool = False, figure_path: str | Path | None = None) -> BenchReport:
    """Evaluate and measure every shipped LUSER-bench model; see the module docstring."""
    from tqdm import tqdm

    from deqir.bench.common import WEIGHTS_DIR
    from deqir.train.checkpoint import read_sidecar
    from deqir.train.config import config_from_dict

    n_test, repeat, batch = (2, 1, 2) if quick else (8, 3, 4)
    report = BenchReport(
        "luser",
        config={
            "tasks": list(TASKS),
            "variants": VARIANTS,
            "test_images": n_test,
            "step_batch": batch,
            "step_repeats": repeat,
            "quick": quick,
        },
    )
    per_task: dict[str, dict[str, dict[str, Any]]] = {}
    figure: dict[str, dict[str, torch.Tensor]] = {}
    jobs = [(t, v) for t in TASKS for v in VARIANTS]
    data: dict[str, tuple] = {}
    with IsolatedMemory() as meter:  # one worker, exact peak memory (see IsolatedMemory)
        for task, variant in tqdm(jobs, desc="luser bench", unit="model"):
            name = run_name(task, variant)
            try:
                model = load_shipped(name)
            except Exception as err:  # noqa: BLE001 - a missing model is a row, not a crash
                report.add_row(kind="missing", task=task, method=variant, reason=str(err)[:200])
                continue
            side = read_sidecar(WEIGHTS_DIR / f"{name}.safetensors") or {}
            cfg = config_from_dict(side["config"])
            if task not in data:  # every variant of a task shares its data section and physics
                data[task] = (_data(cfg, "test", n_test, seed=2), _data(cfg, "train", batch, seed=3))
            (op, test_x, test_y, test_x0), (_, tr_x, tr_y, tr_x0) = data[task]
            t0 = time.perf_counter()
            with torch.no_grad():
                outs = [model(test_y[i : i + 1], op, init=test_x0[i : i + 1]) for i in range(len(test_x))]
            out = torch.cat(outs)
            test_seconds = (time.perf_counter() - t0) / len(test_x)
            cost = _step_cost(model, op, tr_x, tr_y, tr_x0, repeat, meter)
            row = {
                "kind": "model",
                "task": task,
                "method": variant,
                "label": LABELS[variant],
                **mean_scores(out, test_x),
                "parameters": sum(p.numel() for p in model.parameters()),
                **cost,
                "test_seconds_per_image": test_seconds,
                "train_steps": cfg.train.steps,
                "test_images": len(test_x),
            }
            report.add_row(**row)
            per_task.setdefault(task, {})[variant] = row
            panels = figure.setdefault(task, {"truth": test_x[0, 0], "init": test_x0[0, 0]})
            panels[LABELS[variant]] = out[0, 0]

    gaps, ratios, best_ratios, peak_ratios, gains = [], [], [], [], []
    for task, rows in per_task.items():
        if "luser" not in rows:
            continue
        luser = rows["luser"]
        deep = [rows[v] for v in ("lu_deep5", "lu_deep10", "lu_deep17") if v in rows]
        if deep:
            best = max(deep, key=lambda r: r["psnr"])
            gaps.append(best["psnr"] - luser["psnr"])
            best_ratios.append(best["activation_bytes"] / max(luser["activation_bytes"], 1))
            report.summary[f"{task}_best_lu_deep"] = best["method"]
        if "lu_deep17" in rows:
            deepest = rows["lu_deep17"]
            ratios.append(deepest["activation_bytes"] / max(luser["activation_bytes"], 1))
            peak_ratios.append(deepest["peak_bytes"] / max(luser["peak_bytes"], 1))
        if "lu_shallow" in rows:
            gains.append(luser["psnr"] - rows["lu_shallow"]["psnr"])
    report.summary.update(
        gap_to_lu_deep_db=_mean(gaps),
        memory_ratio_lu_deep_over_luser=_mean(ratios),
        peak_memory_ratio_lu_deep_over_luser=_mean(peak_ratios),
        memory_ratio_best_lu_deep_over_luser=_mean(best_ratios),
        gain_over_lu_shallow_db=_mean(gains),
        tasks=len(gaps),
    )
    fig = Path(figure_path) if figure_path else Path("out/luser-quick.png" if quick else "results/luser.png")
    saved = _figure(figure, per_task, fig)
    report.config["figure"] = None if saved is None else str(saved)
    return report


def _figure(images: dict[str, dict[str, torch.Tensor]], per_task: dict, path: Path) -> Path | None:
    """One row per task: ground truth, initialisation and each model's reconstruction of a test
    image; a last row with test PSNR against activation memory per model."""
    if not images:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = max(len(v) for v in images.values())
    rows = len(images) + 1
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.3 * rows), squeeze=False)
    for i, (task, panels) in enumerate(images.items()):
        truth = panels["truth"]
        for j, (label, img) in enumerate(panels.items()):
            ax = axes[i, j]
            ax.imshow(img.clamp(0, 1).numpy(), cmap="gray", vmin=0, vmax=1)
            psnr = mean_scores(img[None, None], truth[None, None])["psnr"]
            title = label if label == "truth" else f"{label}\n{psnr:.2f} dB"
            ax.set_title(f"{task}: {title}" if j == 0 else title, fontsize=7)
        for ax in axes[i]:
            ax.axis("off")
    for ax in axes[-1]:
        ax.axis("off")
    for k, (task, rows_t) in enumerate(per_task.items()):
        if k >= cols:
            break
        ax = axes[-1, k]
        ax.axis("on")
        for variant, r in rows_t.items():
            ax.scatter(r["activation_bytes"] / 2**20, r["psnr"], s=14)
            ax.annotate(LABELS[variant], (r["activation_bytes"] / 2**20, r["psnr"]), fontsize=6)
        ax.set_xscale("log")
        ax.set_xlabel("activation memory per step (MiB)", fontsize=7)
        ax.set_ylabel("test PSNR (dB)", fontsize=7)
        ax.set_title(task, fontsize=7)
    fig.tight_layout()
    from deqir.figures import save_figure

    return save_figure(fig, path, dpi=80)
