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
from attractor.fixedpoint import Unroll
from attractor.models.attention_map import AttentionEquilibrium, AttentionMapConfig
from attractor.models.attractor_lm import AttractorLM, AttractorLMConfig
from attractor.models.deq import DEQLM, DEQConfig
from attractor.models.equilibrium import SolveConfig
from attractor.models.local import LocalConfig, LocalEquilibrium, LocalGridConfig
from attractor.models.looped import LoopedConfig, LoopedLM
from attractor.models.puzzle import GridTransformerConfig, PuzzleTransformer, PuzzleTransformerConfig
from attractor.models.reasoner import TRM, AttractorReasoner, AttractorReasonerConfig, GridTRMConfig, TRMConfig
from attractor.models.transformer import TransformerConfig, TransformerLM

MODEL_OF: dict[type, type[nn.Module]] = {
    AttractorLMConfig: AttractorLM,
    TransformerConfig: TransformerLM,
    LoopedConfig: LoopedLM,
    DEQConfig: DEQLM,
    PuzzleTransformerConfig: PuzzleTransformer,
    TRMConfig: TRM,
    AttractorReasonerConfig: AttractorReasoner,
    LocalConfig: LocalEquilibrium,
    LocalGridConfig: LocalEquilibrium,
    GridTransformerConfig: PuzzleTransformer,
    GridTRMConfig: TRM,
    AttentionMapConfig: AttentionEquilibrium,
}
FAMILIES: dict[str, type] = {"attractor": AttractorLMConfig, "transformer": TransformerConfig,
                             "looped": LoopedConfig, "deq": DEQConfig,
                             "puzzle-transformer": PuzzleTransformerConfig, "trm": TRMConfig,
                             "attractor-reasoner": AttractorReasonerConfig,
                             "local": LocalConfig, "local-grid": LocalGridConfig,
                             "grid-transformer": GridTransformerConfig, "grid-trm": GridTRMConfig,
                             "attention-map": AttentionMapConfig}  # the tag saved with a config
# What each family trains on: a task's name in attractor.tasks.TASKS (models do not import tasks).
TASK_OF: dict[str, str] = {"attractor": "text", "transformer": "text", "looped": "text", "deq": "text",
                           "puzzle-transformer": "puzzles", "trm": "puzzles", "attractor-reasoner": "puzzles",
                           "local": "parity", "local-grid": "maze-sizes",
                           "grid-transformer": "maze-sizes", "grid-trm": "maze-sizes",
                           "attention-map": "parity"}
PRESETS: dict[str, Callable[[], object]] = {}
# A preset's trainer defaults where they differ from its task's: TrainConfig field overrides.
PRESET_TRAIN: dict[str, dict] = {}


def preset(fn: Callable[[], object] | None = None, *, train: dict | None = None):
    """Register a config factory under its name with dashes (attractor_1m -> 'attractor-1m');
    `@preset(train={...})` also gives it trainer defaults (TrainConfig fields) of its own."""
    def register(fn: Callable[[], object]) -> Callable[[], object]:
        name = fn.__name__.replace("_", "-")
        PRESETS[name] = fn
        if train:
            PRESET_TRAIN[name] = dict(train)
        return fn

    return register if fn is None else register(fn)


def task_name(cfg) -> str:
    """The name of the task a model config's family trains on ('text', 'puzzles')."""
    return TASK_OF[family_of(cfg)]


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


@dataclasses.dataclass(frozen=True)
class PaperSize:
    """One size of SPEC 2.1's table: the Attractor and the two baselines with its blocks.

    Parcae's prelude/recurrence/coda split is not in SPEC: a quarter each for prelude and coda.
    """

    d: int
    n_head: int
    n_backbone: int  # plain blocks proposing c; the transformer has n_backbone + n_attractor
    n_attractor: int
    solve: SolveConfig  # the published tol and iteration range
    looped: tuple[int, int, int]  # n_prelude, n_recur, n_coda (as many blocks as the transformer)


PAPER_SIZES = {
    "140m": PaperSize(1024, 8, 7, 1, SolveConfig(tol=3e-4, max_iter=64, min_iter=6), (2, 4, 2)),  # 134M
    "370m": PaperSize(1280, 10, 15, 2, SolveConfig(tol=2e-4, max_iter=64, min_iter=8), (4, 9, 4)),
    "770m": PaperSize(1280, 10, 35, 2, SolveConfig(tol=1.5e-4, max_iter=32, min_iter=6), (9, 19, 9)),
}


def _register_paper(size: str, s: PaperSize) -> None:
    """attractor-<size>, transformer-<size> and looped-<size> of one PaperSize."""
    shape = dict(**PAPER, d=s.d, n_head=s.n_head)
    factories = {
        "attractor": lambda: AttractorLMConfig(**shape, n_backbone=s.n_backbone, n_attractor=s.n_attractor,
                                               solve=s.solve),
        "transformer": lambda: TransformerConfig(**shape, n_layer=s.n_backbone + s.n_attractor),
        "looped": lambda: LoopedConfig(**shape, n_prelude=s.looped[0], n_recur=s.looped[1], n_coda=s.looped[2],
                                       **PARCAE),
    }
    for family, factory in factories.items():
        factory.__name__ = f"{family}_{size}"
        preset(factory)


for _size, _spec in PAPER_SIZES.items():
    _register_paper(_size, _spec)


# ---- puzzles (SPEC 2.2): Sudoku 9x9 by default (L=81, vocab 11); mazes: seq_len=n*n, vocab_size=6 ----

# The CPU puzzle presets' trainer defaults. The puzzle task's (TRM's) lr 1e-4 and EMA 0.999 are
# made for ~65k steps; over the few hundred to few thousand steps of a CPU run they leave the
# served (averaged) weights near their initialisation. These are what docs/results-puzzles.md
# trained them with: lr 1e-3 and weight decay 0.1 (TRM's lr x wd product), EMA 0.99, a 50-step
# warmup, batch 64.
CPU_PUZZLE_TRAIN = {"batch_size": 64, "lr": 1e-3, "weight_decay": 0.1, "ema": 0.99, "warmup": 50}


@preset(train=CPU_PUZZLE_TRAIN)
def puzzle_transformer_cpu():  # 5 bidirectional blocks of d=128: 0.98M dense
    return PuzzleTransformerConfig(d=128, n_head=4, n_layer=5)


@preset
def puzzle_transformer_27m():  # SPEC 2.2: width 512, 8 heads, 8 layers (our block: 25.2M dense)
    return PuzzleTransformerConfig(d=512, n_head=8, n_layer=8)


# CPU scale: TRM's 2-layer network at d=192 (0.89M), with fewer cycles and supervision steps than
# published (2 x (3 + 1) network evaluations per step instead of 3 x (6 + 1); 8 steps, not 16), so
# that an hour on this machine's CPU trains for thousands of steps (docs/models.md, "Puzzle models").
CPU_REASONER = dict(d=192, n_head=4, n_layer=2, h_cycles=2, halt_max_steps=8)


@preset(train=CPU_PUZZLE_TRAIN)
def trm_cpu():
    return TRMConfig(**CPU_REASONER, l_cycles=3)


@preset(train=CPU_PUZZLE_TRAIN)
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


# ---- growing tasks: size-agnostic maps, trained short and run long ----------------

@preset
def parity_local():  # 1-D convolutional map, 32 channels, kernel 3: 9.4k parameters, any length
    return LocalConfig()


@preset
def parity_looped():  # the same map unrolled a fixed n steps (backprop through all): the baseline
    return LocalConfig(loops_per_position=1.0, solve=dataclasses.replace(LocalConfig().solve, grad=Unroll()))


@preset
def parity_attention():  # the attention Block as the map (d 32, 2 heads: 12.5k parameters), options off
    return AttentionMapConfig()


@preset
def parity_attention_local():  # window 1, QK gain, conv branch, tanh-bounded: the variant that extrapolates (12.6k)
    return AttentionMapConfig(window=1, qk_gain=True, conv=True, bounded=True)


@preset
def maze_local():  # the 2-D map (3x3 kernels, 32 channels: 28k parameters), mazes of any side
    return LocalGridConfig()


@preset
def maze_looped():  # the same 2-D map unrolled a fixed s*s / 2 steps (backprop through all): the baseline
    return LocalGridConfig(loops_per_position=0.5, solve=dataclasses.replace(LocalGridConfig().solve, grad=Unroll()))


# The attention baselines on mazes of any side (2-D positions), at about the feed-forward stack's
# 0.89M parameters, trained with the CPU puzzle recipe these models had on fixed-size puzzles.
@preset(train=CPU_PUZZLE_TRAIN)
def maze_transformer():  # 8 bidirectional blocks of d=96 (head size 24): 0.88M dense, ~2 MFLOPs per cell at side 9
    return GridTransformerConfig(d=96, n_head=4, n_layer=8)


@preset(train=CPU_PUZZLE_TRAIN)
def maze_trm():  # trm-cpu's network (2 blocks of d=192: 0.88M) and cycles, on grids of any side
    return GridTRMConfig(**CPU_REASONER, l_cycles=3)


@preset
def maze_feedforward():  # 32 untied layers of the 2-D map (887k parameters): maze-local's ~33 evaluations at side 9
    return LocalGridConfig(layers=32, solve=dataclasses.replace(LocalGridConfig().solve, grad=Unroll()))


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
    (`tol=1e-4`, `solver="picard"`, `grad=Phantom(k=3)`): see `resolve_key`. Unknown names and
    keys, and values of the wrong type or range, raise ConfigError naming the field.
    """
    for key, value in overrides.items():
        try:
            cfg = schema.override(cfg, resolve_key(key, {"model": cfg})[1], value)
        except ConfigError:
            raise
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{key}={value!r}: {err}") from None
    return cfg


def resolve_key(key: str, sections: dict[str, object]) -> tuple[str, str]:
    """(section, dotted path inside it) that a setting's key names, among `sections` (name ->
    config: {"model", "data", "train"} for a run, {"model": cfg} for a model alone).

    'section.path' names its section ('model.solve.solver.m'); otherwise the key's first name
    must be a field of exactly one section ('lr' -> train), where an equilibrium model's fields
    include its solve's ('tol' -> model, 'solve.tol'). An unknown name is a ConfigError with
    suggestions, a name that several sections have one that asks for the section.
    """
    head, _, rest = key.partition(".")
    if head in sections:
        if not rest:
            first = dataclasses.fields(sections[head])[0].name
            raise ConfigError(f"--set {key}: name a field of {head}, e.g. {head}.{first}")
        candidates, key, head = [head], rest, rest.partition(".")[0]
    else:
        candidates = list(sections)
    owners = {s: path for s in candidates if (path := _field_path(sections[s], key)) is not None}
    if len(owners) > 1:
        raise ConfigError(f"--set {key}: ambiguous, it is a field of {' and '.join(owners)}; "
                          f"write {' or '.join(f'{o}.{key}' for o in owners)}")
    if not owners:
        known = set().union(*(_field_names(sections[s]) for s in candidates))
        what = f"config key for {type(sections[candidates[0]]).__name__}" if len(candidates) == 1 else "config key"
        check_name(head, known, what)
    return next(iter(owners.items()))


def _field_names(cfg) -> set[str]:
    """The first names a key may have inside `cfg`: its fields, and its solve's where it has one."""
    names = {f.name for f in dataclasses.fields(cfg)}
    if "solve" in names and dataclasses.is_dataclass(cfg.solve):
        names |= {f.name for f in dataclasses.fields(cfg.solve)}
    return names


def _field_path(cfg, key: str) -> str | None:
    """The dotted path of `key` inside `cfg` (itself, or solve.<key> for a field of the solve
    given bare), None where its first name is none of _field_names."""
    head = key.partition(".")[0]
    if head in {f.name for f in dataclasses.fields(cfg)}:
        return key
    return f"solve.{key}" if head in _field_names(cfg) else None


def build(name: str, **overrides) -> nn.Module:
    """Build a preset model, e.g. build('attractor-1m', tol=1e-4); see `config` for the keys."""
    return from_config(config(name, **overrides))


def from_config(cfg) -> nn.Module:
    """The model a config describes (any family's config object)."""
    return MODEL_OF[type(cfg)](cfg)


class _SkipMetaFills(torch.overrides.TorchFunctionMode):
    """The initialisers that only fill values (random draws, the identity) do nothing to a meta
    tensor, which has no values: skipped. Some of them (`normal_`, `eye`) run on meta tensors as
    Python references wrapped to disable dynamo, which import torch._dynamo on first use: over a
    second of start-up for `attractor models` and for loading a checkpoint."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _FILLS:  # nn.init passes its tensor by keyword, Tensor methods as self, eye as out
            tensor = args[0] if args and func is not torch.eye else kwargs.get("tensor", kwargs.get("out"))
            if isinstance(tensor, torch.Tensor) and tensor.is_meta:
                return tensor
        return func(*args, **kwargs)


_FILLS = {torch.Tensor.normal_, torch.Tensor.uniform_, torch.eye,
          *(getattr(torch.nn.init, name) for name in ("normal_", "uniform_", "trunc_normal_", "eye_", "orthogonal_",
                                                      "xavier_normal_", "xavier_uniform_", "kaiming_normal_",
                                                      "kaiming_uniform_"))}


def meta_model(cfg) -> nn.Module:
    """The model a config describes with its tensors on the meta device: shapes without memory or
    values (parameter counts, FLOPs, or a model to `load_state_dict(..., assign=True)` into)."""
    with torch.device("meta"), _SkipMetaFills():
        return from_config(cfg)


def with_weights(cfg, state: dict[str, torch.Tensor]) -> nn.Module:
    """The model a config describes holding the tensors of `state` (a state_dict), assigned
    rather than copied: no initialisation and no second copy in memory. load_state_dict's
    RuntimeError where they do not fit; ValueError naming a buffer that `state` lacks."""
    model = meta_model(cfg)
    model.load_state_dict(state, assign=True)
    for name, buffer in model.named_buffers():
        if buffer.is_meta:
            raise ValueError(f"buffer {name} missing from the weights")
    return model


def family_of(cfg) -> str:
    """The family tag of a model config ('attractor', 'trm', ...)."""
    return next(tag for tag, cls in FAMILIES.items() if type(cfg) is cls)


def config_to_dict(cfg) -> dict:
    """A model config as JSON-safe data with its family tag: {"family": "attractor", ...}."""
    return {"family": family_of(cfg), **schema.to_dict(cfg)}


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
    model = meta_model(config(name))
    base = model.flops_per_token(0)
    per_iter = model.flops_per_token(1) - base
    return {"name": name, "family": type(model).__name__, **model.parameter_counts(),
            "flops_base": base, "flops_per_iter": per_iter}
