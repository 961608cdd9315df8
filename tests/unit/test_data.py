import numpy as np
import torch

from train.runtime.data import SyntheticTokens, TokenFile, rank_micro_batches


def rows_seen(global_tokens, world_size, micro_batch):
    """Each micro-step's rows, gathered over ranks in rank order."""
    per_rank = [
        list(rank_micro_batches(global_tokens, r, world_size, micro_batch))
        for r in range(world_size)
    ]
    return [
        torch.cat([per_rank[r][m][0] for r in range(world_size)]) for m in range(len(per_rank[0]))
    ]


def test_two_ranks_see_what_one_rank_sees_at_twice_the_micro_batch():
    tokens = SyntheticTokens(vocab_size=512, seq_len=16, seed=3).global_batch(step=1, batch=8)
    one_rank = rows_seen(tokens, world_size=1, micro_batch=4)
    two_ranks = rows_seen(tokens, world_size=2, micro_batch=2)
    assert len(one_rank) == len(two_ranks) == 2
    for a, b in zip(one_rank, two_ranks, strict=False):
        assert torch.equal(a, b)


def test_targets_are_inputs_shifted_by_one():
    tokens = SyntheticTokens(512, 16, seed=0).global_batch(1, 4)
    inputs, targets = next(rank_micro_batches(tokens, 0, 1, 4))
    assert inputs.shape == targets.shape == (4, 16)
    assert torch.equal(inputs[:, 1:], targets[:, :-1])


def test_synthetic_batches_depend_on_seed_and_step_only():
    data = SyntheticTokens(512, 16, seed=7)
    assert torch.equal(data.global_batch(5, 4), SyntheticTokens(512, 16, seed=7).global_batch(5, 4))
    assert not torch.equal(data.global_batch(5, 4), data.global_batch(6, 4))
    assert int(data.global_batch(5, 64).max()) < 512


def test_token_file_windows(tmp_path):
    path = tmp_path / "tokens.bin"
    np.arange(10_000, dtype=np.uint32).tofile(path)
    batch = TokenFile(path, "uint32", seq_len=32, seed=0).global_batch(step=1, batch=4)
    assert batch.shape == (4, 33) and batch.dtype == torch.int64
    # Windows are contiguous runs of the file.
    assert torch.equal(batch[:, 1:] - batch[:, :-1], torch.ones(4, 32, dtype=torch.int64))
