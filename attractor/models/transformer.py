"""TransformerLM: the standard baseline. Embedding -> n blocks -> norm -> tied unembedding.

Dimension letters: B batch, T sequence, D width, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from attractor.layers import Block, block_flops, init_weights
from attractor.kvcache import KVCache
from attractor.models.base import LMShape, ModelOutput, ParamGroup, TiedLM, block_groups, check_batch
from attractor.schema import require


@dataclass(frozen=True)
class TransformerConfig(LMShape):  # plus vocab_size, seq_len, d, n_head
    n_layer: int = 5

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.n_layer >= 1, f"n_layer={self.n_layer} must be >= 1")


class TransformerLM(TiedLM):
    has_depth = False  # a fixed stack: `iters` is refused

    def __init__(self, cfg: TransformerConfig):
        super().__init__(cfg.vocab_size, cfg.d)
        self.cfg = cfg
        self.blocks = nn.ModuleList(Block(cfg.d, cfg.n_head) for _ in range(cfg.n_layer))
        init_weights(self, n_residual=cfg.n_layer)

    def forward(self, idx: Tensor, targets: Tensor | None = None, *, iters: None = None,
                cache: KVCache | None = None) -> ModelOutput:
        """Logits (B, T, V) and loss of (B, T) tokens; `iters` exists for the shared contract
        and must stay None: a plain transformer has no depth to set. `cache`: idx continues the
        cache's positions (each block attends to its cached keys and values), and is added to it."""
        check_batch(idx, targets, self.cfg.vocab_size, self.cfg.seq_len)
        if iters is not None:
            raise ValueError(f"TransformerLM has a fixed depth of {self.cfg.n_layer} blocks; got iters={iters!r}")
        if cache is not None:
            cache.check(idx.shape[1])
        h = self.embed(idx)  # (B, T, D)
        for i, block in enumerate(self.blocks):
            h = block(h) if cache is None else block(h, cache.layer(("blocks", i)))
        if cache is not None:
            cache.advance(idx.shape[1])
        logits, loss = self.decode(h, targets)
        return ModelOutput(logits, loss)

    def can_cache(self, iters: int | None) -> bool:
        """A KV cache serves every forward of the transformer."""
        return True

    def param_groups(self) -> list[ParamGroup]:
        """Embedding (AdamW, no decay) and the blocks' matrices (Muon)."""
        return [*self.embedding_groups(), *block_groups("blocks", self.blocks)]

    def flops_per_token(self, out: ModelOutput | float | None = None) -> float:
        """Forward FLOPs per token: blocks plus the unembedding (the same for every forward)."""
        c = self.cfg
        return c.n_layer * block_flops(c.d, c.seq_len) + 2 * c.d * c.vocab_size
