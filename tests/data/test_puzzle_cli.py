"""The puzzle commands: sudoku rate|generate, maze generate, data sudoku|maze|sudoku-extreme|maze-hard;
their output, and every bad input as one line with exit code 2."""

from __future__ import annotations

import csv

import pytest

from attractor.cli import main
from attractor.data import maze, puzzles, sudoku

HARD = "4...3.......6..8..........1....5..9..8....6...7.2........1.27..5.3....4.9........"


def one_line_error(capsys, argv: list[str], match: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("attractor: error:") and match in err, err


def test_rate_reports_every_line_in_order(tmp_path, capsys):
    lines = ["# a comment", HARD, "", "1" * 80, "." * 81, "12345678." + "." * 8 + "9" + "." * 63,
             "11" + "." * 79, HARD + "\t7"]
    (tmp_path / "p.txt").write_text("\n".join(lines) + "\n")
    assert main(["sudoku", "rate", str(tmp_path / "p.txt")]) == 1
    captured = capsys.readouterr()
    solution = sudoku.solve(HARD)
    assert captured.out.splitlines() == [
        f"{solution.solution}\t{solution.rating}",
        "error\tline 4: 80 characters, expected 81",
        f"not-unique\t{sudoku.solve('.' * 81).rating}",
        f"unsolvable\t{sudoku.solve(lines[5]).rating}",
        "error\tline 7: clues contradict each other: two 1s in row 1 (cells 1 and 2)",
        f"{solution.solution}\t{solution.rating}",
    ]
    assert "6 puzzles: 2 unique, 1 unsolvable, 1 not unique, 2 malformed" in captured.err


def test_generate_then_rate_round_trips(tmp_path, capsys):
    assert main(["sudoku", "generate", "--count", "4", "--rating", "2:30", "--seed", "5"]) == 0
    out = capsys.readouterr().out
    rows = [line.split("\t") for line in out.splitlines()]
    assert len(rows) == 4 and all(2 <= int(r) <= 30 and sudoku.solve(p).unique for p, r in rows)
    assert main(["sudoku", "generate", "--count", "4", "--rating", "2:30", "--seed", "5",
                 "--out", str(tmp_path / "g.txt")]) == 0
    assert (tmp_path / "g.txt").read_text() == out           # same seed, same bytes
    assert main(["sudoku", "rate", str(tmp_path / "g.txt")]) == 0
    assert [line.split("\t")[1] for line in capsys.readouterr().out.splitlines()] == [r for _, r in rows]
    assert main(["sudoku", "generate", "--count", "2", "--box", "2x3"]) == 0
    assert all(len(line.split("\t")[0]) == 36 for line in capsys.readouterr().out.splitlines())


def test_maze_generate_text_and_csv(tmp_path, capsys):
    assert main(["maze", "generate", "--count", "2", "--size", "9", "--min-path", "10", "--seed", "1"]) == 0
    blocks = capsys.readouterr().out.strip().split("\n\n")
    assert len(blocks) == 2 and all(len(b.splitlines()) == 10 for b in blocks)
    assert main(["maze", "generate", "--count", "3", "--size", "9", "--csv", "--out", str(tmp_path / "m.csv")]) == 0
    with open(tmp_path / "m.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["source", "question", "answer", "rating"] and len(rows) == 4
    for _, q, a, r in rows[1:]:
        assert maze.solve(q) == (a, int(r))


def test_data_commands_build_and_refuse_to_overwrite(tmp_path, capsys):
    assert main(["data", "sudoku", "--out", str(tmp_path / "s"), "--train", "2", "--test", "1", "--aug", "2"]) == 0
    assert "train 6 examples of 2 puzzles, test 1 examples of 1 puzzles" in capsys.readouterr().out
    assert main(["data", "maze", "--out", str(tmp_path / "m"), "--train", "2", "--test", "1", "--size", "7"]) == 0
    assert puzzles.load_puzzles(tmp_path / "m")["train"].inputs.shape == (16, 49)
    one_line_error(capsys, ["data", "maze", "--out", str(tmp_path / "m"), "--train", "1", "--size", "7"],
                   "already exists")


def test_official_sets_from_a_csv_dir(tmp_path, capsys):
    made = sudoku.generate(3, rng=0)
    for name, rows in (("train.csv", made[:2]), ("test.csv", made[2:])):
        with open(tmp_path / name, "w", newline="") as fh:
            csv.writer(fh).writerows([["source", "question", "answer", "rating"], *[("s", p, s, 3) for p, s, _ in rows]])
    assert main(["data", "sudoku-extreme", "--csv-dir", str(tmp_path), "--out", str(tmp_path / "x"), "--aug", "2"]) == 0
    assert "train 6 examples of 2 puzzles, test 1 examples of 1 puzzles" in capsys.readouterr().out
    one_line_error(capsys, ["data", "maze-hard", "--csv-dir", str(tmp_path / "none"), "--out", str(tmp_path / "y")],
                   "--csv-dir lacks")


@pytest.mark.parametrize("argv,match", [
    (["sudoku", "rate", "/no/such/file"], "cannot read puzzle file '/no/such/file'"),
    (["sudoku", "generate", "--count", "0"], "--count=0 must be at least 1"),
    (["sudoku", "generate", "--count", "1", "--rating", "9"], "rating range '9' must be LO:HI"),
    (["sudoku", "generate", "--count", "1", "--box", "4x4"], "box=(4, 4) must give"),
    (["sudoku", "generate", "--count", "1", "--box", "three"], "--box 'three' must be ROWSxCOLS"),
    (["maze", "generate", "--count", "1", "--size", "2"], "size=2 must be at least 3"),
    (["maze", "generate", "--count", "1", "--size", "5", "--min-path", "40"], "lower --min-path"),
    (["maze", "generate", "--count", "1", "--loops", "1.5"], "loops=1.5 must be in [0, 1]"),
    (["data", "sudoku", "--out", "X", "--train", "0"], "train=0 must be an int >= 1"),
    (["data", "maze", "--out", "X", "--min-path", "0"], "min_path=0 must be an int >= 1"),
    (["data", "sudoku-extreme", "--out", "X", "--subsample", "0", "--csv-dir", "."], "lacks"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, tmp_path, monkeypatch, argv, match):
    monkeypatch.chdir(tmp_path)
    one_line_error(capsys, argv, match)
    assert not (tmp_path / "X").exists()
