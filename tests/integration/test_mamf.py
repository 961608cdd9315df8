import dataclasses
import json

from launch.bench import matmul_ceiling as mamf
from launch.perfmodel import host
from launch.perfmodel.host import loss_key, overhead_key
from tests.conftest import compose_run_config


def _cpu(*overrides: str):
    return compose_run_config(
        ["model=tiny", "gpu=cpu", "parallel=ddp", "run_dir=/unused", *overrides]
    )


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


def test_the_loss_and_the_models_one_token_pass_are_measured():
    """launch.mamf --host-shapes times the loss at each (tokens, vocab) in the round-robin
    passes and the model's forward + backward at one token in a child process
    (train/measure/fixed_cost.py: the driver does not import the model)."""
    from launch.bench.host_kernels import measure_host

    m = _cpu().model
    record = measure_host([], [], losses=[(64, 2048)], models=[m])
    assert set(record["loss_s"]) == {loss_key(64, 2048)}
    assert set(record["overhead_s"]) == {overhead_key(m)}
    assert 0 < record["loss_s"][loss_key(64, 2048)] < 1
    fixed = record["overhead_s"][overhead_key(m)]
    assert 0 < fixed["per_block_s"] < 1 and 0 <= fixed["root_s"] < 1
    # Timed on a narrow copy with the same op graph: a large model builds in no time, and
    # its widths do not name another fixed cost.
    big = _cpu("model=llama_7b").model
    narrow = host.narrow_model(big, 2)
    widths = (narrow.n_heads, narrow.n_kv_heads, narrow.d_model, narrow.vocab_size)
    assert widths == (32, 32, 256, 64)
    assert overhead_key(dataclasses.replace(big, d_model=8192)) == overhead_key(big)
    assert overhead_key(dataclasses.replace(big, n_layers=3)) == overhead_key(big)
    assert overhead_key(dataclasses.replace(big, n_heads=16)) != overhead_key(big)
