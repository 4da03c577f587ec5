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
    """One attention layer's keys and values of the positions held, (B, H, length, K) each, in
    buffers of `capacity` positions allocated at the first `extend`."""

    def __init__(self, capacity: int, length: int = 0):
        self.capacity, self.length = capacity, length
        self.k: Tensor | None = None
        self.v: Tensor | None = None

    def extend(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write the keys and values of T new positions, (B, H, T, K) each, after the `length`
        held, and return those of every position up to them (views, (B, H, length + T, K)).

        The new positions count as held only at `advance`: until then a second `extend`
        overwrites them (a solver's next iterate of the same tokens)."""
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
        return self.k[:, :, :end], self.v[:, :, :end]

    def copy(self) -> LayerKV:
        """A layer holding this one's positions (copies of its buffers)."""
        other = LayerKV(self.capacity, self.length)
        if self.k is not None:
            other.k, other.v = self.k.clone(), self.v.clone()
        return other

    def nbytes(self) -> int:
        """Bytes of the buffers (0 before the first extend)."""
        return 0 if self.k is None else self.k.nbytes + self.v.nbytes


# What an equilibrium model's cache keeps of its earlier positions' solves:
# "exact": every solver step's keys and values, so a new token's step k sees what it sees in the
#          full forward (the same tokens and logits up to rounding);
# "converged": only each position's last iterate's, so a new token iterates against the prefix's
#          fixed points and stops on its own residual, not after its prefix's steps (one layer
#          per block instead of one per step, and fewer steps: close, not exact).
MODES = ("exact", "converged")


class KVCache:
    """The keys and values of every attention layer of one model over the positions fed so far.

    A model's cached forward checks that its T new tokens fit (`check`), runs each block with its
    `layer(name)` and then `advance`s every layer's `length` by T. `depth` records the depth the
    cache was built at (iters=k, or "adaptive"), for the models whose cached layers depend on it:
    a cache built at one depth cannot serve another. `mode` says what an equilibrium model keeps
    (MODES); `last_depth` (B,) the solver steps of each row's last position, from which an
    adaptive solve of new tokens continues (prefix stopping: a token stops no earlier).
    """

    def __init__(self, capacity: int, mode: str = "exact"):
        if capacity < 1:
            raise ValueError(f"a cache needs a capacity of at least one position, got {capacity}")
        if mode not in MODES:
            raise ValueError(f"cache mode {mode!r} is not one of {', '.join(MODES)}")
        self.capacity, self.length, self.mode = capacity, 0, mode
        self.depth: int | str | None = None
        self.last_depth: Tensor | None = None
        self.layers: dict[Hashable, LayerKV] = {}

    def layer(self, name: Hashable, like: Hashable | None = None) -> LayerKV:
        """The cache of the attention layer called `name`: made empty on first use, or, once
        positions are held, as a copy of layer `like` (a solver step that no earlier position
        took: each of them stopped before it, so its keys and values there are those of its
        last step, held by `like`)."""
        kv = self.layers.get(name)
        if kv is None:
            if self.length and like is None:
                raise ValueError(f"layer {name!r} is new to a cache holding {self.length} positions")
            kv = self.layers[name] = LayerKV(self.capacity) if not self.length else self.layers[like].copy()
        return kv

    def check(self, t: int, depth: int | str | None = None) -> None:
        """ValueError unless t more positions fit, and the depth is the cache's own (set by the
        first forward)."""
        if self.length + t > self.capacity:
            raise ValueError(f"{t} new tokens do not fit a cache holding {self.length} of {self.capacity} positions")
        if self.length == 0 and not self.layers:
            self.depth = depth
        elif depth != self.depth:
            raise ValueError(f"this cache was built at iters={self.depth}, not iters={depth}")

    def advance(self, t: int) -> None:
        """Count the t positions every layer was just extended by as held."""
        self.length += t
        for kv in self.layers.values():
            kv.length = self.length

    def nbytes(self) -> int:
        """Bytes of all the layers' buffers."""
        return sum(kv.nbytes() for kv in self.layers.values())
