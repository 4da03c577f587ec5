"""Sampling text from a trained language model, with a KV cache where the model has one.

Each new token's logits come from a `Batch` of rows (`Context`: one row): with a cache
(attractor.kvcache; the default wherever the model's `can_cache(iters)` says yes: every family at
a fixed depth, and the equilibrium models' adaptive solves stopped per token) only the new token
runs through the model, against the keys and values of the earlier ones; without one
(`cache=False`, `attractor generate --no-cache`) the model re-runs on the whole context. Both give
the same tokens and logits up to rounding. An equilibrium model's cache is "exact" (`cache=True`:
the keys and values of every solver step) or "converged" (`cache="converged"`: only each earlier
position's last iterate's; close to the full forward, not exact, see attractor.kvcache).

Contexts longer than seq_len, one rule for both paths: the model sees the last seq_len tokens (a
sliding window). Uncached, every forward feeds them; cached, a token that does not fit the full
cache rebuilds it over the last seq_len tokens, whose positions have all shifted, so past seq_len
each token costs one forward over the window either way.

Batches: `generate_batches` continues several prompts together, each row with its own seed, so
that every result is what `sample` gives for that prompt and seed alone (up to rounding). Uncached,
prompts of different lengths share one forward, right-padded (a causal model never lets a position
see the padding after it); cached, the rows of one length run in lockstep against one cache.

`stream` yields the new tokens one at a time (what `attractor generate` prints as they come),
`stream_depth` the same with the depth each token took, `sample` returns them as one list,
`sample_batch` those of several prompts, and `TextPieces` turns them into text that is safe to
print piece by piece.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import NamedTuple

import torch
from torch import Tensor, nn

from attractor.kvcache import MODES, KVCache

REPLACEMENT = "\ufffd"  # what a tokenizer's decode gives for bytes that are not (yet) a whole character


def check_options(*, max_new_tokens: int, temperature: float, top_k: int | None,
                  vocab_size: int | None = None, top_p: float | None = None) -> None:
    """ValueError naming the first sampling option that cannot work: max_new_tokens < 0, a
    temperature that is negative, NaN or infinite, top_k outside [1, vocab_size], or top_p
    outside (0, 1]."""
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 0")
    if not (math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature={temperature} must be a finite number >= 0 (0 is greedy)")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k={top_k} must be at least 1")
    if top_k is not None and vocab_size is not None and top_k > vocab_size:
        raise ValueError(f"top_k={top_k} is above the vocabulary ({vocab_size} tokens)")
    if top_p is not None and not 0 < top_p <= 1:  # NaN fails too
        raise ValueError(f"top_p={top_p} must be in (0, 1]")


def cache_mode(cache: bool | str) -> str | None:
    """The KVCache mode a `cache` argument asks for: True is "exact", False None (no cache), or a
    mode's name (attractor.kvcache.MODES); ValueError for anything else."""
    if cache is True or cache is False:
        return "exact" if cache else None
    if cache not in MODES:
        raise ValueError(f"cache={cache!r}: use True, False or one of {', '.join(MODES)}")
    return cache


def uses_cache(model: nn.Module, iters: int | None, cache: bool | str) -> bool:
    """Whether generation with this `cache` argument runs cached: asked for, and the model has a
    cache for `iters` (its `can_cache`)."""
    can_cache = getattr(model, "can_cache", None)
    return cache_mode(cache) is not None and can_cache is not None and bool(can_cache(iters))


def shares_padding(model: nn.Module, iters: int | None) -> bool:
    """Whether rows of different lengths may share one uncached forward, right-padded: true
    wherever a position's logits depend only on the positions up to it (causal blocks, and an
    adaptive solve stopped per token in prefix order); false for an adaptive solve stopped per
    sample (`solve.stop="sample"`), whose whole sequence, padding included, is one problem."""
    solve = getattr(model.cfg, "solve", None)
    return not (iters is None and solve is not None and solve.stop == "sample")


class Batch:
    """Several sequences continued together: their tokens so far and their next tokens' logits.

    `logits()` is the (B, V) float32 logits of each row's next token under the sliding-window
    rule of the module docstring, and `depth` what each row's new position took in that forward
    (`token_depth`); `append(tokens)` adds one token to every row. Two ways to share a forward:
    - cached (`cache`, where the model supports one at `iters`): the rows have the same length
      and run in lockstep against one KV cache of B rows, rebuilt over the last seq_len tokens
      when they no longer fit;
    - uncached: each row's window (its last seq_len tokens) is right-padded to the longest and
      the model runs once on all of them; a row's logits are read at its own last position.
      Causal attention (and prefix-stopped adaptive solves) never let a position see later ones,
      so the padding changes no row: each gets the logits it gets alone, up to rounding.
    Rows of different lengths need the uncached way and `shares_padding(model, iters)`; ValueError
    otherwise (`generate_batches` groups such rows by length).
    """

    def __init__(self, model: nn.Module, prompts: list[list[int]], iters: int | None = None,
                 cache: bool | str = True):
        if not prompts or not all(prompts):
            raise ValueError("every prompt must hold at least one token")
        self.model, self.seq_len = model, model.cfg.seq_len
        self.kwargs = {} if iters is None else {"iters": iters}
        self.mode = cache_mode(cache)
        self.cached = uses_cache(model, iters, cache)
        same = len({len(p) for p in prompts}) == 1
        if not same and (self.cached or not shares_padding(model, iters)):
            raise ValueError("rows of different lengths share only an uncached forward of a model that "
                             "allows padding (see shares_padding); group them by length")
        self.device = next(model.parameters()).device
        self.rows = [list(p) for p in prompts]
        self.ids = torch.tensor(prompts, dtype=torch.long, device=self.device) if self.cached else None
        self.kv: KVCache | None = None
        self.fed = 0  # ids[:, :fed] have been fed to the cache (its window of them)
        self.depth: list[int | None] = [None] * len(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def append(self, tokens: list[int] | Tensor) -> None:
        """Add one token id to every row: tokens (B,)."""
        tokens = [int(t) for t in torch.as_tensor(tokens).view(-1)]
        for row, token in zip(self.rows, tokens, strict=True):
            row.append(token)
        if self.ids is not None:
            new = torch.tensor(tokens, dtype=torch.long, device=self.device).view(-1, 1)
            self.ids = torch.cat([self.ids, new], 1)

    @torch.no_grad()
    def logits(self) -> Tensor:
        """The next tokens' logits (B, V), float32; sets `depth`."""
        if self.cached:
            new = self.ids.shape[1] - self.fed  # tokens not yet in the cache
            if self.kv is None or self.kv.length + new > self.seq_len:  # start, or a full window: rebuild
                self.kv = KVCache(self.seq_len, self.mode)
                feed = self.ids[:, -self.seq_len:]
            else:
                feed = self.ids[:, self.fed:]
            self.fed = self.ids.shape[1]
            out = self.model(feed, cache=self.kv, **self.kwargs)
            last = [feed.shape[1] - 1] * len(self.rows)
        else:
            windows = [row[-self.seq_len:] for row in self.rows]
            width = max(len(w) for w in windows)
            feed = torch.tensor([w + [0] * (width - len(w)) for w in windows], dtype=torch.long, device=self.device)
            out = self.model(feed, **self.kwargs)
            last = [len(w) - 1 for w in windows]
        at = torch.tensor(last, device=out.logits.device)
        self.depth = [token_depth(out, b, t) for b, t in enumerate(last)]
        return out.logits[torch.arange(len(last), device=at.device), at]


def token_depth(out, row: int, position: int) -> int | None:
    """What position `position` of row `row` took in the forward that gave `out` (a ModelOutput):
    its solver steps (`out.info.depth`, per token or per sample) for an adaptive solve, else the
    row's depth (`out.depth`: k at a fixed iters=k, the looped model's loops), None for a model
    without one (the transformer)."""
    info = getattr(out, "info", None)
    if info is not None:
        per_unit = info.depth.reshape(out.logits.shape[0], -1)  # (B, T) per token, (B, 1) per sample
        return int(per_unit[row, position if per_unit.shape[1] > 1 else 0])
    depth = getattr(out, "depth", None)
    return None if depth is None else int(depth[row])


class Context(Batch):
    """One sequence: `logits()` is the next token's (V,) float32 logits and `append(token)` adds
    one token (a Batch of one row)."""

    def __init__(self, model: nn.Module, prompt: list[int], iters: int | None = None, cache: bool | str = True):
        super().__init__(model, [prompt], iters, cache)

    def append(self, token: int | Tensor) -> None:
        """Add one token id to the sequence."""
        super().append([int(token)])

    def logits(self) -> Tensor:
        """The next token's logits (V,), float32."""
        return super().logits()[0]


def pick(logits: Tensor, temperature: float, top_k: int | None, top_p: float | None,
         generator: torch.Generator) -> Tensor:
    """The next token (0-d) from one row's logits (V,): the most likely at temperature 0, else a
    draw from softmax(logits / T) restricted to the top_k most likely tokens, then to the
    smallest set of them whose probability reaches top_p (nucleus sampling; top_p=1, or None,
    keeps every token and draws exactly as without it)."""
    if temperature == 0:
        return logits.argmax()
    logits = logits / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        probs, order = torch.softmax(logits, -1).sort(descending=True)
        before = probs.cumsum(0) - probs  # the probability of the tokens ranked above each
        drop = torch.zeros_like(logits, dtype=torch.bool)
        drop[order] = before >= top_p  # the first token is always kept (before = 0 < top_p)
        logits = logits.masked_fill(drop, float("-inf"))
    return torch.multinomial(torch.softmax(logits, -1), 1, generator=generator)[0]


def stream(model: nn.Module, prompt: list[int], *, max_new_tokens: int = 200, iters: int | None = None,
           temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None, seed: int = 0,
           cache: bool | str = True) -> Iterator[int]:
    """Continue `prompt` (token ids) by up to max_new_tokens tokens, yielding each new id as soon
    as it is drawn (so a caller can show it, or stop early).

    Args:
        iters: the recurrent models' depth (None: adaptive / the model's own rule).
        temperature: 0 picks the most likely token (greedy); > 0 samples from softmax(logits / T).
        top_k: sample only among the k most likely tokens (at most the vocabulary's size).
        top_p: then only among the most likely tokens whose probability reaches top_p, in (0, 1]
            (nucleus sampling; 1 is plain sampling).
        seed: the sampler's own generator, so a call is repeatable whatever else ran before.
        cache: use a KV cache where the model supports one at `iters` (False: re-run the model
            on the whole context for every token); the same tokens either way, up to rounding.
            "converged": an equilibrium model's lighter cache (attractor.kvcache), not exact.
    Raises ValueError at the call, before any token, for an empty prompt or an option that
    cannot work (check_options).
    """
    return (token for token, _ in stream_depth(model, prompt, max_new_tokens=max_new_tokens, iters=iters,
                                                temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                                                cache=cache))


def stream_depth(model: nn.Module, prompt: list[int], *, max_new_tokens: int = 200, iters: int | None = None,
                 temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None, seed: int = 0,
                 cache: bool | str = True) -> Iterator[tuple[int, int | None]]:
    """`stream`, yielding (token id, depth) pairs: the solver steps (or loops) the token's
    position took when its logits were computed (`token_depth`; None for the transformer)."""
    if not prompt:
        raise ValueError("the prompt must hold at least one token")
    _check(model, max_new_tokens, temperature, top_k, top_p)
    steps = _steps(model, [prompt], max_new_tokens, iters, temperature, top_k, top_p, [seed], cache)
    return ((tokens[0], depths[0]) for tokens, depths in steps)


def _check(model: nn.Module, max_new_tokens: int, temperature: float, top_k: int | None, top_p: float | None) -> None:
    check_options(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                  vocab_size=model.cfg.vocab_size, top_p=top_p)


@torch.no_grad()
def _steps(model: nn.Module, prompts: list[list[int]], max_new_tokens: int, iters: int | None, temperature: float,
           top_k: int | None, top_p: float | None, seeds: list[int],
           cache: bool | str) -> Iterator[tuple[list[int], list[int | None]]]:
    """One Batch of `prompts` continued: per step, every row's new token and its depth. Row b
    draws with its own generator seeded seeds[b], so it draws what it draws alone."""
    model.eval()
    batch = Batch(model, prompts, iters, cache)
    generators = [torch.Generator(device=batch.device).manual_seed(s) for s in seeds]
    for _ in range(max_new_tokens):
        logits = batch.logits()  # (B, V)
        tokens = torch.stack([pick(logits[b], temperature, top_k, top_p, g) for b, g in enumerate(generators)])
        batch.append(tokens)
        yield [int(t) for t in tokens], list(batch.depth)


class Generated(NamedTuple):
    """One continuation: its new token ids and the depth each took (`token_depth`)."""

    tokens: list[int]
    depths: list[int | None]


def generate_batches(model: nn.Module, prompts: list[list[int]], *, seeds: list[int] | None = None,
                     max_new_tokens: int = 200, iters: int | None = None, temperature: float = 1.0,
                     top_k: int | None = None, top_p: float | None = None, cache: bool | str = True,
                     batch_size: int = 8, stop: Callable[[list[int]], bool] | None = None
                     ) -> Iterator[tuple[int, Generated]]:
    """Continue several prompts, batch_size rows at a time, yielding (index, Generated) in the
    prompts' order as each batch ends. Row i draws with seeds[i] (default: i), so each result is
    `sample(model, prompts[i], seed=seeds[i], ...)` with the same options, up to rounding: with
    `stop`, its first tokens up to the first new token after which stop(new tokens so far) is
    true (a stop string decoded, say); a group of rows ends once every row has stopped.

    The prompts go in consecutive chunks of batch_size; a chunk is one Batch where it can be
    (uncached, right-padded: different lengths together), else one Batch per prompt length (the
    cached path and per-sample adaptive solves run rows of one length in lockstep).
    """
    seeds = list(range(len(prompts))) if seeds is None else list(seeds)
    if len(seeds) != len(prompts):
        raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be at least 1")
    if not all(prompts):
        raise ValueError("every prompt must hold at least one token")
    _check(model, max_new_tokens, temperature, top_k, top_p)
    cached = uses_cache(model, iters, cache)
    padded = not cached and shares_padding(model, iters)
    return _generate_batches(model, prompts, seeds, max_new_tokens, iters, temperature, top_k, top_p, cache,
                             batch_size, padded, stop)


def _generate_batches(model, prompts, seeds, max_new_tokens, iters, temperature, top_k, top_p, cache, batch_size,
                      padded, stop) -> Iterator[tuple[int, Generated]]:
    for first in range(0, len(prompts), batch_size):
        chunk = range(first, min(first + batch_size, len(prompts)))
        groups: dict[int, list[int]] = {}
        for i in chunk:
            groups.setdefault(0 if padded else len(prompts[i]), []).append(i)
        done: dict[int, Generated] = {}
        for rows in groups.values():
            results = [Generated([], []) for _ in rows]
            stopped = [False] * len(rows)
            for tokens, depths in _steps(model, [prompts[i] for i in rows], max_new_tokens, iters, temperature,
                                         top_k, top_p, [seeds[i] for i in rows], cache):
                for j, (r, t, d) in enumerate(zip(results, tokens, depths)):
                    if not stopped[j]:
                        r.tokens.append(t)
                        r.depths.append(d)
                        stopped[j] = stop is not None and stop(r.tokens)
                if all(stopped):
                    break
            done.update(zip(rows, results))
        for i in chunk:
            yield i, done[i]


def sample(model: nn.Module, prompt: list[int], *, max_new_tokens: int = 200, iters: int | None = None,
           temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None, seed: int = 0,
           cache: bool | str = True) -> list[int]:
    """The new token ids (without the prompt) of `stream` with the same arguments, as one list."""
    return list(stream(model, prompt, max_new_tokens=max_new_tokens, iters=iters, temperature=temperature,
                       top_k=top_k, top_p=top_p, seed=seed, cache=cache))


def sample_batch(model: nn.Module, prompts: list[list[int]], **options) -> list[list[int]]:
    """The new token ids of every prompt (`generate_batches` with the same options), in order."""
    return [result.tokens for _, result in generate_batches(model, prompts, **options)]


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
