"""The "hf:" source: its logic on a stand-in `datasets` module (always), the real package on a
local dataset when it is installed (the optional `data` extra), and one-line errors without the
package or without the hub. No test touches the network."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
from textdata import data_config, write_jsonl

from attractor.data import prepare
from attractor.errors import ConfigError


class StandInDatasets(types.ModuleType):
    """Just enough of `datasets` for corpus.py: load_dataset streams rows; it counts the calls."""

    class DatasetDict(dict):
        pass

    def __init__(self, rows=(), fail_on_load=None, fail_on_read=None):
        super().__init__("datasets")
        self.rows, self.fail_on_load, self.fail_on_read, self.calls = list(rows), fail_on_load, fail_on_read, []

    def load_dataset(self, name, config=None, split=None, streaming=False):
        self.calls.append((name, config, split, streaming))
        if self.fail_on_load:
            raise self.fail_on_load

        def stream():
            yield from self.rows
            if self.fail_on_read:
                raise self.fail_on_read
        return stream()

    def load_from_disk(self, path):
        raise AssertionError("only save_to_disk folders go through load_from_disk")


ROWS = [{"text": f"document {i} about the sea and the sky.", "id": i} for i in range(50)]


def test_missing_datasets_package_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(ConfigError, match=r"needs the optional datasets package: pip install 'attractor-models\[data\]'") as err:
        prepare(data_config(tmp_path, source="hf:HuggingFaceFW/fineweb-edu:sample-10BT"))
    assert "\n" not in str(err.value)


def test_hub_dataset_streams_train_split_of_named_config(tmp_path, monkeypatch):
    fake = StandInDatasets(ROWS)
    monkeypatch.setitem(sys.modules, "datasets", fake)
    data = prepare(data_config(tmp_path, source="hf:org/name:cfg", val_fraction=0.1))
    assert fake.calls == [("org/name", "cfg", "train", True)]
    text = "".join(r["text"] + "\n\n" for r in ROWS)
    assert data.tokenizer.decode(np.concatenate([data.train, data.val])) == text
    assert data.key.startswith("hf-org-name-bytes256-")
    assert prepare(data_config(tmp_path, source="hf:org/name:cfg", val_fraction=0.1)).from_cache
    assert len(fake.calls) == 1  # the cache key needs no download


def test_bpe_on_a_hub_dataset_downloads_once(tmp_path, monkeypatch):
    fake = StandInDatasets(ROWS)
    monkeypatch.setitem(sys.modules, "datasets", fake)
    data = prepare(data_config(tmp_path, source="hf:org/name", tokenizer="bpe", vocab_size=280, max_chars=900))
    assert len(fake.calls) == 1 and fake.calls[0][1] is None  # spooled once, then read twice locally
    kept = "".join(r["text"] for r in ROWS)[:900]  # max_chars counts document text only
    decoded = data.tokenizer.decode(np.concatenate([data.train, data.val]).tolist())
    assert decoded.replace("\n\n", "") == kept and decoded.endswith("\n\n")
    assert sorted(p.name for p in data.path.iterdir()) == ["meta.json", "tokenizer.json", "train.bin", "val.bin"]


@pytest.mark.parametrize("fake, match", [
    (StandInDatasets(fail_on_load=ConnectionError("Couldn't reach 'org/name' on the Hub\nmore")), "ConnectionError: Couldn't reach"),
    (StandInDatasets(ROWS[:3], fail_on_read=OSError("read timed out")), "OSError: read timed out"),
    (StandInDatasets([{"body": "x"}]), r"has no string field 'text' \(found \['body'\]\)"),
])
def test_hub_failures_are_one_line(tmp_path, monkeypatch, fake, match):
    monkeypatch.setitem(sys.modules, "datasets", fake)
    with pytest.raises(ConfigError, match=match) as err:
        prepare(data_config(tmp_path, source="hf:org/name"))
    assert "\n" not in str(err.value)
    assert not [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]  # no half-built folder


def test_real_datasets_reads_a_local_folder(tmp_path):
    pytest.importorskip("datasets", reason="the optional `data` extra (datasets) is not installed")
    write_jsonl(tmp_path / "ds" / "part-0.jsonl", [{"body": "alpha beta"}, {"body": "gamma"}])
    data = prepare(data_config(tmp_path, source=f"hf:{tmp_path / 'ds'}", text_field="body", val_fraction=0.2))
    assert data.tokenizer.decode(np.concatenate([data.train, data.val])) == "alpha beta\n\ngamma\n\n"
    assert data.key.startswith("hf-ds-bytes256-")


def test_real_datasets_without_the_hub_is_one_line(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets", reason="the optional `data` extra (datasets) is not installed")
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # stands in for an unreachable hub, without waiting on one
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConfigError, match="cannot read Hugging Face dataset 'hf:no-such-org/no-such-data'") as err:
        prepare(data_config(tmp_path, source="hf:no-such-org/no-such-data"))
    assert "\n" not in str(err.value)
