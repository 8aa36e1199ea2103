"""ELDER benchmark: explicit learned regularisers (Zou et al., OJSP 2023) against their references.

For each setting (Gaussian and motion deblurring and ×2 super-resolution at noise 2.55/255 on natural
photos, radial-mask MRI at 30 and 50 % sampling on brain slices; all 128×128; the uniform kernel,
the 7.65/255 noise level and 20 % MRI sampling are left out for the CPU budget of this machine and
are one line each in :data:`SETTINGS`) it reconstructs the test split with:

* ``gs_pretrained``: the gradient-step potential ``R = ½‖x − N(x)‖²`` of the shipped denoiser with no
  DEQ training (GS-PnP), ``σ`` and ``λ`` tuned on the validation split;
* ``red_pretrained``: the RED potential ``½xᵀ(x − N(x))`` of the same denoiser, tuned the same way;
* ``elder``: the gradient-step potential after ELDER's DEQ training (shipped ``elder_<task>``);
* ``implicit_deq``: the implicit DEQ with the same backbone and training (``elder_<task>_implicit``);
* ``pnp_pgm`` and ``red_fp``: the PnP / RED baselines of :mod:`deqir.methods.baselines` with the
  shipped denoiser, tuned on validation.

Explicit potentials run the monotone proximal-gradient algorithm (Armijo backtracking, Nesterov
momentum with a monotone restart); the learned models are evaluated with their learned ``τ`` and
their learned ``λ`` times a factor tuned on validation (1 is in the grid, so the training setting
keeps its learned value when it is the best). Every hyperparameter is chosen on validation images;
test images are only scored.

Summary: ``gain_over_pretrained_db`` (ELDER minus GS-PnP) and ``gap_to_implicit_db`` (implicit DEQ
minus ELDER), each the mean over the tasks' *training* settings (one per task: Gaussian deblurring at
2.55/255 and MRI at 30 %), the same two means over every setting (``*_all_settings_db``: the learned
potential transferred to other operators and noise levels), and ``monotone_fraction`` (test
reconstructions of every explicit potential whose objective never increased).

Nothing is trained here: the models are the shipped weights (``make elder`` trains and exports them
from ``configs/elder_*.yaml``). ``--quick`` evaluates the two training settings on two test images
with the validation-tuned values of the last full run (or the configs' starting values).

Example:
    >>> from deqir.bench.elder import SETTINGS
    >>> sorted({s.task for s in SETTINGS.values()})
    ['deblur', 'mri']
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from deqir.bench.common import BenchReport, export_run, load_shipped, split_images

RESULTS_JSON = Path("results/elder.json")
IMAGE_SIZE = 128
EVAL_ITERATIONS = 100  # monotone proximal gradient at test (Nesterov + backtracking), ≤ 100 as ELDER
EVAL_TOL = 1e-5
TAU = 6.0  # ELDER's step (the data step is an exact prox, so any τ is stable)
SIGMA_GRID = (10 / 255, 25 / 255, 40 / 255)  # noise level the pretrained potential is called at
LAM_GRID = (0.025, 0.05, 0.1)
LAM_FACTORS = (0.5, 1.0, 2.0)  # learned λ times one of these, chosen on validation
BASELINE_GRIDS = {
    "pnp_pgm": {"gamma": [1.0, 1.9], "sigma": [0.02, 0.05]},
    "red_fp": {"tau": [0.01, 0.05], "sigma": [0.02, 0.05]},
}
BASELINE_ITERATIONS = 100


@dataclass(frozen=True)
class Setting:
    """One row block of the table: an operator, a noise level and the images it runs on."""

    task: str  # which trained models apply: "deblur" or "mri"
    operator: str
    options: dict[str, Any] = field(default_factory=dict)
    noise_sigma: float = 0.01
    source: str = "natural"
    trained: bool = False  # the setting the task's models were trained on


def _gauss(**kw: Any) -> dict[str, Any]:
    return {"kernel": "gaussian", "kernel_size": 25, "sigma": 1.6, **kw}


SETTINGS: dict[str, Setting] = {
    "deblur_gaussian_2.55": Setting("deblur", "blur", _gauss(), 2.55 / 255, trained=True),
    "deblur_motion_2.55": Setting("deblur", "motion_blur", {"kernel_size": 15, "seed": 0}, 2.55 / 255),
    "superres_x2_2.55": Setting("deblur", "superres", {"factor": 2}, 2.55 / 255),
    "mri_radial_30": Setting("mri", "mri_radial", {"sampling_fraction": 0.3}, 0.005, "brain", True),
    "mri_radial_50": Setting("mri", "mri_radial", {"sampling_fraction": 0.5}, 0.005, "brain"),
}
DENOISER = {"deblur": "natural", "mri": "mri"}  # the shipped denoiser each task starts from
TRAINED = {"elder": "elder_{task}", "implicit_deq": "elder_{task}_implicit"}
TASK_RUN = {"deblur": "deblur", "mri": "mri_radial"}
RUNS = tuple(p.format(task=t) for t in TASK_RUN.values() for p in TRAINED.values())


def export_all(runs_dir: str | Path = "runs") -> list[Path]:
    """Export every ELDER run found under ``runs_dir`` into the package (what ``make elder`` ends with)."""
    return [export_run(Path(runs_dir) / r) for r in RUNS if (Path(runs_dir) / r).is_dir()]


# ----------------------------------------------------------------------------- pieces
def _operator(setting: Setting, size: int):
    from deqir.physics.registry import build_operator

    return build_operator(setting.operator, size, **setting.options)


def _measure(op, x: torch.Tensor, sigma: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy measurements and the initialisation the trainer uses (``Aᵀy``; zero-filled for MRI)."""
    from deqir.methods.baselines import simulate

    y = simulate(op, x, noise_sigma=sigma, seed=seed)
    x0 = op.zero_filled(y) if hasattr(op, "zero_filled") else op.A_adjoint(y)
    x0 = x0.abs() if x0.is_complex() else x0
    if getattr(op, "factor", 1) > 1:  # super-resolution: Aᵀy keeps 1/factor² of the energy
        x0 = x0 * op.factor**2
    return y, x0.clamp_min(0)


def _psnr(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    from deqir.metrics import psnr

    return psnr(x_hat.clamp(0, 1), x)


def _elder(network, potential: str, sigma: float | None, lam: float, tau: float):
    from deqir.methods.elder import ELDER

    return ELDER(
        network,
        potential=potential,
        lam=lam,
        tau=tau,
        prior_sigma=sigma,
        learn_parameters=False,
        solver="anderson",
        max_iter=EVAL_ITERATIONS,
        tol=EVAL_TOL,
        eval_max_iter=EVAL_ITERATIONS,
        eval_tol=EVAL_TOL,
        backtracking=True,
        momentum=True,
        check_smooth=potential != "implicit",
    ).eval()


@dataclass
class _Run:
    x: torch.Tensor
    seconds: float
    monotone: list[bool] | None = None
    iterations: float | None = None
    trace: Any = None


def _run_elder(model, op, y, x0) -> _Run:
    t0 = time.perf_counter()
    x = model(y, op, init=x0)
    seconds = (time.perf_counter() - t0) / y.shape[0]
    trace = model.last_trace if model.prior.has_value else None
    if trace is None:
        its = model.last_stats.iterations.float().mean() if model.last_stats is not None else None
        return _Run(x.detach(), seconds, None, None if its is None else float(its))
    obj = trace.objective
    mono = [bool((obj[1:, b] <= obj[:-1, b]).all()) for b in range(obj.shape[1])]
    return _Run(x.detach(), seconds, mono, float(trace.iterations.float().mean()), trace)


def _tune(candidates: dict[Any, Any], op, val_x, val_y, val_x0) -> tuple[Any, float, Any]:
    """The candidate model with the best mean validation PSNR: ``(key, psnr, model)``."""
    best = None
    for key, model in candidates.items():
        score = float(_psnr(_run_elder(model, op, val_y, val_x0).x, val_x).mean())
        if best is None or score > best[1]:
            best = (key, score, model)
    return best


def _previous_choices(path: Path = RESULTS_JSON) -> dict[str, dict[str, Any]]:
    """The validation-tuned values of the last full run, per setting and method (for ``--quick``)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    out: dict[str, dict[str, Any]] = {}
    for row in data.get("rows", []):
        if row.get("kind") == "quality" and row.get("chosen"):
            out.setdefault(row["setting"], {})[row["method"]] = json.loads(row["chosen"])
    return out


# ----------------------------------------------------------------------------- one setting
def _evaluate_setting(
    name: str, setting: Setting, counts: tuple[int, int], quick: bool, previous: dict, report: BenchReport
) -> dict[str, Any]:
    from deqir.methods.baselines import run_baseline, tune_hyperparameters
    from deqir.priors.pretrained import load_pretrained

    size = IMAGE_SIZE
    op = _operator(setting, size)
    val_x = split_images(setting.source, "val", counts[0], size)
    test_x = split_images(setting.source, "test", counts[1], size)
    val_y, val_x0 = _measure(op, val_x, setting.noise_sigma, seed=1)
    test_y, test_x0 = _measure(op, test_x, setting.noise_sigma, seed=2)
    denoiser = load_pretrained(DENOISER[setting.task])
    chosen_before = previous.get(name, {})
    val = (op, val_x, val_y, val_x0)
    results: dict[str, dict[str, Any]] = {}

    def record(method: str, run: _Run, chosen: dict[str, Any], val_psnr: float | None) -> None:
        from deqir.metrics import compute_metrics

        m = compute_metrics(run.x.clamp(0, 1), test_x)
        row = {
            "kind": "quality",
            "setting": name,
            "task": setting.task,
            "trained_setting": setting.trained,
            "method": method,
            "psnr": float(m["psnr"].mean()),
            "ssim": float(m["ssim"].mean()),
            "snr": float(m["snr"].mean()),
            "val_psnr": val_psnr,
            "seconds_per_image": run.seconds,
            "iterations": run.iterations,
            "monotone": None if run.monotone is None else sum(run.monotone) / len(run.monotone),
            "chosen": json.dumps(chosen, sort_keys=True),
            "test_images": int(test_x.shape[0]),
        }
        report.add_row(**row)
        results[method] = {**row, "run": run}

    # pretrained potentials (no DEQ): σ and λ on validation
    for method, potential in (("gs_pretrained", "gradient_step"), ("red_pretrained", "red")):
        if quick:
            c = chosen_before.get(method, {"sigma": 25 / 255, "lam": 0.075})
            model, val_psnr = _elder(denoiser, potential, c["sigma"], c["lam"], TAU), None
        else:
            # coordinate search: λ at the middle σ, then σ at that λ (6 runs instead of 12)
            def make(s: float, lam: float, potential: str = potential):
                return _elder(denoiser, potential, s, lam, TAU)

            s_mid = SIGMA_GRID[len(SIGMA_GRID) // 2]
            (_, lam), score1, m1 = _tune({(s_mid, v): make(s_mid, v) for v in LAM_GRID}, *val)
            others = _tune({(v, lam): make(v, lam) for v in SIGMA_GRID if v != s_mid}, *val)
            (s, lam), val_psnr, model = max([((s_mid, lam), score1, m1), others], key=lambda t: t[1])
            c = {"sigma": s, "lam": lam}
        record(method, _run_elder(model, op, test_y, test_x0), c, val_psnr)

    # the trained models: learned τ, learned λ times a validation-chosen factor
    for method, pattern in TRAINED.items():
        shipped = pattern.format(task=TASK_RUN[setting.task])
        try:
            trained = load_shipped(shipped)
        except Exception as err:  # noqa: BLE001 - reported as a missing row, not a crash
            report.add_row(kind="missing", setting=name, method=method, reason=str(err)[:200])
            continue
        lam0, tau0 = float(trained.lam.detach()), float(trained.tau.detach())
        sigma = trained.prior.prior_sigma
        potential = trained.potential_name
        if quick:
            f = chosen_before.get(method, {}).get("lam_factor", 1.0)
            model, val_psnr = _elder(trained.network, potential, sigma, lam0 * f, tau0), None
        else:
            grid = {f: _elder(trained.network, potential, sigma, lam0 * f, tau0) for f in LAM_FACTORS}
            f, val_psnr, model = _tune(grid, *val)
        chosen = {"lam_factor": f, "lam": lam0 * f, "tau": tau0, "sigma": sigma, "weights": shipped}
        record(method, _run_elder(model, op, test_y, test_x0), chosen, val_psnr)

    # PnP / RED baselines with the same shipped denoiser
    if not quick:
        for method, grid in BASELINE_GRIDS.items():
            tuned = tune_hyperparameters(
                op,
                method,
                val_x,
                noise_sigma=setting.noise_sigma,
                denoiser=denoiser,
                grid=grid,
                iterations=BASELINE_ITERATIONS,
                seed=1,
            )
            t0 = time.perf_counter()
            res = run_baseline(
                op, test_y, method, denoiser=denoiser, params=tuned.best, iterations=BASELINE_ITERATIONS
            )
            run = _Run(res.x, (time.perf_counter() - t0) / test_x.shape[0])
            record(method, run, tuned.best, tuned.best_score)
    results["_images"] = {"truth": test_x[0, 0], "input": test_x0[0, 0]}
    return results


# ----------------------------------------------------------------------------- figure
def _figure(per_setting: dict[str, dict[str, Any]], path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trained = [n for n, s in SETTINGS.items() if s.trained and n in per_setting]
    if not trained:
        return None
    fig, axes = plt.subplots(len(trained), 5, figsize=(15, 3.2 * len(trained)), squeeze=False)
    for i, name in enumerate(trained):
        res = per_setting[name]
        ax_obj, ax_step = axes[i, 0], axes[i, 1]
        for method, style in (("gs_pretrained", "--"), ("elder", "-"), ("red_pretrained", ":")):
            run = res.get(method, {}).get("run")
            if run is None or run.trace is None:
                continue
            obj = run.trace.objective[:, 0].double()
            n = int(run.trace.iterations[0])
            ax_obj.semilogy(
                range(n + 1), (obj[: n + 1] - obj[: n + 1].min()).clamp_min(1e-12), style, label=method
            )
            ax_step.semilogy(
                range(1, n + 1), run.trace.step_norm[:n, 0].clamp_min(1e-12), style, label=method
            )
        ax_obj.set_title(f"{name}: F(x_k) − min F (test image 1)", fontsize=8)
        ax_step.set_title("‖x_{k+1} − x_k‖", fontsize=8)
        for ax in (ax_obj, ax_step):
            ax.set_xlabel("iteration", fontsize=8)
            ax.legend(fontsize=7)
        panels = [("truth", res["_images"]["truth"], None)]
        for method in ("gs_pretrained", "elder"):
            if method in res:
                x = res[method]["run"].x[0, 0]
                panels.append((method, x, float(_psnr(x[None, None], res["_images"]["truth"][None, None]))))
        for j, (title, img, p) in enumerate(panels[:3]):
            ax = axes[i, 2 + j]
            ax.imshow(img.clamp(0, 1).numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_title(title if p is None else f"{title}: {p:.2f} dB", fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    from deqir.figures import save_figure

    return save_figure(fig, path, dpi=80)


# ----------------------------------------------------------------------------- run
def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def run(quick: bool = False, figure_path: str | Path | None = None) -> BenchReport:
    """Evaluate every method on every setting; see the module docstring.

    Args:
        quick: the training settings only, 2 test images, last run's tuned values (no tuning).
        figure_path: where the PNG goes (default ``results/elder.png``, or ``out/elder-quick.png``).
    """
    from tqdm import tqdm

    names = [n for n, s in SETTINGS.items() if s.trained] if quick else list(SETTINGS)
    counts = (2, 2) if quick else (3, 5)
    report = BenchReport(
        "elder",
        config={
            "settings": {n: SETTINGS[n].__dict__ for n in names},
            "image_size": IMAGE_SIZE,
            "val_images": counts[0],
            "test_images_max": counts[1],
            "eval_iterations": EVAL_ITERATIONS,
            "eval_tol": EVAL_TOL,
            "sigma_grid": list(SIGMA_GRID),
            "lam_grid": list(LAM_GRID),
            "lam_factors": list(LAM_FACTORS),
            "baseline_grids": BASELINE_GRIDS,
            "quick": quick,
        },
    )
    previous = _previous_choices() if quick else {}
    per_setting: dict[str, dict[str, Any]] = {}
    for name in tqdm(names, desc="elder bench", unit="setting"):
        per_setting[name] = _evaluate_setting(name, SETTINGS[name], counts, quick, previous, report)

    def diffs(a: str, b: str, only_trained: bool) -> list[float]:
        out = []
        for name, res in per_setting.items():
            if (SETTINGS[name].trained or not only_trained) and a in res and b in res:
                out.append(res[a]["psnr"] - res[b]["psnr"])
        return out

    monotone = [
        m
        for res in per_setting.values()
        for k, r in res.items()
        if k != "_images"
        for m in (r["run"].monotone or [])
    ]
    report.summary.update(
        gain_over_pretrained_db=_mean(diffs("elder", "gs_pretrained", True)),
        gap_to_implicit_db=_mean(diffs("implicit_deq", "elder", True)),
        monotone_fraction=_mean([float(m) for m in monotone]),
        monotone_reconstructions=len(monotone),
        gain_over_pretrained_all_settings_db=_mean(diffs("elder", "gs_pretrained", False)),
        gap_to_implicit_all_settings_db=_mean(diffs("implicit_deq", "elder", False)),
        elder_minus_red_pretrained_db=_mean(diffs("elder", "red_pretrained", True)),
    )
    fig = Path(figure_path) if figure_path else Path("out/elder-quick.png" if quick else "results/elder.png")
    saved = _figure(per_setting, fig)
    report.config["figure"] = None if saved is None else str(saved)
    return report
