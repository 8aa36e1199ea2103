"""Shared pieces of every benchmark: the report, timing, machine facts.

Timings on a shared host drift 2-3x from minute to minute, so benchmarks report *ratios* of
timings taken side by side in one run, and :func:`time_call` interleaves nothing but takes the
median of several repeats.

Example:
    >>> from deqir.bench.common import BenchReport, time_call
    >>> report = BenchReport("demo", config={"size": 8})
    >>> report.add_row(method="noop", seconds=time_call(lambda: None, repeat=3))
    >>> report.summary["rows"] = len(report.rows)
    >>> sorted(report.to_dict())
    ['bench', 'config', 'machine', 'rows', 'summary']
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def machine_info() -> dict[str, Any]:
    """Facts about the machine and software a benchmark ran on."""
    import torch

    import deqir
    from deqir.storage import git_commit

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "deqir": deqir.__version__,
        "git_commit": git_commit(),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def time_call(fn: Callable[[], Any], repeat: int = 5, warmup: int = 1, min_time: float = 0.0) -> float:
    """Median wall time of ``fn()`` in seconds over ``repeat`` runs after ``warmup`` runs.

    With ``min_time > 0`` each measurement loops ``fn`` until that long has passed and divides.
    """
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(max(1, repeat)):
        n, start = 0, time.perf_counter()
        while True:
            fn()
            n += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_time:
                break
        samples.append(elapsed / n)
    return statistics.median(samples)


@dataclass
class BenchReport:
    """Rows of flat records plus a summary of headline numbers, saved as JSON."""

    bench: str
    config: dict[str, Any] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    machine: dict[str, Any] = field(default_factory=machine_info)

    def add_row(self, **record: Any) -> None:
        """Append one flat record (numbers, strings, booleans or None)."""
        self.rows.append({k: _plain(v) for k, v in record.items()})

    def to_dict(self) -> dict[str, Any]:  # noqa: D102
        return {
            "bench": self.bench,
            "machine": self.machine,
            "config": self.config,
            "rows": self.rows,
            "summary": {k: _plain(v) for k, v in self.summary.items()},
        }

    def save(self, path: str | Path) -> Path:
        """Write the report as JSON (atomically: temporary file, then rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n")
        os.replace(tmp, path)
        return path

    def table(self, columns: list[str] | None = None) -> str:
        """The rows as a Markdown table (all columns by default), then the summary."""
        if not self.rows:
            lines = ["(no rows)"]
        else:
            cols = columns or list(dict.fromkeys(k for r in self.rows for k in r))
            lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
            lines += ["| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in self.rows]
        if self.summary:
            lines += ["", "summary:"] + [f"  {k}: {_fmt(v)}" for k, v in self.summary.items()]
        return "\n".join(lines)


def run_jobs(jobs: list[tuple[str, Callable[[], Any]]], desc: str) -> dict[str, Any]:
    """Run named jobs in order under a progress bar (rate, ETA, the job now running) on stderr.

    Example:
        >>> run_jobs([("a", lambda: 1), ("b", lambda: 2)], "demo")
        {'a': 1, 'b': 2}
    """
    import sys

    from tqdm.auto import tqdm

    names = [name for name, _ in jobs]
    if len(set(names)) != len(names):
        raise ValueError(f"job names must be unique (each names its result); got {names}")
    results: dict[str, Any] = {}
    with tqdm(total=len(jobs), desc=desc, unit="run", file=sys.stderr, leave=False) as bar:
        for name, job in jobs:
            bar.set_postfix_str(name)
            results[name] = job()
            bar.update(1)
    return results


def load_report(path: str | Path) -> dict[str, Any]:
    """A report saved by ``deqir bench NAME --json PATH``, as a dict (clear errors for a missing,
    unreadable or foreign file).

    Example:
        >>> load_report("results/oder.json")["bench"]  # doctest: +SKIP
        'oder'
    """
    from deqir.errors import DataError

    path = Path(path)
    if not path.is_file():
        raise DataError(f"no benchmark report at {path}: write one with `deqir bench NAME --json {path}`")
    try:
        report = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(
            f"{path} is not a readable JSON benchmark report ({exc}); rerun the benchmark"
        ) from None
    if not isinstance(report, dict) or not {"bench", "rows", "summary"} <= report.keys():
        raise DataError(f"{path} is JSON but not a benchmark report (it needs 'bench', 'rows' and 'summary')")
    return report


def _plain(v: Any) -> Any:
    if hasattr(v, "item") and callable(v.item):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


# ----------------------------------------------------------------------------- data and scores
def split_images(source: str, split: str, count: int | None, size: int = 128) -> Any:
    """Up to ``count`` images ``(n, 1, size, size)`` of a cached split of a :mod:`deqir.data` source
    (``count=None``: the whole split).

    Example:
        >>> split_images("ct_phantoms", "test", 2, size=32).shape
        torch.Size([2, 1, 32, 32])
    """
    import torch

    from deqir.data import build_dataset

    ds = build_dataset(source, size, seed=0)[split]
    n = len(ds) if count is None else min(count, len(ds))
    return torch.stack([torch.as_tensor(ds[i]).float().reshape(1, size, size) for i in range(n)])


def paired_gap(a: Any, b: Any) -> tuple[float, float]:
    """Mean of ``a − b`` over images and its standard error (``std / √n``; 0 for one image).

    Example:
        >>> import torch
        >>> gap, se = paired_gap(torch.tensor([30.0, 31.0, 32.0]), torch.tensor([29.0, 31.0, 31.0]))
        >>> round(gap, 4), round(se, 4)
        (0.6667, 0.3333)
    """
    d = (a - b).double().flatten()
    se = float(d.std() / d.numel() ** 0.5) if d.numel() > 1 else 0.0
    return float(d.mean()), se


def snr_bars_by_source(rows: list[dict], labels: list[str], colors: list[str], path: str | Path) -> Path:
    """One panel per image source: each row's mean test SNR (its ``snr_<source>`` entries) as a bar.

    Example:
        >>> rows = [{"snr_a": 30.0}, {"snr_a": 31.0}]
        >>> snr_bars_by_source(rows, ["x", "y"], ["C0", "C1"], "out/bars.png").name  # doctest: +SKIP
        'bars.png'
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from deqir.figures import save_figure

    sources = [k.removeprefix("snr_") for k in rows[0] if k.startswith("snr_")] if rows else []
    n = max(len(sources), 1)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.6), squeeze=False)
    for ax, src in zip(axes[0], sources, strict=False):
        values = [r[f"snr_{src}"] for r in rows]
        ax.barh(range(len(rows)), values, color=colors)
        ax.set_yticks(range(len(rows)), labels, fontsize=6)
        ax.set_xlim(min(values) - 2, max(values) + 1)
        ax.set_title(f"CT test, {src}: SNR (dB)", fontsize=8)
        ax.invert_yaxis()
    fig.tight_layout()
    return save_figure(fig, path, dpi=90)


def mean_scores(x_hat: Any, x: Any) -> dict[str, float]:
    """Mean SNR, PSNR and SSIM of reconstructions clipped to [0, 1] against ``x``.

    Example:
        >>> import torch
        >>> x = torch.rand(2, 1, 16, 16)
        >>> round(mean_scores(x, x)["ssim"], 3)
        1.0
    """
    from deqir.metrics import compute_metrics

    m = compute_metrics(x_hat.clamp(0, 1), x)
    return {k: float(m[k].mean()) for k in ("snr", "psnr", "ssim")}


# ----------------------------------------------------------------------------- memory
def rss_bytes() -> int:
    """The resident memory of this process in bytes (``/proc/self/statm``)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def fix_malloc_threshold() -> bool:
    """Serve every allocation over 128 kB by mmap and give it back on free (glibc ``mallopt``).

    glibc otherwise raises its mmap threshold after the first large frees and keeps the memory
    in its heap, so the resident size stops tracking what a training step really allocates.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        ok = libc.mallopt(m_mmap_threshold, 128 * 1024) == 1
        return ok and libc.mallopt(m_trim_threshold, 128 * 1024) == 1
    except (OSError, AttributeError):
        return False


class PeakRSS:
    """Peak resident memory above the starting point while the ``with`` block runs.

    Resets the kernel's high-water mark (``/proc/self/clear_refs``, value 5) on entry and reads
    ``VmHWM`` on exit: exact, no sampling. Where that is unavailable, falls back to a thread that
    samples the resident size every millisecond.
    """

    def __enter__(self):
        self.start = rss_bytes()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self._exact = True
        except OSError:
            self._exact = False
            self.peak = self.start
            self._stop = threading.Event()

            def sample():
                while not self._stop.is_set():
                    self.peak = max(self.peak, rss_bytes())
                    time.sleep(0.001)

            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self._exact:
            with open("/proc/self/status") as f:
                hwm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
            self.peak = max(hwm, rss_bytes())
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, rss_bytes())
        self.delta = self.peak - self.start


class SavedTensorBytes:
    """Bytes of the distinct storages autograd saves for the backward pass inside the ``with`` block.

    A tensor saved by several operations (a ReLU output that is also the next convolution's input)
    is counted once: this is the activation memory a training step holds between forward and
    backward.

    Example:
        >>> import torch
        >>> w = torch.ones(3, requires_grad=True)
        >>> with SavedTensorBytes() as saved:
        ...     loss = (w * torch.ones(3)).relu().sum()
        >>> saved.bytes > 0
        True
    """

    def __enter__(self):
        import torch

        self.bytes, self._seen = 0, set()

        def pack(t):
            key = t.untyped_storage().data_ptr()
            if key not in self._seen:
                self._seen.add(key)
                self.bytes += t.untyped_storage().nbytes()
            return t

        self._hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self._hooks.__exit__(*exc)


def training_step_memory(model: Any, physics: Any, x: Any, y: Any, init: Any, repeat: int = 1) -> dict:
    """Memory of training steps ``loss = ‖model(y, physics, init) − x‖²``: medians over ``repeat``
    steps after one warm-up.

    Returns ``saved_bytes`` (:class:`SavedTensorBytes`: what autograd keeps between forward and
    backward) and ``peak_bytes`` (:class:`PeakRSS`: the step's peak resident memory above its
    start). Exact only in a process whose allocator was fixed from the start
    (:func:`fix_malloc_threshold`): run it through :class:`IsolatedMemory`.
    """
    model.train()
    saved, peaks = [], []
    for r in range(repeat + 1):
        model.zero_grad(set_to_none=True)
        _release_free_heap()  # memory the heap still holds would hide the step's allocations
        with PeakRSS() as peak:
            with SavedTensorBytes() as st:
                loss = (model(y, physics, init=init) - x).square().mean()
            loss.backward()
        if r:
            saved.append(st.bytes)
            peaks.append(peak.delta)
    model.zero_grad(set_to_none=True)
    return {"saved_bytes": statistics.median(saved), "peak_bytes": statistics.median(peaks)}


def _release_free_heap() -> None:
    """Give the heap's free pages back to the kernel (glibc ``malloc_trim``), so that reusing them
    counts in the resident size again."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _picklable(model: Any) -> tuple[Any, list]:
    """A copy of ``model`` that pickles: parametrizations (spectral norm) are taken off and listed.

    ``torch.nn.utils.parametrize`` refuses to pickle a parametrized module. In the copy each such
    module becomes an instance of its original class holding the original tensor as a plain
    parameter; :func:`_reparametrize` puts the same parametrization objects (with their buffers)
    back on the other side. The model itself is not touched.
    """
    import copy

    from torch.nn.utils import parametrize

    clone = copy.deepcopy(model)
    removed = []
    for path, module in list(clone.named_modules()):
        if not parametrize.is_parametrized(module):
            continue
        base = type(module).__bases__[0]  # parametrize injects a subclass of the module's class
        plain = base.__new__(base)
        plain.__dict__.update(module.__dict__)
        plain._modules = {k: v for k, v in module._modules.items() if k != "parametrizations"}
        plain._parameters = dict(module._parameters)
        for name, chain in module.parametrizations.items():
            if not hasattr(chain, "original"):
                raise ValueError(f"{path}.{name}: a parametrization of several tensors cannot be measured")
            plain._parameters[name] = chain.original
            removed.append((path, name, list(chain)))
        if path:
            parent, _, child = path.rpartition(".")
            setattr(clone.get_submodule(parent) if parent else clone, child, plain)
        else:
            clone = plain
    return clone, removed


def _reparametrize(model: Any, removed: list) -> Any:
    from torch.nn.utils import parametrize

    for path, name, chain in removed:
        module = model.get_submodule(path)
        for p in chain:
            parametrize.register_parametrization(module, name, p, unsafe=True)
    return model


_WORKER_PHYSICS: dict[int, Any] = {}  # in the memory worker: the operators it keeps, by key


def _worker_physics(key: int, physics: Any, keep: tuple[int, ...]) -> Any:
    """The worker's copy of operator ``key`` (``physics``: a new one to store; ``keep``: the keys
    the caller still holds, the others are dropped)."""
    for k in [k for k in _WORKER_PHYSICS if k not in keep]:
        del _WORKER_PHYSICS[k]
    if physics is not None:
        _WORKER_PHYSICS[key] = physics
    if key not in _WORKER_PHYSICS:  # the worker was restarted, or an earlier send failed
        raise RuntimeError("the memory worker lost its copy of the operator; measure it again")
    return _WORKER_PHYSICS[key]


def _prepare_in_worker(key: int, physics: Any, keep: tuple[int, ...]) -> None:
    import torch

    op = _worker_physics(key, physics, keep)
    with torch.no_grad():  # builds the operator's lazily derived kernels
        op.A_adjoint(op.A(torch.zeros(1, *op.image_shape)))


def _measure_in_worker(model: Any, removed: list, key: int, physics: Any, keep: tuple, args: tuple) -> dict:
    op = _worker_physics(key, physics, keep)
    return training_step_memory(_reparametrize(model, removed), op, *args)


def _measure_pickled(payload: bytes) -> dict:
    """:func:`_measure_in_worker` on arguments pickled by the caller when it submitted them."""
    import pickle

    return _measure_in_worker(*pickle.loads(payload))


def _memory_worker_init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    fix_malloc_threshold()


class IsolatedMemory:
    """Measures training-step memory in a worker process with an exact allocator.

    Peak resident memory is only exact when glibc serves every large allocation by mmap from
    the process's start (:func:`fix_malloc_threshold`), and that setting slows every step. So a
    benchmark times its steps in its own process, with the default allocator, and measures their
    memory here: one spawned worker, started once, with the same number of threads, receives a
    copy of the model (spectral norm included, see :func:`_picklable`), the operator and the batch
    and runs :func:`training_step_memory`. The caller's model is left as it was.

    Example:
        >>> import torch
        >>> from deqir.physics.registry import build_operator
        >>> from deqir.methods.unrolling import build_loop_unrolled
        >>> from deqir.priors import DnCNN
        >>> op = build_operator("blur", 16, kernel_size=5)
        >>> x = torch.rand(2, 1, 16, 16)
        >>> model = build_loop_unrolled(DnCNN(depth=3, width=4, spectral_norm=True), steps=2)
        >>> with IsolatedMemory() as meter:  # doctest: +SKIP
        ...     meter.step(model, op, x, op.A(x), op.A_adjoint(op.A(x)))["saved_bytes"] > 0
        True
    """

    #: seconds to wait for one measurement (a worker killed by the kernel never answers)
    timeout_s: float = 1800.0

    def __enter__(self) -> IsolatedMemory:
        import multiprocessing

        import torch

        ctx = multiprocessing.get_context("spawn")
        self._pool = ctx.Pool(1, initializer=_memory_worker_init, initargs=(torch.get_num_threads(),))
        self._sent: dict[int, Any] = {}  # the operators the worker keeps (held: ids stay unique)
        self._preparing: list = []
        return self

    #: the worker keeps at most this many operators (the most recently sent)
    max_operators: int = 3

    def _send(self, physics: Any) -> tuple[int, Any, tuple[int, ...]]:
        key = id(physics)
        new = key not in self._sent
        self._sent.pop(key, None)
        self._sent[key] = physics
        while len(self._sent) > self.max_operators:
            self._sent.pop(next(iter(self._sent)))
        return key, physics if new else None, tuple(self._sent)

    def _forget(self, physics: Any) -> None:
        self._sent.pop(id(physics), None)

    def prepare(self, physics: Any) -> None:
        """Send ``physics`` to the worker now and build its kernels there, without waiting: a
        large operator (a CT system matrix) is then ready when :meth:`step` first needs it.

        Example:
            >>> with IsolatedMemory() as meter:  # doctest: +SKIP
            ...     meter.prepare(heavy_operator)  # built in the worker while this process works
        """
        try:
            pending = self._pool.apply_async(_prepare_in_worker, self._send(physics))
        except Exception:
            self._forget(physics)
            raise
        self._preparing.append((physics, pending))

    def wait(self) -> None:
        """Wait for the operators :meth:`prepare` sent (before timing anything in this process,
        so the worker's build does not compete with it); raises what their preparation raised."""
        preparing, self._preparing = self._preparing, []
        for physics, pending in preparing:
            try:
                pending.get(self.timeout_s)
            except BaseException:
                self._forget(physics)
                raise

    def step(self, model: Any, physics: Any, x: Any, y: Any, init: Any, repeat: int = 1) -> dict:
        """:func:`training_step_memory` in the worker.

        The worker keeps the last :attr:`max_operators` operators it received, so steps on the
        same ``physics`` object send it once: do not change an operator in place between them.

        Raises:
            RuntimeError: the worker did not answer within :attr:`timeout_s` (killed for memory?).
        """
        return self.submit(model, physics, x, y, init, repeat)()

    def submit(
        self, model: Any, physics: Any, x: Any, y: Any, init: Any, repeat: int = 1
    ) -> Callable[[], dict]:
        """Start :meth:`step` in the worker and return at once; calling the result waits for it.
        The model is copied now, so the caller may go on using it (timing it under the worker's
        load).

        Example:
            >>> with IsolatedMemory() as meter:  # doctest: +SKIP
            ...     pending = meter.submit(model, op, x, y, x0)
            ...     ...  # this process works meanwhile
            ...     memory = pending()
        """
        import multiprocessing
        import pickle

        self.wait()  # the preparations are ahead in the worker's queue anyway
        clone, removed = _picklable(model)
        args = (*self._send(physics), (x, y, init, repeat))
        try:
            # pickled now, not later in the pool's thread: the caller may then wrap the operator
            payload = pickle.dumps((clone, removed, *args))
            pending = self._pool.apply_async(_measure_pickled, (payload,))
        except BaseException:
            self._forget(physics)
            raise

        def result() -> dict:
            try:
                return pending.get(self.timeout_s)
            except multiprocessing.TimeoutError:
                self._forget(physics)
                raise RuntimeError(
                    f"the memory worker gave no answer in {self.timeout_s:.0f} s; it may have been killed "
                    "for memory (check `dmesg`), or raise IsolatedMemory.timeout_s for a very slow step"
                ) from None
            except BaseException:
                self._forget(physics)  # whether the worker kept it is unknown: send it again next time
                raise

        return result

    def __exit__(self, *exc) -> None:
        self._pool.terminate()
        self._pool.join()
        self._sent.clear()  # let the operators go (a CT system matrix can take hundreds of MB)
        self._preparing.clear()


# ----------------------------------------------------------------------------- shipped models
WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"


def export_run(run_dir: str | Path, name: str | None = None, out_dir: Path | None = None) -> Path:
    """Copy a finished run's best weights to ``deqir/weights/<name>.safetensors`` with its config.

    Example:
        >>> export_run("runs/oder_ct_w30")  # doctest: +SKIP
    """
    from deqir.train.checkpoint import read_sidecar, save_weights
    from deqir.train.report import load_run_model

    run_dir = Path(run_dir)
    model = load_run_model(run_dir, "best")
    meta = read_sidecar(run_dir / "weights" / "best.safetensors") or {}
    raw = (run_dir / "config.yaml").read_text()
    import yaml

    return save_weights(
        model,
        Path(out_dir or WEIGHTS_DIR) / f"{name or run_dir.name}.safetensors",
        config=yaml.safe_load(raw),
        metrics=meta.get("metrics", {}),
        extra={"run": run_dir.name},
    )


def load_shipped(name: str) -> Any:
    """The model of a shipped weights file (``oder_*``, ``elder_*`` ...), built from its sidecar config.

    The model is returned in eval mode; its initial weights (``model.weights`` of the config) are
    not read, only the shipped file.

    Example:
        >>> load_shipped("oder_ct_w30").mode
        'oder'
    """
    from deqir.errors import CheckpointError
    from deqir.train.checkpoint import load_weights, read_sidecar
    from deqir.train.config import config_from_dict
    from deqir.train.trainer import build_model_from_config

    path = WEIGHTS_DIR / f"{name}.safetensors"
    if not path.is_file():
        raise CheckpointError(
            f"shipped weights {path} are missing: train and export them from their config "
            f"(configs/{name}.yaml) with the make target of the method (`make oder`, `make elder`)"
        )
    side = read_sidecar(path) or {}
    if not isinstance(side.get("config"), dict):
        raise CheckpointError(f"{path}: its JSON sidecar holds no training config; re-export it")
    model = build_model_from_config(config_from_dict(side["config"]), initial_weights=False)
    load_weights(path, model)
    return model.eval()
