"""Language-modelling data: corpora, tokenizers, cached token shards, and batches.

    from attractor.data import DataConfig, prepare, TokenBatches, val_batches
    data = prepare(DataConfig(source="kjv", tokenizer="bpe", vocab_size=4096))
    batches = TokenBatches(data.train, batch_size=32, seq_len=256, seed=0)
    idx, targets = next(batches)            # (32, 256) int64 each

See docs/data.md. Imports nothing above itself (no models, tasks or trainer).
"""

from attractor.data.batches import TokenBatches, val_batches
from attractor.data.corpus import Corpus, kjv_documents, open_corpus
from attractor.data.shards import DataConfig, PreparedData, cache_key, prepare
from attractor.data.tokenizer import Tokenizer, bytes_tokenizer, load_tokenizer, tokenizer_from_json, train_bpe

__all__ = ["Corpus", "DataConfig", "PreparedData", "TokenBatches", "Tokenizer", "bytes_tokenizer", "cache_key",
           "kjv_documents", "load_tokenizer", "open_corpus", "prepare", "tokenizer_from_json", "train_bpe",
           "val_batches"]

# Puzzle data (docs/data.md, "Puzzles"): Sudoku solver/rater/generator, mazes, augmentations, datasets.
from attractor.data import augment, maze, puzzles, sudoku  # noqa: E402
from attractor.data.puzzles import build_maze, build_sudoku, load_puzzles  # noqa: E402

__all__ += ["augment", "build_maze", "build_sudoku", "load_puzzles", "maze", "puzzles", "sudoku"]
