"""Token batches: synthetic (nothing downloaded) or a memory-mapped token file.

Every row of a step's global batch has its own generator, seeded by (seed, step, global row
index), and each rank draws only the rows it trains on. So the data a row holds depends only
on (seed, step, row), not on the world size or the layout: 2 ranks x micro batch b see exactly
the rows that 1 rank x micro batch 2b sees, which is what makes layouts comparable loss for
loss, and no rank pays for rows another rank trains on (drawing the whole global batch on
every rank made weak scaling look worse with N for reasons unrelated to communication).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch


def row_generator(seed: int, step: int, row: int) -> np.random.Generator:
    """The generator of one row: independent streams for every (seed, step, row)."""
    # SeedSequence mixes the three words (no collisions as with seed * K + step); it takes
    # non-negative entropy only, so a negative seed is taken modulo 2**64.
    return np.random.default_rng([seed % 2**64, step, row])


class SyntheticTokens:
    """Zipf-distributed tokens whose second half of each row repeats the first half.

    Uniform random tokens would leave nothing to learn (loss stuck at ln V). Here the unigram
    frequencies are learnt within a few steps (the loss falls from ln V towards their entropy),
    and the repeat rewards attention that copies, so longer runs keep improving.
    """

    def __init__(self, vocab_size: int, seq_len: int, seed: int, zipf_exponent: float = 1.1):
        self.vocab_size, self.seq_len, self.seed = vocab_size, seq_len, seed
        ranks = np.arange(1, vocab_size + 1, dtype=np.float64)
        probs = ranks**-zipf_exponent / (ranks**-zipf_exponent).sum()
        self.cdf = np.cumsum(probs)  # inverse-CDF sampling: one uniform draw per token

    def rows(self, step: int, rows: Sequence[int]) -> torch.Tensor:
        """(len(rows), seq_len+1) int64 tokens: the given rows of step's global batch."""
        half = (self.seq_len + 2) // 2
        uniform = np.empty((len(rows), half))
        for i, row in enumerate(rows):
            uniform[i] = row_generator(self.seed, step, row).random(half)
        first = np.searchsorted(self.cdf, uniform, side="right").astype(np.int64)
        # cdf[-1] can round below 1.0: a draw above it still gets the last token.
        np.minimum(first, self.vocab_size - 1, out=first)
        return torch.from_numpy(np.concatenate([first, first], axis=1)[:, : self.seq_len + 1])

    def global_batch(self, step: int, batch: int) -> torch.Tensor:
        """Rows 0..batch-1 of step's global batch (what all ranks together draw)."""
        return self.rows(step, range(batch))


class TokenFile:
    """Windows of seq_len+1 tokens at random offsets of a flat .bin token file (nanoGPT format)."""

    def __init__(self, path: str | Path, dtype: str, seq_len: int, seed: int):
        self.tokens = np.memmap(path, dtype=np.dtype(str(dtype)), mode="r")
        self.seq_len, self.seed = seq_len, seed
        if len(self.tokens) <= seq_len + 1:
            raise ValueError(f"{path}: {len(self.tokens)} tokens, need more than seq_len+1")

    def rows(self, step: int, rows: Sequence[int]) -> torch.Tensor:
        """(len(rows), seq_len+1) int64 tokens; each row's offset is drawn from its own seed."""
        high = len(self.tokens) - self.seq_len - 1
        out = np.empty((len(rows), self.seq_len + 1), dtype=np.int64)
        for i, row in enumerate(rows):
            offset = int(row_generator(self.seed, step, row).integers(0, high))
            out[i] = self.tokens[offset : offset + self.seq_len + 1]
        return torch.from_numpy(out)

    def global_batch(self, step: int, batch: int) -> torch.Tensor:
        return self.rows(step, range(batch))


def rank_row_indices(
    *, dp_rank: int, dp_size: int, micro_batch: int, accum_steps: int
) -> list[range]:
    """Global row indices of each gradient-accumulation micro-step of this data-parallel rank.

    Micro-step m covers rows [m*micro*dp, (m+1)*micro*dp) of the global batch; rank r takes
    its micro_batch rows of that chunk. The same for every step.
    """
    chunk = micro_batch * dp_size
    return [
        range(m * chunk + dp_rank * micro_batch, m * chunk + (dp_rank + 1) * micro_batch)
        for m in range(accum_steps)
    ]


def draw_rank_batches(
    data: SyntheticTokens | TokenFile,
    step: int,
    *,
    dp_rank: int,
    dp_size: int,
    micro_batch: int,
    accum_steps: int,
    pin: bool,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(inputs, targets) of each micro-step of this rank at ``step``: only its own rows.

    ``pin`` (CUDA ranks only): page-locked host tensors, so the step's non-blocking copies to
    the device are really asynchronous. Inputs and targets are made contiguous before pinning:
    a strided view would be staged through pageable memory on its way to the device.
    """
    micro_rows = rank_row_indices(
        dp_rank=dp_rank, dp_size=dp_size, micro_batch=micro_batch, accum_steps=accum_steps
    )
    tokens = data.rows(step, [row for rows in micro_rows for row in rows])
    batches = []
    for chunk in tokens.split(micro_batch):
        inputs, targets = chunk[:, :-1].contiguous(), chunk[:, 1:].contiguous()
        if pin:
            inputs, targets = inputs.pin_memory(), targets.pin_memory()
        batches.append((inputs, targets))
    return batches


def rank_micro_batches(
    global_tokens: torch.Tensor, rank: int, dp_size: int, micro_batch: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(inputs, targets) of this rank's micro-steps, sliced from a whole global batch.

    The reference for draw_rank_batches (same rows, same order); the loop no longer uses it,
    since it needs every rank to hold the whole global batch.
    """
    accum_steps = global_tokens.shape[0] // (micro_batch * dp_size)
    for rows in rank_row_indices(
        dp_rank=rank, dp_size=dp_size, micro_batch=micro_batch, accum_steps=accum_steps
    ):
        chunk = global_tokens[rows.start : rows.stop]
        yield chunk[:, :-1], chunk[:, 1:]
