"""Puzzle batches for the one trainer, and the puzzle metrics (exact and cell accuracy).

    data = load_puzzles("data/sudoku-1k")
    batches = PuzzleBatches(data["train"], batch_size=32, seed=0)
    inputs, labels = next(batches)          # (32, 81) int64 each; labels -100 where not scored
    test = test_batches(data["test"], batch_size=32, max_puzzles=1000)

Training order is TRM's (Jolicoeur-Martineau 2025, arXiv 2510.04871; reference-impl.md 4.1): an
epoch is one random member of every group (an original puzzle and its augmentations), in a
shuffled order, so each original puzzle is seen once per epoch whatever its number of
augmentations. Epochs follow each other as one stream (TRM concatenates epochs and drops only a
trailing incomplete batch, so no puzzle is skipped at an epoch's end). Epoch e's draw comes from
numpy's generator seeded with SeedSequence([seed, e]); step n takes stream positions
n*B .. n*B + B - 1. So the batches are a pure function of (seed, step): the position is the whole
state, a resume repeats the uninterrupted run, and under DDP rank r of w takes rows r::w of the
same global batch (as attractor/data/batches.py TokenBatches does).

Labels: the dataset's pad id 0 means "not a cell", mapped to IGNORE_INDEX (-100); every other
cell, clues included, is scored, as in the published builders.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from attractor.data.batches import SteppedBatches
from attractor.data.puzzles import FORMAT as PUZZLE_FORMAT
from attractor.data.puzzles import Split, load_puzzles
from attractor.errors import ConfigError, check_int
from attractor.schema import check_fields, require
from attractor.tasks.base import DescribedDataTask, register

IGNORE_INDEX = -100  # PyTorch's ignore value, the models' (attractor/models/base.py)
PAD = 0  # the datasets' pad token id (docs/data.md, "Puzzles")


@dataclass(frozen=True)
class PuzzleDataConfig:
    """The data of a puzzle run: a dataset folder built by `attractor data sudoku|maze|...`."""

    source: str | None = None  # the dataset folder (dataset.json beside train/ and test/); None: not chosen yet

    def __post_init__(self) -> None:
        check_fields(self)
        require(self.source != "", "PuzzleDataConfig.source must not be empty")

    def load(self) -> dict:
        """load_puzzles(source): {"meta", "train", "test"}, arrays memory-mapped; a ConfigError
        (one line) when the source is unset, missing or not a puzzle dataset."""
        if self.source is None:
            raise ConfigError("a puzzle model needs a dataset: --data DIR (build one with `attractor data sudoku`)")
        return load_puzzles(self.source)


def scored_labels(labels: np.ndarray) -> Tensor:
    """(N, L) dataset labels -> int64 tensor with the pad id replaced by IGNORE_INDEX."""
    out = torch.from_numpy(np.asarray(labels).astype(np.int64))
    out[out == PAD] = IGNORE_INDEX
    return out


def _rows(split: Split, index: np.ndarray) -> tuple[Tensor, Tensor]:
    """(inputs, labels) int64 (len(index), L) for rows `index` of a split."""
    index = np.asarray(index)
    return torch.from_numpy(split.inputs[index].astype(np.int64)), scored_labels(split.labels[index])


class PuzzleBatches(SteppedBatches):
    """Endless training batches in TRM's order: next(batches) -> (inputs, labels).

    Args:
        split: the training split (attractor.data.puzzles.Split).
        batch_size: the GLOBAL batch; each rank gets batch_size // world_size rows.
        seed: with the step count, fixes every batch.
        rank, world_size: this process's share, rows rank::world_size of the global batch.
    Yields:
        inputs: (batch_size // world_size, L) int64 token ids;
        labels: the same shape, int64, IGNORE_INDEX where the dataset has pad.
    """

    def __init__(self, split: Split, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        super().__init__(batch_size, seed, rank, world_size)
        self.split = split
        if len(split) == 0:
            raise ConfigError("the training split has no puzzles")
        # Rows of each group, contiguous after a stable sort by group: group g owns
        # order[first[g] : first[g] + size[g]].
        group = np.asarray(split.group, np.int64)
        self.order = np.argsort(group, kind="stable")
        self.size = np.bincount(group)
        if (self.size == 0).any():
            raise ConfigError(f"the training split's groups must be numbered 0..G-1 without gaps "
                              f"(group {int(np.argmin(self.size))} has no rows)")
        self.first = np.concatenate([[0], np.cumsum(self.size)[:-1]])
        self._epoch, self._epoch_rows = -1, np.zeros(0, np.int64)

    @property
    def groups(self) -> int:
        """G, the number of original puzzles: the length of an epoch."""
        return len(self.size)

    def epoch_rows(self, epoch: int) -> np.ndarray:
        """(G,) dataset rows of epoch `epoch`: one random member of each group, shuffled."""
        if epoch != self._epoch:
            rng = np.random.default_rng([self.seed, epoch])
            member = rng.integers(0, self.size)                    # (G,) index within each group
            rows = self.order[self.first + member]
            self._epoch, self._epoch_rows = epoch, rows[rng.permutation(self.groups)]
        return self._epoch_rows

    def global_rows(self, step: int) -> np.ndarray:
        """(batch_size,) dataset rows of the global batch at `step`, every rank's."""
        positions = step * self.batch_size + np.arange(self.batch_size)
        epochs = positions // self.groups
        return np.concatenate([self.epoch_rows(int(e))[positions[epochs == e] % self.groups]
                               for e in np.unique(epochs)])

    def fetch(self, rows: np.ndarray) -> tuple[Tensor, Tensor]:
        return _rows(self.split, rows)


class TestBatches:
    """A split in order, in batches of `batch_size` rows (the last possibly fewer): a sequence
    of (inputs, labels) as PuzzleBatches yields, read from the (memory-mapped) split on access,
    so the full Sudoku-Extreme test set (423k puzzles) costs no memory until it is evaluated.

    `ratings[i]` is row i's rating (its group's: the Sudoku rating, or a maze's path length).
    Slicing gives the first batches: `batches[:8]`.
    """

    def __init__(self, split: Split, batch_size: int, max_puzzles: int | None = None, *, _allow_empty: bool = False):
        self.split = split
        self.batch_size = check_int(batch_size, "batch_size", minimum=1)
        n = len(split)
        if max_puzzles is not None:
            n = min(n, check_int(max_puzzles, "puzzles", minimum=0 if _allow_empty else 1))
        self.n = n
        self.ratings = np.asarray(split.rating)[np.asarray(split.group[:n], np.int64)]  # (n,)

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)

    def __getitem__(self, item):
        if isinstance(item, slice):  # the first batches only (what the trainer asks for)
            first, stop, stride = item.indices(len(self))
            if first != 0 or stride != 1:
                raise ValueError("TestBatches slices must start at the first batch: batches[:k]")
            return TestBatches(self.split, self.batch_size, min(stop * self.batch_size, self.n), _allow_empty=True)
        if not -len(self) <= item < len(self):
            raise IndexError(f"batch {item} of {len(self)}")
        start = (item % len(self)) * self.batch_size
        return _rows(self.split, np.arange(start, min(start + self.batch_size, self.n)))

    def __iter__(self):
        return (self[i] for i in range(len(self)))


def test_batches(split: Split, batch_size: int, max_puzzles: int | None = None) -> TestBatches:
    """The split's first `max_puzzles` rows (all when None) in order, in batches: see TestBatches."""
    return TestBatches(split, batch_size, max_puzzles)


test_batches.__test__ = False  # not a pytest test, whatever its name
TestBatches.__test__ = False


def cell_metrics(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Per-puzzle exactness and cell accuracy of the argmax answer.

    Args:
        logits: (B, L, V) scores over the answer tokens.
        labels: (B, L) int64 token ids, IGNORE_INDEX where a cell is not scored.
    Returns:
        exact: (B,) bool, every scored cell right (a puzzle with no scored cell counts as exact);
        cell: (B,) float32, the share of scored cells right (1 where none is scored).
    """
    if logits.dim() != 3 or logits.shape[:2] != labels.shape:
        raise ValueError(f"logits must be (B, L, V) with labels (B, L), "
                         f"got {tuple(logits.shape)} and {tuple(labels.shape)}")
    scored = labels != IGNORE_INDEX
    right = (logits.argmax(-1) == labels) & scored                   # (B, L)
    n_scored = scored.sum(-1)
    exact = right.sum(-1) == n_scored
    cell = torch.where(n_scored > 0, right.sum(-1).float() / n_scored.clamp(min=1), torch.ones(()))
    return exact, cell


def changed_metrics(logits: Tensor, inputs: Tensor, labels: Tensor) -> Tensor:
    """Per-puzzle accuracy on the cells the answer changes: scored cells whose label differs from
    the input token (Sudoku's blanks, a maze's path cells). A model that copies its input gets 0
    here however high its cell accuracy (a maze's path is about a fifth of its cells).

    Args:
        logits: (B, L, V) scores over the answer tokens.
        inputs: (B, L) int64 token ids of the puzzles.
        labels: (B, L) int64 token ids, IGNORE_INDEX where a cell is not scored.
    Returns:
        (B,) float32, the share of changed cells right (1 where the answer changes none).
    """
    if inputs.shape != labels.shape:
        raise ValueError(f"inputs and labels must both be (B, L), got {tuple(inputs.shape)} and {tuple(labels.shape)}")
    return cell_metrics(logits, labels.masked_fill(labels == inputs, IGNORE_INDEX))[1]  # score the changed cells only


# ---- the task


class PuzzleTask(DescribedDataTask):
    """Puzzles of a dataset folder (Sudoku, mazes): TRM's batches and recipe, exact and cell
    accuracy. The dataset fixes the model's seq_len and vocab_size, and a checkpoint keeps the
    dataset's description (dataset.json: kind, token ids, box or size) instead of a tokenizer."""

    name = "puzzles"
    vocab_key, dataset_kind = "puzzles", "puzzle"  # its vocab: dataset.json ("kind" 'sudoku' or 'maze', "seq_len", ...)
    data_config = PuzzleDataConfig
    # TRM's recipe (SPEC 2.2; reference-impl.md 4.5): AdamW for every parameter (no Muon), lr
    # 1e-4, betas (0.9, 0.95), weight decay 1.0, EMA 0.999, a linear warmup and then a constant
    # rate (no cooldown). TRM warms up over 2000 of its ~65k steps; 100 suits CPU runs of a few
    # thousand (the 27M recipe in docs/training.md sets 2000).
    train = {"lr": 1e-4, "weight_decay": 1.0, "betas": (0.9, 0.95), "ema": 0.999, "warmup": 100, "cooldown": 0.0,
             "matrix_optimizer": "adamw"}
    evaluator = "evaluate_puzzles"  # exact, cell and changed-cell accuracy
    model_kind = "puzzle model"
    reads = "it reads a puzzle dataset"
    solves_puzzles = True

    def model_settings(self, data: PuzzleDataConfig) -> list[str]:
        if data.source is None:
            return []
        meta = data.load()["meta"]
        return [f"model.{key}={meta[key]}" for key in ("seq_len", "vocab_size")]

    def check_meta(self, run, meta: dict) -> None:
        check_dataset(run, meta)

    def recognise(self, source: str) -> str | None:
        """'a sudoku puzzle dataset' for a folder holding dataset.json (None where its format is
        another task's, such as a parity dataset)."""
        if not (Path(source) / "dataset.json").is_file():
            return None
        try:
            meta = json.loads((Path(source) / "dataset.json").read_text())
            if meta.get("format", PUZZLE_FORMAT) != PUZZLE_FORMAT:
                return None
            kind = meta.get("kind", "puzzle")
        except (OSError, ValueError, AttributeError):
            kind = "puzzle"
        return f"a {kind} puzzle dataset"

    def batches(self, run, data, rank: int = 0, world: int = 1) -> PuzzleBatches:
        return PuzzleBatches(data["train"], run.train.micro_batch, seed=run.train.seed, rank=rank, world_size=world)

    def validation(self, run, data) -> TestBatches:
        """The first puzzles of the test split, in order."""
        micro_batch = run.train.micro_batch
        return test_batches(data["test"], micro_batch, max_puzzles=run.train.eval_batches * micro_batch)

    def eval_metrics(self, record: dict) -> str:
        return f", exact {record['val_exact']:.3f}, cell {record['val_cell']:.3f}"


def check_dataset(run, meta: dict) -> None:
    """ConfigError unless the run's model takes the puzzle dataset's sequences and tokens."""
    for key in ("seq_len", "vocab_size"):
        if getattr(run.model, key) != meta[key]:
            raise ConfigError(f"model.{key}={getattr(run.model, key)} does not fit the dataset {Path(run.data.source)} "
                              f"({key} {meta[key]}, {meta['kind']}); drop the setting: the model follows the dataset")


PUZZLES = register(PuzzleTask())
