"""The ``sstorch`` command line: ``sstorch <command> [options]``."""

from __future__ import annotations

import argparse
import sys


def _cmd_bench(argv: list[str]) -> int:
    from .bench import main_layer_bench

    return main_layer_bench(argv)


def _cmd_summary(argv: list[str]) -> int:
    import torch

    from .summary import summary
    from .surgery import separate

    p = argparse.ArgumentParser(
        prog="sstorch summary",
        description="Separate a reference model's Linear layers and print the accounting.",
    )
    p.add_argument("--model", choices=["vgg16", "vit-tiny"], default="vgg16")
    p.add_argument("--compression", type=float, default=None,
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
    args = p.parse_args(argv)

    from .config import load_config

    if args.resume and not args.config:
        from pathlib import Path

        cfg_path = Path(args.resume) / "config.yaml"
        if not cfg_path.is_file():
            raise ValueError(f"cannot resume: {cfg_path} not found; is {args.resume} a run "
                             "directory made by `sstorch train`?")
        args.config = str(cfg_path)
    cfg = load_config(args.config, args.set)
    from .train import train

    train(cfg, resume=args.resume)
    return 0


def _cmd_eval(argv: list[str]) -> int:
    from .evaluate import main_eval

    return main_eval(argv)


def _cmd_sweep(argv: list[str]) -> int:
    from .sweep import main_sweep

    return main_sweep(argv)


def _cmd_export(argv: list[str]) -> int:
    from .export import main_export

    return main_export(argv)


def _cmd_report(argv: list[str]) -> int:
    from .report import main_report

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
    from .train import TrainingDiverged

    try:
        return COMMANDS[cmd][0](rest)
    except (ValueError, FileNotFoundError, TrainingDiverged) as exc:
        # Configuration, data, checkpoint and divergence errors carry an actionable message;
        # a traceback adds nothing for the user (set SSTORCH_DEBUG=1 to see it).
        import os

        if os.environ.get("SSTORCH_DEBUG"):
            raise
        print(f"sstorch {cmd}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
