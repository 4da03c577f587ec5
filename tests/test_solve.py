"""attractor.puzzle_solve and `attractor solve`: reading puzzles, checking answers, running a model, and
every bad input as one line with exit code 2."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import sets, tiny_settings
from hypothesis import given, settings
from hypothesis import strategies as st

from attractor.cli import main
from attractor.data import maze, sudoku
from attractor.data.puzzles import sudoku_tokens
from attractor.errors import ConfigError
from attractor.puzzle_solve import check, read_maze, read_sudoku
from attractor.run import load_run

HARD = "4...3.......6..8..........1....5..9..8....6...7.2........1.27..5.3....4.9........"
BOXES = [(3, 3), (2, 3), (2, 2)]


# ---------------------------------------------------------------- reading Sudoku


@st.composite
def sudoku_cases(draw):
    """(box, solution digits, puzzle digits with 0 blanks) from a random complete grid."""
    box = draw(st.sampled_from(BOXES))
    solution = sudoku.random_solution(draw(st.integers(0, 2**32 - 1)), box)
    blanks = draw(st.lists(st.booleans(), min_size=len(solution), max_size=len(solution)))
    return box, solution, [0 if b else d for d, b in zip(solution, blanks)]


@settings(max_examples=40, deadline=None)
@given(sudoku_cases(), st.sampled_from(["line", "grid", "zeros", "generate", "spaced"]))
def test_sudoku_reads_back_in_every_layout(case, layout):
    box, solution, digits = case
    n = len(solution) ** 0.5
    line = sudoku.render(digits)
    text = {"line": line, "zeros": sudoku.render(digits, "0"), "generate": f"{line}\t17\n",
            "grid": "\n".join(line[r * int(n):(r + 1) * int(n)] for r in range(int(n))),
            "spaced": " ".join(line) + "\n\n"}[layout]
    puzzle = read_sudoku(text, box)
    assert puzzle.cells == line and puzzle.side == n and puzzle.box == box
    assert read_sudoku(puzzle.show(), box) == puzzle                      # the printed grid reads back
    assert puzzle.tokens().tolist() == [d + 1 for d in digits]            # the datasets' token ids
    assert puzzle.decode(sudoku_tokens([sudoku.render(solution)], box)[0]) == sudoku.render(solution)
    assert puzzle.given() == [d != 0 for d in digits]
    assert check(puzzle, sudoku.render(solution)).ok


@pytest.mark.parametrize("text, box, match", [
    ("1" * 80, (3, 3), "Sudoku has 80 cells, expected 81 (9x9)"),
    ("." * 36, (3, 3), "Sudoku has 36 cells (6x6), expected 81 (9x9)"),
    (HARD, (2, 3), "Sudoku has 81 cells (9x9), expected 36 (6x6)"),
    ("..x" + "." * 78, (3, 3), "bad character 'x' at row 1, column 3"),
    ("." * 40 + "7" + "." * 35 + "|" + "." * 4, (3, 3), "bad character '|' at row 9, column 5"),
    ("." * 30 + "7" + "." * 5, (2, 3), "bad character '7' at row 6, column 1 (digits 1-6"),
    ("5" + "." * 9 + "5" + "." * 70, (3, 3), "two 5s in box 1"),
    ("." * 9 + "3" + "." * 8 + "3" + "." * 62, (3, 3), "two 3s in column 1"),
    ("2..2" + "." * 12, (2, 2), "two 2s in row 1"),
])
def test_bad_sudoku_is_one_line_that_says_where(text, box, match):
    with pytest.raises(ConfigError, match=None) as err:
        read_sudoku(text, box)
    assert match in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_sudoku_answers_are_checked_for_rules_clues_and_blanks():
    solution = sudoku.solve(HARD).solution
    puzzle = read_sudoku(HARD)
    assert check(puzzle, solution).ok
    verdict = check(puzzle, "." + solution[1:])
    assert not verdict.ok and verdict.message == "incomplete: 1 cell without a digit, the first at row 1, column 1"
    swapped = solution[1] + solution[0] + solution[2:]                  # row still fine, columns not
    verdict = check(puzzle, swapped)
    assert not verdict.ok and "breaks the rules: two" in verdict.message and "column" in verdict.message
    # A valid grid that is not this puzzle's solution: relabel two digits everywhere.
    a, b = solution[1], solution[2]
    other = solution.translate(str.maketrans(a + b, b + a))
    verdict = check(puzzle, other)
    assert not verdict.ok and "changes " in verdict.message and " clues: the " in verdict.message, verdict.message


# ---------------------------------------------------------------- reading and checking mazes


@settings(max_examples=15, deadline=None)
@given(st.integers(5, 14), st.integers(0, 2**32 - 1))
def test_mazes_printed_by_generate_read_back(size, seed):
    made = maze.generate(1, size=size, min_path=1, rng=seed)[0]
    text = f"# maze 1: {size}x{size}, shortest path {made.path_length} moves\n{maze.show(made.answer, size)}\n\n"
    puzzle = read_maze(text, size)
    assert puzzle.cells == made.question and puzzle.side == size and puzzle.box is None
    assert read_maze(maze.show(made.question, size)) == puzzle
    assert puzzle.decode(maze.to_tokens([made.answer])[0]) == made.answer
    assert puzzle.tokens().tolist() == maze.to_tokens([made.question])[0].tolist()
    verdict = check(puzzle, made.answer)
    assert verdict.ok and f"in {made.path_length} moves, a shortest path" in verdict.message


MAZE = ["#######",
        "#S    #",
        "# ### #",
        "#   # #",
        "### # #",
        "#G    #",
        "#######"]


def drawn(cells: list[tuple[int, int]]) -> str:
    grid = [list(row) for row in MAZE]
    for r, c in cells:
        grid[r][c] = "o"
    return "".join("".join(row) for row in grid)


def test_maze_answers_are_checked_for_a_connected_path():
    puzzle = read_maze("\n".join(MAZE))
    path = [(1, 2), (1, 3), (1, 4), (1, 5), (2, 5), (3, 5), (4, 5), (5, 5), (5, 4), (5, 3), (5, 2)]
    assert check(puzzle, drawn(path)).message == "connects S to G in 12 moves, longer than the shortest, 8 moves"
    short = [(2, 1), (3, 1), (3, 2), (3, 3), (4, 3), (5, 3), (5, 2)]
    assert check(puzzle, drawn(short)) == check(puzzle, maze.solve(puzzle.cells)[0])
    assert check(puzzle, drawn(short)).ok
    verdict = check(puzzle, drawn(short[:3] + short[4:]))
    assert not verdict.ok and verdict.message.startswith("path broken at row 4, column 3"), verdict.message
    verdict = check(puzzle, drawn(short[1:]))
    assert not verdict.ok and verdict.message.startswith("path broken at S"), verdict.message
    verdict = check(puzzle, drawn(short + [(1, 5)]))
    assert not verdict.ok and "1 path cell off the way" in verdict.message
    verdict = check(puzzle, drawn(short + [(0, 3)]))
    assert not verdict.ok and "changes the maze at row 1, column 4 ('#' became 'o')" in verdict.message


@pytest.mark.parametrize("text, size, match", [
    ("", None, "holds no maze"),
    ("\n".join(MAZE) + "\n\n" + "\n".join(MAZE), None, "holds 2 mazes separated by empty lines"),
    ("\n".join(MAZE[:3] + ["#  x# #"] + MAZE[4:]), None, "bad character 'x' at row 4, column 4"),
    ("# maze 1: 7x7\n" + "\n".join(["#x#####"] + MAZE[1:]), None, "bad character 'x' at row 1, column 2"),
    ("\n".join(MAZE[:3] + ["#   #"] + MAZE[4:]), None, "not rectangular: row 4 has 5 cells, row 1 has 7"),
    ("\n".join(MAZE[:6]), None, "maze is 6x7; it must be square"),
    ("\n".join(MAZE), 9, "maze is 7x7, this model solves 9x9 mazes"),
    ("\n".join(MAZE).replace("G", " "), None, "exactly one S and one G (found 1 and 0)"),
    ("\n".join(MAZE).replace("#G", "GG"), None, "exactly one S and one G (found 1 and 2)"),
    ("\n".join(MAZE[:4] + ["#######"] + MAZE[5:]), None, "G cannot be reached from S"),
])
def test_bad_maze_is_one_line_that_says_what(text, size, match):
    with pytest.raises(ConfigError) as err:
        read_maze(text, size)
    assert match in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_tokens_match_the_dataset_builders():
    """The tokens a solve feeds a model are the ones it was trained on (attractor.data.puzzles)."""
    puzzle = read_sudoku(HARD)
    assert np.array_equal(puzzle.tokens(), sudoku_tokens([HARD])[0])
    assert puzzle.tokens().dtype == np.int64


# ---------------------------------------------------------------- the command, on real checkpoints

TINY = ["model.d=32", "model.n_head=2", "train.batch_size=4", "train.eval_batches=1", "train.warmup=1"]
SHALLOW = ["model.halt_max_steps=2", "model.h_cycles=2", "model.l_cycles=3"]  # a trace of 2 x 2 x 3 frames


@pytest.fixture(scope="module")
def runs(tmp_path_factory, corpus):
    """Briefly trained checkpoints: a 6x6 Sudoku model, a 7x7 maze model and a language model."""
    root = tmp_path_factory.mktemp("solve")
    assert main(["data", "sudoku", "--out", str(root / "sudoku6"), "--train", "4", "--test", "2", "--aug", "1",
                 "--box", "2x3"]) == 0
    assert main(["data", "maze", "--out", str(root / "maze7"), "--train", "4", "--test", "2", "--size", "7",
                 "--no-aug"]) == 0
    for name, data in (("sudoku6", "sudoku6"), ("maze7", "maze7")):
        assert main(["train", "puzzle-transformer-cpu", "--out", str(root / f"run-{name}"), "--data", str(root / data),
                     "--steps", "2", "--quiet", *sets(TINY)]) == 0
    assert main(["train", "trm-cpu", "--out", str(root / "run-trm"), "--data", str(root / "sudoku6"), "--steps", "1",
                 "--quiet", *sets([*TINY, *SHALLOW])]) == 0
    assert main(["train", "--preset", "transformer-1m", "--out", str(root / "run-lm"), "--data", str(corpus),
                 "--steps", "1", "--quiet", *sets(tiny_settings("transformer-1m", root / "cache"))]) == 0
    return {"sudoku": root / "run-sudoku6", "maze": root / "run-maze7", "lm": root / "run-lm", "trm": root / "run-trm"}


def expected_answer(run, puzzle) -> str:
    """The model's own argmax, decoded here without attractor.puzzle_solve: Sudoku token t is digit t-1."""
    model = load_run(run)[0]
    with torch.no_grad():
        ids = model(torch.from_numpy(puzzle.tokens())[None]).logits[0].argmax(-1).tolist()
    if puzzle.kind == "sudoku":
        return "".join(str(t - 1) if 2 <= t <= puzzle.side + 1 else "." for t in ids)
    return "".join((" " + maze.CHARSET)[t] for t in ids)


def test_solve_sudoku_prints_the_models_answer_its_check_and_trace(runs, capsys, tmp_path):
    made, _, _ = sudoku.generate(1, rng=4, box=(2, 3))[0]
    code = main(["solve", "sudoku", made, "--checkpoint", str(runs["sudoku"]), "--trace",
                 "--html", str(tmp_path / "page.html")])
    out = capsys.readouterr().out
    puzzle = read_sudoku(made, (2, 3))
    answer = expected_answer(runs["sudoku"], puzzle)
    verdict = check(puzzle, answer)
    assert code == (0 if verdict.ok else 1)
    tail = (f"PuzzleTransformer at step 2 on a 6x6 Sudoku, {made.count('.')} blanks\n{puzzle.show(answer)}\n"
            f"{'solved' if verdict.ok else 'not solved'}: {verdict.message}\n"
            "iterations: none (one pass of a model without depth)\n"
            f"wrote {tmp_path / 'page.html'} (1 frame)\n")
    assert out.endswith(tail)
    assert out.startswith("[1/1] single pass, ") and f"\n{puzzle.show(answer)}\n" in out[:-len(tail)]
    assert answer in (tmp_path / "page.html").read_text()                  # the page embeds the answer
    # The same puzzle from a file, as `attractor sudoku generate --out` writes it, and from stdin.
    (tmp_path / "p.txt").write_text(f"{made}\t3\n")
    assert main(["solve", "sudoku", str(tmp_path / "p.txt"), "--checkpoint", str(runs["sudoku"])]) == code
    assert capsys.readouterr().out == tail.rsplit("wrote", 1)[0]


def test_solve_maze_reads_a_generated_file_and_draws_the_path(runs, capsys, tmp_path):
    assert main(["maze", "generate", "--count", "1", "--size", "7", "--seed", "2",
                 "--out", str(tmp_path / "m.txt")]) == 0
    code = main(["solve", "maze", str(tmp_path / "m.txt"), "--checkpoint", str(runs["maze"])])
    out = capsys.readouterr().out
    puzzle = read_maze((tmp_path / "m.txt").read_text())
    answer = expected_answer(runs["maze"], puzzle)
    verdict = check(puzzle, answer)
    assert code == (0 if verdict.ok else 1)
    assert out == (f"PuzzleTransformer at step 2 on a 7x7 maze\n{puzzle.show(answer)}\n"
                   f"{'solved' if verdict.ok else 'not solved'}: {verdict.message}\n"
                   "iterations: none (one pass of a model without depth)\n")


def test_solve_trace_prints_every_refinement_of_a_recursive_model(runs, capsys):
    made, _, _ = sudoku.generate(1, rng=5, box=(2, 3))[0]
    code = main(["solve", "sudoku", made, "--checkpoint", str(runs["trm"]), "--trace"])
    out = capsys.readouterr().out
    model, puzzle = load_run(runs["trm"])[0], read_sudoku(made, (2, 3))
    inputs = torch.from_numpy(puzzle.tokens())[None]
    steps = model.trace(inputs)
    with torch.no_grad():
        forward = model(inputs)
    assert len(steps) == 2 * 2 * 3
    headings = [line for line in out.splitlines() if line.startswith("[")]
    assert headings[0].startswith("[1/12] step 1, cycle 1, iteration 1, ")
    assert [h.split("] ", 1)[1].rsplit(", ", 1)[0] for h in headings] == [s.label for s in steps]
    answer = expected_answer(runs["trm"], puzzle)
    frames = out.split("TRM at step 1 on a 6x6 Sudoku")[0].strip().split("\n\n[")
    assert frames[-1].split("\n", 1)[1] == puzzle.show(answer)          # the last frame is the answer
    assert out.splitlines()[-1] == (f"iterations: {int(forward.depth[0])} in the last supervision step, "
                                    f"{forward.n_evals} evaluations in all")
    assert code == (0 if check(puzzle, answer).ok else 1)


# 6x6 clues that repeat nothing, yet leave row 1, column 1 no digit: 1-3 in its row, 4-6 in its column
NO_COMPLETION = "...123" "......" "4....." "5....." "6....." "......"


@pytest.mark.parametrize("argv, match", [
    (["sudoku", "1" * 35, "@sudoku"], "Sudoku has 35 cells, expected 36 (6x6)"),
    (["sudoku", HARD, "@sudoku"], "Sudoku has 81 cells (9x9), expected 36 (6x6)"),
    (["sudoku", "..7" + "." * 33, "@sudoku"], "bad character '7' at row 1, column 3 (digits 1-6"),
    (["sudoku", "1.....1" + "." * 29, "@sudoku"], "two 1s in column 1"),
    (["sudoku", "." + " " * 300 + "x" + "." * 34, "@sudoku"], "bad character 'x' at row 1, column 2"),  # no file name
    (["sudoku", "." * 36, "/no/such/run"], "no such"),
    (["sudoku", "." * 36, "@lm"], "holds a language model (TransformerLM at step 1), not a puzzle model"),
    (["sudoku", "." * 36, "@maze"], "holds a model of mazes (PuzzleTransformer at step 2); it cannot solve a sudoku"),
    (["maze", "@file", "@sudoku"], "holds a model of sudokus"),
    (["maze", "/no/such/maze.txt", "@maze"], "cannot read '/no/such/maze.txt'"),
    (["maze", "@file", "@maze"], "maze is 9x9, this model solves 7x7 mazes"),
    (["sudoku", NO_COMPLETION, "@sudoku"], "Sudoku has no solution: no row, column or box repeats a clue"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(runs, capsys, tmp_path, monkeypatch, argv, match):
    kind, puzzle, checkpoint = argv
    (tmp_path / "m.txt").write_text(maze.show(maze.generate(1, size=9, rng=0)[0].question, 9))
    puzzle = str(tmp_path / "m.txt") if puzzle == "@file" else puzzle
    checkpoint = str(runs[checkpoint[1:]]) if checkpoint.startswith("@") else checkpoint
    monkeypatch.chdir(tmp_path)
    assert main(["solve", kind, puzzle, "--checkpoint", checkpoint, "--trace", "--html", "page.html"]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.count("\n") == 0 and err.startswith("attractor: error:") and match in err, err
    assert captured.out == "" and not (tmp_path / "page.html").exists()


def test_a_sudoku_with_several_solutions_is_solved_with_a_note(runs, capsys):
    note = "note: this puzzle has more than one solution; any grid that keeps the clues and the rules counts"
    empty = "." * 36
    code = main(["solve", "sudoku", empty, "--checkpoint", str(runs["sudoku"])])
    lines = capsys.readouterr().out.splitlines()
    answer = expected_answer(runs["sudoku"], read_sudoku(empty, (2, 3)))
    assert code == (0 if check(read_sudoku(empty, (2, 3)), answer).ok else 1)
    assert lines.count(note) == 1 and lines[-2] == note and lines[-3].startswith(("solved: ", "not solved: "))
    made, _, _ = sudoku.generate(1, rng=4, box=(2, 3))[0]           # a unique one: no note
    main(["solve", "sudoku", made, "--checkpoint", str(runs["sudoku"])])
    assert note not in capsys.readouterr().out


def test_the_module_does_not_shadow_the_core_solve():
    """`attractor.solve` stays the fixed-point core's function once the puzzle module is imported
    (a submodule named solve would replace the attribute on import)."""
    import attractor
    import attractor.fixedpoint
    import attractor.puzzle_solve  # noqa: F401

    assert attractor.solve is attractor.fixedpoint.solve
