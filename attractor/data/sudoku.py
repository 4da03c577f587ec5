"""Sudoku: a classical solver that proves uniqueness and rates difficulty, and a seeded generator.

    from attractor.data.sudoku import solve, generate
    result = solve("4...3.......6..8..........1....5..9..8....6...7.2........1.27..5.3....4.9........")
    result.unique, result.solution, result.rating      # True, '468931527...', 151
    puzzles = generate(10, rating=(1, 5), rng=0)        # 10 unique-solution puzzles with rating in [1, 5]

Grids are strings of n*n characters, row by row: digits `1..n`, `.` or `0` for a blank. Besides
the classical 9x9 (boxes 3x3), any box shape with n = rows*cols <= 9 works (`box=(2, 3)` is the
6x6 Sudoku, `box=(2, 2)` the 4x4).

The solver (after Norvig's and tdoku's designs, in plain Python): each cell holds a bitmask of its
candidates; propagation places naked singles (a cell with one candidate, removed from its peers)
and hidden singles (a digit with one place left in a row, column or box) until nothing changes;
then the search branches on the first cell with the fewest candidates, trying its digits in
increasing order, and keeps going after the first solution until the whole tree is explored or a
second solution turns up. So `n_solutions` is exact up to 2 and uniqueness is proven.

The rating is the search effort: the number of search nodes, 1 + the guesses made while exploring
the whole tree (1 means propagation alone solves the puzzle and proves it unique). It is
deterministic (no randomness in the search) but specific to this solver: Sudoku-Extreme's `rating`
column counts tdoku's backtracks, a related but different number.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from attractor.errors import ConfigError

BLANKS = ".0"


@dataclass(frozen=True)
class Geometry:
    """The cells, units and peers of an n x n Sudoku with boxes of box_rows x box_cols."""

    box_rows: int
    box_cols: int
    n: int                                   # digits 1..n, side of the grid
    full: int                                # bitmask of all n candidates
    units: tuple[tuple[int, ...], ...]       # rows, then columns, then boxes (cell indices)
    peers: tuple[tuple[int, ...], ...]       # per cell: the other cells sharing a unit


@functools.lru_cache(maxsize=None)
def geometry(box: tuple[int, int] = (3, 3)) -> Geometry:
    br, bc = box
    n = br * bc
    if not (1 <= br and 1 <= bc and 2 <= n <= 9):
        raise ConfigError(f"box={box!r} must give 2 <= rows*cols <= 9 digits")
    rows = [tuple(r * n + c for c in range(n)) for r in range(n)]
    cols = [tuple(r * n + c for r in range(n)) for c in range(n)]
    boxes = [tuple((r0 + r) * n + c0 + c for r in range(br) for c in range(bc))
             for r0 in range(0, n, br) for c0 in range(0, n, bc)]
    units = tuple(rows + cols + boxes)
    peers = tuple(tuple(sorted({p for u in units if cell in u for p in u} - {cell})) for cell in range(n * n))
    return Geometry(br, bc, n, (1 << n) - 1, units, peers)


# Bit tricks on candidate masks (bit d-1 is digit d), tabulated once for masks of up to 9 bits.
_POP = [bin(m).count("1") for m in range(512)]
_BITS = [tuple(1 << d for d in range(9) if m >> d & 1) for m in range(512)]
_DIGIT = {1 << d: d + 1 for d in range(9)}


def parse(text: str, box: tuple[int, int] = (3, 3)) -> list[int]:
    """A puzzle string as a list of n*n ints (0 blank), or ConfigError saying what is wrong with it:
    the length, a character that is neither a digit 1..n nor `.`/`0`, or two equal clues in a unit."""
    g = geometry(box)
    text = text.strip()
    if len(text) != g.n * g.n:
        raise ConfigError(f"{len(text)} characters, expected {g.n * g.n}")
    grid = []
    for i, ch in enumerate(text):
        if ch in BLANKS:
            grid.append(0)
        elif "1" <= ch <= str(g.n):
            grid.append(int(ch))
        else:
            raise ConfigError(f"bad character {ch!r} at position {i + 1} (digits 1-{g.n}, '.' or '0' for a blank)")
    for k, unit in enumerate(g.units):
        seen: dict[int, int] = {}
        for cell in unit:
            d = grid[cell]
            if d and d in seen:
                kind = ("row", "column", "box")[k // g.n]
                raise ConfigError(f"clues contradict each other: two {d}s in {kind} {k % g.n + 1} "
                                  f"(cells {seen[d] + 1} and {cell + 1})")
            seen[d] = cell
    return grid


def render(grid, blank: str = ".") -> str:
    """A grid of ints (0 blank) as a puzzle string."""
    return "".join(str(int(d)) if d else blank for d in grid)


def _propagate(cand: list[int], stack: list[int], g: Geometry) -> bool:
    """Apply naked and hidden singles in place until nothing changes; False on a contradiction.

    `stack` holds the cells newly reduced to one candidate, whose digit must leave their peers.
    """
    peers, units, full = g.peers, g.units, g.full
    while True:
        while stack:
            cell = stack.pop()
            m = cand[cell]
            for p in peers[cell]:
                pm = cand[p]
                if pm & m:
                    pm ^= m
                    if not pm:
                        return False
                    cand[p] = pm
                    if not pm & (pm - 1):
                        stack.append(p)
        for unit in units:
            once = twice = 0
            for cell in unit:
                m = cand[cell]
                twice |= once & m
                once |= m
            if once != full:
                return False                      # a digit with no place left in this unit
            hidden = once & ~twice
            if hidden:
                for cell in unit:
                    m = cand[cell]
                    h = m & hidden
                    if h and m != h:
                        if h & (h - 1):
                            return False          # two digits that each need this very cell
                        cand[cell] = h
                        stack.append(cell)
        if not stack:
            return True


@dataclass(frozen=True)
class Result:
    """What the search found: `n_solutions` is 0, 1 or 2 (meaning two or more)."""

    solution: str | None   # the (first) solution, None if there is none
    n_solutions: int
    rating: int            # search nodes: 1 + guesses

    @property
    def unique(self) -> bool:
        return self.n_solutions == 1


def _search(cand: list[int], g: Geometry, limit: int, order=None) -> tuple[list[list[int]], int]:
    """Depth-first search with propagation; returns (up to `limit` solutions as masks, nodes).

    `order(bits) -> bits` may shuffle the digits tried at a branch (the generator's random fill).
    """
    solutions: list[list[int]] = []
    nodes = 0
    todo = [cand]                                  # explicit stack: states still to propagate
    stack0 = [c for c, m in enumerate(cand) if not m & (m - 1)]
    pending = [stack0]
    while todo:
        cand = todo.pop()
        nodes += 1
        if not _propagate(cand, pending.pop(), g):
            continue
        best, fewest = -1, 99
        for cell, m in enumerate(cand):
            k = _POP[m]
            if 1 < k < fewest:
                best, fewest = cell, k
                if k == 2:
                    break
        if best < 0:
            solutions.append(cand)
            if len(solutions) >= limit:
                break
            continue
        bits = _BITS[cand[best]]
        if order is not None:
            bits = order(bits)
        for bit in reversed(bits):                # pushed in reverse, so tried in order
            child = cand[:]
            child[best] = bit
            todo.append(child)
            pending.append([best])
    return solutions, nodes


def _masks(grid: list[int], g: Geometry) -> list[int]:
    return [1 << (d - 1) if d else g.full for d in grid]


def _digits(cand: list[int]) -> list[int]:
    return [_DIGIT[m] for m in cand]


def solve(puzzle: str | list[int], box: tuple[int, int] = (3, 3)) -> Result:
    """Solve a puzzle (a string, or a list of ints with 0 for blank), counting solutions up to 2.

    A malformed string raises ConfigError (see `parse`); a well-formed puzzle with no solution
    gives n_solutions=0.
    """
    g = geometry(box)
    grid = parse(puzzle, box) if isinstance(puzzle, str) else list(puzzle)
    solutions, nodes = _search(_masks(grid, g), g, limit=2)
    first = render(_digits(solutions[0])) if solutions else None
    return Result(first, len(solutions), nodes)


def rate(puzzle: str | list[int], box: tuple[int, int] = (3, 3)) -> int:
    """The rating of a puzzle (search nodes to solve it and prove it unique); see `solve`."""
    return solve(puzzle, box).rating


def is_solution(puzzle: str, solution: str, box: tuple[int, int] = (3, 3)) -> bool:
    """Whether `solution` fills every cell, obeys the rules and keeps every clue of `puzzle`."""
    g = geometry(box)
    try:
        p, s = parse(puzzle, box), parse(solution, box)
    except ConfigError:
        return False
    return 0 not in s and all(a in (0, b) for a, b in zip(p, s)) and \
        all(len({s[c] for c in u}) == g.n for u in g.units)


def _rng(rng) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def random_solution(rng, box: tuple[int, int] = (3, 3)) -> list[int]:
    """A random complete grid: the search on an empty grid with each branch's digits shuffled."""
    g, rng = geometry(box), _rng(rng)
    solutions, _ = _search([g.full] * g.n ** 2, g, limit=1,
                           order=lambda bits: tuple(bits[i] for i in rng.permutation(len(bits))))
    return _digits(solutions[0])


def _unique_without(clues: list[int], cell: int, solution: list[int], g: Geometry) -> bool:
    """Whether the puzzle `clues` minus `cell` still has `solution` as its only solution: it does
    exactly when no solution puts another digit in `cell` (search for one, limit 1)."""
    cand = _masks(clues, g)
    cand[cell] = g.full & ~(1 << (solution[cell] - 1))
    found, _ = _search(cand, g, limit=1)
    return not found


def minimal_puzzle(rng, box: tuple[int, int] = (3, 3)) -> tuple[str, str]:
    """(puzzle, solution): a random complete grid, then its clues removed in random order while
    the solution stays unique. The puzzle is minimal: removing any remaining clue loses uniqueness."""
    g, rng = geometry(box), _rng(rng)
    solution = random_solution(rng, box)
    clues = solution[:]
    for cell in rng.permutation(g.n * g.n).tolist():
        if _unique_without(clues, cell, solution, g):
            clues[cell] = 0
    return render(clues), render(solution)


def parse_range(text: str | None) -> tuple[int, int | None]:
    """'LO:HI' (either side may be empty; HI None means no upper bound) as (lo, hi)."""
    if text is None:
        return 1, None
    lo, sep, hi = text.partition(":")
    try:
        bounds = (int(lo) if lo else 1, int(hi) if hi else None)
    except ValueError:
        bounds = None
    if not sep or bounds is None or bounds[0] < 1 or (bounds[1] is not None and bounds[1] < bounds[0]):
        raise ConfigError(f"rating range {text!r} must be LO:HI with integers 1 <= LO <= HI (either may be empty)")
    return bounds


def generate(count: int, rating: tuple[int, int | None] | str | None = None, rng=0,
             box: tuple[int, int] = (3, 3), max_tries: int | None = None) -> list[tuple[str, str, int]]:
    """`count` unique-solution minimal puzzles whose rating lies in [lo, hi], as (puzzle, solution,
    rating) triples; the same `rng` (a seed or numpy Generator) gives the same puzzles.

    Puzzles whose rating falls outside the range are drawn again: easy ranges cost one draw per
    puzzle, hard ones many (docs/data.md lists the rates). `max_tries` (default 1000 * count)
    bounds the draws; running out raises ConfigError.
    """
    lo, hi = parse_range(rating) if isinstance(rating, str) or rating is None else rating
    rng = _rng(rng)
    max_tries = 1000 * count if max_tries is None else max_tries
    out: list[tuple[str, str, int]] = []
    tries = 0
    while len(out) < count:
        if tries >= max_tries:
            raise ConfigError(f"found {len(out)} of {count} puzzles with rating in {lo}:{hi or ''} "
                              f"after {tries} draws; widen the range or allow more tries")
        tries += 1
        puzzle, solution = minimal_puzzle(rng, box)
        r = rate(puzzle, box)
        if lo <= r and (hi is None or r <= hi):
            out.append((puzzle, solution, r))
    return out


def rate_file(path: str, box: tuple[int, int] = (3, 3), out=None, err=None) -> int:
    """`attractor sudoku rate`: one output line per puzzle line of `path` ('-' is stdin), in order.

    Puzzle lines are the first whitespace-separated field of each line (so `generate`'s output
    rates as is); blank lines and `#` comments are skipped. Output lines:
        SOLUTION<tab>RATING           unique solution
        unsolvable<tab>RATING         no solution (the rating is the search that proved it)
        not-unique<tab>RATING         two or more solutions
        error<tab>line N: REASON      malformed: length, characters, or clues contradicting each other
    A summary goes to `err` (stderr). Returns 0 if every puzzle had a unique solution, else 1;
    a missing or unreadable file raises ConfigError.
    """
    import statistics
    import sys
    import time

    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    try:
        if path == "-":
            text = sys.stdin.read()
        else:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read puzzle file {path!r}: {e}") from None
    counts = {"unique": 0, "unsolvable": 0, "not-unique": 0, "error": 0}
    ratings = []
    start = time.perf_counter()
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            result = solve(line.split()[0], box)
        except ConfigError as e:
            counts["error"] += 1
            out.write(f"error\tline {number}: {e}\n")
            continue
        status = {0: "unsolvable", 1: "unique", 2: "not-unique"}[result.n_solutions]
        counts[status] += 1
        if result.unique:
            ratings.append(result.rating)
        out.write(f"{result.solution if result.unique else status}\t{result.rating}\n")
    n = sum(counts.values())
    median = f"; median rating {statistics.median(ratings):g}" if ratings else ""
    err.write(f"{n} puzzles: {counts['unique']} unique, {counts['unsolvable']} unsolvable, "
              f"{counts['not-unique']} not unique, {counts['error']} malformed{median} "
              f"({time.perf_counter() - start:.1f} s)\n")
    return 0 if n and counts["unique"] == n else 1
