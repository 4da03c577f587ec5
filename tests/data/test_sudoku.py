"""The Sudoku solver against a plain backtracking reference and on real hard puzzles; the rater; the
generator (seeded, unique, minimal, in its rating range)."""

from __future__ import annotations

import statistics
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attractor.data import sudoku
from attractor.errors import ConfigError

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "sudoku"
HARD_FILES = ["magictour_top1465.txt", "forum_hardest_1106.txt"]
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"shared puzzle files absent ({SHARED}); "
                                  "they sit outside the repository and carry no licence to copy them in")


def shared_puzzles(every: int = 1) -> list[str]:
    lines = [line.strip() for name in HARD_FILES for line in (SHARED / name).read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    return lines[::every]


def count_by_backtracking(grid: list[int], box: tuple[int, int], limit: int = 2) -> int:
    """The reference: fill the first blank with every allowed digit, recursively, no propagation."""
    g = sudoku.geometry(box)
    try:
        blank = grid.index(0)
    except ValueError:
        return 1
    total = 0
    used = {grid[p] for p in g.peers[blank]}
    for d in range(1, g.n + 1):
        if d not in used:
            grid[blank] = d
            total += count_by_backtracking(grid, box, limit - total)
            grid[blank] = 0
            if total >= limit:
                break
    return total


def consistent(grid: list[int], box) -> bool:
    g = sudoku.geometry(box)
    return all(len([grid[c] for c in u if grid[c]]) == len({grid[c] for c in u if grid[c]}) for u in g.units)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), box=st.sampled_from([(2, 2), (2, 3), (3, 2)]), keep=st.floats(0.1, 0.9))
def test_solution_count_matches_backtracking(seed, box, keep):
    """Random clue sets, consistent or not, unique, multiple or unsolvable: the count agrees."""
    rng = np.random.default_rng(seed)
    g = sudoku.geometry(box)
    grid = [int(d) if rng.random() < keep else 0 for d in rng.integers(1, g.n + 1, g.n * g.n)]
    if not consistent(grid, box):  # a clue clash is a malformed puzzle, not an unsolvable one
        with pytest.raises(ConfigError, match="contradict"):
            sudoku.solve(sudoku.render(grid), box)
        return
    result = sudoku.solve(sudoku.render(grid), box)
    assert result.n_solutions == count_by_backtracking(grid[:], box)
    if result.n_solutions:
        assert sudoku.is_solution(sudoku.render(grid), result.solution, box)
    assert result.rating >= 1


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), holes=st.integers(0, 81))
def test_9x9_with_holes_in_a_full_grid(seed, holes):
    """Blanking cells of a complete grid: always solvable; unique exactly when backtracking says so."""
    rng = np.random.default_rng(seed)
    full = sudoku.random_solution(rng)
    assert sudoku.is_solution(sudoku.render([0] * 81), sudoku.render(full))
    grid = full[:]
    for c in rng.permutation(81)[:holes]:
        grid[c] = 0
    result = sudoku.solve(grid)
    assert result.n_solutions >= 1
    if holes <= 50:  # the reference is slow on nearly empty grids (tolerance: time, not truth)
        assert result.n_solutions == count_by_backtracking(grid[:], (3, 3))
    if result.unique:
        assert result.solution == sudoku.render(full)


@needs_shared
def test_real_hard_puzzles_solve_uniquely_sample():
    for puzzle in shared_puzzles(every=15):
        result = sudoku.solve(puzzle)
        assert result.unique and sudoku.is_solution(puzzle, result.solution), puzzle


@pytest.mark.slow
@needs_shared
def test_every_real_hard_puzzle_solves_uniquely():
    for puzzle in shared_puzzles():
        result = sudoku.solve(puzzle)
        assert result.unique and sudoku.is_solution(puzzle, result.solution), puzzle


@needs_shared
def test_hard_sets_rate_ten_times_harder_than_generated_defaults():
    hard = statistics.median(sudoku.rate(p) for p in shared_puzzles(every=15))
    default = statistics.median(r for _, _, r in sudoku.generate(31, rng=0))
    assert default >= 1 and hard >= 10 * default, (hard, default)


def test_propagation_alone_rates_one_and_search_rates_more():
    easy, _, rating = sudoku.generate(1, rating=(1, 1), rng=3)[0]
    assert rating == 1 == sudoku.rate(easy)
    hard, _, rating = sudoku.generate(1, rating=(9, None), rng=3)[0]
    assert sudoku.rate(hard) == rating >= 9


@pytest.mark.parametrize("text,match", [
    ("1" * 80, "80 characters, expected 81"),
    ("x" + "." * 80, "bad character 'x' at position 1"),
    ("11" + "." * 79, "two 1s in row 1"),
    ("1" + "." * 8 + "1" + "." * 71, "two 1s in column 1"),
    ("1" + "." * 9 + "1" + "." * 70, "two 1s in box 1"),
    ("7" + "." * 35, "bad character '7'"),  # 6x6: digits 1-6 only (checked with box 2x3 below)
])
def test_malformed_puzzles_say_what_is_wrong(text, match):
    box = (2, 3) if len(text) == 36 else (3, 3)
    with pytest.raises(ConfigError, match=match):
        sudoku.solve(text, box)


def test_consistent_clues_without_a_solution_are_unsolvable():
    # row 1 holds 1..8 and a blank in column 9, but column 9 already has a 9 lower down
    puzzle = "12345678." + "." * 8 + "9" + "." * 63
    result = sudoku.solve(puzzle)
    assert result.n_solutions == 0 and result.solution is None and not result.unique


def test_generator_is_seeded_unique_and_minimal():
    first = sudoku.generate(3, rng=7)
    assert first == sudoku.generate(3, rng=np.random.default_rng(7))
    assert first != sudoku.generate(3, rng=8)
    for puzzle, solution, rating in first:
        assert sudoku.solve(puzzle) == sudoku.Result(solution, 1, rating)
        grid = sudoku.parse(puzzle)
        for cell in (c for c, d in enumerate(grid) if d):  # removing any clue loses uniqueness
            assert sudoku.solve(grid[:cell] + [0] + grid[cell + 1:]).n_solutions == 2


@pytest.mark.parametrize("rating", [(3, 5), (10, 40)])
def test_generator_honours_the_rating_range(rating):
    for puzzle, _, r in sudoku.generate(2, rating=rating, rng=1):
        assert rating[0] <= r <= rating[1] and sudoku.rate(puzzle) == r


def test_small_boxes_generate_too():
    for puzzle, solution, _ in sudoku.generate(3, rng=0, box=(2, 3)):
        assert len(puzzle) == 36 and sudoku.is_solution(puzzle, solution, (2, 3))
        assert sudoku.solve(puzzle, (2, 3)).unique


@pytest.mark.parametrize("text", ["5", "a:b", "4:2", "0:3"])
def test_bad_rating_ranges(text):
    with pytest.raises(ConfigError, match="rating range"):
        sudoku.parse_range(text)


def test_an_impossible_range_stops_after_max_tries():
    with pytest.raises(ConfigError, match="found 0 of 1 puzzles"):
        sudoku.generate(1, rating=(10**6, None), rng=0, max_tries=2)
