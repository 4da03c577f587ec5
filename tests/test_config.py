"""Run configs: --set reaches every field, typos and bad values fail loudly, JSON round trips."""

from __future__ import annotations

import json

import pytest

from attractor.config import RunConfig, apply_settings, run_config
from attractor.errors import ConfigError
from attractor.fixedpoint import Anderson, Phantom, Picard


def test_settings_reach_every_section_and_nested_fields():
    run = run_config("attractor-1m", ["model.d=64", "tol=1e-4", "train.lr=1e-3", "steps=50",
                                      "model.solve.solver.m=3", "solve.grad=phantom", "grad.k=3",
                                      "data.tokenizer=bpe", "data.vocab_size=512", "betas=[0.8, 0.9]"])
    m, t, d = run.model, run.train, run.data
    assert (m.d, m.solve.tol, m.solve.solver, m.solve.grad) == (64, 1e-4, Anderson(m=3), Phantom(k=3))
    assert (t.lr, t.steps, t.betas) == (1e-3, 50, (0.8, 0.9))
    assert (d.tokenizer, d.vocab_size, m.vocab_size) == ("bpe", 512, 512)  # the model follows the tokenizer


def test_data_and_steps_flags():
    run = run_config("transformer-1m", data="corpus.txt", steps=7)
    assert run.data.source == "corpus.txt" and run.train.steps == 7


def test_a_new_solver_takes_its_own_options():
    run = run_config("attractor-1m", ["solver=picard", "solver.damping=0.5"])
    assert run.model.solve.solver == Picard(damping=0.5)
    with pytest.raises(ConfigError, match="did you mean 'damping'"):
        run_config("attractor-1m", ["solver=picard", "solver.dampin=0.5"])


def test_order_does_not_matter_for_joint_constraints():
    # min_iter=40 alone would exceed the preset's max_iter of 32; validated once, at the end
    assert run_config("attractor-1m", ["min_iter=40", "max_iter=64"]).model.solve.min_iter == 40


@pytest.mark.parametrize("setting,match", [
    ("model.dd=64", "did you mean 'd'"),
    ("lrr=1e-3", "did you mean 'lr'"),
    ("seed=3", "ambiguous"),  # a looped model's depth sampler and the trainer both have a seed
    ("train.steps=1.5", "steps=1.5 must be int"),
    ("model.d=big", "d='big' must be int"),
    ("tied_head=no", "did you mean"),  # attractor-1m has no tied_head
    ("train", "expected key=value"),
    ("train.=3", "name a field"),
    ("solver=andersen", "did you mean 'anderson'"),
    ("model.vocab_size=512", "must equal data.vocab_size"),
])
def test_bad_settings_name_the_problem(setting, match):
    preset = "looped-1m" if setting.startswith("seed") else "attractor-1m"
    with pytest.raises(ConfigError, match=match):
        run_config(preset, [setting])


def test_text_fields_keep_numeric_looking_text():
    assert run_config("attractor-1m", ["data.source=2024"]).data.source == "2024"


@pytest.mark.parametrize("preset", ["attractor-1m", "transformer-1m", "looped-1m", "deq-1m", "attractor-140m"])
def test_run_config_round_trips_through_json(preset):
    run = run_config(preset, ["train.lr=1e-3"])
    back = RunConfig.from_dict(json.loads(json.dumps(run.to_dict())))
    assert back == run


def test_paper_presets_default_to_a_bpe_tokenizer_of_their_size():
    run = run_config("attractor-140m")
    assert run.data.tokenizer == "bpe" and run.data.vocab_size == run.model.vocab_size == 32768


def test_unknown_sections_are_refused():
    data = run_config("attractor-1m").to_dict()
    with pytest.raises(ConfigError, match="did you mean 'train'"):
        RunConfig.from_dict({**data, "trian": {}})
    assert apply_settings(run_config("attractor-1m"), []) == run_config("attractor-1m")
