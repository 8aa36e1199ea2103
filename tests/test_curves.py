"""`deqir curves`: validation curves of training runs compared, with clear errors for bad folders."""

import json

import pytest
import yaml

from deqir.errors import ConfigError, DataError, InvalidValueError
from deqir.train.curves import compare_runs, curves_table, read_log


def _run(tmp_path, name, lr, val, extra=()):
    run = tmp_path / name
    run.mkdir()
    config = {"experiment": {"name": name}, "train": {"lr": lr, "steps": 300}, "model": {"name": "dncnn"}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    records = [{"step": 0, "event": "start"}]
    records += [{"step": s, "val_psnr": v, "best_val_psnr": v} for s, v in val]
    records += list(extra)
    (run / "log.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return run


def test_compare_runs_reports_curves_best_and_differing_settings(tmp_path):
    a = _run(tmp_path, "slow", 3e-4, [(50, 40.0), (100, 41.0), (150, 40.5)])
    # a log with step 100 twice: the later record counts
    b = _run(
        tmp_path,
        "fast",
        1e-3,
        [(50, 41.0), (100, 42.5)],
        extra=[{"step": 75, "event": "resume"}, {"step": 100, "val_psnr": 43.0}, {"step": 120, "loss": 1.0}],
    )
    report = compare_runs([a, b], json_path=tmp_path / "out" / "curves.json")
    assert report["differs_in"] == ["experiment.name", "train.lr"]
    slow, fast = report["runs"]["slow"], report["runs"]["fast"]
    assert (slow["best_val_psnr"], slow["best_step"]) == (41.0, 100)
    assert fast["validations"] == [[50, 41.0], [100, 43.0]]
    assert (fast["best_val_psnr"], fast["best_step"], fast["last_step"]) == (43.0, 100, 120)
    assert fast["settings"] == {"experiment.name": "fast", "train.lr": 1e-3}
    saved = json.loads((tmp_path / "out" / "curves.json").read_text())
    assert saved["runs"]["slow"]["validations"] == [[50, 40.0], [100, 41.0], [150, 40.5]]
    png = tmp_path / "out" / "curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = curves_table(report)
    assert "| fast | 43.00 | 100 | 120 / 300 | 0.001 |" in table
    assert "experiment.name" not in table


def test_a_run_without_validations_is_listed_without_a_best(tmp_path):
    report = compare_runs([_run(tmp_path, "early", 1e-3, [])])
    assert report["runs"]["early"]["best_val_psnr"] is None
    assert "| early | - | - |" in curves_table(report)


def test_bad_run_folders_get_clear_errors(tmp_path):
    with pytest.raises(DataError, match="no config.yaml"):
        compare_runs([tmp_path])
    run = _run(tmp_path, "broken", 1e-3, [(50, 40.0)])
    (run / "log.jsonl").write_text('{"step": 0}\n{"step": 5, "val_psnr": 4\n')
    with pytest.raises(DataError, match="line 2: not JSON"):
        compare_runs([run])
    (run / "log.jsonl").write_text('{"val_psnr": 40}\n')
    with pytest.raises(DataError, match="needs a 'step'"):
        read_log(run / "log.jsonl")
    (run / "log.jsonl").unlink()
    with pytest.raises(DataError, match="log.jsonl is missing"):
        compare_runs([run])
    (run / "config.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        compare_runs([run])
    other = tmp_path / "x"
    other.mkdir()
    twin = _run(other, "broken", 1e-3, [(50, 40.0)])
    with pytest.raises(InvalidValueError, match="distinct names"):
        compare_runs([run, twin])
    with pytest.raises(InvalidValueError, match="at least one"):
        compare_runs([])


def test_cli_prints_the_table_and_saves_the_report(tmp_path):
    from typer.testing import CliRunner

    from deqir.cli import app

    a = _run(tmp_path, "one", 3e-4, [(50, 40.0)])
    b = _run(tmp_path, "two", 1e-3, [(50, 41.5)])
    result = CliRunner().invoke(app, ["curves", str(a), str(b), "--json", str(tmp_path / "c.json")])
    assert result.exit_code == 0, result.output
    assert "| two | 41.50 | 50 |" in result.output
    assert (tmp_path / "c.png").is_file()


def test_a_run_started_from_another_compared_runs_weights_continues_it(tmp_path):
    base = _run(tmp_path, "base", 3e-4, [(50, 40.0), (100, 41.0), (150, 40.5)])
    more = _run(tmp_path, "more", 2e-4, [(50, 41.5)])
    last = _run(tmp_path, "last", 2e-4, [(50, 41.2)])
    alone = _run(tmp_path, "alone", 2e-4, [(50, 39.0)])
    for run, weights in (
        (more, base / "weights" / "best.safetensors"),
        (last, base / "weights" / "final.safetensors"),
        (alone, tmp_path / "elsewhere" / "weights" / "best.safetensors"),
    ):
        config = yaml.safe_load((run / "config.yaml").read_text())
        config["model"]["weights"] = str(weights)
        (run / "config.yaml").write_text(yaml.safe_dump(config))
    report = compare_runs([base, more, last, alone], json_path=tmp_path / "c.json")
    runs = report["runs"]
    assert runs["more"]["continues"] == {"run": "base", "at_step": 100}  # the best weights' step
    assert runs["last"]["continues"] == {"run": "base", "at_step": 150}  # the final ones'
    assert runs["alone"]["continues"] is None and runs["base"]["continues"] is None
    assert runs["more"]["validations"] == [[50, 41.5]]  # its own steps, as logged
    assert (tmp_path / "c.png").is_file()
