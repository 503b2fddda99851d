"""Resumable training checkpoints: one ``.safetensors`` file, written atomically.

A checkpoint holds everything needed to continue a run bit for bit — model, optimizer,
learning-rate scheduler, random number generators — plus free-form JSON (epoch, config,
metrics, best score). It is a single safetensors file: a JSON header followed by raw tensor
bytes, so reading one never executes code stored in the file.

Layout::

    tensor key         content
    model.<name>       model.state_dict()  (DDP / torch.compile wrappers removed)
    optim.<path>       tensors of optimizer.state_dict()  (momentum_buffer, exp_avg, step, …)
    sched.<path>       tensors of scheduler.state_dict(), if any
    rng.torch          torch.get_rng_state()  (uint8)
    rng.cuda.<i>       CUDA generator state of GPU i (only when CUDA was initialised)

    metadata key       content (safetensors metadata is dict[str, str])
    format_version     "1"
    sstorch            JSON: {"format_version", "torch_version", "model", "optim", "sched",
                              "rng", "extra", "sha256"}

``sha256`` maps every tensor key to the SHA-256 of its bytes; loading verifies each tensor it
reads, so a flipped bit in a correctly sized file is an error, not silently wrong weights
(checkpoints written before checksums load unverified).

Inside the JSON every tensor is replaced by a reference ``{"__tensor__": "<key>"}``, tuples by
``{"__tuple__": [...]}`` and dicts with non-string keys (the optimizer's ``state`` maps a
parameter index to its state) by ``{"__items__": [[key, value], ...]}``; scalars, step counts
and ``param_groups`` are plain JSON. NumPy's and Python's RNG states are JSON too.

Schedulers keep only what is JSON: learning-rate *lambdas* are code, so ``LambdaLR`` stores
``None`` for plain functions (and the JSON attributes of callable objects). Rebuild the
scheduler from the run's config, then :func:`load_checkpoint` restores its counters
(``last_epoch``, ``_last_lr``, …).

Writes are atomic: the file is written to a temporary file in the same directory
(:func:`sstorch.io.fsutil.atomic_write`), fsynced and ``os.replace``-d onto the target, so a crash
at any moment leaves the previous checkpoint intact (a kill can leave the temporary file:
:func:`sstorch.io.fsutil.remove_stale_temps` removes it; ``sstorch train`` does on every start).
Every failure to read — missing, truncated or corrupted file, foreign file, model or
optimizer mismatch — raises :class:`CheckpointError` with a one-line message that names the
file and says what to do.

Saving and loading live here; the nested-state codec, checksums and errors in
:mod:`sstorch.io.metadata`, the RNG states in :mod:`sstorch.io.rng`.

Example::

    save_checkpoint("runs/a/last.safetensors", model, opt, sched,
                    extra={"epoch": epoch, "config": cfg_dict, "best_acc": best})
    extra = load_checkpoint("runs/a/last.safetensors", model, opt, sched)
    start_epoch = extra["epoch"] + 1
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from sstorch.io.fsutil import FileSystemError, atomic_write, is_temp_name
from sstorch.io.metadata import (
    FORMAT_VERSION,
    MAX_LISTED,
    META_KEY,
    CheckpointCorrupted,
    CheckpointError,
    PathLike,
    decode_state,
    digest,
    encode_state,
    one_line,
    storable,
)
from sstorch.io.rng import restore_rng_state, rng_state

__all__ = [
    "FORMAT_VERSION",
    "CheckpointCorrupted",
    "CheckpointError",
    "load_checkpoint",
    "load_weights",
    "read_metadata",
    "save_checkpoint",
]


# --------------------------------------------------------------------------- helpers


def _unwrap(model: nn.Module) -> nn.Module:
    """The module inside ``DistributedDataParallel`` / ``DataParallel`` / ``torch.compile``."""
    while True:
        inner = getattr(model, "_orig_mod", None)  # torch.compile's OptimizedModule
        if not isinstance(inner, nn.Module):
            inner = getattr(model, "module", None)  # DDP, DataParallel, look-alike wrappers
            known = isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel))
            # A look-alike wraps exactly one child named `module` and holds no state itself.
            bare = list(model._modules) == ["module"] and not model._parameters and not any(
                b is not None for b in model._buffers.values()
            )
            if not isinstance(inner, nn.Module) or not (known or bare):
                return model
        model = inner


def _siblings(path: Path) -> list[Path]:
    """Other checkpoints next to ``path``, newest first."""
    try:
        found = [
            p for p in path.parent.glob("*.safetensors")
            if p.name != path.name and not is_temp_name(p.name) and p.is_file()
        ]
        return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)
    except OSError:
        return []


def _fallback(path: Path) -> str:
    others = _siblings(path)
    if others:
        return f"load {others[0]} instead"
    return "restore it from a copy"


def _corrupted(path: PathLike, exc: BaseException) -> CheckpointCorrupted:
    detail = f"the file is truncated or corrupted ({one_line(exc)})"
    return CheckpointCorrupted(
        f"cannot read checkpoint {path}: {detail}; delete it or {_fallback(Path(path))}",
        path, detail)


# --------------------------------------------------------------------------- saving


def save_checkpoint(
    path: PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    extra: dict[str, Any] | None = None,
    rng: bool = True,
) -> None:
    """Atomically write model, optimizer, scheduler, RNG states and ``extra`` to one file.

    Args:
        path: target ``.safetensors`` file; its directory must exist. An existing file is
            replaced only once the new one is completely on disk.
        model: the model; a ``DistributedDataParallel``/``DataParallel``/``torch.compile``
            wrapper is unwrapped, so keys never carry a ``module.`` prefix.
        optimizer: its ``state_dict()`` (state tensors, step counts, ``param_groups``).
        scheduler: a learning-rate scheduler; only the JSON part of its ``state_dict()`` is
            kept (lambdas are code: rebuild them from the config), with a warning for anything
            left out.
        extra: JSON-serialisable dict (epoch, config, metrics, best score), returned by
            :func:`load_checkpoint` and :func:`read_metadata`. Tuples come back as lists.
        rng: also store torch (CPU and initialised CUDA), NumPy and Python RNG states.

    Raises:
        CheckpointError: missing directory, non-JSON ``extra``, unsupported state, or a failed
            write (the previous checkpoint at ``path`` is then unchanged).
    """
    path = Path(path)
    extra = {} if extra is None else extra
    _check_target(path, extra)
    tensors: dict[str, Tensor] = {}
    doc = _describe(model, optimizer, scheduler, extra, rng, tensors)
    stored = storable(tensors)
    doc["sha256"] = {k: digest(t) for k, t in stored.items()}
    metadata = {"format_version": str(FORMAT_VERSION), META_KEY: json.dumps(doc)}
    _atomic_write(stored, metadata, path)


def _check_target(path: Path, extra: Any) -> None:
    """Raise :class:`CheckpointError` unless ``path`` can be written and ``extra`` is JSON."""
    directory = path.parent
    if not directory.is_dir():
        raise CheckpointError(
            f"cannot save checkpoint {path}: directory {directory} does not exist; create it "
            "first, e.g. Path(run_dir).mkdir(parents=True, exist_ok=True)"
        )
    if path.is_dir():
        raise CheckpointError(f"cannot save checkpoint {path}: it is a directory; give a file path")
    if not isinstance(extra, dict):
        raise CheckpointError(f"extra must be a dict, got {type(extra).__name__}")
    for key, value in extra.items():
        try:
            json.dumps(value)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(
                f"cannot save checkpoint {path}: extra[{key!r}] is not JSON-serialisable "
                f"({one_line(exc)}); convert it first (tensor.item(), dataclasses.asdict(cfg), "
                "str(path))"
            ) from exc


def _describe(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    scheduler: Any | None,
    extra: dict[str, Any],
    rng: bool,
    tensors: dict[str, Tensor],
) -> dict[str, Any]:
    """The ``sstorch`` metadata document (without ``sha256``); tensors are added to ``tensors``.

    The key order of the document and the order tensors are added are the file format's.
    """
    module = _unwrap(model)
    objects = {}
    for name, value in module.state_dict().items():
        if isinstance(value, Tensor):
            tensors[f"model.{name}"] = value
        else:  # get_extra_state() values
            objects[name] = encode_state(value, f"model.{name}", tensors, None)
    doc: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "torch_version": torch.__version__,
        "model": {"class": type(module).__name__, "objects": objects},
        "optim": None,
        "sched": None,
        "rng": None,
        "extra": extra,
    }
    if optimizer is not None:
        doc["optim"] = {
            "class": type(optimizer).__name__,
            "state": encode_state(optimizer.state_dict(), "optim", tensors, None),
        }
    if scheduler is not None:
        doc["sched"] = _scheduler_entry(scheduler, tensors)
    if rng:
        doc["rng"] = rng_state(tensors)
    return doc


def _scheduler_entry(scheduler: Any, tensors: dict[str, Tensor]) -> dict[str, Any]:
    """The scheduler's class and the JSON part of its state; warns about what is left out."""
    dropped: list[str] = []
    entry = {
        "class": type(scheduler).__name__,
        "state": encode_state(scheduler.state_dict(), "sched", tensors, dropped),
    }
    if dropped:
        warnings.warn(
            f"scheduler state entries {dropped[:MAX_LISTED]} are not JSON-serialisable and "
            "were not saved; rebuild them from the config when resuming",
            stacklevel=4,  # save_checkpoint's caller (via save_checkpoint and _describe)
        )
    return entry


def _atomic_write(tensors: dict[str, Tensor], metadata: dict[str, str], path: Path) -> None:
    """Write through :func:`sstorch.io.fsutil.atomic_write` (temporary file beside ``path``,
    fsync, ``os.replace``); every failure is a :class:`CheckpointError` naming ``path``."""
    try:
        atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    except FileSystemError as exc:
        raise CheckpointError(f"cannot save checkpoint {exc}; the previous file, if any, is "
                              "unchanged") from exc
    except Exception as exc:
        raise CheckpointError(
            f"cannot save checkpoint {path} ({one_line(exc)}); the previous file, if any, "
            "is unchanged"
        ) from exc


# --------------------------------------------------------------------------- loading


def _read(path: PathLike, want: Callable[[str], bool]) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Parsed sstorch JSON and the tensors whose key satisfies ``want`` (on CPU)."""
    p = Path(path)
    if not p.is_file():
        if not p.parent.is_dir():
            hint = f"directory {p.parent} does not exist"
        elif others := _siblings(p):
            hint = "checkpoints there: " + ", ".join(o.name for o in others[:MAX_LISTED])
        else:
            hint = f"there is no checkpoint in {p.parent}"
        raise CheckpointError(f"checkpoint not found: {path} ({hint}); check the path")
    try:
        with safe_open(str(p), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            if META_KEY not in metadata:
                raise CheckpointError(
                    f"{path} is not an sstorch checkpoint (no '{META_KEY}' metadata, found "
                    f"{sorted(metadata)[:MAX_LISTED]}); for a plain weights file use "
                    "safetensors' load_file and model.load_state_dict, or pick the right file"
                )
            doc = json.loads(metadata[META_KEY])
            if not isinstance(doc, dict) or "extra" not in doc:
                raise ValueError("sstorch metadata is not a checkpoint description")
            version = doc.get("format_version")
            if not isinstance(version, int) or version > FORMAT_VERSION:
                raise CheckpointError(
                    f"{path} has checkpoint format {version!r}, newer than this sstorch's "
                    f"{FORMAT_VERSION}; upgrade sstorch to read it"
                )
            tensors = {k: f.get_tensor(k) for k in f.keys() if want(k)}
    except CheckpointError:
        raise
    except Exception as exc:  # safetensors, JSON and OS errors all mean an unusable file
        raise _corrupted(path, exc) from exc
    sums = doc.get("sha256") or {}  # absent in checkpoints written before checksums
    if bad := [k for k, t in tensors.items() if k in sums and digest(t) != sums[k]]:
        detail = (f"the data of {len(bad)} tensor(s) ({', '.join(bad[:MAX_LISTED])}) does not "
                  "match its SHA-256 checksum (a damaged disk, copy or download)")
        raise CheckpointCorrupted(
            f"cannot read checkpoint {path}: {detail}; delete it or {_fallback(p)}", path, detail)
    return doc, tensors


def _strip(tensors: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def _model_state(path: PathLike, doc: dict[str, Any], tensors: dict[str, Tensor]) -> dict:
    state: dict[str, Any] = _strip(tensors, "model.")
    try:
        for name, value in (doc.get("model") or {}).get("objects", {}).items():
            state[name] = decode_state(value, tensors)
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise _corrupted(path, exc) from exc
    return state


def _mismatch(path: PathLike, problems: list[str]) -> CheckpointError:
    listed = "; ".join(problems[:MAX_LISTED])
    more = f"; … {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
    shapes = any(" shape " in p or "size mismatch" in p for p in problems)
    loose = "" if shapes else ", or pass strict=False to ignore missing/unexpected keys"
    return CheckpointError(
        f"checkpoint {path} does not match the model ({len(problems)} differing keys: "
        f"{listed}{more}); the checkpoint's config may not match the model: rebuild the model "
        f"from the config it was trained with (see read_metadata){loose}"
    )


def _load_model(path: PathLike, model: nn.Module, state: dict, strict: bool) -> None:
    """``model.load_state_dict`` with mismatches reported as one :class:`CheckpointError`."""
    own = model.state_dict()
    problems = [
        f"{k}: shape {tuple(v.shape)} in file vs {tuple(own[k].shape)} in model"
        for k, v in state.items()
        if k in own and isinstance(v, Tensor) and isinstance(own[k], Tensor)
        and v.shape != own[k].shape
    ]
    if strict:
        problems += [f"missing {k}" for k in own if k not in state]
    if problems:  # checked before loading, so the model is left untouched
        raise _mismatch(path, problems)
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise _mismatch(path, [one_line(exc)]) from exc
    if strict and (result.missing_keys or result.unexpected_keys):
        problems = [f"missing {k}" for k in result.missing_keys]
        problems += [f"unexpected {k}" for k in result.unexpected_keys]
        raise _mismatch(path, problems)


def _load_stateful(
    path: PathLike, what: str, obj: Any, entry: dict[str, Any] | None,
    tensors: dict[str, Tensor], strict: bool,
) -> None:
    """Load an optimizer's or scheduler's state saved by :func:`save_checkpoint`."""
    if entry is None:
        msg = (f"checkpoint {path} has no {what} state (it was saved without one); pass "
               f"{what}=None to load the weights only")
        if strict:
            raise CheckpointError(msg)
        warnings.warn(msg, stacklevel=3)
        return
    saved_class = entry.get("class")
    if saved_class != type(obj).__name__:
        raise CheckpointError(
            f"checkpoint {path} holds {saved_class} {what} state but a {type(obj).__name__} was "
            f"given; build the {what} from the checkpoint's config"
        )
    try:
        state = decode_state(entry["state"], tensors)
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise _corrupted(path, exc) from exc
    try:
        obj.load_state_dict(state)
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as exc:
        raise CheckpointError(
            f"{what} state in {path} does not match the {what} ({one_line(exc)}); build it with "
            f"the checkpoint's config (same parameter groups, in the same order), or pass "
            f"{what}=None"
        ) from exc


def load_checkpoint(
    path: PathLike,
    model: nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    restore_rng: bool = True,
    map_location: str | torch.device | None = "cpu",
    strict: bool = True,
) -> dict[str, Any]:
    """Restore what :func:`save_checkpoint` wrote into the given objects; return ``extra``.

    Order: model (wrappers unwrapped; pruning masks recreated by :class:`SeparableLinear`),
    optimizer (state tensors are cast to its parameters' device by PyTorch), scheduler (its
    lambdas come from the config you rebuilt it with), then RNG states — restore last, right
    before training continues. CUDA states are restored for the GPUs present.

    Args:
        map_location: device for the state tensors handed to ``load_state_dict``.
        strict: require the model's and the file's keys to match exactly, and the file to hold
            optimizer/scheduler state when those are given. With ``strict=False`` missing or
            unexpected keys are ignored and absent optimizer/scheduler state only warns; shape
            mismatches always fail.

    Raises:
        CheckpointError: missing, truncated, corrupted or foreign file, or a mismatch with the
            model, optimizer or scheduler. File problems are found before anything is modified;
            a model mismatch is reported before the model is touched, except unexpected keys
            found by ``load_state_dict`` itself (every matching entry is then already loaded).
    """
    prefixes = tuple(
        p for p, on in (("model.", model is not None), ("optim.", optimizer is not None),
                        ("sched.", scheduler is not None), ("rng.", restore_rng)) if on
    )
    doc, tensors = _read(path, lambda k: k.startswith(prefixes))
    if map_location is not None:
        device = torch.device(map_location)
        tensors = {k: v if k.startswith("rng.") else v.to(device) for k, v in tensors.items()}
    if model is not None:
        _load_model(path, _unwrap(model), _model_state(path, doc, tensors), strict)
    if optimizer is not None:
        _load_stateful(path, "optimizer", optimizer, doc.get("optim"), tensors, strict)
    if scheduler is not None:
        _load_stateful(path, "scheduler", scheduler, doc.get("sched"), tensors, strict)
    if restore_rng and doc.get("rng") is not None:
        try:
            restore_rng_state(doc["rng"], tensors)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise _corrupted(path, exc) from exc
    return doc["extra"]


def load_weights(path: PathLike, map_location: str | torch.device = "cpu") -> dict[str, Tensor]:
    """Only the model's ``state_dict`` (no ``model.`` prefix), e.g. for evaluation or export."""
    doc, tensors = _read(path, lambda k: k.startswith("model."))
    state = _model_state(path, doc, tensors)
    device = torch.device(map_location)
    return {k: v.to(device) if isinstance(v, Tensor) else v for k, v in state.items()}


def read_metadata(path: PathLike) -> dict[str, Any]:
    """The ``extra`` dict of a checkpoint, read from the header only (no tensor data)."""
    doc, _ = _read(path, lambda k: False)
    return doc["extra"]
