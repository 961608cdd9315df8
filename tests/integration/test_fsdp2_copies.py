"""FSDP2's device copies and buffers as torch 2.13 runs them, counted in child processes (one
rank, and two gloo ranks): what launch/perfmodel/compute.py fsdp2_bytes_per_param and
memory.reduce_scatter_buffer_bytes count. Ranks start here, so these are integration tests;
the model's side of each count is in tests/unit/test_perfmodel_counts.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from launch.perfmodel import compute
from tests.conftest import REPO

# One rank of FSDP2 (gloo, in a child process: a process group is global state) under each
# reduce dtype: the fp32 casts of 16-bit reduce-scatter results and the additions into the
# shard's fp32 .grad, on tensors of one parameter's size, over a 3-micro-step step.
_FSDP2_COPIES = """
import json, torch, torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.utils._python_dispatch import TorchDispatchMode

class Copies(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.to_fp32 = self.adds = self.adds_16 = self.copies = self.copies_16 = 0
        self.new_divided = 0
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        a = args[0]
        if isinstance(a, torch.Tensor) and a.numel() == 64 * 64:
            # A division into a new tensor (not div_): the world-size-1 path's temporary.
            divide = func in (torch.ops.aten.div.Tensor, torch.ops.aten.div.Scalar)
            self.new_divided += divide and out.dtype == torch.float32
            bf16_to_fp32 = a.dtype == torch.bfloat16 and out.dtype == torch.float32
            self.to_fp32 += func is torch.ops.aten._to_copy.default and bf16_to_fp32
            add = func is torch.ops.aten.add_.Tensor
            self.adds += add and a.dtype == torch.float32
            self.adds_16 += add and a.dtype == torch.bfloat16
            copy = func is torch.ops.aten.copy_.default
            self.copies += copy and a.dtype == torch.float32
            self.copies_16 += copy and a.dtype == torch.bfloat16
        return out

dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
hsdp = init_device_mesh("cpu", (1, 1), mesh_dim_names=("replicate", "shard"))
counts = {}
for name, dtype, mesh in (("fp32", torch.float32, None), ("bf16", torch.bfloat16, None),
                          ("hsdp_bf16", torch.bfloat16, hsdp), ("divided", torch.float32, None)):
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=dtype)
    net = torch.nn.Sequential(*(torch.nn.Linear(64, 64, bias=False) for _ in range(2)))
    for layer in net:
        fully_shard(layer, mesh=mesh, mp_policy=policy)
        if name == "divided":  # as train/parallel/expert_parallel.py sets it on the experts
            layer.set_gradient_divide_factor(2.0)
    fully_shard(net, mesh=mesh, mp_policy=policy)
    with Copies() as copies:
        for micro_step in range(3):
            net.set_requires_all_reduce(micro_step == 2)  # train/parallel/fsdp.py's loop
            net(torch.randn(8, 64)).float().sum().backward()
    counts[name] = {k: getattr(copies, k) for k in ("to_fp32", "adds", "adds_16", "copies",
                                                    "copies_16", "new_divided")}
print(json.dumps(counts))
dist.destroy_process_group()
"""


def test_fsdp2_result_casts_and_additions_are_what_the_model_counts():
    """compute.fsdp2_bytes_per_param, reducing every micro-step: per shard element each
    result of a 16-bit reduce dtype is cast to the fp32 master's (read 2, write 4), fp32
    results are not, and the result is added to .grad on every micro-step but the step's
    first (read 4 twice, write 4), as torch's FSDP2 runs it (counted on one rank). HSDP
    keeps its non-final results in the reduce dtype for the replicas' all-reduce: it adds
    them in bf16 and casts once. One rank is torch's world-size-1 path: each gather copies
    the cast shard into the parameter (no copy-out) and each reduction copies its input to
    its output (read r, write r)."""
    run = subprocess.run(
        [sys.executable, "-c", _FSDP2_COPIES],
        capture_output=True, text=True, check=True, cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    counts = json.loads(run.stdout.strip().splitlines()[-1])
    params, accum = 2, 3
    gathers = 2 * accum * params  # forward and backward, each micro-step
    for name, r in (("fp32", 4), ("bf16", 2), ("hsdp_bf16", 2)):
        measured = counts[name]
        adds = measured["adds"] * 12 + measured["adds_16"] * 3 * r  # read twice, write once
        reduce_copies = measured["copies"] if r == 4 else measured["copies_16"] - gathers
        assert reduce_copies == accum * params, name
        per_param = (measured["to_fp32"] * (r + 4) + adds) / params
        expected = accum * (2 + 2 + r) + per_param  # the GEMM's gradient, chunk_cat, the shard's
        modelled = compute.fsdp2_bytes_per_param(
            accum=accum,
            precision="bf16",
            shard_split=1,
            reduce_each=True,
            reduce_width=r,
            replicated=name.startswith("hsdp"),
            gather_world=1,
        )
        assert modelled.grads == expected, name
        copies = modelled.reduce_copy * modelled.reductions
        assert copies == reduce_copies * 2 * r / params, name  # read r, write r
        assert modelled.copy_out == 0  # the cast shard is copied into the parameter itself
    assert counts["fp32"]["copies_16"] == gathers
    assert counts["fp32"]["to_fp32"] == 0 and counts["bf16"]["to_fp32"] == accum * params
    assert counts["bf16"]["adds"] == (accum - 1) * params
    hsdp = {k: counts["hsdp_bf16"][k] for k in ("to_fp32", "adds", "adds_16")}
    assert hsdp == {"to_fp32": params, "adds": 0, "adds_16": (accum - 1) * params}
    # A gradient divide factor at one rank: each reduction divides into a new fp32 tensor of
    # the unit's size (memory.divide_copy_bytes' temporary); without one, none.
    assert counts["divided"]["new_divided"] == accum * params
    assert counts["fp32"]["new_divided"] == 0


# Two ranks of FSDP2 (gloo, FileStore): what one rank copies around each all-gather of a
# 64 x 64 Linear unit, by op: the shard's cast (torch's foreach-copy fast path into a flat
# 16-bit buffer), the copy into the all-gather input, the split copy out of the output.
_FSDP2_GATHERS = """
import collections, json, os, sys, weakref, torch, torch.distributed as dist
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.utils._python_dispatch import TorchDispatchMode

def numel(tensors):
    return [t.numel() for t in tensors]

class Gathers(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.seen = collections.defaultdict(list)
        self.inputs = []
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func is torch.ops.aten._foreach_copy_.default:
            self.seen["cast"].append([args[1][0].dtype == torch.float32, numel(args[0])])
        elif func is torch.ops.fsdp.all_gather_copy_in.default:
            self.seen["copy_in"].append(out[0].numel())
        elif func is torch.ops.fsdp.split_with_sizes_copy.default:
            self.seen["copy_out"].append(numel(kwargs["out"]))
        elif func is torch.ops.fsdp.chunk_cat.default:
            # The gradients into the reduce-scatter input (a view of it is the out), and how
            # many earlier inputs are still alive as it is filled.
            base = kwargs["out"]._base
            alive = sum(ref() is not None for ref in self.inputs)
            self.inputs.append(weakref.ref(base))
            self.seen["reduce_input"].append([base.numel(), str(base.dtype), alive])
        return out

rank, store = int(sys.argv[1]), sys.argv[2]
dist.init_process_group("gloo", store=dist.FileStore(store, 2), rank=rank, world_size=2)
policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
net = torch.nn.Sequential(*(torch.nn.Linear(64, 64, bias=False) for _ in range(2)))
for layer in net:
    fully_shard(layer, mp_policy=policy)
fully_shard(net, mp_policy=policy)
with Gathers() as gathers:
    net(torch.randn(8, 64)).float().sum().backward()
if rank == 0:
    print(json.dumps(gathers.seen), flush=True)
dist.barrier()
dist.destroy_process_group()
# gloo's threads can abort a process at interpreter exit ("terminate called without an active
# exception", once in a CI run): the answer is out, so leave without the C++ teardown.
os._exit(0)
"""


def test_fsdp2_gathers_across_ranks_copy_what_the_model_counts(tmp_path):
    """compute.fsdp2_bytes_per_param at a shard dim of 2: per gather, each shard element is
    cast from the fp32 master to bf16 (read 4, write 2) and copied into the all-gather input
    (read 2, write 2); every element of the unit is copied out of the output (read 2, write
    2), as torch's FSDP2 runs it on two ranks. (One rank: the test above.)"""
    store = tmp_path / "store"
    probe = [sys.executable, "-c", _FSDP2_GATHERS]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    other = subprocess.Popen([*probe, "1", str(store)], cwd=REPO, env=env)
    try:
        run = subprocess.run(
            [*probe, "0", str(store)], capture_output=True, text=True, cwd=REPO, env=env,
            timeout=120,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr[-3000:]
        assert other.wait(timeout=120) == 0
    finally:
        other.kill()  # rank 0 failed: rank 1 may wait in gloo for ever
        other.wait()
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    unit, shard, gathers = 64 * 64, 64 * 64 // 2, 4  # 2 units, gathered for forward and backward
    assert seen["cast"] == [[True, [shard]]] * gathers
    assert seen["copy_in"] == [shard] * gathers
    assert seen["copy_out"] == [[unit]] * gathers
    # memory.reduce_scatter_buffer_bytes: each unit's reduce-scatter input is the whole unit in
    # the reduce dtype (fp32 here), and only one is alive at a time (none left from the unit
    # before when the next one's is filled).
    assert seen["reduce_input"] == [[unit, "torch.float32", 0]] * 2
    modelled = compute.fsdp2_bytes_per_param(
        accum=1, precision="bf16", shard_split=2, reduce_each=True, gather_world=2
    )
    assert modelled.copy_out == 2 + 2  # per element of the unit
    assert modelled.shard_in == ((4 + 2) + (2 + 2)) / 2  # per element of the unit: per shard's
