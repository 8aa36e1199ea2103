"""The ``deqir`` command line. It only parses arguments and calls library functions.

Example:
    $ deqir bench operators --quick --json out/operators.json
    $ deqir demo --out out
    $ deqir train configs/denoiser_tiny.yaml
    $ deqir eval runs/denoiser_tiny
    $ deqir curves runs/denoiser_tiny runs/denoiser_small --json out/curves.json
    $ deqir data --list
    $ deqir weights list
    $ deqir reconstruct --task ct --input slice.dcm --out out/ct
"""

from __future__ import annotations

from pathlib import Path

import typer

from deqir.errors import DeqirError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Deep-equilibrium reconstruction for imaging inverse problems.",
)


@app.command()
def bench(
    name: str = typer.Argument(
        ...,
        help="operators, solvers, denoisers, baselines, oder, oder_restart, oder_finetunes, elder, "
        "luser, idt.",
    ),
    quick: bool = typer.Option(False, "--quick", help="Reduced version (under a minute)."),
    json_path: Path = typer.Option(None, "--json", help="Where to save the JSON report."),
    only: str = typer.Option(
        None, "--only", help="Comma-separated variants to run (oder_finetunes); default: all found."
    ),
) -> None:
    """Run a benchmark, print its table and optionally save the JSON report (with the run's
    wall time in ``machine.wall_seconds``); with ``--json``, a bench that draws a figure writes
    it beside the report (``--json out/x.json`` gives ``out/x.png``), without it to the bench's
    own default (``results/NAME.png`` for a full run). ``--only`` picks the variants of a bench
    that has them (``deqir bench oder_finetunes --only tau03,tau06``)."""
    import inspect
    import time

    from deqir.bench import load_bench

    start = time.perf_counter()
    bench_module = load_bench(name)
    options: dict = {"quick": quick}
    parameters = inspect.signature(bench_module.run).parameters
    if json_path is not None and "figure_path" in parameters:
        options["figure_path"] = json_path.with_suffix(".png")
    if only is not None:
        if "only" not in parameters:
            raise typer.BadParameter(
                f"bench '{name}' has no variants to pick; drop --only", param_hint="--only"
            )
        options["only"] = [v.strip() for v in only.split(",") if v.strip()]
    report = bench_module.run(**options)
    report.machine["wall_seconds"] = round(time.perf_counter() - start, 1)
    typer.echo(report.table())
    if json_path is not None:
        typer.echo(f"saved {report.save(json_path)}")


@app.command()
def tables(
    report_path: Path = typer.Argument(..., help="A report saved by `deqir bench NAME --json`."),
) -> None:
    """Print the README's Markdown tables of a saved benchmark report (benches that have them:
    oder, oder_finetunes), so the README's numbers can be regenerated from the committed results."""
    from deqir.bench import load_bench
    from deqir.bench.common import load_report
    from deqir.errors import InvalidValueError

    report = load_report(report_path)
    module = load_bench(str(report["bench"]))
    if not hasattr(module, "markdown_tables"):
        raise InvalidValueError(
            f"bench {report['bench']!r} has no README tables; `deqir bench` prints its full table"
        )
    typer.echo(module.markdown_tables(report))


@app.command()
def curves(
    runs: list[Path] = typer.Argument(..., help="Run folders written by `deqir train`."),
    json_path: Path = typer.Option(
        None, "--json", help="Save the report here and its figure beside it (.png)."
    ),
) -> None:
    """Compare the validation curves of training runs: best PSNR, its step, and the settings that differ."""
    from deqir.train.curves import compare_runs, curves_table

    report = compare_runs(runs, json_path=json_path)
    typer.echo(curves_table(report))
    if json_path is not None:
        typer.echo(f"wrote {json_path} and {report['figure']}")


@app.command()
def demo(
    out: Path = typer.Option(Path("out"), "--out", help="Output folder for figures and tables."),
    size: int = typer.Option(128, "--size", help="Image size in pixels."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Simulate every modality on offline images and reconstruct each with its classical baseline."""
    from deqir.demo import run_demo

    run_demo(out, size=size, seed=seed)


@app.command()
def data(
    size: int = typer.Option(256, "--size", help="Image side of the cached splits."),
    cache_dir: Path = typer.Option(
        None, "--cache-dir", help="Cache folder (default: DEQIR_CACHE or ~/.cache/deqir)."
    ),
    source: list[str] = typer.Option(
        None, "--source", "-s", help="Source to build (repeatable; default: all)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the split assignment."),
    rebuild: bool = typer.Option(False, "--rebuild", help="Rebuild even if a cache exists."),
    list_only: bool = typer.Option(False, "--list", help="Only list the sources and what is installed."),
) -> None:
    """Build the fixed train/val/test splits of the offline data sources once, into a cache."""
    from deqir.data import build_all, list_sources

    if list_only:
        for src in list_sources():
            mark = "yes" if src["available"] else "no "
            typer.echo(f"[{mark}] {src['name']}: {src['description']}")
            for p in src["providers"]:
                typer.echo(
                    f"      {'+' if p['available'] else '-'} {p['name']}"
                    + ("" if p["available"] else f"  ({p['hint']})")
                )
        return
    kwargs = {"sources": source} if source else {}
    summary = build_all(size, cache_dir, seed=seed, rebuild=rebuild, **kwargs)
    for name, info in summary["sources"].items():
        if "error" in info:
            typer.echo(f"{name}: skipped ({info['error']})")
        else:
            typer.echo(
                f"{name}: train {info['train']}, val {info['val']}, test {info['test']} -> {info['cache']}"
            )
    for s in summary["skipped"]:
        typer.echo(f"not installed: {s['source']}/{s['provider']} (to add it: {s['hint']})")


@app.command()
def reconstruct(
    task: str = typer.Option(
        ..., "--task", help="deblur, motion_deblur, superres, ct, mri, mri_radial, mri_multi."
    ),
    input: Path = typer.Option(None, "--input", help="Image file to simulate measurements from."),
    measurements: Path = typer.Option(None, "--measurements", help="Measurement .npy file instead."),
    out: Path = typer.Option(Path("out/reconstruct"), "--out", help="Output folder."),
    method: str = typer.Option(
        None,
        "--method",
        help="tikhonov, fbp, zero_filled, tv, pnp_pgm, pnp_admm, pnp_hqs, red_gd, red_fp "
        "(default: classical).",
    ),
    denoiser: str = typer.Option(
        None, "--denoiser", help="For PnP/RED: natural, ct, mri, scico17 (default: the task's)."
    ),
    iterations: int = typer.Option(None, "--iterations", help="Iterations of an iterative method."),
    param: list[str] = typer.Option(
        None,
        "--param",
        help="A hyperparameter as KEY=VALUE, repeatable; scale-free as in results/baselines.json "
        "(e.g. --param sigma=0.01 --param gamma=64 for pnp_admm). Default: as the baselines bench "
        "tuned them for deblur, ct, mri and mri_multi, else generic.",
    ),
    size: int = typer.Option(256, "--size", help="Image side in pixels."),
    noise_sigma: float = typer.Option(None, "--noise-sigma", help="Noise standard deviation."),
    noise_snr_db: float = typer.Option(None, "--noise-snr-db", help="Noise as input SNR in dB."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Reconstruct an image file (simulated measurements) or a measurement file; write figures and metrics."""
    from deqir.reconstruct import reconstruct as run

    result = run(
        task,
        out,
        image=input,
        measurements=measurements,
        method=method,
        size=size,
        noise_sigma=noise_sigma,
        noise_snr_db=noise_snr_db,
        seed=seed,
        denoiser=denoiser,
        iterations=iterations,
        params=_key_values(param or [], "--param"),
    )
    if result["metrics"]:
        typer.echo(" ".join(f"{k}={v}" for k, v in result["metrics"].items()))
    for f in result["files"]:
        typer.echo(f"wrote {f}")


@app.command()
def train(
    config: Path = typer.Argument(..., help="Experiment YAML file (examples in configs/)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run from its last checkpoint."),
    device: str = typer.Option("auto", "--device", help="cpu, cuda, cuda:N or auto."),
    override: list[str] = typer.Option(None, "--override", "-o", help="SECTION.KEY=VALUE (repeatable)."),
    run_dir: Path = typer.Option(None, "--run-dir", help="Run folder (default output_dir/name)."),
) -> None:
    """Train the experiment a YAML file describes (data-parallel under torchrun)."""
    from deqir.train import train_from_config

    run = train_from_config(config, resume=resume, device=device, overrides=override or None, run_dir=run_dir)
    typer.echo(f"run folder: {run}")


@app.command("eval")
def evaluate(
    run: Path = typer.Argument(..., help="Run folder written by `deqir train`."),
    weights: str = typer.Option(None, "--weights", help="best or final (default: the config's)."),
    split: str = typer.Option(None, "--split", help="val or test (default: the config's)."),
    num_images: int = typer.Option(None, "--num-images", help="Images to evaluate."),
    out: Path = typer.Option(None, "--out", help="Report folder (default RUN/report)."),
    device: str = typer.Option("auto", "--device", help="cpu, cuda, cuda:N or auto."),
    compare: list[Path] = typer.Option(None, "--compare", help="Other run folders to show beside it."),
) -> None:
    """Evaluate a run: metrics table (JSON, Markdown) and PNG figures."""
    from deqir.train import evaluate_run

    result = evaluate_run(
        run,
        weights=weights,
        split=split,
        num_images=num_images,
        out_dir=out,
        device=device,
        compare=compare or None,
    )
    typer.echo(result["table"])
    for f in result["files"]:
        typer.echo(f"wrote {f}")


@app.command()
def weights(
    action: str = typer.Argument(..., help="list (the shipped denoisers) or export (a training run)."),
    run: Path = typer.Argument(None, help="With export: the run folder written by `deqir train`."),
    name: str = typer.Option(None, "--name", help="With export: natural, ct or mri."),
    out: Path = typer.Option(None, "--out", help="Folder of the weights (default: deqir/weights)."),
    which: str = typer.Option("best", "--weights", help="With export: best or final weights of the run."),
    dtype: str = typer.Option("auto", "--dtype", help="With export: auto, float32 or float16."),
) -> None:
    """List the pretrained denoisers, or export a denoiser run as shipped weights (`make weights`)."""
    from deqir.errors import InvalidValueError
    from deqir.priors.pretrained import pretrained_table
    from deqir.train.export import export_weights

    if action == "list":
        typer.echo(pretrained_table(out))
    elif action == "export":
        if run is None or name is None:
            raise InvalidValueError("usage: deqir weights export RUN --name natural|ct|mri")
        path = export_weights(run, name, out_dir=out, weights=which, dtype=dtype)
        typer.echo(f"wrote {path} and {path.with_suffix('.json')}")
        typer.echo(pretrained_table(path.parent, names=[name]))
    else:
        raise InvalidValueError(
            f"unknown action {action!r}; use `deqir weights list` or `deqir weights export RUN`"
        )


def _key_values(items: list[str], option: str) -> dict[str, float]:
    """Parse ``KEY=VALUE`` strings into numbers, naming ``option`` in any error.

    Example:
        >>> _key_values(["sigma=0.015", "gamma=256"], "--param")
        {'sigma': 0.015, 'gamma': 256.0}
    """
    from deqir.errors import InvalidValueError

    parsed: dict[str, float] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InvalidValueError(f"{option} {item!r}: write KEY=VALUE, e.g. {option} sigma=0.015")
        try:
            number = float(value)
        except ValueError:
            raise InvalidValueError(f"{option} {item!r}: {value!r} is not a number") from None
        if number != number or number in (float("inf"), float("-inf")):
            raise InvalidValueError(f"{option} {item!r}: the value must be finite")
        parsed[key.strip()] = number
    return parsed


def main() -> None:
    """Entry point: turn a :class:`DeqirError` into a one-line message and exit code 2."""
    try:
        app()
    except DeqirError as err:
        typer.secho(f"error: {err}", err=True, fg=typer.colors.RED)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
