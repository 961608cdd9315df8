"""The measured matmul ceiling (launch.mamf's cache): validated when read, never lowered by a
later measurement unless told, and an MFU above 100% flagged with its likely cause."""

from __future__ import annotations

import json

import pytest

from launch.bench import cache
from launch.bench import matmul_ceiling as mamf
from train.measure.metrics import MfuFigures

GOOD = {"device_name": "cpu x", "measured_at": "2026-11-30T12:00:00+00:00", "cpu_threads": 1}


def write(record: dict) -> None:
    path = cache.cache_path("cpu x", 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))


@pytest.mark.parametrize(
    ("record", "problem"),
    [
        ({"cpu_threads": 1, "device_name": "cpu x", "best_tflops": {"fp32": 0.05}}, "measured_at"),
        ({**GOOD, "best_tflops": {"fp32": -1}}, "best_tflops.fp32 = -1"),
        ({**GOOD, "best_tflops": {"bf16": "abc"}}, "best_tflops.bf16 = 'abc'"),
        ({**GOOD, "best_tflops": {"fp32": 1e6}}, "best_tflops.fp32 = 1000000.0"),
    ],
)
def test_a_bad_record_is_ignored_with_a_warning(record, problem, capsys):
    write(record)
    assert cache.load_measured("cpu x", 1) is None
    warning = capsys.readouterr().err
    assert "ignoring matmul cache" in warning and problem in warning


def test_a_good_record_is_read():
    write({**GOOD, "best_tflops": {"fp32": 0.05}})
    assert cache.load_measured("cpu x", 1)["best_tflops"] == {"fp32": 0.05}


def full(tflops: float) -> dict:
    return {
        **GOOD,
        "best_tflops": {"fp32": tflops},
        "best_size": {"fp32": 512},
        "quick": {"fp32": False},
    }


def test_a_lower_full_measurement_keeps_the_higher_ceiling_unless_replaced():
    kept = mamf.merge_measurements(full(0.09), full(0.06))  # a run on a loaded machine
    assert kept["best_tflops"]["fp32"] == 0.09
    assert mamf.merge_measurements(full(0.06), full(0.09))["best_tflops"]["fp32"] == 0.09
    stale = mamf.merge_measurements(full(0.09), full(0.06), replace=True)
    assert stale["best_tflops"]["fp32"] == 0.06


def test_an_mfu_above_100_percent_is_flagged_with_its_cause():
    ok = MfuFigures(100.0, "bf16", 0.5, 80.0, 0.62)
    assert ok.above_peak is None
    loaded = MfuFigures(None, "fp32", None, 0.05, 1.3)
    assert "measured on a loaded machine" in loaded.above_peak and "130%" in loaded.above_peak
    wrong_part = MfuFigures(50.0, "bf16", 1.45, None, None)
    assert "another part" in wrong_part.above_peak


# -- python -m launch.mamf's own input: one line, exit 2, nothing measured or saved -----------


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SCALEPROBE_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--sizes=-4"], "argument --sizes: -4: each size must be 64..32768"),
        (["--sizes", "abc"], "argument --sizes: 'abc': a comma list of whole numbers"),
        (["--sizes", "200000"], "argument --sizes: 200000: each size must be 64..32768"),
        (["--sizes", "0"], "argument --sizes: 0: each size must be"),  # saved 0.000 TFLOP/s
        (["--sizes", "8192"], "argument --sizes: 8192: at most 4096 on a CPU"),
        (["--cpu-threads", "0"], "argument --cpu-threads: 0: must be > 0"),
        (["--seconds", "0"], "argument --seconds: 0: must be > 0"),  # saved 0.000 TFLOP/s
        (["--seconds=-1"], "argument --seconds: -1: must be > 0"),
        (["--seconds", "nan"], "argument --seconds: nan: must be a finite number > 0"),
        (["--cpu-threads", "1.5"], "argument --cpu-threads: '1.5': not a whole number"),
        (["--host-shapes", "/nonexistent.yaml"], "argument --host-shapes: /nonexistent.yaml does"),
        (["--precisions", "fp4"], "argument --precisions: unknown ['fp4']; choose from fp32,"),
        # On a CPU it saved a 5e-5 TFLOP/s fp8 "ceiling" (torch's emulation) into the record.
        (["--precisions", "fp8", "--quick"], "argument --precisions: fp8 matmuls need a CUDA GPU"),
    ],
)
def test_bad_mamf_input_is_one_line_and_exit_2(own_cache, capsys, args, says):
    if "8192" in args or "fp8" in args:
        torch = pytest.importorskip("torch")
        if torch.cuda.is_available():
            pytest.skip("a CPU's refusal")
    assert mamf.main(["--quick", "--precisions", "fp32", *args]) == 2
    out, err = capsys.readouterr()
    assert err == f"error: {err.removeprefix('error: ').splitlines()[0]}\n" and says in err, err
    assert not own_cache.exists() and not out


def test_a_cache_dir_that_is_a_file_is_refused_before_measuring(tmp_path, monkeypatch, capsys):
    # It measured for minutes, then failed to save.
    (tmp_path / "cache").write_text("")
    monkeypatch.setenv("SCALEPROBE_CACHE_DIR", str(tmp_path / "cache"))
    for args in (["--quick", "--precisions", "fp32"], ["--host-shapes", str(tmp_path / "c.yaml")]):
        if args[0] == "--host-shapes":
            (tmp_path / "c.yaml").write_text("")
        assert mamf.main(args) == 2
        out, err = capsys.readouterr()
        why = f"{tmp_path / 'cache'} is not a directory"
        assert err == f"error: SCALEPROBE_CACHE_DIR: {tmp_path / 'cache' / 'mamf'}: {why}\n"
        assert not out


def test_a_directory_or_a_foreign_file_as_host_shapes_is_one_line(own_cache, tmp_path, capsys):
    assert mamf.main(["--host-shapes", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (
        f"error: argument --host-shapes: {tmp_path} is a directory; expected RUN_DIR/config.yaml\n"
    )
    foreign = tmp_path / "other.yaml"
    foreign.write_text("steps: [1, 2\n")
    assert mamf.main(["--host-shapes", str(foreign)]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith(f"error: --host-shapes: {foreign} is not a run config")
        and err.count("\n") == 1
    )
    assert not own_cache.exists()


def test_an_out_file_under_a_file_is_refused_before_measuring(own_cache, tmp_path, capsys):
    """It measured, saved the cache, then failed making --out's folder: a traceback."""
    taken = tmp_path / "taken"
    taken.write_text("mine\n")
    out = taken / "mamf.json"
    assert mamf.main(["--quick", "--precisions", "fp32", "--out", str(out)]) == 2
    assert capsys.readouterr().err == (
        f"error: argument --out: {out}: {taken} is not a directory\n"
    )
    assert not own_cache.exists() and taken.read_text() == "mine\n"


def test_a_measurement_no_device_reaches_is_not_saved(own_cache, monkeypatch, capsys):
    """The backstop behind the checks: cache.py's ceiling_problem before anything is saved."""
    monkeypatch.setattr(mamf, "measure", lambda *a: {"tflops": 0.0, "size": 128})
    assert mamf.main(["--quick", "--precisions", "fp32"]) == 1
    assert "error: measured best_tflops.fp32 = 0.0: not a TFLOP/s in" in capsys.readouterr().err
    assert not own_cache.exists()


def test_a_spent_budget_still_measures_one_size():
    torch = pytest.importorskip("torch")
    best = mamf.measure("fp32", [64, 128], torch.device("cpu"), 1e-9)
    assert best["size"] == 64 and best["tflops"] > 0


def test_a_new_measurement_keeps_the_sizes_of_the_precisions_it_did_not_take():
    cached = {**full(0.09), "sizes": [256, 512, 1024]}  # a record of one sizes list for all
    quick_bf16 = {
        **GOOD,
        "sizes": {"bf16": [128, 256]},
        "best_tflops": {"bf16": 0.04},
        "best_size": {"bf16": 256},
        "quick": {"bf16": True},
    }
    merged = mamf.merge_measurements(cached, quick_bf16)
    assert merged["sizes"] == {"fp32": [256, 512, 1024], "bf16": [128, 256]}
    quick_fp32 = {**quick_bf16, "sizes": {"fp32": [128]}, "best_tflops": {"fp32": 0.01}}
    quick_fp32 |= {"best_size": {"fp32": 128}, "quick": {"fp32": True}}
    kept = mamf.merge_measurements(merged, quick_fp32)  # a quick figure never replaces a full
    assert kept["sizes"]["fp32"] == [256, 512, 1024] and kept["best_tflops"]["fp32"] == 0.09
