"""A rank killed mid-run restarts through torchrun and the run resumes from its last complete
checkpoint: the final loss equals an uninterrupted run's, bitwise (fp32 on CPU).

Bitwise because nothing differs between the two runs' arithmetic: the data of a step depends
on (seed, step, row) only, nothing in a step is random, the checkpoint holds the fp32
parameters and the optimizer state exactly, and with 2 ranks a reduction adds two numbers,
which gives the same result in either order.

One layout per path of train/checkpoint/checkpointer.py: DDP (torch.distributed.checkpoint,
synchronous), FSDP (DCP's async_save, sharded), ZeRO-2 (DeepSpeed's save_checkpoint /
load_checkpoint). The uninterrupted runs of all three share one torchrun start
(tests/ranks/pipeline_ranks.py: the worker's loop once per config in one process group); each
killed run goes through the driver, torchrun's restart and the resume, as a user's would.
"""

from __future__ import annotations

import importlib.util
import json

import pytest

from tests.conftest import finish, rank_config, running_driver, torchrun
from tests.ranks.processes import kill_rank, wait_for_steps

STEPS, EVERY, KILL_AFTER = 20, 5, 12
# Tiny and fp32; 8 rows per rank make a step ~30 ms here, so the kill lands mid-run.
RUN = [
    "model=tiny",
    "model.n_layers=2",
    "wandb.mode=disabled",
    f"train.steps={STEPS}",
    "train.warmup_steps=2",
    "train.seq_len=32",
    "train.micro_batch=8",
    "train.global_batch=16",
    "gpu=cpu",
    "sweep=none",
    "cluster.nproc_per_node=2",
    "precision=fp32",
]
LAYOUTS = {
    "ddp": ["parallel=ddp"],
    "fsdp": ["parallel=fsdp", "checkpoint.async_save=true"],
    "zero2": ["parallel=zero2"],
}


def summary_of(run_dir) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict[str, dict]:
    """Each layout's run without a kill: its summary."""
    root = tmp_path_factory.mktemp("uninterrupted")
    deepspeed = importlib.util.find_spec("deepspeed") is not None
    layouts = [n for n in LAYOUTS if n != "zero2" or deepspeed]
    paths = [str(rank_config(root / n, [*RUN, *LAYOUTS[n]])[1]) for n in layouts]
    torchrun(2, "tests.ranks.pipeline_ranks", str(root), *paths, timeout=300)
    return {n: summary_of(root / n) for n in layouts}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_a_killed_rank_resumes_from_the_checkpoint_and_ends_with_the_same_loss(
    tmp_path, uninterrupted, layout
):
    if layout == "zero2":
        pytest.importorskip("deepspeed")
    baseline = uninterrupted[layout]

    run_dir = tmp_path / "killed"
    killed = [*RUN, *LAYOUTS[layout], f"checkpoint.every={EVERY}", "cluster.max_restarts=1"]
    with running_driver([*killed, f"run_dir={run_dir}"], tmp_path) as driver:
        wait_for_steps(run_dir / "metrics.jsonl", KILL_AFTER)
        kill_rank(run_dir / "config.yaml", 1)  # SIGKILL: like an OOM kill or a crash
        finish(driver)
    summary = summary_of(run_dir)

    assert summary["final_loss"] == baseline["final_loss"]  # bitwise
    assert summary["cluster"]["restart_count"] == 1
    resumed = summary["checkpoint"]["resumed_from_step"]
    assert resumed is not None and resumed % EVERY == 0 and resumed >= 10
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    first = {x["step"]: x for x in lines if not x["after_restart"]}
    again = [x for x in lines if x["after_restart"]]
    killed_at = max(first)
    assert killed_at >= KILL_AFTER
    # The second attempt starts after the checkpoint and runs every later step once.
    assert [x["step"] for x in again] == list(range(resumed + 1, STEPS + 1))
    repeated = [x["step"] for x in again if x["repeated"]]
    assert repeated == list(range(resumed + 1, killed_at + 1)) == summary["repeated_steps"]
    for x in again:
        if x["repeated"]:
            assert x["loss"] == first[x["step"]]["loss"]  # the same step, the same loss
    assert summary["timed_steps"] == STEPS - 2  # each step once, warm-up excluded
    saves = summary["checkpoint"]["saves"]
    assert [s["step"] for s in saves] == list(range(resumed + EVERY, STEPS + 1, EVERY))
    assert all(s["bytes"] > 0 and len(s["bytes_per_rank"]) == 2 for s in saves)
