"""The performance model reads the project's own numbers: shapes and FLOPs from train/spec/
(which the built model matches), collective groups on the mesh, held memory with
train/measure/held_memory.py's semantics; and it needs no torch."""

from __future__ import annotations

import subprocess
import sys
import weakref

import pytest
import torch
from omegaconf import OmegaConf
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from launch.perfmodel import compute, memory
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


class _LiveBytes(TorchDispatchMode):
    """Bytes of the storages that ops create under this mode and that are still referenced,
    and their peak (storages of at least ``min_bytes``; a storage leaves when the last tensor
    on it does, through weakref finalizers: views share their base's storage)."""

    def __init__(self, min_bytes: int):
        super().__init__()
        self.min_bytes, self.now, self.peak = min_bytes, 0, 0
        self.tensors: dict[int, int] = {}  # storage address -> live tensors on it

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.untyped_storage().nbytes() >= self.min_bytes:
                storage = t.untyped_storage()
                key = storage.data_ptr()
                if key not in self.tensors:
                    self.tensors[key] = 0
                    self.now += storage.nbytes()
                    self.peak = max(self.peak, self.now)
                self.tensors[key] += 1
                weakref.finalize(t, self._release, key, storage.nbytes())
        return out

    def _release(self, key: int, size: int) -> None:
        self.tensors[key] -= 1
        if not self.tensors[key]:
            del self.tensors[key]
            self.now -= size


def test_the_losss_peak_is_its_saved_log_softmax_and_two_fp32_gradients():
    """memory.LOSS_BACKWARD_PEAK_PER_VOCAB, measured on torch itself: the runtime's loss
    (train/model/transformer.py cross_entropy_loss) over bf16 logits keeps one
    vocabulary-wide tensor for backward, the fp32 log-softmax (4 bytes per entry; the logits
    and their fp32 copy are gone once the forward returns), and its backward peaks at 12 bytes
    per entry (that, and nll_loss's and log_softmax's fp32 gradients) while the saved
    activations of every block are still held. Under TP the model counts DTensor's
    loss_parallel backward from its code: 16."""
    from train.model.transformer import cross_entropy_loss

    tokens, vocab, d = 64, 4096, 16
    hidden = torch.randn(1, tokens, d, requires_grad=True)
    weight = torch.randn(vocab, d, requires_grad=True)
    targets = torch.randint(0, vocab, (1, tokens))
    live = _LiveBytes(min_bytes=tokens * vocab)  # vocabulary-wide tensors only

    def forward():  # the logits die with this frame, as in Transformer.forward
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = hidden @ weight.t()
        return cross_entropy_loss(logits, targets)

    with live:
        loss = forward()
        assert live.now == 4 * tokens * vocab  # the saved fp32 log-softmax, nothing else
        live.peak = live.now
        loss.backward()
    assert live.peak == memory.LOSS_BACKWARD_PEAK_PER_VOCAB * tokens * vocab == 12 * tokens * vocab
    m = model("llama_7b")
    one = LayoutPlan("ddp", Degrees(1, 1, 1), False, [])
    tp = LayoutPlan("tp", Degrees(1, 1, 4), False, [])

    def head(plan):  # the final norm and the loss of one token
        given = (m, plan, 1, 1, "bf16")
        return memory.activation_bytes(*given) - memory.activation_bytes(*given, head=False)

    norm = (4 + 2) * m.d_model  # fp32 residual in, 16-bit out (no sequence parallelism)
    assert head(one) == norm + 12 * m.vocab_size
    assert head(tp) == norm + 16 * m.vocab_size // 4


def test_the_model_needs_no_torch():
    """Nor does rendering: the projection's and the report's outputs, and the modules that
    measure import torch only when they measure."""
    code = (
        "import sys; import launch.perfmodel.projection, launch.perfmodel.choose, "
        "launch.perfmodel.calibrate, launch.project, launch.report.cli, launch.training, "
        "launch.mamf; assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


class _WeightCasts(TorchDispatchMode):
    """aten._to_copy calls on tensors of one shape: a weight's cast, or its gradient's."""

    def __init__(self, shape: tuple[int, ...]):
        super().__init__()
        self.shape, self.calls = shape, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._to_copy.default and tuple(args[0].shape) == self.shape:
            self.calls += 1
        return func(*args, **(kwargs or {}))


def test_a_pipeline_casts_its_weights_once_per_step_and_their_gradients_per_microbatch():
    """compute.WEIGHT_CAST_BYTES per context: the runtime's loop enters autocast per micro-step
    (train/runtime/rank_step.py), a pipeline's schedule runs every microbatch in one context
    (train/parallel/pipeline_stages.py), where torch caches a leaf weight's cast; each
    backward still turns the 16-bit gradient into the fp32 .grad."""
    linear, x, microbatches = torch.nn.Linear(32, 32), torch.randn(4, 32), 3
    with _WeightCasts((32, 32)) as per_context:
        for _ in range(microbatches):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                y = linear(x)
            y.float().sum().backward()
    with _WeightCasts((32, 32)) as one_context:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            for _ in range(microbatches):
                linear(x).float().sum().backward()
    assert per_context.calls == 2 * microbatches  # a cast and a gradient's each time
    assert one_context.calls == 1 + microbatches  # one cast, a gradient's each time

    m = model("llama_7b")
    params = shapes.count_params(m)

    def weights(name: str, accum: int) -> float:
        plan = LayoutPlan(name, Degrees(1, 1, 1), False, [])
        given = dict(tokens=0, accum=accum, precision="bf16", optimizer_split=1, head=False)
        return compute.memory_bound_bytes(m, plan, **given) - 32 * params  # less AdamW

    assert weights("ddp", 4) == (6 + 12) * 4 * params
    assert weights("pp", 4) == (6 + 12 * 4) * params


def test_fsdp2_groups_follow_the_meshes_expert_parallel_puts_units_on():
    """train/parallel/expert_parallel.py fsdp_meshes: under ep the dense units sit on a
    shard dim of 1 (torch's world-size-1 path) replicated over the EP ranks; under ep_fsdp
    they are sharded over dp_shard x ep; the routed experts over dp_shard either way."""
    m = model("olmoe_1b_7b")
    experts = shapes.numel(shapes.expert_param_shapes(m, 8)) * len(shapes.moe_layers(m))
    local = shapes.numel(shapes.all_param_shapes(m, 1, 8))

    def groups(name: str, degrees: Degrees) -> list[tuple]:
        plan = LayoutPlan(name, degrees, False, [])
        found = compute.fsdp2_groups(m, plan, local)
        return [
            (g.params, g.gather_world, g.replicated, g.holds_root, g.custom_divide) for g in found
        ]

    assert groups("ep", Degrees(1, 1, 1, ep=8)) == [
        (local - experts, 1, True, True, False),
        (experts, 1, False, False, True),  # divided by every data-parallel rank
    ]
    assert groups("ep_fsdp", Degrees(2, 2, 1, ep=8)) == [
        (local - experts, 16, True, True, False),
        (experts, 2, True, False, True),
    ]
    assert groups("fsdp", Degrees(1, 8, 1)) == [(local, 8, False, True, False)]
    # One rank gathers nothing: no flat output to copy out of.
    one = compute.fsdp2_bytes_per_param(
        accum=1, precision="bf16", shard_split=1, reduce_each=True, gather_world=1
    )
    eight = compute.fsdp2_bytes_per_param(
        accum=1, precision="bf16", shard_split=1, reduce_each=True, gather_world=8
    )
    assert (one.copy_out, eight.copy_out) == (0, 4)
    assert (one.reduce_copy, eight.reduce_copy) == (2 * 4, 0)  # fp32 reduce: read 4, write 4


def test_ep_fsdp_steps_its_dense_shard_of_dp_shard_x_ep_and_its_experts_of_dp_shard():
    """compute.layout_optimizer_split under ep_fsdp: what a rank steps is its dense shard
    (over dp_shard x ep) and its experts' shard (over dp_shard), as its held memory
    (traffic.fsdp_units) holds them; until 2026-12-01 the whole split was dp_shard's."""
    m = model("olmoe_1b_7b")
    plan = LayoutPlan("ep_fsdp", Degrees(1, 2, 1, ep=8), False, [])
    local = shapes.numel(shapes.all_param_shapes(m, 1, 8))
    experts = shapes.numel(shapes.expert_param_shapes(m, 8)) * len(shapes.moe_layers(m))
    stepped = local / compute.layout_optimizer_split(plan, m)
    assert stepped == pytest.approx((local - experts) / 16 + experts / 2)
    assert compute.layout_optimizer_split(LayoutPlan("fsdp", Degrees(1, 8, 1), False, []), m) == 8


def test_fsdp_reducing_once_under_tp_keeps_the_embeddings_gradient_whole():
    """memory.estimate_memory(unsharded_grads=True) under tp_fsdp: FSDP2 keeps each unsharded
    gradient in the reduce dtype until the step's last micro-step, the embedding's whole
    (DTensor's embedding backward leaves it Replicate; a review's 2-rank probe, 2026-12-01)."""
    from launch.perfmodel.memory import estimate_memory

    m = model("llama_7b")
    plan = LayoutPlan("tp_fsdp", Degrees(1, 4, 2), True, [])

    def transient(unsharded: bool) -> int:
        return estimate_memory(
            m, plan, micro_batch=1, seq_len=4096, precision="bf16", hbm_bytes=None,
            unsharded_grads=unsharded, reduce_width=4,
        ).transient_bytes  # fmt: skip

    tp_rank = shapes.numel(shapes.all_param_shapes(m, 2))
    other_half = m.vocab_size * m.d_model // 2
    assert transient(True) - transient(False) == (tp_rank + other_half) * 4


def test_fsdp_holds_one_units_reduce_scatter_input_in_the_reduce_dtype():
    """memory.reduce_scatter_buffer_bytes: FSDP2 layouts hold one block's reduce-scatter input
    in the reduce dtype beside its gradients (tests/integration/test_fsdp2_copies.py sees
    torch allocate it); replicated layouts none."""
    from launch.perfmodel.memory import estimate_memory, reduce_scatter_buffer_bytes

    m = model("llama_7b")
    block = shapes.numel(shapes.layer_param_shapes(m, 0, 1, 1))
    fsdp = LayoutPlan("fsdp", Degrees(1, 8, 1), False, [])
    for width in (4, 2):
        assert reduce_scatter_buffer_bytes(m, fsdp, width) == block * width
    assert reduce_scatter_buffer_bytes(m, LayoutPlan("ddp", Degrees(8, 1, 1), False, []), 4) == 0

    def transient(width):
        return estimate_memory(
            m, fsdp, micro_batch=1, seq_len=128, precision="bf16", hbm_bytes=80e9,
            reduce_width=width,
        ).transient_bytes  # fmt: skip

    assert transient(4) - transient(2) == block * 2
    # One comm context for the whole model, one input alive at a time: a MoE block's dense
    # unit and its experts unit never hold theirs together (the largest unit's is counted).
    moe = model("olmoe_1b_7b")
    ep = LayoutPlan("ep_fsdp", Degrees(1, 2, 1, ep=8), False, [])
    units = [u.elements for u in memory.fsdp_units(moe, ep) if u.kind in ("block", "experts")]
    assert reduce_scatter_buffer_bytes(moe, ep, 4) == max(units) * 4


def test_a_one_rank_expert_shard_holds_the_divided_copy_of_its_gradients():
    """memory.divide_copy_bytes: where the routed experts' shard dim has one rank (ep; ep_fsdp
    at dp_shard 1), FSDP2 divides their reduce-dtype gradients into a new tensor (the one-rank
    probe of tests/integration/test_fsdp2_copies.py counts it); with more ranks it divides in
    place."""
    from launch.perfmodel.memory import divide_copy_bytes

    m = model("olmoe_1b_7b")
    unit = shapes.numel(shapes.expert_param_shapes(m, 8))  # one MoE block's, on one EP rank
    for name, degrees, expected in (
        ("ep", Degrees(1, 1, 1, ep=8), unit * 4),
        ("ep_fsdp", Degrees(1, 1, 1, ep=8), unit * 4),
        ("ep_fsdp", Degrees(1, 2, 1, ep=8), 0),
        ("fsdp", Degrees(1, 8, 1), 0),
    ):
        assert divide_copy_bytes(m, LayoutPlan(name, degrees, False, []), 4) == expected, name


def test_fsdp2_weight_bytes_sum_the_groups_per_gather_and_per_reduction():
    """compute._fsdp2_weight_bytes by hand, bf16 with an fp32 reduce, one micro-step: per
    gather the shard's cast (4 + 2) and copy-in (2 + 2) per shard element and, across ranks,
    the copy-out (2 + 2) per element; blocks gathered twice, the root once; per parameter the
    GEMM's gradient (2), chunk_cat (2 + 4), and at one rank the reduction's copy (4 + 4)."""
    m = model("olmoe_1b_7b")
    root = shapes.numel(shapes.root_param_shapes(m))

    def weights(name: str, degrees: Degrees, split: int) -> float:
        plan = LayoutPlan(name, degrees, False, [])
        local = shapes.numel(shapes.all_param_shapes(m, 1, degrees.ep))
        given = dict(accum=1, precision="bf16", shard_split=split, per_step_split=1)
        given.update(reduce_each=True, reduce_width=4)
        return compute._fsdp2_weight_bytes(m, plan, local, **given)

    whole = shapes.numel(shapes.all_param_shapes(m))
    gathers = 2 * (whole - root) + root
    assert weights("fsdp", Degrees(1, 1, 1), 1) == 10 * gathers + (8 + 8) * whole
    assert weights("fsdp", Degrees(1, 2, 1), 2) == (4 + 10 / 2) * gathers + 8 * whole
    # ep 8: the dense units (root included) and the routed experts each at one rank; the
    # experts' copy divides out of place first (8 more), the dense ones' partial results
    # stay in fp32 (HSDP's path: nothing added at one micro-step).
    local = shapes.numel(shapes.all_param_shapes(m, 1, 8))
    experts = shapes.numel(shapes.expert_param_shapes(m, 8)) * len(shapes.moe_layers(m))
    dense = local - experts
    expected = 10 * (2 * (dense - root) + root) + 16 * dense + 10 * 2 * experts + 24 * experts
    assert weights("ep", Degrees(1, 1, 1, ep=8), 1) == expected
