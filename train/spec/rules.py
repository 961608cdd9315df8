"""Every rule a config must meet that its types cannot say, as one function of the config and
the world it runs in.

The driver calls ``check_run`` for each planned run before anything is written
(launch/validate.py adds what only the driver can see: files, hosts, installed libraries);
each rank calls it again on the config.yaml it was given, so a rank started by hand or by
another tool refuses the same inputs with the same one-line ConfigError.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from train.spec.catalog import Feature, layout
from train.spec.config import GpuConfig, ModelConfig, ParallelConfig, ProfileConfig, RunConfig
from train.spec.config_error import ConfigError
from train.spec.degrees import (
    BatchPlan,
    LayoutPlan,
    expert_group_nodes,
    plan_batch,
    plan_layout,
)
from train.spec.precision import FP8_GEMM_MULTIPLE, FP8_RECIPES, fp8_linear_count, fp8_refusal
from train.spec.shapes import is_moe, moe_layers


@dataclass(frozen=True)
class CheckedRun:
    """A config that passed every rule at this world size: its layout and batch split."""

    layout: LayoutPlan
    batch: BatchPlan


def check_run(cfg: RunConfig, world_size: int, nproc_per_node: int) -> CheckedRun:
    """ConfigError naming the key for the first rule ``cfg`` breaks at this world size."""
    check_gpu(cfg.gpu)
    check_model(cfg.model)
    check_train(cfg)
    check_parallel_settings(cfg.parallel)
    check_precision(cfg)
    refusal = layout_precision_refusal(cfg)
    if refusal:
        raise ConfigError("precision.name", f"{cfg.precision.name}: {refusal}")
    layout_plan = plan_layout(cfg, world_size, nproc_per_node)
    check_layout_features(cfg, layout_plan)
    check_moe_layout(cfg.model, layout_plan, nproc_per_node)
    batch = plan_batch(
        cfg.train.global_batch, cfg.train.micro_batch, layout_plan.degrees.dp, world_size
    )
    check_profile(cfg.profile, world_size, layout_plan.name)
    check_checkpoint_settings(cfg)
    return CheckedRun(layout_plan, batch)


def check_gpu(gpu: GpuConfig) -> None:
    """The profile's rates and sizes, where known, are finite and > 0 (a NaN peak or a -1
    NVLink rate reached the performance model as a StopIteration, 0 GPUs per node as a
    ZeroDivisionError). A power limit is a share of the part's TDP: both known, the limit
    in (0, TDP]."""
    if gpu.gpus_per_node < 1:
        raise ConfigError("gpu.gpus_per_node", f"{gpu.gpus_per_node}: must be >= 1")
    precisions = [f.name for f in fields(gpu.peak_tflops)]
    sizes = ("hbm_gb", "hbm_gbytes_per_s", "nvlink_gbytes_per_s_bidir", "nic_gbits_per_s_per_gpu")
    rates = {
        **{f"peak_tflops.{p}": getattr(gpu.peak_tflops, p) for p in precisions},
        **{f"measured_peak_tflops.{p}": getattr(gpu.measured_peak_tflops, p) for p in precisions},
        **{key: getattr(gpu, key) for key in sizes},
    }
    for key, value in rates.items():
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ConfigError(f"gpu.{key}", f"{value}: must be a finite number > 0 (or null)")
    limit, tdp = gpu.power_limit_w, gpu.tdp_w
    if tdp is not None and tdp <= 0:
        raise ConfigError("gpu.tdp_w", f"{tdp}: must be > 0 watts")
    if limit is None:
        return
    if tdp is None:
        raise ConfigError(
            "gpu.power_limit_w", f"{limit}: gpu={gpu.name} has no gpu.tdp_w to limit it against"
        )
    if not 0 < limit <= tdp:
        raise ConfigError(
            "gpu.power_limit_w", f"{limit}: must be in (0, {tdp:g}], gpu={gpu.name}'s TDP in watts"
        )


def check_model(m: ModelConfig) -> None:
    for key in (
        "n_layers",
        "d_model",
        "n_heads",
        "n_kv_heads",
        "ffn_hidden",
        "vocab_size",
        "max_seq_len",
    ):
        if getattr(m, key) < 1:
            raise ConfigError(f"model.{key}", f"{getattr(m, key)}: must be >= 1")
    if m.d_model % m.n_heads:
        raise ConfigError("model.n_heads", f"d_model {m.d_model} is not divisible by {m.n_heads}")
    if m.n_heads % m.n_kv_heads:
        raise ConfigError(
            "model.n_kv_heads",
            f"n_heads {m.n_heads} is not divisible by n_kv_heads {m.n_kv_heads}",
        )
    if (m.d_model // m.n_heads) % 2:
        raise ConfigError("model.n_heads", "head dim d_model/n_heads must be even for RoPE")
    # RoPE's base and RMSNorm's epsilon: a negative or NaN base gives NaN angles, a NaN
    # epsilon NaN norms, a zero base infinite ones: NaN losses from the first step, not an error.
    for key in ("rope_theta", "norm_eps"):
        value = getattr(m, key)
        if not (math.isfinite(value) and value > 0):
            raise ConfigError(f"model.{key}", f"{value}: must be a finite number > 0")
    if m.n_experts < 0:
        raise ConfigError("model.n_experts", f"{m.n_experts}: must be >= 0 (0: a dense model)")
    if is_moe(m):
        check_moe_model(m)


def check_moe_model(m: ModelConfig) -> None:
    """The routing of a mixture-of-experts model (train/model/moe.py)."""
    if not 1 <= m.top_k <= m.n_experts:
        raise ConfigError(
            "model.top_k", f"{m.top_k}: must be between 1 and model.n_experts ({m.n_experts})"
        )
    for key, low in (("n_shared_experts", 0), ("moe_every", 1), ("n_dense_layers", 0)):
        if getattr(m, key) < low:
            raise ConfigError(f"model.{key}", f"{getattr(m, key)}: must be >= {low}")
    if m.expert_ffn_hidden is not None and m.expert_ffn_hidden < 1:
        raise ConfigError("model.expert_ffn_hidden", f"{m.expert_ffn_hidden}: must be >= 1")
    if not moe_layers(m):
        raise ConfigError(
            "model.n_dense_layers",
            f"no block of {m.n_layers} is an MoE block (n_dense_layers {m.n_dense_layers}, "
            f"moe_every {m.moe_every}); set model.n_experts=0 for a dense model",
        )
    if m.capacity_factor is not None and not m.capacity_factor > 0:
        raise ConfigError("model.capacity_factor", f"{m.capacity_factor}: must be > 0 or null")
    for key in ("aux_loss_weight", "router_bias_update"):
        value = getattr(m, key)
        if not math.isfinite(value) or value < 0:
            raise ConfigError(f"model.{key}", f"{value}: must be a finite number >= 0")
    if not (math.isfinite(m.route_scale) and m.route_scale > 0):
        raise ConfigError("model.route_scale", f"{m.route_scale}: must be a finite number > 0")
    check_route_groups(m)


def check_route_groups(m: ModelConfig) -> None:
    """Node-limited routing: route_max_nodes of route_groups equal groups of experts must
    hold at least top_k experts."""
    groups, limit = m.route_groups, m.route_max_nodes
    if groups < 1 or m.n_experts % groups:
        raise ConfigError(
            "model.route_groups", f"{groups} does not divide model.n_experts {m.n_experts}"
        )
    if limit is None:
        return
    if not 1 <= limit <= groups:
        raise ConfigError(
            "model.route_max_nodes", f"{limit}: must be between 1 and model.route_groups {groups}"
        )
    if limit * (m.n_experts // groups) < m.top_k:
        raise ConfigError(
            "model.route_max_nodes",
            f"{limit} groups of {m.n_experts // groups} experts hold fewer than model.top_k "
            f"{m.top_k}",
        )


def check_train(cfg: RunConfig) -> None:
    t = cfg.train
    # torch.manual_seed's range: beyond it every rank failed at start ("Overflow when
    # unpacking long").
    if not -(2**63) <= cfg.seed < 2**64:
        raise ConfigError("seed", f"{cfg.seed}: must be in [-2**63, 2**64)")
    if t.steps <= 0:
        raise ConfigError("train.steps", f"{t.steps}: must be > 0")
    if not 0 <= t.warmup_steps < t.steps:
        raise ConfigError(
            "train.warmup_steps", f"{t.warmup_steps}: must be >= 0 and < train.steps ({t.steps})"
        )
    if not 1 <= t.seq_len <= cfg.model.max_seq_len:
        raise ConfigError(
            "train.seq_len",
            f"{t.seq_len}: must be between 1 and model {cfg.model.name}'s max_seq_len "
            f"{cfg.model.max_seq_len}",
        )
    if t.micro_batch < 1:
        raise ConfigError("train.micro_batch", f"{t.micro_batch}: must be >= 1")
    if t.global_batch < 1:
        raise ConfigError("train.global_batch", f"{t.global_batch}: must be >= 1")
    for key in ("lr", "weight_decay", "grad_clip"):
        value = getattr(t, key)
        if not math.isfinite(value) or value < 0:
            raise ConfigError(f"train.{key}", f"{value}: must be a finite number >= 0")


def check_parallel_settings(p: ParallelConfig) -> None:
    """Values of the layout's settings that no layout can run."""
    if not math.isfinite(p.bucket_mb) or p.bucket_mb <= 0:
        raise ConfigError(
            "parallel.bucket_mb",
            f"{p.bucket_mb}: must be a number of MB > 0 (the gradient bucket size; 25 is "
            "DDP's default)",
        )


def check_precision(cfg: RunConfig) -> None:
    """The fp16 loss scaling, the fp8 settings, and what an explicit fp8 needs of the shapes
    (whether the part has fp8 and a library imports is the machine's business:
    launch/validate.py)."""
    p = cfg.precision
    if not (math.isfinite(p.loss_scale_init) and p.loss_scale_init > 0):
        raise ConfigError(
            "precision.loss_scale_init", f"{p.loss_scale_init}: must be a finite number > 0"
        )
    if p.loss_scale_growth_interval < 1:
        raise ConfigError(
            "precision.loss_scale_growth_interval",
            f"{p.loss_scale_growth_interval}: must be >= 1 (steps without an overflow before "
            "the scale doubles)",
        )
    check_fp8_settings(cfg)
    check_fp8_shapes(cfg)


def check_fp8_settings(cfg: RunConfig) -> None:
    fp8 = cfg.precision.fp8
    if fp8.backend != "auto" and fp8.recipe is not None:
        recipes = FP8_RECIPES[fp8.backend]
        if fp8.recipe not in recipes:
            raise ConfigError(
                "precision.fp8.recipe",
                f"{fp8.recipe} is not a {fp8.backend} recipe; choose from: {', '.join(recipes)}",
            )
    if fp8.min_dim < 16:
        raise ConfigError("precision.fp8.min_dim", f"{fp8.min_dim}: must be >= 16")


def check_fp8_shapes(cfg: RunConfig) -> None:
    """An explicit fp8 needs a layer wide enough and GEMM rows in multiples of 16."""
    fp8 = cfg.precision.fp8
    if cfg.precision.name != "fp8":
        return
    if not fp8_linear_count(cfg.model, fp8.min_dim):
        # The run would be bf16 throughout; labelling it fp8 (and taking MFU against the fp8
        # peak) would claim what did not happen.
        raise ConfigError(
            "precision.fp8.min_dim",
            f"no Linear layer of model {cfg.model.name} is {fp8.min_dim} wide (multiples of 16): "
            "nothing would run in fp8; lower precision.fp8.min_dim or use precision=bf16",
        )
    tokens = cfg.train.micro_batch * cfg.train.seq_len
    if tokens % FP8_GEMM_MULTIPLE:
        raise ConfigError(
            "train.micro_batch",
            f"precision=fp8 needs micro_batch x seq_len (each GEMM's rows) to be a multiple of "
            f"{FP8_GEMM_MULTIPLE}; {cfg.train.micro_batch} x {cfg.train.seq_len} = {tokens}",
        )


def layout_precision_refusal(cfg: RunConfig, *, on_cpu: bool | None = None) -> str | None:
    """Why the layout's engine cannot run the requested precision, or None. ``on_cpu``:
    whether the ranks are CPU ones (default: cfg.gpu is the cpu profile); a projection of
    GPU parts says False whatever host composed its config."""
    on_cpu = cfg.gpu.name == "cpu" if on_cpu is None else on_cpu
    row, precision = layout(cfg.parallel.name), str(cfg.precision.name)
    if precision == "fp8":
        schedule = str(cfg.parallel.pp_schedule)
        return fp8_refusal(row, cfg.precision.fp8, cfg.parallel.tp, schedule)
    if precision == "fp16":
        if on_cpu and row.refusal(Feature.fp16_on_cpu):
            return row.refusal(Feature.fp16_on_cpu)
        return row.refusal(Feature.fp16)
    return None


def check_layout_features(cfg: RunConfig, plan: LayoutPlan) -> None:
    """What the run asks of its layout (beyond precision) that the layout's row refuses."""
    row = plan.row
    if cfg.parallel.async_tp:
        check_async_tp(cfg, plan)
    if cfg.model.tie_embeddings and plan.degrees.pp > 1 and row.refusal(Feature.tied_embeddings):
        raise ConfigError(
            "model.tie_embeddings",
            f"model {cfg.model.name} ties its embedding to its head, and "
            f"{row.refusal(Feature.tied_embeddings)}",
        )


def check_moe_layout(m: ModelConfig, plan: LayoutPlan, nproc_per_node: int) -> None:
    """A mixture-of-experts model needs a layout that carries it; an expert-parallel layout
    needs experts to split, evenly, and node-limited routing needs groups inside nodes."""
    row, ep = plan.row, plan.degrees.ep
    if is_moe(m) and row.refusal(Feature.moe):
        raise ConfigError(
            "parallel.name",
            f"model {m.name} is a mixture of experts, and {row.refusal(Feature.moe)}",
        )
    if row.expert_parallel and not is_moe(m):
        raise ConfigError(
            "parallel.name",
            f"parallel={plan.name} splits the experts of a mixture-of-experts model; model "
            f"{m.name} has none (model.n_experts=0): use an MoE model, or parallel=fsdp",
        )
    if ep > 1 and m.n_experts % ep:
        raise ConfigError("parallel.ep", f"{ep} does not divide model.n_experts {m.n_experts}")
    nodes = expert_group_nodes(plan.degrees, nproc_per_node)
    if m.route_max_nodes is not None and nodes > 1 and m.route_groups % nodes:
        raise ConfigError(
            "model.route_groups",
            f"{m.route_groups} expert groups do not split over the {nodes} nodes of an EP "
            "group: a group must lie inside one node for model.route_max_nodes to bound the "
            "nodes a token is sent to",
        )


def check_async_tp(cfg: RunConfig, plan: LayoutPlan) -> None:
    """Async TP micro-pipelines sequence parallelism's collectives with their matmuls: it
    needs TP with SP, the compiler (which rewrites them) and CUDA's symmetric memory."""
    why = None
    # What no setting can change comes first: on CPU, asking for train.compile would not help.
    if cfg.gpu.name == "cpu":
        why = (
            "it needs CUDA symmetric memory (NCCL); CPU ranks talk through gloo, so run TP "
            "without it there"
        )
    elif plan.degrees.tp < 2:
        why = f"parallel={plan.name} at this world size has no tensor-parallel group"
    elif plan.pipeline is not None:
        why = (
            f"it is not wired up inside pipeline stages (parallel={plan.name}); use "
            "parallel=tp or tp_fsdp for async TP"
        )
    elif not plan.sequence_parallel:
        why = "it overlaps sequence parallelism's collectives: parallel.sequence_parallel=false"
    elif not cfg.train.compile:
        why = "the compiler rewrites the matmuls and collectives: set train.compile=true"
    if why:
        raise ConfigError("parallel.async_tp", f"true: {why}")


def profiled_ranks(profile: ProfileConfig, world_size: int) -> list[int]:
    """``profile.ranks``, or rank 0 and the last rank."""
    if profile.ranks is not None:
        return sorted(set(profile.ranks))
    return sorted({0, world_size - 1})


def check_profile(profile: ProfileConfig, world_size: int, layout_name: str) -> None:
    if profile.enabled and profile.steps < 1:
        raise ConfigError("profile.steps", f"{profile.steps}: the profiled window needs >= 1")
    unknown = [r for r in profile.ranks or [] if not 0 <= r < world_size]
    if profile.enabled and unknown:
        raise ConfigError("profile.ranks", f"{unknown} not in 0..{world_size - 1} (world size)")
    if profile.twin and profile.twin_steps < 1:
        raise ConfigError("profile.twin_steps", f"{profile.twin_steps}: needs >= 1")
    refusal = layout(layout_name).refusal(Feature.twin)
    if profile.twin and refusal:
        raise ConfigError("profile.twin", f"{refusal}: its comm cannot be skipped")


def check_checkpoint_settings(cfg: RunConfig) -> None:
    """checkpoint.* against the run (the directory's contents: train/checkpoint/markers.py)."""
    c, steps = cfg.checkpoint, cfg.train.steps
    if c.every < 0:
        raise ConfigError("checkpoint.every", f"{c.every}: must be >= 0 (0: no checkpoints)")
    if c.every > steps:
        raise ConfigError(
            "checkpoint.every",
            f"{c.every} is more than train.steps ({steps}): no checkpoint would be saved",
        )
    if c.keep < 1:
        raise ConfigError("checkpoint.keep", f"{c.keep}: must be >= 1 (the last K are kept)")
    refusal = layout(cfg.parallel.name).refusal(Feature.checkpoint)
    if c.every > 0 and refusal:
        raise ConfigError("checkpoint.every", refusal)
