"""ODER on intensity diffraction tomography: quality against RED(DEQ), RED(Denoising), Tikhonov, TV;
and the cost of a training step for each LED minibatch size.

Setting (``configs/oder_idt_*.yaml``): the first-Born IDT model of :mod:`deqir.physics.idt` with
72 bright-field LEDs on three rings (the blocks), 4 slices 2 μm apart, 64×64 pixels of 0.3 μm,
NA 0.4, λ = 0.52 μm, 30 dB input SNR, synthetic cell samples (:mod:`deqir.data.idt_samples`).
The learned models share a DnCNN prior (5×24, spectral norm, 8 channels) pretrained as a denoiser;
RED(DEQ) (all LEDs at every iteration) and ODER (a fresh stratified draw of 24 = b/3 LEDs at every
iteration: 2 of every 6 neighbouring LEDs on a ring, so each ring is sampled in proportion) are
fine-tuned from it as deep equilibria. Test: 40 Nesterov iterations as in training
(ODER averages 10 further iterations); RED(Denoising) is the pretrained prior with its ``τ`` tuned on
validation; Tikhonov by the discrepancy principle (exact per-frequency prox); TV tuned on
validation. Costs: one training step (40 iterations + 3-step phantom gradient, batch 2) at
``w ∈ {6, 12, 24, 72}`` (b/12 to b): seconds, operator block applications, share of the time in the
operator, saved-tensor bytes and peak process memory.

Test set: :data:`TEST_SAMPLES` held-out synthetic samples (4 validation samples tune TV and
RED(Denoising)). Summary: ``snr_gap_db`` (RED(DEQ) minus ODER at w = b/3) with
``snr_gap_se_db``, the standard error of the paired per-sample difference, ``step_time_ratio``
(ODER at w = b/3 over RED(DEQ)), ``oder_minus_tikhonov_db``, ``oder_minus_tv_db``,
``oder_minus_red_denoising_db``, ``operator_applications_ratio`` (exactly w/b).

Nothing is trained here (``make idt`` trains and exports the models). ``--quick``: 2 test images,
2 validation images, one repeat of each cost with 10 iterations.

Example:
    >>> from deqir.bench.idt import WIDTHS
    >>> WIDTHS
    (6, 12, 24, 72)
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from deqir.bench.common import BenchReport, IsolatedMemory, export_run, load_shipped

RUNS = ("oder_idt_prior", "oder_idt_red_deq", "oder_idt_w24")
WIDTHS = (6, 12, 24, 72)
SNR_DB = 30.0
SIZE, SLICES = 64, 4
TEST_SAMPLES = 32  # held-out synthetic samples (sample k does not depend on the count)


def export_all(runs_dir: str | Path = "runs") -> list[Path]:
    """Export every IDT run found under ``runs_dir`` into the package (what ``make idt`` ends with)."""
    return [export_run(Path(runs_dir) / r) for r in RUNS if (Path(runs_dir) / r).is_dir()]


def _samples(split: str, count: int) -> torch.Tensor:
    from deqir.data.idt_samples import idt_splits

    counts = {"train": 0, "val": 0, "test": 0, split: count}
    return torch.stack(idt_splits(SIZE, counts["train"], counts["val"], counts["test"], 0, SLICES)[split])


def run(quick: bool = False, figure_path: str | Path | None = None) -> BenchReport:
    """Run the benchmark (see the module docstring); returns the report."""
    with IsolatedMemory() as meter:
        return _run(quick, figure_path, meter)


def _run(quick: bool, figure_path: str | Path | None, meter: IsolatedMemory) -> BenchReport:
    from tqdm.auto import tqdm

    from deqir.bench.common import paired_gap
    from deqir.bench.oder import QUICK_COST_ITERATIONS, _cost_rows, _figure, _quality, _trained_iterations
    from deqir.physics.registry import build_operator

    torch.manual_seed(0)
    n_test, n_val, repeat = (2, 2, 1) if quick else (TEST_SAMPLES, 4, 3)
    report = BenchReport(
        "idt",
        config={
            "quick": quick,
            "idt": f"{SIZE}², {SLICES} slices, 72 LEDs (rings of 12/24/36 at NA 0.12/0.24/0.36), NA 0.4, "
            f"λ 0.52 μm, pixel 0.3 μm, {SNR_DB:g} dB input SNR, synthetic cells",
            "network": "DnCNN 5x24 with spectral normalisation on 8 channels, shared",
            "test_images": n_test,
            "val_images": n_val,
            "cost_repeats": repeat,
            "widths": list(WIDTHS),
            "step_time": "timed in the benchmark's process with the default allocator",
            "peak_memory": "measured in a worker process with an exact allocator (IsolatedMemory)",
        },
    )
    bar = tqdm(total=2, desc="bench idt", unit="stage", file=sys.stderr, leave=False)
    op = build_operator("idt", SIZE, num_slices=SLICES)
    figure: dict = {}
    names = {"prior": "oder_idt_prior", "red_deq": "oder_idt_red_deq", "w24": "oder_idt_w24"}
    per_image: dict[str, dict[str, torch.Tensor]] = {}
    quality = _quality(
        "idt",
        op,
        names,
        {"test": _samples("test", n_test)},
        _samples("val", n_val),
        SNR_DB,
        "scaled_adjoint",
        {"red_deq": None, "w24": 24},
        report,
        figure,
        quick,
        per_image,
    )["test"]
    bar.update(1)
    net = load_shipped("oder_idt_w24").network
    costs = {
        "idt 64², b=72 LEDs": _cost_rows(
            "idt",
            "idt_64_72",
            op,
            net,
            _samples("test", 2),
            SNR_DB,
            "scaled_adjoint",
            WIDTHS,
            repeat,
            report,
            meter,
            QUICK_COST_ITERATIONS if quick else _trained_iterations("oder_idt_w24"),
        )
    }
    bar.update(1)
    bar.close()
    c = costs["idt 64², b=72 LEDs"]
    s = report.summary
    s["snr_red_deq"] = quality["red_deq"]
    s["snr_oder_w24"] = quality["oder_w24"]
    s["snr_gap_db"] = quality["red_deq"] - quality["oder_w24"]
    s["snr_gap_se_db"] = paired_gap(per_image["test"]["red_deq"], per_image["test"]["oder_w24"])[1]
    s["test_samples"] = int(per_image["test"]["red_deq"].numel())
    s["step_time_ratio"] = c[24]["step_seconds"] / c[72]["step_seconds"]
    s["oder_minus_tikhonov_db"] = quality["oder_w24"] - quality["tikhonov"]
    s["oder_minus_tv_db"] = quality["oder_w24"] - quality["tv"]
    s["oder_minus_red_denoising_db"] = quality["oder_w24"] - quality["red_denoising"]
    s["operator_applications_ratio"] = (
        c[24]["operator_block_applications"] / c[72]["operator_block_applications"]
    )
    s["memory_ratio"] = c[24]["peak_bytes"] / max(c[72]["peak_bytes"], 1)
    s["operator_share_full"] = c[72]["operator_share"]
    fig = Path(figure_path) if figure_path else Path("out/idt-quick.png" if quick else "results/idt.png")
    fig.parent.mkdir(parents=True, exist_ok=True)
    path = _figure(figure, costs, fig)
    report.config["figure"] = None if path is None else str(path)
    return report
