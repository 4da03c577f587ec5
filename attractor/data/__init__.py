"""Language-modelling data: corpora, tokenizers, cached token shards, and batches.

    from attractor.data import DataConfig, prepare, TokenBatches, val_batches
    data = prepare(DataConfig(source="kjv", tokenizer="bpe", vocab_size=4096))
    batches = TokenBatches(data.train, batch_size=32, seq_len=256, seed=0)
    idx, targets = next(batches)            # (32, 256) int64 each

See docs/data.md. Imports nothing above itself (no models, tasks or trainer).

The names below load their module on first use, so that reading a tokenizer
(`attractor.data.tokenizer`, as `attractor.from_pretrained` does) does not load the corpora,
shards and puzzle code.
"""

import importlib

# Each public name and the module that defines it.
_HOME = {
    "TokenBatches": "batches", "val_batches": "batches",
    "Corpus": "corpus", "kjv_documents": "corpus", "open_corpus": "corpus",
    "DataConfig": "shards", "PreparedData": "shards", "cache_key": "shards", "prepare": "shards",
    "Tokenizer": "tokenizer", "bytes_tokenizer": "tokenizer", "load_tokenizer": "tokenizer",
    "tokenizer_from_json": "tokenizer", "train_bpe": "tokenizer",
    # Puzzle data (docs/data.md, "Puzzles"): Sudoku solver/rater/generator, mazes, augmentations, datasets.
    "build_maze": "puzzles", "build_sudoku": "puzzles", "load_puzzles": "puzzles",
}
_MODULES = ("augment", "maze", "puzzles", "sudoku")

__all__ = sorted([*_HOME, *_MODULES])


def __getattr__(name: str):
    if name in _HOME:
        value = getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
    elif name in _MODULES:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # once: later lookups find it without this function
    return value
