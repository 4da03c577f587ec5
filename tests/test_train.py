"""The trainer: schedule, optimiser groups, the non-finite guard, exact resume, DDP = one process.

Runs tiny models on a small generated corpus; `make test` runs them (about a minute in all).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import losses, tiny_settings

from attractor.cli import main
from attractor.errors import ConfigError
from attractor.config import run_config
from attractor.run import train
from attractor.train import Callbacks, NonFiniteError, Trainer, TrainConfig, make_optimizers, wsd

def test_wsd_schedule_warms_up_holds_and_cools_down():
    cfg = TrainConfig(steps=100, warmup=10, cooldown=0.5)
    factors = [wsd(s, cfg) for s in range(100)]
    assert factors[0] < factors[5] < factors[9] < 1.0 == factors[10] == factors[49] == factors[50]
    assert factors[50] > factors[75] > factors[99] > 0 and abs(factors[75] - 0.5) < 1e-9
    # the cooldown ends at zero: the last step runs at 1/50 of the rate, the step after would run at none
    assert factors[99] == 1 / 50 and wsd(100, cfg) == 0.0


def test_optimisers_follow_the_models_groups():
    run = run_config("attractor-1m", ["model.d=32", "model.n_head=2", "train.matrix_optimizer=muon"])
    from attractor.models import from_config

    model = from_config(run.model)
    adamw, muon = make_optimizers(model, run.train)
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    by_name = {g["name"]: g for o in (adamw, muon) for g in o.param_groups}
    assert by_name["attractor"]["lr"] == run.train.lr * run.model.lr_mult
    assert by_name["embedding"]["weight_decay"] == 0 and by_name["backbone"]["weight_decay"] == run.train.weight_decay
    assert sum(len(g["params"]) for g in by_name.values()) == len(list(model.parameters()))
    for choice in ("adamw", "auto"):  # auto: AdamW on the CPU
        (only,) = make_optimizers(model, TrainConfig(matrix_optimizer=choice))
        assert isinstance(only, torch.optim.AdamW)


class Batches:
    def __init__(self, n=0):
        self.n = n

    def __next__(self):
        self.n += 1
        g = torch.Generator().manual_seed(self.n)
        idx = torch.randint(0, 256, (2, 9), generator=g)
        return idx[:, :-1], idx[:, 1:]

    def state_dict(self):
        return {"n": self.n}

    def load_state_dict(self, state):
        self.n = state["n"]


def test_non_finite_steps_are_skipped_then_the_run_stops():
    torch.manual_seed(0)
    run = run_config("transformer-1m", ["model.d=32", "model.n_head=2", "model.n_layer=1", "model.seq_len=8"])
    from attractor.models import from_config

    model = from_config(run.model)
    poisoned = {2, 3}
    forward, calls = model.forward, [0]

    def maybe_nan(idx, targets=None, **kw):
        out = forward(idx, targets, **kw)
        calls[0] += 1
        if calls[0] in poisoned:
            out.loss = out.loss * float("nan")
        return out

    model.forward = maybe_nan
    trainer = Trainer(model, Batches(), [], TrainConfig(steps=20, warmup=0, max_bad_steps=3))
    trainer.train_step()
    before = [p.detach().clone() for p in model.parameters()]
    records = [trainer.train_step(), trainer.train_step()]
    assert [r["skipped"] for r in records] == [True, True] and trainer.skipped == 2
    assert all(torch.equal(b, p) for b, p in zip(before, model.parameters()))  # nothing was applied
    assert not trainer.train_step()["skipped"] and trainer.bad_in_a_row == 0
    poisoned.update(range(5, 100))
    with pytest.raises(NonFiniteError, match="3 steps in a row"):
        for _ in range(5):
            trainer.train_step()


def test_time_limit_ends_the_run_evaluated_and_checkpointed(monkeypatch):
    run = run_config("transformer-1m", ["model.d=32", "model.n_head=2", "model.n_layer=1", "model.seq_len=8"])
    from attractor import train as train_module
    from attractor.models import from_config

    clock = [0.0]  # a fake clock that advances 1 s per reading: read at the start and after each step, so the limit of 2.5 s passes at step 3
    monkeypatch.setattr(train_module.time, "perf_counter", lambda: clock.__setitem__(0, clock[0] + 1.0) or clock[0])
    seen = {"eval": [], "ckpt": []}
    callbacks = train_module.Callbacks(evaluate=lambda r: seen["eval"].append(r["step"]),
                                       checkpoint=lambda step: seen["ckpt"].append(step))
    val = [next(Batches())]
    trainer = Trainer(from_config(run.model), Batches(), val, TrainConfig(steps=50, eval_every=None, checkpoint_every=None,
                                                                           time_limit=2.5), callbacks)
    trainer.fit()
    assert trainer.step == 3 and seen == {"eval": [], "ckpt": [3]}  # eval_every=None: no evaluation at all
    trainer = Trainer(from_config(run.model), Batches(), val, TrainConfig(steps=50, eval_every=100, time_limit=2.5),
                      callbacks)
    clock[0] = 0.0
    trainer.fit()
    assert trainer.step == 3 and seen["eval"] == [3] and seen["ckpt"] == [3, 3]
    with pytest.raises(ConfigError, match="time_limit"):
        TrainConfig(time_limit=0)


class Halves(Batches):
    """Yields the two halves of Batches' batches in turn: what accumulation over 2 sees."""

    def __init__(self):
        super().__init__()
        self.pending = []

    def __next__(self):
        if not self.pending:
            idx, targets = super().__next__()
            self.pending = [(idx[1:], targets[1:]), (idx[:1], targets[:1])]
        return self.pending.pop()


def test_accumulated_micro_batches_equal_one_batch():
    run = run_config("attractor-1m", ["model.d=32", "model.n_head=2", "model.n_backbone=1", "model.seq_len=8"])
    from attractor.models import from_config

    weights = []
    for accum, batches in ((1, Batches()), (2, Halves())):
        torch.manual_seed(0)
        model = from_config(run.model)
        trainer = Trainer(model, batches, [], TrainConfig(steps=10, batch_size=2, grad_accum=accum, warmup=0))
        records = [trainer.train_step() for _ in range(3)]
        losses = [(r["loss"], r["grad_norm"]) for r in records]  # AdamW ignores a gradient's scale; the norm does not
        weights.append((losses, [p.detach().clone() for p in model.parameters()]))
    (loss1, w1), (loss2, w2) = weights
    torch.testing.assert_close(torch.tensor(loss2), torch.tensor(loss1), rtol=1e-5, atol=1e-6)
    for a, b in zip(w1, w2):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)


def test_auto_trains_with_the_fused_kernels_as_the_eager_ops(monkeypatch, capsys):
    """train.kernels=auto (the default) takes the fused kernels where they build, as compiled
    does: the same losses and weights as eager (to float32 rounding), the kernels really used in
    training and in evaluation, and the path said once at the start and in every metrics record."""
    from attractor import kernels as fused
    from attractor.models import from_config

    try:
        fused.build()
    except RuntimeError as e:
        pytest.skip(str(e))
    used = []
    ops = fused.ops
    monkeypatch.setattr(fused, "ops", lambda: used.append(1) or ops())
    run = run_config("attractor-1m", ["model.d=32", "model.n_head=2", "model.n_backbone=1", "model.seq_len=8"])
    assert TrainConfig().kernels == "auto"
    results = {}
    for kernels in ("eager", "auto", "compiled"):
        torch.manual_seed(0)
        model = from_config(run.model)
        records = []
        cfg = TrainConfig(steps=3, batch_size=2, warmup=0, kernels=kernels, eval_every=None, checkpoint_every=None,
                          log_every=1)
        trainer = Trainer(model, Batches(), [next(Batches())], cfg, Callbacks(log=records.append))
        path = "eager" if kernels == "eager" else "fused"
        what = "eager ops" if kernels == "eager" else "fused CPU kernels"
        assert capsys.readouterr() == (f"training with the {what} (train.kernels={kernels})\n", "")
        trainer.fit()
        assert bool(used) == (path == "fused") and [r["kernels"] for r in records] == [path] * 3
        used.clear()
        trainer.evaluate()
        assert bool(used) == (path == "fused")
        used.clear()
        results[kernels] = [r["loss"] for r in records], [p.detach().clone() for p in model.parameters()]
    l_eager, w_eager = results["eager"]
    assert len(l_eager) == 3
    for losses, weights in (results["auto"], results["compiled"]):
        torch.testing.assert_close(torch.tensor(losses), torch.tensor(l_eager), rtol=1e-5, atol=1e-6)
        for a, b in zip(weights, w_eager):  # AdamW scales a near-zero gradient's rounding up to an update
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def broken() -> None:
    raise RuntimeError("compiled kernels could not be built from kernels_cpu.cpp (they need a C++ compiler "
                       "and ninja): no compiler")


def test_auto_without_a_compiler_trains_eager_with_one_line(monkeypatch, capsys, tmp_path, corpus):
    """Where the kernels cannot be built, auto trains with the eager ops and says so in one line
    on stderr (rank 0 only), and the run's records say eager."""
    from attractor import train as train_module
    from attractor.models import build

    monkeypatch.setattr(train_module, "build_kernels", broken)
    trainer = Trainer(build("transformer-1m"), Batches(), [], TrainConfig())
    out, err = capsys.readouterr()
    assert out == "" and err == ("attractor: fused CPU kernels unavailable (compiled kernels could not be built from "
                                 "kernels_cpu.cpp (they need a C++ compiler and ninja): no compiler); training "
                                 "with the eager ops\n")
    assert trainer.kernels == "eager" and not trainer.model.blocks[0].mlp.fused_kernels
    with pytest.raises(ConfigError, match="^train.kernels=compiled: .*C\\+\\+ compiler"):
        Trainer(build("transformer-1m"), Batches(), [], TrainConfig(kernels="compiled"))
    with pytest.raises(ConfigError, match="kernels"):
        TrainConfig(kernels="fused")
    with monkeypatch.context() as mp:
        mp.setattr(train_module, "distributed", lambda: (1, 1, 0))  # another rank: silent
        Trainer(build("transformer-1m"), Batches(), [], TrainConfig())
        assert capsys.readouterr() == ("", "")
    settings = tiny_settings("transformer-1m", tmp_path / "cache", "train.eval_every=null")
    train(run_config("transformer-1m", settings, data=str(corpus), steps=2), tmp_path / "run", progress=False)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["kernels"] for r in records] == ["eager"] * 2


def test_auto_is_eager_where_the_kernels_do_not_serve_without_building(monkeypatch, capsys):
    """bf16 autocast, train.compile and a device other than the CPU: auto takes the eager ops
    without trying to build; compiled there is a one-line ConfigError."""
    from attractor import train as train_module
    from attractor.models import build

    def must_not_build() -> None:
        raise AssertionError("built")

    monkeypatch.setattr(train_module, "build_kernels", must_not_build)
    for setting in (dict(precision="bfloat16"), dict(compile=True)):
        trainer = Trainer(build("transformer-1m"), Batches(), [], TrainConfig(**setting))
        assert trainer.kernels == "eager" and not trainer.model.blocks[0].attn.fused_kernels
        assert capsys.readouterr() == ("training with the eager ops (train.kernels=auto)\n", "")
        with pytest.raises(ConfigError, match="^train.kernels=compiled: the fused kernels serve float32 on a CPU"):
            Trainer(build("transformer-1m"), Batches(), [], TrainConfig(kernels="compiled", **setting))
    monkeypatch.setattr(train_module, "pick_device", lambda name, rank: torch.device("meta"))
    assert Trainer(build("transformer-1m"), Batches(), [], TrainConfig()).kernels == "eager"
    with pytest.raises(ConfigError, match="this run is on meta"):
        Trainer(build("transformer-1m"), Batches(), [], TrainConfig(kernels="compiled"))


class Killed(Exception):
    pass


@pytest.mark.parametrize("preset", ["attractor-1m", "looped-1m"])
def test_a_killed_and_resumed_run_repeats_the_uninterrupted_losses(tmp_path, corpus, preset, monkeypatch):
    settings = tiny_settings(preset, tmp_path / "cache")
    full = tmp_path / "full"
    train(run_config(preset, settings, data=str(corpus), steps=8), full, progress=False)

    step = Trainer.train_step

    def dies_after_five(self):
        if self.step == 5:
            raise Killed
        return step(self)

    killed = tmp_path / "killed"
    monkeypatch.setattr(Trainer, "train_step", dies_after_five)
    with pytest.raises(Killed):
        train(run_config(preset, settings, data=str(corpus), steps=8), killed, progress=False)
    monkeypatch.setattr(Trainer, "train_step", step)
    assert len(losses(killed)) == 5  # logged up to the kill; the checkpoint is at step 3
    assert main(["train", "--preset", preset, "--out", str(killed), "--data", str(corpus), "--steps", "8",
                 "--quiet", "--resume", *[a for s in settings for a in ("--set", s)]]) == 0
    a, b = losses(full), losses(killed)
    assert len(a) == len(b) == 8
    torch.testing.assert_close(torch.tensor(b), torch.tensor(a), rtol=0, atol=1e-6)
    evals = [json.loads(line)["step"] for line in (killed / "eval.jsonl").read_text().splitlines()]
    assert evals == [4, 8]


def test_load_returns_the_trained_model(tmp_path, corpus):
    import attractor

    settings = tiny_settings("deq-1m", tmp_path / "cache")
    trainer = train(run_config("deq-1m", settings, data=str(corpus), steps=3), tmp_path / "run", progress=False)
    model = attractor.load(tmp_path / "run")
    assert not model.training and type(model) is type(trainer.model)
    for (name, a), b in zip(trainer.model.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.ddp
def test_two_processes_match_one(tmp_path, corpus):
    settings = tiny_settings("attractor-1m", tmp_path / "cache", "train.eval_every=null", "train.checkpoint_every=null")
    args = ["train", "--preset", "attractor-1m", "--data", str(corpus), "--steps", "4", "--quiet",
            *[a for s in settings for a in ("--set", s)]]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "attractor", *args, "--out", str(tmp_path / "one")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "attractor", *args, "--out", str(tmp_path / "two")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(a) == len(b) == 4
    # same global batch: the same losses (averaged over ranks) and weights, up to float32 summation order
    torch.testing.assert_close(torch.tensor(b), torch.tensor(a), rtol=1e-5, atol=1e-6)
    from attractor import load

    w1, w2 = load(tmp_path / "one").state_dict(), load(tmp_path / "two").state_dict()
    for name in w1:
        torch.testing.assert_close(w2[name], w1[name], rtol=1e-4, atol=1e-6)
