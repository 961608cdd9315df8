"""The performance model reads the project's own numbers: shapes and FLOPs from train/spec/
(which the built model matches), collective groups on the mesh, held memory with
train/measure/held_memory.py's semantics; and it needs no torch."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf

from launch.perfmodel import memory
from tests.conftest import REPO
from train.measure.held_memory import optimizer_state_tensors, tensor_bytes
from train.model.transformer import Transformer
from train.parallel.layout import adamw
from train.spec import shapes
from train.spec.config import ModelConfig, TrainConfig
from train.spec.degrees import Degrees, LayoutPlan
from train.spec.traffic import StepShape, step_collectives

MODELS = ["tiny", "gpt_125m", "gpt_1_3b", "llama_7b", "llama_70b"]


def model(name: str) -> ModelConfig:
    node = OmegaConf.load(REPO / "conf" / "model" / f"{name}.yaml")
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), node))


@pytest.mark.parametrize("name", MODELS)
def test_the_spec_shapes_are_what_the_model_builds(name):
    """The perfmodel reads train/spec/shapes.py, which must describe the built model: checked
    on the meta device (no memory) for every shipped model."""
    m = model(name)
    with torch.device("meta"):
        net = Transformer(m, init=False)
    assert [tuple(p.shape) for p in net.parameters()] == shapes.all_param_shapes(m)
    assert shapes.count_params(m) == sum(p.numel() for p in net.parameters())


def test_tp_groups_stay_in_a_node_and_replicas_cross_nodes():
    m = model("gpt_125m")
    plan = LayoutPlan("tp_fsdp", Degrees(2, 2, 4), False, [])
    collectives = step_collectives(m, plan, StepShape(1, 128, 1, False, "bf16"))
    d = plan.degrees
    per_role = {
        (c.role, c.kind): (d.size(c.group), d.ranks_per_node(c.group, 8)) for c in collectives
    }
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
    rows = sum(-(-s[0] // 3) * (s[1] if len(s) > 1 else 1) for s in shapes.all_param_shapes(m))
    assert fsdp[0] == fsdp[1] == 4 * rows  # fp32 shards, dim 0 rounded up
    assert fsdp[0] < full[0]
    z2 = memory.held_memory(m, LayoutPlan("zero2", Degrees(1, 4, 1), False, []), "bf16")
    n = shapes.count_params(m)
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


def test_the_losss_peak_is_its_saved_log_softmax_and_two_fp32_gradients():
    """memory.LOSS_BACKWARD_PEAK_PER_VOCAB, from torch's own autograd: the runtime's loss
    (train/model/transformer.py cross_entropy_loss) over bf16 logits saves one
    vocabulary-wide tensor, the fp32 log-softmax (4 bytes per entry); its backward allocates
    nll_loss's and log_softmax's fp32 gradients (4 + 4) while that one is held: 12."""
    from train.model.transformer import cross_entropy_loss

    tokens, vocab, d = 8, 1000, 16
    hidden = torch.randn(1, tokens, d, requires_grad=True)
    weight = torch.randn(vocab, d, requires_grad=True)
    saved: dict[int, torch.Tensor] = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = hidden @ weight.t()
        loss = cross_entropy_loss(logits, torch.randint(0, vocab, (1, tokens)))
    wide = [t for t in saved.values() if t.numel() == tokens * vocab]
    assert [(t.dtype, t.element_size()) for t in wide] == [(torch.float32, 4)]
    assert logits.dtype == torch.bfloat16  # the logits and their fp32 copy: not saved
    # Backward's first two nodes (NllLossBackward, LogSoftmaxBackward) each make an fp32
    # gradient the size of the log-softmax: 4 saved + 4 + 4.
    nll = loss.grad_fn
    assert "NllLoss" in nll.name() and "LogSoftmax" in nll.next_functions[0][0].name()
    assert memory.LOSS_BACKWARD_PEAK_PER_VOCAB == 4 + 4 + 4


def test_the_model_needs_no_torch():
    """Nor does rendering: the projection's and the report's outputs, and the modules that
    measure import torch only when they measure."""
    code = (
        "import sys; import launch.perfmodel.projection, launch.perfmodel.choose, "
        "launch.perfmodel.calibrate, launch.project, launch.report.cli, launch.training, "
        "launch.mamf; assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
