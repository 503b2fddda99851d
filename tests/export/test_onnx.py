"""ONNX export: mode products kept, parity with PyTorch, dynamic batch, int8, clear errors."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from sstorch.cli import main
from sstorch.config import load_config
from sstorch.data import DATASET_INFO
from sstorch.export import onnx as export_mod
from sstorch.export import parity
from sstorch.export.onnx import ExportError, export_onnx, onnx_session
from sstorch.io.checkpoint import save_checkpoint
from sstorch.layers.separable import SeparableLinear
from sstorch.models import build_model
from sstorch.pruning.factor import prune_factors
from sstorch.structure.summary import summary

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

pytestmark = pytest.mark.usefixtures("one_thread")

FASHION = Path("/usr/share/datasets/fashion-mnist")


def _model(dataset: str = "fashion-mnist", *overrides: str) -> torch.nn.Module:
    info = DATASET_INFO[dataset]
    cfg = load_config(None, [f"data.name={dataset}", *overrides])
    return build_model(cfg.model, info.num_classes, info.image_shape, info.mean, info.std).eval()


@pytest.fixture(scope="module")
def tiny() -> torch.nn.Module:
    """A pruned, fully separable MLP on 28×28 images: (28,28)→(8,8)→classes."""
    torch.manual_seed(0)
    model = _model("fashion-mnist", "model.hidden=[[8,8]]", "model.separate_head=true")
    prune_factors(model, 0.5)
    return model


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(20, 1, 28, 28, generator=torch.Generator().manual_seed(0))


def _initializer_sizes(path: Path) -> dict[str, int]:
    graph = onnx.load(str(path)).graph
    return {t.name: int(np.prod(t.dims)) for t in graph.initializer}


@pytest.mark.skipif(not FASHION.is_dir(), reason="system Fashion-MNIST absent "
                    "(sudo apt-get install dataset-fashion-mnist)")
def test_separable_mlp_parity_on_1000_real_images(tmp_path):
    """The bar: ≤ 1e-4 on 1,000 Fashion-MNIST test images; no initializer larger than the
    largest factor or bias (the 200× config: rank 1, separable head, pruned)."""
    torch.manual_seed(0)
    model = _model("fashion-mnist", "model.separate_head=true")
    prune_factors(model, 0.5)
    report = export_onnx(model, tmp_path / "m.onnx", dataset="fashion-mnist")
    assert report.n_parity == 1000 and report.parity_source == "fashion-mnist test images"
    assert report.max_abs_diff <= 1e-4
    sizes = _initializer_sizes(tmp_path / "m.onnx")
    largest_factor = max(t.numel() for m in model.modules() if isinstance(m, SeparableLinear)
                         for t in [*m.factors, m.bias])
    assert max(sizes.values()) <= largest_factor == report.largest_factor_elements
    assert report.max_initializer_elements == max(sizes.values())
    assert report.max_static_elements <= largest_factor  # nothing built from the factors either
    assert report.dense_kronecker_elements == 1024 * 1024 > 100 * largest_factor
    assert report.compression > 200
    assert 0 <= report.clean_acc <= 1
    saved = json.loads((tmp_path / "m.export.json").read_text())
    assert saved["max_abs_diff"] == report.max_abs_diff and saved["path"] == report.path


def test_dynamic_batch_and_normalization_inside(tiny, images, tmp_path):
    out = tmp_path / "m.onnx"
    report = export_onnx(tiny, out, images=images, opset=13)
    assert report.opset == 13 and report.n_parity == 20 and report.clean_acc is None
    sess = onnx_session(out)
    (inp,), (outp,) = sess.get_inputs(), sess.get_outputs()
    assert (inp.name, outp.name) == ("images", "logits")
    assert inp.shape[0] == outp.shape[0] == "batch"
    for b in (1, 7):
        x = images[:b]  # raw [0, 1] images: the graph normalizes them itself
        got = sess.run(None, {"images": x.numpy()})[0]
        with torch.no_grad():
            want = tiny(x).numpy()
        assert got.shape == (b, 10)
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
        # and the normalization does matter: the un-normalized net gives other logits
        with torch.no_grad():
            assert not np.allclose(tiny.net(x).numpy(), got, atol=1e-3)
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert {"Sub", "Div", "MatMul"} <= ops


class _DenseKron(torch.nn.Module):
    """A separable layer applied through its materialized ``W = U_1 ⊗ U_2`` (what export must
    never ship)."""

    def __init__(self, layer: SeparableLinear) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = (u[0] for u in self.layer.effective_factors())  # rank 1, two modes
        w = (a[:, None, :, None] * b[None, :, None, :]).reshape(self.layer.out_features, -1)
        y = x.reshape(-1, self.layer.in_features) @ w.t() + self.layer.bias
        return y if self.layer.flatten else y.reshape(-1, *self.layer.out_shape)


@pytest.mark.parametrize("fold", [True, False])
def test_a_materialized_kronecker_product_is_refused(tiny, images, tmp_path, monkeypatch,
                                                     fold):
    """W folded into an initializer, or computed from the factors at run time: both are
    refused and nothing is written."""
    model = copy.deepcopy(tiny)
    model.net[1] = _DenseKron(model.net[1])
    real_export = torch.onnx.export
    monkeypatch.setattr(torch.onnx, "export", lambda *a, **k: real_export(
        *a, **k, do_constant_folding=fold))
    with pytest.raises(ExportError, match=r"holds .* with 50,176 elements.*materialized"):
        export_onnx(model, tmp_path / "m.onnx", images=images)
    assert list(tmp_path.iterdir()) == []


def test_failed_parity_leaves_no_file(tiny, images, tmp_path, monkeypatch):
    out = tmp_path / "m.onnx"
    real = parity.run_ort
    monkeypatch.setattr(parity, "run_ort", lambda s, x: real(s, x) + 1e-3)
    with pytest.raises(ExportError, match=r"parity check failed.*nothing was written"):
        export_onnx(tiny, out, images=images)
    assert list(tmp_path.iterdir()) == []
    # An existing file under the name stays as it was.
    out.write_bytes(b"previous export")
    with pytest.raises(ExportError, match="parity check failed"):
        export_onnx(tiny, out, images=images)
    assert out.read_bytes() == b"previous export"
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


@pytest.mark.parametrize("opset", [7, 12, 21, "17"])
def test_unsupported_opset(tiny, images, tmp_path, opset):
    with pytest.raises(ExportError, match=r"opset .* is not supported; choose 13–20"):
        export_onnx(tiny, tmp_path / "m.onnx", images=images, opset=opset)


def test_missing_output_directory(tiny, images, tmp_path):
    with pytest.raises(ExportError, match=r"output directory .*missing does not exist"):
        export_onnx(tiny, tmp_path / "missing" / "m.onnx", images=images)
    assert not (tmp_path / "missing").exists()
    with pytest.raises(ExportError, match="is a directory"):
        export_onnx(tiny, tmp_path, images=images)


def test_quantized_model_is_smaller_and_measured(images, tmp_path):
    torch.manual_seed(0)
    model = _model("fashion-mnist", "model.hidden=[[16,16]]")  # dense head: quantizable
    labels = torch.arange(len(images)) % 10
    report = export_onnx(model, tmp_path / "m.onnx", images=images, labels=labels,
                         quantize=True, eps=0.1, pgd_steps=2)
    q = report.int8
    assert q is not None and Path(q.path) == tmp_path / "m.int8.onnx"
    assert q.bytes == (tmp_path / "m.int8.onnx").stat().st_size < report.bytes
    assert q.n == 20 and q.eps == 0.1 and q.pgd_steps == 2 and "transfer" in q.pgd_note
    for acc in (q.clean_acc_fp32, q.clean_acc_int8, q.pgd_acc_fp32, q.pgd_acc_int8):
        assert 0 <= acc <= 1
    assert q.clean_acc_fp32 == report.clean_acc and q.pgd_acc_fp32 <= q.clean_acc_fp32
    assert 0 < q.max_abs_diff_vs_fp32 < 0.5
    saved = json.loads((tmp_path / "m.export.json").read_text())
    assert saved["int8"]["clean_acc_int8"] == q.clean_acc_int8
    with pytest.raises(ExportError, match="needs labels"):
        export_onnx(model, tmp_path / "n.onnx", images=images, quantize=True)
    assert not (tmp_path / "n.onnx").exists()


def test_pack_agrees_with_summary(tiny, images, tmp_path):
    report = export_onnx(tiny, tmp_path / "m.onnx", images=images, pack=True)
    s = summary(tiny)
    assert report.packed.param_bytes == report.bytes_sparse == s.bytes_sparse
    assert report.bytes_dense_fp32 == s.bytes_dense_fp32
    assert report.packed.file_bytes == (tmp_path / "m.sparse.safetensors").stat().st_size
    assert report.bytes_sparse < report.bytes_dense_fp32 < report.bytes


# --------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run directory as `sstorch train` leaves it: config.yaml + best.safetensors (digits)."""
    d = tmp_path_factory.mktemp("run")
    cfg = load_config(None, ["data.name=digits", "model.hidden=[[4,4]]", "name=tiny",
                             "attack.eps=0.1", "eval.pgd_steps=2"])
    info = DATASET_INFO["digits"]
    torch.manual_seed(0)
    model = build_model(cfg.model, info.num_classes, info.image_shape, info.mean, info.std)
    prune_factors(model, 0.5)
    (d / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    save_checkpoint(d / "best.safetensors", model, extra={"config": cfg.to_dict()}, rng=False)
    return d


def test_cli_end_to_end(run_dir, capsys):
    assert main(["export", str(run_dir), "--n", "100", "--quantize", "--pack"]) == 0
    text = capsys.readouterr().out
    assert "parity: max |onnxruntime − PyTorch|" in text and "on 100 digits test images" in text
    assert "int8:" in text and "PGD-2 (ε = 0.1)" in text
    for name in ("model.onnx", "model.int8.onnx", "model.sparse.safetensors",
                 "model.export.json"):
        assert (run_dir / name).is_file(), name
    saved = json.loads((run_dir / "model.export.json").read_text())
    assert saved["n_parity"] == 100 and saved["max_abs_diff"] <= 1e-4
    assert saved["packed"]["param_bytes"] == saved["bytes_sparse"]

    assert main(["export", str(run_dir), "--format", "safetensors-sparse", "--out",
                 str(run_dir / "w.safetensors")]) == 0
    text = capsys.readouterr().out
    assert "w.safetensors" in text and (run_dir / "w.export.json").is_file()


def test_cli_checkpoint_file_and_errors(run_dir, tmp_path, capsys):
    out = tmp_path / "c.onnx"
    assert main(["export", str(run_dir / "best.safetensors"), "--out", str(out), "--n",
                 "10", "--opset", "18"]) == 0
    assert out.is_file()
    capsys.readouterr()

    # A checkpoint with no config in its metadata and no config.yaml next to it.
    lone = tmp_path / "lone"
    lone.mkdir()
    model = build_model(load_config(None, ["data.name=digits", "model.hidden=[[4,4]]"]).model,
                        10, (1, 8, 8), (0.3,), (0.4,))
    save_checkpoint(lone / "w.safetensors", model, extra={}, rng=False)
    cases = [
        ([str(lone / "w.safetensors")], "holds no config and there is no config.yaml"),
        ([str(run_dir), "--opset", "9"], "opset 9 is not supported; choose 13–20"),
        ([str(run_dir), "--out", str(tmp_path / "no" / "m.onnx")],
         "output directory .* does not exist"),
        ([str(tmp_path / "nowhere")], "does not exist"),
    ]
    for args, match in cases:
        assert main(["export", *args]) == 1
        err = capsys.readouterr().err
        assert err.startswith("sstorch export: error: "), err
        assert re.search(match, err), (match, err)
    assert list(lone.iterdir()) == [lone / "w.safetensors"]


@pytest.mark.parametrize("tolerance", ["nan", "-1", "inf"])
def test_cli_bad_tolerance_is_refused_before_any_work(run_dir, capsys, monkeypatch, tolerance):
    """``--tolerance nan`` used to run the whole export and then fail the parity check."""
    monkeypatch.delenv("SSTORCH_DEBUG", raising=False)

    def no_work(*args, **kwargs):
        raise AssertionError("the export started before the tolerance was checked")

    monkeypatch.setattr(export_mod, "_load_target", no_work)
    assert main(["export", str(run_dir), "--tolerance", tolerance]) == 1
    err = capsys.readouterr().err
    assert err.startswith("sstorch export: error: tolerance must be a finite number ≥ 0")
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    with pytest.raises(ExportError, match="tolerance must be a finite number"):
        export_onnx(run_dir, tolerance=float(tolerance))
