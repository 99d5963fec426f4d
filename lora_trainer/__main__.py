"""Headless command line: ``python -m lora_trainer VERB ...``.

Verbs: train, demo, grid, tiny-checkpoint, ui, tag, check, bench. Each is a thin door onto the core; the
WebUI tab drives the same functions.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _cmd_train(args: argparse.Namespace) -> int:
    from .config import ConfigError, from_dict, load_toml, parse_set_args
    from .runner import run_training

    data = load_toml(args.config) if args.config else {}
    data.update(parse_set_args(args.set or []))
    try:
        config, warnings = from_dict(data)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if not config.pretrained_model_name_or_path:
        print("error: pretrained_model_name_or_path is not set: name the checkpoint file to train on", file=sys.stderr)
        return 2
    result = run_training(config)
    return 0 if result.ok else 1


def _cmd_demo(args: argparse.Namespace) -> int:
    from .runner import run_demo

    result = run_demo(Path(args.out), epochs=args.epochs)
    return 0 if result.ok else 1


def _epoch_list(text: str):
    """``--epochs 1,3,NAME-000005``: numbers or file stems."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    return [int(item) if item.isdigit() else item for item in items]


def _cmd_grid(args: argparse.Namespace) -> int:
    from .runner import run_grid

    result = run_grid(
        args.ckpt, args.lora_dir, args.name, prompt=args.prompt, negative=args.negative, seed=args.seed,
        strength=args.strength, epochs=_epoch_list(args.epochs) if args.epochs else None, y=args.y,
        steps=args.steps, width=args.width, height=args.height, cfg=args.cfg, sampler=args.sampler,
        out_dir=args.out, clip_skip=args.clip_skip, device=args.device,
    )
    return 0 if result.ok else 1


def _cmd_tiny_checkpoint(args: argparse.Namespace) -> int:
    from .models.tiny import write_tiny_checkpoint

    out = args.out or args.forge
    if not out:
        print("error: name the file to write: --out FILE.safetensors (or --forge FILE.safetensors)", file=sys.stderr)
        return 2
    try:
        paths = write_tiny_checkpoint(args.arch, Path(out), seed=args.seed,
                                      size="forge" if args.forge is not None else "tiny")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0


def _cmd_ui(args: argparse.Namespace) -> int:
    from .ui.app import main as ui_main

    return ui_main(args)


def _cmd_bench(args: argparse.Namespace) -> int:
    import runpy

    script = Path(__file__).resolve().parent.parent / "bench" / "bench_train.py"
    sys.argv = [str(script)] + list(args.bench_args)
    runpy.run_path(str(script), run_name="__main__")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lora_trainer", description=__doc__.splitlines()[0])
    verbs = parser.add_subparsers(dest="verb", required=True)

    train = verbs.add_parser("train", help="train a LoRA from a kohya-style TOML config")
    train.add_argument("--config", help="TOML file with kohya option names (flat, or kohya's sectioned layout)")
    train.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one option; repeatable")
    train.set_defaults(func=_cmd_train)

    demo = verbs.add_parser("demo", help="tiny checkpoint + generated dataset + a short CPU training")
    demo.add_argument("--out", default="demo_out", help="folder for everything the demo writes (default: demo_out)")
    demo.add_argument("--epochs", type=int, default=4)
    demo.set_defaults(func=_cmd_demo)

    grid = verbs.add_parser("grid", help="epoch comparison grid of a LoRA family, headless (diffusers), "
                                         "with the release-candidate suggestion")
    grid.add_argument("--ckpt", required=True, help="checkpoint file (.safetensors / .ckpt) to draw with")
    grid.add_argument("--lora-dir", required=True, help="folder holding NAME-000001.safetensors ... NAME.safetensors")
    grid.add_argument("--name", required=True, help="the LoRA family's name (output_name)")
    grid.add_argument("--prompt", help="default: the trigger word + the dataset's most frequent tags")
    grid.add_argument("--negative", help="negative prompt (default: a common quality negative)")
    grid.add_argument("--seed", type=int, default=1234)
    grid.add_argument("--strength", type=float, default=0.8, help="LoRA weight in every epoch cell (default 0.8)")
    grid.add_argument("--epochs", help="comma-separated epochs to compare (numbers or file stems; default: all)")
    grid.add_argument("--y", choices=("strength", "seed", "te_unet"),
                      help="rows: strengths 0.5/0.8/1.0/1.2, three seeds, or text encoder / UNet / both")
    grid.add_argument("--steps", type=int, default=20)
    grid.add_argument("--width", type=int, default=512)
    grid.add_argument("--height", type=int, default=512)
    grid.add_argument("--cfg", type=float, default=7.0)
    grid.add_argument("--sampler", default="Euler a", help="the WebUI's name (Euler a, DPM++ 2M, DDIM ...) or "
                                                           "kohya's (euler_a, ...)")
    grid.add_argument("--clip-skip", type=int, help="2 = penultimate layer (default: the LoRA's ss_clip_skip)")
    grid.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    grid.add_argument("--out", help="folder for the grid PNG (default: grids/ beside the LoRA folder)")
    grid.set_defaults(func=_cmd_grid)

    tiny = verbs.add_parser("tiny-checkpoint", help="write a small random SD checkpoint for tests")
    tiny.add_argument("--arch", choices=("sd1", "sdxl"), default="sd1")
    tiny.add_argument("--out", help="FILE.safetensors (a same-stem .yaml is written beside it)")
    tiny.add_argument("--forge", nargs="?", const="", metavar="OUT",
                      help="the smallest SD1 checkpoint Forge loads (full-size CLIP-L and VAE, a one-level "
                           "320-channel UNet; about 465 MB); OUT may stand for --out")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(func=_cmd_tiny_checkpoint)

    ui = verbs.add_parser("ui", help="the LoRA Trainer tab outside the WebUI (standalone host)")
    ui.add_argument("--ckpt", required=True, help="checkpoint file the standalone host lends")
    ui.add_argument("--lora-dir", default="models/Lora", help="where LoRA files go (default: models/Lora)")
    ui.add_argument("--host", default="127.0.0.1")
    ui.add_argument("--port", type=int, default=7861)
    ui.set_defaults(func=_cmd_ui)

    verbs.add_parser("tag", help="WD14-tag a dataset's images (python -m lora_trainer tag --help)", add_help=False)
    verbs.add_parser("check", help="dataset doctor: findings and fixes (python -m lora_trainer check --help)",
                     add_help=False)
    bench = verbs.add_parser("bench", help="speed/memory benchmark (GPU); see bench/README.md", add_help=False)
    bench.add_argument("bench_args", nargs=argparse.REMAINDER)
    bench.set_defaults(func=_cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:  # everything after the verb belongs to bench/bench_train.py
        return _cmd_bench(argparse.Namespace(bench_args=argv[1:]))
    if argv[:1] in (["tag"], ["check"]):  # the dataset verbs parse their own options
        from . import cli_dataset

        return (cli_dataset.tag_main if argv[0] == "tag" else cli_dataset.check_main)(argv[1:])
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
