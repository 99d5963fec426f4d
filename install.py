"""Run by the WebUI at start-up (in the WebUI's Python): add the packages LoRA Trainer
needs that are missing, and nothing else.

- Nothing already installed is upgraded or downgraded: the plan only names missing
  packages, pip is never given ``--upgrade``, and a constraints file pins every
  installed distribution to its installed version so that dependencies cannot move
  them either. A present package outside our range is left alone with a warning.
- ``onnxruntime-gpu`` is chosen only when CUDA is present (``nvidia-smi`` first,
  torch only when there is no nvidia-smi), ``onnxruntime`` otherwise; neither when
  some onnxruntime is already installed.
- pip runs through the WebUI's ``launch.run_pip`` (which honours ``--skip-install``
  and ``INDEX_URL``); outside the WebUI, ``python -m pip``.

Environment: ``LORA_TRAINER_INSTALL_DRY_RUN=1`` prints the plan and installs nothing;
``LORA_TRAINER_CUDA=0/1`` overrides the CUDA probe.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile

_ROOT = os.path.dirname(os.path.abspath(__file__))
_PREFIX = "[LoRA Trainer]"


def _load_planner():
    """lora_trainer/webui_requirements.py by path (stdlib only; no package import)."""
    path = os.path.join(_ROOT, "lora_trainer", "webui_requirements.py")
    spec = importlib.util.spec_from_file_location("lora_trainer_webui_requirements", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look the module up while building
    spec.loader.exec_module(module)
    return module


def installed_distributions() -> dict[str, str]:
    out: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        try:
            name, version = dist.metadata["Name"], dist.version
        except Exception:  # a broken .dist-info: skip it
            continue
        if name and version:
            out.setdefault(name, version)
    return out


def _env_flag(name: str):
    value = os.environ.get(name, "").strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    return None


def cuda_present(installed: dict) -> bool:
    """CUDA GPU present? LORA_TRAINER_CUDA, then nvidia-smi, then (only without
    nvidia-smi, and only if torch is installed) torch.cuda in a child process."""
    forced = _env_flag("LORA_TRAINER_CUDA")
    if forced is not None:
        return forced
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            result = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20)
            return result.returncode == 0 and "GPU" in result.stdout
        except (OSError, subprocess.SubprocessError):
            return False
    if not any(name.lower() == "torch" for name in installed):
        return False
    code = "import torch,sys; sys.exit(0 if (torch.version.cuda and torch.cuda.is_available()) else 1)"
    try:
        return subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _pip_via_launch():
    """The WebUI's run_pip, or None outside the WebUI."""
    try:
        import launch  # the WebUI's launch.py: PYTHONPATH has the WebUI root when it runs us
    except Exception:
        return None
    return getattr(launch, "run_pip", None)


def _quote(arg: str) -> str:
    # run_pip builds a shell command line; double quotes work in sh and cmd.exe alike
    return '"' + arg.replace('"', '') + '"' if any(c in arg for c in ' <>|&^;()"\'') else arg


def run_steps(steps, constraints_file: str) -> list[str]:
    """pip install each step; returns the failures (the other steps still run)."""
    run_pip = _pip_via_launch()
    failures = []
    for step in steps:
        args = step.pip_args(constraints_file)
        try:
            if run_pip is not None:
                run_pip(" ".join(_quote(a) for a in args), desc=f"{step.requirement} for LoRA Trainer ({step.reason})")
            else:
                print(f"{_PREFIX} installing {step.requirement} ({step.reason})")
                subprocess.run([sys.executable, "-m", "pip", *args], check=True)
        except Exception as exc:  # keep going: one missing optimizer must not stop the WebUI
            failures.append(f"{step.requirement}: {exc}")
    return failures


def main() -> int:
    planner = _load_planner()
    installed = installed_distributions()
    cuda = cuda_present(installed) if planner.needs_cuda_check(installed) else None
    python_version = tuple(sys.version_info[:2])
    steps = planner.plan_installs(installed, bool(cuda), python_version=python_version)
    for warning in planner.installed_warnings(installed, cuda, python_version=python_version):
        print(f"{_PREFIX} note: {warning}")
    dry_run = _env_flag("LORA_TRAINER_INSTALL_DRY_RUN")
    if dry_run:
        print(f"{_PREFIX} dry run (LORA_TRAINER_INSTALL_DRY_RUN=1): nothing is installed")
        if not steps:
            print(f"{_PREFIX} plan: nothing to install")
        for step in steps:
            print(f"{_PREFIX} plan: pip {' '.join(step.pip_args('<constraints>'))}   # {step.reason}")
        return 0
    if not steps:
        return 0
    handle = tempfile.NamedTemporaryFile("w", suffix="-lora-trainer-constraints.txt", delete=False, encoding="utf-8")
    try:
        with handle:
            handle.write("\n".join(planner.constraints_lines(installed)) + "\n")
        failures = run_steps(steps, handle.name)
    finally:
        try:
            os.unlink(handle.name)
        except OSError:
            pass
    for failure in failures:
        print(f"{_PREFIX} could not install {failure}\n{_PREFIX} the rest of LoRA Trainer still works; "
              f"install it by hand if you need that feature.")
    return 0


if __name__ == "__main__":
    try:
        main()
    except Exception as exc:  # never break the WebUI's start-up
        print(f"{_PREFIX} install.py failed: {exc!r}")
