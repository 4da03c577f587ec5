"""LoopedLM: stable injection, Poisson depth per sequence, truncated backprop, causality.

Run: .venv/bin/python -m pytest -q tests/models/test_looped.py (a few seconds, on one thread).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import pattern_batch, tokens, train_losses

from attractor.layers import block_flops, rms_norm
from attractor.models.looped import LoopedConfig, LoopedLM

TINY = dict(vocab_size=64, seq_len=16, d=32, n_head=2, n_prelude=1, n_recur=2, n_coda=1,
            mean_loops=4, max_loops=8, backprop_loops=2)


def tiny(**overrides) -> LoopedLM:
    torch.manual_seed(0)
    return LoopedLM(LoopedConfig(**{**TINY, **overrides}))


def test_default_config_dense_parameters_match_block_count():
    with torch.device("meta"):  # builds without allocating (as the preset table does)
        model = LoopedLM(LoopedConfig())
    c = model.cfg
    blocks = c.n_prelude + c.n_recur + c.n_coda
    # each block: qkv 3d^2 + proj d^2 + fc 4d^2 + proj 4d^2; plus injection d^2 and decay d
    assert model.parameter_counts()["dense"] == blocks * 12 * c.d**2 + c.d**2 + c.d


def test_decay_is_a_contraction_starting_at_decay_init():
    model = tiny(decay_init=0.3)
    decay = model.decay()
    assert decay.shape == (32,)
    assert bool(((decay > 0) & (decay < 1)).all())
    torch.testing.assert_close(decay, torch.full((32,), 0.3))
    # inject starts at the identity, so the first loop's input is the normalised prelude output
    torch.testing.assert_close(model.inject.weight, torch.eye(32))


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("loops", [1, 3, 8, None])
def test_future_token_changes_no_earlier_logit(loops, training):
    model = tiny().train(training)
    idx = tokens()
    changed = idx.clone()
    changed[:, -1] = (changed[:, -1] + 1) % 64
    with torch.no_grad():
        model.depth_rng.manual_seed(5)  # identical Poisson draws for both (training, loops=None)
        a = model(idx, iters=loops)
        model.depth_rng.manual_seed(5)
        b = model(changed, iters=loops)
    assert torch.equal(a.depth, b.depth)
    assert torch.equal(a.logits[:, :-1], b.logits[:, :-1])  # bit-exact
    assert not torch.equal(a.logits[:, -1], b.logits[:, -1])  # the changed position did move


def test_training_step_reaches_every_parameter():
    model = tiny().train()
    idx, targets = pattern_batch()
    out = model(idx, targets)
    out.loss.backward()
    names = [n for n, _ in model.named_parameters()]
    assert "a" in names and "inject.weight" in names and "embed.weight" in names
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_loss_falls_on_a_repeated_pattern():
    model = tiny().train()
    idx, targets = pattern_batch()
    losses = train_losses(model, idx, targets)
    # log(64) = 4.16 at the start; a memorisable pattern should fall far below it
    assert losses[0] > 3.5 and sum(losses[-5:]) / 5 < 0.5 * losses[0], losses[::10]
    decay = model.decay()
    assert bool(((decay > 0) & (decay < 1)).all())
    model.eval()
    with torch.no_grad():
        assert model(idx, targets).loss < 0.5 * losses[0]  # fixed depth mean_loops works too


def test_poisson_depth_is_reproducible_from_the_seed_and_varies():
    def draws(seed: int) -> torch.Tensor:
        model = tiny(seed=seed).train()
        with torch.no_grad():
            return torch.stack([model(tokens(batch=6)).depth for _ in range(5)])  # (5, 6)

    a, b, other = draws(7), draws(7), draws(8)
    assert torch.equal(a, b)
    assert not torch.equal(a, other)
    assert a.min() >= 1 and a.max() <= 8
    assert all(len(set(row.tolist())) > 1 for row in a)  # one depth per sequence, not per batch
    assert not all(torch.equal(a[0], row) for row in a[1:])  # and new draws at every step


def test_poisson_depth_has_the_configured_mean():
    model = tiny(mean_loops=8, max_loops=40).train()
    depth = model.depths(4000).float()
    # 1 + Poisson(7): mean 8, std sqrt(7); the mean of 4000 draws has std 0.042
    assert abs(depth.mean().item() - 8) < 0.25
    assert abs(depth.var().item() - 7) < 1.0
    assert model.eval().depths(3).tolist() == [8, 8, 8]


def test_explicit_loops_are_deterministic_in_training_mode():
    model = tiny().train()
    idx = tokens()
    a, b = model(idx, iters=5), model(idx, iters=5)
    assert a.depth.tolist() == [5, 5, 5]
    assert torch.equal(a.logits, b.logits)
    assert model.eval()(idx).depth.tolist() == [4, 4, 4]  # mean_loops in eval


@pytest.mark.parametrize("loops", [-1, 2.5, True])
def test_invalid_loops_raise(loops):
    with pytest.raises(ValueError, match="iters"):
        tiny()(tokens(), iters=loops)


@pytest.mark.parametrize("bad", [
    dict(d=30), dict(n_recur=0), dict(n_prelude=-1), dict(n_coda=-1), dict(mean_loops=0),
    dict(mean_loops=9), dict(backprop_loops=0), dict(decay_init=1.0), dict(decay_init=0.0),
    dict(vocab_size=0),
])
def test_invalid_config_raises(bad):
    with pytest.raises(ValueError):
        LoopedConfig(**{**TINY, **bad})


def test_unknown_config_field_is_an_error():
    with pytest.raises(TypeError):
        LoopedConfig(mean_loop=8)


def manual_loss(model: LoopedLM, idx, targets, loops: int, no_grad_loops: int) -> torch.Tensor:
    """The truncated forward written out: `no_grad_loops` loops without autograd, then the rest."""
    e = model.embed(idx)
    for block in model.prelude:
        e = block(e)
    u = model.inject(rms_norm(e))
    s = torch.zeros_like(u)
    for i in range(loops):
        with torch.set_grad_enabled(i >= no_grad_loops):
            h = model.decay() * s + u
            for block in model.recur:
                h = block(h)
            s = h
    for block in model.coda:
        s = block(s)
    return model.decode(s, targets)[1]


def grads(model: LoopedLM, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad()
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def test_backprop_is_truncated_to_the_last_loops():
    model = tiny(backprop_loops=2).train()
    idx, targets = pattern_batch()
    got = grads(model, model(idx, targets, iters=5).loss)
    truncated = grads(model, manual_loss(model, idx, targets, loops=5, no_grad_loops=3))
    full = grads(model, manual_loss(model, idx, targets, loops=5, no_grad_loops=0))
    for name in got:
        torch.testing.assert_close(got[name], truncated[name], rtol=0, atol=0)  # same ops, same order
    assert not torch.allclose(got["a"], full["a"])  # the truncation changes the gradient
    untruncated = tiny(backprop_loops=None).train()
    for name, g in grads(untruncated, untruncated(idx, targets, iters=5).loss).items():
        torch.testing.assert_close(g, full[name], rtol=0, atol=0)


def test_sampled_depths_truncate_each_sequence_at_its_own_last_loops():
    model = tiny(backprop_loops=2).train()
    idx, targets = pattern_batch()
    for seed in range(100):  # a seed giving two different depths, both truncated
        model.depth_rng.manual_seed(seed)
        depth = model.depths(2)
        if depth[0] != depth[1] and depth.min() > 2:
            break
    model.depth_rng.manual_seed(seed)
    out = model(idx, targets)
    assert torch.equal(out.depth, depth)
    got = grads(model, out.loss * 2)  # the mean over 2 equal-length sequences, as a sum
    want = [grads(model, manual_loss(model, idx[b:b + 1], targets[b:b + 1], int(k), int(k) - 2))
            for b, k in enumerate(depth)]
    for name in got:
        # float32: one batched run against two solo runs, summed
        torch.testing.assert_close(got[name], want[0][name] + want[1][name], rtol=1e-4, atol=1e-6)


def test_sequences_in_a_batch_match_their_solo_runs():
    model = tiny().train()
    idx = tokens(batch=4)
    with torch.no_grad():
        batched = model(idx)
        depth = batched.depth
        assert len(set(depth.tolist())) > 1
        for b in range(4):
            solo = model(idx[b:b + 1], iters=int(depth[b]))
            torch.testing.assert_close(batched.logits[b], solo.logits[0], rtol=1e-5, atol=1e-5)


def saved_bytes(model: LoopedLM, idx, targets, loops: int) -> int:
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(idx, targets, iters=loops).loss.backward()
    return total


def test_training_memory_does_not_grow_with_depth():
    idx, targets = pattern_batch()
    truncated = tiny(backprop_loops=2).train()
    assert saved_bytes(truncated, idx, targets, 4) == saved_bytes(truncated, idx, targets, 12)
    full = tiny(backprop_loops=None).train()
    assert saved_bytes(full, idx, targets, 12) > 2 * saved_bytes(full, idx, targets, 4)


def test_flops_count_the_loops_and_the_injection():
    model = tiny()
    c = model.cfg
    block = block_flops(c.d, c.seq_len)
    with torch.no_grad():
        three = model.flops_per_token(model(tokens(), iters=3))
        four = model.flops_per_token(model(tokens(), iters=4))
    assert four - three == c.n_recur * block
    expected = (c.n_prelude + c.n_coda + 4 * c.n_recur) * block + 2 * c.d**2 + 2 * c.d * c.vocab_size
    assert four == expected == model.flops_per_token() == model.flops_per_token(4)


def test_zero_loops_decode_the_coda_of_a_zero_state():
    model = tiny().eval()
    with torch.no_grad():
        out = model(tokens(), iters=0)
    assert out.depth.tolist() == [0, 0, 0]
    assert torch.isfinite(out.logits).all()
    assert torch.equal(out.logits[0], out.logits[1])  # no token information reaches the coda


def test_config_is_frozen():
    cfg = LoopedConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.d = 64
