"""Atomic writes and checkpoints: nothing a crash or a bad file can destroy.

Every file is written to a temporary name in its final directory, flushed to disk and renamed
into place (`os.replace` is atomic on POSIX), so a reader sees the old file or the new one,
never half of one. A checkpoint is a directory written the same way:

    RUN/ckpt-00000300/          model.safetensors   weights (the model's state_dict)
                                config.json         the run's config (model, solve, data, train)
                                tokenizer.json      the tokenizer, so the run loads without its data cache
                                state.pt            optimizers, schedule, step, data position, RNGs
                                manifest.json       format version, step, size and sha256 of each file
    RUN/latest                  name of the newest complete checkpoint

The manifest is written last, inside the temporary directory, before the rename: a directory
without a valid manifest is incomplete, and a file whose size or hash disagrees with it is
corrupt. Either is reported in one line (CheckpointError); loading a run falls back to the
newest checkpoint that verifies, so a run killed while writing resumes from the previous one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

FORMAT_VERSION = 1
FILES = ("model.safetensors", "config.json", "tokenizer.json", "state.pt")
_CKPT = re.compile(r"^ckpt-(\d{8})$")


class CheckpointError(ValueError):
    """A checkpoint that is missing, incomplete, corrupt or of another format (one line)."""


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some filesystems cannot open directories; the rename is still atomic
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def current_umask() -> int:
    """The process's file-creation mask (reading it means setting it, so it is set back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same directory and a rename: a
    reader sees the old file or the new one, never half of either."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes it private; give it a normal file's mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class Checkpoint:
    """What `load_checkpoint` returns. state is None when only the weights were asked for."""

    path: Path
    step: int
    config: dict  # the run config as saved (RunConfig.to_dict())
    model_state: dict[str, torch.Tensor]
    tokenizer_json: str
    state: dict | None


def save_checkpoint(run_dir: str | Path, step: int, *, model_state: dict[str, torch.Tensor], config: dict,
                    tokenizer_json: str, state: dict, keep: int = 2) -> Path:
    """Write RUN/ckpt-<step>/ atomically, point RUN/latest at it, keep the newest `keep`.

    model_state: a state_dict (tensors only; moved to the CPU and made contiguous here).
    state: anything torch.save can store and torch.load(weights_only=True) can read back.
    """
    from safetensors.torch import save_file

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    final = run_dir / f"ckpt-{step:08d}"
    tmp = Path(tempfile.mkdtemp(dir=run_dir, prefix=f".{final.name}.", suffix=".tmp"))
    try:
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in model_state.items()}
        save_file(tensors, tmp / "model.safetensors", metadata={"format_version": str(FORMAT_VERSION)})
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        (tmp / "tokenizer.json").write_text(tokenizer_json)
        torch.save(state, tmp / "state.pt")
        manifest = {"format_version": FORMAT_VERSION, "step": step,
                    "files": {name: {"bytes": (tmp / name).stat().st_size, "sha256": _sha256(tmp / name)}
                              for name in FILES}}
        for name in FILES:
            with open(tmp / name, "rb") as fh:
                os.fsync(fh.fileno())
        atomic_write_json(tmp / "manifest.json", manifest)
        if final.exists():  # a checkpoint of the same step from a run that was resumed before it
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(run_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write_text(run_dir / "latest", final.name + "\n")
    for old in checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in run_dir.glob(".ckpt-*.tmp"):  # left by a run killed while writing
        shutil.rmtree(stale, ignore_errors=True)
    return final


def checkpoints(run_dir: str | Path) -> list[Path]:
    """Checkpoint directories of a run, oldest first (complete or not)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    return sorted(p for p in run_dir.iterdir() if p.is_dir() and _CKPT.match(p.name))


def verify(path: str | Path) -> dict:
    """The manifest of a complete, uncorrupted checkpoint directory; else CheckpointError."""
    path = Path(path)
    try:
        manifest = json.loads((path / "manifest.json").read_text())
        files = manifest["files"]
        version = manifest["format_version"]
    except FileNotFoundError:
        raise CheckpointError(f"{path}: incomplete checkpoint (no manifest.json)") from None
    except (ValueError, KeyError, TypeError):
        raise CheckpointError(f"{path}: corrupt checkpoint manifest") from None
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {version}, this version of attractor reads {FORMAT_VERSION}")
    for name in FILES:
        file = path / name
        if name not in files or not file.is_file():
            raise CheckpointError(f"{path}: incomplete checkpoint ({name} missing)")
        if file.stat().st_size != files[name]["bytes"] or _sha256(file) != files[name]["sha256"]:
            raise CheckpointError(f"{path}: {name} is truncated or corrupt (size or sha256 differs from the manifest)")
    return manifest


def find_checkpoint(path: str | Path) -> tuple[Path, dict]:
    """(directory, manifest) of a checkpoint, or of a run directory's newest that verifies.

    A run directory's `latest` is tried first; if it is missing or its checkpoint is damaged,
    the newest checkpoint that verifies is used (a run killed while writing one leaves the
    previous one). Raises CheckpointError if there is none.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint or run directory")
    if (path / "manifest.json").exists() or _CKPT.match(path.name):
        return path, verify(path)
    candidates = checkpoints(path)
    latest = path / "latest"
    if latest.is_file():
        named = path / latest.read_text().strip()
        candidates = [c for c in candidates if c != named] + [named]
    errors = []
    for candidate in reversed(candidates):
        try:
            return candidate, verify(candidate)
        except CheckpointError as err:
            errors.append(str(err))
    if errors:
        raise CheckpointError(f"{path}: no loadable checkpoint ({errors[0]})")
    raise CheckpointError(f"{path}: no checkpoint in this directory")


def load_checkpoint(path: str | Path, *, with_state: bool = True, map_location="cpu") -> Checkpoint:
    """Load a verified checkpoint (a checkpoint directory or a run directory's newest)."""
    from safetensors.torch import load_file

    path, manifest = find_checkpoint(path)
    try:
        model_state = load_file(path / "model.safetensors", device=str(map_location))
        config = json.loads((path / "config.json").read_text())
        tokenizer_json = (path / "tokenizer.json").read_text()
        state = torch.load(path / "state.pt", map_location=map_location, weights_only=True) if with_state else None
    except Exception as err:  # verified sizes and hashes, so this is a format we do not read
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(err).__name__}: {str(err).splitlines()[0]})") from None
    return Checkpoint(path, manifest["step"], config, model_state, tokenizer_json, state)
