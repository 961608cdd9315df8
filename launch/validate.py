"""Checks that need more than a type: every rule here fails before any worker starts."""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path

import numpy as np

from launch.cluster.checks import validate_launch
from launch.conf_tree import group_choices, load_gpu_profile
from launch.errors import ConfigError
from launch.plan import RunPlan, config_for
from train.checkpoint.checkpointer import checkpoint_errors
from train.measure.profiling import profile_errors
from train.runtime.data import TOKEN_DTYPES
from train.runtime.machine import module_imports
from train.runtime.numerics import FP8_GEMM_MULTIPLE, FP8_RECIPES, fp8_eligible, model_linear_shapes
from train.spec.config import RunConfig
from train.spec.degrees import ZERO_STAGES, LayoutError, plan_layout


def validate(cfg: RunConfig, plans: list[RunPlan]) -> None:
    """Every rule a value's type cannot say (closed choices are enums in the schema)."""
    validate_run_dirs(cfg, plans)  # first: a finished run is kept, whatever else is asked
    validate_model(cfg)
    validate_train(cfg)  # the shapes first: precision checks below multiply them
    # Before the fp8 backend checks: a layout that cannot run a precision at all says so first.
    if cfg.parallel.name != "auto":
        validate_layout_precision(cfg)
    validate_precision(cfg)
    validate_cluster(cfg, plans)
    validate_parallel(cfg, plans)
    if cfg.data.source == "file":
        validate_token_file(cfg)


def validate_model(cfg: RunConfig) -> None:
    m = cfg.model
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


def validate_precision(cfg: RunConfig) -> None:
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
    if cfg.precision.name != "fp8":
        return
    if not cfg.gpu.fp8:
        with_fp8 = [n for n in group_choices("gpu") if n != "auto" and load_gpu_profile(n).fp8]
        raise ConfigError(
            "precision",
            f"fp8 needs FP8 tensor cores, which gpu={cfg.gpu.name} lacks; profiles with FP8: "
            + ", ".join(with_fp8),
        )
    if fp8.backend == "te" and not module_imports("transformer_engine.pytorch"):
        raise ConfigError(
            "precision.fp8.backend",
            "te: transformer_engine does not import here; pip install -e '.[te]' on a CUDA "
            "machine, or use precision.fp8.backend=torchao",
        )
    te_instead = fp8.backend == "auto" and module_imports("transformer_engine.pytorch")
    if (
        fp8.backend in ("torchao", "auto")
        and not module_imports("torchao.float8")
        and not te_instead
    ):
        raise ConfigError(
            "precision.fp8.backend",
            f"{fp8.backend}: torchao does not import here; pip install -e '.[fp8]'"
            + (" or '.[te]'" if fp8.backend == "auto" else ""),
        )

    if not any(fp8_eligible(*shape, fp8.min_dim) for shape in model_linear_shapes(cfg.model)):
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


def validate_train(cfg: RunConfig) -> None:
    t = cfg.train
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


def validate_cluster(cfg: RunConfig, plans: list[RunPlan]) -> None:
    c = cfg.cluster
    for key in ("nodes", "nproc_per_node", "cpu_threads_per_rank"):
        if getattr(c, key) < 1:
            raise ConfigError(f"cluster.{key}", f"{getattr(c, key)}: must be >= 1")
    validate_cpu_share(cfg, plans)
    if c.name == "local" and c.nodes != 1:
        raise ConfigError("cluster.nodes", f"{c.nodes}: cluster=local has exactly 1 node")
    validate_launch(cfg, plans)  # hosts, hostfile, launcher, emulated links, fabric


def validate_cpu_share(cfg: RunConfig, plans: list[RunPlan]) -> None:
    """CPU ranks stand for devices only with a core each: more threads than this machine has
    cores measure contention under a "one core per rank" label."""
    c = cfg.cluster
    if cfg.gpu.name != "cpu" or c.name not in ("local", "emulated") or c.allow_oversubscribe:
        return
    cores = len(os.sched_getaffinity(0))
    # The emulated cluster runs every node here; a local run its one node.
    threads = max(plan.world_size for plan in plans) * c.cpu_threads_per_rank
    if threads > cores:
        raise ConfigError(
            "cluster.cpu_threads_per_rank",
            f"{threads} rank thread(s) on {cores} core(s) measure contention, not devices; "
            "use fewer ranks or threads, or cluster.allow_oversubscribe=true (figures are "
            "then marked oversubscribed)",
        )


def validate_parallel(cfg: RunConfig, plans: list[RunPlan]) -> None:
    """Degrees against each run's world size, tensor-parallel splits, offload, batch split."""
    for plan in plans:
        run_cfg = config_for(cfg, plan, "")  # parallel=auto: the layout chosen for this run
        validate_layout_precision(run_cfg)
        try:
            layout = plan_layout(run_cfg, plan.world_size, plan.nproc_per_node)
        except LayoutError as exc:
            raise ConfigError(exc.key, exc.message) from None
        validate_fits(run_cfg, layout)
        # Each optimizer step splits the global batch into micro batches, one per
        # data-parallel rank per accumulation step (the ranks of a TP group share theirs).
        for key, reason in profile_errors(cfg.profile, plan.world_size, run_cfg.parallel.name):
            raise ConfigError(key, reason)
        for key, reason in checkpoint_errors(run_cfg):
            # overwrite=true removes the run's own checkpoints (RUN_DIR/checkpoints) before it
            # starts: what is in them then does not matter.
            if not (cfg.overwrite and key == "checkpoint.dir" and not cfg.checkpoint.dir):
                raise ConfigError(key, reason)
        dp = layout.degrees.dp
        if plan.global_batch % (cfg.train.micro_batch * dp):
            raise ConfigError(
                "train.global_batch",
                f"{plan.global_batch} (at world size {plan.world_size}) is not divisible by "
                f"micro_batch {cfg.train.micro_batch} x data-parallel size {dp}",
            )


def validate_fits(cfg: RunConfig, layout) -> None:
    """A model whose parameters, gradients and optimizer state alone exceed the part's memory
    under this layout cannot run: refused here, not by an out-of-memory error on every rank
    after minutes of start-up. Activations are left out (the estimate is then a floor), so
    nothing that could fit is refused."""
    if not cfg.gpu.hbm_gb or layout.pipeline is not None:
        return
    from launch.perfmodel.memory import held_memory

    resolved = "bf16" if cfg.precision.name in ("auto", "fp8") else str(cfg.precision.name)
    held = sum(held_memory(cfg.model, layout, resolved))
    capacity = cfg.gpu.hbm_gb * 1e9
    if held > capacity:
        raise ConfigError(
            "parallel",
            f"{cfg.model.name} under parallel={cfg.parallel.name} holds {held / 1e9:.0f} GB per "
            f"rank in parameters, gradients and optimizer state alone, more than "
            f"{cfg.gpu.name}'s {cfg.gpu.hbm_gb:g} GB; shard it over more ranks (parallel=fsdp or "
            "zero3, more nodes) or pick a smaller model",
        )


def validate_layout_precision(cfg: RunConfig) -> None:
    """Precisions a layout's engine cannot run, and DeepSpeed itself for zero*."""
    name, precision = cfg.parallel.name, cfg.precision.name
    if name in ZERO_STAGES:
        if precision == "fp8":
            raise ConfigError(
                "precision.name",
                f"fp8: DeepSpeed's engine runs fp32, bf16 or fp16, so parallel={name} cannot; "
                "use precision=bf16, or fp8 with parallel=fsdp",
            )
        if precision == "fp16" and cfg.gpu.name == "cpu":
            raise ConfigError(
                "precision.name",
                f"fp16: DeepSpeed's CPU accelerator has no fp16, so parallel={name} cannot "
                "run it on gpu=cpu; use precision=bf16 or fp32",
            )
        # find_spec, not an import: importing DeepSpeed here would cost seconds per launch.
        if importlib.util.find_spec("deepspeed") is None:
            raise ConfigError(
                "parallel.name",
                f"{name} needs DeepSpeed, which is not installed: pip install -e .[deepspeed]",
            )
    if precision == "fp8" and name in ("tp", "tp_fsdp"):
        raise ConfigError(
            "precision.name",
            f"fp8 with parallel={name} needs fp8-aware tensor-parallel plans, which are not "
            "wired up; use precision=bf16, or fp8 with parallel=ddp or fsdp",
        )


def validate_token_file(cfg: RunConfig) -> None:
    d = cfg.data
    if not d.path:
        raise ConfigError("data.path", "data.source=file needs data.path (a .bin token file)")
    path = Path(d.path)
    if not path.is_file():
        raise ConfigError("data.path", f"{d.path}: no such file")
    dtype = np.dtype(TOKEN_DTYPES[d.dtype])
    size = path.stat().st_size
    if size == 0:
        raise ConfigError("data.path", f"{d.path}: file is empty")
    if size % dtype.itemsize:
        raise ConfigError(
            "data.dtype", f"{d.path}: {size} bytes is not a whole number of {d.dtype} tokens"
        )
    if cfg.model.vocab_size > np.iinfo(dtype).max + 1:
        raise ConfigError(
            "data.dtype",
            f"{d.dtype} holds ids up to {np.iinfo(dtype).max}, model vocab_size is "
            f"{cfg.model.vocab_size}: use uint32",
        )
    n_tokens = size // dtype.itemsize
    if n_tokens <= cfg.train.seq_len + 1:
        raise ConfigError("data.path", f"{d.path}: {n_tokens} tokens, need > seq_len+1")
    # A wrong dtype or a file for another tokenizer: look across the whole file (windows
    # spread from head to tail), not only its first million tokens.
    tokens = np.memmap(path, dtype=dtype, mode="r")
    sample = sampled_tokens(tokens)
    if int(sample.max()) >= cfg.model.vocab_size:
        raise ConfigError(
            "data.dtype",
            f"{d.path} read as {d.dtype} has token id {int(sample.max())} >= vocab_size "
            f"{cfg.model.vocab_size}: wrong dtype or wrong model",
        )
    if d.dtype == "uint16" and looks_like_uint32(sample):
        raise ConfigError(
            "data.dtype",
            f"{d.path} looks like uint32 tokens read as uint16 (every second uint16 is 0, the "
            "high half of a small id): use data.dtype=uint32",
        )


SAMPLE_WINDOWS, SAMPLE_WINDOW_TOKENS = 64, 1 << 16


def sampled_tokens(tokens: np.ndarray) -> np.ndarray:
    """Up to 64 windows of 64Ki tokens evenly spread over the file, the last one at its end."""
    n = len(tokens)
    if n <= SAMPLE_WINDOWS * SAMPLE_WINDOW_TOKENS:
        return np.asarray(tokens)
    starts = np.linspace(0, n - SAMPLE_WINDOW_TOKENS, SAMPLE_WINDOWS).astype(np.int64)
    return np.concatenate([tokens[s : s + SAMPLE_WINDOW_TOKENS] for s in starts])


def looks_like_uint32(as_uint16: np.ndarray) -> bool:
    """Little-endian uint32 ids below 65536 read as uint16: the odd halves are all zero."""
    even, odd = as_uint16[0::2], as_uint16[1::2]
    if len(odd) < 64:
        return False
    return bool(np.mean(odd == 0) > 0.9 and np.mean(even == 0) < 0.5)


def validate_run_dirs(cfg: RunConfig, plans: list[RunPlan]) -> None:
    """A run dir that exists is kept: a finished run is refused unless the user says what to do
    with it (resume the sweep, or overwrite it)."""
    if not str(cfg.run_dir).strip():
        raise ConfigError("run_dir", "is empty; give a directory (or leave it unset)")
    if cfg.resume and cfg.overwrite:
        raise ConfigError(
            "resume", "resume=true keeps finished runs, overwrite=true replaces them: choose one"
        )
    if cfg.resume:
        return  # launch/rundir.py checks there is a sweep to resume
    for plan in plans:
        if (plan.run_dir / "summary.json").exists() and not cfg.overwrite:
            raise ConfigError(
                "run_dir",
                f"{plan.run_dir} already holds a finished run; resume=true runs only the "
                "missing points, overwrite=true runs them all again, or pick another run_dir",
            )
