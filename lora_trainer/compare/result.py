"""The outcome of an epoch comparison, whichever host drew it.

A host's comparison runner (the WebUI's X/Y/Z plot, or the headless diffusers
grid) returns a :class:`ComparisonResult`: the grid, every cell in the
:class:`~lora_trainer.compare.xyz.Comparison`'s order, where the grid was saved,
and the release-candidate suggestion. :func:`remember` keeps the latest result
per LoRA family so Publish can take its preview from the grid the user saw
(:func:`preview_image`, in the row :func:`preview_row` picks).
"""
from __future__ import annotations

import base64
import io
import os
import threading
from dataclasses import dataclass, field
from typing import Any, Optional

from . import candidate
from .xyz import AXIS_NOTHING, AXIS_SEED, Comparison

_lock = threading.Lock()
_last_results: dict[str, "ComparisonResult"] = {}  # family folder/name -> the latest result (for Publish's preview)


@dataclass
class ComparisonResult:
    comparison: Comparison
    grid: Any  # PIL image
    cells: list  # PIL images, in the script's order (Comparison.cells)
    grid_path: Optional[str]
    infotext: str
    interrupted: bool = False
    suggestion: Optional[candidate.Suggestion] = None
    notes: list[str] = field(default_factory=list)

    def cell_image(self, ix: int, iy: int = 0):
        return self.cells[ix + iy * self.comparison.columns]

    def as_dict(self, images: bool = False) -> dict:
        c = self.comparison
        out = {
            "name": c.family.name,
            "grid_path": self.grid_path,
            "prompt": c.prompt,
            "negative_prompt": c.negative_prompt,
            "seed": c.seed,
            "columns": c.columns,
            "rows": c.rows,
            "x": {"label": c.x.label, "values": c.x.values, "titles": c.x.titles},
            "y": {"label": c.y.label, "values": c.y.values, "titles": c.y.titles},
            "cells": [{"index": cell.index, "ix": cell.ix, "iy": cell.iy, "prompt": cell.prompt,
                       "epoch": cell.epoch.epoch if cell.epoch else None,
                       "file": cell.epoch.name if cell.epoch else None,
                       "x_title": cell.x_title, "y_title": cell.y_title} for cell in c.cells],
            "interrupted": self.interrupted,
            "suggestion": self.suggestion.as_dict() if self.suggestion else None,
            "warnings": list(c.family.warnings) + self.notes,
            "infotext": self.infotext,
        }
        if self.suggestion is not None:
            chosen = [cell for cell in c.cells if cell.ix == self.suggestion.index + 1 and cell.iy == 0]
            out["suggestion"]["file"] = chosen[0].epoch.name if chosen and chosen[0].epoch else None
        if images:
            out["grid"] = _b64(self.grid)
            for entry, image in zip(out["cells"], self.cells):
                entry["image"] = _b64(image)
        return out


def _b64(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def suggestion_for(result: ComparisonResult) -> Optional[candidate.Suggestion]:
    """The epoch suggestion from the cells: one row, or seeds as rows (other Y axes change more
    than the epoch, so no suggestion there)."""
    c = result.comparison
    if c.y.label not in (AXIS_NOTHING, AXIS_SEED) or result.interrupted or c.columns < 2:
        return None
    per_column = [[result.cell_image(ix, iy) for iy in range(c.rows)] for ix in range(c.columns)]
    epochs = [cell.epoch.epoch for cell in c.cells[1:c.columns]]
    return candidate.suggest_from_images(per_column[1:], epochs, baseline=per_column[0])


def preview_row(comparison: Comparison) -> int:
    """The grid row a release's preview is cut from: the one showing the LoRA as the comparison
    uses it. With strengths as rows, the row at the comparison's own strength (the nearest one
    when it is not among them); with the text encoder / UNet split, the row with both (the
    last: TE only, UNet only, both); with seeds, checkpoints or no Y axis, the first row."""
    if comparison.y_kind == "te_unet":
        return comparison.rows - 1
    weights = comparison.y_strengths
    if comparison.y_kind == "strength" and weights:
        return min(range(len(weights)), key=lambda i: abs(weights[i] - comparison.strength))
    return 0


def preview_image(result: ComparisonResult, epoch):
    """The cell of ``epoch`` (number or file stem) in :func:`preview_row`: Publish's preview, in the
    Compare tab and in the ``/publish`` route alike. ComparisonError when that epoch is not in the grid."""
    c = result.comparison
    return result.cell_image(c.column_of(epoch), preview_row(c))


def _key(folder, name) -> str:
    return f"{os.path.normcase(os.path.abspath(str(folder)))}::{name}"


def latest_result(folder, name) -> Optional[ComparisonResult]:
    with _lock:
        return _last_results.get(_key(folder, name))


def remember(result: ComparisonResult) -> None:
    with _lock:
        _last_results[_key(result.comparison.family.folder, result.comparison.family.name)] = result


__all__ = ["ComparisonResult", "suggestion_for", "remember", "latest_result", "preview_row", "preview_image"]
