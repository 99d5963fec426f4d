"""Tag operations on booru-style captions (``tag, tag, tag``).

Two layers:

* pure functions on tag lists: :func:`parse_tags` / :func:`join_tags`,
  :func:`add_tags`, :func:`remove_tags`, :func:`replace_tags` (plain or regex),
  :func:`dedupe`, :func:`sort_tags`, :func:`move_first`, :func:`consolidate`;
  dataset statistics: :func:`tag_frequency`, :func:`subject_traits`;
* batch edits on caption files: :func:`preview` runs an operation on every
  caption of a folder (or a list of files) without writing and returns a
  :class:`Preview` (each changed file, before / after, tags added / removed);
  :func:`apply` writes it atomically after backing up every caption it
  touches and returns an undo record; :func:`undo` puts them back byte for byte.

Tags are compared by :func:`normalize_tag`: case, spacing, underscores (except
in kaomoji such as ``^_^``) and WebUI escapes (``\\(``) do not make two tags
different, so ``Long_Hair`` and ``long hair`` are the same tag. Edits never
re-spell a tag they do not touch, and a line whose tags an operation leaves
unchanged is left byte-identical (separators included). Captions with several
lines (kohya's wildcard captions) have each line edited on its own.

Consolidation (:func:`consolidate`) keeps the most specific of overlapping tags.
A tag is dropped when another tag of the same caption

1. contains all its words and more (``boots`` and ``red boots`` -> ``red boots``;
   ``long hair`` and ``very long hair`` -> ``very long hair``), or
2. does so once one of its words is replaced by what it implies, from the
   small table :data:`IMPLICATIONS` (``boots`` implies ``footwear``, so
   ``red boots`` covers ``red footwear`` and ``footwear``).

A tag holding a negation (``no shoes``, ``without ...``) covers nothing, and
protected tags (the trigger word) are never dropped. It is a suggestion shown
in a preview, not a rule of Danbooru's.
"""
from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Optional, Sequence, Union

from .captions_io import IMAGE_EXTENSIONS as _IMAGE_EXTS
from .captions_io import (
    CaptionIOError,
    UndoRecord,
    apply_writes,
    caption_path_for,
    iter_images,
    read_bytes,
    undo,
)

SEPARATOR = ", "

# the kaomoji tags of the WD14 taggers' vocabulary, whose underscores are part
# of the face (the WebUI tagger extensions' list)
KAOMOJIS = frozenset(
    ["0_0", "(o)_(o)", "+_+", "+_-", "._.", "<o>_<o>", "<|>_<|>", "=_=", ">_<", "3_3", "6_9", ">_o", "@_@", "^_^", "o_o",
     "u_u", "x_x", "|_|", "||_||"]
)

# what a word (or phrase) implies: the Danbooru umbrella tags for clothing
# colour tags ("red footwear", "black legwear", "white headwear"); kept small
IMPLICATIONS: dict[str, str] = {
    "boots": "footwear",
    "shoes": "footwear",
    "sneakers": "footwear",
    "sandals": "footwear",
    "slippers": "footwear",
    "loafers": "footwear",
    "high heels": "footwear",
    "thighhighs": "legwear",
    "pantyhose": "legwear",
    "kneehighs": "legwear",
    "socks": "legwear",
    "stockings": "legwear",
    "leggings": "legwear",
    "gloves": "handwear",
    "mittens": "handwear",
    "hat": "headwear",
    "beret": "headwear",
    "helmet": "headwear",
    "glasses": "eyewear",
    "sunglasses": "eyewear",
    "goggles": "eyewear",
    "necktie": "neckwear",
    "bowtie": "neckwear",
    "ascot": "neckwear",
}

NEGATIONS = frozenset(["no", "without", "not"])

_ESCAPE = re.compile(r"([\\()])")  # the WebUI's own rule (modules/deepbooru.py re_special)
_UNESCAPE = re.compile(r"\\([\\()])")
_SPACES = re.compile(r"\s+")
_LINE_BREAKS = re.compile(r"[\r\n\v\f\x1c-\x1e\x85\u2028\u2029]")  # what str.splitlines() splits on


# --- single tags ------------------------------------------------------------------


def is_kaomoji(tag: str) -> bool:
    return tag.strip() in KAOMOJIS


def underscores_to_spaces(tag: str) -> str:
    """``long_hair`` -> ``long hair``; kaomoji (``^_^``) keep their underscores."""
    return tag if is_kaomoji(tag) else tag.replace("_", " ")


def escape_tag(tag: str) -> str:
    """Escape ``(``, ``)`` and ``\\`` for WebUI prompts: ``ganyu (genshin impact)`` -> ``ganyu \\(genshin impact\\)``."""
    return _ESCAPE.sub(r"\\\1", tag)


def unescape_tag(tag: str) -> str:
    return _UNESCAPE.sub(r"\1", tag)


def normalize_tag(tag: str) -> str:
    """The form tags are compared in: unescaped, underscores as spaces (not in
    kaomoji), single spaces, lower case."""
    tag = unescape_tag(tag.strip())
    tag = underscores_to_spaces(tag)
    return _SPACES.sub(" ", tag).strip().lower()


# --- tag lists -------------------------------------------------------------------


def parse_tags(text: Optional[str]) -> list[str]:
    """``"a, b,,c "`` -> ``["a", "b", "c"]`` (one caption line)."""
    if not text:
        return []
    return [t.strip() for t in text.split(",") if t.strip()]


def join_tags(tags: Iterable[str]) -> str:
    return SEPARATOR.join(tags)


def _as_list(tags: Union[str, Iterable[str], None]) -> list[str]:
    if tags is None:
        return []
    if isinstance(tags, str):
        return parse_tags(tags)
    return [t for item in tags if item for t in parse_tags(item)]


def has_tag(tags: Iterable[str], tag: str) -> bool:
    key = normalize_tag(tag)
    return any(normalize_tag(t) == key for t in tags)


def dedupe(tags: Iterable[str]) -> list[str]:
    """Drop repeats (as normalized), keeping each tag's first spelling and place."""
    seen, out = set(), []
    for tag in tags:
        key = normalize_tag(tag)
        if key and key not in seen:
            seen.add(key)
            out.append(tag)
    return out


def add_tags(tags: Sequence[str], new: Union[str, Iterable[str]], position: str = "append") -> list[str]:
    """Add the tags of ``new`` not already there, at the end or (``"prepend"``) the front."""
    if position not in ("append", "prepend"):
        raise ValueError(f"position must be 'append' or 'prepend', got {position!r}")
    present = {normalize_tag(t) for t in tags}
    extra = [t for t in dedupe(_as_list(new)) if normalize_tag(t) not in present]
    return extra + list(tags) if position == "prepend" else list(tags) + extra


def remove_tags(tags: Sequence[str], remove: Union[str, Iterable[str]]) -> list[str]:
    drop = {normalize_tag(t) for t in _as_list(remove)}
    return [t for t in tags if normalize_tag(t) not in drop]


def replace_tags(tags: Sequence[str], old: str, new: str, regex: bool = False) -> list[str]:
    """Replace a whole tag (``old`` compared normalized) by ``new``; with ``regex``,
    ``re.sub(old, new, tag)`` on each tag's text. A tag that becomes empty is
    removed; ``new`` may hold several tags (``"a, b"``). Duplicates made by the
    replacement are dropped."""
    out: list[str] = []
    if regex:
        pattern = compile_replacement(old, new)
        for tag in tags:
            # a line break in the result (``\n`` in ``new``) would split the caption line: a separator
            out.extend(parse_tags(_LINE_BREAKS.sub(",", pattern.sub(new, tag))))
    else:
        key = normalize_tag(old)
        for tag in tags:
            out.extend(parse_tags(new) if normalize_tag(tag) == key else [tag])
    return dedupe(out) if out != list(tags) else out


def compile_replacement(pattern: str, replacement: str) -> "re.Pattern[str]":
    """The compiled ``pattern``, once ``replacement`` is known to be a valid template for it.

    ``re.sub`` checks a replacement's group references (``\\1``, ``\\g<name>``) and
    escapes only when a tag matches, so a bad one would fail half-way through a
    dataset; here it fails before any caption is read. Raises ``ValueError``
    naming which of the two is wrong."""
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"the pattern {pattern!r} is not a valid regular expression: {exc}") from None
    # a pattern with the same groups that matches "" lets expand() check the template
    names = {index: name for name, index in compiled.groupindex.items()}
    shape = "".join(f"(?P<{names[i]}>)" if i in names else "()" for i in range(1, compiled.groups + 1))
    try:
        re.compile(shape).match("").expand(replacement)
    except (re.error, IndexError) as exc:
        groups = (f"the pattern has {compiled.groups} group(s): refer only to those (\\1, \\g<name>)"
                  if compiled.groups else "the pattern has no (groups), so \\1 or \\g<name> cannot be used")
        raise ValueError(
            f"the replacement {replacement!r} does not fit the pattern {pattern!r} ({exc}); {groups}, "
            "and a literal backslash is written \\\\"
        ) from None
    return compiled


def sort_tags(tags: Sequence[str], keep_first: int = 0) -> list[str]:
    """Alphabetical (as normalized) after the first ``keep_first`` tags, which stay put."""
    head, tail = list(tags[:keep_first]), list(tags[keep_first:])
    return head + sorted(tail, key=normalize_tag)


def move_first(tags: Sequence[str], first: Union[str, Iterable[str]], add_missing: bool = True) -> list[str]:
    """Put the tags of ``first`` (a trigger word, or several) at the front, in
    their order; missing ones are added unless ``add_missing`` is False. Each
    keeps the caption's spelling when it was there."""
    wanted = dedupe(_as_list(first))
    by_key = {}
    for t in tags:
        by_key.setdefault(normalize_tag(t), t)
    head = []
    for t in wanted:
        key = normalize_tag(t)
        if key in by_key:
            head.append(by_key[key])
        elif add_missing:
            head.append(t)
    head_keys = {normalize_tag(t) for t in head}
    return head + [t for t in tags if normalize_tag(t) not in head_keys]


# --- consolidation -----------------------------------------------------------------


def _words(tag: str) -> list[str]:
    return normalize_tag(tag).split(" ")


def _coverages(words: list[str], implications: dict[str, str]) -> list[tuple[list[str], bool]]:
    """Word lists a tag covers: its own (strict superset needed), and each with an
    implied umbrella word substituted (superset or equal is enough)."""
    out = [(words, True)]
    for phrase, general in implications.items():
        p = phrase.split(" ")
        for i in range(len(words) - len(p) + 1):
            if words[i : i + len(p)] == p:
                out.append((words[:i] + general.split(" ") + words[i + len(p) :], False))
    return out


def consolidation(
    tags: Sequence[str], protect: Union[str, Iterable[str]] = (), implications: Optional[dict[str, str]] = None
) -> dict[str, str]:
    """``{dropped tag: the more specific tag that covers it}`` for one caption."""
    implications = IMPLICATIONS if implications is None else {normalize_tag(k): normalize_tag(v) for k, v in implications.items()}
    protected = {normalize_tag(t) for t in _as_list(protect)}
    words = {t: _words(t) for t in tags}
    covers = {t: _coverages(w, implications) for t, w in words.items() if not NEGATIONS.intersection(w)}
    dropped: dict[str, str] = {}
    for a in tags:
        key_a = normalize_tag(a)
        if key_a in protected:
            continue
        set_a = set(words[a])
        for b, coverage in covers.items():
            if normalize_tag(b) == key_a:
                continue
            for covered, strict in coverage:
                set_c = set(covered)
                if set_a <= set_c and (set_a != set_c or not strict):
                    dropped[a] = b
                    break
            if a in dropped:
                break
    return dropped


def consolidate(
    tags: Sequence[str], protect: Union[str, Iterable[str]] = (), implications: Optional[dict[str, str]] = None
) -> list[str]:
    """Drop tags covered by a more specific tag of the same caption (see the module doc):
    ``boots, red footwear, red boots`` -> ``red boots``."""
    dropped = consolidation(tags, protect, implications)
    return [t for t in tags if t not in dropped]


# --- dataset statistics ---------------------------------------------------------------


def tag_frequency(captions: Iterable[Sequence[str]]) -> list[tuple[str, int]]:
    """``[(tag, number of captions holding it), ...]``, most frequent first, then
    alphabetical; each tag in its first-seen spelling."""
    counts: Counter = Counter()
    spelling: dict[str, str] = {}
    for tags in captions:
        for tag in dedupe(tags):
            key = normalize_tag(tag)
            spelling.setdefault(key, tag)
            counts[key] += 1
    return sorted(((spelling[k], n) for k, n in counts.items()), key=lambda item: (-item[1], normalize_tag(item[0])))


@dataclass(frozen=True)
class TraitCount:
    tag: str
    count: int
    total: int

    @property
    def fraction(self) -> float:
        return self.count / self.total if self.total else 0.0

    def to_dict(self) -> dict:
        return {"tag": self.tag, "count": self.count, "total": self.total, "fraction": round(self.fraction, 4)}


def subject_traits(
    captions: Iterable[Sequence[str]], min_fraction: float = 0.5, exclude: Union[str, Iterable[str]] = ()
) -> list[TraitCount]:
    """Tags present in at least ``min_fraction`` of the captions (one concept
    folder's): the subject's fixed traits (hair colour, eye colour...) that a
    character LoRA usually prunes so the trigger word absorbs them. Offered,
    never removed here: pass the chosen ones to ``preview(..., "remove", tags=...)``.
    ``exclude`` (the trigger word) is never offered."""
    captions = [list(c) for c in captions]
    total = len(captions)
    skip = {normalize_tag(t) for t in _as_list(exclude)}
    out = []
    for tag, count in tag_frequency(captions):
        if normalize_tag(tag) not in skip and total and count / total >= min_fraction:
            out.append(TraitCount(tag, count, total))
    return out


# --- caption files -----------------------------------------------------------------------


def caption_targets(
    targets: Union[str, os.PathLike, Iterable[Union[str, os.PathLike]]],
    caption_extension: str = ".txt",
    recursive: bool = True,
) -> list[str]:
    """Caption paths to edit: for a folder, one per image under it (existing or
    not); a list may name images (their captions are used) or caption files."""
    if isinstance(targets, (str, os.PathLike)):
        path = os.fspath(targets)
        if os.path.isdir(path):
            return [caption_path_for(p, caption_extension) for p in iter_images(path, recursive)]
        targets = [path]
    out = []
    for t in targets:
        t = os.fspath(t)
        out.append(caption_path_for(t, caption_extension) if os.path.splitext(t)[1].lower() in _IMAGE_EXTS else t)
    return list(dict.fromkeys(out))


def read_tags(caption_path: str) -> list[str]:
    """The tags of a caption's first line ([] when the file is missing)."""
    raw = read_bytes(caption_path)
    if raw is None:
        return []
    text = _decode(caption_path, raw)
    return parse_tags(text.splitlines()[0] if text.splitlines() else "")


def folder_tags(folder: str, caption_extension: str = ".txt", recursive: bool = False) -> dict[str, list[str]]:
    """``{image path: its caption's tags}`` for one concept folder (uncaptioned images give [])."""
    return {img: read_tags(caption_path_for(img, caption_extension)) for img in iter_images(folder, recursive)}


def _decode(path: str, raw: bytes) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CaptionIOError(f"{path}: caption is not UTF-8 (byte {e.start}); re-save it as UTF-8") from None
    return text[1:] if text.startswith("\ufeff") else text


def edit_text(text: Optional[str], fn: Callable[[list[str]], list[str]]) -> str:
    """Apply ``fn`` to the tags of each non-empty line; lines whose tags do not
    change stay byte-identical, and line endings are kept. A missing caption
    (None) counts as one empty line, and so does a caption with no tags at all
    (``"\\n"``, blanks): an operation that gives tags writes them on its first
    line (its line ending and any further lines kept), so "add" and "trigger
    first" reach every caption; one that gives none leaves it as it is."""
    if text is None or text == "":
        return join_tags(fn([]))
    lines = text.splitlines(keepends=True)
    if not any(parse_tags(line) for line in lines):
        new = list(fn([]))
        if not new:
            return text
        first = lines[0]
        return join_tags(new) + first[len(first.rstrip("\r\n")):] + "".join(lines[1:])
    out = []
    for line in lines:
        body = line.rstrip("\r\n")
        ending = line[len(body):]
        tags = parse_tags(body)
        if not tags:
            out.append(line)
            continue
        new = list(fn(list(tags)))
        out.append(line if new == tags else join_tags(new) + ending)
    return "".join(out)


@dataclass
class FileChange:
    path: str
    before: Optional[str]  # None: the caption does not exist yet
    after: str
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    before_bytes: Optional[bytes] = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("before_bytes")
        return d


@dataclass
class Preview:
    operation: str
    changes: list[FileChange]
    scanned: int  # captions looked at

    @property
    def files_changed(self) -> int:
        return len(self.changes)

    def to_dict(self) -> dict:
        return {
            "operation": self.operation,
            "scanned": self.scanned,
            "files_changed": self.files_changed,
            "changes": [c.to_dict() for c in self.changes],
        }


def preview_edit(
    targets, fn: Callable[[list[str]], list[str]], operation: str = "edit", caption_extension: str = ".txt"
) -> Preview:
    """Run ``fn`` (tag list -> tag list) on every target caption; nothing is written."""
    paths = caption_targets(targets, caption_extension)
    changes = []
    for path in paths:
        raw = read_bytes(path)
        before = None if raw is None else _decode(path, raw)
        after = edit_text(before, fn)
        if after == (before if before is not None else ""):
            continue
        old = {normalize_tag(t) for line in (before or "").splitlines() for t in parse_tags(line)}
        new_tags = [t for line in after.splitlines() for t in parse_tags(line)]
        new = {normalize_tag(t) for t in new_tags}
        old_tags = [t for line in (before or "").splitlines() for t in parse_tags(line)]
        changes.append(
            FileChange(
                path,
                before,
                after,
                added=dedupe(t for t in new_tags if normalize_tag(t) not in old),
                removed=dedupe(t for t in old_tags if normalize_tag(t) not in new),
                before_bytes=raw,
            )
        )
    return Preview(operation, changes, len(paths))


def _op_add(tags=(), position="append"):
    return lambda t: add_tags(t, tags, position)


def _op_remove(tags=()):
    return lambda t: remove_tags(t, tags)


def _op_replace(old, new="", regex=False):
    if regex:
        compile_replacement(old, new)  # a bad pattern or replacement fails here, before any file is read
    return lambda t: replace_tags(t, old, new, regex)


def _op_dedupe():
    return dedupe


def _op_sort(keep_first=0):
    return lambda t: sort_tags(t, keep_first)


def _op_trigger_first(trigger, add_missing=True):
    return lambda t: move_first(t, trigger, add_missing)


def _op_consolidate(protect=(), implications=None):
    return lambda t: consolidate(t, protect, implications)


# name -> builder(**kwargs) -> (tags -> tags)
OPERATIONS: dict[str, Callable[..., Callable[[list[str]], list[str]]]] = {
    "add": _op_add,
    "remove": _op_remove,
    "replace": _op_replace,
    "dedupe": _op_dedupe,
    "sort": _op_sort,
    "trigger_first": _op_trigger_first,
    "consolidate": _op_consolidate,
}


def preview(targets, operation: str, caption_extension: str = ".txt", **kwargs) -> Preview:
    """Preview one named operation on every target caption, writing nothing.

    ``targets``: a folder (every image's caption under it), or caption / image paths.
    Operations and their arguments: ``add`` (tags, position="append"|"prepend"),
    ``remove`` (tags), ``replace`` (old, new, regex=False), ``dedupe``,
    ``sort`` (keep_first=0), ``trigger_first`` (trigger, add_missing=True),
    ``consolidate`` (protect=(), implications=None).
    """
    if operation not in OPERATIONS:
        raise ValueError(f"unknown operation {operation!r}; expected one of {', '.join(OPERATIONS)}")
    fn = OPERATIONS[operation](**kwargs)
    desc = operation + ("" if not kwargs else " " + ", ".join(f"{k}={v!r}" for k, v in kwargs.items()))
    return preview_edit(targets, fn, desc, caption_extension)


def apply(preview: Preview, backup_root: Optional[Union[str, os.PathLike]] = None) -> Optional[UndoRecord]:
    """Write a preview's changes: each caption atomically, after a byte-identical
    backup of every caption it touches (``<backup_root>/.lora_trainer_backup/<time>/``,
    default root: the captions' common folder). Refuses (CaptionIOError, nothing
    written) when a caption changed on disk since the preview. Returns the undo
    record (None when there was nothing to change)."""
    if not preview.changes:
        return None
    writes = {c.path: c.after.encode("utf-8") for c in preview.changes}
    expected = {c.path: c.before_bytes for c in preview.changes}
    return apply_writes(writes, backup_root, preview.operation, expected)


__all__ = [
    "FileChange",
    "IMPLICATIONS",
    "KAOMOJIS",
    "OPERATIONS",
    "Preview",
    "SEPARATOR",
    "TraitCount",
    "add_tags",
    "apply",
    "caption_targets",
    "compile_replacement",
    "consolidate",
    "consolidation",
    "dedupe",
    "edit_text",
    "escape_tag",
    "folder_tags",
    "has_tag",
    "is_kaomoji",
    "join_tags",
    "move_first",
    "normalize_tag",
    "parse_tags",
    "preview",
    "preview_edit",
    "read_tags",
    "remove_tags",
    "replace_tags",
    "sort_tags",
    "subject_traits",
    "tag_frequency",
    "undo",
    "underscores_to_spaces",
    "unescape_tag",
]
