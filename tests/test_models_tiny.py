"""Tiny checkpoints on disk, the standalone loader, detection and the schedule."""
import json

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from lora_trainer.models import clip
from lora_trainer.models.detect import NotAStableDiffusionCheckpoint, detect_checkpoint
from lora_trainer.models.ldm_unet import UNET_PREFIX, strip_prefix
from lora_trainer.models.ldm_vae import VAE_PREFIX
from lora_trainer.models.schedule import alphas_cumprod_from_state_dict, scaled_linear_alphas_cumprod
from lora_trainer.models.standalone import load_checkpoint
from lora_trainer.models.tiny import build_tiny_model, tiny_state_dict, tiny_yaml_config, write_tiny_checkpoint

MB = 1 << 20
MAX_SIZE = {"sd1": 25 * MB, "sd2": 25 * MB, "sdxl": 30 * MB}


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {arch: write_tiny_checkpoint(arch, root / f"tiny_{arch}.safetensors", seed=7)
            for arch in ("sd1", "sd2", "sdxl")}


def _assert_same(module_sd: dict, file_sd: dict):
    assert module_sd.keys() == file_sd.keys()
    for key, value in file_sd.items():
        assert torch.equal(module_sd[key].float(), value.float()), key


@pytest.mark.parametrize("arch", ["sd1", "sd2", "sdxl"])
def test_write_then_load_round_trip(arch, written):
    paths = written[arch]
    ckpt = paths["checkpoint"]
    assert ckpt.stat().st_size < MAX_SIZE[arch]
    file_sd = load_file(str(ckpt))
    assert all(v.dtype == torch.float16 for k, v in file_sd.items() if k != "alphas_cumprod")

    model = load_checkpoint(ckpt)
    assert (model.arch, model.prediction_type, model.name) == (arch, "epsilon", ckpt.name)
    assert model.vae_scale_factor == (0.13025 if arch == "sdxl" else 0.18215)
    assert [te.name for te in model.text_encoders] == (["te1", "te2"] if arch == "sdxl" else ["te"])
    _assert_same(model.unet.state_dict(), strip_prefix(file_sd, UNET_PREFIX))
    _assert_same(model.vae.state_dict(), strip_prefix(file_sd, VAE_PREFIX))
    te_file = {k: v for k, v in file_sd.items() if k.startswith(("cond_stage_model.", "conditioner."))}
    _assert_same(clip.text_encoders_to_state_dict(model.text_encoders, arch), te_file)
    assert all(not p.requires_grad for p in model.unet.parameters())



def test_in_memory_model_is_the_written_one(written):
    model = build_tiny_model("sdxl", seed=7)
    file_sd = load_file(str(written["sdxl"]["checkpoint"]))
    _assert_same(model.unet.state_dict(), strip_prefix(file_sd, UNET_PREFIX))
    te_file = {k: v for k, v in file_sd.items() if k.startswith("conditioner.")}
    _assert_same(clip.text_encoders_to_state_dict(model.text_encoders, "sdxl"), te_file)


@pytest.mark.parametrize("arch", ["sd1", "sd2", "sdxl"])
def test_yaml_describes_the_state_dict(arch, written):
    paths = written[arch]
    sd = load_file(str(paths["checkpoint"]))
    config = yaml.safe_load(paths["yaml"].read_text())
    params = config["model"]["params"]
    unet = (params.get("unet_config") or params["network_config"])["params"]
    ddconfig = params["first_stage_config"]["params"]["ddconfig"]

    assert unet["model_channels"] == sd[UNET_PREFIX + "input_blocks.0.0.weight"].shape[0]
    assert unet["context_dim"] == sd[UNET_PREFIX + "input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight"].shape[1]
    assert unet["num_res_blocks"] == 2
    info = detect_checkpoint(sd, num_head_channels=unet.get("num_head_channels"), num_heads=unet.get("num_heads"))
    assert unet["channel_mult"] == list(info.unet.channel_mult)
    assert sorted(unet["attention_resolutions"]) == info.unet.attention_resolutions
    for level in info.unet.attention_levels:  # heads must split every attention width
        info.unet.heads_for(unet["model_channels"] * unet["channel_mult"][level])
    assert ddconfig["ch"] == sd[VAE_PREFIX + "encoder.conv_in.weight"].shape[0]
    assert ddconfig["ch_mult"] == list(info.vae.ch_mult)
    assert ddconfig["z_channels"] == 4 and len(ddconfig["ch_mult"]) == 4  # 8x downscale

    if arch == "sdxl":
        assert config["model"]["target"] == "sgm.models.diffusion.DiffusionEngine"
        assert unet["adm_in_channels"] == sd[UNET_PREFIX + "label_emb.0.0.weight"].shape[1]
        assert unet["transformer_depth"] == [0, 1, 2]
        embedders = params["conditioner_config"]["params"]["emb_models"]
        te1_dir = embedders[0]["params"]["version"]
        assert embedders[0]["params"]["layer_idx"] == clip.TINY_LAYERS - 1
        assert embedders[1]["params"]["arch"] == paths["open_clip_config"].stem
    else:
        assert config["model"]["target"] == "ldm.models.diffusion.ddpm.LatentDiffusion"
        assert unet["transformer_depth"] == 1
        cond = params["cond_stage_config"]
        te1_dir = cond.get("params", {}).get("version")
        if arch == "sd2":
            assert unet["use_linear_in_transformer"] and cond["params"]["arch"] == paths["open_clip_config"].stem

    if arch in ("sd1", "sdxl"):
        from transformers import CLIPTextConfig, CLIPTokenizer

        assert te1_dir == str(paths["text_encoder"])
        te_config = CLIPTextConfig.from_pretrained(te1_dir)
        prefix = "cond_stage_model.transformer." if arch == "sd1" else "conditioner.embedders.0.transformer."
        assert te_config.hidden_size == sd[prefix + "text_model.final_layer_norm.weight"].shape[0]
        assert CLIPTokenizer.from_pretrained(te1_dir)("a cat").input_ids == [49406, 320, 2368, 49407]
    if arch in ("sd2", "sdxl"):
        prefix = "cond_stage_model.model." if arch == "sd2" else "conditioner.embedders.1.model."
        text_cfg = json.loads(paths["open_clip_config"].read_text())["text_cfg"]
        layers = {k.split(".")[len(prefix.split(".")) + 1] for k in sd if k.startswith(prefix + "transformer.resblocks.")}
        assert text_cfg["layers"] == len(layers) > 1
        assert text_cfg["width"] == sd[prefix + "ln_final.weight"].shape[0]


def test_no_weight_is_zero():
    sd = tiny_state_dict("sdxl", seed=0)
    zero = [k for k, v in sd.items() if v.is_floating_point() and v.numel() > 1 and (v == 0).all()]
    assert zero == []
    # the layers LDM zero-initialises carry real values
    for key in ("out.2.weight", "input_blocks.4.1.proj_out.weight", "output_blocks.3.0.out_layers.3.weight"):
        assert sd[UNET_PREFIX + key].abs().mean() > 1e-3


def test_tiny_model_is_deterministic():
    a, b, c = (tiny_state_dict("sd1", seed=s) for s in (1, 1, 2))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert a.keys() == c.keys() and not torch.equal(a[UNET_PREFIX + "out.2.weight"], c[UNET_PREFIX + "out.2.weight"])


class NotATensor:
    pass


def test_ckpt_files_load_and_unsafe_pickles_are_refused(tmp_path):
    sd = tiny_state_dict("sd1", seed=2)
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": sd, "global_step": 10}, path)
    model = load_checkpoint(path)
    assert model.arch == "sd1" and model.name == "model.ckpt"
    assert torch.equal(model.unet.out[2].weight, sd[UNET_PREFIX + "out.2.weight"].float())

    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": sd, "x": NotATensor()}, evil)
    with pytest.raises(ValueError, match="evil.ckpt"):
        load_checkpoint(evil)


def _beside(tmp_path, checkpoint, name: str, yaml_config=None):
    """The written checkpoint under another name, with its own yaml or none."""
    path = tmp_path / f"{name}.safetensors"
    path.symlink_to(checkpoint)
    if yaml_config is not None:
        path.with_suffix(".yaml").write_text(yaml.safe_dump(yaml_config))
    return path


def test_prediction_type_from_yaml_marker_and_override(tmp_path, written):
    v = _beside(tmp_path, written["sd1"]["checkpoint"], "v", tiny_yaml_config("sd1", "v_prediction"))
    assert "parameterization: v" in v.with_suffix(".yaml").read_text()
    assert load_checkpoint(v).prediction_type == "v_prediction"
    assert load_checkpoint(v, prediction_type="epsilon").prediction_type == "epsilon"

    xl = _beside(tmp_path, written["sdxl"]["checkpoint"], "xlv", tiny_yaml_config("sdxl", "v_prediction"))
    assert "VScaling" in xl.with_suffix(".yaml").read_text()
    assert load_checkpoint(xl).prediction_type == "v_prediction"

    # no yaml: epsilon, unless the file carries the v_pred marker
    plain = _beside(tmp_path, written["sd1"]["checkpoint"], "plain")
    assert load_checkpoint(plain).prediction_type == "epsilon"
    marked = tmp_path / "marked.safetensors"
    save_file({**load_file(str(plain)), "v_pred": torch.tensor([])}, str(marked))
    assert load_checkpoint(marked).prediction_type == "v_prediction"
    with pytest.raises(ValueError, match="unknown prediction type"):
        load_checkpoint(plain, prediction_type="x0")


@pytest.mark.parametrize("keys,kind", [
    ({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": (4, 320)}, "LoRA"),
    ({"model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight": (4, 4)}, "Stable Diffusion 3"),
    ({"double_blocks.0.img_attn.qkv.weight": (4, 4)}, "Flux"),
    ({"encoder.down.0.block.0.conv1.weight": (4, 4, 3, 3)}, "VAE"),
])
def test_non_sd_files_are_refused_by_name(tmp_path, keys, kind):
    path = tmp_path / "not_a_model.safetensors"
    save_file({k: torch.zeros(s) for k, s in keys.items()}, str(path))
    with pytest.raises(NotAStableDiffusionCheckpoint) as err:
        load_checkpoint(path)
    assert str(path) in str(err.value) and kind in str(err.value)


def test_unsupported_sd_variants_are_refused():
    sd = tiny_state_dict("sd1")
    inpaint = dict(sd)
    w = sd[UNET_PREFIX + "input_blocks.0.0.weight"]
    inpaint[UNET_PREFIX + "input_blocks.0.0.weight"] = torch.cat([w, w, w[:, :1]], dim=1)
    with pytest.raises(NotAStableDiffusionCheckpoint, match="inp.ckpt.*9 input channels"):
        detect_checkpoint(inpaint, "inp.ckpt")
    no_te = {k: v for k, v in sd.items() if not k.startswith("cond_stage_model.")}
    with pytest.raises(NotAStableDiffusionCheckpoint, match="no text encoder"):
        detect_checkpoint(no_te, "x.safetensors")
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        load_checkpoint("/nonexistent/missing.safetensors")


def test_alphas_cumprod():
    from diffusers import DDPMScheduler

    ref = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear").alphas_cumprod
    ours = scaled_linear_alphas_cumprod()
    assert ours.dtype == torch.float64 and ours.shape == (1000,)
    torch.testing.assert_close(ours.float(), ref, atol=1e-6, rtol=1e-5)
    # a stored schedule wins (zero-terminal-SNR fine-tunes ship their own)
    stored = ours.clone()
    stored[-1] = 0.0
    assert alphas_cumprod_from_state_dict({"alphas_cumprod": stored.float()})[-1] == 0
    assert torch.equal(alphas_cumprod_from_state_dict({}), ours)
    assert build_tiny_model("sdxl").alphas_cumprod.shape == (1000,)


def test_vae_functions_scale_and_sample():
    model = build_tiny_model("sd1")
    images = torch.rand(1, 3, 64, 64) * 2 - 1
    torch.manual_seed(0)
    a = model.vae_encode(images)
    b = model.vae_encode(images)
    mean = model.vae.encode(images).mean * model.vae_scale_factor
    assert a.shape == (1, 4, 8, 8) and not torch.equal(a, b)  # a random draw, like kohya's cache
    assert (a - mean).abs().max() < 10 * (b - mean).abs().max() + 1e-6
    torch.testing.assert_close(model.vae_decode(mean), model.vae.decode(mean / model.vae_scale_factor))


def test_training_step_reaches_every_weight():
    # (a step takes ~0.5 s on one CPU thread; wall time is not asserted, other
    # processes on a shared machine make it meaningless)
    model = build_tiny_model("sdxl")
    unet = model.unet.train()
    unet.requires_grad_(True)
    x = torch.randn(2, 4, 8, 8)
    ctx = torch.randn(2, 77, unet.config.context_dim)
    y = torch.randn(2, unet.config.adm_in_channels)
    unet(x, torch.tensor([1, 999]), ctx, y=y).square().mean().backward()
    no_grad = [n for n, p in unet.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []
