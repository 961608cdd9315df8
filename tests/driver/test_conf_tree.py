"""Every gpu x model x precision composes against the schema; the validator judges each."""

import copy
import itertools

import pytest

import launch.validate
from launch.conf_tree import group_choices, load_gpu_profile
from launch.errors import ConfigError
from launch.plan import plan_runs
from launch.validate import validate
from tests.conftest import compose_run_config
from train.spec.precision import fp8_linear_count

GPUS = [g for g in group_choices("gpu") if g != "auto"]
MODELS = group_choices("model")
PRECISIONS = group_choices("precision")


def test_the_groups_hold_the_documented_names():
    assert set(GPUS) == {
        "a100_40g",
        "a100_80g",
        "a800",
        "h100_sxm",
        "h100_hbm2e",
        "h100_pcie",
        "h800",
        "h800_pcie",
        "h20",
        "h200",
        "h200_nvl",
        "l40s",
        "cpu",
    }
    assert set(MODELS) == {
        "tiny",
        "gpt_125m",
        "gpt_350m",
        "gpt_1_3b",
        "llama_7b",
        "llama_13b",
        "llama_70b",
        "d4096_l4",
        "moe_tiny",
        "mixtral_8x7b",
        "olmoe_1b_7b",
        "deepseek_v2_lite_mha",
    }
    assert {"auto", "fp32", "tf32", "bf16"} <= set(PRECISIONS)


def test_every_combination_composes_and_validates(tmp_path, monkeypatch):
    # Hydra composes each group choice once against the schema (about 0.1 s each); every
    # combination is then put together from those typed nodes. The three groups refer
    # neither to each other nor to the rest (composing a choice resolves it), so this is what
    # Hydra's composition gives for the combination, without its 0.1 s per merge.
    base = compose_run_config([f"run_dir={tmp_path}", "sweep=none"])
    nodes = {
        group: {
            name: getattr(compose_run_config([f"{group}={name}", f"run_dir={tmp_path}"]), group)
            for name in names
        }
        for group, names in (("gpu", GPUS), ("model", MODELS), ("precision", PRECISIONS))
    }
    # The fp8 refusal lists the profiles with fp8 (each read from conf/gpu): read each once.
    profiles = {name: load_gpu_profile(name) for name in GPUS}
    monkeypatch.setattr(launch.validate, "load_gpu_profile", lambda n: copy.deepcopy(profiles[n]))
    for gpu, model, precision in itertools.product(GPUS, MODELS, PRECISIONS):
        cfg = copy.deepcopy(base)
        cfg.gpu, cfg.model, cfg.precision = (
            copy.deepcopy(nodes["gpu"][gpu]),
            copy.deepcopy(nodes["model"][model]),
            copy.deepcopy(nodes["precision"][precision]),
        )
        assert (cfg.gpu.name, cfg.model.name, cfg.precision.name) == (gpu, model, precision)
        if precision == "fp8" and not cfg.gpu.fp8:
            with pytest.raises(ConfigError, match="^precision: fp8 needs FP8 tensor cores"):
                validate(cfg, plan_runs(cfg))
            continue
        if precision == "fp8" and not fp8_linear_count(cfg.model, cfg.precision.fp8.min_dim):
            # No layer wide enough: a run labelled fp8 would be bf16 throughout.
            with pytest.raises(ConfigError, match="^precision.fp8.min_dim: no Linear layer"):
                validate(cfg, plan_runs(cfg))
            continue
        try:
            validate(cfg, plan_runs(cfg))
        except ConfigError as exc:
            # 7B+ held whole by every rank (ddp) can exceed a part's memory: refused early.
            big = model.startswith(("llama", "mixtral", "olmoe", "deepseek"))
            # parallel=auto (the default) says what the smallest layout would need.
            too_big = " GB per rank in parameters" in str(exc) or " GiB per rank" in str(exc)
            # CPU ranks share this host's memory: what fits depends on the machine.
            host = gpu == "cpu" and "rank(s) on this host" in str(exc)
            assert (big and too_big) or host, exc
            continue
        # The same combination with a sequence longer than the model allows is refused.
        cfg.train.seq_len = cfg.model.max_seq_len + 1
        with pytest.raises(ConfigError, match="^train.seq_len: "):
            validate(cfg, plan_runs(cfg))


def test_profiles_carry_sourced_numbers():
    h100, h800 = load_gpu_profile("h100_sxm"), load_gpu_profile("h800")
    # Export-restricted: same compute, NVLink cut from 900 to 400 GB/s.
    assert h800.peak_tflops.bf16 == h100.peak_tflops.bf16 == 989.4
    assert (h100.nvlink_gbytes_per_s_bidir, h800.nvlink_gbytes_per_s_bidir) == (900, 400)
    assert load_gpu_profile("a800").nvlink_gbytes_per_s_bidir == 400
    assert h100.verified and not h800.verified
    for name in GPUS:
        assert load_gpu_profile(name).source, name
    # The CPU's peak is measured or null, never invented.
    assert load_gpu_profile("cpu").peak_tflops.bf16 is None


def test_model_shapes_are_the_published_ones():
    cfg = compose_run_config(["model=llama_70b", "run_dir=/tmp/x"])
    m = cfg.model
    assert (m.n_layers, m.d_model, m.n_heads, m.n_kv_heads, m.ffn_hidden) == (
        80,
        8192,
        64,
        8,
        28672,
    )
