"""Checks that need more than a type: every rule here fails before any worker starts."""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path

import numpy as np

from launch.cluster.checks import validate_launch
from launch.conf_tree import group_choices, load_gpu_profile
from launch.perfmodel.memory import held_memory
from launch.plan import RunPlan, config_for
from launch.rundir import point_dirs
from train.checkpoint.markers import (
    check_checkpoint_dir,
    checkpoint_root,
    latest_complete,
    refusal,
    shape_differences,
)
from train.files.safe_files import unwritable_reason
from train.spec.catalog import Feature, layout
from train.spec.config import RunConfig
from train.spec.config_error import ConfigError
from train.spec.degrees import LayoutPlan
from train.spec.devices import module_imports
from train.spec.rules import (
    check_fp8_settings,
    check_fp8_shapes,
    check_gpu,
    check_model,
    check_parallel_settings,
    check_run,
    check_train,
    layout_precision_refusal,
)


def validate(cfg: RunConfig, plans: list[RunPlan], *, trains: bool = True) -> None:
    """Every rule a value's type cannot say (closed choices are enums in the schema): the
    run's own rules (train/spec/rules.py, which each rank checks again) for every planned
    run, and what only the driver can see: run dirs, hosts, libraries, files, memory. A job
    that ``trains`` nothing (launch.comm) builds no model: its dirs, part and cluster only."""
    validate_run_dirs(cfg, plans)  # first: a finished run is kept, whatever else is asked
    check_gpu(cfg.gpu)
    if not trains:
        validate_cluster(cfg, plans)
        return
    check_model(cfg.model)
    check_train(cfg)
    check_parallel_settings(cfg.parallel)
    # A layout that cannot run a precision at all says so before the fp8 details.
    if cfg.parallel.name != "auto":
        validate_engine(cfg)
    check_fp8_settings(cfg)
    validate_fp8_part(cfg)
    # The shapes before the libraries: importing torchao (and torch with it) takes seconds
    # and prints torch's warnings above a refusal the config alone decides.
    check_fp8_shapes(cfg)
    validate_fp8_libraries(cfg)
    validate_cluster(cfg, plans)
    for plan in plans:
        run_cfg = config_for(cfg, plan, "")  # parallel=auto: the layout chosen for this run
        validate_engine(run_cfg)
        checked = check_run(run_cfg, plan.world_size, plan.nproc_per_node)
        validate_fits(run_cfg, checked.layout, ranks_here(cfg, plan))
        try:
            check_checkpoint_dir(run_cfg)
        except ConfigError as exc:
            # overwrite=true removes the run's own checkpoints (RUN_DIR/checkpoints) before it
            # starts: what is in them then does not matter.
            if not (cfg.overwrite and exc.key == "checkpoint.dir" and not cfg.checkpoint.dir):
                raise
    if cfg.data.source == "file":
        validate_token_file(cfg)
    elif cfg.data.path:  # it trained on synthetic tokens without a word
        raise ConfigError(
            "data.path",
            f"{cfg.data.path!r} is read only with data.source=file (it would be "
            f"ignored under data.source={cfg.data.source.value})",
        )


def validate_fp8_part(cfg: RunConfig) -> None:
    """An explicit fp8 needs fp8 tensor cores in the profile."""
    if cfg.precision.name == "fp8" and not cfg.gpu.fp8:
        with_fp8 = [n for n in group_choices("gpu") if n != "auto" and load_gpu_profile(n).fp8]
        raise ConfigError(
            "precision",
            f"fp8 needs FP8 tensor cores, which gpu={cfg.gpu.name} lacks; profiles with FP8: "
            + ", ".join(with_fp8),
        )


def validate_fp8_libraries(cfg: RunConfig) -> None:
    """An explicit fp8 needs an fp8 library that imports here."""
    fp8 = cfg.precision.fp8
    if cfg.precision.name != "fp8":
        return
    if fp8.backend == "te" and not module_imports("transformer_engine.pytorch"):
        raise ConfigError(
            "precision.fp8.backend",
            "te: transformer_engine does not import here; pip install -e '.[te]' on a CUDA "
            "machine, or use precision.fp8.backend=torchao",
        )
    # auto takes TE where it imports and the layout can run it (train/spec/precision.py).
    te_usable = cfg.parallel.name == "auto" or not layout(cfg.parallel.name).refusal(Feature.fp8_te)
    te_instead = (
        fp8.backend == "auto" and te_usable and module_imports("transformer_engine.pytorch")
    )
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


def validate_cluster(cfg: RunConfig, plans: list[RunPlan]) -> None:
    c = cfg.cluster
    for key in ("nodes", "nproc_per_node", "cpu_threads_per_rank"):
        if getattr(c, key) < 1:
            raise ConfigError(f"cluster.{key}", f"{getattr(c, key)}: must be >= 1")
    timeout = c.collective_timeout_s
    if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
        raise ConfigError("cluster.collective_timeout_s", f"{timeout}: must be > 0 s (or null)")
    stall = c.stall_timeout_s
    if stall is not None and not (math.isfinite(stall) and stall >= 0):
        raise ConfigError("cluster.stall_timeout_s", f"{stall}: must be >= 0 s (0: off; or null)")
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
        contention = (
            f"{threads} rank thread(s) on {cores} core(s) measure contention, not devices; "
            "use fewer ranks or threads, or cluster.allow_oversubscribe=true (figures are "
            "then marked oversubscribed)"
        )
        # Blame what multiplies past the cores: the threads per rank, else the ranks.
        key = "cpu_threads_per_rank" if c.cpu_threads_per_rank > 1 else "nproc_per_node"
        raise ConfigError(f"cluster.{key}", contention)


def ranks_here(cfg: RunConfig, plan: RunPlan) -> int:
    """CPU ranks that share this machine's memory: a local node's, or every emulated node's."""
    return plan.world_size if cfg.cluster.name == "emulated" else plan.nproc_per_node


def validate_fits(cfg: RunConfig, layout: LayoutPlan, ranks: int = 1) -> None:
    """A model whose parameters, gradients and optimizer state alone exceed the part's memory
    under this layout cannot run: refused here, not by an out-of-memory error on every rank
    after minutes of start-up. Activations are left out (the estimate is then a floor), so
    nothing that could fit is refused. CPU ranks (gpu=cpu: no HBM) on this machine share its
    memory: ``ranks`` of them against the host's."""
    if layout.pipeline is not None:
        return
    resolved = "bf16" if cfg.precision.name in ("auto", "fp8") else str(cfg.precision.name)
    held = sum(held_memory(cfg.model, layout, resolved))
    if cfg.gpu.hbm_gb:
        capacity, total = cfg.gpu.hbm_gb * 1e9, held
        against = f"more than {cfg.gpu.name}'s {cfg.gpu.hbm_gb:g} GB"
    elif cfg.gpu.name == "cpu" and cfg.cluster.name in ("local", "emulated") and host_memory():
        capacity, total = host_memory(), held * ranks
        against = (
            f"x {ranks} rank(s) on this host = {total / 1e9:.0f} GB, more than its "
            f"{capacity / 1e9:.0f} GB of memory"
        )
    else:
        return
    if total > capacity:
        raise ConfigError(
            "parallel",
            f"{cfg.model.name} under parallel={cfg.parallel.name} holds {held / 1e9:.0f} GB per "
            f"rank in parameters, gradients and optimizer state alone, {against}; shard it "
            "over more ranks (parallel=fsdp or zero3, more nodes) or pick a smaller model",
        )


def host_memory() -> float | None:
    """Bytes of memory on this machine (MemTotal), or its cgroup's limit when lower."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return None
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
    except OSError:
        limit = "max"
    return float(min(total, int(limit))) if limit.isdigit() else float(total)


def validate_engine(cfg: RunConfig) -> None:
    """The layout's engine can run the requested precision, and is installed (DeepSpeed)."""
    refusal = layout_precision_refusal(cfg)
    if refusal:
        raise ConfigError("precision.name", f"{cfg.precision.name}: {refusal}")
    # find_spec, not an import: importing DeepSpeed here would cost seconds per launch.
    if layout(cfg.parallel.name).deepspeed and importlib.util.find_spec("deepspeed") is None:
        raise ConfigError(
            "parallel.name",
            f"{cfg.parallel.name} needs DeepSpeed, which is not installed: "
            "pip install -e .[deepspeed]",
        )


def validate_token_file(cfg: RunConfig) -> None:
    d = cfg.data
    if not d.path:
        raise ConfigError("data.path", "data.source=file needs data.path (a .bin token file)")
    path = Path(d.path)
    if not path.is_file():
        what = (
            "a directory; expected the .bin token file"
            if path.is_dir()
            # /dev/null, a FIFO: the ranks memory-map the file, which needs its size
            else "not a regular file; expected the .bin token file"
            if path.exists()
            else "no such file"
        )
        raise ConfigError("data.path", f"{d.path}: {what}")
    dtype = np.dtype(str(d.dtype))  # uint16 | uint32
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
    unwritable = unwritable_reason(Path(cfg.run_dir))
    if unwritable:
        raise ConfigError("run_dir", unwritable)
    if cfg.resume and cfg.overwrite:
        raise ConfigError(
            "resume", "resume=true keeps finished runs, overwrite=true replaces them: choose one"
        )
    if cfg.resume or cfg.overwrite:
        return  # launch/rundir.py checks there is a sweep to resume, or sets others aside
    # Every finished run in the dir, this sweep's world sizes or not: a report over the dir
    # would show the others beside the new ones.
    finished = [p for p in point_dirs(Path(cfg.run_dir)) if (p / "summary.json").is_file()]
    planned = {plan.run_dir.resolve() for plan in plans}
    finished.sort(key=lambda p: p.resolve() not in planned)  # this sweep's own named first
    if finished:
        raise ConfigError(
            "run_dir",
            f"{finished[0]} already holds a finished run; resume=true runs only the "
            "missing points, overwrite=true runs them all again, or pick another run_dir",
        )


def validate_checkpoint_precision(
    cfg: RunConfig, plans: list[RunPlan], resolved: str | None
) -> None:
    """A checkpoint to resume from was saved in the precision the ranks will run in: the one
    precision=auto (or fp8) resolves to on this machine (``resolved``; None: decided on other
    nodes, where each rank compares it), not the one asked for."""
    if resolved is None or cfg.checkpoint.every <= 0 or cfg.precision.name not in ("auto", "fp8"):
        return
    if cfg.overwrite and not cfg.checkpoint.dir:
        return  # the run's own checkpoints are removed before it starts
    for plan in plans:
        run_cfg = config_for(cfg, plan, "")
        found = latest_complete(checkpoint_root(run_cfg, run_cfg.run_dir))
        if found is None:
            continue
        differences = shape_differences(found.marker.get("shape") or {}, {"precision": resolved})
        if differences:
            asked = f" (precision={cfg.precision.name} resolves to {resolved} here)"
            raise ConfigError("checkpoint.dir", refusal(found, [differences[0] + asked]))
