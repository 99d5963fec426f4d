"""Command-line options of LoRA Trainer, added to the WebUI's parser before it parses.

``--lora-dir`` belongs to the WebUI's built-in Lora extension and is only read, never
added here. Each option is added only if nobody has added that spelling yet, so a
second preload (or another extension) cannot make the WebUI's start-up fail.
"""
import os


def _path(text):
    return os.path.abspath(os.path.expanduser(text)) if text else text


OPTIONS = (
    (
        "--lora-trainer-queue-file",
        dict(type=_path, default=None, metavar="FILE",
             help="LoRA Trainer: JSON file that keeps the training queue across restarts "
                  "(default: the setting, else <data dir>/lora_trainer/queue.json)"),
    ),
    (
        "--lora-trainer-dataset-root",
        dict(type=_path, default=None, metavar="DIR",
             help="LoRA Trainer: folder that relative train_data_dir / reg_data_dir paths are taken from"),
    ),
    (
        "--lora-trainer-api",
        dict(action="store_true", default=False,
             help="LoRA Trainer: add the /lora_trainer/v1/ API routes even without --api "
                  "(they honour --api-auth either way)"),
    ),
)


def preload(parser):
    existing = getattr(parser, "_option_string_actions", {})
    for flag, kwargs in OPTIONS:
        if flag in existing:
            continue
        parser.add_argument(flag, **kwargs)
