"""The trainer's average of the weights (train.ema) against a hand computation, what it serves
(evaluation, the checkpoint's weights) and an exact resume."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attractor.errors import ConfigError
from attractor.models.base import ModelOutput, ParamGroup
from attractor.train import Callbacks, Trainer, TrainConfig


class TinyClassifier(nn.Module):
    """Logits (B, T, V) from a linear map of one-hot tokens: the smallest model of the contract."""

    has_depth = False

    def __init__(self, vocab: int = 7):
        super().__init__()
        self.table = nn.Linear(vocab, vocab)
        self.vocab = vocab

    def forward(self, idx, targets=None, *, iters=None):
        logits = self.table(F.one_hot(idx, self.vocab).float())
        loss = None if targets is None else F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        return ModelOutput(logits=logits, loss=loss)

    def param_groups(self):
        return [ParamGroup("all", list(self.parameters()), "adamw")]


class FixedBatches:
    """Seeded random batches, a pure function of the step (resumable)."""

    def __init__(self):
        self.step = 0

    def __iter__(self):
        return self

    def __next__(self):
        g = torch.Generator().manual_seed(self.step)
        self.step += 1
        idx = torch.randint(0, 7, (4, 5), generator=g)
        return idx, (idx * 3 + 1) % 7

    def state_dict(self):
        return {"step": self.step}

    def load_state_dict(self, state):
        self.step = state["step"]


def make_trainer(steps: int = 6, ema: float | None = 0.8, seed: int = 0, log=None) -> Trainer:
    torch.manual_seed(seed)
    cfg = TrainConfig(steps=steps, batch_size=4, lr=0.05, warmup=0, cooldown=0.0, eval_every=None,
                      checkpoint_every=None, ema=ema, device="cpu")
    return Trainer(TinyClassifier(), FixedBatches(), [FixedBatches().__next__()], cfg,
                   Callbacks(progress=log or (lambda r: None)))


def weights(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def test_the_average_follows_the_hand_computation_and_is_what_evaluation_and_checkpoints_serve():
    decay = 0.8
    trainer = make_trainer(ema=decay)
    average = weights(trainer.model)  # starts at the initial weights
    after = []
    trainer.callbacks.progress = lambda r: after.append(weights(trainer.model))
    trainer.fit()
    for raw in after:
        average = [decay * a + (1 - decay) * p for a, p in zip(average, raw)]
    for mine, hand in zip(trainer.ema.shadow, average):
        torch.testing.assert_close(mine, hand, rtol=0, atol=1e-6)  # float32 rounding of 6 updates
    # training goes on with the raw weights, which differ from the average
    assert all(torch.equal(p, r) for p, r in zip(weights(trainer.model), after[-1]))
    assert not torch.allclose(after[-1][0], average[0], atol=1e-3)
    served = trainer.inference_state_dict()
    for (name, _), hand in zip(trainer.model.named_parameters(), average):
        torch.testing.assert_close(served[name], hand, rtol=0, atol=1e-6)
    averaged = copy.deepcopy(trainer.model)
    averaged.load_state_dict(served)
    idx, targets = trainer.val_batches[0]
    expected = averaged(idx, targets).loss.item()
    assert trainer.evaluate()["val_loss"] == pytest.approx(expected, abs=1e-6)
    assert all(torch.equal(p, r) for p, r in zip(weights(trainer.model), after[-1]))  # restored


def test_without_ema_the_served_weights_are_the_raw_ones():
    trainer = make_trainer(ema=None)
    trainer.fit()
    assert trainer.ema is None
    for (name, p) in trainer.model.named_parameters():
        assert torch.equal(trainer.inference_state_dict()[name], p.detach())


def test_resume_restores_raw_weights_and_the_average_exactly():
    full = make_trainer(steps=6)
    losses_full = []
    full.callbacks.progress = lambda r: losses_full.append(r["loss"])
    full.fit()

    first = make_trainer(steps=6)
    first.cfg = TrainConfig(**{**first.cfg.__dict__, "steps": 3})
    first.fit()
    served, state = first.inference_state_dict(), first.state_dict()

    resumed = make_trainer(steps=6, seed=1)  # other initial weights: all must come from the checkpoint
    losses = []
    resumed.callbacks.progress = lambda r: losses.append(r["loss"])
    resumed.model.load_state_dict(served)  # as run.train does: the served weights, then the state
    resumed.load_state_dict(state)
    resumed.fit()
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(losses_full[3:]), rtol=0, atol=1e-6)
    for a, b in zip(resumed.ema.shadow, full.ema.shadow):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    with pytest.raises(ConfigError, match="ema"):
        make_trainer(ema=None).load_state_dict(state)


def test_ema_must_be_a_decay_in_the_open_unit_interval():
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(ConfigError, match="ema"):
            TrainConfig(ema=bad)
