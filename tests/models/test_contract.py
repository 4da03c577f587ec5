"""The contract every family keeps, so one trainer serves them all (models/base.py).

forward(idx, targets=None, *, iters=None) -> ModelOutput with typed fields; targets ignore -100;
configs typed, every solve option reachable, JSON round trips exact; param_groups label every
parameter once; every random state is in state_dict; the equilibrium stack is causal or not.

Run: .venv/bin/python -m pytest -q tests/models/test_contract.py
"""

from __future__ import annotations

import dataclasses
import io
import json

import pytest
import torch
from conftest import tokens
from hypothesis import given, settings
from hypothesis import strategies as st

from attractor.errors import ConfigError
from attractor.fixedpoint import (
    Anderson,
    Broyden,
    FixedPointInfo,
    Implicit,
    Neumann,
    OneStep,
    Phantom,
    Picard,
    Unroll,
    fixed_point,
)
from attractor.models import (
    IGNORE_INDEX,
    PRESETS,
    EquilibriumStack,
    ModelOutput,
    SolveConfig,
    build,
    config,
    config_from_dict,
    config_to_dict,
)
from attractor.models.equilibrium import EquilibriumConfig

FAMILIES = ["attractor-1m", "transformer-1m", "looped-1m", "deq-1m"]
RECURRENT = ["attractor-1m", "looped-1m", "deq-1m"]
TINY = dict(vocab_size=64, seq_len=16, d=32, n_head=2)


def tiny(name: str, **overrides):
    torch.manual_seed(0)
    return build(name, **TINY, **overrides)


# ---- 9. one forward, one output type ---------------------------------------------------------

@pytest.mark.parametrize("name", FAMILIES)
def test_every_family_returns_typed_fields(name):
    model = tiny(name).eval()
    idx = tokens(vocab=64)
    with torch.no_grad():
        out = model(idx, idx)
    assert isinstance(out, ModelOutput) and not hasattr(out, "stats")
    assert out.logits.shape == (3, 16, 64) and out.logits.dtype == torch.float32 and out.loss.dim() == 0
    assert isinstance(out.n_evals, int)
    if name == "transformer-1m":
        assert out.depth is None and out.n_evals == 0 and out.converged is None and out.info is None
        return
    assert out.depth.shape == (3,) and out.depth.dtype == torch.long and out.n_evals >= 1
    if name == "looped-1m":  # no solve: depth is the loops run
        assert out.converged is None and out.info is None and out.n_evals == int(out.depth.max())
    else:
        assert isinstance(out.info, FixedPointInfo) and out.info.depth.shape == (3, 16)
        assert out.converged.dim() == 0 and out.converged.item() == out.info.converged.float().mean().item()
        assert torch.equal(out.depth, out.info.depth.max(1).values) and out.n_evals == out.info.n_evals


@pytest.mark.parametrize("name", RECURRENT)
def test_iters_is_the_one_depth_keyword(name):
    model = tiny(name).eval()
    with torch.no_grad():
        out = model(tokens(vocab=64), iters=3)
    assert out.depth.tolist() == [3, 3, 3] and out.n_evals == 3
    with pytest.raises(TypeError):
        model(tokens(vocab=64), None, 3)  # keyword only: a positional 3 is a likely mistake
    with pytest.raises(TypeError):
        model(tokens(vocab=64), loops=3)


def test_transformer_refuses_any_depth():
    model = tiny("transformer-1m")
    with pytest.raises(ValueError, match="fixed depth"):
        model(tokens(vocab=64), iters=2)
    with pytest.raises(ValueError, match="fixed depth"):
        model(tokens(vocab=64), iters=0)


# ---- 10. targets and empty sequences ---------------------------------------------------------

@pytest.mark.parametrize("name", FAMILIES)
def test_all_ignored_targets_give_zero_loss_and_zero_gradient(name):
    model = tiny(name).train()
    idx = tokens(vocab=64)
    out = model(idx, torch.full_like(idx, IGNORE_INDEX))
    assert out.loss.item() == 0.0
    out.loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is None or (torch.isfinite(p.grad).all() and not p.grad.any()), pname


@pytest.mark.parametrize("name", FAMILIES)
def test_ignored_targets_drop_out_of_the_mean(name):
    model = tiny(name).eval()
    idx = tokens(vocab=64)
    targets = torch.roll(idx, -1, 1)
    masked = targets.clone()
    masked[:, :5] = IGNORE_INDEX
    with torch.no_grad():
        out = model(idx, masked, iters=2 if name != "transformer-1m" else None)
    expected = torch.nn.functional.cross_entropy(out.logits[:, 5:].flatten(0, 1), targets[:, 5:].flatten())
    torch.testing.assert_close(out.loss, expected)


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("bad,match", [
    (lambda t: t.clamp(max=63) + 1, r"targets must be in \[0, 64\)"),  # 64 is out of range
    (lambda t: t - 70, r"targets must be in \[0, 64\)"),  # negative, not -100
    (lambda t: torch.full_like(t, -1), r"-100"),  # the old ignore value is an error now
    (lambda t: t[:, :-1], "shape"),
    (lambda t: t.float(), "integer"),
])
def test_bad_targets_fail_clearly(name, bad, match):
    model = tiny(name)
    idx = tokens(vocab=64)
    with pytest.raises(ValueError, match=match):
        model(idx, bad(idx))


@pytest.mark.parametrize("name", FAMILIES)
def test_empty_sequences_fail_clearly(name):
    model = tiny(name)
    with pytest.raises(ValueError, match="at least one token"):
        model(torch.zeros(2, 0, dtype=torch.long))
    with pytest.raises(ValueError, match="at least one sequence"):
        model(torch.zeros(0, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        model(torch.zeros(2, 4))


# ---- 11. every solve option reachable; typed configs; exact JSON round trip -------------------

@pytest.mark.parametrize("overrides,solver,grad", [
    (dict(solver=Picard(damping=0.5)), Picard(damping=0.5), OneStep()),
    ({"solver.beta": 0.5, "solver.ridge": 1e-2, "solver.m": 3}, Anderson(m=3, beta=0.5, ridge=1e-2), OneStep()),
    (dict(solver="broyden", **{"solver.m": 7}), Broyden(m=7), OneStep()),
    (dict(grad=Phantom(k=3, damping=0.7)), Anderson(), Phantom(k=3, damping=0.7)),
    (dict(grad="implicit", **{"grad.solver": Broyden(m=4), "grad.tol": 1e-7}), Anderson(),
     Implicit(solver=Broyden(m=4), tol=1e-7)),
])
def test_every_solve_option_reaches_fixed_point(monkeypatch, overrides, solver, grad):
    import attractor.models.equilibrium as equilibrium

    seen = {}

    def spy(f, z0, **kwargs):
        seen.update(kwargs)
        return fixed_point(f, z0, **kwargs)

    monkeypatch.setattr(equilibrium, "fixed_point", spy)
    model = tiny("attractor-1m", tol=1e-5, max_iter=40, min_iter=2, **overrides).train()
    idx = tokens(vocab=64)
    model(idx, idx).loss.backward()
    assert seen["solver"] == solver and seen["grad"] == grad
    assert (seen["tol"], seen["max_iter"], seen["min_iter"]) == (1e-5, 40, 2)


def test_damping_changes_the_trajectory():
    idx = tokens(vocab=64)

    def depth(solver):
        with torch.no_grad():
            return tiny("attractor-1m", tol=1e-5, max_iter=60, solver=solver).eval()(idx).depth.sum().item()

    assert depth(Picard(damping=0.5)) > depth(Picard())  # the option is used, not just stored


def test_options_of_another_solver_are_refused_not_ignored():
    with pytest.raises(ConfigError, match="Picard"):
        config("attractor-1m", solver="picard", **{"solver.m": 3})
    with pytest.raises(ConfigError, match="did you mean 'solver'"):
        config("attractor-1m", solvr="picard")


def test_grad_names_mean_the_same_as_in_fixed_point():
    # a name gives the class defaults in both places (neumann was k=2 in a model, k=1 in the core)
    for name, cls in [("neumann", Neumann), ("phantom", Phantom), ("implicit", Implicit)]:
        assert config("attractor-1m", grad=name).solve.grad == cls()


@pytest.mark.parametrize("bad,field,expected", [
    (dict(d="big"), "d", "int"), (dict(d=128.0), "d", "int"), (dict(max_iter=5.5), "max_iter", "int"),
    (dict(tol="1e-4"), "tol", "float"), (dict(gate_init=None), "gate_init", "float"),
    (dict(n_backbone=True), "n_backbone", "int"), (dict(stop="tokens"), "stop", "'token'"),
    (dict(solver=Anderson), "solver", "Anderson"), (dict(grad=OneStep), "grad", "OneStep"),
])
def test_config_types_are_checked_naming_the_field(bad, field, expected):
    with pytest.raises(ConfigError, match=rf"{field}=.*must be.*{expected}"):
        config("attractor-1m", **bad)


@pytest.mark.parametrize("name,bad,message", [
    ("deq-1m", dict(tied_head="no"), "tied_head='no' must be bool"),
    ("looped-1m", dict(backprop_loops=2.0), "backprop_loops=2.0 must be int or None"),
    ("transformer-1m", dict(n_layer="5"), "n_layer='5' must be int"),
    ("attractor-1m", dict(n_head=0), "n_head=0"),
])
def test_every_family_checks_its_types(name, bad, message):
    with pytest.raises(ConfigError, match=message):
        config(name, **bad)


def test_numpy_integers_are_integers():
    np = pytest.importorskip("numpy")
    cfg = config("attractor-1m", d=np.int64(64), max_iter=np.int32(7))
    assert type(cfg.d) is int and type(cfg.solve.max_iter) is int and cfg == config("attractor-1m", d=64, max_iter=7)


def round_trip(cfg):
    return config_from_dict(json.loads(json.dumps(config_to_dict(cfg))))


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_round_trips_through_json(name):
    cfg = config(name)
    assert round_trip(cfg) == cfg


solvers = st.one_of(
    st.builds(Picard, damping=st.floats(0.01, 1.0)),
    st.builds(Anderson, m=st.integers(1, 12), beta=st.floats(0.01, 1.0), ridge=st.floats(0.0, 1.0)),
    st.builds(Broyden, m=st.integers(1, 40)),
)
grads = st.one_of(
    st.builds(OneStep), st.builds(Unroll), st.builds(Neumann, k=st.integers(0, 5)),
    st.builds(Phantom, k=st.integers(1, 5), damping=st.floats(0.01, 1.0)),
    st.builds(Implicit, solver=solvers, tol=st.floats(0.0, 1e-2), max_iter=st.integers(1, 100)),
)


@settings(max_examples=40)
@given(solver=solvers, grad=grads, tol=st.floats(0.0, 1.0), max_iter=st.integers(0, 100),
       stop=st.sampled_from(["token", "sample"]), family=st.sampled_from(["attractor-1m", "deq-1m"]))
def test_solve_configs_round_trip_exactly(solver, grad, tol, max_iter, stop, family):
    cfg = config(family, solve=SolveConfig(solver=solver, grad=grad, tol=tol, max_iter=max_iter,
                                           min_iter=max_iter // 2, stop=stop))
    back = round_trip(cfg)
    assert back == cfg and back.solve.solver == solver and back.solve.grad == grad


def test_corrupt_config_dicts_fail_clearly():
    data = config_to_dict(config("attractor-1m"))
    with pytest.raises(ConfigError, match="did you mean 'n_head'"):
        config_from_dict({**data, "n_heads": 4})
    with pytest.raises(ConfigError, match="model family"):
        config_from_dict({**data, "family": "attractr"})
    with pytest.raises(ConfigError, match="did you mean 'anderson'"):
        config_from_dict({**data, "solve": {**data["solve"], "solver": {"name": "andersn"}}})
    with pytest.raises(ConfigError, match="d='64' must be int"):
        config_from_dict({**data, "d": "64"})


# ---- 12. optimiser groups --------------------------------------------------------------------

@pytest.mark.parametrize("name", FAMILIES + ["deq-1m-tied"])
def test_param_groups_label_every_parameter_once(name):
    model = tiny("deq-1m", tied_head=True) if name == "deq-1m-tied" else tiny(name)
    groups = model.param_groups()
    ids = [id(p) for g in groups for p in g.params]
    assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in model.parameters()}
    assert len({g.name for g in groups}) == len(groups)
    for g in groups:
        assert g.params and g.optimizer in ("muon", "adamw")
        if g.optimizer == "muon":  # Muon orthogonalises matrices: never a vector or the embedding
            assert all(p.dim() == 2 for p in g.params) and g.name != "embedding"
        if any(p.dim() == 1 for p in g.params):  # gates and decays take no weight decay
            assert g.wd_mult == 0.0
    by_name = {g.name: g for g in groups}
    assert by_name["embedding"].params == [model.embed.weight] and by_name["embedding"].wd_mult == 0.0


@pytest.mark.parametrize("name,stack", [("attractor-1m", "attractor"), ("deq-1m", "equilibrium")])
def test_attractor_parameters_get_their_own_rate_on_adamw(name, stack):
    model = tiny(name, lr_mult=0.4)
    by_name = {g.name: g for g in model.param_groups()}
    for group in (by_name[stack], by_name[f"{stack}.gates"]):
        assert group.optimizer == "adamw" and group.lr_mult == 0.4
    assert by_name[f"{stack}.gates"].wd_mult == 0.0 and by_name[stack].wd_mult == 1.0
    assert all(g.lr_mult == 1.0 for n, g in by_name.items() if not n.startswith(stack))


@pytest.mark.parametrize("name", FAMILIES)
def test_param_groups_drive_real_optimisers(name):
    model = tiny(name).train()
    lr, wd = 1e-2, 0.1
    muon = [{"params": g.params, "lr": lr * g.lr_mult, "weight_decay": wd * g.wd_mult}
            for g in model.param_groups() if g.optimizer == "muon"]
    adamw = [{"params": g.params, "lr": lr * g.lr_mult, "weight_decay": wd * g.wd_mult}
             for g in model.param_groups() if g.optimizer == "adamw"]
    opts = [torch.optim.AdamW(adamw)] + ([torch.optim.Muon(muon)] if muon else [])
    idx = tokens(vocab=64)
    before = [p.detach().clone() for p in model.parameters()]
    model(idx, torch.roll(idx, -1, 1)).loss.backward()
    for opt in opts:
        opt.step()
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


# ---- 13. every random state is state ---------------------------------------------------------

def test_looped_depth_sampler_is_saved_and_restored():
    model = tiny("looped-1m").train()
    idx = tokens(vocab=64, batch=8)
    model(idx)  # move the sampler off its seed
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    expected = [model(idx).depth for _ in range(3)]
    resumed = tiny("looped-1m", seed=123).train()  # another seed: the state must come from the file
    buffer.seek(0)
    resumed.load_state_dict(torch.load(buffer))
    got = [resumed(idx).depth for _ in range(3)]
    assert all(torch.equal(a, b) for a, b in zip(expected, got))
    assert not all(torch.equal(expected[0], d) for d in expected[1:])  # the draws do vary


# ---- 14. one equilibrium stack, causal or bidirectional, warm-started from a carry ------------

def stack(causal: bool, **solve) -> EquilibriumStack:
    torch.manual_seed(0)
    cfg = EquilibriumConfig(solve=SolveConfig(tol=1e-5, max_iter=60, **solve))
    return EquilibriumStack(32, 2, 1, cfg, causal=causal).eval()


@pytest.mark.parametrize("stop", ["token", "sample"])
def test_bidirectional_stack_sees_the_future_and_reaches_a_fixed_point(stop):
    bidirectional, causal = stack(False, stop=stop), stack(True, stop=stop)
    assert all(not b.attn.causal for b in bidirectional.blocks) and all(b.attn.causal for b in causal.blocks)
    x = torch.randn(2, 10, 32, generator=torch.Generator().manual_seed(0))
    changed = x.clone()
    changed[:, -1] += 1.0
    with torch.no_grad():
        y, report = bidirectional(x, x, None)
        y_changed, _ = bidirectional(changed, changed, None)
        f = bidirectional.map(x)
        assert (f(y) - y).norm() < 1e-4 * y.norm() and report.converged.item() == 1.0
        assert not torch.allclose(y[:, :-1], y_changed[:, :-1])  # earlier positions see the last one
        c, _ = causal(x, x, None)
        c_changed, _ = causal(changed, changed, None)
    if stop == "token":  # prefix stopping: exactly causal
        assert torch.equal(c[:, :-1], c_changed[:, :-1])
    else:  # one decision per sequence: causal up to about tol (SPEC 5)
        torch.testing.assert_close(c[:, :-1], c_changed[:, :-1], rtol=0, atol=1e-3)


def test_a_carried_state_warm_starts_the_solve():
    s = stack(False)
    x = torch.randn(2, 10, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y, cold = s(x, x, None)
        _, warm = s(x, y, None)  # start from the previous answer, as a reasoner's carry does
    assert int(warm.depth.max()) <= 1 < int(cold.depth.max())


def test_bidirectional_tokens_stop_on_their_own():
    # prefix stopping is a causal notion: without it a late token may stop before an early one
    s = stack(False, solver="picard")
    x = torch.randn(4, 10, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        _, report = s(x, x, None)
    depth = report.info.depth
    assert (depth[:, 1:] < depth[:, :-1].cummax(1).values).any()
    with torch.no_grad():
        _, prefix = stack(True, solver="picard")(x, x, None)
    assert (prefix.info.depth[:, 1:] >= prefix.info.depth[:, :-1]).all()


def test_configs_are_frozen():
    cfg = config("attractor-1m")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.solve.tol = 1.0
