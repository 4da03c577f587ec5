"""Augmentations: a transformed puzzle's transformed solution is its unique solution; seeded; the
published construction (digit map, transpose, band/row and stack/column orders; 8 dihedral maps)."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attractor.data import augment, maze, sudoku


@functools.lru_cache(maxsize=None)
def puzzles(box: tuple[int, int]) -> tuple[tuple[str, str, int], ...]:
    return tuple(sudoku.generate(3, rng=11, box=box))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), box=st.sampled_from([(3, 3), (2, 3), (2, 2)]), which=st.integers(0, 2))
def test_transformed_solution_solves_the_transformed_puzzle(seed, box, which):
    puzzle, solution, rating = puzzles(box)[which]
    t = augment.sudoku_transforms(2, rng=seed, box=box)
    new_p = augment.apply_sudoku(np.array(sudoku.parse(puzzle, box)), t)
    new_s = augment.apply_sudoku(np.array(sudoku.parse(solution, box)), t)
    for p, s in zip(new_p, new_s):
        result = sudoku.solve(sudoku.render(p), box)
        assert result.unique and result.solution == sudoku.render(s)
        assert sudoku.is_solution(sudoku.render(p), sudoku.render(s), box)
        assert (p > 0).sum() == (np.array(sudoku.parse(puzzle, box)) > 0).sum()  # as many clues


def test_transforms_are_seeded_and_built_as_published():
    a, b = augment.sudoku_transforms(200, rng=3), augment.sudoku_transforms(200, rng=np.random.default_rng(3))
    assert np.array_equal(a.cells, b.cells) and np.array_equal(a.digit_map, b.digit_map)
    assert not np.array_equal(a.cells, augment.sudoku_transforms(200, rng=4).cells)
    assert (a.digit_map[:, 0] == 0).all()                                   # the blank stays blank
    assert (np.sort(a.digit_map[:, 1:], axis=1) == np.arange(1, 10)).all()  # a relabelling of 1..9
    grid = np.arange(81).reshape(9, 9)
    transposed = 0
    for cells in a.cells:
        moved = cells.reshape(9, 9)
        rows_kept = (np.sort(moved // 9, axis=1) == np.sort(moved // 9, axis=1)[:, :1]).all()
        if not rows_kept:                                    # a transpose: each new row is an old column
            transposed += 1
            moved = moved.T
        bands = moved // 9 // 3                              # each new row comes from one old band...
        assert (bands[:, :1] == bands).all() and len(set(bands[::3, 0])) == 3
        assert sorted(np.unique(moved // 9).tolist()) == list(range(9))
        stacks = moved % 9 // 3
        assert (stacks[:1] == stacks).all() and len(set(stacks[0, ::3])) == 3
        assert sorted(grid.reshape(-1)[cells].tolist()) == list(range(81))   # a permutation of cells
    assert 70 < transposed < 130                             # p = 1/2 over 200 draws (about 6 sigma)


def test_non_square_boxes_are_never_transposed():
    t = augment.sudoku_transforms(50, rng=0, box=(2, 3))
    for cells in t.cells:
        moved = cells.reshape(6, 6)
        assert (np.sort(moved // 6, axis=1) == (moved // 6)[:, :1]).all()   # each new row is one old row


def test_dihedral_is_the_group_of_the_square():
    grid = np.arange(16).reshape(4, 4)
    images = [augment.dihedral(grid, k) for k in range(8)]
    assert len({im.tobytes() for im in images}) == 8
    assert np.array_equal(images[1], np.rot90(grid)) and np.array_equal(images[6], grid.T)
    assert np.array_equal(images[7], np.fliplr(np.rot90(grid)))
    for k in range(8):
        assert np.array_equal(augment.dihedral(images[k], augment.dihedral_inverse(k)), grid)
    with pytest.raises(ValueError, match="0..7"):
        augment.dihedral(grid, 8)


@pytest.mark.parametrize("k", range(8))
def test_a_symmetric_maze_keeps_its_unique_shortest_path(k):
    m = maze.generate(1, size=11, rng=k)[0]
    sym = lambda s: "".join(augment.dihedral(np.array(list(s)).reshape(11, 11), k).reshape(-1))  # noqa: E731
    assert maze.solve(sym(m.question)) == (sym(m.answer), m.path_length)
