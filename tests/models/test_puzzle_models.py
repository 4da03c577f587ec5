"""The puzzle models: stablemax loss, PuzzleTransformer, TRM, AttractorReasoner.

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

# variant -> (preset, overrides); reasoners at 2 cycles of 2 inner updates and 3 supervision steps
VARIANTS = {
    "transformer": ("puzzle-transformer-cpu", {}),
    "trm": ("trm-cpu", dict(h_cycles=2, l_cycles=2, halt_max_steps=3)),
    "attractor": ("attractor-reasoner-cpu", dict(h_cycles=2, halt_max_steps=3)),
    "attractor-joint": ("attractor-reasoner-cpu", dict(joint=True, halt_max_steps=3)),
}
RECURSIVE = ["trm", "attractor", "attractor-joint"]


def variant(name: str, **overrides):
    preset, defaults = VARIANTS[name]
    return tiny(preset, **{**defaults, **overrides})


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_forward_and_backward(name, mode):
    model = variant(name).train(mode == "train")
    inputs, labels = puzzles()
    out = model(inputs, labels)
    assert isinstance(out, ModelOutput) and isinstance(out.metrics, dict)
    assert out.logits.shape == (4, 16, 6) and out.logits.dtype == torch.float32
    assert out.loss.dim() == 0 and torch.isfinite(out.loss)
    out.loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    # eval mode has no halting loss, so the halting head alone may go without a gradient
    assert all(g is not None for n, g in grads.items() if mode == "train" or not n.startswith("halt_head"))
    assert all(torch.isfinite(g).all() for g in grads.values() if g is not None)
    assert grads["embed.weight"].abs().sum() > 0 and grads["blocks.0.mlp.fc.weight"].abs().sum() > 0


@pytest.mark.parametrize("name", VARIANTS)
def test_loss_is_stablemax_over_scored_cells(name):
    model = variant(name).eval()
    inputs, labels = puzzles()
    labels[:, :5] = IGNORE_INDEX
    with torch.no_grad():
        out = model(inputs, labels)
    torch.testing.assert_close(out.loss, stablemax_cross_entropy(out.logits[:, 5:], labels[:, 5:]))


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("bad,match", [
    (lambda x, y: (x[:, :-1], y[:, :-1]), "length seq_len=16"),
    (lambda x, y: (x, y + 10), r"targets must be in \[0, 6\)"),
    (lambda x, y: (x + 10, y), r"token ids must be in \[0, 6\)"),
    (lambda x, y: (x.float(), y), "integer"),
])
def test_bad_batches_fail_clearly(name, bad, match):
    model = variant(name)
    with pytest.raises(ValueError, match=match):
        model(*bad(*puzzles()))


@pytest.mark.parametrize("name", VARIANTS)
def test_trace_ends_at_the_eval_forward(name):
    model = variant(name).train()  # trace switches to eval mode itself, and back
    inputs, _ = puzzles(batch=1)
    steps = model.trace(inputs)
    assert model.training and steps and all(s.logits.shape == (1, 16, 6) for s in steps)
    with torch.no_grad():
        expected = model.eval()(inputs).logits
    torch.testing.assert_close(steps[-1].logits, expected, rtol=0, atol=0)
    assert len({s.label for s in steps}) == len(steps)  # every entry says where it is


@pytest.mark.parametrize("name", VARIANTS)
def test_param_groups_cover_every_parameter_once(name):
    model = variant(name)
    grouped = [id(p) for g in model.param_groups() for p in g.params]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())
    assert all(g.wd_mult == 0.0 for g in model.param_groups() if g.name.endswith("gates"))


@pytest.mark.parametrize("name", VARIANTS)
def test_config_json_round_trip(name):
    cfg = variant(name).cfg
    data = json.loads(json.dumps(config_to_dict(cfg)))
    assert config_from_dict(data) == cfg
    assert type(from_config(config_from_dict(data))) is type(variant(name))


@pytest.mark.parametrize("name", VARIANTS)
def test_a_tiny_model_learns(name):
    model = variant(name).train()
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


@pytest.mark.parametrize("name", ["puzzle-transformer-cpu", "trm-cpu", "attractor-reasoner-cpu"])
def test_presets_default_to_sudoku_and_take_maze_sizes(name):
    assert (build(name).cfg.seq_len, build(name).cfg.vocab_size) == (81, 11)
    maze = build(name, seq_len=25, vocab_size=6, d=32, n_head=2).eval()  # a 5x5 maze
    kwargs = dict(steps=1) if maze.has_depth else {}  # one supervision step is enough here
    with torch.no_grad():
        assert maze(torch.randint(0, 6, (2, 25)), **kwargs).logits.shape == (2, 25, 6)


# ---- deep supervision: the carry -------------------------------------------------------------------

@pytest.mark.parametrize("name", RECURSIVE)
def test_halted_slots_take_the_new_sample_and_running_slots_keep_theirs(name):
    model = variant(name, halt_explore=0.0).train()
    first, first_labels = puzzles(seed=1)
    second, second_labels = puzzles(seed=2)
    model(first, first_labels)
    assert model.carry.steps.tolist() == [1, 1, 1, 1] and not model.carry.halted.any()
    model.carry.halted = torch.tensor([True, False, True, False])
    out = model(second, second_labels)
    refilled = torch.tensor([True, False, True, False])
    assert torch.equal(model.carry.inputs[refilled], second[refilled])
    assert torch.equal(model.carry.inputs[~refilled], first[~refilled])
    assert torch.equal(model.carry.labels[~refilled], first_labels[~refilled])
    assert model.carry.steps.tolist() == [1, 2, 1, 2]
    # a refilled slot restarts from the initial state: as a fresh model's first call on its sample
    fresh = variant(name, halt_explore=0.0).train()
    fresh.load_state_dict(model.state_dict())
    fresh.reset_carry()
    torch.testing.assert_close(fresh(second, second_labels).logits[refilled], out.logits[refilled])
    assert not torch.allclose(fresh(second, second_labels).logits[~refilled], out.logits[~refilled])


@pytest.mark.parametrize("name", RECURSIVE)
def test_the_carry_is_detached(name):
    model = variant(name).train()
    inputs, labels = puzzles()
    model(inputs, labels).loss.backward()  # frees the first step's graph
    assert not model.carry.z_H.requires_grad and not model.carry.z_L.requires_grad
    model.zero_grad()
    model(inputs, labels).loss.backward()  # would fail if the carry still led into that graph
    assert model.blocks[0].mlp.fc.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", RECURSIVE)
def test_the_carry_and_exploration_draws_are_saved_in_state_dict(name, tmp_path):
    from safetensors.torch import load_file, save_file

    model = variant(name).train()
    batches = [puzzles(seed=s) for s in range(5)]
    for inputs, labels in batches[:2]:
        model(inputs, labels)
    save_file(model.state_dict(), tmp_path / "model.safetensors")  # checkpoints store tensors only
    expected = [model(*b) for b in batches[2:]]
    resumed = variant(name, seed=123).train()  # another seed: the state must come from the file
    resumed.load_state_dict(load_file(tmp_path / "model.safetensors"))
    got = [resumed(*b) for b in batches[2:]]
    for a, b in zip(expected, got):
        torch.testing.assert_close(a.logits, b.logits, rtol=0, atol=0)
        assert a.loss.item() == b.loss.item() and a.metrics.keys() == b.metrics.keys()
        assert all(torch.equal(a.metrics[k], b.metrics[k]) for k in a.metrics)
    assert torch.equal(model.carry.halted, resumed.carry.halted)
    assert torch.equal(model.halt_rng.get_state(), resumed.halt_rng.get_state())


@pytest.mark.parametrize("name", RECURSIVE)
def test_training_halts_at_halt_max_steps(name):
    model = variant(name, halt_explore=0.0, halt_max_steps=3).train()  # q_halt starts at -5: no early halt
    inputs, labels = puzzles()
    halted = []
    for _ in range(4):
        out = model(inputs, labels)
        halted.append(model.carry.halted.tolist())
    assert halted == [[False] * 4, [False] * 4, [True] * 4, [False] * 4]
    assert out.metrics["halted"].item() == 0.0 and model.carry.steps.tolist() == [1] * 4


@pytest.mark.parametrize("name", RECURSIVE)
def test_the_halting_head_and_exploration_decide_early_halts(name):
    inputs, labels = puzzles(batch=64)
    eager = variant(name, halt_explore=0.0, halt_max_steps=5).train()
    torch.nn.init.constant_(eager.halt_head.bias, 5.0)  # q_halt > 0: halt after the first step
    out = eager(inputs, labels)
    assert eager.carry.halted.all() and out.metrics["halted"].item() == 64
    assert out.metrics["steps"].item() == 1.0
    explorer = variant(name, halt_explore=1.0, halt_max_steps=5).train()
    torch.nn.init.constant_(explorer.halt_head.bias, 5.0)
    explorer(inputs, labels)  # every slot draws a minimum number of steps in [2, 5]
    assert not explorer.carry.halted.any()


def test_halting_metrics_count_only_the_halted_slots():
    model = variant("trm", halt_explore=0.0).train()
    inputs, labels = puzzles()
    torch.nn.init.constant_(model.halt_head.bias, 5.0)
    out = model(inputs, labels)
    keep = labels != IGNORE_INDEX
    right = (out.logits.argmax(-1) == labels) & keep
    assert out.metrics["cell"].item() == pytest.approx((right.sum(1) / keep.sum(1)).mean().item())
    assert out.metrics["exact"].item() == (right.sum(1) == keep.sum(1)).float().mean().item()
    q_right = torch.ones(4, dtype=torch.bool) == (right.sum(1) == keep.sum(1))  # q_halt > 0 says "right"
    assert out.metrics["halt_acc"].item() == q_right.float().mean().item()


# ---- eval mode -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", RECURSIVE)
def test_eval_runs_every_step_deterministically_and_leaves_the_carry_alone(name):
    model = variant(name).train()
    inputs, labels = puzzles()
    model(inputs, labels)
    carry = model.carry
    torch.nn.init.constant_(model.halt_head.bias, 5.0)  # would halt everything after one step in training
    model.eval()
    with torch.no_grad():
        full, again = model(inputs, labels), model(inputs, labels)
        one, three = model(inputs, labels, steps=1), model(inputs, labels, steps=3)
    assert torch.equal(full.logits, again.logits) and torch.equal(full.logits, three.logits)
    assert not torch.allclose(full.logits, one.logits)  # the later steps did run
    assert full.n_evals > 2 * one.n_evals  # (warm-started solves may take fewer iterations)
    assert model.carry is carry
    with pytest.raises(ValueError, match="steps"):
        model(inputs, steps=0)
    with pytest.raises(ValueError, match="training runs one per call"):
        model.train()(inputs, labels, steps=2)


def test_trm_depth_is_its_inner_cycles_and_iters_sets_them():
    model = variant("trm", h_cycles=2, l_cycles=3).eval()
    inputs, _ = puzzles()
    with torch.no_grad():
        out, two = model(inputs, steps=2), model(inputs, iters=1, steps=2)
    assert out.depth.tolist() == [6] * 4 and out.n_evals == 2 * 2 * (3 + 1)
    assert two.depth.tolist() == [2] * 4 and two.n_evals == 2 * 2 * (1 + 1)
    assert out.converged is None and out.info is None


@pytest.mark.parametrize("name", ["attractor", "attractor-joint"])
def test_attractor_reports_its_solve_and_iters_sets_the_steps(name):
    model = variant(name).eval()
    inputs, _ = puzzles()
    with torch.no_grad():
        out = model(inputs, steps=1)
        warm = model(inputs, iters=0, steps=1)
        three = model(inputs, iters=3, steps=1)
    cycles = 1 if model.cfg.joint else model.cfg.h_cycles
    solve = model.cfg.solve
    assert out.info.depth.shape == (4,) and out.converged.dim() == 0
    assert ((out.depth >= cycles * solve.min_iter) & (out.depth <= cycles * solve.max_iter)).all()
    assert warm.depth.tolist() == [0] * 4 and three.depth.tolist() == [3 * cycles] * 4
    assert warm.info is None and not torch.allclose(warm.logits, three.logits)


def test_joint_and_split_solves_differ():
    inputs, _ = puzzles()
    with torch.no_grad():
        split = variant("attractor", h_cycles=1).eval()(inputs, steps=1)
        joint = variant("attractor-joint").eval()(inputs, steps=1)
    assert split.info.depth.shape == joint.info.depth.shape == (4,)
    assert not torch.allclose(split.logits, joint.logits)


# ---- the phantom gradient ------------------------------------------------------------------------

def test_phantom_gradient_is_backprop_through_two_steps_from_the_fixed_point():
    from attractor.fixedpoint import fixed_point

    inputs, labels = puzzles()
    model = variant("attractor", h_cycles=1).eval()
    model(inputs, labels, steps=1).loss.backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    # by hand: z* solved without grad, then the value z* with the gradient of f(f(z*)) (damping 1)
    model.zero_grad()
    solve, p = model.cfg.solve, model.cfg.prefix_len
    x = model.embed_inputs(inputs)
    z_H, z_L = model.initial_state(4)
    injection = z_H + x

    def f(z):
        return model.net(z, injection)

    with torch.no_grad():
        z_star, _ = fixed_point(f, z_L, solver=solve.solver, grad="unroll", tol=solve.tol,
                                max_iter=solve.max_iter, min_iter=solve.min_iter, on_fail="ignore")
    two = f(f(z_star))
    z_L = z_star + (two - two.detach())
    logits, loss = model.decode(model.net(z_H, z_L)[:, p:], labels)
    loss.backward()
    assert got.keys() == {n for n, q in model.named_parameters() if q.grad is not None}
    for n, q in model.named_parameters():
        if q.grad is not None:
            # same operations in another order: float32 rounding
            torch.testing.assert_close(got[n], q.grad, rtol=1e-4, atol=1e-6, msg=n)

    # and k matters: one step (OneStep) gives another gradient
    one = variant("attractor", h_cycles=1, grad="onestep").eval()
    one(inputs, labels, steps=1).loss.backward()
    fc = "blocks.0.mlp.fc.weight"
    assert not torch.allclose(one.get_parameter(fc).grad, got[fc])


# ---- presets -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,low,high", [("trm-cpu", 0.85e6, 1.1e6), ("attractor-reasoner-cpu", 0.85e6, 1.1e6),
                                           ("trm-7m", 6.0e6, 7.0e6), ("attractor-reasoner-7m", 6.0e6, 7.0e6),
                                           ("trm-27m", 24e6, 28e6), ("attractor-reasoner-27m", 24e6, 28e6)])
def test_reasoner_preset_parameter_counts(name, low, high):
    total = describe(name)["total"]
    assert low < total < high, total


def test_the_published_solve_is_the_attractor_default():
    from attractor.fixedpoint import Anderson, Phantom

    solve = build("attractor-reasoner-27m").cfg.solve
    assert (solve.solver, solve.grad) == (Anderson(m=5), Phantom(k=2, damping=1.0))
    assert (solve.tol, solve.min_iter, solve.max_iter) == (1e-3, 4, 8)
    cfg = build("trm-27m").cfg
    assert (cfg.d, cfg.n_head, cfg.n_layer, cfg.h_cycles, cfg.l_cycles, cfg.halt_max_steps) == (512, 8, 8, 3, 6, 16)


@pytest.mark.parametrize("joint", [False, True])
def test_attractor_stopping_per_cell_runs_and_traces(joint):
    model = variant("attractor", stop="token", joint=joint, halt_max_steps=2).eval()
    inputs, _ = puzzles(batch=1)
    with torch.no_grad():
        out = model(inputs)
    cells = 2 * 20 if joint else 20  # prefix 4 + 16 cells, both states when joint
    assert out.info.depth.shape == (1, cells) and out.depth.shape == (1,)
    frames = model.trace(inputs)
    torch.testing.assert_close(frames[-1].logits, out.logits, rtol=0, atol=0)
    assert all(f.residual is not None and math.isfinite(f.residual) for f in frames)
