"""The forward solve: exact answers, per-sample stopping, scale invariance, safeguards, options."""

from __future__ import annotations

import pytest
import torch
from conftest import contractive_linear, linear_solution
from hypothesis import given, settings
from hypothesis import strategies as st

from attractor import (
    Anderson,
    Broyden,
    ConfigError,
    FixedPointError,
    FixedPointWarning,
    Phantom,
    Picard,
    Status,
    fixed_point,
    relative_residual,
)

SOLVER_NAMES = ["picard", "anderson", "broyden"]


def linear_map(a, b):
    return lambda z: z @ a.T + b


@pytest.mark.parametrize("solver", SOLVER_NAMES)
def test_solver_recovers_exact_linear_solution(solver, gen64):
    a, b = contractive_linear(n=64, radius=0.95, batch=4, generator=gen64)
    z, info = fixed_point(linear_map(a, b), torch.zeros_like(b), solver=solver, tol=1e-12, max_iter=2000)
    assert info.converged.all()
    assert (info.status == Status.CONVERGED).all()
    # tol 1e-12 on the residual bounds the error by tol / (1 - 0.95) relative: 2e-11 < 1e-8.
    torch.testing.assert_close(z, linear_solution(a, b), rtol=1e-8, atol=0)


@pytest.mark.parametrize("spectrum", ["symmetric", "positive"])
@pytest.mark.parametrize("accelerated", ["anderson", "broyden"])
def test_acceleration_halves_f_evaluations(accelerated, spectrum, gen64):
    a, b = contractive_linear(n=64, radius=0.95, batch=4, generator=gen64, spectrum=spectrum)
    counts = {}
    for solver in ("picard", accelerated):
        _, info = fixed_point(linear_map(a, b), torch.zeros_like(b), solver=solver, tol=1e-10, max_iter=2000)
        assert info.converged.all()
        counts[solver] = info.n_evals
    assert counts[accelerated] <= counts["picard"] / 2, counts


@pytest.mark.parametrize("solver", SOLVER_NAMES)
def test_each_sample_stops_on_its_own(solver, gen64):
    easy_a, easy_b = contractive_linear(n=32, radius=0.1, batch=1, generator=gen64)
    hard_a, hard_b = contractive_linear(n=32, radius=0.95, batch=1, generator=gen64)
    a = torch.stack([easy_a, hard_a])  # (2, n, n): one map per sample
    b = torch.cat([easy_b, hard_b])

    def f(z):
        return torch.einsum("bij,bj->bi", a, z) + b

    z, info = fixed_point(f, torch.zeros_like(b), solver=solver, tol=1e-10, max_iter=1000, trace=True)
    # once stopped, the easy sample no longer changes: its residual stays what it was
    stopped_trace = info.trace[0, int(info.depth[0]):]
    assert len(stopped_trace) > 1 and (stopped_trace == stopped_trace[0]).all()
    alone, alone_info = fixed_point(linear_map(easy_a, easy_b), torch.zeros_like(easy_b), solver=solver,
                                    tol=1e-10, max_iter=1000)
    assert info.converged.all()
    assert info.depth[0] < info.depth[1]
    assert info.depth[0] == alone_info.depth[0]
    torch.testing.assert_close(z[:1], alone, rtol=0, atol=1e-12)


def iteration_counts(a, b, solver, scales):
    counts = []
    for s in scales:
        _, info = fixed_point(linear_map(a, s * b), torch.zeros_like(b), solver=solver, tol=1e-4, max_iter=500)
        assert info.converged.all()
        counts.append(info.depth)
    return torch.stack(counts)  # (n_scales, B)


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), dtype=st.sampled_from([torch.float32, torch.float64]),
       solver=st.sampled_from(SOLVER_NAMES))
def test_power_of_two_scaling_leaves_iterations_exactly_unchanged(seed, dtype, solver):
    # Scaling by 2^k rounds exactly like the unscaled problem, so any absolute constant in the
    # solver (an absolute ridge, an absolute eps) is the only thing that can change the count.
    gen = torch.Generator().manual_seed(seed)
    a, b = contractive_linear(n=48, radius=0.9, batch=3, generator=gen, dtype=dtype)
    counts = iteration_counts(a, b, solver, [2.0**k for k in (-10, -5, 0, 5, 10)])
    assert (counts == counts[0]).all(), counts


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), dtype=st.sampled_from([torch.float32, torch.float64]),
       solver=st.sampled_from(SOLVER_NAMES))
def test_iteration_count_does_not_depend_on_scale(seed, dtype, solver):
    gen = torch.Generator().manual_seed(seed)
    a, b = contractive_linear(n=48, radius=0.9, batch=3, generator=gen, dtype=dtype)
    counts = iteration_counts(a, b, solver, [1e-3, 1e-1, 1.0, 1e1, 1e3])
    # Decimal scales change float32 rounding, and Broyden's restarts amplify it: over 40 seeds
    # the worst spread was 3 steps at m=20 (16 at m=8), 0 in float64, and 0 at every
    # power-of-two scale (the test above), so no absolute constant is involved.
    slack = 4 if (solver == "broyden" and dtype == torch.float32) else 2
    assert (counts.max(0).values - counts.min(0).values <= slack).all(), counts


def test_expanding_map_reports_failure_and_stays_finite(gen64):
    a, b = contractive_linear(n=32, radius=1.2, batch=3, generator=gen64, spectrum="positive")
    with pytest.warns(FixedPointWarning):
        z, info = fixed_point(linear_map(a, b), torch.randn_like(b), solver="picard", tol=1e-6, max_iter=300)
    assert not info.converged.any()
    assert torch.isfinite(z).all() and torch.isfinite(info.residual).all()
    assert ((info.status == Status.MAX_ITER) | (info.status == Status.DIVERGED)).all()
    with pytest.raises(FixedPointError, match="did not converge"):
        fixed_point(linear_map(a, b), torch.randn_like(b), solver="picard", tol=1e-6, max_iter=50, on_fail="raise")


@pytest.mark.parametrize("solver", ["anderson", "broyden"])
def test_accelerated_solvers_report_honestly_on_an_expanding_map(solver, gen64):
    # z = Az + b with radius 1.2 still has the root z = (I - A)^-1 b, which Anderson or Broyden
    # may find where Picard cannot. Whatever happens, the report must match the answer.
    a, b = contractive_linear(n=32, radius=1.2, batch=3, generator=gen64, spectrum="positive")
    z, info = fixed_point(linear_map(a, b), torch.randn_like(b), solver=solver, tol=1e-6, max_iter=300,
                          on_fail="ignore")
    assert torch.isfinite(z).all()
    actual = relative_residual(z, linear_map(a, b)(z))
    torch.testing.assert_close(info.residual, actual, rtol=1e-6, atol=1e-12)
    assert torch.equal(info.converged, actual < 1e-6)


def test_blowup_returns_best_iterate(gen64):
    def f(z):  # finite near 0, NaN once |z| > 2: a map that breaks when pushed away
        out = 0.5 * z + 3.0
        return torch.where(z.abs() > 2, torch.full_like(z, float("nan")), out)

    z0 = torch.zeros(2, 4, dtype=torch.float64)
    z, info = fixed_point(f, z0, solver="picard", tol=1e-8, max_iter=20, on_fail="ignore")
    assert torch.isfinite(z).all()
    assert (info.status == Status.DIVERGED).all()
    # The first step (z = 3) already breaks f; the best finite-image iterate is z0.
    torch.testing.assert_close(z, z0)


def test_nonfinite_start_is_reported(gen64):
    z0 = torch.zeros(2, 3, dtype=torch.float64)

    def f(z):
        out = z * 0.5 + 1.0
        out[1] = float("inf")
        return out

    z, info = fixed_point(f, z0, solver="anderson", tol=1e-8, max_iter=10, on_fail="ignore")
    assert info.status.tolist() == [Status.CONVERGED, Status.NONFINITE_START]
    torch.testing.assert_close(z[1], z0[1])


def test_bf16_autocast_keeps_solver_state_float32(gen64):
    w = torch.randn(32, 32, generator=gen64) * 0.2 / 32**0.5 * 4
    u = torch.randn(32, 32, generator=gen64) / 32**0.5
    x = torch.randn(8, 32, generator=gen64)

    def f(z):  # under autocast both products, and so f(z), are bf16
        return torch.tanh(torch.nn.functional.linear(z, w) + torch.nn.functional.linear(x, u))

    ref, _ = fixed_point(f, torch.zeros_like(x), solver="anderson", tol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert f(x).dtype == torch.bfloat16
        z, info = fixed_point(f, torch.zeros_like(x), solver="anderson", tol=2e-2, trace=True)
    assert z.dtype == torch.float32 and info.residual.dtype == torch.float32
    assert info.converged.all()
    # bf16 rounds inputs to 8 mantissa bits, and each f(z) entry sums 64 rounded products of
    # size ~1: entries move by a few 1e-2, the whole answer by a few percent.
    assert (z - ref).norm() / ref.norm() < 5e-2
    torch.testing.assert_close(z, ref, rtol=0, atol=1e-1)


def test_min_iter_and_max_iter(gen64):
    a, b = contractive_linear(n=16, radius=0.1, batch=2, generator=gen64)
    _, info = fixed_point(linear_map(a, b), torch.zeros_like(b), solver="picard", tol=1e-3, min_iter=7)
    assert (info.depth == 7).all()
    z0 = torch.zeros_like(b)
    z, info = fixed_point(linear_map(a, b), z0, solver="picard", max_iter=0, on_fail="ignore")
    assert z is z0 or torch.equal(z, z0)
    assert (info.depth == 0).all() and info.n_evals == 1
    # residual of z0 = 0: ||b|| / ||b|| = 1
    torch.testing.assert_close(info.residual, torch.ones(2, dtype=torch.float64))


def test_trace_records_every_evaluation(gen64):
    a, b = contractive_linear(n=16, radius=0.5, batch=2, generator=gen64)
    _, info = fixed_point(linear_map(a, b), torch.zeros_like(b), solver="picard", tol=1e-8, trace=True)
    assert info.trace.shape == (2, info.n_evals)
    assert (info.trace[:, -1] < 1e-8).all() and (info.trace[:, 0] == 1).all()
    assert "converged 2/2" in info.summary()


def test_info_reports_depth_and_names_the_old_attribute(gen64):
    # FixedPointInfo.iters became .depth in 0.2.0 (`iters` is a model's depth knob only)
    a, b = contractive_linear(n=16, radius=0.1, batch=2, generator=gen64)
    _, info = fixed_point(linear_map(a, b), torch.zeros_like(b), solver="picard", tol=1e-3, min_iter=3)
    assert info.depth.dtype == torch.long and (info.depth >= 3).all()
    assert f"depth median {info.depth.float().median().item():.0f}" in info.summary()
    with pytest.raises(AttributeError, match="renamed FixedPointInfo.depth"):
        info.iters
    with pytest.raises(AttributeError, match="no attribute 'itres'"):
        info.itres


def test_names_and_options_fail_loudly():
    f, z0 = (lambda z: 0.5 * z), torch.ones(1, 2)
    with pytest.raises(ConfigError, match="did you mean 'anderson'"):
        fixed_point(f, z0, solver="andersen")
    with pytest.raises(ConfigError, match="gradient mode"):
        fixed_point(f, z0, grad="implict")
    with pytest.raises(ConfigError, match="on_fail"):
        fixed_point(f, z0, on_fail="explode")
    with pytest.raises(ConfigError, match="min_iter"):
        fixed_point(f, z0, min_iter=5, max_iter=2)
    with pytest.raises(TypeError):
        Anderson(mm=5)
    with pytest.raises(ValueError, match="beta"):
        Anderson(beta=1.5)
    with pytest.raises(ValueError, match="damping"):
        Picard(damping=0.0)
    with pytest.raises(ValueError, match="Broyden m"):
        Broyden(m=0)
    with pytest.raises(ValueError, match=r"shape of z0 \(1, 2\)"):
        fixed_point(lambda z: z.sum(1), z0)


def test_configured_objects_are_used(gen64):
    a, b = contractive_linear(n=32, radius=0.9, batch=2, generator=gen64)
    _, m1 = fixed_point(linear_map(a, b), torch.zeros_like(b), solver=Anderson(m=1), tol=1e-8, max_iter=500)
    _, m8 = fixed_point(linear_map(a, b), torch.zeros_like(b), solver=Anderson(m=8), tol=1e-8, max_iter=500)
    assert m8.n_evals < m1.n_evals


def causal_linear(batch, t, d, gen):
    """f(z)_t = sum_{s<=t} A[t, s] z_s + b_t: unit t depends on units <= t only. (B, T, D)."""
    blocks = torch.randn(t, t, d, d, generator=gen, dtype=torch.float64) * 0.25 / (d * t) ** 0.5
    blocks = blocks * torch.tril(torch.ones(t, t, dtype=torch.float64))[:, :, None, None]
    b = torch.randn(batch, t, d, generator=gen, dtype=torch.float64)
    return (lambda z, b=b: torch.einsum("tsij,bsj->bti", blocks, z) + b), b, blocks


@pytest.mark.parametrize("solver", SOLVER_NAMES)
def test_prefix_stop_makes_adaptive_depth_exactly_causal(solver, gen64):
    f, b, blocks = causal_linear(2, 6, 4, gen64)
    b2 = b.clone()
    b2[:, -1] += 10.0  # change only the last position's input

    def g(z):
        return torch.einsum("tsij,bsj->bti", blocks, z) + b2

    kw = dict(solver=solver, tol=1e-6, max_iter=200, batch_dims=2, prefix_stop=True)
    z1, info1 = fixed_point(f, torch.zeros_like(b), **kw)
    z2, info2 = fixed_point(g, torch.zeros_like(b), **kw)
    assert info1.depth.shape == (2, 6) and info1.converged.all() and info2.converged.all()
    assert torch.equal(z1[:, :-1], z2[:, :-1])  # bit-identical, not merely close
    assert not torch.equal(z1[:, -1], z2[:, -1])
    # every position's iteration count is at least that of the positions before it
    assert (info1.depth.diff(dim=1) >= 0).all()


@pytest.mark.parametrize("solver", SOLVER_NAMES)
def test_prefix_depth_continues_a_prefix_stopped_solve(solver, gen64):
    """Solve units 0..3, then 4..5 alone against the prefix's recorded iterates (what a KV cache
    keeps): with prefix_depth the suffix takes exactly the full solve's steps and iterates."""
    _, b, blocks = causal_linear(2, 6, 4, gen64)
    blocks[4:] *= 0.01  # a suffix that alone would meet tol sooner than its prefix

    def f(z):
        return torch.einsum("tsij,bsj->bti", blocks, z) + b

    kw = dict(solver=solver, tol=1e-6, max_iter=200, batch_dims=2, prefix_stop=True)
    z_full, full = fixed_point(f, torch.zeros_like(b), **kw)
    seen = []  # the prefix's evaluation points, one per call

    def head(z):
        seen.append(z.clone())
        return torch.einsum("tsij,bsj->bti", blocks[:4, :4], z) + b[:, :4]

    z_head, info_head = fixed_point(head, torch.zeros_like(b[:, :4]), **kw)

    def tail(z):  # call k sees the prefix at its k-th point (its last once it has stopped)
        k = min(tail.calls, len(seen) - 1)
        tail.calls += 1
        whole = torch.cat([seen[k], z], 1)
        return torch.einsum("tsij,bsj->bti", blocks[4:], whole) + b[:, 4:]

    tail.calls = 0
    z_tail, info_tail = fixed_point(tail, torch.zeros_like(b[:, 4:]), **kw, prefix_depth=info_head.depth[:, -1])
    assert torch.equal(info_tail.depth, full.depth[:, 4:])
    torch.testing.assert_close(torch.cat([z_head, z_tail], 1), z_full, rtol=0, atol=1e-12)
    # without it the suffix may stop before its prefix did: depth is no longer the full solve's
    tail.calls = 0
    _, alone = fixed_point(tail, torch.zeros_like(b[:, 4:]), **kw)
    assert bool((alone.depth <= full.depth[:, 4:]).all()) and not torch.equal(alone.depth, full.depth[:, 4:])
    assert bool((full.first_met <= full.depth).all())
    with pytest.raises(ValueError, match="prefix_depth"):
        fixed_point(f, torch.zeros_like(b), solver=solver, batch_dims=2, prefix_depth=info_head.depth[:, -1])


def test_coupled_units_without_prefix_stop_still_reach_a_joint_fixed_point(gen64):
    f, b, _ = causal_linear(2, 6, 4, gen64)
    z, info = fixed_point(f, torch.zeros_like(b), solver="anderson", tol=1e-8, max_iter=300, batch_dims=2)
    assert info.converged.all()
    assert (relative_residual(z.flatten(0, 1), f(z).flatten(0, 1)) < 1e-8).all()


@pytest.mark.parametrize("solver", [Anderson(m=3, beta=0.5), Picard(damping=0.7), Broyden(m=4)])
def test_configured_solvers_reach_the_exact_solution(solver, gen64):
    a, b = contractive_linear(n=32, radius=0.9, batch=3, generator=gen64)
    z, info = fixed_point(linear_map(a, b), torch.zeros_like(b), solver=solver, tol=1e-12, max_iter=3000)
    assert info.converged.all()
    torch.testing.assert_close(z, linear_solution(a, b), rtol=1e-9, atol=0)


# ---- inputs that used to be misread, and the ranking of iterates ------------------------------

def test_unbatched_z0_is_refused():
    # (N,) used to be solved as N scalar problems: wrong on any map that couples coordinates.
    with pytest.raises(ConfigError, match="batch dimension"):
        fixed_point(lambda z: 0.5 * z.flip(0), torch.ones(3))
    with pytest.raises(ConfigError, match="batch dimension"):
        fixed_point(lambda z: 0.5 * z, torch.tensor(1.0))


@pytest.mark.parametrize("solver", SOLVER_NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_inplace_f_leaves_z0_alone_and_is_solved(solver, dtype, gen64):
    a, b = contractive_linear(n=8, radius=0.5, batch=2, generator=gen64, dtype=dtype)

    def f(z):  # writes its image into its argument
        return z.copy_(z @ a.T + b)

    z0 = torch.randn(b.shape, generator=gen64, dtype=torch.float64).to(dtype)
    before = z0.clone()
    for grad_on in (False, True):  # without autograd, and with the default implicit gradient
        with torch.set_grad_enabled(grad_on):
            z, info = fixed_point(f, z0, solver=solver, tol=1e-5, max_iter=200)
        assert torch.equal(z0, before)
        assert info.converged.all() and (info.depth > 0).all()
        # tol 1e-5 relative residual at contraction 0.5 bounds the error by 2e-5 relative
        torch.testing.assert_close(z, linear_solution(a, b), rtol=1e-4, atol=1e-4)


def test_f_that_writes_only_later_is_refused():
    calls = []

    def f(z):
        calls.append(1)
        return z.mul_(0.5) if len(calls) == 3 else 0.5 * z

    with pytest.raises(ConfigError, match="in place"):
        fixed_point(f, torch.ones(2, 3), solver="picard", tol=1e-8, max_iter=10)


def test_max_iter_zero_honours_on_fail(gen64):
    a, b = contractive_linear(n=4, radius=0.5, batch=2, generator=gen64)
    with pytest.raises(FixedPointError):
        fixed_point(linear_map(a, b), torch.zeros_like(b), max_iter=0, on_fail="raise")
    with pytest.warns(FixedPointWarning):
        fixed_point(linear_map(a, b), torch.zeros_like(b), max_iter=0, on_fail="warn")


@pytest.mark.parametrize("solver", SOLVER_NAMES)
def test_tol_zero_counts_an_exact_fixed_point_as_converged(solver):
    b = torch.tensor([[1.0, 2.0], [3.0, -1.0]], dtype=torch.float64)
    z0 = torch.stack([2 * b[0], torch.zeros(2, dtype=torch.float64)])  # sample 0 starts at z*
    z, info = fixed_point(lambda z: 0.5 * z + b, z0, solver=solver, tol=0.0, max_iter=5, on_fail="ignore")
    assert info.status[0] == Status.CONVERGED and info.converged[0] and info.depth[0] == 0
    assert torch.equal(z[0], z0[0])


def test_answer_is_the_iterate_with_the_lowest_absolute_residual():
    # Picard on f(z) = A z with A = diag(0.5, 2): the residual g_k = (A - I) A^k z0 first shrinks
    # (the 0.5 direction) then grows (the 2 direction), so the best iterate is in the middle,
    # neither z0 nor the last one. The relative residual ||g|| / ||f(z)|| falls all along (from
    # about 1 to 1/2) as the state grows, so ranking by it would pick the last, farthest iterate.
    a = torch.diag(torch.tensor([0.5, 2.0], dtype=torch.float64))
    f = linear_map(a, torch.zeros(2, dtype=torch.float64))
    z0 = torch.tensor([[1.0, 1e-3], [1.0, 1e-5]], dtype=torch.float64)
    iterates = [z0]
    for _ in range(12):
        z_prev = iterates[-1]
        iterates.append(z_prev + 1.0 * (f(z_prev) - z_prev))  # the loop's Picard step, bit for bit
    zs = torch.stack(iterates)  # (13, B, 2)
    absolute = (f(zs) - zs).norm(dim=-1)  # (13, B)
    best = absolute.argmin(0)
    assert 0 < best[0] < 12 and 0 < best[1] < 12 and best[0] != best[1]
    assert (relative_residual(zs.flatten(0, 1), f(zs).flatten(0, 1)).view(13, 2).argmin(0) == 12).all()
    z, info = fixed_point(f, z0, solver="picard", tol=1e-9, max_iter=12, on_fail="ignore")
    assert torch.equal(z, zs[best, torch.arange(2)])
    torch.testing.assert_close(info.residual, relative_residual(z, f(z)))
    assert (info.status == Status.MAX_ITER).all()


def test_converged_answer_meets_tol_even_where_an_earlier_iterate_was_smaller(gen64):
    # z0 = 0 and a tiny b: f(z0) - z0 = b is small in absolute terms, smaller than the residual
    # of the converged iterate, yet its relative residual is 1. The converged iterate must win.
    a = torch.tensor([[0.0, 50.0], [0.0, 0.0]], dtype=torch.float64)  # nilpotent, non-normal
    b = torch.tensor([[0.0, 1e-3]], dtype=torch.float64)
    z, info = fixed_point(linear_map(a, b), torch.zeros_like(b), solver="picard", tol=1e-3, max_iter=5)
    assert info.converged.all()
    torch.testing.assert_close(z, linear_solution(a, b), rtol=1e-12, atol=0)


BAD_OPTIONS = [
    (dict(tol="1e-4"), "tol"),
    (dict(tol=None), "tol"),
    (dict(tol=float("nan")), "tol"),
    (dict(max_iter=True), "max_iter"),
    (dict(max_iter=None), "max_iter"),
    (dict(max_iter=5.0), "max_iter"),
    (dict(min_iter="2"), "min_iter"),
    (dict(on_fail=None), "on_fail"),
    (dict(trace="yes"), "trace"),
    (dict(prefix_stop=1), "prefix_stop"),
    (dict(batch_dims=1.0), "batch_dims"),
    (dict(solver=Anderson), "Anderson is a class"),
    (dict(solver=None), "solver"),
    (dict(grad=Phantom), "Phantom is a class"),
    (dict(grad=None), "gradient mode"),
]


@pytest.mark.parametrize("options,field", BAD_OPTIONS, ids=[str(o) for o, _ in BAD_OPTIONS])
def test_bad_options_are_config_errors(options, field):
    with pytest.raises(ConfigError, match=field):
        fixed_point(lambda z: 0.5 * z, torch.ones(2, 3), **options)


def test_numpy_integers_are_counts(gen64):
    np = pytest.importorskip("numpy")
    a, b = contractive_linear(n=4, radius=0.5, batch=2, generator=gen64)
    _, info = fixed_point(linear_map(a, b), torch.zeros_like(b), solver=Anderson(m=np.int32(2)),
                          max_iter=np.int64(6), min_iter=np.int16(6), on_fail="ignore")
    assert (info.depth == 6).all()


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), m=st.integers(1, 6), steps=st.integers(1, 14),
       beta=st.sampled_from([1.0, 0.6]))
def test_anderson_without_restarts_steps_as_with_every_held_slot_marked(seed, m, steps, beta):
    """Until a restart, Anderson keeps no mask (every sample holds the same first slots) and works
    on the held slots alone; the masked path, given those slots as its mask, proposes the same."""
    gen = torch.Generator().manual_seed(seed)
    a, b = contractive_linear(n=8, radius=0.9, batch=3, generator=gen)
    f = linear_map(a, b)
    solver = Anderson(m=m, beta=beta)
    z = torch.randn(b.shape, generator=gen, dtype=b.dtype)
    plain = solver.init(z, f(z))
    for _ in range(steps):
        fz = f(z)
        held = torch.arange(m) < min(plain.count, m)
        masked = plain._replace(valid=held.expand(b.shape[0], m).clone())
        z_next, plain = solver.step(z, fz, plain)
        z_masked, masked = solver.step(z, fz, masked)
        assert plain.valid is None and masked.valid.all(1).eq(plain.count >= m).all()
        torch.testing.assert_close(z_next, z_masked, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(plain.gram, masked.gram, rtol=0, atol=0)
        z = z_next
    # a restart of one sample gives the others the slots they hold and that sample none
    restarted = solver.restart(plain, torch.tensor([False, True, False]))
    expected = torch.arange(m) < min(plain.count, m)
    assert torch.equal(restarted.valid[0], expected) and torch.equal(restarted.valid[2], expected)
    assert not restarted.valid[1].any()
