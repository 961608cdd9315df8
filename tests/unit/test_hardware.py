from launch.conf_tree import load_gpu_profile
from launch.resolve import unknown_profile
from train.spec.devices import name_matches, profile_mismatch


def test_profile_mismatch_warnings():
    h100 = load_gpu_profile("h100_sxm")
    assert profile_mismatch(h100, "cuda", "NVIDIA H100 80GB HBM3") is None
    assert "the device is NVIDIA H800" in profile_mismatch(h100, "cuda", "NVIDIA H800")
    assert "this run is on CPU" in profile_mismatch(h100, "cpu", "AMD EPYC")
    assert profile_mismatch(load_gpu_profile("cpu"), "cpu", "AMD EPYC") is None
    assert "MFU is null" in profile_mismatch(unknown_profile("RTX 4090"), "cuda", "RTX 4090")


def test_names_match_whole_words_only():
    assert name_matches(["H20"], "NVIDIA H20")
    assert not name_matches(["H20"], "NVIDIA H200")
