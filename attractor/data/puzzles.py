"""Puzzle datasets for training: built offline from our generators, or converted from the
official Sudoku-Extreme and Maze-Hard files; stored as numpy arrays with a JSON description.

    from attractor.data.puzzles import build_sudoku, build_maze, load_puzzles
    build_sudoku("data/sudoku-1k", n_train=1000, n_test=1000, n_aug=1000, rating=(1, None), seed=0)
    data = load_puzzles("data/sudoku-1k")
    train = data["train"]                  # .inputs, .labels (N, 81) uint8; .group, .aug (N,); .rating (G,)

A dataset is a folder (format in docs/data.md, "Puzzles"):

    DIR/dataset.json          kind, seq_len, vocab_size, token ids, recipe (counts, seed, source), splits
    DIR/train/inputs.npy      (N, L) uint8 token ids of the puzzles
    DIR/train/labels.npy      (N, L) uint8 token ids of the solutions
    DIR/train/group.npy       (N,) int32: which original puzzle a row comes from (0..G-1)
    DIR/train/aug.npy         (N,) int32: which augmentation (0 = the original, unchanged)
    DIR/train/rating.npy      (G,) int32: Sudoku rating or maze path length of each original
    DIR/test/...              the same; the test split is never augmented

Tokens as the published builders make them (../shared/SPEC.md 2.2): Sudoku 0 pad, 1 blank,
2..n+1 the digits 1..n (vocab 11 at 9x9, length 81); mazes 0 pad, then `# SGo` as 1..5
(vocab 6, length size*size). The folder is written under a temporary name beside DIR and renamed
into place when complete, so a killed build leaves nothing that looks like a dataset.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from attractor.data import augment, maze, sudoku
from attractor.data.folder import load_arrays, read_meta, write_folder
from attractor.errors import ConfigError, check_int

FORMAT = "attractor-puzzles"
VERSION = 1
CSV_HEADER = ["source", "question", "answer", "rating"]
SUDOKU_EXTREME = "sapientinc/sudoku-extreme"
MAZE_HARD = "sapientinc/maze-30x30-hard-1k"


@dataclass(frozen=True)
class Split:
    inputs: np.ndarray   # (N, L) uint8
    labels: np.ndarray   # (N, L) uint8
    group: np.ndarray    # (N,) int32
    aug: np.ndarray      # (N,) int32
    rating: np.ndarray   # (G,) int32

    def __len__(self) -> int:
        return len(self.inputs)


# ---------------------------------------------------------------- writing and reading a dataset

def _augmented_split(inputs: np.ndarray, labels: np.ndarray, rating: np.ndarray, n_aug: int, transform) -> dict:
    """Rows for every original and its n_aug transforms: original g is rows g*(1+n_aug) onwards."""
    inputs_all, labels_all = [inputs[:, None]], [labels[:, None]]
    if n_aug:
        inp, lab = transform(inputs, labels)   # (G, n_aug, L) each
        inputs_all.append(inp)
        labels_all.append(lab)
    inputs_all = np.concatenate(inputs_all, axis=1)
    labels_all = np.concatenate(labels_all, axis=1)
    g, k = inputs_all.shape[:2]
    length = inputs_all.shape[-1]
    return {"inputs": inputs_all.reshape(g * k, length).astype(np.uint8),
            "labels": labels_all.reshape(g * k, length).astype(np.uint8),
            "group": np.repeat(np.arange(g, dtype=np.int32), k),
            "aug": np.tile(np.arange(k, dtype=np.int32), g),
            "rating": np.asarray(rating, np.int32)}


def write_dataset(out: str | Path, meta: dict, splits: dict[str, dict]) -> Path:
    """Write the splits' arrays and dataset.json as a dataset folder (attractor.data.folder):
    whole or not at all; `out` must not exist yet, its parent must (a ConfigError otherwise).
    Out of space, raises DiskFullError naming the size the dataset needs, and leaves nothing."""
    meta = {"format": FORMAT, "version": VERSION, **meta,
            "splits": {name: {"examples": int(len(arrays["inputs"])), "groups": int(len(arrays["rating"]))}
                       for name, arrays in splits.items()}}
    return write_folder(out, meta, splits)


def load_puzzles(path: str | Path) -> dict:
    """{"meta": dataset.json, "train": Split, "test": Split}, arrays memory-mapped; ConfigError
    (one line) for a folder that is missing, not a puzzle dataset, or of another version."""
    path = Path(path)
    meta = read_meta(path, FORMAT, VERSION, "a puzzle dataset", "attractor data sudoku|maze --out DIR")
    keys = ("inputs", "labels", "group", "aug", "rating")
    return {"meta": meta, **{name: Split(*load_arrays(path / name, keys, "puzzle dataset")) for name in meta["splits"]}}


def _counts(n_train, n_test, n_aug) -> None:
    check_int(n_train, "train", 1), check_int(n_test, "test", 0), check_int(n_aug, "aug", 0)


# ---------------------------------------------------------------- Sudoku

def sudoku_tokens(grids: list[str] | np.ndarray, box: tuple[int, int] = (3, 3)) -> np.ndarray:
    """Token ids (N, n*n) uint8 from puzzle strings ('.' or '0' blank) or digit arrays: digit + 1."""
    if isinstance(grids, np.ndarray):
        return (grids + 1).astype(np.uint8)
    raw = np.frombuffer("".join(grids).replace(".", "0").encode("ascii"), np.uint8).reshape(len(grids), -1)
    n = sudoku.geometry(box).n
    digits = raw.astype(np.int64) - ord("0")
    if ((digits < 0) | (digits > n)).any():
        raise ConfigError(f"Sudoku grids hold characters other than '.', '0' and 1-{n}")
    return (digits + 1).astype(np.uint8)


def _sudoku_meta(box, recipe: dict) -> dict:
    n = sudoku.geometry(box).n
    return {"kind": "sudoku", "box": list(box), "seq_len": n * n, "vocab_size": n + 2,
            "tokens": {"pad": 0, "blank": 1, "digits": f"2..{n + 1} are the digits 1..{n}"},
            "recipe": recipe}


def _sudoku_split(puzzles: np.ndarray, solutions: np.ndarray, rating, n_aug: int, rng, box) -> dict:
    """puzzles, solutions (G, n*n) digit arrays 0..n; n_aug transforms of each (train only)."""
    def transform(inp, lab):
        g = len(inp)
        t = augment.sudoku_transforms(g * n_aug, rng, box)
        reps = lambda a: np.repeat(a, n_aug, axis=0)   # noqa: E731 (G*n_aug, L)
        return (augment.apply_sudoku(reps(inp), t).reshape(g, n_aug, -1),
                augment.apply_sudoku(reps(lab), t).reshape(g, n_aug, -1))
    split = _augmented_split(puzzles, solutions, rating, n_aug, transform)
    split["inputs"], split["labels"] = split["inputs"] + 1, split["labels"] + 1   # tokens: digit + 1
    return split


def _digits(grids: list[str]) -> np.ndarray:
    return sudoku_tokens(grids).astype(np.int64) - 1 if grids else np.zeros((0, 81), np.int64)


def build_sudoku(out, n_train: int = 1000, n_test: int = 1000, n_aug: int = 1000, rating=None, seed: int = 0,
                 box: tuple[int, int] = (3, 3)) -> Path:
    """Generate n_train + n_test distinct unique-solution puzzles with rating in `rating`
    ("LO:HI" or (lo, hi)), augment each training puzzle n_aug times, and write the dataset."""
    lo, hi = sudoku.parse_range(rating) if isinstance(rating, str) or rating is None else rating
    _counts(n_train, n_test, n_aug)
    g = sudoku.geometry(box)
    train_rng, test_rng, aug_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3))
    seen: set[str] = set()

    def draw(count, rng):
        rows = []
        while len(rows) < count:
            for puzzle, solution, r in sudoku.generate(count - len(rows), (lo, hi), rng, box):
                if puzzle not in seen:
                    seen.add(puzzle)
                    rows.append((puzzle, solution, r))
        return rows

    splits = {}
    for name, count, rng, aug in (("train", n_train, train_rng, n_aug), ("test", n_test, test_rng, 0)):
        rows = draw(count, rng)
        digits = lambda k: np.array([sudoku.parse(r[k], box) for r in rows], np.int64).reshape(len(rows), g.n ** 2)  # noqa: E731
        splits[name] = _sudoku_split(digits(0), digits(1), [r[2] for r in rows], aug, aug_rng, box)
    recipe = {"source": "attractor.data.sudoku.generate", "n_train": n_train, "n_test": n_test, "n_aug": n_aug,
              "rating": [lo, hi], "rating_means": "search nodes of attractor.data.sudoku (1 = singles alone)",
              "seed": seed}
    return write_dataset(out, _sudoku_meta(box, recipe), splits)


# ---------------------------------------------------------------- mazes

def _maze_meta(size: int, recipe: dict) -> dict:
    return {"kind": "maze", "size": size, "seq_len": size * size, "vocab_size": maze.VOCAB_SIZE,
            "tokens": {"pad": 0, **maze.TOKEN}, "recipe": recipe}


def _maze_split(questions: list[str], answers: list[str], rating, size: int, aug: bool) -> dict:
    inputs = maze.to_tokens(questions).reshape(len(questions), size, size)
    labels = maze.to_tokens(answers).reshape(len(answers), size, size)

    def symmetries(grids):   # (G, size, size) -> (G, 7, size*size): every symmetry but the identity
        return np.stack([augment.dihedral(grids, k).reshape(len(grids), -1) for k in range(1, 8)], axis=1)
    return _augmented_split(inputs.reshape(len(inputs), -1), labels.reshape(len(labels), -1), rating,
                            7 if aug else 0, lambda _i, _l: (symmetries(inputs), symmetries(labels)))


def build_maze(out, n_train: int = 1000, n_test: int = 1000, size: int = 30, min_path: int | None = None,
               loops: float = 0.0, aug: bool = True, seed: int = 0) -> Path:
    """Generate n_train + n_test mazes (see attractor.data.maze), the training ones with their 8
    dihedral symmetries when `aug`, and write the dataset."""
    _counts(n_train, n_test, 0)
    min_path = maze.default_min_path(size) if min_path is None else check_int(min_path, "min_path", 1)
    train_rng, test_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    splits = {}
    for name, count, rng, a in (("train", n_train, train_rng, aug), ("test", n_test, test_rng, False)):
        rows = maze.generate(count, size, min_path, rng, loops)
        splits[name] = _maze_split([m.question for m in rows], [m.answer for m in rows],
                                   [m.path_length for m in rows], size, a)
    recipe = {"source": "attractor.data.maze.generate", "n_train": n_train, "n_test": n_test, "size": size,
              "min_path": min_path, "loops": loops, "aug": "dihedral x8" if aug else None, "seed": seed}
    return write_dataset(out, _maze_meta(size, recipe), splits)


# ---------------------------------------------------------------- the official sets

def read_csv(path: str | Path, keep=None):
    """Rows (line number, source, question, answer, rating) of a file in the official layout
    `source,question,answer,rating` (header first), those for which keep(row_index, rating) holds."""
    path = Path(path)
    try:
        fh = open(path, newline="", encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e}") from None
    with fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header != CSV_HEADER:
            raise ConfigError(f"{path}: header {header!r}, expected {','.join(CSV_HEADER)}")
        for i, row in enumerate(reader):
            if len(row) != 4:
                raise ConfigError(f"{path} line {i + 2}: {len(row)} fields, expected 4")
            try:
                rating = int(float(row[3]))
            except ValueError:
                raise ConfigError(f"{path} line {i + 2}: rating {row[3]!r} is not a number") from None
            if keep is None or keep(i, rating):
                yield i + 2, row[0], row[1], row[2], rating


def _checked_sudoku(path, rows) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Digit arrays of the questions and answers, checked: 81 characters each, every answer a
    complete valid grid that keeps the question's clues."""
    if not rows:
        return np.zeros((0, 81), np.int64), np.zeros((0, 81), np.int64), []
    for line, _, q, a, _ in rows:
        if len(q) != 81 or len(a) != 81:
            raise ConfigError(f"{path} line {line}: question and answer must have 81 characters ({len(q)}, {len(a)})")
    try:
        q = _digits([r[2] for r in rows])
        a = _digits([r[3] for r in rows])
    except (ConfigError, UnicodeEncodeError):
        raise ConfigError(f"{path}: a question or answer holds characters other than '.', '0' and 1-9") from None
    g = sudoku.geometry()
    units = np.array(g.units)                                  # (27, 9)
    filled = (a > 0).all(1)
    valid = (np.sort(a[:, units], axis=2) == np.arange(1, 10)).all((1, 2))
    kept = ((q == 0) | (q == a)).all(1)
    bad = np.flatnonzero(~(filled & valid & kept))
    if len(bad):
        raise ConfigError(f"{path} line {rows[bad[0]][0]}: the answer is not a valid solution of the question")
    return q, a, [r[4] for r in rows]


def convert_sudoku_extreme(train_csv, test_csv, out, subsample: int | None = 1000, n_aug: int = 1000,
                           seed: int = 0, min_rating: int | None = None, test_limit: int | None = None) -> Path:
    """The published recipe from the official CSV files: `subsample` random training puzzles
    (seeded; all if None), each with n_aug augmentations; the whole test set (or its first
    `test_limit` puzzles), unaugmented; both filtered to rating >= min_rating when given."""
    check_int(n_aug, "aug", 0)
    subsample = None if subsample is None else check_int(subsample, "subsample", 1)
    test_limit = None if test_limit is None else check_int(test_limit, "test_limit", 0)
    rng = np.random.default_rng(seed)
    ok = (lambda i, r: True) if min_rating is None else (lambda i, r: r >= min_rating)
    total = sum(1 for _ in read_csv(train_csv, ok))   # two passes: only the chosen rows are held in memory
    take = total if subsample is None or subsample >= total else subsample
    chosen_order = rng.choice(total, size=take, replace=False) if take < total else np.arange(total)
    position = {int(j): k for k, j in enumerate(chosen_order)}   # k-th kept row -> place in the subset
    rows: list = [None] * take
    for k, row in enumerate(read_csv(train_csv, ok)):
        if k in position:
            rows[position[k]] = row
    q_train, a_train, r_train = _checked_sudoku(train_csv, rows)
    test_rows = []
    for row in read_csv(test_csv, ok):
        if test_limit is not None and len(test_rows) >= test_limit:
            break
        test_rows.append(row)
    q_test, a_test, r_test = _checked_sudoku(test_csv, test_rows)
    aug_rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(1)[0])
    splits = {"train": _sudoku_split(q_train, a_train, r_train, n_aug, aug_rng, (3, 3)),
              "test": _sudoku_split(q_test, a_test, r_test, 0, aug_rng, (3, 3))}
    recipe = {"source": f"hf:{SUDOKU_EXTREME}", "files": [str(train_csv), str(test_csv)], "train_rows": total,
              "subsample": subsample, "n_aug": n_aug, "min_rating": min_rating, "test_limit": test_limit,
              "rating_means": "tdoku backtracks (the official rating column)", "seed": seed}
    return write_dataset(out, _sudoku_meta((3, 3), recipe), splits)


def _checked_mazes(path, rows) -> tuple[list[str], list[str], list[int], int]:
    if not rows:
        raise ConfigError(f"{path} holds no mazes")
    size = round(len(rows[0][2]) ** 0.5)
    for line, _, q, a, _ in rows:
        if not (len(q) == len(a) == size * size):
            raise ConfigError(f"{path} line {line}: question and answer must both be {size}x{size} "
                              f"({len(q)} and {len(a)} characters)")
        if set(q) - set(maze.CHARSET) or set(a) - set(maze.CHARSET):
            raise ConfigError(f"{path} line {line}: characters outside the charset {maze.CHARSET!r}")
        if any(x != y and y != maze.PATH for x, y in zip(q, a)):
            raise ConfigError(f"{path} line {line}: the answer changes cells other than drawing the path 'o'")
    return [r[2] for r in rows], [r[3] for r in rows], [r[4] for r in rows], size


def convert_maze_hard(train_csv, test_csv, out, aug: bool = True, seed: int = 0) -> Path:
    """The published recipe from the official CSV files: every training maze with its 8 dihedral
    symmetries (when `aug`), every test maze unaugmented. (Nothing is random; `seed` is recorded.)"""
    splits, size = {}, None
    for name, path, a in (("train", train_csv, aug), ("test", test_csv, False)):
        questions, answers, rating, size = _checked_mazes(path, list(read_csv(path)))
        splits[name] = _maze_split(questions, answers, rating, size, a)
    recipe = {"source": f"hf:{MAZE_HARD}", "files": [str(train_csv), str(test_csv)],
              "aug": "dihedral x8" if aug else None, "seed": seed}
    return write_dataset(out, _maze_meta(size, recipe), splits)


def download(repo: str, filenames: list[str], csv_dir: str | Path | None = None) -> list[Path]:
    """Local paths of the official files: from `csv_dir` when given, else from the Hugging Face
    hub (needs the optional huggingface_hub package). Any failure is one ConfigError line."""
    if csv_dir is not None:
        paths = [Path(csv_dir) / f for f in filenames]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise ConfigError(f"--csv-dir lacks {', '.join(missing)} (the official files of {repo})")
        return paths
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise ConfigError(f"downloading {repo} needs the optional huggingface_hub package: "
                          "pip install 'attractor-models[data]' (or pass --csv-dir with the CSV files)") from None
    import logging

    hub_log = logging.getLogger("huggingface_hub")
    level = hub_log.level
    hub_log.setLevel(logging.ERROR)  # its retry chatter would bury the one line a user needs
    paths = []
    try:
        for name in filenames:
            try:  # a cached copy needs no network
                paths.append(Path(hf_hub_download(repo, name, repo_type="dataset", local_files_only=True)))
                continue
            except Exception:  # noqa: BLE001 (not cached, or the cache is unreadable: try the hub)
                pass
            _check_reachable(repo)
            try:
                paths.append(Path(hf_hub_download(repo, name, repo_type="dataset", etag_timeout=10)))
            except Exception as e:  # network, missing repo, disk: all say the same to a user
                raise ConfigError(f"cannot download {name} of {repo} from the Hugging Face hub ({_first_line(e)}); "
                                  "offline, pass --csv-dir with the CSV files") from None
    finally:
        hub_log.setLevel(level)
    return paths


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:160] if text else ''}"


def _check_reachable(repo: str) -> None:
    """Fail at once, not after the hub client's minute of retries, when its host cannot be
    reached directly (skipped behind a proxy, which only the client knows how to use)."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        raise ConfigError(f"cannot download {repo}: HF_HUB_OFFLINE is set and the files are not cached; "
                          "pass --csv-dir with the CSV files")
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=10).close()
    except OSError as e:
        raise ConfigError(f"cannot reach the Hugging Face hub at {constants.ENDPOINT} to download {repo} "
                          f"({_first_line(e)}); offline, pass --csv-dir with the CSV files") from None
