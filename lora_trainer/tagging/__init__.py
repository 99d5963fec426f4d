"""Dataset captions: WD14 tagging and tag editing.

* :mod:`.wd14` -- SmilingWolf's WD14 ONNX taggers: model files (downloaded on
  first use or read from a folder), the onnxruntime session as a context
  manager, thresholds, tagging a dataset (if-empty / append / overwrite);
* :mod:`.preprocess` -- the reference taggers' image preprocessing;
* :mod:`.tags` -- tag operations, statistics, and batch edits with
  preview -> apply -> undo;
* :mod:`.captions_io` -- caption files: atomic writes, backups, undo.

Nothing here imports torch or onnxruntime at import time.
"""
from .captions_io import BACKUP_DIR_NAME, CaptionIOError, UndoRecord, UndoResult, list_backups, undo
from .tags import Preview, apply, consolidate, preview, subject_traits, tag_frequency
from .wd14 import (
    DEFAULT_MODEL,
    MODELS,
    MODES,
    OverwriteNotConfirmed,
    TaggerError,
    TaggerModel,
    TagOptions,
    TagRunResult,
    WD14Tagger,
    get_model,
    resolve_model_files,
    tag_dataset,
)

__all__ = [
    "BACKUP_DIR_NAME",
    "CaptionIOError",
    "DEFAULT_MODEL",
    "MODELS",
    "MODES",
    "OverwriteNotConfirmed",
    "Preview",
    "TagOptions",
    "TagRunResult",
    "TaggerError",
    "TaggerModel",
    "UndoRecord",
    "UndoResult",
    "WD14Tagger",
    "apply",
    "consolidate",
    "get_model",
    "list_backups",
    "preview",
    "resolve_model_files",
    "subject_traits",
    "tag_dataset",
    "tag_frequency",
    "undo",
]
