"""A stand-in for the WebUI's built-in Lora extension (``extensions-builtin/Lora/networks.py``), tests only.

Written for lora_trainer's tests. It reproduces the behaviour the host adapter
has to cope with, not the extension's code:

* ``assign_network_names(sd_model)`` names layers as the extension does
  (module path with ``_``; SDXL embedders prefixed by their index);
* the patched forwards (:func:`install_patches`) call
  :func:`network_apply_weights` before every Linear / Conv2d / GroupNorm /
  LayerNorm / MultiheadAttention forward; it merges the networks in
  ``loaded_networks`` into the weights *in place* the first time, keeping CPU
  copies of the clean tensors in ``network_weights_backup`` /
  ``network_bias_backup`` and marking the layer with ``network_current_names``.
  The merge stays after the "generation";
* :func:`network_restore_weights_from_backup` copies the clean tensors back;
* a network may add a bias to a layer that has none (the merge then creates a
  new ``bias`` Parameter, which a restore sets back to None).
"""
from __future__ import annotations

import os

import torch
from torch import nn

loaded_networks: list = []
available_networks: dict = {}
list_calls = 0
_originals: dict = {}
PATCHED = (nn.Linear, nn.Conv2d, nn.GroupNorm, nn.LayerNorm, nn.MultiheadAttention)


class NetworkOnDisk:
    def __init__(self, name, filename):
        self.name = name
        self.filename = filename


class Network:
    """``modules``: layer name -> dict of deltas ("weight", "bias", or for attention
    "in_proj_weight" / "out_proj_weight")."""

    def __init__(self, name, filename, modules, te_multiplier=1.0, unet_multiplier=1.0):
        self.name = name
        self.network_on_disk = NetworkOnDisk(name, filename)
        self.mtime = os.path.getmtime(filename)
        self.modules = modules
        self.te_multiplier = te_multiplier
        self.unet_multiplier = unet_multiplier
        self.dyn_dim = None


def assign_network_names(sd_model) -> dict:
    mapping = {}
    if getattr(sd_model, "is_sdxl", False):
        for index, embedder in enumerate(sd_model.conditioner.embedders):
            if hasattr(embedder, "wrapped"):
                for name, module in embedder.wrapped.named_modules():
                    mapping[f"{index}_{name.replace('.', '_')}"] = module
    else:
        for name, module in sd_model.cond_stage_model.wrapped.named_modules():
            mapping[name.replace(".", "_")] = module
    for name, module in sd_model.model.named_modules():
        mapping[name.replace(".", "_")] = module
    for name, module in mapping.items():
        module.network_layer_name = name
    sd_model.network_layer_mapping = mapping
    return mapping


def _cpu_copy(tensor):
    return None if tensor is None else tensor.detach().to("cpu", copy=True)


def _is_attention(module) -> bool:
    return isinstance(module, nn.MultiheadAttention)


def network_restore_weights_from_backup(module) -> None:
    weights = getattr(module, "network_weights_backup", None)
    bias = getattr(module, "network_bias_backup", None)
    if weights is None and bias is None:
        return
    with torch.no_grad():
        if _is_attention(module):
            if weights is not None:
                module.in_proj_weight.copy_(weights[0])
                module.out_proj.weight.copy_(weights[1])
            if bias is None:
                module.out_proj.bias = None
            else:
                module.out_proj.bias.copy_(bias)
            return
        if weights is not None:
            module.weight.copy_(weights)
        if bias is None:
            module.bias = None
        else:
            module.bias.copy_(bias)


def network_apply_weights(module) -> None:
    layer = getattr(module, "network_layer_name", None)
    if layer is None:
        return
    current = getattr(module, "network_current_names", ())
    wanted = tuple((n.name, n.te_multiplier, n.unet_multiplier, n.dyn_dim) for n in loaded_networks)
    if wanted and getattr(module, "network_weights_backup", None) is None:
        if current:
            raise RuntimeError(f"{layer}: merged weights without a backup")
        if _is_attention(module):
            module.network_weights_backup = (_cpu_copy(module.in_proj_weight), _cpu_copy(module.out_proj.weight))
            module.network_bias_backup = _cpu_copy(module.out_proj.bias)
        else:
            module.network_weights_backup = _cpu_copy(module.weight)
            module.network_bias_backup = _cpu_copy(getattr(module, "bias", None))
    if current == wanted:
        return
    network_restore_weights_from_backup(module)
    with torch.no_grad():
        for net in loaded_networks:
            delta = net.modules.get(layer)
            if delta is None:
                continue
            if _is_attention(module):
                module.in_proj_weight.add_(delta["in_proj_weight"].to(module.in_proj_weight))
                module.out_proj.weight.add_(delta["out_proj_weight"].to(module.out_proj.weight))
                continue
            module.weight.add_(delta["weight"].to(module.weight))
            if "bias" in delta:
                if module.bias is None:
                    module.bias = nn.Parameter(delta["bias"].to(module.weight).clone())
                else:
                    module.bias.add_(delta["bias"].to(module.bias))
    module.network_current_names = wanted


def install_patches() -> None:
    """Route every patched class's forward through network_apply_weights, as the extension does."""
    if _originals:
        return
    for cls in PATCHED:
        original = cls.forward
        _originals[cls] = original

        def forward(self, *args, _original=original, **kwargs):
            network_apply_weights(self)
            return _original(self, *args, **kwargs)

        cls.forward = forward


def uninstall_patches() -> None:
    for cls, original in _originals.items():
        cls.forward = original
    _originals.clear()


def simulate_generation(sd_model) -> None:
    """What a generation does to the weights: every named layer of a patched class whose forward
    runs applies the loaded networks (an attention's ``out_proj`` is used by the attention's
    forward, its own forward never runs)."""
    inner = {id(m.out_proj) for m in sd_model.modules() if _is_attention(m)}
    for module in sd_model.modules():
        if isinstance(module, PATCHED) and id(module) not in inner:
            network_apply_weights(module)


def random_network(sd_model, name, filename, layers, seed=0, scale=0.05, add_bias_to=()) -> Network:
    """A network with random deltas for ``layers`` (names from assign_network_names);
    layers in ``add_bias_to`` also get a bias delta (creating a bias where none exists)."""
    mapping = getattr(sd_model, "network_layer_mapping", None) or assign_network_names(sd_model)
    generator = torch.Generator().manual_seed(seed)
    modules = {}
    for layer in layers:
        module = mapping[layer]
        if _is_attention(module):
            modules[layer] = {
                "in_proj_weight": scale * torch.randn(module.in_proj_weight.shape, generator=generator),
                "out_proj_weight": scale * torch.randn(module.out_proj.weight.shape, generator=generator),
            }
            continue
        entry = {"weight": scale * torch.randn(module.weight.shape, generator=generator)}
        if layer in add_bias_to:
            entry["bias"] = scale * torch.randn(module.weight.shape[0], generator=generator)
        modules[layer] = entry
    with open(filename, "wb") as f:
        f.write(b"fake network " + name.encode())
    return Network(name, filename, modules)


def list_available_networks() -> None:
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
