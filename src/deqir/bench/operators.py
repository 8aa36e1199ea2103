"""Benchmark of the measurement operators: speed of ``A`` and ``A_adjoint``, full and minibatch.

For every operator of :data:`deqir.physics.registry.OPERATORS` (one that fails to build gets a
note row) at 128 x 128 and 256 x 256, one image (batch 1), float32:

* the median wall time of ``A`` and ``A_adjoint`` on all blocks and on a minibatch (CT: 30 of 90
  angles, stratified in 5 groups as in ODER; other multi-block operators: a quarter of the
  blocks; single-block operators: full only). A fresh minibatch is drawn at every call, as a
  solver would;
* the adjointness error ``|<Ax, y> - <x, A^T y>| / (||Ax|| ||y||)`` in float32;
* for CT, side by side with ours: ``skimage.transform.radon`` and, when astra-toolbox is
  importable, its CPU ``linear`` and ``line`` projectors (forward and back-projection; data
  stored in astra beforehand, so astra is timed at its best). Measurements of one operator are
  interleaved round by round, so drift on a shared machine hits all of them alike;
* without ``quick``, our rows once more with ``torch.set_num_threads(1)`` (column
  ``torch_threads``): on a host whose cores are shared, every multi-threaded torch op can wait
  milliseconds at its thread barrier, which this pair of rows exposes. The CT operator runs
  single-threaded kernels on the CPU and is not affected.

Summary (CT at 256 x 256, 90 angles): ``ct_forward_vs_astra`` and ``ct_adjoint_vs_astra`` (our
time / the faster of astra's two projectors; ``None`` without astra), ``ct_subset30_vs_full``
(the larger of the forward and adjoint ratios, 30 vs 90 angles), ``ct_forward_vs_skimage``,
the underlying times in milliseconds, and ``max_adjoint_error`` (over every operator and size).

Example:
    $ deqir bench operators --quick --json results/operators_quick.json
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Callable
from typing import Any

import torch

from deqir.bench.common import BenchReport, time_call

SIZES = (128, 256)
CT_MINIBATCH = (30, 5)  # 30 of 90 angles, 5 stratified groups (ODER's demo)


def run(quick: bool = False) -> BenchReport:
    """Run the benchmark; ``quick`` uses fewer repeats, CT at 256 only and others at 128 only.

    Example:
        >>> from deqir.bench.operators import run
        >>> report = run(quick=True)  # doctest: +SKIP
        >>> report.summary["ct_subset30_vs_full"] < 0.45  # doctest: +SKIP
        True
    """
    from tqdm import tqdm

    from deqir.physics.registry import OPERATORS

    rounds = 5 if quick else 15
    min_time = 0.01 if quick else 0.03
    default = torch.get_num_threads()
    thread_counts = [default] if quick or default == 1 else [default, 1]
    plan = []
    for name in OPERATORS:
        sizes = ((256,) if name == "ct" else (128,)) if quick else SIZES
        plan += [(name, size) for size in sizes]
    report = BenchReport(
        "operators",
        config={
            "quick": quick,
            "sizes": list(SIZES if not quick else (128, 256)),
            "batch": 1,
            "dtype": "float32",
            "rounds": rounds,
            "min_time_s": min_time,
            "timing": "median over interleaved rounds of time_call(repeat=1, min_time)",
            "ct_minibatch": "30 of 90 angles, stratified, 5 groups, fresh draw per call",
            "other_minibatch": "a quarter of the blocks (at least 1), fresh draw per call",
            "astra": "CPU projectors 'linear' (same weights as ours) and 'line'; data pre-stored",
            "torch_threads": thread_counts,
        },
    )
    ct_numbers: dict[str, float] = {}
    adjoint_errors: list[float] = []
    for name, size in tqdm(plan, desc="operators", file=sys.stderr, leave=False):
        try:
            from deqir.physics.registry import build_operator

            op = build_operator(name, image_size=size)
        except Exception as err:  # an operator still being written must not stop the benchmark
            report.add_row(
                operator=name, size=size, impl="deqir", note=f"skipped: {type(err).__name__}: {err}"
            )
            continue
        err32 = op.adjointness_error(dtype=torch.float32)
        adjoint_errors.append(err32)
        for threads in thread_counts:
            with _torch_threads(threads):
                times = _time_operator(name, op, rounds, min_time, references=threads == default)
            for (impl, fn_name, blocks), seconds in times.items():
                full = times.get((impl, fn_name, "all"))
                report.add_row(
                    operator=name,
                    size=size,
                    impl=impl,
                    map=fn_name,
                    blocks=blocks,
                    torch_threads=threads if impl == "deqir" else None,
                    ms=1e3 * seconds,
                    vs_full=None if blocks == "all" or full is None else seconds / full,
                    adjoint_error_f32=err32 if impl == "deqir" and blocks == "all" else None,
                )
            if name == "ct" and size == 256 and threads == default:
                ct_numbers = {f"{impl}|{fn}|{blocks}": s for (impl, fn, blocks), s in times.items()}
    report.summary.update(_summary(ct_numbers, adjoint_errors))
    return report


# --------------------------------------------------------------------------- timing
class _torch_threads:  # noqa: N801 - a context manager used like a function
    """Run a block with ``torch.set_num_threads(count)``, restoring the previous count after."""

    def __init__(self, count: int):
        self.count, self.before = count, torch.get_num_threads()

    def __enter__(self):
        torch.set_num_threads(self.count)

    def __exit__(self, *exc):
        torch.set_num_threads(self.before)
        return False


def _time_operator(
    name: str, op, rounds: int, min_time: float, references: bool = True
) -> dict[tuple, float]:
    """Median times in seconds keyed by ``(impl, map, blocks)``; all entries interleaved.

    ``references``: also time skimage and astra (CT only).
    """
    from deqir.physics.sampling import BlockSampler

    gen = torch.Generator().manual_seed(0)
    x = op.random_image(1, torch.float32, generator=gen)
    y = op.random_measurement(1, None, torch.float32, generator=gen)
    fns: dict[tuple, Callable[[], Any]] = {
        ("deqir", "A", "all"): lambda: op.A(x),
        ("deqir", "A_adjoint", "all"): lambda: op.A_adjoint(y),
    }
    b = op.num_blocks
    if b > 1:
        w, groups = CT_MINIBATCH if name == "ct" and b == 90 else (max(1, b // 4), None)
        strategy = "stratified" if groups is not None else "uniform"
        sampler = BlockSampler(b, w, strategy=strategy, groups=groups, seed=1)
        y_sub = op.random_measurement(1, sampler.sample(), torch.float32, generator=gen)
        label = f"{w}/{b}"
        fns[("deqir", "A", label)] = lambda: op.A(x, sampler.sample())
        if op.block_dim is not None:  # the restricted measurement has the minibatch's shape
            fns[("deqir", "A_adjoint", label)] = lambda: op.A_adjoint(y_sub, sampler.sample())
        else:  # masked k-space: draw the blocks, then restrict a full measurement to them

            def adjoint_minibatch():
                blocks = sampler.sample()
                return op.A_adjoint(op.restrict(y, blocks), blocks)

            fns[("deqir", "A_adjoint", label)] = adjoint_minibatch
    cleanup: list[Callable[[], None]] = []
    if name == "ct" and references:
        fns.update(_reference_projectors(op, x, y, cleanup))
    try:
        samples: dict[tuple, list[float]] = {key: [] for key in fns}
        for fn in fns.values():  # warm up (caches, first-call costs)
            fn()
        for _ in range(rounds):
            for key, fn in fns.items():
                samples[key].append(time_call(fn, repeat=1, warmup=0, min_time=min_time))
    finally:
        for done in cleanup:
            done()
    return {key: statistics.median(v) for key, v in samples.items()}


def _reference_projectors(
    op, x: torch.Tensor, y: torch.Tensor, cleanup: list[Callable[[], None]]
) -> dict[tuple, Callable[[], Any]]:
    """skimage's radon and astra's CPU projectors on the same geometry (astra's objects are
    released by the callables appended to ``cleanup``)."""
    import numpy as np

    fns: dict[tuple, Callable[[], Any]] = {}
    theta = op.angles_deg.numpy()
    img = x[0, 0].numpy().astype(np.float64)
    try:
        from skimage.transform import radon

        fns[("skimage_radon", "A", "all")] = lambda: radon(img, theta=theta, circle=False)
    except ImportError:  # pragma: no cover - skimage is a dependency
        pass
    try:
        import astra
    except ImportError:
        return fns
    n, det = op.image_size, op.num_detectors
    vol_geom = astra.create_vol_geom(n, n)
    proj_geom = astra.create_proj_geom("parallel", 1.0, det, np.deg2rad(theta))
    image = x[0, 0].numpy().astype(np.float32)
    sino = y[0, 0].numpy().astype(np.float32)
    for kind in ("linear", "line"):
        pid = astra.create_projector(kind, proj_geom, vol_geom)
        vol_id = astra.data2d.create("-vol", vol_geom, image)
        sino_id = astra.data2d.create("-sino", proj_geom, sino)
        fp, bp = astra.astra_dict("FP"), astra.astra_dict("BP")
        fp.update(ProjectorId=pid, ProjectionDataId=sino_id, VolumeDataId=vol_id)
        bp.update(ProjectorId=pid, ProjectionDataId=sino_id, ReconstructionDataId=vol_id)
        fp_id, bp_id = astra.algorithm.create(fp), astra.algorithm.create(bp)
        cleanup.append(lambda ids=(fp_id, bp_id): astra.algorithm.delete(list(ids)))
        cleanup.append(lambda ids=(vol_id, sino_id): astra.data2d.delete(list(ids)))
        cleanup.append(lambda pid=pid: astra.projector.delete(pid))

        def forward(fp_id=fp_id, sino_id=sino_id):
            astra.algorithm.run(fp_id)
            return astra.data2d.get_shared(sino_id)

        def backward(bp_id=bp_id, vol_id=vol_id):
            astra.algorithm.run(bp_id)
            return astra.data2d.get_shared(vol_id)

        fns[(f"astra_{kind}", "A", "all")] = forward
        fns[(f"astra_{kind}", "A_adjoint", "all")] = backward
    return fns


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a / b


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else 1e3 * seconds


def _summary(ct: dict[str, float], adjoint_errors: list[float]) -> dict[str, Any]:
    get, ratio, ms = ct.get, _ratio, _ms

    fwd, adj = get("deqir|A|all"), get("deqir|A_adjoint|all")
    fwd_sub, adj_sub = get("deqir|A|30/90"), get("deqir|A_adjoint|30/90")
    astra_f = [v for k, v in ct.items() if k.startswith("astra_") and "|A|" in k]
    astra_b = [v for k, v in ct.items() if k.startswith("astra_") and "|A_adjoint|" in k]
    radon = get("skimage_radon|A|all")
    subset = [r for r in (ratio(fwd_sub, fwd), ratio(adj_sub, adj)) if r is not None]
    return {
        "ct_forward_vs_astra": ratio(fwd, min(astra_f)) if astra_f else None,
        "ct_adjoint_vs_astra": ratio(adj, min(astra_b)) if astra_b else None,
        "ct_subset30_vs_full": max(subset) if subset else None,
        "ct_forward_subset30_vs_full": ratio(fwd_sub, fwd),
        "ct_adjoint_subset30_vs_full": ratio(adj_sub, adj),
        "ct_forward_vs_skimage": ratio(fwd, radon),
        "ct_forward_ms": ms(fwd),
        "ct_adjoint_ms": ms(adj),
        "astra_forward_ms": ms(min(astra_f)) if astra_f else None,
        "astra_backprojection_ms": ms(min(astra_b)) if astra_b else None,
        "max_adjoint_error": max(adjoint_errors) if adjoint_errors else None,
    }
