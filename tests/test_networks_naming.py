"""kohya key names and target selection.

SD1/SD2 names are checked against an independent enumeration, done the way
kohya's ``create_modules`` does it, over a *diffusers* UNet converted from the
same LDM weights by diffusers' own single-file conversion.
"""
import re
import warnings

import pytest
import torch
from torch import nn

from lora_trainer.models.ldm_unet import UNET_PREFIX, UNetConfig, UNetModel
from lora_trainer.networks import naming
from lora_trainer.networks.network import LoRANetwork

KOHYA_UNET_BLOCKS = ["Transformer2DModel"]
KOHYA_CONV_BLOCKS = ["ResnetBlock2D", "Downsample2D", "Upsample2D"]


def small_config(kind: str) -> UNetConfig:
    if kind == "sd1":  # SD1's shape in small: 2 res blocks, last level without attention
        return UNetConfig(32, (1, 2, 2), 2, (1, 1, 0), 1, 24, False, num_heads=2)
    if kind == "sd1_one_res":
        return UNetConfig(32, (1, 2), 1, (1, 1), 1, 24, False, num_heads=2)
    if kind == "sd2":  # linear projections, head width fixed
        return UNetConfig(32, (1, 2, 2), 2, (1, 1, 0), 1, 24, True, num_head_channels=16)
    raise KeyError(kind)


def build_unet(cfg: UNetConfig, seed: int = 0) -> UNetModel:
    torch.manual_seed(seed)
    unet = UNetModel(cfg)
    # default init leaves norms at 1/0 and some layers at zero; shake everything
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return unet.eval()


def transformer_depth_for_yaml(cfg: UNetConfig):
    """An int where SD1/SD2 yamls have one (attention_resolutions pick the levels);
    a list as in SDXL's, whose last entry diffusers also uses for the middle block."""
    depths = {d for d in cfg.transformer_depth if d} | {cfg.transformer_depth_middle}
    if len(depths) == 1:
        return depths.pop()
    assert cfg.transformer_depth_middle == cfg.transformer_depth[-1]
    return list(cfg.transformer_depth)


def ldm_yaml(cfg: UNetConfig) -> dict:
    params = {
        "in_channels": cfg.in_channels,
        "out_channels": cfg.out_channels,
        "model_channels": cfg.model_channels,
        "channel_mult": list(cfg.channel_mult),
        "attention_resolutions": cfg.attention_resolutions,
        "num_res_blocks": cfg.num_res_blocks,
        "transformer_depth": transformer_depth_for_yaml(cfg),
        "context_dim": cfg.context_dim,
        "use_linear_in_transformer": cfg.use_linear,
    }
    if cfg.num_heads > 0:
        params["num_heads"] = cfg.num_heads
    else:
        params["num_head_channels"] = cfg.num_head_channels
    if cfg.adm_in_channels:
        params["num_classes"] = "sequential"
        params["adm_in_channels"] = cfg.adm_in_channels
    return {
        "model": {
            "params": {
                "unet_config": {"params": params},
                "first_stage_config": {"params": {"ddconfig": {"ch_mult": [1, 2, 4, 4]}}},
            }
        }
    }


def diffusers_unet_from_ldm(unet: UNetModel, cfg: UNetConfig):
    """diffusers' UNet2DConditionModel with the LDM UNet's weights, by diffusers' conversion."""
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, create_unet_diffusers_config_from_ldm

    checkpoint = {UNET_PREFIX + k: v for k, v in unet.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = create_unet_diffusers_config_from_ldm(ldm_yaml(cfg), checkpoint, image_size=64)
        converted = convert_ldm_unet_checkpoint(checkpoint, config)
    model = UNet2DConditionModel(**config)
    model.load_state_dict(converted, strict=True)
    return model.eval()


def kohya_names(diffusers_unet: nn.Module, with_conv_blocks: bool) -> dict[str, tuple[nn.Module, bool]]:
    """kohya's create_modules over a diffusers UNet: name -> (module, is 3x3)."""
    targets = KOHYA_UNET_BLOCKS + (KOHYA_CONV_BLOCKS if with_conv_blocks else [])
    out = {}
    for name, module in diffusers_unet.named_modules():
        if module.__class__.__name__ not in targets:
            continue
        for child_name, child in module.named_modules():
            cls = child.__class__.__name__
            if cls not in ("Linear", "Conv2d"):
                continue
            key = ("lora_unet." + name + "." + child_name).replace(".", "_")
            out[key] = (child, cls == "Conv2d" and child.kernel_size != (1, 1))
    return out


@pytest.mark.parametrize("kind", ["sd1", "sd1_one_res", "sd2"])
def test_sd_names_equal_kohya_names_on_diffusers_unet(kind):
    cfg = small_config(kind)
    unet = build_unet(cfg)
    diff = diffusers_unet_from_ldm(unet, cfg)
    for with_conv in (False, True):
        ours = {t.name: t for t in naming.unet_targets("sd1", unet, include_conv_blocks=with_conv)}
        theirs = kohya_names(diff, with_conv)
        assert sorted(ours) == sorted(theirs)
        # every name pairs the very same layer: random weights cannot match otherwise
        for name, target in ours.items():
            module, is_3x3 = theirs[name]
            assert target.is_conv3x3 == is_3x3, name
            assert torch.equal(target.module.weight, module.weight), name


def test_ldm_diffusers_paths_round_trip():
    cfg = small_config("sd1")
    unet = build_unet(cfg)
    diff = diffusers_unet_from_ldm(unet, cfg)
    diffusers_paths = dict(diff.named_modules())
    with_attention = {i for i, b in enumerate(diff.up_blocks) if hasattr(b, "attentions")}
    checked = 0
    for path, module in unet.named_modules():
        if not (naming.is_linear(module) or naming.is_conv2d(module)):
            continue
        if not re.match(r"(input_blocks\.[1-9]|input_blocks\.\d\d|middle_block|output_blocks)", path):
            continue
        d = naming.ldm_to_diffusers_unet_path(path, cfg.num_res_blocks)
        assert torch.equal(diffusers_paths[d].weight, module.weight), (path, d)
        assert naming.diffusers_to_ldm_unet_path(d, cfg.num_res_blocks, with_attention) == path
        checked += 1
    assert checked > 50


def test_path_mapping_refuses_what_it_cannot_know():
    with pytest.raises(ValueError):
        naming.ldm_to_diffusers_unet_path("output_blocks.2.1", 2)  # attention or upsampler?
    with pytest.raises(ValueError):
        naming.ldm_to_diffusers_unet_path("input_blocks.0.0", 2)  # conv_in, no block
    with pytest.raises(ValueError):
        naming.ldm_to_diffusers_unet_path("time_embed.0", 2)


# --- real-size layouts, built on the meta device -------------------------------

SD1 = UNetConfig(320, (1, 2, 4, 4), 2, (1, 1, 1, 0), 1, 768, False, num_heads=8)
SDXL = UNetConfig(320, (1, 2, 4), 2, (0, 2, 10), 10, 2048, True, num_head_channels=64, adm_in_channels=2816)


def meta_unet(cfg):
    with torch.device("meta"):
        return UNetModel(cfg)


def meta_text_encoder(width, layers, projection=False):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers,
                            num_attention_heads=width // 64, projection_dim=width)
    with torch.device("meta"):
        model = (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)
    if hasattr(model, "text_model"):
        return model

    class Shell(nn.Module):  # transformers >= 5.6 dropped the text_model level
        def __init__(self, inner):
            super().__init__()
            self.text_model = inner

    return Shell(model)


def a1111_compvis_name(kohya_name: str) -> str:
    """The WebUI Lora extension's reading of an SD1 kohya UNet name (its documented
    rules for the SD1 layout: 3 slots per level, upsampler after the attention
    except in up block 0)."""
    resnet = {"conv1": "in_layers_2", "conv2": "out_layers_3", "time_emb_proj": "emb_layers_1",
              "conv_shortcut": "skip_connection"}
    n = kohya_name[len("lora_unet_"):]
    m = re.fullmatch(r"down_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)", n)
    if m:
        b, kind, i, rest = int(m[1]), m[2], int(m[3]), m[4]
        rest = resnet.get(rest, rest) if kind == "resnets" else rest
        return f"input_blocks_{1 + 3 * b + i}_{1 if kind == 'attentions' else 0}_{rest}"
    m = re.fullmatch(r"mid_block_(attentions|resnets)_(\d+)_(.+)", n)
    if m:
        kind, i, rest = m[1], int(m[2]), m[3]
        rest = resnet.get(rest, rest) if kind == "resnets" else rest
        return f"middle_block_{1 if kind == 'attentions' else 2 * i}_{rest}"
    m = re.fullmatch(r"up_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)", n)
    if m:
        b, kind, i, rest = int(m[1]), m[2], int(m[3]), m[4]
        rest = resnet.get(rest, rest) if kind == "resnets" else rest
        return f"output_blocks_{3 * b + i}_{1 if kind == 'attentions' else 0}_{rest}"
    m = re.fullmatch(r"down_blocks_(\d+)_downsamplers_0_conv", n)
    if m:
        return f"input_blocks_{3 + 3 * int(m[1])}_0_op"
    m = re.fullmatch(r"up_blocks_(\d+)_upsamplers_0_conv", n)
    if m:
        b = int(m[1])
        return f"output_blocks_{2 + 3 * b}_{2 if b > 0 else 1}_conv"
    raise AssertionError(f"WebUI would not place {kohya_name}")


def test_sd1_full_size_counts_and_webui_placement():
    unet = meta_unet(SD1)
    te = meta_text_encoder(768, 12)
    lora = LoRANetwork(unet, [te], "sd1", network_dim=1)
    # kohya's log for SD1: 72 text encoder and 192 UNet modules
    assert (len(lora.text_encoder_loras), len(lora.unet_loras)) == (72, 192)
    locon = LoRANetwork(unet, [te], "sd1", network_dim=1, conv_dim=1)
    assert len(locon.unet_loras) == 278  # + 22 ResBlocks x 3, 14 shortcuts, 3 down + 3 up samplers

    for t in naming.unet_targets("sd1", unet, include_conv_blocks=True):
        assert a1111_compvis_name(t.name) == t.path.replace(".", "_"), t.name
    names = {t.name for t in naming.text_encoder_targets("te", te)}
    assert "lora_te_text_model_encoder_layers_11_mlp_fc2" in names
    assert "lora_te_text_model_encoder_layers_0_self_attn_out_proj" in names


def test_sdxl_full_size_counts_and_ldm_names():
    unet = meta_unet(SDXL)
    te1, te2 = meta_text_encoder(768, 12), meta_text_encoder(1280, 32, projection=True)
    lora = LoRANetwork(unet, [te1, te2], "sdxl", network_dim=1)
    # kohya's log for SDXL: 72 + 192 text encoder and 722 UNet modules
    assert len([m for m in lora.text_encoder_loras if m.lora_name.startswith("lora_te1_")]) == 72
    assert len([m for m in lora.text_encoder_loras if m.lora_name.startswith("lora_te2_")]) == 192
    assert len(lora.unet_loras) == 722
    for t in naming.unet_targets("sdxl", unet, include_conv_blocks=True):
        assert t.name == "lora_unet_" + t.path.replace(".", "_")
    names = {m.lora_name for m in lora.unet_loras}
    assert "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q" in names
    assert "lora_unet_middle_block_1_transformer_blocks_9_ff_net_2" in names
    assert not any("text_projection" in m.lora_name for m in lora.text_encoder_loras)


def test_conv_dim_selects_resblock_linear_and_1x1_with_network_dim():
    cfg = small_config("sd1")
    unet = build_unet(cfg)
    net = LoRANetwork(unet, [], "sd1", network_dim=4, network_alpha=2, conv_dim=3, conv_alpha=1.5,
                      train_text_encoder=False)
    mods = {m.lora_name: m for m in net.unet_loras}
    emb = mods["lora_unet_down_blocks_0_resnets_0_time_emb_proj"]
    short = mods["lora_unet_down_blocks_1_resnets_0_conv_shortcut"]
    conv = mods["lora_unet_down_blocks_0_resnets_0_conv1"]
    down = mods["lora_unet_down_blocks_0_downsamplers_0_conv"]
    assert (emb.lora_dim, float(emb.alpha)) == (4, 2.0)
    assert (short.lora_dim, float(short.alpha)) == (4, 2.0) and short.lora_down.kernel_size == (1, 1)
    assert (conv.lora_dim, float(conv.alpha)) == (3, 1.5) and conv.lora_down.kernel_size == (3, 3)
    assert down.lora_down.stride == (2, 2)

    # conv_dim=0 (kohya): conv blocks are searched, their 3x3 convs skipped, the rest kept
    zero = LoRANetwork(unet, [], "sd1", network_dim=4, conv_dim=0, train_text_encoder=False)
    names = {m.lora_name for m in zero.unet_loras}
    assert "lora_unet_down_blocks_0_resnets_0_time_emb_proj" in names
    assert "lora_unet_down_blocks_0_resnets_0_conv1" not in names
    assert "lora_unet_down_blocks_0_resnets_0_conv1" in zero.skipped

    # no conv_dim: only transformer blocks
    plain = LoRANetwork(unet, [], "sd1", network_dim=4, train_text_encoder=False)
    assert all("attentions" in m.lora_name for m in plain.unet_loras)


class Linear(nn.Module):
    """A Linear that is no nn.Linear subclass, as Forge's operations."""

    def __init__(self, i, o):
        super().__init__()
        self.in_features, self.out_features = i, o
        self.weight = nn.Parameter(torch.randn(o, i))

    def forward(self, x):
        return x @ self.weight.t()


class MyAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (Linear(8, 8) for _ in range(4))


class MyMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 8)


class Layer(nn.Module):
    def __init__(self):
        super().__init__()
        self.self_attn, self.mlp = MyAttention(), MyMLP()
        self.layer_norm1 = nn.LayerNorm(8)


def test_text_encoder_found_by_path_with_foreign_classes():
    te = nn.Module()
    te.text_model = nn.Module()
    te.text_model.encoder = nn.Module()
    te.text_model.encoder.layers = nn.ModuleList([Layer(), Layer()])
    te.text_model.final_layer_norm = nn.LayerNorm(8)
    te.text_projection = nn.Linear(8, 8)
    names = [t.name for t in naming.text_encoder_targets("te2", te)]
    assert len(names) == 12
    assert "lora_te2_text_model_encoder_layers_1_self_attn_q_proj" in names
    assert "lora_te2_text_model_encoder_layers_0_mlp_fc2" in names
    assert not any("projection" in n for n in names)


def test_infer_layers_per_block():
    for kind in ("sd1", "sd1_one_res"):
        cfg = small_config(kind)
        assert naming.infer_layers_per_block(meta_unet(cfg)) == cfg.num_res_blocks
    assert naming.infer_layers_per_block(meta_unet(SD1)) == 2


@pytest.mark.parametrize("arch", ["sd1", "sd2"])
def test_tiny_checkpoint_names_equal_kohya_names(arch):
    """The same check on the tiny checkpoints, converted from the file's tensors by
    diffusers with the checkpoint's own yaml."""
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, create_unet_diffusers_config_from_ldm

    from lora_trainer.models.tiny import build_tiny_model, tiny_state_dict, tiny_yaml_config

    sd = tiny_state_dict(arch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = create_unet_diffusers_config_from_ldm(tiny_yaml_config(arch), sd, image_size=64)
    diff = UNet2DConditionModel(**config)
    diff.load_state_dict({k: v.float() for k, v in convert_ldm_unet_checkpoint(sd, config).items()}, strict=True)
    model = build_tiny_model(arch)
    for with_conv in (False, True):
        ours = {t.name: t for t in naming.unet_targets(arch, model.unet, include_conv_blocks=with_conv)}
        theirs = kohya_names(diff, with_conv)
        assert sorted(ours) == sorted(theirs)
        for name, target in ours.items():
            assert target.is_conv3x3 == theirs[name][1], name
            assert torch.equal(target.module.weight, theirs[name][0].weight), name
    # kohya's text encoder names come from the Hugging Face module paths we hold
    te_names = {t.name for t in naming.text_encoder_targets("te", model.text_encoders[0].model)}
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj" in te_names
