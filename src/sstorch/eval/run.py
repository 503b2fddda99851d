r"""Robustness evaluation the field trusts: an attack ensemble, sanity checks, a certificate.

``sstorch eval RUN_DIR`` rebuilds a trained run's model, loads ``best.safetensors`` and
measures, on the full test set unless ``--n`` says otherwise:

* **clean and robust accuracy** under an ensemble of L∞ attacks (``--attacks``) at radius ε
  (pixel scale, images in ``[0, 1]``). An example counts as robust only if it survives *every*
  attack: ``robust = (1/n) Σ_i 1[f(x_i) = y_i ∧ ∀a: f(a(x_i)) = y_i]`` — the per-example worst
  case, never the best single attack's average. Fast path (default): each attack runs only on
  the examples still standing (clean-correct and not broken by an earlier attack), so an
  attack's reported ``acc`` is the accuracy *after attacks 1..k* in the given order;
  ``fast=False`` runs each attack on all clean-correct examples (stand-alone accuracies).
* an **ε sweep** with PGD-20, and the **sanity checks** of Carlini et al. 2019 ("On Evaluating
  Adversarial Robustness", arXiv 1902.06705), each a :class:`SanityCheck` with numbers, see
  :func:`sanity_checks`. A defence that masks gradients fails at least one of them.
* a **certified L2 radius** from a global Lipschitz bound when the network is a chain of
  Linear / SeparableLinear layers and 1-Lipschitz activations (:func:`lipschitz_bound`,
  :func:`certify`). For logits ``z = f(x)`` with ``‖f(x) − f(x')‖₂ ≤ L‖x − x'‖₂`` the margin
  ``m(x) = z_y − max_{j≠y} z_j`` changes by at most ``√2·L·‖δ‖₂`` (``‖e_y − e_j‖₂ = √2``), so
  the prediction cannot change while ``‖δ‖₂ < m(x) / (√2 L)``. Radii are L2 norms in *pixel*
  space (``[0, 1]`` inputs, before the model's normalization).

Results go to ``eval.json`` (machine-readable, read by the report) and ``eval.md``.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from sstorch.config import Config, config_from_dict, load_config
from sstorch.eval.certify import certify, lipschitz_bound
from sstorch.eval.common import Attack, _check_eps, _make_attack, _subloader
from sstorch.eval.journal import _append_journal, _journal_lines
from sstorch.eval.sanity import LARGE_EPS, SanityCheck, default_sweep, sanity_checks
from sstorch.eval.worst_case import evaluate_attacks, pgd_sweep
from sstorch.io.checkpoint import CheckpointError, load_checkpoint, read_metadata
from sstorch.io.fsutil import (
    FileSystemError,
    atomic_write_text,
    expand_path,
    fs_error,
    lock_dir,
    remove_stale_temps,
)
from sstorch.io.provenance import code_version, machine_description
from sstorch.models import ImageClassifier
from sstorch.structure.stats import layer_stats

__all__ = [
    "DEFAULT_ATTACKS", "LARGE_EPS", "SanityCheck", "certify", "default_sweep",
    "evaluate_attacks", "evaluate_run", "lipschitz_bound", "load_run", "main_eval",
    "parse_attacks", "pgd_sweep", "render_eval_markdown", "sanity_checks",
]

DEFAULT_ATTACKS = ("clean", "fgsm", "pgd", "cw", "autoattack")


# --------------------------------------------------------------------------- runs


def load_run(target: str | os.PathLike, device: torch.device | str = "cpu"
             ) -> tuple[Config, ImageClassifier, Path, Path]:
    """``(config, model with weights, checkpoint, run_dir)`` for a run directory or checkpoint.

    A run directory needs ``config.yaml`` and ``best.safetensors`` (``last.safetensors`` when
    no best was kept); a checkpoint file carries its config in its metadata.

    Raises:
        FileNotFoundError: no such path, no config, or no checkpoint in the directory.
        CheckpointError: the checkpoint is unreadable or its weights do not fit the config.
    """
    from sstorch.data import DATASET_INFO, canonical_name
    from sstorch.models import build_model

    path = Path(target)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; pass a run directory made by `sstorch "
                                "train` or a .safetensors checkpoint")
    if path.is_dir():
        run_dir = path
        cfg_path = path / "config.yaml"
        if not cfg_path.is_file():
            raise FileNotFoundError(f"{cfg_path} not found; is {path} a run directory made by "
                                    "`sstorch train`?")
        ckpt = next((path / f for f in ("best.safetensors", "last.safetensors")
                     if (path / f).is_file()), None)
        if ckpt is None:
            raise FileNotFoundError(f"no checkpoint in {path} (looked for best.safetensors and "
                                    "last.safetensors); train or resume the run first, or pass "
                                    "a checkpoint file")
        cfg, source = load_config(cfg_path), str(cfg_path)
    else:
        run_dir, ckpt = path.parent, path
        tree = read_metadata(ckpt).get("config")
        if isinstance(tree, dict):
            source = f"the metadata of {ckpt}"
            cfg = config_from_dict(tree, source)
        elif (path.parent / "config.yaml").is_file():
            cfg, source = load_config(path.parent / "config.yaml"), str(path.parent / "config.yaml")
        else:
            raise FileNotFoundError(f"{ckpt} holds no config and there is no config.yaml next "
                                    "to it; evaluate its run directory instead")
    info = DATASET_INFO[canonical_name(cfg.data.name)]
    model = build_model(cfg.model, info.num_classes, info.image_shape, info.mean, info.std)
    try:
        load_checkpoint(ckpt, model, restore_rng=False, map_location="cpu")
    except CheckpointError as exc:
        raise CheckpointError(f"{exc} (model built from {source})") from exc
    return cfg, model.to(device).eval(), ckpt, run_dir


def _batch_size(device: torch.device, image_shape: Sequence[int]) -> int:
    """1000 on CPU, 4096 on CUDA for images up to 32×32×3; ÷16 for larger images."""
    small = math.prod(image_shape) <= 3 * 32 * 32
    return (4096 if small else 256) if device.type == "cuda" else (1000 if small else 64)


# Modules that evaluation never imports (training, orchestration, export, benchmarks): editing
# them cannot change an evaluation's numbers, so they stay out of the journal key. A new module is
# in the key until it is listed here.
_NOT_EVALUATION = frozenset({"__main__.py", "cli.py", "experiments", "export", "training"})


def _package_digest(root: Path | None = None) -> str:
    """SHA-256 over the source of every sstorch module evaluation can run: all ``*.py`` files of
    the package except those under ``_NOT_EVALUATION``, as the sorted multiset of their contents'
    digests. Changes with that code, not with commits that touch only docs, results, tests,
    training or the sweep, and not when a module only moves or is renamed."""
    root = root or Path(__file__).resolve().parents[1]
    digests = sorted(hashlib.sha256(path.read_bytes()).hexdigest()
                     for path in root.rglob("*.py")
                     if path.relative_to(root).parts[0] not in _NOT_EVALUATION)
    return hashlib.sha256("\n".join(digests).encode()).hexdigest()


# The source this process loaded (computed at import, so a module edited on disk while a long
# sweep runs cannot lend its digest to results of the code in memory).
_LOADED_DIGEST = _package_digest()


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def parse_attacks(spec: str | Sequence[str]) -> list[str]:
    """``"clean,fgsm,pgd"`` → names, checked against the registry (unknown → ValueError)."""
    names = [s.strip().lower() for s in (spec.split(",") if isinstance(spec, str) else spec)]
    names = [s for s in names if s]
    if not names:
        raise ValueError("--attacks is empty; e.g. --attacks clean,fgsm,pgd,cw,autoattack")
    from sstorch.attacks.registry import ATTACKS

    choices = ["clean", *ATTACKS]
    for s in names:
        if s not in choices:
            raise ValueError(f"unknown attack {s!r} in --attacks; choose from "
                             f"{', '.join(choices)}")
    return list(dict.fromkeys(names))


def evaluate_run(target: str | os.PathLike, attacks: str | Sequence[str] = DEFAULT_ATTACKS,
                 eps: float | None = None, eps_sweep: Sequence[float] | None = None,
                 n: int | None = None, batch_size: int | None = None, seed: int = 0,
                 out: str | os.PathLike | None = None, device: str = "auto",
                 sanity_n: int = 1000, square_n: int = 200, square_queries: int = 5000,
                 fast: bool = True,
                 data_root: str | None = None,
                 attack_kwargs: dict[str, dict[str, Any]] | None = None,
                 log: Callable[[str], None] = print) -> dict[str, Any]:
    """Evaluate a run end to end and write ``eval.json`` and ``eval.md``; return the JSON dict.

    ``eps`` defaults to the run's ``attack.eps``; the sweep to :func:`default_sweep`; the
    sanity checks use the first ``sanity_n`` evaluated examples (Square the first
    ``square_n``); the attack ensemble, sweep and certificate use all ``n`` (default: the whole
    test split, ignoring the run's ``data.test_subset``). ``attack_kwargs`` passes constructor
    arguments per attack name, e.g. ``{"pgd": {"steps": 50, "restarts": 3}}``.
    """
    from sstorch.data import DATASET_INFO, build_datasets, canonical_name

    names = parse_attacks(attacks)
    if eps is not None:
        eps = _check_eps(eps)
    sweep_eps = None if eps_sweep is None else [_check_eps(e, "--eps-sweep value")
                                                  for e in eps_sweep]
    for what, v in (("--n", n), ("--batch-size", batch_size), ("--sanity-n", sanity_n),
                    ("--square-n", square_n), ("--square-queries", square_queries)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ValueError(f"{what} must be an integer ≥ 1, got {v!r}")
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device=cuda but no CUDA GPU is available; use --device cpu")
    dev = torch.device("cuda" if device != "cpu" and torch.cuda.is_available() else "cpu")

    cfg, model, ckpt, run_dir = load_run(target, dev)
    eps = cfg.attack.eps if eps is None else eps
    info = DATASET_INFO[canonical_name(cfg.data.name)]
    _, _, test = build_datasets(cfg.data.name, root=data_root or cfg.data.root,
                                val_size=cfg.data.val_size, seed=cfg.seed, augment=False,
                                download=cfg.data.download)
    ds: Dataset = test if n is None or n >= len(test) else Subset(test, range(n))
    bs = batch_size or _batch_size(dev, info.image_shape)
    loader = DataLoader(ds, batch_size=bs, shuffle=False,
                        num_workers=cfg.data.num_workers)
    log(f"evaluating {ckpt} on {len(ds)} {cfg.data.name} test images, L∞ ε={eps:g}, "
        f"attacks {','.join(names)}, device {dev}")

    kw = attack_kwargs or {}
    unknown = set(kw) - set(names)
    if unknown:
        raise ValueError(f"attack_kwargs names attacks not in the list {names}: {sorted(unknown)}")
    objs = {a: _make_attack(a, eps, seed, **kw.get(a, {})) for a in names if a != "clean"}
    out_dir = Path(out) if out is not None else run_dir
    if out_dir.exists() and not out_dir.is_dir():
        raise FileSystemError(None, f"{out_dir}: exists and is not a directory — give a "
                              "directory for --out (eval.json and eval.md go into it)", out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise fs_error(exc, out_dir) from exc
    with lock_dir(out_dir, "sstorch eval"):
        remove_stale_temps(out_dir)
        return _evaluate_into(out_dir, cfg, model, ckpt, run_dir, loader, ds, names, objs, kw,
                              eps, sweep_eps, bs, seed, fast, dev, sanity_n, square_n,
                              square_queries, log)


def _journal_key(ckpt: Path, params: dict[str, Any]) -> str:
    """SHA-256 of everything that decides a batch's outcome: the checkpoint's bytes, the
    evaluation's parameters and the evaluation code loaded (:data:`_LOADED_DIGEST`)."""
    try:
        ckpt_digest = hashlib.sha256(Path(ckpt).read_bytes()).hexdigest()
    except OSError as exc:
        raise fs_error(exc, ckpt) from exc
    return hashlib.sha256(json.dumps({"checkpoint": ckpt_digest, **params,
                                      "code": _LOADED_DIGEST},
                                     sort_keys=True, default=str).encode()).hexdigest()


def _attack_table(res: dict[str, Any], names: list[str], objs: dict[str, Attack]
                  ) -> dict[str, dict[str, Any]]:
    """``eval.json``'s ``attacks``: per attack acc, seconds, n_attacked, and its iterations
    when the attack exposes them (PGD: ``steps``, ``restarts``)."""
    table = {"clean": {"acc": res["clean_acc"], "seconds": res["clean_seconds"],
                       "n_attacked": res["n"]}} if "clean" in names else {}
    table.update(res["attacks"])
    for a, obj in objs.items():
        inner = getattr(obj, "attack", obj)
        for key in ("steps", "restarts"):
            value = getattr(inner, key, None)
            if isinstance(value, int):
                table[a][key] = value
    return table


def _evaluate_into(out_dir: Path, cfg: Config, model: nn.Module, ckpt: Path, run_dir: Path,
                   loader: DataLoader, ds: Dataset, names: list[str], objs: dict[str, Attack],
                   kw: dict[str, dict[str, Any]], eps: float, sweep_eps: list[float] | None,
                   bs: int, seed: int, fast: bool, dev: torch.device, sanity_n: int,
                   square_n: int, square_queries: int,
                   log: Callable[[str], None]) -> dict[str, Any]:
    """The body of :func:`evaluate_run` once ``out_dir`` is locked."""
    from sstorch.structure.summary import summary

    # An interrupted evaluation resumes from here, attack by attack, as long as nothing that
    # decides a batch's outcome changed (the key); eval.json replaces the journal at the end.
    journal = out_dir / "eval.journal.jsonl"
    key = _journal_key(ckpt, {
        "dataset": cfg.data.name, "n": len(ds), "batch_size": bs, "attacks": names,
        "attack_kwargs": kw, "eps": eps, "seed": seed, "fast": fast, "device": dev.type})
    res = evaluate_attacks(model, loader, objs, eps, seed=seed, device=dev, fast=fast,
                           progress=True, journal=journal, journal_key=key, log=log)
    table = _attack_table(res, names, objs)
    # The ε sweep and the sanity checks are journalled too, each as one line under the same key
    # with its own parameters (not in the key), so a crash in the sanity checks keeps the sweep.
    phases = {r["phase"]: r for r in _journal_lines(journal, key)
              if "phase" in r and "params" in r}

    def phase(name: str, params: dict[str, Any], fn: Callable[[], Any]) -> tuple[Any, float]:
        rec = phases.get(name)
        if rec is not None and rec["params"] == json.loads(json.dumps(params)):
            log(f"{name}: taken from the journal ({rec['seconds']:.0f} s when it ran)")
            return rec["value"], float(rec["seconds"])
        t0 = time.perf_counter()
        value = fn()
        secs = time.perf_counter() - t0
        _append_journal(journal, {"key": key, "phase": name, "params": params, "value": value,
                                  "seconds": secs})
        return value, secs

    sweep_values = list(sweep_eps or default_sweep(eps))
    sweep, sweep_secs = phase("eps_sweep", {"eps": sweep_values}, lambda: pgd_sweep(
        model, loader, sweep_values, seed=seed, device=dev))
    check_dicts, sanity_secs = phase(
        "sanity", {"sanity_n": sanity_n, "square_n": square_n, "square_queries": square_queries},
        lambda: [asdict(c) for c in sanity_checks(
            model, _subloader(loader, sanity_n), eps, sweep=sweep, square_n=square_n,
            square_queries=square_queries, seed=seed, device=dev)])
    checks = [SanityCheck(**c) for c in check_dicts]
    cert = certify(model, loader, device=dev)  # one clean pass: not worth a journal line
    cert.pop("radii", None)
    s = summary(model)
    kappas = [st.kappa for st in layer_stats(model)]
    result = {
        "run_dir": str(run_dir), "checkpoint": str(ckpt), "dataset": cfg.data.name,
        "model": cfg.model.name, "structure": cfg.model.structure, "n": res["n"], "eps": eps,
        "norm": "Linf", "params": s.total_params, "nnz": s.total_nnz,
        "compression": s.compression, "kappa": math.prod(kappas) if kappas else None,
        "clean_acc": res["clean_acc"], "attacks": table, "robust_acc": res["robust_acc"],
        "fast_path": fast, "resumed_batches": res["resumed_batches"],
        "resumed_attacks": res["resumed_attacks"],
        "resumed_seconds": res["resumed_seconds"],
        "eps_sweep": sweep, "eps_sweep_seconds": sweep_secs,
        "sanity": check_dicts, "sanity_seconds": sanity_secs,
        "sanity_n": min(sanity_n, res["n"]), "certified": cert, "seed": seed,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_description(dev), "code": code_version(),
    }
    result = _json_safe(result)
    atomic_write_text(out_dir / "eval.json",
                      json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    atomic_write_text(out_dir / "eval.md", render_eval_markdown(result))
    journal.unlink(missing_ok=True)
    log(f"clean {result['clean_acc']:.4f}, robust {result['robust_acc']:.4f} (ε={eps:g}); "
        f"sanity {sum(c.passed for c in checks)}/{len(checks)} passed; "
        f"results in {out_dir / 'eval.json'} and eval.md")
    for c in checks:
        if not c.passed:
            log(f"  sanity check FAILED: {c.name}: {c.detail}")
    return result


def render_eval_markdown(r: dict[str, Any]) -> str:
    """``eval.md``: the numbers of ``eval.json`` as tables a reviewer reads."""
    def f(v: Any, nd: int = 4) -> str:
        return "–" if v is None else f"{v:.{nd}f}" if isinstance(v, float) else str(v)

    order = ("cumulative: accuracy after attacks 1..k, each run only on the survivors"
             if r.get("fast_path") else "stand-alone accuracy of each attack")
    lines = [
        f"# Robustness evaluation: {r['model']} ({r['structure']})"
        f" on {r['dataset']}", "",
        f"checkpoint `{r['checkpoint']}`; {r['n']} test images; threat model L∞, ε = {r['eps']:g}"
        " (pixel scale, images in [0, 1]); seed " f"{r['seed']}; {r['date']}; {r['machine']}", "",
        f"params {r['params']:,}, nnz {r['nnz']:,}, compression {f(r['compression'], 1)}x, "
        f"κ = Π κ(W) over separable layers: {f(r['kappa'], 3)}"
        + (" (none, or ∞: a rank-deficient layer)" if r["kappa"] is None else ""), "",
        f"## Accuracy ({order})", "", "| attack | accuracy | seconds | attacked |",
        "| --- | --- | --- | --- |",
    ]
    for name, a in r["attacks"].items():
        lines.append(f"| {name} | {f(a['acc'])} | {f(a['seconds'], 2)} | {a.get('n_attacked')} |")
    lines += [f"| **robust (worst case per example)** | **{f(r['robust_acc'])}** | | |", "",
              "## ε sweep", "", "| ε | attack | accuracy |", "| --- | --- | --- |"]
    lines += [f"| {e['eps']:g} | {e['attack']} | {f(e['acc'])} |" for e in r["eps_sweep"]]
    passed = sum(c["passed"] for c in r["sanity"])
    lines += ["", f"## Sanity checks (Carlini et al. 2019): {passed}/{len(r['sanity'])} passed",
              "", f"On the first {r.get('sanity_n')} images.", "",
              "| check | result | numbers |", "| --- | --- | --- |"]
    lines += [f"| {c['name']} | {'PASS' if c['passed'] else '**FAIL**'} | "
              f"{c['detail'].replace('|', chr(92) + '|')} |" for c in r["sanity"]]
    c = r["certified"]
    lines += ["", "## Certified L2 robustness (Lipschitz bound)", "",
              "Radius ρ = margin / (√2·L), L2 norm in pixel space ([0, 1] inputs): no "
              "perturbation with ‖δ‖₂ < ρ changes the prediction.", "",
              f"Bound: {c.get('detail', '')} = {f(c['lipschitz'], 4)}; median radius "
              f"{f(c['radius_median'], 4)}", "", "| L2 radius | certified accuracy |",
              "| --- | --- |"]
    lines += [f"| {k} | {f(v)} |" for k, v in c["certified_acc"].items()]
    return "\n".join(lines) + "\n"


def _floats(text: str) -> list[float]:
    try:
        return [float(t) for t in text.split(",") if t.strip()]
    except ValueError as exc:
        raise ValueError(f"--eps-sweep must be comma-separated numbers, got {text!r}") from exc


def main_eval(argv: list[str]) -> int:
    """``sstorch eval RUN_DIR|CHECKPOINT [options]``; returns the exit status."""
    p = argparse.ArgumentParser(
        prog="sstorch eval",
        description="Evaluate a trained run: clean and worst-case robust accuracy under an "
        "L∞ attack ensemble, an ε sweep, the Carlini et al. 2019 sanity checks and a "
        "certified L2 radius. Writes eval.json and eval.md into the run directory.")
    p.add_argument("target", metavar="RUN_DIR|CHECKPOINT")
    p.add_argument("--attacks", default=",".join(DEFAULT_ATTACKS),
                   help="comma-separated, in order (default: %(default)s)")
    p.add_argument("--eps", type=float, default=None,
                   help="L∞ radius in pixel scale (default: the run's attack.eps)")
    p.add_argument("--eps-sweep", type=_floats, default=None,
                   help="ε values for the PGD sweep (default: 0, ε/2, ε, 2ε, 3ε)")
    p.add_argument("--n", type=int, default=None, help="first N test images (default: all)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="default: 1000 on CPU, 4096 on CUDA (less for large images)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="output directory (default: the run directory)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--sanity-n", type=int, default=1000,
                   help="images for the sanity checks (default: %(default)s)")
    p.add_argument("--square-n", type=int, default=200,
                   help="images for the Square (black-box) check (default: %(default)s)")
    p.add_argument("--square-queries", type=int, default=5000,
                   help="Square's query budget per image (default: %(default)s)")
    p.add_argument("--no-fast-path", action="store_true",
                   help="run every attack on every clean-correct image (stand-alone accuracies)")
    p.add_argument("--data-root", default=None, help="dataset root (default: the run's)")
    args = p.parse_args(argv)
    out = None if args.out is None else expand_path(args.out, "--out")
    root = None if args.data_root is None else expand_path(args.data_root, "--data-root")
    evaluate_run(expand_path(args.target, "RUN_DIR"), attacks=args.attacks, eps=args.eps,
                 eps_sweep=args.eps_sweep, n=args.n, batch_size=args.batch_size, seed=args.seed,
                 out=out, device=args.device, sanity_n=args.sanity_n, square_n=args.square_n,
                 square_queries=args.square_queries,
                 fast=not args.no_fast_path, data_root=root)
    return 0
