"""A fake AUTOMATIC1111 WebUI for the host adapter's tests (written for lora_trainer, no WebUI code).

* ``modules/``: the WebUI package's names the adapter reads (``shared``,
  ``call_queue``, ``devices``, ``lowvram``, ``sd_unet``, ``paths``, ``progress``);
* ``lora_extension/networks.py``: the built-in Lora extension's in-place merge
  behaviour, imported as the top-level module ``networks`` as the WebUI does;
* :func:`build_sd_model`: a WebUI-shaped model (``ldm_like``) around the tiny
  checkpoint's UNet / CLIP / VAE, loaded by lora_trainer's standalone loader;
* :func:`apply_tome`: a tomesd-style class patch on the UNet's transformer blocks.

:func:`install` puts ``modules`` and ``networks`` on ``sys.path`` (through
pytest's ``monkeypatch``) and :func:`uninstall` removes them from ``sys.modules``.
"""
from __future__ import annotations

import sys
import types
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def _fake_module_names():
    return [n for n in sys.modules if n == "modules" or n.startswith("modules.") or n == "networks"]


def install(monkeypatch, lora_dir, models_path=None) -> types.SimpleNamespace:
    """Make ``import modules.shared`` / ``import networks`` find the fakes; returns them."""
    for name in _fake_module_names():
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(HERE / "lora_extension"))
    monkeypatch.syspath_prepend(str(HERE))
    import networks
    from modules import call_queue, devices, lowvram, paths, progress, sd_unet, shared

    shared.cmd_opts.lora_dir = str(lora_dir)
    paths.models_path = str(models_path or Path(lora_dir).parent)
    return types.SimpleNamespace(shared=shared, call_queue=call_queue, devices=devices, lowvram=lowvram,
                                 sd_unet=sd_unet, paths=paths, progress=progress, networks=networks)


def uninstall() -> None:
    networks = sys.modules.get("networks")
    if networks is not None and hasattr(networks, "uninstall_patches"):
        networks.uninstall_patches()
    for name in _fake_module_names():
        del sys.modules[name]


def build_sd_model(checkpoint, dtype=torch.float32):
    """The tiny checkpoint as the WebUI would hold it: requires_grad left on, eval mode."""
    from lora_trainer.models.detect import read_sidecar_yaml
    from lora_trainer.models.standalone import model_from_state_dict, read_state_dict

    from . import ldm_like

    checkpoint = Path(checkpoint)
    sd = read_state_dict(checkpoint)
    parts = model_from_state_dict(sd, path=str(checkpoint), yaml_config=read_sidecar_yaml(checkpoint),
                                  dtype=dtype, name=checkpoint.name)
    arch = parts.arch
    parameterization = "v" if parts.prediction_type == "v_prediction" else "eps"
    if arch == "sdxl":
        te1 = parts.text_encoders[0]
        te1.model.text_model.embeddings.token_embedding = ldm_like.EmbeddingsWithFixes(
            te1.model.text_model.embeddings.token_embedding)
        tower = ldm_like.open_clip_tower(sd, "conditioner.embedders.1.model.", dtype)
        conditioner = ldm_like.GeneralConditioner([
            ldm_like.CustomWordsWrapper(ldm_like.FrozenCLIPEmbedder(te1.model, te1.tokenizer, "hidden", -2)),
            ldm_like.CustomWordsWrapper(ldm_like.FrozenOpenCLIPEmbedder(tower)),
            ldm_like.SizeEmbedder("original_size_as_tuple"),
            ldm_like.SizeEmbedder("crop_coords_top_left"),
            ldm_like.SizeEmbedder("target_size_as_tuple"),
        ])
        model = ldm_like.DiffusionEngine(parts.unet, conditioner, parts.vae, parts.alphas_cumprod,
                                         parts.vae_scale_factor, parameterization)
    else:
        if arch == "sd1":
            te = parts.text_encoders[0]
            te.model.text_model.embeddings.token_embedding = ldm_like.EmbeddingsWithFixes(
                te.model.text_model.embeddings.token_embedding)
            holder = ldm_like.FrozenCLIPEmbedder(te.model, te.tokenizer)
        else:
            holder = ldm_like.FrozenOpenCLIPEmbedder(ldm_like.open_clip_tower(sd, "cond_stage_model.model.", dtype))
        model = ldm_like.LatentDiffusion(parts.unet, ldm_like.CustomWordsWrapper(holder), parts.vae,
                                         parts.alphas_cumprod, parts.vae_scale_factor, parameterization, arch)
    model.requires_grad_(True)  # the WebUI never freezes its model
    model.eval()
    model.sd_checkpoint_info = types.SimpleNamespace(filename=str(checkpoint), hash="0badcafe", sha256="ab" * 32)
    model.sd_model_hash = "0123456789"
    return model


def _tome_class(base):
    class ToMeBlock(base):
        _parent = base

        def forward(self, x, context=None):  # stands for "attention over merged tokens": not the block's output
            return base.forward(self, 0.5 * x, context)

    return ToMeBlock


def apply_tome(unet) -> int:
    """Patch every BasicTransformerBlock's class as tomesd does; returns how many."""
    count = 0
    for module in unet.modules():
        if type(module).__name__ == "BasicTransformerBlock":
            module.__class__ = _tome_class(type(module))
            count += 1
    return count
