"""The published puzzle augmentations, seeded: Sudoku symmetries and the 8 symmetries of a square.

    from attractor.data.augment import sudoku_transforms, apply_sudoku, dihedral
    t = sudoku_transforms(1000, rng=0)                  # 1000 random symmetries of the 9x9 Sudoku
    puzzles_aug = apply_sudoku(puzzle_digits, t)        # (1000, 81) from one (81,) grid of 0..9
    maze_aug = dihedral(maze_grid, k)                   # k in 0..7; 0 is the identity

Sudoku, as `shuffle_sudoku` in the HRM/TRM builders (Wang et al. 2025, arXiv 2506.21734;
Jolicoeur-Martineau 2025, arXiv 2510.04871): a random relabelling of the digits 1..n (0, the
blank, stays), a transpose with probability 1/2 (square boxes only: a transposed 6x6 has 3x2
boxes), a random order of the bands and of the rows inside each band, and the same for stacks
and columns. Each maps a valid grid to a valid grid, a puzzle's clues onto its transformed
solution, and preserves the number of solutions, so a transformed puzzle's transformed solution
is its (unique) solution. Unlike the published builders, which draw from numpy's global,
unseeded state, every draw here comes from an explicit generator.

Mazes: `dihedral(grid, k)` follows `dihedral_transform` of the same builders: identity, rotations
by 90, 180 and 270 degrees (numpy's rot90, counter-clockwise), left-right flip, up-down flip,
transpose, anti-transpose.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from attractor.data.sudoku import geometry


@dataclass(frozen=True)
class SudokuTransforms:
    """K symmetries: new_grid[k] = digit_map[k][old_grid[cells[k]]] (over flattened grids)."""

    digit_map: np.ndarray   # (K, n + 1) int; column 0 maps the blank to itself
    cells: np.ndarray       # (K, n * n) int; the old cell that lands in each new cell

    def __len__(self) -> int:
        return len(self.cells)


def _rng(rng) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def sudoku_transforms(count: int, rng=0, box: tuple[int, int] = (3, 3)) -> SudokuTransforms:
    """`count` random Sudoku symmetries (see the module docstring), drawn from `rng` in turn."""
    g, rng = geometry(box), _rng(rng)
    n, br, bc = g.n, g.box_rows, g.box_cols
    maps = np.zeros((count, n + 1), np.int64)
    cells = np.zeros((count, n * n), np.int64)
    index = np.arange(n * n).reshape(n, n)
    for k in range(count):
        maps[k, 1:] = rng.permutation(np.arange(1, n + 1))
        transpose = br == bc and rng.random() < 0.5
        rows = np.concatenate([band * br + rng.permutation(br) for band in rng.permutation(n // br)])
        cols = np.concatenate([stack * bc + rng.permutation(bc) for stack in rng.permutation(n // bc)])
        source = index.T if transpose else index
        cells[k] = source[rows][:, cols].reshape(-1)
    return SudokuTransforms(maps, cells)


def apply_sudoku(grids: np.ndarray, t: SudokuTransforms) -> np.ndarray:
    """Apply transform k to grid k: grids (K, n*n) of digits 0..n, or one (n*n,) grid for all K."""
    grids = np.asarray(grids)
    if grids.ndim == 1:
        grids = np.broadcast_to(grids, t.cells.shape)
    moved = np.take_along_axis(grids, t.cells, axis=1)
    return np.take_along_axis(t.digit_map, moved, axis=1).astype(grids.dtype)


DIHEDRAL = ("identity", "rot90", "rot180", "rot270", "flip_lr", "flip_ud", "transpose", "anti_transpose")


def dihedral(grid: np.ndarray, k: int) -> np.ndarray:
    """Symmetry k (0..7, named in DIHEDRAL) of a square grid (..., N, N)."""
    axes = (-2, -1)
    if k == 0:
        return grid
    if k in (1, 2, 3):
        return np.rot90(grid, k=k, axes=axes)
    if k == 4:
        return np.flip(grid, axis=-1)
    if k == 5:
        return np.flip(grid, axis=-2)
    if k == 6:
        return np.swapaxes(grid, -2, -1)
    if k == 7:
        return np.flip(np.rot90(grid, k=1, axes=axes), axis=-1)
    raise ValueError(f"dihedral symmetry k={k} must be in 0..7")


def dihedral_inverse(k: int) -> int:
    """The symmetry that undoes k (rotations by 90 and 270 undo each other; the rest are their own)."""
    return {1: 3, 3: 1}.get(k, k)
