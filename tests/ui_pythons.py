"""Running a test file's ``test_gradio_*`` tests under the WebUIs' Gradio stacks.

The main venv has no Gradio (the WebUIs pin versions that cannot share it); ``.ci/run`` makes
``.venv-gradio3`` (AUTOMATIC1111's stack) and ``.venv-gradio4`` (Forge's). A test file defines its
Gradio tests as ``test_gradio_*`` and adds one :func:`gradio_tests_test` to run them in each venv.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
HAS_GRADIO = importlib.util.find_spec("gradio") is not None


def ui_pythons() -> list[tuple[str, str]]:
    """(id, python) for each UI venv; ``LORA_TRAINER_UI_PYTHONS`` (os.pathsep-separated) overrides."""
    env = os.environ.get("LORA_TRAINER_UI_PYTHONS")
    if env:
        return [(Path(p).parent.parent.name or p, p) for p in env.split(os.pathsep) if p.strip()]
    return [(name.replace(".venv-", ""), str(REPO / name / "bin" / "python")) for name in (".venv-gradio3", ".venv-gradio4")
            if (REPO / name / "bin" / "python").exists()]


def gradio_tests_test(test_file: str):
    """A parametrized test running ``test_file``'s ``test_gradio_*`` tests under each UI venv's Gradio."""
    pythons = ui_pythons()

    @pytest.mark.parametrize("python", [p for _, p in pythons] or ["none"], ids=[i for i, _ in pythons] or ["none"])
    def test_gradio_tests_in_ui_pythons(python):
        if HAS_GRADIO and not os.environ.get("LORA_TRAINER_UI_PYTHONS"):
            pytest.skip("this interpreter has gradio: the test_gradio_* tests ran here directly")
        if python == "none":
            pytest.skip("no Python with gradio: create .venv-gradio3 / .venv-gradio4 (requirements-ui-gradio3.txt / "
                        "requirements-ui-gradio4.txt) or set LORA_TRAINER_UI_PYTHONS")
        env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", GRADIO_ANALYTICS_ENABLED="False")
        env.pop("LORA_TRAINER_UI_PYTHONS", None)
        result = subprocess.run(
            [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "test_gradio_ and not in_ui_pythons",
             str(test_file)],
            cwd=str(REPO), env=env, capture_output=True, text=True, timeout=600,
        )
        assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-3000:]
        assert " passed" in result.stdout and "skipped" not in result.stdout.splitlines()[-1], result.stdout[-2000:]

    test_gradio_tests_in_ui_pythons.__doc__ = f"Runs {Path(test_file).name}'s test_gradio_* tests under each UI venv's Gradio."
    return test_gradio_tests_in_ui_pythons
