"""The training loop, readable top to bottom.

``train(config, model)`` takes a validated :class:`TrainConfig` and a model a
host lends (:class:`DiffusionModel`), attaches a LoRA network to it, trains
it with kohya's step semantics, writes kohya-format files epoch by epoch, and
always hands the model back as it was lent (weights, flags, forwards), however
the run ends.
"""
from __future__ import annotations

import inspect
import math
import random
import secrets
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from ..config import TrainConfig
from ..models.base import DiffusionModel
from . import conditioning, loss_weighting, noise as noise_lib
from .host_state import preserved_host_state
from .optimizers import build_optimizer, is_schedulefree, optimizer_lr_and_d
from .progress import Progress, ProgressCallback, StopFlag, Timer
from .schedulers import build_scheduler

# on CUDA, optimizer steps between two reads of the loss on the host (each read waits for the GPU)
LOSS_READ_EVERY = 8


def loss_read_interval(device: torch.device) -> int:
    """How many optimizer steps' losses are read from the device at once (1 on the CPU: no wait to save)."""
    return LOSS_READ_EVERY if device.type == "cuda" else 1


class TrainingError(RuntimeError):
    """Training could not start or continue; the message says why and what to do."""


@dataclass
class TrainResult:
    files: list[Path] = field(default_factory=list)
    steps: int = 0
    epochs: int = 0
    elapsed: float = 0.0
    peak_memory: Optional[int] = None
    interrupted: bool = False
    losses: list[float] = field(default_factory=list)  # per optimizer step
    plan: object = None  # the dataset plan (counts kohya prints)
    network_state: dict = field(default_factory=dict)  # the trained LoRA tensors as the run ended

    @property
    def ok(self) -> bool:
        return True


def train(
    config: TrainConfig,
    model: DiffusionModel,
    *,
    on_progress: Optional[ProgressCallback] = None,
    stop: Optional[StopFlag] = None,
    log: Callable[[str], None] = print,
    host=None,
) -> TrainResult:
    """``host`` (optional) draws the samples when it has ``render_samples`` (see hosts/base.py);
    without it, or when it has none, :mod:`lora_trainer.compare.samples` draws them."""
    from ..dataset import build_dataset_plan
    from ..networks import LoRANetwork
    from .sampling import TrainingSamples
    from .saving import EpochSaver

    emit = on_progress or (lambda _p: None)
    stop = stop or StopFlag()
    device = model.device
    timer = Timer()

    # 1. Reproducibility: one seed drives the data order, the noise generator and (inside the
    # host-state guard below, so the host's own RNGs come back as they were) python's and torch's.
    seed = config.seed if config.seed is not None else secrets.randbelow(2**31)
    generator = torch.Generator(device="cpu").manual_seed(seed)

    # 2. Dataset: scan, bucket, count — kohya prints these numbers before step 1.
    plan = build_dataset_plan(config, arch=model.arch, seed=seed, log=log)
    counts = plan.counts
    log(plan.summary())
    if model.is_sdxl:
        conditioning.warn_sdxl_clip_skip(config.clip_skip)

    train_unet = not config.network_train_text_encoder_only
    train_te = not config.network_train_unet_only
    autocast_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(config.mixed_precision)
    lora_dtype = torch.float32
    if config.full_fp16:
        lora_dtype = torch.float16
    elif config.full_bf16:
        lora_dtype = torch.bfloat16

    result = TrainResult(plan=plan)
    with ExitStack() as stack:
        # 3. The host's model is restored on the way out, whatever happens below.
        stack.enter_context(preserved_host_state(model))
        random.seed(seed)
        torch.manual_seed(seed)
        for module in _all_modules(model):
            module.requires_grad_(False)

        network_options = dict(
            dropout=config.network_dropout,
            rank_dropout=_float_or_none(config.network_kwargs.get("rank_dropout")),
            module_dropout=_float_or_none(config.network_kwargs.get("module_dropout")),
            train_unet=train_unet,
            train_text_encoder=train_te,
            dtype=lora_dtype,
        )
        if config.network_weights and config.dim_from_weights:
            network = LoRANetwork.from_file(model, config.network_weights, **network_options)
        else:
            network = LoRANetwork.from_model(
                model,
                network_dim=config.effective_network_dim,
                network_alpha=config.effective_network_alpha,
                conv_dim=config.conv_dim,
                conv_alpha=config.conv_alpha,
                **network_options,
            )
            if config.network_weights:
                # kohya's network_weights: continue from an earlier file of the same shape
                network.load_weights(config.network_weights)
                log(f"loaded LoRA weights from {config.network_weights}")
        stack.enter_context(network)
        log(f"LoRA: {len(network.unet_loras)} UNet modules, {len(network.text_encoder_loras)} text-encoder modules")

        if config.gradient_checkpointing:
            _enable_gradient_checkpointing(model, train_te, log)
        model.unet.train(train_unet)
        for te in model.text_encoders:
            te.model.train(train_te)

        # 4. Latents: cached once up front when asked (and always encoded without grad).
        if config.cache_latents:
            log("caching latents ...")
            try:
                plan.cache_latents(model.vae_encode, to_disk=config.cache_latents_to_disk, device=device,
                                   sdxl=model.is_sdxl, scale=model.vae_scale_factor)
            except RuntimeError as exc:
                if "NaN" not in str(exc):
                    raise
                raise TrainingError(f"{exc}; set no_half_vae = true") from None

        # validate() has made sure captions never change when this is on (kohya refuses the same)
        text_cache = {} if config.cache_text_encoder_outputs else None

        # 5. Optimizer and scheduler, by kohya's names, from their libraries.
        params, group_names = network.prepare_optimizer_params(
            unet_lr=config.unet_lr, text_encoder_lr=config.text_encoder_lr, default_lr=config.learning_rate
        )
        if not params:
            raise TrainingError("nothing to train: every learning rate is 0, or no LoRA modules were created "
                                "(check learning_rate / unet_lr / text_encoder_lr and network_train_* options)")
        total_steps = counts.max_train_steps
        try:
            optimizer, optimizer_name = build_optimizer(
                config.optimizer_type, params, config.learning_rate, config.optimizer_args,
                max_grad_norm=config.max_grad_norm, lr_scheduler=config.lr_scheduler,
            )
            scheduler = build_scheduler(
                config.lr_scheduler,
                optimizer,
                num_training_steps=total_steps,
                num_warmup_steps=config.lr_warmup_steps,
                num_cycles=config.lr_scheduler_num_cycles,
                power=config.lr_scheduler_power,
                scheduler_args=config.lr_scheduler_args,
            )
        except (ImportError, AttributeError, TypeError, ValueError) as exc:
            raise TrainingError(f"optimizer_type {config.optimizer_type!r} / lr_scheduler {config.lr_scheduler!r}: "
                                f"{exc}") from None
        schedule_free = is_schedulefree(optimizer)
        if schedule_free:
            optimizer.train()
        scaler = _grad_scaler(config, device)
        trainable = [p for group in params for p in group["params"]]

        saver = EpochSaver(config, model, network, plan, seed=seed, optimizer_name=optimizer_name,
                           total_steps=total_steps, log=log,
                           around_save=_schedule_free_eval(optimizer) if schedule_free else None)
        alphas_cumprod = model.alphas_cumprod.to(device=device, dtype=torch.float32)
        v_pred = model.prediction_type == "v_prediction" or config.v_parameterization
        try:
            loss_weighting.check_loss_options(v_pred, config.scale_v_pred_loss_like_noise_pred,
                                              config.v_pred_like_loss)
        except ValueError as exc:
            raise TrainingError(str(exc)) from None

        # 6. Samples (kohya's sample_* options), drawn without touching the training's RNGs.
        samples = TrainingSamples(config, model, network, host=host, emit=emit, log=log, v_prediction=v_pred,
                                  autocast_dtype=autocast_dtype,
                                  around=_schedule_free_eval(optimizer) if schedule_free else None)

        emit(Progress("start", total_steps=total_steps, total_epochs=counts.num_epochs,
                      message=f"{counts.num_batches_per_epoch} batches per epoch"))
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        samples.at_start()

        # 7. The loop: kohya counts a step per optimizer update.
        global_step = 0
        accum = config.gradient_accumulation_steps
        # Reading a loss on the host waits for the GPU, so on CUDA the step losses are read in
        # batches of read_every steps (one wait instead of read_every); the step events follow then.
        read_every = loss_read_interval(device)
        pending: list[tuple[int, torch.Tensor]] = []  # (optimizer step, its loss on the device)

        # flush takes the lrs rather than closing over the optimizer: a closure cell would keep the
        # optimizer (and its state) alive in a caller's traceback after an exception
        def flush(lr: dict) -> None:
            if not pending:
                return
            values = torch.stack([loss for _, loss in pending]).float().cpu().tolist()
            steps = [step for step, _ in pending]
            pending.clear()
            for step, value in zip(steps, values):
                if not math.isfinite(value):
                    raise TrainingError(
                        f"loss became {value} at step {step} (epoch {epoch}); lower the learning rate, "
                        "or use bf16 instead of fp16 mixed precision (SDXL: also no_half_vae)"
                    )
                result.losses.append(value)
                epoch_losses.append(value)
                emit(Progress(
                    "step", step=step, total_steps=total_steps, epoch=epoch,
                    total_epochs=counts.num_epochs, loss=sum(epoch_losses) / len(epoch_losses), step_loss=value,
                    lr=lr, elapsed=timer.elapsed, eta=timer.eta(step, total_steps), peak_memory=_peak_memory(device),
                ))

        for epoch in range(1, counts.num_epochs + 1):
            plan.set_epoch(epoch)
            epoch_losses: list[float] = []
            step_losses: list[torch.Tensor] = []  # this optimizer step's micro-batch losses
            micro = 0
            for batch in plan.batches(epoch):
                micro += 1
                sync = micro % accum == 0 or micro == counts.num_batches_per_epoch
                amp = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else nullcontext()
                with amp:
                    loss = _step_loss(config, model, batch, alphas_cumprod, v_pred, train_te, generator,
                                      text_cache, device)
                step_losses.append(loss.detach())
                loss_for_backward = loss / accum
                if scaler is not None:
                    scaler.scale(loss_for_backward).backward()
                else:
                    loss_for_backward.backward()
                if not sync:
                    continue

                if scaler is not None:
                    scaler.unscale_(optimizer)
                if config.max_grad_norm:
                    torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm)
                stepped = True
                if scaler is not None:
                    scale = scaler.get_scale()
                    scaler.step(optimizer)
                    scaler.update()
                    # an overflow skips the update; accelerate then skips the scheduler too (kohya's behaviour)
                    stepped = scaler.get_scale() >= scale
                else:
                    optimizer.step()
                if stepped:
                    scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                if config.scale_weight_norms:
                    network.apply_max_norm_regularization(config.scale_weight_norms, device)
                global_step += 1
                pending.append((global_step, torch.stack(step_losses).mean()))
                step_losses = []
                if len(pending) >= read_every or stop.requested or global_step >= total_steps:
                    flush(optimizer_lr_and_d(optimizer, scheduler, group_names))
                samples.after_step(epoch, global_step)
                if global_step >= total_steps or stop.requested:
                    break

            flush(optimizer_lr_and_d(optimizer, scheduler, group_names))
            result.steps, result.epochs = global_step, epoch
            interrupted = stop.requested and global_step < total_steps
            is_last = epoch == counts.num_epochs or global_step >= total_steps
            if interrupted:
                result.interrupted = True
                log(f"interrupted at step {global_step} (epoch {epoch})")
                if stop.save_current:
                    result.files.append(saver.save(epoch, global_step, final=False, tag="interrupted"))
                break
            path = saver.maybe_save_epoch(epoch, global_step, is_last=is_last)
            if path is not None:
                result.files.append(path)
                emit(Progress("saved", step=global_step, epoch=epoch, path=str(path)))
            samples.after_epoch(epoch, global_step)
            emit(Progress("epoch", step=global_step, total_steps=total_steps, epoch=epoch,
                          total_epochs=counts.num_epochs,
                          loss=sum(epoch_losses) / max(len(epoch_losses), 1), elapsed=timer.elapsed))
            if is_last:
                break

        if not result.interrupted:
            final = saver.save(result.epochs, global_step, final=True)
            result.files.append(final)
            emit(Progress("saved", step=global_step, epoch=result.epochs, path=str(final)))
        with (_schedule_free_eval(optimizer)() if schedule_free else nullcontext()):
            result.network_state = {k: v.detach().to("cpu", copy=True) for k, v in network.state_dict().items()}
        result.peak_memory = _peak_memory(device)
        del optimizer, scheduler, trainable, params

    if device.type == "cuda":
        torch.cuda.empty_cache()
    result.elapsed = timer.elapsed
    emit(Progress("end", step=result.steps, total_steps=counts.max_train_steps, epoch=result.epochs,
                  elapsed=result.elapsed, peak_memory=result.peak_memory))
    return result


def _step_loss(config, model, batch, alphas_cumprod, v_pred, train_te, generator, text_cache, device):
    """One micro-batch: latents, conditioning, noise, UNet, kohya's weighted loss."""
    if batch.latents is not None:
        latents = batch.latents.to(device)
    else:
        with torch.no_grad():
            latents = model.vae_encode(batch.images.to(device, dtype=model.dtype)).float()
    latents = latents.float()

    with torch.set_grad_enabled(train_te):
        context, y = _text_conditioning(config, model, batch, device, text_cache)

    noise, noisy, timesteps = noise_lib.noisy_latents(
        latents,
        alphas_cumprod,
        generator=generator,
        noise_offset=config.noise_offset,
        adaptive_noise_scale=config.adaptive_noise_scale,
        multires_noise_iterations=config.multires_noise_iterations,
        multires_noise_discount=config.multires_noise_discount,
        ip_noise_gamma=config.ip_noise_gamma,
        min_timestep=config.min_timestep,
        max_timestep=config.max_timestep,
    )
    unet_dtype = _param_dtype(model.unet)
    pred = model.unet(noisy.to(unet_dtype), timesteps, context.to(unet_dtype),
                      y.to(unet_dtype) if y is not None else None)
    target = noise_lib.v_target(latents, noise, timesteps, alphas_cumprod) if v_pred else noise

    loss = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    loss = loss * batch.loss_weights.to(device)
    loss = loss_weighting.apply_all(
        loss, timesteps, alphas_cumprod,
        v_prediction=v_pred,
        min_snr_gamma=config.min_snr_gamma,
        scale_v_pred_loss_like_noise_pred=config.scale_v_pred_loss_like_noise_pred,
        v_pred_like_loss=config.v_pred_like_loss,
        debiased_estimation_loss=config.debiased_estimation_loss,
    )
    return loss.mean()


def _text_conditioning(config, model, batch, device, text_cache):
    """Context (and SDXL's y vector). With ``text_cache`` (a dict), each caption is encoded
    once and reused, as kohya's cache_text_encoder_outputs does per image."""
    captions = list(batch.captions)
    if text_cache is not None:
        missing = list(dict.fromkeys(c for c in captions if c not in text_cache))
        if missing:
            context, pooled = _encode_captions(config, model, missing, device)
            for i, caption in enumerate(missing):
                text_cache[caption] = (context[i].detach(), None if pooled is None else pooled[i].detach())
        context = torch.stack([text_cache[c][0] for c in captions])
        pooled = torch.stack([text_cache[c][1] for c in captions]) if model.is_sdxl else None
    else:
        context, pooled = _encode_captions(config, model, captions, device)
    y = None
    if model.is_sdxl:
        y = conditioning.sdxl_vector_cond(pooled, batch.original_sizes_hw, batch.crop_top_lefts,
                                          batch.target_sizes_hw)
    return context, y


def _encode_captions(config, model, captions, device):
    ids = [conditioning.tokenize(captions, te, config.max_token_length).to(device) for te in model.text_encoders]
    if model.is_sdxl:
        return conditioning.encode_sdxl(model.text_encoders[0], model.text_encoders[1], ids[0], ids[1])
    return conditioning.encode_sd(model.text_encoders[0], ids[0], config.clip_skip, v2=model.arch == "sd2"), None


def _grad_scaler(config, device):
    """Loss scaling for fp16 on CUDA, as accelerate gives kohya; with full_fp16 the LoRA's own
    gradients are fp16, which GradScaler refuses to unscale unless told (kohya patches the same)."""
    if config.mixed_precision != "fp16" or device.type != "cuda":
        return None
    scaler = torch.amp.GradScaler("cuda")
    if config.full_fp16:
        original = scaler._unscale_grads_

        def unscale_allowing_fp16(optimizer, inv_scale, found_inf, allow_fp16):
            return original(optimizer, inv_scale, found_inf, True)

        scaler._unscale_grads_ = unscale_allowing_fp16
    return scaler


def _schedule_free_eval(optimizer):
    """Schedule-free optimizers hold training-mode weights; files must get the eval-mode ones."""
    from contextlib import contextmanager

    @contextmanager
    def around():
        optimizer.eval()
        try:
            yield
        finally:
            optimizer.train()

    return around


def _all_modules(model: DiffusionModel):
    yield model.unet
    for te in model.text_encoders:
        yield te.model
    if model.vae is not None:
        yield model.vae


def _enable_gradient_checkpointing(model: DiffusionModel, train_te: bool, log) -> None:
    if hasattr(model.unet, "set_gradient_checkpointing"):
        model.unet.set_gradient_checkpointing(True)
    if not train_te:
        return
    for te in model.text_encoders:
        # transformers 5 renamed it; >= 4.35 takes the non-reentrant switch. Older ones (the WebUI pins
        # 4.30) only checkpoint reentrantly, which loses the LoRA's gradients when the encoder's inputs
        # need none, so their text encoders run without checkpointing (they hold little activation memory).
        enable = getattr(te.model, "activation_checkpointing_enable", None)
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
            continue
        enable = getattr(te.model, "gradient_checkpointing_enable", None)
        if enable is not None and "gradient_checkpointing_kwargs" in inspect.signature(enable).parameters:
            enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            log(f"note: text encoder {te.name} runs without gradient checkpointing "
                "(this transformers version only offers the reentrant kind)")


def _param_dtype(module: torch.nn.Module) -> torch.dtype:
    for p in module.parameters():
        return p.dtype
    return torch.float32


def _peak_memory(device: torch.device) -> Optional[int]:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    try:
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
    except Exception:  # pragma: no cover - not on every platform
        return None


def _float_or_none(value):
    return float(value) if value not in (None, "", "None") else None
