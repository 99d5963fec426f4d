"""What the Compare tab's buttons do, without Gradio.

:class:`CompareLogic` holds the job manager and the host and answers each event of
the Compare tab with plain values (lists, Markdown, HTML, paths, JSON);
:mod:`lora_trainer.ui.compare_panel` only wires them to components.

* **Family**: the LoRA families in the host's LoRA folder
  (:func:`~lora_trainer.compare.xyz.find_families`); the default is the last
  training's ``output_name`` when its files are there. A file that cannot be read
  (a partial download) is skipped and named in the family summary
  (:attr:`CompareLogic.skipped`); one chosen family is read alone
  (:func:`~lora_trainer.compare.xyz.discover_family`), and headers are cached by file,
  so a page load or a click does not read every LoRA again.
* **Compare**: :class:`CompareForm` -> :func:`~lora_trainer.compare.xyz.build_comparison`
  -> ``host.run_comparison`` (an optional host capability, see
  :mod:`lora_trainer.hosts.base`) in a thread of its own: a comparison is a host job of
  its own, so it is refused while a training runs (the host's job lock is not
  re-entrant, and waiting behind a whole training would look like a hang) and while
  another comparison runs. The page polls :meth:`CompareLogic.poll`.
* **Publish**: :func:`~lora_trainer.compare.publish.publish` with the preview taken from
  the latest grid of that family (:func:`~lora_trainer.compare.result.latest_result`), in
  the row :func:`~lora_trainer.compare.result.preview_row` picks.
* **Send to txt2img**: :meth:`CompareLogic.send_payload` gives the JSON that
  ``javascript/lora_trainer.js``'s ``lora_trainer_send_xyz_to_txt2img`` types into the
  WebUI's txt2img tab: the same prompt, seed and X/Y/Z values the comparison would
  send to the script (:meth:`~lora_trainer.compare.xyz.Comparison.script_values`).

Every event answers bad input, a bad file or a refusal with a message, never a traceback.
"""
from __future__ import annotations

import ast
import json
import math
import re
import threading
import time
import traceback
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from ..compare import publish as publishing
from ..compare.result import ComparisonResult, latest_result, preview_image, remember, suggestion_for
from ..compare.xyz import (
    AXIS_NOTHING, DEFAULT_NEGATIVE, DEFAULT_STRENGTH, DEFAULT_STRENGTHS, SCRIPT_TITLE, Comparison,
    ComparisonError, FamilyNotFound, LoraFamily, build_comparison, default_prompt, discover_family, find_families,
    format_weight, from_csv,
)
from . import render

# The optional Y axis: the dropdown's words -> build_comparison's ``y``.
Y_NONE = "No Y axis"
Y_CHOICES: dict[str, Optional[str]] = {
    Y_NONE: None,
    "Strengths": "strength",
    "Seeds": "seed",
    "Checkpoints": "checkpoint",
    "Text encoder / UNet split": "te_unet",
}
DEFAULT_SEED = 1234
SAMPLERS = ("Euler a", "Euler", "DPM++ 2M", "DPM++ 2M Karras", "DPM++ SDE", "DDIM", "UniPC", "Heun", "LMS")


@dataclass
class CompareForm:
    """The Compare tab's inputs as the page sends them (text where a box may be left empty)."""

    family: str = ""
    prompt: str = ""
    negative_prompt: str = DEFAULT_NEGATIVE
    seed: Any = DEFAULT_SEED
    strength: Any = DEFAULT_STRENGTH
    y_axis: str = Y_NONE
    y_values: str = ""
    steps: Any = ""  # empty: the comparison's default (20)
    width: Any = ""  # empty: the training resolution (ss_resolution), else 512
    height: Any = ""
    cfg_scale: Any = ""  # empty: 7
    sampler_name: str = ""  # empty: "Euler a"

    @classmethod
    def from_values(cls, values: Sequence[Any]) -> "CompareForm":
        names = [f.name for f in fields(cls)]
        if len(values) != len(names):
            raise ValueError(f"expected {len(names)} compare values ({', '.join(names)}), got {len(values)}")
        return cls(**dict(zip(names, values)))


FORM_FIELDS = tuple(f.name for f in fields(CompareForm))


class FormError(ValueError):
    """A box of the Compare form holds something that cannot be used; the message names the box."""


# ------------------------------------------------------------------------------ parsing


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _number(value: Any, box: str, kind: Callable = float, *, minimum: Optional[float] = None):
    try:
        number = float(str(value).strip()) if isinstance(value, str) else float(value)
    except (TypeError, ValueError):
        raise FormError(f"{box}: {value!r} is not a number") from None
    if not math.isfinite(number):  # int(inf) raises OverflowError, and nan passes every comparison
        raise FormError(f"{box}: {value!r} is not a finite number")
    if kind is int:
        if number != int(number):
            raise FormError(f"{box}: {value!r} is not a whole number")
        number = int(number)
    if minimum is not None and number < minimum:
        raise FormError(f"{box}: {value!r} is below {minimum:g}")
    return number


def _list(text: str) -> list[str]:
    """Comma- or line-separated values (CSV quoting allowed, as in the X/Y/Z script's boxes)."""
    out = []
    for line in str(text or "").splitlines():
        if line.strip():
            out.extend(v for v in from_csv(line) if v)
    return out


def training_resolution(family: LoraFamily) -> Optional[tuple[int, int]]:
    """(width, height) the LoRA was trained at, from ``ss_resolution`` (kohya writes ``"(512, 768)"``)."""
    text = family.metadata.get("ss_resolution") or ""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return None
    if isinstance(value, int):
        value = (value, value)
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) and v >= 64 for v in value):
        return int(value[0]), int(value[1])
    return None


_STRAY_SAVE = re.compile(r"^(?P<base>.+)-(\d{6}-.+|step\d+(-.+)?)$")


def _stray_save(name: str, families: dict) -> bool:
    match = _STRAY_SAVE.match(name)
    return bool(match) and match.group("base") in families


def default_y_values(y_axis: str, seed: Any = DEFAULT_SEED) -> str:
    """What the Y values box shows when that Y axis is chosen (the user may edit it)."""
    kind = Y_CHOICES.get(y_axis)
    if kind == "strength":
        return ", ".join(format_weight(w) for w in DEFAULT_STRENGTHS)
    if kind == "seed":
        try:
            base = int(float(seed))
        except (TypeError, ValueError):
            base = DEFAULT_SEED
        return ", ".join(str(base + i) for i in range(3))
    return ""  # te_unet: text encoder only, UNet only, both, each at the strength


def comparison_options(form: CompareForm, family: LoraFamily) -> dict[str, Any]:
    """:func:`build_comparison`'s keyword arguments from the form (empty boxes: defaults)."""
    options: dict[str, Any] = {
        "prompt": str(form.prompt or ""),
        "negative_prompt": str(form.negative_prompt or ""),
        "seed": _number(form.seed, "Seed", int) if not _blank(form.seed) else DEFAULT_SEED,
        "strength": _number(form.strength, "Strength", minimum=-10) if not _blank(form.strength) else DEFAULT_STRENGTH,
    }
    if form.y_axis not in Y_CHOICES:
        raise FormError(f"Y axis: {form.y_axis!r} is not one of {', '.join(Y_CHOICES)}")
    kind = Y_CHOICES[form.y_axis]
    if kind is not None:
        options["y"] = kind
    values = _list(form.y_values)
    if kind == "strength":
        if not values:
            raise FormError("Y values: list the strengths, e.g. 0.5, 0.8, 1.0, 1.2")
        options["strengths"] = [_number(v, "Y values (strengths)") for v in values]
    elif kind == "seed":
        if values:
            options["seeds"] = [_number(v, "Y values (seeds)", int) for v in values]
    elif kind == "checkpoint":
        if not values:
            raise FormError("Y values: list the checkpoints to compare on, as the WebUI's checkpoint list names "
                            "them, one a line or separated by commas")
        options["checkpoints"] = values
    resolution = training_resolution(family) or (512, 512)
    options["width"] = _number(form.width, "Width", int, minimum=64) if not _blank(form.width) else resolution[0]
    options["height"] = _number(form.height, "Height", int, minimum=64) if not _blank(form.height) else resolution[1]
    if not _blank(form.steps):
        options["steps"] = _number(form.steps, "Steps", int, minimum=1)
    if not _blank(form.cfg_scale):
        options["cfg_scale"] = _number(form.cfg_scale, "CFG scale", minimum=0)
    if not _blank(form.sampler_name):
        options["sampler_name"] = str(form.sampler_name).strip()
    return options


def send_payload(comparison: Comparison, form: Optional[CompareForm] = None, tab: str = "txt2img") -> dict:
    """What ``lora_trainer_send_xyz_to_txt2img`` types into txt2img: the comparison's prompt,
    negative prompt and seed, the X/Y/Z plot script with the very axis values the script
    would get (:meth:`Comparison.script_values`), Z cleared, and the generation settings the
    comparison set (size always; steps, CFG and sampler when the form overrides them)."""
    labels: list[str] = []

    def index_of(label: str) -> int:  # the page picks axes by label: the index only leads back to it
        labels.append(label)
        return len(labels) - 1

    values = comparison.script_values(index_of)
    axes = [
        {"axis": "x", "type": labels[values["x_type"]], "values": values["x_values"]},
        {"axis": "y", "type": labels[values["y_type"]], "values": values["y_values"]},
        {"axis": "z", "type": labels[values["z_type"]], "values": values["z_values"]},
    ]
    settings: list[dict] = [
        {"elem_id": f"{tab}_width", "kind": "number", "value": comparison.width},
        {"elem_id": f"{tab}_height", "kind": "number", "value": comparison.height},
    ]
    if form is not None:
        if not _blank(form.steps):
            settings.append({"elem_id": f"{tab}_steps", "kind": "number", "value": comparison.steps})
        if not _blank(form.cfg_scale):
            settings.append({"elem_id": f"{tab}_cfg_scale", "kind": "number", "value": comparison.cfg_scale})
        if not _blank(form.sampler_name):
            settings.append({"elem_id": f"{tab}_sampling", "kind": "choice", "value": comparison.sampler_name})
    return {
        "tab": tab,
        "prompt": comparison.prompt,
        "negative_prompt": comparison.negative_prompt,
        "seed": comparison.seed,
        "script": SCRIPT_TITLE,
        "csv_mode": bool(values["csv_mode"]),
        "axes": axes,
        "settings": settings,
    }


# ------------------------------------------------------------------------------- the logic


class CompareLogic:
    """The Compare tab's state (one comparison at a time per tab) and its events."""

    def __init__(self, manager, host, *, log: Callable[[str], None] = print):
        self.manager = manager
        self.host = host
        self.log = log
        self._lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None
        # the latest comparison run from this tab: what poll() shows
        self._run: dict[str, Any] = {"state": "idle", "version": 0, "message": "", "result": None,
                                     "started_at": None, "finished_at": None, "name": "", "cells": 0}
        # why files of the LoRA folder were left out at the latest listing (shown with the family summary)
        self.skipped: list[str] = []

    # -- families -------------------------------------------------------------------------

    def lora_dir(self) -> Optional[Path]:
        try:
            return Path(self.host.lora_dir()) if self.host is not None else None
        except Exception:
            return None

    def families(self) -> dict[str, LoraFamily]:
        """The folder's families, without the stray saves of a training that is listed
        (``NAME-000003-interrupted``, ``NAME-step00000500``: single files, not epochs to compare)."""
        folder = self.lora_dir()
        if folder is None or not folder.is_dir():
            self.skipped = []
            return {}
        skipped: list[str] = []
        try:
            found = find_families(folder, skipped)
        except (OSError, ComparisonError) as exc:
            self.skipped = [f"the LoRA folder cannot be listed: {exc}"]
            return {}
        self.skipped = skipped
        return {name: family for name, family in found.items() if not _stray_save(name, found)}

    def family(self, name: str) -> LoraFamily:
        """One family, read alone (not the whole folder); its headers come from the cache when
        the files did not change."""
        name = str(name or "").strip()
        if not name:
            raise ComparisonError("choose a LoRA (Refresh lists the LoRA folder)")
        folder = self.lora_dir()
        if folder is None:
            raise ComparisonError("this host names no LoRA folder")
        try:
            return discover_family(folder, name)
        except FamilyNotFound:
            raise ComparisonError(f"no LoRA family {name!r} in {folder}: neither {name}.safetensors nor "
                                  f"{name}-000001.safetensors ... (press Refresh)") from None
        except OSError as exc:
            raise ComparisonError(f"the LoRA folder {folder} cannot be read: {exc}") from None

    def _manager_status(self) -> dict[str, Any]:
        if self.manager is None:
            return {}
        try:
            return self.manager.status() or {}
        except Exception:
            return {}

    def last_training_name(self) -> Optional[str]:
        """The output_name of the training that finished last (done, or interrupted with its
        saved epochs kept), from the job manager."""
        finished = ("done", "interrupted")
        status = self._manager_status()
        if status.get("state") in finished:
            return status.get("name") or None
        try:
            jobs = [j for j in (self.manager.jobs() or []) if j.get("state") in finished]
        except Exception:
            return None
        if not jobs:
            return None
        return max(jobs, key=lambda j: j.get("finished_at") or 0.0).get("name") or None

    def default_family(self, families: Optional[dict[str, LoraFamily]] = None) -> Optional[str]:
        """The last training's family when it is in the folder, else the family written last."""
        families = self.families() if families is None else families
        if not families:
            return None
        last = self.last_training_name()
        if last in families:
            return last

        def newest(family: LoraFamily) -> float:
            try:
                return max(e.path.stat().st_mtime for e in family.epochs)
            except (OSError, ValueError):
                return 0.0

        return max(families.values(), key=newest).name

    def family_choices(self, current: Optional[str] = None) -> tuple[list[str], Optional[str]]:
        """(names, the one to show): ``current`` when it is still there, else the default."""
        families = self.families()
        names = sorted(families)
        if current and current in families:
            return names, current
        return names, self.default_family(families)

    def family_info(self, name: str) -> dict[str, Any]:
        """What choosing a family fills in: default prompt, epoch choices, release name, a summary."""
        skipped = [f"skipped: {why}" for why in self.skipped]
        try:
            family = self.family(name)
        except ValueError as exc:  # ComparisonError and any other bad value: a message, not a traceback
            return {"ok": False, "prompt": "", "epochs": [], "epoch": None, "release": "",
                    "summary": f"**{exc}**" + ("\n\n" + render.notes_markdown(skipped) if skipped else "")}
        epochs = [e.name for e in family.epochs]
        resolution = training_resolution(family)
        lines = [f"{len(epochs)} saved epoch{'s' if len(epochs) != 1 else ''}: "
                 + ", ".join(f"`{e.name}`" for e in family.epochs)]
        if family.trigger_word:
            lines.append(f"trigger word: `{family.trigger_word}`")
        if resolution:
            lines.append(f"trained at {resolution[0]}×{resolution[1]} (the grid's default size)")
        lines += [f"warning: {w}" for w in family.warnings]
        lines += skipped
        suggested = self._suggested_file(family)
        return {"ok": True, "prompt": default_prompt(family), "epochs": epochs,
                "epoch": suggested if suggested in epochs else epochs[-1], "release": f"{family.name}_v1",
                "summary": f"**{family.name}** in `{family.folder}`\n\n" + render.notes_markdown(lines)}

    def _suggested_file(self, family: LoraFamily) -> Optional[str]:
        result = latest_result(family.folder, family.name)
        if result is None or result.suggestion is None:
            return None
        return result.as_dict()["suggestion"].get("file")

    # -- building -------------------------------------------------------------------------

    def build(self, form: CompareForm) -> Comparison:
        """The Comparison the form describes (raises FormError / ComparisonError with the reason)."""
        family = self.family(form.family)
        options = comparison_options(form, family)
        return build_comparison(family, **options)

    def training_running(self) -> Optional[str]:
        """Why a comparison cannot start now, or None."""
        status = self._manager_status()
        if status.get("state") == "running":
            return (f"**Not started:** the training **{status.get('name', '')}** (job `{status.get('id')}`) is "
                    "running. A comparison is a job of its own: compare the epochs once the training has ended.")
        return None

    # -- running --------------------------------------------------------------------------

    def start(self, *values: Any) -> str:
        """Build the comparison from the form and start it in the background; returns the message."""
        try:
            form = CompareForm.from_values(values)
            comparison = self.build(form)
        except (ValueError, OSError) as exc:  # FormError, ComparisonError, a file that went away
            return f"**Not started:** {exc}"
        runner = getattr(self.host, "run_comparison", None)
        if not callable(runner):
            return (f"**Not started:** this host ({getattr(self.host, 'name', type(self.host).__name__)}) cannot draw "
                    "comparison grids. Use **Send to txt2img** and generate the X/Y/Z plot by hand.")
        refused = self.training_running()
        if refused:
            return refused
        with self._lock:
            if self._run["state"] == "running":
                return f"**Not started:** the comparison of **{self._run['name']}** is still running."
            self._run = {"state": "running", "version": self._run["version"] + 1, "result": None,
                         "message": "", "started_at": time.time(), "finished_at": None,
                         "name": comparison.family.name, "cells": len(comparison.cells),
                         "columns": comparison.columns, "rows": comparison.rows}
            self._thread = threading.Thread(target=self._work, args=(runner, comparison),
                                            name="lora-trainer-compare", daemon=True)
            self._thread.start()
        return (f"Comparing **{comparison.family.name}**: {comparison.columns - 1} epochs and a no-LoRA column × "
                f"{comparison.rows} row{'s' if comparison.rows != 1 else ''} ({len(comparison.cells)} images).")

    def _work(self, runner, comparison: Comparison) -> None:
        state, message, result = "failed", "", None
        try:
            result = runner(comparison)
            if not isinstance(result, ComparisonResult):
                raise ComparisonError(f"the host's comparison runner returned {type(result).__name__}, "
                                      "not a ComparisonResult")
            if result.suggestion is None:
                try:
                    result.suggestion = suggestion_for(result)
                except Exception as exc:  # a suggestion is a bonus: the grid still shows
                    result.notes.append(f"no suggestion: {exc}")
            remember(result)  # Publish cuts its preview from this grid
            state = "interrupted" if result.interrupted else "done"
        except (ComparisonError, publishing.PublishError, ValueError) as exc:
            message = str(exc)
        except Exception as exc:  # shown as one line; the traceback goes to the console
            message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            self.log(f"LoRA Trainer: the comparison failed\n{traceback.format_exc()}")
        with self._lock:
            self._run.update(state=state, message=message, result=result, finished_at=time.time(),
                             version=self._run["version"] + 1)

    def wait(self, timeout: Optional[float] = None) -> str:
        """Block until the running comparison ends (tests, CLI); returns its state."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return self._run["state"]

    def status(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._run)

    def poll(self, version: Optional[int] = None) -> dict[str, Any]:
        """The Compare tab's result area. ``changed`` is False when nothing but the running
        time moved since ``version`` (the page then keeps the image it shows)."""
        run = self.status()
        out: dict[str, Any] = {"version": run["version"], "changed": run["version"] != version,
                               "state": run["state"], "status": self._status_markdown(run)}
        result: Optional[ComparisonResult] = run["result"]
        if not out["changed"]:
            return out
        out.update(grid=None, grid_path=None, suggestion="", epochs=None, epoch=None, family=None)
        if result is not None:
            data = result.as_dict()
            out["grid_path"] = result.grid_path
            out["grid"] = result.grid_path if result.grid_path and Path(result.grid_path).is_file() else result.grid
            out["suggestion"] = render.comparison_html(data)
            out["family"] = result.comparison.family.name
            out["epochs"] = [e.name for e in result.comparison.family.epochs]
            suggested = (data.get("suggestion") or {}).get("file")
            out["epoch"] = suggested if suggested in out["epochs"] else out["epochs"][-1]
        return out

    @staticmethod
    def _status_markdown(run: dict[str, Any]) -> str:
        state = run["state"]
        if state == "idle":
            return "No comparison yet: choose a LoRA and press **Compare**."
        if state == "running":
            elapsed = render.format_duration(time.time() - (run["started_at"] or time.time()))
            return (f"**Running**: comparing **{run['name']}** ({run['cells']} images), {elapsed} so far. "
                    "The grid shows here when it is done.")
        took = render.format_duration((run["finished_at"] or 0) - (run["started_at"] or 0))
        if state == "failed":
            return f"**The comparison of {run['name']} failed:** {run['message']}"
        result: ComparisonResult = run["result"]
        where = (f"Grid saved as `{result.grid_path}`." if result.grid_path else "The grid was not saved to a file.")
        notes = render.notes_markdown(list(result.comparison.family.warnings) + list(result.notes))
        head = ("**Interrupted**: the grid is incomplete, no epoch is suggested. " if state == "interrupted" else
                f"**Done** in {took}: **{run['name']}**. ")
        return head + where + ("\n\n" + notes if notes else "")

    # -- publish --------------------------------------------------------------------------

    def publish(self, name: str, epoch: str, release_name: str, overwrite: bool) -> str:
        """Copy ``epoch`` of ``name`` to ``release_name`` with the preview from the latest grid."""
        try:
            family = self.family(name)
            if not epoch:
                raise ComparisonError("choose the epoch to publish")
            chosen = family.find(str(epoch))
            preview, note = None, ""
            last = latest_result(family.folder, family.name)
            if last is None:
                note = "no preview: compare the epochs first to get one from the grid"
            else:
                try:
                    preview = preview_image(last, chosen.name)
                except ComparisonError:
                    note = f"no preview: {chosen.name} is not in the latest grid"
            done = publishing.publish(chosen.path, str(release_name or "").strip(), preview=preview,
                                      overwrite=bool(overwrite), trigger_word=family.trigger_word or None)
        except (ValueError, OSError) as exc:  # ComparisonError, PublishError, a bad or vanished file
            return f"**Not published:** {exc}"
        lines = [f"LoRA: `{done.path}`", f"user metadata: `{done.user_metadata_path}`"]
        lines.append(f"preview: `{done.preview_path}`" if done.preview_path else note)
        lines += [f"removed the replaced release's preview `{p}`" for p in done.removed]
        try:
            if self.host is not None and hasattr(self.host, "refresh_loras"):
                self.host.refresh_loras()
        except Exception as exc:
            lines.append(f"the LoRA list was not refreshed: {exc}")
        return _message(f"Published **{chosen.name}** as **{done.path.stem}**.", lines)

    # -- send to txt2img ------------------------------------------------------------------

    def send_payload(self, *values: Any) -> list[str]:
        """[payload JSON (empty when it cannot be built), message]"""
        try:
            form = CompareForm.from_values(values)
            comparison = self.build(form)
        except (ValueError, OSError) as exc:  # FormError, ComparisonError, a file that went away
            return ["", f"**Not sent:** {exc}"]
        payload = send_payload(comparison, form)
        message = (f"Sent **{comparison.family.name}** to txt2img: X/Y/Z plot, X = Prompt S/R over "
                   f"{comparison.columns - 1} epochs and a no-LoRA column"
                   + (f", Y = {comparison.y.label}" if comparison.y.label != AXIS_NOTHING else "")
                   + ". Generate there; the prompt ends with the placeholder tag the S/R values replace.")
        return [json.dumps(payload, ensure_ascii=False), message]


def _message(text: str, lines: Sequence[str] = ()) -> str:
    body = render.notes_markdown(lines)
    return text + ("\n\n" + body if body else "")


__all__ = ["CompareForm", "CompareLogic", "FORM_FIELDS", "FormError", "Y_CHOICES", "Y_NONE", "SAMPLERS",
           "comparison_options", "default_y_values", "send_payload", "training_resolution"]
