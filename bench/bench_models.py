"""Benchmark inputs: full-size random SD1.5 / SDXL checkpoints, a synthetic dataset,
and the tokenizer folders kohya loads offline.

The checkpoints have the real architectures and the real single-file LDM key
layout (so our loader and kohya's both read them) with random weights: step
speed and memory do not depend on the values. Weights are drawn tensor by
tensor and stored in float16, so writing SDXL (3.47 G parameters, 6.9 GB)
holds one float16 copy in memory, never a float32 one.

The sizes are Stability's: SD1.5 UNet 320 channels, mult 1,2,4,4, 2 res blocks,
attention at levels 0-2 with 8 heads, context 768; SDXL UNet 320, mult 1,2,4,
transformer depth 0,2,10 (middle 10), 64-wide heads, linear projections,
context 2048, adm 2816; VAE 128, mult 1,2,4,4; CLIP ViT-L/14 text 768 wide,
12 layers; OpenCLIP bigG text 1280 wide, 32 layers, projection 1280.
"""
from __future__ import annotations

import math
import os
import random
from pathlib import Path
from typing import Callable, Iterator, Optional

import torch
from torch import nn

from lora_trainer.models import clip
from lora_trainer.models.ldm_unet import UNET_PREFIX, UNetConfig, UNetModel
from lora_trainer.models.ldm_vae import VAE_PREFIX, AutoencoderKL, VAEConfig
from lora_trainer.models.schedule import scaled_linear_alphas_cumprod
from lora_trainer.models.tokenizer import MODEL_MAX_LENGTH, SDXL_TE2_PAD_TOKEN, VOCAB_SIZE, write_tokenizer_files

SD15_UNET = UNetConfig(
    model_channels=320, channel_mult=(1, 2, 4, 4), num_res_blocks=2, transformer_depth=(1, 1, 1, 0),
    transformer_depth_middle=1, context_dim=768, use_linear=False, num_heads=8,
)
SDXL_UNET = UNetConfig(
    model_channels=320, channel_mult=(1, 2, 4), num_res_blocks=2, transformer_depth=(0, 2, 10),
    transformer_depth_middle=10, context_dim=2048, use_linear=True, num_head_channels=64, adm_in_channels=2816,
)
FULL_VAE = VAEConfig(ch=128, ch_mult=(1, 2, 4, 4), num_res_blocks=2)
CLIP_L = dict(hidden_size=768, num_layers=12, intermediate_size=3072, hidden_act="quick_gelu")
BIG_G = dict(hidden_size=1280, num_layers=32, intermediate_size=5120, hidden_act="gelu", projection_dim=1280)

# Published parameter counts, to check the configs against (text encoders without position_ids).
KNOWN_PARAMS = {
    ("sd1", "unet"): 859_520_964,
    ("sd1", "vae"): 83_653_863,
    ("sd1", "te"): 123_060_480,
    ("sdxl", "unet"): 2_567_463_684,
    ("sdxl", "vae"): 83_653_863,
    ("sdxl", "te1"): 123_060_480,
    ("sdxl", "te2"): 694_659_840,
}
_ZERO_INIT_SUFFIXES = ("out_layers.3", "proj_out", "out.2")  # LDM zero-initialises these

# Where kohya looks for its tokenizers under --tokenizer_cache_dir (hub id with "/" -> "_").
KOHYA_TOKENIZER_DIRS = {
    "openai_clip-vit-large-patch14": None,
    "laion_CLIP-ViT-bigG-14-laion2B-39B-b160k": SDXL_TE2_PAD_TOKEN,
}


# ------------------------------------------------------------------ weights


def _norm_owners(module: nn.Module) -> set[str]:
    return {n for n, m in module.named_modules() if isinstance(m, (nn.GroupNorm, nn.LayerNorm))}


def _draw(key: str, shape: tuple, norms: set[str], gen: Optional[torch.Generator], device) -> torch.Tensor:
    """A plausible random tensor: unit-variance outputs for unit-variance inputs, trained-looking norms."""
    if device == "meta":
        return torch.empty(shape, dtype=torch.float16, device="meta")
    owner, _, kind = key.rpartition(".")
    x = torch.randn(shape, generator=gen)
    if owner in norms:
        x = 1 + 0.1 * x if kind == "weight" else 0.1 * x
    elif key.endswith("token_embedding.weight"):
        x = 0.02 * x
    elif key.endswith("position_embedding.weight"):
        x = 0.01 * x
    elif kind == "bias" or len(shape) < 2:
        x = 0.02 * x
    else:
        x = x * math.prod(shape[1:]) ** -0.5 * (0.3 if owner.endswith(_ZERO_INIT_SUFFIXES) else 1.0)
    return x.to(torch.float16)


def _module_tensors(module: nn.Module, gen, device) -> Iterator[tuple[str, torch.Tensor]]:
    norms = _norm_owners(module)
    for key, ref in sorted(module.state_dict().items()):
        yield key, _draw(key, tuple(ref.shape), norms, gen, device)


def _text_encoder_tensors(spec: dict, open_clip: bool, gen, device) -> dict:
    config = clip.text_config(vocab_size=VOCAB_SIZE, max_positions=MODEL_MAX_LENGTH, **spec)
    with torch.device("meta"):
        model = clip._meta_model(config, projection=open_clip)
    norms = _norm_owners(model)
    hf = {k: _draw(k, tuple(v.shape), norms, gen, device) for k, v in sorted(clip.hf_state_dict(model).items())}
    if not open_clip:
        return hf
    own = clip._hf_to_open_clip(hf)  # fuses q/k/v, transposes the projection (works on meta too)
    # ln(100), OpenCLIP's trained value
    own["logit_scale"] = torch.empty((), device="meta") if device == "meta" else torch.tensor(4.6052)
    return own


def full_state_dict(arch: str, seed: int = 0, device: str = "cpu",
                    progress: Callable[[str], None] = lambda _m: None) -> dict:
    """A full single-file checkpoint dict of a random full-size ``arch`` ("sd1" / "sdxl") model.

    ``device="meta"`` gives the key set and shapes only (no memory), for checks.
    """
    if arch not in ("sd1", "sdxl"):
        raise ValueError(f"benchmark architectures are sd1 and sdxl, not {arch!r}")
    gen = None if device == "meta" else torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        unet = UNetModel(SD15_UNET if arch == "sd1" else SDXL_UNET)
        vae = AutoencoderKL(FULL_VAE)
    out = {}
    progress("UNet")
    out.update({UNET_PREFIX + k: v for k, v in _module_tensors(unet, gen, device)})
    progress("VAE")
    out.update({VAE_PREFIX + k: v for k, v in _module_tensors(vae, gen, device)})
    if arch == "sd1":
        progress("text encoder (CLIP ViT-L)")
        te = _text_encoder_tensors(CLIP_L, False, gen, device)
        out.update({"cond_stage_model.transformer." + k: v for k, v in te.items()})
        out["alphas_cumprod"] = scaled_linear_alphas_cumprod().float() if device != "meta" else \
            torch.empty(1000, device="meta")
    else:
        progress("text encoder 1 (CLIP ViT-L)")
        te1 = _text_encoder_tensors(CLIP_L, False, gen, device)
        out.update({"conditioner.embedders.0.transformer." + k: v for k, v in te1.items()})
        progress("text encoder 2 (OpenCLIP bigG)")
        te2 = _text_encoder_tensors(BIG_G, True, gen, device)
        out.update({"conditioner.embedders.1.model." + k: v for k, v in te2.items()})
    return out


def parameter_counts(arch: str) -> dict[str, int]:
    """Parameters of each part of the full-size ``arch`` model, built on the meta device."""
    def count(module: nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    with torch.device("meta"):
        counts = {"unet": count(UNetModel(SD15_UNET if arch == "sd1" else SDXL_UNET)),
                  "vae": count(AutoencoderKL(FULL_VAE))}
        specs = [("te", CLIP_L, False)] if arch == "sd1" else [("te1", CLIP_L, False), ("te2", BIG_G, True)]
        for name, spec, projection in specs:
            config = clip.text_config(vocab_size=VOCAB_SIZE, max_positions=MODEL_MAX_LENGTH, **spec)
            counts[name] = count(clip._meta_model(config, projection=projection))
    return counts


def check_full_configs(log: Callable[[str], None] = print) -> bool:
    """Meta-device check: parameter counts equal the published ones, and our checkpoint
    detection reads the written key layout back as the same configs."""
    from lora_trainer.models.detect import detect_checkpoint

    ok = True
    for arch, unet_config in (("sd1", SD15_UNET), ("sdxl", SDXL_UNET)):
        counts = parameter_counts(arch)
        for part, n in counts.items():
            known = KNOWN_PARAMS[(arch, part)]
            good = n == known
            ok &= good
            log(f"  {arch:4s} {part:4s} {n:>13,d} parameters (published {known:,d}) {'ok' if good else 'MISMATCH'}")
        sd = full_state_dict(arch, device="meta")
        info = detect_checkpoint(sd, f"<{arch} meta>")
        same = info.arch == arch and info.unet == unet_config and info.vae == FULL_VAE
        ok &= same
        log(f"  {arch:4s} checkpoint layout: {len(sd)} tensors, detected as {info.arch} with "
            f"{'the same' if same else 'DIFFERENT'} UNet/VAE config")
    return ok


def write_checkpoint(path: Path, arch: str, tiny: bool, seed: int = 0, log: Callable[[str], None] = print) -> Path:
    """Write (once; reused when present) the benchmark checkpoint for ``arch``."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    if tiny:
        from lora_trainer.models.tiny import tiny_state_dict

        sd = tiny_state_dict(arch, seed)
    else:
        log(f"writing a random full-size {arch} checkpoint to {path} (once; reused on later runs)")
        sd = full_state_dict(arch, seed, progress=lambda part: log(f"  drawing {part} weights"))
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    save_file(sd, str(tmp), metadata={"format": "pt", "lora_trainer_bench": "random weights"})
    os.replace(tmp, path)
    del sd
    return path


# ------------------------------------------------------------------ data


CAPTION = "bench_subject, a red circle on a plain background, simple background"


def write_dataset(root: Path, resolution: int, count: int = 40, seed: int = 0) -> Path:
    """``root/1_bench/`` with ``count`` square images of ``resolution`` and .txt captions.

    Every image has the same caption: tokens are padded to 77 either way, so the
    text does not change the step time, and a caption-keyed text-encoder cache is
    full after the first step (kohya fills its cache before step 1).
    Returns the train_data_dir (``root``).
    """
    from PIL import Image, ImageDraw

    root = Path(root)
    folder = root / "1_bench"
    done = folder / ".complete"
    if done.is_file() and done.read_text() == f"{resolution} {count} {seed}":
        return root
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    for i in range(count):
        image = Image.new("RGB", (resolution, resolution), tuple(rng.randrange(256) for _ in range(3)))
        draw = ImageDraw.Draw(image)
        for _ in range(3):
            r = rng.randint(resolution // 10, resolution // 3)
            cx, cy = rng.randint(r, resolution - r), rng.randint(r, resolution - r)
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=tuple(rng.randrange(256) for _ in range(3)))
        image.save(folder / f"img_{i:03d}.png")
        (folder / f"img_{i:03d}.txt").write_text(CAPTION, encoding="utf-8")
    done.write_text(f"{resolution} {count} {seed}")
    return root


def write_kohya_tokenizers(cache_dir: Path) -> Path:
    """The folders kohya's ``--tokenizer_cache_dir`` loads instead of the hub (CLIP-L, bigG)."""
    cache_dir = Path(cache_dir)
    for name, pad in KOHYA_TOKENIZER_DIRS.items():
        target = cache_dir / name
        if not (target / "vocab.json").is_file():
            write_tokenizer_files(target, pad_token=pad)
    return cache_dir
