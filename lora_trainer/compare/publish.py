"""Release the chosen epoch: ``NAME-000006.safetensors`` -> ``RELEASE.safetensors``.

* The file is the epoch's own bytes with one metadata value changed:
  ``ss_output_name`` becomes the release name. Only the JSON header is rewritten
  (same keys in the same order, padded with spaces to 8 bytes as safetensors
  does); the tensor data after it is copied byte for byte. ``sshs_model_hash``
  (the WebUI's and additional-networks' LoRA hash) is the sha256 of that data,
  so it stays right; ``sshs_legacy_hash`` and every other key are kept as written.
* Beside it, written like the file (whole to a hidden temporary name, then moved
  into place): ``RELEASE.json``, the WebUI's user metadata (the epoch's own, or
  one made from the trigger word), and ``RELEASE.preview.png``, the WebUI's
  preview naming, from the epoch's grid cell (:func:`crop_cell`) or an image given.
* The release name is never the source's own name nor that of any file of its
  family (``NAME``, ``NAME-000003``, ``NAME-000003-interrupted``, ``NAME-step00000500``):
  the WebUI finds a LoRA by that name in any subfolder, and overwriting one would
  destroy a saved epoch.
* The three targets are checked before anything is written: when one of them exists
  (an earlier release, or a stray ``RELEASE.json`` / ``RELEASE.preview.png`` that the
  WebUI would show with the new file) nothing is written unless ``overwrite=True``;
  then all three are replaced, and a preview left from the replaced release is removed
  when no new one is given (it showed another epoch). The ``.safetensors`` is written
  last, so the WebUI never lists a release whose metadata is missing.
"""
from __future__ import annotations

import io
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Union

from ..fileio import write_atomic

PathLike = Union[str, os.PathLike]
_HEADER_LIMIT = 100 * 1024 * 1024


class PublishError(ValueError):
    """The release cannot be written as asked; the message says why."""


@dataclass
class Published:
    path: Path
    user_metadata_path: Path
    preview_path: Optional[Path]
    source: Path
    metadata: dict
    removed: list[Path] = field(default_factory=list)  # a replaced release's preview, with no new one given


def split_safetensors(data: bytes) -> tuple[dict, bytes]:
    """``(header, tensor data)`` of a safetensors file's bytes."""
    if len(data) < 8:
        raise PublishError("not a safetensors file (too short)")
    size = int.from_bytes(data[:8], "little")
    if size <= 0 or size > _HEADER_LIMIT or 8 + size > len(data):
        raise PublishError(f"not a safetensors file (header size {size})")
    try:
        header = json.loads(data[8:8 + size].decode("utf-8"))
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError
        raise PublishError(f"not a safetensors file (the header does not parse: {exc})") from None
    if not isinstance(header, dict):
        raise PublishError("not a safetensors file (header is not an object)")
    body = data[8 + size:]
    offsets = [info.get("data_offsets") for key, info in header.items()
               if key != "__metadata__" and isinstance(info, dict)]
    ends = [o[1] for o in offsets if isinstance(o, list) and len(o) == 2 and isinstance(o[1], int)]
    if ends and max(ends) > len(body):  # a partial download: published, it would not load
        raise PublishError(f"not a whole safetensors file (cut short: its tensors need {max(ends)} bytes of data, "
                           f"it holds {len(body)}); re-download it")
    return header, body


def join_safetensors(header: Mapping, body: bytes) -> bytes:
    """Header JSON (compact, padded with spaces to a multiple of 8) + the tensor data."""
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw + body


def with_metadata(data: bytes, updates: Mapping[str, str]) -> bytes:
    """The same file with ``__metadata__`` keys set (others, and their order, kept)."""
    header, body = split_safetensors(data)
    meta = dict(header.get("__metadata__") or {})
    for key, value in updates.items():
        if not isinstance(value, str):
            raise TypeError(f"safetensors metadata must be str -> str, got {key!r}: {type(value).__name__}")
        meta[key] = value
    out = {}
    placed = False
    for key, value in header.items():  # __metadata__ stays where it was
        if key == "__metadata__":
            out[key] = meta
            placed = True
        else:
            out[key] = value
    if not placed:
        out = {"__metadata__": meta, **out}
    return join_safetensors(out, body)


def crop_cell(grid, columns: int, rows: int, ix: int, iy: int = 0,
              cell_size: Optional[tuple[int, int]] = None):
    """Cell ``(ix, iy)`` of an X/Y/Z grid with ``columns`` x ``rows`` cells and no margin between
    cells. The WebUI puts its legend on the left and on top, so the cells are the bottom-right
    block; ``cell_size`` (the generation's width, height) is needed when there is a legend."""
    if not (0 <= ix < columns and 0 <= iy < rows):
        raise PublishError(f"cell ({ix}, {iy}) is outside a {columns} x {rows} grid")
    if cell_size is None:
        cell_size = (grid.width // columns, grid.height // rows)
    w, h = cell_size
    left, top = grid.width - columns * w, grid.height - rows * h
    if left < 0 or top < 0:
        raise PublishError(f"a {grid.width} x {grid.height} grid cannot hold {columns} x {rows} cells of {w} x {h}")
    x0, y0 = left + ix * w, top + iy * h
    return grid.crop((x0, y0, x0 + w, y0 + h))


def _arch_of(metadata: Mapping[str, str]) -> str:
    version = (metadata.get("ss_base_model_version") or metadata.get("modelspec.architecture") or "").lower()
    if "xl" in version:
        return "sdxl"
    if "v2" in version or "sd-2" in version:
        return "sd2"
    return "sd1"


# NAME-000003, NAME-step00000500, NAME-000003-interrupted (NAME greedy: "x-000001-000002" is epoch 2 of "x-000001")
_KOHYA_SAVE = re.compile(r"^(?P<base>.+)-(\d{6}|step\d+)(-[A-Za-z]+)?$")


def family_base(stem: str) -> str:
    """The training's ``output_name`` of a kohya file stem: ``char`` for ``char-000003``,
    ``char-000003-interrupted``, ``char-step00000500`` and ``char`` itself."""
    m = _KOHYA_SAVE.match(stem)
    return m.group("base") if m else stem


def _same_family(name: str, base: str) -> bool:
    # casefolded: on Windows and macOS "Char" is the file "char"
    return family_base(name).casefold() == base.casefold()


def publish(source: PathLike, release_name: str, *, folder: Optional[PathLike] = None, preview=None,
            trigger_word: Optional[str] = None, overwrite: bool = False) -> Published:
    """Copy the epoch file ``source`` to ``folder/RELEASE.safetensors`` (default: the same folder)
    with ``ss_output_name = release_name``, its user-metadata JSON and ``preview`` (a PIL image)."""
    source = Path(source)
    name = str(release_name).strip()
    if not name or any(c in name for c in '/\\:<>"|?*\n\r') or name in (".", ".."):
        raise PublishError(f"{release_name!r} cannot be a LoRA file name (no path separators, ':', '<', '>' ...)")
    folder = Path(folder) if folder is not None else source.parent
    target = folder / f"{name}.safetensors"
    base = family_base(source.stem)
    if target.resolve() == source.resolve() or (target.exists() and os.path.samefile(target, source)):
        raise PublishError(f"{source.name} is already called {name}; choose another release name")
    if _same_family(name, base):
        raise PublishError(f"{name!r} is a file name of the training {base!r} itself ({base}, {base}-000001 ...): "
                           f"publishing under it would replace a saved epoch; choose another release name, "
                           f"e.g. {base}_v1")
    user_path = target.with_suffix(".json")
    preview_path = folder / f"{name}.preview.png"
    existing = [p for p in (target, user_path, preview_path) if p.exists()]
    if existing and not overwrite:
        raise PublishError(f"a release named {name!r} exists already in {folder} "
                           f"({', '.join(p.name for p in existing)}); choose another release name or overwrite it")

    # everything is made before anything is written: a bad source or preview leaves the folder as it was
    data = source.read_bytes()
    header, body = split_safetensors(data)
    meta = dict(header.get("__metadata__") or {})
    new_data = with_metadata(data, {"ss_output_name": name})
    check_header, check_body = split_safetensors(new_data)
    if check_body != body:  # cannot happen: the data is appended as read
        raise PublishError("internal error: the tensor data changed while rewriting the header")
    own = source.with_suffix(".json")
    user: dict = {}
    if own.is_file():
        try:
            user = json.loads(own.read_text(encoding="utf-8"))
        except (ValueError, OSError):
            user = {}
    if not isinstance(user, dict) or not user:
        from ..training.saving import user_metadata

        user = user_metadata(_arch_of(meta), trigger_word or "")
    elif trigger_word is not None:
        user["activation text"] = trigger_word
    user_data = json.dumps(user, indent=4, ensure_ascii=False).encode("utf-8")
    preview_data = None
    if preview is not None:
        buffer = io.BytesIO()
        preview.convert("RGB").save(buffer, format="PNG")
        preview_data = buffer.getvalue()

    removed = []
    write_atomic(user_path, user_data)
    if preview_data is not None:
        write_atomic(preview_path, preview_data)
    elif preview_path.exists():  # the replaced release's preview would show with the new file
        preview_path.unlink()
        removed.append(preview_path)
    write_atomic(target, new_data)
    return Published(target, user_path, preview_path if preview_data is not None else None, source,
                     check_header.get("__metadata__") or {}, removed)
