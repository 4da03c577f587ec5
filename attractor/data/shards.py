"""DataConfig and prepare(): a corpus tokenised once into memory-mapped shards, cached by key.

    cfg = DataConfig(source="kjv", tokenizer="bpe", vocab_size=4096)
    data = prepare(cfg)              # first call tokenises; later calls only memory-map
    data.train, data.val             # 1-D np.memmap token streams (uint16 up to 65536 ids)

The cache folder `cache_dir/<key>/` holds train.bin, val.bin (raw little-endian tokens),
tokenizer.json and meta.json. The key names the corpus, the tokenizer and a hash of everything
the shards depend on (the corpus's bytes or identity, tokenizer, vocab size, split), so a
changed file or setting gets a fresh folder and a stale one is never read. A folder is built
under a temporary name and renamed into place once complete; a lock file serialises builders
(DDP ranks, two runs), and a loser of the rename race keeps the winner's copy. A build that runs
out of space removes its temporary folder and raises DiskFullError (one line).

The stream: every document followed by a blank line ("\\n\\n"), tokenised, then split; the last
`val_fraction` of the tokens is validation, the rest training. A BPE tokenizer is trained on the
whole corpus first (validation text included, as nanoGPT and most small-scale work do).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from attractor.data.corpus import Corpus, open_corpus, read_file
from attractor.data.tokenizer import Tokenizer, bytes_tokenizer, load_tokenizer, train_bpe
from attractor.io import atomic_write_text, current_umask, disk_full, is_disk_full, size_text
from attractor.errors import ConfigError
from attractor.schema import check_fields, require, to_dict

SHARD_VERSION = 1       # bump when the stream's layout changes, so old caches are not read
DOC_SEPARATOR = "\n\n"  # after every document
PIECE_LINES = 16        # BPE encodes a document in pieces of this many lines, in parallel


@dataclass(frozen=True)
class DataConfig:
    source: str = "kjv"                   # "kjv" (embedded, offline), a .txt/.jsonl file or folder, or "hf:<dataset>[:<config>]"
    tokenizer: Literal["bytes", "bpe"] = "bytes"
    vocab_size: int = 256                 # bytes: 256; bpe: the size to train (> 256, byte-level)
    val_fraction: float = 0.05            # the last fraction of the token stream is validation
    text_field: str = "text"              # the field read from .jsonl lines and HF datasets
    max_chars: int | None = None          # read at most this many characters (quick runs, HF streaming)
    cache_dir: str = ".cache/attractor"   # tokenised shards go here, relative to cwd unless absolute

    def __post_init__(self):
        check_fields(self)
        require(self.source != "", "DataConfig.source must not be empty (try 'kjv')")
        if self.tokenizer == "bytes":
            require(self.vocab_size == 256, f"DataConfig.vocab_size={self.vocab_size} must be 256 for tokenizer='bytes'")
        else:
            require(256 < self.vocab_size <= 2**32,
                    f"DataConfig.vocab_size={self.vocab_size} must be in (256, 2**32] for tokenizer='bpe'")
        require(0.0 < self.val_fraction < 1.0, f"DataConfig.val_fraction={self.val_fraction} must be in (0, 1)")
        require(self.text_field != "", "DataConfig.text_field must not be empty")
        require(self.max_chars is None or self.max_chars >= 1, f"DataConfig.max_chars={self.max_chars} must be >= 1 or None")
        require(self.cache_dir != "", "DataConfig.cache_dir must not be empty")

    @property
    def token_dtype(self) -> np.dtype:
        return np.dtype(np.uint16 if self.vocab_size <= 2**16 else np.uint32)


@dataclass
class PreparedData:
    train: np.ndarray        # (N_train,) token stream, a read-only np.memmap
    val: np.ndarray          # (N_val,) the validation stream that follows it
    tokenizer: Tokenizer
    key: str                 # the cache key, the name of `path`
    path: Path               # cache_dir/<key>
    meta: dict               # meta.json: counts, config, timings
    from_cache: bool         # True when nothing was tokenised by this call

    def summary(self) -> str:
        """One line: "kjv: 985,938 train + 51,892 val tokens (bpe, vocab 4096) in .cache/..."."""
        t = self.tokenizer
        return (f"{self.meta['source']}: {len(self.train):,} train + {len(self.val):,} val tokens "
                f"({t.kind}, vocab {t.vocab_size}) in {self.path}")


def cache_key(cfg: DataConfig, corpus: Corpus) -> str:
    """'<corpus>-<tokenizer><vocab>-<16 hex>', the hash covering all the shards depend on."""
    what = {"shards": SHARD_VERSION, "corpus": corpus.identity, "tokenizer": cfg.tokenizer,
            "vocab_size": cfg.vocab_size, "val_fraction": cfg.val_fraction}
    digest = hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]
    return f"{corpus.name}-{cfg.tokenizer}{cfg.vocab_size}-{digest}"


def prepare(cfg: DataConfig, *, rank_zero: bool = True, progress: bool = False) -> PreparedData:
    """Tokenise `cfg`'s corpus into cached shards (once) and memory-map them.

    Safe to call from several processes at once: one builds under a lock, the others wait and
    then map its result. `rank_zero=False` only silences messages (a DDP rank that finds no
    cache still builds it, under the same lock). `progress` prints stages to stderr.

    Raises ConfigError (one line) for a missing path, an unreadable file or line, an "hf:"
    source without `datasets` or network, an empty corpus, or one too small to split.
    """
    say = (lambda msg: print(f"data: {msg}", file=sys.stderr, flush=True)) if progress and rank_zero else (lambda msg: None)
    corpus = open_corpus(cfg.source, cfg.text_field, cfg.max_chars)
    key = cache_key(cfg, corpus)
    root = Path(cfg.cache_dir)
    final = root / key
    if (final / "meta.json").is_file():
        return _load(final, from_cache=True)
    root.mkdir(parents=True, exist_ok=True)
    with _file_lock(root / f".{key}.lock") as locked:
        if (final / "meta.json").is_file():  # built by another process while we waited
            return _load(final, from_cache=True)
        if final.exists():  # a folder without meta.json is no cache of ours: rebuild it
            shutil.rmtree(final)
        for stale in root.glob(f".{key}.tmp-*") if locked else ():  # left by builders killed holding the lock
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{key}.tmp-"))
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes it private; a shared cache is readable
        try:
            _build(cfg, corpus, key, tmp, say)
            try:
                os.rename(tmp, final)
            except OSError:
                if not (final / "meta.json").is_file():
                    raise
        except OSError as err:
            if not is_disk_full(err):
                raise
            written = sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file())
            shutil.rmtree(tmp, ignore_errors=True)  # first, so that the message counts the space it held as free
            raise disk_full(root, f"the token cache {key}", f"more than {size_text(written)}", err) from err
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    data = _load(final, from_cache=False)
    say(data.summary())
    return data


def _build(cfg: DataConfig, corpus: Corpus, key: str, out: Path, say) -> None:
    """Write train.bin, val.bin, tokenizer.json and meta.json (last) into the folder `out`."""
    start = time.perf_counter()
    read = corpus.read
    if corpus.remote and cfg.tokenizer == "bpe":  # two passes: spool the download once
        spool = out / "corpus.jsonl"
        with open(spool, "w", encoding="utf-8") as f:
            for doc in corpus.read():
                f.write(json.dumps({"text": doc}, ensure_ascii=False) + "\n")
        read = lambda: read_file(spool)  # noqa: E731
    if cfg.tokenizer == "bytes":
        tokenizer = bytes_tokenizer()
    else:
        say(f"training a byte-level BPE of {cfg.vocab_size} ids on {cfg.source}")
        tokenizer = train_bpe(read(), cfg.vocab_size)
    trained = time.perf_counter()
    say(f"tokenising {cfg.source} ({tokenizer.kind}, vocab {tokenizer.vocab_size})")
    stream = out / "stream.bin"
    n_docs = n_chars = n_tokens = 0
    with open(stream, "wb") as f:
        for docs in _batched(read(), 256):
            n_docs += len(docs)
            n_chars += sum(len(d) + len(DOC_SEPARATOR) for d in docs)
            ids = _encode(tokenizer, [d + DOC_SEPARATOR for d in docs], cfg.token_dtype)
            f.write(ids.tobytes())
            n_tokens += len(ids)
    (out / "corpus.jsonl").unlink(missing_ok=True)
    if n_docs == 0 or n_chars == n_docs * len(DOC_SEPARATOR):
        raise ConfigError(f"data source '{cfg.source}' holds no text")
    n_val = max(1, round(n_tokens * cfg.val_fraction))
    n_train = n_tokens - n_val
    if n_train < 2:
        raise ConfigError(f"data source '{cfg.source}' is too small: {n_tokens} tokens leave {n_train} for "
                          f"training at val_fraction={cfg.val_fraction}")
    itemsize = cfg.token_dtype.itemsize
    with open(stream, "r+b") as f:  # the tail becomes val.bin; the file, cut short, train.bin
        f.seek(n_train * itemsize)
        (out / "val.bin").write_bytes(f.read())
        f.truncate(n_train * itemsize)
    os.replace(stream, out / "train.bin")
    tokenizer.save(out / "tokenizer.json")
    done = time.perf_counter()
    meta = {"version": SHARD_VERSION, "key": key, "source": cfg.source, "config": to_dict(cfg),
            "dtype": cfg.token_dtype.name, "n_train": n_train, "n_val": n_val, "n_documents": n_docs,
            "n_chars": n_chars, "tokenizer_train_seconds": round(trained - start, 3),
            "tokenize_seconds": round(done - trained, 3)}
    atomic_write_text(out / "meta.json", json.dumps(meta, indent=1))


def _encode(tokenizer: Tokenizer, docs: list[str], dtype: np.dtype) -> np.ndarray:
    """The concatenated ids of `docs`. Bytes are copied straight from UTF-8; BPE encodes pieces
    of PIECE_LINES lines in parallel (Rust threads), which on KJV gives the same ids as whole
    documents since the pre-tokeniser splits at newlines anyway."""
    if tokenizer.kind == "bytes":
        return np.frombuffer("".join(docs).encode("utf-8"), dtype=np.uint8).astype(dtype)
    pieces = []
    for doc in docs:
        lines = doc.splitlines(keepends=True)
        pieces += ["".join(lines[i:i + PIECE_LINES]) for i in range(0, len(lines), PIECE_LINES)]
    ids = tokenizer.encode_batch(pieces)
    return np.fromiter(itertools.chain.from_iterable(ids), dtype=dtype, count=sum(map(len, ids)))


def _batched(items: Iterator[str], n: int) -> Iterator[list[str]]:
    items = iter(items)
    while batch := list(itertools.islice(items, n)):
        yield batch


def _load(path: Path, *, from_cache: bool) -> PreparedData:
    """Memory-map a complete cache folder; sizes are checked against meta.json."""
    try:
        meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
        dtype = np.dtype(meta["dtype"])
        streams = {}
        for split in ("train", "val"):
            file, n = path / f"{split}.bin", meta[f"n_{split}"]
            if file.stat().st_size != n * dtype.itemsize:
                raise ValueError(f"{file.name} has {file.stat().st_size} bytes, meta.json says {n} tokens")
            streams[split] = np.memmap(file, dtype=dtype, mode="r", shape=(n,))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"data cache '{path}' is corrupt ({err}); delete the folder to rebuild it") from None
    tokenizer = load_tokenizer(path / "tokenizer.json")
    return PreparedData(streams["train"], streams["val"], tokenizer, meta["key"], path, meta, from_cache)


@contextlib.contextmanager
def _file_lock(path: Path):
    """An exclusive lock on `path` (fcntl.flock, released if the process dies); yields whether it
    locked. Where fcntl is missing (Windows) builders are not serialised, and the atomic rename
    alone keeps caches whole."""
    try:
        import fcntl
    except ImportError:
        yield False
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
