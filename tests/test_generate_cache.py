"""The KV cache of `generate` (attractor.kvcache): cached and uncached give the same greedy tokens,
logits within 1e-4 (fp32) and per-token depths for every family and depth, adaptive included,
over 256 new tokens within the window and across the seq_len boundary (the sliding-window rule);
the lighter "converged" cache is close, smaller, and exact where it should be; `--no-cache` and
`--cache converged` work from the command line."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_settings

from attractor.cli import main
from attractor.generate import Context, sample
from attractor.kvcache import KVCache
from attractor.models.attractor_lm import AttractorLM, AttractorLMConfig
from attractor.models.deq import DEQConfig, DEQLM
from attractor.models.equilibrium import SolveConfig
from attractor.models.looped import LoopedConfig, LoopedLM
from attractor.models.transformer import TransformerConfig, TransformerLM

SHAPE = dict(vocab_size=64, d=32, n_head=2)


def build(family: str, seq_len: int):
    torch.manual_seed(0)
    if family == "transformer":
        model = TransformerLM(TransformerConfig(seq_len=seq_len, n_layer=2, **SHAPE))
    elif family == "attractor":
        model = AttractorLM(AttractorLMConfig(seq_len=seq_len, n_backbone=2, n_attractor=2, **SHAPE))
    elif family == "deq":
        model = DEQLM(DEQConfig(seq_len=seq_len, n_prelude=1, **SHAPE))
    else:
        model = LoopedLM(LoopedConfig(seq_len=seq_len, n_prelude=1, n_recur=2, n_coda=1, mean_loops=3, **SHAPE))
    return model.eval()


# (family, iters): every depth the cache serves, adaptive (None) included
CASES = [("transformer", None), ("attractor", 0), ("attractor", 1), ("attractor", 4), ("attractor", None),
         ("deq", 0), ("deq", 1), ("deq", 4), ("deq", None), ("looped", None), ("looped", 2)]


def agree(model, prompt, iters, new: int, cache=True) -> list[int | None]:
    """Continue prompt greedily with and without the cache, checking every step's logits and
    depth agree; returns the cached run's per-token depths."""
    cached, full = Context(model, prompt, iters, cache=cache), Context(model, prompt, iters, cache=False)
    assert cached.cached and not full.cached
    depths = []
    for _ in range(new):
        a, b = cached.logits(), full.logits()
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=0, atol=1e-4)
        assert cached.depth == full.depth  # adaptive: the solver steps each new token took
        token = int(b.argmax())
        assert int(a.argmax()) == token
        cached.append(token)
        full.append(token)
        depths.append(cached.depth[0])
    return depths


@pytest.mark.parametrize("family, iters", CASES)
def test_cached_and_uncached_agree_over_256_new_tokens(family, iters):
    model = build(family, 288)
    depths = agree(model, [1, 2, 3], iters, 256)
    if family in ("attractor", "deq") and iters is None:
        # prefix stopping: a token stops no earlier than the one before it (the cache carries it)
        assert depths == sorted(depths) and depths[-1] > 0


@pytest.mark.parametrize("seq_len, prompt", [(16, [1, 2, 3]), (16, list(range(20)))],
                         ids=["across-boundary", "prompt-past-window"])
@pytest.mark.parametrize("family, iters", CASES)
def test_cached_and_uncached_agree_across_the_window(family, iters, seq_len, prompt):
    model = build(family, seq_len)
    agree(model, prompt, iters, 40)
    kwargs = dict(max_new_tokens=40, iters=iters, temperature=0)
    assert sample(model, prompt, **kwargs, cache=True) == sample(model, prompt, **kwargs, cache=False)


def test_an_adaptive_token_continues_its_prefix_solve():
    """Under a tight tol, later tokens meet it sooner than the first (first_met < depth): each
    cached token still takes the full forward's steps, its prefix's (prefix stopping)."""
    torch.manual_seed(0)
    model = AttractorLM(AttractorLMConfig(seq_len=64, n_backbone=2, n_attractor=1, solve=SolveConfig(tol=1e-5),
                                          **SHAPE)).eval()
    agree(model, [5, 9, 2, 7], None, 48)
    idx = torch.randint(0, 64, (3, 24), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model(idx).info
        cache = KVCache(64)
        for t in range(24):
            out = model(idx[:, t:t + 1], cache=cache)
            assert torch.equal(out.info.depth[:, 0], full.depth[:, t])
            assert torch.equal(cache.last_depth, full.depth[:, t])
        # first_met: each token's own depth; prefix stopping held some tokens longer
        assert bool((full.first_met <= full.depth).all()) and bool((full.first_met < full.depth).any())


@pytest.mark.parametrize("family", ["attractor", "deq"])
def test_the_converged_cache_is_smaller_close_and_exact_at_one_step(family):
    model = build(family, 288)
    agree(model, [1, 2, 3], 1, 32, cache="converged")  # one step: the last iterate is step 0's
    exact, light, full = (Context(model, [1, 2, 3], None, cache=c) for c in (True, "converged", False))
    worst = 0.0
    for _ in range(64):
        a, b, c = exact.logits(), light.logits(), full.logits()
        worst = max(worst, float((b - c).abs().max()))
        token = int(c.argmax())
        for ctx in (exact, light, full):
            ctx.append(token)
    assert 0 < worst < 0.05  # not exact, but close on this map
    stack = len(model.stack.blocks)
    assert len([n for n in light.kv.layers if n[0] == "stack"]) == stack
    assert len([n for n in exact.kv.layers if n[0] == "stack"]) > stack
    assert light.kv.nbytes() < exact.kv.nbytes()


@pytest.mark.parametrize("family, iters", [("transformer", None), ("attractor", 2), ("deq", 1), ("looped", None)])
def test_a_forward_in_chunks_against_the_cache_is_the_full_forward(family, iters):
    """Several new tokens at once after cached ones (the causal mask with an offset)."""
    model = build(family, 32)
    idx = torch.randint(0, 64, (2, 29), generator=torch.Generator().manual_seed(1))
    kwargs = {} if iters is None else {"iters": iters}
    with torch.no_grad():
        full = model(idx, **kwargs).logits
        cache = KVCache(32)
        chunks = [model(idx[:, a:b], cache=cache, **kwargs).logits for a, b in [(0, 5), (5, 6), (6, 17), (17, 29)]]
    assert cache.length == 29
    torch.testing.assert_close(torch.cat(chunks, 1), full, rtol=0, atol=1e-4)


def test_the_cache_refuses_what_it_cannot_serve():
    attractor = build("attractor", 16)
    assert attractor.can_cache(0) and attractor.can_cache(None)
    per_sample = AttractorLM(AttractorLMConfig(seq_len=16, n_backbone=1, n_attractor=1,
                                               solve=SolveConfig(stop="sample"), **SHAPE)).eval()
    assert not per_sample.can_cache(None) and per_sample.can_cache(2)
    with torch.no_grad():
        with pytest.raises(ValueError, match="sample"):
            per_sample(torch.ones(1, 3, dtype=torch.long), cache=KVCache(16))
        cache = KVCache(16)
        attractor(torch.ones(1, 3, dtype=torch.long), cache=cache)
        with pytest.raises(ValueError, match="built at iters=adaptive"):
            attractor(torch.ones(1, 1, dtype=torch.long), iters=2, cache=cache)
        cache = KVCache(16)
        attractor(torch.ones(1, 3, dtype=torch.long), iters=1, cache=cache)
        with pytest.raises(ValueError, match="built at iters=1"):
            attractor(torch.ones(1, 1, dtype=torch.long), iters=2, cache=cache)
        with pytest.raises(ValueError, match="do not fit"):
            attractor(torch.ones(1, 14, dtype=torch.long), iters=1, cache=cache)
    # a per-sample adaptive solve falls back to the full recompute
    assert not Context(per_sample, [1], None, cache=True).cached
    with pytest.raises(ValueError, match="cache mode"):
        KVCache(16, "approximate")
    with pytest.raises(ValueError, match="cache="):
        Context(attractor, [1], None, cache="approximate")


def test_generate_no_cache_from_the_command_line(capsys, tmp_path, corpus):
    out = tmp_path / "run"
    settings = tiny_settings("transformer-1m", tmp_path / "cache")
    assert main(["train", "transformer-1m", "--out", str(out), "--data", str(corpus), "--steps", "2", "--quiet",
                 *[a for s in settings for a in ("--set", s)]]) == 0
    capsys.readouterr()
    argv = ["generate", str(out), "--prompt", "the cat", "--max-new-tokens", "40", "--temperature", "0"]
    assert main(argv) == 0
    cached = capsys.readouterr().out
    assert main([*argv, "--no-cache"]) == 0
    assert capsys.readouterr().out == cached
    assert main([*argv, "--cache", "converged"]) == 0  # a transformer has one cache whatever the mode
    assert capsys.readouterr().out == cached
    assert cached.startswith("the cat") and len(cached) > len("the cat\n")
