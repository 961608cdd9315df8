"""profile.* checks (train/spec/rules.py) the driver and the rank share."""

from __future__ import annotations

from train.spec.config import ProfileConfig
from train.spec.config_error import ConfigError
from train.spec.rules import check_profile, profiled_ranks


def test_default_ranks_are_rank_zero_and_the_last():
    assert profiled_ranks(ProfileConfig(), 4) == [0, 3]
    assert profiled_ranks(ProfileConfig(), 1) == [0]
    assert profiled_ranks(ProfileConfig(ranks=[2, 2, 1]), 4) == [1, 2]


def profile_errors(profile: ProfileConfig, world: int, layout: str) -> list[tuple[str, str]]:
    try:
        check_profile(profile, world, layout)
    except ConfigError as exc:
        return [(exc.key, exc.message)]
    return []


def test_bad_profile_settings_name_their_key():
    assert profile_errors(ProfileConfig(enabled=True), 2, "ddp") == []
    assert profile_errors(ProfileConfig(enabled=False, steps=0), 2, "ddp") == []  # off: unused
    keys = [k for k, _ in profile_errors(ProfileConfig(enabled=True, steps=0), 2, "ddp")]
    assert keys == ["profile.steps"]
    ((key, reason),) = profile_errors(ProfileConfig(enabled=True, ranks=[0, 2]), 2, "ddp")
    assert key == "profile.ranks" and "[2]" in reason
    ((key, reason),) = profile_errors(ProfileConfig(twin=True), 4, "tp")
    assert key == "profile.twin" and "parallel=tp" in reason and "activations" in reason
    assert profile_errors(ProfileConfig(twin=True), 4, "fsdp") == []
