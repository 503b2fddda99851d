"""The sweep's tables: the CSVs, the markdown results table, and the report that writes them.

Accuracies are means ± sample standard deviations over seeds (:mod:`~sstorch.experiments.stats`).
:func:`write_report` rebuilds the CSVs, the figures and the ``sweep:table`` / ``sweep:claims``
sections of the results markdown from every evaluated run and record.
"""

from __future__ import annotations

import csv
import math
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sstorch.experiments.claims import CLAIMS_BEGIN, CLAIMS_END, render_claims
from sstorch.experiments.collect import collect, collect_training
from sstorch.experiments.manifest import Manifest
from sstorch.experiments.plots import draw_figures
from sstorch.experiments.stats import fmean, mean_std
from sstorch.io.fsutil import atomic_write

CSV_COLUMNS = ["method", "params", "nnz", "compression", "seed", "clean_acc", "pgd50_acc",
               "autoattack_acc", "train_seconds"]
TRAINING_COLUMNS = ["method", "seed", "state", "final_train_loss", "final_train_adv_acc",
                    "best_epoch", "best_val_clean_acc", "best_val_robust_acc", "train_seconds",
                    "train_machine"]
DETAIL_COLUMNS = ["method", "seed", "fc_compression", "log10_kappa_fc", "sanity_passed",
                  "sanity_total", "eval_n", "eval_seconds", "final_train_loss",
                  "final_train_adv_acc", "best_epoch", "best_val_clean_acc",
                  "best_val_robust_acc", "machine", "train_machine", "date"]
TABLE_BEGIN, TABLE_END = "<!-- sweep:table -->", "<!-- /sweep:table -->"



def write_csv(path: Path, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    """Write ``rows`` under the header ``columns`` (extra keys ignored), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore",
                               lineterminator="\n")
            w.writeheader()
            w.writerows(rows)

    atomic_write(path, write)


def summarize(rows: Sequence[dict[str, Any]], details: Sequence[dict[str, Any]]
              ) -> list[dict[str, Any]]:
    """One entry per method: mean and std over seeds of every metric."""
    out: dict[str, dict[str, Any]] = {}
    for r, d in zip(rows, details, strict=True):
        e = out.setdefault(r["method"], {"method": r["method"], "seeds": [], "vals": {}})
        e["seeds"].append(r["seed"])
        for k in ("params", "nnz", "compression", "clean_acc", "pgd50_acc", "autoattack_acc",
                  "train_seconds"):
            e["vals"].setdefault(k, []).append(float(r[k]))
        lk = d.get("log10_kappa_fc")
        e["vals"].setdefault("log10_kappa", []).append(math.nan if lk is None else float(lk))
        e["vals"].setdefault("sanity", []).append(f"{d['sanity_passed']}/{d['sanity_total']}")
        e["vals"].setdefault("eval_seconds", []).append(float(d["eval_seconds"]))
        e.setdefault("machines", set()).add(d.get("machine") or "?")
        e["vals"].setdefault("device", []).append(device_label(d.get("machine")))
        e["vals"].setdefault("train_device", []).append(
            device_label(d.get("train_machine") or d.get("machine")))
        e["machines"].add(d.get("train_machine") or d.get("machine") or "?")
        e.setdefault("sweeps", []).append(d.get("eps_sweep") or [])
    for e in out.values():
        e["stats"] = {k: mean_std(v) for k, v in e["vals"].items()
                      if k not in ("sanity", "device", "train_device")}
    return list(out.values())


def device_label(machine: str | None) -> str:
    """``"CPU"`` or the GPU's name, from the ``machine`` string that ``sstorch eval`` records."""
    first = (machine or "?").split(";")[0].strip()
    return "CPU" if first.startswith("CPU") else first


def _fmt_seconds(e: dict[str, Any], key: str, device_key: str, usual: str | None = None) -> str:
    """Mean seconds over seeds, one mean per device when seeds ran on different devices.

    A row whose seeds all ran on one device other than ``usual`` (the table's most common
    device for this column) names it: ``"99 (NVIDIA H200)"``.
    """
    devices = e["vals"][device_key]
    if len(set(devices)) == 1:
        mean = f"{e['stats'][key][0]:.0f}"
        return mean if devices[0] == usual or usual is None else f"{mean} ({devices[0]})"
    parts = []
    for dev in dict.fromkeys(devices):
        vals = [v for v, d in zip(e["vals"][key], devices, strict=True) if d == dev]
        parts.append(f"{fmean(vals):.0f} ({dev}, {len(vals)})")
    return " / ".join(parts)


def _fmt_acc(ms: tuple[float, float], n: int) -> str:
    mean, std = ms
    return f"{100 * mean:.2f}" + (f" ± {100 * std:.2f}" if n > 1 else "")


def render_table(summary_rows: Sequence[dict[str, Any]]) -> str:
    """The markdown results table (accuracies in %, mean ± std over seeds)."""
    head = ("| method | seeds | params | nnz | compression | clean % | PGD-50 % | AutoAttack % "
            "| log10 κ(FC) | sanity | train s | eval s |")
    lines = [head, "|" + "---|" * 12]

    def usual(device_key: str) -> str | None:
        counts = Counter(d for e in summary_rows for d in e["vals"][device_key])
        return counts.most_common(1)[0][0] if counts else None

    usual_train, usual_eval = usual("train_device"), usual("device")
    for e in summary_rows:
        s, n = e["stats"], len(e["seeds"])
        kappa = s["log10_kappa"][0]
        kappa_text = "—" if math.isnan(kappa) else "inf" if math.isinf(kappa) else f"{kappa:.1f}"
        lines.append(
            f"| {e['method']} | {n} | {s['params'][0]:,.0f} | {s['nnz'][0]:,.0f} "
            f"| {s['compression'][0]:.1f}× | {_fmt_acc(s['clean_acc'], n)} "
            f"| {_fmt_acc(s['pgd50_acc'], n)} | {_fmt_acc(s['autoattack_acc'], n)} "
            f"| {kappa_text} | {', '.join(e['vals']['sanity'])} "
            f"| {_fmt_seconds(e, 'train_seconds', 'train_device', usual_train)} "
            f"| {_fmt_seconds(e, 'eval_seconds', 'device', usual_eval)} |")
    machines = sorted({m for e in summary_rows for m in e.get("machines", ())})
    lines += ["", "Seconds are means per run (training: Σ epoch wall time incl. per-epoch "
              "validation; evaluation: everything of `sstorch eval` incl. AutoAttack, ε sweep "
              "and sanity checks); where a row's seeds ran on different devices, one mean per "
              "device (device, seeds), and a row that ran elsewhere than most names its device. "
              "Machines: " + "; ".join(machines) + "."]
    return "\n".join(lines) + "\n"


def _replace_section(text: str, begin: str, end: str, body: str) -> str:
    """``text`` with what lies between the ``begin`` and ``end`` markers replaced by ``body``."""
    if begin not in text or end not in text:
        return text
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{body}{end}{tail}"


@contextmanager
def _report_lock(m: Manifest) -> Iterator[None]:
    """One report writer at a time across workers (``fcntl.flock``; no-op without fcntl)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: workers may interleave writes
        yield
        return
    m.out_dir.mkdir(parents=True, exist_ok=True)
    with open(m.out_dir / ".report.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def write_report(m: Manifest, log: Callable[[str], None] = print) -> str | None:
    """Rebuild the CSVs, plots and the markdown table from every evaluated run.

    Workers finishing at once take turns (a file lock), so no file is half written.
    """
    with _report_lock(m):
        return _write_report(m, log)


DATASET_TITLES = {"fashion-mnist": "Fashion-MNIST", "mnist": "MNIST", "cifar10": "CIFAR-10",
                  "cifar100": "CIFAR-100", "svhn": "SVHN", "imagenet": "ImageNet"}


def figure_title(m: Manifest, details: Sequence[dict[str, Any]]) -> str:
    """``"<dataset>, L∞ attack radius of the runs, <test images>"``: the dataset of the reference
    row's config, and the test images the evaluations used (``eval_n`` of the details)."""
    from sstorch.config import load_config

    name = load_config(m.root / f"{m.reference}.yaml").data.name
    sizes = {d.get("eval_n") for d in details}
    if sizes <= {None, ""}:
        images = "full test set"
    elif len(sizes) == 1:
        images = f"first {int(next(iter(sizes))):,} test images"
    else:
        images = "full test set or a stated prefix of it (see the table)"
    return f"{DATASET_TITLES.get(name, name)}, L∞ attack radius of the runs, {images}"


def _write_report(m: Manifest, log: Callable[[str], None]) -> str | None:
    """:func:`write_report` inside the lock."""
    rows, details = collect(m, log)
    write_csv(m.csv, rows, CSV_COLUMNS)
    write_csv(m.details_csv, details, DETAIL_COLUMNS)
    if m.training_csv is not None:
        write_csv(m.training_csv, collect_training(m), TRAINING_COLUMNS)
    if not rows:
        log(f"no evaluated runs yet; wrote the empty {m.csv}")
        return None
    summary_rows = summarize(rows, details)
    table = render_table(summary_rows)
    draw_figures(summary_rows, m.figures, log, figure_title(m, details))
    if m.markdown is not None and m.markdown.is_file():
        text = _replace_section(m.markdown.read_text(), TABLE_BEGIN, TABLE_END, table)
        claims = render_claims(m.claims, summary_rows)
        m.markdown.write_text(_replace_section(text, CLAIMS_BEGIN, CLAIMS_END, claims))
    log(f"{len(rows)} runs → {m.csv}, {m.details_csv}, {m.figures}/")
    return table
