"""Caption files on disk: finding them, reading them, writing them atomically,
and backups that restore byte-identical.

Every write goes through :func:`lora_trainer.fileio.write_atomic` (temporary
file beside the caption, fsync, ``os.replace``), the same writer the LoRA files use.

A batch of writes (:func:`apply_writes`) first copies every caption it will
touch into ``<root>/.lora_trainer_backup/<time>/`` (byte-identical, same
relative path) with a ``manifest.json``; the returned :class:`UndoRecord`
(JSON-able, also saved as that manifest) restores them with :func:`undo`.
The folder's name starts with a dot, so the dataset scan and the tagger
never take it for a concept folder.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Iterable, Iterator, Optional, Union

from ..fileio import write_atomic

PathLike = Union[str, os.PathLike]

# the trainer's list (lora_trainer.dataset.folders.IMAGE_EXTENSIONS, any letter case),
# repeated so that this module does not import the dataset package (torch); a test keeps them equal
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
BACKUP_DIR_NAME = ".lora_trainer_backup"
MANIFEST = "manifest.json"
JOURNAL = "journal.jsonl"


class CaptionIOError(RuntimeError):
    """A caption could not be read, written or restored; the message names the file and the fix."""


# --- finding images and their captions ------------------------------------------


def is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def iter_images(root: PathLike, recursive: bool = True) -> Iterator[str]:
    """Image files under ``root`` in a stable order; hidden files and folders
    (backups, ``.cache``) are skipped. ``root`` may also be a single image."""
    root = os.fspath(root)
    if os.path.isfile(root):
        if is_image(root):
            yield root
        return
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")) if recursive else []
        for name in sorted(filenames):
            if not name.startswith(".") and is_image(name):
                yield os.path.join(dirpath, name)


def caption_path_for(image_path: PathLike, caption_extension: str = ".txt") -> str:
    if caption_extension and not caption_extension.startswith("."):
        caption_extension = "." + caption_extension
    return os.path.splitext(os.fspath(image_path))[0] + caption_extension


# --- reading and writing ---------------------------------------------------------


def read_bytes(path: PathLike) -> Optional[bytes]:
    """The file's bytes, or None when it does not exist."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def read_caption(path: PathLike) -> Optional[str]:
    """Caption text (UTF-8, a leading byte-order mark dropped), or None when the file is missing."""
    raw = read_bytes(path)
    if raw is None:
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CaptionIOError(f"{os.fspath(path)}: caption is not UTF-8 (byte {e.start}); re-save it as UTF-8") from None
    return text[1:] if text.startswith("\ufeff") else text


def write_caption(path: PathLike, text: str) -> None:
    write_atomic(path, text.encode("utf-8"))


def sha256(data: Optional[bytes]) -> Optional[str]:
    return None if data is None else hashlib.sha256(data).hexdigest()


# --- backups and undo --------------------------------------------------------------


@dataclass
class UndoEntry:
    path: str  # the caption, absolute
    backup: Optional[str]  # the copy, relative to the backup folder; None: the file did not exist before
    after_sha256: Optional[str] = None  # what the operation wrote; None: it did not write this file


@dataclass
class UndoRecord:
    backup_dir: str
    created: str  # local time, ISO 8601
    operation: str
    entries: list[UndoEntry] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "UndoRecord":
        entries = [UndoEntry(**e) for e in data.get("entries", [])]
        return cls(data["backup_dir"], data.get("created", ""), data.get("operation", ""), entries)

    @classmethod
    def load(cls, backup_dir: PathLike) -> "UndoRecord":
        """The record saved in a backup folder, with the writes of a run that
        stopped before it could finish its manifest (read from its journal)."""
        backup_dir = os.fspath(backup_dir)
        with open(os.path.join(backup_dir, MANIFEST), encoding="utf-8") as f:
            record = cls.from_dict(json.load(f))
        journal = os.path.join(backup_dir, JOURNAL)
        if os.path.isfile(journal):
            by_path = {e.path: e for e in record.entries}
            with open(journal, encoding="utf-8") as f:
                for line in f:
                    try:
                        item = json.loads(line)
                    except ValueError:
                        continue  # a line cut short by the crash
                    if item.get("path") in by_path:
                        by_path[item["path"]].after_sha256 = item.get("after_sha256")
        return record

    @property
    def files(self) -> list[str]:
        """Captions the operation wrote."""
        return [e.path for e in self.entries if e.after_sha256 is not None]


def new_backup_dir(root: PathLike) -> str:
    """A fresh ``<root>/.lora_trainer_backup/<YYYYmmdd-HHMMSS-micro>/`` folder."""
    base = os.path.join(os.path.abspath(os.fspath(root)), BACKUP_DIR_NAME)
    now = time.time()
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now)) + f"-{int(now * 1e6) % 1_000_000:06d}"
    path = os.path.join(base, stamp)
    n = 1
    while os.path.exists(path):
        path = os.path.join(base, f"{stamp}-{n}")
        n += 1
    os.makedirs(path)
    return path


def default_backup_root(paths: Iterable[str]) -> str:
    dirs = [os.path.dirname(os.path.abspath(p)) for p in paths]
    if not dirs:
        raise CaptionIOError("nothing to write")
    return os.path.commonpath(dirs)


class BackupSession:
    """Writes captions after copying every one it may touch into a new backup folder.

    On opening, each existing file among ``paths`` is copied byte-identical to
    ``<root>/.lora_trainer_backup/<time>/<path relative to root>`` and the
    manifest is saved, before any caption changes. Each :meth:`write` is atomic
    and noted in a journal, so a run that dies mid-way can still be undone;
    :meth:`close` (also on leaving a ``with`` block, error or not) saves the
    final manifest and returns the :class:`UndoRecord`.
    """

    def __init__(self, root: PathLike, paths: Iterable[PathLike] = (), operation: str = ""):
        self.root = os.path.abspath(os.fspath(root))
        paths = [os.path.abspath(os.fspath(p)) for p in paths]
        for path in paths:
            self._check_inside(path)  # before anything is created
        self.record = UndoRecord(new_backup_dir(self.root), time.strftime("%Y-%m-%dT%H:%M:%S"), operation)
        self._entries: dict[str, UndoEntry] = {}
        self._journal = None
        for path in paths:
            self._backup(path)
        self._save_manifest()
        self._journal = open(os.path.join(self.record.backup_dir, JOURNAL), "a", encoding="utf-8")

    def _backup(self, path: str) -> UndoEntry:
        entry = self._entries.get(path)
        if entry is not None:
            return entry
        rel = self._check_inside(path)
        before = read_bytes(path)
        if before is not None:
            write_atomic(os.path.join(self.record.backup_dir, rel), before)
        entry = UndoEntry(path, rel if before is not None else None)
        self._entries[path] = entry
        self.record.entries.append(entry)
        return entry

    def _check_inside(self, path: str) -> str:
        rel = os.path.relpath(path, self.root)
        if rel == ".." or rel.startswith(".." + os.sep) or os.path.isabs(rel):
            raise CaptionIOError(f"{path} is outside {self.root}; back up from a folder that holds every caption")
        return rel

    def write(self, path: PathLike, data: bytes) -> None:
        path = os.path.abspath(os.fspath(path))
        entry = self._entries.get(path)
        if entry is None:  # not announced: back it up now, before writing
            entry = self._backup(path)
            self._save_manifest()
        write_atomic(path, data)
        entry.after_sha256 = sha256(data)
        if self._journal is not None:
            self._journal.write(json.dumps({"path": path, "after_sha256": entry.after_sha256}) + "\n")
            self._journal.flush()

    def _save_manifest(self) -> None:
        write_atomic(
            os.path.join(self.record.backup_dir, MANIFEST),
            json.dumps(self.record.to_dict(), indent=2, ensure_ascii=False).encode("utf-8"),
        )

    def close(self) -> UndoRecord:
        if self._journal is not None:
            self._journal.close()
            self._journal = None
            self._save_manifest()
            os.unlink(os.path.join(self.record.backup_dir, JOURNAL))
        return self.record

    def __enter__(self) -> "BackupSession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def apply_writes(
    writes: dict[str, bytes],
    backup_root: Optional[PathLike] = None,
    operation: str = "",
    expected: Optional[dict[str, Optional[bytes]]] = None,
) -> UndoRecord:
    """Write each ``path -> bytes`` atomically after backing up every file it replaces.

    ``expected`` (path -> the bytes a preview was made from, None for "did not
    exist"): when any file changed on disk since, nothing is written and
    CaptionIOError names them. The backup folder goes under ``backup_root``
    (default: the files' common folder).
    """
    writes = {os.path.abspath(p): data for p, data in writes.items()}
    if expected is not None:
        expected = {os.path.abspath(p): v for p, v in expected.items()}
        changed = [p for p in writes if read_bytes(p) != expected.get(p)]
        if changed:
            raise CaptionIOError(
                "caption(s) changed on disk since the preview, so nothing was written: "
                + ", ".join(changed[:5]) + (" ..." if len(changed) > 5 else "")
                + "; make a new preview"
            )
    root = os.fspath(backup_root) if backup_root is not None else default_backup_root(writes)
    with BackupSession(root, writes, operation) as session:
        for path, data in writes.items():
            session.write(path, data)
    return session.record


@dataclass
class UndoResult:
    restored: list[str] = field(default_factory=list)  # written back from the backup
    removed: list[str] = field(default_factory=list)  # created by the operation, deleted
    skipped: list[str] = field(default_factory=list)  # edited since the operation; left alone (force=True restores)

    def to_dict(self) -> dict:
        return asdict(self)


def undo(record: Union[UndoRecord, dict, PathLike], force: bool = False) -> UndoResult:
    """Put every caption an operation touched back as it was, byte for byte.

    ``record``: the UndoRecord, its dict, or the backup folder. A caption edited
    since the operation is skipped (listed in ``skipped``) unless ``force``.
    """
    if isinstance(record, dict):
        record = UndoRecord.from_dict(record)
    elif not isinstance(record, UndoRecord):
        record = UndoRecord.load(record)
    result = UndoResult()
    for entry in record.entries:
        if entry.after_sha256 is None:
            continue  # backed up but never written
        now = read_bytes(entry.path)
        data = None
        if entry.backup is not None:
            data = read_bytes(os.path.join(record.backup_dir, entry.backup))
            if data is None:
                raise CaptionIOError(f"backup copy of {entry.path} is missing from {record.backup_dir}")
        if now == data:
            continue  # already as it was (undone before)
        if not force and sha256(now) != entry.after_sha256:
            result.skipped.append(entry.path)
            continue
        if data is None:
            os.unlink(entry.path)
            result.removed.append(entry.path)
            continue
        write_atomic(entry.path, data)
        result.restored.append(entry.path)
    return result


def list_backups(root: PathLike) -> list[str]:
    """Backup folders under ``root`` (oldest first)."""
    base = os.path.join(os.fspath(root), BACKUP_DIR_NAME)
    if not os.path.isdir(base):
        return []
    return [os.path.join(base, d) for d in sorted(os.listdir(base)) if os.path.isfile(os.path.join(base, d, MANIFEST))]


__all__ = [
    "BACKUP_DIR_NAME",
    "BackupSession",
    "IMAGE_EXTENSIONS",
    "CaptionIOError",
    "UndoEntry",
    "UndoRecord",
    "UndoResult",
    "apply_writes",
    "caption_path_for",
    "is_image",
    "iter_images",
    "list_backups",
    "new_backup_dir",
    "read_bytes",
    "read_caption",
    "sha256",
    "undo",
    "write_atomic",
    "write_caption",
]
