"""What the tab's buttons do, without Gradio.

:class:`TabLogic` holds the job manager and the host and answers each event
with plain values (form values, HTML, Markdown); :mod:`lora_trainer.ui.tab`
only wires these methods to components. Form values travel as lists in
:data:`~lora_trainer.ui.values.CONTROL_NAMES` order, as Gradio passes them.

Train and Add to queue run the dataset doctor (:mod:`lora_trainer.dataset.doctor`)
on ``train_data_dir`` (with the form's ``reg_data_dir``, caption extension,
trigger word, resolution and batch size) before submitting, through
:class:`DatasetPreflight`: its errors (what would stop the training: empty
caption files, unreadable or non-UTF-8 captions, no images) keep the job out of
the queue and are listed with their fix; its warnings (too few images, missing
trigger word, near duplicates, small images ...) are listed under the
confirmation and the job is submitted anyway. The doctor's step findings are
left out there: the Train tab's estimate shows the steps with the real
length (max_train_steps, gradient accumulation).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Optional, Sequence

from ..config import ConfigError, from_dict
from . import render
from .values import (
    CONTROL_NAMES,
    apply_preset_form,
    default_form,
    form_list,
    form_to_options,
    import_form,
    load_toml_form,
    save_toml,
)


def _message(text: str, lines: Sequence[str] = ()) -> str:
    """Markdown: a first line, then bullet points."""
    body = render.notes_markdown(lines)
    return text + ("\n\n" + body if body else "")


def _upload_path(value: Any) -> Optional[str]:
    """A gr.File value as a path: Gradio 3 gives a tempfile wrapper (``.name``), Gradio 4 a str."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
        if value is None:
            return None
    if isinstance(value, dict):  # Gradio 4 FileData when preprocess is off
        return value.get("path") or value.get("name")
    return getattr(value, "name", value)


# --- the dataset doctor before a training --------------------------------------------------

# the doctor's step findings assume max_train_epochs and no gradient accumulation; the
# Train tab's estimate (and the API's caller) has the real numbers
PREFLIGHT_SKIPPED_CODES = ("steps_low", "steps_high", "steps_target")
PREFLIGHT_MAX_FILES = 5


def listing_signature(*roots: Optional[str]) -> str:
    """A digest of what the doctor reads under each root: the names, sizes and modification
    times of its entries and of the entries of its sub-folders (the concept folders). A file
    added, removed, replaced or edited changes it; nothing is opened."""
    digest = hashlib.sha1()
    for root in roots:
        if not root:
            continue
        digest.update(b"\0root\0" + os.fsencode(os.path.abspath(root)))
        _hash_folder(digest, root, depth=2)
    return digest.hexdigest()


def _hash_folder(digest, folder: str, depth: int) -> None:
    try:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as exc:
        digest.update(f"\0unreadable {exc.errno}".encode())
        return
    for entry in entries:
        try:
            st = entry.stat()
            is_dir = entry.is_dir()
        except OSError:
            digest.update(b"\0gone\0" + os.fsencode(entry.name))
            continue
        digest.update(b"\0" + os.fsencode(entry.name) + f"|{st.st_size}|{st.st_mtime_ns}|{int(is_dir)}".encode())
        if is_dir and depth > 1 and not entry.name.startswith("."):
            digest.update(b"\0in\0")
            _hash_folder(digest, entry.path, depth - 1)
            digest.update(b"\0out\0")


def doctor_arguments(config) -> dict[str, Any]:
    """:func:`lora_trainer.dataset.doctor.check_dataset`'s arguments for a TrainConfig."""
    from ..tagging.tags import parse_tags

    try:
        sides = [int(float(v)) for v in str(config.resolution or "512").split(",") if v.strip()]
    except ValueError:
        sides = [512]
    # a W,H resolution: the square of the same area (the doctor's buckets are square-based)
    resolution = sides[0] if len(sides) == 1 else int(math.sqrt(sides[0] * sides[1]))
    return {
        "train_dir": str(config.train_data_dir),
        "reg_dir": str(config.reg_data_dir) if config.reg_data_dir else None,
        "caption_extension": config.caption_extension or ".txt",
        # several comma-separated words: the first is what a caption must hold (the others would make the
        # doctor look for the whole text as one tag)
        "trigger_word": next(iter(parse_tags(config.trigger_word)), None),
        "resolution": resolution,
        "batch_size": max(1, int(config.train_batch_size or 1)),
        "epochs": max(1, int(config.max_train_epochs or 1)),
    }


def finding_line(finding, root: str = "") -> str:
    """One doctor finding as a line of Markdown: the message, its first files (relative to
    ``root``) and the fix."""
    files = ""
    if finding.files:
        shown = [os.path.relpath(p, root) if root and _inside(p, root) else p for p in finding.files[:PREFLIGHT_MAX_FILES]]
        more = len(finding.files) - PREFLIGHT_MAX_FILES
        files = " (" + ", ".join(f"`{p}`" for p in shown) + (f" and {more} more" if more > 0 else "") + ")"
    fix = f"; fix: {finding.fix}" if finding.fix else ""
    return f"[{finding.code}] {finding.message}{files}{fix}"


def _inside(path: str, root: str) -> bool:
    try:
        rel = os.path.relpath(path, root)
    except ValueError:  # another drive (Windows)
        return False
    return rel != ".." and not rel.startswith(".." + os.sep)


class DatasetPreflight:
    """The dataset doctor as a check before each training, its reports cached by
    :func:`listing_signature` and the settings: pressing Train again on an unchanged
    dataset does not decode and hash every image again."""

    max_cached = 8

    def __init__(self):
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple, Any] = OrderedDict()

    def report(self, config):
        """The doctor's :class:`~lora_trainer.dataset.doctor.Report` for the config's dataset."""
        from ..dataset import doctor

        args = doctor_arguments(config)
        key = (listing_signature(args["train_dir"], args["reg_dir"]), tuple(sorted(args.items())))
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        report = doctor.check_dataset(**args)
        with self._lock:
            self._cache[key] = report
            while len(self._cache) > self.max_cached:
                self._cache.popitem(last=False)
        return report

    @staticmethod
    def _about_files(finding) -> bool:
        # a "scan" finding without files is the doctor's own step estimate failing under the
        # settings it assumes (buckets on, 256-1024): not the form's; the Train tab's estimate
        # and the trainer's scan judge the real ones
        return finding.code != "scan" or bool(finding.files)

    def blocking(self, report) -> list:
        """The findings that would stop the training (the doctor's errors)."""
        return [f for f in report.errors if self._about_files(f)]

    def warnings(self, report) -> list:
        """The findings worth telling before it starts."""
        return [f for f in report.warnings if f.code not in PREFLIGHT_SKIPPED_CODES and self._about_files(f)]


class TabLogic:
    def __init__(self, manager, host=None):
        self.manager = manager
        self.host = host
        self._compare = None
        self.preflight = DatasetPreflight()

    @property
    def compare(self):
        """The Compare tab's logic (:class:`~lora_trainer.ui.compare_logic.CompareLogic`), made once."""
        if self._compare is None:
            from .compare_logic import CompareLogic

            self._compare = CompareLogic(self.manager, self.host)
        return self._compare

    # -- form -----------------------------------------------------------------------------

    def initial_form(self) -> dict[str, Any]:
        overrides = {}
        checkpoint = getattr(self.host, "checkpoint_path", None)
        if checkpoint:
            overrides["pretrained_model_name_or_path"] = str(checkpoint)
        return default_form(**overrides)

    def lora_dir(self) -> str:
        try:
            return str(self.host.lora_dir()) if self.host is not None else ""
        except Exception:
            return ""

    @staticmethod
    def form(values: Sequence[Any]) -> dict[str, Any]:
        if len(values) != len(CONTROL_NAMES):
            raise ValueError(f"expected {len(CONTROL_NAMES)} form values, got {len(values)}")
        return dict(zip(CONTROL_NAMES, values))

    # -- estimate -------------------------------------------------------------------------

    def estimate(self, *values: Any) -> str:
        from ..estimate import estimate

        try:
            result = estimate(form_to_options(self.form(values)))
        except Exception as exc:  # the estimate must never break the form
            result = {"ok": False, "error": f"could not estimate: {exc}"}
        return render.estimate_html(result)

    # -- presets, TOML, imports -----------------------------------------------------------

    def apply_preset(self, name: str, *values: Any) -> list[Any]:
        """[form values..., message]"""
        form = self.form(values)
        if not name:
            return form_list(form) + [""]
        try:
            new, notes = apply_preset_form(name, form)
        except (KeyError, ConfigError) as exc:
            return form_list(form) + [f"**Preset not applied:** {exc}"]
        return form_list(new) + [_message(f"Preset **{name}** applied.", notes)]

    def save_toml(self, path: str, *values: Any) -> list[Any]:
        """[message, file to download]"""
        form = self.form(values)
        path = (path or "").strip()
        if not path:
            name = (form.get("output_name") or "lora").strip() or "lora"
            folder = Path(tempfile.mkdtemp(prefix="lora_trainer_"))
            path = str(folder / f"{name}.toml")
        try:
            written, notes = save_toml(form, path)
        except (OSError, ConfigError, ValueError, TypeError) as exc:
            return [f"**Could not save the config:** {exc}", None]
        return [_message(f"Saved `{written}`.", notes), str(written)]

    def load_toml(self, path: Any, *values: Any) -> list[Any]:
        """[form values..., message]"""
        form = self.form(values)
        path = _upload_path(path)
        if not path or not str(path).strip():
            return form_list(form) + ["**Nothing to load:** type the path of a .toml file or upload one."]
        try:
            new, notes = load_toml_form(str(path).strip())
        except (ConfigError, OSError) as exc:
            return form_list(form) + [f"**Could not load the config:** {exc}"]
        return form_list(new) + [_message(f"Loaded `{os.path.basename(str(path))}`.", notes)]

    def import_config(self, path: Any, *values: Any) -> list[Any]:
        """[form values..., message]: a kohya_ss GUI .json or a LoRA_Easy_Training_Scripts .toml."""
        form = self.form(values)
        path = _upload_path(path)
        if not path or not str(path).strip():
            return form_list(form) + ["**Nothing to import:** type the path of a kohya_ss .json or an "
                                      "Easy Training Scripts .toml, or upload one."]
        try:
            new, notes = import_form(str(path).strip(), form)
        except (ConfigError, OSError, ValueError, json.JSONDecodeError) as exc:
            return form_list(form) + [f"**Could not import:** {exc}"]
        return form_list(new) + [_message("Imported; check the settings before training.", notes)]

    # -- queue ----------------------------------------------------------------------------

    def submit(self, *values: Any) -> str:
        """Validate the form, check the dataset (see the module doc) and queue it; returns the message."""
        try:
            config, warnings = from_dict(form_to_options(self.form(values)))
        except ConfigError as exc:
            return _message("**Not queued:** fix these first.", str(exc).splitlines())
        root = str(config.train_data_dir)
        notes = [f"warning: {w}" for w in warnings]
        try:
            report = self.preflight.report(config)
        except Exception as exc:  # the check must never stop a training the trainer itself would run
            report = None
            notes.append(f"the dataset check could not run ({type(exc).__name__}: {exc}); the trainer's own scan still runs")
        if report is not None:
            errors = self.preflight.blocking(report)
            if errors:
                return _message(f"**Not queued:** the dataset check found {len(errors)} problem(s) in `{root}` that "
                                "would stop the training. Fix them, then press Train again (the Dataset tab's "
                                "Check dataset shows the full report).",
                                [finding_line(f, root) for f in errors])
            notes += [f"dataset: {finding_line(f, root)}" for f in self.preflight.warnings(report)]
        try:
            running = self.manager.status()
            busy = bool(running) and running.get("state") in render.ACTIVE
            job_id = self.manager.submit(config)
        except Exception as exc:
            return f"**Not queued:** {exc}"
        where = "queued after the running job" if busy else "started"
        return _message(f"**{config.output_name}** {where} (job `{job_id}`).", notes)

    def interrupt(self, save_current: bool) -> str:
        if self.manager.interrupt(save_current=bool(save_current)):
            return ("Interrupting after the current step"
                    + (": the current weights will be saved too." if save_current else "; saved epochs are kept."))
        return "Nothing is training."

    def cancel(self, job_id: str) -> str:
        job_id = (job_id or "").split(" ")[0].strip()
        if not job_id:
            return "Choose a queued job to cancel."
        if self.manager.cancel(job_id):
            return f"Cancelled job `{job_id}`."
        return f"Job `{job_id}` is not queued (a running job is stopped with Interrupt)."

    # -- polling --------------------------------------------------------------------------

    def poll(self, signature: Optional[str] = None, seen: Optional[str] = None) -> dict[str, Any]:
        """Everything the progress area shows. ``queued_choices`` is None when the list of
        queued jobs did not change since ``signature`` (so a chosen entry stays chosen);
        ``samples`` (the training's sample images as (path, caption)) and ``compare_name``
        (the finished training whose epochs can be compared, "" for none) are None when they
        did not change since ``seen`` (so the gallery is not sent again every second)."""
        status = self.manager.status() or {}
        jobs = self.manager.jobs() or []
        queued = [f"{j['id']} ({j.get('name', '')})" for j in jobs if j.get("state") == "queued"]
        new_signature = "|".join(queued)
        log = status.get("log") or []
        samples = sample_items(status)
        compare_name = comparable_training(status)
        old = _load_seen(seen)
        samples_key = [status.get("id"), [path for path, _ in samples]]
        return {
            "progress": render.progress_html(status),
            "files": render.files_html(status),
            "queue": render.queue_html(jobs),
            "log": "\n".join(str(line) for line in log[-200:]),
            "queued_choices": None if new_signature == signature else queued,
            "signature": new_signature,
            "samples": None if old.get("samples") == samples_key else samples,
            "compare_name": None if old.get("compare") == compare_name else compare_name,
            "seen": json.dumps({"samples": samples_key, "compare": compare_name}),
        }


def sample_items(status: dict[str, Any]) -> list[tuple[str, str]]:
    """The job's sample images that exist, oldest first, as (path, "epoch N: prompt")."""
    items = []
    for sample in status.get("samples") or []:
        if not isinstance(sample, dict):
            continue
        path = sample.get("path")
        if path and os.path.isfile(str(path)):
            items.append((str(path), render.sample_caption(sample)))
    return items


def comparable_training(status: dict[str, Any]) -> str:
    """The output_name of a training that has ended with saved files ("" otherwise)."""
    if status.get("state") in ("done", "interrupted") and status.get("files"):
        return str(status.get("name") or "")
    return ""


def _load_seen(seen: Optional[str]) -> dict[str, Any]:
    if not seen:
        return {}
    try:
        value = json.loads(seen)
    except (TypeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}
