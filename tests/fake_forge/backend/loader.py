"""Forge's model loading (``backend/loader.py``: ``forge_loader``) for tests, from the tiny checkpoints.

As in Forge everything is built under ``torch.inference_mode()`` with Forge's layer
classes in place of ``torch.nn.Linear`` / ``Conv2d``: every weight is an inference
tensor, and (``nn.Parameter``'s default) has ``requires_grad=True``. The modules
and weights are lora_trainer's own standalone loader's, so the same file goes
through the CLI and through this stand-in.
"""
from pathlib import Path

import torch

from backend import memory_management
from backend.diffusion_engine.base import ForgeObjects, StableDiffusion, StableDiffusionXL
from backend.modules.k_model import KModel, Prediction
from backend.nn import unet as unet_nn
from backend.nn import vae as vae_nn
from backend.nn.clip import CLIPEmbeddingForTextualInversion, IntegratedCLIP
from backend.operations import using_forge_operations
from backend.patcher.clip import CLIP
from backend.patcher.unet import UnetPatcher
from backend.patcher.vae import VAE


def _as_inference_tensors(module):
    """Forge's weights are inference tensors with requires_grad=True (nn.Parameter's default); a
    Parameter held by two modules stays one object."""
    made = {}
    for m in module.modules():
        for name, p in list(m._parameters.items()):
            if p is not None:
                if id(p) not in made:
                    data = p.detach() if p.is_inference() else p.detach().clone()
                    made[id(p)] = torch.nn.Parameter(data, requires_grad=True)
                m._parameters[name] = made[id(p)]
        for name, b in list(m._buffers.items()):
            if b is not None and not b.is_inference():
                m._buffers[name] = b.clone()
    return module


@torch.inference_mode()
def forge_loader(checkpoint, dtype=torch.float32):
    from lora_trainer.models.detect import read_sidecar_yaml
    from lora_trainer.models.standalone import model_from_state_dict, read_state_dict

    path = Path(checkpoint)
    yaml_config = read_sidecar_yaml(path)
    with using_forge_operations():
        parts = model_from_state_dict(read_state_dict(path), path=str(path), yaml_config=yaml_config,
                                      dtype=dtype, name=path.name)
    unet = _as_inference_tensors(unet_nn.forgeify(parts.unet))
    vae = _as_inference_tensors(vae_nn.forgeify(parts.vae, parts.vae_scale_factor))
    holders = {}
    tokenizers = {}
    for te, key in zip(parts.text_encoders, ("clip_l", "clip_g")):
        for m in te.model.modules():
            if hasattr(m, "parameters_manual_cast"):
                m.parameters_manual_cast = True  # Forge's text encoders always cast per call
        embeddings = te.model.text_model.embeddings
        embeddings.token_embedding = CLIPEmbeddingForTextualInversion(embeddings.token_embedding)
        holders[key] = IntegratedCLIP(te.model)
        tokenizers[key] = te.tokenizer
    params = ((yaml_config or {}).get("model", {}).get("params", {})) or {}
    predictor = Prediction(parts.prediction_type, params.get("linear_start", 0.00085),
                           params.get("linear_end", 0.012))
    kmodel = KModel(unet, predictor, storage_dtype=dtype, computation_dtype=dtype)
    device = memory_management.get_torch_device()
    objects = ForgeObjects(
        unet=UnetPatcher(kmodel, load_device=device, offload_device=memory_management.unet_offload_device()),
        clip=CLIP(model_dict={k: _as_inference_tensors(v) for k, v in holders.items()}, tokenizer_dict=tokenizers),
        vae=VAE(vae),
    )
    engine = (StableDiffusionXL if parts.arch == "sdxl" else StableDiffusion)(objects)
    engine.arch = parts.arch
    return engine
