"""``python -m train.measure.fixed_cost``: what the cpu profile's host model cannot count, timed
on the runtime's own code (launch/bench/host_kernels.py runs it in a child process, since the
driver does not import torch or the model until it measures).

Reads JSON on stdin: ``{"threads": n, "models": [ModelConfig fields, ...]}``; prints
``{"models": [seconds, ...]}``: each model's forward + backward at one token
(train/model/transformer.py, fp32, the runtime's loss included). The driver sends narrow
copies (launch/perfmodel/host.py narrow_model), where every op runs and none has work to do:
dispatch, autograd's nodes, allocations, view ops, which a micro-step pays whatever its size.
Each is the median of single calls timed in round-robin passes, after a warm-up call.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable

import torch
from omegaconf import OmegaConf

from train.model.transformer import Transformer
from train.spec.config import ModelConfig

PASSES = 20


def _one_token(cfg: ModelConfig) -> Callable[[], None]:
    net, token = Transformer(cfg, seed=0), torch.zeros(1, 1, dtype=torch.long)

    def call() -> None:
        net(token, token).backward()
        net.zero_grad(set_to_none=True)  # as the training loop does: .grad is not accumulated

    return call


def measure(request: dict) -> dict:
    torch.set_num_threads(int(request.get("threads", 1)))
    models = [
        OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), fields))
        for fields in request.get("models", [])
    ]
    calls = [_one_token(m) for m in models]
    for call in calls:
        call()  # warm: first-call allocations and kernel selection
    samples = [[] for _ in calls]
    for _ in range(PASSES):
        for call, times in zip(calls, samples, strict=True):
            started = time.perf_counter()
            call()
            times.append(time.perf_counter() - started)
    medians = [statistics.median(times) for times in samples]
    return {"models": medians}


def main() -> int:
    print(json.dumps(measure(json.load(sys.stdin))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
