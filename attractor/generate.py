"""Sampling text from a trained language model, with a KV cache where the model has one.

Each new token's logits come from a `Context`: with a cache (attractor.kvcache; the default
wherever the model's `can_cache(iters)` says yes: the transformer, and the equilibrium and looped
models at a fixed depth) only the new token runs through the model, against the keys and values of
the earlier ones; without one (`cache=False`, `attractor generate --no-cache`, and adaptive
solves) the model re-runs on the whole context. Both give the same tokens and logits up to rounding.

Contexts longer than seq_len, one rule for both paths: the model sees the last seq_len tokens (a
sliding window). Uncached, every forward feeds them; cached, a token that does not fit the full
cache rebuilds it over the last seq_len tokens, whose positions have all shifted, so past seq_len
each token costs one forward over the window either way.

`stream` yields the new tokens one at a time (what `attractor generate` prints as they come),
`sample` returns them as one list, and `TextPieces` turns them into text that is safe to print
piece by piece.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

from attractor.kvcache import KVCache

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


class Context:
    """The tokens of one sequence so far and the logits of the next one, cached or not.

    `logits()` is the next token's (V,) float32 logits under the sliding-window rule of the module
    docstring; `append(token)` adds a token. With `cache` (where the model supports one at
    `iters`) the tokens not yet in the KV cache are fed against it, the cache rebuilt over the
    last seq_len tokens when they do not fit; otherwise the model runs on the last seq_len tokens.
    """

    def __init__(self, model: nn.Module, prompt: list[int], iters: int | None = None, cache: bool = True):
        self.model, self.seq_len = model, model.cfg.seq_len
        self.kwargs = {} if iters is None else {"iters": iters}
        can_cache = getattr(model, "can_cache", None)
        self.cached = bool(cache and can_cache is not None and can_cache(iters))
        self.device = next(model.parameters()).device
        self.ids = torch.tensor([prompt], dtype=torch.long, device=self.device)
        self.kv: KVCache | None = None
        self.fed = 0  # ids[:, :fed] have been fed to the cache (its window of them)

    def append(self, token: int | Tensor) -> None:
        """Add one token id to the sequence."""
        self.ids = torch.cat([self.ids, torch.as_tensor(token, device=self.device).view(1, 1)], 1)

    @torch.no_grad()
    def logits(self) -> Tensor:
        """The next token's logits (V,), float32."""
        if not self.cached:
            return self.model(self.ids[:, -self.seq_len:], **self.kwargs).logits[0, -1]
        new = self.ids.shape[1] - self.fed  # tokens not yet in the cache
        if self.kv is None or self.kv.length + new > self.seq_len:  # start, or a full window: rebuild
            self.kv = KVCache(self.seq_len)
            feed = self.ids[:, -self.seq_len:]
        else:
            feed = self.ids[:, self.fed:]
        self.fed = self.ids.shape[1]
        return self.model(feed, cache=self.kv, **self.kwargs).logits[0, -1]


def stream(model: nn.Module, prompt: list[int], *, max_new_tokens: int = 200, iters: int | None = None,
           temperature: float = 1.0, top_k: int | None = None, seed: int = 0, cache: bool = True) -> Iterator[int]:
    """Continue `prompt` (token ids) by up to max_new_tokens tokens, yielding each new id as soon
    as it is drawn (so a caller can show it, or stop early).

    Args:
        iters: the recurrent models' depth (None: adaptive / the model's own rule).
        temperature: 0 picks the most likely token (greedy); > 0 samples from softmax(logits / T).
        top_k: sample only among the k most likely tokens (at most the vocabulary's size).
        seed: the sampler's own generator, so a call is repeatable whatever else ran before.
        cache: use a KV cache where the model supports one at `iters` (False: re-run the model
            on the whole context for every token); the same tokens either way, up to rounding.
    Raises ValueError at the call, before any token, for an empty prompt or an option that
    cannot work (check_options).
    """
    if not prompt:
        raise ValueError("the prompt must hold at least one token")
    check_options(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                  vocab_size=model.cfg.vocab_size)
    return _stream(model, prompt, max_new_tokens, iters, temperature, top_k, seed, cache)


@torch.no_grad()
def _stream(model: nn.Module, prompt: list[int], max_new_tokens: int, iters: int | None, temperature: float,
            top_k: int | None, seed: int, cache: bool) -> Iterator[int]:
    model.eval()
    context = Context(model, prompt, iters, cache)
    generator = torch.Generator(device=context.device).manual_seed(seed)
    for _ in range(max_new_tokens):
        logits = context.logits()  # (V,)
        if temperature == 0:
            nxt = logits.argmax()
        else:
            logits = logits / temperature
            if top_k is not None:
                kth = torch.topk(logits, min(top_k, logits.numel())).values[-1]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            nxt = torch.multinomial(torch.softmax(logits, -1), 1, generator=generator)
        context.append(nxt)
        yield int(nxt)


def sample(model: nn.Module, prompt: list[int], *, max_new_tokens: int = 200, iters: int | None = None,
           temperature: float = 1.0, top_k: int | None = None, seed: int = 0, cache: bool = True) -> list[int]:
    """The new token ids (without the prompt) of `stream` with the same arguments, as one list."""
    return list(stream(model, prompt, max_new_tokens=max_new_tokens, iters=iters, temperature=temperature,
                       top_k=top_k, seed=seed, cache=cache))


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
