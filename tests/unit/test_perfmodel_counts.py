"""The model's counts equal the project's own: FLOPs and parameters (train/model/transformer.py), bytes per
collective kind (train/spec/traffic.py), held memory (train/measure/held_memory.py's semantics)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf

from launch.perfmodel import memory, shapes
from launch.perfmodel.traffic import bytes_per_kind, layout_transfers
from tests.conftest import REPO
from train.measure.held_memory import optimizer_state_tensors, tensor_bytes
from train.model.transformer import Transformer, count_matmul_params, count_params, flops_per_token
from train.parallel.activation_checkpoint import recompute_flops_per_token
from train.parallel.layout import adamw
from train.spec.config import ModelConfig, TrainConfig
from train.spec.degrees import Degrees, LayoutPlan, checkpointed_layers
from train.spec.traffic import _all_params, comm_bytes_per_step

MODELS = ["tiny", "gpt_125m", "gpt_1_3b", "llama_7b", "llama_70b"]


def model(name: str) -> ModelConfig:
    node = OmegaConf.load(REPO / "conf" / "model" / f"{name}.yaml")
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), node))


@pytest.mark.parametrize("name", MODELS)
def test_flops_and_params_match_the_model(name):
    m = model(name)
    assert shapes.count_params(m) == count_params(m)
    assert shapes.count_matmul_params(m) == count_matmul_params(m)
    assert shapes.flops_per_token(m, 2048) == flops_per_token(m, 2048)
    assert shapes.recompute_flops_per_token(m, 512, 3) == recompute_flops_per_token(m, 512, 3)
    assert shapes.all_param_shapes(m) == _all_params(m)


LAYOUTS = [
    ("ddp", (4, 1, 1), False, "none"),
    ("fsdp", (1, 4, 1), False, "none"),
    ("fsdp", (1, 8, 1), False, "full"),
    ("hsdp", (2, 4, 1), False, "none"),
    ("tp", (1, 1, 4), False, "none"),
    ("tp", (1, 1, 4), True, "selective"),
    ("tp_fsdp", (1, 2, 4), True, "none"),
    ("tp_fsdp", (2, 2, 2), False, "full"),
    ("zero1", (1, 4, 1), False, "none"),
    ("zero2", (1, 4, 1), False, "none"),
    ("zero3", (1, 8, 1), False, "none"),
]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("reduce_dtype", ["fp32", "bf16"])
@pytest.mark.parametrize(("name", "degrees", "sp", "ckpt"), LAYOUTS)
def test_transfers_add_up_to_comm_volume(name, degrees, sp, ckpt, precision, reduce_dtype):
    m = model("gpt_125m")
    plan = LayoutPlan(name, Degrees(*degrees), sp, checkpointed_layers(ckpt, m.n_layers, 2))
    kwargs = dict(micro_batch=2, seq_len=256, accum_steps=3, grad_clip=True, precision=precision)
    expected = comm_bytes_per_step(m, plan, fsdp_reduce_dtype=reduce_dtype, **kwargs)
    transfers = layout_transfers(
        m, plan, nproc_per_node=4, fsdp_reduce_dtype=reduce_dtype, **kwargs
    )
    got = bytes_per_kind(transfers)
    assert got == {k: v for k, v in expected.as_dict().items() if k != "total"}


def test_tp_groups_stay_in_a_node_and_replicas_cross_nodes():
    m = model("gpt_125m")
    plan = LayoutPlan("tp_fsdp", Degrees(2, 2, 4), False, [])
    transfers = layout_transfers(
        m,
        plan,
        micro_batch=1,
        seq_len=128,
        accum_steps=1,
        grad_clip=False,
        precision="bf16",
        nproc_per_node=8,
    )
    per_role = {(t.role, t.kind): (t.ranks, t.per_node) for t in transfers}
    assert per_role[("activations", "all_reduce")] == (4, 4)  # consecutive ranks: one node
    assert per_role[("parameters", "all_gather")] == (2, 2)  # stride 4 inside a node of 8
    assert per_role[("gradients", "all_reduce")] == (2, 1)  # stride 8: one per node


def test_held_memory_of_one_rank_equals_the_tensors():
    """ddp on one rank: the tensors a real model and AdamW hold (train/measure/held_memory.py)."""
    m = model("tiny")
    torch.manual_seed(0)
    net = Transformer(m)
    opt = adamw(net, TrainConfig(), torch.device("cpu"))
    net(torch.zeros(1, 8, dtype=torch.long), torch.zeros(1, 8, dtype=torch.long)).backward()
    opt.step()
    plan = LayoutPlan("ddp", Degrees(1, 1, 1), False, [])
    params, grads, state, masters = memory.held_memory(m, plan, "fp32")
    assert params == tensor_bytes(net.parameters())
    assert grads == tensor_bytes(p.grad for p in net.parameters())
    assert state == tensor_bytes(optimizer_state_tensors(opt))
    assert masters == 0


def test_sharded_held_memory_is_the_busiest_rank():
    m = model("tiny")
    full = memory.held_memory(m, LayoutPlan("ddp", Degrees(1, 1, 1), False, []), "bf16")
    fsdp = memory.held_memory(m, LayoutPlan("fsdp", Degrees(1, 3, 1), False, []), "bf16")
    rows = sum(-(-s[0] // 3) * (s[1] if len(s) > 1 else 1) for s in _all_params(m))
    assert fsdp[0] == fsdp[1] == 4 * rows  # fp32 shards, dim 0 rounded up
    assert fsdp[0] < full[0]
    z2 = memory.held_memory(m, LayoutPlan("zero2", Degrees(1, 4, 1), False, []), "bf16")
    n = count_params(m)
    assert z2 == (2 * n, 2 * -(-n // 4), 8 * -(-n // 4) + 4, 4 * -(-n // 4))


def test_checkpointing_and_sequence_parallelism_shrink_activations():
    m = model("llama_7b")
    plain = LayoutPlan("tp", Degrees(1, 1, 4), False, [])
    sp = LayoutPlan("tp", Degrees(1, 1, 4), True, [])
    ckpt = LayoutPlan("ddp", Degrees(1, 1, 1), False, list(range(m.n_layers)))
    none = LayoutPlan("ddp", Degrees(1, 1, 1), False, [])
    act = lambda p: memory.activation_bytes(m, p, 1, 4096, "bf16")  # noqa: E731
    assert act(sp) < act(plain) < act(none)
    assert act(ckpt) < act(none) / 5


def test_the_model_needs_no_torch():
    code = (
        "import sys; import launch.perfmodel.projection, launch.perfmodel.choose, "
        "launch.perfmodel.calibrate; assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
