"""attractor.layers against a textbook block written out here with plain autograd ops.

The hot path (docs/benchmarks.md, yardstick) replaced F.rms_norm, the textbook rotary formula and
F.relu(x).square() by cached tables and hand-written backwards; these tests hold it to the
textbook values, first and second derivatives (gradcheck, gradgradcheck in float64), exact
causality, and the state_dict and construction contracts the models rely on.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.attention
import torch.nn.functional as F
from torch import Tensor

from attractor import layers
from attractor.layers import Attention, Block, compiled_kernels, norm_rotary, relu_square, rms_norm, rotary


def compiler_or_skip() -> None:
    try:
        layers.check_compiler()
    except RuntimeError as e:
        pytest.skip(str(e))


@pytest.fixture(params=["eager", "compiled"])
def kernels(request):
    """Run the test with the eager ops and again with the compiled kernels (skipped where
    torch.compile cannot work), counting which compiled kernels ran."""
    if request.param == "eager":
        with compiled_kernels(False):
            yield None
        return
    compiler_or_skip()
    used: dict[str, int] = {}
    kernel = layers._kernel

    def counting(name: str):
        used[name] = used.get(name, 0) + 1
        return kernel(name)

    with pytest.MonkeyPatch.context() as mp, compiled_kernels():
        mp.setattr(layers, "_kernel", counting)
        yield used


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
    block = seeded_block(dtype, causal, gate_init)
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
    if kernels is not None:  # the compiled kernels did run, forward and backward
        assert set(kernels) == {"norm_rotary", "norm_rotary_backward", "relu_square", "relu_square_backward"}


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


@pytest.mark.parametrize("fn", [rms_norm, relu_square, rotary, lambda u: rotary(u, t_dim=1), norm_rotary],
                         ids=["rms_norm", "relu_square", "rotary", "rotary_t_dim", "norm_rotary"])
def test_first_and_second_derivatives(fn, kernels):
    """gradcheck and gradgradcheck: double backward (Jacobian penalties) must be exact too."""
    x = strided((2, 4, 2, 4))
    torch.autograd.gradcheck(fn, (x,))
    torch.autograd.gradgradcheck(fn, (x,))


@torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH)  # CPU flash attention has no
def test_block_second_derivatives(kernels):  # double backward, with or without this change
    block = seeded_block(torch.float64, d=8, n_head=2)
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
    block = seeded_block(torch.float64, d=8, n_head=2)
    x = torch.randn(1, 3, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    loop = torch.autograd.functional.jacobian(block, x)
    torch.testing.assert_close(torch.autograd.functional.jacobian(block, x, vectorize=True), loop)
    torch.testing.assert_close(torch.func.jacrev(block)(x), loop)


def test_attention_signature():
    attn = Attention(16, 2, causal=False)
    assert attn(torch.randn(2, 3, 16)).shape == (2, 3, 16)
    with pytest.raises(ValueError, match="divisible"):
        Attention(10, 3, causal=True)


def test_compiled_kernels_equal_eager_on_strided_input_and_restore_the_mode():
    """q and k arrive as a permuted slice of qkv: the compiled norm + rotation must read it as
    such, give the eager values and gradients, and write attention a contiguous tensor."""
    compiler_or_skip()
    gen = torch.Generator().manual_seed(9)
    qkv = torch.randn(2, 12, 3 * 16, generator=gen, requires_grad=True)
    qk = qkv[..., :32].view(2, 12, 2, 2, 8).permute(2, 0, 3, 1, 4)  # (2, B, H, T, K), strided
    g = torch.randn(2, 2, 2, 12, 8, generator=gen)
    eager = norm_rotary(qk)
    (g_eager,) = torch.autograd.grad(eager, qkv, g)
    with compiled_kernels():
        assert layers._COMPILED
        fused = norm_rotary(qk)
        (g_fused,) = torch.autograd.grad(fused, qkv, g)
        with compiled_kernels(False):
            assert not layers._COMPILED
        assert layers._COMPILED
    assert not layers._COMPILED
    assert fused.is_contiguous()
    torch.testing.assert_close(fused, eager, **TOL[torch.float32])
    torch.testing.assert_close(g_fused, g_eager, **TOL[torch.float32])


def test_compiled_kernels_without_a_compiler_is_one_line(monkeypatch):
    def broken() -> None:
        raise RuntimeError("compiled kernels need a working torch.compile (on CPU: a C++ compiler): "
                           "InductorError: no compiler")

    monkeypatch.setattr(layers, "check_compiler", broken)
    with pytest.raises(RuntimeError, match="C\\+\\+ compiler"):
        with compiled_kernels():
            pass
    assert not layers._COMPILED
