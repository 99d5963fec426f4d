"""Forge (lllyasviel/stable-diffusion-webui-forge, the 2024 ``backend`` rewrite) as a host.

Nothing from Forge is imported at module level (``modules.*``, ``backend.*`` and
``modules_forge.*`` only inside the methods), so this file imports anywhere.

What the adapter lends (:meth:`ForgeHost.lend_model`), from the engine Forge has
loaded (``sd_models.model_data``; a ``FakeInitialModel`` until something calls
``sd_models.forge_model_reload()``, which the adapter does):

* UNet: ``forge_objects.unet.model.diffusion_model`` (Forge's own LDM-layout
  ``IntegratedUNet2DConditionModel``: the module paths and block class names of
  CompVis' UNet, so kohya's LoRA names come out as for AUTOMATIC1111).
* Text encoders: ``forge_objects.clip.cond_stage_model.clip_l.transformer``
  (and ``clip_g.transformer`` for SDXL, whose ``text_projection`` sits on it):
  Hugging Face CLIP models built with Forge's own layer classes, tokenised by
  ``forge_objects.clip.tokenizer.clip_l`` / ``clip_g``.
* VAE: ``forge_objects.vae.first_stage_model``, called directly (a posterior
  *sample*, as kohya caches, times ``scaling_factor`` through ``process_in``).
  Forge's ``VAE.encode`` wrapper is not used: it round-trips the pixels
  through [0, 1] and asks the memory manager to load the VAE on every call.
* Schedule and prediction type: ``forge_objects.unet.model.predictor``.

Forge's traps, and what the adapter does about each, for the duration of the lend:

* Forge loads and samples under ``torch.inference_mode()``: every weight is an
  inference tensor, which autograd refuses to save (the LoRA's backward through
  a host Linear needs its weight), and on which ``requires_grad_(True)`` raises
  outside inference mode (Forge's parameters carry ``requires_grad=True``, which
  the training's freeze-and-restore would try to put back). So every parameter
  (and every inference buffer) of the UNet, the text encoders and the VAE is
  replaced by an ordinary ``nn.Parameter`` with ``requires_grad=False`` made
  outside inference mode. By default it is an ordinary tensor over the *same
  memory* (no copy: an SDXL UNet plus text encoders would otherwise need 6.5 GiB
  more VRAM); ``ForgeHost(share_weights=False)`` clones instead. The originals
  (the very same objects, untouched) go back on exit.
* LoRAs: Forge merges the active LoRAs into the weights when it loads the UNet
  (``LoraLoader.refresh``: new merged Parameters in the model, the clean ones
  kept in ``lora_loader.backup``) and leaves them merged. Training starts from
  the clean weights (the backups) and Forge's loader state (backup dict,
  ``loaded_hash``) is parked, then put back as it was, so the merged weights are
  still current afterwards and nothing is merged again. If a merged LoRA's file
  was rewritten meanwhile, Forge's caches (``load_lora_state_dict`` is an
  ``lru_cache`` keyed by file name; the engine's ``current_lora_hash`` and the
  loader's ``loaded_hash`` compare file names) are invalidated instead, so the
  next generation reads and merges the new file.
* Memory: ``backend.memory_management.load_models_gpu`` with clones of the UNet
  and text-encoder patchers that carry no LoRA or object patches (so Forge's
  ``refresh_loras`` merges nothing into the training weights), plus the VAE.
  Low-bit storage (NF4 / FP4 / GGUF, and fp8) is refused before anything
  changes; a load that only fits by streaming weights from CPU ("CPU swap") is
  refused with what to change. On exit the clones are unloaded (Forge moves the
  weights to its offload device, as between jobs; the next generation loads
  them again, without re-merging) and ``soft_empty_cache`` runs.
* Forge's transformer blocks add the attention and feed-forward outputs to the
  residual *in place* (``x += ...``), which breaks backward even for an
  attention-only LoRA (LayerNorm saved ``x``). Each ``BasicTransformerBlock``
  gets an instance ``forward`` that forms the same sums out of place (measured:
  the same speed as Forge's own forward, and bit-identical outputs). Forge's own
  gradient checkpointing raises ``NotImplementedError``; the adapter
  checkpoints whole UNet blocks instead (:func:`.webui_common.block_gradient_checkpointing`).
* Forge's ``Linear`` is no ``torch.nn.Linear`` subclass; the network finds
  layers by class name and shape, so it attaches to it (its ``Conv2d`` does
  subclass ``torch.nn.Conv2d``).

Jobs (:meth:`ForgeHost.run_exclusive`) hold ``modules.call_queue.queue_lock`` and
``shared.state`` in the calling thread, as Forge's ``wrap_gradio_gpu_call`` does,
and run the work on Forge's main thread (``modules_forge.main_thread``: the one
thread that runs its generations and model moves) when that loop runs; the
result or exception comes back to the caller.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from contextlib import ExitStack, contextmanager, nullcontext
from typing import Callable, Iterator, Optional, TypeVar

import torch
from torch import nn

from ..models.base import DiffusionModel, TextEncoder
from .a1111 import A1111Host, NestedJobError, _as_job, _checkpoint_identity, _in_job, _optional_module
from .webui_common import (
    HostRefusal,
    _files_changed_on_disk,
    block_gradient_checkpointing,
    forget_cached_conds,
    module_device,
    module_dtype,
    release_memory,
)

T = TypeVar("T")

__all__ = ["ForgeHost", "HostRefusal", "NestedJobError"]

# Forge's caches compare these strings with their own; this one never matches, so the next
# generation rebuilds the LoRA patches from the files and merges them again.
STALE_LORA_HASH = "lora_trainer: a LoRA file changed on disk"

_LOW_BIT = {"nf4": "bitsandbytes NF4 (4-bit)", "fp4": "bitsandbytes FP4 (4-bit)", "gguf": "GGUF (quantized)"}
_FLOAT8 = tuple(dt for dt in (getattr(torch, n, None) for n in ("float8_e4m3fn", "float8_e5m2")) if dt is not None)


def _forge_lora_module():
    """Forge's built-in LoRA extension (``extensions-builtin/sd_forge_lora/networks.py``), which Forge
    imports as the top-level module ``networks``; looked up, never imported."""
    module = sys.modules.get("networks")
    if module is None or not hasattr(module, "loaded_networks") or not hasattr(module, "load_networks"):
        return None
    return module


class ForgeHost(A1111Host):
    """The Forge host. ``log`` receives the adapter's notes (default: print).

    ``share_weights`` (default True): the ordinary Parameters lent for training
    share the memory of Forge's inference tensors instead of copying them.
    ``use_main_thread`` (default True): run jobs on Forge's main thread when its
    loop is running.
    """

    name = "forge"
    # Forge's txt2img (process_images) reloads the UNet through its memory manager (unloading the
    # lent clone, merging LoRAs into the training weights): samples during training are drawn by
    # the core's own sampler over the lent model instead (training/sampling.py falls back to it).
    render_samples = None

    def __init__(self, log: Optional[Callable[[str], None]] = None, *, share_weights: bool = True,
                 use_main_thread: bool = True):
        super().__init__(log=log)
        self.share_weights = share_weights
        self.use_main_thread = use_main_thread

    # -------------------------------------------------------------------- jobs

    job_kind = "Forge"

    def _run_job(self, fn: Callable[[], T], title: str) -> T:
        """The queue lock and ``shared.state`` are held by the caller (A1111Host.run_exclusive); the
        work itself runs on Forge's main thread, marked as the job there."""
        return self._on_main_thread(lambda: _as_job(fn, title))

    def _on_main_thread(self, work: Callable[[], T]) -> T:
        """Run ``work`` on the thread running ``modules_forge.main_thread.loop()``; here when this is
        that thread, when the loop is not running (e.g. Forge imported by a script) or when disabled."""
        main_thread = _optional_module("modules_forge.main_thread") if self.use_main_thread else None
        loop_thread = _loop_thread(main_thread) if main_thread is not None else None
        if loop_thread is None or loop_thread is threading.current_thread():
            return work()
        box: dict = {}

        def task():
            # Forge's loop catches only Exception and keeps it in main_thread.last_exception (which the UI
            # shows as the next error); everything is caught here and handed back to the caller instead
            try:
                box["result"] = work()
            except BaseException as exc:  # a KeyboardInterrupt would end Forge's loop thread
                box["error"] = exc

        task_id = main_thread.async_run(task)
        _wait_for_task(main_thread, task_id, loop_thread)
        if "error" in box:
            raise box.pop("error")
        return box["result"]

    # ------------------------------------------------------------------ files

    def refresh_loras(self) -> None:
        """Re-scan the LoRA folder; forget LoRA files Forge cached that were rewritten since, and the
        prompt conditioning cached with them."""
        forget_cached_conds()
        networks = _forge_lora_module()
        if networks is None:
            return
        if hasattr(networks, "list_available_networks"):
            networks.list_available_networks()
        if _in_job():
            _forget_rewritten_loras(networks, self._log)
            return
        # A generation ends by writing the LoRA hashes it merged; marking them stale meanwhile
        # would be overwritten, so this waits for the queue lock (a running generation's end).
        call_queue = _optional_module("modules.call_queue")
        lock = getattr(call_queue, "queue_lock", None)
        with (lock if lock is not None else nullcontext()):
            _forget_rewritten_loras(networks, self._log)

    # ------------------------------------------------------------------ model

    @contextmanager
    def lend_model(self) -> Iterator[DiffusionModel]:
        """Forge's loaded SD1 / SDXL model as a :class:`DiffusionModel`, handed back as lent.

        Must run inside :meth:`run_exclusive`. Loads the selected checkpoint when Forge has not
        yet (``forge_model_reload``). Raises :class:`HostRefusal` for set-ups that cannot train,
        before anything is changed.
        """
        if not _in_job():
            raise RuntimeError("ForgeHost.lend_model() must be used inside run_exclusive(): Forge's model may "
                               "only be touched while its queue lock is held")
        if _optional_module("backend.memory_management") is None:
            raise HostRefusal("this Forge has no 'backend' package (an early-2024 Forge built on ldm_patched); "
                              "update Forge to train inside it, or train with python -m lora_trainer train")
        from backend import memory_management

        engine = _loaded_engine(self._log)
        arch = _check_trainable(engine)
        objects = engine.forge_objects
        kmodel = objects.unet.model
        te_root = objects.clip.cond_stage_model
        vae_model = objects.vae.first_stage_model
        roots = [kmodel, te_root, vae_model]

        model: Optional[DiffusionModel] = None
        target = None
        try:
            with ExitStack() as stack:
                # runs last, after the loaders have their state back: a merged LoRA the training rewrote is forgotten
                stack.callback(_forget_rewritten_loras, _forge_lora_module(), self._log, engine)
                clean = stack.enter_context(_lora_merges_parked([kmodel, te_root], self._log))
                stack.enter_context(_loaded_for_training(memory_management, objects))
                target = module_device(kmodel.diffusion_model)
                stack.enter_context(_TrainingWeights(roots, clean, share=self.share_weights))
                stack.enter_context(_backward_safe_transformer_blocks(kmodel.diffusion_model))
                stack.enter_context(_fresh_transformer_options(kmodel.diffusion_model))
                stack.enter_context(block_gradient_checkpointing(kmodel.diffusion_model))
                model = _diffusion_model(engine, arch, self._log)
                yield model
        finally:
            model = None
            release_memory(target)


# ------------------------------------------------------------------------- jobs


def _loop_thread(main_thread) -> Optional[threading.Thread]:
    """The thread currently inside ``main_thread.loop()``, found by its frames (Forge records none)."""
    code = getattr(getattr(main_thread, "loop", None), "__code__", None)
    if code is None:
        return None
    frames = sys._current_frames()
    for thread in threading.enumerate():
        frame = frames.get(thread.ident)
        while frame is not None:
            if frame.f_code is code:
                return thread
            frame = frame.f_back
    return None


def _wait_for_task(main_thread, task_id, loop_thread: Optional[threading.Thread] = None) -> None:
    """Wait until the loop has finished ``task_id``, then take it off ``finished_list`` (Forge's own
    ``run_and_wait_result`` polls the same way; a task left there would stay forever). Forge's loop
    catches only Exception: if a task ahead of ours ended the loop thread, ours never runs, so this
    gives up (and the caller releases the queue lock) instead of waiting forever."""
    while True:
        time.sleep(0.01)
        loop_dead = loop_thread is not None and not loop_thread.is_alive()  # read before the finished list
        for task in list(main_thread.finished_list):
            if getattr(task, "task_id", None) == task_id:
                with main_thread.lock:
                    if task in main_thread.finished_list:
                        main_thread.finished_list.remove(task)
                return
        if loop_dead:
            with main_thread.lock:
                main_thread.waiting_list[:] = [t for t in main_thread.waiting_list
                                               if getattr(t, "task_id", None) != task_id]
            raise RuntimeError("Forge's main-thread loop has stopped (an earlier task ended it) before this job "
                               "ran; restart Forge")


# ------------------------------------------------------------------ the engine


def _loaded_engine(log):
    """The engine Forge has loaded, loading the selected checkpoint first when Forge has not
    (its ``sd_model`` is a ``FakeInitialModel`` until a generation or this loads it)."""
    from modules import sd_models

    try:
        engine, reloaded = sd_models.forge_model_reload()
    except (ValueError, KeyError) as exc:  # Forge: 'You do not have any model! ...' / nothing selected yet
        raise HostRefusal(f"Forge could not load a checkpoint ({exc}); pick one at the top of the page, then "
                          "start the training") from None
    if reloaded:
        log(f"loaded {os.path.basename(str(getattr(engine, 'filename', '') or 'the selected checkpoint'))} "
            "(Forge had not loaded it yet)")
    if engine is None or getattr(engine, "forge_objects", None) is None:
        raise HostRefusal("no checkpoint is loaded in Forge: pick one at the top of the page, then start the training")
    return engine


def _arch(engine) -> str:
    te = engine.forge_objects.clip.cond_stage_model
    if getattr(engine, "is_sdxl", False):
        if not (hasattr(te, "clip_l") and hasattr(te, "clip_g")):
            raise HostRefusal("the loaded model is an SDXL refiner (one OpenCLIP text encoder); load an SDXL base "
                              "checkpoint (SDXL 1.0, Pony, Illustrious, ...) to train a LoRA")
        return "sdxl"
    if getattr(engine, "is_sd1", False) and hasattr(te, "clip_l"):
        return "sd1"
    if getattr(engine, "is_sd2", False):
        raise HostRefusal("SD2 checkpoints are not supported inside Forge yet; train SD2 LoRAs with "
                          "python -m lora_trainer train, or load an SD1.x or SDXL checkpoint")
    raise HostRefusal(f"the loaded model ({type(engine).__name__}) is not an SD1.x or SDXL checkpoint (Flux, SD3 "
                      "and Chroma are not supported); load an SD1.x or SDXL checkpoint to train")


def _storage_kind(root: nn.Module, storage=None) -> Optional[str]:
    """How ``root``'s weights are stored when it is not plain fp16/bf16/fp32, else None."""
    if isinstance(storage, str) and storage in _LOW_BIT:
        return _LOW_BIT[storage]
    if storage in _FLOAT8:
        return f"fp8 ({str(storage).replace('torch.', '')})"
    for _name, p in root.named_parameters():
        if getattr(p, "gguf_cls", None) is not None:
            return _LOW_BIT["gguf"]
        quant = getattr(p, "quant_type", None)
        if quant in ("nf4", "fp4") or getattr(p, "bnb_quantized", None) is not None:
            return _LOW_BIT.get(quant, "bitsandbytes 4-bit")
        if p.dtype in _FLOAT8:
            return f"fp8 ({str(p.dtype).replace('torch.', '')})"
        if not p.is_floating_point():
            return f"packed integers ({str(p.dtype).replace('torch.', '')})"
    for module in root.modules():
        if getattr(module, "forge_online_loras", None):
            return "with on-the-fly LoRAs (low-bit storage)"
    return None


def _check_trainable(engine) -> str:
    """The architecture, or a :class:`HostRefusal` naming what to change (nothing is changed here)."""
    arch = _arch(engine)
    objects = engine.forge_objects
    kmodel = objects.unet.model
    predictor = getattr(kmodel, "predictor", None)
    prediction = getattr(predictor, "prediction_type", None)
    schedule = getattr(predictor, "alphas_cumprod", None)
    if prediction not in ("epsilon", "v_prediction") or not isinstance(schedule, torch.Tensor) \
            or schedule.numel() != 1000:
        raise HostRefusal(f"the loaded model samples as {prediction!r} without a 1000-step DDPM schedule (an EDM or "
                          "flow model such as Playground v2.5); load an SD1.x or SDXL eps / v-prediction checkpoint")
    unet = kmodel.diffusion_model
    try:
        in_channels = int(unet.input_blocks[0][0].in_channels)
    except Exception:
        in_channels = int(getattr(unet, "in_channels", 4))
    if getattr(engine, "is_inpaint", False) or in_channels != 4:
        raise HostRefusal(f"the loaded UNet takes {in_channels} input channels (an inpainting or instruct-pix2pix "
                          "model); load a regular SD1.x or SDXL checkpoint to train a LoRA")
    kind = _storage_kind(kmodel, getattr(kmodel, "storage_dtype", None))
    if kind is not None:
        fix = ("set 'Diffusion in Low Bits' at the top of the page to 'Automatic'"
               if kind.startswith("fp8") else "load an fp16 / bf16 .safetensors of the model")
        raise HostRefusal(f"the loaded UNet is stored as {kind}: LoRA training needs fp16, bf16 or fp32 weights. "
                          f"{fix[0].upper() + fix[1:]} (Forge reloads it), then start the training again")
    kind = _storage_kind(objects.clip.cond_stage_model)
    if kind is not None:
        raise HostRefusal(f"the loaded text encoders are stored as {kind}: LoRA training needs fp16, bf16 or fp32 "
                          "weights; load the checkpoint with its own fp16 text encoders and start again")
    for module in unet.modules():
        if type(module).__name__ == "ResBlock" and getattr(module, "use_scale_shift_norm", False):
            raise HostRefusal("the loaded UNet uses scale-shift ResBlocks, which no SD1.x / SDXL checkpoint has; "
                              "load an SD1.x or SDXL checkpoint")
    return arch


# ------------------------------------------------------------------ LoRA merges


def _merged_keys(loader) -> list:
    return list((getattr(loader, "backup", None) or {}).keys())


@contextmanager
def _lora_merges_parked(roots: list[nn.Module], log) -> Iterator[dict[int, dict]]:
    """Train from the clean weights, and leave Forge's LoRA merges as they were.

    Forge's ``LoraLoader`` (one per model, ``model.lora_loader``) merges the patches
    into new Parameters set into the model and keeps the replaced clean ones in
    ``backup`` (key: the parameter's ``named_parameters`` name); ``loaded_hash``
    names what is merged. Inside the block each loader looks empty (no backup,
    nothing loaded), so loading an un-patched patcher merges and restores nothing.
    Yields, per root (by ``id``), the clean tensor of every merged key. On exit the
    loaders get back their own backup dict, ``loaded_hash`` and online list (the
    same objects)."""
    parked = []
    clean: dict[int, dict] = {}
    merged = 0
    for root in roots:
        loader = getattr(root, "lora_loader", None)
        if loader is None:
            clean[id(root)] = {}
            continue
        backup = getattr(loader, "backup", None) or {}
        clean[id(root)] = dict(backup)
        merged += len(backup)
        parked.append((loader, {a: loader.__dict__.get(a) for a in ("backup", "loaded_hash", "online_backup")}))
    try:
        for loader, _saved in parked:
            loader.backup = {}
            loader.loaded_hash = str([])
            loader.online_backup = []
        if merged:
            networks = _forge_lora_module()
            names = ", ".join(str(getattr(n, "name", n)) for n in (getattr(networks, "loaded_networks", None) or ()))
            log(f"took {names or 'the LoRAs'} (merged by Forge into {merged} weights) out for the training: it "
                "starts from the checkpoint's own weights; the merged ones are back afterwards")
        yield clean
    finally:
        for loader, saved in parked:
            for attr, value in saved.items():
                setattr(loader, attr, value)


def _forget_rewritten_loras(networks, log, engine=None) -> None:
    """Forge caches LoRA files by name (``load_lora_state_dict``, an lru_cache) and merges by name
    (the engine's ``current_lora_hash``, each loader's ``loaded_hash``): a LoRA file rewritten since
    it was merged (a training saving under the same name) would never be read again. Forget it, so
    the next generation reads and merges the new file."""
    if networks is None:
        return
    cache = getattr(networks, "load_lora_state_dict", None)
    changed = _files_changed_on_disk(getattr(networks, "loaded_networks", None))
    if hasattr(cache, "cache_clear"):
        cache.cache_clear()  # holds at most a few files; a name that is written again must be read again
    if not changed:
        return
    if engine is None:
        sd_models = _optional_module("modules.sd_models")
        data = getattr(sd_models, "model_data", None)
        engine = data.get_sd_model() if data is not None else None
    objects = getattr(engine, "forge_objects", None)
    if objects is None or engine.current_lora_hash == STALE_LORA_HASH:  # already forgotten
        return
    engine.current_lora_hash = STALE_LORA_HASH
    for root in (objects.unet.model, objects.clip.cond_stage_model):
        loader = getattr(root, "lora_loader", None)
        if loader is not None and _merged_keys(loader):
            loader.loaded_hash = STALE_LORA_HASH
    log(f"{', '.join(changed)} changed on disk: Forge reads and merges the new file on the next generation")


# ---------------------------------------------------------------------- memory


def _bare_clone(patcher):
    """A clone of a Forge patcher over the same model without LoRA or object patches."""
    clone = patcher.clone()
    clone.lora_patches = {}
    clone.object_patches = {}
    return clone


@contextmanager
def _loaded_for_training(memory_management, objects) -> Iterator[None]:
    """The UNet and text encoders (and the VAE) loaded by Forge's memory manager for the training,
    unloaded afterwards (the VAE only when it was not loaded before). The UNet and text encoders
    come as bare clones of their patchers, so the load merges no LoRA (the loaders are parked) and
    applies no object patch."""
    ours = [_bare_clone(objects.unet), _bare_clone(objects.clip.patcher)]
    labels = {id(ours[0]): "UNet", id(ours[1]): "text encoders"}
    unload = list(ours)
    if not any(m.model is objects.vae.patcher for m in memory_management.current_loaded_models):
        unload.append(objects.vae.patcher)  # not loaded before the lend: not loaded after it either
    try:
        with torch.inference_mode():  # as Forge loads: moved weights stay inference tensors
            memory_management.load_models_gpu(ours + [objects.vae.patcher])
        swapped = [m for m in memory_management.current_loaded_models
                   if any(m.model is p for p in ours) and getattr(m, "model_accelerated", False)]
        if swapped:
            what = " and ".join(labels[id(m.model)] for m in swapped)
            raise HostRefusal(
                f"Forge could not fit the {what} in GPU memory next to the memory it keeps for computing and "
                "streams part of the weights from CPU (CPU swap); training that way would take many times "
                "longer. Raise 'GPU Weights (MB)' at the top of the page, or close what else uses the GPU, "
                "then start the training again")
        yield
    finally:
        with torch.inference_mode():
            for index in range(len(memory_management.current_loaded_models) - 1, -1, -1):
                loaded = memory_management.current_loaded_models[index]
                if any(loaded.model is p for p in unload):
                    memory_management.current_loaded_models.pop(index).model_unload()
        memory_management.soft_empty_cache()


# --------------------------------------------------------------------- weights


class _TrainingWeights:
    """Every parameter (and inference buffer) under ``roots`` replaced by an ordinary tensor made
    outside inference mode, ``requires_grad=False``; the original objects back on exit.

    A parameter whose key is in ``clean[id(root)]`` (a LoRA merged by Forge) gets the clean
    value instead of the merged one. With ``share`` the new tensor is a view of the same memory
    when device and dtype match (nothing is copied; nothing writes to it either: a LoRA wraps
    its layer's forward), else a copy.
    """

    def __init__(self, roots: list[nn.Module], clean: dict[int, dict], share: bool = True):
        self.roots = roots
        self.clean = clean
        self.share = share
        self.swapped: list[tuple[dict, str, torch.Tensor]] = []

    def _ordinary(self, source: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(False), torch.no_grad():
            if self.share and source.device == like.device and source.dtype == like.dtype \
                    and source.layout == torch.strided:
                out = torch.empty(0, dtype=source.dtype, device=source.device)
                return out.set_(source.untyped_storage(), source.storage_offset(), source.size(), source.stride())
            return source.detach().to(device=like.device, dtype=like.dtype, copy=True)

    def __enter__(self) -> "_TrainingWeights":
        memo: dict[int, torch.Tensor] = {}
        try:
            for root in self.roots:
                clean = self.clean.get(id(root), {})
                for path, module in root.named_modules():
                    for table, is_param in ((module._parameters, True), (module._buffers, False)):
                        for name, tensor in list(table.items()):
                            if tensor is None or (not is_param and not tensor.is_inference()):
                                continue
                            replacement = memo.get(id(tensor))
                            if replacement is None:
                                key = f"{path}.{name}" if path else name
                                new = self._ordinary(clean.get(key, tensor), tensor)
                                replacement = nn.Parameter(new, requires_grad=False) if is_param else new
                                memo[id(tensor)] = replacement
                            self.swapped.append((table, name, tensor))
                            table[name] = replacement
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        for table, name, original in reversed(self.swapped):
            table[name] = original
        self.swapped.clear()


# ------------------------------------------------------------------------ UNet


def _out_of_place_forward(block: nn.Module) -> Callable:
    """Forge's ``BasicTransformerBlock`` arithmetic (attn1 on norm1, attn2 on norm2 with the
    context, feed-forward on norm3, each added to the residual) with the sums formed out of place.
    Forge's patches (``transformer_options``) are not applied: they are sampling options."""

    def forward(x, context=None, transformer_options=None):
        if getattr(block, "ff_in", False):
            skip = x
            x = block.ff_in(block.norm_in(x))
            if getattr(block, "is_res", True):
                x = x + skip
        if getattr(block, "disable_self_attn", False):
            x = x + block.attn1(block.norm1(x), context=context)
        else:
            x = x + block.attn1(block.norm1(x))
        if getattr(block, "attn2", None) is not None:
            x = x + block.attn2(block.norm2(x), context=context)
        if getattr(block, "is_res", True):
            return x + block.ff(block.norm3(x))
        return block.ff(block.norm3(x))

    return forward


@contextmanager
def _backward_safe_transformer_blocks(unet: nn.Module) -> Iterator[int]:
    """Every ``BasicTransformerBlock`` of ``unet`` computes out of place inside the block (an
    instance ``forward``, removed on exit). Yields how many."""
    blocks = [m for m in unet.modules() if type(m).__name__ == "BasicTransformerBlock"]
    wrapped = [m for m in blocks if "forward" in m.__dict__]
    if wrapped:
        owner = getattr(wrapped[0].__dict__["forward"], "__qualname__", repr(wrapped[0].__dict__["forward"]))
        raise HostRefusal(
            f"{len(wrapped)} of the UNet's transformer blocks run a forward put there by something else "
            f"({owner}); their in-place residual adds cannot be made safe for training. Disable the extension "
            "that wraps them (or restart Forge) and train again"
        )
    installed = []
    for module in blocks:
        if "forward" not in module.__dict__:
            forward = _out_of_place_forward(module)
            module.forward = forward
            installed.append((module, forward))
    try:
        yield len(installed)
    finally:
        for module, forward in installed:
            if module.__dict__.get("forward") is forward:
                del module.__dict__["forward"]


@contextmanager
def _fresh_transformer_options(unet: nn.Module) -> Iterator[None]:
    """Forge's UNet ``forward`` writes into its ``transformer_options`` argument, whose default is one
    dict shared by every call; the training's calls each pass a new one, so that default stays as it is."""
    if "forward" in unet.__dict__:
        yield
        return
    inner = unet.forward

    def forward(x, timesteps=None, context=None, y=None, **kwargs):
        kwargs.setdefault("transformer_options", {})
        return inner(x, timesteps, context, y, **kwargs)

    unet.forward = forward
    try:
        yield
    finally:
        if unet.__dict__.get("forward") is forward:
            del unet.__dict__["forward"]


# ------------------------------------------------------------------ the model


def _vae_functions(vae: nn.Module, device: torch.device):
    dtype = module_dtype(vae)
    shift = float(getattr(vae, "shift_factor", 0.0) or 0.0)
    scale = float(getattr(vae, "scaling_factor", 0.18215))

    def keep(posterior):  # Forge's encode(x, regulation) hands the posterior to regulation
        return posterior

    @torch.no_grad()
    def vae_encode(images: torch.Tensor) -> torch.Tensor:
        posterior = vae.encode(images.to(device=device, dtype=dtype), keep)
        mean = posterior.mean
        # a random draw, as kohya caches (latent_dist.sample()), from the RNG the training seeds
        noise = torch.randn(mean.shape, device=mean.device, dtype=mean.dtype)
        sample = mean + posterior.std * noise
        return (sample - shift) * scale if shift else sample * scale

    @torch.no_grad()
    def vae_decode(latents: torch.Tensor) -> torch.Tensor:
        z = latents.to(device=device, dtype=dtype)
        return vae.decode(z / scale + shift if shift else z / scale)

    return vae_encode, vae_decode, scale


def _alphas_cumprod(predictor, log) -> torch.Tensor:
    schedule = predictor.alphas_cumprod.detach().to(device="cpu", dtype=torch.float64).clone().reshape(1000)
    sigmas = getattr(predictor, "sigmas", None)
    if isinstance(sigmas, torch.Tensor) and sigmas.numel() == 1000:
        expected = ((1 - schedule) / schedule).sqrt()
        if not torch.allclose(sigmas.detach().to("cpu", torch.float64), expected, rtol=1e-3, atol=1e-5):
            log("Forge samples with a modified noise schedule (e.g. zero terminal SNR); training uses the "
                "model's own schedule, as kohya does")
    return schedule


def _text_encoders(objects, arch: str) -> list[TextEncoder]:
    holder, tokenizers = objects.clip.cond_stage_model, objects.clip.tokenizer
    names = [("te1", "clip_l"), ("te2", "clip_g")] if arch == "sdxl" else [("te", "clip_l")]
    encoders = []
    for stem, key in names:
        tokenizer = getattr(tokenizers, key)
        encoders.append(TextEncoder(name=stem, model=getattr(holder, key).transformer, tokenizer=tokenizer,
                                    pad_token_id=tokenizer.pad_token_id))
    return encoders


def _diffusion_model(engine, arch: str, log) -> DiffusionModel:
    objects = engine.forge_objects
    kmodel = objects.unet.model
    unet = kmodel.diffusion_model
    vae = objects.vae.first_stage_model
    device = module_device(unet) or torch.device("cpu")
    vae_encode, vae_decode, scale = _vae_functions(vae, module_device(vae) or device)
    return DiffusionModel(
        arch=arch,
        prediction_type=kmodel.predictor.prediction_type,
        unet=unet,
        text_encoders=_text_encoders(objects, arch),
        alphas_cumprod=_alphas_cumprod(kmodel.predictor, log),
        vae_encode=vae_encode,
        vae_decode=vae_decode,
        vae_scale_factor=scale,
        device=device,
        dtype=module_dtype(unet),
        vae=vae,
        **_checkpoint_identity(engine),
    )
