"""The ``deqir`` command line. It only parses arguments and calls library functions.

Example:
    $ deqir bench operators --quick --json out/operators.json
    $ deqir demo --out out
"""

from __future__ import annotations

from pathlib import Path

import typer

from deqir.errors import DeqirError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Deep-equilibrium reconstruction for imaging inverse problems.")


@app.command()
def bench(
    name: str = typer.Argument(..., help="Benchmark to run: operators, solvers."),
    quick: bool = typer.Option(False, "--quick", help="Reduced version (under a minute)."),
    json_path: Path = typer.Option(None, "--json", help="Where to save the JSON report."),
) -> None:
    """Run a benchmark, print its table and optionally save the JSON report."""
    from deqir.bench import load_bench

    report = load_bench(name).run(quick=quick)
    typer.echo(report.table())
    if json_path is not None:
        typer.echo(f"saved {report.save(json_path)}")


@app.command()
def demo(
    out: Path = typer.Option(Path("out"), "--out", help="Output folder for figures and tables."),
    size: int = typer.Option(128, "--size", help="Image size in pixels."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Simulate every modality on offline images and reconstruct each with its classical baseline."""
    from deqir.demo import run_demo

    run_demo(out, size=size, seed=seed)


def main() -> None:
    """Entry point: turn a :class:`DeqirError` into a one-line message and exit code 2."""
    try:
        app()
    except DeqirError as err:
        typer.secho(f"error: {err}", err=True, fg=typer.colors.RED)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
