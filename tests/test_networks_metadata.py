"""ss_* and modelspec metadata in kohya's formats."""
import datetime
import json

import pytest
import torch

from lora_trainer import __version__
from lora_trainer.networks.io import load_network, save_network
from lora_trainer.networks.metadata import (
    ALWAYS,
    base_model_version,
    checkpoint_metadata,
    minimum_metadata,
    modelspec_metadata,
    network_args,
    optimizer_description,
    ss_metadata,
)


def test_values_are_kohya_strings():
    tag_frequency = {"5_chara": {"1girl": 10, "smile": 3, "日本": 1}}
    dirs = {"5_chara": {"n_repeats": 5, "img_count": 10}}
    bucket_info = {"buckets": {0: {"resolution": (512, 512), "count": 50}}, "mean_img_ar_error": 0.0}
    md = ss_metadata(
        "sd1",
        session_id=1234,
        training_started_at=1700000000.5,
        output_name="chara",
        learning_rate=1e-4,
        text_encoder_lr=5e-5,
        unet_lr=None,
        num_train_images=50,
        num_reg_images=0,
        num_epochs=4,
        max_train_steps=200,
        network_dim=16,
        network_alpha=8.0,
        network_args=network_args(conv_dim=8, conv_alpha=4.0, rank_dropout=None),
        mixed_precision="fp16",
        clip_skip=2,
        seed=42,
        noise_offset=0.05,
        min_snr_gamma=5.0,
        optimizer=optimizer_description(torch.optim.AdamW, {"weight_decay": 0.01, "betas": (0.9, 0.999)}),
        resolution=512,
        batch_size_per_device=2,
        tag_frequency=tag_frequency,
        dataset_dirs=dirs,
        bucket_info=bucket_info,
        sd_model_name="model.safetensors",
        ss_lr_scheduler="cosine",
    )
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in md.items())
    assert md["ss_network_module"] == "networks.lora"
    assert md["ss_network_dim"] == "16" and md["ss_network_alpha"] == "8.0"
    assert json.loads(md["ss_network_args"]) == {"conv_dim": "8", "conv_alpha": "4.0"}
    assert md["ss_base_model_version"] == "sd_v1" and md["ss_v2"] == "False"
    assert md["ss_learning_rate"] == "0.0001" and md["ss_text_encoder_lr"] == "5e-05"
    assert md["ss_unet_lr"] == "None"
    assert md["ss_resolution"] == "(512, 512)"
    assert md["ss_optimizer"] == "torch.optim.adamw.AdamW(weight_decay=0.01,betas=(0.9, 0.999))"
    assert md["ss_lr_scheduler"] == "cosine"
    assert md["ss_training_started_at"] == "1700000000.5"
    assert md["ss_clip_skip"] == "2" and md["ss_seed"] == "42" and md["ss_session_id"] == "1234"
    assert md["ss_sd_model_name"] == "model.safetensors"
    assert json.loads(md["ss_tag_frequency"]) == tag_frequency
    assert md["ss_tag_frequency"] == json.dumps(tag_frequency)  # kohya's json.dumps defaults (ASCII escapes)
    assert json.loads(md["ss_dataset_dirs"]) == dirs
    assert json.loads(md["ss_bucket_info"]) == {"buckets": {"0": {"resolution": [512, 512], "count": 50}},
                                                "mean_img_ar_error": 0.0}
    # every key kohya always writes is present, untouched ones with kohya's defaults
    assert {f"ss_{k}" for k in ALWAYS} <= md.keys()
    assert md["ss_max_grad_norm"] == "1.0" and md["ss_gradient_accumulation_steps"] == "1"
    assert md["ss_full_fp16"] == "False" and md["ss_max_token_length"] == "None"
    # optional keys only when given
    assert "ss_vae_name" not in md and "ss_datasets" not in md and "ss_epoch" not in md


def test_numbers_print_as_kohyas_argparse_types():
    md = ss_metadata("sd1", network_dim=8.0, network_alpha=8, learning_rate=1, seed=3.0, noise_offset=0)
    assert md["ss_network_dim"] == "8" and md["ss_network_alpha"] == "8.0"
    assert md["ss_learning_rate"] == "1.0" and md["ss_seed"] == "3" and md["ss_noise_offset"] == "0.0"
    assert ss_metadata("sd1", gradient_checkpointing=True)["ss_gradient_checkpointing"] == "True"


def test_network_args_only_when_given():
    assert "ss_network_args" not in ss_metadata("sd1", network_args={})
    assert "ss_network_args" not in ss_metadata("sd1")


@pytest.mark.parametrize(
    "arch,pred,version,v2",
    [("sd1", "epsilon", "sd_v1", "False"), ("sd2", "epsilon", "sd_v2", "True"),
     ("sd2", "v_prediction", "sd_v2_v", "True"), ("sdxl", "epsilon", "sdxl_base_v1-0", "False")],
)
def test_base_model_version(arch, pred, version, v2):
    assert base_model_version(arch, pred) == version
    md = ss_metadata(arch, pred)
    assert md["ss_base_model_version"] == version and md["ss_v2"] == v2


def test_unknown_key_is_an_error():
    with pytest.raises(ValueError, match="learning_rte"):
        ss_metadata("sd1", learning_rte=1e-4)


def test_resolution_forms():
    assert ss_metadata("sd1", resolution="512,768")["ss_resolution"] == "(512, 768)"
    assert ss_metadata("sd1", resolution=(1024, 1024))["ss_resolution"] == "(1024, 1024)"


def test_checkpoint_and_minimum_metadata():
    md = ss_metadata("sdxl", network_dim=8, network_alpha=4.0, network_args={"conv_dim": 4})
    saved = checkpoint_metadata(md, steps=120, epoch=3, finished_at=1700000100.25)
    assert saved["ss_steps"] == "120" and saved["ss_epoch"] == "3"
    assert saved["ss_training_finished_at"] == "1700000100.25"
    assert "ss_epoch" not in md  # the input is not modified
    mini = minimum_metadata(saved)
    assert set(mini) == {"ss_v2", "ss_base_model_version", "ss_network_module", "ss_network_dim",
                         "ss_network_alpha", "ss_network_args"}


@pytest.mark.parametrize(
    "arch,pred,architecture,implementation,resolution,ptype",
    [
        ("sd1", "epsilon", "stable-diffusion-v1/lora", "diffusers", "512x512", "epsilon"),
        ("sd2", "epsilon", "stable-diffusion-v2-512/lora", "diffusers", "512x512", "epsilon"),
        ("sd2", "v_prediction", "stable-diffusion-v2-768-v/lora", "diffusers", "768x768", "v"),
        ("sdxl", "epsilon", "stable-diffusion-xl-v1-base/lora",
         "https://github.com/Stability-AI/generative-models", "1024x1024", "epsilon"),
    ],
)
def test_modelspec(arch, pred, architecture, implementation, resolution, ptype):
    ts = 1700000000.75
    md = modelspec_metadata(arch, pred, title="chara", timestamp=ts)
    assert md == {
        "modelspec.sai_model_spec": "1.0.1",
        "modelspec.architecture": architecture,
        "modelspec.implementation": implementation,
        "modelspec.title": "chara",
        "modelspec.resolution": resolution,
        "modelspec.date": datetime.datetime.fromtimestamp(1700000000).isoformat(),
        "modelspec.prediction_type": ptype,
        "modelspec.implementation_version": f"lora_trainer/{__version__}",
    }


def test_modelspec_options():
    md = modelspec_metadata("sd1", title=None, timestamp=5.0, resolution="768,512", clip_skip=2,
                            min_timestep=100, author="me", tags="a,b", extra={"trigger_phrase": "sks"})
    assert md["modelspec.title"] == "LoRA@5.0"
    assert md["modelspec.resolution"] == "768x512"
    assert md["modelspec.encoder_layer"] == "2"
    assert md["modelspec.timestep_range"] == "100,1000"
    assert md["modelspec.author"] == "me" and md["modelspec.tags"] == "a,b"
    assert md["modelspec.trigger_phrase"] == "sks"
    assert "modelspec.description" not in md and "modelspec.license" not in md


def test_full_metadata_survives_a_file(tmp_path):
    md = {**ss_metadata("sdxl", output_name="x", network_dim=4, network_alpha=1.0),
          **modelspec_metadata("sdxl", title="x")}
    md = checkpoint_metadata(md, steps=10, epoch=1)
    path = tmp_path / "x.safetensors"
    save_network(path, {"lora_unet_a.alpha": torch.tensor(1.0)}, md)
    _, got = load_network(path)
    assert {k: got[k] for k in md} == md


def test_network_args_carry_kohyas_dropout_entry():
    # sd-scripts: net_kwargs from --network_args (strings), then net_kwargs["dropout"] = args.network_dropout
    md = ss_metadata("sd1", network_args={"conv_dim": 4, "conv_alpha": 1, "dropout": None})
    assert md["ss_network_args"] == '{"conv_dim": "4", "conv_alpha": "1", "dropout": null}'
    md = ss_metadata("sd1", network_args={"conv_dim": 4, "dropout": 0.1})
    assert json.loads(md["ss_network_args"]) == {"conv_dim": "4", "dropout": 0.1}


def test_bucket_info_is_written_as_null_without_buckets():
    assert ss_metadata("sd1", bucket_info=None)["ss_bucket_info"] == "null"
    assert "ss_bucket_info" not in ss_metadata("sd1")  # not given at all: not written


def test_the_modelspec_date_is_the_save_time():
    md = {**ss_metadata("sd1"), **modelspec_metadata("sd1", timestamp=1700000000)}
    saved = checkpoint_metadata(md, steps=1, epoch=1, finished_at=1700003600.5)
    assert saved["modelspec.date"] == datetime.datetime.fromtimestamp(1700003600).isoformat()
    assert md["modelspec.date"] == datetime.datetime.fromtimestamp(1700000000).isoformat()
