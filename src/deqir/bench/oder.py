"""``deqir bench oder``: ODER against RED(DEQ) and its baselines, and where the savings come from.

Three settings (METHODS.md §4, issue "ODER and its baselines"):

(a) sparse-view CT, 128², 90 angles, 50 dB input SNR, CT-like test images (phantoms and brain
    slices, the held-out split of ``ct_phantoms+brain``) and the real CT slices of pydicom:
    FBP (Hann), TV (λ tuned on the validation split), RED(Denoising) (the pretrained prior, step
    and τ tuned on validation), RED(DEQ) (full batch, Nesterov at test, and solved to its fixed
    point by Anderson), ODER with w = 10 and 30 of 90 stratified angles (Nesterov, a fixed
    number of iterations at test, then tail averaging), RED(Unfold) and a U-Net on FBP;
(b) a measurement-heavy CT setting (256², 720 angles) where the projector dominates: cost of
    one training step for w ∈ {b/12, b/6, b/3, b} with the same network (fully convolutional);
(c) multi-coil MRI, 128², 8 coils, 4× Cartesian, 40 dB: zero-filled, TV, RED(Denoising),
    RED(DEQ), ODER with 2 and 4 coils per iteration.

Test sets are the whole held-out splits (29 CT-like images: 22 random-ellipse phantoms and 7
brain slices; the 4 real CT slices; 9 MRI slices, with this machine's data packages: the summary
records the counts in ``*_test_images``). The target gaps (``ct_snr_gap_db``, ``mri_snr_gap_db``)
and ``ct_oder_minus_tv_db`` come with the standard error of the paired per-image SNR difference
(``*_se_db``, :func:`paired_gap`), so a reader can tell a gap from the spread between images;
``ct_oder_minus_tv_by_source`` splits ODER minus TV by where the test images come from, and
``{ct,mri}_val_snr_gap_db`` give the target gaps on the whole validation split, scored like a
test set, to show how stable a gap is (its first images chose the training checkpoints and tune
TV and RED(Denoising), so it is not a second test set). ``red_deq_fixed_point`` solves RED(DEQ)'s
map to its fixed point (Anderson, relative residual :data:`FIXED_POINT_TOL`), and
``{ct,mri}_fixed_point_minus_trained_iterations_db`` says what that fixed point scores against
the iterations the model was trained with: negative means the trained model is a network of its
iterations more than an equilibrium model. ``red_deq_anderson`` is RED(DEQ) trained with
Anderson to a relative residual of 1e-4 in every step (``configs/oder_*_red_deq_anderson.yaml``)
and tested with that solver; ``red_deq_anderson_fixed_point`` solves the same map on to
:data:`FIXED_POINT_TOL` (full run only). ``{ct,mri}_snr_gap_anderson_db`` compare it with ODER,
``{ct,mri}_anderson_minus_red_deq_db`` with the fixed-count RED(DEQ), and
``{ct,mri}_anderson_fixed_point_minus_trained_tolerance_db`` say whether it is an equilibrium model.
On MRI, ``red_deq_anderson_1e5`` is the same trained to 1e-5 (``mri_*anderson_1e5*`` keys).
``ct_snr_gap_by_source`` splits the CT target gap by image source; ``red_deq_seed1`` and
``oder_w30_seed1`` are the two models trained again with seed 1 (``configs/*_seed1.yaml``), and
``ct_snr_gap_by_seed_db`` gives the target gap for each training seed, which the per-image
standard errors do not include (full run only). ``red_deq_as_oder_w30`` is RED(DEQ)'s network
tested with ODER's solver (w = 30, then tail averaging) and ``oder_w30_full_batch`` is ODER's
network tested with the full-batch solver; ``ct_snr_gap_full_batch_solver_db`` and
``ct_snr_gap_oder_solver_db`` compare the two networks under one solver (is the target gap in the
trained weights or in the test solver?), and ``ct_test_snr_by_source`` gives every method's SNR on
each image source of the CT test split. Where the CT error is: ``ct_error_split_ellipses`` gives
each method's squared error on the random-ellipse test images, on the pixels next to an edge of
the true image and on the flat others (:func:`edge_mask`), and ``ct_oder_over_tv_{edge,flat}_error``
ODER's over TV's. ``ct_val_oder_minus_tv_db`` (with ``_se_db``, ``_by_source``) is ODER minus TV on
the whole validation split (full run only), whose share of ellipse phantoms differs from the test
split's.

Costs of one training step (forward solve, backward, batch 2), side by side in one run: wall
time (in this process), bytes autograd keeps for backward and peak process memory above the
step's starting point (both in a worker process with an exact allocator,
:class:`~deqir.bench.common.IsolatedMemory`), applications of the measurement
operator counted exactly in blocks, and the share of step time spent inside the operator.

The learned models are the shipped weights ``deqir/weights/oder_*.safetensors`` (written by
:func:`export_all` from the runs of ``configs/oder_*.yaml`` that :data:`SHIPPED_FROM` names);
nothing is trained here, so ``--quick`` (one image per test set, the headline w only, no crossed
rows, a short TV grid, RED(Denoising) at its configured τ, MRI's quality rows scored in a second
process while CT's run, one cost repeat with :data:`QUICK_COST_ITERATIONS` iterations, timed while
the memory worker measures) re-evaluates them in about a minute, with the host's speed
(``results/oder_quick.json``).

Example:
    $ deqir bench oder --quick --json out/oder-quick.json
"""

from __future__ import annotations

import multiprocessing
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import torch

from deqir.bench.common import (
    WEIGHTS_DIR,
    BenchReport,
    IsolatedMemory,
    export_run,
    load_shipped,
    mean_scores,
    paired_gap,
    run_jobs,
    split_images,
)

CT_RUNS = (
    "oder_ct_prior",
    "oder_ct_red_deq",
    "oder_ct_red_deq_anderson",
    "oder_ct_w30",
    "oder_ct_w10",
    "oder_ct_unfold",
    "oder_ct_unet_post",
    "oder_ct_red_deq_seed1",
    "oder_ct_w30_seed1",
    "oder_ct_red_deq_restart",  # the first pair, trained with the adaptive restart: deqir bench oder_restart
    "oder_ct_w30_restart",
    "oder_ct_red_deq_first",  # the first pair without it, which oder_restart compares them with
    "oder_ct_w30_first",
    "oder_ct_prior_first",  # their prior (deqir bench oder_finetunes: the first recipe's experiments)
)
MRI_RUNS = (
    "oder_mri_prior",
    "oder_mri_red_deq",
    "oder_mri_red_deq_anderson",
    "oder_mri_red_deq_anderson_1e5",
    "oder_mri_w4",
    "oder_mri_w2",
    "oder_mri_red_deq_restart",  # the first pair, trained with the adaptive restart: deqir bench oder_restart
    "oder_mri_w4_restart",
)
# each CT network tested with the other's solver (rows, the variant whose network, the w of the
# solver; None: full batch): is the target gap in the weights or in the test solver?
CT_CROSSES = {"red_deq_as_oder_w30": ("red_deq", 30), "oder_w30_full_batch": ("w30", None)}
TEST_ITERATIONS: int | None = None  # Nesterov iterations at test (None: as trained; paper: 180)
TRAIN_ITERATIONS: int | None = None  # forward iterations of a costed training step (None: as trained)
DEFAULT_ITERATIONS = 40  # when a model's config names no max_iter
LONG_SOLVE_FACTOR = 2.5  # RED(Denoising) is also run with this many times the iterations (at least 100)
QUICK_COST_ITERATIONS = 3  # --quick: cost rows with 3 iterations (ratios between w, not absolute cost)
TEST_AVERAGE = 10  # ODER at test: mean of 10 further iterations (tail averaging; 0 for full batch)
# multi-coil MRI: 50, chosen on the validation split (it about halved ODER's gap to RED(DEQ) there;
# on CT validation more averaging did not help)
MRI_TEST_AVERAGE = 50
# RED(DEQ)'s map solved to its fixed point (Anderson, m = 5): is the trained map an equilibrium
# model, or a network of its training iterations?
FIXED_POINT_TOL = 1e-6  # relative residual ||T(z) - z|| / ||T(z)||
FIXED_POINT_MAX_ITER = 400
STEP = 1.5  # step on the L-normalised data gradient (as in the configs)
RED_DENOISING_TAUS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1)
QUICK_TV_GRID = [1e-4, 1e-3, 1e-2]  # --quick only (60 TV iterations)
# where the CT error is (summary ct_error_split_ellipses): pixels within one pixel of a jump larger
# than this between neighbours of the true image are edge pixels, the others flat
EDGE_JUMP = 0.02


# ----------------------------------------------------------------------------- weights
# The training run each shipped weights file is exported from where it is not the run of its own
# name. The shipped CT models follow one recipe (issue 6): a prior pretrained on noise levels 0.01
# to 0.05 (configs/oder_ct_prior_sigma.yaml), each equilibrium model fine-tuned from it 600 steps at
# lr 1e-3 and then 300 steps with the implicit gradient (configs/oder_ct_*_sigma{,_implicit}.yaml;
# RED(Unfold) keeps its 150 steps; RED(DEQ) trained with Anderson has the first stage only).
# ``*_first`` are the first recipe's prior and pair (prior pretrained on 0 to 0.1, 900 steps at lr
# 3e-4: configs/oder_ct_{prior,red_deq,w30}.yaml), which the restart pair of ``deqir bench
# oder_restart`` is trained like and compared with, and the experiments of ``oder_finetunes`` start from.
SHIPPED_FROM = {
    "oder_ct_prior": "oder_ct_prior_sigma",
    "oder_ct_red_deq": "oder_ct_red_deq_sigma_implicit",
    "oder_ct_red_deq_anderson": "oder_ct_red_deq_anderson_sigma",  # first stage only: its config says why
    "oder_ct_w30": "oder_ct_w30_sigma_implicit",
    "oder_ct_w10": "oder_ct_w10_sigma_implicit",
    "oder_ct_unfold": "oder_ct_unfold_sigma",
    "oder_ct_red_deq_seed1": "oder_ct_red_deq_sigma_seed1_implicit",
    "oder_ct_w30_seed1": "oder_ct_w30_sigma_seed1_implicit",
    "oder_ct_prior_first": "oder_ct_prior",
    "oder_ct_red_deq_first": "oder_ct_red_deq",
    "oder_ct_w30_first": "oder_ct_w30",
}


def training_run(name: str) -> str:
    """The run (and config) under ``runs/`` that the shipped weights ``name`` are exported from.

    Example:
        >>> training_run("oder_ct_w30"), training_run("oder_mri_w4")
        ('oder_ct_w30_sigma_implicit', 'oder_mri_w4')
    """
    return SHIPPED_FROM.get(name, name)


def shipped_name(run: str) -> str:
    """The shipped weights exported from the training run ``run`` (the inverse of :func:`training_run`).

    A run of the first CT recipe that is not shipped (``oder_ct_w10``: the shipped ``oder_ct_w10``
    comes from another run) raises :class:`~deqir.errors.InvalidValueError`.

    Example:
        >>> [shipped_name(r) for r in ("oder_ct_w30", "oder_ct_w30_sigma_implicit", "oder_mri_w4")]
        ['oder_ct_w30_first', 'oder_ct_w30', 'oder_mri_w4']
    """
    from deqir.errors import InvalidValueError

    name = next((name for name, source in SHIPPED_FROM.items() if source == run), None)
    if name is not None:
        return name
    if run in SHIPPED_FROM:
        raise InvalidValueError(
            f"run {run!r} is not shipped: the shipped {run!r} is exported from {SHIPPED_FROM[run]!r}; "
            f"train configs/{run}.yaml and load runs/{run} instead"
        )
    return run


def export_all(runs_dir: str | Path = "runs") -> list[Path]:
    """Export every ODER run found under ``runs_dir`` under its shipped name (what ``make oder``
    ends with; :data:`SHIPPED_FROM`)."""
    runs = [(Path(runs_dir) / training_run(r), r) for r in (*CT_RUNS, *MRI_RUNS)]
    return [export_run(run, name=name) for run, name in runs if run.is_dir()]


# ----------------------------------------------------------------------------- data
_images = split_images


def _real_ct(size: int = 128) -> tuple[torch.Tensor, list[str]]:
    from deqir.data.sources import get_source
    from deqir.data.splits import fit_image

    src = get_source("ct")
    out, keys = [], []
    for entry in src.entries(warn=False):
        for s in entry.load(size):
            out.append(torch.from_numpy(fit_image(s.image, size, src.fit))[None])
            keys.append(s.key)
    return (torch.stack(out) if out else torch.zeros(0, 1, size, size)), keys


def _sources(source: str, split: str, count: int | None, size: int = 128) -> dict[str, list[int]]:
    """Indices of the images of :func:`split_images` grouped by where they come from (the first
    part of each image's key: ``ellipses``, ``nilearn``, ...)."""
    from deqir.data import build_dataset

    keys = list(build_dataset(source, size, seed=0)[split].keys)
    groups: dict[str, list[int]] = {}
    for i, key in enumerate(keys if count is None else keys[:count]):
        groups.setdefault(str(key).split("/")[0], []).append(i)
    return groups


def gap_by_source(a: torch.Tensor, b: torch.Tensor, groups: dict[str, list[int]]) -> dict[str, dict]:
    """Mean per-image difference ``a - b`` (dB) within each group of image indices.

    Example:
        >>> gap_by_source(torch.tensor([3.0, 1.0, 2.0]), torch.zeros(3), {"ellipses": [0, 2], "nilearn": [1]})
        {'ellipses': {'images': 2, 'db': 2.5}, 'nilearn': {'images': 1, 'db': 1.0}}
    """
    return {name: {"images": len(idx), "db": float((a[idx] - b[idx]).mean())} for name, idx in groups.items()}


def snr_by_source(per_image: dict[str, torch.Tensor], groups: dict[str, list[int]]) -> dict[str, dict]:
    """Each method's mean per-image SNR (dB) within each group of image indices.

    Example:
        >>> snr_by_source({"tv": torch.tensor([30.0, 20.0, 34.0])}, {"ellipses": [0, 2], "nilearn": [1]})
        {'tv': {'ellipses': 32.0, 'nilearn': 20.0}}
    """
    return {
        method: {name: float(values[idx].mean()) for name, idx in groups.items()}
        for method, values in per_image.items()
    }


def edge_mask(x: torch.Tensor, jump: float = EDGE_JUMP) -> torch.Tensor:
    """Pixels of ``x`` (``(N, 1, H, W)``) next to an edge, as 1.0: within one pixel (3×3
    neighbourhood) of a pair of horizontal or vertical neighbours that differ by more than ``jump``.

    Example:
        >>> x = torch.zeros(1, 1, 1, 6); x[..., 3:] = 1.0
        >>> edge_mask(x)[0, 0, 0].tolist()
        [0.0, 1.0, 1.0, 1.0, 1.0, 0.0]
    """
    dy = (x[..., 1:, :] - x[..., :-1, :]).abs() > jump
    dx = (x[..., :, 1:] - x[..., :, :-1]).abs() > jump
    step = torch.zeros_like(x, dtype=torch.bool)
    step[..., 1:, :] |= dy
    step[..., :-1, :] |= dy
    step[..., :, 1:] |= dx
    step[..., :, :-1] |= dx
    return torch.nn.functional.max_pool2d(step.float(), 3, 1, 1)


def squared_error_split(
    out: torch.Tensor, x: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image, the sum of squared errors of ``out`` on the pixels of ``mask`` and on the others.

    Example:
        >>> x = torch.zeros(1, 1, 2, 2); out = torch.tensor([[[[1.0, 2.0], [0.0, 0.0]]]])
        >>> [t.tolist() for t in squared_error_split(out, x, torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]]))]
        [[1.0], [4.0]]
    """
    err = (out - x).square()
    return (err * mask).flatten(1).sum(1).double(), (err * (1 - mask)).flatten(1).sum(1).double()


def error_split_summary(
    split: dict[str, tuple[torch.Tensor, torch.Tensor]], images: list[int]
) -> dict[str, Any]:
    """Where the CT error is on the random-ellipse test images (``images``): per method each
    image's sum of squared errors on its edge pixels and on its flat pixels, averaged over the
    images (``ct_error_split_ellipses``), and ODER's (w = 30) over TV's on each
    (``ct_oder_over_tv_{edge,flat}_error``).

    Example:
        >>> split = {"tv": (torch.tensor([1.0, 9.0]), torch.tensor([1.0, 9.0])),
        ...          "oder_w30": (torch.tensor([2.0, 9.0]), torch.tensor([3.0, 9.0]))}
        >>> error_split_summary(split, [0])["ct_oder_over_tv_flat_error"]
        3.0
    """
    if not images:
        return {}
    table = {
        method: {"edge_sse": float(edge[images].mean()), "flat_sse": float(flat[images].mean())}
        for method, (edge, flat) in split.items()
    }
    out: dict[str, Any] = {"ct_error_split_ellipses": table}
    if "oder_w30" in table and "tv" in table:
        for part in ("edge", "flat"):
            out[f"ct_oder_over_tv_{part}_error"] = (
                table["oder_w30"][f"{part}_sse"] / table["tv"][f"{part}_sse"]
            )
    return out


def _simulate(op, x: torch.Tensor, snr_db: float, seed: int) -> torch.Tensor:
    from deqir.methods.baselines import simulate

    return simulate(op, x, noise_snr_db=snr_db, seed=seed)


def _init(op, y: torch.Tensor, kind: str) -> torch.Tensor:
    """The initialisation the trainer uses (``fbp``, ``zero_filled`` or ``scaled_adjoint``)."""
    if kind == "scaled_adjoint":
        from deqir.methods.common import lipschitz

        return op.A_adjoint(y) / lipschitz(op)
    x = op.fbp(y) if kind == "fbp" else op.zero_filled(y)
    x = x.abs() if x.is_complex() else x
    return x.clamp_min(0)


# ----------------------------------------------------------------------------- quality
_scores = mean_scores


def _configure(
    model, *, mode: str, solver: str, iterations: int, minibatch: int | None = None, tol=1e-4, average=None
):
    model.mode, model.solver_name, model.max_iter, model.tol = mode, solver, iterations, tol
    model.test_average = TEST_AVERAGE if average is None else average
    model.minibatch = minibatch
    model._sampler = None
    return model


def _as_tested(model, w: int | None, iterations: int, average: int | None):
    """``model`` set up for the paper's test solver: Nesterov with a fixed number of iterations,
    over all blocks (``w=None``: RED(DEQ)) or over minibatches of ``w`` then tail averaging (ODER)."""
    if w is None:
        return _configure(model, mode="deq", solver="nesterov", iterations=iterations, tol=0.0)
    return _configure(
        model, mode="oder", solver="nesterov", iterations=iterations, minibatch=w, average=average
    )


def _reconstruct(model, op, y, x0) -> tuple[torch.Tensor, float]:
    t0 = time.perf_counter()
    with torch.no_grad():
        out = torch.cat([model(y[i : i + 1], op, init=x0[i : i + 1]) for i in range(y.shape[0])])
    return out, (time.perf_counter() - t0) / y.shape[0]


def _solve_to_fixed_point(model, op, y, x0) -> tuple[tuple[torch.Tensor, float], dict]:
    """The full-batch map solved by Anderson to :data:`FIXED_POINT_TOL` (at most
    :data:`FIXED_POINT_MAX_ITER` iterations), one image at a time; returns the reconstruction,
    seconds per image and how the solves ended."""
    _configure(model, mode="deq", solver="anderson", iterations=FIXED_POINT_MAX_ITER, tol=FIXED_POINT_TOL)
    return _solve_recording_stops(model, op, y, x0)


def _solve_recording_stops(model, op, y, x0) -> tuple[tuple[torch.Tensor, float], dict]:
    """Run ``model``'s own full-batch Anderson solve one image at a time, recording how each ended."""
    outs, stats, t0 = [], [], time.perf_counter()
    with torch.no_grad():
        for i in range(y.shape[0]):
            outs.append(model(y[i : i + 1], op, init=x0[i : i + 1]))
            stats.append(model.last_stats)
    seconds = (time.perf_counter() - t0) / y.shape[0]
    info = {
        "solver": model.solver_name,
        "tol": model.tol,
        "max_iter": model.max_iter,
        "converged": sum(int(s.converged.all()) for s in stats),
        "images": len(stats),
        "median_iterations": float(torch.cat([s.iterations for s in stats]).float().median()),
        "max_rel_residual": float(max(s.rel_residual.max() for s in stats)),
    }
    return (torch.cat(outs), seconds), info


def _red_denoising(prior_net, op, val_x, val_y, val_x0, iterations: int, taus=None):
    """RED with the pretrained prior only (Nesterov, fixed iterations); τ tuned on validation images."""
    from deqir.methods.equilibrium import REDEquilibrium

    best = None
    for tau in taus or RED_DENOISING_TAUS:
        m = REDEquilibrium(
            prior_net,
            mode="deq",
            tau=tau,
            step=STEP,
            learn_parameters=False,
            solver="nesterov",
            max_iter=iterations,
            tol=0.0,
        )
        out, _ = _reconstruct(m, op, val_y, val_x0)
        score = _scores(out, val_x)["psnr"]
        if best is None or score > best[0]:
            best = (score, tau, m)
    return best[2], best[1]


def _shipped_config(name: str | None) -> dict:
    """The training config in a shipped model's sidecar (``{}`` when there is no such model)."""
    from deqir.train.checkpoint import read_sidecar

    if name is None or not (WEIGHTS_DIR / f"{name}.safetensors").is_file():
        return {}
    return (read_sidecar(WEIGHTS_DIR / f"{name}.safetensors") or {}).get("config") or {}


def _trained_iterations(name: str | None) -> int:
    """Forward iterations a shipped model was trained with (``method.options.max_iter`` of its
    config), so that it is tested and costed as trained.

    Example:
        >>> _trained_iterations("oder_mri_w4")
        100
    """
    return int(_trained_option(name, "max_iter", DEFAULT_ITERATIONS))


def _trained_option(name: str | None, key: str, default):
    """``method.options[key]`` of a shipped model's training config (``default`` when unset).

    Example:
        >>> _trained_option("oder_ct_w30", "minibatch", None)
        30
    """
    options = (_shipped_config(name).get("method") or {}).get("options") or {}
    return options.get(key, default)


def scored_replicates(
    replicates: dict[str, tuple[str, int | None]], names: dict[str, str], variants: dict[str, int | None]
) -> dict[str, tuple[str, int | None]]:
    """The replicates (row -> shipped name, w) the full run scores: those shipped and trained with
    the adaptive-restart setting of the variant they repeat (the one of the same w); otherwise their
    gap would measure the restart, not the training seed.

    Example:
        >>> reps = {"oder_w30_seed1": ("oder_ct_w30_seed1", 30)}
        >>> scored_replicates(reps, {"w30": "oder_ct_w30"}, {"w30": 30}) == reps
        True
    """
    repeated = {w: names[v] for v, w in variants.items()}
    return {
        row: (name, w)
        for row, (name, w) in replicates.items()
        if (WEIGHTS_DIR / f"{name}.safetensors").is_file()
        and w in repeated
        and _trained_restart(name) == _trained_restart(repeated[w])
    }


def _trained_restart(name: str | None) -> bool:
    """Whether a shipped model was trained (and so is tested) with Nesterov's adaptive restart.

    Example:
        >>> _trained_restart("oder_ct_w30"), _trained_restart("oder_ct_w30_restart")
        (False, True)
    """
    return bool(_trained_option(name, "restart", True))


def _train_steps(name: str | None) -> int | None:
    """Training steps of a shipped model, from its sidecar's config (``None`` for untrained methods)."""
    return (_shipped_config(name).get("train") or {}).get("steps")


def _reconstruct_as_tested(model, w, iterations, average, op, y, x0) -> tuple[torch.Tensor, float]:
    """Set ``model`` up for the test solver (:func:`_as_tested`), then reconstruct, seconds per image."""
    return _reconstruct(_as_tested(model, w, iterations, average), op, y, x0)


def _timed_baseline(op, y, method: str, **options) -> tuple[torch.Tensor, float]:
    """A classical or TV reconstruction (:func:`run_baseline`) with its seconds per image."""
    from deqir.methods.baselines import run_baseline

    t0 = time.perf_counter()
    x = run_baseline(op, y, method, **options).x
    return x, (time.perf_counter() - t0) / y.shape[0]


def _recording(solves: dict, key: tuple[str, str], solve: Callable, model, op, y, x0):
    """``solve(model, op, y, x0)`` for an Anderson solve that also reports how it ended; the report
    goes to ``solves[key]`` (key: method and test set) and the reconstruction is returned."""
    result, solves[key] = solve(model, op, y, x0)
    return result


def _post_process(model, x0: torch.Tensor) -> tuple[torch.Tensor, float]:
    """A post-processing network applied to the initial reconstruction, with seconds per image."""
    t0 = time.perf_counter()
    with torch.no_grad():
        out = model(x0)
    return out, (time.perf_counter() - t0) / x0.shape[0]


def _quality(
    task: str,
    op,
    names: dict[str, str],
    test_sets: dict[str, torch.Tensor],
    val_x: torch.Tensor,
    snr_db: float,
    init_kind: str,
    variants: dict[str, int | None],
    report: BenchReport,
    figure: dict,
    quick: bool = False,
    per_image: dict[str, dict[str, torch.Tensor]] | None = None,
    average: int | None = None,
    replicates: dict[str, tuple[str, int | None]] | None = None,
    crosses: dict[str, tuple[str, int | None]] | None = None,
    error_split: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> dict[str, dict[str, float]]:
    """Score every method on every test set; returns the mean SNR per set and method.

    ``per_image`` (when given) receives each image's SNR per set and method, for paired
    statistics (:func:`paired_gap`). ``replicates`` maps a row name to a shipped model trained
    with another seed and its w (``None``: the full batch), tested like the model it repeats; the
    full run scores those that are shipped (how much a gap moves between training seeds).
    ``crosses`` maps a row name to a key of ``variants`` and another w: that variant's network
    tested with the other width's solver (a copy of the model, so the rows before it draw the
    same minibatches): is a gap in the trained weights or in the test solver?
    ``error_split`` (when given) receives, for each method on the ``test`` set, each image's
    squared error on the true image's edge pixels and on its flat pixels (:func:`edge_mask`,
    :func:`squared_error_split`).
    """
    from deqir.methods.baselines import tune_hyperparameters
    from deqir.metrics import compute_metrics

    classical = {"fbp": "fbp", "zero_filled": "zero_filled"}.get(init_kind, "tikhonov")
    val_y = _simulate(op, val_x, snr_db, seed=1)
    val_x0 = _init(op, val_y, init_kind)
    # --quick: a 3-point TV grid and 60 iterations (the full run: the default 9-point grid, 200)
    tv_iterations = 60 if quick else None
    tv_grid = {"grid": {"lam": QUICK_TV_GRID}} if quick else {}
    # every RED variant is solved with the iterations the task's models were trained with;
    # RED(Denoising) also with a longer solve, to show what the pretrained prior alone reaches
    iterations = TEST_ITERATIONS or _trained_iterations(names.get("red_deq"))
    long_iterations = max(100, round(LONG_SOLVE_FACTOR * iterations))
    long_name = f"red_denoising_{long_iterations}it"
    prior = load_shipped(names["prior"])
    tuning = [
        (
            "tv",
            partial(
                tune_hyperparameters,
                op,
                "tv",
                val_x,
                noise_snr_db=snr_db,
                seed=1,
                iterations=tv_iterations,
                **tv_grid,
            ),
        ),
        (
            "red_denoising",
            partial(
                _red_denoising,
                prior,
                op,
                val_x,
                val_y,
                val_x0,
                iterations,
                # --quick: no grid, the τ the task's RED(DEQ) config starts from (tuned for the
                # pretrained prior on the validation split)
                taus=(float(_trained_option(names.get("red_deq"), "tau", 0.01)),) if quick else None,
            ),
        ),
    ]
    if not quick:
        tuning.append((long_name, partial(_red_denoising, prior, op, val_x, val_y, val_x0, long_iterations)))
    tuned = run_jobs(tuning, f"{task} tuning on validation")
    tv = tuned["tv"]
    red_den, tau = tuned["red_denoising"]
    red_den_long, tau_long = tuned.get(long_name, (None, None))
    models = {v: load_shipped(names[v]) for v in variants}
    replicates = {} if quick else scored_replicates(replicates or {}, names, variants)
    replicate_models = {row: load_shipped(name) for row, (name, _) in replicates.items()}
    # copies of the variants' models for the crossed rows (their solver is set at each test set)
    cross_models = {row: load_shipped(names[v]) for row, (v, _) in (crosses or {}).items()}
    # RED(DEQ) trained with Anderson to a tolerance in every step (its config's solver), tested
    # with that solver and at its fixed point; the full run only (not within --quick's minute)
    # (row name -> shipped weights: red_deq_anderson, trained to 1e-4, and red_deq_anderson_1e5)
    anderson = {
        key: name
        for key, name in names.items()
        if key.startswith("red_deq_anderson")
        and not quick
        and (WEIGHTS_DIR / f"{name}.safetensors").is_file()
    }
    # two copies each: one keeps its training solver, the other is reconfigured for the fixed point
    anderson_models = {key: (load_shipped(name), load_shipped(name)) for key, name in anderson.items()}
    shipped = {
        "red_deq": names.get("red_deq"),
        "red_deq_fixed_point": names.get("red_deq"),
        **anderson,
        **{f"{key}_fixed_point": name for key, name in anderson.items()},
        "red_unfold": names.get("unfold"),
        "unet_post": names.get("unet_post"),
        **{f"oder_w{w}": names[v] for v, w in variants.items() if w is not None},
        **{row: name for row, (name, _) in replicates.items()},
        **{row: names[v] for row, (v, _) in (crosses or {}).items()},
    }
    train_steps = {method: _train_steps(name) for method, name in shipped.items()}
    # rows solved by Nesterov with a trained network: the adaptive restart they were trained with
    nesterov = {
        "red_deq",
        *(f"oder_w{w}" for w in variants.values() if w is not None),
        *replicates,
        *(crosses or {}),
    }
    restarts = {method: _trained_restart(shipped[method]) for method in nesterov if shipped.get(method)}
    results: dict[str, dict[str, float]] = {}
    solves: dict[tuple[str, str], dict] = {}  # (method, test set) -> how its Anderson solves ended
    for set_name, x in test_sets.items():
        if x.shape[0] == 0:
            continue
        y = _simulate(op, x, snr_db, seed=2)
        x0 = _init(op, y, init_kind)
        # every reconstruction of this set, in a fixed order, under one progress bar; ODER's
        # minibatches come from each model's own sampler, which _as_tested resets to its seed
        jobs: list[tuple[str, Callable[[], tuple[torch.Tensor, float]]]] = []
        jobs.append((classical, partial(_timed_baseline, op, y, classical)))
        jobs.append(("tv", partial(_timed_baseline, op, y, "tv", params=tv.best, iterations=tv_iterations)))
        jobs.append(("red_denoising", partial(_reconstruct, red_den, op, y, x0)))
        if red_den_long is not None:
            jobs.append((long_name, partial(_reconstruct, red_den_long, op, y, x0)))
        for v, w in variants.items():
            m = models[v]
            if w is None:  # the full-batch map (w = b): the ODER test solver, and Anderson to a tolerance
                jobs.append(
                    ("red_deq", partial(_reconstruct_as_tested, m, None, iterations, average, op, y, x0))
                )
                if not quick:
                    jobs.append(
                        (
                            "red_deq_fixed_point",
                            partial(
                                _recording,
                                solves,
                                ("red_deq_fixed_point", set_name),
                                _solve_to_fixed_point,
                                m,
                                op,
                                y,
                                x0,
                            ),
                        )
                    )
            else:
                jobs.append(
                    (f"oder_w{w}", partial(_reconstruct_as_tested, m, w, iterations, average, op, y, x0))
                )
        for row, (_, w) in replicates.items():
            jobs.append(
                (
                    row,
                    partial(_reconstruct_as_tested, replicate_models[row], w, iterations, average, op, y, x0),
                )
            )
        for key, (as_trained, to_fixed_point) in anderson_models.items():
            # with its training solver (the model's config), then on to the fixed point
            jobs.append(
                (
                    key,
                    partial(
                        _recording, solves, (key, set_name), _solve_recording_stops, as_trained, op, y, x0
                    ),
                )
            )
            jobs.append(
                (
                    f"{key}_fixed_point",
                    partial(
                        _recording,
                        solves,
                        (f"{key}_fixed_point", set_name),
                        _solve_to_fixed_point,
                        to_fixed_point,
                        op,
                        y,
                        x0,
                    ),
                )
            )
        for extra in ("unfold", "unet_post"):
            if extra in names and (WEIGHTS_DIR / f"{names[extra]}.safetensors").is_file():
                model = load_shipped(names[extra])
                if extra == "unfold":
                    jobs.append(("red_unfold", partial(_reconstruct, model, op, y, x0)))
                else:
                    jobs.append(("unet_post", partial(_post_process, model, x0)))
        # last, on the copies: every row above draws as it did without them
        for row, (_, w) in (crosses or {}).items():
            jobs.append(
                (row, partial(_reconstruct_as_tested, cross_models[row], w, iterations, average, op, y, x0))
            )
        recs = run_jobs(jobs, f"{task} {set_name}")
        edges = edge_mask(x) if error_split is not None and set_name == "test" else None
        for method, (out, seconds) in recs.items():
            clipped = out.clamp(0, 1)
            scores = compute_metrics(clipped, x)  # per image, scored once
            if edges is not None:
                error_split[method] = squared_error_split(clipped, x, edges)
            s = {k: float(scores[k].mean()) for k in ("snr", "psnr", "ssim")}
            results.setdefault(set_name, {})[method] = s["snr"]
            if per_image is not None:
                per_image.setdefault(set_name, {})[method] = scores["snr"].flatten().double()
            report.add_row(
                section="quality",
                task=task,
                test_set=set_name,
                method=method,
                images=int(x.shape[0]),
                snr=s["snr"],
                psnr=s["psnr"],
                ssim=s["ssim"],
                seconds_per_image=seconds,
                params=solves.get((method, set_name))
                or {
                    "tv": tv.best,
                    long_name: {"tau": tau_long, "iterations": long_iterations},
                    "red_denoising": {"tau": tau, "iterations": iterations},
                }.get(method),
                train_steps=train_steps.get(method),
                adaptive_restart=restarts.get(method),
            )
        if set_name == "test":
            figure[task] = {"truth": x[0, 0], **{k: v[0][0, 0].clamp(0, 1) for k, v in recs.items()}}
    return results


# ----------------------------------------------------------------------------- cost
class _OperatorMeter:
    """Counts blocks through ``_forward``/``_adjoint`` of one operator and the time spent there."""

    def __init__(self, op):
        self.op, self.blocks, self.seconds = op, 0, 0.0
        self._fwd, self._adj = op._forward, op._adjoint

        def wrap(fn):
            def inner(t, blocks):
                t0 = time.perf_counter()
                out = fn(t, blocks)
                self.seconds += time.perf_counter() - t0
                self.blocks += op.num_blocks if blocks is None else int(blocks.numel())
                return out

            return inner

        op._forward, op._adjoint = wrap(self._fwd), wrap(self._adj)

    def reset(self) -> None:
        self.blocks, self.seconds = 0, 0.0

    def close(self) -> None:
        self.op._forward, self.op._adjoint = self._fwd, self._adj


def _training_step_cost(
    model, op, x, y, x0, repeat: int, meter: IsolatedMemory, overlap: bool = False
) -> dict[str, float]:
    """Time, operator share and block count of a training step here (default allocator); its
    memory in the isolated worker (exact peak resident memory), after the timing or, with
    ``overlap`` (``--quick``), while this process times the step (which it then reads under load)."""
    memory = meter.submit(model, op, x, y, x0, repeat=1) if overlap else None
    meter_op = _OperatorMeter(op)
    try:
        times, op_times, blocks = [], [], []
        for r in range(repeat + 1):
            model.zero_grad(set_to_none=True)
            meter_op.reset()
            t0 = time.perf_counter()
            loss = (model(y, op, init=x0) - x).square().mean()
            loss.backward()
            dt = time.perf_counter() - t0
            if r == 0:
                continue  # warm-up (kernel caches, allocator)
            times.append(dt)
            op_times.append(meter_op.seconds)
            blocks.append(meter_op.blocks)
    finally:
        meter_op.close()
    model.zero_grad(set_to_none=True)
    memory = memory() if memory is not None else meter.step(model, op, x, y, x0, repeat=1)
    t = statistics.median(times)
    return {
        "step_seconds": t,
        "operator_share": statistics.median(o / s for o, s in zip(op_times, times, strict=True)),
        "operator_block_applications": statistics.median(blocks),
        "operator_full_applications": statistics.median(blocks) / op.num_blocks,
        "saved_bytes": memory["saved_bytes"],
        "peak_bytes": memory["peak_bytes"],
    }


def _cost_rows(
    task,
    setting,
    op,
    net,
    x,
    snr_db,
    init_kind,
    widths,
    repeat,
    report,
    meter,
    iterations=None,
    average=None,
    train_average=0,
    overlap=False,
) -> dict:
    """Cost rows for each w; ``iterations`` (the callers pass the models' trained count, or
    :data:`QUICK_COST_ITERATIONS` for ``--quick``) scales both the training step and the test
    reconstruction; :data:`TRAIN_ITERATIONS` / :data:`TEST_ITERATIONS` override it when set. The
    test time includes ODER's tail averaging (``average``, default :data:`TEST_AVERAGE`), and
    ODER's training step the averaged iterations its loss scores (``train_average``); ``overlap``:
    see :func:`_training_step_cost`."""
    from tqdm.auto import tqdm

    from deqir.methods.equilibrium import REDEquilibrium

    train_iterations = TRAIN_ITERATIONS or iterations or DEFAULT_ITERATIONS
    test_iterations = TEST_ITERATIONS or iterations or DEFAULT_ITERATIONS
    oder_average = min(train_average, train_iterations - 1)  # it replaces the solve's last iterations

    y = _simulate(op, x, snr_db, seed=3)
    x0 = _init(op, y, init_kind)
    out = {}
    bar = tqdm(widths, desc=f"{setting} cost", unit="w", file=sys.stderr, leave=False)
    for w in bar:
        bar.set_postfix_str(f"w={w} of {op.num_blocks}")
        mode = "deq" if w == op.num_blocks else "oder"
        model = REDEquilibrium(
            net,
            mode=mode,
            minibatch=None if mode == "deq" else w,
            solver="nesterov",
            max_iter=train_iterations,
            step=STEP,
            tol=0.0,
            adjoint="phantom",
            phantom_steps=3,
            train_average=oder_average if mode == "oder" else 0,
        )
        cost = _training_step_cost(model, op, x, y, x0, repeat, meter, overlap)
        with torch.no_grad():
            model.max_iter = test_iterations
            model.test_average = TEST_AVERAGE if average is None else average
            t0 = time.perf_counter()
            model(y[:1], op, init=x0[:1])
            cost["test_seconds_per_image"] = time.perf_counter() - t0
        out[w] = cost
        report.add_row(
            section="cost",
            task=task,
            setting=setting,
            w=w,
            b=op.num_blocks,
            iterations=train_iterations,
            train_average=model.train_average,
            **cost,
        )
    return out


# ----------------------------------------------------------------------------- figure
#: Reconstructions per row of the bench figure (a task's panels wrap onto further rows).
FIGURE_COLUMNS = 6


def figure_grid(figure: dict, costs: dict, columns: int = FIGURE_COLUMNS) -> list[list[tuple]]:
    """The layout of the bench figure: rows of at most ``columns`` panels, each task's
    reconstructions (``("image", task, name)``) wrapping onto as many rows as they need, then
    the cost curves (``("costs", setting)``), also wrapped.

    Example:
        >>> grid = figure_grid({"ct": dict.fromkeys("abcdefgh")}, {"ct 128": {}}, columns=6)
        >>> [len(row) for row in grid], grid[1][0], grid[2]
        ([6, 2, 1], ('image', 'ct', 'g'), [('costs', 'ct 128')])
    """
    panels = [[("image", task, name) for name in names] for task, names in figure.items()]
    panels.append([("costs", setting) for setting in costs])
    return [group[i : i + columns] for group in panels for i in range(0, len(group), columns)]


def _figure(figure: dict, costs: dict, path: Path) -> Path | None:
    if not figure:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = figure_grid(figure, costs)
    cols = max(len(row) for row in grid)
    fig, axes = plt.subplots(len(grid), cols, figsize=(2.4 * cols, 2.6 * len(grid)), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, row in enumerate(grid):
        for j, panel in enumerate(row):
            ax = axes[i, j]
            if panel[0] == "image":
                _, task, name = panel
                img, truth = figure[task][name], figure[task]["truth"]
                ax.imshow(img.numpy(), cmap="gray", vmin=0, vmax=1)
                score = float(_scores(img[None, None], truth[None, None])["snr"])
                ax.set_title(
                    f"{task}: {name}" + ("" if name == "truth" else f"\n{score:.2f} dB SNR"), fontsize=8
                )
                continue
            setting = panel[1]
            rows_w = costs[setting]
            ws = sorted(rows_w)
            full = rows_w[max(ws)]
            ax.axis("on")
            ax.plot(
                ws, [rows_w[w]["step_seconds"] / full["step_seconds"] for w in ws], "o-", label="step time"
            )
            ax.plot(
                ws,
                [rows_w[w]["peak_bytes"] / max(full["peak_bytes"], 1) for w in ws],
                "s-",
                label="peak memory",
            )
            ax.plot(ws, [w / max(ws) for w in ws], "k--", lw=0.8, label="w / b")
            ax.set_title(f"{setting}: / full batch", fontsize=8)
            ax.set_xlabel("w (blocks per iteration)", fontsize=7)
            ax.legend(fontsize=6)
    fig.tight_layout()
    from deqir.figures import save_figure

    return save_figure(fig, path, dpi=90)


# ----------------------------------------------------------------------------- run
def run(quick: bool = False, figure_path: str | Path | None = None) -> BenchReport:
    """Run the benchmark (see the module docstring); returns the report.

    The figure goes to ``figure_path`` (default ``results/oder.png``, or ``out/oder_quick.png``
    with ``quick``).
    """
    if figure_path is None:
        figure_path = "out/oder_quick.png" if quick else "results/oder.png"
    Path(figure_path).parent.mkdir(parents=True, exist_ok=True)
    with IsolatedMemory() as meter:
        return _run(quick, Path(figure_path), meter)


MRI_SNR_DB = 40.0  # multi-coil MRI's input SNR; its reconstructions start from the zero-filled A^H y


def mri_operator(size: int = 128) -> Any:
    """The multi-coil MRI setting of the ODER benches: 8 coils, 4x random Cartesian.

    Example:
        >>> mri_operator(32).num_blocks
        8
    """
    from deqir.physics.registry import build_operator

    return build_operator("mri_multi", image_size=size, num_coils=8, acceleration=4)


MRI_NAMES = {
    "prior": "oder_mri_prior",
    "red_deq": "oder_mri_red_deq",
    "red_deq_anderson": "oder_mri_red_deq_anderson",
    "red_deq_anderson_1e5": "oder_mri_red_deq_anderson_1e5",
    "w4": "oder_mri_w4",
    "w2": "oder_mri_w2",
}


def _mri_quality(
    quick: bool, n_test: int | None, n_val: int, threads: int | None = None
) -> tuple[dict, list[dict], dict, dict]:
    """Multi-coil MRI's quality rows as :func:`run` scores them (in a second process under
    ``--quick``): the mean SNR per set and method, the report rows, the figure's panels and the
    per-image SNRs.

    Example:
        >>> q, rows, panels, per_image = _mri_quality(True, 1, 1)  # doctest: +SKIP
    """
    if threads is not None:
        torch.set_num_threads(threads)
    mri = mri_operator()
    report, figure, per_image = BenchReport("oder"), {}, {}
    mri_val = _images("brain", "val", n_val if quick else None)
    mri_sets = {"test": _images("brain", "test", n_test)}
    if not quick:
        mri_sets["val"] = mri_val
    q = _quality(
        "mri",
        mri,
        MRI_NAMES,
        mri_sets,
        mri_val[:n_val],
        MRI_SNR_DB,
        "zero_filled",
        {"red_deq": None, "w4": 4} | ({} if quick else {"w2": 2}),
        report,
        figure,
        quick,
        per_image,
        MRI_TEST_AVERAGE,
    )
    return q, report.rows, figure, per_image


def _run(quick: bool, figure_path: Path, meter: IsolatedMemory) -> BenchReport:
    from tqdm.auto import tqdm

    from deqir.physics.registry import build_operator

    torch.manual_seed(0)
    # every model is tested and costed with the forward iterations it was trained with
    ct_iterations, mri_iterations = _trained_iterations("oder_ct_w30"), _trained_iterations("oder_mri_w4")
    # ODER's training loss scores the mean of the last this many iterations (as trained; 0: the
    # last); like max_iter, read from the headline width's config and used for every width
    ct_train_average = int(_trained_option("oder_ct_w30", "train_average", 0))
    mri_train_average = int(_trained_option("oder_mri_w4", "train_average", 0))
    # the gradient of the headline models' last training stage (the CT ones' first stage: phantom)
    ct_adjoint = _trained_option("oder_ct_w30", "adjoint", "phantom")
    mri_adjoint = _trained_option("oder_mri_w4", "adjoint", "phantom")
    n_test = 1 if quick else None  # None: the whole held-out split (CT 29 images, MRI 9)
    n_val = 1 if quick else 4
    repeat = 1 if quick else 3
    report = BenchReport(
        "oder",
        config={
            "quick": quick,
            "ct": "128², 90 angles, 50 dB input SNR, stratified minibatches (5 groups)",
            "ct_heavy": "256², 720 angles (the projector dominates), cost of one training step only",
            "mri": "128², 8 coils (birdcage), 4x random Cartesian, 40 dB, coils as blocks",
            "network": "DnCNN 5x24 with spectral normalisation (the RED residual prior), shared",
            "training": f"Nesterov iterations (CT {ct_iterations}, MRI {mri_iterations}, as the shipped "
            f"configs' max_iter), batch 2, gradient of the last training stage: CT {ct_adjoint}, "
            f"MRI {mri_adjoint} (phantom: 3 steps; the CT models' first stage: phantom; the costed "
            "step: phantom); ODER's loss scores a tail "
            f"average of the last train_average of them (CT {ct_train_average}, MRI {mri_train_average}; "
            "0: the last iterate)",
            "cost_iterations": QUICK_COST_ITERATIONS
            if quick
            else {"ct": ct_iterations, "mri": mri_iterations},
            "test_solvers": "ODER, RED(DEQ) (= w = b) and RED(Denoising): Nesterov with the iterations "
            f"the task's models were trained with; ODER then averages {TEST_AVERAGE} (MRI: "
            f"{MRI_TEST_AVERAGE}) further iterations "
            "(tail averaging) (red_deq_fixed_point: the full-batch map solved to its fixed point by "
            f"Anderson, m=5, relative residual {FIXED_POINT_TOL:g}, <= {FIXED_POINT_MAX_ITER}; "
            "red_denoising_<N>it: the pretrained prior with a longer solve, "
            f"N = max(100, {LONG_SOLVE_FACTOR} x the task's iterations), its own tuned tau)",
            "tuning": "TV lambda and RED(Denoising) tau on the validation split only",
            "test_images": "1 per test set" if quick else "the whole held-out split",
            "val_images": n_val,
            "gap_standard_errors": "*_se_db: standard error of the paired per-image SNR difference "
            "(std / sqrt(n)) over the test images",
            "cost_repeats": repeat,
            "torch_threads": torch.get_num_threads(),
            "step_time": "timed in the benchmark's process with the default allocator"
            + (", while the memory worker measures the same step" if quick else ""),
            "peak_memory": "measured in a worker process whose glibc mmap threshold is fixed at 128 kB from "
            "its start (IsolatedMemory): VmHWM after resetting it (/proc/self/clear_refs) minus the "
            "resident size at the start of the step",
            "saved_bytes": "distinct storages autograd keeps between forward and backward",
        },
    )
    bar = tqdm(total=5, desc="bench oder", unit="stage", file=sys.stderr, leave=False)
    figure: dict = {}
    costs: dict = {}
    per_image: dict[str, dict[str, dict[str, torch.Tensor]]] = {"ct": {}, "mri": {}}
    ct_error_split: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # test set: method -> split
    # the operators of the cost rows are sent to the memory worker now (it builds the heavy CT
    # system matrix in seconds); --quick lets that overlap the quality runs, whose timings it
    # then reads under load, the full run waits so that no timing here competes with it
    heavy = build_operator("ct", image_size=256, num_angles=720)
    mri = mri_operator()
    for op in (heavy, mri):
        meter.prepare(op)
    if not quick:
        meter.wait()
    # --quick: MRI's quality rows are scored in a second process (one thread) while this one
    # scores CT's; it is joined before any cost row is timed (the full run scores them in turn)
    mri_future = None
    if quick:
        mri_pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        mri_future = mri_pool.submit(_mri_quality, quick, n_test, n_val, 1)
        mri_pool.shutdown(wait=False)
    # (a) CT quality
    ct = build_operator("ct", image_size=128, num_angles=90)
    real, real_keys = _real_ct(128)
    test_sets = {
        "test": _images("ct_phantoms+brain", "test", n_test),
        "real_ct": real[: (1 if quick else None)],
    }
    # the validation split: its first n_val images tune TV and RED(Denoising); the full run also
    # scores all of it like a test set (is a gap stable?)
    ct_val = _images("ct_phantoms+brain", "val", n_val if quick else None)
    if not quick:
        test_sets["val"] = ct_val
    ct_names = {
        "prior": "oder_ct_prior",
        "red_deq": "oder_ct_red_deq",
        "red_deq_anderson": "oder_ct_red_deq_anderson",
        "w30": "oder_ct_w30",
        "w10": "oder_ct_w10",
        "unfold": "oder_ct_unfold",
        "unet_post": "oder_ct_unet_post",
    }
    # RED(DEQ) and ODER (w = 30) trained again with seed 1 (full run only): the gap's spread
    # over training seeds, which the per-image standard errors do not include
    ct_replicates = {
        "red_deq_seed1": ("oder_ct_red_deq_seed1", None),
        "oder_w30_seed1": ("oder_ct_w30_seed1", 30),
    }
    ct_q = _quality(
        "ct",
        ct,
        ct_names,
        test_sets,
        ct_val[:n_val],
        50.0,
        "fbp",
        {"red_deq": None, "w30": 30} | ({} if quick else {"w10": 10}),  # --quick: the headline w only
        report,
        figure,
        quick,
        per_image["ct"],
        replicates=ct_replicates,
        crosses=None if quick else CT_CROSSES,  # analysis rows: the full run only
        error_split=ct_error_split,
    )
    report.config["real_ct_images"] = real_keys
    bar.update(1)
    if mri_future is not None:
        mri_future.result()  # wait here: the cost rows below are timed on a quiet machine
    # (a) CT cost at 128²
    net = load_shipped("oder_ct_w30").network
    cost_batch = 1 if quick else 2
    x_cost = _images("ct_phantoms+brain", "test", cost_batch)
    widths = (30, 90) if quick else (10, 30, 90)

    def cost(task, setting, op, network, x, snr_db, init_kind, widths, iterations, average, train_average):
        if quick:  # fewer iterations, with the same share of tail averaging
            average = max(1, round(average * QUICK_COST_ITERATIONS / iterations))
            if train_average:  # at least 1 (_cost_rows keeps it below the iterations)
                train_average = max(1, round(train_average * QUICK_COST_ITERATIONS / iterations))
            iterations = QUICK_COST_ITERATIONS
        return _cost_rows(
            task,
            setting,
            op,
            network,
            x,
            snr_db,
            init_kind,
            widths,
            repeat,
            report,
            meter,
            iterations,
            average,
            train_average,
            overlap=quick,  # the memory worker runs while this process times the step
        )

    def ct_cost(setting, op, x, widths):
        return cost(
            "ct", setting, op, net, x, 50.0, "fbp", widths, ct_iterations, TEST_AVERAGE, ct_train_average
        )

    costs["ct 128², b=90"] = ct_cost("ct_128_90", ct, x_cost, widths)
    bar.update(1)
    # (b) heavy CT
    x_heavy = _images("ct_phantoms+brain", "test", cost_batch, size=256)
    widths = (240, 720) if quick else (60, 120, 240, 720)
    costs["ct 256², b=720"] = ct_cost("ct_256_720", heavy, x_heavy, widths)
    bar.update(1)
    # (c) MRI
    mri_q, mri_rows, mri_figure, per_image["mri"] = (
        mri_future.result() if mri_future is not None else _mri_quality(quick, n_test, n_val)
    )
    report.rows.extend(mri_rows)
    figure.update(mri_figure)
    bar.update(1)
    mri_net = load_shipped("oder_mri_w4").network
    costs["mri 128², b=8 coils"] = cost(
        "mri",
        "mri_128_8",
        mri,
        mri_net,
        _images("brain", "test", cost_batch),
        MRI_SNR_DB,
        "zero_filled",
        (4, 8) if quick else (2, 4, 8),  # --quick: the headline w only
        mri_iterations,
        MRI_TEST_AVERAGE,
        mri_train_average,
    )
    bar.update(1)
    bar.close()
    c, h, m = costs["ct 128², b=90"], costs["ct 256², b=720"], ct_q["test"]
    s = report.summary
    s["ct_snr_red_deq"] = m["red_deq"]
    s["ct_snr_oder_w30"] = m["oder_w30"]
    if "oder_w10" in m:
        s["ct_snr_oder_w10"] = m["oder_w10"]
    s["ct_snr_gap_db"] = m["red_deq"] - m["oder_w30"]
    ct_i = per_image["ct"]["test"]
    s["ct_snr_gap_se_db"] = paired_gap(ct_i["red_deq"], ct_i["oder_w30"])[1]
    s["ct_test_images"] = int(ct_i["red_deq"].numel())
    s["ct_oder_minus_red_denoising_db"] = m["oder_w30"] - m["red_denoising"]
    s["ct_oder_minus_tv_db"] = m["oder_w30"] - m["tv"]
    s["ct_oder_minus_tv_se_db"] = paired_gap(ct_i["oder_w30"], ct_i["tv"])[1]
    groups = _sources("ct_phantoms+brain", "test", n_test)
    s["ct_oder_minus_tv_by_source"] = gap_by_source(ct_i["oder_w30"], ct_i["tv"], groups)
    s["ct_oder_minus_fbp_db"] = m["oder_w30"] - m["fbp"]
    s["ct_snr_gap_by_source"] = gap_by_source(ct_i["red_deq"], ct_i["oder_w30"], groups)
    s["ct_test_snr_by_source"] = snr_by_source(ct_i, groups)
    s.update(error_split_summary(ct_error_split, groups.get("ellipses", [])))
    if "val" in ct_q:  # the whole validation split (its first images tuned TV's lambda)
        val_i = per_image["ct"]["val"]
        s["ct_val_oder_minus_tv_db"] = ct_q["val"]["oder_w30"] - ct_q["val"]["tv"]
        s["ct_val_oder_minus_tv_se_db"] = paired_gap(val_i["oder_w30"], val_i["tv"])[1]
        val_groups = _sources("ct_phantoms+brain", "val", None)
        s["ct_val_oder_minus_tv_by_source"] = gap_by_source(val_i["oder_w30"], val_i["tv"], val_groups)
    if "red_deq_as_oder_w30" in m and "oder_w30_full_batch" in m:  # both networks, one solver
        s["ct_snr_gap_full_batch_solver_db"] = m["red_deq"] - m["oder_w30_full_batch"]
        s["ct_snr_gap_oder_solver_db"] = m["red_deq_as_oder_w30"] - m["oder_w30"]
    if "red_deq_seed1" in m and "oder_w30_seed1" in m:  # the same gap between models of training seed 1
        gaps = {"0": s["ct_snr_gap_db"], "1": m["red_deq_seed1"] - m["oder_w30_seed1"]}
        s["ct_snr_gap_by_seed_db"] = gaps
        s["ct_snr_gap_seed1_se_db"] = paired_gap(ct_i["red_deq_seed1"], ct_i["oder_w30_seed1"])[1]
        s["ct_snr_gap_seed_mean_db"] = statistics.fmean(gaps.values())
        s["ct_snr_gap_seed1_by_source"] = gap_by_source(ct_i["red_deq_seed1"], ct_i["oder_w30_seed1"], groups)
        if "val" in ct_q:
            v = ct_q["val"]
            s["ct_val_snr_gap_by_seed_db"] = {
                "0": v["red_deq"] - v["oder_w30"],
                "1": v["red_deq_seed1"] - v["oder_w30_seed1"],
            }
    if "real_ct" in ct_q:
        s["real_ct_snr_gap_db"] = ct_q["real_ct"]["red_deq"] - ct_q["real_ct"]["oder_w30"]
    s["cost_batch"] = cost_batch
    s["ct_operator_applications_ratio"] = (
        c[30]["operator_block_applications"] / c[90]["operator_block_applications"]
    )
    s["ct_step_time_ratio"] = c[30]["step_seconds"] / c[90]["step_seconds"]
    s["heavy_step_time_ratio"] = h[240]["step_seconds"] / h[720]["step_seconds"]
    s["heavy_memory_ratio"] = h[240]["peak_bytes"] / max(h[720]["peak_bytes"], 1)
    s["heavy_saved_bytes_ratio"] = h[240]["saved_bytes"] / max(h[720]["saved_bytes"], 1)
    s["heavy_operator_share_full"] = h[720]["operator_share"]
    s["heavy_test_time_ratio"] = h[240]["test_seconds_per_image"] / h[720]["test_seconds_per_image"]
    s["mri_snr_gap_db"] = mri_q["test"]["red_deq"] - mri_q["test"]["oder_w4"]  # w = b/2
    mri_i = per_image["mri"]["test"]
    s["mri_snr_gap_se_db"] = paired_gap(mri_i["red_deq"], mri_i["oder_w4"])[1]
    s["mri_test_images"] = int(mri_i["red_deq"].numel())
    if not quick:
        report.config["test_images"] += f" ({s['ct_test_images']} CT, {s['mri_test_images']} MRI)"
    if "oder_w2" in mri_q["test"]:
        s["mri_snr_gap_w2_db"] = mri_q["test"]["red_deq"] - mri_q["test"]["oder_w2"]
    for task, q in (("ct", ct_q), ("mri", mri_q)):  # is the trained map an equilibrium model?
        if "red_deq_fixed_point" in q["test"]:
            s[f"{task}_fixed_point_minus_trained_iterations_db"] = (
                q["test"]["red_deq_fixed_point"] - q["test"]["red_deq"]
            )
    headline = {"ct": "oder_w30", "mri": "oder_w4"}  # ODER at w = b/3 (CT) and b/2 (MRI)
    for task, q in (("ct", ct_q), ("mri", mri_q)):  # RED(DEQ) trained with Anderson to a tolerance
        if "red_deq_anderson" in q["test"]:
            w, t = headline[task], q["test"]
            s[f"{task}_snr_red_deq_anderson"] = t["red_deq_anderson"]
            s[f"{task}_anderson_minus_red_deq_db"] = t["red_deq_anderson"] - t["red_deq"]
            s[f"{task}_snr_gap_anderson_db"] = t["red_deq_anderson"] - t[w]
            s[f"{task}_snr_gap_anderson_se_db"] = paired_gap(
                per_image[task]["test"]["red_deq_anderson"], per_image[task]["test"][w]
            )[1]
            s[f"{task}_anderson_fixed_point_minus_trained_tolerance_db"] = (
                t["red_deq_anderson_fixed_point"] - t["red_deq_anderson"]
            )
            if "val" in q:
                s[f"{task}_val_snr_gap_anderson_db"] = q["val"]["red_deq_anderson"] - q["val"][w]
    if "red_deq_anderson_1e5" in mri_q["test"]:  # MRI RED(DEQ) trained with Anderson to 1e-5
        t = mri_q["test"]
        s["mri_snr_red_deq_anderson_1e5"] = t["red_deq_anderson_1e5"]
        s["mri_anderson_1e5_fixed_point_minus_trained_tolerance_db"] = (
            t["red_deq_anderson_1e5_fixed_point"] - t["red_deq_anderson_1e5"]
        )
        s["mri_snr_gap_anderson_1e5_db"] = t["red_deq_anderson_1e5"] - t["oder_w4"]
        s["mri_anderson_1e5_minus_tv_db"] = t["red_deq_anderson_1e5"] - t["tv"]
        s["mri_anderson_1e5_minus_tv_se_db"] = paired_gap(
            per_image["mri"]["test"]["red_deq_anderson_1e5"], per_image["mri"]["test"]["tv"]
        )[1]
    if "red_deq_anderson" in ct_q.get("real_ct", {}):
        s["real_ct_snr_gap_anderson_db"] = ct_q["real_ct"]["red_deq_anderson"] - ct_q["real_ct"]["oder_w30"]
    for task, q in (("ct", ct_q), ("mri", mri_q)):  # the same gap on the whole validation split
        if "val" in q:
            w = headline[task]
            s[f"{task}_val_snr_gap_db"] = q["val"]["red_deq"] - q["val"][w]
            s[f"{task}_val_snr_gap_se_db"] = paired_gap(
                per_image[task]["val"]["red_deq"], per_image[task]["val"][w]
            )[1]
    if figure_path is not None:
        path = _figure(figure, costs, Path(figure_path))
        if path is not None:
            report.config["figure"] = str(path)
    return report


# ----------------------------------------------------------------------------- README tables
# (label, method per task) in the order the README lists them; a task without the method is blank
QUALITY_LABELS = (
    ("FBP (Hann) / zero-filled", {"ct": "fbp", "mri": "zero_filled"}),
    ("TV", {"ct": "tv", "mri": "tv"}),
    ("RED(Denoising), 100 iterations", {"ct": "red_denoising", "mri": "red_denoising"}),
    ("RED(Denoising), 250 iterations", {"ct": "red_denoising_250it", "mri": "red_denoising_250it"}),
    ("RED(Unfold), K = 20 steps", {"ct": "red_unfold"}),
    ("U-Net on FBP (post-processing)", {"ct": "unet_post"}),
    ("RED(DEQ) (w = b), 100 iterations", {"ct": "red_deq", "mri": "red_deq"}),
    (
        "RED(DEQ) map at its fixed point (Anderson to 1e-6)",
        {"ct": "red_deq_fixed_point", "mri": "red_deq_fixed_point"},
    ),
    (
        "RED(DEQ) trained and tested with Anderson to 1e-4",
        {"ct": "red_deq_anderson", "mri": "red_deq_anderson"},
    ),
    (
        "the same map at its fixed point (Anderson to 1e-6)",
        {"ct": "red_deq_anderson_fixed_point", "mri": "red_deq_anderson_fixed_point"},
    ),
    ("RED(DEQ) trained and tested with Anderson to 1e-5 (MRI only)", {"mri": "red_deq_anderson_1e5"}),
    ("the same map at its fixed point (Anderson to 1e-6)", {"mri": "red_deq_anderson_1e5_fixed_point"}),
    ("ODER, w = 30 of 90 angles / 4 of 8 coils", {"ct": "oder_w30", "mri": "oder_w4"}),
    ("ODER, w = 10 of 90 angles / 2 of 8 coils", {"ct": "oder_w10", "mri": "oder_w2"}),
    ("RED(DEQ) (w = b), training seed 1", {"ct": "red_deq_seed1"}),
    ("ODER, w = 30 of 90 angles, training seed 1", {"ct": "oder_w30_seed1"}),
    ("RED(DEQ)'s network with ODER's solver (w = 30, tail average)", {"ct": "red_deq_as_oder_w30"}),
    ("ODER's network (w = 30) with the full-batch solver", {"ct": "oder_w30_full_batch"}),
)
RESTART_MARK = " †"
QUALITY_COLUMNS = (("ct", "test", "CT"), ("ct", "real_ct", "real CT"), ("mri", "test", "MRI"))
COST_SETTINGS = {
    "ct_128_90": "CT 128², 90 angles",
    "ct_256_720": "CT 256², 720 angles",
    "mri_128_8": "MRI 128², 8 coils",
}


def markdown_tables(report: dict) -> str:
    """The README's two ODER tables, rendered from a saved report (``results/oder.json``).

    Quality: SNR / PSNR (dB) and SSIM of every method on the CT test split, the real CT slices
    and the MRI test split, the best SNR of each set in bold. Cost: every costed w of every
    setting against its full batch (w = b). A row the report lacks is left blank; a method the
    report has but the labels do not know is listed under its own name, so nothing is dropped.

    Example:
        >>> import json
        >>> print(markdown_tables(json.load(open("results/oder.json"))))  # doctest: +SKIP
    """
    from deqir.errors import InvalidValueError

    bench = report.get("bench") if isinstance(report, dict) else type(report).__name__
    rows = report.get("rows") if isinstance(report, dict) else None
    if bench != "oder" or not isinstance(rows, list):
        raise InvalidValueError(
            "markdown_tables needs a report written by `deqir bench oder --json` "
            f"(bench 'oder' with a list of rows); got {bench!r}"
        )
    quality = {(r["task"], r["test_set"], r["method"]): r for r in rows if r.get("section") == "quality"}
    labels = list(QUALITY_LABELS)
    known = {(task, m) for _, methods in labels for task, m in methods.items()}
    for task, _, method in quality:
        if (task, method) not in known:
            labels.append((method, {task: method}))
            known.add((task, method))
    best = {}
    for task, test_set, _ in QUALITY_COLUMNS:
        snrs = [r["snr"] for (t, s, _), r in quality.items() if (t, s) == (task, test_set)]
        best[(task, test_set)] = max(snrs) if snrs else None
    # mark the learned rows trained with the adaptive restart when others were trained without it
    mixed_restart = len({r.get("adaptive_restart") for r in quality.values()} - {None}) > 1
    head = ["method"]
    for _, _, name in QUALITY_COLUMNS:
        head += [f"{name} SNR", f"{name} PSNR", f"{name} SSIM"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for label, methods in labels:
        cells, any_row = [label], False
        for task, test_set, _ in QUALITY_COLUMNS:
            r = quality.get((task, test_set, methods.get(task)))
            if r is None:
                cells += ["", "", ""]
                continue
            any_row = True
            snr = f"{r['snr']:.2f}"
            mark = RESTART_MARK if r.get("adaptive_restart") and mixed_restart else ""
            cells += [
                (f"**{snr}**" if r["snr"] == best[(task, test_set)] else snr) + mark,
                f"{r['psnr']:.2f}",
                f"{r['ssim']:.4f}",
            ]
        if any_row:
            lines.append("| " + " | ".join(cells) + " |")
    if mixed_restart:
        lines += [
            "",
            f"{RESTART_MARK} trained and tested with Nesterov's adaptive restart; the other Nesterov-solved "
            "learned rows without it (`results/oder_restart.json`).",
        ]
    tv = _tv_table(report.get("summary") or {})
    lines += ["", tv] if tv else []
    lines += ["", _cost_table(rows)]
    return "\n".join(lines)


def _tv_table(summary: dict) -> str:
    """ODER (w = 30) minus TV per CT image source, on test and on validation (when the report
    has them), and ODER's squared error over TV's on the ellipse phantoms' edges and flat parts."""
    splits = [
        (name, summary.get(f"ct_{key}oder_minus_tv_by_source"), summary.get(f"ct_{key}oder_minus_tv_db"))
        for name, key in (("test", ""), ("validation", "val_"))
    ]
    splits = [(name, by, total) for name, by, total in splits if by and total is not None]
    if not splits:
        return ""
    sources = list(dict.fromkeys(src for _, by, _ in splits for src in by))
    head = ["ODER (w = 30) − TV, dB", *(f"{src} (images)" for src in sources), "all"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for name, by, total in splits:
        cells = [f"{by[src]['db']:+.2f} ({by[src]['images']})" if src in by else "" for src in sources]
        lines.append("| " + " | ".join([name, *cells, f"{total:+.2f}"]) + " |")
    if "ct_oder_over_tv_edge_error" in summary:
        lines += [
            "",
            "On the ellipse test phantoms ODER's squared error is "
            f"{summary['ct_oder_over_tv_edge_error']:.2f}× TV's on the pixels next to an edge and "
            f"{summary['ct_oder_over_tv_flat_error']:.2f}× TV's on the flat ones.",
        ]
    return "\n".join(lines)


def _ratio(row: dict, full: dict, key: str) -> str:
    return f"{row[key] / full[key]:.2f}" if full[key] else ""


def _cost_table(rows: list[dict]) -> str:
    from deqir.errors import InvalidValueError

    costs = [r for r in rows if r.get("section") == "cost"]
    head = [
        "setting",
        "w / b",
        "step (s)",
        "step time / full",
        "operator share of the step",
        "operator applications / full",
        "saved-tensor bytes / full",
        "peak memory / full",
        "test (s / image)",
        "test time / full",
    ]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for setting in dict.fromkeys(r["setting"] for r in costs):
        group = sorted((r for r in costs if r["setting"] == setting), key=lambda r: r["w"])
        full = next((r for r in group if r["w"] == r["b"]), None)
        if full is None:
            raise InvalidValueError(
                f"cost rows of {setting!r} have no full-batch row (w = b) to compare with"
            )

        for r in group:
            lines.append(
                "| "
                + " | ".join(
                    [
                        COST_SETTINGS.get(setting, setting),
                        f"{r['w']} / {r['b']}",
                        f"{r['step_seconds']:.2f}",
                        _ratio(r, full, "step_seconds"),
                        f"{r['operator_share']:.2f}",
                        _ratio(r, full, "operator_block_applications"),
                        _ratio(r, full, "saved_bytes"),
                        _ratio(r, full, "peak_bytes"),
                        f"{r['test_seconds_per_image']:.2f}",
                        _ratio(r, full, "test_seconds_per_image"),
                    ]
                )
                + " |"
            )
    return "\n".join(lines)
