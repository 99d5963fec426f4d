"""Scanning kohya-style image folders: ``<train_data_dir>/<N>_<class tokens>/``.

Whatever kohya would skip silently or crash on later is reported here as a
:class:`Finding` naming the file or folder, before anything is trained.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional

from .captions import count_tags
from .images import inspect_image, read_image_size

# kohya lists these in lower and upper case only; any case is accepted here
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
# kohya's sidecar files: caches and its own image-info cache
_KNOWN_SIDECARS = (".npz",)
_KNOWN_FILES = ("metadata_cache.json", "Thumbs.db", "desktop.ini")
_CAPTION_LIKE = (".txt", ".caption", ".tags", ".wd14")


@dataclass(frozen=True)
class Finding:
    level: str  # "error" stops training before step 1; "warning" does not
    path: str
    message: str
    fix: str = ""


@dataclass
class ImageEntry:
    path: str
    caption: str  # caption file text, or the folder's class tokens
    caption_path: Optional[str]  # None when the class tokens stand in
    size: tuple[int, int]  # (width, height) as loaded, EXIF orientation applied


@dataclass
class Subset:
    folder: str
    name: str  # the folder's own name: kohya's key in ss_dataset_dirs / ss_tag_frequency
    repeats: int
    class_tokens: str
    is_reg: bool
    images: list[ImageEntry] = field(default_factory=list)


@dataclass
class DatasetScan:
    subsets: list[Subset]
    findings: list[Finding]
    # kohya's ss_tag_frequency: also holds reg folders, and empty folders as {}
    tag_frequency: dict[str, dict[str, int]]

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def num_train_images(self) -> int:
        """kohya's "num train images * repeats"."""
        return sum(s.repeats * len(s.images) for s in self.subsets if not s.is_reg)

    @property
    def num_reg_images(self) -> int:
        """kohya's "num reg images" (reg images * their folder repeats, before balancing)."""
        return sum(s.repeats * len(s.images) for s in self.subsets if s.is_reg)

    def _dirs(self, is_reg: bool) -> dict[str, dict[str, int]]:
        return {s.name: {"n_repeats": s.repeats, "img_count": len(s.images)} for s in self.subsets if s.is_reg == is_reg}

    @property
    def dataset_dirs(self) -> dict[str, dict[str, int]]:
        """kohya's ss_dataset_dirs (train folders only, as with train_data_dir)."""
        return self._dirs(False)

    @property
    def reg_dataset_dirs(self) -> dict[str, dict[str, int]]:
        """kohya's ss_reg_dataset_dirs."""
        return self._dirs(True)


def parse_folder_name(name: str) -> Optional[tuple[int, str]]:
    """kohya's rule: split on "_", the first piece is the repeat count (int()),
    the rest re-joined with "_" are the class tokens. None when not a number."""
    head, _, rest = name.partition("_")
    try:
        return int(head), rest
    except ValueError:
        return None


def _is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _caption_candidates(image_path: str, caption_extension: str) -> list[str]:
    stem_path = os.path.splitext(image_path)[0]
    folder, stem = os.path.split(stem_path)
    candidates = [stem_path + caption_extension]
    # kohya's face-crop naming, name_cx_cy_w_h.png, may share name.txt. kohya
    # splits the whole path (folder names included); only the file name here
    tokens = stem.split("_")
    if len(tokens) >= 5:
        candidates.append(os.path.join(folder, "_".join(tokens[:-4])) + caption_extension)
    return candidates


def _read_caption(path: str, enable_wildcard: bool) -> tuple[Optional[str], list[Finding]]:
    """(caption text or None when unusable, findings about the file)."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        return None, [Finding("error", path, f"caption file cannot be read: {e}", "check the file's permissions")]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return None, [
            Finding("error", path, f"caption file is not UTF-8 (byte {e.start}); kohya stops on it too", "re-save the caption as UTF-8")
        ]
    findings = []
    if text.startswith("\ufeff"):
        # kohya keeps a byte-order mark as part of the first tag; a BOM is an
        # editor artefact, never meant as text
        text = text[1:]
        findings.append(Finding("warning", path, "caption file starts with a UTF-8 byte-order mark; it was ignored", "save without BOM"))
    # the lines kohya's text-mode readlines() would give
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if lines[-1] == "":
        lines.pop()
    if not lines:
        findings.append(
            Finding("error", path, "caption file is empty; kohya stops on it", "write a caption, or delete the file to use the folder's class tokens")
        )
        return None, findings
    if enable_wildcard:
        # every non-empty line is kept; one is picked per step
        return "\n".join(line.strip() for line in lines if line.strip()), findings
    return lines[0].strip(), findings


def _scan_subset(
    folder: str,
    repeats: int,
    class_tokens: str,
    is_reg: bool,
    caption_extension: str,
    enable_wildcard: bool,
    check_pixels: bool,
    findings: list[Finding],
) -> Subset:
    subset = Subset(folder, os.path.basename(folder), repeats, class_tokens, is_reg)
    names = sorted(os.listdir(folder))
    image_names = [n for n in names if _is_image(n) and not n.startswith(".") and os.path.isfile(os.path.join(folder, n))]
    image_stems = {os.path.splitext(n)[0] for n in image_names}
    used_captions: set[str] = set()
    uncaptioned: list[str] = []
    other_caption_exts: set[str] = set()

    for name in names:
        path = os.path.join(folder, name)
        stem, ext = os.path.splitext(name)
        # hidden files (.DS_Store, macOS "._x.png" forks) are invisible to kohya's glob
        if name.startswith(".") or name in _KNOWN_FILES or ext.lower() in _KNOWN_SIDECARS:
            continue
        if os.path.isdir(path):
            findings.append(
                Finding("warning", path, "sub-folder ignored: kohya does not look into nested folders", "move its images up into " + folder)
            )
            continue
        if _is_image(name):
            continue
        if ext == caption_extension:
            continue  # matched or reported as orphaned below
        if ext.lower() in _CAPTION_LIKE and stem in image_stems:
            other_caption_exts.add(ext)
            continue
        if ext.lower() == ".gif":
            findings.append(Finding("warning", path, "GIF is not a supported image format; file skipped", "convert it to PNG"))
        else:
            findings.append(
                Finding(
                    "warning",
                    path,
                    f"unsupported file skipped (images must be {', '.join(IMAGE_EXTENSIONS)})",
                    "convert it to PNG or move it out of the dataset",
                )
            )

    if other_caption_exts:
        exts = ", ".join(sorted(other_caption_exts))
        findings.append(
            Finding(
                "warning",
                folder,
                f"caption files with extension {exts} are ignored: caption_extension is {caption_extension!r}",
                f"set caption_extension to the extension your captions use ({exts})",
            )
        )

    for name in image_names:
        path = os.path.join(folder, name)
        if check_pixels:
            size, problem, transparent = inspect_image(path)
        else:
            try:
                size, problem, transparent = read_image_size(path), None, False
            except Exception as e:  # header-only mode: anything unreadable is the same finding
                size, problem, transparent = None, f"not a readable image ({e})", False
        if problem:
            findings.append(Finding("warning", path, f"{problem}; image skipped", "replace or delete the file"))
            continue
        if transparent:
            findings.append(
                Finding(
                    "warning",
                    path,
                    "image has transparent pixels; like kohya, the alpha channel is dropped, so they train as their stored colour (often black)",
                    "flatten the image onto a background, or enable alpha_mask",
                )
            )

        caption = caption_path = None
        for candidate in _caption_candidates(path, caption_extension):
            if os.path.isfile(candidate):
                caption_path = candidate
                used_captions.add(os.path.basename(candidate))
                caption, caption_findings = _read_caption(candidate, enable_wildcard)
                findings.extend(caption_findings)
                break
        if caption_path is not None and caption is None:
            continue  # an error finding stops training; the image is not used
        if caption_path is None:
            caption = class_tokens
            uncaptioned.append(path)
        subset.images.append(ImageEntry(path, caption, caption_path, size))

    for name in names:
        stem, ext = os.path.splitext(name)
        if ext == caption_extension and name not in used_captions and stem not in image_stems and not name.startswith("."):
            findings.append(
                Finding(
                    "warning",
                    os.path.join(folder, name),
                    "caption file has no image with the same name; ignored",
                    "rename it to match its image, or delete it",
                )
            )

    if uncaptioned and not class_tokens:
        findings.append(
            Finding(
                "warning",
                folder,
                f"{len(uncaptioned)} image(s) have neither a caption file nor class tokens in the folder name "
                f"(e.g. {os.path.basename(uncaptioned[0])}); they train with an empty caption",
                f"add {caption_extension} captions or name the folder like {repeats}_token",
            )
        )
    elif uncaptioned and len(uncaptioned) < len(subset.images):
        findings.append(
            Finding(
                "warning",
                folder,
                f"{len(uncaptioned)} of {len(subset.images)} image(s) have no {caption_extension} caption "
                f"(e.g. {os.path.basename(uncaptioned[0])}); the folder's class tokens {class_tokens!r} are used for them",
                "add the missing caption files if they were meant to have one",
            )
        )

    if not subset.images:
        findings.append(
            Finding("warning", folder, "folder has no usable images; it is ignored", f"add {', '.join(IMAGE_EXTENSIONS)} images or remove it")
        )
    return subset


def _scan_root(
    root: str,
    is_reg: bool,
    caption_extension: str,
    enable_wildcard: bool,
    check_pixels: bool,
    findings: list[Finding],
    tag_frequency: dict[str, dict[str, int]],
) -> list[Subset]:
    role = "reg_data_dir" if is_reg else "train_data_dir"
    if not os.path.isdir(root):
        findings.append(Finding("error", root, f"{role} does not exist or is not a folder", f"point {role} at the folder holding 10_name style sub-folders"))
        return []

    subsets = []
    loose_images = []
    # sorted for a reproducible order; kohya uses the file system's order
    for name in sorted(os.listdir(root)):
        path = os.path.join(root, name)
        if name.startswith("."):
            continue
        if not os.path.isdir(path):
            if _is_image(name):
                loose_images.append(path)
            continue
        parsed = parse_folder_name(name)
        if parsed is None:
            findings.append(
                Finding(
                    "warning",
                    path,
                    f"folder {name!r} has no leading repeat count, so kohya ignores it and so do we",
                    f"rename it like 10_{name} (10 repeats, class tokens {name!r})",
                )
            )
            continue
        repeats, class_tokens = parsed
        if repeats < 1:
            findings.append(
                Finding("warning", path, f"folder {name!r} has {repeats} repeats, so it is ignored", f"rename it with a repeat count of 1 or more, like 1_{class_tokens}")
            )
            continue
        subset = _scan_subset(path, repeats, class_tokens, is_reg, caption_extension, enable_wildcard, check_pixels, findings)
        # kohya records every scanned folder, even an empty one, and merges
        # folders of the same name (train and reg alike)
        count_tags([img.caption for img in subset.images], tag_frequency.setdefault(subset.name, {}))
        if subset.images:
            subsets.append(subset)

    if loose_images:
        findings.append(
            Finding(
                "warning",
                root,
                f"{len(loose_images)} image(s) sit directly in {role} (e.g. {os.path.basename(loose_images[0])}); "
                "kohya only reads images inside sub-folders",
                f"move them into a sub-folder named like 10_name inside {root}",
            )
        )
    return subsets


def scan_dataset(
    train_data_dir: str,
    reg_data_dir: Optional[str] = None,
    caption_extension: str = ".txt",
    enable_wildcard: bool = False,
    check_pixels: bool = True,
) -> DatasetScan:
    """Scan kohya's DreamBooth-style layout.

    ``caption_extension`` defaults to ".txt" here; kohya's default is
    ".caption". ``enable_wildcard`` keeps every caption line (kohya reads
    only the first otherwise). ``check_pixels`` decodes every image once to
    catch truncated files; without it only headers are read.
    """
    if caption_extension and not caption_extension.startswith("."):
        caption_extension = "." + caption_extension
    findings: list[Finding] = []
    tag_frequency: dict[str, dict[str, int]] = {}
    subsets = _scan_root(train_data_dir, False, caption_extension, enable_wildcard, check_pixels, findings, tag_frequency)
    if reg_data_dir:
        subsets += _scan_root(reg_data_dir, True, caption_extension, enable_wildcard, check_pixels, findings, tag_frequency)

    if not any(not s.is_reg for s in subsets) and not any(f.level == "error" and f.path == train_data_dir for f in findings):
        findings.append(
            Finding(
                "error",
                train_data_dir,
                "no training images found (kohya: \"No data found\")",
                "put images in sub-folders named like 10_name: the number is the repeat count",
            )
        )
    return DatasetScan(subsets, findings, tag_frequency)
