"""Language and puzzle models built from `attractor.layers.Block`, all keeping one contract (models/base.py)."""

from attractor.models.attractor_lm import AttractorLM, AttractorLMConfig
from attractor.models.base import IGNORE_INDEX, ModelOutput, ParamGroup
from attractor.models.deq import DEQConfig, DEQLM
from attractor.models.equilibrium import Equilibrium, EquilibriumStack, SolveConfig, solve_equilibrium
from attractor.models.looped import LoopedConfig, LoopedLM
from attractor.models.puzzle import (
    PuzzleTransformer,
    PuzzleTransformerConfig,
    TraceStep,
    stablemax_cross_entropy,
)
from attractor.models.reasoner import (
    TRM,
    AttractorReasoner,
    AttractorReasonerConfig,
    ReasonerCarry,
    TRMConfig,
)
from attractor.models.transformer import TransformerConfig, TransformerLM
from attractor.models.registry import (
    PRESETS,
    build,
    config,
    config_from_dict,
    config_to_dict,
    describe,
    from_config,
    meta_model,
    override,
)
