"""Corpora: the embedded KJV offline, .txt/.jsonl files and folders, and their errors."""

from __future__ import annotations

import re

import pytest
from textdata import write_jsonl, write_text

from attractor.data import kjv_documents, open_corpus
from attractor.errors import ConfigError


def test_kjv_loads_offline_and_is_the_whole_bible():
    books = list(kjv_documents())
    assert len(books) == 66
    assert books[0].startswith("The First Book of Moses, called Genesis\n\nChapter 1\nIn the beginning God created")
    assert "The LORD is my shepherd; I shall not want." in books[18]      # Psalm 23
    assert books[-1].endswith("The grace of our Lord Jesus Christ be with you all. Amen.")
    assert not re.search(r"\d+:\d+", "".join(books))  # the "c:v " references are gone
    assert 4_000_000 < sum(map(len, books)) < 4_500_000


def test_kjv_drops_verse_markers_inside_joined_passages():
    genesis = next(kjv_documents())
    # Genesis 1:14-15 is one row whose text carries an inline "1:15 " marker.
    assert "divide the day from the night; and let them be for signs" in genesis
    assert "1:15" not in genesis and "years: And let them be for lights" in genesis


def test_txt_file_is_one_document(tmp_path):
    path = write_text(tmp_path / "a.txt", "one\ntwo\n")
    corpus = open_corpus(str(path))
    assert list(corpus.read()) == ["one\ntwo\n"]
    assert list(corpus.read()) == ["one\ntwo\n"]  # re-readable


def test_jsonl_reads_the_text_field(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"body": "first", "text": "no"}, {"body": "second"}])
    path.write_text(path.read_text() + "\n   \n")  # blank lines are skipped
    assert list(open_corpus(str(path), text_field="body").read()) == ["first", "second"]


def test_folder_reads_txt_and_jsonl_in_sorted_order_skipping_hidden(tmp_path):
    write_text(tmp_path / "d" / "b.txt", "B")
    write_jsonl(tmp_path / "d" / "a.jsonl", [{"text": "A1"}, {"text": "A2"}])
    write_text(tmp_path / "d" / "sub" / "c.txt", "C")
    write_text(tmp_path / "d" / ".cache" / "x.txt", "hidden")
    write_text(tmp_path / "d" / "notes.md", "ignored")
    assert list(open_corpus(str(tmp_path / "d")).read()) == ["A1", "A2", "B", "C"]


def test_max_chars_cuts_the_stream(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"text": "abcd"}, {"text": "efgh"}, {"text": "ijkl"}])
    assert list(open_corpus(str(tmp_path / "a.jsonl"), max_chars=6).read()) == ["abcd", "ef"]


def test_malformed_jsonl_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "fine"}\n{"text": "broken\n')
    corpus = open_corpus(str(path))
    with pytest.raises(ConfigError, match=r"bad\.jsonl line 2: not valid JSON") as err:
        list(corpus.read())
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("row", [{"content": "x"}, {"text": 3}, ["text"]])
def test_jsonl_line_without_the_field_is_an_error(tmp_path, row):
    path = write_jsonl(tmp_path / "a.jsonl", [{"text": "ok"}, row])
    with pytest.raises(ConfigError, match=r"a\.jsonl line 2: no string field 'text'"):
        list(open_corpus(str(path)).read())


def test_non_utf8_txt_is_an_error(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"ok \xff\xfe")
    with pytest.raises(ConfigError, match=r"a\.txt: not UTF-8 text \(bad byte at offset 3\)"):
        list(open_corpus(str(tmp_path / "a.txt")).read())


@pytest.mark.parametrize("name, match", [
    ("missing.txt", "data path '.*missing.txt' does not exist"),
    ("data.csv", "must end in .txt or .jsonl"),
    ("empty_dir", "holds no .txt or .jsonl files"),
])
def test_bad_paths_raise_config_error(tmp_path, name, match):
    (tmp_path / "data.csv").write_text("a,b\n")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(ConfigError, match=match):
        open_corpus(str(tmp_path / name))


def test_identity_follows_content_not_timestamps(tmp_path):
    path = write_text(tmp_path / "a.txt", "same")
    first = open_corpus(str(path)).identity
    path.write_text("same")
    assert open_corpus(str(path)).identity == first
    path.write_text("changed")
    assert open_corpus(str(path)).identity != first
    assert open_corpus(str(path), text_field="body").identity != open_corpus(str(path)).identity
