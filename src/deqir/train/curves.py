"""Compare the validation curves of training runs: which recipe learns faster, and where it stops.

:func:`compare_runs` reads each run folder's ``log.jsonl`` and ``config.yaml`` (as ``deqir
train`` writes them) and returns, per run, its validation PSNR against the step, the best value
and its step, the last step logged, and the settings in which the runs differ (every config key
whose value is not the same in all of them, e.g. ``train.lr`` or ``model.name``). With
``json_path`` it saves that report, and a figure of the curves beside it (``x.json`` ->
``x.png``). Should a log hold a step twice, its last record counts. A run whose ``model.weights``
are another compared run's (``RUN/weights/best.safetensors`` or ``final``) continues that run: the
report says so (``continues``) and the figure draws its curve from the step those weights were
saved at (the other run's best or last step); its own steps stay as logged.

Example:
    >>> from deqir.train.curves import compare_runs
    >>> report = compare_runs(["runs/a", "runs/b"], json_path="out/curves.json")  # doctest: +SKIP
    >>> report["differs_in"]  # doctest: +SKIP
    ['train.lr']
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from deqir.errors import DataError, InvalidValueError

__all__ = ["compare_runs", "curves_table", "read_log"]


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """The records of a run's ``log.jsonl``, with a clear error for a missing or corrupt file.

    Example:
        >>> read_log("runs/denoiser_tiny/log.jsonl")[0]  # doctest: +SKIP
        {'step': 0, 'event': 'start'}
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} is missing: pass run folders written by `deqir train` (runs/NAME)")
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}, line {number}: not JSON ({err.msg}); the log is corrupt") from None
        if not isinstance(record, dict) or "step" not in record:
            raise DataError(f"{path}, line {number}: a log record needs a 'step'; the log is corrupt")
        records.append(record)
    return records


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _run_summary(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    from deqir.train.config import read_yaml

    if not (run_dir / "config.yaml").is_file():
        raise DataError(
            f"{run_dir} is not a run folder (no config.yaml): pass the folder `deqir train` printed"
        )
    config = read_yaml(run_dir / "config.yaml")
    records = read_log(run_dir / "log.jsonl")
    by_step: dict[int, float] = {}
    for record in records:
        if "val_psnr" in record:
            by_step[int(record["step"])] = float(record["val_psnr"])  # a repeated step: the last record
    validations = sorted(by_step.items())
    best_step, best = max(validations, key=lambda item: item[1]) if validations else (None, None)
    summary = {
        "run": str(run_dir),
        "last_step": max((int(r["step"]) for r in records), default=0),
        "planned_steps": config.get("train", {}).get("steps"),
        "validations": [[step, value] for step, value in validations],
        "best_val_psnr": best,
        "best_step": best_step,
    }
    return summary, _flat(config)


def compare_runs(
    run_dirs: list[str | Path], json_path: str | Path | None = None, figure: bool = True
) -> dict[str, Any]:
    """Validation curves of ``run_dirs`` side by side (see the module docstring).

    Runs are named by their folder; two folders with the same name are refused.

    Example:
        >>> compare_runs(["runs/oder_ct_w30", "runs/oder_ct_w30_lr1e3"])["differs_in"]  # doctest: +SKIP
        ['experiment.name', 'train.lr']
    """
    if not run_dirs:
        raise InvalidValueError("name at least one run folder to compare")
    dirs = [Path(d) for d in run_dirs]
    names = [d.name for d in dirs]
    if len(set(names)) != len(names):
        raise InvalidValueError(f"run folders must have distinct names to be told apart, got {names}")
    summaries, configs = {}, {}
    for name, run_dir in zip(names, dirs, strict=True):
        summaries[name], configs[name] = _run_summary(run_dir)
    keys = sorted(set().union(*configs.values()))
    missing = object()
    differs = [
        k for k in keys if len({json.dumps(c.get(k, missing), default=str) for c in configs.values()}) > 1
    ]
    by_name = dict(zip(names, dirs, strict=True))
    for name in names:
        summaries[name]["settings"] = {k: configs[name].get(k) for k in differs}
        summaries[name]["continues"] = _continues(configs[name].get("model.weights"), by_name, summaries)
    report = {"differs_in": differs, "runs": summaries}
    if json_path is not None:
        json_path = Path(json_path)
        json_path.parent.mkdir(parents=True, exist_ok=True)
        if figure:
            report["figure"] = str(curves_figure(summaries, json_path.with_suffix(".png")))
        tmp = json_path.with_name(json_path.name + ".tmp")
        tmp.write_text(json.dumps(report, indent=2) + "\n")
        tmp.replace(json_path)
    return report


def _continues(weights: Any, dirs: dict[str, Path], summaries: dict[str, dict[str, Any]]) -> dict | None:
    """``{"run": name, "at_step": step}`` when ``weights`` is a compared run's best or final file."""
    if not isinstance(weights, str) or Path(weights).stem not in ("best", "final"):
        return None
    folder = Path(weights).parent.parent.resolve()
    for name, run_dir in dirs.items():
        if run_dir.resolve() == folder:
            other = summaries[name]
            step = other["best_step"] if Path(weights).stem == "best" else other["last_step"]
            return {"run": name, "at_step": step if step is not None else other["last_step"]}
    return None


def curves_figure(summaries: dict[str, dict[str, Any]], path: str | Path) -> Path:
    """Validation PSNR against the step, one line per run (its best marked)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.0), layout="constrained")
    ax = fig.subplots()
    for name, summary in summaries.items():
        if not summary["validations"]:
            continue
        steps, values = zip(*summary["validations"], strict=True)
        start = (summary.get("continues") or {}).get("at_step") or 0
        label = name if not start else f"{name} (from {summary['continues']['run']}, step {start})"
        (line,) = ax.plot([start + s for s in steps], values, marker="o", ms=3, label=label)
        best = start + summary["best_step"]
        ax.plot([best], [summary["best_val_psnr"]], marker="*", ms=10, color=line.get_color())
    ax.set(
        xlabel="training step (a continued run from its start's step)",
        ylabel="validation PSNR (dB)",
        title="validation curves (* best)",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    path = Path(path)
    fig.savefig(path, dpi=100)
    return path


def curves_table(report: dict[str, Any]) -> str:
    """A Markdown table of :func:`compare_runs`' report: best validation PSNR and the settings.

    Example:
        >>> print(curves_table({"differs_in": [], "runs": {}}))
        | run | best val PSNR | at step | last step / planned |
        |---|---:|---:|---:|
    """
    differs = [k for k in report["differs_in"] if k != "experiment.name"]
    head = ["run", "best val PSNR", "at step", "last step / planned", *differs]
    lines = ["| " + " | ".join(head) + " |", "|---|---:|---:|---:|" + "---|" * len(differs)]
    for name, s in report["runs"].items():
        best = "-" if s["best_val_psnr"] is None else f"{s['best_val_psnr']:.2f}"
        cells = [
            name,
            best,
            "-" if s["best_step"] is None else str(s["best_step"]),
            f"{s['last_step']} / {s['planned_steps']}",
        ]
        cells += [str(s["settings"].get(k)) for k in differs]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
