import pytest

from launch.resolve import match_profile, unknown_profile


@pytest.mark.parametrize(
    "device_name, memory_gib, profile",
    [
        ("NVIDIA H100 80GB HBM3", 79.1, "h100_sxm"),
        ("NVIDIA H100 PCIe", 79.6, "h100_pcie"),
        ("NVIDIA H800", 79.3, "h800"),
        ("NVIDIA H200", 139.8, "h200"),
        # Other parts with other peaks must not borrow the SXM profiles (issue 13, item 13).
        ("NVIDIA H800 PCIe", 79.6, "h800_pcie"),
        ("NVIDIA H200 NVL", 139.8, "h200_nvl"),
        ("NVIDIA H20", 95.0, "h20"),
        ("NVIDIA A100-SXM4-40GB", 39.4, "a100_40g"),
        ("NVIDIA A100-SXM4-80GB", 79.2, "a100_80g"),
        ("NVIDIA A800-SXM4-80GB", 79.2, "a800"),
        ("NVIDIA L40S", 44.5, "l40s"),
        ("NVIDIA GeForce RTX 4090", 23.6, None),
    ],
)
def test_device_names_map_to_profiles(device_name, memory_gib, profile):
    assert match_profile(device_name, memory_gib) == profile


def test_an_unknown_device_has_no_peak():
    profile = unknown_profile("NVIDIA GeForce RTX 4090")
    assert profile.peak_tflops.bf16 is None and profile.name == "unknown"
