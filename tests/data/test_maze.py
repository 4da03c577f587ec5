"""Mazes: generated ones have the requested shortest-path length, a unique shortest path, and a
label that an independent search confirms; seeding, tokens and bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attractor.data import maze
from attractor.errors import ConfigError


def reference_paths(grid: str, size: int) -> tuple[int, int]:
    """(distance S->G, number of shortest paths), by dynamic programming over BFS layers in numpy:
    a second, independent search to check the module's against."""
    cells = np.frombuffer(grid.encode(), np.uint8).reshape(size, size)
    free = cells != ord("#")
    start, goal = divmod(grid.index("S"), size), divmod(grid.index("G"), size)
    reached = np.zeros_like(free)
    reached[start] = True
    ways = np.zeros((size, size), np.int64)
    ways[start] = 1
    for dist in range(1, size * size):
        shifted = np.zeros_like(ways)
        shifted[1:] += ways[:-1]
        shifted[:-1] += ways[1:]
        shifted[:, 1:] += ways[:, :-1]
        shifted[:, :-1] += ways[:, 1:]
        front = (shifted > 0) & free & ~reached
        if not front.any():
            return -1, 0
        ways = np.where(front, shifted, 0)
        reached |= front
        if front[goal]:
            return dist, int(ways[goal])
    return -1, 0


def check_label(m: maze.Maze, size: int) -> None:
    """The answer marks a walk from S to G through open cells, one move at a time, of the
    shortest length, and changes nothing else."""
    assert all(q == a or (q == " " and a == "o") for q, a in zip(m.question, m.answer))
    dist, ways = reference_paths(m.question, size)
    assert dist == m.path_length and ways == 1
    on_path = {i for i, ch in enumerate(m.answer) if ch in "SGo"}
    assert len(on_path) == dist + 1
    cell, seen = m.answer.index("S"), set()
    while m.answer[cell] != "G":  # walk the path: every path cell has exactly one unseen path neighbour
        seen.add(cell)
        r, c = divmod(cell, size)
        nxt = [n for n in (cell - size, cell + size, cell - 1 if c else -1, cell + 1 if c < size - 1 else -1)
               if 0 <= n < size * size and n in on_path and n not in seen]
        assert len(nxt) == 1
        cell = nxt[0]
    assert len(seen) == dist


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), size=st.integers(3, 16), loops=st.sampled_from([0.0, 0.2]))
def test_generated_mazes_have_their_unique_shortest_path(seed, size, loops):
    min_path = max(1, maze.default_min_path(size) // 2)
    for m in maze.generate(2, size=size, min_path=min_path, rng=seed, loops=loops):
        assert m.path_length >= min_path and len(m.question) == size * size
        assert m.question.count("S") == m.question.count("G") == 1 and "o" not in m.question
        check_label(m, size)
        assert maze.solve(m.question) == (m.answer, m.path_length)


def test_maze_hard_size_and_length():
    for m in maze.generate(3, size=30, rng=0):
        assert m.path_length >= maze.HARD_MIN_PATH == 111
        check_label(m, 30)


def test_seeded():
    assert maze.generate(3, 12, rng=5) == maze.generate(3, 12, rng=np.random.default_rng(5))
    assert maze.generate(3, 12, rng=5) != maze.generate(3, 12, rng=6)


def test_solve_picks_a_shortest_path_among_several_and_reports_unreachable():
    open_room = "S" + " " * 14 + "G"  # 4x4 without walls: many shortest paths of 6 moves
    answer, length = maze.solve(open_room)
    assert length == 6 and answer.count("o") == 5
    assert maze.solve("S#  ##   ## #  G") is None  # G walled off


@pytest.mark.parametrize("grid,match", [
    ("S  G ", "is not a 2x2 maze"),
    ("S x G    ", "bad characters 'x'"),
    ("S o G    ", "bad characters 'o'"),
    ("S        ", "exactly one S and one G"),
    ("SS G     ", "exactly one S and one G"),
])
def test_bad_questions(grid, match):
    with pytest.raises(ConfigError, match=match):
        maze.solve(grid)


def test_impossible_lengths_and_sizes_fail_in_one_line():
    with pytest.raises(ConfigError, match="lower --min-path"):
        maze.generate(1, size=5, min_path=50, rng=0)
    with pytest.raises(ConfigError, match="size=2"):
        maze.generate(1, size=2)
    with pytest.raises(ConfigError, match="loops"):
        maze.generate(1, size=5, loops=2.0)


def test_tokens_follow_the_published_mapping_and_round_trip():
    grids = ["# SGo#", "o  #SG"]
    tokens = maze.to_tokens(grids)
    assert tokens.dtype == np.uint8 and tokens.tolist() == [[1, 2, 3, 4, 5, 1], [5, 2, 2, 1, 3, 4]]
    assert maze.from_tokens(tokens) == grids and maze.VOCAB_SIZE == 6
    with pytest.raises(ConfigError, match="charset"):
        maze.to_tokens(["# x"])
    with pytest.raises(ConfigError, match="charset"):
        maze.to_tokens(["# é"])


def test_with_every_inner_wall_open_only_straight_paths_are_unique():
    """loops=1 leaves a lattice of rooms where most S-G pairs have many shortest paths: the
    generator must still pick a pair with exactly one."""
    for m in maze.generate(6, size=9, min_path=4, rng=0, loops=1.0):
        check_label(m, 9)
