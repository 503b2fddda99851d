"""Baselines at a matched parameter budget (:mod:`sstorch.layers.lowrank`,
:mod:`sstorch.layers.tensorized`): low-rank and tensorly-torch layers, ``init_from`` and their
config checks.

Layers are checked on small shapes; parameter counts on the real Fashion-MNIST MLP (no data
needed); training end to end on scikit-learn's 8×8 digits, so the file stays fast on 2 cores.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sstorch.config import ConfigError, load_config
from sstorch.data import DATASET_INFO
from sstorch.eval.run import lipschitz_bound, load_run
from sstorch.functional.kronecker import kron
from sstorch.layers.lowrank import LowRankLinear
from sstorch.layers.tensorized import TensorizedLinear
from sstorch.models import build_model
from sstorch.pruning.hydra import Hydra
from sstorch.pruning.magnitude import keep_schedule, prune_linear_
from sstorch.structure.init import load_dense_state
from sstorch.structure.summary import summary
from sstorch.training.init import init_from as _init_from
from sstorch.training.loop import train

pytestmark = pytest.mark.usefixtures("one_thread", "seeded")
needs_tltorch = pytest.mark.skipif(importlib.util.find_spec("tltorch") is None,
                                   reason="tensorly-torch not installed (the bench extra)")

ROOT = Path(__file__).resolve().parents[2]
PAPER = ROOT / "configs" / "paper-fmnist"
SEP_PARAMS = 6_122  # the separable MLP of configs/paper-fmnist/sep-mlp-200x.yaml
DENSE_PARAMS = 1_863_690
BIASES = 1024 + 1024 + 10


def _fmnist_model(*overrides: str) -> nn.Module:
    cfg = load_config(None, list(overrides))
    info = DATASET_INFO["fashion-mnist"]
    return build_model(cfg.model, info.num_classes, info.image_shape, info.mean, info.std)


def _baseline(name: str, rank: float) -> nn.Module:
    return _fmnist_model(f"model.structure={name}", f"model.rank={rank}",
                         "constraints.lambda_sparsity=0",
                         "constraints.lambda_cond=0")


def _nnz(model: nn.Module) -> int:
    return summary(model).total_nnz


def _skip_without_tltorch(name: str) -> None:
    if name in ("tucker", "tt") and importlib.util.find_spec("tltorch") is None:
        pytest.skip("tensorly-torch not installed (the bench extra)")


# --------------------------------------------------------------------------- parameter budget


@pytest.mark.parametrize(("name", "rank", "params"), [
    ("lowrank", 1, 6_948), ("tucker", 6, 6_911), ("tt", 1, SEP_PARAMS)])
def test_baseline_mlps_match_the_separable_budget(name, rank, params):
    """Every Linear, the head included, is replaced; counts include biases and the head."""
    _skip_without_tltorch(name)
    model = _baseline(name, rank)
    s = summary(model)
    assert s.total_params == params == s.total_nnz
    assert s.dense_equivalent_params == DENSE_PARAMS
    assert [layer.kind for layer in s.layers] == [name] * 3
    assert not any(isinstance(m, nn.Linear) for m in model.modules())
    assert model(torch.rand(3, 1, 28, 28)).shape == (3, 10)
    # as close as possible to 6,122 without falling far below: the next rank down is
    # impossible (lowrank, tt) or 16 % below (tucker 5: 5,147)
    assert abs(params - SEP_PARAMS) / SEP_PARAMS < 0.14
    if name == "tucker":
        assert summary(_baseline("tucker", 5)).total_params == 5_147


@needs_tltorch
def test_tucker_rank_is_capped_at_the_mode_sizes_and_fractions_pass_through():
    head = TensorizedLinear((32, 32), (2, 5), "tucker", 6)
    assert head.rank == [2, 5, 6, 6]  # a rank above a mode's size only adds core parameters
    frac = TensorizedLinear((8, 8), (8, 8), "tucker", 0.1)
    assert frac.n_params < 0.2 * 64 * 64 + 64


# --------------------------------------------------------------------------- layers


def test_lowrank_is_the_dense_product_and_from_linear_is_the_truncated_svd():
    layer = LowRankLinear(12, 9, rank=3)
    x = torch.randn(4, 5, 12)
    w = layer.A @ layer.B
    torch.testing.assert_close(layer(x), x @ w.T + layer.bias)
    torch.testing.assert_close(layer.to_dense(), w)
    assert torch.linalg.matrix_rank(w) == 3
    assert layer.n_params == 3 * (12 + 9) + 9 and layer.dense_params == 12 * 9 + 9
    assert layer.macs_per_example() == 3 * (12 + 9)

    dense = nn.Linear(12, 9)
    exact = LowRankLinear.from_linear(dense, rank=9)  # full rank: exact
    assert exact.approx_error < 1e-6
    torch.testing.assert_close(exact(x), dense(x), atol=1e-5, rtol=1e-5)
    approx = LowRankLinear.from_linear(dense, rank=2)  # Eckart–Young: tail singular values
    s = torch.linalg.svdvals(dense.weight.detach().double())
    assert approx.approx_error == pytest.approx(float(s[2:].norm() / s.norm()), rel=1e-5)


def test_lowrank_spectral_init_is_balanced():
    layer = LowRankLinear(64, 48, rank=4)
    na = torch.linalg.svdvals(layer.A.detach())
    nb = torch.linalg.svdvals(layer.B.detach())
    torch.testing.assert_close(na, nb)  # A = U S^½, B = S^½ Vᵀ
    assert 0.5 < float(na[0] ** 2) < 3  # ≈ σ_1 of an nn.Linear init, not ‖W‖_F


@needs_tltorch
@pytest.mark.parametrize("factorization", ["tucker", "tt"])
def test_tensorized_forward_is_its_dense_weight_and_decomposition_recovers_it(factorization):
    layer = TensorizedLinear((4, 3), (2, 5), factorization, 2)
    x = torch.randn(6, 12)
    torch.testing.assert_close(layer(x), x @ layer.to_dense().T + layer.bias,
                               atol=1e-5, rtol=1e-4)
    twin = TensorizedLinear((4, 3), (2, 5), factorization, 2)
    error = twin.load_dense_(layer.to_dense(), layer.bias)  # exactly representable
    assert error < 1e-4
    torch.testing.assert_close(twin(x), layer(x), atol=1e-4, rtol=1e-4)
    assert layer.n_params == sum(p.numel() for p in layer.parameters())
    assert layer.dense_params == 12 * 10 + 10


@needs_tltorch
@pytest.mark.parametrize(("in_shape", "out_shape", "rank"), [
    ((28, 28), (32, 32), 6), ((2, 3, 4), (3, 5), 0.3), ((8, 8), (10,), 3)])
def test_tucker_contraction_is_the_dense_weight_without_forming_it(in_shape, out_shape, rank):
    """Our factor-by-factor Tucker forward = x Wᵀ + b for any number of modes and unequal ranks,
    in values and input gradients, and it costs what macs_per_example says (far below mn)."""
    torch.manual_seed(0)
    layer = TensorizedLinear(in_shape, out_shape, "tucker", rank)
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_()
    x = torch.randn(3, 4, layer.in_features, requires_grad=True)
    y = layer(x)
    ref_x = x.detach().clone().requires_grad_(True)
    ref = ref_x @ layer.to_dense().T + layer.bias
    assert y.shape == (3, 4, layer.out_features)
    scale = ref.abs().max()
    torch.testing.assert_close(y / scale, ref / scale, atol=1e-5, rtol=0)
    probe = torch.randn_like(y)
    (g,) = torch.autograd.grad((y * probe).sum(), x)
    (g_ref,) = torch.autograd.grad((ref * probe).sum(), ref_x)
    torch.testing.assert_close(g / g_ref.abs().max(), g_ref / g_ref.abs().max(), atol=1e-5, rtol=0)
    r = layer.rank
    k = len(out_shape)
    by_hand = math.prod(r)  # core
    for j in range(len(in_shape)):
        by_hand += math.prod(r[k:][: j + 1]) * math.prod(in_shape[j:])
    for j in range(k):
        by_hand += math.prod(out_shape[: j + 1]) * math.prod(r[:k][j:])
    assert layer.macs_per_example() == by_hand
    if rank == 6:
        assert by_hand < layer.in_features * layer.out_features / 50
    with pytest.raises(ValueError, match=f"expected inputs with {layer.in_features} features"):
        layer(torch.randn(2, layer.in_features + 1))


@needs_tltorch
def test_two_mode_tt_is_a_sum_of_kronecker_products():
    """TT-matrix with K = 2 cores of rank r = Σ_α G1[..., α] ⊗ G2[α]: a SeparableLinear."""
    layer = TensorizedLinear((4, 3), (2, 5), "tt", 2)
    g1, g2 = (f.detach() for f in layer.layer.weight.factors)  # (1, 2, 4, r), (r, 5, 3, 1)
    w = sum(kron(g1[0, :, :, a], g2[a, :, :, 0]) for a in range(2))
    torch.testing.assert_close(layer.to_dense(), w, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(("name", "rank"), [("tucker", 2), ("tt", 2), ("lowrank", 2)])
def test_baseline_mlp_trains_a_step(name, rank):
    _skip_without_tltorch(name)
    cfg = load_config(None, [f"model.structure={name}", f"model.rank={rank}",
                             "model.hidden=[[4,4]]",
                             "constraints.lambda_sparsity=0", "constraints.lambda_cond=0"])
    info = DATASET_INFO["digits"]
    model = build_model(cfg.model, info.num_classes, info.image_shape, info.mean, info.std)
    x, y = torch.rand(16, *info.image_shape), torch.randint(0, 10, (16,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    before = [p.detach().clone() for p in model.parameters()]
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    opt.step()
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))
    assert lipschitz_bound(model)[0] is not None  # the certificate covers baseline layers


@needs_tltorch
def test_missing_tltorch_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "tltorch", None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install -e '\.\[bench\]'"):
        TensorizedLinear((4, 4), (4, 4), "tucker", 2)



def _weight_nnz(model: nn.Module) -> int:
    return sum(int(torch.count_nonzero(m.weight)) for m in model.modules()
               if isinstance(m, nn.Linear))



# --------------------------------------------------------------------------- training runs


def _digits(out_dir: Path, name: str, **kw: object) -> list[str]:
    base = {
        "data.name": "digits", "model.structure": "dense", "model.hidden": "[[8,8]]",
        "device": "cpu", "out_dir": str(out_dir), "name": name, "epochs": 1,
        "data.train_subset": 128, "data.val_size": 64, "data.test_subset": 64,
        "data.batch_size": 64, "attack.eps": 0.1, "attack.step_size": 0.05, "attack.steps": 2,
        "eval.pgd_steps": 2, "eval.val_pgd_steps": 2, "constraints.lambda_sparsity": 0,
        "constraints.lambda_cond": 0,
    }
    base.update({k.replace("__", "."): v for k, v in kw.items()})
    return [f"{k}={v}" for k, v in base.items()]


@pytest.fixture(scope="module")
def dense_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    return train(load_config(None, _digits(out, "dense")), log=lambda msg: None)


def test_prune_run_from_a_dense_run_reaches_keep_and_survives_resume(tmp_path, dense_run):
    """init_from a dense run, ramp over 2 epochs to keep=40 weights (+ 8·8 + 10 biases), one
    more epoch after a resume; load_run rebuilds the pruned model."""
    sets = _digits(tmp_path, "prune", init_from=dense_run, epochs=2, prune__keep=40,
                   prune__start_epoch=1, prune__end_epoch=2)
    lines: list[str] = []
    run = train(load_config(None, sets), log=lines.append)
    assert any(f"initialized from {dense_run / 'best.safetensors'}" in ln for ln in lines)
    result = json.loads((run / "summary.json").read_text())
    assert result["nnz"] == 40 + 64 + 10 and result["params"] == 64 * 64 + 64 * 10 + 64 + 10
    rows = (run / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    nnz = [int(r.split(",")[header.index("nnz")]) for r in rows[1:]]
    assert nnz[0] == keep_schedule(64 * 64 + 640, 40, 0.5) + 74 and nnz[1] == 114
    resumed = train(load_config(None, [*sets, "epochs=3"]), resume=run, log=lambda msg: None)
    assert json.loads((resumed / "summary.json").read_text())["nnz"] == 114
    _, model, _, _ = load_run(resumed)
    assert _nnz(model) == 114 and model.net[1].weight_mask.sum() > 0


def test_hydra_run_from_a_dense_run_resumes_in_the_score_phase(tmp_path, dense_run):
    """Scores learn in epochs 1-2 (weights frozen), fine-tuning in epoch 3; killed after
    epoch 1 and resumed; the result has keep=40 weights."""
    sets = _digits(tmp_path, "hydra", init_from=dense_run, epochs=3, prune__method="hydra",
                   prune__keep=40, prune__start_epoch=1, prune__end_epoch=2)

    class Killed(Exception):
        pass

    def die_after_epoch_1(msg: str) -> None:
        if msg.startswith("epoch 1:"):
            raise Killed

    with pytest.raises(Killed):
        train(load_config(None, sets), log=die_after_epoch_1)
    _, mid, _, _ = load_run(tmp_path / "hydra")
    _, dense, _, _ = load_run(dense_run)
    torch.testing.assert_close(mid.net[1].weight, dense.net[1].weight)  # frozen, dense
    assert hasattr(mid.net[1], "weight_score") and _nnz(mid) == 40 + 74
    run = train(load_config(None, sets), resume=tmp_path / "hydra", log=lambda msg: None)
    assert json.loads((run / "summary.json").read_text())["nnz"] == 40 + 74
    _, model, ckpt, _ = load_run(run)
    assert ckpt.name == "best.safetensors" and not hasattr(model.net[1], "weight_score")
    assert _weight_nnz(model) == 40


def test_init_from_loads_the_weights_and_refuses_what_does_not_fit(tmp_path, dense_run):
    cfg = load_config(None, _digits(tmp_path, "x"))
    info = DATASET_INFO["digits"]
    model = build_model(cfg.model, info.num_classes, info.image_shape, info.mean, info.std)
    _init_from(model, str(dense_run))
    _, trained, _, _ = load_run(dense_run)
    for a, b in zip(model.state_dict().values(), trained.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)
    _init_from(model, str(dense_run / "last.safetensors"))  # a checkpoint file works too
    with pytest.raises(ConfigError, match="does not exist"):
        _init_from(model, str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match=r"holds no best\.safetensors"):
        _init_from(model, str(tmp_path))
    wider = build_model(load_config(None, _digits(tmp_path, "x", model__hidden="[[4,4]]")).model,
                        info.num_classes, info.image_shape, info.mean, info.std)
    with pytest.raises(ConfigError, match=r"init_from=.*do not fit this model.*shape"):
        _init_from(wider, str(dense_run))


@pytest.mark.parametrize(("name", "rank"), [("lowrank", 2), ("tucker", 2), ("tt", 2)])
def test_baselines_start_from_a_dense_run_by_decomposition(tmp_path, dense_run, name, rank):
    _skip_without_tltorch(name)
    sets = _digits(tmp_path, name, model__structure=name, model__rank=rank)
    cfg = load_config(None, sets)
    info = DATASET_INFO["digits"]
    model = build_model(cfg.model, info.num_classes, info.image_shape, info.mean, info.std)
    note = _init_from(model, str(dense_run))
    assert "net.1 decomposed (relative error" in note and "net.3 decomposed" in note
    _, dense, _, _ = load_run(dense_run)
    torch.testing.assert_close(model.net[3].bias, dense.net[3].bias)
    if name == "lowrank":  # the first layer is the truncated SVD of the dense one
        w = dense.net[1].weight.detach().double()
        u, s, vh = torch.linalg.svd(w)
        torch.testing.assert_close(model.net[1].to_dense().double(),
                                   (u[:, :2] * s[:2]) @ vh[:2], atol=1e-5, rtol=1e-4)
    run = train(cfg, log=lambda msg: None)  # and a short run from scratch trains
    assert json.loads((run / "summary.json").read_text())["structure"] == name


def test_init_from_dense_names_what_does_not_fit():
    model = nn.Sequential(nn.Flatten(), LowRankLinear(12, 6, rank=2), nn.ReLU(), nn.Linear(6, 3))
    good = {"1.weight": torch.randn(6, 12), "1.bias": torch.randn(6),
            "3.weight": torch.randn(3, 6), "3.bias": torch.randn(3)}
    errors = load_dense_state(model, good)
    assert list(errors) == ["1"] and 0 < errors["1"] < 1
    torch.testing.assert_close(model[3].weight, good["3.weight"])
    with pytest.raises(ValueError, match=r"1: a dense weight .* must be \(6, 12\)"):
        load_dense_state(model, {**good, "1.weight": torch.randn(6, 10)})
    with pytest.raises(ValueError, match=r"missing 3\.bias"):
        load_dense_state(model, {k: v for k, v in good.items() if k != "3.bias"})
    with pytest.raises(ValueError, match=r"unexpected 5\.weight"):
        load_dense_state(model, {**good, "5.weight": torch.randn(2)})


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(("overrides", "match"), [
    (["model.structure=svd"], "model.structure='svd' is not one of"),
    (["model.structure=tt", "model.name=vgg16"], "mlp only"),
    (["model.structure=lowrank", "model.rank=0.5"], "model.rank must be an int ≥ 1, got 0.5"),
    (["model.structure=tucker", "model.rank=2.5"], "int ≥ 1 or a fraction"),
    (["model.structure=tucker", "model.rank=0"], "int ≥ 1 or a fraction"),
    (["model.structure=tt"], "constraints act on separable factors"),
    (["prune.keep=100"], "set model.structure=dense"),
    (["prune.method=hydra", "model.structure=dense"], "hydra needs prune.keep"),
    (["prune.method=hydra", "prune.keep=10"], "set model.structure=dense"),
    (["prune.method=snip", "model.structure=dense"], "prune.method='snip' is not one of"),
    (["prune.keep=0", "model.structure=dense"], "prune.keep must be ≥ 1"),
    (["model.structure=tt", "constraints.lambda_sparsity=0",
      "constraints.lambda_cond=0", "prune.target=0.5"], "pruning is for dense or separable"),
    (["init_from=' '"], "init_from must be"),
])
def test_config_errors(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, overrides)


@pytest.mark.parametrize(("stem", "params", "nnz"), [
    ("lowrank-mlp-200x", 6_948, 6_948), ("tucker-mlp-200x", 6_911, 6_911),
    ("tt-mlp-200x", SEP_PARAMS, SEP_PARAMS), ("prune-mlp-200x", DENSE_PARAMS, SEP_PARAMS),
    ("hydra-mlp-200x", DENSE_PARAMS, SEP_PARAMS)])
def test_paper_baseline_configs(stem, params, nnz):
    """The issue-5 configs: name = file stem, the dense-mlp recipe, the stated budget."""
    path = PAPER / f"{stem}.yaml"
    assert path.is_file(), f"{path} is missing: the paper sweep's baseline rows need it"
    cfg = load_config(path)
    dense = load_config(PAPER / "dense-mlp.yaml")
    assert cfg.name == stem
    for section in ("data", "attack", "optim", "eval"):
        assert getattr(cfg, section) == getattr(dense, section), section
    assert cfg.epochs == dense.epochs
    assert (cfg.constraints.lambda_sparsity, cfg.constraints.lambda_cond) == (0, 0)
    info = DATASET_INFO["fashion-mnist"]
    model = build_model(cfg.model, info.num_classes, info.image_shape, info.mean, info.std)
    assert summary(model).total_params == params
    if cfg.prune.method == "hydra":
        Hydra(model, cfg.prune.keep).attach()
    elif cfg.prune.enabled:
        total = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
        prune_linear_(model, keep=keep_schedule(total, cfg.prune.keep, 1.0))
    assert _nnz(model) == nnz
    assert math.isclose(DENSE_PARAMS / nnz, 304.4, rel_tol=0.15)


@pytest.mark.parametrize("rank", [1, 3])
def test_a_separable_model_starts_from_a_dense_run_by_nearest_kronecker(tmp_path, dense_run,
                                                                          rank):
    """Compress-then-fine-tune: each separable layer gets the best rank-R Kronecker sum of the
    dense weight (Van Loan–Pitsianis + SVD), biases and everything else copied."""
    from sstorch.functional.nearest import nearest_kronecker

    sets = _digits(tmp_path, f"sep{rank}", model__structure="separable", model__rank=rank)
    cfg = load_config(None, sets)
    info = DATASET_INFO["digits"]
    model = build_model(cfg.model, info.num_classes, info.image_shape, info.mean, info.std)
    note = _init_from(model, str(dense_run))
    assert "net.1 ← nearest Kronecker sum (relative error" in note
    _, dense, _, _ = load_run(dense_run)
    w = dense.net[1].weight.detach().double()
    _, err = nearest_kronecker(w, (8, 8), (8, 8), rank=rank)
    approx = model.net[1].to_dense().detach().double()
    rel = float(torch.linalg.norm(approx - w) / torch.linalg.norm(w))
    assert 0 < rel < 1 and rel == pytest.approx(err, rel=1e-4)
    torch.testing.assert_close(model.net[1].bias, dense.net[1].bias)
    torch.testing.assert_close(model.net[3].weight, dense.net[3].weight)  # the dense head
    run = train(load_config(None, [*sets, f"init_from={dense_run}"]), log=lambda msg: None)
    assert json.loads((run / "summary.json").read_text())["structure"] == "separable"


def test_separable_from_dense_refuses_a_different_architecture(tmp_path, dense_run):
    sets = _digits(tmp_path, "sep", model__structure="separable", model__hidden="[[4,4]]")
    cfg = load_config(None, sets)
    info = DATASET_INFO["digits"]
    model = build_model(cfg.model, info.num_classes, info.image_shape, info.mean, info.std)
    with pytest.raises(ConfigError, match=r"dense weight \(64, 64\) does not fit .* 16×64"):
        _init_from(model, str(dense_run))
