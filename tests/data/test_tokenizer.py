"""Tokenizers: lossless round trips, the BPE's vocabulary size, saving and loading."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from textdata import SMALL_TEXT

from attractor.data import Tokenizer, bytes_tokenizer, load_tokenizer, tokenizer_from_json, train_bpe
from attractor.errors import ConfigError


@pytest.fixture(scope="module")
def bpe() -> Tokenizer:
    return train_bpe([SMALL_TEXT], vocab_size=300)


@given(st.text())
def test_bytes_round_trip_and_ids_are_utf8(text):
    tok = bytes_tokenizer()
    ids = tok.encode(text)
    assert ids == list(text.encode("utf-8"))  # the definition, computed another way
    assert tok.decode(ids) == text


def test_bytes_decode_replaces_invalid_utf8():
    tok = bytes_tokenizer()
    cut = "é".encode()[:1]  # the first byte of a two-byte character
    assert tok.decode([*b"ab", *cut, *b"c"]) == "ab\ufffdc"
    with pytest.raises(ValueError, match="256"):
        tok.decode([65, 300])


def test_bpe_honours_vocab_size_and_compresses(bpe):
    assert bpe.vocab_size == 300
    assert bpe._bpe.get_vocab_size() == 300  # the text is rich enough to learn all 44 merges
    ids = bpe.encode(SMALL_TEXT)
    assert max(ids) < 300
    assert len(ids) < 0.6 * len(SMALL_TEXT.encode())  # 44 merges on this text: ~0.52 ids per byte


@settings(max_examples=50)
@given(st.text())
def test_bpe_round_trip_on_any_text(bpe, text):
    assert bpe.decode(bpe.encode(text)) == text


def test_bpe_training_is_deterministic(bpe):
    assert train_bpe([SMALL_TEXT], vocab_size=300) == bpe


def test_bpe_vocab_must_exceed_bytes():
    with pytest.raises(ConfigError, match="vocab_size > 256"):
        train_bpe(["abc"], vocab_size=256)


@pytest.mark.parametrize("make", [bytes_tokenizer, lambda: train_bpe([SMALL_TEXT], vocab_size=300)], ids=["bytes", "bpe"])
def test_save_load_gives_identical_ids(tmp_path, make):
    tok = make()
    tok.save(tmp_path / "tok.json")
    loaded = load_tokenizer(tmp_path / "tok.json")
    assert loaded == tok and loaded.vocab_size == tok.vocab_size
    sample = SMALL_TEXT[:2000] + " never seen: zebra quokka"
    assert loaded.encode(sample) == tok.encode(sample)
    assert not list(tmp_path.glob(".*tmp"))  # no temporary file left behind


@pytest.mark.parametrize("content, match", [
    ('{"format": "attractor-tokenizer", "version": 1, "kind": "bpe", "voc', "corrupt"),  # truncated
    ('{"hello": 1}', "not an attractor tokenizer"),
    ('{"format": "attractor-tokenizer", "version": 9, "kind": "bytes", "vocab_size": 256}', "version 9"),
    ('{"format": "attractor-tokenizer", "version": 1, "kind": "bpe", "vocab_size": 300, "bpe": {"model": 1}}',
     "broken BPE"),
    ('{"format": "attractor-tokenizer", "version": 1, "kind": "bytes", "vocab_size": 300}', "256"),
])
def test_load_rejects_bad_files_with_one_line(tmp_path, content, match):
    path = tmp_path / "tok.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=match) as err:
        load_tokenizer(path)
    assert "\n" not in str(err.value)


def test_load_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_tokenizer(tmp_path / "nope.json")


def test_saved_file_is_plain_json(tmp_path, bpe):
    bpe.save(tmp_path / "tok.json")
    data = json.loads((tmp_path / "tok.json").read_text())
    assert data["kind"] == "bpe" and data["vocab_size"] == 300 and "model" in data["bpe"]


def test_from_json_text_or_dict_as_a_checkpoint_keeps_it(bpe):
    text = json.dumps(bpe.to_json())
    assert tokenizer_from_json(text) == bpe == tokenizer_from_json(json.loads(text))
    with pytest.raises(ConfigError, match="checkpoint tokenizer is corrupt"):
        tokenizer_from_json(text[:50], where="checkpoint tokenizer")
