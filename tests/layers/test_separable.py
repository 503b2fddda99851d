"""Tests for :class:`sstorch.layers.separable.SeparableLinear`.

Dense references are explicit ``torch.kron`` chains (from kron_reference.py), in the documented
row-major convention ``W = Σ_r U_1[r] ⊗ … ⊗ U_K[r]``, so that
``y.flatten(-K) = x.flatten(-K) @ W.T + b``.
"""

from __future__ import annotations

import itertools
import math
import random
import re

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from kron_reference import F64, explicit_dense, random_factors, vlp_optimal_error
from sstorch import SeparableLinear

pytestmark = pytest.mark.usefixtures("seeded")  # the global RNG at seed 0 for every test


# --------------------------------------------------------------------------- helpers


def make_layer(in_shape, out_shape, rank=1, bias=True, flatten=False, seed=0):
    """float64 layer with standard-normal factors and bias (sharper than the tiny default init)."""
    layer = SeparableLinear(in_shape, out_shape, bias=bias, rank=rank, flatten=flatten, dtype=F64)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=F64))
    return layer


def random_shapes(k: int, seed: int):
    rng = random.Random(seed)
    return tuple(rng.randint(1, 5) for _ in range(k)), tuple(rng.randint(1, 5) for _ in range(k))


def max_intermediate(in_shape, out_shape) -> int:
    """Largest running tensor of the mode-product chain: ``max_k Π_{j<k} m_j Π_{j≥k} n_j``."""
    k = len(in_shape)
    return max(math.prod(out_shape[:i]) * math.prod(in_shape[i:]) for i in range(k + 1))


def derived_macs(in_shape, out_shape, rank) -> int:
    """Multiply-adds of the docstring's order: mode k maps n_k → m_k on the running tensor."""
    total = 0
    for k in range(len(in_shape)):
        outputs = math.prod(out_shape[: k + 1]) * math.prod(in_shape[k + 1 :])
        total += outputs * in_shape[k]  # every new entry is a length-n_k dot product
    return rank * total


# --------------------------------------------------------------------------- correctness


@pytest.mark.parametrize("flatten", [False, True])
@pytest.mark.parametrize("batch", [(), (3,), (2, 3)], ids=["b0", "b1", "b2"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_forward_matches_explicit_kronecker(k, rank, bias, batch, flatten):
    seed = 1000 * k + 100 * rank + 10 * len(batch) + 2 * bias + flatten
    in_shape, out_shape = random_shapes(k, seed)
    layer = make_layer(in_shape, out_shape, rank=rank, bias=bias, flatten=flatten, seed=seed)
    w = explicit_dense(list(layer.factors))
    n, m = math.prod(in_shape), math.prod(out_shape)
    assert w.shape == (m, n)

    x = torch.randn(*batch, *in_shape, dtype=F64, generator=torch.Generator().manual_seed(seed))
    x_flat = x.reshape(*batch, n)
    expected = x_flat @ w.T + (layer.bias if bias else 0)
    if flatten:
        y = layer(x_flat)
        assert y.shape == (*batch, m)
        torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)
    else:
        y = layer(x)
        assert y.shape == (*batch, *out_shape)
        torch.testing.assert_close(y.reshape(*batch, m), expected, rtol=1e-12, atol=1e-12)
        # The docstring's identity, literally.
        b = layer.bias if bias else 0
        torch.testing.assert_close(y.flatten(-k), x.flatten(-k) @ w.T + b, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer.to_dense(), w, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize(
    ("in_shape", "out_shape"),
    [((12, 2, 3), (4, 5, 2)), ((2, 6, 5), (3, 2, 4)), ((9, 2), (2, 3))],
    ids=["unfold-path", "cyclic-path", "unfold-K2"],
)
def test_forward_on_both_auto_paths(in_shape, out_shape):
    # n_1 > Π n_{k>1} sends rank 1 through 'unfold', otherwise 'cyclic': both must be right.
    layer = make_layer(in_shape, out_shape, rank=1, seed=4)
    x = torch.randn(5, *in_shape, dtype=F64)
    expected = x.flatten(1) @ explicit_dense(list(layer.factors)).T + layer.bias
    torch.testing.assert_close(layer(x).flatten(1), expected, rtol=1e-12, atol=1e-12)


def test_docstring_example_and_int_shapes():
    layer = SeparableLinear((28, 28), (32, 32))
    assert layer(torch.randn(8, 28, 28)).shape == (8, 32, 32)
    dense_like = SeparableLinear(10, 4, dtype=F64)  # ints mean K = 1: an ordinary dense layer
    assert dense_like.in_shape == (10,) and dense_like.out_shape == (4,)
    x = torch.randn(3, 10, dtype=F64)
    torch.testing.assert_close(dense_like(x), x @ dense_like.factors[0][0].T + dense_like.bias)


@pytest.mark.parametrize("in_shape", [torch.Size([4, 5]), np.array([4, 5]), [np.int64(4), 5]])
def test_shape_like_arguments_accepted(in_shape):
    layer = SeparableLinear(in_shape, (2, 3))
    assert layer.in_shape == (4, 5) and all(type(s) is int for s in layer.in_shape)
    assert layer(torch.randn(2, 4, 5)).shape == (2, 2, 3)


def test_flatten_mode_is_drop_in_for_linear():
    layer = make_layer((4, 6), (3, 5), flatten=True, seed=1)
    model = nn.Sequential(nn.Linear(7, 24, dtype=F64), layer, nn.ReLU())
    assert model(torch.randn(2, 7, dtype=F64)).shape == (2, 15)
    # Same weights, unflattened layer: identical numbers.
    twin = SeparableLinear((4, 6), (3, 5), flatten=False, dtype=F64)
    twin.load_state_dict(layer.state_dict())
    x = torch.randn(6, 24, dtype=F64)
    torch.testing.assert_close(layer(x), twin(x.reshape(6, 4, 6)).reshape(6, 15), rtol=0, atol=0)


def test_non_contiguous_input():
    layer = make_layer((4, 5), (3, 2), seed=2)
    x = torch.randn(5, 4, 7, dtype=F64).permute(2, 1, 0)  # (7, 4, 5), non-contiguous
    assert not x.is_contiguous()
    torch.testing.assert_close(layer(x), layer(x.contiguous()), rtol=0, atol=0)


@pytest.mark.parametrize(("in_shape", "out_shape"), [((28, 28), (32, 32)), ((9, 2), (2, 3))],
                         ids=["cyclic", "unfold"])
def test_empty_batch(in_shape, out_shape):
    # nn.Linear accepts an empty batch; a drop-in replacement must too.
    layer = SeparableLinear(in_shape, out_shape)
    y = layer(torch.randn(0, *in_shape))
    assert y.shape == (0, *out_shape)
    flat = SeparableLinear(in_shape, out_shape, flatten=True)
    assert flat(torch.randn(0, math.prod(in_shape))).shape == (0, math.prod(out_shape))


@pytest.mark.parametrize("rank", [1, 2])
def test_empty_batch_backward_like_linear(rank):
    # nn.Linear gives zero gradients of the right shapes, the input's included: autograd.grad
    # w.r.t. an empty adversarial batch must not fail.
    layer = SeparableLinear((4, 5), (3, 2), rank=rank)
    x = torch.randn(0, 4, 5, requires_grad=True)
    grads = torch.autograd.grad(layer(x).sum(), [x, *layer.parameters()])
    assert grads[0].shape == x.shape
    for g, p in zip(grads[1:], layer.parameters(), strict=True):
        assert g.shape == p.shape and torch.count_nonzero(g) == 0


def test_pruning_mask_buffers_are_applied():
    layer = make_layer((3, 4), (2, 5), rank=2, seed=3)
    mask = (torch.rand(2, 2, 3, generator=torch.Generator().manual_seed(0)) > 0.5).to(F64)
    layer.register_buffer("mask_0", mask)
    masked = [layer.factors[0] * mask, layer.factors[1]]
    w = explicit_dense(masked)
    torch.testing.assert_close(layer.to_dense(), w, rtol=1e-14, atol=1e-14)
    x = torch.randn(4, 3, 4, dtype=F64)
    torch.testing.assert_close(layer(x).flatten(1), x.flatten(1) @ w.T + layer.bias)
    assert layer.n_params == 2 * (2 * 3 + 5 * 4) + 10  # masks are buffers, not parameters
    # A checkpoint with masks loads into a fresh layer (masks are recreated on demand).
    fresh = SeparableLinear((3, 4), (2, 5), rank=2, dtype=F64)
    fresh.load_state_dict(layer.state_dict())
    torch.testing.assert_close(fresh.mask_0, mask, rtol=0, atol=0)
    torch.testing.assert_close(fresh(x), layer(x), rtol=0, atol=0)


# --------------------------------------------------------------------------- gradients


@pytest.mark.parametrize(
    ("in_shape", "out_shape", "rank", "flatten"),
    [((3, 4), (2, 5), 1, False), ((3, 4), (2, 5), 2, True), ((2, 3, 2), (3, 2, 2), 1, False),
     ((2, 3, 2), (3, 2, 2), 2, False), ((5, 1, 2), (2, 3, 1), 1, True)],
)
def test_gradcheck_input_factors_and_bias(in_shape, out_shape, rank, flatten):
    layer = make_layer(in_shape, out_shape, rank=rank, flatten=flatten, seed=5)
    names = [name for name, _ in layer.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in layer.parameters()]
    shape = (2, math.prod(in_shape)) if flatten else (2, *in_shape)
    x = torch.randn(*shape, dtype=F64, requires_grad=True)

    def fn(x, *ps):
        return torch.func.functional_call(layer, dict(zip(names, ps, strict=True)), (x,))

    assert torch.autograd.gradcheck(fn, (x, *params))


def test_backward_reaches_every_parameter():
    layer = make_layer((3, 4, 2), (2, 2, 3), rank=2, seed=6)
    layer(torch.randn(5, 3, 4, 2, dtype=F64)).square().sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


class SavedSizes(torch.autograd.graph.saved_tensors_hooks):
    """Record the number of elements of every tensor autograd saves for backward."""

    def __init__(self):
        self.sizes: list[int] = []

        def pack(t):
            self.sizes.append(t.numel())
            return t

        super().__init__(pack, lambda t: t)


@pytest.mark.parametrize(
    ("in_shape", "out_shape", "rank"),
    [((512, 7, 7), (16, 16, 16), 1), ((512, 7, 7), (16, 16, 16), 2),
     ((28, 28), (32, 32), 3), ((6, 5, 4, 3), (3, 4, 5, 6), 2)],
)
def test_backward_never_materializes_the_product(in_shape, out_shape, rank):
    batch = 2
    layer = SeparableLinear(in_shape, out_shape, rank=rank)
    x = torch.randn(batch, *in_shape, requires_grad=True)
    saved = SavedSizes()
    with saved:
        y = layer(x)
    y.square().sum().backward()
    assert x.grad is not None and all(p.grad is not None for p in layer.parameters())
    assert saved.sizes, "nothing was saved for backward: the hook is not recording"
    dense_size = math.prod(in_shape) * math.prod(out_shape)
    assert max(saved.sizes) < dense_size
    # Tighter: nothing bigger than the largest running tensor of the mode-product chain.
    bound = max(batch * rank * max_intermediate(in_shape, out_shape),
                max(p.numel() for p in layer.parameters()))
    assert max(saved.sizes) <= bound


def test_saved_tensor_hook_would_catch_a_materializing_layer():
    # The check above is meaningful: a forward through the dense W saves W for backward.
    layer = SeparableLinear((6, 5), (4, 7))
    x = torch.randn(2, 30, requires_grad=True)
    saved = SavedSizes()
    with saved:
        x @ layer.to_dense().T
    assert max(saved.sizes) >= 30 * 28


# --------------------------------------------------------------------------- initialization


def mean_output_variance(make, n_in, seeds, batch=512):
    variances = []
    for s in seeds:
        torch.manual_seed(s)
        layer = make()
        with torch.no_grad():
            variances.append(layer(torch.randn(batch, n_in)).var().item())
    return float(np.mean(variances))


@pytest.mark.parametrize(
    ("in_shape", "out_shape", "rank"),
    [((28, 28), (32, 32), 1), ((28, 28), (32, 32), 3), ((8, 12, 10), (10, 8, 12), 1),
     ((8, 12, 10), (10, 8, 12), 2)],
)
def test_init_output_variance_matches_linear(in_shape, out_shape, rank):
    # A single Kronecker layer's gain fluctuates more than a dense one's (its ‖W‖_F² is a
    # product of K sums of few terms), so compare means over independent inits.
    n, m = math.prod(in_shape), math.prod(out_shape)
    seeds = range(16)
    sep = mean_output_variance(
        lambda: SeparableLinear(in_shape, out_shape, bias=False, rank=rank, flatten=True),
        n, seeds)
    dense = mean_output_variance(lambda: nn.Linear(n, m, bias=False), n, seeds[:2])
    assert dense == pytest.approx(1 / 3, rel=0.05)  # nn.Linear: Var(W_ij) = 1/(3N)
    assert sep == pytest.approx(dense, rel=0.15)


def test_init_entry_variance_and_bias_range():
    in_shape, out_shape = (8, 6, 5), (4, 5, 6)
    n = math.prod(in_shape)
    second_moments = []
    for seed in range(8):
        torch.manual_seed(seed)
        layer = SeparableLinear(in_shape, out_shape, rank=2)
        second_moments.append(layer.to_dense().pow(2).mean().item())
        assert layer.bias.abs().max() <= 1 / math.sqrt(n)
        assert layer.bias.abs().max() > 0.5 / math.sqrt(n)  # uniform over the whole range
    assert np.mean(second_moments) == pytest.approx(1 / (3 * n), rel=0.15)


def relu_stack(separable: bool, shape, depth: int, bias: bool) -> nn.Sequential:
    n = math.prod(shape)
    layers = []
    for i in range(depth):
        if i:
            layers.append(nn.ReLU())
        layers.append(SeparableLinear(shape, shape, bias=bias, flatten=True) if separable
                      else nn.Linear(n, n, bias=bias))
    return nn.Sequential(*layers)


@pytest.mark.parametrize("bias", [False, True])
def test_deep_stack_scales_like_linear(bias):
    # Both bias-free stacks shrink by ~√6 per layer (Var(W_ij) = 1/(3N), ReLU halves the second
    # moment); the separable one must not drift away from the dense one. The log std ratio of
    # one bias-free seed has sd ≈ 0.22 (a Kronecker layer's gain fluctuates more) around a mean
    # within ±0.06 of 0, so the mean over 10 seeds has sd ≈ 0.07 and the bounds below sit > 4 sd
    # away. A per-layer variance error of 15% would move the mean by ≈ 8 · 0.07 = 0.56.
    shape, depth = (28, 28), 8
    n = math.prod(shape)
    log_ratios = []
    for seed in range(10):
        torch.manual_seed(seed)
        x = torch.randn(256, n)
        sep, dense = relu_stack(True, shape, depth, bias), relu_stack(False, shape, depth, bias)
        with torch.no_grad():
            s_sep, s_dense = sep(x).std().item(), dense(x).std().item()
        assert math.isfinite(s_sep) and s_sep > 0
        log_ratios.append(math.log(s_sep / s_dense))
        assert abs(log_ratios[-1]) < math.log(2.5)  # no seed explodes or vanishes vs. dense
    assert abs(np.mean(log_ratios)) < math.log(1.4)  # geometric-mean std ratio within 40%


# --------------------------------------------------------------------------- from_linear


def linear_from_weight(w: torch.Tensor, bias: bool = True, seed: int = 0) -> nn.Linear:
    linear = nn.Linear(w.shape[1], w.shape[0], bias=bias, dtype=w.dtype)
    with torch.no_grad():
        linear.weight.copy_(w)
        if bias:
            linear.bias.copy_(torch.randn(w.shape[0], dtype=w.dtype,
                                          generator=torch.Generator().manual_seed(seed)))
    return linear


def rel_error(w: torch.Tensor, layer: SeparableLinear) -> float:
    return float((w - explicit_dense([f.detach() for f in layer.factors])).norm() / w.norm())


@pytest.mark.parametrize(
    ("in_shape", "out_shape", "rank", "tol"),
    [((4, 7), (6, 5), 1, 1e-10), ((2, 3, 4), (3, 2, 2), 1, 1e-10),
     ((2, 3, 2, 2), (2, 2, 3, 1), 1, 1e-10), ((4, 7), (6, 5), 2, 1e-10),
     ((3, 4, 2), (2, 3, 4), 2, 1e-6)],
    ids=["K2", "K3", "K4", "K2-rank2-svd", "K3-rank2-cp-als"],
)
def test_from_linear_exact_for_kronecker_weights(in_shape, out_shape, rank, tol):
    w = explicit_dense(random_factors(rank, out_shape, in_shape, seed=len(in_shape) + rank))
    linear = linear_from_weight(w)
    layer = SeparableLinear.from_linear(linear, in_shape, out_shape, rank=rank)
    assert layer.flatten and layer.rank == rank and layer.factors[0].dtype == F64
    assert layer.approx_error < tol
    assert rel_error(w, layer) < tol
    x = torch.randn(5, w.shape[1], dtype=F64)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), linear(x), rtol=10 * tol, atol=10 * tol)
    torch.testing.assert_close(layer.bias, linear.bias, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("in_shape", "out_shape", "rank"),
    [((4, 7), (6, 5), 1), ((4, 7), (6, 5), 3), ((2, 3, 4), (3, 2, 2), 1),
     ((2, 3, 4), (3, 2, 2), 2), ((2, 2, 2, 3), (3, 1, 2, 2), 1)],
)
def test_from_linear_reports_true_error_for_random_weight(in_shape, out_shape, rank):
    linear = nn.Linear(math.prod(in_shape), math.prod(out_shape), dtype=F64)
    layer = SeparableLinear.from_linear(linear, in_shape, out_shape, rank=rank)
    assert 0 < layer.approx_error <= 1
    assert layer.approx_error == pytest.approx(rel_error(linear.weight.detach(), layer),
                                               rel=1e-9)


def test_from_linear_k2_is_optimal_and_improves_with_rank():
    in_shape, out_shape = (7, 4), (5, 6)
    linear = nn.Linear(28, 30, dtype=F64)
    w = linear.weight.detach().numpy()
    errors = []
    for rank in range(1, 6):
        layer = SeparableLinear.from_linear(linear, in_shape, out_shape, rank=rank)
        optimum = vlp_optimal_error(w, in_shape, out_shape, rank)
        assert layer.approx_error == pytest.approx(optimum, rel=1e-10)
        assert rel_error(linear.weight.detach(), layer) == pytest.approx(optimum, rel=1e-9)
        errors.append(layer.approx_error)
    assert all(b <= a for a, b in itertools.pairwise(errors))
    assert errors[-1] < errors[0]


def test_from_linear_is_at_least_as_good_as_perturbed_factors():
    # Local optimality of the K = 3 (CP-ALS) answer: nudging any factor never helps.
    in_shape, out_shape = (3, 4, 2), (2, 3, 4)
    linear = nn.Linear(24, 24, dtype=F64)
    layer = SeparableLinear.from_linear(linear, in_shape, out_shape)
    w = linear.weight.detach()
    base = rel_error(w, layer)
    g = torch.Generator().manual_seed(0)
    for _ in range(10):
        nudged = [f.detach() + 1e-3 * torch.randn(f.shape, generator=g, dtype=F64)
                  for f in layer.factors]
        assert float((w - explicit_dense(nudged)).norm() / w.norm()) >= base - 1e-12


def test_from_linear_bias_options_and_independence():
    linear = nn.Linear(12, 6, dtype=F64)
    layer = SeparableLinear.from_linear(linear, (3, 4), (2, 3))
    torch.testing.assert_close(layer.bias, linear.bias, rtol=0, atol=0)
    assert layer.bias.data_ptr() != linear.bias.data_ptr()
    assert all(p.requires_grad for p in layer.parameters())
    with torch.no_grad():
        layer.bias.zero_()
    assert linear.bias.abs().sum() > 0  # copied, not shared

    no_bias = SeparableLinear.from_linear(nn.Linear(12, 6, bias=False), (3, 4), (2, 3))
    assert no_bias.bias is None
    unflat = SeparableLinear.from_linear(linear, (3, 4), (2, 3), flatten=False)
    x = torch.randn(2, 12, dtype=F64)
    torch.testing.assert_close(unflat(x.reshape(2, 3, 4)).reshape(2, 6), layer(x) + linear.bias)


def test_from_linear_float32_and_single_mode():
    linear = nn.Linear(12, 6)  # float32
    layer = SeparableLinear.from_linear(linear, (3, 4), (2, 3))
    assert all(p.dtype == torch.float32 for p in layer.parameters())
    w = linear.weight.detach()
    assert layer.approx_error == pytest.approx(
        float((w - layer.to_dense().detach()).norm() / w.norm()), rel=1e-4)
    single = SeparableLinear.from_linear(linear, 12, 6)  # K = 1: exactly the dense layer
    assert single.approx_error == 0.0
    x = torch.randn(3, 12)
    with torch.no_grad():
        torch.testing.assert_close(single(x), linear(x))


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("shape", "why"),
    [((4, 784), "flat input without flatten=True"), ((4, 28, 27), "wrong trailing dim"),
     ((4, 27, 28), "wrong leading mode"), ((28,), "too few dims"),
     ((4, 28, 1), "no broadcast of a unit dim"), ((4, 1, 28), "no broadcast of a unit dim"),
     ((4, 28, 28, 1), "extra trailing dim"), ((), "scalar")],
)
def test_wrong_input_shape_raises(shape, why):
    layer = SeparableLinear((28, 28), (32, 32))
    msg = re.escape(f"(*batch, 28, 28), got {shape}")
    with pytest.raises(ValueError, match=msg):
        layer(torch.randn(shape))


@pytest.mark.parametrize("shape", [(4, 783), (4, 28, 28), (4, 1), (4, 785), ()])
def test_flatten_wrong_feature_count_raises(shape):
    layer = SeparableLinear((28, 28), (32, 32), flatten=True)
    with pytest.raises(ValueError, match=re.escape(f"(*batch, 784), got {shape}")):
        layer(torch.randn(shape))


def test_mismatched_number_of_modes_raises():
    with pytest.raises(ValueError, match=re.escape("in_shape (28, 28) and out_shape (1024,)")):
        SeparableLinear((28, 28), 1024)
    with pytest.raises(ValueError, match=re.escape("in_shape (512, 7, 7) and out_shape (16, 16)")):
        SeparableLinear((512, 7, 7), (16, 16))


@pytest.mark.parametrize(
    ("in_shape", "out_shape", "bad", "got"),
    [((0, 28), (32, 32), "in_shape", (0, 28)), ((28, -1), (32, 32), "in_shape", (28, -1)),
     ((), (), "in_shape", ()), ((28, 28), (32, 0), "out_shape", (32, 0)),
     (0, 5, "in_shape", (0,))],
)
def test_non_positive_dims_raise(in_shape, out_shape, bad, got):
    with pytest.raises(ValueError, match=re.escape(f"{bad} must be") + ".*" + re.escape(str(got))):
        SeparableLinear(in_shape, out_shape)


def test_non_sequence_shape_raises():
    with pytest.raises(ValueError, match="in_shape must be an int or a sequence of ints, got"):
        SeparableLinear(None, (2, 2))


@pytest.mark.parametrize("in_shape", [(2.5, 3), "28", (True, 3)], ids=["float", "string", "bool"])
def test_non_integer_shape_raises(in_shape):
    # (2.5, 3) must not silently become (2, 3), nor "28" become (2, 8).
    with pytest.raises(ValueError, match="in_shape"):
        SeparableLinear(in_shape, (2, 2))


@pytest.mark.parametrize("rank", [0, -1, 1.5, "2"])
def test_bad_rank_raises(rank):
    with pytest.raises(ValueError, match=re.escape(f"rank must be a positive int, got {rank!r}")):
        SeparableLinear((4, 4), (4, 4), rank=rank)


def test_from_linear_shape_mismatch_raises():
    linear = nn.Linear(784, 1024)
    with pytest.raises(ValueError, match=r"in_features=784.*\(28, 27\) has prod 756"):
        SeparableLinear.from_linear(linear, (28, 27), (32, 32))
    with pytest.raises(ValueError, match=r"out_features=1024.*\(32, 31\) has prod 992"):
        SeparableLinear.from_linear(linear, (28, 28), (32, 31))
    with pytest.raises(ValueError, match="same number of modes"):
        SeparableLinear.from_linear(linear, (28, 28), (1024,))


@pytest.mark.parametrize(
    "module", [nn.Conv2d(1, 1, 3), nn.Identity(), SeparableLinear((2, 2), (2, 2)), None],
)
def test_from_linear_rejects_non_linear(module):
    name = type(module).__name__
    with pytest.raises(ValueError, match=f"expects an nn.Linear, got {name}"):
        SeparableLinear.from_linear(module, (2, 2), (2, 2))


# --------------------------------------------------------------------------- accounting


def test_counts_by_hand_for_mnist_layer():
    layer = SeparableLinear((28, 28), (32, 32))
    assert layer.n_params == 32 * 28 + 32 * 28 + 1024 == 2816
    assert layer.dense_params == 784 * 1024 + 1024 == 803840
    assert layer.compression == pytest.approx(803840 / 2816)
    # Mode 1: (28, 28) -> (32, 28), 32*28 dots of length 28; mode 2: -> (32, 32), length 28.
    assert layer.macs_per_example() == 32 * 28 * 28 + 32 * 32 * 28 == 53760
    rank3 = SeparableLinear((28, 28), (32, 32), rank=3, bias=False)
    assert rank3.n_params == 3 * 2 * 896
    assert rank3.macs_per_example() == 3 * 53760
    assert rank3.compression == pytest.approx(784 * 1024 / (3 * 2 * 896))


@pytest.mark.parametrize(
    ("in_shape", "out_shape", "rank", "bias"),
    [((28, 28), (32, 32), 1, True), ((512, 7, 7), (16, 16, 16), 1, False),
     ((512, 7, 7), (16, 16, 16), 3, True), ((3, 5, 2, 4), (6, 1, 2, 3), 2, True),
     ((9,), (4,), 1, False)],
)
def test_counts_match_formulas(in_shape, out_shape, rank, bias):
    layer = SeparableLinear(in_shape, out_shape, rank=rank, bias=bias)
    n, m = math.prod(in_shape), math.prod(out_shape)
    factor_params = rank * sum(a * b for a, b in zip(in_shape, out_shape, strict=True))
    assert layer.n_params == factor_params + (m if bias else 0)
    assert layer.n_params == sum(p.numel() for p in layer.parameters())
    assert layer.dense_params == m * n + (m if bias else 0)
    assert layer.compression == pytest.approx(layer.dense_params / layer.n_params)
    assert layer.macs_per_example() == derived_macs(in_shape, out_shape, rank)


@pytest.mark.parametrize(
    ("in_shape", "out_shape", "rank"),
    [((28, 28), (32, 32), 1), ((28, 28), (32, 32), 3), ((512, 7, 7), (16, 16, 16), 1),
     ((512, 7, 7), (16, 16, 16), 2), ((3, 5, 2, 4), (6, 1, 2, 3), 2)],
)
def test_macs_equal_counted_matmul_flops(in_shape, out_shape, rank):
    layer = SeparableLinear(in_shape, out_shape, rank=rank, bias=False)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        layer(torch.randn(1, *in_shape))
    assert counter.get_total_flops() == 2 * layer.macs_per_example()


def test_extra_repr_shows_shapes_rank_and_compression():
    text = repr(SeparableLinear((28, 28), (32, 32), rank=1))
    assert "28×28" in text and "32×32" in text
    assert "rank=1" in text and "params=2816" in text
    assert f"compression={803840 / 2816:.1f}x" in text
    text = repr(SeparableLinear((512, 7, 7), (16, 16, 16), rank=2, bias=False, flatten=True))
    assert "512×7×7" in text and "16×16×16" in text and "rank=2" in text
    assert "bias=False" in text and "flatten=True" in text
    compression = 25088 * 4096 / (2 * (16 * 512 + 16 * 7 * 2))
    assert f"compression={compression:.1f}x" in text


# --------------------------------------------------------------------------- spectra


def test_rank1_spectrum_is_product_of_factor_spectra():
    # Docstring: ‖W‖₂ = Π ‖U_k‖₂ and κ(W) = Π κ(U_k) for R = 1 (all factors tall).
    layer = make_layer((3, 4, 2), (5, 6, 3), seed=9)
    sv_w = torch.linalg.svdvals(layer.to_dense())
    svs = [torch.linalg.svdvals(u[0]) for u in layer.factors]
    spectral = math.prod(s[0].item() for s in svs)
    cond = math.prod((s[0] / s[-1]).item() for s in svs)
    assert sv_w[0].item() == pytest.approx(spectral, rel=1e-10)
    assert (sv_w[0] / sv_w[-1]).item() == pytest.approx(cond, rel=1e-8)


# --------------------------------------------------------------------------- dtype / state


def test_double_and_dtype_argument():
    torch.manual_seed(0)
    layer = SeparableLinear((4, 5), (3, 6), rank=2)
    x = torch.randn(3, 4, 5)
    y32 = layer(x)
    layer.double()
    assert all(p.dtype == F64 for p in layer.parameters())
    y64 = layer(x.double())
    assert y64.dtype == F64
    torch.testing.assert_close(y64.float(), y32, rtol=1e-5, atol=1e-6)
    built = SeparableLinear((4, 5), (3, 6), dtype=F64, device="cpu")
    assert all(p.dtype == F64 and p.device.type == "cpu" for p in built.parameters())


@pytest.mark.parametrize("bias", [True, False])
def test_state_dict_round_trip(bias):
    torch.manual_seed(1)
    layer = SeparableLinear((3, 4, 2), (2, 5, 3), rank=2, bias=bias)
    state = layer.state_dict()
    expected_keys = {"factors.0", "factors.1", "factors.2"} | ({"bias"} if bias else set())
    assert set(state) == expected_keys
    torch.manual_seed(2)
    fresh = SeparableLinear((3, 4, 2), (2, 5, 3), rank=2, bias=bias)
    x = torch.randn(4, 3, 4, 2)
    assert not torch.equal(fresh(x), layer(x))
    fresh.load_state_dict(state)
    assert torch.equal(fresh(x), layer(x))
