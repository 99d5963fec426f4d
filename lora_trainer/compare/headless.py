"""The epoch grid without a WebUI: a diffusers pipeline over a checkpoint file.

:func:`run_comparison` draws the grid the WebUI's X/Y/Z plot draws for the same
:class:`~lora_trainer.compare.xyz.Comparison`: the same cells in the same order
(columns: no LoRA, then each epoch; rows: the Y axis), each cell from its own
prompt as the X/Y/Z substitutions leave it. The ``<lora:NAME:te:unet>`` tags in a
cell's prompt say what is loaded, as they do in the WebUI: each file goes through
diffusers' own kohya loader (``load_lora_weights``), its text-encoder and UNet
weights set apart with ``set_adapters`` (so the te/UNet split axis works), and
everything is unloaded before another file set is loaded. The tags themselves
are taken out of the text (the WebUI's prompt parser does the same); the no-LoRA
placeholder tag loads nothing. Each cell has its own ``torch.Generator`` seeded
with the comparison's seed (or its row's seed), so a cell never depends on the
ones before it.

The pipeline (:func:`build_pipeline`) is put together offline from the single file:
UNet and VAE converted by diffusers' single-file conversion functions (the
checkpoint's same-stem ``.yaml`` if there is one, else one written from the
tensors' shapes), the text encoders and tokenizers this package builds (the
same Hugging Face models training uses), a scheduler for the comparison's
sampler name over the checkpoint's own noise schedule. It runs in float32.
Long prompts are cut at 75 tokens (diffusers' pipelines do; the WebUI chains chunks).

The grid is labelled like the WebUI's (column titles on top, row titles on the
left, no gap between cells, so :func:`~lora_trainer.compare.publish.crop_cell`
cuts a column out of it) and saved, unless ``save_grid`` is off, to ``out_dir``
or by default to ``grids/`` beside the LoRA folder (``models/Lora`` ->
``models/grids``), as ``NAME-grid-YYYYmmdd-HHMMSS.png`` with the infotext in its
``parameters`` text chunk as the WebUI writes it.
"""
from __future__ import annotations

import io
import math
import re
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Optional, Sequence

from .result import ComparisonResult, remember, suggestion_for
from .xyz import AXIS_CHECKPOINT, AXIS_SEED, Comparison, ComparisonError

GRID_FOLDER = "grids"

_TAG = re.compile(r"<([^<>:]+):([^<>]*)>")

# The WebUI's sampler names -> (diffusers scheduler class, extra arguments)
SCHEDULERS = {
    "euler a": ("EulerAncestralDiscreteScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "dpm2": ("KDPM2DiscreteScheduler", {}),
    "dpm2 a": ("KDPM2AncestralDiscreteScheduler", {}),
    "dpm++ 2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "dpm++ 2m karras": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "use_karras_sigmas": True}),
    "dpm++ sde": ("DPMSolverSinglestepScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "ddim": ("DDIMScheduler", {"set_alpha_to_one": False, "steps_offset": 1, "timestep_spacing": "leading"}),
    "plms": ("PNDMScheduler", {"skip_prk_steps": True, "steps_offset": 1, "timestep_spacing": "leading"}),
}


def default_grid_dir(lora_folder) -> Path:
    """``grids/`` beside the LoRA folder: ``models/Lora`` -> ``models/grids``."""
    return Path(lora_folder).resolve().parent / GRID_FOLDER


def sampler_key(name: str) -> str:
    """A WebUI sampler name ("Euler a") or one of kohya's (``euler_a``) as a key of :data:`SCHEDULERS`."""
    from .prompts import WEBUI_SAMPLERS

    text = str(name or "Euler a").strip()
    kohya = text.lower()
    if kohya.startswith("k_"):
        kohya = kohya[2:]
    if kohya in WEBUI_SAMPLERS:
        text = WEBUI_SAMPLERS[kohya]
    key = text.lower()
    if key not in SCHEDULERS:
        raise ComparisonError(f"the headless grid has no sampler {name!r}; choose one of "
                              f"{', '.join(sorted(SCHEDULERS))}")
    return key


# ------------------------------------------------------------------------------ the pipeline


def _unet_config(yaml_config: dict, state_dict: dict, arch: str) -> dict:
    from diffusers.loaders.single_file_utils import create_unet_diffusers_config_from_ldm

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = create_unet_diffusers_config_from_ldm(yaml_config, state_dict, image_size=1024 if arch == "sdxl"
                                                       else 512)
    params = yaml_config["model"]["params"]
    unet_params = (params.get("unet_config") or params.get("network_config"))["params"]
    head_channels = unet_params.get("num_head_channels", -1) or -1
    if head_channels > 0:
        # diffusers' "attention_head_dim" holds head counts; it derives them as model_channels // head width,
        # which is 0 when a level is narrower than one head (small models): count them per level instead
        config["attention_head_dim"] = [max(1, unet_params["model_channels"] * m // head_channels)
                                        for m in unet_params["channel_mult"]]
    if arch == "sdxl":
        # diffusers recognises SDXL by its context width (2048); any SDXL layout takes the size vector this way
        config.update(class_embed_type=None, addition_embed_type="text_time", addition_time_embed_dim=256)
    return config


@contextmanager
def _quiet_transformers():
    """transformers' warnings and progress bars off for a while (loading LoRA weights shows a bar per file)."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover
        yield
        return
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _hf_text_model(model):
    from transformers import PreTrainedModel

    return model if isinstance(model, PreTrainedModel) else model.text_model


def build_pipeline(checkpoint_path, *, device="cpu", log: Callable[[str], None] = print):
    """A diffusers ``StableDiffusionPipeline`` / ``StableDiffusionXLPipeline`` for a single-file checkpoint,
    built without any download. The scheduler is set per comparison (:func:`set_scheduler`)."""
    import torch

    with _quiet_transformers():  # importing the pipelines makes transformers warn about image processors
        from diffusers import AutoencoderKL, StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
        from diffusers.loaders.single_file_utils import (
            convert_ldm_unet_checkpoint,
            convert_ldm_vae_checkpoint,
            create_vae_diffusers_config_from_ldm,
        )

    from ..models import clip
    from ..models.detect import detect_checkpoint, detect_prediction_type, read_sidecar_yaml, unet_params_from_yaml
    from ..models.schedule import alphas_cumprod_from_state_dict
    from ..models.standalone import _heads_from_yaml, _text_encoder_folder, read_state_dict
    from ..models.tiny import ldm_yaml_config

    path = Path(checkpoint_path)
    state_dict = read_state_dict(path)
    yaml_config = read_sidecar_yaml(path)
    info = detect_checkpoint(state_dict, str(path), **_heads_from_yaml(unet_params_from_yaml(yaml_config)))
    prediction = detect_prediction_type(state_dict=state_dict, yaml_config=yaml_config)
    if prediction is None and info.arch == "sd2":
        log(f"{path.name}: no .yaml beside it, so epsilon prediction is assumed; put the model's yaml beside it "
            "for a v-prediction (768-v) model")
    prediction = prediction or "epsilon"
    if yaml_config is None:
        yaml_config = ldm_yaml_config(info.arch, info.unet, info.vae, prediction_type=prediction)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        unet_config = _unet_config(yaml_config, state_dict, info.arch)
        unet = UNet2DConditionModel(**unet_config)
        unet.load_state_dict({k: v.float() for k, v in convert_ldm_unet_checkpoint(state_dict, unet_config).items()},
                             strict=True)
        vae_config = create_vae_diffusers_config_from_ldm(yaml_config, state_dict, image_size=512)
        vae = AutoencoderKL(**vae_config)
        vae.load_state_dict({k: v.float() for k, v in convert_ldm_vae_checkpoint(state_dict, vae_config).items()},
                            strict=True)
    encoders = clip.text_encoders_from_state_dict(state_dict, info.arch, tokenizer_dir=_text_encoder_folder(yaml_config))
    alphas = alphas_cumprod_from_state_dict(state_dict)
    del state_dict
    text_models = [_hf_text_model(te.model) for te in encoders]
    if info.arch == "sdxl":
        pipe = StableDiffusionXLPipeline(
            vae=vae, text_encoder=text_models[0], text_encoder_2=text_models[1], tokenizer=encoders[0].tokenizer,
            tokenizer_2=encoders[1].tokenizer, unet=unet, scheduler=_scheduler("euler a", alphas, prediction),
            force_zeros_for_empty_prompt=False, add_watermarker=False,
        )
    else:
        pipe = StableDiffusionPipeline(
            vae=vae, text_encoder=text_models[0], tokenizer=encoders[0].tokenizer, unet=unet,
            scheduler=_scheduler("euler a", alphas, prediction), safety_checker=None, feature_extractor=None,
            requires_safety_checker=False,
        )
    pipe.set_progress_bar_config(disable=True)
    pipe.lora_trainer_info = {"arch": info.arch, "prediction_type": prediction, "alphas_cumprod": alphas,
                              "checkpoint": path.name}
    return pipe.to(torch.device(device))


def _scheduler(key: str, alphas_cumprod, prediction_type: str):
    import diffusers
    import torch

    from ..models.schedule import LINEAR_END, LINEAR_START, scaled_linear_alphas_cumprod

    class_name, extra = SCHEDULERS[key]
    # "linspace": timesteps evenly from the last to the first, as the WebUI's k-diffusion samplers space them
    options = dict(num_train_timesteps=len(alphas_cumprod), prediction_type=prediction_type,
                   timestep_spacing="linspace", steps_offset=1)
    if len(alphas_cumprod) == 1000 and torch.allclose(alphas_cumprod, scaled_linear_alphas_cumprod(), atol=1e-6):
        options.update(beta_start=LINEAR_START, beta_end=LINEAR_END, beta_schedule="scaled_linear")
    else:  # the checkpoint's own schedule (some fine-tunes ship a modified one), as betas
        betas = 1 - alphas_cumprod / alphas_cumprod.roll(1)
        betas[0] = 1 - alphas_cumprod[0]
        options["trained_betas"] = betas.float().numpy()
    options.update(extra)
    cls = getattr(diffusers, class_name)
    return cls(**options)


def set_scheduler(pipe, sampler_name: str) -> None:
    info = pipe.lora_trainer_info
    pipe.scheduler = _scheduler(sampler_key(sampler_name), info["alphas_cumprod"], info["prediction_type"])


# ------------------------------------------------------------------------------ cells


def parse_prompt(prompt: str) -> tuple[str, list[tuple[str, float, float]]]:
    """The text without its extra-network tags, and the ``<lora:NAME:te:unet>`` tags as
    (name, te weight, unet weight), read as the WebUI reads them (``unet`` defaults to ``te``,
    ``te`` to 1; ``te=`` / ``unet=`` named forms too). Other tag types load nothing."""
    loras = []
    for kind, args in _TAG.findall(prompt):
        if kind.strip() != "lora":
            continue
        parts = args.split(":")
        name, positional, named = parts[0].strip(), [], {}
        for part in parts[1:]:
            key, sep, value = part.partition("=")
            if sep:
                named[key.strip()] = value.strip()
            else:
                positional.append(part.strip())
        try:
            te = float(named.get("te", positional[0] if positional else 1.0))
            unet = float(named.get("unet", positional[1] if len(positional) > 1 else te))
        except ValueError:
            raise ComparisonError(f"cannot read the weights of <lora:{args}>") from None
        loras.append((name, te, unet))
    text = re.sub(r"\s{2,}", " ", _TAG.sub("", prompt)).strip()
    return text, loras


def _adapter_name(index: int, name: str) -> str:
    return f"lt{index}_" + re.sub(r"\W", "_", name)


class _Adapters:
    """The LoRA files loaded into the pipeline: loaded when a cell needs another set, unloaded before it."""

    def __init__(self, pipe, folder: Path):
        self.pipe = pipe
        self.folder = folder
        self.loaded: tuple[str, ...] = ()
        self.names: list[str] = []

    def use(self, loras: Sequence[tuple[str, float, float]]) -> None:
        wanted = tuple(name for name, _, _ in loras)
        if wanted != self.loaded:
            self.clear()
            for i, name in enumerate(wanted):
                path = self.folder / f"{name}.safetensors"
                if not path.is_file():
                    raise ComparisonError(f"the prompt names <lora:{name}:...>, but {path} does not exist")
                adapter = _adapter_name(i, name)
                self.pipe.load_lora_weights(str(path), adapter_name=adapter)
                self.names.append(adapter)
            self.loaded = wanted
        if not loras:
            return
        present = self.pipe.get_list_adapters()  # {"unet": [...], "text_encoder": [...], ...}
        weights = []
        for adapter, (_, te, unet) in zip(self.names, loras):
            per_part = {part: (unet if part == "unet" else te) for part, names in present.items() if adapter in names}
            weights.append(per_part)
        self.pipe.set_adapters(self.names, adapter_weights=weights)

    def clear(self) -> None:
        if self.names:
            self.pipe.unload_lora_weights()
        self.names, self.loaded = [], ()


def render_cell(pipe, prompt: str, negative: str, *, seed: int, steps: int, width: int, height: int,
                cfg_scale: float, clip_skip: Optional[int] = None):
    """One image from the pipeline as it is (adapters already set), at a fixed seed."""
    import torch

    options = dict(num_inference_steps=int(steps), guidance_scale=cfg_scale, width=int(width), height=int(height),
                   generator=torch.Generator(device="cpu").manual_seed(int(seed)), output_type="pil")
    with torch.no_grad():
        if pipe.lora_trainer_info["arch"] != "sdxl" and clip_skip and clip_skip > 1:
            # SDXL has fixed layers (kohya ignores clip_skip there too)
            options.update(prompt_embeds=_clip_skip_embeds(pipe, prompt, clip_skip),
                           negative_prompt_embeds=_clip_skip_embeds(pipe, negative, clip_skip))
        else:
            options.update(prompt=prompt, negative_prompt=negative)
        return pipe(**options).images[0]


def _clip_skip_embeds(pipe, text: str, clip_skip: int):
    """The prompt's embedding from the ``clip_skip``-th last layer through the final layer norm (the WebUI's
    CLIP skip), through the pipeline's own text encoder and so its LoRA layers. diffusers' ``clip_skip``
    does the same but reaches for ``text_encoder.text_model``, which transformers >= 5.6 no longer has."""
    tokenizer, encoder = pipe.tokenizer, pipe.text_encoder
    ids = tokenizer(text, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids.to(encoder.device)
    states = encoder(ids, output_hidden_states=True).hidden_states[-clip_skip]
    return getattr(encoder, "text_model", encoder).final_layer_norm(states)


# ------------------------------------------------------------------------------ the grid


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one bitmap size
        return ImageFont.load_default()


def _wrap(draw, text: str, font, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        trial = f"{line} {word}".strip()
        if line and draw.textlength(trial, font=font) > width:
            lines.append(line)
            line = word
        else:
            line = trial
    return lines + ([line] if line else [])


def draw_grid(cells: Sequence, columns: int, rows: int, x_titles: Sequence[str], y_titles: Sequence[str],
              cell_size: tuple[int, int]):
    """Cells (``ix + iy * columns`` order; None for a cell not drawn) in a grid with the column titles
    on top and, when there are any, the row titles on the left; no gap between cells."""
    from PIL import Image, ImageDraw

    w, h = cell_size
    font = _font(max(12, min(w, h) // 10))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_h = int(math.ceil(font.getbbox("Ag")[3] * 1.25))
    pad = max(4, line_h // 3)
    top_lines = [_wrap(probe, t, font, w - 2 * pad) for t in x_titles]
    top = pad * 2 + line_h * max([len(lines) for lines in top_lines] + [1])
    has_rows = any(t for t in y_titles)
    left_w = max(w * 3 // 4, 64) if has_rows else 0
    left_lines = [_wrap(probe, t, font, left_w - 2 * pad) for t in y_titles] if has_rows else []
    grid = Image.new("RGB", (left_w + columns * w, top + rows * h), "white")
    draw = ImageDraw.Draw(grid)
    for ix, lines in enumerate(top_lines):
        y = top - pad - line_h * len(lines)
        for line in lines:
            x = left_w + ix * w + (w - draw.textlength(line, font=font)) / 2
            draw.text((x, y), line, fill="black", font=font)
            y += line_h
    for iy, lines in enumerate(left_lines):
        y = top + iy * h + (h - line_h * len(lines)) / 2
        for line in lines:
            draw.text(((left_w - draw.textlength(line, font=font)) / 2, y), line, fill="black", font=font)
            y += line_h
    for index, image in enumerate(cells):
        if image is None:
            continue
        ix, iy = index % columns, index // columns
        grid.paste(image.convert("RGB").resize((w, h)) if image.size != (w, h) else image.convert("RGB"),
                   (left_w + ix * w, top + iy * h))
    return grid


def _infotext(comparison: Comparison, checkpoint: str, clip_skip: Optional[int]) -> str:
    c = comparison
    parts = [f"Steps: {c.steps}", f"Sampler: {c.sampler_name}", f"CFG scale: {c.cfg_scale:g}", f"Seed: {c.seed}",
             f"Size: {c.width}x{c.height}", f"Model: {Path(checkpoint).stem}"]
    if clip_skip and clip_skip > 1:
        parts.append(f"Clip skip: {clip_skip}")
    parts.append(f"Script: X/Y/Z plot (headless, lora_trainer): X Prompt S/R {c.x.text}"
                 + (f"; Y {c.y.label} {c.y.text}" if c.rows > 1 else ""))
    return f"{c.prompt}\nNegative prompt: {c.negative_prompt}\n" + ", ".join(parts)


def save_grid_png(grid, folder: Path, name: str, infotext: str) -> Path:
    from PIL.PngImagePlugin import PngInfo

    from ..fileio import write_atomic

    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{name}-grid-{time.strftime('%Y%m%d-%H%M%S')}"
    path = folder / f"{stem}.png"
    n = 1
    while path.exists():
        n += 1
        path = folder / f"{stem}-{n}.png"
    info = PngInfo()
    info.add_text("parameters", infotext)
    buffer = io.BytesIO()
    grid.save(buffer, format="PNG", pnginfo=info)
    write_atomic(path, buffer.getvalue())
    return path


def _clip_skip_of(comparison: Comparison) -> Optional[int]:
    try:
        value = int(comparison.family.metadata.get("ss_clip_skip", ""))
    except ValueError:
        return None
    return value if value > 0 else None


# ------------------------------------------------------------------------------ the comparison


def run_comparison(comparison: Comparison, *, checkpoint_path, host=None, save_grid: bool = True,
                   out_dir=None, clip_skip: Optional[int] = None, device: Optional[str] = None, pipe=None,
                   log: Callable[[str], None] = print) -> ComparisonResult:
    """Draw ``comparison`` with a diffusers pipeline over ``checkpoint_path`` (see the module's text).

    As a job of ``host`` (``host.run_exclusive``) when one is given. ``clip_skip`` (the WebUI's
    meaning: 2 = penultimate layer) defaults to the LoRA's ``ss_clip_skip``; ``device`` to CUDA
    when there is one; ``out_dir`` to :func:`default_grid_dir`; ``pipe`` reuses a pipeline from
    :func:`build_pipeline` (its LoRA adapters are unloaded at the end)."""
    if comparison.y.label == AXIS_CHECKPOINT:
        raise ComparisonError("the headless grid draws the one checkpoint it is given (--ckpt); compare checkpoints "
                              "by running one grid per checkpoint, or use the WebUI's X/Y/Z plot")

    def job() -> ComparisonResult:
        return _draw(comparison, checkpoint_path=checkpoint_path, host=host, save_grid=save_grid, out_dir=out_dir,
                     clip_skip=clip_skip, device=device, pipe=pipe, log=log)

    if host is not None:
        return host.run_exclusive(job, title=f"LoRA comparison {comparison.family.name}")
    return job()


def _draw_cells(c: Comparison, pipe, adapters: "_Adapters", images: list, host, clip_skip, log) -> bool:
    """Fill ``images`` (cell order); True when the host's Interrupt stopped it."""
    try:
        # column by column, so each epoch's file is loaded once for all its rows
        for cell in sorted(c.cells, key=lambda cell: (cell.ix, cell.iy)):
            if host is not None and host.interrupt_requested():
                log("grid: interrupted")
                return True
            text, loras = parse_prompt(cell.prompt)
            seed = int(c.y.values[cell.iy]) if c.y.label == AXIS_SEED else c.seed
            adapters.use(loras)
            images[cell.index] = render_cell(pipe, text, c.negative_prompt, seed=seed, steps=c.steps, width=c.width,
                                             height=c.height, cfg_scale=c.cfg_scale, clip_skip=clip_skip)
    finally:
        adapters.clear()
    return False


def _draw(comparison: Comparison, *, checkpoint_path, host, save_grid, out_dir, clip_skip, device, pipe,
          log) -> ComparisonResult:
    import torch

    c = comparison
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if clip_skip is None:
        clip_skip = _clip_skip_of(c)
    if pipe is None:
        log(f"grid: building a diffusers pipeline from {Path(checkpoint_path).name} on {device}")
        pipe = build_pipeline(checkpoint_path, device=device, log=log)
    set_scheduler(pipe, c.sampler_name)
    adapters = _Adapters(pipe, Path(c.family.folder))
    images: list = [None] * len(c.cells)
    started = time.perf_counter()
    with _quiet_transformers():
        interrupted = _draw_cells(c, pipe, adapters, images, host, clip_skip, log)
    log(f"grid: {sum(i is not None for i in images)} cells in {time.perf_counter() - started:.1f} s")
    if interrupted:  # cells not drawn stay grey, so every cell keeps its place
        from PIL import Image

        images = [i if i is not None else Image.new("RGB", (c.width, c.height), (128, 128, 128)) for i in images]

    grid = draw_grid(images, c.columns, c.rows, c.x.titles, c.y.titles if c.rows > 1 else [""], (c.width, c.height))
    infotext = _infotext(c, str(checkpoint_path), clip_skip)
    notes = []
    if any(kind.strip() not in ("lora",) and not kind.startswith("no_lora")
           for cell in c.cells for kind, _ in _TAG.findall(cell.prompt)):
        notes.append("the headless grid loads only <lora:...> tags; other extra-network tags were left out")
    grid_path = None
    if save_grid:
        folder = Path(out_dir) if out_dir is not None else default_grid_dir(c.family.folder)
        grid_path = str(save_grid_png(grid, folder, c.family.name, infotext))
    result = ComparisonResult(c, grid, images, grid_path, infotext, interrupted=interrupted, notes=notes)
    result.suggestion = suggestion_for(result)
    remember(result)
    return result
