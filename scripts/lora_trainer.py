"""WebUI entry point (AUTOMATIC1111 v1.10 / Forge): the "LoRA Trainer" tab, its
settings section and the ``/lora_trainer/v1/`` API routes.

Importing this file only registers callbacks: no torch, no gradio, no GPU work and no
trainer modules are imported here. The host adapter and the job manager are created
once, on first use (the tab being built, or the first API request), and kept on the
``lora_trainer`` package so that the WebUI's "Reload UI" (which re-runs this file)
finds the same manager, its queue and any training in progress.
"""
import importlib.util
import os
import sys
import threading

from modules import script_callbacks

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TAB_TITLE = "LoRA Trainer"
TAB_ID = "lora_trainer"
SECTION = ("lora_trainer", "LoRA Trainer")


def _log(message):
    print(f"[LoRA Trainer] {message}")


def _package():
    """Our ``lora_trainer`` package, loaded from this extension's folder by path (the
    WebUI puts the extension on sys.path only while it imports this file)."""
    package = sys.modules.get("lora_trainer")
    if package is not None:
        where = os.path.dirname(os.path.abspath(getattr(package, "__file__", "") or ""))
        if os.path.normcase(where) != os.path.normcase(os.path.join(_ROOT, "lora_trainer")):
            _log(f"warning: another 'lora_trainer' package is loaded ({where}); this extension uses it")
        return package
    init = os.path.join(_ROOT, "lora_trainer", "__init__.py")
    spec = importlib.util.spec_from_file_location("lora_trainer", init, submodule_search_locations=[os.path.dirname(init)])
    package = importlib.util.module_from_spec(spec)
    sys.modules["lora_trainer"] = package
    try:
        spec.loader.exec_module(package)
    except BaseException:
        del sys.modules["lora_trainer"]
        raise
    return package


_STATE = vars(_package()).setdefault("_webui_state", {"lock": threading.RLock()})


# --- WebUI options --------------------------------------------------------------------------


def _cmd_opt(name, default=None):
    try:
        from modules import shared

        return getattr(shared.cmd_opts, name, default)
    except Exception:
        return default


def _opt(name, default=None):
    try:
        from modules import shared

        value = getattr(shared.opts, name)
    except Exception:
        return default
    return default if value is None else value


def _data_dir():
    try:
        from modules import paths_internal

        return paths_internal.data_path
    except Exception:
        return _cmd_opt("data_dir") or _ROOT


def queue_file():
    """--lora-trainer-queue-file, else the setting, else <data dir>/lora_trainer/queue.json."""
    path = _cmd_opt("lora_trainer_queue_file") or _opt("lora_trainer_queue_file", "") or os.path.join(
        _data_dir(), "lora_trainer", "queue.json"
    )
    path = os.path.abspath(os.path.expanduser(path))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return path


def config_defaults():
    """Options the settings fill in when a request leaves them out."""
    out = {}
    output_dir = _opt("lora_trainer_output_dir", "")
    if output_dir:
        out["output_dir"] = output_dir
    weight = _opt("lora_trainer_preferred_weight", None)
    if weight is not None:
        out["preferred_weight"] = float(weight)
    return out


# --- the lazily created host and manager -------------------------------------------------------


def _create_host():
    from lora_trainer.hosts.detect import FORGE, detect_host

    kind = detect_host()
    if kind == FORGE:
        from lora_trainer.hosts.forge import ForgeHost

        return ForgeHost()
    from lora_trainer.hosts.a1111 import A1111Host

    return A1111Host()


def get_host():
    with _STATE["lock"]:
        if _STATE.get("host") is None:
            _STATE["host"] = _create_host()
        return _STATE["host"]


def get_manager():
    with _STATE["lock"]:
        if _STATE.get("manager") is None:
            from lora_trainer.jobs import JobManager

            _STATE["manager"] = JobManager(get_host(), queue_file=queue_file(), log=_log)
        return _STATE["manager"]


# --- callbacks ----------------------------------------------------------------------------------------


def _error_tab(message):
    import gradio as gr

    with gr.Blocks(analytics_enabled=False) as blocks:
        gr.Markdown(f"**LoRA Trainer could not start.**\n\n```\n{message}\n```")
    return blocks


def on_ui_tabs():
    try:
        from lora_trainer.ui.tab import build_tab

        blocks = build_tab(get_manager(), get_host())
    except Exception as exc:
        import traceback

        _log(f"the tab could not be built:\n{traceback.format_exc()}")
        blocks = _error_tab(f"{type(exc).__name__}: {exc}")
    return [(blocks, TAB_TITLE, TAB_ID)]


def _settings():
    import gradio as gr

    return {
        "lora_trainer_output_dir": (
            "",
            "Default output folder for LoRA files (empty: the WebUI's Lora folder, --lora-dir)",
            gr.Textbox,
            None,
        ),
        "lora_trainer_preferred_weight": (
            0.8,
            "Preferred weight written into each new LoRA's metadata (.json beside it)",
            gr.Slider,
            {"minimum": 0.0, "maximum": 2.0, "step": 0.05},
        ),
        "lora_trainer_queue_file": (
            "",
            "Queue file (empty: <data dir>/lora_trainer/queue.json; --lora-trainer-queue-file overrides)",
            gr.Textbox,
            None,
        ),
        "lora_trainer_poll_seconds": (
            2,
            "Refresh the progress and queue display every N seconds (0: only by hand)",
            gr.Slider,
            {"minimum": 0, "maximum": 30, "step": 1},
        ),
    }


def on_ui_settings():
    from modules import shared

    for key, (default, label, component, component_args) in _settings().items():
        try:
            info = shared.OptionInfo(default, label, component, component_args, section=SECTION, category_id="training")
        except TypeError:  # WebUI versions before settings categories
            info = shared.OptionInfo(default, label, component, component_args, section=SECTION)
        if key == "lora_trainer_queue_file":
            info = info.needs_restart() if hasattr(info, "needs_restart") else info
        shared.opts.add_option(key, info)


def api_enabled():
    """The routes exist when the user asked for an API (--api, --nowebui) or for ours
    (--lora-trainer-api): routes added to the app escape gradio's --gradio-auth, so
    they are not opened on a WebUI whose owner did not ask for an API."""
    return bool(_cmd_opt("api") or _cmd_opt("nowebui") or _cmd_opt("lora_trainer_api"))


def on_app_started(demo, app):
    if not api_enabled():
        return
    from lora_trainer.api import register

    register(
        app,
        get_manager,
        _cmd_opt("api_auth"),
        dataset_root=_cmd_opt("lora_trainer_dataset_root"),
        get_defaults=config_defaults,
    )
    # the comparison runner drives the X/Y/Z plot script, which AUTOMATIC1111 and Forge share (axes are
    # looked up by label); the host runs it as its own job (Forge: on its main thread)
    from lora_trainer.hosts.a1111_compare import register_routes as register_compare_routes

    register_compare_routes(app, get_host=get_host, get_manager=get_manager, api_auth=_cmd_opt("api_auth"),
                            extra_dirs=lambda: [d for d in [_opt("lora_trainer_output_dir", "")] if d])


script_callbacks.on_ui_tabs(on_ui_tabs)
script_callbacks.on_ui_settings(on_ui_settings)
script_callbacks.on_app_started(on_app_started)
