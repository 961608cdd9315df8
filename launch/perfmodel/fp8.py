"""What fp8 costs beside its matmuls: the casts into fp8, counted from the libraries' code.

An fp8 Linear (K inputs, N outputs) casts its input (K per token) and its output gradient
(N per token) every micro-step, and its weight (N x K) unless the weight arrives in fp8.
Casts per Linear and micro-step (torchao 0.18.0, float8/float8_linear.py
matmul_with_hp_or_float8_args): forward casts the input and the weight; backward casts the
output gradient for the input gradient and again for the weight gradient (rowwise: along the
other axis), and recasts the saved 16-bit input and weight. The weight-gradient GEMM takes
both operands in the other layout (float8_ops.preprocess_addmm: ``.contiguous()``).

Bytes per element, by how the run executes:
- torchao, eager: each cast is abs (read 2, write 2), max (read 2), the upcast to fp32 (read
  2, write 4), x scale (read 4, write 4), clamp (read 4, write 4), to fp8 (read 4, write 1)
  (float8_utils.tensor_to_amax, _ToFloat8ConstrFunc, to_fp8_saturated): 33 bytes, 6 kernels
  and 4 for the scalar scale; each layout copy reads 1 and writes 1. Per token: input
  2 x 33 + 2, output gradient 2 x 33 + 2; per weight element and micro-step 2 x 33 + 2.
- torchao under torch.compile (each block one graph; the runtime compiles the blocks of every
  torchao fp8 run on a GPU, train.compile or not: train/spec/precision.py compiles_blocks):
  AOT autograd's common-subexpression pass merges identical casts, so the input wq, wk and wv
  share is cast once, as is the one w1 and w3 share, and tensorwise's two output-gradient
  casts are one; inductor fuses each cast's scale-and-convert into the kernel that produces
  the tensor (its pointwise fusion), and the amax is one more reduction over it. A cast so
  costs the reduction's read (2) and the fp8 write (1 per layout): per token, each distinct
  input 3 forward and 3 again in backward, each output gradient 2 + 2 (both layouts; rowwise:
  two casts, 2 x 3); one reduction kernel per cast. A weight (no producer to fuse into) 5 per
  cast: 10 per element and micro-step.
- torchao with FSDP2's float8 all-gather (tensorwise; train/spec/precision.py
  gathers_weights_in_fp8): the weight arrives in fp8; FSDP's pre-gather hook casts the local
  fp32 shard at each gather, forward and backward (scale from the amaxes precomputed once per
  step: x scale, clamp, to fp8 = 8 + 8 + 5 = 21 bytes per fp32 element), and the gathered
  weight is copied into the input gradient's layout (2 bytes).
- Transformer Engine (transformer_engine/pytorch/module/linear.py; the runtime swaps in
  te.Linear, so nothing fuses with a norm): current scaling runs an amax kernel (read 2) and a
  cast-transpose writing both layouts (read 2, write 2): 6 bytes, 2 kernels; delayed scaling
  uses last step's amax and updates it inside the cast-transpose: 4 bytes, 1 kernel. The
  input's fp8 copy is saved for backward; the weight is cast every micro-step (the runtime
  passes no is_first_microbatch).
Under sequence parallelism torchao's float8 TP styles (train/parallel/tensor_parallel.py) cast
a column-parallel Linear's d-wide input before the all-gather, on the rank's 1/tp of the tokens.
A replayed (checkpointed) block casts its inputs and weights again, as its forward did.
The bytes stream at the part's achievable HBM rate with the other memory-bound work and the
kernels add the same launch gap each (compute.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from train.spec import shapes
from train.spec.config import ModelConfig, RunConfig
from train.spec.degrees import LayoutPlan
from train.spec.precision import (
    FP8_RECIPES,
    compiles_blocks,
    fp8_eligible,
    gathers_weights_in_fp8,
    tp_gathers_in_fp8,
)

# (bytes per 16-bit element, kernels) of one cast (module docstring).
TORCHAO_EAGER_CAST = (33, 10)
TORCHAO_FUSED_CAST = (3, 1)  # compiled: the amax's read and the fp8 write
TORCHAO_WEIGHT_CAST = (5, 2)  # compiled, a parameter: amax read, cast read and write
TE_CAST = {"current": (6, 2), "delayed": (4, 1)}
LAYOUT_COPY_BYTES = 2  # an fp8 tensor copied into the other layout: read 1, write 1
SHARD_CAST_BYTES = 21  # FSDP's pre-gather cast of an fp32 shard, scale precomputed
# Linears that read the same tensor (train/model/transformer.py): compiled, it is cast once.
SHARED_INPUT = {
    "attention.wq": "attention",
    "attention.wk": "attention",
    "attention.wv": "attention",
    "feed_forward.w1": "feed_forward",
    "feed_forward.w3": "feed_forward",
}
# The model cannot see the machine a projection is for: backend=auto is taken as torchao (the
# fp8 extra, pip install -e .[fp8]); a node with Transformer Engine runs TE instead.
PROJECTED_AUTO_BACKEND = "torchao"


def backend_and_recipe(cfg: RunConfig) -> tuple[str, str]:
    """The fp8 library and scaling recipe a projection takes for ``cfg``: precision.fp8's,
    backend=auto taken as PROJECTED_AUTO_BACKEND (a measured run's report puts the backend it
    resolved into the config: step.predict_run)."""
    fp8 = cfg.precision.fp8
    backend = str(fp8.backend)
    if backend == "auto":
        backend = PROJECTED_AUTO_BACKEND
    return backend, str(fp8.recipe) if fp8.recipe is not None else FP8_RECIPES[backend][0]


def projection_note(cfg: RunConfig) -> str:
    """What an fp8 projection assumed, for its precision reason."""
    backend, recipe = backend_and_recipe(cfg)
    auto = (
        " (backend=auto: a node with Transformer Engine runs TE)"
        if (str(cfg.precision.fp8.backend) == "auto")
        else ""
    )
    return (
        f"fp8 via {backend} {recipe}{auto}, Linears >= {cfg.precision.fp8.min_dim} wide, "
        "their casts counted (launch/perfmodel/fp8.py)"
    )


@dataclass(frozen=True)
class Fp8Casts:
    """How a run casts into fp8: its library, recipe and the layers it converts."""

    backend: str  # torchao | te
    recipe: str  # torchao: tensorwise | rowwise; te: current | delayed
    min_dim: int  # precision.fp8.min_dim: narrower Linears stay 16-bit
    compiled: bool  # the blocks are compiled (torchao's casts fuse; TE's kernels are its own)
    weights_gathered_in_fp8: bool  # torchao's float8 all-gather under FSDP2

    @classmethod
    def of_run(cls, cfg: RunConfig, plan: LayoutPlan) -> Fp8Casts:
        """``cfg``'s fp8 under ``plan``."""
        fp8 = cfg.precision.fp8
        backend, recipe = backend_and_recipe(cfg)
        return cls(
            backend=backend,
            recipe=recipe,
            min_dim=fp8.min_dim,
            # torchao's runs compile their blocks on a GPU whatever train.compile says.
            compiled=compiles_blocks(cfg.train.compile, backend, on_gpu=True),
            weights_gathered_in_fp8=gathers_weights_in_fp8(plan.row, backend, recipe),
        )

    @property
    def tp_gathers_in_fp8(self) -> bool:
        """torchao's float8 TP styles: fp8 sequence-parallel gathers (train/spec/traffic.py)."""
        return tp_gathers_in_fp8(self.backend, on_gpu=True)

    @property
    def amaxes_all_reduced(self) -> bool:
        """TE's delayed scaling all-reduces its amaxes every step (train/spec/traffic.py)."""
        return self.backend == "te" and self.recipe == "delayed"

    @property
    def fused(self) -> bool:
        """torchao under torch.compile: shared inputs cast once, casts fused into producers."""
        return self.backend == "torchao" and self.compiled

    def costs(self) -> _LinearCosts:
        """What one fp8 Linear's casts cost (module docstring)."""
        if self.backend == "te":  # the forward's fp8 input and weight serve backward
            cast = TE_CAST[self.recipe]
            return _LinearCosts(cast, (0, 0), cast, cast, (0, 0))
        if self.fused:
            cast = TORCHAO_FUSED_CAST
            grad = (cast[0] + 1, cast[1]) if self.recipe == "tensorwise" else _twice(cast)
            return _LinearCosts(cast, cast, grad, TORCHAO_WEIGHT_CAST, TORCHAO_WEIGHT_CAST)
        cast = TORCHAO_EAGER_CAST
        with_copy = (cast[0] + LAYOUT_COPY_BYTES, cast[1] + 1)
        grad = (2 * cast[0] + LAYOUT_COPY_BYTES, 2 * cast[1] + 1)
        return _LinearCosts(cast, with_copy, grad, cast, with_copy)


def _twice(cast: tuple[int, int]) -> tuple[int, int]:
    return 2 * cast[0], 2 * cast[1]


@dataclass(frozen=True)
class _LinearCosts:
    """(bytes per element, kernels) of one fp8 Linear's casts in a micro-step: of its input
    (per token) forward and backward, its output gradient (per token), its weight (a weight
    not gathered in fp8) forward and backward."""

    input_forward: tuple[int, int]
    input_backward: tuple[int, int]
    grad_output: tuple[int, int]
    weight_forward: tuple[int, int]
    weight_backward: tuple[int, int]


@dataclass(frozen=True)
class CastWork:
    """One step's fp8 casts on one rank."""

    nbytes: float
    kernels: int


def cast_work(
    casts: Fp8Casts,
    m: ModelConfig,
    plan: LayoutPlan,
    *,
    tokens: int,
    accum_steps: int,
    shard_ranks: int,
) -> CastWork:
    """The casts of one optimizer step: ``tokens`` on this rank over ``accum_steps``
    micro-steps, the weights sharded over ``shard_ranks`` (FSDP's pre-gather casts)."""
    full = shapes.block_linears(m)
    linears = [
        local
        for local, whole in zip(shapes.block_linears(m, plan.degrees.tp), full, strict=True)
        if fp8_eligible(whole.in_features, whole.out_features, casts.min_dim)
    ]
    if not linears:
        return CastWork(0.0, 0)
    cost = casts.costs()
    # Inputs cast: one per Linear, or compiled one per tensor the Linears read.
    inputs = {
        SHARED_INPUT.get(lin.name, lin.name) if casts.fused else lin.name: lin.in_features
        for lin in linears
    }
    # Under sequence parallelism torchao's float8 TP styles cast a column-parallel Linear's
    # input (d wide) before gathering it: on the rank's 1/tp of the tokens.
    sharded = plan.sequence_parallel and plan.degrees.tp > 1
    input_elements = sum(
        k / plan.degrees.tp if sharded and k == m.d_model else k for k in inputs.values()
    )
    output_elements = sum(lin.out_features for lin in linears)
    weights = sum(lin.params for lin in linears)
    forward = tokens * input_elements * cost.input_forward[0]
    backward = tokens * (
        input_elements * cost.input_backward[0] + output_elements * cost.grad_output[0]
    )
    kernels_forward = len(inputs) * cost.input_forward[1]
    kernels_backward = len(inputs) * cost.input_backward[1]
    kernels_backward += len(linears) * cost.grad_output[1]
    if casts.weights_gathered_in_fp8:  # the shard cast at each gather, the layout copy
        shard_cast = accum_steps * SHARD_CAST_BYTES * weights / max(1, shard_ranks)
        forward += shard_cast
        backward += shard_cast + accum_steps * LAYOUT_COPY_BYTES * weights
        kernels_backward += len(linears)
    else:
        forward += accum_steps * cost.weight_forward[0] * weights
        backward += accum_steps * cost.weight_backward[0] * weights
        kernels_forward += len(linears) * cost.weight_forward[1]
        kernels_backward += len(linears) * cost.weight_backward[1]
    n_ckpt = len(plan.checkpointed)
    nbytes = m.n_layers * (forward + backward) + n_ckpt * forward
    kernels = m.n_layers * (kernels_forward + kernels_backward) + n_ckpt * kernels_forward
    return CastWork(nbytes, kernels * accum_steps)
