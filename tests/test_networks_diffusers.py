"""Files we write load into diffusers pipelines with no complaint and act as our network does.

The diffusers UNet is converted from the tiny checkpoint by diffusers' own
single-file conversion, so it shares no code with our LDM UNet or our naming.
"""
import copy
import logging
import warnings

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("peft")

from diffusers import (  # noqa: E402
    AutoencoderKL,
    DDPMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from diffusers.loaders.single_file_utils import (  # noqa: E402
    convert_ldm_unet_checkpoint,
    create_unet_diffusers_config_from_ldm,
)
from transformers import PreTrainedModel  # noqa: E402

from lora_trainer.models.tiny import build_tiny_model, tiny_state_dict, tiny_yaml_config  # noqa: E402
from lora_trainer.networks import LoRANetwork, modelspec_metadata, save_network, ss_metadata  # noqa: E402


def diffusers_unet(arch: str, model) -> UNet2DConditionModel:
    sd = tiny_state_dict(arch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = create_unet_diffusers_config_from_ldm(tiny_yaml_config(arch), sd, image_size=64)
    uc = model.unet.config
    if uc.num_head_channels > 0:
        # diffusers derives head counts from model_channels // head width, which is 0 for
        # the tiny SDXL (32 channels, 64-wide heads); give it the counts per level
        config["attention_head_dim"] = [max(1, uc.model_channels * m // uc.num_head_channels) for m in uc.channel_mult]
    converted = convert_ldm_unet_checkpoint(sd, config)
    unet = UNet2DConditionModel(**config)
    unet.load_state_dict({k: v.float() for k, v in converted.items()}, strict=True)
    return unet.eval()


def hf_text_encoder(model):
    """The plain transformers model (a copy: diffusers injects its LoRA layers into it)."""
    return copy.deepcopy(model if isinstance(model, PreTrainedModel) else model.text_model)


def build_pipeline(arch: str, model):
    vae = AutoencoderKL(block_out_channels=(32,), norm_num_groups=32, latent_channels=4)
    tes = model.text_encoders
    scheduler = DDPMScheduler(clip_sample=False, steps_offset=1)
    if arch == "sdxl":
        return StableDiffusionXLPipeline(
            vae=vae, text_encoder=hf_text_encoder(tes[0].model), text_encoder_2=hf_text_encoder(tes[1].model),
            tokenizer=tes[0].tokenizer, tokenizer_2=tes[1].tokenizer, unet=diffusers_unet(arch, model),
            scheduler=scheduler,
        )
    return StableDiffusionPipeline(
        vae=vae, text_encoder=hf_text_encoder(tes[0].model), tokenizer=tes[0].tokenizer,
        unet=diffusers_unet(arch, model), scheduler=scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )


class Collect(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.WARNING)
        self.records = []

    def emit(self, record):
        self.records.append(record.getMessage())


@pytest.mark.parametrize("arch,conv_dim", [("sd1", None), ("sd1", 3), ("sd2", 3), ("sdxl", 3)])
def test_diffusers_loads_our_file_cleanly_and_matches(arch, conv_dim, tmp_path):
    model = build_tiny_model(arch, seed=0)
    network = LoRANetwork.from_model(model, network_dim=4, network_alpha=2.0, conv_dim=conv_dim, conv_alpha=1.0)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for lora in network.all_loras():
            lora.lora_up.weight.copy_(torch.randn(lora.lora_up.weight.shape, generator=gen) * 0.2)
    path = tmp_path / "lora.safetensors"
    meta = {**ss_metadata(arch, model.prediction_type, network_dim=4, network_alpha=2.0,
                          network_args={"conv_dim": conv_dim, "conv_alpha": 1.0} if conv_dim else None),
            **modelspec_metadata(arch, model.prediction_type, title="t")}
    save_network(path, network.state_dict(), meta, dtype=torch.float32)

    pipe = build_pipeline(arch, model)
    collect = Collect()
    logging.getLogger("diffusers").addHandler(collect)
    logging.getLogger("peft").addHandler(collect)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pipe.load_lora_weights(str(path))
    finally:
        logging.getLogger("diffusers").removeHandler(collect)
        logging.getLogger("peft").removeHandler(collect)
    assert collect.records == []
    assert [str(w.message) for w in caught] == []

    cfg = model.unet.config
    x = torch.randn(1, 4, 8, 8, generator=gen)
    t = torch.tensor([500])
    ctx = torch.randn(1, 7, cfg.context_dim, generator=gen)
    y = torch.randn(1, cfg.adm_in_channels, generator=gen) if cfg.adm_in_channels else None
    extra = {"class_labels": y} if y is not None else {}  # the tiny SDXL converts with a projection class embedding
    ids = torch.randint(0, 49407, (1, 77), generator=gen)
    pipe_tes = [pipe.text_encoder] + ([pipe.text_encoder_2] if arch == "sdxl" else [])
    with torch.no_grad():
        theirs = pipe.unet(x, t, encoder_hidden_states=ctx, **extra).sample
        theirs_te = [te(ids, output_hidden_states=True).hidden_states[-2] for te in pipe_tes]
        base = model.unet(x, t, ctx, y) if y is not None else model.unet(x, t, ctx)
        with network.apply():
            ours = model.unet(x, t, ctx, y) if y is not None else model.unet(x, t, ctx)
            ours_te = [te.model(input_ids=ids, output_hidden_states=True).hidden_states[-2]
                       for te in model.text_encoders]
    assert (ours - base).abs().max() > 1e-2
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-5)
    for a, b in zip(theirs_te, ours_te):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
