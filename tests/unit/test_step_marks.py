"""The step's trace marks: none on a timed step, the phases on a profiled one, and the profiled
window runs the loop's own step (train/runtime/rank_step.py, train/measure/profiling.py)."""

from __future__ import annotations

import torch
from torch.profiler import ProfilerActivity, profile

from tests.conftest import compose_run_config
from train.measure.bandwidth import Link, LinkRates
from train.measure.marks import no_marks, trace_marks
from train.measure.profiling import TimedBaseline, profile_after_timed
from train.model.transformer import Transformer
from train.parallel.layout import TorchLayout
from train.runtime.rank_step import train_step
from train.spec.config import ProfileConfig, RunConfig
from train.spec.degrees import Degrees
from train.spec.precision import PrecisionPlan

PHASES = {"forward", "backward", "optimizer"}


def one_rank_step(cfg: RunConfig):
    torch.manual_seed(0)
    model = Transformer(cfg.model)
    layout = TorchLayout(model, torch.optim.SGD(model.parameters(), lr=0.1), dp_rank=0, dp_size=1)
    tokens = torch.randint(0, cfg.model.vocab_size, (2, cfg.train.seq_len + 1))
    batches = [(tokens[:, :-1], tokens[:, 1:])]
    plan = PrecisionPlan("fp32", "fp32", "test")
    return lambda marks: train_step(
        layout, None, batches, 1, plan, torch.device("cpu"), 0.0, marks=marks
    )


def marked_names(step, marks) -> set[str]:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step(marks)
    return {e.name for e in prof.events()} & PHASES


def test_a_timed_step_records_no_marks_and_a_profiled_one_its_phases():
    step = one_rank_step(compose_run_config(["run_dir=/tmp/x", "train.seq_len=16"]))
    assert marked_names(step, no_marks) == set()
    assert marked_names(step, trace_marks) == PHASES


class RecordingSteps:
    """Stands in for RankSteps: notes what the profiler asks of the loop's step."""

    def __init__(self):
        self.calls: list[tuple] = []

    def draw(self, step: int):
        self.calls.append(("draw", step))
        return step

    def step(self, batches, *, sync: bool = True, marks=no_marks):
        self.calls.append(("step", batches, sync, marks))
        with marks("forward"):
            return torch.ones(())

    def reduce_loss(self, loss: torch.Tensor) -> float:
        self.calls.append(("reduce",))
        return float(loss)


def test_the_profiled_window_runs_the_given_step_with_trace_marks(tmp_path):
    steps = RecordingSteps()
    no_link = Link("loopback", None, "none")
    baseline = TimedBaseline(
        "ddp",
        timed_step_s=0.1,
        timed_loop_s=1.0,
        collectives=[],
        degrees=Degrees(1, 1, 1),
        nproc_per_node=1,
        links=LinkRates(no_link, no_link),
    )
    result = profile_after_timed(
        ProfileConfig(enabled=True, steps=2, twin=True),
        steps,
        baseline,
        rank=0,
        world_size=1,
        first_step=5,
        run_dir=tmp_path,
        device=torch.device("cpu"),
    )
    assert steps.calls == [
        ("draw", 5),
        ("step", 5, True, trace_marks),
        ("reduce",),
        ("draw", 6),
        ("step", 6, True, trace_marks),
        ("reduce",),
    ]
    assert (tmp_path / "trace_rank0.json.gz").is_file()
    assert result.profile["steps"] == 2 and result.profile["traces"] == ["trace_rank0.json.gz"]
    assert result.breakdown["twin"]["unavailable"] == "one rank: no sync to skip"
    assert result.achieved_bandwidth is None  # one rank: no collective to measure
