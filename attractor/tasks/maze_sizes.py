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

from dataclasses import dataclass

from attractor.data.maze_sizes import FORMAT, load_maze_sizes
from attractor.tasks.base import register
from attractor.tasks.parity import GrowingDataConfig, ParityTask


@dataclass(frozen=True)
class MazeSizesDataConfig(GrowingDataConfig):
    """The data of a maze-sizes run: a dataset folder built by `attractor data maze-sizes`."""

    loader, command, least_size = staticmethod(load_maze_sizes), "attractor data maze-sizes", 3
    val_max_size: int = 17  # validation during training runs the test sides up to this one


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
    format = FORMAT
    dataset_name = "a maze-sizes dataset"
    size_word = "side"
    val_max_field = "val_max_size"

    def train_length(self, meta: dict) -> int:
        return meta["train_size"] ** 2  # cells of a training maze


MAZE_SIZES = register(MazeSizesTask())
