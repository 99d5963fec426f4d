"""What the Dataset tab's buttons do, without Gradio.

:class:`DatasetLogic` answers each event of :mod:`lora_trainer.ui.dataset_panel`
with plain values (lists, strings, dicts of them); the panel only wires them to
components. The work itself is the core's: :mod:`lora_trainer.tagging.tags`
(batch edits with preview / apply / undo), :mod:`lora_trainer.tagging.captions_io`
(atomic caption writes, backups), :mod:`lora_trainer.tagging.wd14` (the tagger)
and :mod:`lora_trainer.dataset.doctor`.

The dataset is read from disk on every event (captions are small), so what the
page shows is what the files hold, whoever changed them. What has to outlive
one event is kept here, per dataset folder: the last batch preview (Apply
writes exactly what was previewed, and refuses when the operation's settings or
the files changed since) and the undo records of the batches and tagging runs
(Undo puts back the last one, byte for byte). Every batch apply backs up the
captions it touches first, under ``<dataset>/.lora_trainer_backup/<time>/``.

Tagging runs in a background thread, outside the host's job lock: the ONNX
tagger does not touch the WebUI's model, so it can run while the WebUI
generates. The tagger's session is released when the run ends.
"""
from __future__ import annotations

import hashlib
import io
import math
import os
import tempfile
import threading
import time
from dataclasses import dataclass, field, fields
from typing import Any, Iterator, Optional, Sequence

from ..fileio import write_atomic
from ..tagging.captions_io import (
    IMAGE_EXTENSIONS,
    CaptionIOError,
    UndoRecord,
    caption_path_for,
    is_image,
    iter_images,
    read_caption,
    undo,
    write_caption,
)
from ..tagging.tags import (
    escape_tag,
    join_tags,
    normalize_tag,
    parse_tags,
    subject_traits,
    tag_frequency,
    unescape_tag,
)
from . import dataset_render

# (label shown, tags.OPERATIONS name; "prune" is a "remove" of the chosen subject traits)
OPERATIONS: tuple[tuple[str, str], ...] = (
    ("Add tags", "add"),
    ("Remove tags", "remove"),
    ("Replace", "replace"),
    ("Remove duplicates", "dedupe"),
    ("Sort", "sort"),
    ("Trigger word first", "trigger_first"),
    ("Consolidate", "consolidate"),
    ("Prune subject traits", "prune"),
)
OPERATION_LABELS = tuple(label for label, _ in OPERATIONS)
_OPERATION_KEYS = {label.lower(): key for label, key in OPERATIONS} | {key: key for _, key in OPERATIONS}
POSITIONS = ("Append", "Prepend")
FILTER_MODES = ("AND", "OR")
TAG_MODES: tuple[tuple[str, str], ...] = (("If empty", "if-empty"), ("Append", "append"), ("Overwrite", "overwrite"))
TAG_MODE_LABELS = tuple(label for label, _ in TAG_MODES)
CAPTION_EXTENSIONS = (".txt", ".caption")
LORA_WEIGHT = 0.8  # the preferred weight the trainer writes into each LoRA's user metadata
THUMB_SIDE = 256
PREVIEW_SIDE = 1024
ROOT_CONCEPT = "."  # images directly in the dataset folder (a single-folder dataset)
MAX_IMAGES = 5000  # more under one folder: most likely not a dataset (a home folder typed by mistake)


class DatasetInputError(ValueError):
    """Something in the tab's inputs to fix; the message says what."""


# --- requests: the values of a group of controls, in the order the panel wires them -----------


@dataclass
class BatchRequest:
    """One batch operation's settings, as the controls hold them."""

    operation: str = "Add tags"  # a label of OPERATIONS or its key
    tags: str = ""  # add / remove: comma-separated
    position: str = "Append"  # add: Append | Prepend
    find: str = ""  # replace: the tag (or, with regex, the pattern)
    replace: str = ""  # replace: what it becomes (several tags allowed; empty removes)
    regex: bool = False
    trigger: str = ""  # trigger first: the word(s); consolidate: tags never dropped
    keep_first: Any = 0  # sort: tags at the front that stay put
    prune_folder: str = ""  # prune: the concept folder, relative to the dataset
    prune_tags: Sequence[str] = ()  # prune: the traits ticked for removal

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_values(cls, values: Sequence[Any]) -> "BatchRequest":
        names = cls.names()
        if len(values) != len(names):
            raise ValueError(f"expected {len(names)} batch values ({', '.join(names)}), got {len(values)}")
        return cls(**dict(zip(names, values)))

    def values(self) -> list[Any]:
        return [getattr(self, name) for name in self.names()]

    @property
    def key(self) -> str:
        key = _OPERATION_KEYS.get(str(self.operation or "").strip().lower())
        if key is None:
            raise DatasetInputError(f"unknown operation {self.operation!r}; choose one of {', '.join(OPERATION_LABELS)}")
        return key

    def signature(self) -> tuple:
        return tuple(tuple(v) if isinstance(v, (list, tuple)) else v for v in self.values())


@dataclass
class TagRequest:
    """The tagging settings, as the controls hold them."""

    model: str = ""  # a name of wd14.MODELS ("" = the default)
    model_dir: str = ""  # a folder with model.onnx + selected_tags.csv (offline), or where to download to
    download: bool = True
    general_threshold: Optional[float] = None
    character_threshold: Optional[float] = None
    mode: str = "If empty"  # a label of TAG_MODES or its key
    confirm_overwrite: bool = False
    trigger: str = ""
    additional: str = ""
    exclude: str = ""
    escape: bool = False
    exclude_rating: bool = True
    keep_underscores: bool = False

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_values(cls, values: Sequence[Any]) -> "TagRequest":
        names = cls.names()
        if len(values) != len(names):
            raise ValueError(f"expected {len(names)} tagging values ({', '.join(names)}), got {len(values)}")
        return cls(**dict(zip(names, values)))

    def values(self) -> list[Any]:
        return [getattr(self, name) for name in self.names()]

    @property
    def mode_key(self) -> str:
        wanted = str(self.mode or "").strip().lower()
        for label, key in TAG_MODES:
            if wanted in (label.lower(), key):
                return key
        raise DatasetInputError(f"unknown tagging mode {self.mode!r}; choose one of {', '.join(TAG_MODE_LABELS)}")


# --- the dataset on disk ----------------------------------------------------------------------


@dataclass
class ImageItem:
    path: str  # the image, absolute
    caption_path: str
    text: Optional[str]  # the caption's text; None when there is no caption file
    tags: list[str]  # every line's tags
    concept: str  # its folder relative to the dataset (ROOT_CONCEPT for the dataset folder itself)
    error: str = ""  # why the caption could not be read

    @property
    def label(self) -> str:
        """What the gallery shows under the image."""
        if self.error:
            return f"(unreadable caption: {self.error})"
        if self.text is None:
            return "(no caption)"
        lines = [line.strip() for line in self.text.splitlines() if line.strip()]
        return " | ".join(lines) if lines else "(empty caption)"


def _number(value: Any, what: str, low: float, high: float, low_open: bool = False) -> float:
    """A box's number within ``[low, high]`` (``(low, high]`` with ``low_open``), or a
    DatasetInputError naming the box."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    inside = (low < number if low_open else low <= number) and number <= high  # False for nan
    if not inside:
        bounds = f"above {low:g} and up to {high:g}" if low_open else f"between {low:g} and {high:g}"
        raise DatasetInputError(f"{what} must be a number {bounds}, not {value!r}")
    return number


def _percent(value: Any) -> float:
    return _number(value, "'In at least this % of its images'", 0, 100, low_open=True)


def _threshold(value: Any, what: str) -> Optional[float]:
    """A tagging threshold box: empty means the model's default."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return _number(value, what, 0.0, 1.0)


def clean_folder(text: Any) -> str:
    """A folder typed or pasted into a box: blanks and surrounding quotes dropped, ``~`` expanded."""
    value = str(text or "").strip().strip('"').strip("'").strip()
    return os.path.abspath(os.path.expanduser(value)) if value else ""


def follow_train_folder(train_dir: Any, box: Any, followed: Any) -> tuple[str, str]:
    """The Dataset tab's folder box after the Train tab's ``train_data_dir`` changed, as
    ``(box, followed)``; ``followed`` is what the box last took from the Train tab. The box
    follows while it is empty or still holds that value; a folder the user typed there
    stays (clearing the box makes it follow again)."""
    train = str(train_dir or "").strip()
    current = str(box or "").strip()
    if not current or current == str(followed or "").strip():
        return train, train
    return str(box), str(followed or "")


def host_models_dir(host) -> Optional[str]:
    """The host's models folder (``host.models_dir()``, a WebUI's ``models``), None without one."""
    get = getattr(host, "models_dir", None)
    if get is None:
        return None
    try:
        value = get()
    except Exception:  # a host that cannot tell (WebUI paths not set up): the standalone default
        return None
    return os.fspath(value) if value else None


def clean_extension(text: Any) -> str:
    ext = str(text or "").strip() or ".txt"
    if not ext.startswith("."):
        ext = "." + ext
    if ext.lower() in IMAGE_EXTENSIONS or os.sep in ext or (os.altsep and os.altsep in ext) or len(ext) < 2:
        # a caption written with an image's extension would replace the image
        raise DatasetInputError(f"caption extension {ext!r} cannot be used: name a text extension such as .txt or .caption")
    return ext


def scan_items(folder: str, caption_extension: str = ".txt", limit: Optional[int] = None) -> list[ImageItem]:
    """Every image under ``folder`` (hidden folders such as backups skipped) with its caption;
    at most ``limit`` of them."""
    items = []
    for path in iter_images(folder, recursive=True):
        if limit is not None and len(items) >= limit:
            break
        cap = caption_path_for(path, caption_extension)
        text, error, tags = None, "", []
        try:
            text = read_caption(cap)
        except CaptionIOError as exc:
            error = str(exc)
        except OSError as exc:
            error = f"{cap}: {exc.strerror or exc}"
        if text is not None:
            tags = [t for line in text.splitlines() for t in parse_tags(line)]
        concept = os.path.relpath(os.path.dirname(path), folder)
        items.append(ImageItem(os.path.abspath(path), os.path.abspath(cap), text, tags, concept, error))
    return items


def filter_items(items: Sequence[ImageItem], filter_text: str = "", mode: str = "AND") -> list[ImageItem]:
    """Images whose captions hold all (``AND``) or any (``OR``) of the tags typed; every image
    when none is typed. Tags compare normalized (``Long_Hair`` is ``long hair``)."""
    wanted = {normalize_tag(t) for t in parse_tags(filter_text)}
    if not wanted:
        return list(items)
    any_of = str(mode or "AND").strip().upper() == "OR"
    out = []
    for item in items:
        have = {normalize_tag(t) for t in item.tags}
        if (wanted & have) if any_of else wanted <= have:
            out.append(item)
    return out


def frequency(items: Sequence[ImageItem]) -> list[tuple[str, int]]:
    """``[(tag, images holding it)]`` for these images, most frequent first."""
    return tag_frequency(item.tags for item in items)


def describe(key: str, kwargs: dict[str, Any], request: BatchRequest) -> str:
    """A batch operation in words, for the preview, the messages and the backup's manifest."""
    tags = join_tags(kwargs.get("tags") or [])
    if key == "add":
        return f"add {tags} ({kwargs.get('position', 'append')})"
    if key == "replace":
        return f"replace {kwargs['old']!r} with {kwargs['new']!r}" + (" (regex)" if kwargs.get("regex") else "")
    if key == "dedupe":
        return "remove duplicate tags"
    if key == "sort":
        keep = kwargs.get("keep_first", 0)
        return "sort tags" + (f" after the first {keep}" if keep else "")
    if key == "trigger_first":
        return f"move {join_tags(kwargs['trigger'])} first"
    if key == "consolidate":
        protect = join_tags(kwargs.get("protect") or [])
        return "consolidate overlapping tags" + (f" (keeping {protect})" if protect else "")
    if key == "prune":
        return f"prune {request.prune_folder}: remove {tags}"
    return f"remove {tags}"


def prompt_from_caption(caption: str, lora_name: str = "", weight: float = LORA_WEIGHT) -> str:
    """A txt2img prompt from a caption's first line: each tag's parentheses escaped
    (a caption's ``name (series)`` is not prompt emphasis), and ``<lora:NAME:0.8>`` in
    front when a name is given."""
    lines = [line for line in str(caption or "").splitlines() if parse_tags(line)]
    tags = [escape_tag(unescape_tag(t)) for t in parse_tags(lines[0])] if lines else []
    name = str(lora_name or "").strip()
    if name.lower().endswith(".safetensors"):
        name = name[: -len(".safetensors")]
    text = join_tags(tags)
    if not name:
        return text
    lora = f"<lora:{name}:{weight:g}>"
    return f"{lora} {text}" if text else lora


# --- thumbnails ---------------------------------------------------------------------------------


def default_cache_dir() -> str:
    # under the temp folder: Gradio 4 serves files from there (not from arbitrary dataset folders)
    return os.path.join(tempfile.gettempdir(), "lora_trainer_thumbs")


def thumbnail(path: str, side: int, cache_dir: str) -> Optional[str]:
    """A copy of the image no larger than ``side`` (EXIF orientation applied), cached under
    ``cache_dir`` by path, size and modification time; None when the image cannot be read."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    key = hashlib.sha1(f"{os.path.abspath(path)}|{stat.st_mtime_ns}|{stat.st_size}|{side}".encode("utf-8")).hexdigest()
    for ext in (".jpg", ".png"):
        cached = os.path.join(cache_dir, key + ext)
        if os.path.isfile(cached):
            return cached
    try:
        from PIL import Image, ImageOps

        with Image.open(path) as image:
            image.draft("RGB", (side, side))  # JPEG: decode at a reduced scale
            image = ImageOps.exif_transpose(image)
            image.thumbnail((side, side))
            alpha = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
            image = image.convert("RGBA" if alpha else "RGB")
            buffer = io.BytesIO()
            if alpha:
                image.save(buffer, format="PNG")
                ext = ".png"
            else:
                image.save(buffer, format="JPEG", quality=88)
                ext = ".jpg"
    except Exception:  # an unreadable image gets no thumbnail; the doctor names it
        return None
    cached = os.path.join(cache_dir, key + ext)
    write_atomic(cached, buffer.getvalue())
    return cached


def _placeholder(cache_dir: str) -> str:
    path = os.path.join(cache_dir, "unreadable.png")
    if not os.path.isfile(path):
        from PIL import Image

        buffer = io.BytesIO()
        Image.new("RGB", (64, 64), (128, 128, 128)).save(buffer, format="PNG")
        write_atomic(path, buffer.getvalue())
    return path


# --- tagging runs -------------------------------------------------------------------------------


@dataclass
class TagJob:
    folder: str
    model: str
    mode: str
    state: str = "loading"  # loading (model files, session), running, done, stopped, failed
    done: int = 0
    total: int = 0
    current: str = ""
    message: str = ""
    result: Any = None  # wd14.TagRunResult
    session_released: Optional[bool] = None
    started: float = field(default_factory=time.time)
    finished: Optional[float] = None
    stop_event: threading.Event = field(default_factory=threading.Event, repr=False)
    thread: Optional[threading.Thread] = field(default=None, repr=False)

    @property
    def active(self) -> bool:
        return self.state in ("loading", "running")

    def status(self) -> dict[str, Any]:
        result = self.result
        return {
            "folder": self.folder,
            "model": self.model,
            "mode": self.mode,
            "state": self.state,
            "done": self.done,
            "total": self.total,
            "current": self.current,
            "message": self.message,
            "written": len(result.written) if result is not None else 0,
            "skipped": len(result.skipped) if result is not None else 0,
            "failed": list(result.failed) if result is not None else [],
            "backup_dir": result.backup_dir if result is not None else None,
            "session_released": self.session_released,
        }


# --- the logic ------------------------------------------------------------------------------------


class DatasetLogic:
    """The Dataset tab's handlers. ``default_folder`` fills the folder box at first;
    ``cache_dir`` holds the gallery's thumbnails (default: a folder under the temp dir);
    ``tagger_threads`` is onnxruntime's CPU threads (0: its own choice)."""

    def __init__(self, host=None, manager=None, *, default_folder: str = "", cache_dir: Optional[str] = None,
                 tagger_threads: int = 0):
        self.host = host
        self.manager = manager
        self.default_folder = default_folder or ""
        self.cache_dir = cache_dir or default_cache_dir()
        self.tagger_threads = int(tagger_threads or 0)
        self._lock = threading.RLock()
        self._previews: dict[str, tuple[tuple, Any]] = {}  # dataset -> (signature, tags.Preview)
        self._undo: dict[str, list[UndoRecord]] = {}  # dataset -> records, last one last
        self._job: Optional[TagJob] = None

    @property
    def tagger_models_root(self) -> str:
        """Where WD14 models are looked for and downloaded when the "Local model folder" box is
        empty: ``<the host's models folder>/wd14_tagger`` inside a WebUI, else the standalone
        default (:func:`lora_trainer.tagging.wd14.models_root`)."""
        from ..tagging.wd14 import models_root

        return models_root(host_models_dir(self.host))

    # -- helpers ------------------------------------------------------------------------------

    @staticmethod
    def _dataset(folder: Any) -> str:
        path = clean_folder(folder)
        if not path:
            raise DatasetInputError("type the dataset folder (the train_data_dir holding N_name folders, "
                                    "or one folder of images) and press Open")
        if not os.path.isdir(path):
            raise DatasetInputError(f"{path} is not a folder: type the dataset folder (train_data_dir) and press Open")
        return path

    def _busy(self, folder: str) -> Optional[str]:
        job = self._job
        if job is not None and job.active and (self._inside(job.folder, folder) or self._inside(folder, job.folder)):
            return (f"tagging is still running on {job.folder} ({job.done}/{job.total}); wait for it to finish "
                    "(or press Stop) before editing captions")
        return None

    @staticmethod
    def _inside(folder: str, path: str) -> bool:
        root = os.path.realpath(folder)
        real = os.path.realpath(path)
        return real == root or real.startswith(root.rstrip(os.sep) + os.sep)

    def undo_records(self, folder: Any) -> list[UndoRecord]:
        """The undo records kept for a dataset (oldest first)."""
        with self._lock:
            return list(self._undo.get(os.path.realpath(clean_folder(folder)), []))

    def _push_undo(self, folder: str, record: UndoRecord) -> None:
        with self._lock:
            self._undo.setdefault(os.path.realpath(folder), []).append(record)

    # -- opening and viewing ------------------------------------------------------------------

    def view(self, folder: Any, caption_extension: Any = ".txt", filter_text: str = "",
             filter_mode: str = "AND") -> dict[str, Any]:
        """The gallery (thumbnail, caption) of the images the filter lets through, their paths
        in gallery order, the tag frequency table, the concept folders and a message."""
        empty = {"gallery": [], "paths": [], "frequency": dataset_render.frequency_html([], 0, 0),
                 "concepts": [], "count": 0, "total": 0}
        try:
            root = self._dataset(folder)
            ext = clean_extension(caption_extension)
        except DatasetInputError as exc:
            return dict(empty, message=f"**Cannot open:** {exc}")
        items = scan_items(root, ext, limit=MAX_IMAGES + 1)
        if not items:
            return dict(empty, message=f"**No images** in `{root}` or its sub-folders "
                                       f"({', '.join(IMAGE_EXTENSIONS)}).")
        if len(items) > MAX_IMAGES:
            return dict(empty, message=f"**Not opened:** more than {MAX_IMAGES} images under `{root}`; "
                                       "open the dataset folder itself (the one holding the N_name folders).")
        shown = filter_items(items, filter_text, filter_mode)
        gallery = []
        for item in shown:
            thumb = thumbnail(item.path, THUMB_SIDE, self.cache_dir) or _placeholder(self.cache_dir)
            gallery.append((thumb, item.label))
        concepts = sorted({item.concept for item in items})
        uncaptioned = sum(1 for item in items if item.text is None or not item.text.strip())
        unreadable = [item for item in items if item.error]
        text = (f"`{root}`: {len(items)} image(s) in {len(concepts)} folder(s)"
                + (f", {uncaptioned} without a caption" if uncaptioned else "")
                + (f"; showing {len(shown)} that match the filter" if len(shown) != len(items) else "") + ".")
        if unreadable:
            text += "\n\n" + "\n".join(f"- {item.error}" for item in unreadable[:5])
        return {
            "gallery": gallery,
            "paths": [item.path for item in shown],
            "frequency": dataset_render.frequency_html(frequency(shown), len(shown), len(items)),
            "concepts": concepts,
            "count": len(shown),
            "total": len(items),
            "message": text,
        }

    def select(self, paths: Sequence[str], index: Any, caption_extension: Any = ".txt") -> dict[str, Any]:
        """The image at ``index`` of the gallery: its path, caption text and a large preview."""
        try:
            i = int(index)
            path = list(paths or [])[i]
        except (TypeError, ValueError, IndexError):
            return {"path": "", "caption": "", "preview": None, "message": "Click an image of the gallery."}
        return self.load_caption(path, caption_extension)

    def load_caption(self, path: str, caption_extension: Any = ".txt") -> dict[str, Any]:
        if not path:
            return {"path": "", "caption": "", "preview": None, "message": ""}
        try:
            ext = clean_extension(caption_extension)
            text = read_caption(caption_path_for(path, ext))
        except (DatasetInputError, CaptionIOError) as exc:
            return {"path": path, "caption": "", "preview": None, "message": f"**Cannot read the caption:** {exc}"}
        preview = thumbnail(path, PREVIEW_SIDE, self.cache_dir)
        note = "" if text is not None else "No caption file yet: Save creates it."
        return {"path": path, "caption": text or "", "preview": preview, "message": note}

    def save_caption(self, folder: Any, path: str, text: str, caption_extension: Any = ".txt") -> str:
        """Write the caption of the selected image exactly as typed (atomically). Returns the message."""
        try:
            root = self._dataset(folder)
            ext = clean_extension(caption_extension)
        except DatasetInputError as exc:
            return f"**Not saved:** {exc}"
        if not path:
            return "**Not saved:** click an image of the gallery first."
        if not (is_image(path) and os.path.isfile(path) and self._inside(root, path)):
            return f"**Not saved:** {path} is not an image of the open dataset `{root}`; open it again."
        busy = self._busy(root)
        if busy:
            return f"**Not saved:** {busy}."
        caption = caption_path_for(path, ext)
        try:
            write_caption(caption, "" if text is None else str(text))
        except OSError as exc:
            return f"**Not saved:** {caption}: {exc.strerror or exc}"
        return f"Saved `{os.path.relpath(caption, root)}`."

    # -- batch operations -----------------------------------------------------------------------

    def _batch_targets(self, root: str, ext: str, filter_text: str, filter_mode: str,
                       request: BatchRequest) -> tuple[list[str], str, dict[str, Any]]:
        """(images to edit, tags.OPERATIONS name, its arguments)."""
        key = request.key
        items = filter_items(scan_items(root, ext), filter_text, filter_mode)
        tags = parse_tags(request.tags)
        if key in ("add", "remove"):
            if not tags:
                raise DatasetInputError(f"type the tags to {'add' if key == 'add' else 'remove'} (comma-separated)")
            kwargs: dict[str, Any] = {"tags": tags}
            if key == "add":
                position = str(request.position or "Append").strip().lower()
                if position not in ("append", "prepend"):
                    raise DatasetInputError(f"position must be Append or Prepend, not {request.position!r}")
                kwargs["position"] = position
            return [i.path for i in items], key, kwargs
        if key == "replace":
            find = str(request.find or "").strip()
            if not find:
                raise DatasetInputError("type the tag to replace (or, with Regex, the pattern)")
            new = str(request.replace or "")
            if request.regex:
                import re

                from ..tagging.tags import compile_replacement

                try:
                    re.compile(find)
                except re.error as exc:
                    raise DatasetInputError(f"Find: the pattern {find!r} is not a valid regular expression: "
                                            f"{exc}") from None
                try:
                    compile_replacement(find, new)
                except ValueError as exc:
                    raise DatasetInputError(f"Replace with: {exc}") from None
            return [i.path for i in items], key, {"old": find, "new": new, "regex": bool(request.regex)}
        if key == "dedupe":
            return [i.path for i in items], key, {}
        if key == "sort":
            try:
                keep = int(float(request.keep_first or 0))
            except (TypeError, ValueError, OverflowError):  # OverflowError: "inf"
                raise DatasetInputError(f"'Keep the first N tags' must be a whole number, not "
                                        f"{request.keep_first!r}") from None
            return [i.path for i in items], key, {"keep_first": max(keep, 0)}
        if key == "trigger_first":
            trigger = parse_tags(request.trigger)
            if not trigger:
                raise DatasetInputError("type the trigger word(s) to move to the front")
            return [i.path for i in items], key, {"trigger": trigger}
        if key == "consolidate":
            return [i.path for i in items], key, {"protect": parse_tags(request.trigger)}
        # prune: remove the ticked traits from the filtered images of one concept folder
        concept = str(request.prune_folder or "").strip()
        if not concept:
            raise DatasetInputError("choose the concept folder and press Find traits")
        chosen = [t for t in (request.prune_tags or []) if str(t).strip()]
        if not chosen:
            raise DatasetInputError("tick the traits to remove (Find traits lists them)")
        return [i.path for i in items if i.concept == concept], "remove", {"tags": list(chosen)}

    def _signature(self, root: str, ext: str, filter_text: str, filter_mode: str, request: BatchRequest) -> tuple:
        return (os.path.realpath(root), ext, str(filter_text or ""), str(filter_mode or ""), request.signature())

    def preview_batch(self, folder: Any, caption_extension: Any, filter_text: str, filter_mode: str,
                      *request_values: Any) -> dict[str, Any]:
        """What the operation would change on the filtered images; nothing is written.
        ``request_values``: :class:`BatchRequest`'s fields in order."""
        from ..tagging import tags as T

        request = BatchRequest.from_values(request_values)
        try:
            root = self._dataset(folder)
            ext = clean_extension(caption_extension)
            targets, name, kwargs = self._batch_targets(root, ext, filter_text, filter_mode, request)
            preview = T.preview(targets, name, ext, **kwargs) if targets else T.Preview(name, [], 0)
        except (DatasetInputError, CaptionIOError, ValueError) as exc:
            # ValueError: what the tag operations reject (checked above already; never a traceback)
            return {"message": f"**No preview:** {exc}", "html": "", "files": [], "count": 0, "scanned": 0}
        except OSError as exc:
            text = f"{exc.filename}: {exc.strerror}" if exc.filename and exc.strerror else str(exc)
            return {"message": f"**No preview:** {text}", "html": "", "files": [], "count": 0, "scanned": 0}
        preview.operation = describe(request.key, kwargs, request)
        with self._lock:
            self._previews[os.path.realpath(root)] = (self._signature(root, ext, filter_text, filter_mode, request),
                                                      preview)
        files = [c.path for c in preview.changes]
        message = (f"{len(files)} of {preview.scanned} caption(s) would change. Apply writes them "
                   "(after a backup); Undo puts them back." if files else
                   f"Nothing to change in {preview.scanned} caption(s).")
        return {"message": message, "html": dataset_render.diff_html(preview.operation, preview.changes,
                                                                     preview.scanned, root),
                "files": files, "count": len(files), "scanned": preview.scanned}

    def apply_batch(self, folder: Any, caption_extension: Any, filter_text: str, filter_mode: str,
                    *request_values: Any) -> dict[str, Any]:
        """Write what the last preview showed, when the settings are still the previewed ones.
        Every caption touched is backed up first; the undo record is kept for Undo."""
        from ..tagging import tags as T

        request = BatchRequest.from_values(request_values)
        try:
            root = self._dataset(folder)
            ext = clean_extension(caption_extension)
        except DatasetInputError as exc:
            return {"message": f"**Not applied:** {exc}", "html": "", "files": [], "count": 0}
        key = os.path.realpath(root)
        with self._lock:
            stored = self._previews.get(key)
            if stored is None or stored[0] != self._signature(root, ext, filter_text, filter_mode, request):
                return {"message": "**Not applied:** press Preview first (the operation, its settings or the "
                                   "filter changed since the last preview).", "html": "", "files": [], "count": 0}
            busy = self._busy(root)
            if busy:
                return {"message": f"**Not applied:** {busy}.", "html": "", "files": [], "count": 0}
            preview = stored[1]
            try:
                record = T.apply(preview, backup_root=root)
            except (CaptionIOError, OSError) as exc:
                return {"message": f"**Not applied:** {exc}", "html": "", "files": [], "count": 0}
            del self._previews[key]
            if record is not None:
                self._undo.setdefault(key, []).append(record)
        files = [c.path for c in preview.changes]
        if record is None:
            return {"message": "Nothing to change.", "html": "", "files": [], "count": 0}
        return {"message": (f"Applied to {len(files)} caption(s). Backup: `{record.backup_dir}`; Undo puts them back."),
                "html": dataset_render.diff_html(preview.operation, preview.changes, preview.scanned, root,
                                                 applied=True),
                "files": files, "count": len(files)}

    def undo_last(self, folder: Any) -> str:
        """Put back the captions of the last batch (or tagging run) on this dataset, byte for byte."""
        try:
            root = self._dataset(folder)
        except DatasetInputError as exc:
            return f"**Nothing undone:** {exc}"
        key = os.path.realpath(root)
        with self._lock:
            busy = self._busy(root)
            if busy:
                return f"**Nothing undone:** {busy}."
            records = self._undo.get(key) or []
            if not records:
                return "Nothing to undo for this dataset (since the tab was started)."
            record = records.pop()
            self._previews.pop(key, None)
            try:
                result = undo(record)
            except (CaptionIOError, OSError) as exc:
                records.append(record)
                return f"**Undo failed:** {exc}"
        text = (f"Undid `{record.operation}`: {len(result.restored)} caption(s) restored"
                + (f", {len(result.removed)} created by it removed" if result.removed else "") + ".")
        if result.skipped:
            text += ("\n\nLeft as they are (edited after it; the old text is in "
                     f"`{record.backup_dir}`):\n" + "\n".join(f"- `{p}`" for p in result.skipped[:10]))
        return text

    def find_traits(self, folder: Any, caption_extension: Any, concept: str, percent: Any,
                    trigger: str = "") -> dict[str, Any]:
        """Tags in at least ``percent`` % of a concept folder's images: the subject's fixed traits,
        offered for removal. ``choices``: (label, tag) pairs; nothing is ticked."""
        try:
            root = self._dataset(folder)
            ext = clean_extension(caption_extension)
            fraction = _percent(percent) / 100.0
        except DatasetInputError as exc:
            return {"choices": [], "message": f"**No traits:** {exc}"}
        concept = str(concept or "").strip()
        items = [i for i in scan_items(root, ext) if i.concept == concept]
        if not items:
            return {"choices": [], "message": f"**No traits:** no images in the folder {concept or '(none chosen)'!r}."}
        exclude = parse_tags(trigger)
        name = os.path.basename(concept) if concept != ROOT_CONCEPT else ""
        head, _, tokens = name.partition("_")
        if head.isdigit() and tokens:
            exclude.append(tokens.replace("_", " "))  # the folder's class tokens are the trigger too
        traits = subject_traits([i.tags for i in items], min_fraction=fraction, exclude=exclude)
        choices = [(f"{t.tag} ({t.count}/{t.total})", t.tag) for t in traits]
        message = (f"{len(traits)} tag(s) in at least {float(percent):g}% of the {len(items)} image(s) of "
                   f"`{concept}`: tick the ones the trigger word should absorb, then Preview." if traits else
                   f"No tag is in {float(percent):g}% or more of the {len(items)} image(s) of `{concept}`.")
        return {"choices": choices, "message": message}

    # -- tagging ------------------------------------------------------------------------------------

    def start_tagging(self, folder: Any, caption_extension: Any, *request_values: Any) -> str:
        """Start a WD14 run on the dataset in a background thread; returns the message.
        ``request_values``: :class:`TagRequest`'s fields in order."""
        request = TagRequest.from_values(request_values)
        try:
            root = self._dataset(folder)
            ext = clean_extension(caption_extension)
            mode = request.mode_key
        except DatasetInputError as exc:
            return f"**Not started:** {exc}"
        if mode == "overwrite" and not request.confirm_overwrite:
            return ("**Not started:** Overwrite replaces every existing caption. Tick *Yes, overwrite* to confirm "
                    "(each caption is backed up first), or choose If empty / Append.")
        from ..tagging.wd14 import DEFAULT_MODEL, TaggerError, TagOptions, get_model

        try:
            if str(request.model or "").strip():
                get_model(str(request.model))
            options = TagOptions(
                general_threshold=_threshold(request.general_threshold, "the general tag threshold"),
                character_threshold=_threshold(request.character_threshold, "the character tag threshold"),
                include_rating=not request.exclude_rating,
                exclude=parse_tags(request.exclude),
                replace_underscores=not request.keep_underscores,
                escape=bool(request.escape),
            )
        except (DatasetInputError, TaggerError) as exc:
            return f"**Not started:** {exc}."
        with self._lock:
            if self._job is not None and self._job.active:
                return f"**Not started:** tagging is already running on `{self._job.folder}`."
            job = TagJob(root, request.model or DEFAULT_MODEL, mode)
            job.thread = threading.Thread(target=self._run_tagging, args=(job, request, ext, mode, options),
                                          name="lora_trainer_tagging", daemon=True)
            self._job = job
            job.thread.start()
        return f"Tagging `{root}` ({mode}) started."

    def _run_tagging(self, job: TagJob, request: TagRequest, ext: str, mode: str, options) -> None:
        from ..tagging.wd14 import TaggerError, WD14Tagger, tag_dataset

        def progress(done: int, total: int, image: str) -> None:
            job.done, job.total, job.current = done, total, image

        tagger = None
        try:
            job.message = "loading the model"
            tagger = WD14Tagger.from_model(request.model or None,
                                           clean_folder(request.model_dir) or self.tagger_models_root,
                                           download=bool(request.download), threads=self.tagger_threads)
            job.model = tagger.name
            with tagger:
                job.state, job.message = "running", f"on {', '.join(tagger.providers)}"
                result = tag_dataset(job.folder, tagger, mode=mode, confirm_overwrite=bool(request.confirm_overwrite),
                                     trigger=parse_tags(request.trigger), additional=parse_tags(request.additional),
                                     options=options, caption_extension=ext, backup_root=job.folder,
                                     progress=progress, should_stop=job.stop_event.is_set)
            job.result = result
            if result.undo is not None and result.written:
                self._push_undo(job.folder, result.undo)
            job.total = job.total or len(result.written) + len(result.failed)
            job.state = "stopped" if result.stopped else "done"
            job.message = (f"{len(result.written)} caption(s) written, {len(result.skipped)} skipped (already "
                           f"captioned), {len(result.failed)} failed"
                           + ("; stopped early" if result.stopped else "")
                           + (f". Backup: {result.backup_dir} (Undo puts it back)" if result.written else "")
                           + ". Open the dataset again to see the new captions.")
        except (TaggerError, CaptionIOError, OSError) as exc:
            job.state, job.message = "failed", str(exc)
        except Exception as exc:  # the thread must always end in a state the page can show
            job.state, job.message = "failed", f"{type(exc).__name__}: {exc}"
        finally:
            job.session_released = tagger is None or not tagger.is_open
            job.finished = time.time()

    def stop_tagging(self) -> str:
        job = self._job
        if job is None or not job.active:
            return "No tagging run to stop."
        job.stop_event.set()
        return "Stopping after the current image; what was written stays (and Undo puts it back)."

    def tag_status(self) -> dict[str, Any]:
        job = self._job
        return job.status() if job is not None else {}

    def tag_status_html(self) -> str:
        return dataset_render.tag_status_html(self.tag_status())

    def tagging_active(self) -> bool:
        job = self._job
        return job is not None and job.active

    def wait_tagging(self, timeout: Optional[float] = None) -> dict[str, Any]:
        """Block until the current run ends (for scripts and tests); returns its status."""
        job = self._job
        if job is not None and job.thread is not None:
            job.thread.join(timeout)
        return self.tag_status()

    def watch_tagging(self, interval: float = 1.0, limit: Optional[float] = None) -> Iterator[str]:
        """The status HTML now, then every ``interval`` seconds while the run lasts (the page's
        progress while it stays open; Refresh shows it again after a reload)."""
        deadline = None if limit is None else time.monotonic() + limit
        yield self.tag_status_html()
        while self.tagging_active() and (deadline is None or time.monotonic() < deadline):
            time.sleep(interval)
            yield self.tag_status_html()

    # -- the rest -------------------------------------------------------------------------------

    def check(self, folder: Any, caption_extension: Any = ".txt", trigger: str = "") -> str:
        """The dataset doctor's report as HTML."""
        try:
            root = self._dataset(folder)
            ext = clean_extension(caption_extension)
        except DatasetInputError as exc:
            return dataset_render.message_html(str(exc), "error")
        from ..dataset.doctor import check_dataset

        # several words typed: the first is the one every caption must hold (the doctor takes one tag)
        trigger_word = next(iter(parse_tags(trigger)), None)
        try:
            report = check_dataset(root, None, ext, trigger_word)
        except OSError as exc:
            return dataset_render.message_html(f"could not check {root}: {exc}", "error")
        return dataset_render.doctor_html(report)

    @staticmethod
    def prompt(caption: str, lora_name: str = "") -> str:
        """The txt2img prompt for a caption (see :func:`prompt_from_caption`)."""
        return prompt_from_caption(caption, lora_name)


__all__ = [
    "BatchRequest",
    "CAPTION_EXTENSIONS",
    "DatasetInputError",
    "DatasetLogic",
    "FILTER_MODES",
    "ImageItem",
    "LORA_WEIGHT",
    "MAX_IMAGES",
    "OPERATIONS",
    "OPERATION_LABELS",
    "POSITIONS",
    "ROOT_CONCEPT",
    "TAG_MODES",
    "TAG_MODE_LABELS",
    "TagJob",
    "TagRequest",
    "clean_extension",
    "clean_folder",
    "describe",
    "filter_items",
    "follow_train_folder",
    "frequency",
    "host_models_dir",
    "prompt_from_caption",
    "scan_items",
    "thumbnail",
]
