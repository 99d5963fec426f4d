"""What a host (AUTOMATIC1111, Forge, standalone) provides to the core.

A host lends its loaded model as a :class:`~lora_trainer.models.base.DiffusionModel`
and takes it back untouched, runs a training as one of its own GPU jobs, mirrors
progress into its own progress display, and tells where LoRA files go. The core
never imports host modules; each adapter in this package translates.
"""
from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import Callable, Protocol, TypeVar, runtime_checkable

from ..models.base import DiffusionModel
from ..training.progress import Progress

T = TypeVar("T")


@runtime_checkable
class Host(Protocol):
    name: str  # "standalone", "a1111", "forge"

    def lora_dir(self) -> Path:
        """Where finished LoRA files go (the WebUI's --lora-dir, default models/Lora)."""
        ...

    def lend_model(self) -> AbstractContextManager[DiffusionModel]:
        """The host's loaded model for one training. On exit — however the block
        ends — the host model is exactly as before: module tree, parameters
        bit-for-bit, requires_grad and train/eval flags, dtypes and devices."""
        ...

    def run_exclusive(self, fn: Callable[[], T], *, title: str) -> T:
        """Run ``fn`` as the host's GPU job (A1111: under the queue lock with
        ``shared.state`` begun/ended; standalone: under a process-wide lock).
        Not re-entrant: ``fn`` must not start another host job."""
        ...

    def report(self, event: Progress) -> None:
        """Mirror a progress event into the host's own progress display."""
        ...

    def interrupt_requested(self) -> bool:
        """True when the host's own Interrupt button was pressed."""
        ...

    def refresh_loras(self) -> None:
        """Make newly written LoRA files visible (the Lora extra-networks tab)."""
        ...


# Optional capabilities. The tab and the CLI look them up with getattr and say
# plainly when a host lacks one.
#
#   run_comparison(comparison: compare.xyz.Comparison, *, save_grid: bool = True)
#       -> compare.result.ComparisonResult
#       Draw the epoch grid as a host job of its own (A1111/Forge: the WebUI's X/Y/Z
#       plot; standalone: a diffusers pipeline). Never from inside a training job.
#
#   render_samples(model: DiffusionModel, prompts: list[compare.prompts.SamplePrompt],
#                  out_dir: Path, *, prefix: str, sampler: str, clip_skip: Optional[int]) -> list[Path]
#       Called by the training loop from inside the training job, with the network
#       applied to ``model``: render each prompt with the host's own sampler and save
#       PNGs under ``out_dir``. ``sampler`` is the run's kohya sample_sampler (a prompt's
#       ``--ss`` wins) and ``clip_skip`` the run's (kohya samples with the training's).
#       Must leave ``model`` as it found it (train/eval flags, RNG state).
