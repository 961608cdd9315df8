"""Parallel layouts: how the model, its gradients and its optimizer state spread over ranks.

One module per job: ``degrees`` (world = dp_replicate x dp_shard x tp, shared with the driver's
validation), ``mesh`` (the device mesh), ``tensor_parallel``, ``fsdp``, ``ddp``, ``zero``
(DeepSpeed), ``checkpointing`` (activation checkpointing), ``layout`` (what the training loop
talks to) and ``build`` (which of them a config asks for). Nothing is imported here, so the
driver can read ``degrees`` without loading torch.distributed machinery or DeepSpeed.
"""
