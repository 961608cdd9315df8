"""The communication-volume model (train/spec/traffic.py) on its own, from the model shape.

That these numbers equal the bytes of the collectives counted during real 2-rank steps, per
kind, is checked on the layout runs of tests/test_parallel.py.
"""

from __future__ import annotations

from launch.perfmodel.memory import estimate_memory
from tests.conftest import TINY, model_config
from train.spec.degrees import Degrees, LayoutPlan
from train.spec.traffic import CommVolume, StepShape, comm_bytes_per_step

PARAMS = 1_311_872  # train.model.transformer.count_params(TINY)


def layout(name, dp_replicate=1, dp_shard=1, tp=1, sp=False, checkpointed=()):
    return LayoutPlan(name, Degrees(dp_replicate, dp_shard, tp), sp, list(checkpointed))


def test_ddp_all_reduces_every_gradient_once_per_step():
    volume = comm_bytes_per_step(TINY, layout("ddp", dp_replicate=8), StepShape(2, 64, 4, True))
    assert volume == CommVolume(all_reduce=4 * PARAMS)  # no grad-norm: nothing is sharded


def test_fsdp_gathers_blocks_twice_and_root_once_and_reduces_every_micro_step():
    volume = comm_bytes_per_step(TINY, layout("fsdp", dp_shard=2), StepShape(2, 64, 3, False))
    block = 196_864  # weights of one block
    root = PARAMS - 4 * block
    assert volume.all_gather == 4 * 3 * (2 * 4 * block + root)
    assert volume.reduce_scatter == 3 * 4 * PARAMS  # every micro-step (fsdp_accumulate)
    # Over 2 nodes of 2 ranks each shard is all-reduced across the replicas.
    hsdp = comm_bytes_per_step(TINY, layout("hsdp", 2, 2), StepShape(2, 64, 1, True))
    assert hsdp.all_reduce == 4 * PARAMS // 2 + 4


def test_fsdp_reduces_once_per_step_when_it_keeps_unsharded_gradients():
    """parallel.fsdp_reduce_every_micro_step=false: one reduce-scatter a step, a quarter of the
    traffic at 4 micro-steps, for the model's unsharded fp32 gradients held on every rank."""
    kept = StepShape(2, 64, 4, False, fsdp_reduce_each=False)
    each = StepShape(2, 64, 4, False)
    fsdp = layout("fsdp", dp_shard=2)
    assert comm_bytes_per_step(TINY, fsdp, kept).reduce_scatter == 4 * PARAMS
    assert comm_bytes_per_step(TINY, fsdp, each).reduce_scatter == 4 * 4 * PARAMS
    given = dict(micro_batch=2, seq_len=64, precision="bf16", hbm_bytes=None)
    held = [estimate_memory(TINY, fsdp, **given, unsharded_grads=u) for u in (True, False)]
    assert held[0].transient_bytes - held[1].transient_bytes == 4 * PARAMS


def test_shards_are_padded_like_fsdp2():
    odd = model_config(vocab_size=2049)
    volume = comm_bytes_per_step(odd, layout("fsdp", dp_shard=2), StepShape(1, 8, 1, False))
    # 2049 embedding and head rows become 2050 on each side of the all-gather.
    even = comm_bytes_per_step(TINY, layout("fsdp", dp_shard=2), StepShape(1, 8, 1, False))
    assert volume.reduce_scatter - even.reduce_scatter == 4 * 2 * 2 * 128


def test_tp_volume_scales_with_activations_not_parameters():
    small = comm_bytes_per_step(TINY, layout("tp", tp=2), StepShape(1, 64, 1, False))
    large = comm_bytes_per_step(TINY, layout("tp", tp=2), StepShape(4, 64, 1, False))
    act = 64 * 128 * 4  # one [1, 64, 128] fp32 activation
    loss = 3 * 64 * 4  # the vocab-parallel loss: 3 fp32 values per token
    # 4 all-reduces per block x 4 blocks, the embedding's (forward) and the head input's
    # gradient (backward): the vocabulary is split too.
    assert small.all_reduce == (4 * 4 + 2) * act + loss
    assert large.all_reduce == 4 * small.all_reduce
    # bf16 autocast halves the forward all-reduces of the blocks (matmul outputs); the
    # backward ones carry gradients of the fp32 norm outputs, and the embedding's output is
    # the fp32 stream: those stay fp32 (counted on 2 ranks in
    # tests/integration/test_meta_init_and_16bit_bytes.py).
    bf16 = comm_bytes_per_step(TINY, layout("tp", tp=2), StepShape(1, 64, 1, False, "bf16"))
    assert bf16 == CommVolume(all_reduce=8 * act // 2 + (8 + 2) * act + loss)


def test_zero_stages_as_deepspeed_runs_them():
    z1, z2, z3 = (
        comm_bytes_per_step(TINY, layout(f"zero{s}", dp_shard=4), StepShape(2, 64, 2, False))
        for s in (1, 2, 3)
    )
    grads = 4 * PARAMS
    assert z1 == CommVolume(all_reduce=grads + 4, all_gather=grads)  # reduced once per step
    assert z2 == CommVolume(all_reduce=2 * grads + 4, all_gather=grads)  # every micro-step
    assert z3 == CommVolume(all_reduce=8, all_gather=2 * grads, reduce_scatter=2 * grads)
    # DeepSpeed runs bf16 models in bf16: half the bytes.
    bf16 = comm_bytes_per_step(
        TINY, layout("zero1", dp_shard=4), StepShape(2, 64, 2, False, "bf16")
    )
    assert bf16.all_gather == z1.all_gather // 2
    # Beyond DeepSpeed's reuse distance ZeRO-3 gathers again for backward.
    big = model_config(n_layers=6000)  # 1.18e9 parameters
    z3_big = comm_bytes_per_step(big, layout("zero3", dp_shard=4), StepShape(2, 64, 1, False))
    assert z3_big.all_gather == 2 * z3_big.reduce_scatter
