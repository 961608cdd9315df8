"""Expert parallelism (parallel=ep, ep_fsdp): each MoE block's experts split over the ep ranks,
every token sent to the ranks holding its experts and the results back, as torchtitan's
ExpertParallel does.

The ep ranks are data-parallel ranks too (each trains its own rows); EP is the innermost
data-parallel mesh dim (train/spec/degrees.py MESH_DIMS), so an EP group is one node's
consecutive ranks unless parallel.ep asks for more. Around each block's ``experts``
(train/model/moe.py), which take their rows sorted by expert:

- dispatch: the rows' counts per expert are exchanged first (an all-to-all of n_experts
  int64: each rank learns how many rows every other rank sends each of its experts, the
  uneven splits), then the rows themselves (all_to_all_single with those splits), then they
  are regrouped by local expert;
- combine: the experts' outputs go back the same way, to the rank and position they came
  from. Both all-to-alls carry their gradients back in backward (the autograd all-to-all).

Parameters: each routed-expert weight is a DTensor sharded over ep (dim 0: experts); FSDP2
then shards it over dp_shard (ep_fsdp: on dim 0, or on dim 1 where an EP rank holds fewer
experts than there are shards, as torchtitan does) and replicates it over dp_replicate. The
rest of the model is FSDP2's: under ep_fsdp sharded over dp_shard x ep (torchtitan's dense
sharding over the EP ranks too), under ep replicated over every data-parallel rank (an FSDP2
mesh whose shard dim is one rank: gradients all-reduced; torch copies each parameter into
its unsharded tensor at every use, with no collective). The experts' gradients are divided
by every data-parallel rank, since each already sums what every EP rank's tokens sent it.
The collectives are
itemised in train/spec/traffic.py (``expert_all_to_all``, ``fsdp_units``).
"""

from __future__ import annotations

import torch
import torch.distributed._functional_collectives as funcol
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import Shard, distribute_module, distribute_tensor
from torch.distributed.tensor.parallel import ParallelStyle, parallelize_module

from train.model.moe import ExpertWeights, moe_blocks
from train.spec.config import ModelConfig
from train.spec.degrees import LayoutPlan
from train.spec.shapes import expert_shard_dim


class ExpertParallel(ParallelStyle):
    """The style of one block's ``experts``: weights sharded over the EP mesh, rows sent to
    their experts' ranks before it runs and back after. One instance per block: it holds the
    step's splits between its dispatch and its combine."""

    def __init__(self):
        super().__init__()
        self._route: tuple[torch.Tensor, list[int], list[int]] | None = None

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        return distribute_module(
            module, device_mesh, _shard_experts, input_fn=self._dispatch, output_fn=self._combine
        )

    def _dispatch(self, module, inputs, mesh: DeviceMesh):
        rows, counts = inputs
        group = mesh.get_group()
        ep, local = mesh.size(), counts.numel() // mesh.size()
        # [source rank, local expert]: the rows each rank sends each of this rank's experts.
        per_source = funcol.all_to_all_single(counts, None, None, group).view(ep, local)
        sent = counts.view(ep, local).sum(1).tolist()
        received = per_source.sum(1).tolist()
        rows = funcol.all_to_all_single_autograd(rows, received, sent, group)
        order = expert_major_order(per_source)
        self._route = (order, sent, received)
        return rows[order], per_source.sum(0)

    def _combine(self, module, outputs, mesh: DeviceMesh):
        order, sent, received = self._route
        self._route = None
        back = outputs[order.argsort()]  # source-major again, as the rows arrived
        return funcol.all_to_all_single_autograd(back, sent, received, mesh.get_group())


def _shard_experts(name: str, module: nn.Module, mesh: DeviceMesh) -> None:
    if isinstance(module, ExpertWeights):
        sharded = distribute_tensor(module.weight, mesh, [Shard(0)])
        module.register_parameter("weight", nn.Parameter(sharded))


def expert_major_order(per_source: torch.Tensor) -> torch.Tensor:
    """The permutation taking received rows from source-major order (source s's rows for
    expert 0, 1, ... as all_to_all delivers them) to expert-major (expert j's rows from source
    0, 1, ...), so each local expert's rows are consecutive."""
    ep, local = per_source.shape
    device = per_source.device
    expert = torch.arange(local, device=device).repeat(ep)
    source = torch.arange(ep, device=device).repeat_interleave(local)
    keys = (expert * ep + source).repeat_interleave(per_source.flatten())
    return keys.argsort(stable=True)


def apply_expert_parallel(model: nn.Module, ep_mesh: DeviceMesh) -> None:
    """Split every MoE block's experts over ``ep_mesh`` (in place, on the meta device)."""
    for moe in moe_blocks(model):
        parallelize_module(moe.experts, ep_mesh, ExpertParallel())


def fsdp_meshes(mesh: DeviceMesh, layout: LayoutPlan) -> tuple[DeviceMesh, DeviceMesh]:
    """(the dense parameters' FSDP2 mesh, the routed experts'): ep_fsdp shards the dense ones
    over dp_shard x ep, ep replicates them over dp_replicate x ep (a shard dim of 1); experts
    are sharded over dp_shard and replicated over dp_replicate (train/spec/traffic.py
    fsdp_units)."""
    degrees = layout.degrees
    experts = mesh["dp_replicate", "dp_shard"] if degrees.dp_replicate > 1 else mesh["dp_shard"]
    if layout.row.shards_parameters:
        flat = mesh["dp_shard", "ep"]._flatten("dp_shard_ep")
        if degrees.dp_replicate > 1:
            return _joined(mesh, ("dp_replicate", flat), "dp_shard_ep"), experts
        return flat, experts
    flat = mesh["dp_replicate", "ep"]._flatten("dp_replicate_ep")
    return _joined(mesh, (flat, "dp_shard"), "dp_replicate_ep"), experts


def _joined(mesh: DeviceMesh, dims: tuple, flat_name: str) -> DeviceMesh:
    """A 2-D mesh of one of ``mesh``'s dims (a name) and a flattened mesh of two others, in
    the order given. torch 2.13 warns that slicing a flattened dim out of the root mesh
    (``mesh["dp_replicate", "dp_shard_ep"]``) goes away and that the flattened mesh is to be
    kept instead: it is joined with DeviceMesh._concatenate, which torch has where it warns.
    Before that, the slice (torch's way then)."""
    concatenate = getattr(DeviceMesh, "_concatenate", None)
    if concatenate is None:
        return mesh[tuple(flat_name if isinstance(d, DeviceMesh) else d for d in dims)]
    return concatenate([d if isinstance(d, DeviceMesh) else mesh[d] for d in dims])


def apply_expert_fsdp(
    model: nn.Module,
    mesh: DeviceMesh,
    layout: LayoutPlan,
    policy: MixedPrecisionPolicy,
    model_cfg: ModelConfig,
) -> None:
    """FSDP2 units as torchtitan makes them under EP: each MoE block's experts a unit of
    their own (on the experts' mesh), then each block, then the root (the dense mesh). The
    experts are sharded on dim 1 where there are fewer local experts than shards
    (train/spec/shapes.py expert_shard_dim)."""
    dense, experts = fsdp_meshes(mesh, layout)
    d = layout.degrees
    dim = expert_shard_dim(model_cfg, d.ep, d.dp_shard)
    placement = None if dim == 0 else (lambda _param: Shard(dim))
    for block in model.layers:
        for moe in moe_blocks(block):
            fully_shard(moe.experts, mesh=experts, mp_policy=policy, shard_placement_fn=placement)
            # An expert's gradient already sums what every EP rank's tokens sent it (the
            # all-to-all's backward): averaging over the experts' mesh alone left it ep times
            # a one-rank run's. Divide by every data-parallel rank, as the dense units are
            # (torchtitan sets the same factor).
            if not hasattr(moe.experts, "set_gradient_divide_factor"):
                raise RuntimeError(
                    f"parallel={layout.row.name}: this torch ({torch.__version__}) has no "
                    "FSDPModule.set_gradient_divide_factor, which the experts' gradients need "
                    "(checked on torch 2.13)"
                )
            moe.experts.set_gradient_divide_factor(d.dp)
            if d.dp_shard > 1:
                # A custom factor makes the reduce-scatter a PREMUL_SUM, which gloo lacks and
                # NCCL got wrong in bf16 for powers of two (pytorch#190745): sum, then divide
                # the shard. (A one-rank shard dim runs no reduce-scatter; it divides as it
                # copies, and forcing the sum would divide a second time.)
                moe.experts.set_force_sum_reduction_for_comms(True)
        fully_shard(block, mesh=dense, mp_policy=policy)
    fully_shard(model, mesh=dense, mp_policy=policy)


def grouped_mm_for(setting: bool | None, device: torch.device) -> bool:
    """train.grouped_mm: as set, or (null) on CUDA devices of compute capability 9.0 and up,
    where torch._grouped_mm has its Hopper kernel."""
    if setting is not None:
        return setting
    return (
        device.type == "cuda"
        and hasattr(torch, "_grouped_mm")
        and torch.cuda.get_device_capability(device) >= (9, 0)
    )


def configure_experts(model: nn.Module, *, grouped_mm: bool) -> None:
    for moe in moe_blocks(model):
        moe.experts.grouped_mm = grouped_mm
