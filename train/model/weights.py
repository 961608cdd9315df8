"""Weight initialisation that gives the same weights whatever the layout.

Every parameter is drawn whole, on the rank's device, from a generator on that device seeded
by (seed, its name in train/model/transformer.py), and each rank keeps only its own shard of
it. So one rank, DDP, FSDP2, tensor parallelism and ZeRO-3 start from identical weights, and
a model built on the meta device (sharded before any memory is spent on it) never holds more
than one full parameter at a time on a rank: llama_70b's fp32 weights (~276 GB) are never
built whole. Drawing on a GPU rather than the host: one CPU thread draws ~120 M values/s,
about a minute per rank for llama_7b and ten for llama_70b, with eight ranks of a node
competing for the cores.

The same (seed, name) gives the same values on devices of one kind. A CPU run and a CUDA run
draw different values (different generators), and so may two GPU models: torch's CUDA
sampler lays elements out over a grid sized by the SM count.

Values (GPT-2 init): N(0, 0.02) everywhere, residual projections (wo, w2) N(0, 0.02/sqrt(2L)),
norm weights ones; the rope tables are recomputed. A tied output head shares the embedding.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import defaultdict

import torch
from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor

from train.model.rope import rope_tables
from train.spec.config import ModelConfig
from train.spec.shapes import head_dim

STD = 0.02
# Wrapper modules that add a level to parameter names: activation checkpointing
# (train/parallel/activation_checkpoint.py), torch.compile, torch's own checkpoint wrapper.
_WRAPPER_LEVELS = re.compile(r"(^|\.)(block|_orig_mod|_checkpoint_wrapped_module)\.")


def canonical_name(name: str) -> str:
    """The parameter's name in a bare Transformer (train/model/transformer.py), wrapper levels
    removed."""
    while True:
        stripped = _WRAPPER_LEVELS.sub(r"\1", name)
        if stripped == name:
            return name
        name = stripped


def parameter_seed(seed: int, name: str) -> int:
    """A seed for one parameter: stable across processes and Python versions (no hash())."""
    digest = hashlib.sha256(f"{seed}:{canonical_name(name)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def full_parameter(
    name: str,
    shape: torch.Size,
    cfg: ModelConfig,
    seed: int,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """The whole initial value of parameter ``name`` (float32), drawn on ``device``."""
    canonical = canonical_name(name)
    if canonical.endswith("norm.weight"):
        return torch.ones(shape, device=device)
    if not canonical.endswith(".weight"):
        raise ValueError(f"no initialisation rule for parameter {name!r}")
    # Each block adds two residual branches; scaling their output projections keeps the
    # residual stream's variance from growing with depth.
    residual = canonical.endswith((".wo.weight", ".w2.weight"))
    std = STD / math.sqrt(2 * cfg.n_layers) if residual else STD
    generator = torch.Generator(device=device).manual_seed(parameter_seed(seed, name))
    return torch.empty(shape, device=device).normal_(0.0, std, generator=generator)


@torch.no_grad()
def init_weights(
    model: nn.Module, cfg: ModelConfig, seed: int, device: torch.device | None = None
) -> None:
    """Fill every parameter of ``model`` (a Transformer, possibly TP/FSDP/ZeRO-3 sharded, on
    any device) with its initial value, one full parameter at a time, each drawn on ``device``
    (default: where the parameters are); rebuild the rope tables in float32.

    Meta parameters are left alone (nothing to fill yet: see ``materialize``).
    """
    device = device or _parameters_device(model)
    for name, param in model.named_parameters():
        if param.is_meta:
            continue
        full = full_parameter(name, _global_shape(param), cfg, seed, device)
        _copy_into(param, full)
        del full  # before the next one is drawn: at most one whole parameter at a time
    for module in model.modules():
        if hasattr(module, "rope_cos") and not module.rope_cos.is_meta:
            _set_rope_tables(module, cfg)
        if hasattr(module, "expert_bias") and not module.expert_bias.is_meta:
            module.expert_bias.zero_()  # DeepSeek-V3's routing bias starts at 0 (moe.py)


def _set_rope_tables(module: nn.Module, cfg: ModelConfig) -> None:
    """Registered anew rather than copied into: a buffer made under deepspeed.zero.Init is
    bf16 (it patches torch.arange and casts what it makes to the engine's dtype), and a copy
    into it would round the angles' cos and sin to 8 bits, so ZeRO-3's losses would drift
    from every other layout's at ~1e-3."""
    cos, sin = rope_tables(head_dim(cfg), cfg.max_seq_len, cfg.rope_theta)
    device = module.rope_cos.device
    module.register_buffer("rope_cos", cos.to(device), persistent=False)
    module.register_buffer("rope_sin", sin.to(device), persistent=False)


def _parameters_device(model: nn.Module) -> torch.device:
    for param in model.parameters():
        if not param.is_meta and not hasattr(param, "ds_id"):
            return param.device
    return torch.device("cpu")


def materialize(model: nn.Module, cfg: ModelConfig, seed: int, device: torch.device) -> None:
    """Give a model built on the meta device (and already TP/FSDP-sharded there) real storage
    on ``device``, each rank only its shards, and initialise it (``init_weights``).

    ``to_empty`` unties shared parameters (each module gets its own new tensor); they are
    tied again first, so a tied head is drawn once, as the embedding.
    """
    shared = _shared_parameters(model)
    model.to_empty(device=device)
    for owners in shared:
        first_module, first_name = owners[0]
        for module, attr in owners[1:]:
            setattr(module, attr, getattr(first_module, first_name))
    init_weights(model, cfg, seed, device)


def _shared_parameters(model: nn.Module) -> list[list[tuple[nn.Module, str]]]:
    owners: dict[int, list[tuple[nn.Module, str]]] = defaultdict(list)
    for module in model.modules():
        for attr, param in module._parameters.items():
            if param is not None:
                owners[id(param)].append((module, attr))
    return [group for group in owners.values() if len(group) > 1]


def _global_shape(param: torch.Tensor) -> torch.Size:
    if hasattr(param, "ds_shape"):  # a DeepSpeed ZeRO-3 partition
        return param.ds_shape
    return param.shape  # a DTensor's shape is the global one


def _copy_into(param: torch.Tensor, full: torch.Tensor) -> None:
    """Write this rank's part of ``full`` into ``param``."""
    if hasattr(param, "ds_id"):
        import deepspeed  # only a ZeRO-3 run holds such parameters

        # Gathered whole for the moment; rank 0's values are re-partitioned on exit. Every
        # rank computed the same ``full``, so which rank writes does not matter.
        with deepspeed.zero.GatheredParameters([param], modifier_rank=0):
            param.data.copy_(full)
        return
    if isinstance(param, DTensor):
        # src_data_rank=None: each rank cuts its own shard from its own copy of ``full``,
        # no communication; this handles FSDP2's _StridedShard under TP as well.
        shard = distribute_tensor(full, param.device_mesh, param.placements, src_data_rank=None)
        param.to_local().copy_(shard.to_local())
        return
    param.copy_(full)
