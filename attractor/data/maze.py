"""Mazes: a seeded generator of N x N grids with a start, a goal and a long shortest path, and the
breadth-first search that labels it.

    from attractor.data.maze import generate, solve, show
    mazes = generate(4, size=30, min_path=111, rng=0)   # Maze-Hard's size and hardness
    print(show(mazes[0].answer, 30))                    # the grid with its shortest path as 'o'

A maze is a string of size*size characters, row by row, in the published charset `# SGo`: wall,
open cell, start, goal, path (Maze-Hard, `sapientinc/maze-30x30-hard-1k`). The question has no
`o`; the answer is the question with the cells strictly between S and G on a shortest path
turned into `o`. Moves go up, down, left and right; a path's length counts moves, so a path of
length L shows L - 1 `o` cells. Maze-Hard keeps paths "longer than 110": `min_path=111`.

The generator (ours; the published set comes from the generator of Lehnert et al. 2024, arXiv
2402.14083, whose code is not public): a randomized depth-first maze on the lattice of cells
with even coordinates (walls between them; for an even size the spare row and column of wall go
on a random side), then a fraction `loops` of the remaining inner walls knocked out to make
cycles. S and G are drawn among open cells so that the shortest path is at least `min_path`
long and is the only shortest path (so the label is unambiguous), else drawn again.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from attractor.errors import ConfigError

CHARSET = "# SGo"                  # wall, open, start, goal, path
WALL, OPEN, START, GOAL, PATH = CHARSET
HARD_MIN_PATH = 111                # Maze-Hard: 30x30, shortest path longer than 110


@dataclass(frozen=True)
class Maze:
    question: str      # size*size characters of '# SG'
    answer: str        # the question with a shortest path drawn as 'o'
    path_length: int   # moves from S to G


def default_min_path(size: int) -> int:
    """Maze-Hard's 111 moves at 30x30, scaled with the area for other sizes."""
    return max(1, round(HARD_MIN_PATH * size * size / 900))


def _neighbours(size: int) -> list[tuple[int, ...]]:
    out = []
    for cell in range(size * size):
        r, c = divmod(cell, size)
        out.append(tuple(r2 * size + c2 for r2, c2 in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1))
                         if 0 <= r2 < size and 0 <= c2 < size))
    return out


def bfs(grid: str, size: int, source: int) -> tuple[list[int], list[int]]:
    """Distances from `source` over non-wall cells (-1 where unreachable) and the number of
    shortest paths to each cell (capped at 2)."""
    nbrs = _neighbours(size)
    dist = [-1] * (size * size)
    ways = [0] * (size * size)
    dist[source], ways[source] = 0, 1
    queue = deque([source])
    while queue:
        cell = queue.popleft()
        for n in nbrs[cell]:
            if grid[n] == WALL:
                continue
            if dist[n] < 0:
                dist[n] = dist[cell] + 1
                queue.append(n)
            if dist[n] == dist[cell] + 1:
                ways[n] = min(2, ways[n] + ways[cell])
    return dist, ways


def check(question: str, size: int | None = None) -> int:
    """The side of a maze question, or ConfigError: not square, bad characters, not one S and one G."""
    size = size or round(len(question) ** 0.5)
    if len(question) != size * size:
        raise ConfigError(f"{len(question)} characters is not a {size}x{size} maze")
    bad = set(question) - set(CHARSET[:4])
    if bad:
        raise ConfigError(f"bad characters {''.join(sorted(bad))!r} (a question uses '#', ' ', 'S', 'G')")
    if question.count(START) != 1 or question.count(GOAL) != 1:
        raise ConfigError(f"needs exactly one S and one G (found {question.count(START)} and {question.count(GOAL)})")
    return size


def solve(question: str, size: int | None = None) -> tuple[str, int] | None:
    """(answer, path length): a shortest path from S to G drawn as 'o', or None if G is unreachable.
    Of several shortest paths, the one whose moves come first in the order up, down, left, right
    when walking back from G."""
    size = check(question, size)
    start, goal = question.index(START), question.index(GOAL)
    dist, _ = bfs(question, size, start)
    if dist[goal] < 0:
        return None
    nbrs = _neighbours(size)
    grid = list(question)
    cell = goal
    while dist[cell] > 1:
        cell = next(n for n in nbrs[cell] if dist[n] == dist[cell] - 1)
        grid[cell] = PATH
    return "".join(grid), dist[goal]


def _rng(rng) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def random_walls(size: int, rng, loops: float = 0.0) -> str:
    """A grid of '#' and ' ': a randomized depth-first maze with a fraction `loops` of the inner
    walls between two lattice cells removed."""
    rng = _rng(rng)
    off_r, off_c = (int(rng.integers(2)) if size % 2 == 0 else 0 for _ in range(2))
    rows, cols = range(off_r, size, 2), range(off_c, size, 2)
    lattice = [(r, c) for r in rows for c in cols]
    grid = bytearray(WALL.encode() * (size * size))
    for r, c in lattice:
        grid[r * size + c] = ord(OPEN)
    seen = {lattice[int(rng.integers(len(lattice)))]}
    stack = list(seen)
    while stack:
        r, c = stack[-1]
        options = [(r + dr, c + dc) for dr, dc in ((-2, 0), (2, 0), (0, -2), (0, 2))
                   if 0 <= r + dr < size and 0 <= c + dc < size and (r + dr, c + dc) not in seen]
        if not options:
            stack.pop()
            continue
        nr, nc = options[int(rng.integers(len(options)))]
        grid[(r + nr) // 2 * size + (c + nc) // 2] = ord(OPEN)
        seen.add((nr, nc))
        stack.append((nr, nc))
    if loops > 0:  # inner walls that separate two lattice cells, opened with probability `loops`
        between = [r * size + c for r in range(size) for c in range(size)
                   if grid[r * size + c] == ord(WALL) and ((r - off_r) % 2) != ((c - off_c) % 2)
                   and 0 < r < size - 1 and 0 < c < size - 1
                   and (grid[(r - 1) * size + c] == grid[(r + 1) * size + c] == ord(OPEN)
                        or grid[r * size + c - 1] == grid[r * size + c + 1] == ord(OPEN))]
        for cell, u in zip(between, rng.random(len(between))):
            if u < loops:
                grid[cell] = ord(OPEN)
    return grid.decode()


def generate_one(size: int, min_path: int, rng, loops: float = 0.0, max_tries: int = 100) -> Maze:
    """One maze whose unique shortest path from S to G has at least `min_path` moves."""
    rng = _rng(rng)
    for _ in range(max_tries):
        walls = random_walls(size, rng, loops)
        open_cells = [i for i, ch in enumerate(walls) if ch == OPEN]
        for _ in range(4):  # a few starts per wall layout
            start = open_cells[int(rng.integers(len(open_cells)))]
            dist, ways = bfs(walls, size, start)
            goals = [i for i in open_cells if dist[i] >= min_path and ways[i] == 1]
            if goals:
                goal = goals[int(rng.integers(len(goals)))]
                grid = list(walls)
                grid[start], grid[goal] = START, GOAL
                question = "".join(grid)
                answer, length = solve(question, size)
                return Maze(question, answer, length)
    raise ConfigError(f"no {size}x{size} maze with a unique shortest path of at least {min_path} moves "
                      f"in {max_tries} layouts; lower --min-path")


def generate(count: int, size: int = 30, min_path: int | None = None, rng=0, loops: float = 0.0) -> list[Maze]:
    """`count` mazes (see the module docstring); the same `rng` (seed or Generator) gives the
    same mazes. `min_path` defaults to `default_min_path(size)` (111 at 30x30)."""
    if size < 3:
        raise ConfigError(f"maze size={size} must be at least 3")
    if min_path is not None and min_path < 1:
        raise ConfigError(f"min_path={min_path} must be at least 1")
    if not 0 <= loops <= 1:
        raise ConfigError(f"loops={loops} must be in [0, 1]")
    min_path = default_min_path(size) if min_path is None else min_path
    rng = _rng(rng)
    return [generate_one(size, min_path, rng, loops) for _ in range(count)]


def show(grid: str, size: int) -> str:
    """A maze string as `size` lines of text."""
    return "\n".join(grid[r * size:(r + 1) * size] for r in range(size))


# Token ids as the published builder maps them: 0 is padding, then the charset in order.
TOKEN = {ch: i + 1 for i, ch in enumerate(CHARSET)}   # '#' 1, ' ' 2, 'S' 3, 'G' 4, 'o' 5
VOCAB_SIZE = len(CHARSET) + 1


def to_tokens(grids: list[str]) -> np.ndarray:
    """(N, size*size) uint8 token ids of maze strings of one size."""
    table = np.zeros(256, np.uint8)
    for ch, i in TOKEN.items():
        table[ord(ch)] = i
    try:
        raw = np.frombuffer("".join(grids).encode("ascii"), np.uint8)
    except UnicodeEncodeError:
        raise ConfigError(f"mazes hold characters outside the charset {CHARSET!r}") from None
    tokens = table[raw]
    if len(grids) and (tokens == 0).any():
        bad = sorted({chr(b) for b in raw[tokens == 0]})
        raise ConfigError(f"characters {''.join(bad)!r} are not in the maze charset {CHARSET!r}")
    return tokens.reshape(len(grids), -1)


def from_tokens(tokens: np.ndarray) -> list[str]:
    """Maze strings from token ids (padding 0 is not allowed inside a maze)."""
    chars = np.frombuffer((" " + CHARSET).encode(), np.uint8)
    return [chars[row].tobytes().decode() for row in np.asarray(tokens)]
