"""A key/value cache for continuing sequences token by token: the explicit object a model's
forward takes as `cache=` (never state hidden in the modules).

Every attention layer that takes part in a cached forward keeps the keys and values of the
positions it has seen, its `LayerKV`, keyed by a name its model chooses: ("blocks", i) for the
transformer's block i, ("stack", k, j) for block j of an equilibrium stack at solver step k, so
that a new token's step k sees exactly the keys and values the full forward's step k sees. Keys
are cached after QK-norm and RoPE, rotated at their absolute position; a new token is rotated at
`length`, the number of positions the cache holds.

A cache holds at most `capacity` positions (the model's seq_len): what to do with a longer
context is the caller's rule (attractor.generate slides a window and rebuilds the cache).
Shapes: (B, H, T, K) as in attractor.layers.
"""

from __future__ import annotations

from collections.abc import Hashable

import torch
from torch import Tensor


class LayerKV:
    """One attention layer's keys and values of the positions seen so far, (B, H, length, K) each,
    in buffers of `capacity` positions allocated at the first `extend`."""

    def __init__(self, capacity: int):
        self.capacity, self.length = capacity, 0
        self.k: Tensor | None = None
        self.v: Tensor | None = None

    def extend(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Append the keys and values of T new positions, (B, H, T, K) each, and return those of
        every position held (views, (B, H, length, K))."""
        t = k.shape[2]
        if self.length + t > self.capacity:
            raise ValueError(f"the cache holds {self.length} positions of {self.capacity}; {t} more do not fit")
        if self.k is None:
            shape = (*k.shape[:2], self.capacity, k.shape[3])
            self.k = torch.empty(shape, dtype=k.dtype, device=k.device)
            self.v = torch.empty(shape, dtype=v.dtype, device=v.device)
        end = self.length + t
        self.k[:, :, self.length:end] = k
        self.v[:, :, self.length:end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]


class KVCache:
    """The keys and values of every attention layer of one model over the positions fed so far.

    A model's cached forward checks that its T new tokens fit (`check`), runs each block with its
    `layer(name)` and then `advance`s `length` by T. `depth` records the fixed depth (iters) the
    cache was built at, for the models whose cached layers depend on it: a cache built at one
    depth cannot serve another.
    """

    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError(f"a cache needs a capacity of at least one position, got {capacity}")
        self.capacity, self.length = capacity, 0
        self.depth: int | None = None
        self.layers: dict[Hashable, LayerKV] = {}

    def layer(self, name: Hashable) -> LayerKV:
        """The cache of the attention layer called `name` (made empty on first use)."""
        kv = self.layers.get(name)
        if kv is None:
            kv = self.layers[name] = LayerKV(self.capacity)
        return kv

    def check(self, t: int, depth: int | None = None) -> None:
        """ValueError unless t more positions fit, and the depth is the cache's own (set by the
        first forward)."""
        if self.length + t > self.capacity:
            raise ValueError(f"{t} new tokens do not fit a cache holding {self.length} of {self.capacity} positions")
        if self.length == 0 and not self.layers:
            self.depth = depth
        elif depth != self.depth:
            raise ValueError(f"this cache was built at iters={self.depth}, not iters={depth}")

    def advance(self, t: int) -> None:
        """Count t positions as held (after a forward has extended every layer by t)."""
        self.length += t
