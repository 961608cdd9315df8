"""tests/conftest.py's compose_run_config composes each set of group choices once and applies
value overrides to a copy: it must give what the driver's compose gives, errors included."""

from __future__ import annotations

import pytest

from launch.app import compose
from launch.conf_tree import load_gpu_profile
from launch.errors import ConfigError
from tests.conftest import compose_run_config

OVERRIDE_LISTS = [
    ["run_dir=/tmp/a"],
    ["gpu=h800", "model=llama_70b", "precision=fp8", "train.seq_len=4096", "run_dir=/tmp/b"],
    ["parallel=pp_fsdp", "parallel.pp=2", "parallel.pp_schedule=interleaved_one_f_one_b",
     "sweep.world_sizes=[2,4]", "cluster.nproc_per_node=4"],
    ["cluster=emulated", "cluster.link_gbps=0.02", "cluster.link_match_gpu=null",
     "fabric=nvlink_ib", "train.compile=true"],
    ["model=olmoe_1b_7b", "parallel=ep_fsdp", "parallel.ep=2", "model.capacity_factor=1.25"],
    # A group or a value named twice: the last wins (a test's common list, then its own).
    ["precision=fp32", "model=tiny", "train.steps=5", "precision=fp16", "model=gpt_125m",
     "train.steps=4", "parallel=tp_fsdp", "parallel=fsdp"],
]  # fmt: skip


def drivers(overrides: list[str]):
    typed = compose(overrides)
    if typed.gpu.name == "auto":
        typed.gpu = load_gpu_profile("cpu")
    return typed


@pytest.mark.parametrize("overrides", OVERRIDE_LISTS, ids=lambda o: " ".join(o)[:40])
def test_fast_compose_is_the_drivers(overrides):
    assert compose_run_config(overrides) == drivers(overrides)
    mutated = compose_run_config(overrides)
    mutated.train.steps += 1  # a caller's change never reaches the next caller
    assert compose_run_config(overrides) == drivers(overrides)


@pytest.mark.parametrize(
    "overrides",
    [["train.steps=abc"], ["train.stepz=3"], ["parallel=nope"],
     ["precision.fp8.recipe=blockwise"]],
)  # fmt: skip
def test_a_refused_override_is_the_drivers_error(overrides):
    with pytest.raises(ConfigError) as fast:
        compose_run_config(overrides)
    with pytest.raises(ConfigError) as driver:
        compose(overrides)
    assert str(fast.value) == str(driver.value)
