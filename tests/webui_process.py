"""A real WebUI (AUTOMATIC1111 or Forge) started by an opt-in test, and a tiny JSON client for it.

Both WebUIs share ``launch.py``'s flags and start-up: the process runs offline with its own venv,
a fresh ``--data-dir`` and ``--api`` on a free loopback port, its console in a log file; our routes
answer once the app_started callbacks have run.
"""
from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

START_TIMEOUT = float(os.environ.get("WEBUI_START_TIMEOUT", "900"))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class WebUIProcess:
    """A running WebUI process and a tiny JSON client for it."""

    def __init__(self, process: subprocess.Popen, port: int, log_path: Path, data_dir: Path, *,
                 name: str = "WebUI", request_timeout: float = 600.0):
        self.process = process
        self.base = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self.data_dir = data_dir
        self.name = name
        self.request_timeout = request_timeout

    def log_tail(self, chars: int = 8000) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def request(self, method: str, path: str, body=None, timeout: float | None = None):
        """(status, parsed JSON or text)."""
        data = None if body is None else json.dumps(body).encode("utf-8")
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"} if data is not None else {})
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.request_timeout) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        text = raw.decode("utf-8", errors="replace")
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text

    def ok(self, method: str, path: str, body=None, timeout: float | None = None):
        status, payload = self.request(method, path, body, timeout=timeout)
        assert status == 200, (f"{method} {path} -> {status}: {str(payload)[:2000]}\n"
                               f"--- {self.name} log ---\n{self.log_tail()}")
        return payload

    def wait_started(self, timeout: float = START_TIMEOUT) -> None:
        """Until the start-up is over. /sdapi/ answers a moment before the app_started callbacks
        (where our routes are added) have run; the WebUI prints "Startup time" after them, so wait
        for our route or for that line."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"the {self.name} exited with code {self.process.returncode} while starting\n"
                            f"{self.log_tail()}")
            try:
                status, _ = self.request("GET", "/lora_trainer/v1/jobs", timeout=10)
                if status == 200 or (status == 404 and "Startup time:" in self.log_tail(10**7)):
                    return
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(2)
        pytest.fail(f"the {self.name} did not answer within {timeout:.0f} s\n{self.log_tail()}")

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        try:  # the whole process group this test started (launch.py may have children)
            os.killpg(self.process.pid, signal.SIGINT) if os.name != "nt" else self.process.terminate()
            self.process.wait(timeout=30)
        except (subprocess.TimeoutExpired, ProcessLookupError, PermissionError):
            pass
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL) if os.name != "nt" else self.process.kill()
            except (ProcessLookupError, PermissionError):
                pass
            self.process.wait(timeout=30)


@contextmanager
def running_webui(python: Path, webui_dir: Path, data_dir: Path, ckpt: Path, *, cpu_args: str,
                  name: str = "WebUI", log_name: str = "webui.log",
                  request_timeout: float = 600.0) -> Iterator[WebUIProcess]:
    """``launch.py`` of ``webui_dir`` offline on ``data_dir`` with ``ckpt``, started and with live
    previews off (their "Approx NN" would download a model on the first generation); stopped on exit.
    ``WEBUI_ARGS`` replaces ``cpu_args``; ``WEBUI_KEEP=1`` prints where the data dir and log stay."""
    port = free_port()
    args = [str(python), "launch.py", "--data-dir", str(data_dir), "--ckpt", str(ckpt), "--api", "--port", str(port),
            "--skip-prepare-environment", "--skip-version-check", "--skip-install", "--no-download-sd-model",
            "--do-not-download-clip", *shlex.split(os.environ.get("WEBUI_ARGS", cpu_args))]
    env = {k: v for k, v in os.environ.items() if k not in ("COMMANDLINE_ARGS", "PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False",
               GRADIO_SERVER_NAME="127.0.0.1",  # loopback only (no --listen)
               PYTHONUNBUFFERED="1", PYTHONIOENCODING="utf-8")
    env.setdefault("OMP_NUM_THREADS", "2")
    log_path = data_dir / log_name
    with open(log_path, "wb") as log:
        process = subprocess.Popen(args, cwd=str(webui_dir), env=env, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=(os.name != "nt"))
    ui = WebUIProcess(process, port, log_path, data_dir, name=name, request_timeout=request_timeout)
    try:
        ui.wait_started()
        ui.ok("POST", "/sdapi/v1/options", {"live_previews_enable": False})
        yield ui
    finally:
        ui.stop()
        if os.environ.get("WEBUI_KEEP"):
            print(f"\n{name} data dir kept: {data_dir} (log: {log_path})")
