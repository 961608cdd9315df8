"""Tensor parallelism as Megatron-LM and torchtitan run it, on DTensor.

Every parameter of a TP model becomes a DTensor on the TP mesh, so fused AdamW, gradient
clipping and the loss scaler see one kind of tensor:

- blocks: wq/wk/wv and w1/w3 column-wise (each rank computes its own heads / its slice of the
  MLP width, no communication), wo and w2 row-wise (each rank holds a partial sum of the block
  output, reduced after them);
- vocabulary: the embedding row-wise over the vocabulary (each rank looks up the tokens in its
  rows, the partial sums reduced like a row-wise matmul's output) and the head column-wise
  over it (each rank computes its vocab/tp logits); the loss runs on those sharded logits
  (``loss_parallel``: log-softmax from all-reduced max and sum, no gather of the logits). A
  tied embedding/head matrix is sharded the same way (rows of the vocabulary) on both sides
  and stays one parameter;
- norms: replicated DTensors without sequence parallelism; with it (the default under TP:
  parallel.sequence_parallel) the norms and the residual stream between the matmul groups
  are split along the sequence (Korthikanti et al. 2022), every all-reduce becomes a
  reduce-scatter + all-gather pair, and the norm weights' gradients, partial per rank, are
  all-reduced once per step (train/parallel/layout.py).

With torchao fp8 (tensorwise), the fp8 linears take torchao's float8 TP styles, which cast to
fp8 before the all-gathers (torchtitan's float8 TP). The collectives each plan issues are
itemised in train/spec/traffic.py.
"""

from __future__ import annotations

from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_module
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    ParallelStyle,
    PrepareModuleInput,
    RowwiseParallel,
    SequenceParallel,
    parallelize_module,
)


class ReplicateParallel(ParallelStyle):
    """A module whose parameters are replicated on the TP mesh (DTensors, Replicate), taking
    and returning plain local tensors: the norms without sequence parallelism. Each rank
    computes the same values and the same gradients, so nothing is reduced."""

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        return distribute_module(module, device_mesh, None, _to_replicated, _to_local)


def _to_replicated(module, inputs, mesh):
    return tuple(
        DTensor.from_local(x, mesh, (Replicate(),), run_check=False)
        if hasattr(x, "shape") and not isinstance(x, DTensor)
        else x
        for x in inputs
    )


def _to_local(module, outputs, mesh):
    return outputs.to_local() if isinstance(outputs, DTensor) else outputs


class _Styles:
    """The column/row-wise styles and the input preparation for one module: torchao's float8
    ones for fp8 linears (tensorwise), torch's for the rest."""

    def __init__(self, float8: bool):
        self.float8 = float8
        if float8:
            # torchao: the fp8 extra; only fp8 runs under TP reach this.
            from torchao.float8.float8_tensor_parallel import (
                Float8ColwiseParallel,
                Float8RowwiseParallel,
                PrepareFloat8ModuleInput,
            )

            self._fp8 = (Float8ColwiseParallel, Float8RowwiseParallel, PrepareFloat8ModuleInput)

    def _fp8_module(self, module: nn.Module) -> bool:
        return self.float8 and type(module).__name__ == "Float8Linear"

    def colwise(self, linear: nn.Module) -> ParallelStyle:
        return self._fp8[0]() if self._fp8_module(linear) else ColwiseParallel()

    def rowwise(self, linear: nn.Module, output) -> ParallelStyle:
        style = self._fp8[1] if self._fp8_module(linear) else RowwiseParallel
        return style(output_layouts=output)

    def prepare(self, linears: list[nn.Module], stream, other_inputs: int) -> ParallelStyle:
        """The first input of a module whose column-wise linears share it (wq/wk/wv, w1/w3),
        made whole; cast to fp8 once before its all-gather when every one of them is fp8.
        ``other_inputs`` (the rope tables) pass untouched."""
        style = self._fp8[2] if all(map(self._fp8_module, linears)) else PrepareModuleInput
        return style(
            input_layouts=(stream, *[None] * other_inputs),
            desired_input_layouts=(Replicate(), *[None] * other_inputs),
        )


def block_plan(block: nn.Module, sequence_parallel: bool, *, float8: bool = False) -> dict:
    """The plan for one TransformerBlock, keyed by the module names in
    train/model/transformer.py."""
    styles = _Styles(float8)
    # Between the matmul groups the residual stream is whole (Replicate) or split along the
    # sequence (Shard(1)).
    stream = Shard(1) if sequence_parallel else Replicate()
    attention, mlp = block.attention, block.feed_forward
    norm = SequenceParallel if sequence_parallel else ReplicateParallel
    return {
        "attention_norm": norm(),
        # (x, cos, sin): x made whole and replicated; the rope tables untouched.
        "attention": styles.prepare([attention.wq, attention.wk, attention.wv], stream, 2),
        "attention.wq": styles.colwise(attention.wq),
        "attention.wk": styles.colwise(attention.wk),
        "attention.wv": styles.colwise(attention.wv),
        "attention.wo": styles.rowwise(attention.wo, stream),
        "ffn_norm": norm(),
        "feed_forward": styles.prepare([mlp.w1, mlp.w3], stream, 0),
        "feed_forward.w1": styles.colwise(mlp.w1),
        "feed_forward.w3": styles.colwise(mlp.w3),
        "feed_forward.w2": styles.rowwise(mlp.w2, stream),
    }


def apply_tensor_parallel(
    model: nn.Module,
    tp_mesh: DeviceMesh,
    *,
    sequence_parallel: bool,
    float8: bool = False,
    local_logits: bool = False,
) -> None:
    """Shard ``model`` (a train.model.transformer.Transformer, or a pipeline stage of one:
    train/parallel/pipeline_stages.py TransformerStage, whose embedding, final norm and head
    may be None) in place over ``tp_mesh``. ``float8``: torchao fp8 (tensorwise) linears take
    torchao's float8 TP styles. ``local_logits``: the head returns this rank's vocab/tp
    logits as a plain tensor (a pipeline's last stage, whose schedule passes plain tensors;
    its loss wraps them back: pipeline_stages.vocab_parallel_loss)."""
    layers = model.layers.values() if isinstance(model.layers, nn.ModuleDict) else model.layers
    for block in layers:
        plan = block_plan(block, sequence_parallel, float8=float8)
        parallelize_module(block, tp_mesh, plan)
    stream = Shard(1) if sequence_parallel else Replicate()
    root = {
        # Token ids are whole on every rank; each rank holds vocab/tp rows.
        "tok_embeddings": RowwiseParallel(input_layouts=Replicate(), output_layouts=stream),
        "norm": SequenceParallel() if sequence_parallel else ReplicateParallel(),
        # Logits stay sharded over the vocabulary for the loss (loss_parallel).
        "output": ColwiseParallel(
            input_layouts=stream, output_layouts=Shard(-1), use_local_output=local_logits
        ),
    }
    present = {name: style for name, style in root.items() if getattr(model, name) is not None}
    tied = len(present) == len(root) and model.output.weight is model.tok_embeddings.weight
    if present:
        parallelize_module(model, tp_mesh, present)
    if tied:
        # Each style made its own DTensor of the shared matrix; both shard the vocabulary
        # rows on the same mesh, so one of them serves both modules.
        model.output.weight = model.tok_embeddings.weight


def shard_embedding_gradient(model: nn.Module) -> None:
    """Keep the row-wise embedding's weight gradient at its parameter's Shard placement.

    DTensor's embedding backward (torch 2.13) leaves it Replicate: the whole vocabulary x d
    matrix on every TP rank, tp times its shard, held through the accumulation and the step
    (measured: a 2-rank tp run held 3.15 MB of gradients for 2.63 MB of parameters, the
    difference the embedding's other half). Each accumulated gradient is cut to this rank's
    rows as it lands (a local slice, copied so that the whole matrix is freed). For layouts
    whose parameters are a TP rank's own (tp, pp); FSDP2 brings its unsharded gradients to
    the parameters' placement itself when it reduces them."""
    embedding = getattr(model, "tok_embeddings", None)
    if embedding is None:
        return

    def shard(param: nn.Parameter) -> None:
        grad = param.grad
        if isinstance(grad, DTensor) and grad.placements != param.placements:
            local = grad.redistribute(placements=param.placements).to_local()
            param.grad = DTensor.from_local(
                local.clone(), param.device_mesh, param.placements, run_check=False
            )

    embedding.weight.register_post_accumulate_grad_hook(shard)
