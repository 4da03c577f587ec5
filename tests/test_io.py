"""Atomic writes and checkpoints: round trips, and every way a file can be damaged."""

from __future__ import annotations

import os

import pytest
import torch

from attractor import io


def write(run_dir, step, value=1.0):
    return io.save_checkpoint(run_dir, step, model_state={"w": torch.full((3, 2), value), "b": torch.arange(4)},
                              config={"step": step}, tokenizer_json='{"kind": "bytes"}',
                              state={"step": step, "rng": torch.get_rng_state()})


def test_round_trip(tmp_path):
    path = write(tmp_path, 7, 2.5)
    assert path.name == "ckpt-00000007" and (tmp_path / "latest").read_text().strip() == path.name
    ckpt = io.load_checkpoint(tmp_path)
    assert ckpt.step == 7 and ckpt.config == {"step": 7} and ckpt.tokenizer_json == '{"kind": "bytes"}'
    assert torch.equal(ckpt.model_state["w"], torch.full((3, 2), 2.5)) and torch.equal(ckpt.model_state["b"], torch.arange(4))
    assert torch.equal(ckpt.state["rng"], torch.get_rng_state())
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


def test_only_the_newest_checkpoints_are_kept(tmp_path):
    for step in (1, 2, 3, 4):
        write(tmp_path, step)
    assert [p.name for p in io.checkpoints(tmp_path)] == ["ckpt-00000003", "ckpt-00000004"]


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
@pytest.mark.parametrize("name", ["model.safetensors", "state.pt", "config.json"])
def test_a_damaged_file_is_one_clear_error(tmp_path, damage, name):
    path = write(tmp_path, 5)
    target = path / name
    if damage == "truncate":
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    elif damage == "flip":
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0xFF
        target.write_bytes(bytes(data))
    else:
        target.unlink()
    with pytest.raises(io.CheckpointError) as err:
        io.load_checkpoint(path)
    message = str(err.value)
    assert "\n" not in message and name in message


def test_a_run_killed_while_writing_loads_the_previous_checkpoint(tmp_path):
    write(tmp_path, 10, 1.0)
    newer = write(tmp_path, 20, 2.0)
    (newer / "manifest.json").unlink()  # a directory without its manifest: a torn copy, say
    stale = tmp_path / ".ckpt-00000030.abc.tmp"  # killed before the rename
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    ckpt = io.load_checkpoint(tmp_path)
    assert ckpt.step == 10 and torch.equal(ckpt.model_state["w"], torch.full((3, 2), 1.0))
    with pytest.raises(io.CheckpointError, match="incomplete"):
        io.load_checkpoint(newer)


def test_missing_and_empty_directories(tmp_path):
    with pytest.raises(io.CheckpointError, match="no such"):
        io.load_checkpoint(tmp_path / "nope")
    with pytest.raises(io.CheckpointError, match="no checkpoint"):
        io.load_checkpoint(tmp_path)


def test_a_failed_write_leaves_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    io.atomic_write_text(target, "old")

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        io.atomic_write_text(target, "new")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_a_checkpoint_of_another_format_is_refused(tmp_path):
    path = write(tmp_path, 3)
    manifest = (path / "manifest.json").read_text().replace('"format_version": 1', '"format_version": 99')
    (path / "manifest.json").write_text(manifest)
    with pytest.raises(io.CheckpointError, match="format 99"):
        io.load_checkpoint(path)
