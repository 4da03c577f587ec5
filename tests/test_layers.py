"""attractor.layers against a textbook block written out here with plain autograd ops.

The hot path (docs/benchmarks.md, yardstick) replaced F.rms_norm, the textbook rotary formula and
F.relu(x).square() by cached tables and hand-written backwards; these tests hold it to the
textbook values, first and second derivatives (gradcheck, gradgradcheck in float64), exact
causality, and the state_dict and construction contracts the models rely on.
"""

from __future__ import annotations

from typing import NamedTuple

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
import torch.nn.attention
import torch.nn.functional as F
from torch import Tensor

import attractor.kernels as fused
from attractor import layers
from attractor.kernels import FusedPath, use_fused_kernels
from attractor.layers import Attention, Block, norm_rotary, qkv_heads, relu_square, rms_norm, rotary
from attractor.models import build


def compiler_or_skip() -> None:
    try:
        fused.build()
    except RuntimeError as e:
        pytest.skip(str(e))


class CountingOps:
    """torch.ops.attractor_cpu, counting the kernels called by name."""

    def __init__(self, used: dict[str, int]):
        self.used, self.ops = used, torch.ops.attractor_cpu

    def __getattr__(self, name: str):
        self.used[name] = self.used.get(name, 0) + 1
        return getattr(self.ops, name)


class Kernels(NamedTuple):
    fused: bool  # what the test asks for: the `fused` argument, use_fused_kernels' `enabled`
    used: dict[str, int]  # the kernels that ran, by name


@pytest.fixture(params=["eager", "fused"])
def kernels(request):
    """Run the test with the eager ops and again with the fused C++ kernels (skipped where they
    cannot be built), counting which kernels ran."""
    used: dict[str, int] = {}
    if request.param == "fused":
        compiler_or_skip()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fused, "ops", lambda: CountingOps(used))
        yield Kernels(request.param == "fused", used)


def textbook_rotary(x: Tensor, base: float = 10000.0) -> Tensor:
    """RoPE on x (B, H, T, K), recomputing the tables: the formula the cache replaced."""
    t, k = x.shape[-2], x.shape[-1]
    freqs = base ** (-torch.arange(0, k, 2, dtype=torch.float32) / k)  # (K/2,)
    angles = torch.arange(t, dtype=torch.float32)[:, None] * freqs  # (T, K/2)
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., : k // 2], x[..., k // 2 :]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def textbook_block(block: Block, x: Tensor) -> Tensor:
    """The block's forward with F.rms_norm, textbook RoPE and relu().square(), same weights."""
    norm = lambda u: F.rms_norm(u, (u.size(-1),))
    attn = block.attn
    b, t, d = x.shape
    q, k, v = attn.qkv(norm(x)).view(b, t, 3, attn.n_head, d // attn.n_head).permute(2, 0, 3, 1, 4)
    q, k = textbook_rotary(norm(q)), textbook_rotary(norm(k))
    y = F.scaled_dot_product_attention(q, k, v, is_causal=attn.causal)
    a = attn.proj(y.transpose(1, 2).reshape(b, t, d))
    h = x + (a if block.gate_attn is None else block.gate_attn() * a)
    m = block.mlp.proj(F.relu(block.mlp.fc(norm(h))).square())
    return h + (m if block.gate_mlp is None else block.gate_mlp() * m)


def seeded_block(dtype: torch.dtype, causal: bool = True, gate_init: float | None = 0.5, d: int = 32,
                 n_head: int = 4) -> Block:
    torch.manual_seed(0)
    block = Block(d, n_head, causal=causal, gate_init=gate_init).to(dtype)
    layers.init_weights(block, n_residual=2)
    with torch.no_grad():  # larger output projections than init, so every branch matters
        block.attn.proj.weight.mul_(10)
        block.mlp.proj.weight.mul_(10)
    return block


# float32: the rewritten ops differ from the textbook ones only by rounding (fused multiply-adds,
# a norm computed by vector_norm); a few ulps of values of order 1, compounded over the block.
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-6), torch.float64: dict(rtol=1e-12, atol=1e-13)}
REL = {torch.float32: 1e-5, torch.float64: 1e-12}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("gate_init", [None, 0.5])
def test_block_matches_textbook_values_and_gradients(dtype, causal, gate_init, kernels):
    block = use_fused_kernels(seeded_block(dtype, causal, gate_init), kernels.fused)
    x = torch.randn(3, 20, 32, dtype=dtype, generator=torch.Generator().manual_seed(1), requires_grad=True)
    w = torch.randn(3, 20, 32, dtype=dtype, generator=torch.Generator().manual_seed(2))
    ours, ref = block(x), textbook_block(block, x)
    torch.testing.assert_close(ours, ref, **TOL[dtype])
    params = [x, *block.parameters()]
    g_ours = torch.autograd.grad((w * ours).sum(), params)
    g_ref = torch.autograd.grad((w * ref).sum(), params)
    for a, b in zip(g_ours, g_ref):  # relative to each tensor's largest entry: sums of many terms
        assert (a - b).abs().max() <= REL[dtype] * b.abs().max()
    with torch.no_grad():  # the no-grad path (solver iterations) gives the same values
        torch.testing.assert_close(block(x), ref, **TOL[dtype])
    # the fused kernels did run, forward and backward, or none did
    assert set(kernels.used) == ({"rms_norm", "rms_norm_backward", "norm_rotary", "norm_rotary_backward",
                                  "relu_square", "relu_square_backward"} if kernels.fused else set())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cached_rotary_equals_the_formula(dtype):
    x = torch.randn(2, 3, 17, 8, dtype=dtype, generator=torch.Generator().manual_seed(0))  # (B, H, T, K)
    torch.testing.assert_close(rotary(x), textbook_rotary(x), **TOL[dtype])
    # positions on another dim: (B, T, 2, H, K) as the attention calls it
    y = x.permute(0, 2, 1, 3).unsqueeze(2).expand(2, 17, 2, 3, 8)
    torch.testing.assert_close(rotary(y, t_dim=1)[:, :, 1], textbook_rotary(x).permute(0, 2, 1, 3), **TOL[dtype])


def test_rotary_tables_are_cached_per_shape_device_and_dtype():
    layers._rotary_tables.cache_clear()
    x = torch.randn(1, 1, 12, 8)
    rotary(x)
    rotary(x + 1)
    rotary(x.double())
    rotary(torch.randn(1, 1, 5, 8))
    info = layers._rotary_tables.cache_info()
    assert (info.hits, info.misses) == (1, 3)


def test_rotary_rejects_odd_head_size():
    with pytest.raises(ValueError, match="even head size"):
        rotary(torch.randn(1, 1, 4, 5))


def test_tables_made_under_inference_mode_serve_training():
    layers._rotary_tables.cache_clear()
    block = seeded_block(torch.float32)
    x = torch.randn(2, 9, 32)
    with torch.inference_mode():
        block(x)  # fills the cache inside inference mode
    block(x.requires_grad_()).sum().backward()  # would raise on an inference tensor saved for backward
    assert x.grad is not None


def test_meta_construction_and_forward():
    with torch.device("meta"):
        block = Block(32, 4, gate_init=0.5)
        y = block(torch.randn(2, 7, 32))
    assert y.shape == (2, 7, 32) and y.device.type == "meta"


def test_state_dict_keys_unchanged():
    assert sorted(Block(32, 4, gate_init=0.5).state_dict()) == [
        "attn.proj.weight", "attn.qkv.weight", "gate_attn.raw", "gate_mlp.raw", "mlp.fc.weight", "mlp.proj.weight"]
    assert sorted(Block(32, 4).state_dict()) == ["attn.proj.weight", "attn.qkv.weight", "mlp.fc.weight",
                                                 "mlp.proj.weight"]


def test_block_is_exactly_causal():
    block = seeded_block(torch.float32)
    x = torch.randn(2, 16, 32, generator=torch.Generator().manual_seed(3))
    x2 = x.clone()
    x2[:, 10:] = torch.randn(2, 6, 32, generator=torch.Generator().manual_seed(4))
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            a, b = block(x.requires_grad_(grad)), block(x2.requires_grad_(grad))
        assert torch.equal(a[:, :10], b[:, :10])
        assert not torch.equal(a[:, 10:], b[:, 10:])


def test_rms_norm_equals_torch_and_keeps_half_types():
    x = torch.randn(4, 6, 32, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(rms_norm(x), F.rms_norm(x, (32,)), **TOL[torch.float32])
    h = x.bfloat16()
    assert torch.equal(rms_norm(h), F.rms_norm(h, (32,)))  # half types: torch's own (float32 inside)
    assert torch.equal(rms_norm(torch.zeros(2, 8)), torch.zeros(2, 8))  # eps keeps zero rows finite


def test_relu_square_equals_the_formula():
    x = torch.randn(5, 64, generator=torch.Generator().manual_seed(0))
    assert torch.equal(relu_square(x), F.relu(x).square())
    g = torch.randn(5, 64, generator=torch.Generator().manual_seed(1))
    xg = x.clone().requires_grad_()
    (grad,) = torch.autograd.grad((relu_square(xg) * g).sum(), xg)
    assert torch.equal(grad, 2 * F.relu(x) * g)


def strided(shape: tuple[int, ...]) -> Tensor:
    """A float64 view with a gap between rows, as q and k are slices of the qkv projection."""
    gen = torch.Generator().manual_seed(5)
    base = torch.randn(*shape[:-1], 2 * shape[-1], dtype=torch.float64, generator=gen)
    return base[..., : shape[-1]].requires_grad_()


@pytest.mark.parametrize("fn", [rms_norm, relu_square, lambda u, fused: rotary(u), lambda u, fused: rotary(u, t_dim=1),
                                lambda u, fused: norm_rotary(u),
                                lambda u, fused: qkv_heads(u.flatten(-2), n_head=2, fused=fused)],
                         ids=["rms_norm", "relu_square", "rotary", "rotary_t_dim", "norm_rotary", "qkv_heads"])
def test_first_and_second_derivatives(fn, kernels):
    """gradcheck and gradgradcheck: double backward (Jacobian penalties) must be exact too; the
    fused kernels' backward is checked by gradcheck, the eager one they fall back to under
    create_graph by gradgradcheck."""
    x = strided((2, 4, 3, 4))
    torch.autograd.gradcheck(lambda u: fn(u, fused=kernels.fused), (x,))
    torch.autograd.gradgradcheck(lambda u: fn(u, fused=kernels.fused), (x,))


@torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH)  # CPU flash attention has no
def test_block_second_derivatives(kernels):  # double backward, with or without this change
    block = use_fused_kernels(seeded_block(torch.float64, d=8, n_head=2), kernels.fused)
    x = torch.randn(1, 4, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(6), requires_grad=True)
    torch.autograd.gradgradcheck(block, (x,))
    # and against the textbook block: a Jacobian-vector penalty's parameter gradient
    v = torch.randn(1, 4, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(7))

    def penalty(forward):
        (jv,) = torch.autograd.grad((forward(x) * v).sum(), x, create_graph=True)
        return torch.autograd.grad(jv.square().sum(), list(block.parameters()))

    for a, b in zip(penalty(block), penalty(lambda u: textbook_block(block, u))):
        torch.testing.assert_close(a, b, **TOL[torch.float64])


@pytest.mark.filterwarnings("ignore:There is a performance drop")  # functorch's fallback, SDPA's too
def test_vectorized_jacobians_match(kernels):
    """jacobian(vectorize=True) and torch.func.jacrev batch the backward's grad: in-place ops
    there must not mix batched and unbatched tensors."""
    block = use_fused_kernels(seeded_block(torch.float64, d=8, n_head=2), kernels.fused)
    x = torch.randn(1, 3, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    loop = torch.autograd.functional.jacobian(block, x)
    torch.testing.assert_close(torch.autograd.functional.jacobian(block, x, vectorize=True), loop)
    torch.testing.assert_close(torch.func.jacrev(block)(x), loop)


def test_attention_signature():
    attn = Attention(16, 2, causal=False)
    assert attn(torch.randn(2, 3, 16)).shape == (2, 3, 16)
    with pytest.raises(ValueError, match="divisible"):
        Attention(10, 3, causal=True)


def test_fused_qkv_kernel_equals_eager_on_strided_input():
    """qkv arrives with a row stride of its own (here a slice of a wider tensor) and attention's
    gradients with strides of theirs: the fused norm + rotation must read both as such and give the
    eager values and gradients; it writes q and k laid out as (B, T, H, K), as attention's views of
    a projection are."""
    compiler_or_skip()
    gen = torch.Generator().manual_seed(9)
    wide = torch.randn(2, 12, 60, generator=gen, requires_grad=True)
    qkv = wide[..., 6:54]  # (B, T, 3D), two heads of 8
    g = [torch.randn(2, 12, 2, 8, generator=gen).transpose(1, 2) for _ in range(3)]  # (B, H, T, K), strided
    eager = qkv_heads(qkv, 2)
    reference = norm_rotary(qkv[..., :32].view(2, 12, 2, 2, 8).permute(2, 0, 3, 1, 4))
    torch.testing.assert_close(torch.stack(eager[:2]), reference, rtol=0, atol=0)
    (g_eager,) = torch.autograd.grad(eager, wide, g)
    q, k, v = qkv_heads(qkv, 2, fused=True)
    (g_fused,) = torch.autograd.grad((q, k, v), wide, g)
    with torch.no_grad():
        no_grad = qkv_heads(qkv, 2, fused=True)
    assert q.transpose(1, 2).is_contiguous() and k.transpose(1, 2).is_contiguous()
    for a, b in zip((q, k, v), eager):
        torch.testing.assert_close(a, b, **TOL[torch.float32])
    for a, b in zip(no_grad, (q, k, v)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(g_fused, g_eager, **TOL[torch.float32])
    assert g_fused[..., :6].abs().max() == 0 and g_fused[..., 54:].abs().max() == 0


def test_fused_kernels_leave_what_they_do_not_serve_to_eager():
    """bfloat16, meta tensors and torch.func transforms take the eager ops, fused asked for or not."""
    compiler_or_skip()
    used: dict[str, int] = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fused, "ops", lambda: CountingOps(used))
        h = torch.randn(3, 8).bfloat16()
        assert torch.equal(rms_norm(h, fused=True), F.rms_norm(h, (8,)))
        assert torch.equal(relu_square(h, fused=True), F.relu(h).square())
        with torch.device("meta"):
            use_fused_kernels(Block(16, 2, gate_init=0.5))(torch.randn(2, 5, 16))
        x = torch.randn(4, 8, dtype=torch.float64)
        torch.testing.assert_close(torch.func.vmap(lambda u: rms_norm(u, fused=True))(x), F.rms_norm(x, (8,)))
    assert used == {}


def test_fused_kernels_check_their_inputs():
    """The ops themselves refuse what they were not written for, in one line, not a crash."""
    compiler_or_skip()
    ops = fused.ops()
    cos, sin = layers._rotary_tables(4, 8, 10000.0, torch.device("cpu"), torch.float32)
    with pytest.raises(RuntimeError, match="float32 or float64"):
        ops.rms_norm(torch.ones(2, 3, dtype=torch.int64))
    with pytest.raises(RuntimeError, match="not a multiple of 3 n_head"):
        ops.norm_rotary(torch.randn(1, 4, 40), cos, sin, 2)
    with pytest.raises(RuntimeError, match="tables"):
        ops.norm_rotary(torch.randn(1, 5, 48), cos, sin, 2)  # T = 5, tables for 4
    with pytest.raises(RuntimeError, match="gradients must be"):
        ops.norm_rotary_backward(*[torch.randn(1, 2, 4, 4)] * 3, torch.randn(1, 4, 48), torch.ones(2, 1, 2, 4),
                                 cos, sin, 2)
    with pytest.raises(RuntimeError, match="shape, dtype and device"):
        ops.relu_square_backward(torch.randn(3), torch.randn(4))


def test_fused_kernels_that_cannot_build_is_one_line(monkeypatch, tmp_path):
    """No compiler (here: a compiler that fails) gives one RuntimeError line and leaves the
    model's switch off."""
    monkeypatch.setattr(fused, "_LOADED", False)  # build again, as in a fresh process
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("ATTRACTOR_KERNELS_DIR", str(tmp_path / "kernels"))
    block = Block(16, 2)
    with pytest.raises(RuntimeError, match="^compiled kernels could not be built .*C\\+\\+ compiler") as info:
        use_fused_kernels(block)
    assert "\n" not in str(info.value)
    assert not fused._LOADED and not any(m.fused_kernels for m in block.modules() if isinstance(m, FusedPath))


@settings(max_examples=40, deadline=None)
@given(b=st.integers(1, 3), t=st.integers(1, 9), n_head=st.integers(1, 3), half=st.integers(1, 5),
       pad=st.integers(0, 3), seed=st.integers(0, 2**31 - 1))
def test_fused_kernels_equal_eager_for_any_shape(b, t, n_head, half, pad, seed):
    """Every fused kernel against the eager ops, float64, over batch, length, heads, head size and
    a row stride of qkv's own: values and gradients (the backward kernels) to rounding."""
    compiler_or_skip()
    gen = torch.Generator().manual_seed(seed)
    k = 2 * half
    d = n_head * k
    wide = torch.randn(b, t, 3 * d + pad, dtype=torch.float64, generator=gen, requires_grad=True)
    qkv = wide[..., pad:]
    grads = [torch.randn(b, n_head, t, k, dtype=torch.float64, generator=gen) for _ in range(3)]
    x = torch.randn(b, t, d, dtype=torch.float64, generator=gen, requires_grad=True)
    gx = torch.randn(b, t, d, dtype=torch.float64, generator=gen)

    def run(fused_on: bool):
        heads = qkv_heads(qkv, n_head, fused=fused_on)
        parts = [*heads, rms_norm(x, fused=fused_on), relu_square(x, fused=fused_on)]
        g_wide, g_x = torch.autograd.grad(parts, [wide, x], [*grads, gx, gx])
        return [*parts, g_wide, g_x]

    for ours, eager in zip(run(True), run(False)):
        torch.testing.assert_close(ours, eager, **TOL[torch.float64])


def test_two_models_in_one_process_keep_their_own_path():
    """The switch is the model's, not the process's: a fused and an eager model, forwards and
    backwards interleaved, each run their own path (every part of the fused one fused, the
    model's own final norm included; nothing of the eager one), and switching each leaves the
    other as it was."""
    compiler_or_skip()
    models = {}
    for name in ("fused", "eager"):
        torch.manual_seed(0)
        models[name] = use_fused_kernels(build("transformer-1m", d=32, n_head=2, n_layer=1, seq_len=8), name == "fused")
    idx = torch.randint(0, 256, (2, 8), generator=torch.Generator().manual_seed(0))
    # one block (two norms) and the decoder's norm; each forward and its backward
    parts = {"rms_norm": 3, "norm_rotary": 1, "relu_square": 1}
    one_step = {**parts, **{f"{k}_backward": v for k, v in parts.items()}}
    used: dict[str, int] = {}
    losses = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fused, "ops", lambda: CountingOps(used))
        for name in ("eager", "fused", "eager", "fused"):
            used.clear()
            out = models[name](idx, idx)
            out.loss.backward()
            assert used == (one_step if name == "fused" else {}), name
            losses[name] = out.loss.item()
        flags = {name: {m.fused_kernels for m in model.modules() if isinstance(m, FusedPath)}
                 for name, model in models.items()}
        assert flags == {"fused": {True}, "eager": {False}}
        use_fused_kernels(models["eager"], True)  # and back: the other model keeps its path
        use_fused_kernels(models["fused"], False)
        for name, expected in (("fused", {}), ("eager", one_step)):
            used.clear()
            models[name](idx, idx).loss.backward()
            assert used == expected, name
    torch.testing.assert_close(losses["fused"], losses["eager"], rtol=1e-6, atol=0)
