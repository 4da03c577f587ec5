"""Tasks: what turns a dataset into the trainer's batches, and a model's logits into metrics.

Imports data, never models or the trainer (STYLE.md section 2): a task knows token ids and
labels, not how a model makes its logits.
"""

from attractor.tasks.puzzles import PuzzleBatches, PuzzleDataConfig, cell_metrics, changed_metrics, test_batches

__all__ = ["PuzzleBatches", "PuzzleDataConfig", "cell_metrics", "changed_metrics", "test_batches"]
