"""Peak memory: allocated and reserved on CUDA; reserved is null on CPU, never made up."""

from __future__ import annotations

import torch

from train.measure.held_memory import HeldMemory, memory_summary
from train.measure.metrics import peak_memory_bytes, peak_memory_reserved_bytes

CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)


def test_cpu_has_rss_but_no_reserved():
    assert peak_memory_bytes(CPU) > 0
    assert peak_memory_reserved_bytes(CPU) is None


def test_cuda_reads_both_allocator_peaks(monkeypatch):
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device: 3 * 2**30)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda device: 5 * 2**30)
    assert peak_memory_bytes(CUDA) == 3 * 2**30
    assert peak_memory_reserved_bytes(CUDA) == 5 * 2**30


def test_summary_records_reserved_when_known_and_null_otherwise():
    held = HeldMemory(param_bytes=4, grad_bytes=4, optimizer_state_bytes=8, master_weight_bytes=0)
    gpu = memory_summary(held, peak_bytes=100, peak_reserved_bytes=160)
    assert (gpu["peak_bytes"], gpu["peak_reserved_bytes"]) == (100, 160)
    cpu = memory_summary(held, peak_bytes=100)
    assert cpu["peak_reserved_bytes"] is None and cpu["peak_bytes"] == 100
