"""Forge's built-in LoRA extension (``extensions-builtin/sd_forge_lora/networks.py``), re-written
for tests; Forge imports it as the top-level module ``networks``.

* ``load_lora_state_dict`` is an ``lru_cache`` keyed by file name: a file rewritten
  under the same name is not read again (``reads`` counts real reads);
* ``load_networks(names, ...)`` compares the wanted files and strengths with the
  engine's ``current_lora_hash`` and does nothing when equal; otherwise it starts from
  the original patchers and clones them with the LoRA patches added. Nothing is
  merged yet: the memory manager merges when it loads the patched UNet / CLIP
  (:func:`generate` does that, as a generation would).
"""
import functools
import os

import torch

loaded_networks = []
available_networks = {}
list_calls = 0
reads = []


class NetworkOnDisk:
    def __init__(self, name, filename):
        self.name = name
        self.filename = filename


class Network:
    def __init__(self, name, network_on_disk):
        self.name = name
        self.network_on_disk = network_on_disk
        self.mtime = None


@functools.lru_cache(maxsize=5)
def load_lora_state_dict(filename):
    from safetensors.torch import load_file

    reads.append(filename)
    return load_file(filename)


def list_available_networks():
    global list_calls
    from modules import shared

    list_calls += 1
    available_networks.clear()
    folder = shared.cmd_opts.lora_dir
    if folder and os.path.isdir(folder):
        for entry in sorted(os.listdir(folder)):
            stem, ext = os.path.splitext(entry)
            if ext in (".safetensors", ".pt", ".ckpt"):
                available_networks[stem] = NetworkOnDisk(stem, os.path.join(folder, entry))


def _patches(sd_model, lora_sd):
    """Forge's key mapping, for the stand-in: kohya names -> the patchers' parameter keys."""
    from lora_trainer.networks.naming import kohya_name_map

    objects = sd_model.forge_objects_original
    holder = objects.clip.cond_stage_model
    stems = [("te1", "clip_l"), ("te2", "clip_g")] if sd_model.is_sdxl else [("te", "clip_l")]
    names = kohya_name_map("sdxl" if sd_model.is_sdxl else "sd1", objects.unet.model.diffusion_model,
                           [(stem, getattr(holder, key).transformer) for stem, key in stems])
    prefixes = {stem: f"{key}.transformer." for stem, key in stems}
    unet, clip = {}, {}
    for key in lora_sd:
        if not key.endswith(".lora_down.weight"):
            continue
        name = key[: -len(".lora_down.weight")]
        root, path = names[name]
        alpha = lora_sd.get(name + ".alpha")
        value = ("lora", (lora_sd[name + ".lora_up.weight"], lora_sd[key],
                          None if alpha is None else float(alpha), None, None))
        if root == "unet":
            unet[f"diffusion_model.{path}.weight"] = value
        else:
            clip[prefixes[root] + path + ".weight"] = value
    return unet, clip


def load_networks(names, te_multipliers=None, unet_multipliers=None, dyn_dims=None):
    from modules import sd_models

    sd_model = sd_models.model_data.get_sd_model()
    loaded_networks.clear()
    if any(name not in available_networks for name in names):
        list_available_networks()
    on_disk = [available_networks[name] for name in names]
    te_multipliers = te_multipliers or [1.0] * len(names)
    unet_multipliers = unet_multipliers or [1.0] * len(names)
    for name, entry in zip(names, on_disk):
        net = Network(name, entry)
        net.mtime = os.path.getmtime(entry.filename)
        loaded_networks.append(net)
    targets = [[entry.filename, u, t, False] for entry, u, t in zip(on_disk, unet_multipliers, te_multipliers)]
    if sd_model.current_lora_hash == str(targets):
        return
    sd_model.current_lora_hash = str(targets)
    objects = sd_model.forge_objects
    objects.unet = sd_model.forge_objects_original.unet
    objects.clip = sd_model.forge_objects_original.clip
    for filename, unet_strength, te_strength, online in targets:
        unet_patches, clip_patches = _patches(sd_model, load_lora_state_dict(filename))
        unet, clip = objects.unet.clone(), objects.clip.clone()
        unet.add_patches(filename=filename, patches=unet_patches, strength_patch=unet_strength, online_mode=online)
        clip.add_patches(filename=filename, patches=clip_patches, strength_patch=te_strength, online_mode=online)
        objects.unet, objects.clip = unet, clip
    sd_model.forge_objects_after_applying_lora = objects.shallow_copy()


@torch.inference_mode()
def generate(loras=()):
    """What a Forge generation does to the model: activate ``loras`` ([(name, weight)]), load the
    UNet and text encoders (merging the LoRAs), run the UNet once. Returns its output."""
    from backend import memory_management
    from modules import sd_models

    load_networks([n for n, _w in loras], [w for _n, w in loras], [w for _n, w in loras])
    sd_model = sd_models.model_data.get_sd_model()
    objects = sd_model.forge_objects
    memory_management.load_models_gpu([objects.unet, objects.clip.patcher])
    unet = objects.unet.model.diffusion_model
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 8, 8, generator=generator)
    context = torch.randn(1, 77, unet.config.context_dim, generator=generator)
    y = torch.randn(1, unet.config.adm_in_channels, generator=generator) if unet.config.adm_in_channels else None
    return unet(x, torch.tensor([500]), context, y, transformer_options={})
