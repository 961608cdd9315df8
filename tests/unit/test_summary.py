"""summary.json through its type: what the worker writes is what the report can read, and
what it cannot read is one line naming the file."""

from __future__ import annotations

import json
import math

import pytest

from launch.report import main
from tests.unit.test_report import summary as report_summary
from train.measure.summary import SCHEMA_VERSION, RunSummary, SummaryError


def test_round_trip_keeps_every_key_and_writes_strict_json(tmp_path):
    data = report_summary("h100_sxm", 8, 3000.0, 0.4)
    data["final_loss"] = math.nan  # a diverged run
    data["a_newer_key"] = {"kept": True}
    path = tmp_path / "summary.json"
    RunSummary.from_dict(data).write(path)
    text = path.read_text()
    assert "NaN" not in text
    back = json.loads(text)
    assert back["final_loss"] is None and back["a_newer_key"] == {"kept": True}
    assert back["schema_version"] == SCHEMA_VERSION
    assert RunSummary.read(path).world_size == 8


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.pop("schema_version"), "summary schema 1, this scaleprobe reads"),
        (lambda d: d.update(world_size=0), "world_size is 0, expected an integer >= 1"),
        (lambda d: d.update(world_size="8"), "world_size is '8'"),
        (lambda d: d.pop("tokens_per_s"), "summary lacks tokens_per_s"),
        (lambda d: d.update(step_time_s={"median": 0}), "step_time_s.median is 0"),
        # What the report labels and groups by, of another kind: TypeErrors in the report.
        (lambda d: d.update(model="llama"), "model is 'llama', expected a JSON object"),
        (lambda d: d.update(step_time_s=None), "step_time_s is None, expected a JSON object"),
        (lambda d: d.update(gpu=8), "gpu is 8, expected a string"),
        (lambda d: d.update(mfu="40%"), "mfu is '40%', expected a number or null"),
        (lambda d: d["precision"].update(resolved=None), "precision.resolved is None"),
        (lambda d: d["sweep"].pop("name"), "sweep.name is None, expected a string"),
    ],
)
def test_unreadable_summaries_are_one_line(change, message):
    data = report_summary("h100_sxm", 8, 3000.0, 0.4)
    change(data)
    with pytest.raises(SummaryError, match=message):
        RunSummary.from_dict(data, "x/summary.json")


def test_report_cli_refuses_a_null_summary_and_a_file_as_out(tmp_path, capsys):
    run = tmp_path / "sweep" / "ws1"
    run.mkdir(parents=True)
    (run / "summary.json").write_text("null")
    assert main([str(tmp_path / "sweep")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "not a JSON object" in err and len(err.splitlines()) == 1
    (run / "summary.json").write_text(json.dumps(report_summary("h100_sxm", 1, 1.0, None)))
    (tmp_path / "file").write_text("")
    assert main([str(tmp_path / "sweep"), "--out", str(tmp_path / "file")]) == 2
    assert "--out" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "says"),
    [([], "the following arguments are required: DIR"), (["x", "--nope"], "unrecognized")],
)
def test_report_cli_argument_errors_are_one_line(capsys, args, says):
    # argparse printed its usage line first: two lines where every other refusal is one.
    with pytest.raises(SystemExit) as exited:
        main(args)
    err = capsys.readouterr().err
    assert exited.value.code == 2 and err.startswith("error: ") and says in err
    assert err.count("\n") == 1, err
