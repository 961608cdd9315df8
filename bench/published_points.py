"""The performance model against published measurements: every point's source, config, published
figure, predicted figure and ratio, and the mean absolute error per split. Regenerates the
"Predicted vs published" tables of docs/performance-model.md from the numbers written below.

    python bench/published_points.py                 # print the tables (markdown)
    python bench/published_points.py --write         # rewrite them in docs/performance-model.md

Pure arithmetic (no torch, no GPU). Each point carries the split it belongs to:

- ``check``: read while the model was built, to see that it worked;
- ``held-out``: kept aside and computed once the model was settled.

No constant of launch/perfmodel/ is fitted to either: every one has its own source
(docs/performance-model.md "Constants and their sources"). A published run is predicted as
this project would run the same configuration (its transformer, its FSDP2 / DTensor layouts,
eager PyTorch): where the published stack differs (MPT's GELU MLP, torch.compile, fused
kernels), the point says how it was mapped, and points the project cannot express are left
out with the reason.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import functools
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from omegaconf import OmegaConf  # noqa: E402

from launch.conf_tree import load_gpu_profile  # noqa: E402
from launch.perfmodel.collectives import CollectiveTime, collective_time  # noqa: E402
from launch.perfmodel.compute import Kernels  # noqa: E402
from launch.perfmodel.hardware import part_rates  # noqa: E402
from launch.perfmodel.memory import activation_bytes  # noqa: E402
from launch.perfmodel.step import Placement, predict  # noqa: E402
from train.spec import shapes  # noqa: E402
from train.spec.config import Fp8Backend, Fp8Recipe, ModelConfig, RunConfig  # noqa: E402
from train.spec.config_error import ConfigError  # noqa: E402
from train.spec.degrees import plan_layout  # noqa: E402
from train.spec.precision import SIXTEEN_BIT  # noqa: E402
from train.spec.rules import check_run  # noqa: E402

DOCS = REPO / "docs" / "performance-model.md"
GIB = 2**30

# -- models -----------------------------------------------------------------------------------


def _mpt(name: str, d: int, layers: int, heads: int) -> ModelConfig:
    """An MPT of llm-foundry's benchmark yamls as this project's transformer: the same width,
    depth, heads, vocabulary (50368, tied); MPT's GELU MLP of 4d (8 d^2 parameters) as a SwiGLU
    of 8d/3 (the same parameters and FLOPs), rounded up to a multiple of 256 as
    conf/model/gpt_1_3b.yaml is (so TP degrees divide it)."""
    return ModelConfig(
        name=name,
        n_layers=layers,
        d_model=d,
        n_heads=heads,
        n_kv_heads=heads,
        ffn_hidden=-(-8 * d // (3 * 256)) * 256,
        vocab_size=50368,
        max_seq_len=65536,  # llm-foundry's sweep runs them to 65536 tokens
        tie_embeddings=True,
    )


def _megatron(name: str, d: int, layers: int, heads: int) -> ModelConfig:
    """A GPT of Megatron-LM's 2021 weak-scaling table (vocabulary 51200, tied, GELU 4d as a
    SwiGLU of 8d/3)."""
    return dataclasses.replace(_mpt(name, d, layers, heads), vocab_size=51200, max_seq_len=2048)


def _llama(name: str, d, layers, heads, kv, ffn, vocab) -> ModelConfig:
    return ModelConfig(
        name=name,
        n_layers=layers,
        d_model=d,
        n_heads=heads,
        n_kv_heads=kv,
        ffn_hidden=ffn,
        vocab_size=vocab,
        max_seq_len=8192,
    )


# MPT shapes: llm-foundry scripts/train/yamls/pretrain/mpt-*.yaml (b2a43a1, the benchmark
# sweep's yamls). Until 2026-11-30 mpt-30b had 64 heads (its yaml: 56); heads do not change
# the model's FLOPs or bytes (n_heads x head_dim = d), so no prediction moved.
MODELS = {
    "mpt-125m": _mpt("mpt-125m", 768, 12, 12),
    "mpt-350m": _mpt("mpt-350m", 1024, 24, 16),
    "mpt-760m": _mpt("mpt-760m", 1536, 24, 12),
    "mpt-1b": _mpt("mpt-1b", 2048, 24, 16),
    "mpt-3b": _mpt("mpt-3b", 2560, 32, 20),
    "mpt-7b": _mpt("mpt-7b", 4096, 32, 32),
    "mpt-13b": _mpt("mpt-13b", 5120, 40, 40),
    "mpt-30b": _mpt("mpt-30b", 7168, 48, 56),
    "mpt-70b": _mpt("mpt-70b", 8192, 80, 64),
    "llama2-13b": _llama("llama2-13b", 5120, 40, 40, 40, 13824, 32000),
    "llama2-70b": _llama("llama2-70b", 8192, 80, 64, 8, 28672, 32000),
    # Llama 3.1's context: 131072 positions (its config's max_position_embeddings); rope, so
    # the length changes no count, only which sequences a run may take (torchtitan's 32k row).
    "llama3-8b": dataclasses.replace(
        _llama("llama3-8b", 4096, 32, 32, 8, 14336, 128256), max_seq_len=131072
    ),
    "llama3-70b": dataclasses.replace(
        _llama("llama3-70b", 8192, 80, 64, 8, 28672, 128256), max_seq_len=131072
    ),
    "gpt-1.7b": _megatron("gpt-1.7b", 2304, 24, 24),
    "gpt-3.6b": _megatron("gpt-3.6b", 3072, 30, 32),
    "gpt-7.5b": _megatron("gpt-7.5b", 4096, 36, 32),
    "gpt-18.4b": _megatron("gpt-18.4b", 6144, 40, 48),
    "gpt-39.1b": _megatron("gpt-39.1b", 8192, 48, 64),
    "gpt-76.1b": _megatron("gpt-76.1b", 10240, 60, 80),
    "gpt-145.6b": _megatron("gpt-145.6b", 12288, 80, 96),
    "gpt-310.1b": _megatron("gpt-310.1b", 16384, 96, 128),
    "gpt-529.6b": _megatron("gpt-529.6b", 20480, 105, 128),
    "gpt-1008b": _megatron("gpt-1008b", 25600, 128, 160),
    # NeMo's GPT3 (NVIDIA_RUNS: GPT-2 BPE's 50257 padded to 50304; tied, as Megatron's GPT).
    "gpt3-5b": dataclasses.replace(_megatron("gpt3-5b", 4096, 24, 32), vocab_size=50304),
    "gpt3-20b": dataclasses.replace(_megatron("gpt3-20b", 6144, 44, 48), vocab_size=50304),
    "gpt3-175b": dataclasses.replace(_megatron("gpt3-175b", 12288, 96, 96), vocab_size=50304),
    "llama2-7b": _llama("llama2-7b", 4096, 32, 32, 32, 11008, 32000),
    # The flash-attention repository's GPT3s (FLASH_ATTN_RUNS): GPT-2's vocabulary of 50257
    # padded to a multiple of 8 (pad_vocab_size_multiple: 8), tied, learned positions, GELU
    # 4d; training/configs/model/gpt2model/gpt2-{small,medium}.yaml and the experiments'
    # n_embd / n_head / n_layer (the 2.7B with head dim 128, as its table says).
    "fa-gpt3-125m": dataclasses.replace(_megatron("fa-gpt3-125m", 768, 12, 12), vocab_size=50264),
    "fa-gpt3-355m": dataclasses.replace(_megatron("fa-gpt3-355m", 1024, 24, 16), vocab_size=50264),
    "fa-gpt3-760m": dataclasses.replace(_megatron("fa-gpt3-760m", 1536, 24, 16), vocab_size=50264),
    "fa-gpt3-1.3b": dataclasses.replace(_megatron("fa-gpt3-1.3b", 2048, 24, 16), vocab_size=50264),
    "fa-gpt3-2.7b": dataclasses.replace(_megatron("fa-gpt3-2.7b", 2560, 32, 20), vocab_size=50264),
}

# Models whose MLP is GELU of 4d, predicted as a SwiGLU of the same FLOPs (peak_memory counts
# their saved activations as GELU's).
GELU_MLP = {name for name in MODELS if name.startswith(("mpt-", "gpt-", "gpt3-", "fa-gpt3-"))}

# -- sources ----------------------------------------------------------------------------------

FOUNDRY = "llm-foundry scripts/train/benchmarking/README.md"
TITAN_A100 = "torchtitan docs/performance.md (2024, 64 x A100 80GB)"
TITAN_H100 = "torchtitan benchmarks/llama3_h100_202412_torchtitan.md"
TITAN_ASYNC = "torchtitan benchmarks/asyncTP_llama3_h100_2025-06_torchtitan.md"
MEGATRON = "Megatron-LM README (2021) / Narayanan et al. 2021 Table 1"
# torchtitan's per-op selective checkpointing saves every compute op's output "except every
# second mm" (parallelize_llama.py _custom_policy, 2024): half the forward matmuls and every
# elementwise op are recomputed, which in FLOPs is this project's every-2nd-block selective.
OP_SAC = "selective op AC as every-2nd-block (torchtitan recomputes every second mm)"


@dataclass(frozen=True)
class Run:
    """A published training run and how it is predicted."""

    source: str
    model: str
    gpu: str
    gpus: int
    seq: int
    micro_batch: int
    global_batch: int  # sequences per optimizer step
    published: float  # tokens/s per GPU
    split: str  # check | held-out
    parallel: dict = field(default_factory=lambda: {"name": "fsdp", "dp_shard": -1})
    checkpoint: str = "none"  # none | full | selective
    precision: str = "bf16"
    attention: str = "flash"
    compile: bool = False  # torch.compile (train.compile): fused elementwise kernels
    # torchtitan's per-op selective checkpointing: its FLOPs predicted as every-2nd-block
    # (OP_SAC), its memory as what that policy saves (op_sac_saved_bytes_per_token).
    op_sac: bool = False
    # A fused cross-entropy (flash_attn's, llm-foundry's default): the logits are kept, not
    # the fp32 log-softmax and its fp32 input (peak_memory).
    fused_loss: bool = False
    # ... whose backward writes the logits' gradient into the logits (Apex's xentropy with
    # inplace_backward=True): no gradient of their size beside them.
    fused_loss_in_place: bool = False
    # fp8 runs: torchao tensorwise, Linear layers this wide or wider converted (torchtitan's
    # float8 converter takes every block Linear, the head excepted: 16, fp8 GEMMs' multiple).
    fp8_min_dim: int = 16
    note: str = ""

    @property
    def nodes(self) -> int:
        return max(1, self.gpus // 8)

    @property
    def kernels(self) -> Kernels:
        """The kernels it is predicted with: its attention kernel, this project's block and
        loss (a run is predicted as this project would run it; foundry_block_table shows
        what MPT's own block and loss would change)."""
        return Kernels(attention=self.attention)

    @property
    def config(self) -> str:
        p = self.parallel
        degrees = ", ".join(
            k if v is True else f"{k} {v}"
            for k, v in p.items()
            if k != "name" and (v is True or v not in (1, -1))
        )
        ckpt = "" if self.checkpoint == "none" else f", ckpt {self.checkpoint}"
        return (
            f"{self.model}, {self.gpus} x {self.gpu}, {p['name']}{' ' + degrees if degrees else ''}"
            f", seq {self.seq}, mb {self.micro_batch}, gb {self.global_batch}{ckpt}"
            + (f", {self.attention} attention" if self.attention != "flash" else "")
            + (", compiled" if self.compile else "")
            + (", fp8" if self.precision == "fp8" else "")
        )


def megatron_tokens(tflops: float, m: ModelConfig, seq: int) -> float:
    """Megatron's published TFLOP/s per GPU as tokens/s per GPU, through its own FLOP count
    (with activation recomputation): 96 l h^2 (1 + s / 6h + V / 16 l h) per token."""
    h, layers = m.d_model, m.n_layers
    per_token = 96 * layers * h * h * (1 + seq / (6 * h) + m.vocab_size / (16 * layers * h))
    return tflops * 1e12 / per_token


def _foundry(model, gpu, gpus, seq, mb, accum, tps, ckpt, split, note=""):
    # llm-foundry's benchmark sweep (scripts/train/benchmarking/sweep.sh, b2a43a1, 2023-10-19:
    # llm-foundry v0.0.4, torch 2.1) runs submit_benchmarks.py with its default --attn_impl
    # triton (FlashAttention in Triton, llmfoundry/models/layers/flash_attn_triton.py) and
    # the MPT model's default loss, flash_attn's fused cross-entropy (no fp32 log-softmax).
    return Run(
        FOUNDRY,
        model,
        gpu,
        gpus,
        seq,
        mb,
        mb * accum * gpus,
        tps,
        split,
        checkpoint="full" if ckpt else "none",
        attention="flash_triton",
        fused_loss=True,
        note=note,
    )


def _titan_h100(gpus: int, published: float, *, compiled: bool) -> Run:
    """torchtitan's Llama 3.1 8B on its 500 W H100s (op-level SAC, local batch 2)."""
    return Run(
        TITAN_H100,
        "llama3-8b",
        "h100_hbm2e",
        gpus,
        8192,
        2,
        2 * gpus,
        published,
        "held-out",
        checkpoint="selective",
        compile=compiled,
        op_sac=True,
        note=OP_SAC + "; 500 W: x0.915 of 700 W throughput (Mayr et al. 2026)",
    )


def _megatron_run(model, gpus, tp, tflops, batch, micro_batch, pp=1, stages_per_rank=1):
    m = MODELS[model]
    dp = gpus // (tp * pp)
    if pp > 1:
        # Megatron-LM's PTD-P as this project runs it: pipeline stages with TP inside each
        # (parallel=pp), 1F1B or, with virtual stages, interleaved 1F1B.
        interleaved = stages_per_rank > 1
        parallel = {
            "name": "pp",
            "dp_replicate": dp,
            "dp_shard": 1,
            "tp": tp,
            "pp": pp,
            "sequence_parallel": False,
            "pp_schedule": "interleaved_one_f_one_b" if interleaved else "one_f_one_b",
            "pp_stages_per_rank": stages_per_rank,
        }
    elif tp == 1:
        parallel = {"name": "ddp", "dp_replicate": -1}
    else:
        parallel = {
            "name": "tp_fsdp",
            "dp_replicate": dp,
            "dp_shard": 1,
            "tp": tp,
            "sequence_parallel": False,
        }
    stages = (
        f"; PP {pp}"
        + (f" x {stages_per_rank} virtual stages (interleaved)" if stages_per_rank > 1 else "")
        + ": each TP rank sends 1/TP of its stage's output, which the next stage all-gathers "
        "over NVLink, as Megatron's scatter/gather (Narayanan et al. 2021 section 4.1; this "
        "project's stages without sequence parallelism since 2026-12-01, added after these "
        "rows were seen: they sent the whole output, 0.74-0.81); fp16 as published, which the "
        "model rates as bf16 on an A100 (this project's pipelines run bf16, not fp16)"
        if pp > 1
        else ""
    )
    return Run(
        MEGATRON,
        model,
        "a100_80g",
        gpus,
        2048,
        micro_batch,
        batch,
        megatron_tokens(tflops, m, 2048),
        "held-out",
        parallel=parallel,
        checkpoint="full",
        precision="fp16",
        attention="math",
        note=f"published {tflops} TFLOP/s/GPU (their count, recompute included); micro batch "
        f"{micro_batch} as examples/sc21/run_table_1.sh; TP without sequence parallelism (2021)"
        + stages,
    )


RUNS = [
    # llm-foundry, 8 GPUs, seq 2048 (FSDP FULL_SHARD, amp_bf16): read while building.
    _foundry("mpt-7b", "h100_sxm", 8, 2048, 6, 1, 10643, False, "check"),
    _foundry("mpt-1b", "h100_sxm", 8, 2048, 14, 1, 45455, False, "check"),
    _foundry("mpt-3b", "h100_sxm", 16, 2048, 10, 3, 24142, False, "check"),
    _foundry("mpt-13b", "h100_sxm", 8, 2048, 2, 1, 4792, False, "check"),
    _foundry("mpt-30b", "h100_sxm", 8, 2048, 3, 21, 2002, True, "check"),
    _foundry("mpt-7b", "a100_80g", 8, 2048, 6, 2, 4641, False, "check"),
    _foundry("mpt-1b", "a100_80g", 8, 2048, 14, 4, 20513, False, "check"),
    _foundry("mpt-3b", "a100_80g", 8, 2048, 10, 2, 10811, False, "check"),
    _foundry("mpt-13b", "a100_80g", 8, 2048, 2, 3, 2262, False, "check"),
    _foundry("mpt-30b", "a100_80g", 8, 2048, 3, 21, 916, True, "check"),
    # llm-foundry, other lengths and scales: kept aside.
    _foundry("mpt-7b", "h100_sxm", 8, 4096, 16, 2, 8611, True, "held-out"),
    _foundry("mpt-7b", "a100_80g", 8, 8192, 8, 2, 3206, True, "held-out"),
    _foundry("mpt-1b", "a100_80g", 8, 8192, 3, 4, 13814, False, "held-out"),
    _foundry("mpt-13b", "h100_sxm", 64, 2048, 2, 1, 4800, False, "held-out"),
    _foundry("mpt-30b", "h100_sxm", 32, 2048, 14, 3, 2308, True, "held-out"),
    _foundry("mpt-70b", "h100_sxm", 64, 2048, 8, 4, 1039, True, "held-out"),
    _foundry("mpt-7b", "h100_sxm", 128, 2048, 6, 1, 10475, False, "held-out"),
    _foundry("mpt-70b", "h100_sxm", 512, 2048, 8, 1, 1007, True, "held-out"),
    _foundry(
        "mpt-70b", "a100_80g", 64, 2048, 8, 4, 410, True, "held-out", "bf16 PURE mixed precision"
    ),
    # torchtitan on 64 A100 80GB, FSDP2, no torch.compile: kept aside.
    Run(TITAN_A100, "llama2-13b", "a100_80g", 64, 4096, 2, 128, 2162, "held-out"),
    Run(
        TITAN_A100,
        "llama2-13b",
        "a100_80g",
        64,
        4096,
        2,
        128,
        1914,
        "held-out",
        checkpoint="selective",
        note="selective layer AC: every 2nd block",
    ),
    Run(
        TITAN_A100,
        "llama2-13b",
        "a100_80g",
        64,
        4096,
        2,
        128,
        1904,
        "held-out",
        checkpoint="selective",
        op_sac=True,
        note=OP_SAC,
    ),
    Run(
        TITAN_A100,
        "llama2-70b",
        "a100_80g",
        64,
        4096,
        2,
        128,
        353,
        "held-out",
        checkpoint="full",
    ),
    Run(
        TITAN_A100,
        "llama2-70b",
        "a100_80g",
        64,
        4096,
        1,
        64,
        355,
        "held-out",
        checkpoint="selective",
        op_sac=True,
        note=OP_SAC,
    ),
    Run(
        TITAN_A100,
        "llama3-8b",
        "a100_80g",
        64,
        8192,
        1,
        64,
        2904,
        "held-out",
        checkpoint="selective",
        note="selective layer AC: every 2nd block",
    ),
    Run(
        TITAN_A100,
        "llama3-8b",
        "a100_80g",
        64,
        8192,
        1,
        64,
        2973,
        "held-out",
        checkpoint="selective",
        op_sac=True,
        note=OP_SAC,
    ),
    Run(
        TITAN_A100,
        "llama3-70b",
        "a100_80g",
        64,
        8192,
        1,
        64,
        331,
        "held-out",
        checkpoint="full",
    ),
    # torchtitan, Llama 3.1 8B on H100 (Grand Teton: 96GB HBM2e at 2.4 TB/s, 500 W, as
    # torchtitan's docs/performance.md describes its benchmark platform; profile h100_hbm2e:
    # the 700 W SXM datasheet's peaks slowed by the throughput measured at 500 W, hardware.py
    # POWER_LIMIT_THROUGHPUT), FSDP without torch.compile: kept aside. Until 2026-11-30
    # profiled as h100_sxm (3.35 TB/s): ratios 1.38 and 1.42; later that day at 700 W
    # throughput: 1.25 and 1.30 (compiled 1.24 and 1.28).
    *(_titan_h100(gpus, published, compiled=False) for gpus, published in ((8, 5762), (128, 5605))),
    # The same runs with torch.compile (the tables' next rows), added 2026-11-30 with the
    # compiled-kernel counts of launch/perfmodel/compute.py, computed once: kept aside.
    *(_titan_h100(gpus, published, compiled=True) for gpus, published in ((8, 6667), (128, 6514))),
    # Megatron-LM 2021 (A100 80GB, fp16, no FlashAttention, full recompute), TP rows: kept aside.
    # Micro batches from the authors' reproduction script of Table 1 (NVIDIA/Megatron-LM
    # examples/sc21/run_table_1.sh, de7dc40, 2021-08-10: MBS=16, 16, 16, 8 with DDP=torch);
    # the paper has no micro-batch column. Until later on 2026-11-30 micro batch 1 was
    # assumed: ratios 0.75, 0.81, 0.74, 0.71.
    _megatron_run("gpt-1.7b", 32, 1, 137, 512, 16),
    _megatron_run("gpt-3.6b", 64, 2, 138, 512, 16),
    _megatron_run("gpt-7.5b", 128, 4, 142, 512, 16),
    _megatron_run("gpt-18.4b", 256, 8, 135, 1024, 8),
    # Its pipelined rows (TP 8 inside PP stages; run_table_1.sh: PP, MBS, GBS, and
    # --num-layers-per-virtual-pipeline-stage giving 3, 2, 2, 3 virtual stages per rank for
    # 76B to 530B), added 2026-12-01 once pp could run TP inside its stages; computed once,
    # after the layout was built and its traffic counted, nothing changed after: kept aside.
    _megatron_run("gpt-39.1b", 512, 8, 138, 1536, 4, pp=2),
    _megatron_run("gpt-76.1b", 1024, 8, 140, 1792, 2, pp=4, stages_per_rank=3),
    _megatron_run("gpt-145.6b", 1536, 8, 148, 2304, 2, pp=8, stages_per_rank=2),
    _megatron_run("gpt-310.1b", 1920, 8, 155, 2160, 1, pp=16, stages_per_rank=2),
    _megatron_run("gpt-529.6b", 2520, 8, 163, 2520, 1, pp=35, stages_per_rank=3),
    _megatron_run("gpt-1008b", 3072, 8, 163, 3072, 1, pp=64),
]

# torchtitan's async TP over vanilla TP (bf16, torch.compile on both, so its fusion cancels in
# the ratio): (model, GPUs, TP, local batch, checkpointing, published speedup). Kept aside.
# torchtitan's Float8 rows (TITAN_H100: torchao eab345c, 2024-12-23; every block Linear
# converted, the head not; torch.compile). FSDP's float8 all-gather with precomputed scales is
# ASSUMED, as torchtitan docs/float8.md recommends and this project's runtime does. Tables 1
# and 3 were read before the fused-cast count was settled (explored: a first count, 5 bytes
# per cast without fusion, put them at fp8/bf16 1.02-1.04 against 1.28; the casts' copy rate
# was chosen after them and this project's own H100 fp8 run); table 2 was read before it was
# predicted, and predicted once after the fused count (check: 1.21, 1.26 at the copy rate);
# table 4 was too, then moved with the fp8 TP gathers and the sequence-parallel regrouping
# copies, counted after the TP rows were seen optimistic (explored).
_TITAN_FP8 = dict(compile=True, precision="fp8")
_TITAN_NOTE = "500 W: x0.915 of 700 W throughput (Mayr et al. 2026)"
FP8_RUNS = [
    dataclasses.replace(_titan_h100(8, 8532, compiled=True), split="explored", precision="fp8"),
    dataclasses.replace(_titan_h100(128, 8380, compiled=True), split="explored", precision="fp8"),
    Run(TITAN_H100, "llama3-8b", "h100_hbm2e", 8, 32768, 1, 8, 3890, "check", checkpoint="full",
        note="Table 2, FSDP 8, CP 1; " + _TITAN_NOTE, **_TITAN_FP8),
    Run(TITAN_H100, "llama3-70b", "h100_hbm2e", 256, 8192, 16, 512, 829, "explored",
        parallel={"name": "tp_fsdp", "dp_shard": 32, "tp": 8}, checkpoint="full",
        note="Table 4, 2D; " + _TITAN_NOTE, **_TITAN_FP8),
    Run(TITAN_H100, "llama3-70b", "h100_hbm2e", 256, 8192, 16, 512, 876, "explored",
        parallel={"name": "tp_fsdp", "dp_shard": 32, "tp": 8, "async_tp": True},
        checkpoint="full", note="Table 4, 2D + AsyncTP; " + _TITAN_NOTE, **_TITAN_FP8),
]  # fmt: skip
# fp8 over bf16, both compiled, the same runs: (source, bf16 run, published speedup, split).
TITAN_PR778 = "torchtitan PR #778 (2025-01-07, Llama 3 8B, 8 H100, seq 4096, local batch 1, no AC)"
FP8_SPEEDUPS = [
    (TITAN_H100, _titan_h100(8, 6667, compiled=True), 8532 / 6667, "explored"),
    (TITAN_H100, _titan_h100(128, 6514, compiled=True), 8380 / 6514, "explored"),
    # Its absolute figures are 1.6x below the model's and below torchtitan's own Table 1 on
    # longer sequences: a machine not named; only the ratio is used.
    # Predicted once after the fused count (1.026 against 1.146), then moved by the copy rate
    # chosen on the explored rows: explored too.
    (TITAN_PR778, Run(TITAN_PR778, "llama3-8b", "h100_hbm2e", 8, 4096, 1, 8, 5033.8,
                      "explored", compile=True), 5768.6 / 5033.8, "explored"),
]  # fmt: skip

# torchtitan's H100 tables' Memory(GiB) beside the runs above (TITAN_H100; torchtitan's
# metrics log max_reserved_gib, the caching allocator's peak, taken to be what the tables
# show): what the model's peak (allocated, before its reserve) is against. Added 2026-12-01;
# nothing in the model was changed on it.
TITAN_MEMORY_GIB = [
    (_titan_h100(8, 5762, compiled=False), 82.4),
    (_titan_h100(8, 6667, compiled=True), 77.0),
    (FP8_RUNS[0], 76.8),
    (FP8_RUNS[2], 83.9),
    (_titan_h100(128, 5605, compiled=False), 67.0),
    (_titan_h100(128, 6514, compiled=True), 62.0),
    (FP8_RUNS[1], 61.8),
    (FP8_RUNS[3], 71.9),
    (FP8_RUNS[4], 67.6),
]

# (model, GPUs, TP, local batch, checkpointing, published tok/s/GPU vanilla TP, async TP)
ASYNC_TP = [
    ("llama3-8b", 64, 8, 12, "selective", 4378, 4809.4),  # per-op SAC, as OP_SAC maps it
    ("llama3-70b", 256, 8, 16, "full", 597.3, 652.4),
]

LEFT_OUT = [
    "Megatron-LM's H100 tables (README, 2024+): published as images of MFU per size; their "
    "configurations (TP, PP, CP, overlap flags) are not in text.",
    "torchtitan's Float8 rows are in the fp8 table below, except those with context "
    "parallelism (CP > 1), not a layout of this project, and the 405B's (FSDP 8 x TP 8 x PP "
    "8 with async TP inside the stages, which this project's pipelines do not run; fp8 inside "
    "stages only since 2026-12-01).",
    "llm-foundry SHARD_GRAD_OP rows (1b, 3b at >= 128 GPUs) and fp8 rows: ZeRO-2-like FSDP1 "
    "and TE fp8 layers are not this project's layouts.",
]

# -- nccl-tests -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CommPoint:
    source: str
    gpu: str
    op: str
    nbytes: int
    nodes: int
    published: float  # busbw GB/s, nccl-tests' convention
    split: str
    nic_gbits: float | None = None  # the cluster's NIC per GPU, where not the profile's
    note: str = ""


COMM = [
    CommPoint("nccl-tests #212 (NCCL maintainer)", "h100_sxm", "all_reduce", 8 * GIB, 1, 480,
              "check", note="NVLS, ~480 GB/s peak"),
    CommPoint("nccl-tests #212 (NCCL maintainer)", "h100_sxm", "all_gather", 8 * GIB, 1, 370,
              "check", note="ring (non-all-reduce ops)"),
    CommPoint("nccl-tests #272", "h200", "all_reduce", 4 * GIB, 1, 475, "check", note="NVLS"),
    CommPoint("nccl #1374", "h800", "all_reduce", 8 * GIB, 1, 215, "check", note="NVLS"),
    CommPoint("nccl #1047", "h100_sxm", "reduce_scatter", 8 * GIB, 1, 362, "check"),
    CommPoint("nccl #1047", "h100_sxm", "reduce_scatter", 128 * 2**20, 1, 311, "check"),
    CommPoint("nccl #1506", "h100_sxm", "all_gather", GIB, 1, 350, "check", note="ring"),
    CommPoint("nccl #1221", "h100_sxm", "all_reduce", 8 * GIB, 2, 430, "held-out",
              note="8 x 400G RoCE, NVLS-tree"),
    CommPoint("nccl #1221", "h100_sxm", "all_reduce", 8 * GIB, 4, 320, "held-out",
              note="8 x 400G RoCE"),
    CommPoint("nccl-tests #153", "h800", "all_reduce", 8 * GIB, 2, 161, "held-out",
              nic_gbits=100, note="8 x 100G CX-6 per node, NVLS-tree"),
    CommPoint("nccl-tests #119", "a100_40g", "all_reduce", 128 * 2**20, 3, 84.8, "held-out",
              nic_gbits=100, note="4 x HDR per node (100 Gbit/s per GPU), average"),
    CommPoint("nccl-tests #283", "h200", "all_reduce", 512 * 2**20, 248, 350, "held-out",
              note="1984 GPUs, 'typically around 350'"),
    CommPoint("nccl #1649 (GTC 2024 slide)", "h100_sxm", "all_reduce", 8 * GIB, 32, 375,
              "held-out", note="multi-node NVLS-tree 370-380; node count not stated (32 taken)"),
]  # fmt: skip


# -- predicting -------------------------------------------------------------------------------


@functools.cache
def _base_config(gpu_name: str, model_name: str) -> RunConfig:
    """The typed config of a part and a model: the schema's defaults with the typed profile
    and model (load_gpu_profile and _conf_model validate them; merging them through
    OmegaConf gave the same RunConfig for every pair at 9x the time)."""
    model = MODELS[model_name] if model_name in MODELS else _conf_model(model_name)
    return RunConfig(gpu=load_gpu_profile(gpu_name), model=model, run_dir="/unused")


def _typed(current, value):
    """value as the type of the field it replaces (closed choices are enums)."""
    return type(current)(value) if isinstance(current, enum.Enum) else value


def run_config(run: Run) -> RunConfig:
    base = _base_config(run.gpu, run.model)
    given = {"name": "fsdp", "dp_replicate": 1, "dp_shard": 1, "tp": 1, **run.parallel}
    given["activation_checkpoint"] = run.checkpoint
    parallel = dataclasses.replace(
        base.parallel, **{k: _typed(getattr(base.parallel, k), v) for k, v in given.items()}
    )
    train = dataclasses.replace(
        base.train,
        seq_len=run.seq,
        micro_batch=run.micro_batch,
        global_batch=run.global_batch,
        compile=run.compile,
    )
    fp8 = dataclasses.replace(
        base.precision.fp8,
        backend=Fp8Backend.torchao,
        recipe=Fp8Recipe.tensorwise,
        min_dim=run.fp8_min_dim,
    )
    precision = dataclasses.replace(base.precision, fp8=fp8)
    model = base.model
    if parallel.pp > 1 and model.tie_embeddings:
        # Megatron ties the first stage's embedding to the last stage's head (an all-reduce of
        # its gradient between them); this project's pipelines do not (check_run refuses a
        # tied model there): untied, as this project would run it.
        model = dataclasses.replace(model, tie_embeddings=False)
    return dataclasses.replace(
        base, model=model, parallel=parallel, train=train, precision=precision
    )


def predict_run(run: Run) -> float:
    """Predicted tokens/s per GPU."""
    return _prediction(run).tokens_per_s_per_device


def op_sac_saved_bytes_per_token(m: ModelConfig, plan) -> float:
    """What torchtitan's per-op selective checkpointing keeps per token and block beyond the
    block's input (parallelize_llama.py _custom_policy, 2024: MUST_SAVE only the outputs of
    mm, except every second one, and of SDPA; everything else recomputed). Its mms per block,
    in call order: wq, wk, wv, wo, w1, w3, w2: the 1st, 3rd, 5th and 7th are kept (wq: q, wv:
    kv, w1: f, w2: d wide), with SDPA's output (q) and log-sum-exp (fp32 per head), bf16."""
    t = plan.degrees.tp
    q = m.n_heads * shapes.head_dim(m) / t
    kv = m.n_kv_heads * shapes.head_dim(m) / t
    return 2 * (q + kv + m.ffn_hidden / t + m.d_model + q) + 4 * m.n_heads / t


def gelu_mlp_bytes_per_token(m: ModelConfig, plan, precision: str) -> float:
    """What MPT's and Megatron's GELU MLP of 4d saves per token and block (fc1's output and
    the GELU's: 8d) less what the SwiGLU standing in for it is counted to save (w1, w3, silu,
    product: 4f); negative. Same FLOPs, fewer saved bytes (memory.activation_bytes)."""
    width = 2 if precision in SIXTEEN_BIT else 4
    return width * (8 * m.d_model - 4 * m.ffn_hidden) / plan.degrees.tp


def peak_memory(run: Run, mem=None) -> tuple[float, float | None]:
    """(predicted peak bytes per rank, usable bytes) of the run as it ran: under torchtitan's
    op-level SAC, every block checkpointed with what its policy saves added; MPT and Megatron
    GPTs with their GELU MLP's activations in place of the stand-in SwiGLU's. ``mem``: the
    run's predicted memory, when the caller has its prediction already."""
    mem = mem or _prediction(run).memory
    cfg = run_config(dataclasses.replace(run, checkpoint="full") if run.op_sac else run)
    plan = plan_layout(cfg, run.gpus, min(8, run.gpus))
    if plan.pipeline is not None:
        # The busiest stage as the pipeline model holds it (pipelined.stage_memory: its
        # in-flight microbatches); the pipelined rows checkpoint every block, so their GELU
        # MLP differs from the stand-in's only in the one block backward rebuilds.
        return mem.peak_bytes, mem.capacity_bytes
    m, tokens = cfg.model, run.micro_batch * run.seq
    activations = activation_bytes(m, plan, run.micro_batch, run.seq, run.precision)
    if run.op_sac:
        activations += op_sac_saved_bytes_per_token(m, plan) * m.n_layers * tokens
    if run.fused_loss:
        # memory.activation_bytes' 12 per vocabulary entry (the fp32 log-softmax and two fp32
        # gradients) against the fused kernel's 16-bit logits and their gradient: 4, or 2 when
        # the gradient is written in place.
        freed = 10 if run.fused_loss_in_place else 8
        activations -= freed * m.vocab_size / plan.degrees.tp * tokens
    if run.model in GELU_MLP:
        # Blocks that keep their activations, and the one a checkpointed backward rebuilds.
        kept = m.n_layers - len(plan.checkpointed) + (1 if plan.checkpointed else 0)
        activations += gelu_mlp_bytes_per_token(m, plan, run.precision) * kept * tokens
    return mem.held_bytes + mem.transient_bytes + activations, mem.capacity_bytes


def _prediction(run: Run, kernels: Kernels | None = None):
    # The tables, the memory check and the tests ask for the same runs again; a Run holds a
    # dict (unhashable), and its repr names every field.
    key = (repr(run), kernels or run.kernels)
    if key not in _PREDICTIONS:
        _PREDICTIONS[key] = _predict(run, key[1])
    return _PREDICTIONS[key]


_PREDICTIONS: dict = {}


def _predict(run: Run, kernels: Kernels):
    cfg = run_config(run)
    per_node = min(8, run.gpus)
    where = Placement(run.gpus, per_node, run.nodes)
    plan = plan_layout(cfg, run.gpus, per_node)
    rates = part_rates(cfg.gpu, precision=run.precision)
    return predict(
        cfg,
        plan,
        where,
        global_batch=run.global_batch,
        precision=run.precision,
        rates=rates,
        kernels=kernels,
    )


def predict_comm(point: CommPoint) -> CollectiveTime:
    """The model's time of the point's collective on its part (with the cluster's NIC)."""
    gpu = load_gpu_profile(point.gpu)
    if point.nic_gbits:
        gpu = dataclasses.replace(gpu, nic_gbits_per_s_per_gpu=point.nic_gbits)
    ranks = point.nodes * gpu.gpus_per_node
    return collective_time(point.op, point.nbytes, ranks, gpu.gpus_per_node, part_rates(gpu))


# Every FULL_SHARD bf16 row of llm-foundry's benchmark tables (README at 495218376, 2024-04-22:
# "H100 80GB BF16 (Large Scale, >= 128 GPUs)", "H100 80GB BF16", "A100 80GB ..." and "A100 40GB
# with 1600 Gbps node-node interconnect (RoCE)"; SHARD_GRAD_OP and fp8 rows left out as above):
# (part, model, seq, GPUs, micro batch, grad accum, tokens/s/GPU, activation checkpointing).
# Added 2026-11-30. The H100 rows were computed while the flash_triton kernel was being written
# (its long-sequence rows, 45-76% optimistic with FA2's rate, are what sent me to the sweep's
# attn_impl): split "explored", not blind. The A100 rows were computed once, after: held-out.
FOUNDRY_SWEEP_SOURCE = "llm-foundry scripts/train/benchmarking/README.md (495218376)"
FOUNDRY_SWEEP = [
    ("h100_sxm", "mpt-70b", 2048, 512, 8, 1, 1007, True),
    ("h100_sxm", "mpt-70b", 2048, 256, 8, 1, 1035, True),
    ("h100_sxm", "mpt-70b", 2048, 128, 8, 1, 1058, True),
    ("h100_sxm", "mpt-30b", 2048, 512, 8, 1, 2115, True),
    ("h100_sxm", "mpt-30b", 2048, 256, 8, 1, 2148, True),
    ("h100_sxm", "mpt-30b", 2048, 128, 8, 1, 2199, True),
    ("h100_sxm", "mpt-13b", 2048, 512, 16, 1, 4952, True),
    ("h100_sxm", "mpt-13b", 2048, 256, 16, 1, 4989, True),
    ("h100_sxm", "mpt-13b", 2048, 128, 16, 1, 5080, True),
    ("h100_sxm", "mpt-7b", 2048, 512, 6, 1, 9670, False),
    ("h100_sxm", "mpt-7b", 2048, 256, 6, 1, 10119, False),
    ("h100_sxm", "mpt-7b", 2048, 128, 6, 1, 10475, False),
    ("h100_sxm", "mpt-70b", 2048, 64, 8, 4, 1039, True),
    ("h100_sxm", "mpt-70b", 2048, 32, 2, 16, 882, True),
    ("h100_sxm", "mpt-30b", 8192, 8, 1, 21, 1384, True),
    ("h100_sxm", "mpt-30b", 4096, 8, 1, 21, 1802, True),
    ("h100_sxm", "mpt-30b", 2048, 32, 14, 3, 2308, True),
    ("h100_sxm", "mpt-30b", 2048, 16, 10, 3, 2263, True),
    ("h100_sxm", "mpt-30b", 2048, 8, 3, 21, 2002, True),
    ("h100_sxm", "mpt-30b", 1024, 8, 6, 21, 2084, True),
    ("h100_sxm", "mpt-13b", 32768, 8, 1, 3, 1976, True),
    ("h100_sxm", "mpt-13b", 16384, 8, 3, 3, 2985, True),
    ("h100_sxm", "mpt-13b", 4096, 8, 10, 3, 4717, True),
    ("h100_sxm", "mpt-13b", 2048, 64, 2, 1, 4800, False),
    ("h100_sxm", "mpt-13b", 2048, 32, 2, 1, 4811, False),
    ("h100_sxm", "mpt-13b", 2048, 16, 2, 1, 4767, False),
    ("h100_sxm", "mpt-13b", 2048, 8, 2, 1, 4792, False),
    ("h100_sxm", "mpt-13b", 1024, 8, 40, 3, 5502, True),
    ("h100_sxm", "mpt-7b", 65536, 8, 1, 2, 1956, True),
    ("h100_sxm", "mpt-7b", 32768, 8, 2, 2, 3318, True),
    ("h100_sxm", "mpt-7b", 8192, 8, 8, 2, 6935, True),
    ("h100_sxm", "mpt-7b", 4096, 8, 16, 2, 8611, True),
    ("h100_sxm", "mpt-7b", 2048, 8, 6, 1, 10643, False),
    ("h100_sxm", "mpt-7b", 1024, 8, 64, 2, 10203, True),
    ("h100_sxm", "mpt-3b", 65536, 8, 1, 2, 3262, True),
    ("h100_sxm", "mpt-3b", 32768, 8, 3, 6, 5873, True),
    ("h100_sxm", "mpt-3b", 16384, 8, 1, 6, 11152, False),
    ("h100_sxm", "mpt-3b", 8192, 8, 3, 6, 16578, False),
    ("h100_sxm", "mpt-3b", 4096, 8, 5, 6, 20964, False),
    ("h100_sxm", "mpt-3b", 2048, 64, 6, 3, 22525, False),
    ("h100_sxm", "mpt-3b", 2048, 32, 6, 3, 23021, False),
    ("h100_sxm", "mpt-3b", 2048, 16, 10, 3, 24142, False),
    ("h100_sxm", "mpt-3b", 1024, 8, 20, 6, 27046, False),
    ("h100_sxm", "mpt-3b", 512, 8, 40, 6, 27965, False),
    ("h100_sxm", "mpt-1b", 65536, 8, 1, 2, 5506, True),
    ("h100_sxm", "mpt-1b", 32768, 8, 1, 4, 12025, False),
    ("h100_sxm", "mpt-1b", 16384, 8, 2, 4, 19649, False),
    ("h100_sxm", "mpt-1b", 8192, 8, 3, 4, 29157, False),
    ("h100_sxm", "mpt-1b", 4096, 8, 7, 4, 38535, False),
    ("h100_sxm", "mpt-1b", 2048, 64, 20, 1, 44402, False),
    ("h100_sxm", "mpt-1b", 2048, 32, 20, 1, 45130, False),
    ("h100_sxm", "mpt-1b", 2048, 16, 20, 1, 46037, False),
    ("h100_sxm", "mpt-1b", 2048, 8, 14, 1, 45455, False),
    ("h100_sxm", "mpt-1b", 1024, 8, 18, 4, 48910, False),
    ("h100_sxm", "mpt-1b", 512, 8, 56, 4, 52275, False),
    ("h100_sxm", "mpt-760m", 32768, 8, 1, 2, 16291, False),
    ("h100_sxm", "mpt-760m", 16384, 8, 3, 2, 27815, False),
    ("h100_sxm", "mpt-760m", 8192, 8, 6, 2, 41825, False),
    ("h100_sxm", "mpt-760m", 4096, 8, 12, 2, 55459, False),
    ("h100_sxm", "mpt-760m", 2048, 32, 24, 1, 67971, False),
    ("h100_sxm", "mpt-760m", 2048, 16, 24, 1, 68551, False),
    ("h100_sxm", "mpt-760m", 2048, 8, 24, 2, 63147, False),
    ("h100_sxm", "mpt-760m", 1024, 8, 48, 2, 78581, False),
    ("h100_sxm", "mpt-760m", 512, 8, 96, 2, 83749, False),
    ("a100_80g", "mpt-70b", 2048, 64, 8, 4, 410, True),
    ("a100_80g", "mpt-70b", 2048, 32, 2, 16, 373, True),
    ("a100_80g", "mpt-30b", 8192, 8, 1, 21, 574, True),
    ("a100_80g", "mpt-30b", 4096, 8, 1, 21, 814, True),
    ("a100_80g", "mpt-30b", 2048, 8, 3, 21, 916, True),
    ("a100_80g", "mpt-30b", 1024, 8, 6, 21, 946, True),
    ("a100_80g", "mpt-30b", 512, 8, 12, 21, 967, True),
    ("a100_80g", "mpt-13b", 32768, 8, 1, 3, 1016, True),
    ("a100_80g", "mpt-13b", 16384, 8, 3, 3, 1431, True),
    ("a100_80g", "mpt-13b", 8192, 8, 5, 3, 1795, True),
    ("a100_80g", "mpt-13b", 4096, 8, 10, 3, 2060, True),
    ("a100_80g", "mpt-13b", 2048, 8, 2, 3, 2262, False),
    ("a100_80g", "mpt-13b", 1024, 8, 40, 3, 2330, True),
    ("a100_80g", "mpt-7b", 65536, 8, 1, 2, 1013, True),
    ("a100_80g", "mpt-7b", 32768, 8, 2, 2, 1672, True),
    ("a100_80g", "mpt-7b", 16384, 8, 4, 2, 2453, True),
    ("a100_80g", "mpt-7b", 8192, 8, 8, 2, 3206, True),
    ("a100_80g", "mpt-7b", 4096, 8, 16, 2, 3684, True),
    ("a100_80g", "mpt-7b", 2048, 8, 6, 2, 4641, False),
    ("a100_80g", "mpt-7b", 1024, 8, 64, 2, 4357, True),
    ("a100_80g", "mpt-3b", 65536, 8, 1, 2, 1767, True),
    ("a100_80g", "mpt-3b", 32768, 8, 3, 6, 3029, True),
    ("a100_80g", "mpt-3b", 16384, 8, 1, 6, 5529, False),
    ("a100_80g", "mpt-3b", 8192, 8, 3, 6, 7695, False),
    ("a100_80g", "mpt-3b", 4096, 8, 5, 6, 9457, False),
    ("a100_80g", "mpt-3b", 2048, 8, 10, 2, 10811, False),
    ("a100_80g", "mpt-3b", 1024, 8, 20, 6, 11580, False),
    ("a100_80g", "mpt-3b", 512, 8, 40, 6, 12127, False),
    ("a100_80g", "mpt-1b", 65536, 8, 1, 2, 3044, True),
    ("a100_80g", "mpt-1b", 32768, 8, 1, 4, 6275, False),
    ("a100_80g", "mpt-1b", 16384, 8, 2, 4, 9956, False),
    ("a100_80g", "mpt-1b", 8192, 8, 3, 4, 13814, False),
    ("a100_80g", "mpt-1b", 4096, 8, 7, 4, 17807, False),
    ("a100_80g", "mpt-1b", 2048, 8, 14, 4, 20513, False),
    ("a100_80g", "mpt-1b", 1024, 8, 18, 4, 22112, False),
    ("a100_80g", "mpt-1b", 512, 8, 56, 4, 23148, False),
    ("a100_80g", "mpt-760m", 65536, 8, 1, 2, 4143, True),
    ("a100_80g", "mpt-760m", 32768, 8, 1, 2, 8802, False),
    ("a100_80g", "mpt-760m", 16384, 8, 3, 2, 14274, False),
    ("a100_80g", "mpt-760m", 8192, 8, 6, 2, 20933, False),
    ("a100_80g", "mpt-760m", 4096, 8, 12, 2, 27351, False),
    ("a100_80g", "mpt-760m", 2048, 8, 24, 2, 32434, False),
    ("a100_80g", "mpt-760m", 1024, 8, 48, 2, 29765, False),
    ("a100_80g", "mpt-760m", 512, 8, 96, 2, 29446, False),
    ("a100_80g", "mpt-350m", 65536, 8, 1, 2, 7524, False),
    ("a100_80g", "mpt-350m", 32768, 8, 2, 2, 13652, False),
    ("a100_80g", "mpt-350m", 16384, 8, 4, 2, 23559, False),
    ("a100_80g", "mpt-350m", 8192, 8, 8, 2, 36569, False),
    ("a100_80g", "mpt-350m", 4096, 8, 16, 2, 49555, False),
    ("a100_80g", "mpt-350m", 2048, 8, 32, 2, 58782, False),
    ("a100_80g", "mpt-350m", 1024, 8, 64, 2, 64813, False),
    ("a100_80g", "mpt-350m", 512, 8, 128, 2, 69330, False),
    ("a100_80g", "mpt-125m", 65536, 8, 1, 2, 20368, False),
    ("a100_80g", "mpt-125m", 32768, 8, 2, 2, 36407, False),
    ("a100_80g", "mpt-125m", 16384, 8, 4, 2, 60040, False),
    ("a100_80g", "mpt-125m", 8192, 8, 8, 2, 90392, False),
    ("a100_80g", "mpt-125m", 4096, 8, 16, 2, 118396, False),
    ("a100_80g", "mpt-125m", 2048, 8, 40, 2, 142830, False),
    ("a100_80g", "mpt-125m", 2048, 8, 32, 2, 141737, False),
    ("a100_80g", "mpt-125m", 1024, 8, 64, 2, 156468, False),
    ("a100_80g", "mpt-125m", 512, 8, 128, 2, 165681, False),
    ("a100_40g", "mpt-70b", 2048, 128, 4, 1, 376, True),
    ("a100_40g", "mpt-70b", 2048, 64, 2, 1, 276, True),
    ("a100_40g", "mpt-30b", 2048, 128, 6, 1, 865, True),
    ("a100_40g", "mpt-30b", 2048, 32, 4, 1, 857, True),
    ("a100_40g", "mpt-13b", 8192, 8, 1, 16, 1407, True),
    ("a100_40g", "mpt-13b", 4096, 8, 2, 16, 1603, True),
    ("a100_40g", "mpt-13b", 2048, 128, 16, 1, 1972, True),
    ("a100_40g", "mpt-13b", 2048, 64, 16, 1, 1976, True),
    ("a100_40g", "mpt-13b", 2048, 32, 14, 1, 1998, True),
    ("a100_40g", "mpt-13b", 2048, 16, 10, 1, 1993, True),
    ("a100_40g", "mpt-13b", 2048, 8, 4, 16, 1668, True),
    ("a100_40g", "mpt-13b", 1024, 8, 8, 16, 1727, True),
    ("a100_40g", "mpt-13b", 512, 8, 16, 16, 1763, True),
    ("a100_40g", "mpt-7b", 16384, 8, 1, 4, 2249, True),
    ("a100_40g", "mpt-7b", 8192, 8, 3, 4, 2887, True),
    ("a100_40g", "mpt-7b", 4096, 8, 6, 4, 3366, True),
    ("a100_40g", "mpt-7b", 2048, 128, 18, 1, 3623, True),
    ("a100_40g", "mpt-7b", 2048, 64, 18, 1, 3665, True),
    ("a100_40g", "mpt-7b", 2048, 32, 18, 1, 3725, True),
    ("a100_40g", "mpt-7b", 2048, 16, 16, 1, 3645, True),
    ("a100_40g", "mpt-7b", 2048, 8, 12, 4, 3679, True),
    ("a100_40g", "mpt-7b", 1024, 8, 24, 4, 3854, True),
    ("a100_40g", "mpt-7b", 512, 8, 48, 4, 3895, True),
    ("a100_40g", "mpt-3b", 32768, 8, 1, 4, 2955, True),
    ("a100_40g", "mpt-3b", 16384, 8, 2, 8, 4465, True),
    ("a100_40g", "mpt-3b", 8192, 8, 1, 8, 7149, False),
    ("a100_40g", "mpt-3b", 4096, 8, 2, 8, 8777, False),
    ("a100_40g", "mpt-3b", 2048, 128, 6, 1, 9538, False),
    ("a100_40g", "mpt-3b", 2048, 64, 6, 1, 9736, False),
    ("a100_40g", "mpt-3b", 2048, 32, 6, 1, 9914, False),
    ("a100_40g", "mpt-3b", 2048, 16, 5, 1, 9750, False),
    ("a100_40g", "mpt-3b", 2048, 8, 5, 8, 10065, False),
    ("a100_40g", "mpt-3b", 1024, 8, 10, 8, 10731, False),
    ("a100_40g", "mpt-3b", 512, 8, 20, 8, 11324, False),
    ("a100_40g", "mpt-1b", 32768, 8, 1, 4, 5095, True),
    ("a100_40g", "mpt-1b", 16384, 8, 1, 8, 9715, False),
    ("a100_40g", "mpt-1b", 8192, 8, 2, 8, 13474, False),
    ("a100_40g", "mpt-1b", 4096, 8, 4, 8, 16856, False),
    ("a100_40g", "mpt-1b", 2048, 128, 10, 1, 18647, False),
    ("a100_40g", "mpt-1b", 2048, 64, 10, 1, 19001, False),
    ("a100_40g", "mpt-1b", 2048, 32, 10, 1, 15555, False),
    ("a100_40g", "mpt-1b", 2048, 16, 8, 1, 19085, False),
    ("a100_40g", "mpt-1b", 2048, 8, 8, 8, 19271, False),
    ("a100_40g", "mpt-1b", 1024, 8, 16, 8, 20959, False),
    ("a100_40g", "mpt-1b", 512, 8, 32, 8, 21782, False),
    ("a100_40g", "mpt-760m", 32768, 8, 1, 4, 7183, True),
    ("a100_40g", "mpt-760m", 16384, 8, 1, 4, 13914, False),
    ("a100_40g", "mpt-760m", 8192, 8, 3, 4, 20106, False),
    ("a100_40g", "mpt-760m", 4096, 8, 6, 4, 25863, False),
    ("a100_40g", "mpt-760m", 2048, 128, 12, 1, 28940, False),
    ("a100_40g", "mpt-760m", 2048, 64, 12, 1, 29344, False),
    ("a100_40g", "mpt-760m", 2048, 32, 12, 1, 29648, False),
    ("a100_40g", "mpt-760m", 2048, 16, 12, 1, 29607, False),
    ("a100_40g", "mpt-760m", 2048, 8, 12, 4, 30173, False),
    ("a100_40g", "mpt-760m", 1024, 8, 24, 4, 33422, False),
    ("a100_40g", "mpt-760m", 512, 8, 48, 4, 34938, False),
    ("a100_40g", "mpt-350m", 32768, 8, 1, 4, 13416, False),
    ("a100_40g", "mpt-350m", 16384, 8, 2, 4, 22896, False),
    ("a100_40g", "mpt-350m", 8192, 8, 4, 4, 34933, False),
    ("a100_40g", "mpt-350m", 4096, 8, 8, 4, 46833, False),
    ("a100_40g", "mpt-350m", 2048, 128, 18, 1, 51934, False),
    ("a100_40g", "mpt-350m", 2048, 64, 18, 1, 52689, False),
    ("a100_40g", "mpt-350m", 2048, 32, 18, 1, 53811, False),
    ("a100_40g", "mpt-350m", 2048, 16, 18, 1, 55413, False),
    ("a100_40g", "mpt-350m", 2048, 8, 16, 4, 55995, False),
    ("a100_40g", "mpt-350m", 1024, 8, 32, 4, 62523, False),
    ("a100_40g", "mpt-350m", 512, 8, 64, 4, 66284, False),
    ("a100_40g", "mpt-125m", 32768, 8, 1, 4, 32651, False),
    ("a100_40g", "mpt-125m", 16384, 8, 2, 3, 55484, False),
    ("a100_40g", "mpt-125m", 8192, 8, 5, 3, 86858, False),
    ("a100_40g", "mpt-125m", 4096, 8, 13, 3, 115162, False),
    ("a100_40g", "mpt-125m", 2048, 128, 26, 1, 123936, False),
    ("a100_40g", "mpt-125m", 2048, 64, 26, 1, 125234, False),
    ("a100_40g", "mpt-125m", 2048, 32, 26, 1, 127122, False),
    ("a100_40g", "mpt-125m", 2048, 16, 26, 1, 130535, False),
    ("a100_40g", "mpt-125m", 2048, 8, 26, 3, 136334, False),
    ("a100_40g", "mpt-125m", 1024, 8, 52, 3, 148289, False),
    ("a100_40g", "mpt-125m", 512, 8, 104, 3, 156735, False),
]


def foundry_sweep_runs() -> list[Run]:
    """FOUNDRY_SWEEP as runs, less those RUNS already holds."""
    held = {(r.gpu, r.model, r.seq, r.gpus, r.micro_batch) for r in RUNS if r.source == FOUNDRY}
    runs = []
    for gpu, model, seq, gpus, mb, accum, tps, ckpt in FOUNDRY_SWEEP:
        if (gpu, model, seq, gpus, mb) in held:
            continue
        split = "explored" if gpu == "h100_sxm" else "held-out"
        runs.append(_foundry(model, gpu, gpus, seq, mb, accum, tps, ckpt, split))
    return runs


# -- tables -----------------------------------------------------------------------------------


def _mae(rows: list[tuple[str, float]], split: str | None = None) -> str:
    errors = [abs(r - 1) for s, r in rows if split is None or s == split]
    if not errors:
        return "-"
    worst = max(errors)
    return f"{sum(errors) / len(errors):.1%} over {len(errors)} (worst {worst:.0%})"


def _size(nbytes: int) -> str:
    return f"{nbytes // GIB} GiB" if nbytes >= GIB else f"{nbytes // 2**20} MiB"


def comm_table() -> list[str]:
    lines = [
        "| split | source | part, nodes | op, size | published busbw (GB/s) | predicted "
        "| predicted / published | algorithm, note |",
        "|---|---|---|---|---:|---:|---:|---|",
    ]
    ratios = []
    for p in COMM:
        t = predict_comm(p)
        got = t.achieved_busbw_gbytes_per_s
        ratios.append((p.split, got / p.published))
        lines.append(
            f"| {p.split} | {p.source} | {p.gpu} x{p.nodes} | {p.op} {_size(p.nbytes)} "
            f"| {p.published:g} | {got:.0f} | {got / p.published:.2f} | {t.algorithm}"
            f"{'; ' + p.note if p.note else ''} |"
        )
    lines += [
        "",
        f"Mean absolute error: check {_mae(ratios, 'check')}; held-out "
        f"{_mae(ratios, 'held-out')}; all {_mae(ratios)}.",
    ]
    return lines


# Published configurations that ran out of memory: the model must refuse them, as it must fit
# every run that ran. torchtitan docs/performance.md (2024), footnote 1 of its Llama 2 table:
# "the 70B training with local batch size 2 will cause an OOM error when selective activation
# checkpointing is used" (64 A100 80GB, FSDP2, seq 4096, op-level SAC: the table's 70B row at
# local batch 1 is the one that ran). Added 2026-12-01.
OUT_OF_MEMORY = [
    dataclasses.replace(
        next(r for r in RUNS if r.source == TITAN_A100 and r.model == "llama2-70b" and r.op_sac),
        micro_batch=2,
        global_batch=128,
        published=0.0,  # no throughput: it did not run
        split="check",
        note="OOM (footnote 1); " + OP_SAC,
    ),
]


def training_table() -> list[str]:
    lines = [
        "| split | source | config | published tok/s/GPU | predicted | predicted / published "
        "| memory GiB: predicted peak / usable | note |",
        "|---|---|---|---:|---:|---:|---:|---|",
    ]
    ratios, refused = [], []
    for run in RUNS:
        pred = _prediction(run)
        got = pred.tokens_per_s_per_device
        ratios.append((run.split, got / run.published))
        peak, usable = peak_memory(run, pred.memory)
        fits = usable is None or peak <= usable
        if not fits:
            refused.append(run.config)
        memory = f"{peak / 2**30:.1f} / {usable / 2**30:.1f}" if usable else "-"
        lines.append(
            f"| {run.split} | {run.source} | {run.config} | {run.published:,.0f} | {got:,.0f} "
            f"| {got / run.published:.2f} | {memory}{'' if fits else ' DOES NOT FIT'} "
            f"| {run.note} |"
        )
    lines += [
        "",
        f"Mean absolute error of tokens/s per GPU: check {_mae(ratios, 'check')}; held-out "
        f"{_mae(ratios, 'held-out')}; all {_mae(ratios)}.",
        "",
        (
            f"Memory: the model fits all {len(RUNS)} published runs (each ran)."
            if not refused
            else f"Memory: the model refuses {len(refused)} of {len(RUNS)} published runs that "
            f"ran: {'; '.join(refused)}."
        ),
        "",
        *out_of_memory_lines(),
        "",
        "Left out, and why:",
        "",
        *[f"- {why}" for why in LEFT_OUT],
    ]
    return lines


def out_of_memory_lines() -> list[str]:
    """Each published out-of-memory configuration, and whether the model refuses it."""
    lines = []
    for run in OUT_OF_MEMORY:
        peak, usable = peak_memory(run)
        verdict = "refused, as it should be" if peak > usable else "FITS: the model is optimistic"
        lines.append(
            f"A published out-of-memory run ({run.source}, {run.note}): {run.config}: "
            f"predicted peak {peak / 2**30:.1f} GiB of {usable / 2**30:.1f} usable: {verdict}."
        )
    return lines


def async_tp_table() -> list[str]:
    lines = [
        f"Async TP ({TITAN_ASYNC}, Grand Teton's 500 W H100s, bf16, compiled, FSDP x TP 8, "
        "seq 8192), explored: held out until 2026-12-01, when their tokens/s, 21-51% "
        "optimistic, led to the sequence-parallel regrouping copies and to which collectives "
        "torch's micro-pipelining can fuse:",
        "",
        "| model, GPUs | published speedup | predicted | predicted / published "
        "| published tok/s/GPU: vanilla, async | predicted / published: vanilla, async |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    ratios, absolute = [], []
    for model, gpus, tp, local, ckpt, vanilla, overlapped_published in ASYNC_TP:
        speeds = []
        for overlapped in (False, True):
            parallel = {"name": "tp_fsdp", "dp_shard": gpus // tp, "tp": tp}
            parallel["async_tp"] = overlapped
            # Grand Teton's 500 W H100s, compiled (the benchmark's Hardware and Commands).
            run = Run(TITAN_ASYNC, model, "h100_hbm2e", gpus, 8192, local, local * gpus // tp, 1,
                      "held-out", parallel=parallel, checkpoint=ckpt, compile=True,
                      op_sac=ckpt == "selective")  # fmt: skip
            speeds.append(predict_run(run))
        published = overlapped_published / vanilla
        got = speeds[1] / speeds[0]
        ratios.append(("explored", got / published))
        against = (speeds[0] / vanilla, speeds[1] / overlapped_published)
        absolute += [("explored", r) for r in against]
        lines.append(
            f"| {model}, {gpus} | {published:.3f} | {got:.3f} | {got / published:.2f} "
            f"| {vanilla:,.0f}, {overlapped_published:,.0f} | {against[0]:.2f}, {against[1]:.2f} |"
        )
    lines += [
        "",
        f"Mean absolute error: speedups {_mae(ratios)}; tokens/s {_mae(absolute)}.",
    ]
    return lines


def compile_table() -> list[str]:
    """torch.compile's speedup over the same eager run, published vs predicted: the ratio
    checks the compiled-kernel counts apart from what both runs share (the part, its clocks)."""
    lines = [
        f"torch.compile over eager ({TITAN_H100}, the same runs), held-out:",
        "",
        "| config | published speedup | predicted | predicted / published |",
        "|---|---:|---:|---:|",
    ]
    eager = {(r.source, r.model, r.gpus): r for r in RUNS if not r.compile}
    ratios = []
    for compiled in (r for r in RUNS if r.compile):
        base = eager[compiled.source, compiled.model, compiled.gpus]
        published = compiled.published / base.published
        got = predict_run(compiled) / predict_run(base)
        ratios.append((compiled.split, got / published))
        lines.append(f"| {base.config} | {published:.3f} | {got:.3f} | {got / published:.2f} |")
    lines += ["", f"Mean absolute error: {_mae(ratios)}."]
    return lines


def fp8_table() -> list[str]:
    """torchtitan's Float8 runs: the fp8 matmul rate and the casts' bytes (launch/perfmodel/
    fp8.py) against what they ran, and fp8's speedup over the same bf16 run."""
    lines = [
        "fp8 (torchao float8, tensorwise, compiled; the casts counted by launch/perfmodel/fp8.py):",
        "",
        "| split | config | published tok/s/GPU | predicted | predicted / published "
        "| casts' share of the step | memory GiB: predicted peak / usable | note |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    ratios = []
    for run in FP8_RUNS:
        pred = _prediction(run)
        got = pred.tokens_per_s_per_device
        ratios.append((run.split, got / run.published))
        casts = pred.compute.fp8_casts_s
        peak, usable = peak_memory(run, pred.memory)
        lines.append(
            f"| {run.split} | {run.config} | {run.published:,.0f} | {got:,.0f} "
            f"| {got / run.published:.2f} | {casts / pred.step_time_s:.0%} "
            f"| {peak / 2**30:.1f} / {usable / 2**30:.1f} | {run.note} |"
        )
    lines += [
        "",
        f"Mean absolute error: explored {_mae(ratios, 'explored')}; check {_mae(ratios, 'check')}.",
        "",
        "fp8 over bf16, both compiled, the same runs:",
        "",
        "| split | source | bf16 config | published speedup | predicted | predicted / published |",
        "|---|---|---|---:|---:|---:|",
    ]
    speedups = []
    for source, base, published, split in FP8_SPEEDUPS:
        got = predict_run(dataclasses.replace(base, precision="fp8")) / predict_run(base)
        speedups.append((split, got / published))
        lines.append(
            f"| {split} | {source} | {base.config} | {published:.3f} | {got:.3f} "
            f"| {got / published:.2f} |"
        )
    lines += [
        "",
        f"Mean absolute error: explored {_mae(speedups, 'explored')}; check "
        f"{_mae(speedups, 'check')}.",
    ]
    return lines


MEGATRON_MOE = "Megatron-LM megatron/core/transformer/moe/README.md (MCore v0.9, 8 x H100 nodes)"


def _conf_model(name: str) -> ModelConfig:
    """A model of conf/model/ (each file's header cites its published shape)."""
    loaded = OmegaConf.load(REPO / "conf" / "model" / f"{name}.yaml")
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), loaded))


def megatron_moe_tokens(tflops: float, m: ModelConfig, seq: int) -> float:
    """Megatron-Core's TFLOP/s per GPU (2024 count, training.py num_floating_point_operations:
    the whole attention matrix, no recompute, SwiGLU's 3/2) as tokens/s per GPU:
    12 l h^2 ((1 + g/n + s/h) + (f/h) k 3/2) + 6 h V per token."""
    h, groups = m.d_model, m.n_kv_heads / m.n_heads
    mlp = m.expert_ffn_hidden / h * m.top_k * 1.5
    per_token = 12 * m.n_layers * h * h * ((1 + groups + seq / h) + mlp) + 6 * h * m.vocab_size
    return tflops * 1e12 / per_token


# Published MoE runs whose layout this project cannot compose (EP inside pipeline stages), each
# predicted under the closest layout it has; shown apart, outside the mean absolute error.
MOE_RUNS = [
    Run(
        MEGATRON_MOE,
        "mixtral_8x7b",
        "h100_sxm",
        64,
        4096,
        1,
        256,
        megatron_moe_tokens(468, _conf_model("mixtral_8x7b"), 4096),
        "held-out",
        parallel={"name": "ep_fsdp", "ep": 8, "dp_shard": 8},
        note="published 468 TFLOP/s/GPU (their count; 438 with MCore v0.8), dropless, "
        "all-to-all dispatcher, grouped GEMM, run as TP 1 x EP 8 x PP 4 (VP 8) x DP 2 with the "
        "distributed optimizer; predicted as EP 8 x FSDP 8 (no pipeline): not the same step",
    ),
]


def foundry_sweep_table() -> list[str]:
    """Every FULL_SHARD bf16 row of llm-foundry's tables: error by part and sequence length,
    then each row (folded)."""
    rows = []
    for run in foundry_sweep_runs():
        pred = _prediction(run)
        peak, usable = peak_memory(run, pred.memory)
        rows.append((run, pred.tokens_per_s_per_device, peak, usable))
    buckets = (("<= 2048", 0, 2048), ("4096-8192", 4096, 8192), (">= 16384", 16384, 1 << 30))
    lines = [
        f"llm-foundry's benchmark sweep, every FULL_SHARD bf16 row not in the table above "
        f"({FOUNDRY_SWEEP_SOURCE}; {len(rows)} rows; H100 rows explored, A100 rows held-out):",
        "",
        "| part | split | seq | rows | mean abs. error | worst | beyond 25% | memory refused |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for gpu in ("h100_sxm", "a100_80g", "a100_40g"):
        for name, low, high in buckets:
            part = [r for r in rows if r[0].gpu == gpu and low <= r[0].seq <= high]
            if not part:
                continue
            errors = [abs(got / run.published - 1) for run, got, _, _ in part]
            refused = sum(1 for _, _, peak, usable in part if usable and peak > usable)
            lines.append(
                f"| {gpu} | {part[0][0].split} | {name} | {len(part)} "
                f"| {sum(errors) / len(errors):.1%} | {max(errors):.0%} "
                f"| {sum(e > 0.25 for e in errors)} | {refused} |"
            )
    ratios = [(run.split, got / run.published) for run, got, _, _ in rows]
    refused = [run for run, _, peak, usable in rows if usable and peak > usable]
    lines += [
        "",
        f"Mean absolute error: explored (H100) {_mae(ratios, 'explored')}; held-out (A100) "
        f"{_mae(ratios, 'held-out')}; all {_mae(ratios)}. Memory: "
        + (
            f"the model refuses {len(refused)} of {len(rows)} rows that ran."
            if refused
            else f"the model fits all {len(rows)} rows."
        ),
        "",
        "<details><summary>Every row</summary>",
        "",
        "| split | config | published tok/s/GPU | predicted | predicted / published "
        "| memory GiB: predicted peak / usable |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for run, got, peak, usable in rows:
        fits = usable is None or peak <= usable
        lines.append(
            f"| {run.split} | {run.config} | {run.published:,.0f} | {got:,.0f} "
            f"| {got / run.published:.2f} | {peak / 2**30:.1f} / {usable / 2**30:.1f}"
            f"{'' if fits else ' DOES NOT FIT'} |"
        )
    lines += ["", "</details>"]
    return lines


# What llm-foundry's MPT runs where this project's block differs (compute.Kernels block=mpt,
# loss=fused: its 16-bit residual, LayerNorm, GELU and learned positions, flash_attn's fused
# cross-entropy). Added 2026-12-01 after the sweep above was seen; not used for the tables'
# predictions, which run this project's block as the module docstring says.
MPT_KERNELS = {"block": "mpt", "loss": "fused"}


def foundry_block_table() -> list[str]:
    """Every llm-foundry row (the curated ones and the sweep) predicted with this project's
    block and with MPT's own (MPT_KERNELS): what the stand-in's elementwise count carries."""
    runs = [r for r in RUNS if r.source == FOUNDRY] + foundry_sweep_runs()
    lines = [
        "The llm-foundry rows with MPT's own block counted (compute.Kernels block=mpt, "
        "loss=fused: a 16-bit residual, 16-bit LayerNorm, GELU, learned positions, flash_attn's "
        "fused cross-entropy; under half of this project's block's elementwise bytes) "
        "against this project's block, as the tables above predict them:",
        "",
        "| part | rows | mean predicted / published: this project's block | MPT's block "
        "| mean abs. error: this project's block | MPT's block | beyond 25%: this project's "
        "| MPT's |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for gpu in ("h100_sxm", "a100_80g", "a100_40g"):
        part = [r for r in runs if r.gpu == gpu]
        ours = [predict_run(r) / r.published for r in part]
        mpt = [
            _prediction(r, dataclasses.replace(r.kernels, **MPT_KERNELS)).tokens_per_s_per_device
            / r.published
            for r in part
        ]
        cells = []
        for ratios in (ours, mpt):
            cells.append(f"{sum(ratios) / len(ratios):.2f}")
        for ratios in (ours, mpt):
            cells.append(f"{sum(abs(x - 1) for x in ratios) / len(ratios):.1%}")
        for ratios in (ours, mpt):
            cells.append(str(sum(abs(x - 1) > 0.25 for x in ratios)))
        lines.append(f"| {gpu} | {len(part)} | " + " | ".join(cells) + " |")
    return lines


def megatron_block_table() -> list[str]:
    """Megatron-LM 2021's rows predicted with this project's block and with Megatron's own
    (compute.MEGATRON_BLOCK): its fused LayerNorm, bias-dropout-add and bias-GeLU, an fp16
    residual, and the attention dropout on the math path's probabilities."""
    runs = [r for r in RUNS if r.source == MEGATRON]
    lines = [
        "Megatron-LM 2021's rows with its own block counted (compute.Kernels block=megatron: "
        "fused LayerNorm, bias-dropout-add and bias-GeLU on an fp16 residual, attention "
        "dropout on the probabilities; added 2026-12-01 after the rows were seen, not used "
        "for the tables' predictions):",
        "",
        "| config | published tok/s/GPU | predicted / published: this project's block "
        "| Megatron's block |",
        "|---|---:|---:|---:|",
    ]
    for run in runs:
        ours = predict_run(run) / run.published
        kernels = dataclasses.replace(run.kernels, block="megatron")
        theirs = _prediction(run, kernels).tokens_per_s_per_device / run.published
        lines.append(f"| {run.config} | {run.published:,.0f} | {ours:.2f} | {theirs:.2f} |")
    return lines


def memory_table() -> list[str]:
    """torchtitan's published peak memory beside the model's (TITAN_MEMORY_GIB)."""
    lines = [
        f"Peak memory against torchtitan's H100 tables ({TITAN_H100}; they report the caching "
        "allocator's peak reserved memory, the model predicts the peak allocated and keeps "
        "its reserve on the capacity side):",
        "",
        "| config | published GiB | predicted peak GiB | predicted / published | usable GiB |",
        "|---|---:|---:|---:|---:|",
    ]
    ratios = []
    for run, published in TITAN_MEMORY_GIB:
        peak, usable = peak_memory(run)
        ratios.append(peak / 2**30 / published)
        lines.append(
            f"| {run.config} | {published:.1f} | {peak / 2**30:.1f} | {ratios[-1]:.2f} "
            f"| {usable / 2**30:.1f} |"
        )
    lines += [
        "",
        f"Predicted / published: {min(ratios):.2f}-{max(ratios):.2f} (mean "
        f"{sum(ratios) / len(ratios):.2f}). Every run fits both ways; a plan the model puts "
        "near the edge can need more than it says.",
    ]
    return lines


def moe_table() -> list[str]:
    lines = [
        "Mixture of experts (the closest layout this project runs; not in the error above):",
        "",
        "| source | config as predicted | published tok/s/GPU | predicted | predicted / published "
        "| note |",
        "|---|---|---:|---:|---:|---|",
    ]
    for run in MOE_RUNS:
        got = predict_run(run)
        lines.append(
            f"| {run.source} | {run.config} | {run.published:,.0f} | {got:,.0f} "
            f"| {got / run.published:.2f} | {run.note} |"
        )
    return lines


# NVIDIA's Megatron-Core + Transformer Engine runs on DGX-H100, FP8: another stack, read on
# 2026-12-01 after the model was settled, predicted once as this project would run each
# configuration and not in the error above. Configurations from the sources' recipes:
# NVIDIA/NeMo-Framework-Launcher launcher_scripts/conf/training/ (77b69bb, the 24.07 table's
# VP sizes): no activation recompute, distributed_fused_adam (optimizer states sharded over
# DP, bf16 model weights), fp8_hybrid delayed scaling, sequence parallel with TP > 1; GPT3 is
# GELU 4d, learned positions, tied, GPT-2 BPE vocabulary 50257 padded to 50304 (128 x TP: the
# 50432 / 50688 of TP 2 / 4 are within 1% of the head and left at 50304). Megatron-Bridge
# (r0.2.0, scripts/performance): the 8B's "FSDP" is Megatron-FSDP optim_grads_params (its 25.11
# recipe commit swapped it for 5 recomputed layers under DDP, the table still says FSDP: taken
# as the table says), the 70B TP 4 x PP 8 x VP 5 with TP overlap; fp8 current scaling.
NEMO_2407 = "NVIDIA/NeMo docs/source/performance/performance_summary.md (070a0bb, NeMo 24.07)"
BRIDGE_2511 = "NVIDIA-NeMo/Megatron-Bridge docs/performance-summary.md (00b7660, 25.11)"


def _nvidia_run(source, model, gpus, gbs, mb, seq, tp, pp, vp, published, megatron_fsdp=False):
    """A DGX-H100 FP8 row as this project would run it: TP 1 under Megatron's distributed
    optimizer or Megatron-FSDP as FSDP (this project's ZeRO-1 runs through DeepSpeed, which
    has no fp8), TP inside FSDP, pipelines as pp_fsdp with the same interleaving (this
    project's stages run torchao's fp8 since 2026-12-01, after these rows were read, gathering
    bf16 weights: that moved the pipelined rows' predictions by -4% to +4%)."""
    layout = {"name": "fsdp", "dp_shard": -1}
    if pp > 1:
        schedule = "interleaved_one_f_one_b" if vp > 1 else "one_f_one_b"
        layout = {
            "name": "pp_fsdp",
            "dp_shard": gpus // (tp * pp),
            "tp": tp,
            "pp": pp,
            "sequence_parallel": tp > 1,
            "pp_stages_per_rank": vp,
            "pp_schedule": schedule,
        }
    elif tp > 1:
        layout = {"name": "tp_fsdp", "dp_shard": gpus // tp, "tp": tp, "sequence_parallel": True}
    how = "Megatron-FSDP" if megatron_fsdp else "distributed optimizer"
    note = f"theirs: TP {tp}, PP {pp}" + (f", VP {vp}" if vp > 1 else "") + f", {how}"
    return Run(source, model, "h100_sxm", gpus, seq, mb, gbs, published, "another stack",
               parallel=layout, precision="fp8", compile=True, note=note)  # fmt: skip


NVIDIA_RUNS = [
    _nvidia_run(NEMO_2407, "gpt3-5b", 64, 2048, 4, 2048, 1, 1, 1, 22521),
    _nvidia_run(NEMO_2407, "gpt3-20b", 64, 256, 2, 2048, 2, 1, 1, 5851),
    _nvidia_run(NEMO_2407, "gpt3-175b", 128, 256, 1, 2048, 4, 8, 6, 726),
    _nvidia_run(NEMO_2407, "gpt3-175b", 512, 2048, 2, 2048, 4, 8, 6, 782),
    _nvidia_run(NEMO_2407, "llama2-7b", 8, 128, 1, 4096, 1, 1, 1, 16847),
    _nvidia_run(NEMO_2407, "llama2-13b", 16, 128, 1, 4096, 1, 4, 10, 8646),
    _nvidia_run(NEMO_2407, "llama2-70b", 64, 128, 1, 4096, 4, 4, 20, 1707),
    _nvidia_run(BRIDGE_2511, "llama3-8b", 8, 128, 1, 8192, 1, 1, 1, 14451, megatron_fsdp=True),
    _nvidia_run(BRIDGE_2511, "llama3-70b", 64, 128, 1, 8192, 4, 8, 5, 1602),
]
NVIDIA_LEFT_OUT = (
    "Left out: Nemotron-8B/22B/340B (squared-ReLU MLP, rope on half of each head: not this "
    "project's block; their recipes' batch and PP sizes differ from the table's), LLAMA3-8B "
    "and -70B of 24.07 and LLAMA3.1-405B (context parallelism, not a layout here), the MoE "
    "rows (their expert shapes and DeepEP dispatch are not this project's MoE)."
)


def _run_refusal(run: Run) -> str | None:
    """What this project's rules (train/spec/rules.py check_run) refuse in ``run`` as mapped,
    other than memory (the table's own column), or None."""
    try:
        check_run(run_config(run), run.gpus, min(8, run.gpus))
    except ConfigError as exc:
        return str(exc)
    return None


def nvidia_table() -> list[str]:
    """NVIDIA's Megatron-Core + TE runs against what the model predicts this project's runtime
    does on the same configuration, with the share of that predicted step the model puts in
    memory-bound kernels (elementwise work, weight casts, fp8 casts): what their fused
    kernels and bf16-held weights mostly remove."""
    lines = [
        "NVIDIA's own stack on DGX-H100, FP8 (Megatron-Core + Transformer Engine; another "
        "stack, not in the error above: predicted as this project would run each "
        "configuration, read after the model was settled):",
        "",
        "| source | config as predicted | published tok/s/GPU | predicted | predicted / published "
        "| memory-bound share of the predicted step | memory GiB: predicted peak / usable "
        "| note |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    ratios = []
    for run in NVIDIA_RUNS:
        pred = _prediction(run)
        got = pred.tokens_per_s_per_device
        ratios.append(got / run.published)
        peak, usable = peak_memory(run, pred.memory)
        refused = _run_refusal(run)
        lines.append(
            f"| {run.source} | {run.config} | {run.published:,.0f} | {got:,.0f} "
            f"| {got / run.published:.2f} | {pred.compute.memory_s / pred.step_time_s:.0%} "
            f"| {peak / GIB:.1f} / {usable / GIB:.1f}{'' if peak <= usable else ' DOES NOT FIT'} "
            f"| {run.note}{'; REFUSED here: ' + refused if refused else ''} |"
        )
    lines += [
        "",
        f"Predicted / published: {min(ratios):.2f}-{max(ratios):.2f} (mean "
        f"{sum(ratios) / len(ratios):.2f}). {NVIDIA_LEFT_OUT}",
    ]
    return lines


FLASH_ATTN = "Dao-AILab/flash-attention training/README.md (4a6eaa9, 2022-11-29)"


def _flash_attn_run(model: str, micro_batch: int, global_batch: int, node_tokens_per_s: float):
    """A row of the flash-attention repository's GPT3 training-speed table: one node of 8 A100
    80GB SXM4 (400 W), seq 2048, bf16 (PyTorch Lightning's autocast), FlashAttention 1 with the
    repository's fused dropout-add-LayerNorm, bias-GELU MLP and Apex cross-entropy (in-place
    backward: base.yaml's loss_fn, inplace_backward: True "to save memory"). Its experiments at
    that commit (training/configs/experiment/pile/gpt3{s,m,l,xl}-flash.yaml and
    gpt3-2.7B-flash-hdim128.yaml) pick the micro batch by GPU memory (80 GB: 32, 32, 16, 8, 4)
    and 256 or 512 sequences a step; the 125M and 355M run plain DDP, the others
    DDP with torch's ZeroRedundancyOptimizer (DDPStrategyZero1), which this project runs as
    parallel=zero1 (DeepSpeed's stage 1). Published: tokens/s for the node, so / 8."""
    layout = (
        {"name": "ddp", "dp_replicate": -1}
        if micro_batch == 32
        else {"name": "zero1", "dp_shard": -1}
    )
    return Run(FLASH_ATTN, model, "a100_80g", 8, 2048, micro_batch, global_batch,
               node_tokens_per_s / 8, "explored", parallel=layout, attention="flash_v1",
               fused_loss=True, fused_loss_in_place=True)  # fmt: skip


# Read on 2026-12-01 after the model was settled, but predicted with flash and flash_triton
# before flash_v1 was added for them (FA2 paper's factor, nothing fitted): "explored".
FLASH_ATTN_RUNS = [
    _flash_attn_run("fa-gpt3-125m", 32, 256, 1310e3),
    _flash_attn_run("fa-gpt3-355m", 32, 256, 503e3),
    _flash_attn_run("fa-gpt3-760m", 16, 256, 245e3),
    _flash_attn_run("fa-gpt3-1.3b", 8, 512, 169e3),
    _flash_attn_run("fa-gpt3-2.7b", 4, 512, 85e3),
]


def flash_attn_table() -> list[str]:
    """The flash-attention repository's GPT3 table as this project would run it (eager, its
    block, FlashAttention 1), and compiled (train.compile: fused elementwise kernels, nearer
    the repository's hand-fused ones)."""
    lines = [
        f"The flash-attention repository's GPT3 training table ({FLASH_ATTN}; 8 x A100 80GB "
        "SXM4, seq 2048; explored, not in the error above: predicted as this project would "
        "run each configuration, eager and compiled, with FlashAttention 1's kernel):",
        "",
        "| config | published tok/s/GPU | predicted | predicted / published | compiled: "
        "predicted / published | memory-bound share of the predicted step | memory GiB: "
        "predicted peak / usable |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    eager, compiled = [], []
    for run in FLASH_ATTN_RUNS:
        pred = _prediction(run)
        got = pred.tokens_per_s_per_device
        fused = predict_run(dataclasses.replace(run, compile=True))
        eager.append(("explored", got / run.published))
        compiled.append(("explored", fused / run.published))
        peak, usable = peak_memory(run, pred.memory)
        lines.append(
            f"| {run.config} | {run.published:,.0f} | {got:,.0f} | {got / run.published:.2f} "
            f"| {fused / run.published:.2f} | {pred.compute.memory_s / pred.step_time_s:.0%} "
            f"| {peak / GIB:.1f} / {usable / GIB:.1f}{'' if peak <= usable else ' DOES NOT FIT'} |"
        )
    lines += [
        "",
        f"Mean absolute error: eager {_mae(eager)}; compiled {_mae(compiled)}.",
    ]
    return lines


BEGIN, END = "<!-- published-points:begin -->", "<!-- published-points:end -->"


def render() -> str:
    return "\n".join(
        [
            BEGIN,
            "Generated by `python bench/published_points.py --write`; do not edit by hand.",
            "",
            "Collectives (nccl-tests busbw, large messages unless said):",
            "",
            *comm_table(),
            "",
            "Training steps:",
            "",
            *training_table(),
            "",
            *async_tp_table(),
            "",
            *compile_table(),
            "",
            *fp8_table(),
            "",
            *foundry_sweep_table(),
            "",
            *foundry_block_table(),
            "",
            *megatron_block_table(),
            "",
            *flash_attn_table(),
            "",
            *memory_table(),
            "",
            *moe_table(),
            "",
            *nvidia_table(),
            END,
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"rewrite the tables in {DOCS}")
    parser.add_argument(
        "--check", action="store_true", help=f"exit 1 when {DOCS.name}'s tables are stale"
    )
    args = parser.parse_args(argv)
    text = render()
    if not (args.write or args.check):
        print(text)
        return 0
    docs = DOCS.read_text()
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    found = pattern.search(docs)
    if not found:
        print(f"{DOCS} has no {BEGIN} ... {END} section", file=sys.stderr)
        return 1
    if args.check:
        stale = found.group(0) != text
        print(f"{DOCS}: {'stale, run --write' if stale else 'up to date'}")
        return int(stale)
    DOCS.write_text(pattern.sub(lambda _: text, docs))
    print(f"rewrote the published-points section of {DOCS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
