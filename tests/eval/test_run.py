"""sstorch eval: end to end on a tiny digits run, sanity checks, certificate, errors.

The sanity checks must tell a normally trained MLP (all pass) from the same MLP behind a
rounding front end whose gradient is zero (gradient masking: at least one fails).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

import sstorch
from digits_models import fit, held_out
from sstorch.config import load_config
from sstorch.eval.certify import certify, lipschitz_bound
from sstorch.eval.common import channels_last_inference, frozen
from sstorch.eval.run import main_eval
from sstorch.eval.sanity import SanityCheck, sanity_checks
from sstorch.eval.worst_case import evaluate_attacks
from sstorch.io.checkpoint import CheckpointError
from sstorch.layers.separable import SeparableLinear
from sstorch.models import ImageClassifier
from sstorch.training.loop import train

SANITY_NAMES = ["monotone_eps", "large_eps", "iterative_vs_fgsm", "more_steps",
                "blackbox_vs_whitebox", "deterministic_forward"]
TOP_KEYS = {"run_dir", "checkpoint", "dataset", "model", "structure", "n", "eps", "norm",
            "params", "nnz", "compression", "kappa", "clean_acc", "attacks", "robust_acc",
            "eps_sweep", "sanity", "certified", "seed", "date", "machine", "code"}
FAST = ["--sanity-n", "100", "--square-n", "50", "--square-queries", "300"]


pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------- toy models


@pytest.fixture(scope="module")
def test_loader() -> DataLoader:
    return DataLoader(TensorDataset(*held_out()), batch_size=200)


class RoundFrontEnd(nn.Module):
    """``x ↦ round(k x) / k``: a "defence" whose gradient is 0 almost everywhere."""

    def __init__(self, k: int = 4) -> None:
        super().__init__()
        self.k = k

    def forward(self, x: Tensor) -> Tensor:
        return torch.round(x * self.k) / self.k


class NoisyForward(nn.Module):
    """Adds Gaussian noise even in eval mode (randomised defence)."""

    def forward(self, x: Tensor) -> Tensor:
        return x + 0.01 * torch.randn_like(x)


def _fit(net: nn.Module, steps: int = 200) -> nn.Module:
    torch.manual_seed(0)
    return fit(net, steps)


def _mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def _by_name(checks: list[SanityCheck]) -> dict[str, SanityCheck]:
    return {c.name: c for c in checks}


# --------------------------------------------------------------------------- sanity checks


def test_sanity_checks_pass_on_a_normal_mlp(test_loader):
    net = _fit(_mlp())
    checks = sanity_checks(net, test_loader, 0.1, square_n=100, square_queries=500)
    assert [c.name for c in checks] == SANITY_NAMES
    assert all(isinstance(c, SanityCheck) and c.detail for c in checks)
    failed = [f"{c.name}: {c.detail}" for c in checks if not c.passed]
    assert not failed, failed


def test_sanity_checks_flag_masked_gradients(test_loader):
    net = _fit(nn.Sequential(RoundFrontEnd(4), _mlp()))
    x, y = held_out()
    assert (net(x).argmax(1) == y).float().mean() > 0.85  # a real model
    grad_x = x[:8].clone().requires_grad_(True)
    net(grad_x).sum().backward()
    assert grad_x.grad.abs().max() == 0  # the gradient is masked
    checks = _by_name(sanity_checks(net, test_loader, 0.1, square_n=100, square_queries=500))
    # PGD cannot move it, so a huge ε leaves it accurate; Square (no gradients) breaks it.
    assert not checks["large_eps"].passed, checks["large_eps"].detail
    assert not checks["blackbox_vs_whitebox"].passed, checks["blackbox_vs_whitebox"].detail
    assert checks["deterministic_forward"].passed


def test_sanity_checks_flag_a_random_forward(test_loader):
    net = _fit(nn.Sequential(_mlp(), NoisyForward()), steps=50)
    check = _by_name(sanity_checks(net, test_loader, 0.1, square_n=20, square_queries=50))
    assert not check["deterministic_forward"].passed
    assert "max |Δlogit|" in check["deterministic_forward"].detail


def test_evaluate_attacks_fast_path_equals_full_worst_case(test_loader):
    from sstorch.attacks.registry import make_attack

    net = _fit(_mlp(), steps=100)
    attacks = {"fgsm": make_attack("fgsm", 0.05), "pgd": make_attack("pgd", 0.05, steps=10)}
    fast = evaluate_attacks(net, test_loader, attacks, 0.05, seed=3)
    full = evaluate_attacks(net, test_loader, attacks, 0.05, seed=3, fast=False)
    assert fast["n"] == full["n"] == 397
    assert fast["clean_acc"] == full["clean_acc"]
    # Worst case per example is order- and path-independent (PGD is seeded per call).
    assert fast["robust_acc"] == full["robust_acc"]
    assert fast["attacks"]["pgd"]["acc"] == fast["robust_acc"]  # cumulative
    assert fast["attacks"]["fgsm"]["acc"] == full["attacks"]["fgsm"]["acc"]
    assert full["robust_acc"] <= min(a["acc"] for a in full["attacks"].values())
    assert fast["attacks"]["pgd"]["n_attacked"] < full["attacks"]["pgd"]["n_attacked"]


# --------------------------------------------------------------------------- certificate


def _certifiable() -> ImageClassifier:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), SeparableLinear((8, 8), (6, 6), flatten=True), nn.ReLU(),
                        nn.Linear(36, 16), nn.LeakyReLU(0.1), nn.Linear(16, 10))
    return _fit(ImageClassifier(net, (0.3,), (0.4,), (1, 8, 8)), steps=150)


def _l2_pgd(model: nn.Module, x: Tensor, y: Tensor, radius: Tensor, steps: int = 50) -> Tensor:
    """L2 PGD on the CW margin inside per-example balls ``‖δ‖₂ ≤ radius`` (no box clamp)."""
    r = radius.view(-1, 1, 1, 1)
    delta = torch.randn_like(x)
    delta = delta / delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * r * 0.5
    for _ in range(steps):
        delta.requires_grad_(True)
        z = model(x + delta)
        other = z.scatter(1, y[:, None], float("-inf")).amax(1)
        loss = (other - z.gather(1, y[:, None]).squeeze(1)).sum()
        (g,) = torch.autograd.grad(loss, delta)
        g = g / g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        delta = delta.detach() + 0.25 * r * g
        norm = delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        delta = delta * torch.clamp(r / norm.clamp_min(1e-12), max=1.0)
    return (x + delta).detach()


def test_lipschitz_bound_is_the_product_of_layer_norms():
    model = _certifiable()
    net = model.net
    sep = net[1]
    sigma = [float(torch.linalg.svdvals(w.detach().double())[0])
             for w in (sep.factors[0][0], sep.factors[1][0], net[3].weight, net[5].weight)]
    std = float(torch.tensor(0.4, dtype=torch.float32))  # Normalize keeps std in float32
    by_hand = (1 / std) * sigma[0] * sigma[1] * sigma[2] * sigma[3]
    lip, detail = lipschitz_bound(model)
    assert lip == pytest.approx(by_hand, rel=1e-9)
    # ‖U1 ⊗ U2‖₂ is the dense layer's spectral norm.
    assert sigma[0] * sigma[1] == pytest.approx(
        float(torch.linalg.matrix_norm(sep.to_dense().detach().double(), 2)), rel=1e-6)
    assert detail.startswith("L = ")
    gelu = nn.Sequential(nn.Flatten(), nn.Linear(64, 10), nn.GELU())
    lip, detail = lipschitz_bound(gelu)
    assert lip is None and "GELU" in detail


def test_certified_radius_is_a_true_lower_bound():
    model = _certifiable()
    x, y = held_out(200)
    cert = certify(model, DataLoader(TensorDataset(x, y), batch_size=64), radii=(0.05, 0.1))
    rho = cert["radii"].float()
    assert cert["lipschitz"] > 0 and cert["radius_median"] == pytest.approx(float(rho.median()))
    assert cert["certified_acc"]["0.05"] == pytest.approx(float((rho > 0.05).float().mean()))
    with torch.no_grad():
        pred = model(x).argmax(1)
    certified = rho > 0
    assert certified.sum() > 100  # most examples get a nonzero radius
    assert bool((pred[~certified] != y[~certified]).all() | (rho[~certified] == 0).all())
    xc, yc, rc = x[certified], y[certified], rho[certified]
    torch.manual_seed(1)
    adv = _l2_pgd(model, xc, yc, 0.999 * rc)
    assert ((adv - xc).flatten(1).norm(dim=1) <= rc + 1e-6).all()
    noise = torch.randn(20, *xc.shape)
    noise = noise / noise.flatten(2).norm(dim=2).view(20, -1, 1, 1, 1) * 0.999 * \
        rc.view(1, -1, 1, 1, 1)
    far = _l2_pgd(model, xc, yc, 30 * rc)
    with torch.no_grad():
        assert (model(adv).argmax(1) == yc).all()
        for d in noise:
            assert (model(xc + d).argmax(1) == yc).all()
        # The attack is not toothless: at 30× the certified radius it flips predictions.
        assert (model(far).argmax(1) != yc).any()


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("eval")
    cfg = load_config(None, [
        "data.name=digits", "model.hidden=[[4,4]]", "epochs=2", "device=cpu", "name=tiny",
        f"out_dir={out}", "data.val_size=64", "data.batch_size=64",
        "attack.eps=0.1", "attack.step_size=0.05", "attack.steps=2", "eval.pgd_steps=2",
        "eval.val_pgd_steps=2", "optim.name=adamw", "optim.lr=0.05",
    ])
    return train(cfg, log=lambda msg: None)


def _eval(target: Path, *args: str) -> dict:
    assert main_eval([str(target), "--attacks", "clean,fgsm,pgd", "--n", "100", *FAST,
                      *args]) == 0
    out = Path(args[args.index("--out") + 1]) if "--out" in args else target
    return json.loads((out / "eval.json").read_text())


def test_end_to_end_eval_json(run_dir, tmp_path):
    r = _eval(run_dir)
    assert TOP_KEYS <= set(r)
    assert (r["dataset"], r["model"], r["structure"], r["n"], r["norm"]) == \
        ("digits", "mlp", "separable", 100, "Linf")
    assert r["eps"] == 0.1 and r["checkpoint"].endswith("best.safetensors")
    assert list(r["attacks"]) == ["clean", "fgsm", "pgd"]
    assert all(set(a) >= {"acc", "seconds"} for a in r["attacks"].values())
    accs = [a["acc"] for a in r["attacks"].values()]
    assert r["attacks"]["clean"]["acc"] == r["clean_acc"]
    assert r["robust_acc"] <= min(accs) and max(accs) <= r["clean_acc"]
    assert [e["eps"] for e in r["eps_sweep"]] == [0.0, 0.05, 0.1, 0.2, 0.3]
    assert r["eps_sweep"][0]["acc"] == r["clean_acc"]
    assert [c["name"] for c in r["sanity"]] == SANITY_NAMES
    assert all(isinstance(c["passed"], bool) and c["detail"] for c in r["sanity"])
    cert = r["certified"]
    assert cert["lipschitz"] > 0 and cert["radius_median"] >= 0
    assert set(cert["certified_acc"]) == {"0.1", "0.25", "0.5"}
    assert all(0 <= v <= r["clean_acc"] for v in cert["certified_acc"].values())
    assert r["kappa"] is None or r["kappa"] >= 1
    assert r["params"] < r["params"] * r["compression"]
    md = (run_dir / "eval.md").read_text()
    assert "Sanity checks" in md and "robust (worst case per example)" in md

    again = _eval(run_dir, "--out", str(tmp_path / "again"))
    for key in ("clean_acc", "robust_acc", "eps_sweep", "sanity", "certified", "kappa"):
        assert again[key] == r[key], key
    assert {k: v["acc"] for k, v in again["attacks"].items()} == \
        {k: v["acc"] for k, v in r["attacks"].items()}


def test_eval_of_a_checkpoint_file(run_dir, tmp_path):
    r = _eval(run_dir / "last.safetensors", "--eps", "0.05", "--eps-sweep", "0,0.05",
              "--out", str(tmp_path))
    assert r["checkpoint"].endswith("last.safetensors") and r["eps"] == 0.05
    assert [e["eps"] for e in r["eps_sweep"]] == [0.0, 0.05]


@pytest.mark.parametrize("args, match", [
    (["--attacks", "clean,pgdd"], r"unknown attack 'pgdd'.*clean.*fgsm.*autoattack"),
    (["--eps", "1.5"], r"eps must be in \[0, 1\]"),
    (["--eps", "-0.1"], r"eps must be in \[0, 1\]"),
    (["--eps-sweep", "0,2"], r"--eps-sweep value must be in \[0, 1\]"),
    (["--n", "0"], r"--n must be an integer ≥ 1"),
])
def test_bad_arguments(run_dir, args, match):
    with pytest.raises(ValueError, match=match):
        main_eval([str(run_dir), *args])


def test_missing_run_or_checkpoint(run_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        main_eval([str(tmp_path / "nope")])
    empty = Path(shutil.copytree(run_dir, tmp_path / "empty"))
    for f in empty.glob("*.safetensors"):
        f.unlink()
    with pytest.raises(FileNotFoundError, match=r"no checkpoint in .*best\.safetensors"):
        main_eval([str(empty)])
    with pytest.raises(FileNotFoundError, match=r"config\.yaml not found"):
        main_eval([str(tmp_path)])


def test_config_that_does_not_match_the_weights(run_dir, tmp_path):
    bad = Path(shutil.copytree(run_dir, tmp_path / "bad"))
    cfg = bad / "config.yaml"
    cfg.write_text(cfg.read_text().replace("- - 4\n    - 4", "- - 16\n    - 16"))
    assert "16" in cfg.read_text()
    with pytest.raises(CheckpointError, match="does not match the model"):
        main_eval([str(bad), "--n", "10"])


def test_code_version_names_the_package_and_its_commit(tmp_path, monkeypatch):
    import subprocess

    from sstorch import __version__
    from sstorch.io.provenance import code_version

    text = code_version()
    assert text.startswith(f"sstorch {__version__}")
    root = Path(__file__).resolve().parents[2]
    assert (root / "pyproject.toml").is_file()
    if (root / ".git").exists():  # a checkout (CI clones one): the commit is recorded
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root,
                             capture_output=True, text=True, check=True).stdout.strip()
        assert f"(git {sha}" in text

    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")

    monkeypatch.setattr(subprocess, "run", no_git)  # no git installed: the version alone
    assert code_version() == f"sstorch {__version__}"


def test_an_interrupted_evaluation_resumes_from_its_journal_with_the_same_numbers(tmp_path):
    from digits_models import undefended
    from sstorch.attacks.registry import make_attack

    model = undefended()
    x, y = held_out(96)
    loader = DataLoader(TensorDataset(x, y), batch_size=32)  # 3 batches
    attacks = lambda: {"fgsm": make_attack("fgsm", 0.05),  # noqa: E731
                       "pgd": make_attack("pgd", 0.05, steps=3)}
    whole = evaluate_attacks(model, loader, attacks(), 0.05, seed=3)

    class Dies:  # the process is killed while attacking the second batch
        calls = 0

        def __call__(self, model: nn.Module, images: Tensor, labels: Tensor) -> Tensor:
            Dies.calls += 1
            if Dies.calls == 2:
                raise KeyboardInterrupt
            return make_attack("pgd", 0.05, steps=3)(model, images, labels)

    journal = tmp_path / "eval.journal.jsonl"
    with pytest.raises(KeyboardInterrupt):
        evaluate_attacks(model, loader, {**attacks(), "pgd": Dies()}, 0.05, seed=3,
                         journal=journal, journal_key="k")
    recs = [json.loads(line) for line in journal.read_text().splitlines()]
    # batch 0: FGSM's line, then the finished batch; batch 1: FGSM's line (PGD was killed)
    assert [(r.get("batch"), r.get("partial"), r.get("attack")) for r in recs] == [
        (None, 0, "fgsm"), (0, None, None), (None, 1, "fgsm")]
    with open(journal, "a") as f:
        f.write('{"key": "k", "batch": 2, "n"')  # a line torn by the kill is skipped
    fgsm_calls = []

    def counted_fgsm(model: nn.Module, images: Tensor, labels: Tensor) -> Tensor:
        fgsm_calls.append(len(images))
        return make_attack("fgsm", 0.05)(model, images, labels)

    lines = []
    resumed = evaluate_attacks(model, loader, {**attacks(), "fgsm": counted_fgsm}, 0.05, seed=3,
                               journal=journal, journal_key="k", log=lines.append)
    assert resumed["resumed_batches"] == 1 and resumed["resumed_attacks"] == 1
    assert len(fgsm_calls) == 1  # only batch 2's: batch 1's FGSM came from the journal
    assert any("after 1 finished batches and 1 attack(s) of 1 unfinished batch(es)" in line
               for line in lines), lines
    assert any(str(journal) in line and "damaged" in line for line in lines), lines
    for key in ("n", "clean_acc", "robust_acc"):
        assert resumed[key] == whole[key], key
    assert {a: v["acc"] for a, v in resumed["attacks"].items()} == \
        {a: v["acc"] for a, v in whole["attacks"].items()}
    assert {a: v["n_attacked"] for a, v in resumed["attacks"].items()} == \
        {a: v["n_attacked"] for a, v in whole["attacks"].items()}
    # the torn fragment stays on its own line: the records written after it parse
    text = journal.read_text().splitlines()
    assert text[3] == '{"key": "k", "batch": 2, "n"'
    assert all(json.loads(line)["key"] == "k" for line in text[4:])
    # another key (e.g. another checkpoint or ε) reuses nothing
    with pytest.warns(UserWarning, match="skipped 1 damaged line"):  # no log: a warning
        fresh = evaluate_attacks(model, loader, attacks(), 0.05, seed=3, journal=journal,
                                 journal_key="other")
    assert fresh["resumed_batches"] == 0 and fresh["robust_acc"] == whole["robust_acc"]


@pytest.mark.parametrize("damage", ["random bytes", "missing fields", "wrong types"])
def test_a_damaged_journal_line_is_skipped_with_a_warning(tmp_path, damage):
    """64 random bytes (not UTF-8), a well-formed record without its counts, or with counts
    of the wrong type: skipped with a warning naming the file; the batch is redone and the
    numbers are those of a fresh evaluation."""
    from digits_models import undefended
    from sstorch.attacks.registry import make_attack

    model = undefended()
    x, y = held_out(64)
    loader = DataLoader(TensorDataset(x, y), batch_size=32)  # 2 batches
    attacks = lambda: {"fgsm": make_attack("fgsm", 0.05)}  # noqa: E731
    whole = evaluate_attacks(model, loader, attacks(), 0.05, seed=1)
    journal = tmp_path / "eval.journal.jsonl"
    evaluate_attacks(model, DataLoader(TensorDataset(x[:32], y[:32]), batch_size=32),
                     attacks(), 0.05, seed=1, journal=journal, journal_key="k")
    good = journal.read_text()  # batch 0, finished
    if damage == "random bytes":
        journal.write_bytes(good.encode() + torch.randint(0, 256, (64,),
                            generator=torch.Generator().manual_seed(0)).to(torch.uint8)
                            .numpy().tobytes() + b"\xff\xfe")
    elif damage == "missing fields":
        journal.write_text(good + json.dumps({"key": "k", "batch": 1, "n": 32}) + "\n")
    else:
        journal.write_text(good + json.dumps({"key": "k", "batch": 1, "n": 32, "clean": "x",
                                              "robust": 1, "clean_seconds": 0.1, "hits": {},
                                              "seconds": {}, "tried": {}}) + "\n")
    lines: list[str] = []
    resumed = evaluate_attacks(model, loader, attacks(), 0.05, seed=1, journal=journal,
                               journal_key="k", log=lines.append)
    warnings = [line for line in lines if line.startswith("warning: ")]
    assert len(warnings) == 1 and str(journal) in warnings[0], lines
    assert resumed["resumed_batches"] == 1  # batch 0 from the journal, batch 1 redone
    for key in ("n", "clean_acc", "robust_acc"):
        assert resumed[key] == whole[key], key
    # the record written after the damage is on a line of its own and readable
    last = journal.read_bytes().split(b"\n")[-2]
    assert json.loads(last)["batch"] == 1


def test_eval_run_removes_its_journal_when_done(run_dir, tmp_path):
    out = tmp_path / "e"
    r = _eval(run_dir, "--out", str(out))
    assert r["resumed_batches"] == 0 and not (out / "eval.journal.jsonl").exists()


def test_eval_run_resumes_after_the_attacks_without_redoing_the_eps_sweep(
        run_dir, tmp_path, monkeypatch, capsys):
    """A kill during the sanity checks keeps the attacks and the ε sweep: the rerun takes both
    from the journal and writes the same eval.json as an uninterrupted run."""
    import sstorch.eval.run as ev

    whole = _eval(run_dir, "--out", str(tmp_path / "whole"))
    out = tmp_path / "e"
    real_sanity, real_sweep = ev.sanity_checks, ev.pgd_sweep

    def killed(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(ev, "sanity_checks", killed)
    with pytest.raises(KeyboardInterrupt):
        _eval(run_dir, "--out", str(out))
    lines = [json.loads(x) for x in (out / "eval.journal.jsonl").read_text().splitlines()]
    lines = [x for x in lines if "partial" not in x]  # the per-attack lines of the batch
    assert [x.get("phase") for x in lines] == [None, "eps_sweep"]  # 100 images: one batch
    assert lines[1]["value"] == whole["eps_sweep"]

    def no_sweep(*a, **k):
        raise AssertionError("the ε sweep ran again")

    monkeypatch.setattr(ev, "sanity_checks", real_sanity)
    monkeypatch.setattr(ev, "pgd_sweep", no_sweep)
    capsys.readouterr()
    r = _eval(run_dir, "--out", str(out))
    log = capsys.readouterr().out
    assert "resuming the attacks after 1 finished batches" in log
    assert "eps_sweep: taken from the journal" in log
    assert r["resumed_batches"] == 1 and not (out / "eval.journal.jsonl").exists()
    for key in ("clean_acc", "robust_acc", "eps_sweep", "sanity", "certified"):
        assert r[key] == whole[key], key
    assert r["eps_sweep_seconds"] == lines[1]["seconds"]

    # A sweep over other radii is not taken from a journal line written for the default ones.
    monkeypatch.setattr(ev, "pgd_sweep", real_sweep)
    monkeypatch.setattr(ev, "sanity_checks", killed)
    with pytest.raises(KeyboardInterrupt):
        _eval(run_dir, "--out", str(out))
    swept = []
    monkeypatch.setattr(ev, "pgd_sweep", lambda m, ld, eps, **k: swept.append(eps) or
                        real_sweep(m, ld, eps, **k))
    monkeypatch.setattr(ev, "sanity_checks", real_sanity)
    r = _eval(run_dir, "--out", str(out), "--eps-sweep", "0,0.05")
    assert swept == [[0.0, 0.05]] and [p["eps"] for p in r["eps_sweep"]] == [0.0, 0.05]


def test_journal_key_ignores_modules_evaluation_never_imports(tmp_path):
    """Editing the sweep or training code keeps a half-finished evaluation resumable; editing an
    attack does not. The excluded modules are really out of evaluation's reach: no other sstorch
    module imports them, even lazily inside a function."""
    import ast

    from sstorch.eval.run import _NOT_EVALUATION, _package_digest

    pkg = Path(sstorch.__file__).resolve().parent
    for name in ("attacks/apgd.py", "experiments/sweep.py", "training/loop.py"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("x = 1\n")
    before = _package_digest(tmp_path)
    (tmp_path / "experiments/sweep.py").write_text("x = 2\n")
    (tmp_path / "training/loop.py").write_text("x = 2\n")
    assert _package_digest(tmp_path) == before
    (tmp_path / "attacks/apgd.py").write_text("x = 2\n")
    changed = _package_digest(tmp_path)
    assert changed != before
    (tmp_path / "attacks/apgd.py").rename(tmp_path / "attacks/apgd_moved.py")  # a move alone
    assert _package_digest(tmp_path) == changed
    excluded = {n.removesuffix(".py") for n in _NOT_EVALUATION}
    checked = 0
    for path in pkg.rglob("*.py"):
        rel = path.relative_to(pkg)
        if rel.parts[0] in _NOT_EVALUATION:
            continue
        checked += 1
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                mods = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            else:
                continue
            bad = {m for m in mods if m.startswith("sstorch.") and m.split(".")[1] in excluded}
            assert not bad, f"{rel} imports {bad}"
    assert checked > 15


def test_channels_last_inference_is_the_same_function_and_restores_the_layout(tmp_path):
    """Evaluation (`frozen`) re-lays CPU conv kernels channels-last: logits and input gradients
    as in the standard layout (float rounding apart), the same Parameter objects, and on exit
    the standard layout again (safetensors stores only contiguous tensors)."""
    from safetensors.torch import save_file

    from sstorch.config import VGG16Config

    torch.manual_seed(0)
    cfg = VGG16Config(structure="separable", width=0.0625, fc_hidden=32, separate_head=True)
    model = sstorch.models.build_model(cfg, 10, (1, 28, 28), [0.5], [0.25]).eval()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs
    params = list(model.parameters())
    x = torch.rand(6, 1, 28, 28, requires_grad=True)
    ref = model(x)
    (ref_g,) = torch.autograd.grad(ref.logsumexp(1).sum(), x)
    with frozen(model):
        assert all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in convs)
        assert all(not m.weight.is_contiguous() for m in convs[1:])  # the first has 1 channel
        assert list(model.parameters()) == params and all(
            a is b for a, b in zip(model.parameters(), params, strict=True))
        y = model(x)
        (g,) = torch.autograd.grad(y.logsumexp(1).sum(), x)
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(g, ref_g, atol=1e-6, rtol=1e-4)
    assert all(m.weight.is_contiguous() for m in convs)
    assert all(p.requires_grad for p in model.parameters())
    save_file({k: v for k, v in model.state_dict().items()}, str(tmp_path / "w.safetensors"))
    with frozen(model, channels_last=False):
        assert all(m.weight.is_contiguous() for m in convs)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))  # nothing 4-D: nothing changes
    before = [t.data_ptr() for t in mlp.parameters()]
    with channels_last_inference(mlp):
        assert [t.data_ptr() for t in mlp.parameters()] == before
