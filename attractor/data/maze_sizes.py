"""Mazes of several sides: a seeded, offline dataset of one training side and test sides far
beyond it, for models that take a maze of any side (the 2-D local map, attractor/models/local.py).

    from attractor.data.maze_sizes import build_maze_sizes, load_maze_sizes
    build_maze_sizes("data/mazes", train_size=9, test_sizes=(9, 17, 33), seed=0)
    data = load_maze_sizes("data/mazes")
    data["train"].inputs                      # (N, 81) uint8 maze tokens of 9x9 questions
    data["test"][33].labels                   # (M, 1089) uint8 tokens of the answers ('o' on the path)

The mazes are attractor.data.maze's (a randomized depth-first maze, S and G with a unique
shortest path of at least `min_path` moves, by default Maze-Hard's 111 moves at 30x30 scaled
with the area), in the puzzle datasets' token ids (0 pad, then `# SGo` as 1..5): the input is
the question, the label the answer, the question with the shortest path's cells as 'o'. Every
cell is scored; a maze is solved exactly when every cell is right. A folder:

    DIR/dataset.json            format, version, kind "maze", vocab_size 6, tokens, train_size,
                                test_sizes, recipe (counts, seed, min_path, loops), splits
    DIR/train/inputs.npy        (N, s*s) uint8 questions of side s = train_size, row by row
    DIR/train/labels.npy        (N, s*s) uint8 answers
    DIR/train/path.npy          (N,) int32 shortest path lengths in moves
    DIR/test-<s>/...            the same, one folder per test side s

Each split's mazes come from numpy's generator seeded with [seed, side, split] (split 0 train,
1 test), so a split does not change when others are added. The training and test mazes of the
training side are drawn independently (at side 9 a repeat is possible, though rare). The folder
is written under a temporary name beside DIR and renamed into place when complete.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from attractor.data import maze
from attractor.data import folder
from attractor.data.folder import new_folder, write_folder
from attractor.data.parity import parse_bits_list
from attractor.errors import ConfigError, check_int

FORMAT = "attractor-maze-sizes"
VERSION = 1


@dataclass(frozen=True)
class Grids:
    inputs: np.ndarray  # (N, s*s) uint8 maze tokens of the questions
    labels: np.ndarray  # (N, s*s) uint8 tokens of the answers
    path: np.ndarray | None = None  # (N,) int32 shortest path lengths (moves)

    def __len__(self) -> int:
        return len(self.inputs)

    @property
    def side(self) -> int:
        return int(round(self.inputs.shape[1] ** 0.5))


def generate(count: int, size: int, seed: int, split: int = 0, min_path: int | None = None,
             loops: float = 0.0) -> Grids:
    """`count` mazes of side `size` as tokens, from numpy's generator seeded with [seed, size,
    split]: the same arguments give the same mazes on every machine."""
    check_int(count, "count", 0)
    rng = np.random.default_rng([check_int(seed, "seed", 0), check_int(size, "size", 3), split])
    mazes = maze.generate(count, size, min_path, rng, loops)
    tokens = lambda grids: maze.to_tokens(grids).reshape(count, size * size)  # noqa: E731
    return Grids(tokens([m.question for m in mazes]), tokens([m.answer for m in mazes]),
                 np.asarray([m.path_length for m in mazes], np.int32))


def parse_sizes(text: str, flag: str = "--test-sizes") -> tuple[int, ...]:
    """'9,17,33' -> (9, 17, 33), sorted and without repeats; ConfigError for anything else."""
    sizes = parse_bits_list(text, flag)
    if sizes[0] < 3:
        raise ConfigError(f"{flag} {text!r}: maze sides must be at least 3")
    return sizes


def build_maze_sizes(out: str | Path, train_size: int = 9, test_sizes=(9, 13, 17, 25, 33), n_train: int = 10000,
                     n_test: int = 200, seed: int = 0, min_path: int | None = None, loops: float = 0.0) -> Path:
    """Write a dataset to `out` (which must not exist; its parent must): n_train mazes of side
    train_size, n_test of each side in test_sizes (min_path: None scales Maze-Hard's with the
    area, attractor.data.maze.default_min_path). Returns the folder."""
    train_size = check_int(train_size, "train_size", 3)
    test_sizes = parse_sizes(test_sizes if isinstance(test_sizes, str) else ",".join(map(str, test_sizes)))
    check_int(n_train, "train", 1)
    check_int(n_test, "test", 1)
    if min_path is not None:
        check_int(min_path, "min_path", 1)
    out = new_folder(out)  # before generating
    splits = {"train": generate(n_train, train_size, seed, 0, min_path, loops),
              **{f"test-{s}": generate(n_test, s, seed, 1, min_path, loops) for s in test_sizes}}
    meta = {"format": FORMAT, "version": VERSION, "kind": "maze", "vocab_size": maze.VOCAB_SIZE,
            "tokens": {"pad": 0, **maze.TOKEN}, "train_size": train_size, "test_sizes": list(test_sizes),
            "recipe": {"source": "attractor.data.maze.generate", "train": n_train, "test": n_test, "seed": seed,
                       "min_path": min_path, "loops": loops},
            "splits": {name: {"examples": len(g), "side": g.side} for name, g in splits.items()}}
    return write_folder(out, meta, {name: {key: getattr(g, key) for key in ("inputs", "labels", "path")}
                                    for name, g in splits.items()})


DATASET = ("a maze-sizes dataset", "attractor data maze-sizes --out DIR")  # (what messages call it, how to build one)


def read_meta(path: str | Path) -> dict:
    """dataset.json of a maze-sizes dataset; ConfigError (one line) for a folder that is not one."""
    return folder.read_meta(path, FORMAT, VERSION, *DATASET)


def load_maze_sizes(path: str | Path) -> dict:
    """{"meta": dataset.json, "train": Grids, "test": {side: Grids}} (arrays memory-mapped)."""
    return folder.load_growing(path, FORMAT, VERSION, *DATASET, Grids, ("inputs", "labels", "path"), "test_sizes")
