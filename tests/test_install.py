"""install.py and its planner: inside a WebUI, only missing packages are added, never
a pinned one, never an upgrade or a downgrade; onnxruntime-gpu only with CUDA."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lora_trainer import webui_requirements as wr

ROOT = Path(__file__).resolve().parent.parent
A1111_PINS_FILE = Path("/work/ref/a1111/requirements_versions.txt")

# AUTOMATIC1111 v1.10.1 requirements_versions.txt, as data (used where the WebUI
# source is not at hand, e.g. on CI; checked against the file where it is).
A1111_PINS_TEXT = """\
setuptools==69.5.1
GitPython==3.1.32
Pillow==9.5.0
accelerate==0.21.0
blendmodes==2022
clean-fid==0.1.35
diskcache==5.6.3
einops==0.4.1
facexlib==0.3.0
fastapi==0.94.0
gradio==3.41.2
httpcore==0.15
inflection==0.5.1
jsonmerge==1.8.0
kornia==0.6.7
lark==1.1.2
numpy==1.26.2
omegaconf==2.2.3
open-clip-torch==2.20.0
piexif==1.1.3
protobuf==3.20.0
psutil==5.9.5
pytorch_lightning==1.9.4
resize-right==0.0.2
safetensors==0.4.2
scikit-image==0.21.0
spandrel==0.3.4
spandrel-extra-arches==0.1.1
tomesd==0.1.3
torch
torchdiffeq==0.2.3
torchsde==0.2.6
transformers==4.30.2
httpx==0.24.1
pillow-avif-plugin==1.4.3
"""


def parse_pins(text):
    pins = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, _, version = line.partition("==")
        pins[name.strip()] = version.strip() or None
    return pins


@pytest.fixture(scope="module")
def pins():
    text = A1111_PINS_FILE.read_text(encoding="utf-8") if A1111_PINS_FILE.is_file() else A1111_PINS_TEXT
    return parse_pins(text)


def test_embedded_pins_match_the_webui_file():
    if not A1111_PINS_FILE.is_file():
        pytest.skip("AUTOMATIC1111 source not at hand")
    assert parse_pins(A1111_PINS_FILE.read_text(encoding="utf-8")) == parse_pins(A1111_PINS_TEXT)


def webui_env(pins, **extra):
    """A WebUI venv: the pins (torch as the v1.10.1 default CUDA build) plus what the
    WebUI's packages bring (huggingface_hub through transformers, tqdm, PyYAML ...)."""
    env = {name: (version or "2.1.2+cu121") for name, version in pins.items()}
    env.update({"huggingface-hub": "0.23.4", "tqdm": "4.66.4", "PyYAML": "6.0.1", "torchvision": "0.16.2+cu121"})
    env.update(extra)
    return env


OURS = {"prodigyopt", "dadaptation", "lion-pytorch", "tomli-w"}


def names(steps):
    return {wr.normalize_name(step.name) for step in steps}


@pytest.mark.parametrize("cuda", [False, True])
def test_webui_env_gets_only_our_missing_packages(pins, cuda):
    steps = wr.plan_installs(webui_env(pins), cuda, python_version=(3, 10))
    expected = OURS | {"tomli", "onnxruntime-gpu" if cuda else "onnxruntime"}
    assert names(steps) == expected
    pinned = {wr.normalize_name(name) for name in pins}
    assert not names(steps) & pinned
    for step in steps:
        assert "--upgrade" not in step.pip_args("c.txt") and "-U" not in step.pip_args("c.txt")
        assert step.pip_args("c.txt")[:3] == ["install", "-c", "c.txt"]


def test_python_311_needs_no_tomli(pins):
    steps = wr.plan_installs(webui_env(pins), False, python_version=(3, 11))
    assert "tomli" not in names(steps)
    steps = wr.plan_installs(webui_env(pins, tomli="2.0.1"), False, python_version=(3, 10))
    assert "tomli" not in names(steps)


def test_everything_present_means_nothing_to_do(pins):
    env = webui_env(pins, prodigyopt="1.0", dadaptation="3.2", lion_pytorch="0.2.2", tomli_w="1.0.0",
                    tomli="2.0.1", **{"onnxruntime-gpu": "1.18.1"})
    assert wr.plan_installs(env, True) == []
    assert wr.plan_installs(env, False) == []  # a GPU onnxruntime without CUDA still runs: left alone
    assert wr.installed_warnings(env, True) == []


def test_any_spelling_and_any_onnxruntime_flavour_counts_as_present(pins):
    env = webui_env(pins, Lion_Pytorch="0.2.2", **{"TOMLI.W": "1.0.0", "onnxruntime-directml": "1.17.0"})
    got = names(wr.plan_installs(env, True, python_version=(3, 12)))
    assert got == {"prodigyopt", "dadaptation"}
    assert not wr.needs_cuda_check(env)


def test_out_of_range_versions_are_warned_about_never_changed(pins):
    env = webui_env(pins, prodigyopt="0.1", dadaptation="9.0", lion_pytorch="0.2.2", tomli_w="1.0.0", tomli="2.0.1",
                    onnxruntime="1.10.0")
    env["safetensors"] = "0.2.8"  # below our range: still never up/downgraded
    assert wr.plan_installs(env, True) == []
    warnings = "\n".join(wr.installed_warnings(env, True))
    for name in ("prodigyopt 0.1", "dadaptation 9.0", "safetensors 0.2.8", "onnxruntime 1.10.0"):
        assert name in warnings
    assert "will run on the CPU" in warnings  # CPU onnxruntime although CUDA is present


def test_both_onnxruntime_flavours_are_warned_about(pins):
    env = webui_env(pins, onnxruntime="1.18.0", **{"onnxruntime-gpu": "1.18.0"})
    assert not any(s.name.startswith("onnxruntime") for s in wr.plan_installs(env, True))
    assert any("several onnxruntime" in w for w in wr.installed_warnings(env, True))


def test_our_ranges_contain_the_webui_pins(pins):
    """Where the WebUI pins a package we need, its pinned version is inside our range:
    a stock WebUI gets no warning and no install for it."""
    normalized = {wr.normalize_name(n): v for n, v in pins.items() if v}
    checked = 0
    for need in wr.NEEDS:
        key = wr.normalize_name(need.name)
        if key in normalized:
            assert wr.version_in_range(normalized[key], need.specifier), (need, normalized[key])
            checked += 1
    assert checked >= 2  # safetensors, open-clip-torch
    # transformers 4.30.2 requires huggingface-hub>=0.14.1,<1.0: our install range stays inside
    hub = next(n for n in wr.NEEDS if n.name == "huggingface-hub")
    assert hub.specifier == ">=0.14.1,<1.0"
    assert not any(wr.normalize_name(n.name) in wr.NEVER_INSTALL for n in wr.NEEDS)


def test_standalone_env_installs_the_webui_provided_needs_too():
    steps = wr.plan_installs({"torch": "2.13.0", "numpy": "2.4.6"}, False, python_version=(3, 11))
    got = names(steps)
    assert {"safetensors", "huggingface-hub", "open-clip-torch", "onnxruntime"} <= got
    assert not got & {"torch", "numpy"}
    assert wr.installed_warnings({}, False) == ["torch is not installed: the WebUI installs it; LoRA Trainer never does."]


def test_version_in_range():
    assert wr.version_in_range("0.4.2", ">=0.3.1,<1")
    assert wr.version_in_range("1.0", ">=1.0,<2")
    assert wr.version_in_range("1.0.0", ">=1,<2")
    assert not wr.version_in_range("2.0", ">=1.0,<2")
    assert wr.version_in_range("2.1.2+cu121", ">=2.1")
    assert wr.version_in_range("garbage", ">=1") is None


def test_constraints_pin_every_installed_version(pins):
    env = webui_env(pins, weird="not a version", **{"bad name!": "1.0"})
    lines = wr.constraints_lines(env)
    assert "numpy==1.26.2" in lines and "gradio==3.41.2" in lines and "torch==2.1.2+cu121" in lines
    assert "transformers==4.30.2" in lines and "safetensors==0.4.2" in lines
    assert not any(line.startswith(("weird", "bad")) for line in lines)
    assert all(re.fullmatch(r"[a-z0-9-]+==\S+", line) for line in lines)


# --- install.py in a subprocess, with a fake WebUI `launch` module ------------------------------------


@pytest.fixture
def fake_launch(tmp_path):
    record = tmp_path / "pip_calls.jsonl"
    folder = tmp_path / "webui"
    folder.mkdir()
    (folder / "launch.py").write_text(
        "import json, os, re\n"
        "def run_pip(command, desc=None, live=False):\n"
        "    m = re.search(r'-c \"?([^\" ]+)\"?', command)\n"
        "    constraints = open(m.group(1), encoding='utf-8').read().splitlines() if m else None\n"
        "    with open(os.environ['FAKE_PIP_RECORD'], 'a', encoding='utf-8') as f:\n"
        "        f.write(json.dumps({'command': command, 'desc': desc, 'constraints': constraints}) + '\\n')\n"
        "def is_installed(package):\n"
        "    return True\n",
        encoding="utf-8",
    )
    return folder, record


def run_install(fake_launch, **env_extra):
    folder, record = fake_launch
    env = dict(os.environ, PYTHONPATH=str(folder), FAKE_PIP_RECORD=str(record), LORA_TRAINER_CUDA="0",
               OMP_NUM_THREADS="1", **env_extra)
    result = subprocess.run([sys.executable, str(ROOT / "install.py")], capture_output=True, text=True, env=env,
                            timeout=120, cwd=str(folder))
    assert result.returncode == 0, result.stderr
    calls = [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []
    return result, calls


def test_install_py_dry_run_installs_nothing(fake_launch):
    result, calls = run_install(fake_launch, LORA_TRAINER_INSTALL_DRY_RUN="1")
    assert calls == []
    assert "dry run" in result.stdout
    assert "--upgrade" not in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_install_py_runs_exactly_the_plan_through_run_pip(fake_launch):
    """In this venv, install.py asks the (fake) WebUI run_pip for exactly the planned
    missing packages, each with the constraints file pinning what is installed."""
    import importlib.metadata

    installed = {}
    for dist in importlib.metadata.distributions():
        if dist.metadata["Name"]:
            installed.setdefault(dist.metadata["Name"], dist.version)
    plan = wr.plan_installs(installed, False, python_version=sys.version_info[:2])
    result, calls = run_install(fake_launch)
    assert len(calls) == len(plan)
    for step, call in zip(plan, calls):
        assert f'"{step.requirement}"' in call["command"]
        assert call["command"].startswith("install -c ")
        assert "--upgrade" not in call["command"] and " -U" not in call["command"]
        pinned = set(call["constraints"])
        for name, version in installed.items():
            if re.fullmatch(r"[0-9][0-9A-Za-z.+!_-]*", version):
                assert f"{wr.normalize_name(name)}=={version}" in pinned
    # the constraints file is a temporary file, removed afterwards
    assert not list(Path(fake_launch[0]).glob("*constraints*"))


def test_install_py_in_a_bare_python_installs_every_need_but_never_torch(fake_launch):
    """`python -S` hides site-packages: nothing is installed, so every need is planned
    (the CPU onnxruntime, as CUDA is off) and torch never is."""
    folder, record = fake_launch
    env = dict(os.environ, PYTHONPATH=str(folder), FAKE_PIP_RECORD=str(record), LORA_TRAINER_CUDA="0")
    result = subprocess.run([sys.executable, "-S", str(ROOT / "install.py")], capture_output=True, text=True,
                            env=env, timeout=120, cwd=str(folder))
    assert result.returncode == 0, result.stderr
    calls = [json.loads(line) for line in record.read_text().splitlines()]
    plan = wr.plan_installs({}, False, python_version=sys.version_info[:2])
    assert [c["command"].split()[-1].strip('"') for c in calls] == [s.requirement for s in plan]
    assert any(s.name == "onnxruntime" for s in plan) and not any(s.name == "onnxruntime-gpu" for s in plan)
    assert not any("torch" == c["command"].split()[-1].strip('"').split(">")[0] for c in calls)
    assert "torch is not installed" in result.stdout


def test_install_py_survives_pip_failures(tmp_path):
    """A failing pip (no network, no wheel for this Python) is reported; the WebUI starts anyway."""
    (tmp_path / "launch.py").write_text(
        "def run_pip(command, desc=None, live=False):\n    raise RuntimeError('Couldn\\'t install ' + str(desc))\n",
        encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=str(tmp_path), LORA_TRAINER_CUDA="1")
    result = subprocess.run([sys.executable, "-S", str(ROOT / "install.py")], capture_output=True, text=True,
                            env=env, timeout=120, cwd=str(tmp_path))
    assert result.returncode == 0
    plan = wr.plan_installs({}, True, python_version=sys.version_info[:2])
    assert result.stdout.count("could not install") == len(plan)
    assert "onnxruntime-gpu" in result.stdout  # CUDA forced on
    assert "Traceback" not in result.stdout + result.stderr
