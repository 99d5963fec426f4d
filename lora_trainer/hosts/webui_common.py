"""Pieces the WebUI host adapters share.

Everything here works on plain ``torch.nn`` modules and duck-typed WebUI
objects; nothing imports the WebUI. The adapters (``a1111.py``) decide when to
use which piece.

* :func:`frozen_and_restored`: freeze every parameter of the WebUI's model for
  the training and give back each ``requires_grad``, ``.grad`` and
  ``training`` flag exactly.
* :func:`lora_extension_unmerged`: the built-in Lora extension merges the
  LoRAs of the last generation *into the weights* and leaves them there. For
  training they are taken out (the extension's own backups are copied back),
  and afterwards the merged bits are put back exactly.
* :func:`open_clip_text_encoder`: an OpenCLIP text tower (SDXL's second
  encoder, SD2's encoder) seen as a Hugging Face ``CLIPTextModel`` whose
  weights *are* the tower's tensors (views, no copy), so kohya's
  ``lora_te2_text_model_encoder_layers_N_self_attn_q_proj`` names exist.
* :func:`without_token_merging`: the ToMe patch the WebUI leaves on the UNet
  is taken off for the training and put back.
* :func:`block_gradient_checkpointing`: gradient checkpointing for an LDM
  UNet that has none of its own (the WebUI's CompVis / sgm class).
"""
from __future__ import annotations

import gc
import os
import sys
from contextlib import contextmanager
from typing import Callable, Iterator, Optional

import torch
from torch import nn

from ..models.base import TextEncoder

_MISSING = object()


class HostRefusal(RuntimeError):
    """The WebUI's current set-up cannot train; the message says what to change."""


def forget_cached_conds() -> None:
    """Drop the WebUI's cached prompt conditioning (``StableDiffusionProcessing.cached_c`` / ``cached_uc``,
    txt2img's ``cached_hr_*``). Its key holds the prompt text and the LoRA names and weights, not the
    files: after a LoRA file is rewritten (a new training, Publish with overwrite), or after samples
    were encoded with the LoRA being trained applied, the same prompt would reuse a stale text-encoder
    output. Fresh lists replace the class attributes: a generation running now keeps writing into the
    lists it already holds, the next one starts empty."""
    processing = sys.modules.get("modules.processing")
    for class_name in ("StableDiffusionProcessing", "StableDiffusionProcessingTxt2Img"):
        cls = getattr(processing, class_name, None)
        for name in ("cached_c", "cached_uc", "cached_hr_c", "cached_hr_uc"):
            value = cls.__dict__.get(name) if isinstance(cls, type) else None
            if isinstance(value, list):
                setattr(cls, name, [None] * len(value))


def release_memory(device: Optional[torch.device] = None) -> None:
    """Collect garbage and, on CUDA, give cached blocks back to the driver."""
    gc.collect()
    if torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda"):
        torch.cuda.empty_cache()


def module_device(module: nn.Module) -> Optional[torch.device]:
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return None


def module_dtype(module: nn.Module) -> torch.dtype:
    for tensor in module.parameters():
        return tensor.dtype
    return torch.float32


# --------------------------------------------------------------------------- flags


# Instance attributes training switches set on modules (gradient checkpointing flags, also
# where they were only class attributes before: transformers' GradientCheckpointingLayer).
_SWITCH_ATTRS = ("gradient_checkpointing", "_gradient_checkpointing_func")


@contextmanager
def frozen_and_restored(root: nn.Module) -> Iterator[None]:
    """Every parameter of ``root`` has ``requires_grad=False`` inside the block;
    on exit each parameter's flag and ``.grad``, each module's ``training`` flag
    and its own gradient-checkpointing attributes (present or absent) are what
    they were (also for parameters a helper took out of the tree for a while)."""
    params = list(root.parameters())
    requires_grad = [(p, p.requires_grad, p.grad) for p in params]
    modules = list(root.modules())
    training = [(m, m.training) for m in modules]
    switches = [(m, {a: m.__dict__.get(a, _MISSING) for a in _SWITCH_ATTRS}) for m in modules]
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag, grad in requires_grad:
            p.grad = grad
            p.requires_grad_(flag)
        for m, flag in training:
            m.training = flag
        for m, saved in switches:
            for attr, value in saved.items():
                if value is _MISSING:
                    m.__dict__.pop(attr, None)
                else:
                    m.__dict__[attr] = value


# ---------------------------------------------------------- the Lora extension


def lora_extension_module():
    """The built-in Lora extension's ``networks`` module, if the WebUI loaded it.

    The WebUI imports extension scripts with the extension folder on
    ``sys.path`` for a moment only, so the module is looked up in
    ``sys.modules`` (never imported: that could pick up an unrelated module).
    """
    module = sys.modules.get("networks")
    if module is None:
        return None
    if not (hasattr(module, "loaded_networks") and hasattr(module, "network_restore_weights_from_backup")):
        return None
    return module


def _merged_layers(root: nn.Module) -> list[nn.Module]:
    return [m for m in root.modules() if getattr(m, "network_current_names", ())]


def _owners(module: nn.Module) -> list[nn.Module]:
    """Modules whose parameters the extension writes when it merges into ``module``
    (a MultiheadAttention also has its ``out_proj`` written)."""
    owners = [module]
    if hasattr(module, "in_proj_weight") and isinstance(getattr(module, "out_proj", None), nn.Module):
        owners.append(module.out_proj)
    return owners


def _layer_label(module: nn.Module) -> str:
    return str(getattr(module, "network_layer_name", None) or type(module).__name__)


def _files_changed_on_disk(nets) -> list[str]:
    """Names of loaded networks whose file was rewritten since the extension read it."""
    changed = []
    for net in nets or ():
        filename = getattr(getattr(net, "network_on_disk", None), "filename", None)
        mtime = getattr(net, "mtime", None)
        if not filename or mtime is None:
            continue
        try:
            if os.path.getmtime(filename) != mtime:
                changed.append(str(getattr(net, "name", filename)))
        except OSError:  # deleted: the extension notices by itself ("Lora not found")
            continue
    return changed


@contextmanager
def lora_extension_unmerged(root: nn.Module, networks=None, log: Callable[[str], None] = print) -> Iterator[None]:
    """Train on the clean checkpoint weights, and leave the LoRAs merged as before.

    The extension (default, non-"functional" mode) adds each LoRA's delta to the
    weights in place the first time a layer runs and marks the layer with
    ``network_current_names``; CPU copies of the clean tensors sit in
    ``network_weights_backup`` / ``network_bias_backup``. The merge stays after
    the generation. Inside this block:

    * ``loaded_networks`` is empty, so the extension's patched forwards neither
      merge anything into the layers while we train nor add anything to them;
    * every merged layer holds its clean tensors again (written by the
      extension's own ``network_restore_weights_from_backup``) and is marked
      unmerged.

    On exit the merged tensors are copied back from a CPU copy taken on entry
    (bit-for-bit, into the same Parameter objects; a bias the merge created is
    put back) and the marks and ``loaded_networks`` are restored, so the next
    generation finds exactly what the last one left. Re-merging instead (or
    clearing the marks so the extension merges again on the next generation)
    would recompute ``W + delta`` and be bit-identical only if every kernel
    reproduced the same rounding, which nothing guarantees.

    One exception: if the file of a merged LoRA was rewritten meanwhile (the
    training saved over it), the extension would reload the file but, seeing
    the same name and weight, never merge it again and keep the stale delta.
    Then the layers are left clean and unmarked, and the extension merges the
    new file on the next generation.

    Cost: a CPU copy of the merged layers (the same size as the extension's
    own backups), only while training.
    """
    merged = _merged_layers(root)
    loaded = getattr(networks, "loaded_networks", None) if networks is not None else None
    if not merged and not loaded:
        yield
        return
    if merged and networks is None:
        raise HostRefusal(
            "the model's weights carry a merged LoRA but the Lora extension could not be found to take it out; "
            "reload the checkpoint (Settings, or pick it again at the top) and start the training again"
        )
    for m in merged:
        if getattr(m, "network_weights_backup", None) is None and getattr(m, "network_bias_backup", None) is None:
            raise HostRefusal(
                f"layer {_layer_label(m)} has a LoRA merged into its weights but no backup of the clean weights; "
                "reload the checkpoint and start the training again"
            )

    saved_loaded = list(loaded) if loaded is not None else None
    # The extension marks (and backs up) every layer it runs while any LoRA is loaded, but
    # changes only the layers a loaded LoRA has a module for: only those need a copy.
    # A layer marked for another set of LoRAs than the loaded one may hold anything: copied too.
    wanted = tuple((n.name, n.te_multiplier, n.unet_multiplier, n.dyn_dim) for n in saved_loaded or ()
                   if all(hasattr(n, a) for a in ("name", "te_multiplier", "unet_multiplier", "dyn_dim")))
    keys = set()
    for net in saved_loaded or ():
        modules = getattr(net, "modules", None)
        keys.update(modules.keys() if isinstance(modules, dict) else ())
        if not isinstance(modules, dict):
            wanted = None  # unknown layout: copy every marked layer
    stash = []
    stashed_bytes = 0
    for m in merged:
        layer = str(getattr(m, "network_layer_name", ""))
        untouched = (wanted is not None and m.network_current_names == wanted and layer not in keys
                     and not any(layer + suffix in keys for suffix in ("_q_proj", "_k_proj", "_v_proj", "_out_proj")))
        if untouched:  # its weights are the backup's bits: only the mark comes off
            stash.append((m, m.network_current_names, None))
            continue
        entries = []
        for owner in _owners(m):
            for name, param in owner._parameters.items():
                copy = None
                if param is not None:
                    copy = param.detach().to("cpu", copy=True)
                    stashed_bytes += copy.numel() * copy.element_size()
                entries.append((owner, name, param, copy))
        stash.append((m, m.network_current_names, entries))

    restore = networks.network_restore_weights_from_backup if networks is not None else None
    try:
        if loaded is not None:
            loaded.clear()
        with torch.no_grad():
            for m, _names, entries in stash:
                if entries is not None:
                    restore(m)
                m.network_current_names = ()
        changed = sum(entries is not None for _m, _names, entries in stash)
        if changed:
            names = ", ".join(str(getattr(n, "name", n)) for n in saved_loaded or ()) or "a LoRA"
            log(f"took {names} (merged by the Lora extension into {changed} layers) out of the weights: "
                f"training starts from the checkpoint; {stashed_bytes / 2**20:.0f} MiB of merged weights "
                "wait in RAM to be put back")
        yield
    finally:
        changed = _files_changed_on_disk(saved_loaded)
        if changed:
            log(f"{', '.join(changed)} changed on disk during the training: the weights are left clean and the "
                "Lora extension merges the new file on the next generation")
            for m, _names, _entries in stash:
                m.network_current_names = ()
        else:
            with torch.no_grad():
                for m, names, entries in stash:
                    for owner, name, param, copy in entries or ():
                        if owner._parameters.get(name, _MISSING) is not param:
                            owner._parameters[name] = param
                        if param is not None:
                            param.copy_(copy)
                    m.network_current_names = names
        if loaded is not None:
            loaded[:] = saved_loaded
        stash.clear()


# ------------------------------------------------------------------ token merging


@contextmanager
def without_token_merging(root: nn.Module) -> Iterator[int]:
    """Take ToMe (tomesd, the WebUI's "token merging ratio") off the UNet's
    transformer blocks for the block, and put it back after.

    tomesd turns each ``BasicTransformerBlock`` into a ``ToMeBlock`` subclass
    (whose class attribute ``_parent`` is the original class) by assigning
    ``__class__``; training through merged tokens would train an approximation,
    so the original classes are put back meanwhile. Yields the number of blocks.
    """
    patched = [
        (m, type(m)) for m in root.modules()
        if type(m).__name__ == "ToMeBlock" and isinstance(getattr(type(m), "_parent", None), type)
    ]
    try:
        for m, cls in patched:
            m.__class__ = cls._parent
        yield len(patched)
    finally:
        for m, cls in patched:
            m.__class__ = cls


# ----------------------------------------------------------- gradient checkpointing


def _unet_blocks(unet: nn.Module) -> list[nn.Module]:
    blocks = []
    for name in ("input_blocks", "output_blocks"):
        blocks.extend(getattr(unet, name, None) or [])
    middle = getattr(unet, "middle_block", None)
    if middle is not None:
        blocks.insert(len(getattr(unet, "input_blocks", None) or []), middle)
    return blocks


@contextmanager
def block_gradient_checkpointing(unet: nn.Module) -> Iterator[None]:
    """Give ``unet`` (an LDM UNet without a switch of its own) the
    ``set_gradient_checkpointing(enabled)`` the training loop calls.

    Enabled, each input / middle / output block runs under
    ``torch.utils.checkpoint`` (non-reentrant, so LoRA weights outside the
    block's own parameters get their gradients) whenever grad is on. The switch
    is an instance attribute that shadows any class method, and it is removed,
    with every block forward it installed, on exit.
    """
    from torch.utils.checkpoint import checkpoint

    blocks = _unet_blocks(unet)
    installed: dict[nn.Module, Callable] = {}
    saved_flag = unet.__dict__.get("gradient_checkpointing", _MISSING)

    def wrap(block: nn.Module) -> Callable:
        inner = block.forward

        def forward(*args, **kwargs):
            if torch.is_grad_enabled():
                return checkpoint(inner, *args, use_reentrant=False, **kwargs)
            return inner(*args, **kwargs)

        return forward

    def set_gradient_checkpointing(enabled: bool = True) -> None:
        for block in blocks:
            if enabled and block not in installed:
                if "forward" in block.__dict__:
                    continue  # someone else's wrapper: leave that block alone
                installed[block] = wrap(block)
                block.forward = installed[block]
            elif not enabled and block in installed:
                if block.__dict__.get("forward") is installed[block]:
                    del block.__dict__["forward"]
                del installed[block]

    unet.__dict__["set_gradient_checkpointing"] = set_gradient_checkpointing
    try:
        yield
    finally:
        set_gradient_checkpointing(False)
        for block, forward in list(installed.items()):
            if block.__dict__.get("forward") is forward:
                del block.__dict__["forward"]
        unet.__dict__.pop("set_gradient_checkpointing", None)
        if saved_flag is _MISSING:
            unet.__dict__.pop("gradient_checkpointing", None)
        else:
            unet.__dict__["gradient_checkpointing"] = saved_flag


# ------------------------------------------------------------ OpenCLIP text towers


def _embedding_weight(module: nn.Module) -> torch.Tensor:
    # the WebUI wraps token embeddings (textual inversion) in a module holding the original as .wrapped
    inner = getattr(module, "wrapped", module)
    return inner.weight


def open_clip_tensors(tower: nn.Module) -> dict:
    """The text tower's tensors under OpenCLIP's state-dict names, as aliases (no copies)."""
    out = {
        "token_embedding.weight": _embedding_weight(tower.token_embedding),
        "positional_embedding": tower.positional_embedding,
        "ln_final.weight": tower.ln_final.weight,
        "ln_final.bias": tower.ln_final.bias,
    }
    projection = getattr(tower, "text_projection", None)
    if isinstance(projection, nn.Module):  # some open_clip versions hold a Linear
        if getattr(projection, "bias", None) is not None:
            raise HostRefusal("this OpenCLIP text tower's projection has a bias, which SD checkpoints never have")
        out["text_projection"] = projection.weight.t()
    elif projection is not None:
        out["text_projection"] = projection
    for index, block in enumerate(tower.transformer.resblocks):
        attn = block.attn
        if not hasattr(attn, "in_proj_weight") or attn.in_proj_weight is None:
            raise HostRefusal(f"OpenCLIP block {index} has no fused in_proj attention; this text tower is not supported")
        for scale in ("ls_1", "ls_2"):
            if any(True for _ in getattr(block, scale, nn.Identity()).parameters()):
                raise HostRefusal("OpenCLIP text towers with LayerScale are not supported")
        prefix = f"transformer.resblocks.{index}."
        out.update({
            prefix + "ln_1.weight": block.ln_1.weight, prefix + "ln_1.bias": block.ln_1.bias,
            prefix + "attn.in_proj_weight": attn.in_proj_weight, prefix + "attn.in_proj_bias": attn.in_proj_bias,
            prefix + "attn.out_proj.weight": attn.out_proj.weight, prefix + "attn.out_proj.bias": attn.out_proj.bias,
            prefix + "ln_2.weight": block.ln_2.weight, prefix + "ln_2.bias": block.ln_2.bias,
            prefix + "mlp.c_fc.weight": block.mlp.c_fc.weight, prefix + "mlp.c_fc.bias": block.mlp.c_fc.bias,
            prefix + "mlp.c_proj.weight": block.mlp.c_proj.weight, prefix + "mlp.c_proj.bias": block.mlp.c_proj.bias,
        })
    return {k: v.detach() for k, v in out.items() if v is not None}


def open_clip_text_encoder(tower: nn.Module, arch: str, tokenizer) -> TextEncoder:
    """SD2's encoder or SDXL's second one, as the Hugging Face model kohya trains.

    The returned model's Linear / LayerNorm / Embedding weights are views of the
    tower's own tensors: q/k/v are row slices of the fused ``in_proj`` (contiguous,
    so no copy), everything else the very same tensors. Only the projection is
    copied (transposed, 1280x1280 for bigG: 3 MiB in fp16). So the adapter costs
    no memory, sees whatever is in the tower's weights (the Lora extension's
    restore included), and never writes them: a LoRA wraps a layer's forward.
    The conversion (names, q/k/v split, SD2's dropped last block, head count) is
    the one the standalone loader uses, so the two build the same model.
    """
    from ..models import clip

    encoder_name, hf, model = clip.open_clip_hf_parts(open_clip_tensors(tower), arch)
    expected = clip.hf_state_dict(model)
    missing, unexpected = sorted(set(expected) - set(hf)), sorted(set(hf) - set(expected))
    if missing or unexpected:
        raise HostRefusal(f"the OpenCLIP text tower does not map onto a CLIP text model "
                          f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    for key, value in hf.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise HostRefusal(f"OpenCLIP tensor for {key} has shape {tuple(value.shape)}, "
                              f"expected {tuple(expected[key].shape)}")
    model.load_state_dict(hf, strict=False, assign=True)
    device = hf["text_model.embeddings.token_embedding.weight"].device
    for owner in model.modules():
        for name, buf in list(owner._buffers.items()):
            if buf is None or not buf.is_meta:
                continue
            if not name.endswith("position_ids"):
                raise HostRefusal(f"cannot materialise buffer {name} of the CLIP text model")
            owner._buffers[name] = torch.arange(buf.shape[-1], device=device).expand(tuple(buf.shape))
    leftover = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if leftover:
        raise HostRefusal(f"CLIP text model tensors left unset: {leftover[:5]}")
    model.requires_grad_(False)
    model.eval()
    return TextEncoder(name=encoder_name, model=model, tokenizer=tokenizer, pad_token_id=tokenizer.pad_token_id)


def open_clip_tokenizer():
    """The tokenizer kohya uses for OpenCLIP towers (CLIP BPE, pad ``!``), built offline."""
    from ..models.tokenizer import SDXL_TE2_PAD_TOKEN, load_clip_tokenizer

    return load_clip_tokenizer(None, pad_token=SDXL_TE2_PAD_TOKEN)
