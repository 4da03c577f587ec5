"""`attractor solve`: read a Sudoku or a maze, run a trained puzzle model on it, check its answer.

    from attractor.puzzle_solve import read_sudoku, solve
    puzzle = read_sudoku("4...3.......6..8..........1....5..9..8....6...7.2........1.27..5.3....4.9........")
    result = solve(model, puzzle, trace=True)
    result.answer, result.verdict.ok, result.verdict.message   # '468931527...', True, 'satisfied: ...'
    [frame.label for frame in result.frames]                   # ['step 1, iteration 1', ...]

Reading is independent of models: a Sudoku is n*n cells of digits 1..n with `.` or `0` for a
blank, whitespace ignored (so a grid printed over several lines, and a line `PUZZLE<tab>RATING`
of `attractor sudoku generate`, both read); a maze is rows of `# SG` (wall, open, start, goal),
square, one S and one G, with an optional path `o` (read as open: `attractor maze generate`
prints mazes with their path) and `#`-comment lines that hold other characters. Every error is
one ConfigError line that says what is wrong and where.

Checking is independent of models too: a Sudoku answer must fill every cell, obey the rules and
keep every clue; a maze answer must keep the maze and draw `o` cells that connect S to G.

Solving takes any puzzle model of the contract (attractor/models/puzzle.py): the eval-mode
forward gives the answer and the iterations used; `model.trace` gives the grid after every
refinement a person can watch, which `--trace` prints and attractor/page.py draws.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from attractor.data import maze, sudoku
from attractor.data.puzzles import sudoku_tokens
from attractor.errors import ConfigError

SUDOKU_BLANK = "."

# ---------------------------------------------------------------- puzzles


@dataclass(frozen=True)
class Puzzle:
    """One puzzle, row by row, as the person gave it.

    Attributes:
        kind: "sudoku" or "maze".
        cells: side*side characters: Sudoku digits and '.', maze '# SG'.
        side: n for an n x n Sudoku, size for a size x size maze.
        box: Sudoku box shape (rows, cols), None for a maze.
    """

    kind: str
    cells: str
    side: int
    box: tuple[int, int] | None = None

    def tokens(self) -> np.ndarray:
        """(L,) int64 token ids as the datasets store them (attractor/data/puzzles.py)."""
        if self.kind == "sudoku":
            return sudoku_tokens([self.cells], self.box)[0].astype(np.int64)
        return maze.to_tokens([self.cells])[0].astype(np.int64)

    def decode(self, ids) -> str:
        """Characters of predicted token ids (L,): Sudoku digits ('.' for pad or blank), maze `# SGo`
        (' ' for pad)."""
        ids = np.asarray(ids, np.int64)
        if self.kind == "sudoku":
            return "".join(str(t - 1) if 2 <= t <= self.side + 1 else SUDOKU_BLANK for t in ids.tolist())
        return maze.from_tokens(ids[None])[0]

    def given(self) -> list[bool]:
        """Per cell, whether the puzzle fixes it: Sudoku clues; maze walls, S and G."""
        fixed = SUDOKU_BLANK if self.kind == "sudoku" else maze.OPEN
        return [ch != fixed for ch in self.cells]

    def show(self, cells: str | None = None) -> str:
        """`cells` (default the puzzle) as lines: a Sudoku with a space between boxes and a blank
        line between bands (it reads back with read_sudoku), a maze as its rows."""
        cells = self.cells if cells is None else cells
        rows = [cells[r * self.side:(r + 1) * self.side] for r in range(self.side)]
        if self.kind == "maze":
            return "\n".join(rows)
        br, bc = self.box
        lines = [" ".join(row[c:c + bc] for c in range(0, self.side, bc)) for row in rows]
        return "\n\n".join("\n".join(lines[r:r + br]) for r in range(0, self.side, br))

    def where(self, cell: int) -> str:
        """'row R, column C' of a cell index, counted from 1."""
        return f"row {cell // self.side + 1}, column {cell % self.side + 1}"

    def describe(self) -> str:
        """'9x9 Sudoku, 51 blanks' or '15x15 maze'."""
        if self.kind == "sudoku":
            return f"{self.side}x{self.side} Sudoku, {self.cells.count(SUDOKU_BLANK)} blanks"
        return f"{self.side}x{self.side} maze"


def read_sudoku(text: str, box: tuple[int, int] = (3, 3)) -> Puzzle:
    """A Sudoku from text: n*n cells (n = box rows * box cols), digits 1..n and '.' or '0' for a
    blank, whitespace ignored; a line `PUZZLE<tab>RATING` (attractor sudoku generate) reads as
    PUZZLE. ConfigError (one line) for a wrong number of cells, a bad character (the first, with
    its row and column), clues that contradict each other (the row, column or box, and digit) or
    clues that no grid completes (the classical solver, attractor.data.sudoku, finds none)."""
    n = sudoku.geometry(box).n
    fields = text.split()
    if len(fields) == 2 and len(fields[0]) == n * n and fields[1].isdigit():
        fields = fields[:1]  # the rating column of `attractor sudoku generate`
    cells = "".join(fields)
    if len(cells) != n * n:
        other = next((f" ({m}x{m})" for m in range(2, 10) if m * m == len(cells)), "")
        raise ConfigError(f"Sudoku has {len(cells)} cells{other}, expected {n * n} ({n}x{n})")
    for i, ch in enumerate(cells):
        if not (ch in sudoku.BLANKS or "1" <= ch <= str(n)):
            raise ConfigError(f"Sudoku: bad character {ch!r} at row {i // n + 1}, column {i % n + 1} "
                              f"(digits 1-{n}, '.' or '0' for a blank)")
    try:
        grid = sudoku.parse(cells, box)  # names the unit and digit of contradictory clues
    except ConfigError as err:
        raise ConfigError(f"Sudoku: {err}") from None
    if sudoku.solve(grid, box).n_solutions == 0:
        raise ConfigError("Sudoku has no solution: no row, column or box repeats a clue, but no grid completes "
                          "the clues (attractor sudoku rate FILE checks puzzles)")
    return Puzzle("sudoku", sudoku.render(grid, SUDOKU_BLANK), n, tuple(box))


def several_solutions(puzzle: Puzzle) -> bool:
    """Whether a Sudoku has more than one solution (the classical solver counts them up to 2);
    False for a maze, whose answer check accepts any shortest path."""
    return puzzle.kind == "sudoku" and sudoku.solve(puzzle.cells, puzzle.box).n_solutions > 1


def read_maze(text: str, size: int | None = None) -> Puzzle:
    """A maze from text: rows of '#', ' ', 'S', 'G' ('o', a drawn path, reads as open), square,
    exactly one S and one G, `size` x `size` when given. Lines before the rows that start with '#'
    and hold a word are comments (the headers of `attractor maze generate`); empty lines around
    the maze are dropped; an empty line ends the maze (a row of spaces is an open row).
    ConfigError (one line) for anything else."""
    blocks, block = [], []
    for line in text.split("\n") + [""]:
        line = line.rstrip("\r")
        if not block and _is_comment(line):
            continue
        if line:  # an empty line ends a maze; a row of spaces is an open row
            block.append(line)
        elif block:
            blocks.append(block)
            block = []
    if not blocks:
        raise ConfigError("maze file holds no maze (rows of '#', ' ', 'S', 'G')")
    if len(blocks) > 1:
        raise ConfigError(f"maze file holds {len(blocks)} mazes separated by empty lines; give one")
    rows = blocks[0]
    for r, row in enumerate(rows):
        bad = next((c for c, ch in enumerate(row) if ch not in maze.CHARSET), None)
        if bad is not None:
            raise ConfigError(f"maze: bad character {row[bad]!r} at row {r + 1}, column {bad + 1} "
                              f"(walls '#', open ' ', start 'S', goal 'G')")
        if len(row) != len(rows[0]):
            raise ConfigError(f"maze is not rectangular: row {r + 1} has {len(row)} cells, row 1 has {len(rows[0])}")
    height, width = len(rows), len(rows[0])
    if height != width:
        raise ConfigError(f"maze is {height}x{width}; it must be square")
    if size is not None and height != size:
        raise ConfigError(f"maze is {height}x{height}, this model solves {size}x{size} mazes")
    cells = "".join(rows).replace(maze.PATH, maze.OPEN)
    try:
        maze.check(cells, height)
    except ConfigError as err:
        raise ConfigError(f"maze {err}") from None
    if maze.solve(cells, height) is None:
        raise ConfigError("maze: G cannot be reached from S")
    return Puzzle("maze", cells, height)


def _is_comment(line: str) -> bool:
    """A line before a maze's rows that starts with '#' and holds a word (two letters or digits
    in a row, not all of them maze characters): `# maze 1: 15x15, shortest path 40 moves`."""
    return line.startswith("#") and any(set(word) - set(maze.CHARSET) for word in re.findall(r"[A-Za-z0-9]{2,}", line))


def _is_file(source: str) -> bool:
    try:
        return Path(source).is_file()
    except OSError:   # a puzzle longer than a file name may be
        return False


def read_text(source: str) -> str:
    """The text of a file, or of stdin for '-'; ConfigError (one line) when it cannot be read."""
    import sys

    if source == "-":
        return sys.stdin.read()
    try:
        return Path(source).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read {source!r}: {err.strerror if isinstance(err, OSError) else err}") from None


# ---------------------------------------------------------------- checking an answer


def plural(count: int, noun: str) -> str:
    """'1 cell', '3 cells'."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


@dataclass(frozen=True)
class Verdict:
    ok: bool       # whether the answer solves the puzzle
    message: str   # one line: what holds, or the first thing that fails


def check(puzzle: Puzzle, answer: str) -> Verdict:
    """Whether `answer` (side*side characters, as Puzzle.decode gives) solves `puzzle`."""
    if len(answer) != len(puzzle.cells):
        raise ValueError(f"answer has {len(answer)} cells, the puzzle {len(puzzle.cells)}")
    return _check_sudoku(puzzle, answer) if puzzle.kind == "sudoku" else _check_maze(puzzle, answer)


def _check_sudoku(puzzle: Puzzle, answer: str) -> Verdict:
    blank = answer.find(SUDOKU_BLANK)
    if blank >= 0:
        return Verdict(False, f"incomplete: {plural(answer.count(SUDOKU_BLANK), 'cell')} without a digit, "
                              f"the first at {puzzle.where(blank)}")
    try:
        sudoku.parse(answer, puzzle.box)
    except ConfigError as err:  # "clues contradict each other: two 5s in row 3 (cells 19 and 21)"
        return Verdict(False, "breaks the rules: " + str(err).split(": ", 1)[1])
    changed = [i for i, (p, a) in enumerate(zip(puzzle.cells, answer)) if p != SUDOKU_BLANK and p != a]
    if changed:
        i = changed[0]
        return Verdict(False, f"changes {plural(len(changed), 'clue')}: the {puzzle.cells[i]} at {puzzle.where(i)} "
                              f"became {answer[i]}")
    return Verdict(True, "satisfies the rules and keeps every clue")


def _check_maze(puzzle: Puzzle, answer: str) -> Verdict:
    size, question = puzzle.side, puzzle.cells
    for i, (q, a) in enumerate(zip(question, answer)):
        if q != a and not (q == maze.OPEN and a == maze.PATH):
            return Verdict(False, f"changes the maze at {puzzle.where(i)} ({q!r} became {a!r})")
    path = {i for i, a in enumerate(answer) if a == maze.PATH}
    start, goal = question.index(maze.START), question.index(maze.GOAL)
    walk = "".join(maze.WALL if i not in path and i not in (start, goal) else maze.OPEN for i in range(size * size))
    dist, _ = maze.bfs(walk, size, start)   # over the path cells (and G) only
    shortest = maze.bfs(question, size, start)[0][goal]
    if dist[goal] < 0:
        reached = [i for i in path if dist[i] >= 0]
        if not reached:
            return Verdict(False, f"path broken at S ({puzzle.where(start)}): no path cell next to it")
        end = max(reached, key=lambda i: dist[i])
        return Verdict(False, f"path broken at {puzzle.where(end)}, {dist[end]} moves from S; it does not reach G")
    stray = len(path) - sum(1 for i in path if dist[i] >= 0)
    extra = f"; {plural(stray, 'path cell')} off the way" if stray else ""
    length = dist[goal]
    best = "a shortest path" if length == shortest else f"longer than the shortest, {shortest} moves"
    return Verdict(stray == 0, f"connects S to G in {length} moves, {best}{extra}")


# ---------------------------------------------------------------- running a model


@dataclass(frozen=True)
class Frame:
    """The grid after one refinement (a TraceStep of the model), as a person sees it.

    Attributes:
        cells: side*side predicted characters.
        confidence: per cell, the softmax probability of the predicted token.
        changed: indices of the cells whose prediction differs from the previous frame's (every
            cell that differs from the puzzle, for the first frame).
        residual: the solver's relative residual after this refinement, None where there is none.
        label: what the refinement was, e.g. "step 2, iteration 3".
    """

    cells: str
    confidence: list[float]
    changed: list[int]
    residual: float | None
    label: str


@dataclass(frozen=True)
class Solution:
    """A model's answer to one puzzle.

    Attributes:
        puzzle: what it was asked.
        answer: side*side characters of the eval-mode forward's prediction.
        confidence: per cell, the softmax probability of the predicted token.
        verdict: whether the answer solves the puzzle (check()).
        depth: iterations the model ran in its last supervision step (ModelOutput.depth), None
            for a model without depth (the plain transformer).
        n_evals: evaluations of the recurrent map over the whole solve (ModelOutput.n_evals).
        frames: the grid after every refinement (model.trace), empty unless asked for.
    """

    puzzle: Puzzle
    answer: str
    confidence: list[float]
    verdict: Verdict
    depth: int | None
    n_evals: int
    frames: list[Frame]


def _predict(puzzle: Puzzle, logits: torch.Tensor) -> tuple[str, list[float]]:
    """logits (1, L, V) -> (predicted characters, per-cell probability of the prediction)."""
    prob, ids = logits[0].float().softmax(-1).max(-1)   # (L,), (L,)
    return puzzle.decode(ids.cpu().numpy()), prob.cpu().tolist()


def solve(model: nn.Module, puzzle: Puzzle, *, trace: bool = False) -> Solution:
    """Run `model` (a puzzle model in eval mode, attractor/models/puzzle.py's contract) on
    `puzzle`: the eval-mode forward's answer, checked; with `trace`, model.trace's frames too."""
    inputs = torch.from_numpy(puzzle.tokens())[None]        # (1, L)
    device = next(model.parameters()).device
    model.eval()
    with torch.no_grad():
        out = model(inputs.to(device))
    answer, confidence = _predict(puzzle, out.logits)
    frames = []
    if trace:
        previous = puzzle.cells
        for step in model.trace(inputs.to(device)):
            cells, prob = _predict(puzzle, step.logits)
            frames.append(Frame(cells, prob, [i for i, (a, b) in enumerate(zip(previous, cells)) if a != b],
                                step.residual, step.label))
            previous = cells
    depth = None if out.depth is None else int(out.depth[0])
    return Solution(puzzle, answer, confidence, check(puzzle, answer), depth, int(out.n_evals), frames)


def iterations_line(solution: Solution) -> str:
    """'iterations: 6 in the last supervision step, 48 evaluations in all' (or one pass)."""
    if solution.depth is None:
        return "iterations: none (one pass of a model without depth)"
    return (f"iterations: {solution.depth} in the last supervision step, "
            f"{solution.n_evals} evaluations in all")


def trace_text(solution: Solution) -> str:
    """Every frame as a heading (label, residual, changed cells) and the grid after it."""
    parts = []
    for k, frame in enumerate(solution.frames):
        residual = "" if frame.residual is None else f", residual {frame.residual:.2e}"
        changed = plural(len(frame.changed), "cell")
        parts.append(f"[{k + 1}/{len(solution.frames)}] {frame.label}{residual}, {changed} changed\n"
                     f"{solution.puzzle.show(frame.cells)}\n")
    return "\n".join(parts)


# ---------------------------------------------------------------- the command


def load_solver(checkpoint: str | Path) -> tuple[nn.Module, dict, str]:
    """(puzzle model in eval mode, its dataset's description, 'TRM at step 300') of a checkpoint or
    run directory; ConfigError (one line) when it holds a language model."""
    from attractor.run import load_run

    model, vocab, run, step = load_run(checkpoint)
    name = f"{type(model).__name__} at step {step}"
    if not run.task.solves_puzzles:
        raise ConfigError(f"{checkpoint} holds a {run.task.model_kind} ({name}), not a puzzle model")
    return model, vocab, name


def solve_command(kind: str, source: str, checkpoint: str | Path, *, trace: bool = False,
                  html: str | Path | None = None, out=None) -> int:
    """`attractor solve sudoku|maze`: read the puzzle (`source`: a Sudoku string, or a file, '-'
    for stdin), solve it with the checkpoint's model, print the answer, its check and the
    iterations (with `trace`, every frame first), and with `html` write the page there. A Sudoku
    with several solutions gets a note line: the check accepts any of them.
    Returns 0 when the answer solves the puzzle, 1 when it does not; bad input, an unsolvable
    puzzle included, is a ConfigError before the model runs."""
    import sys

    out = sys.stdout if out is None else out
    model, meta, name = load_solver(checkpoint)
    if meta["kind"] != kind:
        raise ConfigError(f"{checkpoint} holds a model of {meta['kind']}s ({name}); it cannot solve a {kind}")
    if kind == "sudoku":
        text = read_text(source) if source == "-" or _is_file(source) else source
        puzzle = read_sudoku(text, tuple(meta["box"]))
    else:
        puzzle = read_maze(read_text(source), meta.get("size"))  # no size: a model of any side (maze-local)
    solution = solve(model, puzzle, trace=trace or html is not None)
    if trace:
        out.write(trace_text(solution) + "\n")
    note = (f"note: this puzzle has more than one solution; any grid that keeps the clues and the rules counts\n"
            if several_solutions(puzzle) else "")
    out.write(f"{name} on a {puzzle.describe()}\n{puzzle.show(solution.answer)}\n"
              f"{'solved' if solution.verdict.ok else 'not solved'}: {solution.verdict.message}\n{note}"
              f"{iterations_line(solution)}\n")
    if html is not None:
        from attractor.page import write_page

        write_page(html, solution, title=f"{name} on a {puzzle.describe()}")
        out.write(f"wrote {html} ({plural(len(solution.frames), 'frame')})\n")
    return 0 if solution.verdict.ok else 1
