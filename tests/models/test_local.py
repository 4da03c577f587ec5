"""The local equilibrium map (attractor/models/local.py): any length through the same weights, a
step cap that grows with the length, path independence of a contractive map, the looped
baseline's fixed depth, and the model contract (groups, JSON, gradients).

Run: .venv/bin/python -m pytest -q tests/models/test_local.py
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from attractor.errors import ConfigError
from attractor.models import ModelOutput, build, config, config_from_dict, config_to_dict
from attractor.fixedpoint import jacobian_penalty
from attractor.models.equilibrium import solve_equilibrium
from attractor.models.local import LocalConfig, LocalEquilibrium


def bits(batch: int, n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 2, (batch, n), generator=torch.Generator().manual_seed(seed))


def contractive(**overrides) -> LocalEquilibrium:
    """A hand-set map with a small Lipschitz constant: the fixed point is unique."""
    torch.manual_seed(0)
    model = build("parity-local", **overrides).eval()
    with torch.no_grad():
        model.conv1.weight.mul_(0.2)
        model.conv2.weight.mul_(0.2)
    return model


@pytest.mark.parametrize("preset", ["parity-local", "parity-looped"])
def test_the_same_weights_take_any_length(preset):
    torch.manual_seed(0)
    model = build(preset).eval()
    for n in (1, 16, 100):
        idx = bits(3, n)
        with torch.no_grad():
            out = model(idx, idx)
        assert isinstance(out, ModelOutput) and out.logits.shape == (3, n, 2) and out.logits.dtype == torch.float32
        assert torch.isfinite(out.logits).all() and out.loss.dim() == 0
        assert out.depth.shape == (3,) and out.depth.dtype == torch.long and out.n_evals >= 1
    assert model.cfg.seq_len == 16  # a cost estimate only: 100 bits went through


def test_the_step_cap_grows_with_the_length():
    model = build("parity-local")
    assert model.max_iter(16) == 48 and model.max_iter(100) == 300 and model.max_iter(4) == 32  # max(32, 3n)
    assert model.equilibrium(bits(2, 100)).solve.max_iter == 300
    assert build("parity-local", max_iter_per_position=4.0).max_iter(512) == 2048
    assert build("parity-local", max_iter_per_position=0.0).max_iter(512) == 32


def test_a_contractive_map_is_path_independent():
    """Zero and random starts reach the same fixed point, and the same answers."""
    idx = bits(4, 40)
    outs = []
    for start, seed in (("zero", 0), ("random", 1), ("random", 2)):
        model = contractive(start=start, start_seed=seed, tol=1e-6, max_iter_per_position=10.0)
        z0 = model.equilibrium(idx).y0
        assert (z0 == 0).all() if start == "zero" else (z0.abs() > 0).float().mean() > 0.99
        with torch.no_grad():
            outs.append(model(idx))
    assert all(o.converged.item() == 1.0 for o in outs)
    for other in outs[1:]:
        assert torch.allclose(other.logits, outs[0].logits, atol=1e-4)
        assert torch.equal(other.logits.argmax(-1), outs[0].logits.argmax(-1))


def test_random_starts_repeat_in_eval_and_vary_in_training():
    model = build("parity-local", start="random", start_seed=3)
    idx = bits(2, 8)
    model.eval()
    assert torch.equal(model.equilibrium(idx).y0, model.equilibrium(idx).y0)
    model.train()
    assert not torch.equal(model.equilibrium(idx).y0, model.equilibrium(idx).y0)


def test_the_looped_baseline_runs_a_fixed_depth_per_position():
    model = build("parity-looped").eval()
    for n in (5, 16, 33):
        out = model(bits(2, n))
        assert out.depth.tolist() == [n, n] and out.converged is None
    assert build("parity-local")(bits(2, 8), iters=3).depth.tolist() == [3, 3]  # the depth knob
    half = build("parity-looped", loops_per_position=0.5)
    assert half(bits(1, 9)).depth.tolist() == [math.ceil(4.5)]


@pytest.mark.parametrize("grad", ["phantom", "onestep", "unroll"])
def test_gradients_reach_every_parameter_at_two_lengths(grad):
    torch.manual_seed(0)
    model = build("parity-local", grad=grad).train()
    for n in (8, 24):
        model.zero_grad()
        idx = bits(4, n)
        out = model(idx, idx)
        out.loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_per_position_stopping_works_bidirectionally():
    model = contractive(stop="token", tol=1e-5)
    out = model(bits(2, 12))
    assert out.info.depth.shape == (2, 12) and out.converged.item() == 1.0


def test_contract_groups_counts_and_configs():
    model = build("parity-local")
    ids = [id(p) for g in model.param_groups() for p in g.params]
    assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in model.parameters()}
    assert all(g.optimizer == "adamw" for g in model.param_groups())
    counts = model.parameter_counts()
    assert counts["total"] == 9410 and counts["dense"] == counts["total"] - 2 * 32  # the calibration's 9.4k
    assert model.flops_per_token(2) > model.flops_per_token(1) > model.flops_per_token(0) > 0
    for name in ("parity-local", "parity-looped"):
        cfg = config(name)
        assert config_from_dict(json.loads(json.dumps(config_to_dict(cfg)))) == cfg
        assert config_to_dict(cfg)["family"] == "local"
    with pytest.raises(ConfigError, match="odd"):
        LocalConfig(kernel=4)
    with pytest.raises(ConfigError, match="loops_per_position"):
        LocalConfig(loops_per_position=0.0)


def test_inputs_are_checked():
    model = build("parity-local")
    with pytest.raises(ValueError, match="token ids"):
        model(torch.tensor([[0, 2, 1]]))
    with pytest.raises(ValueError, match="iters"):
        model(bits(1, 4), iters=-1)


# ---- the 2-D map (LocalGridConfig, `maze-local`): grids of any side -------------------------

def grids(batch: int, side: int, seed: int = 0) -> torch.Tensor:
    """Random maze-like tokens (1..4: wall, open, S, G) of `batch` grids of side `side`, row by row."""
    return torch.randint(1, 5, (batch, side * side), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("preset", ["maze-local", "maze-looped"])
def test_the_2d_map_takes_any_side(preset):
    torch.manual_seed(0)
    model = build(preset).eval()
    for side in (5, 11):
        idx = grids(2, side)
        with torch.no_grad():
            out = model(idx, idx)
        assert out.logits.shape == (2, side * side, 6) and torch.isfinite(out.logits).all()
        assert out.depth.shape == (2,) and out.n_evals >= 1
    assert model.max_iter(121) == 121 and model.max_iter(25) == 32  # max(32, ceil(1.0 * cells))
    assert build("maze-looped").loops(121) == 61


def test_the_2d_map_is_local_and_sees_rows_as_a_grid():
    """Changing one cell moves the answer only within two cells per evaluation (Chebyshev
    distance), in both directions of the grid: the map is a 2-D convolution, not a 1-D one."""
    torch.manual_seed(0)
    model = build("maze-local").eval()
    side, centre = 11, 5 * 11 + 5
    idx = grids(1, side)
    other = idx.clone()
    other[0, centre] = 1 + other[0, centre] % 4
    with torch.no_grad():
        moved = (model(idx, iters=1).logits - model(other, iters=1).logits).abs().amax(-1)[0].view(side, side)
    reached = (moved > 0).nonzero().tolist()
    assert [5, 5] in reached and [3, 5] in reached and [5, 7] in reached  # up two rows, right two columns
    assert all(abs(r - 5) <= 2 and abs(c - 5) <= 2 for r, c in reached)


def test_the_2d_map_refuses_a_non_square_input_and_round_trips():
    model = build("maze-local")
    with pytest.raises(ValueError, match="square"):
        model(grids(1, 4)[:, :15])
    cfg = config("maze-local")
    assert config_to_dict(cfg)["family"] == "local-grid" and cfg.dims == 2 and LocalConfig.dims == 1
    assert config_from_dict(json.loads(json.dumps(config_to_dict(cfg)))) == cfg
    assert model.parameter_counts()["total"] == 28102  # 3x3 kernels: 9x the 1-D map's taps, 6 tokens


def test_the_2d_trace_gives_picard_frames_up_to_convergence():
    model = contractive_grid()
    steps = model.trace(grids(1, 7), frames=5)
    assert 1 <= len(steps) <= 5 and steps[-1].logits.shape == (1, 49, 6)
    assert steps[-1].residual < model.cfg.solve.tol and steps[-1].label.startswith("iteration ")


def contractive_grid():
    torch.manual_seed(0)
    model = build("maze-local").eval()
    with torch.no_grad():
        model.conv1.weight.mul_(0.2)
        model.conv2.weight.mul_(0.2)
    return model


def test_the_jacobian_penalty_adds_to_the_training_loss_only():
    """jac_penalty adds lam * ||J||_F^2 / dim of the map at its fixed point to the training loss
    (not to the evaluation's); the solve itself draws nothing, so the probe is the first draw."""
    x, y = bits(4, 16), bits(4, 16, seed=1)
    plain, penalised = build("parity-local").train(), build("parity-local", jac_penalty=2.0).train()
    penalised.load_state_dict(plain.state_dict())
    base = plain(x, y).loss
    torch.manual_seed(0)
    loss = penalised(x, y).loss
    problem = penalised.equilibrium(x)
    with torch.no_grad():
        z_star, _ = solve_equilibrium(problem)
    torch.manual_seed(0)
    expected = base + 2.0 * jacobian_penalty(problem.f, z_star).mean()
    assert loss.item() > base.item()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    loss.backward()
    assert penalised.conv2.weight.grad.abs().sum() > 0
    plain.eval(), penalised.eval()
    assert torch.equal(plain(x, y).loss, penalised(x, y).loss)
    with pytest.raises(ConfigError, match="jac_penalty"):
        build("parity-looped", jac_penalty=1.0)


def test_the_progressive_loss_mixes_a_random_loop_count_without_early_gradient():
    """progressive=alpha: (1 - alpha) the loss after the N loops, alpha the loss after n loops
    without gradient and k with it (n, k drawn from torch's generator); evaluation unchanged."""
    x, y = bits(3, 12), bits(3, 12, seed=2)
    model = build("parity-looped", progressive=0.25, loops_per_position=0.5).train()  # N = 6 loops
    torch.manual_seed(0)
    model.conv1.weight.data.mul_(4.0)  # a map that still moves after a few loops
    full = LocalEquilibrium.token_loss(model.head(_loops(model, x, 6)).float(), y)
    torch.manual_seed(3)
    loss = model(x, y).loss
    torch.manual_seed(3)
    before = int(torch.randint(0, 6, ()))
    after = int(torch.randint(1, 6 - before + 1, ()))
    with torch.no_grad():
        z = _loops(model, x, before)
    problem = model.equilibrium(x)
    for _ in range(after):
        z = problem.f(z)
    progressive = LocalEquilibrium.token_loss(model.head(z).float(), y)
    torch.testing.assert_close(loss, 0.75 * full + 0.25 * progressive)
    assert abs(progressive.item() - full.item()) > 1e-4
    model.eval()
    torch.testing.assert_close(model(x, y).loss, full)
    with pytest.raises(ConfigError, match="progressive"):
        build("parity-local", progressive=0.5)


def _loops(model: LocalEquilibrium, x: torch.Tensor, n: int) -> torch.Tensor:
    """The state after n evaluations of the model's map from its start."""
    problem = model.equilibrium(x)
    z = problem.y0
    for _ in range(n):
        z = problem.f(z)
    return z
