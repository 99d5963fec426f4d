"""What the tab's buttons do, without Gradio.

:class:`TabLogic` holds the job manager and the host and answers each event
with plain values (form values, HTML, Markdown); :mod:`lora_trainer.ui.tab`
only wires these methods to components. Form values travel as lists in
:data:`~lora_trainer.ui.values.CONTROL_NAMES` order, as Gradio passes them.
"""
from __future__ import annotations

import json
import os
import tempfile
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


class TabLogic:
    def __init__(self, manager, host=None):
        self.manager = manager
        self.host = host
        self._compare = None

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
        """Validate the form and queue it; returns the message."""
        try:
            config, warnings = from_dict(form_to_options(self.form(values)))
        except ConfigError as exc:
            return _message("**Not queued:** fix these first.", str(exc).splitlines())
        try:
            running = self.manager.status()
            busy = bool(running) and running.get("state") in render.ACTIVE
            job_id = self.manager.submit(config)
        except Exception as exc:
            return f"**Not queued:** {exc}"
        where = "queued after the running job" if busy else "started"
        return _message(f"**{config.output_name}** {where} (job `{job_id}`).", [f"warning: {w}" for w in warnings])

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
