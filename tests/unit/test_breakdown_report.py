"""The report's "Where the time went" section from fixed summaries."""

from __future__ import annotations

import pytest

from launch.report.breakdown import breakdown_rows, plot_breakdown, where_the_time_went


def trace(step, compute, exposed):
    return {
        "method": "trace",
        "step_s": step,
        "compute_s": compute,
        "comm_s": exposed,
        "overlapped_comm_s": 0.0,
        "exposed_comm_s": exposed,
        "idle_s": step - compute - exposed,
    }


def twin(step, twin_step):
    return {
        "method": "twin",
        "step_s": step,
        "twin_step_s": twin_step,
        "exposed_comm_s": max(0.0, step - twin_step),
    }


def run(world, median, breakdown, tokens=1000):
    return {
        "series": "cpu · tiny · ddp",
        "run_name": f"ws{world}",
        "world_size": world,
        "tokens_per_step": tokens * world,  # weak scaling: same work per rank
        "step_time_s": {"median": median},
        "breakdown": breakdown,
    }


def test_labels_and_rules_with_both_methods_side_by_side():
    runs = [
        run(1, 0.10, {}),
        # 20 Mbit/s-like: 70% of the step exposed; twin agrees (0.70 vs 0.69 s).
        run(2, 1.00, {"trace": trace(1.0, 0.25, 0.70), "twin": twin(1.0, 0.31)}),
        # loopback-like, but the twin step is 0.16 s against a 0.10 s 1-rank step: contention.
        run(4, 0.20, {"trace": trace(0.2, 0.17, 0.02), "twin": twin(0.2, 0.16)}),
    ]
    rows = {(r["world_size"], r["method"]): r for r in breakdown_rows(runs)}
    assert rows[(1, None)]["unavailable"].startswith("not profiled")
    two = rows[(2, "trace")]
    assert two["label"] == "interconnect-bound" and "70%" in two["rule"] and "≥ 30%" in two["rule"]
    assert two["agree"] is True
    assert rows[(2, "twin")]["exposed"] == pytest.approx(0.69)
    four = rows[(4, "trace")]
    assert four["contention"] == pytest.approx(0.3)  # (0.16 - 0.10) / 0.20
    assert four["label"] == "contention-bound"
    assert four["agree"] is False  # 0.02 vs 0.04 s
    text = "\n".join(where_the_time_went(runs))
    assert "## Where the time went" in text
    assert "| cpu · tiny · ddp | 2 | trace | 1.0000 | 25% | 70% | 5% |" in text
    assert "(compute + other, not split)" in text
    assert "interconnect-bound when exposed comm ≥ 30%" in text


def test_compute_bound_without_a_one_rank_run():
    rows = breakdown_rows([run(2, 0.2, {"trace": trace(0.2, 0.18, 0.01)})])
    assert rows[0]["label"] == "compute-bound" and rows[0]["contention"] is None
    assert rows[0]["agree"] is None  # one method only


def test_unparsable_breakdown_says_why_and_makes_up_no_share(tmp_path):
    broken = {
        "trace": {"method": "trace", "unavailable": "trace_rank0.json.gz: cannot parse"},
        "twin": {"method": "twin", "step_s": "fast"},
    }
    lines = where_the_time_went([run(2, 0.2, broken)])
    text = "\n".join(lines)
    assert "breakdown unavailable (trace_rank0.json.gz: cannot parse)" in text
    assert "breakdown unavailable (step_s is 'fast')" in text
    assert "%" not in "".join(line for line in lines if line.startswith("| cpu"))
    assert plot_breakdown(breakdown_rows([run(2, 0.2, broken)]), tmp_path / "b.png") is None


def test_plot_writes_a_stacked_bar_per_world_size(tmp_path):
    runs = [run(2, 1.0, {"trace": trace(1.0, 0.25, 0.70), "twin": twin(1.0, 0.31)})]
    path = plot_breakdown(breakdown_rows(runs), tmp_path / "breakdown.png")
    assert path.is_file() and path.stat().st_size > 1000
