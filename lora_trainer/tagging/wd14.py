"""WD14 taggers (SmilingWolf's ONNX models): model files, the session, tags, captions.

A model is two files, ``model.onnx`` and ``selected_tags.csv``
(``tag_id,name,category,count``; category 9 rating, 0 general, 4 character).
:func:`resolve_model_files` finds them in a folder the user names (offline), or
in ``<models_root>/<model name>/``, downloading them there from the model's
Hugging Face repository on first use (``huggingface_hub.hf_hub_download``).

The models root (:func:`models_root`): ``$LORA_TRAINER_TAGGER_DIR`` when set;
inside a WebUI ``<WebUI models folder>/wd14_tagger`` (the host's ``models_dir()``,
beside ``Stable-diffusion`` and ``Lora``); otherwise (the CLI, the standalone
app) ``~/.cache/lora_trainer/models/wd14_tagger`` (``$XDG_CACHE_HOME`` instead of
``~/.cache`` when set), a fixed place whatever the working directory.

:class:`WD14Tagger` is a context manager around the onnxruntime session
(CUDAExecutionProvider when onnxruntime has it, CPU otherwise); leaving the
``with`` block drops the session, so its GPU memory goes back to generation.

:func:`tag_dataset` writes captions for a folder of images in one of three
modes: ``if-empty`` (default: only images without a caption, or with an empty
one; an existing caption is never touched), ``append`` (the new tags after the
caption's own, none repeated) and ``overwrite`` (needs ``confirm_overwrite``).
Every caption a run may touch is copied first to
``<dataset>/.lora_trainer_backup/<time>/`` and every write is atomic; the
result carries the undo record (:func:`lora_trainer.tagging.captions_io.undo`).
"""
from __future__ import annotations

import csv
import gc
import inspect
import os
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional, Sequence, Union

import numpy as np

from .captions_io import BackupSession, UndoRecord, caption_path_for, iter_images, read_caption
from .preprocess import SMALL_IMAGE_MODES, input_size_from_shape, prepare_image
from .tags import (
    _as_list,
    add_tags,
    dedupe,
    edit_text,
    escape_tag,
    join_tags,
    move_first,
    normalize_tag,
    parse_tags,
    underscores_to_spaces,
)

MODEL_FILE = "model.onnx"
TAGS_FILE = "selected_tags.csv"
RATING, GENERAL, CHARACTER = 9, 0, 4
MODES = ("if-empty", "append", "overwrite")
TAGGER_FOLDER = "wd14_tagger"  # the taggers' folder under a models folder


def standalone_models_root() -> str:
    """``~/.cache/lora_trainer/models/wd14_tagger`` (``$XDG_CACHE_HOME`` for ``~/.cache``):
    absolute, so the CLI finds a downloaded model again from any working directory."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "lora_trainer", "models", TAGGER_FOLDER)


DEFAULT_MODELS_ROOT = os.environ.get("LORA_TRAINER_TAGGER_DIR") or standalone_models_root()


def models_root(host_models_dir: Optional[Union[str, os.PathLike]] = None) -> str:
    """Where models are looked for and downloaded: ``$LORA_TRAINER_TAGGER_DIR`` when set,
    else ``<host_models_dir>/wd14_tagger`` (a WebUI's models folder), else
    :data:`DEFAULT_MODELS_ROOT`."""
    env = os.environ.get("LORA_TRAINER_TAGGER_DIR")
    if env:
        return env
    if host_models_dir:
        return os.path.join(os.fspath(host_models_dir), TAGGER_FOLDER)
    return DEFAULT_MODELS_ROOT


class TaggerError(RuntimeError):
    """Tagging cannot go on; the message says what to fix."""


class OverwriteNotConfirmed(TaggerError):
    pass


@dataclass(frozen=True)
class TaggerModel:
    """One of SmilingWolf's taggers. ``general_threshold`` / ``character_threshold``
    are the defaults of SmilingWolf's own demo (0.35 / 0.85, for v2 and v3 alike);
    ``pr_threshold`` is the precision = recall point from the model card, where
    known (a good general threshold for a model whose scores run high, like
    EVA02-Large's)."""

    name: str
    repo_id: str
    generation: str  # "v2" (WD 1.4, dataset v2) or "v3"
    pr_threshold: Optional[float] = None
    general_threshold: float = 0.35
    character_threshold: float = 0.85

    @property
    def small_images(self) -> str:
        """How images smaller than the input are handled by the author's reference code (see preprocess)."""
        return "pad" if self.generation == "v2" else "enlarge"


_MODEL_LIST = [
    TaggerModel("wd-v1-4-vit-tagger-v2", "SmilingWolf/wd-v1-4-vit-tagger-v2", "v2", 0.3537),
    TaggerModel("wd-v1-4-convnext-tagger-v2", "SmilingWolf/wd-v1-4-convnext-tagger-v2", "v2", 0.3685),
    TaggerModel("wd-v1-4-convnextv2-tagger-v2", "SmilingWolf/wd-v1-4-convnextv2-tagger-v2", "v2", 0.3710),
    TaggerModel("wd-v1-4-swinv2-tagger-v2", "SmilingWolf/wd-v1-4-swinv2-tagger-v2", "v2", 0.3771),
    TaggerModel("wd-v1-4-moat-tagger-v2", "SmilingWolf/wd-v1-4-moat-tagger-v2", "v2", 0.3771),
    TaggerModel("wd-vit-tagger-v3", "SmilingWolf/wd-vit-tagger-v3", "v3"),
    TaggerModel("wd-convnext-tagger-v3", "SmilingWolf/wd-convnext-tagger-v3", "v3"),
    TaggerModel("wd-swinv2-tagger-v3", "SmilingWolf/wd-swinv2-tagger-v3", "v3", 0.2653),
    TaggerModel("wd-vit-large-tagger-v3", "SmilingWolf/wd-vit-large-tagger-v3", "v3"),
    TaggerModel("wd-eva02-large-tagger-v3", "SmilingWolf/wd-eva02-large-tagger-v3", "v3", 0.5296),
]
MODELS: dict[str, TaggerModel] = {m.name: m for m in _MODEL_LIST}
DEFAULT_MODEL = "wd-swinv2-tagger-v3"  # the default of SmilingWolf's own demo


def get_model(name: str) -> TaggerModel:
    """A model by name (``wd-vit-tagger-v3``) or repo id (``SmilingWolf/wd-vit-tagger-v3``)."""
    key = name.strip().lower()
    for model in MODELS.values():
        if key in (model.name, model.repo_id.lower()):
            return model
    raise TaggerError(f"unknown tagger model {name!r}; known: {', '.join(MODELS)} (or name a folder with {MODEL_FILE} and {TAGS_FILE})")


def _has_files(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, MODEL_FILE)) and os.path.isfile(os.path.join(folder, TAGS_FILE))


def _download(model: TaggerModel, target: str) -> None:
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise TaggerError(
            f"huggingface_hub is not installed, so {model.name} cannot be downloaded; install it "
            f"(pip install huggingface-hub), or put {MODEL_FILE} and {TAGS_FILE} from "
            f"https://huggingface.co/{model.repo_id} into {target}"
        ) from None
    kwargs = {"local_dir": target}
    if "local_dir_use_symlinks" in inspect.signature(hf_hub_download).parameters:
        kwargs["local_dir_use_symlinks"] = False  # older hubs link into their cache; we want the files here
    os.makedirs(target, exist_ok=True)
    for filename in (TAGS_FILE, MODEL_FILE):  # the small file first: a failure shows early
        try:
            hf_hub_download(repo_id=model.repo_id, filename=filename, **kwargs)
        except Exception as e:
            raise TaggerError(
                f"could not download {filename} of {model.name} from https://huggingface.co/{model.repo_id} ({e}); "
                f"check the connection, or put {MODEL_FILE} and {TAGS_FILE} into {target} yourself"
            ) from None


def resolve_model_files(
    model: Optional[str] = None,
    model_dir: Optional[Union[str, os.PathLike]] = None,
    download: bool = True,
) -> tuple[str, str, Optional[TaggerModel]]:
    """``(model.onnx path, selected_tags.csv path, the model's spec or None)``.

    ``model_dir`` holding both files is used as it is (offline, whatever
    ``model`` says). Otherwise it is the models root (default :func:`models_root`:
    ``$LORA_TRAINER_TAGGER_DIR`` or :data:`DEFAULT_MODELS_ROOT`) and the files
    are looked for in ``<root>/<model name>/``, downloaded there when missing
    and ``download`` is true.
    """
    spec = get_model(model) if model else None
    root = os.fspath(model_dir) if model_dir else models_root()
    if _has_files(root):
        if spec is None:  # a folder named like a known model tells its defaults
            spec = next((m for m in MODELS.values() if m.name == os.path.basename(os.path.normpath(root)).lower()), None)
        return os.path.join(root, MODEL_FILE), os.path.join(root, TAGS_FILE), spec
    spec = spec or MODELS[DEFAULT_MODEL]
    target = os.path.join(root, spec.name)
    if not _has_files(target):
        if not download:
            raise TaggerError(f"{spec.name} is not in {target}; put {MODEL_FILE} and {TAGS_FILE} there, or allow the download")
        _download(spec, target)
    return os.path.join(target, MODEL_FILE), os.path.join(target, TAGS_FILE), spec


# --- labels --------------------------------------------------------------------------


@dataclass(frozen=True)
class Label:
    name: str  # as in the csv (underscores)
    category: int


def load_labels(csv_path: Union[str, os.PathLike]) -> list[Label]:
    """The rows of ``selected_tags.csv``, in the model's output order."""
    with open(csv_path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    if not rows or [h.strip() for h in rows[0][:3]] != ["tag_id", "name", "category"]:
        raise TaggerError(f"{os.fspath(csv_path)} is not a WD14 selected_tags.csv (header tag_id,name,category,count)")
    labels = []
    for i, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        try:
            labels.append(Label(row[1], int(row[2])))
        except (IndexError, ValueError):
            raise TaggerError(f"{os.fspath(csv_path)} line {i}: expected tag_id,name,category,count, got {row!r}") from None
    return labels


# --- choosing tags ----------------------------------------------------------------------


@dataclass
class TagOptions:
    """How scores become caption tags. Thresholds of None take the model's defaults."""

    general_threshold: Optional[float] = None
    character_threshold: Optional[float] = None
    include_rating: bool = False  # the most likely rating tag (general, sensitive, ...) first
    exclude: Sequence[str] = ()  # compared normalized: "long_hair" excludes "long hair"
    replace_underscores: bool = True  # kaomoji such as ^_^ keep theirs
    escape: bool = False  # \( \) for WebUI prompts

    def thresholds(self, spec: Optional[TaggerModel]) -> tuple[float, float]:
        """(general, character); a TaggerError for one that is not a score (0-1): a threshold
        above 1 would silently write empty captions, one below 0 every tag."""
        g = self.general_threshold if self.general_threshold is not None else (spec.general_threshold if spec else 0.35)
        c = self.character_threshold if self.character_threshold is not None else (spec.character_threshold if spec else 0.85)
        out = []
        for what, value in (("general", g), ("character", c)):
            try:
                number = float(value)
            except (TypeError, ValueError):
                number = float("nan")
            if not 0.0 <= number <= 1.0:  # False for nan too
                raise TaggerError(f"the {what} threshold must be a score between 0 and 1, not {value!r}")
            out.append(number)
        return out[0], out[1]


def format_tag(name: str, replace_underscores: bool = True, escape: bool = False) -> str:
    tag = underscores_to_spaces(name) if replace_underscores else name
    return escape_tag(tag) if escape else tag


def select_tags(
    probs: np.ndarray, labels: Sequence[Label], options: Optional[TagOptions] = None, spec: Optional[TaggerModel] = None
) -> list[str]:
    """Caption tags for one image's scores: characters at or above the character
    threshold, then general tags at or above the general threshold, each by
    decreasing score; rating tags only with ``include_rating`` (the top one, first)."""
    options = options or TagOptions()
    general_t, character_t = options.thresholds(spec)
    if len(probs) != len(labels):
        raise TaggerError(f"the model gives {len(probs)} scores but selected_tags.csv lists {len(labels)} tags: they do not belong together")
    excluded = {normalize_tag(t) for t in _as_list(options.exclude)}
    ratings, characters, general = [], [], []
    for label, p in zip(labels, probs):
        p = float(p)
        if label.category == RATING:
            ratings.append((p, label.name))
        elif label.category == CHARACTER and p >= character_t:
            characters.append((p, label.name))
        elif label.category == GENERAL and p >= general_t:
            general.append((p, label.name))
    chosen = []
    if options.include_rating and ratings:
        chosen.append(max(ratings)[1])
    chosen += [n for _, n in sorted(characters, key=lambda x: -x[0])]
    chosen += [n for _, n in sorted(general, key=lambda x: -x[0])]
    out = [format_tag(n, options.replace_underscores, options.escape) for n in chosen if normalize_tag(n) not in excluded]
    return dedupe(out)


def compose_caption(
    new_tags: Sequence[str],
    existing: Optional[str] = None,
    mode: str = "overwrite",
    trigger: Union[str, Iterable[str], None] = None,
    additional: Union[str, Iterable[str], None] = None,
) -> str:
    """The caption text a tagging run writes. The trigger word(s) come first,
    then the fixed ``additional`` tags, then the tagger's; no tag twice.
    ``append`` keeps the existing caption's tags (and lines) and adds the new
    ones after them; otherwise the existing text is not used."""
    fixed = _as_list(trigger) + _as_list(additional)

    def build(tags: list[str]) -> list[str]:
        return move_first(add_tags(dedupe(tags), list(fixed) + list(new_tags)), _as_list(trigger))

    if mode == "append" and existing is not None and existing.strip():
        return edit_text(existing, build)
    return join_tags(move_first(dedupe(list(fixed) + list(new_tags)), _as_list(trigger)))


# --- the session ---------------------------------------------------------------------------


def choose_providers(device: str = "auto") -> list[str]:
    """``["CUDAExecutionProvider", "CPUExecutionProvider"]`` when onnxruntime has CUDA
    (and ``device`` is "auto" or "cuda"), else ``["CPUExecutionProvider"]``."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device in ("auto", "cuda") and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "cuda":
        raise TaggerError("device 'cuda' asked for, but this onnxruntime has no CUDAExecutionProvider: install onnxruntime-gpu")
    return ["CPUExecutionProvider"]


class WD14Tagger:
    """``with WD14Tagger(onnx, csv) as tagger: tagger.tag(paths)``.

    The session is created on entering and released on leaving (GPU memory
    included). ``batch_size`` applies to models with a free batch dimension
    (v3); v2 models take one image at a time. ``threads``: onnxruntime's
    intra-op threads (0: its default).
    """

    def __init__(
        self,
        onnx_path: Union[str, os.PathLike],
        csv_path: Union[str, os.PathLike],
        spec: Optional[TaggerModel] = None,
        device: str = "auto",
        batch_size: int = 1,
        threads: int = 0,
        small_images: Optional[str] = None,
    ):
        self.onnx_path = os.fspath(onnx_path)
        self.csv_path = os.fspath(csv_path)
        self.spec = spec
        self.device = device
        self.batch_size = max(1, int(batch_size))
        self.threads = threads
        self.small_images = small_images or (spec.small_images if spec else "pad")
        if self.small_images not in SMALL_IMAGE_MODES:
            raise ValueError(f"small_images must be one of {SMALL_IMAGE_MODES}")
        self.labels = load_labels(self.csv_path)
        self._session = None
        self.input_name = self.output_name = ""
        self.input_size = 0
        self.providers: list[str] = []
        self._fixed_batch: Optional[int] = None

    @classmethod
    def from_model(cls, model: Optional[str] = None, model_dir=None, download: bool = True, **kwargs) -> "WD14Tagger":
        onnx_path, csv_path, spec = resolve_model_files(model, model_dir, download)
        return cls(onnx_path, csv_path, spec, **kwargs)

    @property
    def name(self) -> str:
        return self.spec.name if self.spec else os.path.basename(os.path.dirname(os.path.abspath(self.onnx_path)))

    def open(self) -> "WD14Tagger":
        if self._session is not None:
            return self
        try:
            import onnxruntime as ort
        except ImportError:
            raise TaggerError("onnxruntime is not installed: pip install onnxruntime (or onnxruntime-gpu with CUDA)") from None
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if self.threads:
            opts.intra_op_num_threads = int(self.threads)
        try:
            session = ort.InferenceSession(self.onnx_path, sess_options=opts, providers=choose_providers(self.device))
        except TaggerError:
            raise
        except Exception as e:
            raise TaggerError(f"{self.onnx_path} cannot be loaded by onnxruntime ({e}); download it again") from None
        inp, out = session.get_inputs()[0], session.get_outputs()[0]
        try:
            self.input_size = input_size_from_shape(inp.shape)
        except ValueError as e:
            raise TaggerError(f"{self.onnx_path}: {e}") from None
        n_out = out.shape[-1] if out.shape else None
        if isinstance(n_out, int) and n_out != len(self.labels):
            raise TaggerError(
                f"{self.onnx_path} gives {n_out} scores but {self.csv_path} lists {len(self.labels)} tags: use the csv of the same model"
            )
        self._fixed_batch = inp.shape[0] if isinstance(inp.shape[0], int) and inp.shape[0] > 0 else None
        self.input_name, self.output_name = inp.name, out.name
        self.providers = list(session.get_providers())
        self._session = session
        return self

    def close(self) -> None:
        if self._session is not None:
            self._session = None
            gc.collect()  # the session owns the GPU arena; dropping it frees the memory

    def __enter__(self) -> "WD14Tagger":
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def is_open(self) -> bool:
        return self._session is not None

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Scores (N x tags) for an N x S x S x 3 float32 BGR batch."""
        if self._session is None:
            raise TaggerError("the tagger is not open: use it in a `with` block")
        step = self._fixed_batch or len(batch)
        outs = []
        for i in range(0, len(batch), step):
            part = np.ascontiguousarray(batch[i : i + step], dtype=np.float32)
            outs.append(self._session.run([self.output_name], {self.input_name: part})[0])
        return np.concatenate(outs, axis=0) if outs else np.zeros((0, len(self.labels)), np.float32)

    def prepare(self, image) -> np.ndarray:
        return prepare_image(image, self.input_size, self.small_images)

    def predict(self, images: Sequence) -> list[np.ndarray]:
        """One score vector per image (paths or PIL images)."""
        batch = np.stack([self.prepare(im) for im in images]) if images else np.zeros((0, self.input_size, self.input_size, 3), np.float32)
        return list(self.run(batch))

    def tag(self, images: Sequence, options: Optional[TagOptions] = None) -> list[list[str]]:
        return [select_tags(p, self.labels, options, self.spec) for p in self.predict(images)]


# --- tagging a dataset ------------------------------------------------------------------------


@dataclass
class TagRunResult:
    mode: str
    model: str
    images: int = 0
    written: list[str] = field(default_factory=list)  # caption paths
    skipped: list[str] = field(default_factory=list)  # if-empty: images whose caption has text
    failed: list[tuple[str, str]] = field(default_factory=list)  # (image, why)
    captions: dict[str, str] = field(default_factory=dict)  # caption path -> text written (or, dry run, to write)
    undo: Optional[UndoRecord] = None
    stopped: bool = False  # should_stop() ended the run early

    @property
    def backup_dir(self) -> Optional[str]:
        return self.undo.backup_dir if self.undo else None

    def to_dict(self) -> dict:
        return {
            "mode": self.mode,
            "model": self.model,
            "images": self.images,
            "written": list(self.written),
            "skipped": list(self.skipped),
            "failed": [list(f) for f in self.failed],
            "captions": dict(self.captions),
            "stopped": self.stopped,
            "backup_dir": self.backup_dir,
            "undo": self.undo.to_dict() if self.undo else None,
        }


def tag_dataset(
    root: Union[str, os.PathLike],
    tagger: WD14Tagger,
    mode: str = "if-empty",
    confirm_overwrite: bool = False,
    trigger: Union[str, Iterable[str], None] = None,
    additional: Union[str, Iterable[str], None] = None,
    options: Optional[TagOptions] = None,
    caption_extension: str = ".txt",
    recursive: bool = True,
    backup_root: Optional[Union[str, os.PathLike]] = None,
    progress: Optional[Callable[[int, int, str], None]] = None,
    should_stop: Optional[Callable[[], bool]] = None,
    dry_run: bool = False,
) -> TagRunResult:
    """Tag every image under ``root`` (hidden folders skipped) and write its caption.

    ``mode``: ``if-empty`` tags only images whose caption is missing or blank
    (nothing else is read or written); ``append`` adds the new tags after each
    caption's own; ``overwrite`` replaces captions and raises
    :class:`OverwriteNotConfirmed` unless ``confirm_overwrite``. Before the
    first write, every existing caption the run may touch is copied to
    ``<backup_root or root>/.lora_trainer_backup/<time>/``. ``tagger`` must be
    open. ``progress(done, total, image)`` is called after each image;
    ``should_stop()`` is asked before each batch (the UI's interrupt: what was
    written stays written, and undoable). ``dry_run`` computes the captions
    (``result.captions``) and writes nothing, backups included.
    An image that cannot be read is listed in ``failed``; the others go on.
    """
    if mode not in MODES:
        raise TaggerError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    (options or TagOptions()).thresholds(tagger.spec)  # a bad threshold stops here, before any backup
    root = os.fspath(root)
    if not os.path.exists(root):
        raise TaggerError(f"{root} does not exist")
    images = list(iter_images(root, recursive))
    result = TagRunResult(mode, tagger.name, len(images))
    todo = []
    existing: dict[str, Optional[str]] = {}
    for img in images:
        cap = caption_path_for(img, caption_extension)
        text = read_caption(cap)
        if mode == "if-empty" and text is not None and text.strip():
            result.skipped.append(img)
            continue
        existing[cap] = text
        todo.append((img, cap))
    if mode == "overwrite" and not confirm_overwrite and not dry_run:
        n = sum(1 for _, cap in todo if existing[cap] is not None)
        raise OverwriteNotConfirmed(
            f"overwrite would replace {n} existing caption(s) under {root}; confirm it (--yes), "
            "or use if-empty / append. Every caption is backed up first."
        )
    if not todo:
        return result

    base = os.fspath(backup_root) if backup_root is not None else (root if os.path.isdir(root) else os.path.dirname(root))
    total = len(todo)
    done = 0
    session = _DryRun() if dry_run else BackupSession(
        base, [cap for _, cap in todo if existing[cap] is not None], f"tag {mode} {tagger.name}"
    )
    with session:
        for start in range(0, total, tagger.batch_size):
            if should_stop is not None and should_stop():
                result.stopped = True
                break
            chunk = todo[start : start + tagger.batch_size]
            arrays, ready = [], []
            for img, cap in chunk:
                try:
                    arrays.append(tagger.prepare(img))
                    ready.append((img, cap))
                except Exception as e:  # unreadable image: report, go on
                    result.failed.append((img, f"cannot be read: {e}"))
            scores = tagger.run(np.stack(arrays)) if arrays else []
            for (img, cap), probs in zip(ready, scores):
                tags = select_tags(probs, tagger.labels, options, tagger.spec)
                text = compose_caption(tags, existing[cap], mode, trigger, additional)
                session.write(cap, text.encode("utf-8"))
                if not dry_run:
                    result.written.append(cap)
                result.captions[cap] = text
            for img, _ in chunk:
                done += 1
                if progress:
                    progress(done, total, img)
    result.undo = session.record
    return result


class _DryRun:
    record = None

    def write(self, path, data) -> None:
        pass

    def __enter__(self) -> "_DryRun":
        return self

    def __exit__(self, *exc) -> None:
        pass


__all__ = [
    "CHARACTER",
    "DEFAULT_MODEL",
    "DEFAULT_MODELS_ROOT",
    "GENERAL",
    "Label",
    "MODELS",
    "MODES",
    "OverwriteNotConfirmed",
    "RATING",
    "TagOptions",
    "TagRunResult",
    "TaggerError",
    "TAGGER_FOLDER",
    "TaggerModel",
    "WD14Tagger",
    "choose_providers",
    "compose_caption",
    "format_tag",
    "get_model",
    "load_labels",
    "models_root",
    "parse_tags",
    "resolve_model_files",
    "select_tags",
    "standalone_models_root",
    "tag_dataset",
]
