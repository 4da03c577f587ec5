"""Tasks: what turns a dataset into the trainer's batches, and a model's logits into metrics.

Each task is one file with a Task subclass whose instance is registered by name in TASKS
(attractor/tasks/base.py says what a task holds); a model family names its task in
attractor/models/registry.py (TASK_OF). Imports data, never models or the trainer (STYLE.md
section 2): a task knows token ids and labels, not how a model makes its logits.
"""

from attractor.tasks.base import TASKS, Task, get_task, register
from attractor.tasks.maze_sizes import MAZE_SIZES, MazeSizesDataConfig, MazeSizesTask
from attractor.tasks.parity import PARITY, ParityDataConfig, ParityTask, parity_metrics
from attractor.tasks.puzzles import (
    PUZZLES,
    PuzzleBatches,
    PuzzleDataConfig,
    PuzzleTask,
    cell_metrics,
    changed_metrics,
    test_batches,
)
from attractor.tasks.text import TEXT, TextTask

__all__ = ["MAZE_SIZES", "MazeSizesDataConfig", "MazeSizesTask", "PARITY", "PUZZLES", "TASKS", "TEXT", "ParityDataConfig", "ParityTask", "PuzzleBatches", "PuzzleDataConfig",
           "PuzzleTask", "Task", "TextTask", "cell_metrics", "changed_metrics", "get_task", "parity_metrics", "register",
           "test_batches"]
