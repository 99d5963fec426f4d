"""Headless runs: load a checkpoint file, train with a progress bar, print a summary.

This is the standalone host's job runner; the CLI's ``train`` and ``demo``
verbs call it. Errors the user can fix come out as one clear message, not a
traceback.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .config import ConfigError, TrainConfig, from_dict, to_toml


@dataclass
class RunOutcome:
    ok: bool
    files: list[Path] = field(default_factory=list)
    message: str = ""
    result: object = None


def _format_bytes(n: Optional[int]) -> str:
    return "n/a" if n is None else f"{n / 2**30:.2f} GiB"


class ProgressBar:
    """A tqdm bar fed by the loop's Progress events."""

    def __init__(self, stream=None):
        self.bar = None
        self.stream = stream or sys.stderr

    def __call__(self, event) -> None:
        from tqdm import tqdm

        if event.kind == "start":
            self.bar = tqdm(total=event.total_steps, desc="steps", file=self.stream, dynamic_ncols=True)
        elif event.kind == "step" and self.bar is not None:
            self.bar.n = event.step
            post = {"epoch": f"{event.epoch}/{event.total_epochs}", "loss": f"{event.loss:.4f}"}
            for key, value in event.lr.items():
                post[key] = f"{value:.3g}"
            self.bar.set_postfix(post, refresh=False)
            self.bar.refresh()
        elif event.kind == "saved":
            (self.bar.write if self.bar else print)(f"saved {event.path}")
        elif event.kind == "sample":
            (self.bar.write if self.bar else print)(f"sample {event.path}")
        elif event.kind == "end" and self.bar is not None:
            self.bar.close()


def file_hashes(path) -> tuple[str, str]:
    """(legacy, sha256) of a checkpoint file as kohya records them: the WebUI's old 8-hex
    hash of 64 KiB at 1 MiB, and the full-file sha256."""
    import hashlib

    full = hashlib.sha256()
    with open(path, "rb") as handle:
        handle.seek(0x100000)
        legacy = hashlib.sha256(handle.read(0x10000)).hexdigest()[:8]
        handle.seek(0)
        for block in iter(lambda: handle.read(1 << 20), b""):
            full.update(block)
    return legacy, full.hexdigest()


def run_training(config: TrainConfig, log=print) -> RunOutcome:
    from .dataset import DatasetError
    from .models.standalone import load_checkpoint
    from .training.loop import TrainingError, train
    import torch

    device = _pick_device(config.device)
    dtype = torch.float32
    if device.type == "cuda" and config.mixed_precision in ("fp16", "bf16"):
        # frozen base weights in the compute dtype, as kohya does under mixed precision
        dtype = torch.float16 if config.mixed_precision == "fp16" else torch.bfloat16
    started = time.perf_counter()
    try:
        model = load_checkpoint(
            config.pretrained_model_name_or_path, device=device, dtype=dtype,
            prediction_type="v_prediction" if config.v_parameterization else None,
        )
        if config.no_half_vae and model.vae is not None:
            model.vae.float()  # the VAE functions follow the VAE's own dtype
        model.model_hash, model.model_sha256 = file_hashes(config.pretrained_model_name_or_path)
        log(f"model: {model.name} ({model.arch}, {model.prediction_type}) on {device}")
        result = train(config, model, on_progress=ProgressBar(), log=log)
    except (ConfigError, DatasetError, TrainingError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return RunOutcome(ok=False, message=str(exc))
    except torch.cuda.OutOfMemoryError:
        message = ("out of GPU memory: lower train_batch_size or resolution, or set gradient_checkpointing = true "
                   "and cache_latents = true; epochs saved so far are kept")
        print(f"error: {message}", file=sys.stderr)
        return RunOutcome(ok=False, message=message)
    except OSError as exc:  # a folder that cannot be written, a full disk
        print(f"error: {exc}", file=sys.stderr)
        return RunOutcome(ok=False, message=str(exc))
    except KeyboardInterrupt:
        print("interrupted; epochs saved so far are kept", file=sys.stderr)
        return RunOutcome(ok=False, message="interrupted")

    elapsed = time.perf_counter() - started
    log("")
    log(f"done: {result.steps} steps, {result.epochs} epochs in {elapsed:.1f} s "
        f"(training {result.elapsed:.1f} s); peak memory {_format_bytes(result.peak_memory)}")
    for path in result.files:
        log(f"  wrote {path}")
    return RunOutcome(ok=True, files=list(result.files), result=result)


def _pick_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def demo_config(root: Path, checkpoint: Path, train_dir: Path, epochs: int) -> TrainConfig:
    config, _ = from_dict({
        "pretrained_model_name_or_path": str(checkpoint),
        "train_data_dir": str(train_dir),
        "output_dir": str(root / "lora"),
        "output_name": "demo",
        "trigger_word": "demo_circle",
        "resolution": "96",
        "enable_bucket": True,
        "min_bucket_reso": 64,
        "max_bucket_reso": 128,
        "bucket_reso_steps": 64,
        "train_batch_size": 4,
        "network_dim": 8,
        "network_alpha": 4,
        "optimizer_type": "AdamW",
        "learning_rate": 1e-3,
        "lr_scheduler": "cosine",
        "max_train_epochs": epochs,
        "save_every_n_epochs": 1,
        "clip_skip": 2,
        "cache_latents": True,
        "seed": 42,
        "device": "cpu",
    })
    return config


def describe_comparison(result) -> list[str]:
    """The grid's file, the change curve between epochs and the suggestion, in words."""
    lines = [f"grid: {result.grid_path}" if result.grid_path else "grid: not saved"]
    for note in list(result.comparison.family.warnings) + list(result.notes):
        lines.append(f"note: {note}")
    suggestion = result.suggestion
    if suggestion is None:
        if result.interrupted:
            lines.append("interrupted: no suggestion from an unfinished grid")
        else:
            lines.append("no suggestion: the rows change the LoRA's weights or the checkpoint, which changes the "
                         "images more than the epoch does; draw one row, or seeds as rows (--y seed), to get one")
        return lines
    lines.append("change into each epoch (mean pixel difference at the same seeds, 0..1):")
    width = max((len(label) for label in suggestion.labels), default=0)
    top = max(suggestion.curve, default=0.0) or 1.0
    for label, value in zip(suggestion.labels, suggestion.curve):
        lines.append(f"  {label:<{width}}  {value:.4f}  {'#' * round(value / top * 30)}")
    lines.append(f"  (a change below {suggestion.threshold:.4f} counts as settled)")
    chosen = result.as_dict()["suggestion"].get("file")
    lines.append(f"suggestion: epoch {suggestion.epoch}" + (f" ({chosen})" if chosen else "") + f" [{suggestion.verdict}]")
    lines.append(f"why: {suggestion.reason}")
    return lines


def run_grid(checkpoint, lora_dir, name: str, *, prompt: Optional[str] = None, negative: Optional[str] = None,
             seed: int = 1234, strength: float = 0.8, epochs=None, y: Optional[str] = None, steps: int = 20,
             width: int = 512, height: int = 512, cfg: float = 7.0, sampler: str = "Euler a", out_dir=None,
             clip_skip: Optional[int] = None, device: str = "auto", log=print) -> RunOutcome:
    """The epoch grid of LoRA family ``name`` in ``lora_dir`` over ``checkpoint``, headless (standalone host,
    diffusers pipeline); prints the grid's file, the change curve and the suggestion."""
    from .compare.headless import sampler_key
    from .compare.xyz import ComparisonError, build_comparison, discover_family
    from .hosts.standalone import StandaloneHost

    try:
        if not Path(checkpoint).is_file():
            raise FileNotFoundError(f"checkpoint {checkpoint} does not exist")
        sampler_key(sampler)  # an unknown sampler is refused before the model loads
        family = discover_family(lora_dir, name)
        comparison = build_comparison(family, prompt=prompt, negative_prompt=negative, seed=seed, strength=strength,
                                      epochs=epochs, y=y, steps=steps, width=width, height=height, cfg_scale=cfg,
                                      sampler_name=sampler)
        log(f"grid: {name} over {comparison.columns - 1} epoch(s) x {comparison.rows} row(s); prompt: {comparison.prompt}")
        host = StandaloneHost(checkpoint, lora_dir, device=device, log=log)
        result = host.run_comparison(comparison, save_grid=True, out_dir=out_dir, clip_skip=clip_skip)
    except (ComparisonError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return RunOutcome(ok=False, message=str(exc))
    for line in describe_comparison(result):
        log(line)
    return RunOutcome(ok=True, files=[Path(result.grid_path)] if result.grid_path else [], result=result)


def run_demo(root: Path, epochs: int = 4, log=print) -> RunOutcome:
    from .demo import make_demo_dataset
    from .models.tiny import write_tiny_checkpoint

    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    log(f"demo: writing a tiny SD1 checkpoint and a generated dataset under {root}")
    paths = write_tiny_checkpoint("sd1", root / "models" / "tiny-sd1.safetensors")
    train_dir = make_demo_dataset(root / "dataset")
    config = demo_config(root, Path(paths["checkpoint"]), train_dir, epochs)
    config_path = root / "demo.toml"
    config_path.write_text(to_toml(config), encoding="utf-8")
    log(f"demo: config {config_path} (re-run with: python -m lora_trainer train --config {config_path})")
    outcome = run_training(config, log=log)
    if not outcome.ok:
        return outcome
    log("")
    log(f"demo: checkpoint  {paths['checkpoint']}")
    log(f"demo: dataset     {train_dir}")
    log(f"demo: LoRA files  {root / 'lora'}")
    log("")
    # the epoch grid, small and short so it stays quick on a CPU (the model is random: the images are noise)
    grid = run_grid(paths["checkpoint"], root / "lora", "demo", steps=8, width=128, height=128, device="cpu",
                    out_dir=root / "grids", log=log)
    if grid.ok:
        log(f"demo: re-draw it with: python -m lora_trainer grid --ckpt {paths['checkpoint']} "
            f"--lora-dir {root / 'lora'} --name demo --steps 8 --width 128 --height 128")
    outcome.files += grid.files
    outcome.ok = grid.ok
    outcome.message = grid.message
    return outcome
