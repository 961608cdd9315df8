"""Bad mixture-of-experts input through the driver's entry: one line naming the key, exit 2,
nothing written (issue 20)."""

from __future__ import annotations

import pytest

BAD_MOE = [
    (["model=moe_tiny", "parallel=ep", "model.top_k=9"], "model.top_k: 9: must be between 1"),
    (
        ["model=moe_tiny", "parallel=ep", "parallel.ep=2", "model.n_experts=3"],
        "parallel.ep: 2 does not divide model.n_experts 3",
    ),
    (["model=moe_tiny", "parallel=ep", "parallel.ep=3"], "parallel.ep: 3 does not divide the"),
    (["model=moe_tiny", "parallel=tp"], "parallel.name: model moe_tiny is a mixture of experts"),
    (["model=moe_tiny", "parallel=zero2"], "parallel.name: model moe_tiny is a mixture of"),
    (["model=tiny", "parallel=ep"], "parallel.name: parallel=ep splits the experts"),
    (
        ["model=moe_tiny", "parallel=ep", "model.route_groups=2", "model.route_max_nodes=3"],
        "model.route_max_nodes: 3: must be between 1 and model.route_groups 2",
    ),
    (["model=moe_tiny", "parallel=ep", "model.capacity_factor=0"], "model.capacity_factor: 0"),
    (["model=moe_tiny", "parallel=ep", "profile.twin=true"], "profile.twin: parallel=ep sends"),
]


@pytest.mark.parametrize("overrides, message", BAD_MOE, ids=[" ".join(o) for o, _ in BAD_MOE])
def test_bad_moe_input_is_one_line_and_exit_2(overrides, message, launch_in_process, tmp_path):
    result = launch_in_process("sweep=none", *overrides, f"run_dir={tmp_path / 'run'}")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {message}"), result.stderr
    assert not (tmp_path / "run").exists()
