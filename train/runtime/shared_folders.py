"""Whether the folders a multi-node run's ranks write into are one folder on every node.

Two folders must be: the checkpoint dir (every rank saves its shard there, rank 0 lists the
files it sees in complete.json, and a resume loads them all), and the run dir when profiling
(rank 0 reads every profiled rank's trace from it, unless rank 0 alone is profiled). A
node-local disk mounted at the same path passes every one-node run, then loses the other
nodes' files; and rank 0 need not be on the node the driver runs on (c10d numbers ranks in
the order the nodes join). So at start each node's first rank writes a token into each
folder and, once all have written, rank 0 looks for every node's token. Where one is missing
the run is refused on every rank, with the folder and the nodes it misses, before any model
is built.

Refused rather than collected per node: checkpoint shards spread over node-local disks can
be resumed by no run that lands on other nodes or joins them in another order, and rank 0
could not check them (complete.json) before saying a save was complete.
"""

from __future__ import annotations

import socket
import time
import uuid
from pathlib import Path

import torch.distributed as dist

from train.checkpoint.markers import checkpoint_root
from train.runtime.agreement import every_rank, rank_ranges
from train.spec.config import RunConfig
from train.spec.config_error import ConfigError

TOKEN = ".scaleprobe-node-{}"
# A network filesystem can show a file another client just wrote a moment late.
WAIT_S = 5.0
WHY = {
    "checkpoint.dir": "every rank saves its shard there and a resume loads them all",
    "run_dir": "rank 0 reads every profiled rank's trace from it (profile.enabled)",
}


def folders_to_share(cfg: RunConfig, run_dir: Path) -> dict[str, Path]:
    """The config key and path of each folder every node must see as one."""
    folders = {}
    if cfg.checkpoint.every > 0:
        folders["checkpoint.dir"] = checkpoint_root(cfg, run_dir)
    traced = cfg.profile.ranks if cfg.profile.ranks is not None else [0, -1]  # -1: the last
    if cfg.profile.enabled and any(rank != 0 for rank in traced):
        folders["run_dir"] = Path(run_dir)
    return folders


def check_shared_folders(
    folders: dict[str, Path], *, rank: int, local_rank: int, wait_s: float = WAIT_S
) -> None:
    """ConfigError on every rank when a folder is not the same on every node; collective.

    ``folders`` is this rank's view of them: the same paths on every rank of a real run.
    """
    if not folders or not (dist.is_initialized() and dist.get_world_size() > 1):
        return
    token = None
    if local_rank == 0:  # one writer per node
        token = TOKEN.format(f"{socket.gethostname()}-{uuid.uuid4().hex[:12]}")
        for folder in folders.values():
            folder.mkdir(parents=True, exist_ok=True)
            (folder / token).write_text(f"rank {rank}\n")
    written = every_rank((rank, socket.gethostname(), token))  # after every node has written
    verdict: list = [_missing(folders, written, wait_s) if rank == 0 else None]
    dist.broadcast_object_list(verdict, src=0)  # rank 0 has looked: the tokens may go
    if token is not None:
        for folder in folders.values():
            (folder / token).unlink(missing_ok=True)
    dist.barrier()  # no token outlives the check
    if verdict[0] is not None:
        raise ConfigError(*verdict[0])


def _missing(
    folders: dict[str, Path], written: list[tuple[int, str, str | None]], wait_s: float
) -> tuple[str, str] | None:
    """(key, message) for the first folder where rank 0 does not see every node's token."""
    writers = [(rank, host, token) for rank, host, token in written if token is not None]
    deadline = time.monotonic() + wait_s
    for key, folder in folders.items():
        unseen = writers
        while True:
            unseen = [w for w in unseen if not (folder / w[2]).exists()]
            if not unseen or time.monotonic() >= deadline:
                break
            time.sleep(0.1)
        if unseen:
            ranks = rank_ranges([rank for rank, _, _ in unseen])
            hosts = ", ".join(sorted({host for _, host, _ in unseen}))
            return key, (
                f"{folder} is not one folder on every node: rank 0 ({written[0][1]}) does not "
                f"see what the first rank of another node ({ranks} on {hosts}) wrote there; "
                f"a multi-node run needs {key} on a filesystem every node mounts (NFS, Lustre, "
                f"...): {WHY[key]}"
            )
    return None
