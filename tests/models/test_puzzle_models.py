"""The puzzle models (issue 10): stablemax loss, PuzzleTransformer, TRM, AttractorReasoner.

Tiny sizes (d=32, 4x4 Sudoku-like inputs of 16 cells, vocab 6) keep the file fast.
Run: .venv/bin/python -m pytest -q tests/models/test_puzzle_models.py
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attractor.models import (
    IGNORE_INDEX,
    ModelOutput,
    build,
    config_from_dict,
    config_to_dict,
    describe,
    from_config,
    stablemax_cross_entropy,
)

TINY = dict(vocab_size=6, seq_len=16, d=32, n_head=2)


def tiny(name: str, **overrides):
    torch.manual_seed(0)
    return build(name, **TINY, **overrides)


def puzzles(batch: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random 4x4 'puzzles': labels in 2..5, inputs the labels with about half the cells blank (1)."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(2, 6, (batch, 16), generator=gen)
    blank = torch.rand(batch, 16, generator=gen) < 0.5
    return torch.where(blank, 1, labels), labels


# ---- stablemax cross-entropy -------------------------------------------------------------------

def stablemax_reference(logits: list[list[float]], labels: list[int]) -> float:
    """The definition, cell by cell in Python floats (float64): s(x) = x + 1 or 1 / (1 - x)."""
    losses = []
    for row, label in zip(logits, labels):
        if label == IGNORE_INDEX:
            continue
        s = [x + 1 if x >= 0 else 1 / (1 - x) for x in row]
        losses.append(-math.log(s[label] / sum(s)))
    return sum(losses) / len(losses) if losses else 0.0


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 12), st.integers(2, 7), st.integers(0, 2**31 - 1), st.floats(0.1, 50.0))
def test_stablemax_matches_the_definition(cells, vocab, seed, scale):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(cells, vocab, generator=gen, dtype=torch.float64) * scale
    labels = torch.randint(0, vocab, (cells,), generator=gen)
    labels[torch.rand(cells, generator=gen) < 0.3] = IGNORE_INDEX
    got = stablemax_cross_entropy(logits, labels)
    assert got.dtype == torch.float32
    # float64 inside, float32 out: agreement to float32 rounding
    assert got.item() == pytest.approx(stablemax_reference(logits.tolist(), labels.tolist()), rel=1e-6, abs=1e-7)


def test_stablemax_differs_from_softmax_and_ignores_cells():
    logits = torch.tensor([[[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]]])
    labels = torch.tensor([[0, IGNORE_INDEX]])
    loss = stablemax_cross_entropy(logits, labels)
    assert loss.item() == pytest.approx(-math.log(3.0 / (3.0 + 0.5 + 1.5)))
    assert abs(loss.item() - torch.nn.functional.cross_entropy(logits[0, :1], labels[0, :1]).item()) > 0.1
    changed = logits.clone()
    changed[0, 1] = torch.tensor([9.0, -9.0, 9.0])  # the ignored cell's logits do not matter
    assert stablemax_cross_entropy(changed, labels).item() == loss.item()


def test_stablemax_all_ignored_is_zero_with_zero_gradient():
    logits = torch.randn(2, 5, 4, requires_grad=True)
    loss = stablemax_cross_entropy(logits, torch.full((2, 5), IGNORE_INDEX))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(logits.grad).all() and not logits.grad.any()


def test_stablemax_stays_finite_on_huge_logits():
    logits = torch.tensor([[1e30, -1e30, 0.0]], requires_grad=True)
    loss = stablemax_cross_entropy(logits, torch.tensor([1]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_stablemax_refuses_mismatched_labels():
    with pytest.raises(ValueError, match="must match"):
        stablemax_cross_entropy(torch.zeros(2, 3, 4), torch.zeros(2, 4, dtype=torch.long))


# ---- every puzzle family: the contract -----------------------------------------------------------

FAMILIES = ["puzzle-transformer-cpu"]


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_forward_and_backward(name, mode):
    model = tiny(name).train(mode == "train")
    inputs, labels = puzzles()
    out = model(inputs, labels)
    assert isinstance(out, ModelOutput) and isinstance(out.metrics, dict)
    assert out.logits.shape == (4, 16, 6) and out.logits.dtype == torch.float32
    assert out.loss.dim() == 0 and torch.isfinite(out.loss)
    out.loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0


@pytest.mark.parametrize("name", FAMILIES)
def test_loss_is_stablemax_over_scored_cells(name):
    model = tiny(name).eval()
    inputs, labels = puzzles()
    labels[:, :5] = IGNORE_INDEX
    with torch.no_grad():
        out = model(inputs, labels)
    torch.testing.assert_close(out.loss, stablemax_cross_entropy(out.logits[:, 5:], labels[:, 5:]))


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("bad,match", [
    (lambda x, y: (x[:, :-1], y[:, :-1]), "length seq_len=16"),
    (lambda x, y: (x, y + 10), r"targets must be in \[0, 6\)"),
    (lambda x, y: (x + 10, y), r"token ids must be in \[0, 6\)"),
    (lambda x, y: (x.float(), y), "integer"),
])
def test_bad_batches_fail_clearly(name, bad, match):
    model = tiny(name)
    with pytest.raises(ValueError, match=match):
        model(*bad(*puzzles()))


@pytest.mark.parametrize("name", FAMILIES)
def test_trace_ends_at_the_eval_forward(name):
    model = tiny(name).train()  # trace switches to eval mode itself, and back
    inputs, _ = puzzles(batch=1)
    steps = model.trace(inputs)
    assert model.training and steps and all(s.logits.shape == (1, 16, 6) for s in steps)
    with torch.no_grad():
        expected = model.eval()(inputs).logits
    torch.testing.assert_close(steps[-1].logits, expected, rtol=0, atol=0)


@pytest.mark.parametrize("name", FAMILIES)
def test_param_groups_cover_every_parameter_once(name):
    model = tiny(name)
    grouped = [id(p) for g in model.param_groups() for p in g.params]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())
    assert all(g.wd_mult == 0.0 for g in model.param_groups() if g.name.endswith("gates"))


@pytest.mark.parametrize("name", FAMILIES)
def test_config_json_round_trip(name):
    cfg = tiny(name).cfg
    data = json.loads(json.dumps(config_to_dict(cfg)))
    assert config_from_dict(data) == cfg
    assert type(from_config(config_from_dict(data))) is type(tiny(name))


@pytest.mark.parametrize("name", FAMILIES)
def test_a_tiny_model_learns(name):
    model = tiny(name).train()
    inputs, labels = puzzles(batch=8)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = model(inputs, labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5, losses


# ---- PuzzleTransformer ---------------------------------------------------------------------------

def test_transformer_refuses_any_depth_and_is_bidirectional():
    model = tiny("puzzle-transformer-cpu").eval()
    inputs, _ = puzzles(batch=1)
    with pytest.raises(ValueError, match="fixed depth"):
        model(inputs, iters=0)
    changed = inputs.clone()
    changed[0, -1] = 5 if inputs[0, -1] != 5 else 4
    with torch.no_grad():
        a, b = model(inputs).logits, model(changed).logits
    assert not torch.allclose(a[0, 0], b[0, 0])  # the first cell sees the last one
    assert model.has_depth is False


@pytest.mark.parametrize("name,low,high", [("puzzle-transformer-cpu", 0.9e6, 1.1e6),
                                           ("puzzle-transformer-27m", 24e6, 28e6)])
def test_preset_parameter_counts(name, low, high):
    total = describe(name)["total"]
    assert low < total < high, total


@pytest.mark.parametrize("name", FAMILIES)
def test_presets_default_to_sudoku_and_take_maze_sizes(name):
    assert (build(name).cfg.seq_len, build(name).cfg.vocab_size) == (81, 11)
    maze = build(name, seq_len=25, vocab_size=6).eval()  # a 5x5 maze
    with torch.no_grad():
        assert maze(torch.randint(0, 6, (2, 25))).logits.shape == (2, 25, 6)
