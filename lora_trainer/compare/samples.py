"""Sample images during training, drawn by a small sampler of our own.

kohya renders ``--sample_prompts`` with a diffusers pipeline; this module does the
same job over the :class:`~lora_trainer.models.base.DiffusionModel` interface, so it
works on whatever a host lends (the standalone loader's modules, or a WebUI's without
a sampler of its own) and never needs diffusers.

How one image is made, k-diffusion style:

* the prompt and the negative prompt are encoded as training encodes captions
  (:mod:`lora_trainer.training.conditioning`: kohya's tokenisation, ``clip_skip``, SDXL's
  two encoders and pooled vector), with as many 75-token chunks as the longer one needs;
* the UNet is seen as a denoiser ``D(x, sigma)`` over the noise levels of the model's own
  schedule, ``sigma = sqrt((1 - alphas_cumprod) / alphas_cumprod)``, for eps- or
  v-prediction (:class:`Denoiser`), with classifier-free guidance against the negative prompt;
* a sampler walks ``sigma`` down to 0: Euler, Euler ancestral, Heun, DPM++ 2M, or DDIM
  (which is Euler on DDIM's own discrete timesteps); kohya's other names map to the
  nearest of these, with a note once per run;
* the model's VAE decodes the latent; SDXL's size conditioning is the image size, no crop.

The initial noise (and Euler a's fresh noise) comes from a CPU generator seeded with the
prompt's ``--d`` (or :data:`DEFAULT_SEED`), so the same seed gives the same image on any
device, and no global RNG is touched.

Files are named as kohya names them (``train_util.sample_image_inference``):
``{output_name}_{e000001 | 000500}_{index:02d}_{YYYYmmddHHMMSS}_{seed}.png`` in
``{output_dir}/sample/``. kohya adds the ``_{seed}`` part only when the prompt gives a seed
(else it draws a random one); here every sample has a known seed, so it is always there.
"""
from __future__ import annotations

import dataclasses
import io
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from ..training import conditioning
from .prompts import SamplePrompt

DEFAULT_SEED = 1234  # for a prompt without --d (kohya draws a random seed; samples should be comparable)
DEFAULT_SAMPLER = "ddim"  # kohya's --sample_sampler default
LATENT_CHANNELS = 4
VAE_FACTOR = 8  # pixels per latent cell (every SD VAE)

SAMPLERS = ("ddim", "euler", "euler_a", "heun", "dpmsolver++")
# kohya's other --sample_sampler names -> the closest of ours
NEAREST = {"pndm": "ddim", "lms": "euler", "dpm_2": "heun", "dpm_2_a": "euler_a", "dpmsolver": "dpmsolver++",
           "dpmsingle": "dpmsolver++"}

_noted: set[str] = set()  # notes already given in this process


def _note_once(key: str, text: str, log: Callable[[str], None]) -> None:
    if key not in _noted:
        _noted.add(key)
        log(text)


def resolve_sampler(name: Optional[str]) -> tuple[str, Optional[str]]:
    """(our sampler, a note when it stands in for another) for a kohya sampler name."""
    key = (name or DEFAULT_SAMPLER).strip().lower()
    if key.startswith("k_"):
        key = key[2:]
    if key in SAMPLERS:
        return key, None
    if key in NEAREST:
        return NEAREST[key], f"sample sampler {name!r} is drawn with {NEAREST[key]!r}, the nearest this trainer's " \
                             "own sampler offers"
    raise ValueError(f"unknown sample sampler {name!r}; kohya's names: {', '.join(SAMPLERS + tuple(NEAREST))}")


# ------------------------------------------------------------------------------ file names


def file_prefix(output_name: Optional[str], *, epoch: Optional[int] = None, step: int = 0) -> str:
    """kohya's name up to the index: ``NAME_e000003`` after an epoch, ``NAME_000500`` after a step."""
    when = f"e{epoch:06d}" if epoch is not None else f"{step:06d}"
    return f"{output_name}_{when}" if output_name else when


def sample_filename(prefix: str, index: int, seed: Optional[int], when: Optional[float] = None) -> str:
    stamp = time.strftime("%Y%m%d%H%M%S", time.localtime(when))
    return f"{prefix}_{index:02d}_{stamp}" + ("" if seed is None else f"_{seed}") + ".png"


def with_defaults(prompts: Sequence[SamplePrompt], sampler: str = DEFAULT_SAMPLER,
                  seed: int = DEFAULT_SEED) -> list[SamplePrompt]:
    """Each prompt with its seed and sampler filled in (the run's defaults where it names none)."""
    return [dataclasses.replace(p, seed=p.seed if p.seed is not None else seed, sampler=p.sampler or sampler)
            for p in prompts]


def save_png(image, path: Path) -> Path:
    from ..fileio import write_atomic

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    write_atomic(path, buffer.getvalue())
    return path


# ------------------------------------------------------------------------------ conditioning


@dataclass
class Conditioning:
    context: torch.Tensor  # (2, T, D): negative, positive
    y: Optional[torch.Tensor]  # SDXL's vector (2, adm), else None


def _chunks_needed(text_encoder, texts: Sequence[str]) -> Optional[int]:
    """kohya's max_token_length (None, 150 or 225) that holds the longest text, as a long-prompt pipeline pads."""
    longest = max(len(text_encoder.tokenizer(t)["input_ids"]) - 2 for t in texts)
    chunks = min(3, max(1, math.ceil(longest / conditioning.CHUNK)))
    return None if chunks == 1 else chunks * conditioning.CHUNK


def encode(model, prompt: str, negative: str, size_hw: tuple[int, int], clip_skip: Optional[int]) -> Conditioning:
    texts = [negative, prompt]
    length = _chunks_needed(model.text_encoders[0], texts)
    ids = [conditioning.tokenize(texts, te, length) for te in model.text_encoders]
    if model.is_sdxl:
        context, pooled = conditioning.encode_sdxl(model.text_encoders[0], model.text_encoders[1], ids[0], ids[1])
        h, w = size_hw
        y = conditioning.sdxl_vector_cond(pooled, [(h, w)] * 2, [(0, 0)] * 2, [(h, w)] * 2)
        return Conditioning(context, y)
    return Conditioning(conditioning.encode_sd(model.text_encoders[0], ids[0], clip_skip, v2=model.arch == "sd2"), None)


# ------------------------------------------------------------------------------ the denoiser


class Denoiser:
    """The UNet as ``D(x, sigma)``: the clean latent it predicts from ``x`` at noise level ``sigma``.

    ``x`` lives in k-diffusion's scale (``x = x0 + sigma * noise``); the UNet sees
    ``x / sqrt(sigma^2 + 1)`` (the DDPM scale) at the timestep whose sigma this is, found by
    interpolating log-sigma over the model's 1000-step schedule (as k-diffusion does).
    """

    def __init__(self, model, cond: Conditioning, cfg_scale: float, v_prediction: bool,
                 autocast_dtype: Optional[torch.dtype] = None):
        alphas = model.alphas_cumprod.detach().to("cpu", torch.float64)
        self.sigmas = ((1 - alphas) / alphas).sqrt()
        self.log_sigmas = self.sigmas.log()
        self.model = model
        self.cond = cond
        self.cfg_scale = float(cfg_scale)
        self.v_prediction = v_prediction
        self.autocast_dtype = autocast_dtype
        self.unet_dtype = next(model.unet.parameters()).dtype

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def t_of(self, sigma: float) -> float:
        log_sigma = math.log(sigma)
        ls = self.log_sigmas
        if log_sigma <= float(ls[0]):
            return 0.0
        if log_sigma >= float(ls[-1]):
            return float(len(ls) - 1)
        high = int(torch.searchsorted(ls, torch.tensor(log_sigma, dtype=ls.dtype)))
        low = high - 1
        w = (log_sigma - float(ls[low])) / (float(ls[high]) - float(ls[low]))
        return low + w

    def sigma_of(self, t: float) -> float:
        low, frac = int(math.floor(t)), t - math.floor(t)
        high = min(low + 1, len(self.log_sigmas) - 1)
        return math.exp((1 - frac) * float(self.log_sigmas[low]) + frac * float(self.log_sigmas[high]))

    def __call__(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        c_in = 1.0 / math.sqrt(sigma**2 + 1.0)
        guided = self.cfg_scale != 1.0
        context = self.cond.context if guided else self.cond.context[1:]
        y = self.cond.y if guided or self.cond.y is None else self.cond.y[1:]
        batch = context.shape[0]
        x_in = (x * c_in).repeat(batch, 1, 1, 1).to(self.unet_dtype)
        t = torch.full((batch,), self.t_of(sigma), device=x.device, dtype=torch.float32)
        args = (x_in, t, context.to(x.device, self.unet_dtype))
        if y is not None:
            args += (y.to(x.device, self.unet_dtype),)
        amp = torch.autocast(x.device.type, dtype=self.autocast_dtype) if self.autocast_dtype else nullcontext()
        with amp:
            out = self.model.unet(*args).float()
        if guided:
            uncond, cond = out.chunk(2)
            out = uncond + self.cfg_scale * (cond - uncond)
        if self.v_prediction:
            c_skip = 1.0 / (sigma**2 + 1.0)
            c_out = -sigma / math.sqrt(sigma**2 + 1.0)
            return x * c_skip + out * c_out
        return x - out * sigma


# ------------------------------------------------------------------------------ schedules and steps


def k_sigmas(denoiser: Denoiser, steps: int) -> list[float]:
    """Evenly spaced timesteps from the last to 0, as sigmas, then 0 (k-diffusion's default schedule)."""
    last = len(denoiser.sigmas) - 1
    ts = [last * (1 - i / (steps - 1)) for i in range(steps)] if steps > 1 else [float(last)]
    return [denoiser.sigma_of(t) for t in ts] + [0.0]


def ddim_sigmas(denoiser: Denoiser, steps: int) -> list[float]:
    """DDIM's timesteps (diffusers' "leading" spacing, as kohya's DDIMScheduler: 0, k, 2k, ... reversed)
    as sigmas, ending at 0 (its final step goes to alpha 1)."""
    stride = max(1, len(denoiser.sigmas) // steps)
    ts = [i * stride for i in range(steps)][::-1]
    return [float(denoiser.sigmas[t]) for t in ts] + [0.0]


def sample_euler(denoise, x, sigmas, noise):
    for sigma, nxt in zip(sigmas, sigmas[1:]):
        d = (x - denoise(x, sigma)) / sigma
        x = x + d * (nxt - sigma)
    return x


def sample_euler_ancestral(denoise, x, sigmas, noise):
    for sigma, nxt in zip(sigmas, sigmas[1:]):
        denoised = denoise(x, sigma)
        # step down to sigma_down deterministically, then add fresh noise of size sigma_up
        up = min(nxt, math.sqrt(max(nxt**2 * (sigma**2 - nxt**2) / sigma**2, 0.0)))
        down = math.sqrt(max(nxt**2 - up**2, 0.0))
        x = x + (x - denoised) / sigma * (down - sigma)
        if nxt > 0:
            x = x + noise() * up
    return x


def sample_heun(denoise, x, sigmas, noise):
    for sigma, nxt in zip(sigmas, sigmas[1:]):
        d = (x - denoise(x, sigma)) / sigma
        if nxt == 0:
            x = x + d * (nxt - sigma)
            continue
        x2 = x + d * (nxt - sigma)
        d2 = (x2 - denoise(x2, nxt)) / nxt
        x = x + (d + d2) / 2 * (nxt - sigma)
    return x


def sample_dpmpp_2m(denoise, x, sigmas, noise):
    previous = None
    for i, (sigma, nxt) in enumerate(zip(sigmas, sigmas[1:])):
        denoised = denoise(x, sigma)
        if nxt == 0:
            x = denoised
        else:
            h = math.log(sigma) - math.log(nxt)  # in t = -log(sigma)
            estimate = denoised
            if previous is not None:
                r = (math.log(sigmas[i - 1]) - math.log(sigma)) / h
                estimate = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * previous
            x = (nxt / sigma) * x - math.expm1(-h) * estimate
        previous = denoised
    return x


_STEPPERS = {"euler": sample_euler, "euler_a": sample_euler_ancestral, "heun": sample_heun,
             "dpmsolver++": sample_dpmpp_2m, "ddim": sample_euler}


# ------------------------------------------------------------------------------ one image


def _size_multiple(model) -> int:
    """Pixels an image side must be a multiple of for this UNet (its downsamplings, times the VAE's 8)."""
    mult = getattr(getattr(model.unet, "config", None), "channel_mult", None)
    return VAE_FACTOR * 2 ** (len(mult) - 1) if mult else 64


def to_image(decoded: torch.Tensor):
    from PIL import Image

    array = ((decoded[0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return Image.fromarray(array.permute(1, 2, 0).cpu().numpy())


@torch.no_grad()
def render(model, prompt: SamplePrompt, *, sampler: Optional[str] = None, seed: Optional[int] = None,
           clip_skip: Optional[int] = None, v_prediction: Optional[bool] = None,
           autocast_dtype: Optional[torch.dtype] = None, log: Callable[[str], None] = print):
    """One PIL image of ``prompt`` (its size, steps, cfg scale, seed and sampler; ``sampler`` and
    ``seed`` are used where the prompt names none)."""
    latents = sample_latents(model, prompt, sampler=sampler, seed=seed, clip_skip=clip_skip,
                             v_prediction=v_prediction, autocast_dtype=autocast_dtype, log=log)
    return to_image(model.vae_decode(latents))


@torch.no_grad()
def sample_latents(model, prompt: SamplePrompt, *, sampler: Optional[str] = None, seed: Optional[int] = None,
                   clip_skip: Optional[int] = None, v_prediction: Optional[bool] = None,
                   autocast_dtype: Optional[torch.dtype] = None, log: Callable[[str], None] = print) -> torch.Tensor:
    """The clean latent :func:`render` decodes (scaled as the VAE's ``vae_decode`` takes it)."""
    name, note = resolve_sampler(prompt.sampler or sampler)
    if note:
        _note_once(f"sampler:{prompt.sampler or sampler}", note, log)
    seed = prompt.seed if prompt.seed is not None else (DEFAULT_SEED if seed is None else seed)
    width, height = prompt.size
    multiple = _size_multiple(model)
    if width % multiple or height % multiple:
        asked = (width, height)
        width = max(multiple, round(width / multiple) * multiple)
        height = max(multiple, round(height / multiple) * multiple)
        _note_once(f"size:{asked}:{multiple}", f"sample size {asked[0]}x{asked[1]} is drawn at {width}x{height}: "
                   f"this UNet needs sides that are multiples of {multiple}", log)
    if v_prediction is None:
        v_prediction = model.prediction_type == "v_prediction"

    cond = encode(model, prompt.prompt, prompt.negative_prompt or "", (height, width), clip_skip)
    denoiser = Denoiser(model, cond, prompt.cfg_scale, v_prediction, autocast_dtype)
    steps = max(1, int(prompt.steps))
    sigmas = ddim_sigmas(denoiser, steps) if name == "ddim" else k_sigmas(denoiser, steps)

    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    shape = (1, LATENT_CHANNELS, height // VAE_FACTOR, width // VAE_FACTOR)
    device = model.device

    def noise() -> torch.Tensor:
        return torch.randn(shape, generator=generator, dtype=torch.float32).to(device)

    # DDIM starts from unit-variance x_T, which is x_T * sqrt(1 + sigma^2) in k-diffusion's scale
    start = math.sqrt(1.0 + sigmas[0] ** 2) if name == "ddim" else sigmas[0]
    x = noise() * start
    return _STEPPERS[name](denoiser, x, sigmas, noise)


def render_samples(model, prompts: Sequence[SamplePrompt], out_dir, *, prefix: str,
                   sampler: str = DEFAULT_SAMPLER, seed: int = DEFAULT_SEED, clip_skip: Optional[int] = None,
                   v_prediction: Optional[bool] = None, autocast_dtype: Optional[torch.dtype] = None,
                   log: Callable[[str], None] = print) -> list[Path]:
    """Render every prompt and save it as ``out_dir/{prefix}_{index:02d}_{time}_{seed}.png``.
    Returns the files in the prompts' order."""
    out_dir = Path(out_dir)
    paths = []
    for index, prompt in enumerate(prompts):
        image = render(model, prompt, sampler=sampler, seed=seed, clip_skip=clip_skip, v_prediction=v_prediction,
                       autocast_dtype=autocast_dtype, log=log)
        used_seed = prompt.seed if prompt.seed is not None else seed
        paths.append(save_png(image, out_dir / sample_filename(prefix, index, used_seed)))
    return paths
