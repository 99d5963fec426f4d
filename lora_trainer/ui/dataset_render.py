"""HTML for the Dataset tab's read-only panels: tag frequency, batch diff, tagging status, doctor report.

Plain HTML strings with inline styles, like :mod:`lora_trainer.ui.render` (no CSS
file, no Gradio import), so they look the same in every host and theme. The
``data-*`` attributes carry the numbers for tests and scripts.
"""
from __future__ import annotations

import html
import os
from typing import Any, Iterable, Optional, Sequence

_TABLE = 'style="border-collapse:collapse;width:100%;font-size:0.9em"'
_CELL = 'style="padding:2px 6px;border-bottom:1px solid rgba(128,128,128,0.3);text-align:left"'
_NUM = 'style="padding:2px 6px;border-bottom:1px solid rgba(128,128,128,0.3);text-align:right"'
_LEVEL_COLOURS = {"error": "#d33", "warning": "#d98b00", "info": "inherit"}
_STATE_COLOURS = {"loading": "#888", "running": "#2b7de9", "done": "#2e9e4f", "failed": "#d33", "stopped": "#d98b00"}
MAX_DIFF_FILES = 100  # a preview lists this many files; the count covers all of them
MAX_FILES_PER_FINDING = 8

# Gradio 3 outlines an output a pending event will update; the tagging status is
# updated once a second while a run lasts, so it would pulse (as render.QUIET_POLLING_STYLE).
QUIET_STATUS_STYLE = ("<style>#lora_trainer_ds_tag_status .generating{border-color:transparent!important;"
                      "animation:none!important}</style>")


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _rel(path: str, root: Optional[str]) -> str:
    if not root:
        return path
    try:
        rel = os.path.relpath(path, root)
    except ValueError:
        return path
    return path if rel.startswith("..") else rel


def frequency_html(rows: Sequence[tuple[str, int]], images: int, total: int) -> str:
    """Tag | images holding it | share of the filtered images, most frequent first."""
    head = (f'<div style="opacity:0.7;font-size:0.85em;margin-bottom:4px">{len(rows)} tag(s) in {images} '
            f'image(s)' + (f" (filtered from {total})" if images != total else "") + "</div>")
    if not rows:
        return (f'<div class="lora-trainer-ds-frequency" data-images="{images}" data-tags="0">{head}</div>')
    body = "".join(
        f'<tr data-tag="{_e(tag)}" data-count="{count}"><td {_CELL}>{_e(tag)}</td><td {_NUM}>{count}</td>'
        f'<td {_NUM}>{100.0 * count / images:.0f}%</td></tr>'
        for tag, count in rows
    )
    return (f'<div class="lora-trainer-ds-frequency" data-images="{images}" data-tags="{len(rows)}" '
            f'style="max-height:420px;overflow-y:auto">{head}<table {_TABLE}><thead><tr><th {_CELL}>Tag</th>'
            f'<th {_NUM}>Images</th><th {_NUM}>Share</th></tr></thead><tbody>{body}</tbody></table></div>')


def _tag_spans(tags: Iterable[str], marked: set[str], colour: str, strike: bool) -> str:
    from ..tagging.tags import normalize_tag

    out = []
    for tag in tags:
        if normalize_tag(tag) in marked:
            style = f"color:{colour};font-weight:bold" + (";text-decoration:line-through" if strike else "")
            out.append(f'<span style="{style}">{_e(tag)}</span>')
        else:
            out.append(_e(tag))
    return ", ".join(out)


def diff_html(operation: str, changes: Sequence[Any], scanned: int, root: Optional[str] = None,
              applied: bool = False) -> str:
    """A batch edit's changes (:class:`lora_trainer.tagging.tags.FileChange`): per file the
    caption before (removed tags struck out) and after (added tags bold)."""
    from ..tagging.tags import normalize_tag, parse_tags

    verb = "changed" if applied else "would change"
    head = (f'<div><b data-field="files_changed">{len(changes)}</b> of {scanned} caption(s) {verb}: '
            f'<code>{_e(operation)}</code></div>')
    rows = []
    for change in changes[:MAX_DIFF_FILES]:
        removed = {normalize_tag(t) for t in change.removed}
        added = {normalize_tag(t) for t in change.added}
        before_lines = (change.before or "").splitlines() or [""]
        after_lines = change.after.splitlines() or [""]
        before = "<br>".join(_tag_spans(parse_tags(line), removed, "#d33", True) for line in before_lines)
        after = "<br>".join(_tag_spans(parse_tags(line), added, "#2e9e4f", False) for line in after_lines)
        if change.before is None:
            before = '<i style="opacity:0.7">(no caption file yet)</i>'
        rows.append(
            f'<tr data-file="{_e(_rel(change.path, root))}"><td {_CELL}><code>{_e(_rel(change.path, root))}</code></td>'
            f'<td {_CELL}>{before}</td><td {_CELL}>{after}</td></tr>'
        )
    more = len(changes) - MAX_DIFF_FILES
    table = ""
    if rows:
        table = (f'<div style="max-height:420px;overflow-y:auto"><table {_TABLE}><thead><tr><th {_CELL}>Caption</th>'
                 f'<th {_CELL}>Before</th><th {_CELL}>After</th></tr></thead><tbody>{"".join(rows)}</tbody></table>'
                 + (f'<div style="opacity:0.7">... and {more} more</div>' if more > 0 else "") + "</div>")
    return (f'<div class="lora-trainer-ds-diff" data-files-changed="{len(changes)}" data-scanned="{scanned}" '
            f'data-applied="{str(applied).lower()}">{head}{table}</div>')


def tag_status_html(status: dict[str, Any]) -> str:
    """The tagging run: state, images done / total, current image, outcome."""
    if not status:
        return (QUIET_STATUS_STYLE + '<div class="lora-trainer-ds-tag-status" data-state="idle" data-done="0" '
                'data-total="0" style="opacity:0.7">No tagging run yet.</div>')
    state = status.get("state", "")
    done, total = int(status.get("done") or 0), int(status.get("total") or 0)
    percent = 100.0 * done / total if total else 0.0
    colour = _STATE_COLOURS.get(state, "#888")
    lines = []
    if status.get("current") and state == "running":
        lines.append(f'<div style="opacity:0.7;font-size:0.85em">{_e(status["current"])}</div>')
    if status.get("message"):
        lines.append(f'<div data-field="message">{_e(status["message"])}</div>')
    for image, why in (status.get("failed") or [])[:MAX_FILES_PER_FINDING]:
        lines.append(f'<div style="color:#d33;font-size:0.85em">{_e(image)}: {_e(why)}</div>')
    return (
        QUIET_STATUS_STYLE
        + f'<div class="lora-trainer-ds-tag-status" data-state="{_e(state)}" data-done="{done}" data-total="{total}" '
        f'data-written="{int(status.get("written") or 0)}">'
        f'<div style="display:flex;justify-content:space-between"><span>{_e(status.get("model"))} '
        f'<span style="opacity:0.7">{_e(status.get("folder"))}</span></span>'
        f'<span style="color:{colour};font-weight:bold" data-field="state">{_e(state)}</span></div>'
        f'<div style="height:8px;background:rgba(128,128,128,0.25);border-radius:4px;margin:6px 0">'
        f'<div style="height:8px;width:{percent:.1f}%;background:{colour};border-radius:4px"></div></div>'
        f'<div>{done} / {total} image(s)</div>{"".join(lines)}</div>'
    )


def doctor_html(report: Any) -> str:
    """:class:`lora_trainer.dataset.doctor.Report` as HTML: the folders' counts, then each finding
    with its files (relative to the dataset) and its fix."""
    s = report.settings
    parts = [f'<div><b>Dataset check</b> <code>{_e(report.train_dir)}</code></div>']
    if report.folders:
        head = "".join(f"<th {_CELL}>{h}</th>" for h in
                       ("Folder", "Images", "Captioned", "Repeats", "Images × repeats", "Steps"))
        rows = []
        for f in report.folders:
            steps = "reg" if f.is_reg else ("–" if f.total_steps is None else f.total_steps)
            cells = (_e(f.name), _e(f.images), _e(f.captioned), _e(f.repeats), _e(f.images_x_repeats), _e(steps))
            rows.append("<tr>" + "".join(f"<td {_CELL}>{c}</td>" for c in cells) + "</tr>")
        parts.append(f'<div style="opacity:0.7;font-size:0.85em">steps for {_e(s.get("epochs"))} epoch(s), batch '
                     f'{_e(s.get("batch_size"))} at {_e(s.get("resolution"))}; the guides aim for '
                     f'{_e(s.get("steps_target", ["?", "?"])[0])}-{_e(s.get("steps_target", ["?", "?"])[1])} per concept</div>')
        parts.append(f'<table {_TABLE}><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>')
    for level in ("error", "warning", "info"):
        group = [f for f in report.findings if f.level == level]
        if not group:
            continue
        items = []
        for f in group:
            files = ""
            if f.files:
                shown = ", ".join(f"<code>{_e(_rel(p, report.train_dir))}</code>" for p in f.files[:MAX_FILES_PER_FINDING])
                more = len(f.files) - MAX_FILES_PER_FINDING
                files = (f'<div style="font-size:0.85em;opacity:0.85">{shown}'
                         + (f" ... and {more} more" if more > 0 else "") + "</div>")
            fix = f'<div style="font-size:0.85em"><i>fix:</i> {_e(f.fix)}</div>' if f.fix else ""
            items.append(f'<li data-code="{_e(f.code)}" data-level="{_e(level)}"><span style="color:'
                         f'{_LEVEL_COLOURS[level]}">[{_e(f.code)}]</span> {_e(f.message)}{files}{fix}</li>')
        parts.append(f'<div style="margin-top:6px"><b>{level}s ({len(group)})</b><ul style="margin:0">'
                     f'{"".join(items)}</ul></div>')
    n_err, n_warn = len(report.errors), len(report.warnings)
    verdict = ("OK: no errors" + (f", {n_warn} warning(s)" if n_warn else "")) if report.ok else \
        f"{n_err} error(s), {n_warn} warning(s)"
    parts.append(f'<div style="margin-top:6px" data-field="verdict"><b>{_e(verdict)}</b></div>')
    return (f'<div class="lora-trainer-ds-doctor" data-ok="{str(report.ok).lower()}" data-errors="{n_err}" '
            f'data-warnings="{n_warn}">{"".join(parts)}</div>')


def message_html(text: str, level: str = "info") -> str:
    """A one-line panel for a problem shown where a report would be."""
    return f'<div data-level="{_e(level)}" style="color:{_LEVEL_COLOURS.get(level, "inherit")}">{_e(text)}</div>'


__all__ = ["diff_html", "doctor_html", "frequency_html", "message_html", "tag_status_html", "MAX_DIFF_FILES"]
