"""Paths that cannot be written are refused before any work; a full disk is one line (exit 1)
that leaves the previous files, checkpoints and `latest` as they were; checkpoints get the
umask's modes.

The full and read-only disks are small tmpfs mounts made by the tests, which needs root with
CAP_SYS_ADMIN; elsewhere those tests skip and say so. As root, chmod does not stop a write, so
the unwritable directories are read-only mounts and /proc.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import stat
import subprocess
import uuid
from pathlib import Path

import pytest
import torch
from conftest import sets, tiny_settings

from attractor import io
from attractor.cli import main
from attractor.errors import ConfigError, DiskFullError

HARD = "4...3.......6..8..........1....5..9..8....6...7.2........1.27..5.3....4.9........"


def one_line_error(capsys, code: int, argv: list[str], *matches: str) -> str:
    """The command's error: one line, after nothing but the data stage's progress lines."""
    assert main(argv) == code
    lines = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("data: ")]
    err = "\n".join(lines)
    assert len(lines) == 1 and err.startswith("attractor: error:"), err
    assert all(m in err for m in matches), (matches, err)
    return err


@pytest.fixture
def mount_tmpfs(tmp_path):
    """mount_tmpfs(name, options) -> a fresh tmpfs at tmp_path/name, unmounted after the test;
    skips where this process may not mount."""
    mounted = []

    def mount(name: str, options: str) -> Path:
        point = tmp_path / name
        point.mkdir()
        try:
            result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)],
                                    capture_output=True, text=True)
        except FileNotFoundError:
            pytest.skip("no mount command: the small-filesystem tests need it (and root with CAP_SYS_ADMIN)")
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs ({result.stderr.strip() or result.returncode}): "
                        "the small-filesystem tests need root with CAP_SYS_ADMIN")
        mounted.append(point)
        return point

    yield mount
    for point in reversed(mounted):
        if subprocess.run(["umount", str(point)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(point)], capture_output=True)


def fill(directory: Path, leave: int = 0) -> Path:
    """Fill the filesystem of `directory` with one file until at most `leave` bytes are free."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for chunk in (1 << 16, 1 << 12, 1 << 9, 1):
            while shutil.disk_usage(directory).free - chunk >= leave:
                try:
                    os.write(fd, b"\0" * chunk)
                except OSError as err:
                    assert err.errno == errno.ENOSPC
                    break
    finally:
        os.close(fd)
    return filler


# ---------------------------------------------------------------- paths that cannot be written

# each command that writes, the flag that names what it writes, whether that is a directory
COMMANDS = {
    "train": ("--out", True, lambda p: ["train", "attractor-1m", "--out", p, "--data", "/no/such/corpus.txt"]),
    "demo": ("--out", True, lambda p: ["demo", "--out", p, "--steps", "1", "--quiet"]),
    "data": ("--out", True, lambda p: ["data", "sudoku", "--out", p, "--train", "1", "--test", "1", "--aug", "0"]),
    "sudoku": ("--out", False, lambda p: ["sudoku", "generate", "--count", "1", "--out", p]),
    "maze": ("--out", False, lambda p: ["maze", "generate", "--count", "1", "--size", "5", "--out", p]),
    "eval": ("--plot", False, lambda p: ["eval", "/no/such/run", "--plot", p]),
    "solve": ("--html", False, lambda p: ["solve", "sudoku", HARD, "--checkpoint", "/no/such/run", "--html", p]),
}


@pytest.mark.parametrize("case", ["taken", "missing parent", "missing in /proc", "/proc/sys"])
@pytest.mark.parametrize("command", list(COMMANDS))
def test_an_unwritable_path_is_refused_before_any_work(capsys, tmp_path, monkeypatch, command, case):
    """Each one line and exit 2, naming the flag and the path, with nothing created: the old
    code generated or evaluated first, or (solve --html, maze/sudoku --out) made the parents."""
    flag, is_dir, argv = COMMANDS[command]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "file").write_text("mine\n")
    (tmp_path / "dir").mkdir()
    path, why = {
        "taken": ("file", "exists and is not a directory") if is_dir else ("dir", "is a directory"),
        "missing parent": ("missing/x", "the directory missing does not exist"),
        "missing in /proc": (f"/proc/attractor-test-{uuid.uuid4().hex[:8]}/x", "does not exist"),
        "/proc/sys": ("/proc/sys/x", "cannot create files in /proc/sys"),
    }[case]
    one_line_error(capsys, 2, argv(path), f"error: {flag} {path}: ", why)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir", "file"]  # nothing made, no probe left
    assert (tmp_path / "file").read_text() == "mine\n"


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_read_only_directory_is_refused_before_any_work(capsys, tmp_path, monkeypatch, mount_tmpfs, command):
    flag, is_dir, argv = COMMANDS[command]
    monkeypatch.chdir(tmp_path)
    read_only = mount_tmpfs("ro", "ro,size=64k")
    path = str(read_only / ("x" if is_dir else "x.out"))
    one_line_error(capsys, 2, argv(path), f"{flag} {path}: cannot create files in {read_only} (Read-only file system)")
    assert [p.name for p in tmp_path.iterdir()] == ["ro"]


def test_solve_html_makes_no_directory_even_at_the_root(capsys, tmp_path):
    at_root = Path(f"/attractor-test-{uuid.uuid4().hex[:8]}")
    for page, made in ((at_root / "page.html", at_root), (tmp_path / "a/b/page.html", tmp_path / "a")):
        one_line_error(capsys, 2, ["solve", "sudoku", HARD, "--checkpoint", "/no/such/run", "--html", str(page)],
                       f"--html {page}: the directory {page.parent} does not exist")
        assert not made.exists()


def test_the_checks_create_nothing(tmp_path):
    """A command refused later for another reason must not leave its --out behind."""
    assert io.check_writable_dir(tmp_path / "new", "--out") == tmp_path / "new"
    assert io.check_writable_dir(tmp_path) == tmp_path
    assert io.check_writable_file(tmp_path / "page.html", "--html") == tmp_path / "page.html"
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ConfigError, match=r"^--out /dev/null: exists and is not a directory$"):
        io.check_writable_dir("/dev/null", "--out")
    with pytest.raises(ConfigError, match="exists and is not a regular file"):  # the rename would replace it
        io.check_writable_file("/dev/null", "--out")


def test_library_writers_make_no_parents(tmp_path, corpus):
    """run.train, the dataset builder and the atomic writes create at most the directory named."""
    from attractor.config import run_config
    from attractor.data.puzzles import build_sudoku
    from attractor.run import train

    run = run_config("attractor-1m", tiny_settings("attractor-1m", tmp_path / "cache"), data=str(corpus), steps=1)
    with pytest.raises(ConfigError, match="does not exist"):
        train(run, tmp_path / "a" / "run", progress=False)
    with pytest.raises(ConfigError, match="does not exist"):
        build_sudoku(tmp_path / "a" / "data", n_train=1, n_test=1, n_aug=0, box=(2, 2))
    with pytest.raises(FileNotFoundError):
        io.atomic_write_text(tmp_path / "a" / "page.html", "text")
    assert not (tmp_path / "a").exists()


# ---------------------------------------------------------------- a full disk

def test_a_training_run_that_fills_the_disk_keeps_its_newest_checkpoint(capsys, tmp_path, monkeypatch, corpus,
                                                                         mount_tmpfs):
    """The disk has room for the checkpoint at step 3, then half a checkpoint: the one at step 6
    ends the run with one line (exit 1), and eval and --resume find step 3."""
    disk = mount_tmpfs("disk", "size=16m")
    run_dir = disk / "run"
    save = io.save_checkpoint

    def save_then_fill(run_dir, step, **kwargs):
        path = save(run_dir, step, **kwargs)
        if step == 3:
            fill(disk, leave=sum(f.stat().st_size for f in path.iterdir()) // 2)
        return path

    monkeypatch.setattr(io, "save_checkpoint", save_then_fill)
    argv = ["train", "--preset", "attractor-1m", "--out", str(run_dir), "--data", str(corpus), "--steps", "6",
            "--quiet", *sets(tiny_settings("attractor-1m", tmp_path / "cache"))]
    err = one_line_error(capsys, 1, argv, f"{run_dir}: no space left on the device for checkpoint ckpt-00000006 "
                         "(needs about ")
    needs, free = (float(x) for x in re.search(r"needs about ([\d.]+) kB, ([\d.]+) kB free\)$", err).groups())
    assert needs > free
    assert io.find_checkpoint(run_dir)[0].name == "ckpt-00000003"
    assert (run_dir / "latest").read_text() == "ckpt-00000003\n"
    assert not list(run_dir.glob(".ckpt-*"))  # the partial copy is gone
    assert all(json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines())
    assert main(["eval", str(run_dir), "--iters", "0", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["step"] == 3


@pytest.mark.parametrize("large", ["model_state", "state"])
def test_save_checkpoint_on_a_nearly_full_disk(tmp_path, mount_tmpfs, large):
    """safetensors and torch.save each fail in their own words on a full disk: one DiskFullError."""
    disk = mount_tmpfs("disk", "size=2m")
    run_dir = disk / "run"

    def save(step: int, numbers: int):
        tensors = {"w": torch.full((numbers,), float(step))}
        return io.save_checkpoint(run_dir, step, config={"step": step}, tokenizer_json="{}",
                                  model_state=tensors if large == "model_state" else {"b": torch.zeros(2)},
                                  state=tensors if large == "state" else {"step": step})

    save(1, 1000)
    filler = fill(disk, leave=500_000)
    with pytest.raises(DiskFullError) as caught:
        save(2, 200_000)  # 800 kB
    message = str(caught.value)
    assert caught.value.errno == errno.ENOSPC and "\n" not in message
    assert re.fullmatch(rf"{run_dir}: no space left on the device for checkpoint ckpt-00000002 "
                        r"\(needs about 80\d\.\d kB, 4\d\d\.\d kB free\)", message), message
    assert (run_dir / "latest").read_text() == "ckpt-00000001\n" and not list(run_dir.glob(".ckpt-*"))
    assert io.load_checkpoint(run_dir).step == 1
    filler.unlink()  # room again: the next checkpoint is written as usual
    assert save(2, 200_000).name == "ckpt-00000002" and io.load_checkpoint(run_dir).step == 2


def test_atomic_writes_and_appends_on_a_full_disk_keep_the_old_file(tmp_path, mount_tmpfs):
    from attractor.data import sudoku
    from attractor.page import write_page
    from attractor.puzzle_solve import Solution, check, read_sudoku
    from attractor.train import write_jsonl

    disk = mount_tmpfs("disk", "size=256k")
    page, metrics = disk / "page.html", disk / "metrics.jsonl"
    io.atomic_write_text(page, "old page")
    write_jsonl(metrics, {"step": 1})
    fill(disk)
    puzzle, answer = read_sudoku(HARD), sudoku.solve(HARD).solution
    solution = Solution(puzzle, answer, [1.0] * 81, check(puzzle, answer), None, 1, [])
    with pytest.raises(DiskFullError, match=rf"^{disk}: no space left on the device for page.html \(needs [\d.]+ kB, "):
        write_page(page, solution, title="a page")
    with pytest.raises(DiskFullError, match=rf"^{disk}: no space left on the device for page.html \(needs 100.0 kB, "):
        io.atomic_write_text(page, "x" * 100_000)
    with pytest.raises(DiskFullError, match=rf"^{disk}: no space left on the device for metrics.jsonl "):
        write_jsonl(metrics, {"step": 2, "text": "x" * 20_000})
    assert page.read_text() == "old page" and metrics.read_text() == '{"step": 1}\n'  # no half line either
    assert sorted(p.name for p in disk.iterdir()) == ["filler", "metrics.jsonl", "page.html"]


def test_a_dataset_that_does_not_fit_is_one_line_and_leaves_nothing(capsys, tmp_path, mount_tmpfs):
    disk = mount_tmpfs("disk", "size=64k")
    one_line_error(capsys, 1, ["data", "sudoku", "--out", str(disk / "sudoku4"), "--train", "2", "--test", "1",
                               "--aug", "1000", "--box", "2x2"],
                   f"{disk}: no space left on the device for the dataset sudoku4 (needs about ")
    assert list(disk.iterdir()) == []


def test_a_token_cache_that_does_not_fit_is_one_line(capsys, tmp_path, corpus, mount_tmpfs):
    disk = mount_tmpfs("disk", "size=32k")
    one_line_error(capsys, 1, ["train", "--preset", "attractor-1m", "--out", str(tmp_path / "run"), "--data",
                               str(corpus), "--steps", "1", "--quiet", *sets(tiny_settings("attractor-1m", disk))],
                   f"{disk}: no space left on the device for the token cache ", "(needs more than ")
    assert not [p for p in disk.iterdir() if ".tmp-" in p.name]


# ---------------------------------------------------------------- modes

@pytest.mark.parametrize("umask, dir_mode, file_mode", [(0o022, 0o755, 0o644), (0o077, 0o700, 0o600)])
def test_checkpoints_get_the_modes_of_the_umask(tmp_path, umask, dir_mode, file_mode):
    old = os.umask(umask)
    try:
        path = io.save_checkpoint(tmp_path / "run", 1, model_state={"w": torch.zeros(3)}, config={},
                                  tokenizer_json="{}", state={"step": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == dir_mode
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in [*path.iterdir(), tmp_path / "run" / "latest"]}
    assert modes == {name: file_mode for name in [*io.FILES, "manifest.json", "latest"]}
