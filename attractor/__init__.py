"""attractor: Attractor Models (Fein-Ashley and Rashidinejad 2026, arXiv 2605.12466).

`import attractor` loads the fixed-point core only; models live in `attractor.models`.
"""

from attractor.errors import ConfigError
from attractor.fixedpoint import *  # noqa: F403  (the core API, listed in its __all__)
from attractor.fixedpoint import __all__ as _core_all

__all__ = ["ConfigError", *_core_all]
__version__ = "0.1.0"
