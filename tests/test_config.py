import pytest

from lora_trainer.config import ConfigError, from_dict, load_toml, parse_set_args, to_toml


@pytest.fixture
def data_dir(tmp_path):
    (tmp_path / "10_subject").mkdir()
    return str(tmp_path)


def test_unknown_key_names_the_closest_known_one(data_dir):
    with pytest.raises(ConfigError, match=r"unknown option 'network_alpah'.*'network_alpha'"):
        from_dict({"train_data_dir": data_dir, "network_alpah": 16})


def test_set_strings_are_coerced_to_kohya_types(data_dir):
    config, _ = from_dict({
        "train_data_dir": data_dir,
        **parse_set_args(["network_dim=32", "network_alpha=16", "enable_bucket=true", "clip_skip=2",
                          "optimizer_args=['decouple=True', 'd_coef=2']", "seed=None"]),
    })
    assert config.network_dim == 32 and config.network_alpha == 16.0
    assert config.enable_bucket is True and config.clip_skip == 2 and config.seed is None
    assert config.optimizer_args == ["decouple=True", "d_coef=2"]


def test_alpha_larger_than_dim_warns_and_scale_follows(data_dir):
    config, warnings = from_dict({"train_data_dir": data_dir, "network_dim": 8, "network_alpha": 16})
    assert any("network_alpha 16 is larger than network_dim 8" in w for w in warnings)


def test_kohya_defaults_for_dim_and_alpha(data_dir):
    config, _ = from_dict({"train_data_dir": data_dir})
    assert (config.effective_network_dim, config.effective_network_alpha) == (4, 1.0)


def test_missing_folder_error_names_the_path(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(ConfigError, match=str(missing)):
        from_dict({"train_data_dir": str(missing)})


def test_conv_dim_goes_into_network_args(data_dir):
    config, _ = from_dict({"train_data_dir": data_dir, "conv_dim": 8, "conv_alpha": 4})
    assert config.network_args == ["conv_dim=8", "conv_alpha=4"]
    assert (config.conv_dim, config.conv_alpha) == (8, 4.0)
    # kohya: conv_alpha defaults to 1 when only conv_dim is given
    config, _ = from_dict({"train_data_dir": data_dir, "network_args": ["conv_dim=4"]})
    assert config.conv_alpha == 1.0


def test_kohya_sectioned_toml_is_flattened_and_round_trips(tmp_path, data_dir):
    path = tmp_path / "kohya.toml"
    path.write_text(
        "[model_arguments]\nv_parameterization = false\n"
        f"[dataset_arguments]\ntrain_data_dir = '{data_dir}'\nresolution = '768,512'\n"
        "[training_arguments]\ncaption_extention = '.caption'\nmax_token_length = 225\n",
        encoding="utf-8",
    )
    config, _ = from_dict(load_toml(path))
    assert config.resolution_wh == (768, 512)
    assert config.caption_extension == ".caption" and config.max_token_length == 225
    again, _ = from_dict(__import__("tomllib").loads(to_toml(config)))
    assert again == config


@pytest.mark.parametrize("key,value,needle", [
    ("mixed_precision", "fp8", "mixed_precision"),
    ("max_token_length", "100", "max_token_length"),
    ("resolution", "500", "multiples of 8"),
    ("output_name", "a/b", "output_name"),
    ("network_args", "['conv_dim']", "key=value"),
    ("cache_text_encoder_outputs", "true", "network_train_unet_only"),
    ("min_bucket_reso", "32", "smaller than bucket_reso_steps"),
])
def test_bad_values_are_rejected_with_the_option_named(data_dir, key, value, needle):
    with pytest.raises(ConfigError, match=needle):
        from_dict({"train_data_dir": data_dir, "enable_bucket": True, key: value})


@pytest.mark.parametrize("optimizer", ["Prodigy", "DAdaptAdam", "dadaptation", "DAdaptLion", "prodigyopt.Prodigy"])
def test_one_lr_optimizers_refuse_different_part_lrs_up_front(optimizer, tmp_path):
    base = {"train_data_dir": str(tmp_path), "optimizer_type": optimizer, "learning_rate": 1.0}
    with pytest.raises(ConfigError, match="unet_lr = 1, text_encoder_lr = 0.5"):
        from_dict({**base, "text_encoder_lr": 0.5})
    from_dict({**base, "text_encoder_lr": 0})  # UNet only: one group
    from_dict({**base, "unet_lr": 0.5, "text_encoder_lr": 0.5})
    from_dict({**base, "text_encoder_lr": 0.5, "network_train_unet_only": True})
    from_dict({**base, "optimizer_type": "DAdaptAdaGrad", "text_encoder_lr": 0.5})  # takes differing lrs
