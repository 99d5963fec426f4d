"""Samples during training: when to render them, and rendering them without disturbing the run.

kohya's options and timing (``train_util.sample_images_common``):

* ``sample_at_first``: before the first step (files ``NAME_e000000_...``);
* ``sample_every_n_epochs = N``: after every N-th epoch, the last included (``NAME_e000004_...``);
  it wins over ``sample_every_n_steps``;
* ``sample_every_n_steps = N``: after every N-th optimizer step (``NAME_000500_...``);
* 0 or less turns an option off; the prompts come from ``sample_prompts``.

The host draws the images when it has a sampler of its own (``host.render_samples``,
see :mod:`lora_trainer.hosts.base`); otherwise :mod:`lora_trainer.compare.samples` does.
Either way the LoRA is applied, gradients are off, every module is in eval mode and
goes back to its own train/eval flag afterwards, schedule-free optimizers show their
eval weights, and the python / torch / CUDA / numpy RNG states are put back, so a run
with samples trains exactly the same weights as one without. A sample that fails is
reported and the training goes on.
"""
from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Callable, Optional

import torch

from .host_state import _rng_states, _set_rng_states
from .progress import Progress


class TrainingSamples:
    def __init__(self, config, model, network, *, host=None, emit: Callable[[Progress], None] = lambda _p: None,
                 log: Callable[[str], None] = print, v_prediction: Optional[bool] = None,
                 autocast_dtype: Optional[torch.dtype] = None, around: Optional[Callable] = None):
        from ..compare import samples

        self.config = config
        self.model = model
        self.network = network
        self.host = host
        self.emit = emit
        self.log = log
        self.v_prediction = v_prediction
        self.autocast_dtype = autocast_dtype
        self.around = around or nullcontext
        self.every_epochs = config.sample_every_n_epochs if (config.sample_every_n_epochs or 0) > 0 else None
        self.every_steps = config.sample_every_n_steps if (config.sample_every_n_steps or 0) > 0 else None
        self.at_first = bool(config.sample_at_first)
        wanted = self.at_first or self.every_epochs or self.every_steps
        self.prompts = []
        if wanted and config.sample_prompts:
            from ..config import read_sample_prompts

            self.prompts = samples.with_defaults(read_sample_prompts(config.sample_prompts),
                                                 sampler=config.sample_sampler, seed=samples.DEFAULT_SEED)
        self.out_dir = Path(config.output_dir) / "sample"

    @property
    def active(self) -> bool:
        return bool(self.prompts)

    # -- kohya's moments --------------------------------------------------------------

    def at_start(self) -> None:
        if self.active and self.at_first:
            self._render(epoch=0, step=0, named_epoch=0)

    def after_step(self, epoch: int, step: int) -> None:
        if self.active and self.every_epochs is None and self.every_steps and step % self.every_steps == 0:
            self._render(epoch=epoch, step=step, named_epoch=None)

    def after_epoch(self, epoch: int, step: int) -> None:
        if self.active and self.every_epochs and epoch % self.every_epochs == 0:
            self._render(epoch=epoch, step=step, named_epoch=epoch)

    # -- rendering ------------------------------------------------------------------------

    def _roots(self):
        roots = [self.model.unet] + [te.model for te in self.model.text_encoders] + [self.network]
        if self.model.vae is not None:
            roots.append(self.model.vae)
        return roots

    def _render(self, *, epoch: int, step: int, named_epoch: Optional[int]) -> None:
        from ..compare import samples

        prefix = samples.file_prefix(self.config.output_name, epoch=named_epoch, step=step)
        when = f"epoch {epoch}" if named_epoch is not None else f"step {step}"
        self.log(f"rendering {len(self.prompts)} sample(s) at {when} into {self.out_dir}")
        rng = _rng_states()
        flags = [(m, m.training) for root in self._roots() for m in root.modules()]
        paths: list[Path] = []
        try:
            with torch.no_grad(), self.around():
                for root in self._roots():
                    root.eval()
                render = getattr(self.host, "render_samples", None) if self.host is not None else None
                if render is not None:
                    paths = list(render(self.model, list(self.prompts), self.out_dir, prefix=prefix,
                                        sampler=self.config.sample_sampler, clip_skip=self.config.clip_skip) or [])
                else:
                    paths = samples.render_samples(
                        self.model, self.prompts, self.out_dir, prefix=prefix, sampler=self.config.sample_sampler,
                        clip_skip=self.config.clip_skip, v_prediction=self.v_prediction,
                        autocast_dtype=self.autocast_dtype, log=self.log)
        except Exception as exc:  # a sample must not cost the training
            self.log(f"warning: samples at {when} failed, training goes on: {type(exc).__name__}: {exc}")
        finally:
            for module, training in flags:
                module.training = training
            _set_rng_states(rng)
            if self.model.device.type == "cuda":
                torch.cuda.empty_cache()
        for path, prompt in zip(paths, self.prompts):
            self.emit(Progress("sample", step=step, epoch=epoch, path=str(path), message=prompt.prompt))
