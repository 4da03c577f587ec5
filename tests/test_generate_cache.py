"""The KV cache of `generate` (attractor.kvcache): cached and uncached give the same greedy tokens
and logits within 1e-4 (fp32) for every family and depth it serves, within the window and across
the seq_len boundary (the sliding-window rule), and `--no-cache` works from the command line."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_settings

from attractor.cli import main
from attractor.generate import Context, sample
from attractor.kvcache import KVCache
from attractor.models.attractor_lm import AttractorLM, AttractorLMConfig
from attractor.models.deq import DEQConfig, DEQLM
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


# (family, iters): every depth the cache serves
CASES = [("transformer", None), ("attractor", 0), ("attractor", 1), ("attractor", 4), ("deq", 0), ("deq", 1),
         ("deq", 4), ("looped", None), ("looped", 2)]


@pytest.mark.parametrize("seq_len, prompt", [(96, [1, 2, 3]), (16, [1, 2, 3]), (16, list(range(20)))],
                         ids=["within-window", "across-boundary", "prompt-past-window"])
@pytest.mark.parametrize("family, iters", CASES)
def test_cached_and_uncached_agree_on_greedy_tokens_and_logits(family, iters, seq_len, prompt):
    model = build(family, seq_len)
    cached, full = Context(model, prompt, iters, cache=True), Context(model, prompt, iters, cache=False)
    assert cached.cached and not full.cached
    for _ in range(70):
        a, b = cached.logits(), full.logits()
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=0, atol=1e-4)
        token = int(b.argmax())
        assert int(a.argmax()) == token
        cached.append(token)
        full.append(token)
    kwargs = dict(max_new_tokens=70, iters=iters, temperature=0)
    assert sample(model, prompt, **kwargs, cache=True) == sample(model, prompt, **kwargs, cache=False)


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
    assert attractor.can_cache(0) and not attractor.can_cache(None)
    with torch.no_grad():
        with pytest.raises(ValueError, match="adaptive"):
            attractor(torch.ones(1, 3, dtype=torch.long), cache=KVCache(16))
        cache = KVCache(16)
        attractor(torch.ones(1, 3, dtype=torch.long), iters=1, cache=cache)
        with pytest.raises(ValueError, match="built at iters=1"):
            attractor(torch.ones(1, 1, dtype=torch.long), iters=2, cache=cache)
        with pytest.raises(ValueError, match="do not fit"):
            attractor(torch.ones(1, 14, dtype=torch.long), iters=1, cache=cache)
    # adaptive generation falls back to the full recompute
    assert not Context(attractor, [1], None, cache=True).cached


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
    assert cached.startswith("the cat") and len(cached) > len("the cat\n")
