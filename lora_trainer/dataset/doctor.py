"""Dataset doctor: everything worth fixing in a kohya-style dataset, before training.

:func:`check_dataset` scans ``<train_dir>/<N>_<name>/`` (and a reg folder) and
returns a JSON-able :class:`Report`: per folder the images, repeats and the
step estimate against the guides' 1000-1500 steps per concept (the counts of
:func:`lora_trainer.estimate.estimate`), the bucket spread, and findings that
each name their files and the fix:

========================  =======  ==================================================
code                      level    what
========================  =======  ==================================================
unsupported_file          warning  files the trainer does not read (gif, tiff, psd ...)
extension_case            warning  ``.PNG`` / ``.Jpg``: accepted here, missed by tools
                                   that list lower-case extensions (kohya lists only
                                   ``.png`` and ``.PNG``)
stem_clash                warning  ``a.png`` and ``a.jpg``: both would read ``a.txt``
missing_caption           warning  images without a caption file (class tokens used)
empty_caption             error /  an empty caption file (kohya stops on it) / one
                          warning  holding only blanks (trains with no text)
missing_trigger           warning  captions without the trigger word
small_image               warning  shorter side under ``min_short_side`` (512)
near_duplicate            warning  groups of near-identical images (perceptual hash)
false_positive_tag        warning  a colour tag in one image of many contradicting the
                                   folder's majority (``brown hair`` vs ``blonde hair``)
too_few_images            warning  a concept folder with fewer than ``min_images`` (20)
steps_low / steps_high    warning  a concept well outside the step target (600 / 2500)
steps_target              info     a concept outside 1000-1500 but not by much
bucket_imbalance          warning  with batch size > 1, images in buckets holding fewer
                                   distinct images than a batch
buckets                   info     the bucket spread
reg_balance               warning  reg images x repeats far from train images x repeats
                          / info
scan                      as is    what the trainer's own folder scan reports (folders
                                   without a repeat count, unreadable images, non-UTF-8
                                   captions, ...), less what the codes above cover
========================  =======  ==================================================

Near duplicates: each image gets a 64-bit difference hash (dHash: a 9x8
grayscale thumbnail, one bit per horizontal neighbour pair), a 64-bit average
hash (aHash: 8x8 thumbnail against its mean) and a 4x4 colour thumbnail; two
images are near duplicates when the dHash Hamming distance is at most
``duplicate_distance`` (6), the aHash distance at most 10 and the thumbnails
differ by at most 16 levels on average. The colour check keeps flat images of
different colours (whose hashes are all zeros) apart.
"""
from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageOps

from .buckets import BucketSelector, BucketSettings, adjust_bucket_settings
from .folders import IMAGE_EXTENSIONS, parse_folder_name, scan_dataset
from .images import inspect_image

_CAPTION_LIKE = (".txt", ".caption", ".tags", ".wd14")
_SIDECARS = (".npz", ".json", ".toml", ".yaml", ".yml", ".md")
_KNOWN_FILES = ("metadata_cache.json", "Thumbs.db", "desktop.ini")

# colour words of Danbooru's colour tags ("blonde hair", "light brown hair", "aqua eyes")
COLOURS = frozenset([
    "blonde", "brown", "black", "white", "red", "blue", "green", "purple", "pink", "grey", "gray", "orange",
    "yellow", "aqua", "silver", "light brown", "dark brown", "light blue", "dark blue", "light green",
    "dark green", "light purple", "dark purple", "light pink", "dark red", "platinum blonde",
])

LEVELS = ("error", "warning", "info")


@dataclass
class DoctorFinding:
    code: str
    level: str  # "error" | "warning" | "info"
    message: str
    fix: str = ""
    files: list[str] = field(default_factory=list)
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class FolderSummary:
    name: str
    path: str
    is_reg: bool
    images: int
    repeats: int
    images_x_repeats: int
    captioned: int
    steps_per_epoch: Optional[float] = None
    total_steps: Optional[int] = None


@dataclass
class Report:
    train_dir: str
    reg_dir: Optional[str]
    caption_extension: str
    trigger_word: Optional[str]
    settings: dict
    folders: list[FolderSummary] = field(default_factory=list)
    findings: list[DoctorFinding] = field(default_factory=list)
    buckets: list[dict] = field(default_factory=list)
    totals: dict = field(default_factory=dict)

    @property
    def errors(self) -> list[DoctorFinding]:
        return [f for f in self.findings if f.level == "error"]

    @property
    def warnings(self) -> list[DoctorFinding]:
        return [f for f in self.findings if f.level == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def codes(self, level: Optional[str] = None) -> set[str]:
        return {f.code for f in self.findings if level is None or f.level == level}

    def find(self, code: str) -> list[DoctorFinding]:
        return [f for f in self.findings if f.code == code]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ok"] = self.ok
        d["counts"] = {level: sum(1 for f in self.findings if f.level == level) for level in LEVELS}
        return d

    def to_json(self, indent: int = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)

    def format_text(self, max_files: int = 8) -> str:
        s = self.settings
        lines = [f"Dataset check: {self.train_dir}" + (f" (reg: {self.reg_dir})" if self.reg_dir else "")]
        if self.folders:
            lines.append(
                f"  steps for {s['epochs']} epoch(s), batch size {s['batch_size']}; the guides aim for "
                f"{s['steps_target'][0]}-{s['steps_target'][1]} per concept"
            )
            lines.append(f"  {'folder':<28} {'images':>6} {'repeats':>7} {'img x rep':>9} {'steps':>7}")
            for f in self.folders:
                steps = "reg" if f.is_reg else ("-" if f.total_steps is None else str(f.total_steps))
                lines.append(f"  {f.name[:28]:<28} {f.images:>6} {f.repeats:>7} {f.images_x_repeats:>9} {steps:>7}")
        for level in LEVELS:
            group = [f for f in self.findings if f.level == level]
            if not group:
                continue
            lines.append(f"{level}s ({len(group)}):" if level != "info" else "info:")
            for f in group:
                lines.append(f"  [{f.code}] {f.message}")
                if f.files:
                    shown = [os.path.relpath(p, self.train_dir) if _inside(p, self.train_dir) else p for p in f.files[:max_files]]
                    more = f" ... and {len(f.files) - max_files} more" if len(f.files) > max_files else ""
                    lines.append("      " + ", ".join(shown) + more)
                if f.fix:
                    lines.append(f"      fix: {f.fix}")
        n_err, n_warn = len(self.errors), len(self.warnings)
        lines.append("OK: no errors" + (f", {n_warn} warning(s)" if n_warn else "") if self.ok else f"{n_err} error(s), {n_warn} warning(s)")
        return "\n".join(lines)


def _inside(path: str, root: str) -> bool:
    try:
        rel = os.path.relpath(path, root)
    except ValueError:
        return False
    return not (rel == ".." or rel.startswith(".." + os.sep))


# --- perceptual hashes -------------------------------------------------------------


def image_fingerprint(path: str) -> Optional[tuple[int, int, np.ndarray]]:
    """(dHash, aHash, 4x4x3 colour thumbnail) of an image, None when unreadable."""
    try:
        with Image.open(path) as img:
            if img.format == "JPEG":
                img.draft("RGB", (64, 64))
            img.load()
            img = ImageOps.exif_transpose(img)
            rgb = img.convert("RGB")
    except Exception:
        return None
    gray = rgb.convert("L")
    d = np.asarray(gray.resize((9, 8), Image.Resampling.BOX), dtype=np.int16)
    dbits = (d[:, 1:] > d[:, :-1]).flatten()
    a = np.asarray(gray.resize((8, 8), Image.Resampling.BOX), dtype=np.float64)
    abits = (a > a.mean()).flatten()
    thumb = np.asarray(rgb.resize((4, 4), Image.Resampling.BOX), dtype=np.float64)
    to_int = lambda bits: int("".join("1" if b else "0" for b in bits), 2)  # noqa: E731
    return to_int(dbits), to_int(abits), thumb


def hamming(a: int, b: int) -> int:
    return bin(a ^ b).count("1")


def near_duplicate_groups(
    paths: Sequence[str], duplicate_distance: int = 6, ahash_distance: int = 10, colour_distance: float = 16.0
) -> list[list[str]]:
    """Groups (2 or more) of near-identical images; see the module doc for the test."""
    prints = [(p, image_fingerprint(p)) for p in paths]
    prints = [(p, fp) for p, fp in prints if fp is not None]
    n = len(prints)
    if n < 2:
        return []
    dh = np.array([fp[0] for _, fp in prints], dtype=np.uint64)
    ah = np.array([fp[1] for _, fp in prints], dtype=np.uint64)
    thumbs = np.stack([fp[2] for _, fp in prints]).reshape(n, -1)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(n - 1):
        dd = _popcount(dh[i] ^ dh[i + 1 :])
        da = _popcount(ah[i] ^ ah[i + 1 :])
        dc = np.abs(thumbs[i + 1 :] - thumbs[i]).mean(axis=1)
        for j in np.nonzero((dd <= duplicate_distance) & (da <= ahash_distance) & (dc <= colour_distance))[0]:
            a, b = find(i), find(i + 1 + int(j))
            if a != b:
                parent[b] = a
    groups: dict[int, list[str]] = defaultdict(list)
    for i, (p, _) in enumerate(prints):
        groups[find(i)].append(p)
    return [g for g in groups.values() if len(g) > 1]


def _popcount(x: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x).astype(np.int64)
    return np.array([bin(int(v)).count("1") for v in x], dtype=np.int64)


# --- captions ------------------------------------------------------------------------------


def _normalize(tag: str) -> str:
    from ..tagging.tags import normalize_tag

    return normalize_tag(tag)


def _first_line_tags(text: str) -> list[str]:
    from ..tagging.tags import parse_tags

    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return parse_tags(lines[0]) if lines else []


def _colour_split(tag: str) -> Optional[tuple[str, str]]:
    """("brown", "hair") for "brown hair"; None when the tag is not colour + noun."""
    words = _normalize(tag).split(" ")
    if len(words) < 2:
        return None
    modifier, noun = " ".join(words[:-1]), words[-1]
    return (modifier, noun) if modifier in COLOURS else None


def false_positive_tags(captions: dict[str, list[str]], min_images: int = 10) -> list[dict]:
    """Colour tags present in exactly one of N >= ``min_images`` captions while a
    different colour of the same thing (same last word) is in most (> half) of them."""
    n = len(captions)
    if n < min_images:
        return []
    counts: dict[str, int] = defaultdict(int)
    spelling: dict[str, str] = {}
    for tags in captions.values():
        for key in {_normalize(t) for t in tags}:
            counts[key] += 1
    for tags in captions.values():
        for t in tags:
            spelling.setdefault(_normalize(t), t)
    majority = {k: c for k, c in counts.items() if c * 2 > n and _colour_split(k)}
    out = []
    for key, count in counts.items():
        if count != 1:
            continue
        split = _colour_split(key)
        if not split:
            continue
        for maj, maj_count in majority.items():
            maj_split = _colour_split(maj)
            if maj_split[1] == split[1] and maj_split[0] != split[0]:
                path = next(p for p, tags in captions.items() if key in {_normalize(t) for t in tags})
                out.append({"file": path, "tag": spelling[key], "majority_tag": spelling[maj], "majority_count": maj_count, "images": n})
                break
    return out


# --- the check -------------------------------------------------------------------------------


def _concept_folders(root: str) -> list[tuple[str, int, str]]:
    """(path, repeats, class tokens) of each N_name folder under ``root``."""
    out = []
    if not os.path.isdir(root):
        return out
    for name in sorted(os.listdir(root)):
        path = os.path.join(root, name)
        if name.startswith(".") or not os.path.isdir(path):
            continue
        parsed = parse_folder_name(name)
        if parsed and parsed[0] >= 1:
            out.append((path, parsed[0], parsed[1]))
    return out


def _files(folder: str) -> list[str]:
    return sorted(n for n in os.listdir(folder) if not n.startswith(".") and os.path.isfile(os.path.join(folder, n)))


def check_dataset(
    train_dir: str,
    reg_dir: Optional[str] = None,
    caption_extension: str = ".txt",
    trigger_word: Optional[str] = None,
    *,
    resolution: int = 512,
    batch_size: int = 1,
    epochs: int = 10,
    min_short_side: int = 512,
    min_images: int = 20,
    duplicate_distance: int = 6,
) -> Report:
    """Check a dataset; never raises for a dataset problem (they are findings).

    ``resolution`` / ``batch_size`` / ``epochs`` are the training settings the
    step estimate and the buckets assume (kohya's bucketing with
    ``enable_bucket``, 256-1024 in steps of 64).
    """
    from ..estimate import STEPS_HIGH, STEPS_LOW, STEPS_TARGET, estimate
    from ..tagging.tags import has_tag

    if caption_extension and not caption_extension.startswith("."):
        caption_extension = "." + caption_extension
    train_dir = os.fspath(train_dir)
    reg_dir = os.fspath(reg_dir) if reg_dir else None
    report = Report(
        train_dir,
        reg_dir,
        caption_extension,
        trigger_word,
        settings={
            "resolution": resolution,
            "batch_size": batch_size,
            "epochs": epochs,
            "min_short_side": min_short_side,
            "min_images": min_images,
            "steps_target": list(STEPS_TARGET),
            "steps_low": STEPS_LOW,
            "steps_high": STEPS_HIGH,
        },
    )
    add = report.findings.append
    scan = scan_dataset(train_dir, reg_dir, caption_extension, check_pixels=True)

    # --- file-level checks, folder by folder --------------------------------------------------
    unsupported, case_ext, clashes, missing, empty, blank, no_trigger = [], [], [], [], [], [], []
    train_images: list[str] = []
    captions_by_folder: dict[str, dict[str, list[str]]] = {}
    sizes: dict[str, tuple[int, int]] = {}
    covered: set[str] = set()  # paths whose scan findings the codes here replace
    class_tokens_missing = []
    roots = [(train_dir, False)] + ([(reg_dir, True)] if reg_dir else [])
    for root, is_reg in roots:
        for folder, repeats, tokens in _concept_folders(root):
            names = _files(folder)
            images = [n for n in names if os.path.splitext(n)[1].lower() in IMAGE_EXTENSIONS]
            image_stems = defaultdict(list)
            for n in images:
                image_stems[os.path.splitext(n)[0]].append(n)
            for n in names:
                ext = os.path.splitext(n)[1]
                low = ext.lower()
                if low in IMAGE_EXTENSIONS:
                    if ext != low:
                        case_ext.append(os.path.join(folder, n))
                elif not (low in _CAPTION_LIKE or ext == caption_extension or low in _SIDECARS or n in _KNOWN_FILES):
                    unsupported.append(os.path.join(folder, n))
            for stem, group in image_stems.items():
                if len(group) > 1:
                    clashes.append([os.path.join(folder, n) for n in group])
            caps: dict[str, list[str]] = {}
            for n in images:
                path = os.path.join(folder, n)
                size, problem, _ = inspect_image(path)
                if problem:
                    continue  # the scan reports it
                sizes[path] = size
                if not is_reg:
                    train_images.append(path)
                if is_reg:
                    continue
                cap = os.path.splitext(path)[0] + caption_extension
                if not os.path.isfile(cap):
                    missing.append(path)
                    if not tokens:
                        class_tokens_missing.append(path)
                    tags = _first_line_tags(tokens.replace("_", " ")) if tokens else []
                else:
                    with open(cap, "rb") as f:
                        raw = f.read()
                    try:
                        text = raw.decode("utf-8").lstrip("\ufeff")
                    except UnicodeDecodeError:
                        continue  # the scan reports it
                    if not text.replace("\r", "").replace("\n", ""):
                        empty.append(cap)
                        covered.add(cap)
                        continue
                    if not text.strip():
                        blank.append(cap)
                        continue
                    tags = _first_line_tags(text)
                caps[path] = tags
                if trigger_word and not has_tag(tags, trigger_word):
                    no_trigger.append(cap if os.path.isfile(cap) else path)
            if not is_reg:
                captions_by_folder[folder] = caps
    covered.update(unsupported)

    if unsupported:
        kinds = sorted({os.path.splitext(p)[1].lower() or "(no extension)" for p in unsupported})
        add(DoctorFinding(
            "unsupported_file", "warning",
            f"{len(unsupported)} file(s) are not images the trainer reads ({', '.join(kinds)}); they are skipped",
            f"convert them to PNG (or JPEG / WebP) or move them out of the dataset; images must be {', '.join(IMAGE_EXTENSIONS)}",
            unsupported,
        ))
    if case_ext:
        add(DoctorFinding(
            "extension_case", "warning",
            f"{len(case_ext)} image(s) have an upper- or mixed-case extension: this trainer reads them, but tools that "
            "list only lower-case extensions skip them on Linux (kohya's scripts list .png and .PNG, not .Png or .JPEG mixes)",
            "rename them with lower-case extensions (a.PNG -> a.png)",
            case_ext,
        ))
    for group in clashes:
        stem = os.path.splitext(group[0])[0]
        add(DoctorFinding(
            "stem_clash", "warning",
            f"{len(group)} images share the name {os.path.basename(stem)!r} with different extensions; "
            f"they both read the caption {os.path.basename(stem) + caption_extension}",
            "rename one of them (and give it its own caption) or delete the duplicate",
            group,
        ))
    if missing:
        add(DoctorFinding(
            "missing_caption", "warning",
            f"{len(missing)} image(s) have no {caption_extension} caption"
            + ("; their folder names give no class tokens, so they train with an empty caption" if class_tokens_missing and len(class_tokens_missing) == len(missing)
               else "; the folder's class tokens are used instead"),
            f"caption them: `python -m lora_trainer tag {train_dir}` fills only missing or empty captions",
            missing,
        ))
    if empty:
        add(DoctorFinding(
            "empty_caption", "error",
            f"{len(empty)} caption file(s) are empty; kohya stops on them",
            f"write captions (`python -m lora_trainer tag {train_dir}` fills empty ones) or delete the files to use the folder's class tokens",
            empty,
        ))
    if blank:
        add(DoctorFinding(
            "empty_caption", "warning",
            f"{len(blank)} caption file(s) hold only blanks; their images train with no caption",
            f"write captions (`python -m lora_trainer tag {train_dir}` fills blank ones)",
            blank,
        ))
    if no_trigger:
        add(DoctorFinding(
            "missing_trigger", "warning",
            f"{len(no_trigger)} caption(s) do not contain the trigger word {trigger_word!r}",
            f"add it first: `python -m lora_trainer tag {train_dir} --mode append --trigger {trigger_word}`, "
            "or the tag editor's 'trigger first' operation",
            no_trigger,
            {"trigger_word": trigger_word},
        ))
    small_list = sorted((p for p, (w, h) in sizes.items() if min(w, h) < min_short_side))
    if small_list:
        add(DoctorFinding(
            "small_image", "warning",
            f"{len(small_list)} image(s) are under {min_short_side} px on the short side; they are upscaled and train blurry",
            "replace them with larger versions, or upscale them well (an upscaler, not a plain resize) before training",
            small_list,
            {"sizes": {p: list(sizes[p]) for p in small_list}},
        ))
    for group in near_duplicate_groups(train_images, duplicate_distance):
        add(DoctorFinding(
            "near_duplicate", "warning",
            f"{len(group)} images are near duplicates of each other; together they weigh {len(group)}x in training",
            "keep the best one (or make sure the differences are wanted)",
            group,
        ))
    for folder, caps in captions_by_folder.items():
        for item in false_positive_tags(caps):
            add(DoctorFinding(
                "false_positive_tag", "warning",
                f"{os.path.basename(item['file'])}: {item['tag']!r} is in 1 of {item['images']} images while "
                f"{item['majority_tag']!r} is in {item['majority_count']}: likely a tagger mistake",
                f"remove {item['tag']!r} from that caption if it is wrong (tag editor: remove, on that file)",
                [os.path.splitext(item["file"])[0] + caption_extension],
                item,
            ))

    # --- what the trainer's own scan says (less what is covered above) ---------------------------
    for f in scan.findings:
        if f.path in covered:
            continue
        if ("have no " + caption_extension + " caption") in f.message or "have neither a caption file" in f.message:
            continue
        add(DoctorFinding("scan", f.level, f.message, f.fix, [f.path] if f.path else []))

    # --- folders, steps, counts --------------------------------------------------------------------
    est = estimate({
        "train_data_dir": train_dir,
        "reg_data_dir": reg_dir,
        "caption_extension": caption_extension,
        "resolution": str(resolution),
        "enable_bucket": True,
        "train_batch_size": batch_size,
        "max_train_epochs": epochs,
    })
    captioned_counts = {os.path.normpath(folder): len([p for p in caps if p not in missing]) for folder, caps in captions_by_folder.items()}
    for item in est["folders"]:
        summary = FolderSummary(
            item["folder"], item["path"], item["is_reg"], item["images"], item["repeats"], item["images_x_repeats"],
            captioned_counts.get(os.path.normpath(item["path"]), 0),
            item.get("steps_per_epoch"), item.get("total_steps"),
        )
        report.folders.append(summary)
        if summary.is_reg:
            continue
        if summary.images < min_images:
            add(DoctorFinding(
                "too_few_images", "warning",
                f"{summary.name}: {summary.images} image(s); {min_images} or more give a concept room to generalise",
                "add more varied images of the concept (poses, angles, backgrounds, outfits)",
                [summary.path],
            ))
        steps = summary.total_steps
        if steps is None:
            continue
        lo, hi = STEPS_TARGET
        good_repeats = max(1, round((lo + hi) / 2 * batch_size / max(1, summary.images * epochs)))
        fix = (f"set its repeats to about {good_repeats} (rename the folder {good_repeats}_{summary.name.partition('_')[2]}) "
               f"or change the epochs")
        details = {"total_steps": steps, "suggested_repeats": good_repeats}
        if steps < STEPS_LOW or steps > STEPS_HIGH:
            add(DoctorFinding(
                "steps_low" if steps < STEPS_LOW else "steps_high", "warning",
                f"{summary.name}: about {steps} steps ({summary.images} images x {summary.repeats} repeats x {epochs} epochs / "
                f"batch {batch_size}); the guides aim for {lo}-{hi} per concept"
                + (": likely under-trained" if steps < STEPS_LOW else ": risks an overcooked LoRA"),
                fix, [summary.path], details,
            ))
        elif steps < lo or steps > hi:
            add(DoctorFinding(
                "steps_target", "info",
                f"{summary.name}: about {steps} steps, near the guides' {lo}-{hi}",
                fix, [summary.path], details,
            ))
    report.buckets = est.get("buckets", [])
    report.totals = {
        "train_images": sum(f.images for f in report.folders if not f.is_reg),
        "train_images_x_repeats": scan.num_train_images,
        "reg_images_x_repeats": scan.num_reg_images,
        "total_steps": est.get("total_steps", 0),
        "steps_per_epoch": est.get("steps_per_epoch", 0),
    }
    if est.get("error") and not scan.errors:
        add(DoctorFinding("scan", "error", est["error"], ""))

    _check_buckets(report, train_images, sizes, resolution, batch_size)
    _check_reg(report, scan, reg_dir)
    return report


def _check_buckets(report: Report, train_images: list[str], sizes: dict, resolution: int, batch_size: int) -> None:
    if not train_images:
        return
    try:
        settings, _ = adjust_bucket_settings(BucketSettings((resolution, resolution), enable_bucket=True), 64)
        selector = BucketSelector(settings)
    except ValueError:
        return
    members: dict[tuple[int, int], list[str]] = defaultdict(list)
    for path in train_images:
        try:
            members[selector.select(*sizes[path]).reso].append(path)
        except ValueError:
            continue
    spread = sorted(((reso, len(paths)) for reso, paths in members.items()), key=lambda x: (-x[1], x[0]))
    largest = spread[0][1] if spread else 0
    report.findings.append(DoctorFinding(
        "buckets", "info",
        f"{len(spread)} bucket(s) for {len(train_images)} train image(s) at {resolution}: "
        + ", ".join(f"{w}x{h} ({n})" for (w, h), n in spread[:8]) + (" ..." if len(spread) > 8 else ""),
        "",
        [],
        {"buckets": [{"resolution": list(r), "images": n} for r, n in spread], "largest_share": round(largest / len(train_images), 3)},
    ))
    if batch_size > 1:
        thin = [(reso, paths) for reso, paths in members.items() if len(paths) < batch_size]
        if thin:
            files = sorted(p for _, paths in thin for p in paths)
            add_msg = ", ".join(f"{w}x{h} ({len(paths)})" for (w, h), paths in sorted(thin))
            report.findings.append(DoctorFinding(
                "bucket_imbalance", "warning",
                f"{len(files)} image(s) sit in bucket(s) with fewer distinct images than the batch size {batch_size}: {add_msg}; "
                "their batches repeat the same images (or run short)",
                "crop them to the aspect ratio of the large buckets, add images of that shape, or lower train_batch_size",
                files,
                {"buckets": [{"resolution": list(r), "images": len(p)} for r, p in sorted(thin)]},
            ))


def _check_reg(report: Report, scan, reg_dir: Optional[str]) -> None:
    if not reg_dir:
        return
    train, reg = scan.num_train_images, scan.num_reg_images
    if reg == 0:
        if os.path.isdir(reg_dir):
            report.findings.append(DoctorFinding(
                "reg_balance", "warning", f"the reg folder {reg_dir} has no usable images", "add reg images in N_name sub-folders, or drop reg_data_dir",
                [reg_dir],
            ))
        return
    details = {"train_images_x_repeats": train, "reg_images_x_repeats": reg}
    if reg < train:
        times = math.ceil(train / reg)
        level = "warning" if reg * 2 < train else "info"
        report.findings.append(DoctorFinding(
            "reg_balance", level,
            f"reg images x repeats ({reg}) < train images x repeats ({train}): kohya repeats the reg images to match, "
            f"each about {times}x per epoch",
            f"add reg images (about {train} in all) or raise the reg folder's repeats",
            [reg_dir], details,
        ))
    elif reg > train:
        level = "warning" if reg > train * 2 else "info"
        report.findings.append(DoctorFinding(
            "reg_balance", level,
            f"reg images x repeats ({reg}) > train images x repeats ({train}): only {train} of them are used per epoch",
            "use fewer reg images (or lower their repeats) so each is seen",
            [reg_dir], details,
        ))


__all__ = ["COLOURS", "DoctorFinding", "FolderSummary", "Report", "check_dataset", "false_positive_tags", "near_duplicate_groups"]
