"""Data per rank: rows seeded by (seed, step, row), each rank draws only its own rows."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from train.runtime.data import (
    SyntheticTokens,
    TokenFile,
    draw_rank_batches,
    rank_micro_batches,
    rank_row_indices,
)

GLOBAL_BATCH = 8


class CountingSource:
    """Wraps a data source and records every row it was asked for."""

    def __init__(self, source):
        self.source, self.asked = source, []

    def rows(self, step, rows):
        self.asked.extend(rows)
        return self.source.rows(step, rows)


@pytest.fixture(params=["synthetic", "file"])
def source(request, tmp_path):
    if request.param == "synthetic":
        return SyntheticTokens(vocab_size=512, seq_len=16, seed=3)
    path = tmp_path / "tokens.bin"
    np.random.default_rng(0).integers(0, 60_000, 5_000, dtype=np.uint32).tofile(path)
    return TokenFile(path, "uint32", seq_len=16, seed=3)


def micro_steps_over_ranks(source, step, dp_size, micro_batch):
    """Each micro-step's rows, gathered over the ranks in rank order."""
    accum = GLOBAL_BATCH // (dp_size * micro_batch)
    per_rank = [
        draw_rank_batches(
            source,
            step,
            dp_rank=r,
            dp_size=dp_size,
            micro_batch=micro_batch,
            accum_steps=accum,
            pin=False,
        )
        for r in range(dp_size)
    ]
    return [
        (
            torch.cat([per_rank[r][m][0] for r in range(dp_size)]),
            torch.cat([per_rank[r][m][1] for r in range(dp_size)]),
        )
        for m in range(accum)
    ]


def test_rows_are_the_same_whatever_the_data_parallel_split(source):
    one_rank = micro_steps_over_ranks(source, step=5, dp_size=1, micro_batch=4)
    for dp_size, micro in ((2, 2), (4, 1), (2, 1), (8, 1), (1, 8)):
        other = micro_steps_over_ranks(source, step=5, dp_size=dp_size, micro_batch=micro)
        # Whatever the split, the step trains on rows 0..7 of the global batch, row by row.
        flat = torch.cat([inputs for inputs, _ in other])
        assert torch.equal(flat, torch.cat([inputs for inputs, _ in one_rank]))
    # 2 ranks x micro 2 see, micro-step by micro-step, what 1 rank x micro 4 sees.
    two_ranks = micro_steps_over_ranks(source, step=5, dp_size=2, micro_batch=2)
    for (a_in, a_tg), (b_in, b_tg) in zip(one_rank, two_ranks, strict=True):
        assert torch.equal(a_in, b_in) and torch.equal(a_tg, b_tg)


def test_a_row_depends_on_seed_step_and_row_only(source):
    alone = source.rows(step=4, rows=[6])
    assert torch.equal(source.rows(step=4, rows=[0, 6, 2])[1], alone[0])
    assert torch.equal(source.global_batch(4, GLOBAL_BATCH)[6], alone[0])
    assert not torch.equal(source.rows(step=5, rows=[6]), alone)  # another step
    assert not torch.equal(source.rows(step=4, rows=[5]), alone)  # another row
    again = copy.copy(source)
    again.seed = 4
    assert not torch.equal(again.rows(step=4, rows=[6]), alone)  # another seed


def test_a_rank_draws_only_its_own_rows(source):
    counting = CountingSource(source)
    batches = draw_rank_batches(
        counting, 1, dp_rank=1, dp_size=2, micro_batch=2, accum_steps=2, pin=False
    )
    # Micro-step m covers rows [4m, 4m+4); rank 1 takes the second pair of each.
    assert counting.asked == [2, 3, 6, 7]
    assert [b[0].shape for b in batches] == [(2, 16), (2, 16)]


def test_row_indices_cover_the_global_batch_once():
    for dp_size, micro in ((1, 8), (2, 2), (4, 1), (2, 4)):
        accum = GLOBAL_BATCH // (dp_size * micro)
        seen = [
            row
            for r in range(dp_size)
            for rows in rank_row_indices(
                dp_rank=r, dp_size=dp_size, micro_batch=micro, accum_steps=accum
            )
            for row in rows
        ]
        assert sorted(seen) == list(range(GLOBAL_BATCH))


def test_targets_are_inputs_shifted_by_one_and_the_reference_slicer_agrees(source):
    batches = draw_rank_batches(
        source, 2, dp_rank=0, dp_size=2, micro_batch=2, accum_steps=2, pin=False
    )
    sliced = list(rank_micro_batches(source.global_batch(2, GLOBAL_BATCH), 0, 2, 2))
    for (inputs, targets), (ref_in, ref_tg) in zip(batches, sliced, strict=True):
        assert torch.equal(inputs[:, 1:], targets[:, :-1])
        assert torch.equal(inputs, ref_in) and torch.equal(targets, ref_tg)
        assert inputs.dtype == torch.int64


def test_pin_pins_contiguous_tensors_only_when_asked(monkeypatch):
    pinned = []

    def fake_pin(self):  # a CPU-only torch cannot pin: record what would be pinned
        pinned.append(self.is_contiguous())
        return self

    monkeypatch.setattr(torch.Tensor, "pin_memory", fake_pin)
    data = SyntheticTokens(512, 16, seed=0)
    draw_rank_batches(data, 1, dp_rank=0, dp_size=1, micro_batch=2, accum_steps=2, pin=False)
    assert pinned == []
    draw_rank_batches(data, 1, dp_rank=0, dp_size=1, micro_batch=2, accum_steps=2, pin=True)
    assert pinned == [True] * 4  # inputs and targets of 2 micro-steps, each contiguous


def test_synthetic_tokens_stay_in_the_vocabulary_and_repeat_their_first_half():
    tokens = SyntheticTokens(vocab_size=50, seq_len=16, seed=1).global_batch(1, 64)
    assert tokens.shape == (64, 17) and int(tokens.min()) >= 0 and int(tokens.max()) < 50
    # seq_len+1 = 17 tokens: a first half of 9, then its first 8 again.
    assert torch.equal(tokens[:, 9:], tokens[:, :8])
