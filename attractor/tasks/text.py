"""Language modelling: text tokenized into a token stream, next-token loss and perplexity.

    data = TEXT.load(run)                        # PreparedData: tokenizer, train and val streams
    batches = TEXT.batches(run, data)            # random windows of the model's context
    val = TEXT.validation(run, data)             # the validation split's first windows

The data config is attractor.data.DataConfig (corpus, tokenizer, cache); a model's default
tokenizer follows its vocabulary (bytes for 256, BPE of that size else), and the model's
vocabulary must equal the tokenizer's. A checkpoint keeps the tokenizer (tokenizer.json).
"""

from __future__ import annotations

import json

import torch.distributed as dist

from attractor.data import DataConfig, TokenBatches, prepare, tokenizer_from_json, val_batches
from attractor.errors import ConfigError
from attractor.schema import require
from attractor.tasks.base import Task, register


class TextTask(Task):
    name = "text"
    data_config = DataConfig
    evaluator = "evaluate"  # loss, perplexity and the solve's statistics
    model_kind = "language model"
    reads = "it reads text"
    continues_text = True

    def default_data(self, model) -> DataConfig:
        return DataConfig(tokenizer="bytes" if model.vocab_size == 256 else "bpe", vocab_size=model.vocab_size)

    def check_config(self, model, data: DataConfig) -> None:
        require(model.vocab_size == data.vocab_size,
                f"model.vocab_size={model.vocab_size} must equal data.vocab_size={data.vocab_size} "
                "(the tokenizer's); set data.vocab_size and the model follows")

    def load(self, run, rank: int = 0, world: int = 1):
        """PreparedData: rank 0 tokenises, the other ranks wait and read its cache."""
        if world > 1 and rank != 0:
            dist.barrier()
        data = prepare(run.data, rank_zero=rank == 0, progress=rank == 0)
        if world > 1 and rank == 0:
            dist.barrier()
        if data.tokenizer.vocab_size != run.model.vocab_size:
            raise ConfigError(f"tokenizer has {data.tokenizer.vocab_size} tokens but the model expects "
                              f"{run.model.vocab_size}")
        return data

    def batches(self, run, data, rank: int = 0, world: int = 1) -> TokenBatches:
        return TokenBatches(data.train, run.train.micro_batch, run.model.seq_len, seed=run.train.seed, rank=rank,
                            world_size=world)

    def validation(self, run, data) -> list:
        """Windows of the model's context from the validation split, in order."""
        return val_batches(data.val, run.train.micro_batch, run.model.seq_len, max_batches=run.train.eval_batches)

    def vocab(self, data):
        return data.tokenizer

    def vocab_json(self, vocab) -> str:
        return json.dumps(vocab.to_json())

    def vocab_from_json(self, text: str, where: str):
        return tokenizer_from_json(text, where=where)

    def eval_metrics(self, record: dict) -> str:
        return f", ppl {record['val_ppl']:.2f}"


TEXT = register(TextTask())
