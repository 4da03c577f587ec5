"""Start-up: building a model on the meta device (`attractor models`, loading a checkpoint for
`attractor generate`) must not import torch._dynamo, which costs over a second."""

from __future__ import annotations

import subprocess
import sys

import torch

from attractor.models import PRESETS, config, from_config, meta_model


def test_meta_models_do_not_import_dynamo():
    code = ("import sys\nfrom attractor.models import PRESETS, config, meta_model\n"
            "for name in PRESETS: meta_model(config(name))\nprint('torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_meta_model_has_the_shapes_of_the_model():
    for name in ("attractor-1m", "looped-1m", "deq-1m", "transformer-1m"):
        cfg = config(name)
        meta, real = meta_model(cfg), from_config(cfg)
        assert all(p.is_meta for p in meta.parameters())
        assert [(k, v.shape, v.requires_grad) for k, v in meta.named_parameters()] == \
            [(k, v.shape, v.requires_grad) for k, v in real.named_parameters()]
        assert {k: v.shape for k, v in meta.state_dict().items() if isinstance(v, torch.Tensor)} == \
            {k: v.shape for k, v in real.state_dict().items() if isinstance(v, torch.Tensor)}
    assert PRESETS  # every preset builds on meta in the subprocess above
