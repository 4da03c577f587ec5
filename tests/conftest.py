"""Shared builders: seeded generators and small contractive maps with known structure."""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn.functional as F
from hypothesis import settings

# CI runs the same examples every time (a failure there reproduces here with CI=true).
settings.register_profile("ci", derandomize=True, deadline=None)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture
def gen64() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


def orthogonal(n: int, generator: torch.Generator, dtype=torch.float64) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=dtype))
    return q * torch.sign(torch.diagonal(r))


def contractive_linear(n: int, radius: float, batch: int, generator: torch.Generator,
                       dtype=torch.float64, spectrum: str = "symmetric"):
    """A = Q diag(ev) Q^T with ev spread over [-radius, radius] ('symmetric') or [0, radius]."""
    low = -radius if spectrum == "symmetric" else 0.0
    ev = torch.linspace(low, radius, n, dtype=torch.float64)
    q = orthogonal(n, generator)
    a = (q @ torch.diag(ev) @ q.T).to(dtype)
    b = torch.randn(batch, n, generator=generator, dtype=torch.float64).to(dtype)
    return a, b


def linear_solution(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """z with z = A z + b, row by row: (B, n)."""
    eye = torch.eye(a.shape[0], dtype=a.dtype)
    return torch.linalg.solve(eye - a, b.T).T


def spectral_normalised(n: int, m: int, norm: float, generator: torch.Generator, dtype=torch.float64):
    w = torch.randn(n, m, generator=generator, dtype=dtype)
    return w * (norm / torch.linalg.matrix_norm(w, ord=2))


class GatedAttentionMap(torch.nn.Module):
    """f(y) = H(y + x) - y for a one-block gated pre-norm transformer H (the attractor's form).

    H(h) = h + g1 * Attn(norm(h)), then + g2 * MLP(norm(.)); small weights and gates 0.5 keep it
    contractive. Samples interact only within themselves. Shapes: y, x (B, T, D).
    """

    def __init__(self, d: int, n_head: int, generator: torch.Generator, dtype=torch.float64,
                 scale: float = 0.3, causal: bool = True):
        super().__init__()
        def p(*shape):
            return torch.nn.Parameter(torch.randn(*shape, generator=generator, dtype=dtype) * scale / math.sqrt(shape[-1]))
        self.n_head, self.causal = n_head, causal
        self.qkv, self.proj = p(3 * d, d), p(d, d)
        self.fc, self.out = p(4 * d, d), p(d, 4 * d)
        self.gate_attn = torch.nn.Parameter(torch.full((d,), 0.5, dtype=dtype))
        self.gate_mlp = torch.nn.Parameter(torch.full((d,), 0.5, dtype=dtype))

    def block(self, h: torch.Tensor) -> torch.Tensor:
        b, t, d = h.shape
        q, k, v = F.linear(F.rms_norm(h, (d,)), self.qkv).view(b, t, 3, self.n_head, -1).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)  # (B, H, T, hs)
        h = h + self.gate_attn * F.linear(a.transpose(1, 2).reshape(b, t, d), self.proj)
        return h + self.gate_mlp * F.linear(F.relu(F.linear(F.rms_norm(h, (d,)), self.fc)).square(), self.out)

    def forward(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.block(y + x) - y


# Peak-memory probes run in fresh interpreters. CPU tensors have no allocator statistics, so the
# probe resets the kernel's peak-RSS mark (Linux: /proc/self/clear_refs, "5") just before the
# measured step and reads VmHWM after it: the step's own peak above the memory already held.
PEAK_RSS_PRELUDE = '''
import re
def _status_kb(key):
    return int(re.search(key + r":\\s+(\\d+)", open("/proc/self/status").read()).group(1))
def reset_peak():
    open("/proc/self/clear_refs", "w").write("5")
    return _status_kb("VmRSS")
def peak_growth_mb(rss_before):
    return (_status_kb("VmHWM") - rss_before) / 1024
'''

# glibc moves its mmap threshold with the allocation history, so freed tensors may or may not go
# back to the OS and identical runs differ by 20 MB. A fixed threshold maps every tensor above
# 64 kB on its own and unmaps it on free: RSS then follows live tensors.
PEAK_RSS_ENV = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}

needs_peak_rss = pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"),
                                    reason="peak-RSS reset needs Linux /proc/self/clear_refs")


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Tiny models gain nothing from a second thread and lose much when another process has the
    core (the 50-step tests took 0.4 s on one thread, 1 to 8 s on two under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tokens(batch: int = 3, seed: int = 1, vocab: int = 64, length: int = 16) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def pattern_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """A repeated 8-token pattern: inputs (2, 16) and their next tokens."""
    seq = torch.tensor([3, 17, 42, 5, 9, 60, 23, 11] * 5)
    rows = torch.stack([seq[0:17], seq[3:20]])
    return rows[:, :-1], rows[:, 1:]


def train_losses(model: torch.nn.Module, idx: torch.Tensor, targets: torch.Tensor, steps: int = 50,
                 lr: float = 3e-3) -> list[float]:
    """Train with AdamW on one batch and return the loss at every step."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = model(idx, targets).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


# ---- language-model runs: a small corpus and tiny models (tests of the trainer and the CLI) ----

ARCH = {
    "attractor-1m": ["model.n_backbone=1"],
    "transformer-1m": ["model.n_layer=2"],
    "looped-1m": ["model.n_prelude=1", "model.n_recur=1", "model.n_coda=1", "model.mean_loops=2", "model.max_loops=4"],
    "deq-1m": ["model.n_prelude=1"],
}


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """About 60 kB of text with structure to learn: sentences from a small grammar."""
    gen = torch.Generator().manual_seed(0)
    subjects, verbs, objects = ["the cat", "a dog", "my friend", "the king"], ["sees", "likes", "finds"], ["a tree", "the sea", "bread"]

    def pick(options):
        return options[int(torch.randint(len(options), (1,), generator=gen))]

    lines = [f"{pick(subjects)} {pick(verbs)} {pick(objects)}." for _ in range(2500)]
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n".join(lines))
    return path


def tiny_settings(preset: str, cache, *extra: str) -> list[str]:
    """--set values for a run of a tiny model (d 32, context 32, batch 4) that logs every step."""
    return ["model.d=32", "model.n_head=2", "model.seq_len=32", "train.batch_size=4", "train.eval_batches=2",
            "train.log_every=1", "train.warmup=2", "train.eval_every=4", "train.checkpoint_every=3",
            f"data.cache_dir={cache}", *ARCH[preset], *extra]


def sets(settings: list[str]) -> list[str]:
    """--set arguments for the command line: ['a=1', 'b=2'] -> ['--set', 'a=1', '--set', 'b=2']."""
    return [a for s in settings for a in ("--set", s)]


def losses(run_dir) -> list[float]:
    """The training losses a run logged, in order."""
    import json

    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
