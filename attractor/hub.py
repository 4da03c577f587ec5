"""Sharing a model the way the field does: a folder of safetensors, config.json, tokenizer and
model card, which loads without the run, its data or the trainer.

    attractor export runs/a1 --out hf/a1           # a run's model, with its validation sweep
    model = attractor.from_pretrained("hf/a1")      # offline; or a hub repo id (the hub extra)
    ids = sample(model, model.tokenizer.encode("And God"), max_new_tokens=50)  # attractor.generate.sample
    print(model.tokenizer.decode(ids))

The folder (FILES):

    model.safetensors   the weights (the model's state_dict; a run's averaged weights where train.ema is set)
    config.json         the model config as registry.config_to_dict writes it: {"family": "attractor", "d": 128, ...}
    tokenizer.json      the run's tokenizer (attractor.data.tokenizer's JSON); language models only
    README.md           the model card: YAML front matter (library_name: attractor, license, tags), then the
                        preset, parameter counts, training data, validation loss and depth sweep (`model_card`)

Design. The model classes do not depend on huggingface_hub. Writing and reading the folder are
plain functions here (`save_folder`, `load_folder`: safetensors and json, core dependencies), so
`attractor export` and `from_pretrained` of a local folder work without the hub extra and never
import it (it adds about a second to start-up). The hub's methods come from `hub_class(cls)`: a
subclass of a family's model class and huggingface_hub's PyTorchModelHubMixin, made on first use,
whose `_save_pretrained` and `_from_pretrained` are those two functions; `hub_model(model)` gives
a model that class in place (the same object, with the methods added). So every family, the
puzzle and growing-task models too (their folders have no tokenizer.json), gets
`save_pretrained(dir)`, `from_pretrained(dir_or_repo)` and `push_to_hub(repo)`, and
`save_pretrained(from_pretrained(d))` writes d's files again (a loaded model keeps its card).

A loaded model is in eval mode and carries `model.tokenizer` (an attractor.data.Tokenizer, None
without tokenizer.json) and `model.card` (the README text). Loading imports attractor.models,
attractor.schema, attractor.data.tokenizer and safetensors: not the trainer, the corpora or the
token shards.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from attractor import io
from attractor.errors import ConfigError
from attractor.io import CheckpointError
from attractor.models.registry import (FAMILIES, MODEL_OF, PRESETS, config_from_dict, config_to_dict, family_of,
                                       with_weights)

FILES = ("model.safetensors", "config.json", "tokenizer.json", "README.md")
PAPER = "https://arxiv.org/abs/2605.12466"
SWEEP_DEPTHS = [0, 1, 4, None]  # the card's depth sweep: the proposal, 1 and 4 steps, the model's own depth
HUB_EXTRA = "pip install 'attractor-models[hub]'"


# ---------------------------------------------------------------- the folder

def save_folder(model: nn.Module, folder: str | Path, *, tokenizer=None, card: str | None = None) -> list[Path]:
    """Write FILES for `model` into `folder` (created if missing, not its parents), each file
    atomically; returns their paths.

    tokenizer: an attractor.data.Tokenizer (None: no tokenizer.json). card: the README text
    (None: the model's own `card` where it was loaded with one, else `model_card(model)`).
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    weights = folder / "model.safetensors"
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".model.safetensors.", suffix=".tmp")
    os.close(fd)
    try:  # safetensors writes to a path: a temporary one, renamed into place
        save_file(tensors, tmp, metadata={"format": "pt"})  # one key: the header then has one order
        os.chmod(tmp, 0o666 & ~io.current_umask())
        os.replace(tmp, weights)
    finally:
        Path(tmp).unlink(missing_ok=True)
    io.atomic_write_json(folder / "config.json", config_to_dict(model.cfg))
    written = [weights, folder / "config.json"]
    if tokenizer is not None:
        tokenizer.save(folder / "tokenizer.json")
        written.append(folder / "tokenizer.json")
    card = card if card is not None else getattr(model, "card", None) or model_card(model, tokenizer=tokenizer)
    io.atomic_write_text(folder / "README.md", card)
    return [*written, folder / "README.md"]


def is_folder(path: str | Path) -> bool:
    """Whether path holds a shared model's folder (model.safetensors beside config.json), not a
    run directory or a checkpoint (which has a manifest.json)."""
    path = Path(path)
    return (all((path / name).is_file() for name in ("config.json", "model.safetensors"))
            and not (path / "manifest.json").exists())


def check_new_folder(out: str | Path, force: bool = False) -> Path:
    """`out` as a Path if write_new_folder may write it: a missing folder in a writable one, an
    empty folder, or with `force` an earlier export (config.json and model.safetensors), never a
    run or other files. Otherwise a ConfigError of one line naming --out. Creates nothing."""
    out = io.check_writable_dir(out, "--out")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise ConfigError(f"--out {out}: exists and is not empty; choose another folder, or pass --force "
                              "to replace an earlier export")
        if not is_folder(out):
            raise ConfigError(f"--out {out}: holds files other than an export; --force replaces only an earlier "
                              "export, so choose another folder")
    return out


def write_new_folder(out: str | Path, model: nn.Module, *, tokenizer=None, card: str | None = None,
                     force: bool = False) -> list[Path]:
    """save_folder into a temporary folder beside `out`, renamed to `out` once complete: a reader
    never sees half an export. `out` must pass check_new_folder."""
    out = check_new_folder(out, force)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    old = None
    try:
        os.chmod(tmp, 0o777 & ~io.current_umask())  # mkdtemp makes it private; the folder is for sharing
        names = [p.name for p in save_folder(model, tmp, tokenizer=tokenizer, card=card)]
        if out.exists():  # empty, or an earlier export (--force): moved aside, removed once the new one is in
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.replace(out, old)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not out.exists():
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return [out / name for name in names]


def load_folder(folder: str | Path, *, device: str | torch.device = "cpu") -> nn.Module:
    """The model a folder of FILES holds, on `device`, in eval mode, with `model.tokenizer` (None
    without tokenizer.json) and `model.card` (the README text, None without one). A missing or
    corrupt file, or weights that do not fit config.json, is a CheckpointError of one line."""
    from safetensors.torch import load_file

    from attractor.data.tokenizer import load_tokenizer

    folder = Path(folder)
    cfg = _read_config(folder)
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise CheckpointError(f"{folder}: no model.safetensors")
    try:
        state = load_file(weights, device=str(device))
    except Exception as err:  # safetensors raises its own error types for a truncated or foreign file
        raise CheckpointError(f"{weights}: unreadable ({type(err).__name__}: {str(err).splitlines()[0]})") from None
    try:
        model = with_weights(cfg, state)
    except (RuntimeError, ValueError) as err:
        reason = next((line.strip() for line in str(err).splitlines()[1:2]), str(err).splitlines()[0])
        raise CheckpointError(f"{folder}: model.safetensors does not fit config.json ({reason[:300]})") from None
    tokenizer_file = folder / "tokenizer.json"
    try:
        model.tokenizer = load_tokenizer(tokenizer_file) if tokenizer_file.is_file() else None
    except ConfigError as err:
        raise CheckpointError(str(err)) from None
    card = folder / "README.md"
    model.card = card.read_text(encoding="utf-8") if card.is_file() else None
    return model.eval()


def _read_config(folder: Path):
    """The model config of folder/config.json; CheckpointError of one line where it is missing,
    not JSON, or not a config of ours."""
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: no such folder")
    path = folder / "config.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{folder}: no config.json (a folder that `attractor export` or save_pretrained "
                              "wrote has one)") from None
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise CheckpointError(f"{path}: corrupt ({type(err).__name__}: {str(err).splitlines()[0]})") from None
    try:
        return config_from_dict(data)
    except ConfigError as err:
        raise CheckpointError(f"{path}: {err}") from None


def from_pretrained(name: str | Path, *, device: str | torch.device = "cpu", revision: str | None = None,
                    cache_dir: str | Path | None = None, token: str | bool | None = None,
                    force_download: bool = False, local_files_only: bool = False) -> nn.Module:
    """The model of a local folder of FILES (offline), or of a hub repo id ('user/name',
    downloaded with huggingface_hub's snapshot_download: needs the hub extra); see `load_folder`
    for what it returns. An existing folder always wins over a repo of the same name; the other
    options are snapshot_download's and concern repo ids only.

        model = from_pretrained("hf/a1")
        model(idx)            # idx (B, T) token ids -> ModelOutput, logits (B, T, vocab_size)
    """
    if Path(name).is_dir():
        return load_folder(name, device=device)
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise CheckpointError(f"{name}: no such folder; to download a hub repo of that name, {HUB_EXTRA}") from None
    try:
        local = snapshot_download(repo_id=str(name), revision=revision, cache_dir=cache_dir, token=token,
                                  force_download=force_download, local_files_only=local_files_only,
                                  allow_patterns=list(FILES))
    except (OSError, ValueError) as err:  # the hub's errors: not found, offline, an invalid id
        raise CheckpointError(f"{name}: no such folder, nor a hub repo that could be downloaded "
                              f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from None
    return load_folder(local, device=device)


# ---------------------------------------------------------------- the model card

def preset_of(cfg) -> str | None:
    """The name of the preset whose config equals `cfg`, None for a config no preset gives."""
    data = config_to_dict(cfg)
    return next((name for name, make in PRESETS.items() if config_to_dict(make()) == data), None)


def model_card(model: nn.Module, *, tokenizer=None, run=None, step: int | None = None,
               sweep: list[dict] | None = None, batches: int | None = None) -> str:
    """The README of a model folder: YAML front matter, then what the model is and how it did.

    run: the RunConfig it was trained with (training data and trainer); step: the checkpoint's
    step; sweep: evaluate.depth_sweep's rows on `batches` validation batches (the adaptive row,
    or the only one, is the validation loss). Each may be None (a model saved outside a run):
    the card then leaves that part out.
    """
    family = family_of(model.cfg)
    name = type(model).__name__
    preset = preset_of(model.cfg)
    counts = model.parameter_counts() if hasattr(model, "parameter_counts") else \
        {"total": sum(p.numel() for p in model.parameters())}
    is_lm = tokenizer is not None or (run is not None and run.task.continues_text)
    tags = dict.fromkeys(["attractor", "fixed-point", family, *(["text-generation"] if is_lm else [])])  # once each
    lines = ["---", "library_name: attractor", "license: mit",
             *(["pipeline_tag: text-generation"] if is_lm else []), "tags:", *(f"- {t}" for t in tags), "---", "",
             f"# {name}" + (f" ({preset})" if preset else ""), "",
             f"A{'n' if family[0] in 'aeiou' else ''} {family} model of the attractor library (Attractor Models, "
             f"[arXiv 2605.12466]({PAPER}))"
             + (f" at training step {step}" if step is not None else "") + ".", "",
             "| | |", "|---|---|",
             f"| family | {family} (`{name}`) |",
             f"| preset | {preset or 'none: a configuration of its own (config.json)'} |",
             f"| parameters | {_params(counts)} |"]
    if hasattr(model.cfg, "seq_len") and hasattr(model.cfg, "vocab_size"):
        lines.append(f"| context | {model.cfg.seq_len} tokens, vocabulary {model.cfg.vocab_size}"
                     + (f" ({tokenizer.kind} tokenizer)" if tokenizer is not None else "") + " |")
    if run is not None:
        data = run.data
        what = getattr(data, "source", None)
        if hasattr(data, "tokenizer"):
            what = f"{what} ({data.tokenizer} tokenizer, vocabulary {data.vocab_size}; the last " \
                   f"{data.val_fraction * 100:g}% of its tokens held out for validation)"
        lines += [f"| training data | {what} |",
                  f"| training | {run.train.steps} steps of {run.train.batch_size} sequences, lr {run.train.lr:g}"
                  + (f", weights averaged (EMA {run.train.ema:g})" if run.train.ema else "") + " |"]
    if sweep:
        own = next((r for r in sweep if r["iters"] == "adaptive"), sweep[-1])
        rows = f"{batches} validation batches" if batches is not None else "the validation batches"
        depth = " at the model's own depth" if len(sweep) > 1 else ""  # a transformer has no other
        lines += ["", "## Validation", "",
                  f"Validation loss{f' at step {step}' if step is not None else ''}: **{own['val_loss']:.4f}** "
                  f"(perplexity {own['val_ppl']:.3f}){depth}, on {rows} "
                  f"({own['val_tokens']} tokens) from the start of its validation split.", ""]
        if len(sweep) > 1:
            lines += ["Depth sweep (`iters`: solver iterations or loops; 0 decodes the proposal without any):", "",
                      "| iters | loss | perplexity | mean depth | converged |", "|---|---|---|---|---|"]
            lines += [f"| {r['iters']} | {r['val_loss']:.4f} | {r['val_ppl']:.3f} | {_num(r.get('val_depth'), '.2f')} "
                      f"| {_num(r.get('val_converged'), '.3f')} |" for r in sweep]
    lines += ["", "## Use", "", "```python", "import attractor", *["from attractor.generate import sample"] * is_lm,
              "", 'model = attractor.from_pretrained("THIS_FOLDER_OR_REPO")  # a folder, or a hub repo id']
    if is_lm:
        lines += ['prompt = model.tokenizer.encode("And God said")',
                  "print(model.tokenizer.decode(sample(model, prompt, max_new_tokens=100, temperature=0.8)))"]
    lines.append("```")
    return "\n".join(lines) + "\n"


def _params(counts: dict[str, int]) -> str:
    """'983,040 dense, 1,015,808 total' (dense: without the embedding lookup table)."""
    return ", ".join(f"{n:,} {k}" for k, n in sorted(counts.items()))


def _num(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


# ---------------------------------------------------------------- huggingface_hub's mixin

@functools.cache
def hub_class(cls: type[nn.Module]) -> type[nn.Module]:
    """`cls` (a family's model class, registry.MODEL_OF) with PyTorchModelHubMixin's
    save_pretrained, from_pretrained and push_to_hub, reading and writing the folder above.
    Needs the hub extra (ConfigError naming it otherwise). One class per family, made once.

        HubAttractor = hub_class(AttractorLM)
        model = HubAttractor.from_pretrained("user/attractor-1m")     # or a local folder
        model.push_to_hub("me/attractor-1m")                          # upload_folder of FILES
    """
    try:
        from huggingface_hub import PyTorchModelHubMixin
    except ImportError:
        raise ConfigError(f"save_pretrained, from_pretrained and push_to_hub need huggingface_hub: "
                          f"{HUB_EXTRA}") from None

    class Hub(cls, PyTorchModelHubMixin, library_name="attractor", license="mit", paper_url=PAPER,
              tags=["attractor", "fixed-point"]):
        def _save_pretrained(self, save_directory: Path) -> None:
            save_folder(self, save_directory, tokenizer=getattr(self, "tokenizer", None))

        @classmethod
        def _from_pretrained(cls_, *, model_id: str, revision: str | None, cache_dir, force_download: bool,
                             local_files_only: bool, token, map_location: str = "cpu"):
            model = from_pretrained(model_id, device=map_location, revision=revision, cache_dir=cache_dir,
                                    token=token, force_download=force_download, local_files_only=local_files_only)
            if type(model) is not cls:
                raise CheckpointError(f"{model_id}: holds a model of the {family_of(model.cfg)} family "
                                      f"({type(model).__name__}), not a {cls.__name__}; load it with "
                                      "attractor.from_pretrained")
            return hub_model(model)

    Hub.__name__, Hub.__qualname__ = cls.__name__, cls.__qualname__  # messages and tables name the family's class
    return Hub


def hub_model(model: nn.Module) -> nn.Module:
    """`model` itself, now an instance of hub_class(type(model)): the same weights and state,
    with save_pretrained and push_to_hub (a loaded model's tokenizer and card go with it)."""
    cls, families = type(model), set(MODEL_OF.values())
    if cls in families:
        model.__class__ = hub_class(cls)  # a subclass that adds methods only: the object stays as it is
    elif not (cls.__bases__[0] in families and cls is hub_class(cls.__bases__[0])):
        raise ConfigError(f"{cls.__name__} is not a model family of attractor ({', '.join(FAMILIES)})")
    return model
