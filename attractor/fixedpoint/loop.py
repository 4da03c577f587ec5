"""The one solver loop behind `fixed_point`, and the per-sample report it returns.

It evaluates f, keeps residuals and solver state in float32 or better whatever autocast says,
freezes samples that have converged, honours min_iter, keeps the best iterate (ranked in
`solve`), and replaces a non-finite or exploding step by a restart from the best iterate so far.
Solvers (`solvers.py`) only propose the next iterate; gradient modes (`grads.py`) only decide
what the backward pass does, and reuse this loop for the adjoint solve.

Counting convention: `FixedPointInfo.depth` is the solver steps a unit took. A sample that
stopped after k steps had f evaluated k + 1 times (once at z0, once after every step);
`max_iter=0` evaluates f once to report the residual of z0 and returns z0 itself. (`depth`, not
`iters`: in a model, `iters=k` is the knob that asks for k plain steps, and `depth` is what a
forward reports, as `ModelOutput.depth` does per sample.)

Convergence: a unit has converged when its relative residual is below tol, or is exactly zero
(so that tol=0 asks for an exact fixed point rather than for the impossible res < 0).
"""

from __future__ import annotations

import contextlib
import enum
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from attractor.errors import ConfigError, check_int, check_name
from attractor.fixedpoint.solvers import SOLVERS

# Defaults of the generic core, for a caller who has said nothing about its problem; a model
# states its own in its SolveConfig (table in docs/models.md, "Solve and depth defaults").
# fixed_point's tol: four digits of the relative residual, about 1000x float32's machine
# epsilon, so a float32 map can meet it; a model's adaptive stop is looser (SolveConfig, 1e-3,
# which says why) and the implicit adjoint tighter (Implicit, 1e-6, likewise).
TOL = 1e-4
# Most steps of one core solve, forward (fixed_point) or adjoint (Implicit): one budget for both,
# since the adjoint iteration u <- J^T u + v contracts at the forward's rate near z* (J^T has
# J's spectrum there): a budget that suits one suits the other.
MAX_ITER = 50

# A step whose absolute residual exceeds this multiple of the sample's best residual so far is
# treated as exploding: the sample restarts from its best iterate with an empty history.
EXPLODE_FACTOR = 1e3


class FixedPointError(RuntimeError):
    """Raised by `fixed_point(..., on_fail="raise")` when some sample did not converge."""


class FixedPointWarning(UserWarning):
    """Issued (once per call site) when some sample did not converge."""


class NonFiniteWarning(FixedPointWarning):
    """Issued at backward when f is not finite at some samples and their zero gradient has to
    pass through f's graph, where 0 * inf makes NaN (the message names the samples)."""


class Status(enum.IntEnum):
    """Why a sample stopped. `Status(code).message` reads as a sentence."""

    CONVERGED = 0
    MAX_ITER = 1
    DIVERGED = 2
    NONFINITE_START = 3

    @property
    def message(self) -> str:
        return {
            0: "relative residual below tol",
            1: "max_iter reached before tol",
            2: "max_iter reached after at least one exploding or non-finite step",
            3: "f(z0) is not finite; returned z0",
        }[self.value]


@dataclass
class FixedPointInfo:
    """What happened in one call of `fixed_point`, per sample.

    Per-sample fields have shape (B,), or the leading `batch_dims` dims of z0 (e.g. (B, T)).

    Attributes:
        depth: (B,) int64 solver steps until the sample stopped (f was evaluated depth + 1 times).
            Called `iters` before 0.2.0.
        first_met: (B,) int64 steps after which the sample's own residual first met tol (with
            min_iter taken), `depth` if it never did. Below `depth` only where something else
            held the unit back: prefix stopping, or a residual that rose again through f's
            coupling of units. It is the unit's own depth (a token's, under prefix stopping).
        residual: (B,) float32/64 relative residual ||f(z) - z|| / ||f(z)|| at the returned z.
        converged: (B,) bool, residual < tol (or residual == 0, which tol=0 needs).
        status: (B,) int8 codes of `Status`.
        n_evals: calls of f made by the forward loop (the whole batch is evaluated each call).
        tol: the tolerance that `converged` refers to.
        trace: (B, n_evals) residual of the current iterate after every evaluation, if asked.
        backward: the adjoint solve's info, filled in by `Implicit` when backward runs.
    """

    depth: Tensor
    residual: Tensor
    converged: Tensor
    status: Tensor
    n_evals: int
    tol: float
    first_met: Tensor | None = None
    trace: Tensor | None = None
    backward: FixedPointInfo | None = None

    def __getattr__(self, name: str):
        # Reached only when ordinary lookup fails: name the new attribute for the old one.
        if name == "iters":
            raise AttributeError("FixedPointInfo.iters was renamed FixedPointInfo.depth in 0.2.0 "
                                 "(solver steps per unit; `iters` is now only a model's depth knob)")
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def summary(self) -> str:
        """One line, e.g. 'converged 31/32, depth median 9 max 50, worst residual 3.1e-03'."""
        n = self.converged.numel()
        depth = self.depth.float()
        return (
            f"converged {int(self.converged.sum())}/{n}, depth median {depth.median().item():.0f} "
            f"max {int(self.depth.max()) if n else 0}, worst residual "
            f"{self.residual.max().item() if n else 0.0:.1e} (tol {self.tol:.0e})"
        )


def relative_residual(z: Tensor, fz: Tensor) -> Tensor:
    """||f(z) - z|| / (||f(z)|| + tiny) over all non-batch dims; (B, *S) -> (B,), float32+.

    `tiny` is the dtype's smallest normal number, so the ratio is scale-free for any state.
    """
    dtype = torch.float64 if torch.float64 in (z.dtype, fz.dtype) else torch.float32
    return _residuals(z.to(dtype).flatten(1), fz.to(dtype).flatten(1))[0]


def _residuals(z: Tensor, fz: Tensor) -> tuple[Tensor, Tensor]:
    """(relative, absolute) residual norms of flattened (B, N) iterates: both (B,)."""
    gnorm = (fz - z).norm(dim=1)
    return gnorm / (fz.norm(dim=1) + torch.finfo(fz.dtype).tiny), gnorm


def _finite_sum(t: Tensor) -> bool:
    """Whether t's sum is finite, on the host: true only if every entry is finite (a sum that
    overflows says False, which sends the caller to its exact per-unit check)."""
    return math.isfinite(float(t.detach().sum()))


# What fixed_point and the implicit adjoint may do when a sample does not converge.
ON_FAIL = ("warn", "raise", "ignore")


def check_batched(z: Tensor, what: str = "z0") -> None:
    """Refuse a state without a batch dimension: (N,) would be read as N scalar problems."""
    if not isinstance(z, Tensor):
        raise ConfigError(f"{what} must be a tensor of shape (B, *S), got {type(z).__name__}")
    if z.dim() < 2:
        raise ConfigError(f"{what} of shape {tuple(z.shape)} has no batch dimension: fixed-point "
                          f"states are (B, *S), one problem per row; for one problem pass "
                          f"{what}.unsqueeze(0), for B scalar problems {what}.unsqueeze(1)")


def check_image(fz, z: Tensor, what: str = "f(z)", name: str = "z0") -> None:
    """f must map z to a tensor of z's shape (a broadcasting closure would silently not)."""
    if not isinstance(fz, Tensor) or fz.shape != z.shape:
        got = tuple(fz.shape) if isinstance(fz, Tensor) else type(fz).__name__
        raise ValueError(f"{what} must have the shape of {name} {tuple(z.shape)}, got {got}")


def nonfinite_message(samples: Tensor, cause: str) -> str:
    """The NonFiniteWarning text naming the samples (indices along dim 0) where `samples` is True."""
    index = samples.nonzero().flatten().tolist()
    shown = ", ".join(map(str, index[:10])) + (f", ... ({len(index)} in all)" if len(index) > 10 else "")
    return (f"f is not finite at samples [{shown}] {cause}; they get no gradient, but on the way "
            f"through f's backward their zero gradient can meet the non-finite values (0 * inf = NaN) "
            f"and turn parameter gradients into NaN. Keep f finite there (clamp the input of exp, "
            f"say) or leave these samples out.")


def resolve_solver(solver, what: str = "solver"):
    """A solver object from a name ('anderson') or a configured instance (Anderson(m=3))."""
    if isinstance(solver, str):
        check_name(solver, SOLVERS, what)
        return SOLVERS[solver]()
    if isinstance(solver, type):  # Anderson has init/step/restart too, as unbound functions
        raise ConfigError(f"{what} {solver.__name__} is a class; pass an instance, e.g. {solver.__name__}()")
    if not all(hasattr(solver, a) for a in ("init", "step", "restart")):
        raise ConfigError(f"{what} {solver!r} is neither a name nor an object with init/step/restart")
    return solver


def _no_autocast(device: torch.device):
    """Disable autocast for the solver's own arithmetic (state stays float32 or better); a
    no-op context where autocast is off, which costs less per step."""
    if torch.amp.is_autocast_available(device.type) and torch.is_autocast_enabled(device.type):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


def solve(
    f: Callable[[Tensor], Tensor],
    z0: Tensor,
    solver,
    *,
    tol: float,
    max_iter: int,
    min_iter: int = 0,
    trace: bool = False,
    batch_dims: int = 1,
    prefix_stop: bool = False,
    prefix_depth: Tensor | None = None,
) -> tuple[Tensor, FixedPointInfo]:
    """The solver loop, without gradient attachment (see `fixed_point` for the arguments).

    Differentiable end to end when autograd is on (that is the `unroll` mode); otherwise call it
    under `torch.no_grad()`. Returns z (B, *S) in z0's dtype and a FixedPointInfo.
    """
    check_batched(z0)
    if not 1 <= check_int(batch_dims, "batch_dims", 1) <= z0.dim():
        raise ConfigError(f"batch_dims={batch_dims} must be in [1, {z0.dim()}] for z0 of shape "
                          f"{tuple(z0.shape)}")
    if prefix_stop and batch_dims != 2:
        raise ValueError("prefix_stop needs batch_dims=2: units (b, t) ordered along dim 1")
    if prefix_depth is not None and not (prefix_stop and prefix_depth.shape == z0.shape[:1]):
        raise ValueError(f"prefix_depth needs prefix_stop and one depth per sample {tuple(z0.shape[:1])}, "
                         f"got {tuple(prefix_depth.shape)}")
    if z0.shape[0] == 0:
        raise ValueError(f"z0 must have at least one sample, got shape {tuple(z0.shape)}")
    if not z0.is_floating_point():
        raise ValueError(f"z0 must be a floating-point tensor, got {z0.dtype}")
    work = torch.float64 if z0.dtype == torch.float64 else torch.float32
    shape, units = z0.shape, z0.shape[:batch_dims]
    batch = units.numel()
    no_autocast = _no_autocast(z0.device)
    # f may write into its argument. The first call gets a copy (z still shares z0's memory);
    # if f wrote into it, every later call gets a copy too. Otherwise later calls get the
    # iterate itself, and the version counter (free to read) catches an f that starts writing.
    copy_arg, n_calls = True, 0

    def evaluate(z_flat: Tensor) -> Tensor:
        nonlocal copy_arg, n_calls
        arg = z_flat.view(shape).to(z0.dtype)
        if copy_arg:
            arg = arg.clone()
        version = arg._version
        fz = f(arg)
        n_calls += 1
        wrote = arg._version != version
        if n_calls == 1:
            copy_arg = wrote
        elif wrote and not copy_arg:
            raise ConfigError(f"f wrote into its argument in place at call {n_calls} but not at the first, "
                              "so the iterate it was given is lost; write in place at every call or at none")
        check_image(fz, z0)
        return fz.reshape(batch, -1).to(work)

    with no_autocast:
        z = z0.reshape(batch, -1).to(work)
    fz = evaluate(z)
    # Recording a graph (unroll): a non-finite value anywhere in it can turn the backward NaN,
    # so note which units ever produced one (an f-value or a proposal), to warn at backward.
    recording = torch.is_grad_enabled()
    with no_autocast:
        res, gnorm = _residuals(z, fz)
        # z0 is finite, so a finite gnorm is f(z0) being finite. The host checks below (a sum that
        # is finite) skip whole-batch masks in the common case; a sum that overflows only takes
        # the exact, per-unit path.
        all_finite_start = _finite_sum(gnorm)
        finite_start = torch.ones_like(res, dtype=torch.bool) if all_finite_start else torch.isfinite(gnorm)
        if not all_finite_start:
            res = torch.where(finite_start, res, float("inf"))
        met = (lambda r: r < tol) if tol > 0 else (lambda r: r == 0)
        # The answer is the best iterate, ranked first by meeting tol, then by the *absolute*
        # residual ||f(z) - z||. The relative one cannot rank: on an expanding map it falls as
        # the state runs away (||f(z)|| grows faster than f(z) - z), which would make the
        # farthest iterate the "best". Meeting tol first keeps a converged unit's answer converged
        # when an earlier iterate (a tiny z0, say) had a smaller absolute residual.
        best_z, best_fz, best_res, best_gnorm, best_met = z, fz, res, gnorm, met(res)
        depth = torch.zeros(batch, dtype=torch.long, device=z.device)  # steps taken per unit
        nonfinite = ~finite_start if recording else None
        # A continued prefix (a KV cache's earlier tokens, solved before): sample b's earlier
        # units stopped after prefix_depth[b] steps, so none of its units stops before that.
        floor = None if prefix_depth is None else prefix_depth.to(z.device).view(-1, 1).expand(units).flatten()
        one_per_row = units[1:].numel() == 1  # prefix stopping is then each unit's own stopping

        def stop_rule(now_met: Tensor, depth: Tensor) -> tuple[Tensor, Tensor]:
            # Re-evaluated every step: when f couples units, a unit whose residual rises again
            # as its neighbours move resumes (independent samples never do).
            own = now_met if min_iter == 0 else now_met & (depth >= min_iter)
            if not all_finite_start:
                own = own | ~finite_start
            stop = own if floor is None else own & (depth >= floor)
            if prefix_stop and not one_per_row:  # unit (b, t) stops only once (b, 0..t) have all stopped
                stop = stop.view(units).cummin(dim=1).values.flatten()
            return stop, own

        exploded = None  # (B,) bool once some unit has exploded
        stopped, own = stop_rule(best_met, depth)
        first_met = own.long() - 1  # 0 where met at the start, -1 (not yet) elsewhere
        history = [res] if trace else None
        state = solver.init(z, fz) if max_iter > 0 else None
    n_evals = 1
    # Each step of a small problem (one token while decoding) costs a fixed number of tensor
    # operations besides f, so the branches on host values below skip whole-batch masks in the
    # common case (every unit active, every value finite, every unit improving), for one host
    # sync each.
    for _ in range(max_iter):
        n_stopped = int(stopped.count_nonzero())
        if n_stopped == batch:
            break
        active = None if n_stopped == 0 else ~stopped  # None: every unit is active
        with no_autocast:
            proposal, state = solver.step(z, fz, state)
            if not _finite_sum(proposal):  # some proposal is not finite, or the sum overflowed
                bad = ~torch.isfinite(proposal.sum(1))  # a non-finite proposal: plain step instead
                if bool(bad.any()):
                    proposal = torch.where(bad.unsqueeze(1), fz, proposal)
                    state = solver.restart(state, bad)
                    if recording:
                        nonfinite = nonfinite | bad
            z_new = proposal if active is None else torch.where(active.unsqueeze(1), proposal, z)
        fz_new = evaluate(z_new)
        n_evals += 1
        with no_autocast:
            res, gnorm = _residuals(z_new, fz_new)
            # NaN/inf in f(z) make the norm NaN/inf, which fails the comparison: a blow-up too.
            blowup = ~(gnorm <= EXPLODE_FACTOR * best_gnorm)
            if active is not None:
                blowup = blowup & active
            if recording:
                nonfinite = nonfinite | ~torch.isfinite(gnorm)
            z, fz = z_new, fz_new
            if bool(blowup.any()):
                # Restart exploding samples from their best iterate, with the solver's memory wiped.
                back = blowup.unsqueeze(1)
                z, fz = torch.where(back, best_z, z), torch.where(back, best_fz, fz)
                res, gnorm = torch.where(blowup, best_res, res), torch.where(blowup, best_gnorm, gnorm)
                state = solver.restart(state, blowup)
                exploded = blowup if exploded is None else exploded | blowup
            depth = depth + 1 if active is None else depth + active.long()
            now_met = met(res)
            better = torch.where(now_met == best_met, gnorm < best_gnorm, now_met)  # meeting tol first
            if active is not None:
                better = better & active
            if bool(better.all()):  # the usual step of a converging solve: no masks
                best_z, best_fz, best_res, best_gnorm, best_met = z, fz, res, gnorm, now_met
            else:
                best_res, best_gnorm = torch.where(better, res, best_res), torch.where(better, gnorm, best_gnorm)
                best_met = best_met | (better & now_met)
                better = better.unsqueeze(1)
                best_z, best_fz = torch.where(better, z, best_z), torch.where(better, fz, best_fz)
            stopped, own = stop_rule(now_met, depth)
            first_met = torch.where((first_met < 0) & own, depth, first_met)
            if trace:
                history.append(res)

    if batch_dims > 1:
        # Units coupled through f: a per-unit best would mix iterates from different steps,
        # which is no iterate at all. Return the current one (exact once all have converged).
        best_z, best_res = z, res
    converged = met(best_res)
    # Status codes without boolean-mask writes: MAX_ITER (1) where not converged, CONVERGED (0)
    # where converged, then DIVERGED and NONFINITE_START where they apply.
    status = (~converged).to(torch.int8)
    if exploded is not None:
        status = torch.where(exploded & ~converged, int(Status.DIVERGED), status)
    if not all_finite_start:
        status = torch.where(finite_start, status, int(Status.NONFINITE_START))
    info = FixedPointInfo(
        depth=depth.view(units),
        residual=best_res.detach().view(units),
        converged=converged.view(units),
        status=status.view(units),
        n_evals=n_evals,
        tol=tol,
        first_met=torch.where(first_met < 0, depth, first_met).view(units),
        trace=torch.stack(history, -1).detach().view(*units, -1) if trace else None,
    )
    z_out = best_z.view(shape).to(z0.dtype)
    if recording and z_out.requires_grad:
        samples = nonfinite.view(shape[0], -1).any(1)  # units -> samples along dim 0
        if bool(samples.any()):
            message = nonfinite_message(samples, "at some iterate that grad='unroll' recorded")
            z_out.register_hook(lambda grad: warnings.warn(message, NonFiniteWarning, stacklevel=2))
    return z_out, info


def report_failure(info: FixedPointInfo, on_fail: str, what: str) -> None:
    """Warn (one message text, so Python shows it once per call site) or raise."""
    if on_fail == "raise":
        raise FixedPointError(f"{what} did not converge: {info.summary()}")
    if on_fail == "warn":
        warnings.warn(
            f"{what}: some samples did not converge; inspect info.converged and info.summary()",
            FixedPointWarning,
            stacklevel=3,
        )
