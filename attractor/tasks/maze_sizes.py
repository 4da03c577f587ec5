"""Mazes of any side as a task: train on one side, validate and evaluate at several, exact
accuracy per side. The side comes from the data (s*s tokens), never from the model.

    task = TASKS["maze-sizes"]
    data = task.load(run)                     # attractor.data.maze_sizes.load_maze_sizes(run.data.source)
    batches = task.batches(run, data)         # (32, 81) int64 questions and answers of 9x9 mazes
    val = task.validation(run, data)          # eval_batches batches of each test side <= val_max_size

Parity's design (attractor/tasks/parity.py) on grids: the same seeded training batches (rows
drawn with replacement from numpy's generator seeded with [seed, step]) and the same validation
batches, each batch of one side, sides in order. Every cell is scored (walls, S and G are copied;
open cells become ' ' or 'o'); a maze is exact when every cell is right. The evaluator is
attractor.evaluate.evaluate_grids (parity's, keyed by side); a checkpoint keeps the dataset's
description (dataset.json, kind "maze") in its tokenizer.json, so `attractor solve maze FILE`
takes a maze of any side.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from attractor.data.maze_sizes import FORMAT, load_maze_sizes
from attractor.errors import ConfigError
from attractor.schema import check_fields, require
from attractor.tasks.base import register
from attractor.tasks.parity import LengthBatches, ParityTask


@dataclass(frozen=True)
class MazeSizesDataConfig:
    """The data of a maze-sizes run: a dataset folder built by `attractor data maze-sizes`."""

    source: str | None = None  # the dataset folder (dataset.json beside train/ and test-<side>/); None: not chosen yet
    val_max_size: int = 17  # validation during training runs the test sides up to this one

    def __post_init__(self) -> None:
        check_fields(self)
        require(self.source != "", "MazeSizesDataConfig.source must not be empty")
        require(self.val_max_size >= 3, f"val_max_size={self.val_max_size} must be >= 3")

    def load(self) -> dict:
        """load_maze_sizes(source); a ConfigError (one line) when it is unset, missing or not this data."""
        if self.source is None:
            raise ConfigError("a maze-local model needs a dataset: --data DIR "
                              "(build one with `attractor data maze-sizes`)")
        return load_maze_sizes(self.source)


class MazeSizesTask(ParityTask):
    """Mazes of several sides (attractor/data/maze_sizes.py): maze tokens in, the answer's tokens
    out, exact accuracy per side. The data fixes the vocabulary (6) and, for cost estimates
    only, the model's seq_len (the training side's cells); the model takes any side."""

    name = "maze-sizes"
    vocab_key, dataset_kind = "mazes", "maze-sizes"
    data_config = MazeSizesDataConfig
    # Parity's recipe with a smaller batch (a 9x9 maze is 81 cells, each solve step 5x parity's).
    train = {**ParityTask.train, "batch_size": 32, "eval_every": 100, "eval_batches": 2}
    evaluator = "evaluate_grids"
    model_kind = "maze model"
    reads = "it reads a maze-sizes dataset"
    solves_puzzles = True  # `attractor solve maze FILE` (attractor/puzzle_solve.py)

    def model_settings(self, data: MazeSizesDataConfig) -> list[str]:
        if data.source is None:
            return []
        meta = data.load()["meta"]
        return [f"model.vocab_size={meta['vocab_size']}", f"model.seq_len={meta['train_size'] ** 2}"]

    def check_meta(self, run, meta: dict) -> None:
        if run.model.vocab_size != meta["vocab_size"]:
            raise ConfigError(f"model.vocab_size={run.model.vocab_size} does not fit the maze-sizes dataset "
                              f"{run.data.source} (vocab_size {meta['vocab_size']}); drop the setting: the model "
                              "follows the dataset")

    def recognise(self, source: str) -> str | None:
        """'a maze-sizes dataset' for a folder whose dataset.json says so."""
        try:
            meta = json.loads((Path(source) / "dataset.json").read_text())
        except (OSError, ValueError):
            return None
        return "a maze-sizes dataset" if isinstance(meta, dict) and meta.get("format") == FORMAT else None

    def validation(self, run, data) -> LengthBatches:
        """eval_batches batches of micro_batch mazes of each test side up to val_max_size (the
        smallest test side at least)."""
        sides = [s for s in data["test"] if s <= run.data.val_max_size] or [min(data["test"])]
        return LengthBatches({s: data["test"][s] for s in sides}, run.train.micro_batch, run.train.eval_batches)

    def eval_metrics(self, record: dict) -> str:
        sides = sorted(int(k.rsplit("_", 1)[1]) for k in record if k.startswith("val_exact_"))
        exact = ", ".join(f"{s}: {record[f'val_exact_{s}']:.3f}" for s in sides)
        depth = ", ".join(f"{s}: {record[f'val_depth_{s}']:.1f}" for s in sides if f"val_depth_{s}" in record)
        return f", exact by side {exact}" + (f", iterations by side {depth}" if depth else "")


MAZE_SIZES = register(MazeSizesTask())
