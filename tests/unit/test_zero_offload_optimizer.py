"""ZeRO-Offload steps DeepSpeed's CPU Adam; torch AdamW only as a CPU rank's stated fallback."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from tests.conftest import compose_run_config
from train.parallel import zero

CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)


class FakeCPUAdam:
    """Stands in for deepspeed.ops.adam.DeepSpeedCPUAdam (its JIT build takes minutes)."""

    def __init__(self, params, **kwargs):
        self.params, self.kwargs = list(params), kwargs


class BrokenCPUAdam:
    def __init__(self, params, **kwargs):
        raise RuntimeError("Error building extension 'cpu_adam'")


@pytest.fixture
def cpu_adam(monkeypatch):
    """Install a fake deepspeed.ops.adam with the class a test chooses."""

    def install(cls):
        module = types.ModuleType("deepspeed.ops.adam")
        module.DeepSpeedCPUAdam = cls
        monkeypatch.setitem(sys.modules, "deepspeed.ops.adam", module)

    return install


def config(offload: bool):
    return compose_run_config(
        [
            "run_dir=/unused",
            "parallel=zero2",
            f"parallel.offload_optimizer={offload}",
            "train.lr=3e-4",
            "train.weight_decay=0.05",
        ]
    )


def test_without_offload_the_client_optimizer_is_torch_adamw(cpu_adam):
    cpu_adam(FakeCPUAdam)
    optimizer = zero.zero_client_optimizer(torch.nn.Linear(4, 4), config(False), CPU)
    assert type(optimizer) is torch.optim.AdamW


def test_offload_takes_deepspeed_cpu_adam_with_adamw_hyperparameters(cpu_adam):
    cpu_adam(FakeCPUAdam)
    model = torch.nn.Linear(4, 4)
    optimizer = zero.zero_client_optimizer(model, config(True), CPU)
    assert isinstance(optimizer, FakeCPUAdam)
    assert optimizer.params == list(model.parameters())
    reference = torch.optim.AdamW(
        model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.05
    ).defaults
    assert optimizer.kwargs == {
        "lr": 3e-4,
        "betas": reference["betas"],
        "eps": reference["eps"],
        "weight_decay": 0.05,
        "adamw_mode": True,
    }


def test_a_cpu_rank_falls_back_to_torch_adamw_and_says_why(cpu_adam, capsys):
    cpu_adam(BrokenCPUAdam)
    optimizer = zero.zero_client_optimizer(torch.nn.Linear(4, 4), config(True), CPU)
    assert type(optimizer) is torch.optim.AdamW
    out = capsys.readouterr().out
    assert "parallel.offload_optimizer" in out and "Error building extension" in out
    assert "torch AdamW steps on the CPU instead" in out


def test_a_cuda_rank_does_not_fall_back(cpu_adam, monkeypatch):
    cpu_adam(BrokenCPUAdam)
    # torch AdamW itself is only built (fused on CUDA), never stepped: a CPU tensor is fine.
    monkeypatch.setattr(
        zero,
        "adamw",
        lambda model, train, device: torch.optim.AdamW(
            model.parameters(), lr=train.lr, betas=(0.9, 0.95), weight_decay=train.weight_decay
        ),
    )
    with pytest.raises(RuntimeError, match="parallel.offload_optimizer: DeepSpeed's CPU Adam"):
        zero.zero_client_optimizer(torch.nn.Linear(4, 4), config(True), CUDA)
