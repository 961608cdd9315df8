"""The one Hydra entry (launch/app.py) as a user meets it: typos and impossible multiruns are
one line and exit 2, and a refused or dry call leaves no empty runs/DATE/TIME behind."""

from __future__ import annotations


def test_a_mistyped_added_key_is_refused_with_a_suggestion(launch_cli, tmp_path):
    result = launch_cli("+train.stpes=5", f"run_dir={tmp_path / 'r'}")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: train.stpes: is not a key of the config; did you mean train.steps?"
    )
    assert not (tmp_path / "r").exists()


def test_a_multirun_into_one_fixed_dir_is_refused_before_job_0(launch_cli, tmp_path):
    result = launch_cli("-m", "model=tiny,gpt_125m", f"run_dir={tmp_path / 'r'}")
    assert result.returncode == 2 and result.stderr.startswith("error: run_dir: ")
    assert not (tmp_path / "r").exists() and not (tmp_path / "runs").exists()


def test_driver_filled_keys_are_not_options(launch_cli, tmp_path):
    result = launch_cli("resolved.sweep_id=x", f"run_dir={tmp_path / 'r'}")
    assert (
        result.returncode == 2 and "resolved.sweep_id: is filled in by the driver" in result.stderr
    )


def test_no_empty_run_dirs_are_left_behind(launch_cli, tmp_path):
    assert launch_cli("train.steps=0").returncode == 2  # the default, timestamped run dir
    assert launch_cli("sweep=none", "dry_run=true", f"run_dir={tmp_path / 'd'}").returncode == 0
    assert launch_cli("run_dir=").returncode == 2
    assert not (tmp_path / "runs").exists()
    assert (tmp_path / "d" / "config.yaml").is_file()
