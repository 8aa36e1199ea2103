"""Benchmark of the classical, TV and PnP/RED baselines on the four tasks of issue 5.

Tasks (test images from the fixed test splits; hyperparameters tuned on the validation splits
with :func:`deqir.methods.baselines.tune_hyperparameters`, never on test images):

* ``deblur``: 25 x 25 Gaussian blur (σ = 1.6), noise σ = 0.01, ``natural`` images;
* ``ct``: parallel-beam CT, 90 angles, 50 dB input SNR, ``ct_phantoms`` and ``brain`` images
  used as CT-like slices;
* ``ct_real``: the same operator on the real ``ct`` slices (a test-only source: it reuses the
  hyperparameters tuned for ``ct``);
* ``mri_single``: single-coil MRI, 4x random Cartesian columns, 40 dB, ``brain`` images;
* ``mri_multi``: 8-coil MRI, 4x, 40 dB, ``brain`` images.

Methods: the task's classical reconstructions (Tikhonov by the discrepancy principle, FBP,
zero-filled), TV (FISTA), PnP-PGM, PnP-ADMM, PnP-HQS (DPIR), RED-GD and RED-FP with the domain's pretrained
denoiser (``natural`` / ``ct`` / ``mri`` of :func:`deqir.priors.pretrained.load_pretrained`);
where those weights are not installed the bench falls back to scico's DnCNN-17 (``scico17``) and
says so in ``config["denoisers"]`` and in every row. Every reconstruction is clipped to [0, 1]
before scoring.

Rows: one per task and method: mean PSNR / SNR / SSIM, mean iterations and seconds per image,
the tuned hyperparameters and their validation PSNR. Summary per task:
``<task>_best_pnp_red_method`` (the PnP/RED method with the best validation PSNR: the method is
chosen on validation like its hyperparameters) and its test ``<task>_best_pnp_red_psnr``,
``<task>_pnp_red_best_on_test`` and ``<task>_pnp_red_best_on_test_psnr`` (the best on the test
images, for reference only), ``<task>_tv_psnr``, ``<task>_classical_psnr`` (the classical
method with the best validation PSNR), ``<task>_pnp_red_above_tv`` and
``<task>_tv_above_classical`` (1 or 0), ``<task>_pnp_red_minus_tv_se_db`` (the standard error of
the paired per-image PSNR difference between the best PnP/RED and TV) and ``<task>_test_images``,
plus ``denoisers_pretrained`` (1 when every task used
deqir's shipped denoisers).

Figure: one PNG grid (rows: tasks; columns: ground truth, best classical, TV, best PnP/RED,
its error), written to ``figure_path``: ``deqir bench baselines --json out/x.json`` gives
``out/x.png``; without a path, ``results/baselines.png`` (``results/baselines_quick.png`` with
``quick``). The path is in ``config["figure"]``.

Example:
    $ deqir bench baselines --quick --json results/baselines_quick.json
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import torch

from deqir.bench.common import BenchReport

PNP_RED = ("pnp_pgm", "pnp_admm", "pnp_hqs", "red_gd", "red_fp")

#: Task definitions: operator, data, noise, classical methods and the domain's denoiser.
TASKS: dict[str, dict[str, Any]] = {
    "deblur": {
        "operator": "blur",
        "test": ("natural",),
        "val": ("natural",),
        "noise": {"noise_sigma": 0.01},
        "classical": ("tikhonov",),
        "denoiser": "natural",
    },
    "ct": {
        "operator": "ct",
        "test": ("ct_phantoms", "brain"),
        "val": ("ct_phantoms", "brain"),
        "noise": {"noise_snr_db": 50.0},
        "classical": ("fbp",),
        "denoiser": "ct",
    },
    "ct_real": {
        "operator": "ct",
        "test": ("ct",),
        "val": None,  # the real slices have no validation split: reuse the "ct" tuning
        "tuned_as": "ct",
        "noise": {"noise_snr_db": 50.0},
        "classical": ("fbp",),
        "denoiser": "ct",
    },
    "mri_single": {
        "operator": "mri_single",
        "test": ("brain",),
        "val": ("brain",),
        "noise": {"noise_snr_db": 40.0},
        "classical": ("zero_filled", "tikhonov"),
        "denoiser": "mri",
    },
    "mri_multi": {
        "operator": "mri_multi",
        "test": ("brain",),
        "val": ("brain",),
        "noise": {"noise_snr_db": 40.0},
        "classical": ("zero_filled",),
        "denoiser": "mri",
    },
}

FULL = {
    "size": 128,
    "test_images": 8,  # at most: natural has 5 test images, the real CT slices 4
    # as many validation images as test images: with 2, the choice between TV and PnP/RED
    # followed the two images drawn (CT and single-coil MRI picked settings that ranked
    # differently on 8 validation images); tuning costs about 4x more than with 2
    "val_images": 8,
    "iterations": {"tv": 200, "pnp_pgm": 100, "pnp_admm": 60, "pnp_hqs": 60, "red_gd": 100, "red_fp": 30},
    # every combination of each grid is tried on the validation split. The ranges cover the
    # optima of all five tasks: deblurring (noise 0.01 on [0, 1] images) wants a strong denoiser
    # (sigma 0.04-0.06, RED tau ~0.1), CT and MRI at 40-50 dB a weak one (sigma <= 0.01, tau
    # <= 0.003, ADMM gamma 64-256); a grid cut to one of them hands TV the others.
    "grids": {
        "tv": {"lam": [1e-6, 3e-6, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2]},
        "pnp_pgm": {"gamma": [1.9], "sigma": [0.005, 0.01, 0.02, 0.04, 0.06, 0.08]},
        # 0.015 between 0.01 and 0.02, where the CT optimum lies (on validation CT images the
        # two neighbours differ little but the images they favour differ: phantoms want 0.01)
        "pnp_admm": {
            "gamma": [4.0, 16.0, 64.0, 256.0],
            "sigma": [0.0025, 0.005, 0.01, 0.015, 0.02, 0.04, 0.06],
        },
        # DPIR: the noise level falls from 0.2 (~49/255) to sigma; gamma is the last data step
        "pnp_hqs": {"gamma": [2.0, 8.0, 32.0, 128.0], "sigma": [0.0025, 0.005, 0.01, 0.02, 0.04]},
        "red_gd": {"sigma": [0.01, 0.02, 0.04], "tau": [0.001, 0.003, 0.01, 0.03, 0.1]},
        "red_fp": {"sigma": [0.01, 0.02, 0.04], "tau": [0.001, 0.003, 0.01, 0.03, 0.1]},
    },
    "strategy": "grid",
}


QUICK = {
    "size": 64,
    "test_images": 1,
    "val_images": 1,
    "iterations": {"tv": 100, "pnp_pgm": 15, "pnp_admm": 10, "pnp_hqs": 15, "red_gd": 30, "red_fp": 10},
    "grids": {
        "tv": {"lam": [1e-5, 1e-4, 1e-3]},
        "pnp_pgm": {"gamma": [1.9], "sigma": [0.005, 0.02]},
        "pnp_admm": {"sigma": [0.005, 0.02]},
        "pnp_hqs": {"sigma": [0.005, 0.02]},
        "red_gd": {"tau": [0.003, 0.01]},
        "red_fp": {"tau": [0.003, 0.03]},
    },
    "strategy": "coordinate",
}


def run(quick: bool = False, denoiser: Any = None, figure_path: str | Path | None = None) -> BenchReport:
    """Run the benchmark (``quick``: 64², one validation and one test image per task, short grids).

    Args:
        quick: the reduced version (under a minute).
        denoiser: use this denoiser (name, module or callable) for every task instead of the
            domain's pretrained one.
        figure_path: where to write the PNG grid (default ``results/baselines.png``, or
            ``results/baselines_quick.png`` with ``quick``).

    Example:
        >>> from deqir.bench.baselines import run
        >>> report = run(quick=True)  # doctest: +SKIP
        >>> report.summary["deblur_tv_above_classical"]  # doctest: +SKIP
        1
    """
    setup = QUICK if quick else FULL
    size = setup["size"]
    if figure_path is None:
        figure_path = Path("results") / ("baselines_quick.png" if quick else "baselines.png")
    figure_path = Path(figure_path)
    report = BenchReport(
        "baselines",
        config={
            "quick": quick,
            "image_size": size,
            "test_images_per_task": setup["test_images"],
            "val_images_per_task": setup["val_images"],
            "iterations": setup["iterations"],
            "grids": setup["grids"],
            "tuning": f"{setup['strategy']} search on the validation split by mean PSNR (clipped to [0, 1])",
            "tasks": {
                k: {kk: v[kk] for kk in ("operator", "test", "noise", "classical")} for k, v in TASKS.items()
            },
            "denoisers": {},
            "figure": str(figure_path),
            "dtype": "float32",
            "torch_threads": torch.get_num_threads(),
        },
    )
    from tqdm.auto import tqdm

    tuned: dict[str, dict[str, dict]] = {}
    figure_rows = []
    pretrained_everywhere = True
    total = sum(_planned_runs(spec, setup) for spec in TASKS.values())
    bar = tqdm(total=total, desc="bench baselines", unit="run", file=sys.stderr, leave=False, smoothing=0.05)
    for task, spec in TASKS.items():
        D, label, pretrained = _denoiser_for(spec["denoiser"], denoiser)
        pretrained_everywhere &= pretrained
        report.config["denoisers"][task] = label
        outcome = _run_task(task, spec, setup, D, label, tuned, bar=bar)
        for row in outcome["rows"]:
            report.add_row(**row)
        report.summary.update(outcome["summary"])
        figure_rows.append(outcome["figure"])
    bar.close()
    report.summary["denoisers_pretrained"] = int(pretrained_everywhere)
    try:
        _save_figure(figure_path, figure_rows)
    except Exception as err:  # a figure must never lose the numbers
        report.config["figure"] = f"not written: {type(err).__name__}: {err}"
    return report


# --------------------------------------------------------------------------- pieces
def _denoiser_for(domain: str, override: Any) -> tuple[Any, str, bool]:
    """The task's denoiser, its label and whether it is deqir's shipped one."""
    from deqir.errors import DeqirError
    from deqir.methods.denoisers import as_denoiser, denoiser_label

    if override is not None:
        return as_denoiser(override), denoiser_label(override), False
    try:
        return as_denoiser(domain), f"pretrained:{domain}", True
    except (DeqirError, ImportError):
        return as_denoiser("scico17"), f"scico17 (stand-in: no '{domain}' weights)", False


def _images(sources: tuple[str, ...], split: str, size: int, count: int) -> torch.Tensor:
    from deqir.data import build_dataset

    per = max(1, count // len(sources))
    parts = []
    for i, src in enumerate(sources):
        n = count - per * (len(sources) - 1) if i == len(sources) - 1 else per
        ds = build_dataset(src, size)[split]
        parts.append(ds.stack()[:n])
    return torch.cat(parts).float()


def _grid_runs(method: str, setup: dict[str, Any]) -> int:
    """Reconstructions of the validation images that tuning ``method`` runs (at most, for the
    coordinate search; 1 for a classical method, which is only scored)."""
    from deqir.methods.baselines import DEFAULT_GRIDS

    grids = DEFAULT_GRIDS if setup["grids"] is None else setup["grids"]
    sizes = [len(v) for v in grids.get(method, {}).values()]
    if setup["strategy"] == "grid":
        return math.prod(sizes)
    return max(1, sum(sizes))


def _planned_runs(spec: dict[str, Any], setup: dict[str, Any]) -> int:
    """The progress bar's units for one task: every tuning run plus one test run per method."""
    methods = (*spec["classical"], "tv", *PNP_RED)
    tuning = 0 if spec.get("tuned_as") else sum(_grid_runs(m, setup) for m in methods)
    return tuning + len(methods)


def _run_task(task, spec, setup, D, label, tuned, bar=None) -> dict[str, Any]:
    """Tune (on validation) and test every method of one task; ``bar`` (tqdm) advances by
    :func:`_planned_runs` units in all."""
    from deqir.bench.common import paired_gap
    from deqir.methods.baselines import run_baseline, simulate, tune_hyperparameters
    from deqir.metrics import compute_metrics
    from deqir.physics.registry import build_operator

    size, iters, grids = setup["size"], setup["iterations"], setup["grids"]
    op = build_operator(spec["operator"], image_size=size)
    noise = spec["noise"]
    if spec.get("tuned_as"):
        params, val_psnr = tuned[spec["tuned_as"]]["params"], tuned[spec["tuned_as"]]["val_psnr"]
    else:
        val = _images(spec["val"], "val", size, setup["val_images"])
        params, val_psnr = {}, {}
        for method in (*spec["classical"], "tv", *PNP_RED):  # classical: scored only, nothing to tune
            if bar is not None:
                bar.set_postfix_str(f"{task}: tuning {method}")
            res = tune_hyperparameters(
                op,
                method,
                val,
                denoiser=D if method in PNP_RED else None,
                grid=None if grids is None else ({} if method in spec["classical"] else grids[method]),
                iterations=iters.get(method),
                seed=1,
                strategy=setup["strategy"],
                on_run=None if bar is None else (lambda: bar.update(1)),  # one tick per grid point
                **noise,
            )
            params[method], val_psnr[method] = res.best, res.best_score
            if bar is not None:
                # each scored point ticked once; the plan's points the coordinate search revisited
                bar.update(max(0, _grid_runs(method, setup) - len(res.scores)))
        tuned[task] = {"params": params, "val_psnr": val_psnr}
    truth = _images(spec["test"], "test", size, setup["test_images"])
    y = simulate(op, truth, seed=0, **noise)
    sigma_entry = float((y - op.A(truth)).abs().pow(2).mean().sqrt())
    rows, results, per_image = [], {}, {}
    for method in (*spec["classical"], "tv", *PNP_RED):
        if bar is not None:
            bar.set_postfix_str(f"{task}: testing {method}")
        res = run_baseline(
            op,
            y,
            method,
            denoiser=D if method in PNP_RED else None,
            params=params.get(method),
            iterations=iters.get(method),
            noise_sigma=sigma_entry,
        )
        if bar is not None:
            bar.update(1)
        x = res.x.clamp(0, 1)
        m = compute_metrics(x, truth)
        results[method] = (float(m["psnr"].mean()), x)
        per_image[method] = m["psnr"].flatten().double()
        rows.append(
            {
                "task": task,
                "method": method,
                "kind": "classical"
                if method in spec["classical"]
                else ("tv" if method == "tv" else "pnp_red"),
                "denoiser": label if method in PNP_RED else None,
                "psnr": float(m["psnr"].mean()),
                "snr": float(m["snr"].mean()),
                "ssim": float(m["ssim"].mean()),
                "iterations": res.iterations,
                "seconds_per_image": res.seconds / truth.shape[0],
                "images": int(truth.shape[0]),
                "size": size,
                "params": json.dumps({k: v for k, v in (params.get(method) or {}).items()}),
                "val_psnr": val_psnr.get(method),
            }
        )
    # the classical method and the PnP/RED method that go against TV are chosen on the validation
    # split, like the hyperparameters (the best PnP/RED one on the test images is reported beside it)
    best_classical = max(spec["classical"], key=lambda k: val_psnr[k])
    best_pnp = max(PNP_RED, key=lambda k: val_psnr[k])
    best_on_test = max(PNP_RED, key=lambda k: results[k][0])
    for row in rows:
        row["best_in_kind"] = row["method"] in (best_classical, best_pnp) or row["method"] == "tv"
    p_pnp, p_tv, p_cl = results[best_pnp][0], results["tv"][0], results[best_classical][0]
    summary = {
        f"{task}_best_pnp_red_method": best_pnp,
        f"{task}_best_pnp_red_psnr": round(p_pnp, 3),
        f"{task}_pnp_red_best_on_test": best_on_test,
        f"{task}_pnp_red_best_on_test_psnr": round(results[best_on_test][0], 3),
        f"{task}_tv_psnr": round(p_tv, 3),
        f"{task}_classical_psnr": round(p_cl, 3),
        f"{task}_pnp_red_above_tv": int(p_pnp > p_tv),
        f"{task}_pnp_red_minus_tv_se_db": round(paired_gap(per_image[best_pnp], per_image["tv"])[1], 3),
        f"{task}_test_images": int(truth.shape[0]),
        f"{task}_tv_above_classical": int(p_tv > p_cl),
    }
    fig = {
        "task": task,
        "truth": truth[:1],
        "panels": [
            (best_classical, results[best_classical]),
            ("tv", results["tv"]),
            (best_pnp, results[best_pnp]),
        ],
    }
    return {"rows": rows, "summary": summary, "figure": fig}


def _save_figure(path: Path, rows: list[dict[str, Any]]) -> Path:
    from deqir.figures import Panel, as_picture, panel_grid

    grid = []
    for r in rows:
        truth = r["truth"]
        line = [Panel(as_picture(truth), f"{r['task']}: ground truth", limits=(0, 1))]
        for name, (value, x) in r["panels"]:
            line.append(Panel(as_picture(x[:1]), f"{name}\n{value:.2f} dB (mean)", limits=(0, 1)))
        best_x = r["panels"][-1][1][1][:1]
        line.append(
            Panel(as_picture((best_x - truth).abs()), "|error| best PnP/RED", cmap="magma", limits=(0, 0.25))
        )
        grid.append(line)
    path.parent.mkdir(parents=True, exist_ok=True)
    return panel_grid(path, grid)
