"""Model presets by name, `build(name, **overrides)`, and the table `attractor models` prints.

CPU presets are matched in dense parameters within each size (about 1M: d=128, five blocks'
worth; about 5M: d=256, six), so that comparisons between families mean something. Paper presets
follow SPEC 2.1 (Fein-Ashley and Rashidinejad 2026, table of model sizes); their transformers
have the same blocks in one stack, so dense parameters match exactly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import nn

from attractor import schema
from attractor.errors import ConfigError, check_name
from attractor.models.attractor_lm import AttractorLM, AttractorLMConfig
from attractor.models.deq import DEQLM, DEQConfig
from attractor.models.equilibrium import SolveConfig
from attractor.models.looped import LoopedConfig, LoopedLM
from attractor.models.puzzle import PuzzleTransformer, PuzzleTransformerConfig
from attractor.models.reasoner import TRM, AttractorReasoner, AttractorReasonerConfig, TRMConfig
from attractor.models.transformer import TransformerConfig, TransformerLM

MODEL_OF: dict[type, type[nn.Module]] = {
    AttractorLMConfig: AttractorLM,
    TransformerConfig: TransformerLM,
    LoopedConfig: LoopedLM,
    DEQConfig: DEQLM,
    PuzzleTransformerConfig: PuzzleTransformer,
    TRMConfig: TRM,
    AttractorReasonerConfig: AttractorReasoner,
}
FAMILIES: dict[str, type] = {"attractor": AttractorLMConfig, "transformer": TransformerConfig,
                             "looped": LoopedConfig, "deq": DEQConfig,
                             "puzzle-transformer": PuzzleTransformerConfig, "trm": TRMConfig,
                             "attractor-reasoner": AttractorReasonerConfig}  # the tag saved with a config
PRESETS: dict[str, Callable[[], object]] = {}


def preset(fn: Callable[[], object]) -> Callable[[], object]:
    """Register a config factory under its name with dashes (attractor_1m -> 'attractor-1m')."""
    PRESETS[fn.__name__.replace("_", "-")] = fn
    return fn


# ---- CPU scale: byte-level vocabulary, context 256 ------------------------------------------

@preset
def attractor_1m():  # 4 backbone + 1 attractor block of d=128: 0.98M dense
    return AttractorLMConfig(d=128, n_head=4, n_backbone=4, n_attractor=1)


@preset
def transformer_1m():  # 5 blocks of d=128, matching attractor-1m
    return TransformerConfig(d=128, n_head=4, n_layer=5)


@preset
def looped_1m():  # 1 + 3 + 1 blocks and a d x d injection: 1.00M dense; 8 loops on average
    return LoopedConfig(d=128, n_head=4, n_prelude=1, n_recur=3, n_coda=1)


@preset
def deq_1m():  # 4 prelude + 1 equilibrium block and a separate head: 1.02M dense
    return DEQConfig(d=128, n_head=4, n_prelude=4, n_deq=1)


@preset
def attractor_5m():  # 5 + 1 blocks of d=256: 4.7M dense
    return AttractorLMConfig(d=256, n_head=4, n_backbone=5, n_attractor=1)


@preset
def transformer_5m():
    return TransformerConfig(d=256, n_head=4, n_layer=6)


@preset
def looped_5m():
    return LoopedConfig(d=256, n_head=4, n_prelude=2, n_recur=2, n_coda=2)


@preset
def deq_5m():
    return DEQConfig(d=256, n_head=4, n_prelude=5, n_deq=1)


# ---- paper scale (SPEC 2.1): BPE vocabulary 32768, context 2048 -------------------------------

PAPER = dict(vocab_size=32768, seq_len=2048)
PARCAE = dict(mean_loops=8, max_loops=16, backprop_loops=4)  # SPEC 2.1: mean depth 8, backprop ~4


@preset
def attractor_140m():  # 7 + 1 blocks, d 1024 / 8 heads, tol 3e-4, iterations 6..64: 134M
    return AttractorLMConfig(**PAPER, d=1024, n_head=8, n_backbone=7, n_attractor=1,
                             solve=SolveConfig(tol=3e-4, max_iter=64, min_iter=6))


@preset
def transformer_140m():
    return TransformerConfig(**PAPER, d=1024, n_head=8, n_layer=8)


@preset
def looped_140m():  # Parcae's split at this size is not in SPEC: a quarter each for prelude and coda
    return LoopedConfig(**PAPER, d=1024, n_head=8, n_prelude=2, n_recur=4, n_coda=2, **PARCAE)


@preset
def attractor_370m():  # 15 + 2 blocks, d 1280 / 10 heads, tol 2e-4, iterations 8..64
    return AttractorLMConfig(**PAPER, d=1280, n_head=10, n_backbone=15, n_attractor=2,
                             solve=SolveConfig(tol=2e-4, max_iter=64, min_iter=8))


@preset
def transformer_370m():
    return TransformerConfig(**PAPER, d=1280, n_head=10, n_layer=17)


@preset
def looped_370m():
    return LoopedConfig(**PAPER, d=1280, n_head=10, n_prelude=4, n_recur=9, n_coda=4, **PARCAE)


@preset
def attractor_770m():  # 35 + 2 blocks, d 1280 / 10 heads, tol 1.5e-4, iterations 6..32
    return AttractorLMConfig(**PAPER, d=1280, n_head=10, n_backbone=35, n_attractor=2,
                             solve=SolveConfig(tol=1.5e-4, max_iter=32, min_iter=6))


@preset
def transformer_770m():
    return TransformerConfig(**PAPER, d=1280, n_head=10, n_layer=37)


@preset
def looped_770m():
    return LoopedConfig(**PAPER, d=1280, n_head=10, n_prelude=9, n_recur=19, n_coda=9, **PARCAE)


# ---- puzzles (SPEC 2.2): Sudoku 9x9 by default (L=81, vocab 11); mazes: seq_len=n*n, vocab_size=6 ----

@preset
def puzzle_transformer_cpu():  # 5 bidirectional blocks of d=128: 0.98M dense
    return PuzzleTransformerConfig(d=128, n_head=4, n_layer=5)


@preset
def puzzle_transformer_27m():  # SPEC 2.2: width 512, 8 heads, 8 layers (our block: 25.2M dense)
    return PuzzleTransformerConfig(d=512, n_head=8, n_layer=8)


# CPU scale: TRM's 2-layer network at d=192 (0.89M), with fewer cycles and supervision steps than
# published (2 x (3 + 1) network evaluations per step instead of 3 x (6 + 1); 8 steps, not 16), so
# that an hour on this machine's CPU trains for thousands of steps (docs/models.md, "Puzzle models").
CPU_REASONER = dict(d=192, n_head=4, n_layer=2, h_cycles=2, halt_max_steps=8)


@preset
def trm_cpu():
    return TRMConfig(**CPU_REASONER, l_cycles=3)


@preset
def attractor_reasoner_cpu():  # the published solve: Anderson m=5, 4..8 steps, tol 1e-3, phantom k=2
    return AttractorReasonerConfig(**CPU_REASONER)


TRM_PUBLISHED = dict(d=512, n_head=8, prefix_len=16, h_cycles=3, halt_max_steps=16)  # TRM, SPEC 2.2


@preset
def trm_7m():  # TRM's 7M: L_layers 2, H_cycles 3, L_cycles 6 (our blocks: 6.3M)
    return TRMConfig(**TRM_PUBLISHED, n_layer=2, l_cycles=6)


@preset
def attractor_reasoner_7m():
    return AttractorReasonerConfig(**TRM_PUBLISHED, n_layer=2)


@preset
def trm_27m():  # 8 layers, "HRM scale" (our blocks: 25.2M); the paper reports TRM collapsing here
    return TRMConfig(**TRM_PUBLISHED, n_layer=8, l_cycles=6)


@preset
def attractor_reasoner_27m():  # SPEC 2.2's Sudoku-Extreme / Maze-Hard model (published 27.3M)
    return AttractorReasonerConfig(**TRM_PUBLISHED, n_layer=8)


def config(name: str, **overrides):
    """The preset's config with overrides applied (see `override` for the keys)."""
    check_name(name, PRESETS, "model preset")
    try:
        return override(PRESETS[name](), **overrides)
    except ConfigError as err:
        raise ConfigError(f"{name}: {err}") from None


def override(cfg, **overrides):
    """A copy of a model config with overrides applied.

    Keys are config fields (`d=256`), dotted paths into nested configs
    (`**{"solve.solver.m": 3}`), or, for equilibrium models, the solve's own fields directly
    (`tol=1e-4`, `solver="picard"`, `grad=Phantom(k=3)`). Unknown names and keys, and values of
    the wrong type or range, raise ConfigError naming the field.
    """
    for key, value in overrides.items():
        try:
            cfg = schema.override(cfg, key_path(cfg, key), value)
        except ConfigError:
            raise
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{key}={value!r}: {err}") from None
    return cfg


def key_path(cfg, key: str) -> str:
    """The dotted path an override key names: itself, or solve.<key> for a solve field given
    directly ('tol' -> 'solve.tol'). Unknown first names raise ConfigError with suggestions."""
    fields = {f.name for f in dataclasses.fields(cfg)}
    solve_fields = {f.name for f in dataclasses.fields(SolveConfig)} if "solve" in fields else set()
    head = key.partition(".")[0]
    check_name(head, fields | solve_fields, f"config key for {type(cfg).__name__}")
    return key if head in fields else f"solve.{key}"


def build(name: str, **overrides) -> nn.Module:
    """Build a preset model, e.g. build('attractor-1m', tol=1e-4); see `config` for the keys."""
    return from_config(config(name, **overrides))


def from_config(cfg) -> nn.Module:
    """The model a config describes (any family's config object)."""
    return MODEL_OF[type(cfg)](cfg)


def config_to_dict(cfg) -> dict:
    """A model config as JSON-safe data with its family tag: {"family": "attractor", ...}."""
    family = next(tag for tag, cls in FAMILIES.items() if type(cfg) is cls)
    return {"family": family, **schema.to_dict(cfg)}


def config_from_dict(data: dict):
    """The config `config_to_dict` wrote, exactly; unknown families and keys raise ConfigError."""
    if not isinstance(data, dict) or "family" not in data:
        raise ConfigError("a model config must be a mapping with a 'family' key")
    data = dict(data)
    family = data.pop("family")
    check_name(family, FAMILIES, "model family")
    return schema.from_dict(FAMILIES[family], data)


def describe(name: str) -> dict:
    """Family, dense and total parameters, and forward FLOPs per token, without allocating.

    flops_base: a forward with no iterations of the recurrent part (the proposal, for an
    Attractor); flops_per_iter: what each attractor evaluation or loop adds on top (0 for the
    plain transformer). Realised cost: `model.flops_per_token(output)`.
    """
    cfg = config(name)
    with torch.device("meta"):
        model = MODEL_OF[type(cfg)](cfg)
    base = model.flops_per_token(0)
    per_iter = model.flops_per_token(1) - base
    return {"name": name, "family": type(model).__name__, **model.parameter_counts(),
            "flops_base": base, "flops_per_iter": per_iter}
