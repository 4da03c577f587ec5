"""TokenBatches and val_batches, on a stream whose tokens are their own positions (tokens[i] = i),
so every window can be checked against where it came from."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attractor.data import TokenBatches, val_batches
from attractor.errors import ConfigError

STREAM = np.arange(5000, dtype=np.uint32)  # positions, so a window's values say where it starts


def draw(batches: TokenBatches, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [next(batches) for _ in range(n)]


def test_windows_are_contiguous_and_targets_are_shifted_inputs():
    idx, targets = next(TokenBatches(STREAM, batch_size=6, seq_len=16, seed=0))
    assert idx.shape == targets.shape == (6, 16) and idx.dtype == targets.dtype == torch.int64
    starts = idx[:, :1]
    assert torch.equal(idx, starts + torch.arange(16))          # a contiguous slice of the stream
    assert torch.equal(targets, starts + 1 + torch.arange(16))  # the same slice one token later
    assert int(starts.max()) + 16 < len(STREAM)


def test_windows_reach_both_ends_of_the_stream():
    tokens = np.arange(10, dtype=np.uint16)  # 10 tokens, windows of 9 + 1: starts 0 or 1 only
    starts = {int(next(TokenBatches(tokens, 8, 8, seed=s))[0][:, 0].min()) for s in range(4)}
    starts |= {int(next(TokenBatches(tokens, 8, 8, seed=s))[0][:, 0].max()) for s in range(4)}
    assert starts == {0, 1}


def test_same_seed_same_batches_other_seed_other_batches():
    a = draw(TokenBatches(STREAM, 4, 8, seed=1), 3)
    b = draw(TokenBatches(torch.from_numpy(STREAM.astype(np.int64)), 4, 8, seed=1), 3)
    c = draw(TokenBatches(STREAM, 4, 8, seed=2), 3)
    assert all(torch.equal(x[0], y[0]) for x, y in zip(a, b))
    assert not all(torch.equal(x[0], y[0]) for x, y in zip(a, c))
    assert not torch.equal(a[0][0], a[1][0])  # steps differ


def test_resume_from_state_dict_repeats_the_following_batches():
    straight = TokenBatches(STREAM, 4, 8, seed=3)
    draw(straight, 5)
    state = json.loads(json.dumps(straight.state_dict()))  # JSON-safe, as a checkpoint holds it
    expected = draw(straight, 3)
    resumed = TokenBatches(STREAM, 4, 8, seed=3)
    resumed.load_state_dict(state)
    assert state == {"seed": 3, "step": 5}
    assert all(torch.equal(x[0], y[0]) for x, y in zip(draw(resumed, 3), expected))


@settings(max_examples=25, deadline=None)
@given(world=st.sampled_from([1, 2, 3, 4]), per_rank=st.integers(1, 3), seed=st.integers(0, 2**32), steps=st.integers(1, 3))
def test_ranks_rows_interleave_into_the_single_process_batch(world, per_rank, seed, steps):
    batch = world * per_rank
    single = draw(TokenBatches(STREAM, batch, 8, seed), steps)
    ranks = [draw(TokenBatches(STREAM, batch, 8, seed, rank=r, world_size=world), steps) for r in range(world)]
    for step in range(steps):
        rebuilt = torch.empty_like(single[step][0])
        for r in range(world):
            assert ranks[r][step][0].shape == (per_rank, 8)
            rebuilt[r::world] = ranks[r][step][0]
        assert torch.equal(rebuilt, single[step][0])


def test_two_ranks_see_exactly_the_rows_of_one_process():
    single = torch.cat([x for x, _ in draw(TokenBatches(STREAM, 8, 8, seed=7), 4)])
    halves = torch.cat([x for r in range(2) for x, _ in draw(TokenBatches(STREAM, 8, 8, seed=7, rank=r, world_size=2), 4)])
    assert sorted(map(tuple, single.tolist())) == sorted(map(tuple, halves.tolist()))


@pytest.mark.parametrize("kw, match", [
    ({"batch_size": 6, "world_size": 4}, "batch_size=6 .*divisible by world_size=4"),
    ({"rank": 2, "world_size": 2}, "rank=2 must be below world_size=2"),
    ({"seq_len": 5000}, "5000 tokens, too few for one window of seq_len \\+ 1 = 5001"),
    ({"seed": -1}, "seed=-1"),
    ({"batch_size": 0}, "batch_size=0"),
])
def test_bad_batch_settings_raise_config_error(kw, match):
    args = {"batch_size": 4, "seq_len": 8, "seed": 0, **kw}
    with pytest.raises(ConfigError, match=match):
        TokenBatches(STREAM, **args)


def test_state_from_another_seed_is_refused():
    batches = TokenBatches(STREAM, 4, 8, seed=0)
    with pytest.raises(ConfigError, match="seed 1"):
        batches.load_state_dict({"seed": 1, "step": 3})
    with pytest.raises(ConfigError, match="state must be"):
        batches.load_state_dict({"step": 3})


def test_val_batches_cover_the_stream_in_order_and_repeat():
    tokens = np.arange(103, dtype=np.uint16)
    first, second = val_batches(tokens, 3, 10), val_batches(tokens, 3, 10)
    assert [b[0].shape[0] for b in first] == [3, 3, 3, 1]  # (103 - 1) // 10 = 10 windows
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, second))
    idx = torch.cat([x for x, _ in first]).flatten()
    targets = torch.cat([y for _, y in first]).flatten()
    assert torch.equal(idx, torch.arange(100)) and torch.equal(targets, torch.arange(1, 101))


def test_val_batches_max_batches_keeps_the_first():
    tokens = np.arange(1000, dtype=np.uint16)
    capped = val_batches(tokens, 4, 8, max_batches=2)
    assert len(capped) == 2 and all(torch.equal(a[0], b[0]) for a, b in zip(capped, val_batches(tokens, 4, 8)))
    with pytest.raises(ConfigError, match="too few for one window"):
        val_batches(tokens[:8], 4, 8)
