"""A LoRA's saved epochs side by side, through the WebUI's own X/Y/Z plot script.

Two halves, neither importing the WebUI:

* **the family**: :func:`discover_family` finds ``NAME-000001.safetensors`` ...
  ``NAME.safetensors`` (kohya's names; the final ``NAME`` is the last epoch) in
  a folder, in epoch order, reading only the files' headers, each once while the
  file does not change (:func:`cached_metadata`). A file that is not a whole
  safetensors file (a partial download) is left out and named, never raised past
  the listing (:func:`read_metadata`, :func:`find_families`);
* **the plot**: :func:`build_comparison` makes the prompt (trigger word + the
  dataset's most frequent tags, from ``ss_tag_frequency``; editable), the
  negative prompt, a constant seed, the X axis and an optional Y axis, and
  :meth:`Comparison.script_args` the arguments for the script's ``run()``.

How the X axis works. The WebUI's "Prompt S/R" axis searches the prompt for its
*first* value and replaces it with each value in turn (so the first cell keeps
the first value). A LoRA name is a substring of its own epoch names (``NAME`` is
inside ``NAME-000001``), so nothing here ever searches for a name: the prompt
ends with one whole placeholder tag and every value is a whole tag.

* The first value, kept by the first cell, is ``<no_lora:NAME>``: an extra-network
  tag of a type nobody registers. The WebUI's prompt parser removes every
  ``<type:args>`` tag from the text before encoding and skips unknown types
  (a log line at INFO level), so the first cell is the checkpoint without any
  LoRA. The other values are ``<lora:NAME-000001:0.8>`` ... ``<lora:NAME:0.8>``.
* An optional Y axis that changes the LoRA's weights ("strength", "te_unet") is
  a second Prompt S/R applied after X; its first value is the tail of every tag
  (``:0.5>``; ``>`` cannot occur in a LoRA name), spelt so that it occurs
  nowhere in the user's prompt (``:0.50>`` ... when ``:0.5>`` does), and the
  placeholder carries it too, so the no-LoRA column has it as well.
* Values are joined as one CSV row (quoted where a value holds a comma or a
  quote), as the script reads its text fields; ``csv_mode`` is on so the
  "Checkpoint name" axis reads the text too.

:func:`build_comparison` replays the script's substitutions on every cell and
refuses (``ComparisonError``) when a cell's prompt would not be exactly the
intended one, so a collision cannot reach the WebUI.

Axis *indices* differ between WebUIs (A1111 and Forge add or drop options), so
axes are named by label and looked up at run time (:func:`axis_index`); the
script is found by title (``X/Y/Z plot``; Forge classic spells it ``X/Y/Z Plot``).
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
import threading
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Optional, Sequence, Union

PathLike = Union[str, os.PathLike]

# ---------------------------------------------------------------------------------------------
# The script's run() signature. The ONE place that knows its argument order: AUTOMATIC1111
# v1.10.1 scripts/xyz_grid.py, ``Script.run(self, p, <these>)`` (Forge and Forge classic keep it).
# tests/test_compare_xyz.py reads the reference source and checks this tuple against it; at run
# time hosts/a1111_compare.py also reads the live script's signature and refuses on a mismatch.
XYZ_RUN_PARAMETERS: tuple[str, ...] = (
    "x_type", "x_values", "x_values_dropdown",
    "y_type", "y_values", "y_values_dropdown",
    "z_type", "z_values", "z_values_dropdown",
    "draw_legend", "include_lone_images", "include_sub_grids",
    "no_fixed_seeds", "vary_seeds_x", "vary_seeds_y", "vary_seeds_z",
    "margin_size", "csv_mode",
)
XYZ_WEBUI_VERSION = "AUTOMATIC1111 v1.10.1"

SCRIPT_TITLE = "X/Y/Z plot"  # A1111; Forge classic: "X/Y/Z Plot" (titles are compared casefolded)

# axis labels, as the script's axis_options spell them
AXIS_NOTHING = "Nothing"
AXIS_PROMPT_SR = "Prompt S/R"
AXIS_SEED = "Seed"
AXIS_CHECKPOINT = "Checkpoint name"

NO_LORA_TYPE = "no_lora"  # an extra-network type nobody registers: the WebUI strips the tag, loads nothing
DEFAULT_NEGATIVE = "lowres, worst quality, low quality, bad anatomy, blurry, jpeg artifacts, watermark, text"
DEFAULT_STRENGTH = 0.8
DEFAULT_STRENGTHS = (0.5, 0.8, 1.0, 1.2)
DEFAULT_TAG_COUNT = 8
Y_KINDS = ("strength", "seed", "checkpoint", "te_unet")

_EPOCH_RE = re.compile(r"^(?P<name>.+)-(?P<epoch>\d{6})\.safetensors$")
_HEADER_LIMIT = 100 * 1024 * 1024


class ComparisonError(ValueError):
    """The comparison cannot be built as asked; the message says what to change."""


class FamilyNotFound(ComparisonError):
    """No file of that family is in the folder."""


class _ReadFailed(ComparisonError):
    """The system refused to read a file (permissions, a vanished disk): not the file's content,
    so not remembered with it (a chmod does not change the mtime)."""


# ------------------------------------------------------------------------------------ CSV


def to_csv(values: Iterable[str]) -> str:
    """One CSV row, as the X/Y/Z script's text fields are read (quotes only where needed)."""
    out = io.StringIO()
    csv.writer(out, lineterminator="").writerow([str(v) for v in values])
    return out.getvalue()


def from_csv(text: str) -> list[str]:
    """How the script reads a text field: CSV, spaces after commas skipped, every value stripped."""
    return [v.strip() for row in csv.reader(io.StringIO(text), skipinitialspace=True) for v in row]


# --------------------------------------------------------------------------------- family


def _unreadable(path: PathLike, why: str) -> ComparisonError:
    return ComparisonError(f"{path} is not a readable LoRA file ({why}): probably a partial download or not a "
                           "safetensors file; re-download or delete it")


def read_metadata(path: PathLike) -> dict[str, str]:
    """A safetensors file's ``__metadata__``, from its header only (no tensor is read).

    A file that is not a whole safetensors file (cut short by a download, another format under
    this suffix, a header that does not parse) raises :class:`ComparisonError` naming the file
    and what to do: the tensors' end, read from the header, is checked against the file's size.
    """
    try:
        with open(path, "rb") as f:
            total = os.fstat(f.fileno()).st_size
            head = f.read(8)
            if len(head) != 8:
                raise _unreadable(path, f"{total} bytes, too short")
            size = int.from_bytes(head, "little")
            if size <= 0 or size > _HEADER_LIMIT or 8 + size > total:
                raise _unreadable(path, f"header size {size} in a file of {total} bytes")
            raw = f.read(size)
    except OSError as exc:
        raise _ReadFailed(f"{path} cannot be read ({exc.strerror or exc}); check that the file is readable, "
                          "or delete it") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError are both ValueErrors
        raise _unreadable(path, f"its header does not parse: {exc}") from None
    if not isinstance(header, dict):
        raise _unreadable(path, "its header is not a JSON object")
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict):
        raise _unreadable(path, "its __metadata__ is not a JSON object")
    end = 0
    for key, info in header.items():
        if key == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            raise _unreadable(path, f"tensor {key!r} has no data offsets")
        end = max(end, offsets[1])
    if 8 + size + end > total:
        raise _unreadable(path, f"cut short: its tensors end at byte {8 + size + end}, the file has {total}")
    return {str(k): str(v) for k, v in meta.items()}


# Headers read before, by file: (mtime_ns, size, inode) -> the metadata or the refusal. Opening the
# Compare tab, Refresh and every click list the LoRA folder; a file that did not change is not read
# again (the inode catches a file replaced within one mtime tick by an atomic rename).
_HEADER_CACHE_LIMIT = 4096
_header_cache: "OrderedDict[str, tuple[tuple, object]]" = OrderedDict()
_header_lock = threading.Lock()


def cached_metadata(path: PathLike) -> dict[str, str]:
    """:func:`read_metadata`, read again only when the file's mtime, size or inode changed."""
    key = os.path.abspath(os.fspath(path))
    try:
        st = os.stat(key)
    except OSError as exc:
        raise ComparisonError(f"{path} cannot be read ({exc.strerror or exc})") from None
    signature = (st.st_mtime_ns, st.st_size, st.st_ino)
    with _header_lock:
        hit = _header_cache.get(key)
        if hit is not None and hit[0] == signature:
            _header_cache.move_to_end(key)
            value = hit[1]
            if isinstance(value, ComparisonError):
                raise ComparisonError(str(value))
            return dict(value)
    try:
        value = read_metadata(key)
    except _ReadFailed:
        raise
    except ComparisonError as exc:
        value = exc
    with _header_lock:
        _header_cache[key] = (signature, value)
        _header_cache.move_to_end(key)
        while len(_header_cache) > _HEADER_CACHE_LIMIT:
            _header_cache.popitem(last=False)
    if isinstance(value, ComparisonError):
        raise ComparisonError(str(value))
    return dict(value)


@dataclass(frozen=True)
class EpochFile:
    name: str  # the file's stem: what <lora:...> names
    path: Path
    epoch: int
    final: bool = False

    @property
    def title(self) -> str:
        return f"epoch {self.epoch}" + (" (final)" if self.final else "")


@dataclass
class LoraFamily:
    """One training's saved epochs, oldest first; the final ``NAME`` file last."""

    name: str
    folder: Path
    epochs: list[EpochFile]
    metadata: dict[str, str]  # of the newest file
    user_metadata: dict = field(default_factory=dict)  # NAME.json (the WebUI's user metadata)
    warnings: list[str] = field(default_factory=list)

    @property
    def trigger_word(self) -> str:
        return str(self.user_metadata.get("activation text") or "").strip()

    def find(self, epoch: Union[int, str]) -> EpochFile:
        """An epoch by number or by file stem."""
        for e in self.epochs:
            if e.epoch == epoch or e.name == epoch:
                return e
        raise ComparisonError(f"{self.name} has no epoch {epoch!r}; saved: {', '.join(e.name for e in self.epochs)}")


def _check_name(name: str) -> None:
    # the WebUI's tag syntax <lora:NAME:w> splits on ":" and ends at ">"
    bad = [c for c in ":<>\n\r" if c in name]
    if bad:
        raise ComparisonError(f"the LoRA name {name!r} holds {''.join(bad)!r}, which a <lora:...> tag cannot carry; "
                              "rename the files")


def discover_family(folder: PathLike, name: str) -> LoraFamily:
    """``NAME-000001.safetensors`` ... in epoch order, then ``NAME.safetensors`` as the last epoch.

    Step saves (``NAME-step00000500``) and interrupted saves (``NAME-000003-interrupted``) are
    not epochs and are left out. Files from another training run (a different
    ``ss_session_id`` than the newest file's) are kept and named in :attr:`LoraFamily.warnings`;
    files whose header cannot be read (a partial download) are left out and named there too.
    Raises :class:`FamilyNotFound` when no file of the family is there, and
    :class:`ComparisonError` when none of its files can be read. Headers are cached
    (:func:`cached_metadata`): asking again for an unchanged family reads no file.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ComparisonError(f"{folder} is not a folder")
    numbered: list[tuple[int, Path]] = []
    final: Optional[Path] = None
    for entry in folder.iterdir():
        if entry.name == f"{name}.safetensors":
            if entry.is_file():
                final = entry
            continue
        m = _EPOCH_RE.match(entry.name)
        if m and m.group("name") == name and entry.is_file():
            numbered.append((int(m.group("epoch")), entry))
    if not numbered and final is None:
        raise FamilyNotFound(f"no {name}.safetensors nor {name}-000001.safetensors ... in {folder}")
    _check_name(name)
    numbered.sort()
    metadata_of: dict[Path, dict[str, str]] = {}
    unreadable: list[str] = []
    for path in [p for _, p in numbered] + ([final] if final is not None else []):
        try:
            metadata_of[path] = cached_metadata(path)
        except ComparisonError as exc:
            unreadable.append(str(exc))
    if not metadata_of:
        raise ComparisonError("; ".join(unreadable))
    numbered = [(n, p) for n, p in numbered if p in metadata_of]
    if final is not None and final not in metadata_of:
        final = None
    epochs = [EpochFile(p.stem, p, n) for n, p in numbered]
    newest = final if final is not None else numbered[-1][1]
    metadata = metadata_of[newest]
    if final is not None:
        last = numbered[-1][0] if numbered else 0
        try:
            stated = int(metadata.get("ss_epoch", ""))
        except ValueError:
            stated = 0
        epochs.append(EpochFile(final.stem, final, stated if stated > last else last + 1, final=True))
    warnings = [f"{why}; left out of the comparison" for why in unreadable]
    session = metadata.get("ss_session_id")
    if session:
        for e in epochs:
            other = metadata_of[e.path].get("ss_session_id")
            if other and other != session:
                warnings.append(f"{e.path.name} comes from another training run (ss_session_id {other}, "
                                f"newest file {session})")
    user = {}
    user_path = newest.with_suffix(".json")
    if user_path.is_file():
        try:
            user = json.loads(user_path.read_text(encoding="utf-8"))
        except (ValueError, OSError):
            user = {}
    return LoraFamily(name, folder, epochs, metadata, user if isinstance(user, dict) else {}, warnings)


def find_families(folder: PathLike, skipped: Optional[list] = None) -> dict[str, LoraFamily]:
    """Every family in ``folder``, by name.

    A family that cannot be read (its only files are partial downloads, a name a ``<lora:...>``
    tag cannot carry) is left out, and why is appended to ``skipped`` when given: one bad file
    must not hide the others. A folder that cannot be listed raises ``OSError``.
    """
    names = set()
    for entry in Path(folder).iterdir():
        if entry.suffix != ".safetensors" or not entry.is_file():
            continue
        m = _EPOCH_RE.match(entry.name)
        names.add(m.group("name") if m else entry.stem)
    out = {}
    for n in sorted(names):
        try:
            out[n] = discover_family(folder, n)
        except FamilyNotFound:  # removed while listing
            continue
        except ComparisonError as exc:
            if skipped is not None:
                skipped.append(str(exc))
    return out


# ---------------------------------------------------------------------------------- prompt


def tag_counts(metadata: Mapping[str, str]) -> list[tuple[str, int]]:
    """``ss_tag_frequency`` summed over the training folders (regularisation folders left out),
    most frequent first (ties: first seen first)."""
    try:
        freq = json.loads(metadata.get("ss_tag_frequency") or "{}")
        reg = set(json.loads(metadata.get("ss_reg_dataset_dirs") or "{}"))
    except ValueError:
        return []
    counts: Counter = Counter()
    first: dict[str, int] = {}
    for folder, tags in (freq or {}).items():
        if folder in reg or not isinstance(tags, dict):
            continue
        for tag, n in tags.items():
            tag = str(tag).strip()
            if not tag:
                continue
            first.setdefault(tag, len(first))
            try:
                counts[tag] += int(n)
            except (TypeError, ValueError):
                continue
    return sorted(counts.items(), key=lambda kv: (-kv[1], first[kv[0]]))


def escape_tag(tag: str) -> str:
    """Brackets in a tag (``hat (object)``) are the WebUI's emphasis syntax: escape them."""
    return re.sub(r"(?<!\\)([()\[\]])", r"\\\1", tag)


def default_prompt(family: LoraFamily, tag_count: int = DEFAULT_TAG_COUNT) -> str:
    """Trigger word, then the dataset's most frequent tags (the trigger's own tags not repeated)."""
    trigger = family.trigger_word
    skip = {t.strip().casefold() for t in trigger.split(",") if t.strip()}
    tags = [escape_tag(t) for t, _ in tag_counts(family.metadata) if t.casefold() not in skip][:max(0, tag_count)]
    return ", ".join(([trigger] if trigger else []) + tags)


def format_weight(value: float) -> str:
    """``0.8``, ``1``, ``1.2``: the shortest spelling that reads back as the same float."""
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


def _unique_spelling(value: float, build: Callable[[str], str], taken: str) -> str:
    """``build(spelling)`` for the first spelling of ``value`` (``0.5``, ``0.50``, ...) not in ``taken``."""
    base = format_weight(value)
    if "." not in base and "e" not in base:
        base += ".0"
    for zeros in range(12):
        candidate = build(base + "0" * zeros)
        if candidate not in taken:
            return candidate
    raise ComparisonError(f"every spelling of {base} is already in the prompt; edit the prompt")


# ------------------------------------------------------------------------------ comparison


@dataclass
class Axis:
    label: str  # the X/Y/Z script's axis label
    values: list[str]  # Prompt S/R: values[0] is what the script searches for
    titles: list[str]  # our words for each value ("no LoRA", "epoch 3", "strength 0.5")

    @property
    def text(self) -> str:
        return to_csv(self.values) if self.values else ""

    def __len__(self) -> int:
        return max(1, len(self.values))


@dataclass(frozen=True)
class Cell:
    index: int  # in the script's image order: ix + iy * columns
    ix: int
    iy: int
    epoch: Optional[EpochFile]  # None: the no-LoRA column
    prompt: str  # what the prompt is for this cell, after the script's substitutions
    x_title: str
    y_title: str


@dataclass
class Comparison:
    family: LoraFamily
    prompt: str  # as sent: user text + the placeholder tag
    negative_prompt: str
    seed: int
    x: Axis
    y: Axis  # label "Nothing" without a Y axis
    cells: list[Cell]
    steps: int = 20
    width: int = 512
    height: int = 512
    cfg_scale: float = 7.0
    sampler_name: str = "Euler a"
    scheduler: str = "Automatic"
    strength: float = DEFAULT_STRENGTH  # the LoRA's weight in every tag (the Y axis may change it per row)
    y_kind: Optional[str] = None  # build_comparison's ``y``: None, or one of Y_KINDS
    y_strengths: list[float] = field(default_factory=list)  # with y_kind "strength": each row's weight

    @property
    def columns(self) -> int:
        return len(self.x)

    @property
    def rows(self) -> int:
        return len(self.y)

    def cell(self, ix: int, iy: int = 0) -> Cell:
        return self.cells[ix + iy * self.columns]

    def column_of(self, epoch: Union[int, str]) -> int:
        target = self.family.find(epoch)
        for c in self.cells:
            if c.epoch == target:
                return c.ix
        raise ComparisonError(f"{target.name} is not in this comparison")

    def script_values(self, axis_index: Callable[[str], int]) -> dict:
        """Every run() argument by name; ``axis_index(label)`` gives the live WebUI's index of an axis."""
        y_label = self.y.label
        return {
            "x_type": axis_index(self.x.label), "x_values": self.x.text, "x_values_dropdown": [],
            "y_type": axis_index(y_label), "y_values": self.y.text if y_label != AXIS_NOTHING else "",
            "y_values_dropdown": [],
            "z_type": axis_index(AXIS_NOTHING), "z_values": "", "z_values_dropdown": [],
            "draw_legend": True,
            "include_lone_images": True,  # the cells come back after the grid
            "include_sub_grids": False,
            "no_fixed_seeds": False,  # the seed is the same in every cell
            "vary_seeds_x": False, "vary_seeds_y": False, "vary_seeds_z": False,
            "margin_size": 0,  # cells touch: a column can be cut out of the grid (publish.crop_cell)
            "csv_mode": True,  # text fields, not dropdowns, for every axis ("Checkpoint name" included)
        }

    def script_args(self, axis_index: Callable[[str], int],
                    parameters: Sequence[str] = XYZ_RUN_PARAMETERS) -> list:
        """The positional arguments of ``run(p, ...)``, in ``parameters``' order (default: the
        v1.10.1 order, :data:`XYZ_RUN_PARAMETERS`; pass the live script's own parameter names)."""
        values = self.script_values(axis_index)
        unknown = [p for p in parameters if p not in values]
        missing = [p for p in values if p not in parameters]
        if unknown or missing:
            raise ComparisonError(
                "this WebUI's X/Y/Z plot script takes other arguments than the one this comparison was written for "
                f"({XYZ_WEBUI_VERSION}): unknown {unknown}, absent {missing}")
        return [values[p] for p in parameters]


def apply_prompt_sr(prompt: str, negative: str, values: Sequence[str], value: str) -> tuple[str, str]:
    """What a Prompt S/R cell does to the prompts: ``values[0]`` must be in one of them (else the
    script stops the whole plot) and every occurrence becomes ``value``."""
    first = values[0]
    if first not in prompt and first not in negative:
        raise ComparisonError(f"Prompt S/R would not find {first!r} in the prompt")
    return prompt.replace(first, value), negative.replace(first, value)


def axis_index(labels: Sequence[str], label: str) -> int:
    """Index of the axis named ``label`` (exact, else casefolded) among the script's current options."""
    for i, item in enumerate(labels):
        if item == label:
            return i
    folded = label.casefold()
    for i, item in enumerate(labels):
        if item.casefold() == folded:
            return i
    raise ComparisonError(f"this WebUI's X/Y/Z plot has no {label!r} axis (it has: {', '.join(labels)})")


def build_comparison(
    family: LoraFamily,
    *,
    prompt: Optional[str] = None,
    negative_prompt: Optional[str] = None,
    seed: int = 1234,
    strength: float = DEFAULT_STRENGTH,
    epochs: Optional[Sequence[Union[int, str]]] = None,
    y: Optional[str] = None,
    strengths: Sequence[float] = DEFAULT_STRENGTHS,
    seeds: Optional[Sequence[int]] = None,
    checkpoints: Sequence[str] = (),
    tag_count: int = DEFAULT_TAG_COUNT,
    steps: int = 20,
    width: int = 512,
    height: int = 512,
    cfg_scale: float = 7.0,
    sampler_name: str = "Euler a",
    scheduler: str = "Automatic",
) -> Comparison:
    """The X/Y/Z plot of ``family``: a no-LoRA column, then every saved epoch (or ``epochs``) in order.

    ``prompt`` replaces the default (trigger word + frequent tags); ``y`` adds rows:
    ``"strength"`` (``strengths``), ``"seed"`` (``seeds``, default seed, seed+1, seed+2),
    ``"checkpoint"`` (``checkpoints``, names the WebUI knows) or ``"te_unet"`` (text encoder
    only, UNet only, both, at ``strength``).
    """
    if y is not None and y not in Y_KINDS:
        raise ComparisonError(f"unknown Y axis {y!r}; choose one of {', '.join(Y_KINDS)}")
    _check_name(family.name)
    chosen = [family.find(e) for e in epochs] if epochs else list(family.epochs)
    if not chosen:
        raise ComparisonError(f"{family.name} has no saved epoch to compare")
    for e in chosen:
        _check_name(e.name)
    user = (default_prompt(family, tag_count) if prompt is None else str(prompt)).strip()
    negative = DEFAULT_NEGATIVE if negative_prompt is None else str(negative_prompt)
    taken = user + "\n" + negative  # what the script must never find or touch

    # Y axis first: its first Prompt S/R value becomes the tail of every tag
    y_axis = Axis(AXIS_NOTHING, [], [""])
    tail = f":{format_weight(strength)}>"
    if y == "strength":
        if not strengths:
            raise ComparisonError("no strengths given for the strength axis")
        first = _unique_spelling(strengths[0], lambda s: f":{s}>", taken)
        values = [first] + [f":{format_weight(w)}>" for w in strengths[1:]]
        y_axis = Axis(AXIS_PROMPT_SR, values, [f"strength {format_weight(w)}" for w in strengths])
        tail = first
    elif y == "te_unet":
        w = format_weight(strength)
        first = _unique_spelling(strength, lambda s: f":{s}:0>", taken)
        y_axis = Axis(AXIS_PROMPT_SR, [first, f":0:{w}>", f":{w}>"],
                      [f"text encoder only ({w})", f"UNet only ({w})", f"both ({w})"])
        tail = first
    elif y == "seed":
        chosen_seeds = [int(s) for s in (seeds if seeds else (seed, seed + 1, seed + 2))]
        y_axis = Axis(AXIS_SEED, [str(s) for s in chosen_seeds], [f"seed {s}" for s in chosen_seeds])
    elif y == "checkpoint":
        names = [str(c).strip() for c in checkpoints if str(c).strip()]
        if not names:
            raise ComparisonError("no checkpoints given for the checkpoint axis")
        y_axis = Axis(AXIS_CHECKPOINT, names, [os.path.basename(n) for n in names])

    # X: the no-LoRA placeholder (kept by the first cell), then one whole tag per epoch
    placeholder = None
    for n in range(100):
        kind = NO_LORA_TYPE if n == 0 else f"{NO_LORA_TYPE}{n}"
        candidate = f"<{kind}:{family.name}{tail}"
        if candidate not in taken:
            placeholder = candidate
            break
    if placeholder is None:
        raise ComparisonError("the prompt already holds every placeholder this comparison could use; edit it")
    tags = [f"<lora:{e.name}{tail}" for e in chosen]
    x_axis = Axis(AXIS_PROMPT_SR, [placeholder] + tags, ["no LoRA"] + [e.title for e in chosen])
    full_prompt = f"{user} {placeholder}" if user else placeholder

    cells = _replay(full_prompt, negative, x_axis, y_axis, user, [None] + chosen)
    grid_mp = len(cells) * width * height / 1e6
    comparison = Comparison(family, full_prompt, negative, int(seed), x_axis, y_axis, cells, steps=steps,
                            width=width, height=height, cfg_scale=cfg_scale, sampler_name=sampler_name,
                            scheduler=scheduler, strength=float(strength), y_kind=y,
                            y_strengths=[float(w) for w in strengths] if y == "strength" else [])
    if grid_mp > 200:
        raise ComparisonError(f"the grid would be {grid_mp:.0f} megapixels; compare fewer epochs or smaller images")
    return comparison


def _replay(prompt: str, negative: str, x: Axis, y: Axis, user: str,
            epochs: Sequence[Optional[EpochFile]]) -> list[Cell]:
    """Each cell's prompt as the script makes it (X applied, then Y); refuses any cell whose prompt
    is not the user's text plus exactly the intended tag, or whose negative prompt changed."""
    cells = []
    y_values = y.values if y.label == AXIS_PROMPT_SR else []
    rows = len(y)
    for iy in range(rows):
        for ix, x_value in enumerate(x.values):
            p, n = apply_prompt_sr(prompt, negative, x.values, x_value)
            intended_tag = x_value
            if y_values:
                p, n = apply_prompt_sr(p, n, y_values, y_values[iy])
                intended_tag = x_value[: len(x_value) - len(y_values[0])] + y_values[iy]
            intended = f"{user} {intended_tag}" if user else intended_tag
            if p != intended or n != negative:
                raise ComparisonError(
                    f"the X/Y/Z substitutions would give the cell ({ix}, {iy}) the prompt {p!r} instead of "
                    f"{intended!r}: the prompt holds text that collides with the LoRA tags; edit the prompt")
            cells.append(Cell(ix + iy * len(x.values), ix, iy, epochs[ix], p, x.titles[ix],
                              y.titles[iy] if iy < len(y.titles) else ""))
    return cells
