"""Puzzle datasets: built offline (seeded to the byte), in the published token formats, labels
that solve their inputs; the official CSV layouts converted; the hub's failure paths."""

from __future__ import annotations

import csv
import hashlib
import json
import socket
import sys

import numpy as np
import pytest

from attractor.data import folder, maze, puzzles, sudoku
from attractor.errors import ConfigError


def digest(folder) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def decode_sudoku(tokens: np.ndarray) -> str:
    return sudoku.render(np.asarray(tokens).astype(int) - 1)


@pytest.fixture(scope="module")
def sudoku_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("sets") / "sudoku"
    puzzles.build_sudoku(out, n_train=4, n_test=3, n_aug=5, rating=(1, 20), seed=1)
    return out


def test_sudoku_dataset_layout_and_tokens(sudoku_set):
    data = puzzles.load_puzzles(sudoku_set)
    meta, train, test = data["meta"], data["train"], data["test"]
    assert (meta["kind"], meta["seq_len"], meta["vocab_size"]) == ("sudoku", 81, 11)
    assert meta["splits"] == {"train": {"examples": 24, "groups": 4}, "test": {"examples": 3, "groups": 3}}
    assert train.inputs.shape == train.labels.shape == (24, 81) and train.inputs.dtype == np.uint8
    assert train.group.tolist() == [g for g in range(4) for _ in range(6)] and train.aug.tolist() == list(range(6)) * 4
    assert test.aug.tolist() == [0, 0, 0] and len(test.rating) == 3
    assert train.inputs.min() >= 1 and train.inputs.max() <= 10 and train.labels.min() >= 2  # no pad, full labels
    for split in (train, test):
        for inp, lab, g in zip(split.inputs, split.labels, split.group):
            result = sudoku.solve(decode_sudoku(inp))
            assert result.unique and result.solution == decode_sudoku(lab)
            if split is train:
                assert 1 <= split.rating[g] <= 20
    for g in range(4):  # augmented rows differ from their original, and ratings are of the originals
        rows = train.inputs[train.group == g]
        assert len({r.tobytes() for r in rows}) == 6
        assert sudoku.rate(decode_sudoku(rows[0])) == train.rating[g]
    originals = {r.tobytes() for r in train.inputs[train.aug == 0]}
    assert not originals & {r.tobytes() for r in test.inputs}


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path, sudoku_set):
    puzzles.build_sudoku(tmp_path / "again", n_train=4, n_test=3, n_aug=5, rating=(1, 20), seed=1)
    assert digest(tmp_path / "again") == digest(sudoku_set)
    puzzles.build_sudoku(tmp_path / "other", n_train=4, n_test=3, n_aug=5, rating=(1, 20), seed=2)
    assert digest(tmp_path / "other")["train/inputs.npy"] != digest(sudoku_set)["train/inputs.npy"]
    m1, m2 = (puzzles.build_maze(tmp_path / f"m{i}", n_train=2, n_test=1, size=8) for i in (1, 2))
    assert digest(m1) == digest(m2)


def test_maze_dataset_has_the_8_symmetries(tmp_path):
    out = puzzles.build_maze(tmp_path / "m", n_train=3, n_test=2, size=9, min_path=12, seed=4)
    data = puzzles.load_puzzles(out)
    meta, train, test = data["meta"], data["train"], data["test"]
    assert (meta["kind"], meta["seq_len"], meta["vocab_size"], meta["tokens"]["o"]) == ("maze", 81, 6, 5)
    assert train.inputs.shape == (24, 81) and test.inputs.shape == (2, 81) and (train.rating >= 12).all()
    for inp, lab, g in zip(train.inputs, train.labels, train.group):
        question, answer = maze.from_tokens(np.stack([inp, lab]))
        assert maze.solve(question) == (answer, train.rating[g])
    for g in range(3):
        assert len({r.tobytes() for r in train.inputs[train.group == g]}) == 8
    without = puzzles.build_maze(tmp_path / "plain", n_train=3, n_test=2, size=9, min_path=12, seed=4, aug=False)
    assert np.array_equal(puzzles.load_puzzles(without)["train"].inputs, train.inputs[train.aug == 0])


def test_writes_are_all_or_nothing(tmp_path, monkeypatch, sudoku_set):
    with pytest.raises(ConfigError, match="already exists"):
        puzzles.build_sudoku(sudoku_set, n_train=1, n_test=0, n_aug=0)

    def broken(array):
        raise OSError("disk full")
    monkeypatch.setattr(folder, "npy", broken)  # the dataset folder writer (attractor/data/folder.py)
    with pytest.raises(OSError, match="disk full"):
        puzzles.build_maze(tmp_path / "m", n_train=1, n_test=1, size=6)
    assert list(tmp_path.iterdir()) == []   # no dataset, no temporary folder


def test_loading_bad_folders_is_one_clear_error(tmp_path, sudoku_set):
    with pytest.raises(ConfigError, match="no dataset.json"):
        puzzles.load_puzzles(tmp_path)
    (tmp_path / "dataset.json").write_text(json.dumps({"format": "other", "version": 1}))
    with pytest.raises(ConfigError, match="format 'other'"):
        puzzles.load_puzzles(tmp_path)
    (tmp_path / "dataset.json").write_text((sudoku_set / "dataset.json").read_text())
    with pytest.raises(ConfigError, match="incomplete or corrupt"):
        puzzles.load_puzzles(tmp_path)


def test_bad_counts(tmp_path):
    with pytest.raises(ConfigError, match="train=0"):
        puzzles.build_sudoku(tmp_path / "x", n_train=0)
    with pytest.raises(ConfigError, match="aug=-1"):
        puzzles.build_sudoku(tmp_path / "x", n_train=1, n_aug=-1)
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------- the official layouts

def write_csv(path, rows) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["source", "question", "answer", "rating"])
        writer.writerows(rows)


@pytest.fixture(scope="module")
def extreme_csvs(tmp_path_factory):
    """Files in Sudoku-Extreme's layout: '.' blanks, a source column, a rating column."""
    root = tmp_path_factory.mktemp("extreme")
    made = sudoku.generate(12, rng=21)
    write_csv(root / "train.csv", [(f"src{i % 3}", p, s, i) for i, (p, s, _) in enumerate(made[:9])])
    write_csv(root / "test.csv", [("tdoku", p, s, 5) for p, s, _ in made[9:]])
    return root, made


def test_sudoku_extreme_conversion(tmp_path, extreme_csvs):
    root, made = extreme_csvs
    out = puzzles.convert_sudoku_extreme(root / "train.csv", root / "test.csv", tmp_path / "x", subsample=4,
                                         n_aug=3, seed=0, min_rating=2)
    data = puzzles.load_puzzles(out)
    train, test = data["train"], data["test"]
    assert train.inputs.shape == (16, 81) and test.inputs.shape == (3, 81)
    by_puzzle = {p: (s, i) for i, (p, s, _) in enumerate(made[:9])}
    chosen = [decode_sudoku(r) for r in train.inputs[train.aug == 0]]
    assert len(set(chosen)) == 4 and all(by_puzzle[p][1] >= 2 for p in chosen)  # min_rating filter held
    assert train.rating.tolist() == [by_puzzle[p][1] for p in chosen]
    for inp, lab in zip(train.labels, train.inputs):
        assert sudoku.is_solution(decode_sudoku(lab), decode_sudoku(inp))
    assert [decode_sudoku(r) for r in test.inputs] == [p for p, _, _ in made[9:]]   # in order, unaugmented
    again = puzzles.convert_sudoku_extreme(root / "train.csv", root / "test.csv", tmp_path / "y", subsample=4,
                                           n_aug=3, seed=0, min_rating=2)
    assert digest(again) == digest(out)
    other = puzzles.convert_sudoku_extreme(root / "train.csv", root / "test.csv", tmp_path / "z", subsample=4,
                                           n_aug=3, seed=1, min_rating=2, test_limit=1)
    assert puzzles.load_puzzles(other)["test"].inputs.shape == (1, 81)
    assert digest(other)["train/inputs.npy"] != digest(out)["train/inputs.npy"]


@pytest.mark.parametrize("row,match", [
    (("s", "." * 80, "1" * 81, 0), "line 2: question and answer must have 81"),
    (("s", "x" + "." * 80, "1" * 81, 0), "characters other than"),
    (("s", "." * 81, "1" * 81, 0), "line 2: the answer is not a valid solution"),
    (("s", "." * 81, "1" * 81, "hard"), "rating 'hard' is not a number"),
])
def test_bad_sudoku_rows_name_their_line(tmp_path, row, match):
    write_csv(tmp_path / "train.csv", [row])
    write_csv(tmp_path / "test.csv", [])
    with pytest.raises(ConfigError, match=match):
        puzzles.convert_sudoku_extreme(tmp_path / "train.csv", tmp_path / "test.csv", tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_a_clue_the_answer_breaks_is_caught(tmp_path):
    p, s, _ = sudoku.generate(1, rng=0)[0]
    clue = next(i for i, ch in enumerate(p) if ch != ".")
    wrong = p[:clue] + str(int(p[clue]) % 9 + 1) + p[clue + 1:]
    write_csv(tmp_path / "train.csv", [("s", wrong, s, 1)])
    write_csv(tmp_path / "test.csv", [])
    with pytest.raises(ConfigError, match="not a valid solution"):
        puzzles.convert_sudoku_extreme(tmp_path / "train.csv", tmp_path / "test.csv", tmp_path / "x")


def test_wrong_header(tmp_path):
    (tmp_path / "train.csv").write_text("question,answer\n")
    with pytest.raises(ConfigError, match="expected source,question,answer,rating"):
        list(puzzles.read_csv(tmp_path / "train.csv"))


def test_maze_hard_conversion(tmp_path):
    """Maze-Hard's layout as we assume it: source,question,answer,rating with 900-character grids
    in `# SGo`, the answer being the question with the path drawn (rating: path length)."""
    mazes = maze.generate(5, size=30, rng=2)
    write_csv(tmp_path / "train.csv", [("lehnert", m.question, m.answer, m.path_length) for m in mazes[:3]])
    write_csv(tmp_path / "test.csv", [("lehnert", m.question, m.answer, m.path_length) for m in mazes[3:]])
    out = puzzles.convert_maze_hard(tmp_path / "train.csv", tmp_path / "test.csv", tmp_path / "x")
    data = puzzles.load_puzzles(out)
    assert (data["meta"]["seq_len"], data["meta"]["vocab_size"]) == (900, 6)
    assert data["train"].inputs.shape == (24, 900) and data["test"].inputs.shape == (2, 900)
    assert maze.from_tokens(data["test"].labels) == [m.answer for m in mazes[3:]]
    assert data["train"].rating.tolist() == [m.path_length for m in mazes[:3]]
    bad = mazes[0].answer.replace("S", " ")
    write_csv(tmp_path / "train.csv", [("x", mazes[0].question, bad, 1)])
    with pytest.raises(ConfigError, match="line 2: the answer changes cells"):
        puzzles.convert_maze_hard(tmp_path / "train.csv", tmp_path / "test.csv", tmp_path / "y")


def test_download_without_the_hub_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(ConfigError, match=r"needs the optional huggingface_hub package: pip install"):
        puzzles.download(puzzles.SUDOKU_EXTREME, ["train.csv"])


def test_download_without_network_fails_fast(monkeypatch):
    hub = pytest.importorskip("huggingface_hub", reason="the optional data extra is not installed")

    def not_cached(*args, **kwargs):
        raise FileNotFoundError("not in the cache")

    def no_network(*args, **kwargs):
        raise OSError("Name or service not known")
    monkeypatch.setattr(hub, "hf_hub_download", not_cached)
    monkeypatch.setattr(socket, "create_connection", no_network)
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(hub.constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(ConfigError, match="cannot reach the Hugging Face hub .* pass --csv-dir"):
        puzzles.download(puzzles.MAZE_HARD, ["train.csv"])


def test_csv_dir_must_hold_both_files(tmp_path):
    (tmp_path / "train.csv").write_text("x")
    with pytest.raises(ConfigError, match="lacks .*test.csv"):
        puzzles.download(puzzles.MAZE_HARD, ["train.csv", "test.csv"], tmp_path)
    assert puzzles.download(puzzles.MAZE_HARD, ["train.csv"], tmp_path) == [tmp_path / "train.csv"]
