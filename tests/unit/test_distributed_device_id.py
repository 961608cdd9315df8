"""init_process_group binds the CUDA device (device_id) on GPU ranks; CPU ranks unchanged."""

from __future__ import annotations

from datetime import timedelta

import pytest
import torch

from train.runtime import distributed


@pytest.fixture
def torchrun_env(monkeypatch):
    for key, value in {
        "RANK": "1",
        "WORLD_SIZE": "2",
        "LOCAL_RANK": "1",
        "LOCAL_WORLD_SIZE": "2",
    }.items():
        monkeypatch.setenv(key, value)
    calls = []
    # init_distributed sets torch's sub-group defaults (the collective timeout): put back.
    for name in ("default_pg_timeout", "default_pg_nccl_timeout"):
        monkeypatch.setattr(distributed.c10d, name, getattr(distributed.c10d, name))
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(
        distributed.dist, "init_process_group", lambda **kwargs: calls.append(kwargs)
    )
    return calls


def test_a_cuda_rank_passes_its_device(torchrun_env, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    set_to = []
    monkeypatch.setattr(torch.cuda, "set_device", set_to.append)
    info = distributed.init_distributed()
    assert info.device == torch.device("cuda", 1) and info.backend == "nccl"
    assert set_to == [torch.device("cuda", 1)]
    assert torchrun_env == [
        {"backend": "nccl", "timeout": timedelta(seconds=600), "device_id": torch.device("cuda", 1)}
    ]


def test_a_cpu_rank_passes_no_device(torchrun_env, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    info = distributed.init_distributed()
    assert info.device == torch.device("cpu") and info.backend == "gloo"
    assert torchrun_env == [{"backend": "gloo", "timeout": timedelta(seconds=300)}]  # no device_id
