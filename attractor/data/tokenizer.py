"""Tokenizers: raw UTF-8 bytes, or a byte-level BPE trained with Hugging Face `tokenizers`.

Both map any string to ids and back without loss (`decode(encode(s)) == s`), since byte-level
BPE works on bytes too (the GPT-2 scheme, Radford et al. 2019). A tokenizer is saved as one JSON
file beside the run, written atomically, so a run can always be decoded later:

    {"format": "attractor-tokenizer", "version": 1, "kind": "bpe", "vocab_size": 4096,
     "bpe": {...the tokenizers library's own JSON...}}
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from attractor.errors import ConfigError
from attractor.io import atomic_write_text

FORMAT = "attractor-tokenizer"
VERSION = 1


class Tokenizer:
    """Text <-> token ids. `kind` is "bytes" (ids are the UTF-8 bytes, vocab 256) or "bpe".

    `vocab_size` is the size of the id space a model needs (the embedding rows): every id from
    `encode` is below it. A BPE trained on a small text may learn fewer merges than asked for, in
    which case some ids are never produced.
    """

    def __init__(self, kind: str, vocab_size: int, bpe=None):
        if kind == "bytes" and (vocab_size != 256 or bpe is not None):
            raise ConfigError(f"a bytes tokenizer has vocab_size 256, got {vocab_size}")
        if kind == "bpe" and bpe is None:
            raise ConfigError("a bpe tokenizer needs its trained model")
        if kind not in ("bytes", "bpe"):
            raise ConfigError(f"unknown tokenizer kind {kind!r} (known: bpe, bytes)")
        self.kind = kind
        self.vocab_size = vocab_size
        self._bpe = bpe  # tokenizers.Tokenizer or None

    def __repr__(self) -> str:
        return f"Tokenizer(kind={self.kind!r}, vocab_size={self.vocab_size})"

    def encode(self, text: str) -> list[int]:
        if self._bpe is None:
            return list(text.encode("utf-8"))
        return self._bpe.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """encode() of each text; BPE encodes them in parallel (Rust threads)."""
        if self._bpe is None:
            return [list(t.encode("utf-8")) for t in texts]
        return [e.ids for e in self._bpe.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; byte sequences that are not valid UTF-8 (a cut multi-byte character,
        a sampled mess) decode with U+FFFD replacement characters instead of raising."""
        ids = [int(i) for i in ids]
        if self._bpe is None:
            bad = [i for i in ids if not 0 <= i < 256]
            if bad:
                raise ValueError(f"byte ids must be in [0, 256), got {bad[0]}")
            return bytes(ids).decode("utf-8", errors="replace")
        return self._bpe.decode(ids, skip_special_tokens=False)

    def to_json(self) -> dict:
        out = {"format": FORMAT, "version": VERSION, "kind": self.kind, "vocab_size": self.vocab_size}
        if self._bpe is not None:
            out["bpe"] = json.loads(self._bpe.to_str())
        return out

    def save(self, path) -> None:
        """Write the tokenizer as JSON to `path`, atomically (a temporary name, then os.replace)."""
        atomic_write_text(Path(path), json.dumps(self.to_json(), ensure_ascii=False))

    def __eq__(self, other) -> bool:
        return isinstance(other, Tokenizer) and self.to_json() == other.to_json()

    __hash__ = None


def bytes_tokenizer() -> Tokenizer:
    return Tokenizer("bytes", 256)


def train_bpe(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """Train a byte-level BPE of at most `vocab_size` ids on `texts` (an iterable of documents).

    The 256 byte symbols are always in the vocabulary, so any text encodes; merges fill the rest.
    Training is deterministic for a given text and vocab size.
    """
    if not isinstance(vocab_size, int) or vocab_size < 257:
        raise ConfigError(f"a bpe tokenizer needs vocab_size > 256 (the byte alphabet), got {vocab_size!r}")
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    bpe = HFTokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(texts, trainer=trainer)
    return Tokenizer("bpe", vocab_size, bpe)


def load_tokenizer(path) -> Tokenizer:
    """The tokenizer saved at `path`; a missing, truncated or foreign file raises one ConfigError line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"tokenizer file '{path}' does not exist") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"tokenizer file '{path}' is corrupt ({type(err).__name__}: {err})") from None
    return tokenizer_from_json(text, where=f"tokenizer file '{path}'")


def tokenizer_from_json(data: str | dict, where: str = "tokenizer JSON") -> Tokenizer:
    """The tokenizer from `Tokenizer.to_json()`'s dict or its JSON text (as a checkpoint keeps it).

    A truncated, foreign or wrong-version input raises one ConfigError line starting with `where`.
    """
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{where} is corrupt (JSONDecodeError: {err})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ConfigError(f"{where} is not an attractor tokenizer (no format {FORMAT!r})")
    if data.get("version") != VERSION:
        raise ConfigError(f"{where} has version {data.get('version')!r}; this code reads {VERSION}")
    kind, vocab_size = data.get("kind"), data.get("vocab_size")
    if kind == "bytes":
        return Tokenizer("bytes", vocab_size)
    if kind == "bpe" and isinstance(vocab_size, int) and isinstance(data.get("bpe"), dict):
        from tokenizers import Tokenizer as HFTokenizer

        try:
            bpe = HFTokenizer.from_str(json.dumps(data["bpe"]))
        except Exception as err:  # the Rust side raises its own Exception type
            raise ConfigError(f"{where} holds a broken BPE model ({err})") from None
        return Tokenizer("bpe", vocab_size, bpe)
    raise ConfigError(f"{where} is corrupt (kind={kind!r}, vocab_size={vocab_size!r})")
