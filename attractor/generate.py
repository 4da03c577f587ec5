"""Sampling text from a trained language model: a plain loop without a KV cache.

Every new token re-runs the model on the last seq_len tokens. At the CPU scale this library
trains on, that costs little; a KV cache would also have to carry the attractor's per-token
fixed points, and is left for when generation speed matters.
"""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def sample(model: nn.Module, prompt: list[int], *, max_new_tokens: int = 200, iters: int | None = None,
           temperature: float = 1.0, top_k: int | None = None, seed: int = 0) -> list[int]:
    """Continue `prompt` (token ids) by up to max_new_tokens tokens.

    Args:
        iters: the recurrent models' depth (None: adaptive / the model's own rule).
        temperature: 0 picks the most likely token (greedy); > 0 samples from softmax(logits / T).
        top_k: sample only among the k most likely tokens.
        seed: the sampler's own generator, so a call is repeatable whatever else ran before.
    Returns:
        the new token ids (without the prompt).
    """
    if not prompt:
        raise ValueError("the prompt must hold at least one token")
    if temperature < 0 or max_new_tokens < 0 or (top_k is not None and top_k < 1):
        raise ValueError("need temperature >= 0, max_new_tokens >= 0 and top_k >= 1")
    model.eval()
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    ids = torch.tensor([prompt], dtype=torch.long, device=device)
    seq_len = model.cfg.seq_len
    kwargs = {} if iters is None else {"iters": iters}
    for _ in range(max_new_tokens):
        logits = model(ids[:, -seq_len:], **kwargs).logits[0, -1]  # (V,)
        if temperature == 0:
            nxt = logits.argmax().view(1, 1)
        else:
            logits = logits / temperature
            if top_k is not None:
                kth = torch.topk(logits, min(top_k, logits.numel())).values[-1]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            nxt = torch.multinomial(torch.softmax(logits, -1), 1, generator=generator).view(1, 1)
        ids = torch.cat([ids, nxt], 1)
    return ids[0, len(prompt):].tolist()
