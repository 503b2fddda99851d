"""The ``sstorch`` command line: ``sstorch <command> [options]``."""

from __future__ import annotations

import argparse
import math
import os
import shlex
import sys
from pathlib import Path

from sstorch.io.fsutil import DirectoryBusy, describe, expand_path


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, with the line telling the user how to continue."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


def _compression(text: str) -> float:
    """``--compression``: a finite number ≥ 1."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 1):
        raise argparse.ArgumentTypeError(
            f"--compression must be a finite number ≥ 1 (dense/separable parameters per "
            f"layer), got {text!r}")
    return value


def _cmd_bench(argv: list[str]) -> int:
    from sstorch.experiments.layer_bench_md import main_layer_bench

    return main_layer_bench(argv)


def _cmd_summary(argv: list[str]) -> int:
    import torch

    from sstorch.structure.summary import summary
    from sstorch.structure.surgery import separate

    p = argparse.ArgumentParser(
        prog="sstorch summary",
        description="Separate a reference model's Linear layers and print the accounting.",
    )
    p.add_argument("--model", choices=["vgg16", "vit-tiny"], default="vgg16")
    p.add_argument("--compression", type=_compression, default=None,
                   help="per-layer target compression (default: rank-1 factors)")
    args = p.parse_args(argv)
    if args.model == "vgg16":
        import torchvision

        model = torchvision.models.vgg16(num_classes=10)
        example = torch.zeros(1, 3, 224, 224)
        include: str | list[str] = "classifier.*"
    else:
        from timm.models.vision_transformer import VisionTransformer

        model = VisionTransformer(img_size=32, patch_size=4, embed_dim=192, depth=12,
                                  num_heads=3, num_classes=10)
        example = torch.zeros(1, 3, 32, 32)
        include = ["*.qkv", "*.proj", "*.fc1", "*.fc2"]
    print(f"== dense {args.model}")
    print(summary(model, example).table())
    separate(model, include, compression=args.compression, example_input=example)
    print(f"\n== separable {args.model}")
    print(summary(model, example).table())
    return 0


def _cmd_train(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="sstorch train",
        description="Adversarially train a (separable) classifier. With no arguments: the "
        "default separable MLP on Fashion-MNIST with PGD training and both factor constraints.",
    )
    p.add_argument("--config", help="YAML config (see configs/); default: built-in defaults")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="override config keys, e.g. --set epochs=3 optim.lr=0.05")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR")
    p.add_argument("--overwrite", action="store_true",
                   help="train afresh into a run directory that already holds a run, deleting "
                   "that run's files first (default: refuse)")
    args = p.parse_args(argv)
    if args.resume and args.overwrite:
        raise ValueError("--resume continues a run and --overwrite replaces it; give one of them")

    from sstorch.config import load_config

    if args.config:
        args.config = expand_path(args.config, "--config")
    if args.resume:
        args.resume = expand_path(args.resume, "--resume")
    if args.resume and not args.config:
        cfg_path = Path(args.resume) / "config.yaml"
        if not cfg_path.is_file():
            raise ValueError(f"cannot resume: {cfg_path} not found; is {args.resume} a run "
                             "directory made by `sstorch train`?")
        args.config = str(cfg_path)
    cfg = load_config(args.config, args.set)
    from sstorch.training.loop import train

    run_dir = Path(args.resume) if args.resume else Path(cfg.out_dir) / cfg.name
    try:
        train(cfg, resume=args.resume, overwrite=args.overwrite)
    except KeyboardInterrupt:
        if (run_dir / "config.yaml").is_file():
            raise Interrupted("interrupted; resume with: sstorch train --resume "
                              f"{shlex.quote(str(run_dir))}") from None
        raise Interrupted("interrupted before the run started; nothing was written") from None
    return 0


def _cmd_eval(argv: list[str]) -> int:
    from sstorch.eval.run import main_eval

    return main_eval(argv)


def _cmd_sweep(argv: list[str]) -> int:
    from sstorch.experiments.sweep import main_sweep

    return main_sweep(argv)


def _cmd_export(argv: list[str]) -> int:
    from sstorch.export.onnx import main_export

    return main_export(argv)


def _cmd_report(argv: list[str]) -> int:
    from sstorch.experiments.report import main_report

    return main_report(argv)


COMMANDS = {
    "train": (_cmd_train, "adversarial training (default: separable MLP on Fashion-MNIST)"),
    "eval": (_cmd_eval, "robustness evaluation: FGSM, PGD, CW, AutoAttack, sanity checks"),
    "export": (_cmd_export, "ONNX export (parity-checked, optional int8) or sparse packing"),
    "report": (_cmd_report, "markdown table and plots across run directories"),
    "sweep": (_cmd_sweep, "a whole experiment (train, evaluate, tables, plots), resumable"),
    "bench": (_cmd_bench, "layer speed benchmark: SeparableLinear vs nn.Linear vs tensorly-torch"),
    "summary": (_cmd_summary, "separate VGG-16 or a ViT and print the accounting"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: sstorch <command> [options]\n\ncommands:")
        for name, (_, help_text) in COMMANDS.items():
            print(f"  {name:<10} {help_text}")
        print("\n`sstorch <command> --help` for a command's options.")
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        print(f"sstorch: unknown command {cmd!r}; choose from {', '.join(COMMANDS)}",
              file=sys.stderr)
        return 2
    from sstorch.training.loop import TrainingDiverged

    debug = bool(os.environ.get("SSTORCH_DEBUG"))
    try:
        return COMMANDS[cmd][0](rest)
    except KeyboardInterrupt as exc:
        if debug:
            raise
        message = exc.message if isinstance(exc, Interrupted) else _INTERRUPTED.get(
            cmd, "interrupted")
        start = "\n" if sys.stderr.isatty() else ""  # off the progress bar's line
        print(f"{start}sstorch {cmd}: {message}", file=sys.stderr)
        return 130
    except (ValueError, TrainingDiverged, DirectoryBusy) as exc:
        # Configuration, data, checkpoint and divergence errors carry an actionable message;
        # a traceback adds nothing for the user (set SSTORCH_DEBUG=1 to see it).
        if debug:
            raise
        print(f"sstorch {cmd}: error: {_one_line(str(exc))}", file=sys.stderr)
        return 1
    except OSError as exc:
        # File-system faults (read-only or full disk, a file where a directory should be, …)
        # and our own FileNotFoundErrors: one line naming the path and what to do.
        if debug:
            raise
        text = str(exc) if exc.errno is None and exc.filename is None else describe(exc)
        print(f"sstorch {cmd}: error: {_one_line(text)}", file=sys.stderr)
        return 1


_INTERRUPTED = {
    "eval": "interrupted; run the same command again to continue from its journal",
    "sweep": "interrupted; run the same command again to continue",
}


def _one_line(text: str) -> str:
    """Messages are one line (a dataset's list of missing files stays readable, joined)."""
    return "; ".join(part.strip() for part in text.strip().splitlines() if part.strip())


if __name__ == "__main__":
    raise SystemExit(main())
