"""The WebUI entry points against a fake WebUI: scripts/lora_trainer.py registers its
callbacks cheaply (no torch, gradio, fastapi or trainer modules at import, well under
a second), the callbacks build the tab / settings / API with one lazily created
manager; preload.py adds our options beside the WebUI's; host detection;
javascript/lora_trainer.js is valid JavaScript."""
import argparse
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

FAKE_FILES = {
    "modules/__init__.py": "",
    "modules/script_callbacks.py": """
        registered = {"ui_tabs": [], "ui_settings": [], "app_started": []}
        def on_ui_tabs(callback, *, name=None): registered["ui_tabs"].append(callback)
        def on_ui_settings(callback, *, name=None): registered["ui_settings"].append(callback)
        def on_app_started(callback, *, name=None): registered["app_started"].append(callback)
    """,
    "modules/paths_internal.py": """
        import os
        data_path = os.environ["FAKE_DATA_PATH"]
    """,
    "modules/shared.py": """
        import json, os, types
        cmd_opts = types.SimpleNamespace(**json.loads(os.environ.get("FAKE_CMD_OPTS", "{}")))
        class OptionInfo:
            def __init__(self, default=None, label="", component=None, component_args=None, onchange=None,
                         section=None, refresh=None, comment_before='', comment_after='', infotext=None,
                         restrict_api=False, category_id=None):
                self.default, self.label, self.component, self.section = default, label, component, section
                self.component_args, self.category_id, self.comment_after = component_args, category_id, comment_after
            def needs_restart(self):
                self.comment_after += " (requires restart)"
                return self
        class Options:
            def __init__(self):
                self.data, self.data_labels = {}, {}
            def add_option(self, key, info):
                self.data_labels[key] = info
                self.data.setdefault(key, info.default)
            def __getattr__(self, key):
                if key in ("data", "data_labels"):
                    raise AttributeError(key)
                if key in self.data:
                    return self.data[key]
                if key in self.data_labels:
                    return self.data_labels[key].default
                raise AttributeError(key)
        opts = Options()
    """,
    # a stand-in gradio: the real one is not installed for the tests
    "gradio/__init__.py": """
        class _Component:
            def __init__(self, *args, **kwargs):
                self.args, self.kwargs = args, kwargs
        class Textbox(_Component): pass
        class Slider(_Component): pass
        class Markdown(_Component): pass
        class Blocks(_Component):
            def __enter__(self): return self
            def __exit__(self, *exc): return False
    """,
}

CHILD = r"""
import importlib.util, json, os, sys, time
sys.path.insert(0, os.environ["FAKE_WEBUI"])
script = os.path.join(os.environ["EXT_ROOT"], "scripts", "lora_trainer.py")
heavy = ("torch", "gradio", "fastapi", "numpy", "PIL", "safetensors", "transformers",
         "lora_trainer.jobs", "lora_trainer.config", "lora_trainer.api", "lora_trainer.hosts",
         "lora_trainer.models", "lora_trainer.training", "lora_trainer.ui")

def load_script():
    # as the WebUI does: by file location, named after the file
    spec = importlib.util.spec_from_file_location("lora_trainer.py", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

before = set(sys.modules)
t0 = time.perf_counter()
mod = load_script()
elapsed = time.perf_counter() - t0
new = sorted(set(sys.modules) - before)
out = {"elapsed": elapsed, "heavy_loaded": [m for m in new if m.split(".")[0] in heavy or m in heavy
                                            or any(m.startswith(h + ".") for h in heavy)]}
from modules import script_callbacks, shared
out["registered"] = {k: len(v) for k, v in script_callbacks.registered.items()}
out["package_file"] = sys.modules["lora_trainer"].__file__

if os.environ.get("CHILD_MODE") == "import-only":
    print(json.dumps(out)); sys.exit(0)

# fakes for the collaborators written elsewhere
import types
calls = {"manager": [], "host": 0, "tab": []}
class FakeHost:
    name = "a1111"
    def __init__(self): calls["host"] += 1
class FakeManager:
    def __init__(self, host, queue_file=None, log=print):
        calls["manager"].append({"host": type(host).__name__, "queue_file": queue_file})
    def jobs(self): return [{"id": "j1", "state": "queued"}]
    def status(self, job_id=None): return {"id": job_id, "state": "idle"}
def build_tab(manager, host):
    calls["tab"].append((type(manager).__name__, type(host).__name__))
    if os.environ.get("TAB_FAILS"):
        raise RuntimeError("tab exploded")
    return "BLOCKS"
for name, attrs in {"lora_trainer.jobs": {"JobManager": FakeManager},
                    "lora_trainer.hosts.a1111": {"A1111Host": FakeHost},
                    "lora_trainer.ui": {}, "lora_trainer.ui.tab": {"build_tab": build_tab}}.items():
    m = types.ModuleType(name); m.__dict__.update(attrs); sys.modules[name] = m

for cb in script_callbacks.registered["ui_settings"]:
    cb()
out["settings"] = {k: {"default": v.default, "section": list(v.section), "category": v.category_id,
                       "component": type(v.component).__name__ if not isinstance(v.component, type) else v.component.__name__}
                   for k, v in shared.opts.data_labels.items()}
tabs = [cb() for cb in script_callbacks.registered["ui_tabs"]]
tabs += [cb() for cb in script_callbacks.registered["ui_tabs"]]
out["tabs"] = [[[type(b).__name__ if b != "BLOCKS" else b, t, i] for b, t, i in tab] for tab in tabs]

# "Reload UI": the WebUI runs the script file again; the manager survives
mod2 = load_script()
out["same_manager_after_reload"] = mod2.get_manager() is mod.get_manager()
out["calls"] = calls

from fastapi import FastAPI
from fastapi.testclient import TestClient
app = FastAPI()
for cb in script_callbacks.registered["app_started"]:
    cb(None, app)
client = TestClient(app)
r = client.get("/lora_trainer/v1/jobs")
out["api_no_auth"] = r.status_code
r = client.get("/lora_trainer/v1/jobs", auth=("user", "pass"))
out["api_auth"] = [r.status_code, r.json() if r.status_code == 200 else None]
print(json.dumps(out))
"""


@pytest.fixture
def fake_webui(tmp_path):
    root = tmp_path / "webui"
    for rel, text in FAKE_FILES.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    (tmp_path / "data").mkdir()
    return root


def run_child(fake_webui, tmp_path, cmd_opts=None, **env_extra):
    env = dict(os.environ, FAKE_WEBUI=str(fake_webui), EXT_ROOT=str(ROOT), FAKE_DATA_PATH=str(tmp_path / "data"),
               FAKE_CMD_OPTS=json.dumps(cmd_opts or {}), OMP_NUM_THREADS="1", **env_extra)
    env.pop("PYTHONPATH", None)
    env.pop("LORA_TRAINER_HOST", None)
    # run from an unrelated folder: the extension is not on sys.path, as after the WebUI's import
    result = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, env=env, timeout=120,
                            cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_import_registers_callbacks_fast_and_light(fake_webui, tmp_path):
    out = run_child(fake_webui, tmp_path, CHILD_MODE="import-only")
    assert out["registered"] == {"ui_tabs": 1, "ui_settings": 1, "app_started": 1}
    assert out["heavy_loaded"] == []
    assert out["elapsed"] < 1.0
    assert Path(out["package_file"]).resolve() == (ROOT / "lora_trainer" / "__init__.py").resolve()


def test_callbacks_build_tab_settings_and_api_with_one_manager(fake_webui, tmp_path):
    pytest.importorskip("fastapi")  # the child registers the real API routes
    queue = tmp_path / "q" / "queue.json"
    cmd_opts = {"api": True, "api_auth": "user:pass", "lora_trainer_queue_file": str(queue),
                "lora_trainer_dataset_root": None, "lora_trainer_api": False}
    out = run_child(fake_webui, tmp_path, cmd_opts)
    assert out["tabs"] == [[["BLOCKS", "LoRA Trainer", "lora_trainer"]]] * 2
    # host and manager created once, and kept across a script reload
    assert out["calls"]["host"] == 1
    assert out["calls"]["manager"] == [{"host": "FakeHost", "queue_file": str(queue)}]
    assert out["same_manager_after_reload"] is True
    assert queue.parent.is_dir()
    settings = out["settings"]
    assert settings["lora_trainer_preferred_weight"]["default"] == 0.8
    assert set(settings) == {"lora_trainer_output_dir", "lora_trainer_preferred_weight", "lora_trainer_queue_file",
                             "lora_trainer_poll_seconds"}
    assert all(s["section"] == ["lora_trainer", "LoRA Trainer"] and s["category"] == "training" for s in settings.values())
    # API routes exist with --api and honour --api-auth
    assert out["api_no_auth"] == 401
    assert out["api_auth"] == [200, {"jobs": [{"id": "j1", "state": "queued"}]}]


def test_default_queue_file_and_no_routes_without_api(fake_webui, tmp_path):
    pytest.importorskip("fastapi")  # the child registers the real API routes
    out = run_child(fake_webui, tmp_path, {"api": False, "nowebui": False})
    assert out["calls"]["manager"][0]["queue_file"] == str(tmp_path / "data" / "lora_trainer" / "queue.json")
    assert out["api_no_auth"] == 404  # no --api, no --lora-trainer-api: no routes
    out = run_child(fake_webui, tmp_path, {"api": False, "lora_trainer_api": True})
    assert out["api_no_auth"] == 200  # asked for explicitly; no --api-auth given


def test_a_failing_tab_shows_the_error_instead_of_breaking_the_ui(fake_webui, tmp_path):
    pytest.importorskip("fastapi")  # the child registers the real API routes
    out = run_child(fake_webui, tmp_path, TAB_FAILS="1")
    assert out["tabs"][0] == [["Blocks", "LoRA Trainer", "lora_trainer"]]


# --- preload.py --------------------------------------------------------------------------------------------


def load_preload():
    import importlib.util

    spec = importlib.util.spec_from_file_location("lora_trainer_preload_under_test", ROOT / "preload.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_preload_adds_our_options_beside_the_webuis():
    parser = argparse.ArgumentParser()
    parser.add_argument("--api-auth", default=None)
    parser.add_argument("--api", action="store_true")
    parser.add_argument("--lora-dir", default="models/Lora")  # the built-in Lora extension's preload
    preload = load_preload()
    preload.preload(parser)
    preload.preload(parser)  # twice (or another extension with the same spelling): no clash
    args = parser.parse_args(["--lora-dir", "/l", "--lora-trainer-queue-file", "~/q.json",
                              "--lora-trainer-dataset-root", "rel/data", "--lora-trainer-api"])
    assert args.lora_dir == "/l"
    assert args.lora_trainer_queue_file == os.path.join(os.path.expanduser("~"), "q.json")
    assert args.lora_trainer_dataset_root == os.path.abspath("rel/data")
    assert args.lora_trainer_api is True
    defaults = parser.parse_args([])
    assert defaults.lora_trainer_queue_file is None and defaults.lora_trainer_api is False
    assert not any(flag == "--lora-dir" for flag, _ in preload.OPTIONS)


def test_preload_against_the_webuis_own_parser():
    """Every WebUI option spelling in AUTOMATIC1111's cmd_args.py differs from ours."""
    cmd_args = Path("/work/ref/a1111/modules/cmd_args.py")
    if not cmd_args.is_file():
        pytest.skip("AUTOMATIC1111 source not at hand")
    import re

    webui_flags = set(re.findall(r'add_argument\(\s*"(--[a-z0-9-]+)"', cmd_args.read_text(encoding="utf-8")))
    assert len(webui_flags) > 50
    ours = {flag for flag, _ in load_preload().OPTIONS}
    assert not ours & (webui_flags | {"--lora-dir", "--lyco-dir-backcompat"})
    assert all(flag.startswith("--lora-trainer-") for flag in ours)


# --- host detection -----------------------------------------------------------------------------------------


def test_detect_host(tmp_path):
    from lora_trainer.hosts.detect import detect_host, forge_flavour

    def finder(existing):
        return lambda name: object() if name in existing else None

    assert detect_host(modules={}, find_spec=finder(set()), environ={}) == "standalone"
    webui = {"modules.script_callbacks": object()}
    assert detect_host(modules=webui, find_spec=finder(set()), environ={}) == "a1111"
    assert detect_host(modules=webui, find_spec=finder({"modules_forge"}), environ={}) == "forge"
    assert detect_host(modules={}, find_spec=finder(set()), environ={"LORA_TRAINER_HOST": "forge"}) == "forge"
    assert forge_flavour(modules={}, find_spec=finder({"modules_forge", "backend"})) == "backend"
    assert forge_flavour(modules={}, find_spec=finder({"modules_forge", "ldm_patched"})) == "ldm_patched"
    assert forge_flavour(modules={}, find_spec=finder(set())) is None

    # a WebUI folder on sys.path is recognised by its modules/script_callbacks.py, without importing it
    (tmp_path / "modules").mkdir()
    (tmp_path / "modules" / "script_callbacks.py").write_text("raise SystemExit('imported!')\n")
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from lora_trainer.hosts.detect import detect_host; "
            "print(detect_host(environ={}), 'modules.script_callbacks' in sys.modules)")
    run = lambda: subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True,
                                 cwd=str(ROOT), timeout=60, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert run().stdout.split() == ["a1111", "False"]
    (tmp_path / "modules_forge").mkdir()
    (tmp_path / "modules_forge" / "__init__.py").write_text("raise SystemExit('imported!')\n")
    assert run().stdout.split() == ["forge", "False"]


def test_detect_in_this_process_is_standalone():
    from lora_trainer.hosts.detect import detect_host

    assert detect_host(environ={}) == "standalone"


# --- javascript ----------------------------------------------------------------------------------------------


def test_javascript_is_valid():
    node = shutil.which("node") or shutil.which("nodejs")
    if node is None:
        pytest.skip("node is not installed")
    result = subprocess.run([node, "--check", str(ROOT / "javascript" / "lora_trainer.js")], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    text = (ROOT / "javascript" / "lora_trainer.js").read_text(encoding="utf-8")
    assert "function lora_trainer_send_to_txt2img(" in text
