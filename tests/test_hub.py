"""Sharing a model (attractor/hub.py): `attractor export` writes a folder that
`attractor.from_pretrained` loads offline into the same model (logits, greedy tokens, config,
tokenizer), with a model card holding the numbers `attractor eval` prints; huggingface_hub's mixin
saves, loads and pushes every family (the upload itself is replaced here, nothing leaves the
machine); loading and generating import neither the trainer nor the corpus and shard code.

    .venv/bin/python -m pytest tests/test_hub.py -q
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ARCH, sets, tiny_settings

import attractor
from attractor.cli import main
from attractor.generate import sample
from attractor.hub import FILES, from_pretrained, hub_class, hub_model, preset_of
from attractor.io import CheckpointError
from attractor.models import config, config_from_dict, from_config
from attractor.run import load_run

huggingface_hub = pytest.importorskip("huggingface_hub")

BATCHES = 2  # validation batches of the exports and of the `attractor eval` they are checked against


@pytest.fixture(scope="module")
def exports(tmp_path_factory, corpus) -> dict[str, tuple[Path, Path]]:
    """{preset: (run directory, exported folder)}: a 2-step tiny run of each language-model family."""
    root = tmp_path_factory.mktemp("hub")
    out = {}
    for preset in ARCH:
        run, folder = root / preset, root / f"{preset}-hf"
        assert main(["train", preset, "--out", str(run), "--data", str(corpus), "--steps", "2", "--quiet",
                     *sets(tiny_settings(preset, root / "cache"))]) == 0
        assert main(["export", str(run), "--out", str(folder), "--batches", str(BATCHES)]) == 0
        out[preset] = run, folder
    return out


def one_line_error(capsys, argv: list[str], *matches: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("attractor: error:") and all(m in err for m in matches), err
    return err


@pytest.mark.parametrize("preset", list(ARCH))
def test_export_loads_back_into_the_same_model(exports, preset):
    run, folder = exports[preset]
    assert sorted(p.name for p in folder.iterdir()) == sorted(FILES)
    original, tokenizer, run_config, _ = load_run(run)
    loaded = attractor.from_pretrained(folder)
    assert type(loaded) is type(original) and not loaded.training
    assert loaded.cfg == original.cfg == run_config.model
    assert config_from_dict(json.loads((folder / "config.json").read_text())) == original.cfg
    assert loaded.tokenizer == tokenizer
    idx = torch.randint(0, original.cfg.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(loaded(idx).logits, original(idx).logits, rtol=0, atol=1e-6)
    prompt = tokenizer.encode("the cat")
    assert sample(loaded, prompt, max_new_tokens=8, temperature=0) == sample(original, prompt, max_new_tokens=8,
                                                                              temperature=0)


def test_generate_takes_an_exported_folder_as_it_takes_the_run(exports, capsys):
    run, folder = exports["attractor-1m"]
    argv = ["--prompt", "the cat", "--max-new-tokens", "12", "--temperature", "0", "--json"]
    assert main(["generate", str(run), *argv]) == 0
    from_run = capsys.readouterr().out
    assert main(["generate", str(folder), *argv]) == 0
    assert capsys.readouterr().out == from_run and '"tokens"' in from_run


@pytest.mark.parametrize("preset", ["attractor-1m", "transformer-1m"])
def test_the_card_holds_the_numbers_attractor_eval_prints(exports, capsys, preset):
    run, folder = exports[preset]
    capsys.readouterr()
    assert main(["eval", str(run), "--batches", str(BATCHES), "--iters", "0,1,4,adaptive", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["sweep"]
    card = (folder / "README.md").read_text()
    front, body = card.split("---\n")[1], card.split("---\n", 2)[2]
    assert {"library_name: attractor", "license: mit", "tags:", "- attractor"} <= set(front.splitlines())
    model = attractor.from_pretrained(folder)
    counts = model.parameter_counts()
    assert f"{counts['dense']:,} dense" in body and f"{counts['total']:,} total" in body
    assert "| preset | none" in body  # the tiny run's config is no preset's
    assert "at training step 2" in body and "training data | " in body and Path(
        json.loads((run / "config.json").read_text())["data"]["source"]).name in body
    own = rows[-1]
    assert f"**{own['val_loss']:.4f}**" in body
    assert f"on {BATCHES} validation batches ({own['val_tokens']} tokens)" in body
    if model.has_depth:
        assert [r["iters"] for r in rows] == [0, 1, 4, "adaptive"]
        for r in rows:
            assert f"| {r['iters']} | {r['val_loss']:.4f} | {r['val_ppl']:.3f} |" in body
    else:
        assert len(rows) == 1 and "Depth sweep" not in body


def test_save_pretrained_and_from_pretrained_through_the_mixin(exports, tmp_path):
    _, folder = exports["attractor-1m"]
    model = hub_model(attractor.from_pretrained(folder))
    assert isinstance(model, huggingface_hub.PyTorchModelHubMixin) and type(model).__name__ == "AttractorLM"
    model.save_pretrained(tmp_path / "again")
    for name in FILES:  # a loaded model saves the folder it came from, card included
        assert (tmp_path / "again" / name).read_bytes() == (folder / name).read_bytes(), name
    cls = type(model)
    assert cls is hub_class(type(attractor.from_pretrained(folder)))
    reloaded = cls.from_pretrained(tmp_path / "again")
    assert type(reloaded) is cls and not reloaded.training and reloaded.tokenizer == model.tokenizer
    idx = torch.randint(0, 256, (1, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(reloaded(idx).logits, model(idx).logits)
    other = hub_class(type(attractor.from_pretrained(exports["transformer-1m"][1])))
    with pytest.raises(CheckpointError, match="attractor family"):
        other.from_pretrained(folder)


def test_push_to_hub_uploads_the_saved_folder(exports, monkeypatch):
    _, folder = exports["deq-1m"]
    uploads = []

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        uploads.append((repo_id, {p.name: p.read_bytes() for p in Path(folder_path).iterdir()}))
        return f"https://huggingface.co/{repo_id}/commit/0"

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo",
                        lambda self, repo_id, **kwargs: huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}"))
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    hub_model(attractor.from_pretrained(folder)).push_to_hub("someone/deq-tiny")
    [(repo, files)] = uploads
    assert repo == "someone/deq-tiny" and files == {name: (folder / name).read_bytes() for name in FILES}


def test_a_repo_id_loads_through_snapshot_download(exports, monkeypatch):
    _, folder = exports["deq-1m"]
    calls = []

    def snapshot_download(*, repo_id, allow_patterns, **kwargs):  # the download, replaced: the exported folder
        calls.append((repo_id, allow_patterns))
        return str(folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    model = attractor.from_pretrained("someone/deq-tiny")
    assert calls == [("someone/deq-tiny", list(FILES))] and model.cfg == attractor.from_pretrained(folder).cfg


@pytest.mark.parametrize("preset", ["trm-cpu", "puzzle-transformer-cpu", "parity-local", "maze-local"])
def test_every_other_family_saves_and_loads_through_the_mixin(tmp_path, preset):
    torch.manual_seed(0)
    model = hub_model(from_config(config(preset)))
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert f"| preset | {preset} |" in (tmp_path / "README.md").read_text() and preset_of(model.cfg) == preset
    loaded = type(model).from_pretrained(tmp_path)
    assert loaded.cfg == model.cfg and loaded.tokenizer is None
    state = loaded.state_dict()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_export_refuses_a_folder_that_is_not_empty(exports, capsys, tmp_path):
    run, folder = exports["transformer-1m"]
    (tmp_path / "notes.txt").write_text("mine")
    one_line_error(capsys, ["export", str(run), "--out", str(tmp_path / "new"), "--batches", "0"], "--batches=0")
    one_line_error(capsys, ["export", str(run), "--out", str(tmp_path)], "not empty", "--force")
    one_line_error(capsys, ["export", str(run), "--out", str(tmp_path), "--force"], "other than an export")
    one_line_error(capsys, ["export", str(run), "--out", str(exports["looped-1m"][0]), "--force"],
                   "other than an export")  # a run directory is never replaced
    checkpoint = next(exports["looped-1m"][0].glob("ckpt-*"))  # config.json and model.safetensors, and a manifest
    one_line_error(capsys, ["export", str(run), "--out", str(checkpoint), "--force"], "other than an export")
    assert (tmp_path / "notes.txt").read_text() == "mine"
    again = tmp_path / "again"
    shutil.copytree(exports["looped-1m"][1], again)  # an earlier export of another model
    assert main(["export", str(run), "--out", str(again), "--batches", "1", "--force"]) == 0
    assert "exported TransformerLM at step 2" in capsys.readouterr().out
    assert type(attractor.from_pretrained(again)).__name__ == "TransformerLM"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again", "notes.txt"]  # no temporary folder left


def test_a_missing_or_corrupt_config_is_one_line(exports, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(exports["attractor-1m"][1], broken)
    for text, match in (("{", "config.json: corrupt"), ('{"family": "atractor"}', "attractor"),
                        (None, "no config.json")):
        if text is None:
            (broken / "config.json").unlink()
        else:
            (broken / "config.json").write_text(text)
        with pytest.raises(CheckpointError, match=match) as err:
            from_pretrained(broken)
        assert "\n" not in str(err.value)
    with pytest.raises(CheckpointError, match="no such folder") as err:
        from_pretrained(tmp_path / "missing")  # not a folder, nor a valid repo id: nothing is downloaded
    assert "\n" not in str(err.value)


def test_loading_and_generating_import_neither_the_trainer_nor_the_corpus_code(exports):
    _, folder = exports["looped-1m"]
    code = ("import sys, attractor\nfrom attractor.generate import sample\n"
            f"model = attractor.from_pretrained({str(folder)!r})\n"
            "print(model.tokenizer.decode(sample(model, model.tokenizer.encode('the'), max_new_tokens=4)))\n"
            "print(*sys.modules)")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    forbidden = ("attractor.train", "attractor.run", "attractor.config", "attractor.tasks", "attractor.data.corpus",
                 "attractor.data.shards", "attractor.data.batches", "huggingface_hub")
    assert "attractor.hub" in loaded and not [m for m in loaded if m.startswith(forbidden)]
