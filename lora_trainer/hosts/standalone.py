"""The standalone host: a checkpoint file loaded once, lent to every job.

It behaves like a WebUI that has a model loaded: the model is loaded lazily on
the first lend and kept between jobs (the training loop hands it back exactly
as lent), jobs run one at a time under a process-wide lock, and there is no
progress display or Interrupt button of its own.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional, TypeVar

from ..models.base import DiffusionModel
from ..training.progress import Progress

T = TypeVar("T")

# One GPU job at a time in this process, whichever host object starts it.
_JOB_LOCK = threading.Lock()
_job_owner: Optional[int] = None  # thread id holding _JOB_LOCK
_job_title: str = ""


class ReentrantJobError(RuntimeError):
    """A host job tried to start another host job from inside itself."""


def _resolve_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class StandaloneHost:
    name = "standalone"

    def __init__(self, checkpoint_path, lora_dir, device: str = "auto", dtype=None,
                 log: Optional[Callable[[str], None]] = None):
        """``dtype`` is the dtype the frozen base weights are loaded in (default float32,
        as the CLI uses without mixed precision); ``log`` receives saved-file and
        message events (default: none)."""
        self.checkpoint_path = Path(checkpoint_path)
        self._lora_dir = Path(lora_dir)
        self.device = device
        self.dtype = dtype
        self.log = log
        self._model: Optional[DiffusionModel] = None
        self._load_lock = threading.Lock()

    # -- Host protocol ---------------------------------------------------------

    def lora_dir(self) -> Path:
        return self._lora_dir

    @property
    def model_loaded(self) -> bool:
        return self._model is not None

    def _load(self) -> DiffusionModel:
        with self._load_lock:
            if self._model is None:
                import torch

                from ..models.standalone import load_checkpoint

                self._model = load_checkpoint(
                    self.checkpoint_path,
                    device=_resolve_device(self.device),
                    dtype=self.dtype if self.dtype is not None else torch.float32,
                )
                if self.log:
                    self.log(f"model: {self._model.name} ({self._model.arch}, {self._model.prediction_type}) "
                             f"on {self._model.device}")
            return self._model

    @contextmanager
    def lend_model(self) -> Iterator[DiffusionModel]:
        # The loop restores the model's weights and flags itself (host_state); the
        # host keeps it for the next job, as a WebUI keeps its loaded checkpoint.
        yield self._load()

    def run_exclusive(self, fn: Callable[[], T], *, title: str) -> T:
        global _job_owner, _job_title
        me = threading.get_ident()
        if _job_owner == me:
            raise ReentrantJobError(
                f"cannot start host job {title!r} from inside the running job {_job_title!r}: "
                "host jobs are not re-entrant (queue it instead)"
            )
        with _JOB_LOCK:
            _job_owner, _job_title = me, title
            try:
                return fn()
            finally:
                _job_owner, _job_title = None, ""

    def report(self, event: Progress) -> None:
        if self.log is None:
            return
        if event.kind == "saved" and event.path:
            self.log(f"saved {event.path}")
        elif event.kind == "sample" and event.path:
            self.log(f"sample {event.path}")
        elif event.kind == "message" and event.message:
            self.log(event.message)

    def interrupt_requested(self) -> bool:
        return False

    def refresh_loras(self) -> None:
        return None

    def run_comparison(self, comparison, *, save_grid: bool = True, **options):
        """The epoch grid drawn by a diffusers pipeline over this host's checkpoint, as a job of this host.
        ``options`` go to :func:`lora_trainer.compare.headless.run_comparison` (``out_dir``, ``clip_skip``,
        ``log``); the device is this host's."""
        from ..compare.headless import run_comparison

        options.setdefault("device", str(_resolve_device(self.device)))
        options.setdefault("log", self.log or (lambda _line: None))
        return run_comparison(comparison, checkpoint_path=self.checkpoint_path, host=self, save_grid=save_grid,
                              **options)

