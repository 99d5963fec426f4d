"""The AUTOMATIC1111 WebUI (v1.10) as a host: train on the checkpoint it has loaded.

Nothing from the WebUI is imported at module level (``modules.*`` only inside
the methods), so this file imports anywhere.

What the adapter lends (:meth:`A1111Host.lend_model`), from ``shared.sd_model``:

* UNet: ``sd_model.model.diffusion_model`` (the CompVis / sgm ``UNetModel``,
  called ``(x, timesteps, context, y)``; LoRA names come from its LDM paths).
* SD1 text encoder: the Hugging Face ``CLIPTextModel`` at
  ``cond_stage_model.wrapped.transformer`` with its raw tokenizer
  ``.wrapped.tokenizer``. Captions go through kohya's tokenisation, never
  through the WebUI's prompt parser (no emphasis, no textual inversion).
* SDXL: te1 is ``conditioner.embedders[0].wrapped.transformer`` (HF CLIP-L);
  te2 is the OpenCLIP bigG tower ``embedders[1].wrapped.model``, lent as a
  Hugging Face ``CLIPTextModelWithProjection`` built over the *same tensors*
  (views: q/k/v are row slices of the fused ``in_proj``), see
  :func:`~.webui_common.open_clip_text_encoder`. So te2 is trained as kohya
  trains it, with kohya's ``lora_te2_*`` names, at no memory cost (3 MiB for
  the transposed projection) and without touching the WebUI's OpenCLIP
  modules. SD2's OpenCLIP ViT-H is lent the same way.
* VAE: ``encode_first_stage`` + ``get_first_stage_encoding`` (a posterior
  *sample* times ``scale_factor``, as kohya caches), ``decode_first_stage``.
* Schedule: ``alphas_cumprod_original`` (the model's own), as a float64 CPU
  copy: the live ``alphas_cumprod`` may carry the WebUI's sampling options
  (zero-terminal-SNR rescale, fp16 downcast). Prediction type from
  ``parameterization`` ("v" -> v_prediction; sd_models_xl sets it for SDXL
  from the denoiser's scaling).

Before training and after it, however it ends:

* LoRAs the built-in Lora extension merged into the weights are taken out for
  the training and put back bit-for-bit afterwards
  (:func:`~.webui_common.lora_extension_unmerged`).
* Every parameter is frozen for the training; ``requires_grad``, ``.grad`` and
  ``training`` flags are given back as they were (the WebUI leaves
  ``requires_grad=True`` on its model).
* ToMe (token merging) is taken off the UNet and put back.
* The UNet gets a ``set_gradient_checkpointing`` switch for the training
  (the WebUI's UNet has none), removed after.
* ``--medvram`` / ``--medvram-sdxl``: the WebUI keeps one of UNet, text
  encoders and VAE on the GPU at a time, moving them on forward hooks of
  outer modules the trainer never calls. For the training the UNet and the
  text encoders both sit on the GPU (as in kohya; the VAE comes in only to
  encode and goes back), nothing the trainer needs is evicted, and every part
  goes back to the device it was on.
* refused with a message saying what to change: ``--lowvram`` (UNet blocks
  swapped one by one), fp8 weight storage, an active "SD Unet" replacement
  (TensorRT and the like), inpainting / instruct-pix2pix UNets, SD3 and SSD-1B.
* fp16 weights are trained as the loop does everywhere: LoRA weights in fp32,
  the forward under autocast (``mixed_precision = "fp16"`` or ``"bf16"``).

Jobs (:meth:`A1111Host.run_exclusive`) hold ``modules.call_queue.queue_lock``
(generations and model switches wait behind it), wrap the work in
``shared.state.begin(job=title)`` / ``end()``, and when ``title`` is a WebUI
task id (``task(...)``) register it with ``modules.progress`` as
``wrap_gradio_gpu_call`` does. The lock is not re-entrant: starting a job from
inside a job raises :class:`NestedJobError` instead of deadlocking. Do not
call ``run_exclusive`` from a handler that already holds the queue lock
(one wrapped in ``wrap_gradio_gpu_call``): that deadlock cannot be detected.
"""
from __future__ import annotations

import os
import sys
import threading
import traceback
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional, TypeVar

import torch

from ..models.base import DiffusionModel, TextEncoder
from ..training.progress import Progress, StopFlag
from .webui_common import (
    HostRefusal,
    block_gradient_checkpointing,
    frozen_and_restored,
    forget_cached_conds,
    lora_extension_module,
    lora_extension_unmerged,
    module_device,
    module_dtype,
    open_clip_text_encoder,
    open_clip_tokenizer,
    release_memory,
    without_token_merging,
)

T = TypeVar("T")

__all__ = ["A1111Host", "HostRefusal", "NestedJobError"]


class NestedJobError(RuntimeError):
    """A WebUI job tried to start another WebUI job from inside itself (the queue lock would deadlock)."""


# One WebUI job per process, whichever A1111Host object runs it.
_owner_lock = threading.Lock()
_job_thread: Optional[int] = None
_job_title: str = ""


def _in_job() -> bool:
    return _job_thread == threading.get_ident()


def _as_job(fn: Callable[[], T], title: str) -> T:
    """Run ``fn`` marked as the running WebUI job in this thread (what ``_in_job`` checks)."""
    global _job_thread, _job_title
    with _owner_lock:
        _job_thread, _job_title = threading.get_ident(), title
    try:
        return fn()
    finally:
        with _owner_lock:
            _job_thread, _job_title = None, ""


def _is_task_id(title: str) -> bool:
    return isinstance(title, str) and title.startswith("task(") and title.endswith(")")


def _optional_module(name: str):
    import importlib

    try:
        return importlib.import_module(name)
    except Exception:
        return None


class A1111Host:
    """The AUTOMATIC1111 WebUI host. ``log`` receives the adapter's notes (default: print)."""

    name = "a1111"

    def __init__(self, log: Optional[Callable[[str], None]] = None):
        self._log = log or (lambda line: print(f"[LoRA Trainer] {line}"))

    # ------------------------------------------------------------------ files

    def lora_dir(self) -> Path:
        """``--lora-dir`` (the Lora extension's option; default ``models/Lora``)."""
        from modules import shared

        configured = getattr(getattr(shared, "cmd_opts", None), "lora_dir", None)
        if configured:
            return Path(configured)
        paths = _optional_module("modules.paths")
        root = getattr(paths, "models_path", None) or "models"
        return Path(root) / "Lora"

    def models_dir(self) -> Path:
        """The WebUI's models folder (``modules.paths.models_path``); the WD14 taggers go under it."""
        paths = _optional_module("modules.paths")
        return Path(getattr(paths, "models_path", None) or "models")

    def refresh_loras(self) -> None:
        """Re-scan the LoRA folders so the Lora tab and ``<lora:...>`` find new files."""
        forget_cached_conds()  # a rewritten file must not meet its old text-encoder output
        networks = lora_extension_module()
        if networks is None or not hasattr(networks, "list_available_networks"):
            return
        networks.list_available_networks()

    # -------------------------------------------------------------------- jobs

    job_kind = "WebUI"  # in messages

    def run_exclusive(self, fn: Callable[[], T], *, title: str) -> T:
        """``fn`` as a WebUI job: the queue lock and ``shared.state`` held (generations and model
        switches wait), the WebUI's task queue told when ``title`` is a task id."""
        from modules import call_queue, shared

        if _in_job():
            raise NestedJobError(
                f"cannot start {self.job_kind} job {title!r} from inside the running job {_job_title!r}: the WebUI's "
                "queue lock is not re-entrant (this would wait for itself forever); queue the work instead"
            )
        task_id = title if _is_task_id(title) else None
        progress = _optional_module("modules.progress") if task_id else None
        if progress is not None and hasattr(progress, "add_task_to_queue"):
            progress.add_task_to_queue(task_id)
        with call_queue.queue_lock:
            state = shared.state
            try:
                state.begin(job=title)
                try:
                    if progress is not None and hasattr(progress, "start_task"):
                        progress.start_task(task_id)
                    return self._run_job(fn, title)
                except BaseException as exc:
                    # The traceback's finished frames still hold the training's locals (optimizer,
                    # LoRA, activations): drop them so the memory is free before the WebUI's next job.
                    traceback.clear_frames(exc.__traceback__)
                    raise
                finally:
                    if progress is not None and hasattr(progress, "finish_task"):
                        progress.finish_task(task_id)
                    state.end()
            finally:
                release_memory()  # before the lock lets the next job in

    def _run_job(self, fn: Callable[[], T], title: str) -> T:
        """Where the job's work runs: here, in the thread holding the lock (Forge: its main thread)."""
        return _as_job(fn, title)

    def report(self, event: Progress) -> None:
        """Mirror progress into ``shared.state``: the WebUI's progress bar shows
        ``sampling_step / sampling_steps`` of job 1 of 1, and ``textinfo``."""
        from modules import shared

        state = shared.state
        if event.kind == "start":
            state.job_count = 1
            state.job_no = 0
            state.sampling_steps = int(event.total_steps)
            state.sampling_step = 0
            state.textinfo = (f"Training LoRA: {event.total_steps} steps, {event.total_epochs} epochs"
                              + (f" ({event.message})" if event.message else ""))
        elif event.kind == "step":
            state.sampling_steps = int(event.total_steps)
            state.sampling_step = int(event.step)
            loss = f", loss {event.loss:.4f}" if event.loss is not None else ""
            state.textinfo = (f"Training LoRA: epoch {event.epoch}/{event.total_epochs}, "
                              f"step {event.step}/{event.total_steps}{loss}")
        elif event.kind == "epoch":
            loss = f", loss {event.loss:.4f}" if event.loss is not None else ""
            state.textinfo = f"Training LoRA: epoch {event.epoch}/{event.total_epochs} done{loss}"
        elif event.kind == "saved" and event.path:
            state.textinfo = f"Training LoRA: saved {os.path.basename(event.path)}"
        elif event.kind == "end":
            state.sampling_step = int(event.step)
            state.textinfo = f"Training LoRA: finished after {event.step} steps"
        elif event.message:
            state.textinfo = event.message

    def run_comparison(self, comparison, *, save_grid: bool = True):
        """The epoch grid through the WebUI's own X/Y/Z plot, as a job of its own."""
        from .a1111_compare import run_comparison

        return run_comparison(comparison, host=self, save_grid=save_grid)

    def render_samples(self, model: DiffusionModel, prompts, out_dir, *, prefix: str,
                       sampler: Optional[str] = None, clip_skip: Optional[int] = None) -> list:
        """Samples during training, drawn by the WebUI's own txt2img (``StableDiffusionProcessingTxt2Img``
        + ``process_images``) from inside the running training job: the queue lock is already held and is
        not taken again. The LoRA being trained is applied to the WebUI's own modules, so the WebUI's
        sampler draws through it. Each prompt's sampler is mapped to the WebUI's name
        (:meth:`SamplePrompt.webui_sampler`). Extra-network tags in a prompt are parsed out but not
        activated (``disable_extra_networks``): the Lora extension must not merge into weights being
        trained. ``process_images`` may move the model's parts (``--medvram``'s hooks) and rewrites
        ``shared.state``'s counters: both are put back. Files: ``out_dir/{prefix}_{i:02d}_{time}_{seed}.png``.
        The run's ``clip_skip`` goes in as an override of the WebUI's "Clip skip" setting for these
        images only (the WebUI puts its setting back), as kohya samples with the training's CLIP skip.
        """
        if not _in_job():
            raise RuntimeError("A1111Host.render_samples() runs inside the training job (run_exclusive)")
        from modules import shared
        from modules.processing import StableDiffusionProcessingTxt2Img, process_images

        from ..compare.prompts import DEFAULT_SAMPLER
        from ..compare.samples import DEFAULT_SEED, sample_filename, save_png

        sd_model = shared.sd_model
        parts = [getattr(sd_model, name, None) for name in ("model", "cond_stage_model", "conditioner",
                                                            "first_stage_model")]
        placed = [(m, module_device(m)) for m in parts if isinstance(m, torch.nn.Module)]
        lowvram = sys.modules.get("modules.lowvram")
        in_gpu = getattr(lowvram, "module_in_gpu", None)
        state = shared.state
        counters = {k: getattr(state, k) for k in ("job", "job_count", "job_no", "sampling_steps", "sampling_step",
                                                   "textinfo") if hasattr(state, k)}
        paths = []
        try:
            for index, prompt in enumerate(prompts):
                width, height = prompt.size
                seed = prompt.seed if prompt.seed is not None else DEFAULT_SEED
                p = StableDiffusionProcessingTxt2Img(
                    sd_model=sd_model, prompt=prompt.prompt, negative_prompt=prompt.negative_prompt or "",
                    seed=seed, steps=prompt.steps, width=width, height=height, cfg_scale=prompt.cfg_scale,
                    sampler_name=prompt.webui_sampler(sampler or DEFAULT_SAMPLER), batch_size=1, n_iter=1,
                    do_not_save_samples=True, do_not_save_grid=True,
                    override_settings={"CLIP_stop_at_last_layers": int(clip_skip)} if clip_skip else {},
                )
                p.disable_extra_networks = True
                try:
                    processed = process_images(p)
                finally:
                    if hasattr(p, "close"):
                        p.close()
                images = list(getattr(processed, "images", None) or [])
                if not images:
                    raise RuntimeError(f"the WebUI returned no image for sample {index} ({prompt.prompt!r})")
                paths.append(save_png(images[0], Path(out_dir) / sample_filename(prefix, index, seed)))
        finally:
            for module, device in placed:
                if device is not None and module_device(module) != device:
                    module.to(device)
            if lowvram is not None and hasattr(lowvram, "module_in_gpu"):
                lowvram.module_in_gpu = in_gpu
            forget_cached_conds()  # they were encoded with the LoRA being trained applied
            for key, value in counters.items():
                setattr(state, key, value)
        return paths

    def interrupt_requested(self) -> bool:
        """The WebUI's Interrupt (``state.interrupted``) or "stop after this" (``stopping_generation``)."""
        from modules import shared

        state = shared.state
        return bool(getattr(state, "interrupted", False) or getattr(state, "stopping_generation", False))

    def progress_callback(self, stop: Optional[StopFlag] = None,
                          also: Optional[Callable[[Progress], None]] = None) -> Callable[[Progress], None]:
        """A ``train(on_progress=...)`` callback: mirrors each event into the WebUI and
        turns its Interrupt button into ``stop.request()`` (the current weights are saved)."""

        def on_progress(event: Progress) -> None:
            if stop is not None and not stop.requested and self.interrupt_requested():
                stop.request(save_current=True)
            self.report(event)
            if also is not None:
                also(event)

        return on_progress

    # ------------------------------------------------------------------ model

    @contextmanager
    def lend_model(self) -> Iterator[DiffusionModel]:
        """``shared.sd_model`` as a :class:`DiffusionModel`, handed back exactly as lent.

        Must run inside :meth:`run_exclusive` (the model may only be touched under
        the WebUI's queue lock). Raises :class:`HostRefusal` for set-ups that
        cannot train, before anything is changed.
        """
        if not _in_job():
            raise RuntimeError("A1111Host.lend_model() must be used inside run_exclusive(): the WebUI's model may "
                               "only be touched while its queue lock is held")
        from modules import devices, shared

        sd_model = getattr(shared, "sd_model", None)
        if sd_model is None:
            raise HostRefusal("no checkpoint is loaded: pick one at the top of the WebUI, then start the training")
        arch = _check_trainable(sd_model, shared, devices)
        networks = lora_extension_module()
        lowvram = None
        if getattr(sd_model, "lowvram", False):
            lowvram = _optional_module("modules.lowvram")
            if lowvram is None or not hasattr(lowvram, "module_in_gpu"):
                raise HostRefusal("the model is set up for --medvram but the WebUI's lowvram module was not found; "
                                  "restart the WebUI without --medvram / --medvram-sdxl to train")
        target = getattr(devices, "device", None) or module_device(sd_model.model.diffusion_model)
        target = torch.device(target)

        model: Optional[DiffusionModel] = None
        try:
            with ExitStack() as stack:
                stack.enter_context(frozen_and_restored(sd_model))
                stack.enter_context(lora_extension_unmerged(sd_model, networks, log=self._log))
                if stack.enter_context(without_token_merging(sd_model.model.diffusion_model)):
                    self._log("token merging (ToMe) is off for the training and back on afterwards")
                stack.enter_context(block_gradient_checkpointing(sd_model.model.diffusion_model))
                medvram = None
                if lowvram is not None:
                    medvram = stack.enter_context(_MedvramResidency(sd_model, arch, lowvram, target))
                    self._log("--medvram: the UNet and the text encoders stay on the GPU while training; "
                              "the VAE comes in only to encode")
                model = _diffusion_model(sd_model, arch, target, medvram, log=self._log)
                yield model
        finally:
            model = None
            release_memory(target)


# ------------------------------------------------------------------ checks


def _arch(sd_model) -> str:
    if getattr(sd_model, "is_sd3", False):
        raise HostRefusal("SD3 models are not supported; load an SD1.x, SD2 or SDXL checkpoint to train")
    if getattr(sd_model, "is_ssd", False):
        raise HostRefusal("SSD-1B (distilled SDXL) is not supported; load an SD1.x, SD2 or SDXL checkpoint to train")
    if getattr(sd_model, "is_sdxl", False):
        return "sdxl"
    if getattr(sd_model, "is_sd2", False):
        return "sd2"
    if getattr(sd_model, "is_sd1", False):
        return "sd1"
    raise HostRefusal(f"the loaded model ({type(sd_model).__name__}) is not an SD1.x, SD2 or SDXL checkpoint")


def _check_trainable(sd_model, shared, devices) -> str:
    """The architecture, or a :class:`HostRefusal` naming what to change."""
    cmd_opts = getattr(shared, "cmd_opts", None)
    if getattr(cmd_opts, "lowvram", False):
        raise HostRefusal(
            "the WebUI runs with --lowvram, which moves every UNet block between CPU and GPU on each call; "
            "LoRA training cannot work that way. Restart the WebUI without --lowvram (--medvram or "
            "--medvram-sdxl work) to train"
        )
    float8 = [dt for dt in (getattr(torch, n, None) for n in ("float8_e4m3fn", "float8_e5m2")) if dt is not None]
    unet = getattr(getattr(sd_model, "model", None), "diffusion_model", None)
    if unet is None:
        raise HostRefusal("the loaded model has no UNet at model.diffusion_model; it cannot be trained here")
    if getattr(devices, "fp8", False) or any(p.dtype in float8 for p in sd_model.parameters()):
        raise HostRefusal(
            "the model's weights are stored in fp8 (Settings > Optimizations > FP8 weight); LoRA training needs "
            "fp16/bf16/fp32 weights. Set FP8 weight to Disable, apply (the checkpoint reloads), and start again"
        )
    arch = _arch(sd_model)
    try:
        in_channels = int(unet.input_blocks[0][0].in_channels)
    except Exception:
        in_channels = 4
    if getattr(sd_model, "is_sdxl_inpaint", False) or in_channels != 4:
        raise HostRefusal(f"the loaded UNet takes {in_channels} input channels (an inpainting or instruct-pix2pix "
                          "model); load a regular SD1.x, SD2 or SDXL checkpoint to train a LoRA")
    sd_unet = sys.modules.get("modules.sd_unet")
    if sd_unet is not None and getattr(sd_unet, "current_unet", None) is not None:
        raise HostRefusal(
            "an SD Unet replacement (e.g. TensorRT) is active and runs instead of the model's UNet; set "
            "Settings > SD Unet to None, then start the training"
        )
    return arch


# --------------------------------------------------------------------- medvram


class _MedvramResidency:
    """``--medvram``: keep what training needs on the GPU, and put everything back after.

    The WebUI's lowvram hooks sit on outer modules (``sd_model.model``, the
    conditioner / cond stage, the VAE's encode/decode) and evict whatever
    ``lowvram.module_in_gpu`` names when another part is needed. For the
    training the UNet and the text encoders are moved to the GPU by hand with
    ``module_in_gpu`` cleared, so no hook ever evicts them; the VAE goes to the
    CPU and comes in only around each encode (:meth:`vae_call`). On exit each
    part goes back to the device it was on and ``module_in_gpu`` is what it was.
    """

    def __init__(self, sd_model, arch: str, lowvram, device: torch.device):
        self.lowvram = lowvram
        self.device = device
        self.vae = sd_model.first_stage_model
        text = sd_model.conditioner if arch == "sdxl" else sd_model.cond_stage_model
        self.resident = [sd_model.model, text]
        self.before = [(m, module_device(m)) for m in self.resident + [self.vae]]
        self.previous = getattr(lowvram, "module_in_gpu", None)

    def __enter__(self) -> "_MedvramResidency":
        try:
            self.lowvram.module_in_gpu = None
            self.vae.to(torch.device("cpu"))
            for module in self.resident:
                module.to(self.device)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        for module, device in self.before:
            if device is not None:
                module.to(device)
        self.lowvram.module_in_gpu = self.previous

    def vae_call(self, fn: Callable[[], torch.Tensor]) -> torch.Tensor:
        self.lowvram.module_in_gpu = None  # nothing for the VAE hook to evict
        self.vae.to(self.device)
        try:
            return fn()
        finally:
            self.vae.to(torch.device("cpu"))
            self.lowvram.module_in_gpu = None


# ------------------------------------------------------------------ the model


def _checkpoint_identity(sd_model) -> dict:
    """File name, the WebUI's legacy 8-hex hash (kohya's ss_sd_model_hash) and the sha256
    the WebUI computed when it loaded the file (ss_new_sd_model_hash), when known."""
    info = getattr(sd_model, "sd_checkpoint_info", None)
    filename = getattr(info, "filename", None) or getattr(sd_model, "sd_model_checkpoint", None) or ""
    legacy = getattr(info, "hash", None) or ""
    sha256 = getattr(info, "sha256", None) or ""
    out = {"name": os.path.basename(str(filename)) if filename else "",
           "model_hash": "" if legacy == "NOFILE" else str(legacy)}
    if "model_sha256" in getattr(DiffusionModel, "__dataclass_fields__", {}):
        out["model_sha256"] = str(sha256)
    return out


def _alphas_cumprod(sd_model, log) -> torch.Tensor:
    live = getattr(sd_model, "alphas_cumprod", None)
    original = getattr(sd_model, "alphas_cumprod_original", None)
    chosen = original if isinstance(original, torch.Tensor) else live
    if not isinstance(chosen, torch.Tensor) or chosen.numel() != 1000:
        raise HostRefusal("the loaded model has no 1000-step alphas_cumprod schedule; it cannot be trained here")
    schedule = chosen.detach().to(device="cpu", dtype=torch.float64).clone().reshape(1000)
    if isinstance(live, torch.Tensor) and live is not chosen and live.numel() == 1000:
        if not torch.equal(live.detach().to("cpu", torch.float64).reshape(1000), schedule):
            log("the WebUI samples with a modified noise schedule (zero terminal SNR or fp16 alphas); "
                "training uses the model's own schedule, as kohya does")
    return schedule


def _text_encoders(sd_model, arch: str) -> list[TextEncoder]:
    if arch == "sdxl":
        embedders = list(sd_model.conditioner.embedders)
        hf = [e for e in embedders if hasattr(getattr(e, "wrapped", None), "transformer")]
        oc = [e for e in embedders if hasattr(getattr(getattr(e, "wrapped", None), "model", None), "transformer")]
        if len(hf) != 1 or len(oc) != 1:
            raise HostRefusal("the SDXL conditioner does not hold one CLIP-L and one OpenCLIP text encoder")
        te1 = hf[0].wrapped
        return [
            TextEncoder(name="te1", model=te1.transformer, tokenizer=te1.tokenizer,
                        pad_token_id=te1.tokenizer.pad_token_id),
            open_clip_text_encoder(oc[0].wrapped.model, "sdxl", open_clip_tokenizer()),
        ]
    cond = sd_model.cond_stage_model
    wrapped = getattr(cond, "wrapped", cond)
    if arch == "sd2":
        return [open_clip_text_encoder(wrapped.model, "sd2", open_clip_tokenizer())]
    return [TextEncoder(name="te", model=wrapped.transformer, tokenizer=wrapped.tokenizer,
                        pad_token_id=wrapped.tokenizer.pad_token_id)]


def _diffusion_model(sd_model, arch: str, device: torch.device, medvram: Optional[_MedvramResidency],
                     log) -> DiffusionModel:
    unet = sd_model.model.diffusion_model
    vae = sd_model.first_stage_model
    vae_dtype = module_dtype(vae)

    @torch.no_grad()
    def vae_encode(images: torch.Tensor) -> torch.Tensor:
        def run():
            x = images.to(device=device, dtype=vae_dtype)
            return sd_model.get_first_stage_encoding(sd_model.encode_first_stage(x))
        return medvram.vae_call(run) if medvram is not None else run()

    @torch.no_grad()
    def vae_decode(latents: torch.Tensor) -> torch.Tensor:
        def run():
            return sd_model.decode_first_stage(latents.to(device=device, dtype=vae_dtype))
        return medvram.vae_call(run) if medvram is not None else run()

    prediction = "v_prediction" if getattr(sd_model, "parameterization", "eps") == "v" else "epsilon"
    return DiffusionModel(
        arch=arch,
        prediction_type=prediction,
        unet=unet,
        text_encoders=_text_encoders(sd_model, arch),
        alphas_cumprod=_alphas_cumprod(sd_model, log),
        vae_encode=vae_encode,
        vae_decode=vae_decode,
        vae_scale_factor=float(sd_model.scale_factor),
        device=module_device(unet) or device,
        dtype=module_dtype(unet),
        vae=vae,
        **_checkpoint_identity(sd_model),
    )
