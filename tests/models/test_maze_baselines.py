"""The maze baselines beside the 2-D local map: the feed-forward stack (untied layers of the same
map), the grid transformer and grid TRM (2-D positions, any side), and the step cap that an
iteration budget sets.

Run: .venv/bin/python -m pytest -q tests/models/test_maze_baselines.py
"""

from __future__ import annotations

import pytest
import torch

from attractor.errors import ConfigError
from attractor.layers import grid_rotary
from attractor.models import build, config
from attractor.models.puzzle import PuzzleTransformerConfig

TINY_ATTENTION = dict(d=16, n_head=2)  # head size 8: divisible by 4, as 2-D positions need


def mazes(batch: int, side: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(1, 6, (batch, side * side), generator=torch.Generator().manual_seed(seed))


def test_the_feedforward_stack_has_its_depth_in_untied_layers():
    model = build("maze-feedforward", layers=3, d=4).eval()
    weights = [layer.weight for layer in (*model.conv1, *model.conv2)]
    assert len(weights) == 6 and len({w.data_ptr() for w in weights}) == 6  # no layer shares a tensor
    for side in (5, 7):
        out = model(mazes(2, side))
        assert out.logits.shape == (2, side * side, 6) and out.depth.tolist() == [3, 3] and out.n_evals == 3
    with pytest.raises(ValueError, match="fixed depth of 3"):
        model(mazes(1, 5), iters=5)
    with pytest.raises(ValueError, match="no map to solve"):
        model.equilibrium(mazes(1, 5))
    assert not model.has_depth and build("maze-local").has_depth  # `attractor eval` sweeps no depths of it
    assert config("maze-feedforward").layers == 32 and build("maze-feedforward").loops(33 * 33) == 32


def test_every_layer_of_the_stack_is_trained():
    model = build("maze-feedforward", layers=3, d=4).train()
    x = mazes(2, 5)
    model(x, x).loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters() if p.dim() > 1)
    assert sum(len(g.params) for g in model.param_groups()) == len(list(model.parameters()))


def test_layers_and_loops_exclude_each_other():
    with pytest.raises(ConfigError, match="exclude each other"):
        config("maze-looped", layers=4)
    with pytest.raises(ConfigError, match="layers=0"):
        config("maze-feedforward", layers=0)


@pytest.mark.parametrize("k", [3, 10])
def test_a_step_budget_caps_the_solve(k):
    """max_iter_per_position=0 and max_iter=K: at most K solver steps at any side."""
    torch.manual_seed(0)
    model = build("maze-local", max_iter_per_position=0.0, max_iter=k, tol=0.0).eval()
    for side in (5, 9):
        out = model(mazes(2, side))
        assert out.depth.max().item() == k and out.n_evals <= k + 1


def test_grid_rotary_scores_depend_on_the_offset_only():
    """q.k between a cell and another depends on their row and column offsets, at any side."""
    torch.manual_seed(0)
    q, k = torch.randn(8), torch.randn(8)

    def score(side: int, a: tuple[int, int], b: tuple[int, int]) -> float:
        x = torch.zeros(2, 1 + side * side, 8)  # (q, k), a prefix of 1, the cells
        x[0, 1 + a[0] * side + a[1]], x[1, 1 + b[0] * side + b[1]] = q, k
        r = grid_rotary(x, prefix=1, side=side)
        return float(r[0, 1 + a[0] * side + a[1]] @ r[1, 1 + b[0] * side + b[1]])

    reference = score(5, (1, 2), (3, 1))
    assert score(9, (4, 6), (6, 5)) == pytest.approx(reference, abs=1e-5)
    assert score(5, (1, 2), (3, 2)) != pytest.approx(reference, abs=1e-3)  # another offset, another score
    assert score(5, (1, 2), (2, 1)) != pytest.approx(reference, abs=1e-3)
    x = torch.randn(1, 1 + 25, 8)
    assert torch.equal(grid_rotary(x, 1, 5)[:, :1], x[:, :1])  # the prefix is not rotated
    with pytest.raises(ValueError, match="not a prefix of 1 and a 4x4 grid"):
        grid_rotary(x, 1, 4)


@pytest.mark.parametrize("name", ["maze-transformer", "maze-trm"])
def test_the_attention_baselines_take_mazes_of_any_side(name):
    torch.manual_seed(0)
    model = build(name, **TINY_ATTENTION)
    for side in (5, 7):
        x = mazes(2, side)
        model.train()
        loss = model(x, x).loss
        loss.backward()
        assert torch.isfinite(loss) and model.embed.weight.grad is not None
        model.eval()
        with torch.no_grad():
            out = model(x, x)
        assert out.logits.shape == (2, side * side, 6) and torch.isfinite(out.logits).all()
    with pytest.raises(ValueError, match="square grids"):
        model(mazes(1, 5)[:, :24])
    with pytest.raises(ValueError, match="must have length seq_len=81"):  # the fixed-size model is unchanged
        build("puzzle-transformer-cpu", vocab_size=6, **TINY_ATTENTION)(mazes(1, 5))
    assert len(model.trace(mazes(1, 7))) >= 1


@pytest.mark.parametrize("name", ["maze-transformer", "maze-trm"])
def test_2d_positions_need_a_head_size_divisible_by_4(name):
    with pytest.raises(ConfigError, match="divisible by 4"):
        config(name, d=24, n_head=4)  # head size 6: even, not divisible by 4
    assert not PuzzleTransformerConfig.grid and config(name).grid
