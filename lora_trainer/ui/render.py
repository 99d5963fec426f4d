"""HTML for the tab's read-only panels: progress (with the loss chart), files, queue, estimate,
and a comparison's epoch suggestion (with its change curve).

Plain HTML strings with inline styles (no CSS file, no Gradio import), so they
look the same in AUTOMATIC1111, Forge and the standalone app on Gradio 3 and 4,
and in light and dark themes (colours follow ``currentColor``). The loss chart
is an inline SVG: no plotting library, no image files. Machine-readable
``data-*`` attributes on the panels let tests and the extension's JavaScript
read the state without parsing text.
"""
from __future__ import annotations

import html
import math
import os
from typing import Any, Iterable, Optional

ACTIVE = ("queued", "running")
_STATE_COLOURS = {
    "queued": "#888", "running": "#2b7de9", "done": "#2e9e4f", "failed": "#d33",
    "interrupted": "#d98b00", "cancelled": "#888",
}
_TABLE = 'style="border-collapse:collapse;width:100%;font-size:0.9em"'
_CELL = 'style="padding:2px 6px;border-bottom:1px solid rgba(128,128,128,0.3);text-align:left"'


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def format_duration(seconds: Optional[float]) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "–"
    seconds = int(round(max(seconds, 0)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def format_bytes(value: Optional[float]) -> str:
    if value is None:
        return "–"
    value = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    return f"{value:.2f} TiB"  # pragma: no cover


def format_lr(lr: dict[str, Any]) -> str:
    parts = []
    for key, value in (lr or {}).items():
        try:
            parts.append(f"{key} {float(value):.3g}")
        except (TypeError, ValueError):
            parts.append(f"{key} {value}")
    return ", ".join(parts) or "–"


def _smooth(values: list[float], weight: float = 0.9) -> list[float]:
    """Exponential moving average, debiased at the start (as TensorBoard draws it)."""
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc = weight * acc + (1 - weight) * v
        out.append(acc / (1 - weight ** (i + 1)))
    return out


def loss_svg(losses: Iterable[float], width: int = 480, height: int = 140, max_points: int = 400) -> str:
    """The per-step loss as an inline SVG line chart (raw, faint; smoothed, bold)."""
    values = [float(v) for v in losses if v is not None and math.isfinite(float(v))]
    if len(values) < 2:
        return (f'<div id="lora_trainer_loss_chart" data-points="{len(values)}" '
                f'style="opacity:0.6;font-size:0.9em">loss chart: waiting for steps</div>')
    total_steps = len(values)
    if len(values) > max_points:  # average runs of k steps so the SVG stays small
        k = math.ceil(len(values) / max_points)
        values = [sum(values[i:i + k]) / len(values[i:i + k]) for i in range(0, len(values), k)]
    smooth = _smooth(values)
    lo, hi = min(values), max(values)
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    pad_l, pad_r, pad_t, pad_b = 44, 8, 8, 18
    w, h = width - pad_l - pad_r, height - pad_t - pad_b

    def points(series: list[float]) -> str:
        n = len(series) - 1
        return " ".join(f"{pad_l + w * i / n:.1f},{pad_t + h * (1 - (v - lo) / (hi - lo)):.1f}"
                        for i, v in enumerate(series))

    return (
        f'<svg id="lora_trainer_loss_chart" data-points="{len(values)}" viewBox="0 0 {width} {height}" '
        f'width="100%" style="max-width:{width}px;height:auto" xmlns="http://www.w3.org/2000/svg" '
        f'role="img" aria-label="loss per step">'
        f'<rect x="{pad_l}" y="{pad_t}" width="{w}" height="{h}" fill="none" stroke="currentColor" '
        f'stroke-opacity="0.25"/>'
        f'<text x="{pad_l - 4}" y="{pad_t + 9}" font-size="10" text-anchor="end" fill="currentColor">{hi:.3g}</text>'
        f'<text x="{pad_l - 4}" y="{pad_t + h}" font-size="10" text-anchor="end" fill="currentColor">{lo:.3g}</text>'
        f'<text x="{pad_l}" y="{height - 4}" font-size="10" fill="currentColor">loss, step 1</text>'
        f'<text x="{pad_l + w}" y="{height - 4}" font-size="10" text-anchor="end" fill="currentColor">'
        f'{total_steps}</text>'
        f'<polyline points="{points(values)}" fill="none" stroke="#2b7de9" stroke-opacity="0.35" stroke-width="1"/>'
        f'<polyline points="{points(smooth)}" fill="none" stroke="#2b7de9" stroke-width="2"/>'
        f'</svg>'
    )


# Gradio 3 outlines an output that a pending event will update: the polled panels would
# pulse every second. The rule travels with the progress panel (no CSS file in any host).
POLLED_IDS = (
    "lora_trainer_progress", "lora_trainer_files", "lora_trainer_queue", "lora_trainer_log", "lora_trainer_cancel_job",
    "lora_trainer_samples", "lora_trainer_compare_epochs", "lora_trainer_compare_status", "lora_trainer_compare_grid",
    "lora_trainer_compare_suggestion", "lora_trainer_publish_epoch",
)
QUIET_POLLING_STYLE = (
    "<style>" + ",".join(f"#{elem_id} .generating" for elem_id in POLLED_IDS)
    + "{border-color:transparent!important;animation:none!important}</style>"
)


def progress_html(status: dict[str, Any]) -> str:
    """The current (or last) job: state, step/total, epoch, loss, lr, ETA, memory, chart."""
    return QUIET_POLLING_STYLE + _progress_body(status)


def _progress_body(status: dict[str, Any]) -> str:
    if not status:
        return ('<div class="lora-trainer-progress" data-state="idle" data-step="0" data-total="0" '
                'data-epoch="0" data-files="0">No training yet. Fill in the dataset and press Train.</div>')
    state = status.get("state", "")
    step, total = int(status.get("step") or 0), int(status.get("total_steps") or 0)
    epoch, epochs = int(status.get("epoch") or 0), int(status.get("total_epochs") or 0)
    loss = status.get("loss")
    percent = 100.0 * step / total if total else 0.0
    colour = _STATE_COLOURS.get(state, "#888")
    rows = [
        ("Step", f"{step} / {total}" if total else str(step)),
        ("Epoch", f"{epoch} / {epochs}" if epochs else str(epoch)),
        ("Loss", f"{float(loss):.4f}" if loss is not None else "–"),
        ("Learning rate", format_lr(status.get("lr") or {})),
        ("Elapsed", format_duration(status.get("elapsed"))),
        ("ETA", format_duration(status.get("eta")) if state == "running" else "–"),
        ("Peak memory", format_bytes(status.get("peak_memory"))),
    ]
    cells = "".join(
        f'<div style="min-width:110px"><div style="opacity:0.65;font-size:0.8em">{_e(k)}</div>'
        f'<div data-field="{_e(k.lower().replace(" ", "_"))}">{_e(v)}</div></div>'
        for k, v in rows
    )
    message = status.get("message") or ""
    return (
        f'<div class="lora-trainer-progress" data-state="{_e(state)}" data-step="{step}" data-total="{total}" '
        f'data-epoch="{epoch}" data-files="{len(status.get("files") or [])}" data-job="{_e(status.get("id"))}">'
        f'<div style="display:flex;justify-content:space-between;align-items:baseline">'
        f'<b>{_e(status.get("name"))}</b>'
        f'<span data-field="state" style="color:{colour};font-weight:bold">{_e(state)}</span></div>'
        f'<div style="height:8px;background:rgba(128,128,128,0.25);border-radius:4px;margin:6px 0">'
        f'<div style="height:8px;width:{percent:.1f}%;background:{colour};border-radius:4px"></div></div>'
        f'<div style="display:flex;flex-wrap:wrap;gap:8px 16px">{cells}</div>'
        + (f'<div data-field="message" style="margin-top:6px">{_e(message)}</div>' if message else "")
        + f'<div style="margin-top:8px">{loss_svg(status.get("losses") or [])}</div></div>'
    )


def files_html(status: dict[str, Any]) -> str:
    """The files the current (or last) job wrote, newest last, with their sizes."""
    files = list((status or {}).get("files") or [])
    if not files:
        return '<div class="lora-trainer-files" data-count="0" style="opacity:0.7">No files saved yet.</div>'
    items = []
    for path in files:
        try:
            size = format_bytes(os.path.getsize(path))
        except OSError:
            size = "missing"
        items.append(f'<li><code data-path="{_e(path)}">{_e(os.path.basename(path))}</code> '
                     f'<span style="opacity:0.65">{_e(size)} — {_e(os.path.dirname(path))}</span></li>')
    return f'<ul class="lora-trainer-files" data-count="{len(files)}" style="margin:0">{"".join(items)}</ul>'


def queue_html(jobs: list[dict[str, Any]]) -> str:
    """All jobs the manager knows (its persisted queue), newest first."""
    if not jobs:
        return '<div class="lora-trainer-queue" data-count="0" style="opacity:0.7">The queue is empty.</div>'
    head = "".join(f"<th {_CELL}>{h}</th>" for h in ("Name", "State", "Step", "Epoch", "Loss", "Files", "Job id"))
    rows = []
    for job in reversed(jobs):
        state = job.get("state", "")
        total = job.get("total_steps") or 0
        loss = job.get("loss")
        cells = (
            _e(job.get("name")),
            f'<span style="color:{_STATE_COLOURS.get(state, "#888")}">{_e(state)}</span>',
            f"{job.get('step') or 0} / {total}" if total else _e(job.get("step") or 0),
            f"{job.get('epoch') or 0} / {job.get('total_epochs')}" if job.get("total_epochs") else
            _e(job.get("epoch") or 0),
            f"{float(loss):.4f}" if loss is not None else "–",
            _e(len(job.get("files") or [])),
            f"<code>{_e(job.get('id'))}</code>",
        )
        title = _e(job.get("message") or "")
        rows.append(f'<tr data-job="{_e(job.get("id"))}" data-state="{_e(state)}" title="{title}">'
                    + "".join(f"<td {_CELL}>{c}</td>" for c in cells) + "</tr>")
    return (f'<table class="lora-trainer-queue" data-count="{len(jobs)}" {_TABLE}><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>')


def estimate_html(result: dict[str, Any]) -> str:
    """:func:`lora_trainer.estimate.estimate`'s counts: per folder and in total, with warnings."""
    if not result:
        return '<div class="lora-trainer-estimate" data-total="0"></div>'
    parts = []
    if result.get("error"):
        parts.append(f'<div data-field="error" style="color:#d98b00">{_e(result["error"])}</div>')
    folders = result.get("folders") or []
    if folders:
        head = "".join(f"<th {_CELL}>{h}</th>" for h in
                       ("Folder", "Images", "Repeats", "Images × repeats", "Steps / epoch", "Total steps"))
        rows = []
        for f in folders:
            name = _e(f.get("folder")) + (" <i>(reg)</i>" if f.get("is_reg") else "")
            cells = (name, _e(f.get("images")), _e(f.get("repeats")), _e(f.get("images_x_repeats")),
                     _e("–" if f.get("steps_per_epoch") is None else f.get("steps_per_epoch")),
                     _e("–" if f.get("total_steps") is None else f.get("total_steps")))
            rows.append("<tr>" + "".join(f"<td {_CELL}>{c}</td>" for c in cells) + "</tr>")
        parts.append(f'<table {_TABLE}><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>')
    if result.get("ok"):
        accumulation = result.get("gradient_accumulation_steps") or 1
        parts.append(
            f'<div style="margin-top:4px"><b data-field="total_steps">{_e(result.get("total_steps"))}</b> '
            f'total steps = <span data-field="steps_per_epoch">{_e(result.get("steps_per_epoch"))}</span> '
            f'steps per epoch × {_e(result.get("num_epochs"))} epochs '
            f'({_e(result.get("num_train_images"))} images × repeats'
            + (f', {_e(result.get("num_reg_images"))} regularization' if result.get("num_reg_images") else "")
            + f', batch {_e(result.get("batch_size"))}'
            + (f' × accumulation {_e(accumulation)}' if accumulation != 1 else "") + ")</div>"
        )
    for kind, colour in (("warnings", "#d98b00"), ("findings", "#d98b00"), ("notes", "inherit")):
        for line in result.get(kind) or []:
            parts.append(f'<div data-kind="{kind}" style="color:{colour};font-size:0.9em">{_e(line)}</div>')
    return (f'<div class="lora-trainer-estimate" data-ok="{str(bool(result.get("ok"))).lower()}" '
            f'data-total="{_e(result.get("total_steps") or 0)}">{"".join(parts)}</div>')


def notes_markdown(lines: Iterable[str]) -> str:
    lines = [str(line) for line in lines if str(line).strip()]
    return "\n".join(f"- {line}" for line in lines)


# ---------------------------------------------------------------------------- comparison

_VERDICTS = {
    "settled": ("Suggested", "#2e9e4f"),
    "settled_at_once": ("Settles at once: probably over-trained", "#d98b00"),
    "never_settled": ("Never settles", "#d98b00"),
    "no_effect": ("The LoRA barely changes the image", "#d33"),
    "single": ("One epoch only", "#888"),
}


def change_svg(curve: Iterable[float], labels: Iterable[str], threshold: float = 0.0, chosen: Optional[int] = None,
               width: int = 480, height: int = 150) -> str:
    """The change between consecutive epochs' images as an inline SVG: one point per step
    (``labels``: "no LoRA -> 1", "1 -> 2", ...), the settle threshold dashed, the step into
    the suggested epoch (``chosen``, an index into ``curve``) ringed."""
    values = [float(v) for v in curve]
    labels = [str(label) for label in labels]
    names = [label.split("->")[-1].strip() for label in labels]
    if not values:
        return '<div id="lora_trainer_change_chart" data-points="0" style="opacity:0.6">no change curve</div>'
    hi = max(values + [threshold]) * 1.1 or 1.0
    pad_l, pad_r, pad_t, pad_b = 44, 12, 8, 30
    w, h = width - pad_l - pad_r, height - pad_t - pad_b

    def x(i: int) -> float:
        return pad_l + (w * i / (len(values) - 1) if len(values) > 1 else w / 2)

    def y(v: float) -> float:
        return pad_t + h * (1 - v / hi)

    points = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(values))
    parts = [
        f'<svg id="lora_trainer_change_chart" data-points="{len(values)}" viewBox="0 0 {width} {height}" '
        f'width="100%" style="max-width:{width}px;height:auto" xmlns="http://www.w3.org/2000/svg" role="img" '
        f'aria-label="change between consecutive epochs">',
        f'<rect x="{pad_l}" y="{pad_t}" width="{w}" height="{h}" fill="none" stroke="currentColor" '
        f'stroke-opacity="0.25"/>',
        f'<text x="{pad_l - 4}" y="{pad_t + 9}" font-size="10" text-anchor="end" fill="currentColor">{hi:.3g}</text>',
        f'<text x="{pad_l - 4}" y="{pad_t + h}" font-size="10" text-anchor="end" fill="currentColor">0</text>',
    ]
    if threshold > 0:
        parts.append(f'<line data-field="threshold" x1="{pad_l}" x2="{pad_l + w}" y1="{y(threshold):.1f}" '
                     f'y2="{y(threshold):.1f}" stroke="#d98b00" stroke-dasharray="4 3"/>')
    parts.append(f'<polyline points="{points}" fill="none" stroke="#2b7de9" stroke-width="2"/>')
    step = max(1, math.ceil(len(values) / 12))  # at most about 12 axis labels
    for i, v in enumerate(values):
        ring = i == chosen
        parts.append(f'<circle cx="{x(i):.1f}" cy="{y(v):.1f}" r="{5 if ring else 3}" '
                     f'fill="{"#2e9e4f" if ring else "#2b7de9"}"' + (' data-chosen="true"' if ring else "")
                     + f'><title>{_e(labels[i] if i < len(labels) else "")}: {v:.4f}</title></circle>')
        if i % step == 0 or ring or i == len(values) - 1:
            name = names[i] if i < len(names) else str(i + 1)
            weight = ' font-weight="bold"' if ring else ""
            parts.append(f'<text x="{x(i):.1f}" y="{pad_t + h + 13}" font-size="10" text-anchor="middle" '
                         f'fill="currentColor"{weight}>{_e(name)}</text>')
    parts.append(f'<text x="{pad_l}" y="{height - 3}" font-size="10" fill="currentColor">change into epoch</text>')
    parts.append("</svg>")
    return "".join(parts)


def comparison_html(data: dict[str, Any]) -> str:
    """A comparison's outcome (:meth:`ComparisonResult.as_dict`): the suggestion in words and
    its change curve, or why there is none."""
    if not data:
        return '<div class="lora-trainer-comparison" data-verdict=""></div>'
    suggestion = data.get("suggestion")
    head = (f'<div style="opacity:0.75;font-size:0.9em">{_e(data.get("name"))}: {_e(data.get("columns"))} columns '
            f'× {_e(data.get("rows"))} rows</div>')
    if not suggestion:
        why = ("the comparison was interrupted" if data.get("interrupted") else
               "the rows change something other than the epoch (strengths, checkpoints or the TE/UNet split), "
               "so no epoch is suggested; pick by eye")
        return (f'<div class="lora-trainer-comparison" data-verdict="none">{head}'
                f'<div data-field="reason">No suggestion: {_e(why)}.</div></div>')
    verdict = str(suggestion.get("verdict") or "")
    words, colour = _VERDICTS.get(verdict, (verdict, "#888"))
    epoch = suggestion.get("epoch")
    file = suggestion.get("file") or ""
    chosen = suggestion.get("index")
    chart = change_svg(suggestion.get("curve") or [], suggestion.get("labels") or [],
                       float(suggestion.get("threshold") or 0.0), chosen if isinstance(chosen, int) else None)
    return (
        f'<div class="lora-trainer-comparison" data-verdict="{_e(verdict)}" data-epoch="{_e(epoch)}" '
        f'data-file="{_e(file)}">{head}'
        f'<div style="margin:4px 0"><b style="color:{colour}">{_e(words)}</b>: '
        f'<b data-field="epoch">epoch {_e(epoch)}</b>' + (f' (<code>{_e(file)}</code>)' if file else "") + "</div>"
        f'<div data-field="reason" style="font-size:0.9em">{_e(suggestion.get("reason"))}</div>'
        f'<div style="margin-top:6px">{chart}</div>'
        "</div>"
    )


def sample_caption(sample: dict[str, Any]) -> str:
    """A training sample's caption in the gallery: "epoch N: prompt"."""
    prompt = str(sample.get("prompt") or "").strip()
    epoch = sample.get("epoch")
    head = f"epoch {epoch}" if epoch not in (None, "") else (f"step {sample.get('step')}" if sample.get("step") else "")
    return f"{head}: {prompt}" if head and prompt else (head or prompt)
