"""The committed checkpoints (checkpoints/README.md) load and reproduce their recorded numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from dataset_files import SHARED
from sstorch.data import build_datasets
from sstorch.eval.run import load_run
from sstorch.structure.summary import summary

ROOT = Path(__file__).resolve().parents[2]
CHECKPOINTS = sorted(p.parent for p in (ROOT / "checkpoints").rglob("best.safetensors"))


def _record(run: Path) -> dict:
    """The sweep record of the run: results/<dataset>_runs/<method>/seed<k>.json."""
    seed = json.loads((run / "summary.json").read_text()).get("seed", 0)
    return json.loads((ROOT / "results" / f"{run.parent.name}_runs" / run.name
                       / f"seed{seed}.json").read_text())


def test_every_checkpoint_is_a_documented_run_directory():
    assert CHECKPOINTS, "checkpoints/ holds no run directory"
    readme = (ROOT / "checkpoints" / "README.md").read_text()
    for run in CHECKPOINTS:
        assert {"config.yaml", "summary.json"} <= {p.name for p in run.iterdir()}
        assert f"`{run.relative_to(ROOT / 'checkpoints').as_posix()}/`" in readme
        _, model, _, _ = load_run(run)
        assert summary(model).total_nnz == int(_record(run)["row"]["nnz"])


@pytest.mark.skipif(not (SHARED / "cifar-10-batches-py" / "test_batch").is_file(),
                    reason=f"CIFAR-10 not in {SHARED} (the shared datasets folder)")
@pytest.mark.parametrize("run", [p for p in CHECKPOINTS if "cifar10" in p.parts],
                         ids=lambda p: p.name)
def test_cifar10_checkpoint_reproduces_its_clean_accuracy(run, one_thread):
    """Clean accuracy on all 10,000 test images equals the sweep record's (4 decimals)."""
    cfg, model, _, _ = load_run(run)
    recorded = _record(run)["row"]
    _, _, test = build_datasets(cfg.data.name, root=str(SHARED), val_size=cfg.data.val_size,
                                seed=cfg.seed, augment=False)
    correct = 0
    with torch.no_grad():
        for x, y in DataLoader(test, batch_size=1000):
            correct += int((model(x).argmax(1) == y).sum())
    assert len(test) == 10_000
    assert round(correct / len(test), 4) == float(recorded["clean_acc"])
