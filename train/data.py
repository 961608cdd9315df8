"""Token batches: synthetic (nothing downloaded) or a memory-mapped token file.

Every rank draws the same global batch for a step from a generator seeded by (seed, step),
then takes its own rows. So the data a step sees depends only on the global batch, not on how
it is split over ranks and micro-steps: 2 ranks x micro batch b see exactly the rows that
1 rank x micro batch 2b sees, which is what makes layouts comparable loss for loss.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

TOKEN_DTYPES = {"uint16": np.uint16, "uint32": np.uint32}


def _step_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


class SyntheticTokens:
    """Zipf-distributed tokens whose second half of each row repeats the first half.

    Uniform random tokens would leave nothing to learn (loss stuck at ln V). Here the unigram
    frequencies are learnt within a few steps (the loss falls from ln V towards their entropy),
    and the repeat rewards attention that copies, so longer runs keep improving.
    """

    def __init__(self, vocab_size: int, seq_len: int, seed: int, zipf_exponent: float = 1.1):
        self.vocab_size, self.seq_len, self.seed = vocab_size, seq_len, seed
        ranks = torch.arange(1, vocab_size + 1, dtype=torch.float64)
        self.probs = ranks**-zipf_exponent / (ranks**-zipf_exponent).sum()

    def global_batch(self, step: int, batch: int) -> torch.Tensor:
        g = _step_generator(self.seed, step)
        half = (self.seq_len + 2) // 2
        first = torch.multinomial(self.probs, batch * half, replacement=True, generator=g)
        first = first.view(batch, half)
        return torch.cat([first, first], dim=1)[:, : self.seq_len + 1]


class TokenFile:
    """Windows of seq_len+1 tokens at random offsets of a flat .bin token file (nanoGPT format)."""

    def __init__(self, path: str | Path, dtype: str, seq_len: int, seed: int):
        self.tokens = np.memmap(path, dtype=TOKEN_DTYPES[dtype], mode="r")
        self.seq_len, self.seed = seq_len, seed
        if len(self.tokens) <= seq_len + 1:
            raise ValueError(f"{path}: {len(self.tokens)} tokens, need more than seq_len+1")

    def global_batch(self, step: int, batch: int) -> torch.Tensor:
        g = _step_generator(self.seed, step)
        offsets = torch.randint(0, len(self.tokens) - self.seq_len - 1, (batch,), generator=g)
        rows = [self.tokens[o : o + self.seq_len + 1].astype(np.int64) for o in offsets.tolist()]
        return torch.from_numpy(np.stack(rows))


def rank_micro_batches(
    global_tokens: torch.Tensor, rank: int, dp_size: int, micro_batch: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(inputs, targets) for each gradient-accumulation micro-step of this data-parallel rank.

    Micro-step m covers rows [m*micro*dp, (m+1)*micro*dp) of the global batch; rank r takes
    its micro_batch rows of that chunk.
    """
    chunk = micro_batch * dp_size
    for first in range(0, global_tokens.shape[0], chunk):
        rows = global_tokens[first + rank * micro_batch : first + (rank + 1) * micro_batch]
        yield rows[:, :-1], rows[:, 1:]
