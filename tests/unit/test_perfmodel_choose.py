"""parallel=auto: what the model picks for a small table of (profile, model, nodes), and why."""

from __future__ import annotations

import pytest

from launch.errors import ConfigError
from launch.perfmodel.choose import candidate_degrees, choose_layout
from launch.perfmodel.hardware import part_rates
from launch.perfmodel.step import Placement
from tests.conftest import compose_run_config
from train.spec.degrees import BatchRule

SHAPES = {  # sequence length, micro batch, sequences per device per step
    "gpt_1_3b": ["train.seq_len=2048", "train.micro_batch=4", "train.global_batch=16"],
    "llama_7b": ["train.seq_len=4096", "train.micro_batch=1", "train.global_batch=8"],
    "llama_70b": ["train.seq_len=4096", "train.micro_batch=1", "train.global_batch=8"],
}


def choose(gpu: str, model: str, nodes: int, *extra: str):
    cfg = compose_run_config(
        [f"gpu={gpu}", f"model={model}", *SHAPES[model], "run_dir=/unused", *extra]
    )
    world = cfg.gpu.gpus_per_node * nodes
    batch = cfg.train.global_batch * world
    return choose_layout(
        cfg,
        world_size=world,
        nproc_per_node=cfg.gpu.gpus_per_node,
        nodes=nodes,
        batch=BatchRule(global_batch=batch),
    )


@pytest.mark.parametrize(
    ("gpu", "model", "nodes", "layout", "tp", "in_reason"),
    [
        # A 1.3B model: FSDP2 gathers 16-bit weights where DDP's autocast casts every fp32
        # weight each micro-step, and its gathers hide behind compute: fsdp by ~5%.
        ("h100_sxm", "gpt_1_3b", 1, "fsdp", 1, "next ddp"),
        ("h800", "gpt_1_3b", 4, "fsdp", 1, "best of"),
        # The H20's compute is so slow that the casts do not matter: the simpler ddp wins.
        ("h20", "gpt_1_3b", 1, "ddp", 1, "tok/s/device predicted"),
        # 7B: sharding needed; on 40 GB TP 2 (NVLink) avoids recomputing every block.
        ("h100_sxm", "llama_7b", 1, "fsdp", 1, "next"),
        ("a100_40g", "llama_7b", 1, "tp_fsdp", 2, "tp 2"),
        # No NVLink: never TP, and the reason says so.
        ("l40s", "llama_7b", 1, "fsdp", 1, "no TP (no NVLink)"),
    ],
)
def test_auto_picks(gpu, model, nodes, layout, tp, in_reason):
    choice = choose(gpu, model, nodes)
    assert choice.name == layout
    assert choice.degrees.tp == tp
    assert choice.degrees.world == nodes * 8
    assert in_reason in choice.reason
    assert choice.prediction.fits
    assert choice.as_dict()["resolved"] == layout


def test_tp_only_inside_a_node_and_only_over_nvlink():
    for gpu, span in (("h100_sxm", 8), ("h100_pcie", 2), ("l40s", 1)):
        for nodes in (1, 4):
            cfg = compose_run_config([f"gpu={gpu}", "model=llama_70b", "run_dir=/unused"])
            rates = part_rates(cfg.gpu)
            candidates = candidate_degrees(cfg, Placement(8 * nodes, 8, nodes), rates)
            assert max(d.tp for _, d in candidates) == span
            assert all(d.world == 8 * nodes for _, d in candidates)
    # 70B needs more than one node's memory; on four it fits and TP stays inside a node.
    choice = choose("h100_sxm", "llama_70b", 4)
    assert choice.degrees.tp <= 8 and choice.prediction.fits


def test_a_layout_that_fits_nowhere_says_how_much_it_needs():
    with pytest.raises(ConfigError, match=r"parallel: .*needs \d+\.\d GiB per rank"):
        choose("a100_40g", "llama_70b", 1, "train.micro_batch=8", "train.global_batch=8")
