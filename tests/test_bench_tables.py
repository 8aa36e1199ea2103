"""README tables rendered from saved benchmark reports (``deqir tables``)."""

import copy
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from deqir.bench import oder
from deqir.bench.common import load_report
from deqir.cli import app
from deqir.errors import DataError, InvalidValueError

ROOT = Path(__file__).resolve().parents[1]


def _report(**extra_rows):
    rows = [
        {
            "section": "quality",
            "task": "ct",
            "test_set": "test",
            "method": "tv",
            "snr": 30.0,
            "psnr": 40.0,
            "ssim": 0.99,
        },
        {
            "section": "quality",
            "task": "ct",
            "test_set": "test",
            "method": "oder_w30",
            "snr": 31.5,
            "psnr": 41.5,
            "ssim": 0.995,
        },
        {
            "section": "quality",
            "task": "mri",
            "test_set": "test",
            "method": "oder_w4",
            "snr": 20.0,
            "psnr": 28.0,
            "ssim": 0.9,
        },
        {
            "section": "quality",
            "task": "ct",
            "test_set": "val",
            "method": "tv",
            "snr": 99.0,
            "psnr": 99.0,
            "ssim": 1.0,
        },
    ]
    for w, seconds in ((30, 3.0), (90, 6.0)):
        rows.append(
            {
                "section": "cost",
                "task": "ct",
                "setting": "ct_128_90",
                "w": w,
                "b": 90,
                "step_seconds": seconds,
                "operator_share": 0.1 * w / 30,
                "operator_block_applications": 100 * w,
                "saved_bytes": 1000,
                "peak_bytes": 2000 + w,
                "test_seconds_per_image": seconds / 2,
            }
        )
    return {"bench": "oder", "rows": rows, "summary": {}}


def test_readme_shows_the_oder_tables_of_the_committed_report():
    report = load_report(ROOT / "results" / "oder.json")
    tables = oder.markdown_tables(report)
    readme = (ROOT / "README.md").read_text()
    for table in tables.split("\n\n"):
        assert table in readme, (
            "README's ODER tables differ from `deqir tables results/oder.json`: paste its output"
        )


def test_oder_tables_show_every_number_of_the_report_rows():
    tables = oder.markdown_tables(_report())
    quality, cost = tables.split("\n\n")
    lines = quality.splitlines()
    # ODER's CT and MRI rows share a line; the best SNR of a test set is bold, validation is not shown
    oder_line = next(line for line in lines if line.startswith("| ODER, w = 30"))
    assert oder_line.split(" | ")[1:4] == ["**31.50**", "41.50", "0.9950"]
    assert "**20.00** | 28.00 | 0.9000" in oder_line
    assert "| TV | 30.00 | 40.00 | 0.9900 |" in quality
    assert "99.00" not in quality
    assert not any(line.startswith("| RED(Unfold)") for line in lines)  # absent from the report
    # cost: each w against the full batch
    rows = [line.split(" | ") for line in cost.splitlines()[2:]]
    assert [r[1] for r in rows] == ["30 / 90", "90 / 90"]
    assert rows[0][2:6] == ["3.00", "0.50", "0.10", "0.33"]
    assert rows[1][2:6] == ["6.00", "1.00", "0.30", "1.00"]


def test_oder_tables_keep_a_method_they_have_no_label_for():
    report = _report()
    report["rows"].append(
        {
            "section": "quality",
            "task": "ct",
            "test_set": "test",
            "method": "oder_w45",
            "snr": 1.0,
            "psnr": 2.0,
            "ssim": 0.5,
        }
    )
    assert "| oder_w45 | 1.00 | 2.00 | 0.5000 |" in oder.markdown_tables(report)


def test_oder_tables_mark_rows_trained_with_the_adaptive_restart_only_when_settings_differ():
    report = _report()
    assert oder.RESTART_MARK not in oder.markdown_tables(report)  # no row says
    rows = {(r["task"], r["test_set"], r["method"]): r for r in report["rows"] if r["section"] == "quality"}
    rows["ct", "test", "oder_w30"]["adaptive_restart"] = True
    assert oder.RESTART_MARK not in oder.markdown_tables(report)  # one setting: nothing to mark
    rows["mri", "test", "oder_w4"]["adaptive_restart"] = False
    tables = oder.markdown_tables(report)
    oder_line = next(line for line in tables.splitlines() if line.startswith("| ODER, w = 30"))
    assert oder_line.split(" | ")[1] == "**31.50**" + oder.RESTART_MARK  # CT: trained with it
    assert "| **20.00** | 28.00 | 0.9000 |" in oder_line  # MRI: without it
    assert tables.count(oder.RESTART_MARK.strip()) == 2  # the CT cell and the footnote
    assert f"{oder.RESTART_MARK.strip()} trained and tested with Nesterov's adaptive restart" in tables


def test_seed_replicates_are_scored_only_with_the_restart_setting_of_the_model_they_repeat(
    monkeypatch, tmp_path
):
    trained_with_restart = {"red_deq": False, "w30": False, "red_deq_restart": True, "w30_restart": True}
    trained_with_restart |= {"red_deq_seed1": True, "w30_seed1": True}
    for name in trained_with_restart:
        (tmp_path / f"{name}.safetensors").write_bytes(b"")
    monkeypatch.setattr(oder, "WEIGHTS_DIR", tmp_path)
    monkeypatch.setattr(oder, "_trained_restart", trained_with_restart.__getitem__)
    reps = {"red_deq_seed1": ("red_deq_seed1", None), "oder_w30_seed1": ("w30_seed1", 30)}
    variants = {"red_deq": None, "w30": 30}
    # seed-1 pair trained with the restart, the headline pair without it: nothing to score
    assert oder.scored_replicates(reps, {"red_deq": "red_deq", "w30": "w30"}, variants) == {}
    first = {"red_deq": "red_deq_restart", "w30": "w30_restart"}
    assert oder.scored_replicates(reps, first, variants) == reps
    trained_with_restart["w30_seed1"] = False  # one retrained without: only the other still matches
    assert oder.scored_replicates(reps, first, variants) == {"red_deq_seed1": reps["red_deq_seed1"]}
    missing = {"x": ("not_shipped", 30)}
    assert oder.scored_replicates(missing, first, variants) == {}


def test_trained_restart_is_read_from_the_shipped_sidecars():
    # read from the shipped sidecars' configs (a real file each)
    assert not oder._trained_restart("oder_ct_red_deq") and oder._trained_restart("oder_ct_w30_restart")


def test_oder_tables_refuse_other_reports_and_costs_without_a_full_batch():
    with pytest.raises(InvalidValueError, match="deqir bench oder"):
        oder.markdown_tables({"bench": "idt", "rows": [], "summary": {}})
    with pytest.raises(InvalidValueError, match="deqir bench oder"):
        oder.markdown_tables([1, 2])
    report = copy.deepcopy(_report())
    report["rows"] = [r for r in report["rows"] if r.get("w") != 90]
    with pytest.raises(InvalidValueError, match="w = b"):
        oder.markdown_tables(report)


def test_load_report_names_what_is_wrong_with_the_file(tmp_path):
    with pytest.raises(DataError, match="no benchmark report"):
        load_report(tmp_path / "missing.json")
    (tmp_path / "broken.json").write_text('{"bench": ')
    with pytest.raises(DataError, match="not a readable JSON"):
        load_report(tmp_path / "broken.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(DataError, match="not a benchmark report"):
        load_report(tmp_path / "list.json")


def test_cli_tables_prints_the_tables_and_refuses_benches_without_them(tmp_path):
    (tmp_path / "oder.json").write_text(json.dumps(_report()))
    result = CliRunner().invoke(app, ["tables", str(tmp_path / "oder.json")])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == oder.markdown_tables(_report())
    (tmp_path / "idt.json").write_text(json.dumps({"bench": "idt", "rows": [], "summary": {}}))
    result = CliRunner().invoke(app, ["tables", str(tmp_path / "idt.json")])
    assert isinstance(result.exception, InvalidValueError)
    assert "no README tables" in str(result.exception)


@pytest.mark.parametrize(
    "report",
    [
        "oder_finetunes.json",
        "oder_implicit_full.json",
        "oder_tau.json",
        "oder_from_prior.json",
        "oder_from_prior_implicit.json",
        "oder_sigma.json",
    ],
)
def test_readme_shows_the_oder_finetunes_table_of_the_committed_report(report):
    from deqir.bench import oder_finetunes

    tables = oder_finetunes.markdown_tables(load_report(ROOT / "results" / report))
    readme = (ROOT / "README.md").read_text()
    for table in tables.split("\n\n"):
        assert table in readme, (
            f"README's fine-tuning tables differ from `deqir tables results/{report}`: paste its output"
        )


def test_oder_tables_split_oder_minus_tv_by_source_on_test_and_validation():
    report = _report()
    assert "− TV" not in oder.markdown_tables(report)  # the summary has no such keys: no table
    report["summary"] = {
        "ct_oder_minus_tv_db": -1.5,
        "ct_oder_minus_tv_by_source": {
            "ellipses": {"images": 3, "db": -2.25},
            "real": {"images": 1, "db": 0.5},
        },
        "ct_val_oder_minus_tv_db": 0.25,
        "ct_val_oder_minus_tv_by_source": {
            "ellipses": {"images": 2, "db": -1.0},
            "brain": {"images": 2, "db": 1.5},
        },
        "ct_oder_over_tv_edge_error": 1.9,
        "ct_oder_over_tv_flat_error": 3.25,
    }
    lines = oder.markdown_tables(report).splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("| ODER (w = 30) − TV"))
    assert (
        lines[head] == "| ODER (w = 30) − TV, dB | ellipses (images) | real (images) | brain (images) | all |"
    )
    assert lines[head + 2] == "| test | -2.25 (3) | +0.50 (1) |  | -1.50 |"
    assert lines[head + 3] == "| validation | -1.00 (2) |  | +1.50 (2) | +0.25 |"
    assert "1.90× TV's on the pixels next to an edge and 3.25× TV's on the flat ones" in lines[head + 5]
