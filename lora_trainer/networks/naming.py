"""kohya LoRA key names, and which modules get a LoRA.

kohya names a LoRA after the module it wraps: a prefix (``lora_unet``,
``lora_te`` / ``lora_te1`` / ``lora_te2``) plus the module path with every ``.``
turned into ``_``. The path is the one kohya's own model object has:

* SDXL: kohya's UNet keeps the original LDM layout, so our LDM path is used as is.
* SD1 / SD2: kohya trains a *diffusers* UNet, so the names carry diffusers paths
  (``down_blocks_0_attentions_0_...``); we hold the LDM layout and translate.
* text encoders: Hugging Face CLIP paths, as we hold them.

Target selection follows kohya's ``LoRANetwork.create_modules``: inside every
UNet transformer block each Linear and 1x1 Conv2d gets ``network_dim``; once
``conv_dim`` is given (even 0) the ResBlock / Downsample / Upsample blocks are
searched too, their 3x3 convs get ``conv_dim`` and their Linear / 1x1 children
(``time_emb_proj``, ``conv_shortcut``) get ``network_dim``. In the text
encoders every Linear of each attention and MLP block gets ``network_dim``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Iterator, Optional, Sequence

from torch import nn

UNET_PREFIX = "lora_unet"
TE_PREFIX = "lora_te"

# LDM class names as CompVis / sgm / Forge spell them, plus kohya's and
# diffusers' spellings so a kohya-style or diffusers-named tree is found too.
TRANSFORMER_CLASSES = frozenset({"SpatialTransformer", "Transformer2DModel"})
CONV_BLOCK_CLASSES = frozenset(
    {"ResBlock", "Downsample", "Upsample", "ResnetBlock2D", "Downsample2D", "Upsample2D"}
)
TEXT_ENCODER_CLASSES = frozenset({"CLIPAttention", "CLIPSdpaAttention", "CLIPFlashAttention2", "CLIPMLP"})
# A host may hold its own CLIP classes under the Hugging Face paths.
_TE_BLOCK_PATH = re.compile(r"(^|\.)layers\.\d+\.(self_attn|mlp)$")

# LDM ResBlock children -> diffusers ResnetBlock2D children
_RESBLOCK_TO_DIFFUSERS = {
    "in_layers.0": "norm1",
    "in_layers.2": "conv1",
    "emb_layers.1": "time_emb_proj",
    "out_layers.0": "norm2",
    "out_layers.3": "conv2",
    "skip_connection": "conv_shortcut",
}
_RESBLOCK_FROM_DIFFUSERS = {v: k for k, v in _RESBLOCK_TO_DIFFUSERS.items()}
_SAMPLER_TO_DIFFUSERS = {"op": "conv", "conv": "conv"}  # Downsample.op, Upsample.conv


def text_encoder_stems(arch: str) -> list[str]:
    """kohya prefix stems of the text encoders, in order."""
    return ["te1", "te2"] if arch == "sdxl" else ["te"]


def lora_name(prefix: str, path: str) -> str:
    """``lora_name("lora_unet", "input_blocks.1.1.proj_in")`` -> ``lora_unet_input_blocks_1_1_proj_in``."""
    return f"{prefix}_{path}".replace(".", "_") if path else prefix


def text_encoder_prefix(stem: str) -> str:
    return f"lora_{stem}"


# --- LDM <-> diffusers UNet paths (SD1 / SD2 key names) -----------------------


def _map_resblock_rest(rest: list[str]) -> list[str]:
    if not rest:
        return rest
    for length in (2, 1):
        head = ".".join(rest[:length])
        if head in _RESBLOCK_TO_DIFFUSERS:
            return [_RESBLOCK_TO_DIFFUSERS[head], *rest[length:]]
    raise ValueError(f"no diffusers name for ResBlock child {'.'.join(rest)!r}")


def _map_sampler_rest(rest: list[str]) -> list[str]:
    if rest and rest[0] in _SAMPLER_TO_DIFFUSERS:
        return [_SAMPLER_TO_DIFFUSERS[rest[0]], *rest[1:]]
    if not rest:
        return rest
    raise ValueError(f"no diffusers name for sampler child {'.'.join(rest)!r}")


def ldm_to_diffusers_unet_path(path: str, layers_per_block: int) -> str:
    """Translate an LDM UNet module path to the diffusers ``UNet2DConditionModel`` path.

    Only the block part (input/middle/output blocks) is translated, which is
    all that carries LoRA. ``layers_per_block`` is LDM's ``num_res_blocks`` (2
    for SD1/SD2). Within an output block, index 1 is an attention unless its
    child is ``conv`` (an Upsample at a level without attention), so the bare
    path ``output_blocks.N.1`` is ambiguous and refused.
    """
    parts = path.split(".")
    kind = parts[0]
    min_parts = {"middle_block": 2, "input_blocks": 3, "output_blocks": 3}.get(kind)
    if min_parts is None or len(parts) < min_parts:
        raise ValueError(f"not an LDM UNet block path: {path!r}")
    per_level = layers_per_block + 1

    if kind == "middle_block":
        index, rest = int(parts[1]), parts[2:]
        if index == 1:
            return ".".join(["mid_block", "attentions", "0", *rest])
        if index in (0, 2):
            return ".".join(["mid_block", "resnets", str(index // 2), *_map_resblock_rest(rest)])
        raise ValueError(f"middle block has no index {index}: {path!r}")

    block, layer, rest = int(parts[1]), int(parts[2]), parts[3:]
    if kind == "input_blocks":
        if block == 0:
            raise ValueError(f"input_blocks.0 is conv_in, not a block: {path!r}")
        level, slot = divmod(block - 1, per_level)
        if slot == layers_per_block:
            if layer != 0:
                raise ValueError(f"downsample block has one layer: {path!r}")
            return ".".join(["down_blocks", str(level), "downsamplers", "0", *_map_sampler_rest(rest)])
        if layer == 0:
            return ".".join(["down_blocks", str(level), "resnets", str(slot), *_map_resblock_rest(rest)])
        if layer == 1:
            return ".".join(["down_blocks", str(level), "attentions", str(slot), *rest])
        raise ValueError(f"input block layer {layer} unknown: {path!r}")

    level, slot = divmod(block, per_level)
    if layer == 0:
        return ".".join(["up_blocks", str(level), "resnets", str(slot), *_map_resblock_rest(rest)])
    if layer == 1 and not rest:
        raise ValueError(f"ambiguous without a child (attention or upsampler): {path!r}")
    if layer == 2 or (layer == 1 and rest[0] == "conv"):
        return ".".join(["up_blocks", str(level), "upsamplers", "0", *_map_sampler_rest(rest)])
    if layer == 1:
        return ".".join(["up_blocks", str(level), "attentions", str(slot), *rest])
    raise ValueError(f"output block layer {layer} unknown: {path!r}")


def diffusers_to_ldm_unet_path(
    path: str, layers_per_block: int, up_blocks_with_attention: Iterable[int] = ()
) -> str:
    """Inverse of :func:`ldm_to_diffusers_unet_path`.

    An up block's upsampler sits after its attention in LDM (``.2``) or right
    after the ResBlock where that level has no attention (``.1``), so the
    indices of the diffusers up blocks that have attentions must be given.
    """
    parts = path.split(".")
    per_level = layers_per_block + 1
    with_attention = set(up_blocks_with_attention)
    kind = parts[0]

    if kind == "mid_block":
        group, index, rest = parts[1], int(parts[2]), parts[3:]
        if group == "attentions" and index == 0:
            return ".".join(["middle_block", "1", *rest])
        if group == "resnets" and index in (0, 1):
            return ".".join(["middle_block", str(index * 2), *_unmap_resblock_rest(rest)])
        raise ValueError(f"not a mid block path: {path!r}")

    if kind not in ("down_blocks", "up_blocks") or len(parts) < 4:
        raise ValueError(f"not a diffusers UNet block path: {path!r}")
    level, group, index, rest = int(parts[1]), parts[2], int(parts[3]), parts[4:]

    if kind == "down_blocks":
        if group == "downsamplers":
            return ".".join(["input_blocks", str(1 + level * per_level + layers_per_block), "0", *_unmap_sampler(rest, "op")])
        block = str(1 + level * per_level + index)
        if group == "resnets":
            return ".".join(["input_blocks", block, "0", *_unmap_resblock_rest(rest)])
        if group == "attentions":
            return ".".join(["input_blocks", block, "1", *rest])
        raise ValueError(f"unknown down block group {group!r}: {path!r}")

    if group == "upsamplers":
        layer = "2" if level in with_attention else "1"
        return ".".join(["output_blocks", str(level * per_level + layers_per_block), layer, *_unmap_sampler(rest, "conv")])
    block = str(level * per_level + index)
    if group == "resnets":
        return ".".join(["output_blocks", block, "0", *_unmap_resblock_rest(rest)])
    if group == "attentions":
        return ".".join(["output_blocks", block, "1", *rest])
    raise ValueError(f"unknown up block group {group!r}: {path!r}")


def _unmap_resblock_rest(rest: list[str]) -> list[str]:
    if not rest:
        return rest
    if rest[0] not in _RESBLOCK_FROM_DIFFUSERS:
        raise ValueError(f"no LDM name for ResnetBlock2D child {rest[0]!r}")
    return [*_RESBLOCK_FROM_DIFFUSERS[rest[0]].split("."), *rest[1:]]


def _unmap_sampler(rest: list[str], ldm_name: str) -> list[str]:
    if not rest:
        return rest
    if rest[0] != "conv":
        raise ValueError(f"no LDM name for sampler child {rest[0]!r}")
    return [ldm_name, *rest[1:]]


def infer_layers_per_block(unet: nn.Module) -> int:
    """LDM ``num_res_blocks``: the input blocks before the first Downsample, less conv_in."""
    blocks = list(unet.input_blocks)
    for index, block in enumerate(blocks):
        if any(type(child).__name__ in ("Downsample", "Downsample2D") for child in block.children()):
            return index - 1
    return len(blocks) - 1  # a single level has no Downsample


def unet_module_key_path(arch: str, path: str, layers_per_block: int) -> str:
    """The path kohya's own UNet object has for our LDM ``path``."""
    if arch == "sdxl":
        return path
    return ldm_to_diffusers_unet_path(path, layers_per_block)


# --- target selection --------------------------------------------------------


def is_linear(module: nn.Module) -> bool:
    # Forge's Linear is no nn.Linear subclass; kohya goes by the class name.
    return type(module).__name__ == "Linear" or isinstance(module, nn.Linear)


def is_conv2d(module: nn.Module) -> bool:
    return type(module).__name__ == "Conv2d" or isinstance(module, nn.Conv2d)


def is_conv1x1(module: nn.Module) -> bool:
    return is_conv2d(module) and tuple(module.kernel_size) == (1, 1)


@dataclass(frozen=True)
class Target:
    """A module that gets a LoRA: its kohya name, where it is, what size class it is in."""

    name: str  # kohya name, e.g. lora_unet_down_blocks_0_attentions_0_proj_in
    path: str  # path inside its root (our layout)
    module: nn.Module
    is_unet: bool
    is_conv3x3: bool  # gets conv_dim/conv_alpha instead of network_dim/network_alpha
    root: str  # "unet" or the text encoder stem


def _children_of_blocks(root: nn.Module, is_block) -> Iterator[tuple[str, nn.Module]]:
    """Linear / Conv2d modules inside the blocks ``is_block(path, module)`` picks, each once."""
    seen: set[int] = set()
    for path, module in root.named_modules():
        if not is_block(path, module):
            continue
        for child_path, child in module.named_modules(prefix=path):
            if (is_linear(child) or is_conv2d(child)) and id(child) not in seen:
                seen.add(id(child))
                yield child_path, child


def unet_targets(arch: str, unet: nn.Module, include_conv_blocks: bool) -> list[Target]:
    """UNet targets in module order. ``include_conv_blocks`` is kohya's "conv_dim was given"."""
    classes = TRANSFORMER_CLASSES | (CONV_BLOCK_CLASSES if include_conv_blocks else frozenset())
    layers_per_block = infer_layers_per_block(unet) if arch != "sdxl" else 0
    targets = []
    for path, module in _children_of_blocks(unet, lambda p, m: type(m).__name__ in classes):
        key_path = unet_module_key_path(arch, path, layers_per_block)
        targets.append(
            Target(
                name=lora_name(UNET_PREFIX, key_path),
                path=path,
                module=module,
                is_unet=True,
                is_conv3x3=is_conv2d(module) and not is_conv1x1(module),
                root="unet",
            )
        )
    return targets


def _is_text_encoder_block(path: str, module: nn.Module) -> bool:
    return type(module).__name__ in TEXT_ENCODER_CLASSES or bool(_TE_BLOCK_PATH.search(path))


def text_encoder_targets(stem: str, model: nn.Module) -> list[Target]:
    """Text encoder targets: Linear layers of each CLIP attention / MLP block."""
    prefix = text_encoder_prefix(stem)
    targets = []
    for path, module in _children_of_blocks(model, _is_text_encoder_block):
        if not is_linear(module):
            continue
        targets.append(
            Target(name=lora_name(prefix, path), path=path, module=module, is_unet=False, is_conv3x3=False, root=stem)
        )
    return targets


def find_targets(
    arch: str,
    unet: Optional[nn.Module],
    text_encoders: Sequence[tuple[str, nn.Module]],
    include_conv_blocks: bool,
) -> list[Target]:
    """All targets, text encoders first (kohya's order). ``text_encoders`` is ``[(stem, model), ...]``."""
    targets: list[Target] = []
    for stem, model in text_encoders:
        targets.extend(text_encoder_targets(stem, model))
    if unet is not None:
        targets.extend(unet_targets(arch, unet, include_conv_blocks))
    names = [t.name for t in targets]
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"duplicate LoRA names: {dupes[:5]}")
    return targets


def kohya_name_map(
    arch: str, unet: Optional[nn.Module], text_encoders: Sequence[tuple[str, nn.Module]]
) -> dict[str, tuple[str, str]]:
    """kohya name -> (root, path in our layout) for every module a kohya LoRA may carry.

    Covers the widest target set (conv blocks included), so it resolves the
    names of any kohya LoRA / LoCon file for this model.
    """
    return {t.name: (t.root, t.path) for t in find_targets(arch, unet, text_encoders, include_conv_blocks=True)}
