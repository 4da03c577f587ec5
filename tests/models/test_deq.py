"""DEQLM: hidden-state equilibrium from zero, separate or tied head, causality, training.

Run: .venv/bin/python -m pytest -q tests/models/test_deq.py (a few seconds, on one thread).
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import pattern_batch, tokens, train_losses

from attractor.errors import ConfigError
from attractor.layers import block_flops
from attractor.models import override
from attractor.models.deq import DEQConfig, DEQLM

TINY = dict(vocab_size=64, seq_len=16, d=32, n_head=2, n_prelude=1, n_deq=1, max_iter=12, tol=1e-4)


def tiny(**overrides) -> DEQLM:
    torch.manual_seed(0)
    return DEQLM(override(DEQConfig(), **{**TINY, **overrides}))


def test_default_config_parameters():
    with torch.device("meta"):  # builds without allocating (as the preset table does)
        model = DEQLM(DEQConfig())
    c = model.cfg
    blocks = (c.n_prelude + c.n_deq) * 12 * c.d**2
    gates = c.n_deq * 2 * c.d
    counts = model.parameter_counts()
    assert counts["dense"] == blocks + gates + c.vocab_size * c.d  # the separate head is dense
    assert counts["total"] == counts["dense"] + c.vocab_size * c.d
    tied = DEQLM(DEQConfig(tied_head=True))
    assert tied.head is None
    assert tied.parameter_counts()["dense"] == blocks + gates


@pytest.mark.parametrize("iters", [1, 5, None])
@pytest.mark.parametrize("tied_head", [False, True])
def test_future_token_changes_no_earlier_logit(iters, tied_head):
    model = tiny(stop="token", tied_head=tied_head).eval()
    idx = tokens()
    changed = idx.clone()
    changed[:, -1] = (changed[:, -1] + 1) % 64
    with torch.no_grad():
        a, b = model(idx, iters=iters), model(changed, iters=iters)
    assert torch.equal(a.logits[:, :-1], b.logits[:, :-1])  # bit-exact, even with adaptive depth
    assert not torch.equal(a.logits[:, -1], b.logits[:, -1])
    if iters is None:
        per_token = a.info.depth  # (B, T): the solve really ran per token
        assert per_token.shape == (3, 16) and per_token.max() > 1


def test_adaptive_solve_reaches_the_equilibrium_plain_iteration_finds():
    model = tiny(tol=1e-5, max_iter=60).eval()
    idx = tokens()
    with torch.no_grad():
        out = model(idx)
        x = model.inject(idx)
        f = model.equilibrium(idx).f
        z = torch.zeros_like(x)
        for _ in range(200):  # Picard from zero, far past convergence: the reference
            z = f(z)
        reference = model.decode(z, None)[0]
    assert out.converged.item() == 1.0
    assert out.depth.shape == (3,) and out.info.residual.shape == (3, 16)
    assert bool((out.info.residual < 1e-5).all())
    # residual 1e-5 in z moves logits by about that relative amount
    torch.testing.assert_close(out.logits, reference, rtol=1e-3, atol=1e-3)
    assert (z - f(z)).norm() < 1e-4 * z.norm()  # and the reference really is a fixed point


def test_fixed_iterations_are_plain_steps_from_zero():
    model = tiny().eval()
    idx = tokens()
    with torch.no_grad():
        x = model.inject(idx)
        f = model.equilibrium(idx).f
        z = f(f(f(torch.zeros_like(x))))
        torch.testing.assert_close(model(idx, iters=3).logits, model.decode(z, None)[0], rtol=0, atol=0)


def test_zero_iterations_decode_the_zero_state():
    model = tiny().train()
    idx, targets = pattern_batch()
    out = model(idx, targets, iters=0)
    assert torch.equal(out.logits, torch.zeros_like(out.logits))  # norm(0) = 0: uniform logits
    torch.testing.assert_close(out.loss, torch.tensor(math.log(64)))
    out.loss.backward()  # defined, and carries no information
    assert out.depth.tolist() == [0, 0] and out.n_evals == 0 and out.info is None


@pytest.mark.parametrize("tied_head", [False, True])
def test_training_step_reaches_every_parameter(tied_head):
    model = tiny(tied_head=tied_head).train()
    idx, targets = pattern_batch()
    model(idx, targets).loss.backward()
    names = [n for n, _ in model.named_parameters()]
    assert ("head.weight" in names) != tied_head
    assert any(n.endswith("gate_attn.raw") for n in names) and any(n.endswith("gate_mlp.raw") for n in names)
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("grad", ["onestep", "phantom"])
def test_loss_falls_on_a_repeated_pattern(grad):
    model = tiny(grad=grad, max_iter=8, tol=1e-3).train()
    idx, targets = pattern_batch()
    losses = train_losses(model, idx, targets)
    # log(64) = 4.16 at the start; a memorisable pattern should fall far below it
    assert losses[0] > 3.5 and sum(losses[-5:]) / 5 < 0.5 * losses[0], losses[::10]


def test_per_sequence_stopping_reports_per_sequence():
    model = tiny(stop="sample").eval()
    with torch.no_grad():
        out = model(tokens())
    assert out.info.depth.shape == (3,)  # one problem per sequence
    assert torch.equal(out.depth, out.info.depth) and out.depth.dtype == torch.long
    assert out.n_evals == out.info.n_evals and out.converged.dim() == 0
    with torch.no_grad():
        fixed = model(tokens(), iters=2)
    assert fixed.depth.tolist() == [2, 2, 2] and fixed.n_evals == 2 and fixed.converged is None


def test_flops_follow_the_evaluations():
    model = tiny()
    c = model.cfg
    block = block_flops(c.d, c.seq_len)
    with torch.no_grad():
        out = model(tokens(), iters=3)
    assert model.flops_per_token(out) == (c.n_prelude + 3 * c.n_deq) * block + 2 * c.d * c.vocab_size
    assert model.flops_per_token() == (c.n_prelude + (c.solve.max_iter + 1) * c.n_deq) * block + 2 * c.d * c.vocab_size


@pytest.mark.parametrize("iters", [-1, 1.5, True])
def test_invalid_iters_raise(iters):
    with pytest.raises(ValueError, match="iters"):
        tiny()(tokens(), iters=iters)


@pytest.mark.parametrize("bad", [
    dict(d=30), dict(n_deq=0), dict(n_prelude=-1), dict(gate_init=1.0), dict(gamma_max=1.5),
    dict(min_iter=13), dict(tol=-1.0), dict(**{"solver.m": 0}), dict(grad="phantom", **{"grad.k": 0}),
    dict(grad="phantom", **{"grad.damping": 0.0}), dict(stop="tokens"), dict(solver="andersen"),
    dict(grad="one-step"),
])
def test_invalid_config_raises(bad):
    with pytest.raises(ConfigError):
        override(DEQConfig(), **{**TINY, **bad})


def test_misspelled_solver_suggests_the_name():
    with pytest.raises(ConfigError, match="did you mean 'anderson'"):
        override(DEQConfig(), solver="andersen")


def test_unknown_config_field_is_an_error():
    with pytest.raises(TypeError):
        DEQConfig(tied_heads=True)
    with pytest.raises(ConfigError, match="did you mean 'tied_head'"):
        override(DEQConfig(), tied_heads=True)
