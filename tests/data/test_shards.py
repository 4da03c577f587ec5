"""prepare(): cached shards keyed by what made them, a deterministic split, safe concurrent builds."""

from __future__ import annotations

import contextlib
import os
import threading

import numpy as np
import pytest
from textdata import SMALL_TEXT, data_config, write_jsonl, write_text

from attractor.data import DataConfig, cache_key, open_corpus, prepare
from attractor.data import shards as shards_module
from attractor.errors import ConfigError
from attractor.schema import from_dict, to_dict


@pytest.mark.parametrize("kw, match", [
    ({"tokenizer": "wordpiece"}, "tokenizer"),
    ({"vocab_size": 300}, "must be 256 for tokenizer='bytes'"),
    ({"tokenizer": "bpe", "vocab_size": 256}, r"must be in \(256"),
    ({"vocab_size": 256.0}, "vocab_size=256.0 must be int"),
    ({"val_fraction": 0.0}, r"val_fraction=0.0 must be in \(0, 1\)"),
    ({"val_fraction": 1}, r"val_fraction=1.0 must be in \(0, 1\)"),
    ({"val_fraction": "0.1"}, "val_fraction='0.1' must be float"),
    ({"max_chars": 0}, "max_chars=0 must be >= 1"),
    ({"source": ""}, "source must not be empty"),
    ({"text_field": ""}, "text_field must not be empty"),
])
def test_bad_config_values_raise_config_error(kw, match):
    with pytest.raises(ConfigError, match=match):
        DataConfig(**kw)


def test_config_round_trips_through_json_dicts():
    cfg = DataConfig(source="x.jsonl", tokenizer="bpe", vocab_size=1000, val_fraction=0.1, max_chars=5)
    assert from_dict(DataConfig, to_dict(cfg)) == cfg
    with pytest.raises(ConfigError, match="did you mean 'vocab_size'"):
        from_dict(DataConfig, {"vocab_sise": 300})


def test_unknown_path_is_one_line_config_error(tmp_path):
    with pytest.raises(ConfigError, match="data path 'nowhere/x.txt' does not exist") as err:
        prepare(data_config(tmp_path, source="nowhere/x.txt"))
    assert "\n" not in str(err.value)


def test_stream_is_documents_with_blank_lines_split_at_the_end(tmp_path):
    write_jsonl(tmp_path / "d.jsonl", [{"text": "alpha"}, {"text": "béta"}, {"text": "gamma " * 20}])
    data = prepare(data_config(tmp_path, source=str(tmp_path / "d.jsonl"), val_fraction=0.25))
    expected = "alpha\n\nbéta\n\n" + "gamma " * 20 + "\n\n"
    stream = np.concatenate([data.train, data.val])
    assert stream.tobytes() == np.frombuffer(expected.encode(), np.uint8).astype(np.uint16).tobytes()
    assert len(data.val) == round(len(stream) * 0.25) and data.train.dtype == np.uint16
    assert data.tokenizer.decode(data.train) + data.tokenizer.decode(data.val) == expected


def test_bpe_shards_decode_back_to_the_text(tmp_path):
    path = write_text(tmp_path / "a.txt")
    data = prepare(data_config(tmp_path, source=str(path), tokenizer="bpe", vocab_size=300))
    assert data.tokenizer.kind == "bpe" and data.tokenizer.vocab_size == 300
    assert int(max(data.train.max(), data.val.max())) < 300
    ids = np.concatenate([data.train, data.val]).tolist()
    assert data.tokenizer.decode(ids) == SMALL_TEXT + "\n\n"
    assert len(ids) < 0.6 * len(SMALL_TEXT.encode())


def test_kjv_default_prepares_offline(tmp_path):
    data = prepare(data_config(tmp_path, max_chars=20_000))
    assert data.tokenizer.decode(data.train[:120]).startswith(
        "The First Book of Moses, called Genesis\n\nChapter 1\nIn the beginning God created")
    assert data.key.startswith("kjv-bytes256-") and data.path.name == data.key


def test_second_call_maps_the_cache_without_tokenising(tmp_path, monkeypatch):
    cfg = data_config(tmp_path, source=str(write_text(tmp_path / "a.txt")))
    first = prepare(cfg)
    assert not first.from_cache
    stamp = os.stat(first.path / "train.bin").st_mtime_ns
    calls = []
    monkeypatch.setattr(shards_module, "_encode", lambda *a: calls.append(a) or pytest.fail("re-tokenised"))
    second = prepare(cfg)
    assert second.from_cache and calls == [] and second.key == first.key
    assert os.stat(second.path / "train.bin").st_mtime_ns == stamp
    assert isinstance(second.train, np.memmap) and np.array_equal(second.train, first.train)
    assert sorted(p.name for p in first.path.iterdir()) == ["meta.json", "tokenizer.json", "train.bin", "val.bin"]


def test_cached_call_writes_nothing(tmp_path):
    """A finished cache is mapped without taking the lock (so a read-only cache folder works)."""
    cfg = data_config(tmp_path, source=str(write_text(tmp_path / "a.txt")))
    data = prepare(cfg)
    for lock in (tmp_path / "cache").glob(".*.lock"):
        lock.unlink()
    before = sorted((tmp_path / "cache").rglob("*"))
    assert prepare(cfg).from_cache and sorted((tmp_path / "cache").rglob("*")) == before
    assert data.path in before


def test_key_follows_content_and_tokenizer_config(tmp_path):
    path = write_text(tmp_path / "a.txt")
    keys = {prepare(data_config(tmp_path, source=str(path))).key}
    for kw in ({"tokenizer": "bpe", "vocab_size": 300}, {"tokenizer": "bpe", "vocab_size": 301},
               {"val_fraction": 0.1}, {"max_chars": 1000}):
        keys.add(prepare(data_config(tmp_path, source=str(path), **kw)).key)
    path.write_text(SMALL_TEXT + "!")
    keys.add(prepare(data_config(tmp_path, source=str(path))).key)
    assert len(keys) == 6
    path.write_text(SMALL_TEXT)  # back to the first content: back to the first key, from cache
    again = prepare(data_config(tmp_path, source=str(path)))
    assert again.from_cache and again.key in keys


def test_same_config_gives_identical_bytes_in_fresh_caches(tmp_path):
    path = write_text(tmp_path / "a.txt")
    built = [prepare(data_config(tmp_path, source=str(path), tokenizer="bpe", vocab_size=300,
                                 cache_dir=str(tmp_path / f"cache{i}"))) for i in range(2)]
    assert built[0].key == built[1].key
    for name in ("train.bin", "val.bin", "tokenizer.json"):
        assert (built[0].path / name).read_bytes() == (built[1].path / name).read_bytes()


@pytest.mark.parametrize("make, match", [
    (lambda d: write_text(d / "empty.txt", ""), "holds no text"),
    (lambda d: write_jsonl(d / "blank.jsonl", [{"text": ""}, {"text": ""}]), "holds no text"),
    (lambda d: write_text(d / "tiny.txt", "a"), "too small: 3 tokens leave 1 for training"),
])
def test_empty_or_tiny_corpus_is_a_clear_error(tmp_path, make, match):
    cfg = data_config(tmp_path, source=str(make(tmp_path)), val_fraction=0.5)
    with pytest.raises(ConfigError, match=match):
        prepare(cfg)
    assert not (tmp_path / "cache").exists() or not [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]


def test_corrupt_cache_is_one_line_error_and_half_folder_is_rebuilt(tmp_path):
    cfg = data_config(tmp_path, source=str(write_text(tmp_path / "a.txt")))
    data = prepare(cfg)
    with open(data.path / "train.bin", "r+b") as f:
        f.truncate(10)
    with pytest.raises(ConfigError, match="data cache .* is corrupt .*delete the folder") as err:
        prepare(cfg)
    assert "\n" not in str(err.value)
    (data.path / "meta.json").unlink()  # a folder without meta.json is not a finished cache
    rebuilt = prepare(cfg)
    assert not rebuilt.from_cache and len(rebuilt.train) == len(data.train)


def test_killed_builders_leftovers_are_cleared(tmp_path):
    cfg = data_config(tmp_path, source=str(write_text(tmp_path / "a.txt")))
    stale = tmp_path / "cache" / f".{cache_key(cfg, open_corpus(cfg.source))}.tmp-dead"
    write_text(stale / "stream.bin", "half")
    data = prepare(cfg)
    assert not stale.exists() and [p.name for p in (tmp_path / "cache").iterdir() if p.is_dir()] == [data.key]


def test_concurrent_builders_build_once(tmp_path, monkeypatch):
    cfg = data_config(tmp_path, source=str(write_text(tmp_path / "a.txt")))
    builds, real_build = [], shards_module._build
    monkeypatch.setattr(shards_module, "_build", lambda *a: builds.append(1) or real_build(*a))
    results = [None] * 3
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, prepare(cfg))) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(builds) == 1 and sorted(r.from_cache for r in results) == [False, True, True]
    assert all(np.array_equal(r.train, results[0].train) for r in results)


def test_unlocked_race_keeps_the_first_rename(tmp_path, monkeypatch):
    """Without the lock (as on a system with no flock) two builders both finish; the second
    rename fails on the existing folder and that builder maps the winner's copy."""
    cfg = data_config(tmp_path, source=str(write_text(tmp_path / "a.txt")))
    monkeypatch.setattr(shards_module, "_file_lock", lambda path: contextlib.nullcontext(False))
    both_built, real_build = threading.Barrier(2, timeout=30), shards_module._build

    def build_then_wait(*a):
        real_build(*a)
        both_built.wait()

    monkeypatch.setattr(shards_module, "_build", build_then_wait)
    results, errors = [], []

    def run():
        try:
            results.append(prepare(cfg))
        except Exception as err:  # surfaced by the assert below
            errors.append(err)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(results) == 2
    assert np.array_equal(results[0].train, results[1].train)
    leftovers = [p.name for p in (tmp_path / "cache").iterdir() if p.is_dir() and p.name != results[0].key]
    assert leftovers == []
