"""Presets from the guides, imports from kohya_ss / LoRA_Easy_Training_Scripts, the live step estimate."""
import json
import math

import pytest
import torch
from PIL import Image

from lora_trainer.config import TrainConfig, from_dict
from lora_trainer.config_import import import_easy_training_toml, import_kohya_ss_json
from lora_trainer.dataset import build_dataset_plan
from lora_trainer.estimate import estimate
from lora_trainer.presets import PRESET_NOTES, PRESETS, apply_preset
from lora_trainer.training.optimizers import build_optimizer

from conftest import make_images

# --- presets ------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(PRESETS))
def test_each_preset_validates_and_builds_its_optimizer(name, small_dataset):
    options = apply_preset(name, {"train_data_dir": str(small_dataset), "output_name": "x"})
    config, warnings = from_dict(options)
    assert not [w for w in warnings if "learning_rate" in w]  # adaptive optimizers at lr 1.0
    assert config.train_data_dir == str(small_dataset) and config.output_name == "x"
    assert PRESET_NOTES[name]
    param = torch.nn.Parameter(torch.zeros(3))
    optimizer, _ = build_optimizer(config.optimizer_type, [{"params": [param], "lr": config.learning_rate}],
                                   config.learning_rate, config.optimizer_args, lr_scheduler=config.lr_scheduler)
    assert optimizer.param_groups[0]["lr"] == config.learning_rate


def test_preset_facts(small_dataset):
    def cfg(name):
        return from_dict(apply_preset(name, {"train_data_dir": str(small_dataset)}))[0]

    pony = cfg("Pony style/character (000)")
    assert (pony.optimizer_type, pony.lr_scheduler, pony.network_dim, pony.network_alpha) == ("Prodigy", "cosine", 32, 16)
    assert (pony.unet_lr, pony.text_encoder_lr, pony.learning_rate) == (1.0, 1.0, 1.0)
    assert (pony.resolution, pony.train_batch_size, pony.max_train_epochs) == ("1024", 2, 19)
    assert (pony.save_every_n_epochs, pony.save_last_n_epochs) == (1, 6)

    ill = cfg("Illustrious character (002)")
    assert ill.optimizer_type == "Prodigy" and ill.optimizer_args == ["d_coef=2"] and ill.learning_rate == 1.0
    assert 0.25 <= ill.network_alpha / ill.network_dim <= 0.5
    assert (ill.mixed_precision, ill.clip_skip, ill.debiased_estimation_loss, ill.lr_scheduler) == \
        ("bf16", 2, True, "cosine")

    dadapt = cfg("Easy DAdapt (001)")
    assert dadapt.optimizer_type == "DAdaptAdam"
    assert dadapt.optimizer_args == ["decouple=True", "weight_decay=0.01", "betas=0.9,0.999"]
    prodigy = cfg("Easy Prodigy (001)")
    assert prodigy.optimizer_args == ["decouple=True", "weight_decay=0.01", "d_coef=2", "use_bias_correction=True",
                                      "safeguard_warmup=False", "betas=0.9,0.999"]
    for easy in (dadapt, prodigy):
        assert (easy.learning_rate, easy.unet_lr, easy.text_encoder_lr, easy.lr_scheduler) == (1.0, 1.0, 1.0, "constant")
        assert (easy.network_dim, easy.network_alpha, easy.resolution) == (64, 1, "512")
        assert (easy.enable_bucket, easy.min_bucket_reso, easy.max_bucket_reso) == (True, 320, 1024)
        assert (easy.min_snr_gamma, easy.max_token_length, easy.max_train_steps) == (5, 225, 1000)

    lazy = cfg("Lazy SD1.5 character (003)")
    assert (lazy.optimizer_type, lazy.unet_lr, lazy.text_encoder_lr, lazy.learning_rate) == ("AdamW", 1.6e-4, 6.5e-5, 1.6e-4)
    assert (lazy.lr_scheduler, lazy.lr_scheduler_num_cycles) == ("cosine_with_restarts", 5)
    assert (lazy.network_dim, lazy.network_alpha, lazy.train_batch_size, lazy.max_train_epochs) == (32, 16, 2, 50)
    assert (lazy.save_every_n_epochs, lazy.clip_skip, lazy.resolution) == (5, 2, "512")
    assert (lazy.enable_bucket, lazy.min_bucket_reso, lazy.max_bucket_reso, lazy.bucket_reso_steps) == (True, 320, 1280, 64)


def test_preset_replaces_the_recipe_but_keeps_data_and_user_settings(small_dataset):
    base = {"train_data_dir": str(small_dataset), "output_name": "mine", "mixed_precision": "fp16", "flip_aug": True}
    lazy_then_pony = apply_preset("Pony style/character (000)", apply_preset("Lazy SD1.5 character (003)", base))
    pony = apply_preset("Pony style/character (000)", base)
    # nothing of the first preset's recipe is left (lr_scheduler_num_cycles, save_every_n_epochs ...)
    assert from_dict(lazy_then_pony)[0].lr_scheduler_num_cycles == 1
    recipe = ("optimizer_type", "optimizer_args", "unet_lr", "text_encoder_lr", "lr_scheduler_num_cycles",
              "save_every_n_epochs", "save_last_n_epochs", "max_train_epochs", "network_dim", "network_alpha")
    a, b = from_dict(lazy_then_pony)[0], from_dict(pony)[0]
    assert {k: getattr(a, k) for k in recipe} == {k: getattr(b, k) for k in recipe}
    assert (a.output_name, a.mixed_precision, a.flip_aug) == ("mine", "fp16", True)
    assert base == {"train_data_dir": str(small_dataset), "output_name": "mine", "mixed_precision": "fp16",
                    "flip_aug": True}
    with pytest.raises(KeyError, match="unknown preset"):
        apply_preset("nope", {})


# --- kohya_ss GUI JSON ------------------------------------------------------------------


def test_import_kohya_ss_json(tmp_path):
    train = make_images(tmp_path / "img" / "10_mychar", 2).parent
    model = tmp_path / "model.safetensors"
    model.write_bytes(b"")
    gui = {
        "LoRA_type": "Kohya LoCon",
        "pretrained_model_name_or_path": str(model),
        "train_data_dir": str(train),
        "reg_data_dir": "",
        "output_dir": str(tmp_path / "out"),
        "output_name": "mychar",
        "logging_dir": "",
        "max_resolution": "512,512",
        "epoch": 10,
        "max_train_epochs": "",
        "max_train_steps": "",
        "train_batch_size": 2,
        "learning_rate": 0.0001,
        "unet_lr": 0.0001,
        "text_encoder_lr": 5e-05,
        "optimizer": "AdamW",
        "optimizer_args": 'weight_decay=0.01 "betas=0.9,0.99"',
        "lr_scheduler": "cosine_with_restarts",
        "lr_scheduler_num_cycles": "",
        "lr_warmup": 10,
        "lr_warmup_steps": 0,
        "network_dim": 16,
        "network_alpha": 8,
        "conv_dim": 8,
        "conv_alpha": 4,
        "rank_dropout": 0,
        "module_dropout": 0.1,
        "save_every_n_epochs": 2,
        "save_last_n_epochs": 0,
        "cache_latents": True,
        "clip_skip": "2",
        "seed": "0",
        "min_snr_gamma": 5,
        "noise_offset_type": "Original",
        "noise_offset": 0.05,
        "adaptive_noise_scale": 0,
        "multires_noise_iterations": 6,
        "multires_noise_discount": 0.3,
        "xformers": "xformers",
        "num_cpu_threads_per_process": 2,
        "sdxl": False,
        "v2": False,
        "sample_prompts": "a cat --n blurry",
        "stop_text_encoder_training": 0,
        "save_state": False,
        "enable_bucket": True,
        "min_bucket_reso": 256,
        "max_bucket_reso": 1024,
        "bucket_reso_steps": 64,
        "keep_tokens": "1",
        "shuffle_caption": True,
        "caption_extension": ".txt",
        "max_token_length": "225",
        "mixed_precision": "bf16",
        "save_precision": "fp16",
        "loss_type": "l2",
        "down_lr_weight": "",
        "lora_network_weights": "",
        "additional_parameters": "--debiased_estimation_loss --max_grad_norm=0.5 --foo_bar 3",
        "some_future_key": "abc",
    }
    path = tmp_path / "mychar.json"
    path.write_text(json.dumps(gui))
    options, notes = import_kohya_ss_json(path)
    assert options == {
        "network_module": "networks.lora",
        "network_args": ["conv_dim=8", "conv_alpha=4", "module_dropout=0.1"],
        "max_train_epochs": 10,
        "learning_rate": 0.0001,
        "unet_lr": 0.0001,
        "text_encoder_lr": 5e-05,
        "lr_warmup_steps": 0.1,  # 10 % of the steps
        "lr_scheduler_num_cycles": 10,  # kohya_ss: empty -> the epoch count
        "optimizer_args": ["weight_decay=0.01", "betas=0.9,0.99"],
        "noise_offset": 0.05,  # multires_* dropped: noise_offset_type is Original
        "debiased_estimation_loss": True,
        "max_grad_norm": "0.5",
        "pretrained_model_name_or_path": str(model),
        "train_data_dir": str(train),
        "output_dir": str(tmp_path / "out"),
        "output_name": "mychar",
        "resolution": "512,512",
        "train_batch_size": 2,
        "optimizer_type": "AdamW",
        "lr_scheduler": "cosine_with_restarts",
        "network_dim": 16,
        "network_alpha": 8,
        "save_every_n_epochs": 2,
        "cache_latents": True,
        "clip_skip": "2",
        "min_snr_gamma": 5,
        "enable_bucket": True,
        "min_bucket_reso": 256,
        "max_bucket_reso": 1024,
        "bucket_reso_steps": 64,
        "keep_tokens": "1",
        "shuffle_caption": True,
        "caption_extension": ".txt",
        "max_token_length": "225",
        "mixed_precision": "bf16",
        "save_precision": "fp16",
    }
    text = "\n".join(notes)
    assert "sample_prompts" in text and "--foo_bar" in text and "some_future_key" in text
    assert "num_cpu_threads_per_process" in text
    assert "xformers" not in text and "down_lr_weight" not in text  # accepted / empty: nothing to say

    config, _ = from_dict(options)
    assert (config.conv_dim, config.conv_alpha, config.network_kwargs["module_dropout"]) == (8, 4.0, "0.1")
    assert (config.clip_skip, config.seed, config.max_token_length, config.keep_tokens) == (2, None, 225, 1)
    assert (config.lr_warmup_steps, config.max_grad_norm, config.max_train_steps) == (0.1, 0.5, 1600)


def test_import_kohya_ss_lr_zero_trains_one_part_and_unsupported_types(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"LoRA_type": "LyCORIS/LoHa", "text_encoder_lr": 0, "unet_lr": 1e-4,
                                "learning_rate": 1e-4, "epoch": 4, "max_train_steps": 900}))
    options, notes = import_kohya_ss_json(path)
    assert options["network_train_unet_only"] is True and "text_encoder_lr" not in options
    assert options["max_train_steps"] == 900 and "max_train_epochs" not in options
    assert options["network_module"] == "lycoris.kohya"
    assert any("LyCORIS" in n for n in notes) and any("epoch 4 ignored" in n for n in notes)

    from lora_trainer.config import FIELD_NAMES

    path.write_text(json.dumps({"sdxl": True, "sdxl_no_half_vae": True, "sdxl_cache_text_encoder_outputs": True,
                                "text_encoder_lr": 0, "unet_lr": 1e-4, "xformers": "sdpa"}))
    options, notes = import_kohya_ss_json(path)
    assert options["cache_text_encoder_outputs"] is True and options["network_train_unet_only"] is True
    assert options.get("no_half_vae") is (True if "no_half_vae" in FIELD_NAMES else None)
    assert not [n for n in notes if "no_half_vae" in n or "sdxl" in n or "xformers" in n]


# --- LoRA_Easy_Training_Scripts TOML ------------------------------------------------------


EASY_TOML = """
[[subsets]]
name = "char"
num_repeats = 10
image_dir = "{train}/10_char"
caption_extension = ".txt"
shuffle_caption = true
keep_tokens = 1
flip_aug = false
is_reg = false

[[subsets]]
name = "outfit"
num_repeats = 3
image_dir = "{train}/5_outfit"
caption_extension = ".txt"
shuffle_caption = true
keep_tokens = 1
token_warmup_step = 0
is_reg = false

[[subsets]]
name = "reg"
num_repeats = 1
image_dir = "{reg}/1_person"
caption_extension = ".txt"
is_reg = true

[train_mode]
train_mode = "lora"

[noise_args.args]
noise_offset = 0.03

[sample_args]

[logging_args]

[general_args.args]
pretrained_model_name_or_path = "{model}"
mixed_precision = "bf16"
seed = 23
clip_skip = 2
xformers = true
max_data_loader_n_workers = 1
persistent_data_loader_workers = true
max_token_length = 225
prior_loss_weight = 1.0
max_train_epochs = 12
cache_latents = true
gradient_checkpointing = true
vae = "/x/vae.safetensors"

[general_args.dataset_args]
resolution = [768, 512]
batch_size = 2

[network_args.args]
network_dim = 32
network_alpha = 16.0
min_timestep = 0
max_timestep = 1000

[network_args.args.network_args]
conv_dim = 8
conv_alpha = 4.0
down_lr_weight = [1, 1, 1]

[optimizer_args.args]
optimizer_type = "Prodigy"
lr_scheduler = "rex_annealing_warm_restarts_(RAWR)"
lr_scheduler_type = "LoraEasyCustomOptimizer.RexAnnealingWarmRestarts.RexAnnealingWarmRestarts"
learning_rate = 1.0
unet_lr = 1.0
text_encoder_lr = 1.0
lr_scheduler_num_cycles = 3
warmup_ratio = 0.1
min_snr_gamma = 5
loss_type = "l2"

[optimizer_args.args.optimizer_args]
decouple = "true"
weight_decay = "0.01"
d_coef = "2"
betas = "0.9,0.999"

[optimizer_args.args.lr_scheduler_args]
min_lr = 1e-6
gamma = 0.9

[saving_args.args]
easy_name = "mychar"
output_dir = "{out}/${{replace}}"
output_name = "${{replace}}_v1"
save_precision = "fp16"
save_model_as = "safetensors"
save_every_n_epochs = 2
save_last_n_epochs = 3
tag_occurrence = true
save_toml = true

[bucket_args.dataset_args]
enable_bucket = true
min_bucket_reso = 256
max_bucket_reso = 1024
bucket_reso_steps = 64
"""


def test_import_easy_training_toml(tmp_path):
    train, reg, out = tmp_path / "train", tmp_path / "reg", tmp_path / "out"
    make_images(train / "10_char", 2)
    make_images(train / "5_outfit", 2)
    make_images(reg / "1_person", 2)
    model = tmp_path / "model.safetensors"
    model.write_bytes(b"")
    path = tmp_path / "mychar.toml"
    path.write_text(EASY_TOML.format(train=train.as_posix(), reg=reg.as_posix(), out=out.as_posix(),
                                     model=model.as_posix()))
    options, notes = import_easy_training_toml(path)
    assert options == {
        "noise_offset": 0.03,
        "pretrained_model_name_or_path": model.as_posix(),
        "mixed_precision": "bf16",
        "seed": 23,
        "clip_skip": 2,
        "max_token_length": 225,
        "prior_loss_weight": 1.0,
        "max_train_epochs": 12,
        "cache_latents": True,
        "gradient_checkpointing": True,
        "network_dim": 32,
        "network_alpha": 16.0,
        "max_timestep": 1000,  # min_timestep 0 is dropped, as the backend does
        "network_args": ["conv_dim=8", "conv_alpha=4.0"],
        "optimizer_type": "Prodigy",
        "lr_scheduler": "cosine_with_restarts",
        "learning_rate": 1.0,
        "unet_lr": 1.0,
        "text_encoder_lr": 1.0,
        "lr_scheduler_num_cycles": 3,
        "lr_warmup_steps": 0.1,
        "min_snr_gamma": 5,
        "optimizer_args": ["decouple=True", "weight_decay=0.01", "d_coef=2", "betas=0.9,0.999"],
        "output_dir": f"{out.as_posix()}/mychar",
        "output_name": "mychar_v1",
        "save_precision": "fp16",
        "save_model_as": "safetensors",
        "save_every_n_epochs": 2,
        "save_last_n_epochs": 3,
        "resolution": "768,512",
        "train_batch_size": 2,
        "enable_bucket": True,
        "min_bucket_reso": 256,
        "max_bucket_reso": 1024,
        "bucket_reso_steps": 64,
        "train_data_dir": str(train),
        "reg_data_dir": str(reg),
        "caption_extension": ".txt",
        "shuffle_caption": True,
        "keep_tokens": 1,
    }
    text = "\n".join(notes)
    assert "vae" in text and "down_lr_weight=1,1,1" in text and "RexAnnealingWarmRestarts" in text
    assert "min_lr=1e-06" in text  # the custom scheduler's args are not carried over
    assert "subset 'outfit': num_repeats is 3 but the folder '5_outfit' says 5" in text
    assert "xformers" not in text and "tag_occurrence" not in text

    config, _ = from_dict(options)
    assert (config.conv_dim, config.resolution_wh, config.reg_data_dir) == (8, (768, 512), str(reg))


def test_import_errors_are_clear(tmp_path):
    from lora_trainer.config import ConfigError

    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    with pytest.raises(ConfigError, match="not valid JSON"):
        import_kohya_ss_json(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        import_easy_training_toml(tmp_path / "missing.toml")


# --- estimate ------------------------------------------------------------------------------


@pytest.fixture
def concept_dataset(tmp_path):
    train = tmp_path / "train"
    make_images(train / "10_char", 12)  # 64x64
    make_images(train / "10_char", 2, size=(64, 128), prefix="tall")
    make_images(train / "3_outfit", 5)
    make_images(train / "100_bg", 4)
    return train


def concept_options(train, **overrides):
    options = {
        "train_data_dir": str(train), "resolution": "128", "enable_bucket": True, "min_bucket_reso": 64,
        "max_bucket_reso": 128, "bucket_reso_steps": 64, "train_batch_size": 4, "max_train_epochs": 30,
        "output_name": "bad/name",  # not an option the counts use: not checked here
    }
    options.update(overrides)
    return options


def test_estimate_equals_kohya_counts(concept_dataset, monkeypatch):
    # buckets at 128 (step 64, 64..128): 64x64 -> 128x128, 64x128 -> 64x128.
    # 128x128: char 12x10 + outfit 5x3 + bg 4x100 = 535 -> ceil(535/4) = 134 batches; 64x128: 2x10 = 20 -> 5
    import lora_trainer.dataset.folders as folders

    def no_decoding(path):
        raise AssertionError("estimate must not decode pixels")

    monkeypatch.setattr(folders, "inspect_image", no_decoding)
    result = estimate(concept_options(concept_dataset))
    assert result["ok"], result["error"]
    assert (result["num_train_images"], result["num_batches_per_epoch"], result["steps_per_epoch"]) == (555, 139, 139)
    assert (result["num_epochs"], result["total_steps"]) == (30, 4170)
    assert sorted((tuple(b["resolution"]), b["count"]) for b in result["buckets"]) == [((64, 128), 20), ((128, 128), 535)]
    folders_ = {f["folder"]: f for f in result["folders"]}
    assert {k: (f["images"], f["repeats"], f["images_x_repeats"]) for k, f in folders_.items()} == {
        "100_bg": (4, 100, 400), "10_char": (14, 10, 140), "3_outfit": (5, 3, 15)}
    # images x repeats x epochs / batch
    assert folders_["10_char"]["total_steps"] == 14 * 10 * 30 / 4 == 1050
    assert folders_["3_outfit"]["total_steps"] == round(5 * 3 * 30 / 4) == 112
    assert folders_["100_bg"]["total_steps"] == 4 * 100 * 30 / 4 == 3000
    warnings = "\n".join(result["warnings"])
    assert "3_outfit: about 112 steps" in warnings and "raise" in warnings
    assert "100_bg: about 3000 steps" in warnings and "lower" in warnings
    assert "10_char" not in warnings

    # the loop's own plan (full pixel scan) gives the same numbers
    monkeypatch.undo()
    config, _ = from_dict(concept_options(concept_dataset, output_name="x"))
    counts = build_dataset_plan(config, arch="sd1", seed=0, log=lambda _m: None).counts
    assert (counts.num_train_images, counts.num_batches_per_epoch, counts.num_epochs, counts.max_train_steps) == \
        (result["num_train_images"], result["num_batches_per_epoch"], result["num_epochs"], result["total_steps"])


def test_estimate_with_steps_accumulation_and_errors(concept_dataset, tmp_path):
    by_steps = estimate(concept_options(concept_dataset, max_train_epochs=None, max_train_steps=200,
                                        gradient_accumulation_steps=2))
    assert by_steps["ok"]
    assert (by_steps["steps_per_epoch"], by_steps["num_epochs"], by_steps["total_steps"]) == (70, 3, 200)
    char = next(f for f in by_steps["folders"] if f["folder"] == "10_char")
    assert char["total_steps"] == round(14 * 10 / (4 * 2) * (200 / 70))
    assert any("max_train_epochs is not set" in n for n in by_steps["notes"])

    config = from_dict(concept_options(concept_dataset, output_name="x"))[0]
    assert isinstance(config, TrainConfig) and estimate(config)["total_steps"] == 4170

    missing = estimate({"train_data_dir": str(tmp_path / "nope")})
    assert not missing["ok"] and "does not exist" in missing["error"]
    empty = tmp_path / "empty"
    (empty / "notnumbered").mkdir(parents=True)
    Image.new("RGB", (64, 64)).save(empty / "notnumbered" / "a.png")
    nothing = estimate({"train_data_dir": str(empty)})
    assert not nothing["ok"] and "no training images" in nothing["error"]
    assert any("leading repeat count" in f for f in nothing["findings"])
    assert math.isclose(estimate(concept_options(concept_dataset))["steps_per_epoch"], 139)


def test_estimate_reads_the_architecture_from_the_checkpoint_header(concept_dataset, tiny_checkpoints):
    from lora_trainer.estimate import guess_arch

    checkpoint = tiny_checkpoints("sd1")
    assert guess_arch(checkpoint) == "sd1or2" and guess_arch("") is None
    # SD1/SD2 buckets must be multiples of 64 (kohya's verify_bucket_reso_steps), as training will refuse
    options = concept_options(concept_dataset, bucket_reso_steps=32, pretrained_model_name_or_path=checkpoint)
    result = estimate(options)
    assert not result["ok"] and "divisible by 64" in result["error"]
    assert estimate(options, arch="sdxl")["ok"]


def test_kohya_ss_inline_sample_prompts_become_kohyas_prompt_file(tmp_path):
    """kohya_ss keeps sample prompts as text and hands sd-scripts <output_dir>/sample/prompt.txt."""
    from lora_trainer.config import from_dict

    out_dir = tmp_path / "out"
    gui = {"output_dir": str(out_dir), "sample_prompts": "a cat --n blurry --w 512 --h 768 --d 5\ndog --s 20",
           "sample_every_n_epochs": 2, "sample_every_n_steps": 0, "sample_sampler": "euler_a"}
    source = tmp_path / "c.json"
    source.write_text(json.dumps(gui))
    options, notes = import_kohya_ss_json(source)
    prompt_file = out_dir / "sample" / "prompt.txt"
    assert options["sample_prompts"] == str(prompt_file)
    assert prompt_file.read_text(encoding="utf-8") == gui["sample_prompts"] + "\n"
    assert options["sample_every_n_epochs"] == 2 and "sample_every_n_steps" not in options
    assert options["sample_sampler"] == "euler_a"
    assert any(str(prompt_file) in note for note in notes)
    config, _ = from_dict({**options, "train_data_dir": str(tmp_path)})
    assert config.sample_every_n_epochs == 2 and config.sample_prompts == str(prompt_file)

    # a second import with other prompts never overwrites the first file
    gui["sample_prompts"] = "another prompt"
    source.write_text(json.dumps(gui))
    options, _ = import_kohya_ss_json(source)
    assert options["sample_prompts"] == str(out_dir / "sample" / "prompt-2.txt")
    assert prompt_file.read_text(encoding="utf-8").startswith("a cat")


def test_easy_training_sample_args_are_taken(tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a cat\n")
    text = (f'[sample_args.args]\nsample_prompts = "{prompts}"\nsample_sampler = "euler_a"\n'
            'sample_every_n_epochs = 1\n')
    path = tmp_path / "easy.toml"
    path.write_text(text)
    options, notes = import_easy_training_toml(path)
    assert options["sample_prompts"] == str(prompts) and options["sample_sampler"] == "euler_a"
    assert options["sample_every_n_epochs"] == 1
    assert not any("sample" in note for note in notes)
