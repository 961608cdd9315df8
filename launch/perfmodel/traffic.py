"""Which collectives a layout issues per optimizer step, how big, in which group, and when.

The same counts as train/spec/traffic.py (a unit test holds the per-kind sums equal to
comm_bytes_per_step), itemised so each call can be timed on the links its group crosses and
placed where it runs: behind backward (DDP buckets, FSDP units), ahead of the next unit
(FSDP prefetch), or on the critical path (TP activations, DeepSpeed stage 1/2 reductions,
which run with overlap_comm off, DeepSpeed's default for those stages).

Groups follow train/parallel/mesh.py: the mesh is (dp_replicate, dp_shard, tp), rank-major,
TP innermost, and nodes hold consecutive ranks.
"""

from __future__ import annotations

from dataclasses import dataclass

from launch.perfmodel import shapes
from launch.perfmodel.collectives import group_geometry
from train.spec.config import ModelConfig
from train.spec.degrees import ZERO3_MAX_REUSE_DISTANCE, ZERO_STAGES, LayoutPlan

# Where a transfer runs, which decides what hides it (overlap.py).
BUCKETED_BACKWARD = "bucketed_backward"  # DDP: buckets all-reduced while backward runs
UNIT_FORWARD = "unit_forward"  # FSDP/ZeRO-3 gathers, prefetched one unit ahead in forward
UNIT_BACKWARD = "unit_backward"  # the same in backward, with the units' gradient reductions
UNIT_BACKWARD_LAST = "unit_backward_last"  # gradient reductions: last micro-step only
EXPOSED = "exposed"  # on the critical path


@dataclass(frozen=True)
class Transfer:
    kind: str  # all_reduce | all_gather | reduce_scatter
    role: str  # what it moves, for the report: gradients, parameters, activations, norm
    nbytes: int  # nccl-tests size of one call
    calls: int  # per optimizer step
    ranks: int
    per_node: int  # ranks of the group in one node
    phase: str

    @property
    def total_bytes(self) -> int:
        return self.nbytes * self.calls


GRAD_NORM_BYTES = 4  # the global gradient norm's float32 scalar (train/spec/traffic.py)
GRADIENT_BYTES = 4  # torch layouts keep fp32 parameters, so fp32 gradients
FSDP_LAYOUTS = ("fsdp", "hsdp", "tp_fsdp")


def layout_transfers(
    m: ModelConfig,
    plan: LayoutPlan,
    *,
    micro_batch: int,
    seq_len: int,
    accum_steps: int,
    grad_clip: bool,
    precision: str,
    nproc_per_node: int,
    fsdp_reduce_dtype: str = "fp32",
) -> list[Transfer]:
    """The widths follow train/spec/traffic.py: DDP reduces fp32 gradients; FSDP2 gathers in
    the compute dtype and reduces in ``fsdp_reduce_dtype``; DeepSpeed moves 16 bits under
    bf16/fp16; TP's activations by what they carry (see tp_widths). Not modelled: torchao's
    float8 all-gather (fp8 with FSDP), which comm_volume counts when it is on."""
    sixteen = precision in ("bf16", "fp16", "fp8")
    d = plan.degrees
    g = nproc_per_node
    tp_node = group_geometry(d.tp, 1, g)
    shard_node = group_geometry(d.dp_shard, d.tp, g)
    replica_node = group_geometry(d.dp_replicate, d.dp_shard * d.tp, g)
    world_node = min(d.world, g)
    fsdp = plan.name in FSDP_LAYOUTS
    out: list[Transfer] = []

    if plan.name in ZERO_STAGES:
        width = 2 if sixteen else 4
        return _zero(m, ZERO_STAGES[plan.name], d.dp_shard, shard_node, accum_steps, width)
    if d.tp > 1:
        widths = tp_widths(sixteen, fsdp_16bit_params=fsdp and sixteen)
        out += _tensor_parallel(
            m, plan, micro_batch * seq_len * m.d_model, widths, accum_steps, d.tp, tp_node
        )
    if fsdp:
        gather = 2 if sixteen else 4
        reduce = 2 if sixteen and fsdp_reduce_dtype == "bf16" else 4
        out += _fsdp(
            m,
            d.dp_replicate,
            d.dp_shard,
            d.tp,
            accum_steps,
            (gather, reduce),
            shard_node,
            replica_node,
        )
    elif d.dp_replicate > 1:
        size = shapes.count_params(m) * GRADIENT_BYTES
        out.append(
            Transfer(
                "all_reduce", "gradients", size, 1, d.dp_replicate, replica_node, BUCKETED_BACKWARD
            )
        )
    if grad_clip and (d.dp_shard > 1 or d.tp > 1):
        out.append(
            Transfer("all_reduce", "grad norm", GRAD_NORM_BYTES, 1, d.world, world_node, EXPOSED)
        )
    return out


def tp_widths(sixteen: bool, *, fsdp_16bit_params: bool) -> tuple[int, int, int]:
    """(matmul output, norm output, residual stream) bytes per element of TP's activation
    collectives (train/spec/traffic.py _tp_widths): fp32 everywhere in fp32 runs; under autocast
    with fp32 parameters only the matmul outputs are 16-bit; under FSDP2's 16-bit parameters
    (tp_fsdp) everything is."""
    if not sixteen:
        return 4, 4, 4
    if fsdp_16bit_params:
        return 2, 2, 2
    return 2, 4, 4


def _tensor_parallel(m, plan, elements, widths, accum, tp, per_node) -> list[Transfer]:
    matmul_out, norm_out, stream = widths
    forwards = 2 * m.n_layers + len(plan.checkpointed)
    backwards = 2 * m.n_layers

    def transfer(kind: str, width: int, calls: int) -> Transfer:
        return Transfer(kind, "activations", elements * width, calls, tp, per_node, EXPOSED)

    if not plan.sequence_parallel:
        return [
            transfer("all_reduce", matmul_out, forwards * accum),
            transfer("all_reduce", norm_out, backwards * accum),
        ]
    # With SP a checkpointed block's replay runs both all-gathers (not one), as counted in
    # train/spec/traffic.py: the replay stops before the block's last collective only.
    sp_gathers = 2 * m.n_layers + 2 * len(plan.checkpointed)
    return [
        transfer("all_gather", norm_out, sp_gathers * accum),
        transfer("all_gather", matmul_out, backwards * accum),
        transfer("all_gather", stream, 2 * accum),
        transfer("reduce_scatter", matmul_out, forwards * accum),
        transfer("reduce_scatter", norm_out, backwards * accum),
        # The norm weights' partial gradients, once per step (fp32).
        Transfer(
            "all_reduce",
            "norm gradients",
            m.d_model * GRADIENT_BYTES,
            2 * m.n_layers,
            tp,
            per_node,
            EXPOSED,
        ),
    ]


def _fsdp(m, replicate, shard, tp, accum, widths, shard_node, replica_node) -> list[Transfer]:
    gather, reduce = widths
    block_numel = shapes.numel(shapes.block_param_shapes(m, tp), pad_to=shard)
    root_numel = shapes.numel(shapes.root_param_shapes(m), pad_to=shard)
    out = []
    if shard > 1:
        block, root = block_numel * gather, root_numel * gather
        # Each block is gathered for its forward and again for its backward.
        out += [
            Transfer("all_gather", "parameters", block, m.n_layers * accum, shard, shard_node, when)
            for when in (UNIT_FORWARD, UNIT_BACKWARD)
        ]
        out += [
            Transfer("all_gather", "parameters", root, accum, shard, shard_node, EXPOSED),
            Transfer(
                "reduce_scatter",
                "gradients",
                block_numel * reduce,
                m.n_layers,
                shard,
                shard_node,
                UNIT_BACKWARD_LAST,
            ),
            Transfer(
                "reduce_scatter", "gradients", root_numel * reduce, 1, shard, shard_node, EXPOSED
            ),
        ]
    if replicate > 1:
        # comm_volume counts the replicas' all-reduce as (L block + root) // shard elements.
        total = (m.n_layers * block_numel + root_numel) // shard * reduce
        per_block = block_numel // shard * reduce
        rest = total - per_block * m.n_layers
        out += [
            Transfer(
                "all_reduce",
                "gradients",
                per_block,
                m.n_layers,
                replicate,
                replica_node,
                UNIT_BACKWARD_LAST,
            ),
            Transfer("all_reduce", "gradients", rest, 1, replicate, replica_node, EXPOSED),
        ]
    return out


def _zero(m, stage, n, per_node, accum, width) -> list[Transfer]:
    if n == 1:
        return []
    numel = shapes.count_params(m)
    params = numel * width
    if stage in (1, 2):
        reduce_calls = accum if stage == 2 else 1
        return [
            Transfer("all_reduce", "gradients", params, reduce_calls, n, per_node, EXPOSED),
            Transfer("all_reduce", "grad norm", GRAD_NORM_BYTES, 1, n, per_node, EXPOSED),
            Transfer("all_gather", "parameters", params, 1, n, per_node, EXPOSED),
        ]
    gathers = 1 if numel <= ZERO3_MAX_REUSE_DISTANCE else 2
    block = shapes.numel(shapes.block_param_shapes(m)) * width
    rest = params - block * m.n_layers
    out = [
        Transfer("all_gather", "parameters", block, m.n_layers * accum, n, per_node, UNIT_FORWARD),
        Transfer("all_gather", "parameters", rest, gathers * accum, n, per_node, EXPOSED),
        Transfer(
            "reduce_scatter", "gradients", block, m.n_layers * accum, n, per_node, UNIT_BACKWARD
        ),
        Transfer("reduce_scatter", "gradients", rest, accum, n, per_node, EXPOSED),
        Transfer("all_reduce", "grad norm", 2 * GRAD_NORM_BYTES, 1, n, per_node, EXPOSED),
    ]
    if gathers == 2:
        out.append(
            Transfer(
                "all_gather", "parameters", block, m.n_layers * accum, n, per_node, UNIT_BACKWARD
            )
        )
    return out


def bytes_per_kind(transfers: list[Transfer]) -> dict[str, int]:
    # send_recv: pipeline point-to-point (train/spec/traffic.py); no layout here has any yet.
    out = {"all_reduce": 0, "all_gather": 0, "reduce_scatter": 0, "send_recv": 0}
    for t in transfers:
        out[t.kind] += t.total_bytes
    return out
