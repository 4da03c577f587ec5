"""The one equilibrium solve (models/equilibrium.py) and the public problem accessor.

The reference file equilibrium_reference.pt.gz (torch.save, gzipped) holds what seeded tiny models returned before the LM
stack and the reasoner shared one solve (commit bbf88c9, where each wrote its own): outputs,
depths, evaluations, convergence, gradients and the reasoner's previews, at iters = None, 0, 1, 3.
The shared solve must reproduce them. Rewrite it only for an intended change of behaviour:
    .venv/bin/python tests/models/test_equilibrium.py --write
Run: .venv/bin/python -m pytest -q tests/models/test_equilibrium.py
"""

from __future__ import annotations

import gzip
import io
import sys
from pathlib import Path

import pytest
import torch

import attractor
from attractor.models import Equilibrium, build, solve_equilibrium

REFERENCE = Path(__file__).with_name("equilibrium_reference.pt.gz")
ITERS = (None, 0, 1, 3)
LM_SHAPE = dict(vocab_size=64, seq_len=16, d=32, n_head=2)
PUZZLE_SHAPE = dict(vocab_size=6, seq_len=16, d=32, n_head=2, halt_max_steps=2)
# name -> (preset, overrides): every branch of the solve (per token or per sample, causal or not,
# plain steps with an attached or an unrolled gradient, split or joint reasoner); "short" solves
# stop before tol somewhere, so that the share of converged tokens and of samples differ
LMS = {
    "attractor/token": ("attractor-1m", dict(n_backbone=1)),
    "attractor/sample": ("attractor-1m", dict(n_backbone=1, stop="sample")),
    "attractor/token/unroll": ("attractor-1m", dict(n_backbone=1, grad="unroll")),
    "attractor/token/implicit": ("attractor-1m", dict(n_backbone=1, grad="implicit")),
    "deq/token": ("deq-1m", dict(n_prelude=1)),
    "deq/sample": ("deq-1m", dict(n_prelude=1, stop="sample")),
    "attractor/token/short": ("attractor-1m", dict(n_backbone=1, tol=1e-5, max_iter=4)),
    "deq/sample/short": ("deq-1m", dict(n_prelude=1, stop="sample", tol=1e-4, max_iter=4)),
}
REASONERS = {
    "reasoner/split": dict(h_cycles=2),
    "reasoner/split/token": dict(h_cycles=2, stop="token"),
    "reasoner/joint": dict(joint=True),
    "reasoner/joint/token": dict(joint=True, stop="token"),
    "reasoner/split/token/short": dict(h_cycles=2, stop="token", tol=1e-5, min_iter=1, max_iter=4),
    "reasoner/joint/token/short": dict(joint=True, stop="token", tol=3e-4, min_iter=1, max_iter=4),
}


def lm(name: str):
    preset, overrides = LMS[name]
    torch.manual_seed(0)
    return build(preset, **LM_SHAPE, **overrides)


def reasoner(name: str, **overrides):
    torch.manual_seed(0)
    return build("attractor-reasoner-cpu", **{**PUZZLE_SHAPE, **REASONERS[name], **overrides})


def lm_batch() -> torch.Tensor:
    return torch.randint(0, 64, (3, 16), generator=torch.Generator().manual_seed(1))


def puzzles(batch: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Random 4x4 'puzzles' (as test_puzzle_models): inputs (B, 16) with about half the cells blank."""
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(2, 6, (batch, 16), generator=gen)
    return torch.where(torch.rand(batch, 16, generator=gen) < 0.5, 1, labels), labels


def projected(t: torch.Tensor) -> torch.Tensor:
    """t (..., N) times a fixed random vector (N,): (...), to keep the reference file small.
    Any change of t beyond rounding moves it."""
    return t.detach() @ torch.randn(t.shape[-1], generator=torch.Generator().manual_seed(0), dtype=t.dtype)


def summary(out) -> dict:
    """What a forward reports, as plain data (the logits projected)."""
    info = out.info
    return {"logits": projected(out.logits), "loss": None if out.loss is None else out.loss.detach(),
            "depth": out.depth, "n_evals": out.n_evals, "converged": out.converged,
            # the key "iters" is the reference file's, written before FixedPointInfo.iters became .depth
            "iters": None if info is None else info.depth, "residual": None if info is None else info.residual,
            "metrics": {k: v.detach() for k, v in out.metrics.items()}}


def grad_norms(model) -> dict:
    """The gradient's norm per parameter: {"names": [...], "norms": (N,)}."""
    grads = [(n, p.grad.norm()) for n, p in model.named_parameters() if p.grad is not None]
    return {"names": [n for n, _ in grads], "norms": torch.stack([g for _, g in grads])}


def record_lm(name: str) -> dict:
    """Eval forwards at every depth; a training forward and backward, adaptive and at 3 steps."""
    model, idx = lm(name).eval(), lm_batch()
    record = {}
    with torch.no_grad():
        for iters in ITERS:
            record[f"eval/{iters}"] = summary(model(idx, iters=iters))
    model.train()
    for iters in (None, 3):
        model.zero_grad()
        out = model(idx[:, :-1], idx[:, 1:], iters=iters)
        out.loss.backward()
        record[f"train/{iters}"] = {**summary(out), "grads": grad_norms(model)}
    return record


def record_reasoner(name: str) -> dict:
    """Eval forwards at every depth, the previews a watched solve emits (adaptive and at 3 plain
    steps), the trace, and two training calls with their gradients."""
    model = reasoner(name).eval()
    inputs, labels = puzzles()
    record = {}
    with torch.no_grad():
        for iters in ITERS:
            record[f"eval/{iters}"] = summary(model(inputs, labels, iters=iters))
        for iters in (None, 3):
            frames = []
            model.run_steps(inputs[:1], iters, 2, lambda z, r, label: frames.append((z.clone(), r, label)))
            record[f"preview/{iters}"] = {"z": projected(torch.stack([z for z, _, _ in frames])),
                                          "residuals": [r for _, r, _ in frames], "labels": [s for _, _, s in frames]}
        steps = model.trace(inputs[:1])
        record["trace"] = {"logits": projected(torch.stack([s.logits for s in steps])),
                           "residuals": [s.residual for s in steps], "labels": [s.label for s in steps]}
    model.train()
    for call in range(2):
        model.zero_grad()
        out = model(inputs, labels)
        out.loss.backward()
        record[f"train/{call}"] = {**summary(out), "grads": grad_norms(model)}
    return record


def record_all() -> dict:
    return {**{name: record_lm(name) for name in LMS}, **{name: record_reasoner(name) for name in REASONERS}}


def assert_same(got, expected, where: str = "") -> None:
    """Equal structure; integers, booleans and strings exactly, floats to float32 rounding."""
    if isinstance(expected, dict):
        assert got.keys() == expected.keys(), where
        for key in expected:
            assert_same(got[key], expected[key], f"{where}/{key}")
    elif isinstance(expected, list):
        assert len(got) == len(expected), where
        for i, (a, b) in enumerate(zip(got, expected)):
            assert_same(a, b, f"{where}[{i}]")
    elif isinstance(expected, torch.Tensor):
        assert isinstance(got, torch.Tensor) and got.dtype == expected.dtype, where
        if expected.is_floating_point():
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6, msg=where)
        else:
            assert torch.equal(got, expected), where
    elif isinstance(expected, float):
        assert got == pytest.approx(expected, rel=1e-5, abs=1e-7), where
    else:
        assert got == expected, where


@pytest.fixture(scope="module")
def reference() -> dict:
    return torch.load(io.BytesIO(gzip.decompress(REFERENCE.read_bytes())), weights_only=True)


@pytest.mark.parametrize("name", LMS)
def test_lm_solves_as_before(reference, name):
    assert_same(record_lm(name), reference[name], name)


@pytest.mark.parametrize("name", REASONERS)
def test_reasoner_solves_and_previews_as_before(reference, name):
    assert_same(record_reasoner(name), reference[name], name)


# ---- model.equilibrium: the problem a model solves, public -----------------------------------

def solved_by_fixed_point(problem: Equilibrium):
    """The problem solved by attractor.fixed_point directly, as its solve config says."""
    solve = problem.solve
    per_token = solve.stop == "token"
    return attractor.fixed_point(problem.f, problem.y0, solver=solve.solver, grad=solve.grad, tol=solve.tol,
                                 max_iter=solve.max_iter, min_iter=solve.min_iter, on_fail="ignore",
                                 batch_dims=2 if per_token else 1, prefix_stop=per_token and problem.causal)


@pytest.mark.parametrize("name", ["attractor/token", "attractor/sample", "deq/token", "deq/sample"])
def test_lm_equilibrium_is_the_problem_its_forward_solves(name):
    model, idx = lm(name).eval(), lm_batch()
    with torch.no_grad():
        problem = model.equilibrium(idx)
        assert problem.y0.shape == (3, 16, 32) and problem.solve == model.cfg.solve and problem.causal
        assert torch.equal(model.decode(problem.y0, None)[0], model(idx, iters=0).logits)
        assert torch.equal(model.decode(problem.f(problem.y0), None)[0], model(idx, iters=1).logits)
        y, info = solved_by_fixed_point(problem)
        out = model(idx)
        assert torch.equal(model.decode(y, None)[0], out.logits) and torch.equal(info.depth, out.info.depth)
        assert torch.equal(solve_equilibrium(problem)[0], y)


def reasoner_answer(model, z: torch.Tensor) -> torch.Tensor:
    """The logits of a one-cycle, one-step eval forward whose solve ended at z: the latent z_L
    (B, S, D) updates the answer z_H; joint, z (B, 2S, D) holds the answer."""
    s = model.cfg.prefix_len + model.cfg.seq_len
    z_H = z[:, :s] if model.cfg.joint else model.net(model.initial_state(z.shape[0])[0], z)
    return model.decode(z_H[:, model.cfg.prefix_len:], None)[0]


@pytest.mark.parametrize("name", ["reasoner/split", "reasoner/split/token", "reasoner/joint", "reasoner/joint/token"])
def test_reasoner_equilibrium_is_its_first_solve(name):
    model = reasoner(name, h_cycles=1).eval()  # one cycle: the answer follows the first solve
    inputs, _ = puzzles()
    s = model.cfg.prefix_len + model.cfg.seq_len
    with torch.no_grad():
        problem = model.equilibrium(inputs)
        assert problem.y0.shape == (4, 2 * s if model.cfg.joint else s, 32)
        assert problem.solve == model.cfg.solve and not problem.causal
        first = model(inputs, iters=1, steps=1).logits
        assert torch.equal(reasoner_answer(model, problem.f(problem.y0)), first)
        z, info = solved_by_fixed_point(problem)
        out = model(inputs, steps=1)
        assert torch.equal(reasoner_answer(model, z), out.logits) and torch.equal(info.depth, out.info.depth)


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python tests/models/test_equilibrium.py --write  (rewrites the reference)")
    buffer = io.BytesIO()
    torch.save(record_all(), buffer)
    REFERENCE.write_bytes(gzip.compress(buffer.getvalue(), mtime=0))
    print(f"wrote {REFERENCE} ({REFERENCE.stat().st_size} bytes)")
