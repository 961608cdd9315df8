"""summary.json's ``achieved_bandwidth``: per collective kind, the bytes a rank moves per step
(train/spec/traffic.py ``step_collectives``) over the kind's measured busy time per step
(train/measure/trace_events.py ``comm_seconds_by_kind``), as nccl-tests' algbw and busbw, and
busbw as a fraction of the rate of the link the kind's group crossed.

A collective's group (the mesh dims it spans) decides both its bus factor (train/spec/bus.py)
and its link: a group whose ranks share a node runs over NVLink (GPU ranks) or loopback (CPU
ranks), a group spanning nodes over the NIC (or the emulated cluster's link). hsdp on 2 nodes
x 8: the replicas' all-reduce is a 2-rank group over the NIC, the reduce-scatter an 8-rank
group over NVLink. The trace gives one busy time per kind, not per group, so a kind issued in
several groups (tp_fsdp: TP's activations inside a node, FSDP's parameters across nodes)
lists each group with its share of the bytes and is compared with a link only where one link
carries (nearly) all of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from train.spec.bus import bus_factor
from train.spec.config import GpuConfig
from train.spec.degrees import Degrees
from train.spec.traffic import Collective

# The kinds with a bus factor (all_to_all: EP's, whose bytes are the EP group's mean per rank).
MEASURED_KINDS = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all")
# A group with under 1% of its kind's bytes (the gradient norm's 4) does not decide the link.
MINOR_SHARE = 0.01


@dataclass(frozen=True)
class Link:
    """A link collectives cross, its rate per direction."""

    name: str  # nvlink | pcie | loopback | nic | emulated
    gbytes_per_s: float | None  # None: no rate known
    source: str


@dataclass(frozen=True)
class LinkRates:
    """The link between the ranks of one node and the link between nodes."""

    intra_node: Link
    inter_node: Link

    def as_dict(self) -> dict:
        return {"intra_node": asdict(self.intra_node), "inter_node": asdict(self.inter_node)}


def link_rates(*, cluster_name: str, applied_link: dict | None, gpu: GpuConfig | None) -> LinkRates:
    """Both links of this run. ``gpu``: the GPU profile when the ranks run on GPUs, None for
    CPU ranks (gloo over loopback inside a node). ``applied_link``: the emulated cluster's."""
    if gpu is None:
        intra = Link("loopback", None, "CPU ranks: gloo over loopback, no rate known")
    elif gpu.nvlink_gbytes_per_s_bidir:
        rate = gpu.nvlink_gbytes_per_s_bidir / 2
        intra = Link("nvlink", rate, "gpu profile NVLink, per direction")
    else:
        intra = Link("pcie", None, f"gpu profile {gpu.name} has no NVLink rate")
    gbps = (applied_link or {}).get("gbps") if cluster_name == "emulated" else None
    if gbps:
        inter = Link("emulated", gbps / 8, f"emulated link ({gbps:g} Gbit/s, tc)")
    elif gpu is not None and gpu.nic_gbits_per_s_per_gpu:
        inter = Link("nic", gpu.nic_gbits_per_s_per_gpu / 8, "gpu profile NIC per GPU")
    else:
        inter = Link("nic", None, "no NIC rate known")
    return LinkRates(intra, inter)


@dataclass(frozen=True)
class GroupTraffic:
    """What one collective kind moves per step in one group, and over which link."""

    kind: str
    dims: tuple[str, ...]  # the mesh dims the group spans, those of degree 1 left out
    size: int  # ranks in the group
    ranks_per_node: int  # of those, how many share a node
    link: Link
    nbytes: int  # per rank per step: nccl-tests' size, summed over the step's calls

    @property
    def bus_bytes(self) -> float:
        return self.nbytes * bus_factor(self.kind, self.size)

    def as_dict(self, kind_bytes: int) -> dict:
        return {
            "dims": list(self.dims),
            "group_size": self.size,
            "ranks_per_node": self.ranks_per_node,
            "link": self.link.name,
            "bytes_per_step": self.nbytes,
            "share_of_bytes": self.nbytes / kind_bytes,
        }


def group_traffic(
    collectives: Sequence[Collective], *, degrees: Degrees, nproc_per_node: int, links: LinkRates
) -> list[GroupTraffic]:
    """The step's bytes per (kind, group), each group with its size and the link it crosses:
    inside a node when all its ranks share one, else across nodes."""
    totals: dict[tuple[str, tuple[str, ...]], int] = {}
    for c in collectives:
        # Dims of degree 1 change neither the group's ranks nor their spacing: drop them, so
        # WORLD and ("dp_shard",) on an fsdp mesh are one group.
        dims = tuple(dim for dim in c.group if degrees.size((dim,)) > 1)
        if c.kind in MEASURED_KINDS and dims and c.total_bytes:
            totals[(c.kind, dims)] = totals.get((c.kind, dims), 0) + c.total_bytes
    out = []
    # Per kind, the group carrying the most bytes first.
    for (kind, dims), nbytes in sorted(totals.items(), key=lambda item: (item[0][0], -item[1])):
        size = degrees.size(dims)
        per_node = degrees.ranks_per_node(dims, nproc_per_node)
        link = links.intra_node if per_node >= size else links.inter_node
        out.append(GroupTraffic(kind, dims, size, per_node, link, nbytes))
    return out


def achieved_bandwidth(
    seconds_by_kind: dict[int, dict[str, list[float]]],
    *,
    collectives: Sequence[Collective],
    degrees: Degrees,
    nproc_per_node: int,
    links: LinkRates,
) -> dict:
    """Per kind: bytes per step over its busy time per step (the median over the profiled
    steps and ranks of ``seconds_by_kind``: rank -> kind -> seconds per step).

    algbw = bytes / time; busbw = each group's bytes x its ring bus factor, over the time:
    the figure comparable with the link's rate. The time includes waiting for the slowest
    rank to arrive, so both are lower bounds on what the link carried while busy.
    """
    groups = group_traffic(collectives, degrees=degrees, nproc_per_node=nproc_per_node, links=links)
    kinds = {}
    for kind in MEASURED_KINDS:
        of_kind = [g for g in groups if g.kind == kind]
        seconds = _median_busy_seconds(kind, seconds_by_kind)
        if of_kind and seconds:
            kinds[kind] = _kind_record(of_kind, seconds)
    return {
        "kinds": kinds,
        "links": links.as_dict(),
        "note": "time per step is the collective's busy time on the gloo threads / NCCL "
        "kernels, waiting for peers included: a lower bound on the link's achieved rate",
    }


def _median_busy_seconds(kind: str, seconds_by_kind: dict[int, dict[str, list[float]]]):
    times = sorted(t for per_kind in seconds_by_kind.values() for t in per_kind.get(kind, []))
    times = [t for t in times if t > 0]
    return times[(len(times) - 1) // 2] if times else None


def _kind_record(groups: list[GroupTraffic], seconds: float) -> dict:
    nbytes = sum(g.nbytes for g in groups)
    busbw = sum(g.bus_bytes for g in groups) / seconds / 1e9
    main = max(groups, key=lambda g: g.nbytes)
    crossed = {g.link for g in groups if g.nbytes >= MINOR_SHARE * nbytes}
    link = main.link if len(crossed) == 1 else None
    record = {
        "bytes_per_step": nbytes,
        "seconds_per_step": seconds,
        "algbw_gbytes_per_s": nbytes / seconds / 1e9,
        "busbw_gbytes_per_s": busbw,
        "busbw_of_link": busbw / link.gbytes_per_s if link and link.gbytes_per_s else None,
        "group_size": main.size,  # of the group carrying the most bytes
        "link": link.name if link else "mixed",
        "groups": [g.as_dict(nbytes) for g in groups],
    }
    if len(groups) > 1:
        record["mixed_groups"] = (
            f"one busy time covers {len(groups)} groups (the trace does not say which group a "
            "collective served): busbw sums each group's bus bytes; group_size is the largest "
            "carrier's; busbw_of_link only where one link carries all but "
            f"{MINOR_SHARE:.0%} of the bytes"
        )
    return record
