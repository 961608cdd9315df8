"""DeepSpeed ZeRO stages 1-3 through ``deepspeed.initialize``, its JSON built from the config.

DeepSpeed owns more of the step than torch's wrappers: it casts the model to bf16/fp16 itself
(so the loop must not autocast on top), scales fp16 losses, clips gradients, keeps fp32 master
weights in its optimizer wrapper, and knows where an accumulation ends. The loop's own client
optimizer (torch AdamW, the same as every other layout) is what DeepSpeed steps, so layouts
compare update for update; with the optimizer offloaded it is DeepSpeed's CPU Adam (the same
update, computed on the host by its vectorised kernel).
"""

from __future__ import annotations

import contextlib
import math
import os
from contextlib import AbstractContextManager

import torch
import torch.distributed as dist
from torch import nn

from train.files.shm_segments import allreduce_segment
from train.measure.held_memory import HeldMemory, optimizer_state_tensors, tensor_bytes
from train.parallel.layout import Layout, adamw
from train.spec.config import RunConfig
from train.spec.traffic import ZERO3_MAX_REUSE_DISTANCE

INSTALL_HINT = "pip install -e .[deepspeed]"
# What DeepSpeed's engine can run; fp8 is not one of them, tf32 is fp32 plus a backend flag.
DEEPSPEED_PRECISIONS = ("fp32", "tf32", "bf16", "fp16")


def import_deepspeed():
    """deepspeed, imported only by the ranks that need it; one line naming the extra if not."""
    try:
        import deepspeed  # the deepspeed extra: seconds to import, zero* runs only
    except ImportError as exc:
        raise ImportError(
            f"parallel=zero* needs DeepSpeed, which is not installed ({exc}): {INSTALL_HINT}"
        ) from None
    return deepspeed


def deepspeed_config(
    cfg: RunConfig, stage: int, precision: str, micro_batch: int, accum_steps: int
) -> dict:
    """DeepSpeed's JSON config for ZeRO ``stage`` under this run's config.

    ``precision`` is the resolved one (fp32, tf32, bf16, fp16). Bucket sizes are in elements
    in DeepSpeed's JSON: parallel.bucket_mb divided by the width of the reduced gradients.
    """
    if precision not in DEEPSPEED_PRECISIONS:
        raise ValueError(
            f"precision.name: {precision} is not available with parallel=zero{stage}; "
            f"DeepSpeed's engine runs {', '.join(DEEPSPEED_PRECISIONS)}"
        )
    p = cfg.parallel
    element_bytes = 2 if precision in ("bf16", "fp16") else 4
    bucket = int(p.bucket_mb * 2**20 / element_bytes)
    zero: dict = {
        "stage": stage,
        "contiguous_gradients": True,
        "reduce_bucket_size": bucket,
        "allgather_bucket_size": bucket,
    }
    if stage == 3:
        zero["stage3_prefetch_bucket_size"] = bucket
        zero["stage3_param_persistence_threshold"] = p.zero3_persistence_threshold
        zero["stage3_max_reuse_distance"] = ZERO3_MAX_REUSE_DISTANCE
    if p.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    if p.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    config = {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": accum_steps,
        "train_batch_size": cfg.train.global_batch,
        "gradient_clipping": cfg.train.grad_clip,
        "zero_optimization": zero,
        # The client optimizer is torch AdamW, as in every other layout, or with offload
        # DeepSpeed's CPU Adam (zero_client_optimizer); a CPU rank that could not build it
        # falls back to torch AdamW, which these two flags let DeepSpeed accept.
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 2**31 - 1,  # scaleprobe logs the steps
        "wall_clock_breakdown": False,
    }
    if precision == "bf16":
        config["bf16"] = {"enabled": True}
    elif precision == "fp16":
        config["fp16"] = {
            "enabled": True,
            "loss_scale": 0,  # dynamic
            "initial_scale_power": round(math.log2(cfg.precision.loss_scale_init)),
            "loss_scale_window": cfg.precision.loss_scale_growth_interval,
        }
    return config


class DeepSpeedLayout(Layout):
    scales_loss = True

    def __init__(self, engine, dp_rank: int, dp_size: int):
        self.model = engine
        self.optimizer = engine.optimizer  # DeepSpeed's ZeRO wrapper around the client AdamW
        self.dp_rank, self.dp_size = dp_rank, dp_size

    def autocast(self, plan, device: torch.device) -> AbstractContextManager:
        return contextlib.nullcontext()  # the engine already runs the model in bf16/fp16

    def gradient_sync(self, *, last: bool, sync: bool = True) -> AbstractContextManager:
        # DeepSpeed's documented way to own the accumulation loop: mark the last micro-step.
        self.model.set_gradient_accumulation_boundary(sync and last)
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        # train_step has already divided by the accumulation steps.
        self.model.backward(loss, scale_wrt_gas=False)

    def finish_gradients(self, max_norm: float) -> None:
        # Clipping is the engine's (gradient_clipping in its JSON), inside step().
        self.grad_bytes = tensor_bytes(_zero_gradients(self.optimizer))

    def step(self) -> None:
        self.model.step()

    def zero_grad(self) -> None:
        pass  # engine.step() clears the gradients it owns

    def held_memory(self) -> HeldMemory:
        module_params = list(self.model.module.parameters())
        # ZeRO-3 keeps only each parameter's partition (ds_tensor); p.data is empty between uses.
        params = [getattr(p, "ds_tensor", p) for p in module_params]
        base = self.optimizer.optimizer  # the client AdamW, stepping fp32 partitions
        masters = _zero_master_weights(self.optimizer)
        return HeldMemory(
            param_bytes=tensor_bytes(params),
            grad_bytes=self.grad_bytes,
            optimizer_state_bytes=tensor_bytes(optimizer_state_tensors(base)),
            master_weight_bytes=tensor_bytes(masters, exclude=params + module_params),
        )


def _zero_gradients(zero_optimizer) -> list[torch.Tensor]:
    """The gradients this rank holds after backward (DeepSpeed 0.19 internals): those of its
    partition, or with optimizer offload the fp32 partition's .grad in host memory."""
    averaged = getattr(zero_optimizer, "averaged_gradients", None) or {}
    grads = [g for group in averaged.values() if group for g in group if g is not None]
    if not grads:
        grads = [m.grad for m in _zero_master_weights(zero_optimizer) if m.grad is not None]
    return grads


def _zero_master_weights(zero_optimizer) -> list[torch.Tensor]:
    """The fp32 partitions DeepSpeed's optimizer updates (stage 1/2 and 3 name them apart)."""
    for name in ("single_partition_of_fp32_groups", "fp32_partitioned_groups_flat"):
        groups = getattr(zero_optimizer, name, None)
        if groups:
            return list(groups)
    return []


def zero_client_optimizer(model: nn.Module, cfg: RunConfig, device: torch.device):
    """torch AdamW, as in every layout; with the optimizer offloaded, DeepSpeed's CPU Adam
    (same hyperparameters): torch's AdamW stepping on the host is far slower (25M fp32 params,
    one thread of an AMD EPYC: 191 ms a step against 23 ms), so offload timings would measure
    torch's CPU loop rather than ZeRO-Offload.

    CPU Adam is a compiled op (JIT-built at first use when DeepSpeed was installed with
    DS_BUILD_OPS=0). If it cannot be built, a CUDA rank stops with the reason; a CPU rank (tests,
    dry runs) says so and falls back to torch AdamW.
    """
    reference = adamw(model, cfg.train, device)
    if not cfg.parallel.offload_optimizer:
        return reference
    hyper = reference.defaults
    try:
        from deepspeed.ops.adam import DeepSpeedCPUAdam  # zero* with offload only

        return DeepSpeedCPUAdam(
            model.parameters(),
            lr=hyper["lr"],
            betas=hyper["betas"],
            eps=hyper["eps"],
            weight_decay=hyper["weight_decay"],
            adamw_mode=True,  # decoupled weight decay, as torch AdamW
        )
    except Exception as exc:  # noqa: BLE001 - a failed JIT build raises many kinds
        reason = f"DeepSpeed's CPU Adam is not available ({type(exc).__name__}: {exc})"
        if device.type == "cuda":
            raise RuntimeError(
                f"parallel.offload_optimizer: {reason}; build it with DS_BUILD_CPU_ADAM=1 "
                "pip install deepspeed, or turn offload off"
            ) from exc
        if not dist.is_initialized() or dist.get_rank() == 0:
            print(
                f"warning: parallel.offload_optimizer: {reason}; torch AdamW steps on the CPU "
                "instead, so offload timings are not ZeRO-Offload's",
                flush=True,
            )
        return reference


def build_zero_layout(
    model: nn.Module,
    cfg: RunConfig,
    stage: int,
    precision: str,
    accum_steps: int,
    device: torch.device,
) -> DeepSpeedLayout:
    """deepspeed.initialize on the process group torchrun or the deepspeed launcher set up."""
    if not dist.is_initialized():
        raise RuntimeError(
            f"parallel=zero{stage} needs a process group: start the run with python -m launch"
        )
    if device.type == "cpu":
        # DeepSpeed picks its accelerator at import; on a CPU rank say so rather than let it
        # probe for GPUs (the launcher sets this too, a hand-started rank may not).
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    deepspeed = import_deepspeed()
    optimizer = zero_client_optimizer(model, cfg, device)
    config = deepspeed_config(cfg, stage, precision, cfg.train.micro_batch, accum_steps)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    if device.type == "cpu":
        unlink_shm_allreduce_name()
    return DeepSpeedLayout(engine, dp_rank=dist.get_rank(), dp_size=dist.get_world_size())


def unlink_shm_allreduce_name() -> None:
    """Remove this rank's shared-memory segment name once every rank has mapped it
    (train/files/shm_segments.py: DeepSpeed never does). Every rank maps every segment when its
    comm backend starts (shm_initialize, under deepspeed.initialize); after a barrier no rank
    opens one by name again, so the names can go and the mappings live until the processes
    exit, whatever way they exit. 15 GiB of leftover segments filled this project's 24 GiB
    test host on 2026-12-01."""
    dist.barrier()
    addr, port = os.environ.get("MASTER_ADDR", ""), os.environ.get("MASTER_PORT", "")
    allreduce_segment(addr, port, dist.get_rank()).unlink(missing_ok=True)
