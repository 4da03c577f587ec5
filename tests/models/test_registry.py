"""Presets: every one builds, counts match the paper and each other, names fail loudly."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import PEAK_RSS_ENV, PEAK_RSS_PRELUDE, needs_peak_rss

from attractor.cli import main
from attractor.errors import ConfigError
from attractor.models import PRESETS, build, describe

CPU_PRESETS = [n for n in PRESETS if n.endswith(("-1m", "-5m"))]


@pytest.mark.parametrize("name", CPU_PRESETS)
def test_cpu_preset_trains_one_step(name):
    torch.manual_seed(0)
    model = build(name, seq_len=32)
    idx = torch.randint(0, model.cfg.vocab_size, (2, 17))
    out = model(idx[:, :-1], idx[:, 1:])
    assert out.logits.shape == (2, 16, model.cfg.vocab_size) and torch.isfinite(out.loss)
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    assert describe(name)["dense"] == model.parameter_counts()["dense"]


@pytest.mark.parametrize("name,expected", [("attractor-140m", 134e6), ("attractor-370m", 370e6),
                                           ("attractor-770m", 770e6)])
def test_paper_presets_match_published_sizes(name, expected):
    total = describe(name)["total"]
    assert abs(total - expected) / expected < 0.02, total


@pytest.mark.parametrize("size", ["1m", "5m", "140m", "370m", "770m"])
def test_families_are_matched_in_dense_parameters(size):
    dense = {n: describe(n)["dense"] for n in PRESETS if n.endswith(f"-{size}")}
    assert len(dense) >= 2
    assert max(dense.values()) / min(dense.values()) < 1.05, dense


def test_unknown_names_and_keys_suggest_the_right_one():
    with pytest.raises(ConfigError, match="did you mean 'attractor-1m'"):
        build("atractor-1m")
    with pytest.raises(ConfigError, match="did you mean 'max_iter'"):
        build("attractor-1m", max_iters=4)
    with pytest.raises(ConfigError, match="attractor-1m"):
        build("attractor-1m", n_head=5)


def test_cli_lists_presets_and_rejects_typos(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert all(n in out for n in PRESETS) and "134.22M" in out
    lines = out.splitlines()
    starts = {re.search(r"\d\.\d\dM", line).end() for line in lines[1:len(PRESETS) + 1]}  # dense column's end
    assert len(starts) == 1, "columns are not aligned"
    assert main(["models", "transfomer-1m"]) == 2
    assert "did you mean 'transformer-1m'" in capsys.readouterr().err


PROBE = PEAK_RSS_PRELUDE + textwrap.dedent("""
    import json, sys, torch
    from attractor.models import build
    torch.manual_seed(0)
    model = build("attractor-1m", d=64, n_head=2, seq_len=128, tol=0.0, max_iter=int(sys.argv[1]),
                  grad=sys.argv[2])
    idx = torch.randint(0, 256, (32, 129))
    model(idx[:, :-1], idx[:, 1:], iters=0).loss.backward()  # warm-up without the attractor
    model.zero_grad(set_to_none=True)
    before = reset_peak()
    out = model(idx[:, :-1], idx[:, 1:])
    out.loss.backward()
    assert out.n_evals == int(sys.argv[1]) + 1    # tol=0: every step is taken
    print(json.dumps(peak_growth_mb(before)))
""")


def step_growth_mb(max_iter: int, grad: str) -> float:
    out = subprocess.run([sys.executable, "-c", PROBE, str(max_iter), grad], capture_output=True,
                         text=True, check=True, env=PEAK_RSS_ENV).stdout
    return json.loads(out)


@needs_peak_rss
def test_training_step_memory_is_constant_in_max_iter():
    small, large = step_growth_mb(4, "onestep"), step_growth_mb(64, "onestep")
    assert large <= 1.2 * small, (small, large)
    # the probe does see memory that grows with iterations
    assert step_growth_mb(16, "unroll") > 2 * step_growth_mb(4, "unroll")
