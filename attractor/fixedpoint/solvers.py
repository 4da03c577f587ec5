"""Root solvers for z = f(z): Picard, Anderson (type II) and limited-memory Broyden.

A solver only proposes the next iterate from the current one and its image under f. The loop in
`loop.py` owns everything else (evaluating f, residuals, per-sample freezing, safeguards, the best
iterate), so each solver here is the mathematics and nothing more.

Every solver works on flattened samples: z and fz arrive as (B, N) tensors in the solver dtype
(float32, or float64 when the problem is float64). State tensors never mix samples, so a sample's
trajectory is the same whether it is solved alone or in a batch. History buffers are written in
place, except while autograd records (grad="unroll"), so that unroll can backpropagate through
any solver.

Protocol (duck-typed):
    init(z, fz) -> state
    step(z, fz, state) -> (z_next, state)      # z, fz, z_next: (B, N)
    restart(state, mask) -> state              # forget the history of samples where mask (B,)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from attractor.errors import check_int, check_real


def _set(obj, field: str, value) -> None:
    """Store a checked, normalised field value (a plain int or float) on a frozen dataclass.

    Normalising numpy scalars to Python ones keeps the object JSON-safe and equal to its twin
    built from plain numbers.
    """
    object.__setattr__(obj, field, value)


def _unit_interval(x: float) -> bool:
    return 0.0 < x <= 1.0


def _store(history: Tensor, slot: int, value: Tensor) -> Tensor:
    """history[:, slot] = value: in place when no graph is recorded, else out of place (unroll)."""
    if torch.is_grad_enabled():
        index = torch.tensor([slot], device=history.device)
        return history.index_copy(1, index, value.unsqueeze(1))
    history[:, slot] = value
    return history


def _store_gram(gram: Tensor, slot: int, row: Tensor, k: int) -> Tensor:
    """gram with row and column `slot` set to row (B, k) over its first k entries (symmetric),
    in place unless autograd records."""
    if torch.is_grad_enabled():
        index = torch.tensor([slot], device=gram.device)
        pad = torch.nn.functional.pad(row, (0, gram.shape[1] - k)).unsqueeze(-1)  # (B, m, 1)
        return gram.index_copy(2, index, pad).index_copy(1, index, pad.transpose(1, 2))
    gram[:, slot, :k] = row
    gram[:, :k, slot] = row
    return gram


# Products against the (B, m, N) history are written as broadcast multiply-and-sum: with one
# problem per token B is large and m, N small, where CPU bmm loops over B matrix by matrix
# (40 ms per Anderson step at B=4096, m=5, N=192, against about 5 ms this way).
def _dots(history: Tensor, x: Tensor) -> Tensor:
    """<history_i, x> per sample: (B, m, N), (B, N) -> (B, m)."""
    return (history * x.unsqueeze(1)).sum(-1)


def _combine(weights: Tensor, history: Tensor) -> Tensor:
    """sum_i weights_i history_i per sample: (B, m), (B, m, N) -> (B, N)."""
    return (weights.unsqueeze(-1) * history).sum(1)


def _small_solve_dtype(t: Tensor) -> torch.dtype:
    # The m x m systems are tiny: solve them in float64 where the device has it (not MPS).
    return torch.float32 if t.device.type == "mps" else torch.float64


@dataclass(frozen=True)
class Picard:
    """Plain (optionally damped) fixed-point iteration: z <- z + damping * (f(z) - z).

    Converges at the rate of the map's contraction factor; damping < 1 helps maps that
    oscillate (eigenvalues of the Jacobian near -1).
    """

    damping: float = 1.0  # 1.0 is the undamped step z <- f(z)

    def __post_init__(self) -> None:
        _set(self, "damping", check_real(self.damping, "Picard damping", _unit_interval, "in (0, 1]"))

    def init(self, z: Tensor, fz: Tensor) -> None:
        return None

    def step(self, z: Tensor, fz: Tensor, state: None) -> tuple[Tensor, None]:
        return z + self.damping * (fz - z), None

    def restart(self, state: None, mask: Tensor) -> None:
        return None


class AndersonState(NamedTuple):
    f_hist: Tensor  # (B, m, N) images f(z) of past iterates
    g_hist: Tensor  # (B, m, N) their residuals f(z) - z
    gram: Tensor  # (B, m, m) g_hist @ g_hist^T, updated one row and column per step
    # (B, m) bool, which history slots hold data for each sample; None until a restart: then
    # every sample holds the same slots, the first min(count, m), and no step needs a mask
    valid: Tensor | None
    count: int  # steps taken; the next slot is count % m


@dataclass(frozen=True)
class Anderson:
    """Anderson acceleration, type II (Walker and Ni, SIAM J. Numer. Anal. 2011).

    With the last m iterates z_i and residuals g_i = f(z_i) - z_i, choose weights alpha
    (summing to 1) minimising ||sum_i alpha_i g_i||, then
        z_next = sum_i alpha_i (z_i + beta * g_i).
    The Gram matrix G G^T gets a ridge *relative to its own mean diagonal*. An absolute ridge
    (the published code, torchdeq) dominates once residuals are small, so the iteration count
    would depend on the scale of the state (SPEC section 3).
    """

    m: int = 5  # history length
    beta: float = 1.0  # mixing; 1.0 takes the extrapolated f-value
    ridge: float = 1e-4  # Tikhonov term, relative to mean(diag(G G^T)) over valid slots

    def __post_init__(self) -> None:
        _set(self, "m", check_int(self.m, "Anderson m", 1))
        _set(self, "beta", check_real(self.beta, "Anderson beta", _unit_interval, "in (0, 1]"))
        _set(self, "ridge", check_real(self.ridge, "Anderson ridge", lambda r: r >= 0, ">= 0"))

    def init(self, z: Tensor, fz: Tensor) -> AndersonState:
        batch, n = z.shape
        return AndersonState(
            f_hist=z.new_zeros(batch, self.m, n),
            g_hist=z.new_zeros(batch, self.m, n),
            gram=z.new_zeros(batch, self.m, self.m),
            valid=None,
            count=0,
        )

    def step(self, z: Tensor, fz: Tensor, state: AndersonState) -> tuple[Tensor, AndersonState]:
        slot = state.count % self.m
        g = fz - z  # (B, N)
        f_hist, g_hist = _store(state.f_hist, slot, fz), _store(state.g_hist, slot, g)
        if state.valid is None:
            # The first min(count + 1, m) slots hold data for every sample: work on them alone.
            k = min(state.count + 1, self.m)
            row = _dots(g_hist[:, :k], g)  # (B, k): <g_i, g> for every slot
            gram = _store_gram(state.gram, slot, row, k)
            if k == 1:  # one residual: its weight is 1 (the plain step), whatever the ridge
                z_next = fz if self.beta == 1.0 else z + self.beta * g
                return z_next, AndersonState(f_hist, g_hist, gram, None, state.count + 1)
            alpha = self._weights(gram[:, :k, :k], None, slot)  # (B, k)
            f_used, g_used, valid = f_hist[:, :k], g_hist[:, :k], None
        else:
            index = torch.tensor([slot], device=z.device)
            valid = state.valid.index_fill(1, index, True)
            row = _dots(g_hist, g)  # (B, m)
            gram = _store_gram(state.gram, slot, row, self.m)
            alpha = self._weights(gram, valid, slot)  # (B, m)
            f_used, g_used = f_hist, g_hist
        # sum_i alpha_i (z_i + beta g_i) = sum_i alpha_i f_i - (1 - beta) sum_i alpha_i g_i
        z_next = _combine(alpha, f_used)
        if self.beta != 1.0:
            z_next = z_next - (1.0 - self.beta) * _combine(alpha, g_used)
        return z_next, AndersonState(f_hist, g_hist, gram, valid, state.count + 1)

    def _weights(self, gram: Tensor, valid: Tensor | None, newest: int) -> Tensor:
        """alpha = H^-1 1 / (1^T H^-1 1) over valid slots (all of gram's if valid is None), H the
        regularised Gram matrix (B, k, k); alpha (B, k)."""
        dtype = _small_solve_dtype(gram)
        if valid is None:
            h = gram.to(dtype, copy=True)
            diag = torch.diagonal(h, dim1=1, dim2=2)  # (B, k), a view of h
            mean_diag = diag.mean(1, keepdim=True)  # (B, 1)
        else:
            both = valid.unsqueeze(2) & valid.unsqueeze(1)
            h = torch.where(both, gram.to(dtype), 0.0)
            diag = torch.diagonal(h, dim1=1, dim2=2)
            mean_diag = (diag * valid).sum(1, keepdim=True) / valid.sum(1, keepdim=True).clamp(min=1)
        # A zero Gram matrix means every stored residual is exactly zero; any weights will do:
        # lam = 1 there (the diagonal is never negative, so mean_diag == 0 is that case).
        lam = self.ridge * mean_diag + (mean_diag == 0)  # (B, 1)
        if valid is None:
            diag.add_(lam)
            rhs = torch.ones_like(diag)
        else:
            h = h + torch.diag_embed(torch.where(valid, lam, 1.0))  # invalid slots: identity rows
            rhs = valid.to(dtype)
        raw, _ = torch.linalg.solve_ex(h, rhs)
        alpha = raw / raw.sum(1, keepdim=True)
        if not math.isfinite(float(alpha.detach().sum())):  # alpha's rows each sum to 1 unless not finite
            # A singular or overflowing solve falls back to the plain step (all weight on the newest).
            plain = torch.zeros_like(alpha)
            plain[:, newest] = 1.0
            alpha = torch.where(torch.isfinite(alpha).all(1, keepdim=True), alpha, plain)
        return alpha.to(gram.dtype)

    def restart(self, state: AndersonState, mask: Tensor) -> AndersonState:
        valid = state.valid
        if valid is None:
            held = torch.arange(self.m, device=mask.device) < min(state.count, self.m)
            valid = held.expand(mask.shape[0], self.m)
        return state._replace(valid=valid & ~mask.unsqueeze(1))


class BroydenState(NamedTuple):
    u: Tensor  # (B, m, N) low-rank factors: J^-1 ~ -I + sum_i u_i v_i^T
    v: Tensor  # (B, m, N)
    prev_z: Tensor  # (B, N) previous iterate
    prev_g: Tensor  # (B, N) its residual
    has_prev: Tensor  # (B,) bool, False at the start and after a restart
    count: int  # updates stored since the last restart; the next slot is count
    steps: int  # calls of step(); the first has no secant pair yet


@dataclass(frozen=True)
class Broyden:
    """Limited-memory "good" Broyden on g(z) = f(z) - z (Broyden 1965; as in Bai et al. 2019).

    Keeps an approximate inverse Jacobian of g as -I plus up to m rank-one terms, updated by
    Sherman-Morrison from each secant pair, and steps z <- z - J^-1 g(z). The first step is a
    plain Picard step. When the memory is full it restarts from -I: overwriting the oldest term
    instead (as torchdeq does) diverged here on a non-normal linear map of radius 0.95. Restarts
    cost steps and, in float32, make the count sensitive to rounding (a spread of up to 16 steps
    across rescalings of one problem at m=8, 3 at m=20), hence the default m=20. Updates with a
    near-zero denominator, relative to the scale of the pair, are skipped per sample.
    """

    m: int = 20  # rank-one updates kept before restarting

    def __post_init__(self) -> None:
        _set(self, "m", check_int(self.m, "Broyden m", 1))

    def init(self, z: Tensor, fz: Tensor) -> BroydenState:
        batch, n = z.shape
        return BroydenState(
            u=z.new_zeros(batch, self.m, n),
            v=z.new_zeros(batch, self.m, n),
            prev_z=torch.zeros_like(z),
            prev_g=torch.zeros_like(z),
            has_prev=torch.zeros(batch, dtype=torch.bool, device=z.device),
            count=0,
            steps=0,
        )

    @staticmethod
    def _inv_jac(u: Tensor, v: Tensor, x: Tensor) -> Tensor:
        """J^-1 x = -x + sum_i u_i (v_i . x); x: (B, N)."""
        return -x + _combine(_dots(v, x), u)

    @staticmethod
    def _inv_jac_t(u: Tensor, v: Tensor, x: Tensor) -> Tensor:
        """J^-T x = -x + sum_i v_i (u_i . x); x: (B, N)."""
        return -x + _combine(_dots(u, x), v)

    def step(self, z: Tensor, fz: Tensor, state: BroydenState) -> tuple[Tensor, BroydenState]:
        g = fz - z
        u, v, count = state.u, state.v, state.count
        if state.steps > 0:
            dz, dg = z - state.prev_z, g - state.prev_g
            jdg = self._inv_jac(u, v, dg)  # J^-1 dg
            vt = self._inv_jac_t(u, v, dz)  # (dz^T J^-1)^T
            den = (vt * dg).sum(1, keepdim=True)  # dz^T J^-1 dg, (B, 1)
            scale = dz.norm(dim=1, keepdim=True) * jdg.norm(dim=1, keepdim=True)
            ok = state.has_prev.unsqueeze(1) & (den.abs() > torch.finfo(den.dtype).eps ** 0.5 * scale) & torch.isfinite(den)
            safe_den = torch.where(ok, den, torch.ones_like(den))
            new_u = torch.where(ok, (dz - jdg) / safe_den, 0.0)
            new_v = torch.where(ok, vt, 0.0)
            if count == self.m:  # memory full: restart from -I
                u, v, count = torch.zeros_like(u), torch.zeros_like(v), 0
            u, v = _store(u, count, new_u), _store(v, count, new_v)
            count += 1
        z_next = z - self._inv_jac(u, v, g)
        has_prev = torch.ones_like(state.has_prev)
        return z_next, BroydenState(u, v, z, g, has_prev, count, state.steps + 1)

    def restart(self, state: BroydenState, mask: Tensor) -> BroydenState:
        keep = ~mask.view(-1, 1, 1)
        return state._replace(
            u=state.u * keep, v=state.v * keep, has_prev=state.has_prev & ~mask
        )


SOLVERS: dict[str, type] = {"picard": Picard, "anderson": Anderson, "broyden": Broyden}
