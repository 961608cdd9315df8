"""The torch half of a run's numeric format (train/spec/precision.py decides it): autocast,
the TF32 switches, and the swap of eligible Linear layers to fp8 (Transformer Engine or
torchao)."""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from collections.abc import Callable

import torch
from torch import nn

from train.spec.precision import PrecisionPlan, fp8_eligible

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(plan: PrecisionPlan, device: torch.device) -> contextlib.AbstractContextManager:
    """The forward's context: autocast to the plan's dtype, and TE's fp8 autocast for TE."""
    stack = contextlib.ExitStack()
    if plan.autocast_dtype is not None:
        stack.enter_context(torch.autocast(device.type, dtype=DTYPES[plan.autocast_dtype]))
    if plan.fp8_backend == "te":
        stack.enter_context(te_autocast(plan.fp8_recipe))
    return stack


def apply_backend_flags(plan: PrecisionPlan) -> None:
    # Matmuls that stay in fp32 use TF32 tensor cores only when the plan allows it; fp32 runs
    # keep full precision as the correctness reference.
    torch.set_float32_matmul_precision("high" if plan.allow_tf32 else "highest")
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = plan.allow_tf32
        torch.backends.cudnn.allow_tf32 = plan.allow_tf32


def fp8_module_filter(min_dim: int) -> Callable[[nn.Module, str], bool]:
    """Which modules become fp8: eligible Linear layers, never the output head (its logits
    feed the loss, where fp8's error shows first)."""

    def keep(module: nn.Module, fqn: str) -> bool:
        return (
            isinstance(module, nn.Linear)
            and fqn.split(".")[-1] != "output"
            and fp8_eligible(module.in_features, module.out_features, min_dim)
        )

    return keep


def prepare_model(
    model: nn.Module,
    plan: PrecisionPlan,
    device: torch.device,
    *,
    fsdp_float8_all_gather: bool = False,
) -> nn.Module:
    """Swap eligible layers to fp8 before the model is wrapped for parallelism.

    ``fsdp_float8_all_gather`` (torchao, tensorwise, FSDP2): FSDP gathers those layers'
    weights in fp8 (train/parallel/build.py fsdp_float8_all_gather).
    """
    if plan.resolved != "fp8":
        return model
    keep = fp8_module_filter(plan.fp8_min_dim)
    if plan.fp8_backend == "torchao":
        # torchao: the fp8 extra, imported only by runs that use it.
        from torchao.float8 import Float8LinearConfig, convert_to_float8_training

        config = Float8LinearConfig.from_recipe_name(plan.fp8_recipe)
        if device.type != "cuda":
            config = dataclasses.replace(config, emulate=True)
        if fsdp_float8_all_gather:
            config = dataclasses.replace(config, enable_fsdp_float8_all_gather=True)
        return convert_to_float8_training(model, config=config, module_filter_fn=keep)
    return swap_to_te_linear(model, keep)


def fp8_linears_built(model: nn.Module) -> int:
    """Linear layers of ``model`` (a rank's, as its layout holds it) that run fp8: torchao's
    Float8Linear or Transformer Engine's Linear, prepare_model's swaps. What a run claiming fp8
    must have (an fp8 run with no fp8 layer would be bf16 under another name)."""
    te = sys.modules.get("transformer_engine.pytorch")  # loaded only by TE runs
    te_linear = getattr(te, "Linear", None)
    return sum(
        type(m).__name__ == "Float8Linear" or (te_linear is not None and isinstance(m, te_linear))
        for m in model.modules()
    )


def swap_to_te_linear(model: nn.Module, keep: Callable[[nn.Module, str], bool]) -> nn.Module:
    import transformer_engine.pytorch as te  # the te extra: only TE fp8 runs have it

    for fqn, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            child_fqn = f"{fqn}.{child_name}" if fqn else child_name
            if not keep(child, child_fqn):
                continue
            replacement = te.Linear(
                child.in_features,
                child.out_features,
                bias=False,
                params_dtype=child.weight.dtype,
                device=child.weight.device,
            )
            with torch.no_grad():
                replacement.weight.copy_(child.weight)
            setattr(module, child_name, replacement)
    return model


def te_autocast(recipe_name: str | None):
    # The te extra: only TE fp8 runs have it.
    import transformer_engine.pytorch as te
    from transformer_engine.common import recipe as te_recipe

    if recipe_name == "delayed":
        recipe = te_recipe.DelayedScaling()
    elif hasattr(te_recipe, "Float8CurrentScaling"):
        recipe = te_recipe.Float8CurrentScaling()
    else:  # an install older than the te extra's floor
        raise ImportError(
            "precision.fp8.recipe=current needs Transformer Engine >= 2.2 (Float8CurrentScaling), "
            f"this node has {_te_version()}: pip install -e .[te], "
            "or precision.fp8.recipe=delayed"
        )
    if hasattr(te, "autocast"):  # TE 2.x; fp8_autocast is deprecated there
        return te.autocast(enabled=True, recipe=recipe)
    return te.fp8_autocast(enabled=True, fp8_recipe=recipe)


def _te_version() -> str:
    import transformer_engine  # the te extra: imported already by its callers

    return getattr(transformer_engine, "__version__", "an older one")
