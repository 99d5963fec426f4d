"""The training queue: jobs submitted from the tab or the API run one after another.

A :class:`JobManager` owns one worker thread. Each job runs as the host's own
GPU job (``host.run_exclusive``) on the model the host lends, with progress
mirrored into a JSON-able status dict (what the tab polls and the API returns)
and into the host's progress display. The queue — queued jobs' configs and the
finished jobs' summaries — is written to ``queue_file`` after every change of
state, so it survives a page reload or a WebUI restart; a job that was running
when the process died comes back as ``interrupted`` (its saved epochs are on
disk), queued jobs come back queued.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import threading
import time
import traceback
import uuid
from collections import deque
from pathlib import Path
from typing import Any, Callable, Optional

from .config import ConfigError, TrainConfig, from_dict
from .training.progress import Progress, StopFlag

QUEUE_FILE_VERSION = 1
STATES = ("queued", "running", "done", "failed", "interrupted", "cancelled")
FINISHED = ("done", "failed", "interrupted", "cancelled")
LOG_LINES = 200  # per job, the last lines the trainer printed
SAMPLES_KEPT = 64  # per job, the latest sample images listed in its status


def _now() -> float:
    return time.time()


def _new_status(job_id: str, config: TrainConfig) -> dict[str, Any]:
    return {
        "id": job_id,
        "name": config.output_name or "last",  # kohya's file name without output_name
        "state": "queued",
        "step": 0,
        "total_steps": 0,
        "epoch": 0,
        "total_epochs": 0,
        "loss": None,
        "lr": {},
        "eta": None,
        "elapsed": 0.0,
        "files": [],
        "samples": [],  # {"path", "epoch", "step", "prompt"}, oldest first, the last SAMPLES_KEPT
        "message": "",
        "losses": [],
        "peak_memory": None,
        "config": config.to_dict(),
        "created_at": _now(),
        "started_at": None,
        "finished_at": None,
        "log": [],
    }


def error_message(exc: BaseException) -> str:
    """One clear message for a failed job: the exception's own text, no traceback."""
    from .dataset import DatasetError
    from .training.loop import TrainingError

    text = str(exc).strip()
    if _is_out_of_memory(exc):
        first = text.splitlines()[0] if text else ""
        return ("out of GPU memory: lower train_batch_size or resolution, enable gradient_checkpointing and "
                "cache_latents, or use mixed_precision bf16/fp16" + (f" ({first})" if first else ""))
    if isinstance(exc, (ConfigError, DatasetError, TrainingError)):
        return text
    if isinstance(exc, FileNotFoundError):
        return text or "a file was not found"
    if isinstance(exc, ImportError):
        return text or f"a required package is missing ({exc.name})"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _is_out_of_memory(exc: BaseException) -> bool:
    try:
        import torch

        if isinstance(exc, torch.OutOfMemoryError):
            return True
    except (ImportError, AttributeError):  # pragma: no cover - older torch
        pass
    return isinstance(exc, (RuntimeError, MemoryError)) and "out of memory" in str(exc).lower()


class JobManager:
    """Queue of training jobs on one host.

    ``autostart`` (default True) starts the worker at construction, so jobs
    restored from ``queue_file`` continue; pass False and call :meth:`start`
    when the host is ready (a later :meth:`submit` also starts it).
    """

    def __init__(self, host, queue_file: Optional[Path] = None, log: Callable[[str], None] = print,
                 *, autostart: bool = True, max_history: int = 100):
        self.host = host
        self.queue_file = Path(queue_file) if queue_file is not None else None
        self.log = log
        self.max_history = max_history
        self._cond = threading.Condition(threading.RLock())
        self._jobs: dict[str, dict[str, Any]] = {}  # insertion order = submission order
        self._queue: deque[str] = deque()
        self._running: Optional[str] = None
        self._flag: Optional[StopFlag] = None
        self._worker: Optional[threading.Thread] = None
        self._closed = False
        self._restore()
        if autostart and self._queue:
            self.start()

    # -- public API ------------------------------------------------------------------

    def submit(self, config: TrainConfig) -> str:
        """Queue ``config``; returns the job id. An empty ``output_dir`` becomes the host's LoRA folder."""
        if not isinstance(config, TrainConfig):
            raise TypeError(f"submit() takes a TrainConfig (build one with config.from_dict), got {type(config).__name__}")
        if not config.output_dir:
            config = dataclasses.replace(config, output_dir=str(self.host.lora_dir()))
        job_id = uuid.uuid4().hex[:12]
        with self._cond:
            self._jobs[job_id] = _new_status(job_id, config)
            self._queue.append(job_id)
            self._persist()
            self._cond.notify_all()
        self.start()
        return job_id

    def status(self, job_id: Optional[str] = None) -> dict[str, Any]:
        """A job's status; without an id the running job, else the last one (finished, then queued)."""
        with self._cond:
            if job_id is not None:
                job = self._jobs.get(job_id)
            elif self._running is not None:
                job = self._jobs[self._running]
            else:
                job = self._last_job()
            return self._snapshot(job) if job is not None else {}

    def jobs(self) -> list[dict[str, Any]]:
        with self._cond:
            return [self._snapshot(job) for job in self._jobs.values()]

    def interrupt(self, save_current: bool = True) -> bool:
        """Stop the running job after its current step; saved epochs are kept and, with
        ``save_current``, the current weights are written too. False when nothing runs."""
        with self._cond:
            if self._running is None or self._flag is None:
                return False
            self._flag.request(save_current=save_current)
            self._jobs[self._running]["message"] = "interrupting after the current step"
            return True

    def cancel(self, job_id: str) -> bool:
        """Remove a queued job (a running one is stopped with :meth:`interrupt`)."""
        with self._cond:
            job = self._jobs.get(job_id)
            if job is None or job["state"] != "queued":
                return False
            try:
                self._queue.remove(job_id)
            except ValueError:
                pass
            job["state"] = "cancelled"
            job["finished_at"] = _now()
            self._persist()
            self._cond.notify_all()
            return True

    def wait(self, job_id: str, timeout: Optional[float] = None) -> dict[str, Any]:
        """Block until the job has finished (or ``timeout`` seconds passed); returns its status."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                job = self._jobs.get(job_id)
                if job is None:
                    return {}
                if job["state"] in FINISHED:
                    return self._snapshot(job)
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return self._snapshot(job)
                self._cond.wait(timeout=remaining if remaining is not None else 1.0)

    # -- worker ----------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker thread (idempotent)."""
        with self._cond:
            if self._closed or (self._worker is not None and self._worker.is_alive()):
                return
            self._worker = threading.Thread(target=self._work, name="lora-trainer-jobs", daemon=True)
            self._worker.start()

    def close(self, timeout: Optional[float] = None) -> None:
        """Stop the worker after the running job (interrupting it, keeping its files)."""
        with self._cond:
            self._closed = True
            if self._flag is not None:
                self._flag.request(save_current=True)
            self._cond.notify_all()
            worker = self._worker
        if worker is not None and worker is not threading.current_thread():
            worker.join(timeout)

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                job_id = self._queue.popleft()
                job = self._jobs[job_id]
                flag = StopFlag()
                self._running, self._flag = job_id, flag
                job.update(state="running", started_at=_now(), message="")
                self._persist()
                self._cond.notify_all()
            try:
                self._run(job_id, flag)
            except BaseException as exc:  # the worker must survive anything a job does
                self._finish(job_id, "failed", error_message(exc))
                self.log(f"job {job_id}: unexpected error\n{traceback.format_exc()}")

    def _run(self, job_id: str, flag: StopFlag) -> None:
        from .dataset import DatasetError
        from .training.loop import TrainingError, train

        with self._cond:
            config_dict = copy.deepcopy(self._jobs[job_id]["config"])
            name = self._jobs[job_id]["name"]

        def job_log(line: str) -> None:
            with self._cond:
                lines = self._jobs[job_id]["log"]
                lines.extend(str(line).splitlines() or [""])
                del lines[:-LOG_LINES]
            for part in str(line).splitlines() or [""]:
                self.log(f"[{name}] {part}")

        def on_progress(event: Progress) -> None:
            try:
                if not flag.requested and self.host.interrupt_requested():
                    flag.request(save_current=True)
            except Exception as exc:  # a host hiccup must not end the training
                job_log(f"warning: host interrupt check failed: {exc}")
            self._on_event(job_id, event)
            try:
                self.host.report(event)
            except Exception as exc:
                job_log(f"warning: host progress display failed: {exc}")

        def job():
            with self.host.lend_model() as model:
                return train(config, model, on_progress=on_progress, stop=flag, log=job_log, host=self.host)

        result = None
        try:
            config, warnings = from_dict(config_dict)  # re-checked: files may have changed while queued
            for warning in warnings:
                job_log(f"warning: {warning}")
            result = self.host.run_exclusive(job, title=f"Training LoRA {name}")
        except (ConfigError, DatasetError, TrainingError, FileNotFoundError, ImportError, ValueError,
                RuntimeError, MemoryError) as exc:
            message = error_message(exc)
            job_log(f"error: {message}")
            if not isinstance(exc, (ConfigError, DatasetError)):
                self.log(f"job {job_id}: {type(exc).__name__}\n{traceback.format_exc()}")
            self._finish(job_id, "failed", message)
            self._refresh_loras(job_id)
            return

        files = [str(p) for p in result.files]
        if result.interrupted:
            message = f"interrupted at step {result.steps} (epoch {result.epochs}); saved files kept"
            state = "interrupted"
        else:
            message = ""
            state = "done"
        self._finish(job_id, state, message, files=files, losses=list(result.losses),
                     peak_memory=result.peak_memory, step=result.steps)
        self._refresh_loras(job_id)

    def _refresh_loras(self, job_id: str) -> None:
        with self._cond:
            wrote = bool(self._jobs[job_id]["files"])
        if wrote:
            try:
                self.host.refresh_loras()
            except Exception as exc:
                self.log(f"job {job_id}: could not refresh the LoRA list: {exc}")

    def _on_event(self, job_id: str, event: Progress) -> None:
        with self._cond:
            job = self._jobs[job_id]
            if event.kind == "start":
                job.update(total_steps=event.total_steps, total_epochs=event.total_epochs)
            elif event.kind == "step":
                job.update(step=event.step, total_steps=event.total_steps, epoch=event.epoch,
                           total_epochs=event.total_epochs, loss=event.loss, lr=dict(event.lr), eta=event.eta,
                           peak_memory=event.peak_memory)
                if event.step_loss is not None:
                    job["losses"].append(event.step_loss)
            elif event.kind == "epoch":
                job.update(epoch=event.epoch, loss=event.loss if event.loss is not None else job["loss"])
                self._persist()  # once per epoch: a restart then shows how far the job got
            elif event.kind == "saved" and event.path:
                job["files"] = [f for f in job["files"] if Path(f).exists() and f != event.path] + [event.path]
                self._persist()
            elif event.kind == "sample" and event.path:
                job["samples"].append({"path": event.path, "epoch": event.epoch, "step": event.step,
                                       "prompt": event.message})
                del job["samples"][:-SAMPLES_KEPT]
            elif event.kind == "end":
                if event.peak_memory is not None:
                    job["peak_memory"] = event.peak_memory
            elif event.kind == "message" and event.message:
                job["log"].append(event.message)
                del job["log"][:-LOG_LINES]
            self._cond.notify_all()

    def _finish(self, job_id: str, state: str, message: str, **fields) -> None:
        with self._cond:
            job = self._jobs[job_id]
            files = fields.pop("files", None)
            if files is not None:
                seen = [f for f in job["files"] if Path(f).exists() and f not in files]
                job["files"] = seen + [f for f in files if Path(f).exists()]
            else:
                job["files"] = [f for f in job["files"] if Path(f).exists()]
            for key, value in fields.items():
                if value is not None:
                    job[key] = value
            job.update(state=state, message=message, finished_at=_now(), eta=None)
            if job["started_at"] is not None:
                job["elapsed"] = job["finished_at"] - job["started_at"]
            if self._running == job_id:
                self._running, self._flag = None, None
            self._trim_history()
            self._persist()
            self._cond.notify_all()

    # -- views -------------------------------------------------------------------------

    def _last_job(self) -> Optional[dict[str, Any]]:
        finished = [j for j in self._jobs.values() if j["state"] in FINISHED]
        if finished:
            return max(finished, key=lambda j: (j["finished_at"] or 0.0, j["created_at"]))
        if self._queue:
            return self._jobs[self._queue[0]]
        return None

    def _snapshot(self, job: dict[str, Any]) -> dict[str, Any]:
        out = copy.deepcopy(job)
        if out["state"] == "running" and out["started_at"] is not None:
            out["elapsed"] = _now() - out["started_at"]
        return out

    # -- persistence -------------------------------------------------------------------

    def _trim_history(self) -> None:
        finished = [k for k, j in self._jobs.items() if j["state"] in FINISHED]
        for key in finished[: max(len(finished) - self.max_history, 0)]:
            del self._jobs[key]

    def _persist(self) -> None:
        if self.queue_file is None:
            return
        from .networks.io import write_atomic

        data = {"version": QUEUE_FILE_VERSION, "jobs": list(self._jobs.values())}
        try:
            self.queue_file.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.queue_file, json.dumps(data, indent=1).encode("utf-8"))
        except OSError as exc:
            self.log(f"warning: could not save the training queue to {self.queue_file}: {exc}")

    def _restore(self) -> None:
        if self.queue_file is None or not self.queue_file.exists():
            return
        try:
            data = json.loads(self.queue_file.read_text(encoding="utf-8"))
            jobs = data["jobs"]
            if not isinstance(jobs, list):
                raise ValueError("'jobs' is not a list")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            backup = self.queue_file.with_name(self.queue_file.name + ".unreadable")
            try:
                self.queue_file.replace(backup)
            except OSError:
                backup = self.queue_file
            self.log(f"warning: the training queue file {self.queue_file} could not be read ({exc}); "
                     f"starting with an empty queue (old file kept as {backup})")
            return
        template = _new_status("", TrainConfig())
        for saved in jobs:
            if not isinstance(saved, dict) or not saved.get("id") or saved.get("state") not in STATES:
                continue
            job = {**copy.deepcopy(template), **saved}
            if job["state"] == "running":
                job.update(state="interrupted", finished_at=job.get("finished_at") or _now(), eta=None,
                           message="the process stopped during this job (WebUI restart or crash); "
                                   "the files it saved before that are kept")
                job["files"] = [f for f in job["files"] if Path(f).exists()]
            self._jobs[job["id"]] = job
            if job["state"] == "queued":
                self._queue.append(job["id"])
        self._persist()
