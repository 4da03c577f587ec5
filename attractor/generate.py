"""Sampling text from a trained language model: a plain loop without a KV cache.

Every new token re-runs the model on the last seq_len tokens. At the CPU scale this library
trains on, that costs little; a KV cache would also have to carry the attractor's per-token
fixed points, and is left for when generation speed matters.

`stream` yields the new tokens one at a time (what `attractor generate` prints as they come),
`sample` returns them as one list, and `TextPieces` turns them into text that is safe to print
piece by piece.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
from torch import nn

REPLACEMENT = "\ufffd"  # what a tokenizer's decode gives for bytes that are not (yet) a whole character


def check_options(*, max_new_tokens: int, temperature: float, top_k: int | None,
                  vocab_size: int | None = None) -> None:
    """ValueError naming the first sampling option that cannot work: max_new_tokens < 0, a
    temperature that is negative, NaN or infinite, or top_k outside [1, vocab_size]."""
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 0")
    if not (math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature={temperature} must be a finite number >= 0 (0 is greedy)")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k={top_k} must be at least 1")
    if top_k is not None and vocab_size is not None and top_k > vocab_size:
        raise ValueError(f"top_k={top_k} is above the vocabulary ({vocab_size} tokens)")


def stream(model: nn.Module, prompt: list[int], *, max_new_tokens: int = 200, iters: int | None = None,
           temperature: float = 1.0, top_k: int | None = None, seed: int = 0) -> Iterator[int]:
    """Continue `prompt` (token ids) by up to max_new_tokens tokens, yielding each new id as soon
    as it is drawn (so a caller can show it, or stop early).

    Args:
        iters: the recurrent models' depth (None: adaptive / the model's own rule).
        temperature: 0 picks the most likely token (greedy); > 0 samples from softmax(logits / T).
        top_k: sample only among the k most likely tokens (at most the vocabulary's size).
        seed: the sampler's own generator, so a call is repeatable whatever else ran before.
    Raises ValueError at the call, before any token, for an empty prompt or an option that
    cannot work (check_options).
    """
    if not prompt:
        raise ValueError("the prompt must hold at least one token")
    check_options(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                  vocab_size=model.cfg.vocab_size)
    return _stream(model, prompt, max_new_tokens, iters, temperature, top_k, seed)


@torch.no_grad()
def _stream(model: nn.Module, prompt: list[int], max_new_tokens: int, iters: int | None, temperature: float,
            top_k: int | None, seed: int) -> Iterator[int]:
    model.eval()
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    ids = torch.tensor([prompt], dtype=torch.long, device=device)
    seq_len = model.cfg.seq_len
    kwargs = {} if iters is None else {"iters": iters}
    for _ in range(max_new_tokens):
        logits = model(ids[:, -seq_len:], **kwargs).logits[0, -1]  # (V,)
        if temperature == 0:
            nxt = logits.argmax().view(1, 1)
        else:
            logits = logits / temperature
            if top_k is not None:
                kth = torch.topk(logits, min(top_k, logits.numel())).values[-1]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            nxt = torch.multinomial(torch.softmax(logits, -1), 1, generator=generator).view(1, 1)
        ids = torch.cat([ids, nxt], 1)
        yield int(nxt)


def sample(model: nn.Module, prompt: list[int], *, max_new_tokens: int = 200, iters: int | None = None,
           temperature: float = 1.0, top_k: int | None = None, seed: int = 0) -> list[int]:
    """The new token ids (without the prompt) of `stream` with the same arguments, as one list."""
    return list(stream(model, prompt, max_new_tokens=max_new_tokens, iters=iters, temperature=temperature,
                       top_k=top_k, seed=seed))


class TextPieces:
    """The text of a growing continuation, piece by piece, for printing as tokens arrive.

    A byte or BPE token may hold part of a UTF-8 character, which decodes as U+FFFD until the
    rest arrives. `add` decodes the tokens since the last whole-character boundary, returns the
    text not returned before and holds back trailing U+FFFD characters (maybe a character cut in
    two); `finish` returns what is held back. The pieces joined equal decode(all tokens), and each
    decode covers only the tokens since that boundary, so a long generation costs no more per token.
    """

    def __init__(self, decode: Callable[[list[int]], str]):
        self.decode = decode
        self.pending: list[int] = []   # tokens since the last boundary
        self.shown = 0                 # characters of decode(pending) already returned

    def add(self, token: int) -> str:
        """The new complete text once `token` is appended (maybe empty)."""
        self.pending.append(token)
        text = self.decode(self.pending)
        whole = text.rstrip(REPLACEMENT)
        piece = whole[self.shown:]
        if len(whole) == len(text):   # ends on a whole character: later tokens cannot change it
            self.pending, self.shown = [], 0
        else:
            self.shown = len(whole)
        return piece

    def finish(self) -> str:
        """The text held back (replacement characters of bytes that never became a character)."""
        piece = self.decode(self.pending)[self.shown:] if self.pending else ""
        self.pending, self.shown = [], 0
        return piece
