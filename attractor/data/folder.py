"""Dataset folders: each split's arrays as SPLIT/KEY.npy beside a dataset.json, written whole or
not at all.

Every dataset the project builds (puzzles, parity, mazes of several sides) is one. `write_folder`
writes it into a temporary folder beside its place and renames it there, so a reader sees all of
it or none, and a full disk is one line (DiskFullError) that leaves nothing behind; `read_meta`
reads a dataset.json and says in one line what a folder of another format holds.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from attractor.errors import ConfigError


def npy(array: np.ndarray) -> bytes:
    """The .npy bytes of an array (no pickles)."""
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def new_folder(out: str | Path) -> Path:
    """`out` as a Path if a dataset can be written there: it does not exist, its parent does and
    is writable (ConfigError otherwise). Checked before the data is generated."""
    from attractor.io import check_writable_dir

    out = check_writable_dir(out)
    if out.exists():
        raise ConfigError(f"{out} already exists; delete it or choose another --out")
    return out


def write_folder(out: str | Path, meta: dict, splits: dict[str, dict[str, np.ndarray]]) -> Path:
    """Write splits[name][key] as out/name/key.npy and `meta` as out/dataset.json, through a
    temporary folder renamed to `out` (which must not exist; its parent must). Out of space,
    DiskFullError naming the size the dataset needs. Returns `out`."""
    from attractor.io import atomic_write_bytes, atomic_write_text, current_umask, disk_full, is_disk_full, size_text

    out = new_folder(out)
    needs = sum(array.nbytes + 128 for arrays in splits.values() for array in arrays.values()) + 4096  # + headers, json
    tmp = None
    try:
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
        for name, arrays in splits.items():
            (tmp / name).mkdir()
            for key, array in arrays.items():
                atomic_write_bytes(tmp / name / f"{key}.npy", npy(array))
        atomic_write_text(tmp / "dataset.json", json.dumps(meta, indent=1) + "\n")
        os.chmod(tmp, 0o777 & ~current_umask())
        os.replace(tmp, out)
    except BaseException as err:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, OSError) and is_disk_full(err):
            raise disk_full(out.parent, f"the dataset {out.name}", f"about {size_text(needs)}", err) from err
        raise
    return out


def read_meta(path: str | Path, fmt: str, version: int, what: str, command: str) -> dict:
    """The dataset.json of folder `path` if its format is `fmt` at `version`; else a ConfigError
    (one line) saying the folder is not `what` ('a parity dataset') and how to build one
    (`command`)."""
    path = Path(path)
    hint = f"build one with `{command}`"
    try:
        meta = json.loads((path / "dataset.json").read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path} is not {what} (no dataset.json); {hint}") from None
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot read {path / 'dataset.json'}: {err}") from None
    if not isinstance(meta, dict):
        raise ConfigError(f"{path} is not {what} (its dataset.json is not an object); {hint}")
    if meta.get("format") != fmt or meta.get("version") != version:
        raise ConfigError(f"{path} is not {what}: it holds format {meta.get('format')!r} version "
                          f"{meta.get('version')!r}, expected {fmt!r} version {version}; {hint}")
    return meta


def load_growing(path: str | Path, fmt: str, version: int, what: str, command: str, make, keys: tuple[str, ...],
                 sizes_key: str) -> dict:
    """A dataset of one training size and several test sizes (parity lengths, maze sides):
    {"meta": dataset.json, "train": make(*arrays), "test": {size: make(*arrays)}}, the arrays
    (one per key) memory-mapped from train/ and test-<size>/, the sizes listed in meta[sizes_key]."""
    path = Path(path)
    meta = read_meta(path, fmt, version, what, command)

    def split(name: str):
        return make(*load_arrays(path / name, keys, what))

    return {"meta": meta, "train": split("train"), "test": {int(n): split(f"test-{n}") for n in meta[sizes_key]}}


def load_arrays(split: Path, keys: tuple[str, ...], what: str) -> list[np.ndarray]:
    """split/KEY.npy for each key, memory-mapped; ConfigError (one line) naming `what` (the
    dataset) when one is missing or unreadable."""
    try:
        return [np.load(split / f"{key}.npy", mmap_mode="r", allow_pickle=False) for key in keys]
    except (OSError, ValueError) as err:
        raise ConfigError(f"{what} {split.parent} is incomplete or corrupt ({err}); rebuild it") from None
