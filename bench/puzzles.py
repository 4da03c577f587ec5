"""Puzzle data speed: Sudoku rated per second on the shared hard sets against a plain recursive
backtracking solver in the same run, Sudoku generated per second at three difficulty levels, mazes
generated per second.

    python -m bench.puzzles            # about 5 minutes on 2 cores
    python -m bench.puzzles --quick    # seconds

The reference solver is the textbook one: fill the first blank with each digit its row, column
and box allow, recursively, counting solutions up to 2 (so it proves uniqueness as ours does). It
gets at most --budget seconds per puzzle; a puzzle it does not finish counts as the budget, so
its ratio is a lower bound (marked >=).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from bench.common import code_line, print_table

from attractor.data import maze, sudoku

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "sudoku"
FILES = ["magictour_top1465.txt", "forum_hardest_1106.txt"]
LEVELS = [("easy (singles only)", (1, 1)), ("medium", (3, 9)), ("hard", (11, None)), ("harder", (31, None))]


class OverBudget(Exception):
    pass


def backtracking_count(grid: list[int], deadline: float, limit: int = 2) -> int:
    """Solutions (up to `limit`) by plain recursive backtracking on the first blank."""
    try:
        i = grid.index(0)
    except ValueError:
        return 1
    if time.perf_counter() > deadline:
        raise OverBudget
    r, c = divmod(i, 9)
    b = r // 3 * 27 + c // 3 * 3
    used = ({grid[r * 9 + k] for k in range(9)} | {grid[k * 9 + c] for k in range(9)}
            | {grid[b + dr * 9 + dc] for dr in range(3) for dc in range(3)})
    total = 0
    for d in range(1, 10):
        if d not in used:
            grid[i] = d
            total += backtracking_count(grid, deadline, limit - total)
            grid[i] = 0
            if total >= limit:
                break
    return total


def hard_puzzles(every: int) -> dict[str, list[str]]:
    return {name: [line.strip() for line in (SHARED / name).read_text().splitlines()
                   if line.strip() and not line.startswith("#")][::every] for name in FILES}


def bench_rating(sets: dict[str, list[str]], n_reference: int, budget: float) -> None:
    rows = []
    for name, puzzles in sets.items():
        start = time.perf_counter()
        results = [sudoku.solve(p) for p in puzzles]
        ours = time.perf_counter() - start
        assert all(r.unique for r in results)
        ref_times, ours_times, capped = [], [], 0
        for p in puzzles[:n_reference]:
            t = time.perf_counter()
            sudoku.solve(p)
            ours_times.append(time.perf_counter() - t)
            t = time.perf_counter()
            try:
                assert backtracking_count(sudoku.parse(p), t + budget) == 1
            except OverBudget:
                capped += 1
            ref_times.append(time.perf_counter() - t)
        ratio = sum(ref_times) / sum(ours_times)
        rows.append([name, len(puzzles), f"{len(puzzles) / ours:.0f}", statistics.median(r.rating for r in results),
                     max(r.rating for r in results), f"{n_reference}", f"{n_reference / sum(ref_times):.2f}",
                     f"{n_reference / sum(ours_times):.0f}", f"{capped}", f"{'>=' if capped else ''}{ratio:,.0f}"])
    print_table("Rating the shared hard Sudoku sets (solve + prove unique + rate)",
                ["file", "puzzles", "ours /s", "median rating", "max rating", "ref puzzles", "reference /s",
                 "ours /s (same)", f"ref over {budget:g} s", "speed-up"], rows)


def bench_generation(count: int, hard_count: int) -> None:
    rows = []
    for label, rng_range in LEVELS:
        n = count if rng_range[0] < 10 else hard_count if rng_range[0] < 30 else max(1, hard_count // 4)
        start = time.perf_counter()
        made = sudoku.generate(n, rating=rng_range, rng=0)
        seconds = time.perf_counter() - start
        # draws: how many minimal puzzles the rejection loop made to keep n (replayed: same seed)
        rng, draws, kept = sudoku._rng(0), 0, 0
        while kept < n:
            draws += 1
            kept += rng_range[0] <= sudoku.rate(sudoku.minimal_puzzle(rng)[0]) <= (rng_range[1] or 10**9)
        rows.append([label, f"{rng_range[0]}:{rng_range[1] or ''}", n, f"{n / seconds:.2f}",
                     f"{seconds / n:.3f}", f"{draws / n:.1f}", statistics.median(r for _, _, r in made)])
    print_table("Generating unique minimal Sudoku (9x9) by rating range, seed 0",
                ["level", "rating", "puzzles", "puzzles/s", "s/puzzle", "draws/puzzle", "median rating"], rows)


def bench_mazes(count: int) -> None:
    rows = []
    for size, loops in ((30, 0.0), (30, 0.1), (12, 0.0)):
        start = time.perf_counter()
        made = maze.generate(count, size=size, rng=0, loops=loops)
        seconds = time.perf_counter() - start
        rows.append([f"{size}x{size}", loops, maze.default_min_path(size), count, f"{count / seconds:.1f}",
                     statistics.median(m.path_length for m in made)])
    print_table("Generating mazes (unique shortest path >= min path), seed 0",
                ["size", "loops", "min path", "mazes", "mazes/s", "median path"], rows)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a few puzzles of each kind (CI smoke)")
    p.add_argument("--budget", type=float, default=10.0, help="seconds the reference may spend per puzzle")
    args = p.parse_args(argv)
    print(code_line())
    print(f"command: python -m bench.puzzles {' '.join(argv if argv is not None else sys.argv[1:])}".rstrip())
    if SHARED.is_dir():
        bench_rating(hard_puzzles(every=50 if args.quick else 1), n_reference=2 if args.quick else 5,
                     budget=2.0 if args.quick else args.budget)
    else:
        print(f"\n(shared hard sets absent at {SHARED}: rating benchmark skipped)")
    bench_generation(count=5 if args.quick else 100, hard_count=2 if args.quick else 20)
    bench_mazes(count=3 if args.quick else 50)


if __name__ == "__main__":
    main()
