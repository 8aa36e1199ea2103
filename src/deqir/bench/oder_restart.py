"""``deqir bench oder_restart``: what Nesterov's adaptive restart does to ODER's iterates (CT).

Every RED solver of the ODER bench is Nesterov-accelerated iteration with adaptive restart: a
sample whose residual ``‖T(s) − s‖`` grew resets its momentum. On ODER's stochastic map that
residual is a noisy estimate, so the restart also fires on minibatch noise. This bench runs each
CT network (128², 90 angles, 50 dB, the trained 100 iterations) with the full batch and with
ODER's solver (w = 30 stratified angles, then :data:`~deqir.bench.oder.TEST_AVERAGE` averaged
iterations), with the restart on and off, on the whole validation and test splits:

- ``{val,test}_solver_gap_{network}_{restart,no_restart}_db``: one network, full batch minus
  ODER's solver. How far ODER's iterates are from the full-batch ones, with the network fixed.
- ``ct_snr_gap_no_restart_db`` (with its standard error, split by source, and on validation):
  RED(DEQ) minus ODER (w = 30) when both are trained and tested without the restart (the
  first recipe's pair, ``configs/oder_ct_{red_deq,w30}.yaml``, shipped as ``oder_ct_*_first``: the
  headline pair of ``deqir bench oder`` until it moved to a prior pretrained on smaller noise; the
  pair trained with the restart, like them otherwise, is ``configs/oder_ct_{red_deq,w30}_restart.yaml``);
  ``ct_oder_no_restart_minus_tv_db``: that ODER against TV, tuned as in ``deqir bench oder``.

Multi-coil MRI (8 coils, 4x Cartesian, 40 dB, as ``deqir bench oder``), whole test and
validation splits, each model with its own solver as trained (full batch, or w = 4 coils then
:data:`~deqir.bench.oder.MRI_TEST_AVERAGE` averaged iterations): the shipped pair trained with the
restart (``configs/oder_mri_*_restart.yaml``) and the pair trained without it but with its guard
(the headline pair of ``deqir bench oder``, ``configs/oder_mri_{red_deq,w4}.yaml``):
``mri_snr_gap_{restart,guard}_db`` (RED(DEQ) minus ODER, with standard errors) and
``mri_val_snr_gap_{restart,guard}_db``.

The splits run in two worker processes (one thread each). ``--quick``: 2 CT test images, the
shipped CT pair trained with the restart only, no TV, no MRI.

Example:
    $ deqir bench oder_restart --json results/oder_restart.json
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

import torch

from deqir.bench.common import (
    WEIGHTS_DIR,
    BenchReport,
    load_shipped,
    paired_gap,
    run_jobs,
    snr_bars_by_source,
    split_images,
)

SOURCE = "ct_phantoms+brain"
W = 30  # ODER's minibatch: 30 of 90 angles
# network rows -> (shipped weights, the restart settings it is tested with)
TRAINED_WITH_RESTART = {"red_deq": "oder_ct_red_deq_restart", "oder_w30": "oder_ct_w30_restart"}
TRAINED_WITHOUT_RESTART = {
    "red_deq_no_restart": "oder_ct_red_deq_first",
    "oder_w30_no_restart": "oder_ct_w30_first",
}
TV_VAL_IMAGES = 4  # as deqir bench oder: TV's λ tuned on the first 4 validation images
# MRI rows -> (shipped weights, w: None for the full batch)
MRI_NETWORKS = {
    "red_deq": ("oder_mri_red_deq_restart", None),
    "oder_w4": ("oder_mri_w4_restart", 4),
    "red_deq_guard": ("oder_mri_red_deq", None),
    "oder_w4_guard": ("oder_mri_w4", 4),
}


def _networks(quick: bool) -> dict[str, tuple[str, tuple[bool, ...]]]:
    """Rows' networks: the pair trained with the restart (tested with it on and off) and, where
    shipped, the pair trained without it (tested without it)."""
    nets = {row: (name, (True, False)) for row, name in TRAINED_WITH_RESTART.items()}
    if not quick:
        for row, name in TRAINED_WITHOUT_RESTART.items():
            if (WEIGHTS_DIR / f"{name}.safetensors").is_file():
                nets[row] = (name, (False,))
    return nets


def solve(model, w: int | None, restart: bool, op, y, x0) -> torch.Tensor:
    """``model``'s network with the full-batch solver (``w=None``) or ODER's (``w`` blocks, then
    tail averaging), Nesterov with its trained iterations, the adaptive restart on or off.

    Example:
        >>> from deqir.methods.equilibrium import REDEquilibrium
        >>> from deqir.physics.registry import build_operator
        >>> op = build_operator("ct", 16, num_angles=12)
        >>> m = REDEquilibrium(torch.nn.Conv2d(1, 1, 1), mode="deq", max_iter=5)
        >>> y = op.A(torch.rand(1, 1, 16, 16))
        >>> solve(m, 4, False, op, y, op.fbp(y)).shape
        torch.Size([1, 1, 16, 16])
    """
    from deqir.bench import oder

    model = oder._as_tested(model, w, model.max_iter, None)
    model.restart = restart
    return oder._reconstruct(model, op, y, x0)[0]


def ct_split(split: str, count: int | None, size: int = 128) -> tuple:
    """``(op, x, y, x0)``: the CT operator (90 angles), ``count`` images of ``split`` (``None``: all),
    their 50 dB measurements as ``deqir bench oder`` simulates its test sets, and the FBP start;
    in a worker, torch set to one thread.

    Example:
        >>> op, x, y, x0 = ct_split("test", 1, size=32)
        >>> x.shape == x0.shape
        True
    """
    from deqir.bench import oder
    from deqir.physics.registry import build_operator

    torch.set_num_threads(1)
    op = build_operator("ct", image_size=size, num_angles=90)
    x = split_images(SOURCE, split, count, size=size)
    y = oder._simulate(op, x, 50.0, seed=2)  # as the ODER bench's test sets
    return op, x, y, oder._init(op, y, "fbp")


def split_rows(
    split: str, count: int | None, networks: dict, load=load_shipped, size: int = 128
) -> dict[str, torch.Tensor]:
    """Per-image SNR of every (network, solver, restart) on ``count`` images of ``split`` (``None``:
    all), the models from ``load(name)``; keys ``network|full|restart`` or ``network|w30|no_restart``."""
    from deqir.metrics import compute_metrics

    op, x, y, x0 = ct_split(split, count, size)
    jobs = []
    for row, (name, restarts) in networks.items():
        model = load(name)
        for w in (None, W):
            for restart in restarts:
                key = f"{row}|{'full' if w is None else f'w{w}'}|{'restart' if restart else 'no_restart'}"
                jobs.append((key, partial(solve, model, w, restart, op, y, x0)))
    outs = run_jobs(jobs, f"ct {split}")
    return {k: compute_metrics(v.clamp(0, 1), x)["snr"].flatten().double() for k, v in outs.items()}


def mri_rows(
    split: str, count: int | None, networks: dict = MRI_NETWORKS, load=load_shipped, size: int = 128
):
    """Per-image SNR of each MRI model (``networks``: row -> (name, w)) with its own solver as
    trained (its adaptive-restart setting included) on ``count`` images of ``split``."""
    from deqir.bench import oder
    from deqir.metrics import compute_metrics

    torch.set_num_threads(1)
    op = oder.mri_operator(size)
    x = split_images("brain", split, count, size=size)
    y = oder._simulate(op, x, oder.MRI_SNR_DB, seed=2)  # as the ODER bench's test sets
    x0 = oder._init(op, y, "zero_filled")
    jobs = []
    for row, (name, w) in networks.items():
        model = load(name)
        average = oder.MRI_TEST_AVERAGE if w is not None else None
        jobs.append((row, partial(oder._reconstruct_as_tested, model, w, model.max_iter, average, op, y, x0)))
    outs = run_jobs(jobs, f"mri {split}")
    return {k: compute_metrics(v[0].clamp(0, 1), x)["snr"].flatten().double() for k, v in outs.items()}


def mri_summary(per_image: dict[str, dict[str, torch.Tensor]]) -> dict:
    """RED(DEQ) minus ODER for each MRI pair (``per_image[split][row]``), as the module docstring.

    Example:
        >>> t = torch.tensor
        >>> snr = {"test": {"red_deq": t([2.0, 2.0]), "oder_w4": t([1.0, 1.0])}}
        >>> mri_summary(snr)["mri_snr_gap_restart_db"]
        1.0
    """
    s: dict = {}
    for pair, (full, mini) in {
        "restart": ("red_deq", "oder_w4"),
        "guard": ("red_deq_guard", "oder_w4_guard"),
    }.items():
        test, val = per_image.get("test", {}), per_image.get("val", {})
        if full in test and mini in test:
            s[f"mri_snr_gap_{pair}_db"], s[f"mri_snr_gap_{pair}_se_db"] = paired_gap(test[full], test[mini])
            s[f"mri_snr_{full}"], s[f"mri_snr_{mini}"] = float(test[full].mean()), float(test[mini].mean())
        if full in val and mini in val:
            s[f"mri_val_snr_gap_{pair}_db"] = float((val[full] - val[mini]).mean())
    return s


def _tv(count: int | None) -> torch.Tensor:
    """Per-image SNR of TV on the test split, λ tuned on validation as in ``deqir bench oder``."""
    from deqir.bench import oder
    from deqir.methods.baselines import tune_hyperparameters
    from deqir.metrics import compute_metrics
    from deqir.physics.registry import build_operator

    torch.set_num_threads(1)
    op = build_operator("ct", image_size=128, num_angles=90)
    val = split_images(SOURCE, "val", TV_VAL_IMAGES)
    tuned = tune_hyperparameters(op, "tv", val, noise_snr_db=50.0, seed=1)
    x = split_images(SOURCE, "test", count)
    out, _ = oder._timed_baseline(op, oder._simulate(op, x, 50.0, seed=2), "tv", params=tuned.best)
    return compute_metrics(out.clamp(0, 1), x)["snr"].flatten().double()


def summarise(per_image: dict[str, dict[str, torch.Tensor]], groups: dict[str, dict[str, list[int]]]) -> dict:
    """The summary keys of the module docstring from per-image SNRs (``per_image[split][key]``).

    Example:
        >>> t = torch.tensor
        >>> snr = {"test": {"a|full|restart": t([3.0, 1.0]), "a|w30|restart": t([1.0, 1.0])}}
        >>> summarise(snr, {"test": {"x": [0, 1]}})["test_solver_gap_a_restart_db"]
        1.0
    """
    from deqir.bench.oder import gap_by_source

    s: dict = {}
    for split, rows in per_image.items():
        for key, full in rows.items():
            if key.count("|") != 2:  # tv
                continue
            row, solver, restart = key.split("|")
            other = rows.get(f"{row}|w{W}|{restart}")
            if solver == "full" and other is not None:
                s[f"{split}_solver_gap_{row}_{restart}_db"] = float((full - other).mean())
    # the pair trained without the restart, each with its own solver
    full_key, oder_key = "red_deq_no_restart|full|no_restart", f"oder_w30_no_restart|w{W}|no_restart"
    test = per_image.get("test", {})
    full, mini = test.get(full_key), test.get(oder_key)
    if full is not None and mini is not None:
        s["ct_snr_gap_no_restart_db"], s["ct_snr_gap_no_restart_se_db"] = paired_gap(full, mini)
        s["ct_snr_gap_no_restart_by_source"] = gap_by_source(full, mini, groups["test"])
        s["ct_snr_red_deq_no_restart"], s["ct_snr_oder_w30_no_restart"] = (
            float(full.mean()),
            float(mini.mean()),
        )
        val = per_image.get("val", {})
        if full_key in val and oder_key in val:
            s["ct_val_snr_gap_no_restart_db"] = float((val[full_key] - val[oder_key]).mean())
        if "tv" in test:
            s["ct_oder_no_restart_minus_tv_db"], s["ct_oder_no_restart_minus_tv_se_db"] = paired_gap(
                mini, test["tv"]
            )
            s["ct_oder_no_restart_minus_tv_by_source"] = gap_by_source(mini, test["tv"], groups["test"])
    return s


def _figure(report: BenchReport, path: Path) -> Path:
    rows = [r for r in report.rows if r["section"] == "solver" and r["split"] == "test"]
    labels = [f"{r['network']}\n{r['solver']}, {r['restart']}" for r in rows]
    return snr_bars_by_source(rows, labels, ["C0" if r["solver"] == "w30" else "C1" for r in rows], path)


def run(quick: bool = False, figure_path: str | Path | None = None) -> BenchReport:
    """Run the benchmark (see the module docstring); returns the report."""
    from deqir.bench.oder import _sources

    figure_path = Path(figure_path or ("out/oder_restart_quick.png" if quick else "results/oder_restart.png"))
    networks = _networks(quick)
    counts = {"test": 2 if quick else None} | ({} if quick else {"val": None})
    report = BenchReport(
        "oder_restart",
        config={
            "quick": quick,
            "ct": "128², 90 angles, 50 dB input SNR, FBP initialisation",
            "solvers": f"Nesterov with each model's trained iterations; full batch, or w = {W} of 90 "
            "stratified angles then tail averaging as in deqir bench oder; adaptive restart on or off",
            "networks": {row: name for row, (name, _) in networks.items()},
            "mri": "none (--quick)"
            if quick
            else "128², 8 coils, 4x Cartesian, 40 dB, zero-filled initialisation; networks "
            + ", ".join(f"{row}: {name}" for row, (name, _) in MRI_NETWORKS.items()),
            "splits": {k: "whole" if v is None else v for k, v in counts.items()},
            "tv": "none (--quick)" if quick else f"λ tuned on the first {TV_VAL_IMAGES} validation images",
        },
    )
    groups = {split: _sources(SOURCE, split, count) for split, count in counts.items()}
    with ProcessPoolExecutor(max_workers=2) as pool:
        futures = {split: pool.submit(split_rows, split, count, networks) for split, count in counts.items()}
        tv = None if quick else pool.submit(_tv, counts["test"])
        mri = {} if quick else {split: pool.submit(mri_rows, split, None) for split in ("test", "val")}
        per_image = {split: f.result() for split, f in futures.items()}
        if tv is not None:
            per_image["test"]["tv"] = tv.result()
        mri_per_image = {split: f.result() for split, f in mri.items()}
    for split, rows in mri_per_image.items():
        for row, snr in rows.items():
            name, w = MRI_NETWORKS[row]
            report.add_row(
                section="mri",
                split=split,
                network=row,
                weights=name,
                solver="full" if w is None else f"w{w}",
                images=int(snr.numel()),
                snr=float(snr.mean()),
            )
    report.summary.update(mri_summary(mri_per_image))
    for split, rows in per_image.items():
        for key, snr in rows.items():
            network, solver, restart = key.split("|") if "|" in key else ("tv", "tv", "")
            report.add_row(
                section="solver" if key != "tv" else "tv",
                split=split,
                network=network,
                solver=solver,
                restart=restart,
                images=int(snr.numel()),
                snr=float(snr.mean()),
                **{f"snr_{g}": float(snr[idx].mean()) for g, idx in groups[split].items()},
            )
    report.summary.update(summarise(per_image, groups))
    report.config["figure"] = str(_figure(report, figure_path))
    return report
