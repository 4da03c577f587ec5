"""Language models built from `attractor.layers.Block`, all returning `ModelOutput`."""

from attractor.models.attractor_lm import AttractorLM, AttractorLMConfig
from attractor.models.base import ModelOutput
from attractor.models.deq import DEQConfig, DEQLM
from attractor.models.looped import LoopedConfig, LoopedLM
from attractor.models.transformer import TransformerConfig, TransformerLM
from attractor.models.registry import PRESETS, build, config, describe
