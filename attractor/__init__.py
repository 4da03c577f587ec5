"""attractor: Attractor Models (Fein-Ashley and Rashidinejad 2026, arXiv 2605.12466).

`import attractor` loads the fixed-point core only; models live in `attractor.models`.
"""

from attractor.errors import ConfigError
from attractor.fixedpoint import *  # noqa: F403  (the core API, listed in its __all__)
from attractor.fixedpoint import __all__ as _core_all

__all__ = ["ConfigError", "from_pretrained", "load", *_core_all]


def load(path, *, device="cpu"):
    """The model a training run saved (a checkpoint, or a run directory's newest), in eval mode.

    Imported lazily, so `import attractor` stays the light core.
    """
    from attractor.run import load_run

    return load_run(path, device=device)[0]


def from_pretrained(name, *, device="cpu", **options):
    """The model of a folder that `attractor export` or save_pretrained wrote, or of a hub repo id
    ('user/name': the hub extra), in eval mode, with `model.tokenizer` (encode, decode) and
    `model.card`; `options` are attractor.hub.from_pretrained's (revision, cache_dir, token...).

        model = attractor.from_pretrained("hf/a1")
        ids = sample(model, model.tokenizer.encode("And God"), max_new_tokens=50)   # attractor.generate

    Imported lazily; it loads neither the trainer nor the corpus and shard code.
    """
    from attractor.hub import from_pretrained as load_pretrained

    return load_pretrained(name, device=device, **options)
__version__ = "0.2.0"
