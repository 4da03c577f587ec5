"""The one transformer block every model is built from, and its parts.

Design (SPEC 2.1, the nanochat recipe): pre-norm with parameter-free RMSNorm, rotary position
embeddings, QK-norm, ReLU^2 MLP of width 4d, no biases, attention through PyTorch's
`scaled_dot_product_attention` (whatever backend the device has), causal or bidirectional.
Attractor blocks scale each residual branch by a per-channel gate sigmoid(raw) * gamma_max.

The elementwise parts (RMSNorm, QK-norm + RoPE, ReLU^2) run as eager PyTorch ops with written-out
backwards by default. Called with `fused=True` (by a module whose flag
`attractor.kernels.use_fused_kernels` set; the trainer's `train.kernels`) they run, forward and
backward, as fused C++ kernels on CPU float32 and float64 tensors: the same values up to
rounding, one pass over memory each instead of one per op; how much faster is in
docs/benchmarks.md, "Hot path". Double backward and vmapped backwards (Jacobian penalties,
jacrev) take the eager formulas either way.

Dimension letters: B batch, T sequence, D width, H heads, K head size (D / H).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attractor import kernels
from attractor.kernels import FusedPath
from attractor.kvcache import LayerKV

try:  # what Function.apply does with its arguments before the C++ apply (private; torch 2.1+)
    from torch._functorch.utils import unwrap_dead_wrappers
except ImportError:  # older torch: _apply falls back to Function.apply
    unwrap_dead_wrappers = None


def rms_norm(x: Tensor, fused: bool = False) -> Tensor:
    """Parameter-free RMSNorm over the last dim: x / sqrt(mean(x^2) + eps), eps = finfo(dtype).eps.

    The values of `F.rms_norm(x, (D,))` up to rounding (the mean square comes from one
    vector_norm pass); half types go to F.rms_norm itself, which computes in float32. On CPU,
    F.rms_norm is a composite of five ops that autograd differentiates one by one; here the
    backward is written out (`_RMSNorm`): about half the cost of forward + backward
    (docs/benchmarks.md, "Hot path"). `fused`: the C++ kernel where it serves x (attractor.kernels).
    """
    if x.dtype not in (torch.float32, torch.float64):
        return F.rms_norm(x, (x.size(-1),))
    fused = fused and kernels.active_for(x)
    if torch.is_grad_enabled() and x.requires_grad:
        return _apply(_RMSNorm, x, fused)[0]
    return kernels.ops().rms_norm(x)[0] if fused else _scaled(x, _rms_scale(x))


def _apply(function: type[torch.autograd.Function], *args: Any) -> Any:
    """function.apply(*args) without the Python wrapper of Function.apply outside functorch
    transforms: the wrapper binds default arguments through inspect.signature at every call,
    about 60 us, which these Functions (no defaults) do not need; 21 calls per forward of
    transformer-1m. Under vmap/grad/jacrev the wrapper is needed, and used."""
    if unwrap_dead_wrappers is None or torch._C._are_functorch_transforms_active():
        return function.apply(*args)
    return super(torch.autograd.Function, function).apply(*unwrap_dead_wrappers(args))


def _scaled(x: Tensor, r: Tensor) -> Tensor:
    """x * r written into a contiguous tensor, whatever x's strides (a permuted slice of qkv)."""
    if torch._C._are_functorch_transforms_active():  # vmap has no batching rule for out=
        return (x * r).contiguous()
    return torch.mul(x, r, out=torch.empty(x.shape, dtype=x.dtype, device=x.device))


def _rms_scale(x: Tensor) -> Tensor:
    """1 / sqrt(mean(x^2) + eps) over the last dim, (..., 1)."""
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)  # one pass, no x^2 temporary
    return torch.rsqrt(norm.square() / x.shape[-1] + torch.finfo(x.dtype).eps)


def _rms_backward(x: Tensor, y: Tensor, r: Tensor, g: Tensor) -> Tensor:
    """dL/dx = r (g - y mean(g y)) of y = x r. Under create_graph it recomputes r and y from x, so
    second derivatives (double backward, Jacobian penalties) are exact too."""
    if torch.is_grad_enabled():
        r = _rms_scale(x)
        y = x * r
        return r * (g - y * (g * y).mean(-1, keepdim=True))
    c = r * (g * y).mean(-1, keepdim=True)  # (..., 1)
    return (g * r).addcmul_(y, c, value=-1)  # r g - y r mean(g y); in place only on our own tensor


class _RMSNorm(torch.autograd.Function):
    """y = x r, r = (mean(x^2) + eps)^(-1/2); dL/dx = r (g - y mean(g y)). `fused`: the forward
    and the plain backward are the C++ kernels (attractor.kernels)."""

    @staticmethod
    def forward(x: Tensor, fused: bool) -> tuple[Tensor, Tensor]:
        if fused:
            return kernels.ops().rms_norm(x)
        r = _rms_scale(x)
        return _scaled(x, r), r

    @staticmethod
    def setup_context(ctx, inputs: tuple[Tensor, bool], output: tuple[Tensor, Tensor]) -> None:
        (x, ctx.fused), (y, r) = inputs, output
        ctx.mark_non_differentiable(r)
        # y too: it is contiguous where x may be a strided slice (q and k of the qkv projection),
        # and ops on strided x were 3x slower here; the next Linear saves y anyway
        ctx.save_for_backward(x, y, r)

    @staticmethod
    def backward(ctx, g: Tensor, _: Tensor) -> tuple[Tensor, None]:
        x, y, r = ctx.saved_tensors
        if ctx.fused and kernels.plain_backward(g):
            return kernels.ops().rms_norm_backward(g, y, r), None
        return _rms_backward(x, y, r, g), None


def relu_square(x: Tensor, fused: bool = False) -> Tensor:
    """ReLU(x)^2, the values of `F.relu(x).square()` bit for bit, with a written-out backward
    2 ReLU(x) g (autograd's own goes through pow and threshold backward). `fused`: the C++ kernel
    where it serves x (attractor.kernels)."""
    fused = fused and kernels.active_for(x)
    if torch.is_grad_enabled() and x.requires_grad:
        return _apply(_ReluSquare, x, fused)
    return kernels.ops().relu_square(x) if fused else _relu_square(x)


def _relu_square(x: Tensor) -> Tensor:
    r = F.relu(x)
    return r.mul_(r)  # in place: one fresh (B, T, 4D) tensor, not two


class _ReluSquare(torch.autograd.Function):
    """Saves x, not ReLU(x): the backward recomputes ReLU(x) from x, so it is differentiable again."""

    @staticmethod
    def forward(x: Tensor, fused: bool) -> Tensor:
        return kernels.ops().relu_square(x) if fused else _relu_square(x)

    @staticmethod
    def setup_context(ctx, inputs: tuple[Tensor, bool], output: Tensor) -> None:
        ctx.fused = inputs[1]
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor, None]:
        (x,) = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: out of place, so autograd can record it
            return 2 * F.relu(x) * g, None
        if ctx.fused and kernels.plain_backward(g):
            return kernels.ops().relu_square_backward(x, g), None
        return (F.relu(x) * g).mul_(2), None  # in place only on our own tensor: g may be vmapped


@functools.lru_cache(maxsize=32)
def _rotary_tables(t: int, k: int, base: float, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """(cos, sin) tables of RoPE for positions 0..t-1 and head size k, (T, K) each, sin signed.

    cos = [cos, cos] and sin = [-sin, sin] over the two halves of the head, so that
    rotary(x) = x * cos + swap_halves(x) * sin. Angles are computed in float32 whatever `dtype`.
    Cached per (T, K, base, device, dtype); built outside inference mode and without autograd, so
    a table first made under torch.inference_mode() still serves a training step later.
    """
    with torch.inference_mode(False), torch.no_grad():
        freqs = base ** (-torch.arange(0, k, 2, device=device, dtype=torch.float32) / k)  # (K/2,)
        angles = torch.arange(t, device=device, dtype=torch.float32)[:, None] * freqs  # (T, K/2)
        cos, sin = angles.cos().to(dtype), angles.sin().to(dtype)
        return torch.cat([cos, cos], dim=-1), torch.cat([-sin, sin], dim=-1)


def rotary(x: Tensor, t_dim: int = -2, base: float = 10000.0, pos: int = 0) -> Tensor:
    """Rotate pairs of channels of x (..., T, ..., K) by position-dependent angles (RoPE).

    Channel i of the first half of the head pairs with channel i of the second half; positions
    run along `t_dim`, K is the last dim. The values of the textbook
    cat([x1 cos - x2 sin, x1 sin + x2 cos]) up to rounding (addcmul may fuse multiply and add),
    with the tables cached rather than recomputed at every call (the attractor's map is
    evaluated many times per forward). `pos`: the positions start there, not at 0 (new tokens
    after a KV cache's `pos` positions); their angles come from a table of a power-of-two length
    sliced, the same values as a table of exactly pos + T (each angle is computed on its own).
    """
    k = x.shape[-1]
    if k % 2:
        raise ValueError(f"rotary embeddings need an even head size, got {k}")
    t_dim %= x.dim()
    t = x.shape[t_dim]
    tables = _rotary_tables.__wrapped__ if torch.compiler.is_compiling() else _rotary_tables
    if pos:
        cos, sin = tables(1 << (pos + t - 1).bit_length(), k, base, x.device, x.dtype)
        cos, sin = cos[pos:pos + t], sin[pos:pos + t]
    else:
        cos, sin = tables(t, k, base, x.device, x.dtype)
    shape = (t,) + (1,) * (x.dim() - t_dim - 2) + (k,)  # T on t_dim, broadcast up to K
    cos, sin = cos.view(shape), sin.view(shape)
    if torch.is_grad_enabled() and x.requires_grad:
        return _apply(_Rotary, x, cos, sin)
    return _rotate(x, cos, sin)


def _rotate(x: Tensor, cos: Tensor, sin: Tensor, sign: float = 1.0) -> Tensor:
    """x cos + sign * swap_halves(x) sin, the swap never materialised (torch.roll is a cat, and
    was the slowest op of the block on CPU)."""
    h = x.shape[-1] // 2
    out = x * cos
    out[..., :h].addcmul_(x[..., h:], sin[..., :h], value=sign)
    out[..., h:].addcmul_(x[..., :h], sin[..., h:], value=sign)
    return out


class _Rotary(torch.autograd.Function):
    """Backward of a rotation is the inverse rotation: g cos - swap_halves(g) sin (swapping
    halves is its own inverse and turns [-sin, sin] into its negative). Linear in g with
    constant tables, so it is differentiable again as written."""

    @staticmethod
    def forward(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        return _rotate(x, cos, sin)

    @staticmethod
    def setup_context(ctx, inputs: tuple[Tensor, Tensor, Tensor], output: Tensor) -> None:
        ctx.save_for_backward(inputs[1], inputs[2])

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor, None, None]:
        cos, sin = ctx.saved_tensors
        return _rotate(g, cos, sin, sign=-1.0), None, None


def norm_rotary(x: Tensor, base: float = 10000.0, pos: int = 0) -> Tensor:
    """QK-norm then RoPE, `rotary(rms_norm(x))`, on x (..., T, K) with positions on dim -2,
    starting at `pos`."""
    return rotary(rms_norm(x), base=base, pos=pos)


def grid_rotary(x: Tensor, prefix: int, side: int, base: float = 10000.0) -> Tensor:
    """2-D RoPE on x (..., T, K), T = prefix + side * side: the last side * side positions are the
    cells of a square grid, row by row; the first half of each head is rotated by the cell's row,
    the second half by its column (so a score depends on the row and column offsets, whatever the
    side), and the `prefix` positions before the grid are left as they are (angle 0, the same
    as cell (0, 0)). K must be a multiple of 4 (each half is itself rotated in pairs).
    """
    t, k = x.shape[-2], x.shape[-1]
    if k % 4:
        raise ValueError(f"2-D rotary embeddings need a head size divisible by 4, got {k}")
    if t != prefix + side * side:
        raise ValueError(f"{t} positions are not a prefix of {prefix} and a {side}x{side} grid")
    head, cells = x.split([prefix, side * side], dim=-2)
    cells = cells.unflatten(-2, (side, side))  # (..., s, s, K)
    rows = rotary(cells[..., : k // 2], t_dim=-3, base=base)  # positions along the rows' dim
    cols = rotary(cells[..., k // 2:], t_dim=-2, base=base)
    return torch.cat([head, torch.cat([rows, cols], dim=-1).flatten(-3, -2)], dim=-2)


def qkv_heads(qkv: Tensor, n_head: int, base: float = 10000.0,
              fused: bool = False, pos: int = 0, grid: tuple[int, int] | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Attention's q, k and v from the qkv projection (B, T, 3D), channels [q heads | k heads |
    v heads]: q and k normed and rotated, v a view of qkv; (B, H, T, K) each.

    Eager: the norm reads the strided q and k once and writes them together as one contiguous
    (2, B, H, T, K) tensor, so the rotation, attention and every backward op after it see
    contiguous tensors (strided operands made those ops 3x slower). `fused` (attractor.kernels,
    where the kernel serves qkv and its channels are contiguous): one kernel each way, reading qkv
    in order and writing q and k laid out as (B, T, H, K), so that attention's output needs no
    copy for the projection; the backward writes dL/dqkv whole, where autograd would stack q and
    k's gradients and concatenate v's. `pos`: the first position's index (tokens after a KV
    cache); positions after 0 take the eager path. `grid`: (prefix, side), the positions are a
    prefix and the cells of a square grid, rotated by grid_rotary (eager) instead of along a line.
    """
    b, t, d3 = qkv.shape
    d, size = d3 // 3, d3 // (3 * n_head)  # width, head size K
    if grid is not None:
        qk, v = qkv.split([2 * d, d], dim=-1)
        q, k = grid_rotary(rms_norm(qk.view(b, t, 2, n_head, size).permute(2, 0, 3, 1, 4)), *grid, base).unbind(0)
        return q, k, v.view(b, t, n_head, size).transpose(1, 2)
    if fused and not pos and kernels.active_for(qkv) and qkv.stride(-1) == 1:
        if size % 2:
            raise ValueError(f"rotary embeddings need an even head size, got {size}")
        cos, sin = _rotary_tables(t, size, base, qkv.device, qkv.dtype)
        if torch.is_grad_enabled() and qkv.requires_grad:
            return _apply(_QKVHeads, qkv, cos, sin, n_head)[:3]
        q, k, _ = kernels.ops().norm_rotary(qkv, cos, sin, n_head)
        return q, k, _v_heads(qkv, n_head)
    qk, v = qkv.split([2 * d, d], dim=-1)  # backward: one cat (two slices would each add a zero-filled copy)
    q, k = norm_rotary(qk.view(b, t, 2, n_head, size).permute(2, 0, 3, 1, 4), base, pos).unbind(0)
    return q, k, v.view(b, t, n_head, size).transpose(1, 2)


def _v_heads(qkv: Tensor, n_head: int) -> Tensor:
    """v of the qkv projection (B, T, 3D) as a (B, H, T, K) view."""
    b, t, d3 = qkv.shape
    return qkv[..., 2 * d3 // 3:].view(b, t, n_head, d3 // (3 * n_head)).transpose(1, 2)


class _QKVHeads(torch.autograd.Function):
    """(q, k, v, r): q and k from the fused kernel, v a view of qkv, r (2, B, H, T) the norms'
    scale. The backward is the kernel where it can be (the rotation's transpose, then RMSNorm's
    r (g' - y mean(g' y)) for q and k; v's gradient copied), else the eager formulas of _Rotary
    and _RMSNorm on qkv's view."""

    @staticmethod
    def forward(qkv: Tensor, cos: Tensor, sin: Tensor, n_head: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        q, k, r = kernels.ops().norm_rotary(qkv, cos, sin, n_head)
        return q, k, _v_heads(qkv, n_head), r

    @staticmethod
    def setup_context(ctx, inputs: tuple[Tensor, Tensor, Tensor, int], output: tuple[Tensor, ...]) -> None:
        (qkv, cos, sin, ctx.n_head), r = inputs, output[3]
        ctx.mark_non_differentiable(r)
        ctx.save_for_backward(qkv, r, cos, sin)

    @staticmethod
    def backward(ctx, gq: Tensor, gk: Tensor, gv: Tensor, _: Tensor) -> tuple[Tensor, None, None, None]:
        qkv, r, cos, sin = ctx.saved_tensors
        if all(kernels.plain_backward(g) for g in (gq, gk, gv)):
            return kernels.ops().norm_rotary_backward(gq, gk, gv, qkv, r, cos, sin, ctx.n_head), None, None, None
        b, t, d3 = qkv.shape
        x = qkv[..., : 2 * d3 // 3].view(b, t, 2, ctx.n_head, -1).permute(2, 0, 3, 1, 4)  # (2, B, H, T, K)
        r = r.unsqueeze(-1)
        g = _rotate(torch.stack([gq, gk]), cos, sin, sign=-1.0)  # the rotation's adjoint
        gqk = _rms_backward(x, x * r, r, g).permute(1, 3, 0, 2, 4).reshape(b, t, 2 * d3 // 3)
        return torch.cat([gqk, gv.transpose(1, 2).reshape(b, t, d3 // 3)], dim=-1), None, None, None


def window_mask(t: int, window: int, causal: bool, device: torch.device | None = None) -> Tensor:
    """(T, T) bool, True where query i may attend to key j: |i - j| <= window (and j <= i if causal)."""
    i = torch.arange(t, device=device)
    offset = i[:, None] - i[None, :]  # (T, T) i - j
    return (offset.abs() <= window) & (offset >= 0 if causal else True)


class Attention(FusedPath, nn.Module):
    """Multi-head self-attention with QK-norm and RoPE; causal or bidirectional.

    Options, off by default (the block is then exactly the one above; the growing tasks' maps try
    them, docs/results-reasoning.md): `window` w restricts attention to keys within w positions,
    |i - j| <= w (a mask); `qk_gain` multiplies each head's normed queries by a learnable exp(s),
    s starting at 0, so the logits are no longer capped at sqrt(K) by the QK-norm.
    """

    def __init__(self, d: int, n_head: int, causal: bool, window: int | None = None, qk_gain: bool = False):
        super().__init__()
        if d % n_head:
            raise ValueError(f"d={d} must be divisible by n_head={n_head}")
        if window is not None and window < 0:
            raise ValueError(f"window={window} must be >= 0 or None")
        self.n_head, self.causal, self.window = n_head, causal, window
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.proj = nn.Linear(d, d, bias=False)
        self.log_gain = nn.Parameter(torch.zeros(n_head)) if qk_gain else None  # (H,) s of the gain exp(s)

    def forward(self, x: Tensor, cache: LayerKV | None = None, grid: tuple[int, int] | None = None) -> Tensor:
        """(B, T, D) -> (B, T, D). With `cache` (causal attention only): x holds the T positions
        after the cache's `length`, rotated there; they attend to the cached keys and values and
        to each other causally, and are appended to the cache. `grid` (prefix, side): the T
        positions are a prefix and a square grid's cells, rotated in 2-D (grid_rotary)."""
        b, t, d = x.shape
        h = self.n_head
        if cache is not None:
            if grid is not None:
                raise ValueError("a KV cache serves positions on a line, not a grid")
            return self.proj(self._cached(x, cache).transpose(1, 2).reshape(b, t, d))
        q, k, v = qkv_heads(self.qkv(x), h, fused=self.fused_kernels, grid=grid)  # (B, H, T, K) each
        if self.log_gain is not None:
            q = q * self.log_gain.exp().view(h, 1, 1).to(q.dtype)
        if self.window is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)  # (B, H, T, K)
        else:
            mask = window_mask(t, self.window, self.causal, x.device)  # (T, T)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))

    def _cached(self, x: Tensor, cache: LayerKV) -> Tensor:
        """Attention's output (B, H, T, K) of x's T positions after the cache's, the cache extended."""
        if not self.causal:
            raise ValueError("a KV cache serves causal attention only: bidirectional positions see later ones")
        if self.window is not None or self.log_gain is not None:
            raise ValueError("a KV cache serves the plain attention only (no window, no qk_gain)")
        pos, t = cache.length, x.shape[1]
        q, k, v = qkv_heads(self.qkv(x), self.n_head, fused=self.fused_kernels, pos=pos)
        k, v = cache.extend(k, v)  # (B, H, pos + T, K): every position held
        if t == 1 or pos == 0:  # one new token sees everything; a first chunk is plainly causal
            return F.scaled_dot_product_attention(q, k, v, is_causal=t > 1)
        rows = torch.arange(pos, pos + t, device=x.device)[:, None]
        mask = torch.arange(pos + t, device=x.device)[None, :] <= rows  # (T, pos + T): no later position
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


class MLP(FusedPath, nn.Module):
    """ReLU^2 feed-forward of width 4d, no biases."""

    def __init__(self, d: int):
        super().__init__()
        self.fc = nn.Linear(d, 4 * d, bias=False)
        self.proj = nn.Linear(4 * d, d, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(relu_square(self.fc(x), fused=self.fused_kernels))


class Gate(nn.Module):
    """Per-channel residual gate gamma = sigmoid(raw) * gamma_max, starting at `init`."""

    def __init__(self, d: int, init: float, gamma_max: float):
        super().__init__()
        if not 0.0 < init < gamma_max <= 1.0:
            raise ValueError(f"need 0 < gate_init ({init}) < gamma_max ({gamma_max}) <= 1")
        self.gamma_max = gamma_max
        p = init / gamma_max
        self.raw = nn.Parameter(torch.full((d,), math.log(p / (1 - p))))

    def forward(self) -> Tensor:
        return torch.sigmoid(self.raw) * self.gamma_max  # (D,)


class Block(FusedPath, nn.Module):
    """Pre-norm transformer block: x + g_a * attn(norm(x)), then + g_m * mlp(norm(x)).

    Gates are optional (gate_init=None: plain residual block). Shapes: (B, T, D) -> (B, T, D).
    Options, off by default: `window` and `qk_gain` of the attention (see Attention), and `conv`,
    a depthwise convolution of width 3 over positions (zero padding; causal: the position and
    the two before it) as a first residual branch, x + g_c * conv(norm(x)), before attention.
    """

    def __init__(self, d: int, n_head: int, causal: bool = True, gate_init: float | None = None,
                 gamma_max: float = 1.0, window: int | None = None, qk_gain: bool = False, conv: bool = False):
        super().__init__()
        self.attn = Attention(d, n_head, causal, window=window, qk_gain=qk_gain)
        self.mlp = MLP(d)
        gated = gate_init is not None
        self.gate_attn = Gate(d, gate_init, gamma_max) if gated else None
        self.gate_mlp = Gate(d, gate_init, gamma_max) if gated else None
        self.conv = nn.Conv1d(d, d, 3, groups=d, bias=False) if conv else None  # (D, 1, 3) taps
        self.gate_conv = Gate(d, gate_init, gamma_max) if conv and gated else None

    def local_mix(self, x: Tensor) -> Tensor:
        """The conv branch conv(norm(x)) (B, T, D): zero padding at both ends, or two on the left if causal."""
        pad = (2, 0) if self.attn.causal else (1, 1)
        c = self.conv(F.pad(rms_norm(x, fused=self.fused_kernels).transpose(1, 2), pad))  # (B, D, T)
        return c.transpose(1, 2)

    def forward(self, x: Tensor, cache: LayerKV | None = None, grid: tuple[int, int] | None = None) -> Tensor:
        """`cache`: the attention's keys and values of earlier positions; `grid`: (prefix, side)
        for positions on a square grid (see Attention.forward)."""
        if self.conv is not None:
            if cache is not None:
                raise ValueError("a KV cache serves blocks without the conv branch")
            c = self.local_mix(x)
            x = x + (c if self.gate_conv is None else self.gate_conv() * c)
        a = self.attn(rms_norm(x, fused=self.fused_kernels), cache, grid)
        x = x + (a if self.gate_attn is None else self.gate_attn() * a)
        m = self.mlp(rms_norm(x, fused=self.fused_kernels))
        return x + (m if self.gate_mlp is None else self.gate_mlp() * m)


def init_weights(module: nn.Module, n_residual: int) -> None:
    """GPT-2 style: N(0, 0.02) everywhere, output projections scaled by 1/sqrt(2 n_residual).

    Output projections are deliberately non-zero: an attractor map f(y) = H(y + c) - y whose
    blocks start with zero outputs is the constant c, and nothing would learn.
    """
    for name, p in module.named_parameters():
        if p.dim() < 2:
            continue  # gates keep their own init
        std = 0.02 / math.sqrt(2 * n_residual) if name.endswith("proj.weight") else 0.02
        nn.init.normal_(p, mean=0.0, std=std)


def block_flops(d: int, t: int, causal: bool = True) -> float:
    """Forward FLOPs per token of one block: 2 per weight, plus attention scores and mixing.

    Attention costs 2 * 2 * T * D per token for QK^T and AV; a causal mask halves the useful part.
    """
    weights = 12 * d * d
    attention = 4 * t * d * (0.5 if causal else 1.0)
    return 2 * weights + attention
