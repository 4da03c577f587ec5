"""attractor: Attractor Models (Fein-Ashley and Rashidinejad 2026, arXiv 2605.12466).

`import attractor` loads the fixed-point core only; models live in `attractor.models`.
"""

from attractor.errors import ConfigError
from attractor.fixedpoint import *  # noqa: F403  (the core API, listed in its __all__)
from attractor.fixedpoint import __all__ as _core_all

__all__ = ["ConfigError", "load", *_core_all]


def load(path, *, device="cpu"):
    """The model a training run saved (a checkpoint, or a run directory's newest), in eval mode.

    Imported lazily, so `import attractor` stays the light core.
    """
    from attractor.run import load_run

    return load_run(path, device=device)[0]
__version__ = "0.2.0"
