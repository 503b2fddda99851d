"""The evaluation journal: one JSON line per finished batch or attack, so an interrupted
evaluation resumes where it stopped (:func:`sstorch.eval.worst_case.evaluate_attacks`)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sstorch.io.fsutil import (
    append_line,
    fs_error,
)

_BATCH_FIELDS = {"batch": int, "n": int, "clean": int, "robust": int, "clean_seconds": float,
                 "hits": dict, "seconds": dict, "tried": dict}
_PARTIAL_FIELDS = {"partial": int, "k": int, "attack": str, "n": int, "correct": str,
                   "robust": str, "clean_seconds": float, "hits": dict, "seconds": dict,
                   "tried": dict}


def _journal_lines(path: Path, key: str, warn: Callable[[str], None] | None = None
                   ) -> list[dict[str, Any]]:
    """Records of ``path`` tagged ``key``, in order.

    Records of other keys are skipped silently; a damaged line (bad UTF-8, JSON cut by a kill,
    not an object) is skipped and reported through ``warn`` naming the file, so its work is
    simply redone.
    """
    if not path.is_file():
        return []
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise fs_error(exc, path) from exc
    out, damaged = [], 0
    for line in raw.split(b"\n"):
        if not line.strip():
            continue
        try:
            rec = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            damaged += 1
            continue
        if not isinstance(rec, dict):
            damaged += 1
        elif rec.get("key") == key:
            out.append(rec)
    if damaged and warn is not None:
        warn(f"{path}: skipped {damaged} damaged line(s) (cut by a kill or not "
             "written by sstorch); their work is done again")
    return out


def _well_formed(rec: dict[str, Any], spec: dict[str, type], names: Sequence[str]) -> bool:
    """``rec`` has every field of ``spec`` with its type, and per-attack dicts over ``names``."""
    for field, typ in spec.items():
        value = rec.get(field)
        ok = (isinstance(value, (int, float)) and not isinstance(value, bool) if typ is float
              else isinstance(value, typ) and not isinstance(value, bool))
        if not ok:
            return False
    per_attack = [rec[f] for f in ("hits", "seconds", "tried")]
    done = names if "batch" in spec else names[:rec["k"] + 1]
    return all(isinstance(d.get(a), (int, float)) for d in per_attack for a in done)


def _append_journal(path: Path, rec: dict[str, Any]) -> None:
    """Append one JSON line and fsync it, so a finished piece survives a crash right after
    (:func:`sstorch.io.fsutil.append_line`: on a line of its own; a failed append leaves
    nothing)."""
    append_line(path, json.dumps(rec))


def _read_journal(path: Path, key: str, names: Sequence[str] = (),
                  warn: Callable[[str], None] | None = None
                  ) -> tuple[dict[int, dict[str, Any]], dict[int, dict[str, Any]]]:
    """``({batch: finished batch record}, {batch: furthest per-attack record})`` under ``key``.

    Phase lines, records of other keys and damaged lines are left out; a record that lacks a
    field (or is for other attacks) counts as damaged and is reported through ``warn``.
    """
    done: dict[int, dict[str, Any]] = {}
    partial: dict[int, dict[str, Any]] = {}
    bad = 0
    for r in _journal_lines(path, key, warn):
        if "phase" in r:
            continue
        if "batch" in r:
            if _well_formed(r, _BATCH_FIELDS, names):
                done[r["batch"]] = r
            else:
                bad += 1
        elif "partial" in r:
            if (_well_formed(r, _PARTIAL_FIELDS, names) and 0 <= r["k"] < len(names)
                    and names[r["k"]] == r["attack"]):
                if r["k"] >= partial.get(r["partial"], {"k": -1})["k"]:
                    partial[r["partial"]] = r
            else:
                bad += 1
        else:
            bad += 1
    if bad and warn is not None:
        warn(f"{path}: skipped {bad} record(s) with missing or wrong fields; their "
             "work is done again")
    return done, {b: r for b, r in partial.items() if b not in done}


def _mask_hex(mask: Tensor) -> str:
    """A bool vector as hex (bit-packed, big-endian within each byte)."""
    return np.packbits(mask.cpu().numpy().astype(np.uint8)).tobytes().hex()


def _hex_mask(text: str, n: int, device: torch.device) -> Tensor | None:
    """Inverse of :func:`_mask_hex`; None if ``text`` does not hold ``n`` bits."""
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        return None
    if len(raw) != (n + 7) // 8:
        return None
    bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8))[:n].astype(bool)
    return torch.from_numpy(bits.copy()).to(device)
