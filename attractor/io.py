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

Files and directories get the modes the user's umask gives any new file (0644 and 0755 under
umask 022), not the private ones of a temporary name.

A write that runs out of space (or quota) raises DiskFullError, one line naming the directory,
what was being written and the space it needs: the temporary file or directory is removed, and
the previous file, checkpoint and `latest` stay as they were. `check_writable_dir` and
`check_writable_file` refuse a path that cannot be written (a ConfigError, one line) before a
command starts its work; nothing here creates a missing parent directory.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shlex
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from attractor.errors import ConfigError, DiskFullError

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


# ---------------------------------------------------------------- full disks and writable paths

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def size_text(n: int) -> str:
    """A byte count as people read it: '830 bytes', '12.3 kB', '4.5 MB' (powers of 1000)."""
    if n < 1000:
        return f"{n} bytes"
    for unit in ("kB", "MB", "GB", "TB"):
        n /= 1000
        if n < 999.95 or unit == "TB":
            return f"{n:.1f} {unit}"


def is_disk_full(err: BaseException | None) -> bool:
    """Whether `err`, or an error it was raised from, is an OSError for a full disk or quota
    (safetensors and torch.save wrap the OS's error in their own)."""
    return any(isinstance(e, OSError) and e.errno in DISK_FULL_ERRNOS for e in _chain(err))


def free_space(directory: str | Path) -> int | None:
    """Bytes free for an ordinary user on the filesystem of `directory`; None if it cannot tell."""
    try:
        return shutil.disk_usage(directory).free
    except OSError:
        return None


def disk_full(directory: str | Path, what: str, needs: str, cause: BaseException | None = None) -> DiskFullError:
    """The DiskFullError (one line) for writing `what` into `directory`, which needs `needs`
    ('12.3 MB', 'about 12.3 MB'); it says how much is free. Its errno is the cause's, or ENOSPC."""
    code = next((e.errno for e in _chain(cause) if isinstance(e, OSError) and e.errno in DISK_FULL_ERRNOS),
                errno.ENOSPC)
    reason = "disk quota exceeded" if code == errno.EDQUOT else "no space left on the device"
    free = free_space(directory)
    error = DiskFullError(f"{directory}: {reason} for {what} (needs {needs}"
                          + (f", {size_text(free)} free)" if free is not None else ")"))
    error.errno = code  # str() stays the message: OSError only formats errno when built with it
    return error


def _chain(err: BaseException | None):
    """`err` and the errors it was raised from or during, newest first."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def check_writable_dir(path: str | Path, flag: str = "") -> Path:
    """`path` as a Path if a command can write into it: an existing directory where files can be
    created, or a missing one whose parent exists and is writable (the command then creates that
    one directory, never its parents). Otherwise a ConfigError naming `flag` (such as '--out'),
    the path and why. Creates nothing, so a command refused later for another reason leaves no
    directory behind."""
    path = Path(path)
    name = f"{flag} {path}" if flag else str(path)
    if path.is_dir():
        _probe(path, name)
    elif path.exists() or path.is_symlink():
        raise ConfigError(f"{name}: exists and is not a directory")
    else:
        _probe(_existing_parent(path, name), name)
    return path


def check_writable_file(path: str | Path, flag: str = "") -> Path:
    """`path` as a Path if a command can write the file there (atomically, by a rename): not a
    directory, nor a device or pipe (which the rename would replace), in an existing, writable
    directory. Otherwise a ConfigError naming `flag` (such as '--html'), the path and why."""
    path = Path(path)
    name = f"{flag} {path}" if flag else str(path)
    if path.is_dir():
        raise ConfigError(f"{name}: is a directory; name a file")
    if (path.exists() or path.is_symlink()) and not path.is_file():
        raise ConfigError(f"{name}: exists and is not a regular file")
    _probe(_existing_parent(path, name), name)
    return path


def _existing_parent(path: Path, name: str) -> Path:
    parent = path.parent
    if not parent.is_dir():
        if parent.exists():
            raise ConfigError(f"{name}: {parent} is not a directory")
        raise ConfigError(f"{name}: the directory {parent} does not exist (create it first: mkdir -p {parent})")
    return parent


def _probe(directory: Path, name: str) -> None:
    """Create and remove a file in `directory`: os.access tells root yes on a read-only mount
    and in /proc, where creating a file still fails."""
    try:
        fd, probe = tempfile.mkstemp(dir=directory, prefix=".attractor-probe.", suffix=".tmp")
    except OSError as err:
        if err.errno in DISK_FULL_ERRNOS:
            raise disk_full(directory, "a new file", "one inode", err) from err
        raise ConfigError(f"{name}: cannot create files in {directory} ({err.strerror or err})") from None
    os.close(fd)
    os.unlink(probe)


# ---------------------------------------------------------------- atomic writes

def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same directory and a rename: a
    reader sees the old file or the new one, never half of either. The directory must exist
    (nothing here creates one). A full disk raises DiskFullError and leaves the old file."""
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes it private; give it a normal file's mode
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and not isinstance(err, DiskFullError) and err.errno in DISK_FULL_ERRNOS:
            raise disk_full(path.parent, path.name, size_text(len(data)), err) from err
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    """atomic_write_bytes of the text as UTF-8."""
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj) -> None:
    """atomic_write_text of `obj` as indented JSON with sorted keys."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def append_text(path: str | Path, text: str) -> None:
    """Append `text` to the file at `path` (created if missing), whole or not at all: on a full
    disk the file is cut back to its previous length and DiskFullError is raised."""
    path = Path(path)
    data = text.encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        start = os.lseek(fd, 0, os.SEEK_END)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        except OSError as err:
            os.ftruncate(fd, start)  # no half line for a reader, or a resumed run, to trip over
            if err.errno in DISK_FULL_ERRNOS:
                raise disk_full(path.parent, path.name, size_text(len(data)), err) from err
            raise
    finally:
        os.close(fd)


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
    The run directory is created if missing, its parent is not. Files and the directory get the
    modes of the umask. Out of space, raises DiskFullError (one line: the directory, the size the
    checkpoint needs, the space free) with the partial copy removed and `latest` unchanged.
    """
    from safetensors.torch import save_file

    run_dir = Path(run_dir)
    run_dir.mkdir(exist_ok=True)
    final = run_dir / f"ckpt-{step:08d}"
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model_state.items()}
    config_text = json.dumps(config, indent=2, sort_keys=True) + "\n"
    needs = (sum(t.nbytes for t in tensors.values()) + _tensor_bytes(state) + len(config_text.encode())
             + len(tokenizer_json.encode()) + 4096)  # + headers, the pickled structure and the manifest
    umask = current_umask()
    tmp = None
    try:
        tmp = Path(tempfile.mkdtemp(dir=run_dir, prefix=f".{final.name}.", suffix=".tmp"))
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; a checkpoint is read like the rest of the run
        save_file(tensors, tmp / "model.safetensors", metadata={"format_version": str(FORMAT_VERSION)})
        (tmp / "config.json").write_text(config_text)
        (tmp / "tokenizer.json").write_text(tokenizer_json)
        with open(tmp / "state.pt", "wb") as fh:  # our file, closed on failure (torch's own stays open, holding the space)
            torch.save(state, fh)
        manifest = {"format_version": FORMAT_VERSION, "step": step,
                    "files": {name: {"bytes": (tmp / name).stat().st_size, "sha256": _sha256(tmp / name)}
                              for name in FILES}}
        for name in FILES:
            os.chmod(tmp / name, 0o666 & ~umask)  # safetensors writes its file private
            with open(tmp / name, "rb") as fh:
                os.fsync(fh.fileno())
        atomic_write_json(tmp / "manifest.json", manifest)
        if final.exists():  # a checkpoint of the same step from a run that was resumed before it
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(run_dir)
    except BaseException as err:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        # safetensors and torch.save report a full disk in their own words ("unexpected pos ..."),
        # so the free space decides as well as the errno
        free = free_space(run_dir)
        if isinstance(err, Exception) and (is_disk_full(err) or (free is not None and free < needs)):
            raise disk_full(run_dir, f"checkpoint {final.name}", f"about {size_text(needs)}", err) from err
        raise
    try:
        atomic_write_text(run_dir / "latest", final.name + "\n")
    except DiskFullError as err:  # keep `latest` and the newest checkpoint in step: drop the new one
        shutil.rmtree(final, ignore_errors=True)
        raise disk_full(run_dir, f"checkpoint {final.name}", f"about {size_text(needs)}", err) from err
    for old in checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in run_dir.glob(".ckpt-*.tmp"):  # left by a run killed while writing
        shutil.rmtree(stale, ignore_errors=True)
    return final


def _tensor_bytes(obj) -> int:
    """Bytes of the tensors inside nested dicts, lists and tuples (what torch.save mostly writes)."""
    if isinstance(obj, torch.Tensor):
        return obj.nbytes
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


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


def warn(message: str) -> None:
    """Print `message` as one warning line on stderr: 'attractor: warning: ...'."""
    print(f"attractor: warning: {message}", file=sys.stderr, flush=True)


def find_checkpoint(path: str | Path, *, on_damaged: Callable[[str], None] | None = warn) -> tuple[Path, dict]:
    """(directory, manifest) of a checkpoint, or of a run directory's newest that verifies.

    A run directory's `latest` is tried first; if it is missing or its checkpoint is damaged,
    the newest checkpoint that verifies is used (a run killed while writing one leaves the
    previous one), and `on_damaged` gets one line for each damaged checkpoint passed over
    ("RUN/ckpt-00000300 is damaged (why); using ckpt-00000200"; None: say nothing). Raises
    CheckpointError if there is none.
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
            manifest = verify(candidate)
        except CheckpointError as err:
            errors.append((candidate, str(err)))
            continue
        for damaged, error in errors if on_damaged is not None else ():
            reason = error.removeprefix(f"{damaged}: ")
            on_damaged(f"{damaged} is damaged ({reason}); using {candidate.name}")
        return candidate, manifest
    if errors:
        raise CheckpointError(f"{path}: no loadable checkpoint ({errors[0][1]})")
    raise CheckpointError(f"{path}: no checkpoint in this directory")


def load_checkpoint(path: str | Path, *, with_state: bool = True, map_location="cpu",
                    on_damaged: Callable[[str], None] | None = warn) -> Checkpoint:
    """Load a verified checkpoint (a checkpoint directory or a run directory's newest; each
    damaged one passed over is a line to `on_damaged`, see find_checkpoint)."""
    from safetensors.torch import load_file

    path, manifest = find_checkpoint(path, on_damaged=on_damaged)
    try:
        model_state = load_file(path / "model.safetensors", device=str(map_location))
        config = json.loads((path / "config.json").read_text())
        tokenizer_json = (path / "tokenizer.json").read_text()
        state = torch.load(path / "state.pt", map_location=map_location, weights_only=True) if with_state else None
    except Exception as err:  # verified sizes and hashes, so this is a format we do not read
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(err).__name__}: {str(err).splitlines()[0]})") from None
    return Checkpoint(path, manifest["step"], config, model_state, tokenizer_json, state)


# ---------------------------------------------------------------- one writer per run directory

class RunBusyError(ConfigError):
    """Another process is training into the run directory (one line naming it; exit 2)."""


class RunLock:
    """One writer per run directory: an exclusive advisory lock (flock) on RUN/lock.

    The lock belongs to the open file, so the operating system ends it with the process however
    that ends (kill -9 included): unlike a pid file it cannot outlive a crash. The file holds the
    holder's pid and command line, for the message that refuses a second writer, and stays after
    the run: only a held lock counts, never the file's presence.

        with RunLock("runs/a1"):      # RunBusyError naming the holder if another process has it
            ...                       # write into runs/a1

    or `acquire()` and `release()`. Acquiring creates the run directory (not its parents) and
    the lock file: the first writes into a run directory.
    """

    FILE = "lock"

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / self.FILE
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock now or raise RunBusyError (it never waits)."""
        import fcntl

        if self._fd is not None:
            return
        self.run_dir.mkdir(exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
                raise
            raise RunBusyError(f"{self.run_dir} is in use by {self.holder()}: one run directory takes one "
                               "writer; wait for that process to end, or train into another --out") from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n{shlex.join(sys.orig_argv)}\n".encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def holder(self) -> str:
        """The process the lock file names: 'process 1234 (python -m attractor train ...)'. The
        holder writes it just after taking the lock, so a reader in between sees no pid."""
        try:
            pid, _, command = self.path.read_text().partition("\n")
        except OSError:
            pid, command = "", ""
        if not pid.strip().isdigit():
            return "another process"
        command = " ".join(command.split())  # one line, whatever the arguments held
        if len(command) > 160:  # the message stays one readable line
            command = command[:157] + "..."
        return f"process {pid.strip()}" + (f" ({command})" if command else "")

    def release(self) -> None:
        """Let the lock go (closing the file drops it); the file stays."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
