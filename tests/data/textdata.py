"""Small corpora for the data tests, and a DataConfig that caches under a test's tmp_path.

(A helper module, not a conftest.py: the tests' shared `conftest` module name stays the root one.)
"""

from __future__ import annotations

import json
from pathlib import Path

from attractor.data import DataConfig

# Enough repetition for a BPE to learn a few hundred merges in well under a second.
SMALL_TEXT = "\n".join(
    f"Line {i}: the quick brown fox jumps over the lazy dog, and the cat sat on mat number {i % 17}. "
    "Ünïcödé and emoji 🦊 stay intact."
    for i in range(400)
)


def write_jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_text(path: Path, text: str = SMALL_TEXT) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def data_config(tmp_path: Path, **kw) -> DataConfig:
    """DataConfig(**kw) caching in tmp_path/cache, never in the working directory."""
    kw.setdefault("cache_dir", str(tmp_path / "cache"))
    return DataConfig(**kw)
