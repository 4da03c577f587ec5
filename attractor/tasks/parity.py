"""Prefix-sum parity as a task: train on one length, validate and evaluate at several, exact
accuracy per length. The lengths come from the data, never from the model.

    task = TASKS["parity"]
    data = task.load(run)                     # attractor.data.parity.load_parity(run.data.source)
    batches = task.batches(run, data)         # (64, 16) int64 bits and prefix parities
    val = task.validation(run, data)          # eval_batches batches of each test length <= val_max_bits
    parity_metrics(logits, labels)            # per string: exact (every bit right), share of bits right

Training batches: step n draws run.train.batch_size training strings with replacement from
numpy's generator seeded with [seed, n], so the batches are a pure function of (seed, step) and a
resume repeats the run; rank r of w takes rows r::w. Validation runs every test length up to
data.val_max_bits (the long ones cost about n solver steps each: `attractor eval` runs them all).
The evaluator is attractor.evaluate.evaluate_parity; a checkpoint keeps the dataset's
description (dataset.json) in its tokenizer.json.
"""

from __future__ import annotations

import json
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from attractor.data.batches import SteppedBatches
from attractor.data.parity import FORMAT, Strings, load_parity
from attractor.errors import ConfigError, check_int
from attractor.schema import check_fields, require
from attractor.tasks.base import DescribedDataTask, register

IGNORE_INDEX = -100  # PyTorch's ignore value, the models' (attractor/models/base.py)


@dataclass(frozen=True)
class GrowingDataConfig:
    """The data of a growing task: a dataset folder of one training size and several test sizes.
    A subclass names its loader and the command that builds its folders, and adds one field
    `val_max_<unit>`: the largest test size validated during training (at least `least_size`)."""

    source: str | None = None  # the dataset folder (dataset.json beside train/ and test-<size>/); None: not chosen yet

    def __post_init__(self) -> None:
        check_fields(self)
        require(self.source != "", f"{type(self).__name__}.source must not be empty")
        for f in dataclasses.fields(self):
            if f.name.startswith("val_max_"):
                value = getattr(self, f.name)
                require(value >= self.least_size, f"{f.name}={value} must be >= {self.least_size}")

    def load(self) -> dict:
        """The loaded dataset; a ConfigError (one line) when the source is unset, missing or of another kind."""
        if self.source is None:
            raise ConfigError(f"this model needs a dataset: --data DIR (build one with `{self.command}`)")
        return type(self).loader(self.source)


@dataclass(frozen=True)
class ParityDataConfig(GrowingDataConfig):
    """The data of a parity run: a dataset folder built by `attractor data parity`."""

    loader, command, least_size = staticmethod(load_parity), "attractor data parity", 1
    val_max_bits: int = 64  # validation during training runs the test lengths up to this one


def _tensors(strings: Strings, rows) -> tuple[Tensor, Tensor]:
    rows = np.asarray(rows)
    return (torch.from_numpy(strings.inputs[rows].astype(np.int64)),
            torch.from_numpy(strings.labels[rows].astype(np.int64)))


class ParityBatches(SteppedBatches):
    """Endless training batches: next(batches) -> (bits, parities), (batch_size // world, n) int64."""

    def __init__(self, strings: Strings, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        super().__init__(batch_size, seed, rank, world_size)
        if len(strings) == 0:
            raise ConfigError("the training split has no strings")
        self.strings = strings

    def global_rows(self, step: int) -> np.ndarray:
        return np.random.default_rng([self.seed, step]).integers(0, len(self.strings), self.batch_size)

    def fetch(self, rows: np.ndarray) -> tuple[Tensor, Tensor]:
        return _tensors(self.strings, rows)


class LengthBatches:
    """Test strings of several lengths in batches, each batch of one length, lengths in order: a
    sequence of (bits, parities). `batches[:k]` keeps the first k batches OF EACH LENGTH (what
    the trainer's eval_batches asks for), so that a cut never drops a length."""

    def __init__(self, splits: dict[int, Strings], batch_size: int, per_length: int | None = None):
        self.splits = dict(sorted(splits.items()))
        self.batch_size = check_int(batch_size, "batch_size", minimum=1)
        self.per_length = per_length  # batches of each length (None: all)
        self.index = [(n, i) for n, s in self.splits.items()
                      for i in range(min(-(-len(s) // self.batch_size), per_length if per_length is not None else 1 << 62))]

    @property
    def lengths(self) -> list[int]:
        return list(self.splits)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, item):
        if isinstance(item, slice):
            first, stop, stride = item.indices(1 << 62)
            if first != 0 or stride != 1:
                raise ValueError("LengthBatches slices must start at the first batch: batches[:k]")
            k = stop if self.per_length is None else min(stop, self.per_length)
            return LengthBatches(self.splits, self.batch_size, k)
        n, i = self.index[item]
        strings = self.splits[n]
        return _tensors(strings, np.arange(i * self.batch_size, min((i + 1) * self.batch_size, len(strings))))

    def __iter__(self):
        return (self[i] for i in range(len(self)))


LengthBatches.__test__ = False


def parity_metrics(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Per string: exact (every scored bit right) and the share of scored bits right.

    Args:
        logits: (B, n, V) scores of the answers; labels: (B, n) ids or IGNORE_INDEX.
    Returns:
        exact (B,) bool, bits (B,) float32 (1 where nothing is scored).
    """
    if logits.dim() != 3 or logits.shape[:2] != labels.shape:
        raise ValueError(f"logits must be (B, n, V) with labels (B, n), got {tuple(logits.shape)} and {tuple(labels.shape)}")
    scored = labels != IGNORE_INDEX
    right = (logits.argmax(-1) == labels) & scored
    count = scored.sum(-1)
    return right.sum(-1) == count, torch.where(count > 0, right.sum(-1).float() / count.clamp(min=1), torch.ones(()))


class ParityTask(DescribedDataTask):
    """Prefix-sum parity (attractor/data/parity.py): bits in, running parities out, exact
    accuracy per length. The data fixes the vocabulary (2) and, for cost estimates only, the
    model's seq_len (the training length); the model takes any length."""

    name = "parity"
    vocab_key, dataset_kind = "parity", "parity"  # its vocab: dataset.json (vocab_size, train_bits, test_bits, ...)
    data_config = ParityDataConfig
    # The calibration's recipe (../shared/research/calibration-depth.md, section 2): batch 64,
    # AdamW lr 2e-3, a constant rate after a short warmup; the map is tiny, so the eager ops.
    train = {"batch_size": 64, "lr": 2e-3, "weight_decay": 0.0, "betas": (0.9, 0.99), "warmup": 20, "cooldown": 0.0,
             "matrix_optimizer": "adamw", "kernels": "eager", "eval_every": 100, "eval_batches": 2,
             "checkpoint_every": 500}
    evaluator = "evaluate_parity"
    model_kind = "parity model"
    reads = "it reads a parity dataset"
    # What a growing task of this shape (one training size, test sizes beyond it) calls its parts;
    # MazeSizesTask sets its own.
    format = FORMAT  # the dataset.json format of its folders
    dataset_name = "a parity dataset"
    size_word = "bits"  # eval lines: "exact by bits 16: 1.000, ..."
    val_max_field = "val_max_bits"  # the data config's largest size validated during training

    def train_length(self, meta: dict) -> int:
        """The training sequences' length (the model's seq_len, for cost estimates only)."""
        return meta["train_bits"]

    def model_settings(self, data) -> list[str]:
        if data.source is None:
            return []
        meta = data.load()["meta"]
        return [f"model.vocab_size={meta['vocab_size']}", f"model.seq_len={self.train_length(meta)}"]

    def check_meta(self, run, meta: dict) -> None:
        """ConfigError unless the run's model reads and writes the dataset's tokens."""
        if run.model.vocab_size != meta["vocab_size"]:
            raise ConfigError(f"model.vocab_size={run.model.vocab_size} does not fit {self.dataset_name} "
                              f"{run.data.source} (vocab_size {meta['vocab_size']}); drop the setting: the model "
                              "follows the dataset")

    def recognise(self, source: str) -> str | None:
        """dataset_name for a folder whose dataset.json has this task's format."""
        try:
            meta = json.loads((Path(source) / "dataset.json").read_text())
        except (OSError, ValueError):
            return None
        return self.dataset_name if isinstance(meta, dict) and meta.get("format") == self.format else None

    def batches(self, run, data, rank: int = 0, world: int = 1) -> ParityBatches:
        return ParityBatches(data["train"], run.train.micro_batch, seed=run.train.seed, rank=rank, world_size=world)

    def validation(self, run, data) -> LengthBatches:
        """eval_batches batches of micro_batch examples of each test size up to the data config's
        val_max_field (the smallest test size at least)."""
        limit = getattr(run.data, self.val_max_field)
        sizes = [n for n in data["test"] if n <= limit] or [min(data["test"])]
        return LengthBatches({n: data["test"][n] for n in sizes}, run.train.micro_batch, run.train.eval_batches)

    def eval_metrics(self, record: dict) -> str:
        sizes = sorted(int(k.rsplit("_", 1)[1]) for k in record if k.startswith("val_exact_"))
        exact = ", ".join(f"{n}: {record[f'val_exact_{n}']:.3f}" for n in sizes)
        depth = ", ".join(f"{n}: {record[f'val_depth_{n}']:.1f}" for n in sizes if f"val_depth_{n}" in record)
        word = self.size_word
        return f", exact by {word} {exact}" + (f", iterations by {word} {depth}" if depth else "")


PARITY = register(ParityTask())
