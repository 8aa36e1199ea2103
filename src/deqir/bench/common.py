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
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def machine_info() -> dict[str, Any]:
    """Facts about the machine and software a benchmark ran on."""
    import torch

    import deqir

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


def git_commit() -> str | None:
    """The current git commit of the source tree, or ``None`` outside a checkout."""
    import subprocess

    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parent,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


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
