"""Progress events and cancellation, shared by the CLI bar, the tab and the API.

The loop only emits :class:`Progress` records to a callable and polls a
:class:`StopFlag`; how they are shown (tqdm, Gradio, WebUI ``shared.state``)
is the caller's business.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional


@dataclass
class Progress:
    kind: str  # "start", "step", "epoch", "saved", "sample", "message", "end"
    step: int = 0
    total_steps: int = 0
    epoch: int = 0
    total_epochs: int = 0
    loss: Optional[float] = None  # running mean over the epoch, as kohya's bar shows
    step_loss: Optional[float] = None  # this optimizer step's own loss (for loss charts)
    lr: dict[str, float] = field(default_factory=dict)  # "unet", "te", and "d*lr" for adaptive optimizers
    elapsed: float = 0.0
    eta: Optional[float] = None
    path: Optional[str] = None  # the file written, for kind == "saved" and "sample"
    message: str = ""  # for kind == "sample": the sample's prompt
    peak_memory: Optional[int] = None  # bytes


ProgressCallback = Callable[[Progress], None]


class StopFlag:
    """Asks the loop to stop after the current optimizer step.

    ``save_current`` says whether the interrupted run should also write its
    current weights (the tab offers it); saved epochs are always kept.
    """

    def __init__(self):
        self._event = threading.Event()
        self.save_current = True

    def request(self, save_current: bool = True) -> None:
        self.save_current = save_current
        self._event.set()

    @property
    def requested(self) -> bool:
        return self._event.is_set()


class Timer:
    def __init__(self):
        self.start = time.perf_counter()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def eta(self, done: int, total: int) -> Optional[float]:
        if done <= 0:
            return None
        return self.elapsed / done * max(total - done, 0)
