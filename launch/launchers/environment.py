"""The variables every rank of a run gets, whichever launcher starts it."""

from __future__ import annotations

from launch.cluster.fabric import fabric_environment
from train.spec.config import RunConfig


def rank_environment(cfg: RunConfig) -> dict[str, str]:
    env = {"PYTHONUNBUFFERED": "1"}
    if cfg.gpu.name == "cpu":
        # A CPU rank stands for one device: a fixed thread count keeps per-device work equal
        # across world sizes instead of splitting the cores among however many ranks run.
        env["OMP_NUM_THREADS"] = str(cfg.cluster.cpu_threads_per_rank)
    if cfg.cluster.max_restarts > 0:
        # pytorch#135712: the agent shares its rendezvous TCPStore with the workers, so after a
        # restart the new workers find the failed attempt's keys and hang or fail. A store of
        # their own per attempt (not shared) makes restarts work (tests/test_restart.py).
        env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] = "1"
    env.update(fabric_environment(cfg.fabric))
    return env
