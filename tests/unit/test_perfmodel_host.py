"""The cpu profile's parts of the performance model against hand-computed values: gloo's
alpha-beta collectives (loopback, emulated link), the itemised micro-step over measured kernel
times, and the alpha-beta fit of launch.mamf's elementwise measurement."""

import dataclasses

import pytest
from omegaconf import OmegaConf

from launch.bench.cache import host_cache_path, save
from launch.bench.host_kernels import cache_run_kernels, fit_alpha_beta
from launch.perfmodel import compute, hardware, host
from launch.perfmodel.collectives import collective_time
from launch.perfmodel.hardware import part_rates
from launch.perfmodel.host import (
    HostRates,
    gemm_key,
    host_micro_step,
    host_workload,
    loss_key,
    overhead_key,
    sdpa_key,
    step_gemms,
)
from launch.perfmodel.step import predict_run
from launch.report.predicted import predicted_for
from tests.conftest import compose_run_config
from train.spec import shapes
from train.spec.degrees import Degrees, LayoutPlan
from train.spec.devices import cpu_model_name


def _cpu(*overrides: str):
    return compose_run_config(
        ["model=tiny", "gpu=cpu", "parallel=ddp", "run_dir=/unused", *overrides]
    )


def test_gloo_on_loopback_is_alpha_plus_bus_bytes_over_the_measured_busbw():
    rates = part_rates(_cpu().gpu, compute_tflops=0.1, precision="fp32")
    nbytes = 4 * 2**20
    alpha, busbw = hardware.GLOO_LOOPBACK["all_reduce"]
    # 2 ranks: all-reduce bus factor 2(n-1)/n = 1.
    expected = alpha + nbytes / (busbw * 1e9)
    got = collective_time("all_reduce", nbytes, 2, 2, rates)
    assert got.time_s == pytest.approx(expected)
    alpha, busbw = hardware.GLOO_LOOPBACK["all_gather"]
    got = collective_time("all_gather", nbytes, 2, 2, rates)
    assert got.time_s == pytest.approx(alpha + 0.5 * nbytes / (busbw * 1e9))


def test_gloo_across_the_emulated_link_runs_at_the_rate_times_tcp_goodput():
    rates = part_rates(_cpu().gpu, compute_tflops=0.1, precision="fp32", link_gbps=0.2)
    nbytes = 8 * 2**20
    link = 0.2e9 / 8 * 1448 / 1514  # 23.91 MB/s of payload through 25 MB/s of frames
    got = collective_time("all_reduce", nbytes, 2, 1, rates)
    assert got.time_s == pytest.approx(hardware.GLOO_EMULATED_ALPHA_S + nbytes / link)
    assert got.busbw_gbytes_per_s == pytest.approx(link / 1e9)


def _flat_host(flops: float, sdpa_s: float, latency: float) -> HostRates:
    return HostRates(
        gemm_s={},
        sdpa_s={"4x4x128x32": sdpa_s},
        kernel_latency_s=latency,
        memory_gbytes_per_s=10.0,
        matmul_flops=flops,
        source="test",
    )


def test_micro_step_sums_every_gemm_the_attention_and_the_kernels():
    m = _cpu().model  # tiny: d 128, 4 heads, 2 kv heads, ffn 384, vocab 2048, 4 layers
    rates = _flat_host(1e11, 2e-3, 5e-6)
    step = host_micro_step(m, rates, micro_batch=4, seq_len=128, tp=1, n_checkpointed=0)
    tokens = 512
    block = 128 * 128 * 2 + 128 * 64 * 2 + 3 * 128 * 384  # wq, wo, wk, wv, w1-3
    flops = 6 * tokens * (4 * block + 128 * 2048)  # three GEMMs of 2 M K N per Linear
    assert step.gemm_s == pytest.approx(flops / 1e11)
    assert step.attention_s == pytest.approx(4 * 2e-3)
    kernels = (host.FORWARD_KERNELS_PER_BLOCK + host.BACKWARD_KERNELS_PER_BLOCK) * 4
    assert step.kernels_s == pytest.approx(kernels * 5e-6)
    assert 0.3 < step.forward_share < 0.4  # a third of GEMMs, attention and kernels


def test_a_measured_shape_replaces_the_ceiling_and_tp_halves_the_block_shapes():
    m = _cpu().model
    shapes_tp2 = step_gemms(m, 512, 2)
    assert (512, 128, 64, "nt") in shapes_tp2  # wq's column shard forward: 4 heads x 32 / 2
    assert (512, 192, 128, "nt") in shapes_tp2  # w2's row shard forward: ffn 384 / 2
    assert (1024, 512, 128, "tn") in shapes_tp2  # the head's weight gradient: vocab-parallel
    assert (2048, 512, 128, "tn") not in shapes_tp2
    slow = HostRates({"512x128x64:nt": 1.0}, {}, 0.0, 10.0, 1e11, "test")
    assert slow.gemm_time(512, 128, 64, "nt") == 1.0
    # Another layout of the same shape is another kernel: not measured, the ceiling's.
    assert slow.gemm_time(512, 128, 64, "nn") == pytest.approx(2 * 512 * 128 * 64 / 1e11)


def test_gemms_are_measured_in_the_layouts_torchs_linear_runs_them():
    """y = x W^T reads the weight through a transposed view, dW = dy^T x the output
    gradient: host.GEMM_LAYOUTS, counted on a Linear's forward and backward."""
    import torch

    from launch.bench.host_kernels import measure_host
    from launch.perfmodel.host import GEMM_LAYOUTS, gemms_of_linear

    seen = []

    class Layouts(torch.utils._python_dispatch.TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten.mm.default:
                a, b = args
                layout = "tn"[a.is_contiguous()] + "tn"[b.is_contiguous()]  # contiguous: n
                seen.append((*a.shape, b.shape[1], layout))
            return func(*args, **(kwargs or {}))

    linear, x = torch.nn.Linear(16, 8, bias=False), torch.randn(4, 16, requires_grad=True)
    with Layouts():
        linear(x).backward(torch.randn(4, 8))
    assert sorted(seen) == sorted(gemms_of_linear(4, 16, 8))  # tokens, in, out
    assert sorted(layout for *_, layout in seen) == sorted(GEMM_LAYOUTS)
    record = measure_host([(8, 4, 16, "tn"), (4, 16, 8, "nt")], [])
    assert set(record["gemm_s"]) == {"8x4x16:tn", "4x16x8:nt"}


def test_cpu_compute_uses_the_host_measurement_when_given():
    cfg = _cpu("train.micro_batch=4", "train.seq_len=128", "train.global_batch=8")
    rates = _flat_host(1e11, 2e-3, 5e-6)
    with_host = predict_run(
        cfg,
        {"world_size": 2, "nproc_per_node": 2, "nodes": 1},
        compute_tflops=0.1,
        precision="fp32",
        host=rates,
    )
    step = host_micro_step(cfg.model, rates, micro_batch=4, seq_len=128, tp=1, n_checkpointed=0)
    assert with_host.compute.matmul_s == pytest.approx(step.gemm_s)
    assert with_host.compute.attention_s == pytest.approx(step.attention_s)
    assert with_host.compute.memory_s > step.kernels_s  # + optimizer kernels + streamed bytes


def test_a_measured_loss_and_fixed_cost_replace_the_head_bytes_and_the_kernel_count():
    """The loss (exp and log over the vocabulary) and the model's one-token forward +
    backward, where measured, stand in for the head's streamed bytes and for the counted
    elementwise kernels at `c = a + b`'s latency."""
    cfg = _cpu("train.micro_batch=4", "train.seq_len=128", "train.global_batch=8")
    m, ran = cfg.model, {"world_size": 1, "nproc_per_node": 1, "nodes": 1}
    counted = _flat_host(1e11, 2e-3, 5e-6)
    fixed = {"root_s": 0.5e-3, "per_block_s": 0.75e-3}  # 3.5 ms over the tiny model's 4 blocks
    measured = dataclasses.replace(
        counted, loss_s={loss_key(512, 2048): 4e-3}, overhead_s={overhead_key(m): fixed}
    )
    step = host_micro_step(m, measured, micro_batch=4, seq_len=128, tp=1, n_checkpointed=0)
    assert (step.kernels_s, step.loss_s) == (pytest.approx(3.5e-3), 4e-3)
    ckpt = host_micro_step(m, measured, micro_batch=4, seq_len=128, tp=1, n_checkpointed=4)
    forward_ops = host.FORWARD_KERNELS_PER_BLOCK / (
        host.FORWARD_KERNELS_PER_BLOCK + host.BACKWARD_KERNELS_PER_BLOCK
    )
    assert ckpt.kernels_s == pytest.approx(3.5e-3 + 4 * forward_ops * 0.75e-3)  # replays
    # A pipeline stage's two blocks without the head: their part only (the same key: the
    # model's op graph, whatever its block count).
    stage = dataclasses.replace(m, n_layers=2)
    first = host_micro_step(stage, measured, micro_batch=4, seq_len=128, tp=1, n_checkpointed=0,
                            head=False)  # fmt: skip
    assert (first.kernels_s, first.loss_s) == (pytest.approx(1.5e-3), None)

    def memory_s(rates: HostRates) -> float:
        given = dict(compute_tflops=0.1, precision="fp32", host=rates)
        return predict_run(cfg, ran, **given).compute.memory_s

    head_bytes = 512 * 2 * compute.HEAD_BYTES_PER_VOCAB * 2048  # 2 micro-steps of 512 tokens
    counted_kernels = host_micro_step(
        m, counted, micro_batch=4, seq_len=128, tp=1, n_checkpointed=0
    ).kernels_s
    expected = 2 * (3.5e-3 + 4e-3 - counted_kernels) - head_bytes / 10e9  # 2 micro-steps
    assert memory_s(measured) - memory_s(counted) == pytest.approx(expected)


def test_a_pipeline_stage_on_the_host_runs_its_own_parameters_and_the_head_if_last():
    """compute_time's stage arguments reach the cpu path: a stage holding fewer parameters
    streams fewer bytes, and one without the head runs neither its GEMMs nor the loss."""
    cfg = _cpu("parallel=pp", "train.micro_batch=4", "train.seq_len=128")
    m = cfg.model
    rates = dataclasses.replace(
        part_rates(cfg.gpu, compute_tflops=0.1, precision="fp32"),
        host=dataclasses.replace(_flat_host(1e11, 2e-3, 5e-6), loss_s={loss_key(512, 2048): 4e-3}),
    )
    plan = LayoutPlan("pp", Degrees(1, 1, 1, pp=2), False, [])

    def step(**stage) -> compute.ComputeTime:
        given = dict(micro_batch=4, seq_len=128, accum_steps=2, precision="fp32", rates=rates)
        return compute.compute_time(m, plan, **given, **stage)

    whole = step()
    half = step(stage_params=shapes.count_params(m) // 2)
    first = step(stage_params=shapes.count_params(m) // 2, head=False)
    assert half.memory_s < whole.memory_s
    head_gemms = 3 * 2 * 512 * 128 * 2048 / 1e11  # its three GEMMs at the ceiling, per micro-step
    assert half.matmul_s - first.matmul_s == pytest.approx(2 * head_gemms)
    assert half.memory_s - first.memory_s == pytest.approx(2 * 4e-3)  # the loss, 2 micro-steps


def test_a_pipelines_own_microbatch_is_measured_beside_the_runs_micro_batch():
    """parallel.pp_microbatches re-splits a rank's rows: its stages run the GEMMs, attention
    and loss at that size (pipelined.stage_steps), the single-device base at
    train.micro_batch; the workload asks for both, where it asked for the latter only and
    the stages' loss fell back to streamed bytes."""
    from launch.perfmodel.host import host_workload

    cfg = _cpu("parallel=pp", "train.micro_batch=1", "train.global_batch=8",
               "parallel.pp_microbatches=2", "train.seq_len=32")  # fmt: skip
    ddp = _cpu("parallel=ddp", "train.micro_batch=1", "train.seq_len=32")
    for run in (cfg, ddp):
        run.gpu.measured_peak_tflops.fp32 = 0.088  # as the driver fills it from launch.mamf
    ran = {"world_size": 2, "nproc_per_node": 2, "precision": {"resolved": "fp32"}}
    work = host_workload(cfg, ran)
    assert work.pipeline_rows == 4  # 8 rows over 2 microbatches
    assert work.losses() == [(32, cfg.model.vocab_size), (128, cfg.model.vocab_size)]
    plain = host_workload(ddp, ran)
    assert plain.pipeline_rows is None and len(plain.losses()) == 1


def test_a_failed_measurement_leaves_the_report_to_say_what_to_run(tmp_path, monkeypatch, capsys):
    """The measurement's child process can fail (or time out): the sweep's report still
    comes, the run's row naming the command, and one line says what failed."""
    from launch.bench import host_kernels

    monkeypatch.setenv("SCALEPROBE_CACHE_DIR", str(tmp_path / "cache"))
    cfg = _cpu("precision=fp32", "train.micro_batch=4", "train.seq_len=128")
    cfg.gpu.measured_peak_tflops.fp32 = 0.088
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    run = {
        "run_dir": str(tmp_path), "device_name": cpu_model_name(), "world_size": 1,
        "nproc_per_node": 1, "nodes": 1, "precision": {"resolved": "fp32"},
    }  # fmt: skip

    def crashed(work):
        raise RuntimeError("train.measure.fixed_cost failed: killed\nmore")

    monkeypatch.setattr(host_kernels, "ensure_host", crashed)
    assert host_kernels.cache_run_kernels([run]) == 0
    err = capsys.readouterr().err
    assert "kernel times failed: train.measure.fixed_cost failed: killed" in err
    assert "more" not in err


def test_alpha_beta_fit_recovers_latency_and_bandwidth():
    points = [(b, 3e-6 + b / 20e9) for b in (12, 12_288, 196_608, 1_572_864, 12_582_912)]
    alpha, beta = fit_alpha_beta(points)
    assert alpha == pytest.approx(3e-6, rel=1e-6)
    assert beta == pytest.approx(20e9, rel=1e-6)


def test_the_report_reads_kernel_times_and_never_measures_them(tmp_path, monkeypatch):
    """A cpu run whose shapes are not cached: the row says which command measures them and
    nothing is measured or written; once cached, the row is predicted from the cache."""
    monkeypatch.setenv("SCALEPROBE_CACHE_DIR", str(tmp_path / "cache"))
    cfg = _cpu(
        "precision=fp32",
        "parallel=tp",
        "train.micro_batch=4",
        "train.seq_len=128",
        "train.global_batch=8",
    )
    cfg.gpu.measured_peak_tflops.fp32 = 0.088  # as the driver fills it from launch.mamf
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    run = {
        "run_dir": str(tmp_path),
        "device_name": cpu_model_name(),  # ran here: the old report measured it itself
        "world_size": 2,
        "nproc_per_node": 2,
        "nodes": 1,
        "precision": {"resolved": "fp32"},
        "step_time_s": {"median": 0.2},
    }
    unmeasured = predicted_for(run)
    assert "launch.mamf --host-shapes" in unmeasured["unavailable"]
    other_host = {**run, "device_name": "Another CPU, not this host's"}
    assert cache_run_kernels([other_host]) == 0  # the driver measures only what ran here
    assert not (tmp_path / "cache").exists()

    work = host_workload(cfg, run)
    assert work.tps == (1, 2)  # its TP degree and the single-device base's
    record = {
        "gemm_s": {gemm_key(*g): 1e-4 for g in work.gemms()},
        "sdpa_s": {sdpa_key(*a): 1e-3 for a in work.attention()},
        "memory": {"kernel_latency_s": 5e-6, "gbytes_per_s": 10.0},
    }
    save(host_cache_path(run["device_name"], work.cpu_threads), record)
    # The loss at each vocabulary shard and the model's fixed cost are kernel times too.
    assert sorted(work.missing(record)) == sorted(
        [loss_key(512, 2048), loss_key(512, 1024), overhead_key(cfg.model)]
    )
    record["loss_s"] = {loss_key(*shape): 2e-3 for shape in work.losses()}
    record["overhead_s"] = {overhead_key(cfg.model): {"root_s": 1e-3, "per_block_s": 5e-4}}
    save(host_cache_path(run["device_name"], work.cpu_threads), record)
    predicted = predicted_for(run)
    assert "unavailable" not in predicted, predicted
    assert predicted["compute_s"] > 0
    assert predicted["measured_over_predicted"] == pytest.approx(0.2 / predicted["step_time_s"])
    # Ranks sharing cores (cluster.allow_oversubscribe): no prediction, and the reason.
    shared = predicted_for({**run, "cluster": {"oversubscribed": True}})
    assert shared["unavailable"].startswith("oversubscribed:")


def test_streamed_bytes_run_at_the_largest_copys_rate_not_the_cache_inflated_fit():
    memory = {
        "kernel_latency_s": 1e-6,
        "gbytes_per_s": 89.0,  # the fit, lifted by cache-resident sizes
        "points": [
            {"bytes": 1_572_864, "time_s": 1.7e-5},
            {"bytes": 50_331_648, "time_s": 1e-6 + 50_331_648 / 22e9},
        ],
    }
    assert host.streaming_gbytes_per_s(memory) == pytest.approx(22.0)
    assert host.streaming_gbytes_per_s({"kernel_latency_s": 0.0, "gbytes_per_s": 5.0}) == 5.0


def test_gemms_and_attention_are_timed_a_call_at_a_time_in_turn():
    """As a step runs them: each call after the others, never in a loop of its own (which
    keeps its operands in cache); at least HOST_REPEATS passes, at most ROUND_ROBIN_PASSES."""
    from launch.bench import host_kernels

    order = []
    calls = {key: (lambda key=key: order.append(key)) for key in ("a", "b", "c")}
    medians, spread = host_kernels._round_robin_medians(calls, seconds=0.0)
    assert set(medians) == set(spread) == {"a", "b", "c"}
    timed = order[6:]  # after the warm-up and the sizing pass
    assert timed == ["a", "b", "c"] * host_kernels.HOST_REPEATS
    order.clear()
    host_kernels._round_robin_medians(calls, seconds=10.0)
    assert len(order) == 3 * (2 + host_kernels.ROUND_ROBIN_PASSES)
