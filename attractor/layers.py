"""The one transformer block every model is built from, and its parts.

Design (SPEC 2.1, the nanochat recipe): pre-norm with parameter-free RMSNorm, rotary position
embeddings, QK-norm, ReLU^2 MLP of width 4d, no biases, attention through PyTorch's
`scaled_dot_product_attention` (whatever backend the device has), causal or bidirectional.
Attractor blocks scale each residual branch by a per-channel gate sigmoid(raw) * gamma_max.

Dimension letters: B batch, T sequence, D width, H heads, K head size (D / H).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def rms_norm(x: Tensor) -> Tensor:
    """Parameter-free RMSNorm over the last dim."""
    return F.rms_norm(x, (x.size(-1),))


def rotary(x: Tensor, base: float = 10000.0) -> Tensor:
    """Rotate pairs of channels of x (B, H, T, K) by position-dependent angles (RoPE)."""
    t, k = x.shape[-2], x.shape[-1]
    if k % 2:
        raise ValueError(f"rotary embeddings need an even head size, got {k}")
    freqs = base ** (-torch.arange(0, k, 2, device=x.device, dtype=torch.float32) / k)  # (K/2,)
    angles = torch.arange(t, device=x.device, dtype=torch.float32)[:, None] * freqs  # (T, K/2)
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., : k // 2], x[..., k // 2 :]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class Attention(nn.Module):
    """Multi-head self-attention with QK-norm and RoPE; causal or bidirectional."""

    def __init__(self, d: int, n_head: int, causal: bool):
        super().__init__()
        if d % n_head:
            raise ValueError(f"d={d} must be divisible by n_head={n_head}")
        self.n_head, self.causal = n_head, causal
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.proj = nn.Linear(d, d, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_head, d // self.n_head).permute(2, 0, 3, 1, 4)  # (B, H, T, K) each
        q, k = rotary(rms_norm(q)), rotary(rms_norm(k))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)  # (B, H, T, K)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class MLP(nn.Module):
    """ReLU^2 feed-forward of width 4d, no biases."""

    def __init__(self, d: int):
        super().__init__()
        self.fc = nn.Linear(d, 4 * d, bias=False)
        self.proj = nn.Linear(4 * d, d, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(F.relu(self.fc(x)).square())


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


class Block(nn.Module):
    """Pre-norm transformer block: x + g_a * attn(norm(x)), then + g_m * mlp(norm(x)).

    Gates are optional (gate_init=None: plain residual block). Shapes: (B, T, D) -> (B, T, D).
    """

    def __init__(self, d: int, n_head: int, causal: bool = True, gate_init: float | None = None,
                 gamma_max: float = 1.0):
        super().__init__()
        self.attn = Attention(d, n_head, causal)
        self.mlp = MLP(d)
        gated = gate_init is not None
        self.gate_attn = Gate(d, gate_init, gamma_max) if gated else None
        self.gate_mlp = Gate(d, gate_init, gamma_max) if gated else None

    def forward(self, x: Tensor) -> Tensor:
        a = self.attn(rms_norm(x))
        x = x + (a if self.gate_attn is None else self.gate_attn() * a)
        m = self.mlp(rms_norm(x))
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
