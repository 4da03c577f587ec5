"""Puzzle batches (TRM's epochs, determinism, resume, the DDP split) and metrics by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attractor.data.puzzles import Split, build_sudoku, load_puzzles
from attractor.errors import ConfigError
from attractor.tasks.puzzles import IGNORE_INDEX, PuzzleBatches, PuzzleDataConfig, cell_metrics, changed_metrics, test_batches


def synthetic_split(groups: int = 7, members: int = 3, length: int = 5, seed: int = 0) -> Split:
    """Rows whose first token encodes (group, member), groups shuffled in the file, pads in labels."""
    rng = np.random.default_rng(seed)
    group = np.repeat(np.arange(groups, dtype=np.int32), members)
    aug = np.tile(np.arange(members, dtype=np.int32), groups)
    perm = rng.permutation(len(group))  # groups need not be contiguous in a file
    group, aug = group[perm], aug[perm]
    inputs = np.zeros((len(group), length), np.uint8)
    inputs[:, 0], inputs[:, 1] = group, aug
    labels = rng.integers(0, 4, size=(len(group), length)).astype(np.uint8)
    return Split(inputs, labels, group, aug, np.arange(groups, dtype=np.int32) * 10)


def ids(inputs: torch.Tensor) -> list[tuple[int, int]]:
    return [(int(g), int(a)) for g, a in inputs[:, :2]]


@settings(max_examples=20, deadline=None)
@given(batch=st.integers(1, 9), seed=st.integers(0, 2**31))
def test_each_epoch_takes_one_member_of_every_group(batch, seed):
    split = synthetic_split()
    batches = PuzzleBatches(split, batch, seed=seed)
    stream = [row for _ in range(-(-3 * 7 // batch)) for row in ids(next(batches)[0])]  # 3 epochs of 7 groups
    for epoch in range(3):
        groups = [g for g, _ in stream[epoch * 7:(epoch + 1) * 7]]
        assert sorted(groups) == list(range(7))


def test_members_and_order_vary_across_epochs_and_seeds():
    split = synthetic_split(groups=20, members=5)
    a = ids(next(PuzzleBatches(split, 20, seed=0))[0])
    b = ids(next(PuzzleBatches(split, 20, seed=1))[0])
    assert a != b and sorted(g for g, _ in a) == sorted(g for g, _ in b)
    batches = PuzzleBatches(split, 20, seed=0)
    epochs = [ids(next(batches)[0]) for _ in range(4)]
    assert len({tuple(e) for e in epochs}) == 4
    members = {m for e in epochs for _, m in e}
    assert members == set(range(5))  # every augmentation gets drawn


def test_labels_map_pad_to_ignore_and_rows_match_the_split():
    split = synthetic_split()
    batches = PuzzleBatches(split, 4, seed=3)
    rows = batches.global_rows(0)
    inputs, labels = next(batches)
    assert inputs.dtype == labels.dtype == torch.int64 and inputs.shape == labels.shape == (4, 5)
    expected = torch.from_numpy(split.labels[rows].astype(np.int64))
    assert torch.equal(labels == IGNORE_INDEX, expected == 0)
    assert torch.equal(labels[expected != 0], expected[expected != 0])
    assert torch.equal(inputs, torch.from_numpy(split.inputs[rows].astype(np.int64)))


def test_resume_repeats_the_uninterrupted_batches():
    split = synthetic_split()
    full = PuzzleBatches(split, 5, seed=11)
    expected = [next(full) for _ in range(9)]
    first = PuzzleBatches(split, 5, seed=11)
    for _ in range(4):
        next(first)
    resumed = PuzzleBatches(split, 5, seed=11)
    resumed.load_state_dict(first.state_dict())
    for want in expected[4:]:
        got = next(resumed)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    with pytest.raises(ConfigError, match="seed"):
        PuzzleBatches(split, 5, seed=12).load_state_dict(first.state_dict())


def test_ranks_take_interleaved_rows_of_the_one_process_batch():
    split = synthetic_split()
    one = PuzzleBatches(split, 6, seed=5)
    ranks = [PuzzleBatches(split, 6, seed=5, rank=r, world_size=3) for r in range(3)]
    for _ in range(4):
        inputs, labels = next(one)
        parts = [next(r) for r in ranks]
        for r, (x, y) in enumerate(parts):
            assert torch.equal(x, inputs[r::3]) and torch.equal(y, labels[r::3])
    with pytest.raises(ConfigError, match="divisible"):
        PuzzleBatches(split, 5, seed=0, rank=0, world_size=2)


def test_test_batches_cover_the_split_in_order_with_ratings():
    split = synthetic_split(groups=5, members=1)
    batches = test_batches(split, 2)
    assert len(batches) == 3
    got = torch.cat([x for x, _ in batches])
    assert torch.equal(got, torch.from_numpy(split.inputs.astype(np.int64)))
    assert list(batches.ratings) == [10 * int(g) for g in split.group]
    head = batches[:2]
    assert len(head) == 2 and head.n == 4 and torch.equal(head[1][0], batches[1][0])
    assert test_batches(split, 2, max_puzzles=3).n == 3 and len(test_batches(split, 2, max_puzzles=3)) == 2


def test_a_built_dataset_loads_through_the_config(tmp_path):
    build_sudoku(tmp_path / "s", n_train=4, n_test=2, n_aug=2, seed=0, box=(2, 2))
    data = PuzzleDataConfig(str(tmp_path / "s")).load()
    batches = PuzzleBatches(data["train"], 4, seed=0)
    inputs, labels = next(batches)
    assert sorted(data["train"].group[batches.global_rows(0)].tolist()) == [0, 1, 2, 3]
    # Sudoku: inputs are blanks (1) or the solution's digit; labels score every cell
    assert ((inputs == 1) | (inputs == labels)).all() and (labels >= 2).all()
    with pytest.raises(ConfigError, match="needs a dataset"):
        PuzzleDataConfig().load()
    with pytest.raises(ConfigError, match="not a puzzle dataset"):
        PuzzleDataConfig(str(tmp_path / "missing")).load()
    assert load_puzzles(tmp_path / "s")["meta"]["seq_len"] == 16


def test_cell_metrics_against_hand_made_logits():
    labels = torch.tensor([[2, 3, IGNORE_INDEX], [4, 2, 3], [IGNORE_INDEX] * 3])
    answer = torch.tensor([[2, 3, 0], [4, 3, 3], [1, 1, 1]])  # row 0 right (ignored cell wrong), row 1 one wrong
    logits = torch.nn.functional.one_hot(answer, 6).float() * 5 - 1
    exact, cell = cell_metrics(logits, labels)
    assert exact.tolist() == [True, False, True]
    torch.testing.assert_close(cell, torch.tensor([1.0, 2 / 3, 1.0]))
    with pytest.raises(ValueError, match="logits"):
        cell_metrics(logits[:, :2], labels)


def test_changed_metrics_score_only_the_cells_the_answer_changes():
    inputs = torch.tensor([[1, 2, 2, 1], [1, 2, 2, 1], [3, 3, 3, 3]])  # a maze-like row: 2 open, 5 the path
    labels = torch.tensor([[1, 5, 5, 1], [1, 5, 5, 1], [3, 3, 3, IGNORE_INDEX]])
    answer = torch.tensor([[1, 2, 2, 1], [1, 5, 2, 1], [3, 3, 3, 0]])  # row 0 copies its input
    logits = torch.nn.functional.one_hot(answer, 6).float()
    _, cell = cell_metrics(logits, labels)
    torch.testing.assert_close(cell, torch.tensor([0.5, 0.75, 1.0]))
    torch.testing.assert_close(changed_metrics(logits, inputs, labels), torch.tensor([0.0, 0.5, 1.0]))
    with pytest.raises(ValueError, match="inputs"):
        changed_metrics(logits, inputs[:, :3], labels)
