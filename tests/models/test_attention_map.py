"""The attention map (attractor/models/attention_map.py) and the Block options it tries
(attractor/layers.py: window, qk_gain, conv): any length through the same weights, the default
is the plain block, each option changes the computation and does what it says, and the config
round-trips.

Run: .venv/bin/python -m pytest -q tests/models/test_attention_map.py
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from attractor.errors import ConfigError
from attractor.layers import Attention, Block, qkv_heads, window_mask
from attractor.models import ModelOutput, build, config, config_from_dict, config_to_dict
from attractor.models.attention_map import AttentionEquilibrium

OPTIONS = {"window": {"window": 1}, "qk_gain": {"qk_gain": True}, "conv": {"conv": True}, "bounded": {"bounded": True}}


def bits(batch: int, n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 2, (batch, n), generator=torch.Generator().manual_seed(seed))


def model(**overrides) -> AttentionEquilibrium:
    torch.manual_seed(0)
    return build("parity-attention", **overrides).eval()


@pytest.mark.parametrize("overrides", [{}, {"window": 2, "qk_gain": True, "conv": True}])
def test_the_same_weights_take_any_length(overrides):
    m = model(**overrides)
    for n in (16, 64):
        idx = bits(3, n)
        with torch.no_grad():
            out = m(idx, idx)
        assert isinstance(out, ModelOutput) and out.logits.shape == (3, n, 2) and out.logits.dtype == torch.float32
        assert torch.isfinite(out.logits).all() and out.loss.dim() == 0 and out.depth.shape == (3,)
    assert m.max_iter(64) == 192 and m.cfg.seq_len == 16  # the cap grows with n; seq_len is for costs only


def test_the_default_map_is_the_plain_block():
    m = model()
    block = m.blocks[0]
    assert not m.cfg.bounded and block.conv is None and block.gate_conv is None
    assert block.attn.window is None and block.attn.log_gain is None and not block.attn.causal
    plain = Block(32, 2, causal=False, gate_init=0.5)  # the shared Block with no option: the same parameters
    assert {k: v.shape for k, v in block.state_dict().items()} == {k: v.shape for k, v in plain.state_dict().items()}


@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_each_option_changes_the_map(option):
    plain, other = model(), model(**OPTIONS[option])
    other.load_state_dict(plain.state_dict(), strict=False)  # the shared weights equal; the option's own differ
    with torch.no_grad():
        for name, p in other.named_parameters():
            if "log_gain" in name:
                p.fill_(math.log(3.0))  # (a gain of 1, the start, is the plain attention exactly)
    idx = bits(2, 12)
    z = torch.randn(2, 12, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert not torch.allclose(plain.map(idx)(z), other.map(idx)(z), atol=1e-5)
        if option != "qk_gain":  # a gain of exactly 1 leaves the plain attention's values
            return
        other.blocks[0].attn.log_gain.zero_()
        assert torch.allclose(plain.map(idx)(z), other.map(idx)(z), atol=1e-6)


def moved(fn, x: torch.Tensor, at: int) -> torch.Tensor:
    """(T,) bool: the positions of fn(x) (1, T, D) that change when x[0, at] is nudged."""
    y = x.clone()
    y[0, at] += 1.0
    with torch.no_grad():
        return (fn(x) - fn(y)).abs().amax(-1)[0] > 1e-6


@pytest.mark.parametrize("window", [0, 2])
def test_window_masks_what_it_says(window):
    """An input changed at position j changes a windowed attention's output at i iff |i - j| <= w."""
    torch.manual_seed(0)
    attn = Attention(16, 2, causal=False, window=window).eval()
    changed = moved(attn, torch.randn(1, 20, 16), 10)
    assert changed.nonzero().flatten().tolist() == list(range(10 - window, 10 + window + 1))
    assert window_mask(5, 1, causal=True)[3].tolist() == [False, False, True, True, False]


def test_one_evaluation_of_a_windowed_map_reaches_w_positions_and_the_conv_one_more():
    """f with window=1 moves information one position per evaluation; with conv, two."""
    idx, z = bits(1, 20), torch.randn(1, 20, 32)
    for overrides, reach in (({"window": 1}, 1), ({"window": 1, "conv": True}, 2)):
        changed = moved(model(**overrides).map(idx), z, 10)
        assert changed.nonzero().flatten().tolist() == list(range(10 - reach, 10 + reach + 1)), overrides


def test_qk_gain_scales_the_logits_against_a_reference():
    """exp(s) times the normed queries: softmax(c q k^T / sqrt(K)) v, computed here by hand."""
    torch.manual_seed(0)
    attn = Attention(16, 2, causal=False, qk_gain=True).eval()
    with torch.no_grad():
        attn.log_gain.copy_(torch.log(torch.tensor([2.0, 5.0])))
        x = torch.randn(2, 7, 16)
        q, k, v = qkv_heads(attn.qkv(x), 2)  # (B, H, T, K)
        scores = (q @ k.transpose(-1, -2)) * torch.tensor([2.0, 5.0]).view(2, 1, 1) / math.sqrt(8)
        ref = attn.proj((F.softmax(scores, -1) @ v).transpose(1, 2).reshape(2, 7, 16))
        assert torch.allclose(attn(x), ref, atol=1e-5)


def test_a_causal_conv_block_sees_no_later_position():
    torch.manual_seed(0)
    block = Block(16, 2, causal=True, conv=True).eval()
    changed = moved(block, torch.randn(1, 9, 16), 5)
    assert not changed[:5].any() and changed[5:].all()


def test_a_bounded_map_keeps_the_state_in_the_unit_box():
    m = model(bounded=True)
    with torch.no_grad():
        out = m.map(bits(2, 9))(10 * torch.randn(2, 9, 32))
    assert out.abs().max() <= 1.0 and out.abs().max() > 0.1


def test_the_options_get_gradients_and_their_groups():
    m = model(window=1, qk_gain=True, conv=True).train()
    idx = bits(4, 16)
    m(idx, idx).loss.backward()
    block = m.blocks[0]
    for p in (block.attn.log_gain, block.conv.weight, block.gate_conv.raw):
        assert p.grad is not None and p.grad.abs().sum() > 0
    ids = [id(p) for g in m.param_groups() for p in g.params]
    assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in m.parameters()}


def test_config_round_trips_and_checks_its_options():
    cfg = config("parity-attention", window=3, qk_gain=True, conv=True, n_layer=2, start="random")
    data = config_to_dict(cfg)
    assert data["family"] == "attention-map" and config_from_dict(json.loads(json.dumps(data))) == cfg
    assert config("parity-attention") == config_from_dict(config_to_dict(config("parity-attention")))
    local = config("parity-attention-local")  # the measured variant: every option on
    assert (local.window, local.qk_gain, local.conv, local.bounded) == (1, True, True, True)
    with pytest.raises(ConfigError, match="window=0"):
        config("parity-attention", window=0)
    with pytest.raises(ConfigError, match="even head size"):
        config("parity-attention", n_head=32)
    with pytest.raises(ConfigError, match="did you mean 'window'"):
        config("parity-attention", windw=2)


def test_the_jacobian_penalty_trains_through_attention():
    """jac_penalty differentiates a vector-Jacobian product of the attention map (double backward,
    which the fused attention kernels lack): the training step runs and the penalty adds to the loss."""
    x, y = bits(4, 16), bits(4, 16, seed=1)
    plain = model(window=1, conv=True).train()
    penalised = model(window=1, conv=True, jac_penalty=1.0).train()
    loss = penalised(x, y).loss
    assert loss.item() > plain(x, y).loss.item()
    loss.backward()
    assert all(p.grad is not None for p in penalised.parameters() if p.requires_grad)
