import json

from launch.bench import matmul_ceiling as mamf


def test_mamf_writes_its_file_and_the_next_run_reads_it(tmp_path, monkeypatch, launch_cli):
    monkeypatch.setenv("SCALEPROBE_CACHE_DIR", str(tmp_path / "cache"))
    assert (
        mamf.main(
            [
                "--quick",
                "--precisions",
                "fp32",
                "--seconds",
                "5",
                "--out",
                str(tmp_path / "mamf.json"),
            ]
        )
        == 0
    )
    record = json.loads((tmp_path / "mamf.json").read_text())
    measured = record["best_tflops"]["fp32"]
    assert measured > 0 and record["cpu_threads"] == 1
    assert list((tmp_path / "cache" / "mamf").glob("*.json"))

    result = launch_cli(
        "model=tiny",
        "wandb.mode=disabled",
        "sweep=none",
        "gpu=cpu",
        "precision=fp32",
        "cluster.nproc_per_node=1",
        "train.steps=3",
        "train.warmup_steps=1",
        "train.seq_len=32",
        f"run_dir={tmp_path / 'run'}",
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    # The cpu profile's peak now comes from the measurement, so MFU is no longer null.
    assert summary["peak_tflops"] == summary["measured_peak_tflops"] == measured
    expected = summary["model"]["flops_per_token"] * summary["tokens_per_s_per_device"]
    assert summary["mfu"] == summary["mfu_vs_measured"]
    assert abs(summary["mfu"] - expected / (measured * 1e12)) < 1e-12


def test_unknown_precision_is_refused(capsys):
    assert mamf.main(["--precisions", "fp4"]) == 2
    assert "--precisions: unknown ['fp4']" in capsys.readouterr().err
