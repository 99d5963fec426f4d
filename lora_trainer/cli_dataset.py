"""CLI verbs for dataset preparation: ``tag`` (WD14 captions) and ``check`` (the dataset doctor).

    python -m lora_trainer tag DIR [--model NAME] [--model-dir PATH] [--general-threshold F]
        [--character-threshold F] [--mode if-empty|append|overwrite] [--yes] [--trigger WORD]
        [--add TAGS] [--exclude TAG ...] [--escape] [--rating] [--keep-underscores]
    python -m lora_trainer tag --undo BACKUP_DIR
    python -m lora_trainer check DIR [--reg DIR] [--trigger WORD] [--json]

``tag_main`` / ``check_main`` take the arguments after the verb and return the
exit status: 0 done (``check``: no errors), 1 some images failed (``check``:
errors found), 2 the command could not run (bad option, missing model, an
overwrite not confirmed).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence


def _tags_arg(values: Optional[Sequence[str]]) -> list[str]:
    from .tagging.tags import parse_tags

    out: list[str] = []
    for v in values or []:
        out += parse_tags(v)
    return out


def build_tag_parser() -> argparse.ArgumentParser:
    from .tagging.wd14 import DEFAULT_MODEL, DEFAULT_MODELS_ROOT, MODELS, MODES

    p = argparse.ArgumentParser(
        prog="python -m lora_trainer tag",
        description="Caption a dataset's images with a WD14 tagger (SmilingWolf's ONNX models).",
    )
    p.add_argument("dir", nargs="?", help="dataset folder (train_data_dir, one concept folder, or one image); sub-folders are included")
    p.add_argument("--model", default=None, help=f"tagger: {', '.join(MODELS)} (default {DEFAULT_MODEL})")
    p.add_argument(
        "--model-dir",
        default=None,
        help="a folder holding model.onnx and selected_tags.csv (used offline), or the folder models are "
        f"downloaded into, as <PATH>/<model>/ (default {DEFAULT_MODELS_ROOT}, or $LORA_TRAINER_TAGGER_DIR)",
    )
    p.add_argument("--no-download", action="store_true", help="never download: fail when the model files are not there")
    p.add_argument("--general-threshold", type=float, default=None, help="score for a general tag (default: the model's, 0.35)")
    p.add_argument("--character-threshold", type=float, default=None, help="score for a character tag (default: the model's, 0.85)")
    p.add_argument("--mode", choices=MODES, default="if-empty",
                   help="if-empty (default): only images without a caption; append: add new tags after the caption's own; "
                   "overwrite: replace captions (needs --yes; every caption is backed up first)")
    p.add_argument("--yes", action="store_true", help="confirm --mode overwrite")
    p.add_argument("--trigger", default=None, help="trigger word(s), put first in every caption written (comma-separate several)")
    p.add_argument("--add", action="append", default=None, metavar="TAGS", help="fixed tags added after the trigger (comma-separated; repeatable)")
    p.add_argument("--exclude", nargs="+", action="extend", default=None, metavar="TAG", help="tags never written (comma-separated or several)")
    p.add_argument("--escape", action="store_true", help=r"escape parentheses for WebUI prompts: name \(series\)")
    p.add_argument("--rating", action="store_true", help="also write the most likely rating tag (general, sensitive, ...)")
    p.add_argument("--keep-underscores", action="store_true", help="keep the csv's underscores (long_hair)")
    p.add_argument("--caption-extension", default=".txt", help="caption file extension (default .txt)")
    p.add_argument("--batch-size", type=int, default=1, help="images per model call (v3 models; default 1)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="onnxruntime provider (default: CUDA when available)")
    p.add_argument("--threads", type=int, default=0, help="onnxruntime CPU threads (default: its own choice)")
    p.add_argument("--small-images", choices=("pad", "enlarge"), default=None,
                   help="images smaller than the model input: pad onto white (v2 default) or enlarge (v3 default)")
    p.add_argument("--undo", metavar="BACKUP_DIR", default=None, help="put back the captions a run changed (its .lora_trainer_backup/<time> folder)")
    p.add_argument("--list-models", action="store_true", help="list the known models and their default thresholds")
    return p


def tag_main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_tag_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    from .tagging.captions_io import CaptionIOError, undo
    from .tagging.wd14 import MODELS, TaggerError, TagOptions, WD14Tagger, tag_dataset

    if args.list_models:
        for m in MODELS.values():
            pr = f", P=R {m.pr_threshold}" if m.pr_threshold else ""
            print(f"{m.name:<30} {m.repo_id:<45} general {m.general_threshold}, character {m.character_threshold}{pr}")
        return 0
    if args.undo:
        try:
            res = undo(args.undo)
        except (OSError, CaptionIOError, ValueError, KeyError) as e:
            print(f"error: cannot undo from {args.undo}: {e}", file=sys.stderr)
            return 2
        print(f"restored {len(res.restored)} caption(s), removed {len(res.removed)} created by the run")
        for path in res.skipped:
            print(f"warning: {path} was edited after the run; left as it is", file=sys.stderr)
        return 0 if not res.skipped else 1
    if not args.dir:
        print("error: name the dataset folder to tag", file=sys.stderr)
        return 2
    if not os.path.exists(args.dir):
        print(f"error: {args.dir} does not exist", file=sys.stderr)
        return 2
    options = TagOptions(
        general_threshold=args.general_threshold,
        character_threshold=args.character_threshold,
        include_rating=args.rating,
        exclude=_tags_arg(args.exclude),
        replace_underscores=not args.keep_underscores,
        escape=args.escape,
    )
    try:
        tagger = WD14Tagger.from_model(
            args.model, args.model_dir, download=not args.no_download, device=args.device,
            batch_size=args.batch_size, threads=args.threads, small_images=args.small_images,
        )
    except TaggerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    bar = None

    def progress(done: int, total: int, image: str) -> None:
        nonlocal bar
        if bar is None:
            from tqdm import tqdm

            bar = tqdm(total=total, unit="img", desc=f"tagging ({tagger.name})", dynamic_ncols=True)
        bar.update(1)

    try:
        with tagger:
            general_t, character_t = options.thresholds(tagger.spec)
            print(f"{tagger.name} on {', '.join(tagger.providers)}; input {tagger.input_size}px; "
                  f"thresholds general {general_t}, character {character_t}; mode {args.mode}")
            result = tag_dataset(
                args.dir, tagger, mode=args.mode, confirm_overwrite=args.yes, trigger=args.trigger,
                additional=_tags_arg(args.add), options=options, caption_extension=args.caption_extension,
                progress=progress,
            )
    except (TaggerError, CaptionIOError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if bar is not None:
            bar.close()
    print(f"{result.images} image(s): {len(result.written)} caption(s) written, "
          f"{len(result.skipped)} skipped (already captioned), {len(result.failed)} failed")
    for image, why in result.failed:
        print(f"  failed: {image}: {why}", file=sys.stderr)
    if result.backup_dir:
        print(f"backup of the previous captions: {result.backup_dir}")
        print(f"undo: python -m lora_trainer tag --undo {result.backup_dir}")
    return 1 if result.failed else 0


def build_check_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m lora_trainer check",
        description="Check a kohya-style dataset (N_name folders) for what is worth fixing before training.",
    )
    p.add_argument("dir", help="train_data_dir: the folder holding 10_name style folders")
    p.add_argument("--reg", default=None, help="reg_data_dir, when training with regularisation images")
    p.add_argument("--trigger", default=None, help="trigger word every caption should hold")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--caption-extension", default=".txt", help="caption file extension (default .txt)")
    p.add_argument("--resolution", type=int, default=512, help="training resolution, for buckets (default 512)")
    p.add_argument("--batch-size", type=int, default=1, help="train_batch_size, for steps and buckets (default 1)")
    p.add_argument("--epochs", type=int, default=10, help="max_train_epochs, for the step estimate (default 10)")
    p.add_argument("--min-short-side", type=int, default=512, help="smallest short side not reported (default 512)")
    return p


def check_main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_check_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    from .dataset.doctor import check_dataset

    report = check_dataset(
        args.dir, args.reg, args.caption_extension, args.trigger, resolution=args.resolution,
        batch_size=args.batch_size, epochs=args.epochs, min_short_side=args.min_short_side,
    )
    print(report.to_json() if args.json else report.format_text())
    return 0 if report.ok else 1


__all__ = ["build_check_parser", "build_tag_parser", "check_main", "tag_main"]
