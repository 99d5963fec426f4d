"""The tab without a browser: every option reachable, presets, TOML round trip, queue buttons.

The form, its conversions and the button logic need no Gradio and run everywhere.
Tests named ``test_gradio_*`` build the real Blocks with a fake manager; when this
interpreter has no Gradio they run in each UI venv (``.venv-gradio3``: Gradio
3.41.2 as in AUTOMATIC1111; ``.venv-gradio4``: Gradio 4.40.0 as in Forge; or
``LORA_TRAINER_UI_PYTHONS``) through ``test_gradio_tests_in_ui_pythons``.
"""
from __future__ import annotations

import copy
import importlib.util
import json
import os
from pathlib import Path
from typing import Any, get_type_hints

import pytest
from ui_pythons import gradio_tests_test

from lora_trainer.config import FIELD_NAMES, TrainConfig, from_dict
from lora_trainer.presets import PRESETS, apply_preset
from lora_trainer.ui import render
from lora_trainer.ui.logic import TabLogic
from lora_trainer.ui.values import (
    BY_NAME,
    CONTROL_NAMES,
    CONTROLS,
    EXTRA_CONTROLS,
    config_unchecked,
    default_form,
    form_list,
    form_to_options,
    options_to_form,
    options_unchecked,
)

REPO = Path(__file__).resolve().parent.parent
HAS_GRADIO = importlib.util.find_spec("gradio") is not None


class FakeHost:
    name = "fake"

    def __init__(self, lora_dir="/tmp/fake-lora", checkpoint_path=None):
        self._lora_dir = Path(lora_dir)
        self.checkpoint_path = checkpoint_path

    def lora_dir(self):
        return self._lora_dir


class FakeManager:
    """JobManager's surface, recording calls; jobs are dicts as JobManager.status gives them."""

    def __init__(self):
        self.submitted: list[TrainConfig] = []
        self.interrupts: list[bool] = []
        self._jobs: list[dict[str, Any]] = []

    def add_job(self, **fields) -> dict[str, Any]:
        job = {"id": f"job{len(self._jobs)}", "name": "x", "state": "queued", "step": 0, "total_steps": 0,
               "epoch": 0, "total_epochs": 0, "loss": None, "lr": {}, "eta": None, "elapsed": 0.0, "files": [],
               "message": "", "losses": [], "peak_memory": None, "config": {}, "log": []}
        job.update(fields)
        self._jobs.append(job)
        return job

    def submit(self, config):
        assert isinstance(config, TrainConfig)
        self.submitted.append(config)
        return self.add_job(name=config.output_name, config=config.to_dict())["id"]

    def status(self, job_id=None):
        for job in self._jobs:
            if job["state"] == "running":
                return copy.deepcopy(job)
        return copy.deepcopy(self._jobs[-1]) if self._jobs else {}

    def jobs(self):
        return copy.deepcopy(self._jobs)

    def interrupt(self, save_current=True):
        self.interrupts.append(save_current)
        return any(j["state"] == "running" for j in self._jobs)

    def cancel(self, job_id):
        for job in self._jobs:
            if job["id"] == job_id and job["state"] == "queued":
                job["state"] = "cancelled"
                return True
        return False


def non_default_options() -> dict[str, Any]:
    """A valid value different from the default for every field (and the conv shorthands)."""
    hints = get_type_hints(TrainConfig)
    defaults = TrainConfig().to_dict()
    special = {
        "resolution": "768,512", "caption_extension": ".caption", "network_module": "networks.lora",
        "optimizer_type": "Prodigy", "lr_scheduler": "cosine_with_restarts", "mixed_precision": "bf16",
        "save_precision": "fp16", "save_model_as": "safetensors", "max_token_length": 225, "device": "cpu",
        "output_name": "my_lora", "caption_separator": ";", "keep_tokens_separator": "|||",
        "network_args": ["module_dropout=0.1", "conv_dim=8", "conv_alpha=4"],  # the form puts conv_* last
        "optimizer_args": ["weight_decay=0.01", "betas=0.9,0.999"], "lr_scheduler_args": ["min_lr=1e-06"],
        "min_bucket_reso": 320, "max_bucket_reso": 1280, "bucket_reso_steps": 32, "clip_skip": 2,
        "caption_dropout_rate": 0.05, "caption_tag_dropout_rate": 0.1, "network_dim": 16, "network_alpha": 8.0,
        "learning_rate": 1.6e-4, "unet_lr": 1.6e-4, "text_encoder_lr": 6.5e-5, "lr_warmup_steps": 0.05,
        "network_dropout": 0.1, "scale_weight_norms": 1.0, "max_train_epochs": 12, "seed": 42,
        "color_aug": True, "random_crop": True, "cache_latents": False, "cache_latents_to_disk": False,
        "network_train_unet_only": True, "network_train_text_encoder_only": False,
    }
    out = {}
    for name in FIELD_NAMES:
        if name in special:
            out[name] = special[name]
            continue
        hint, default = hints[name], defaults[name]
        text = str(hint)
        if hint is bool:
            out[name] = not default
        elif "int" in text and "float" not in text:
            out[name] = (default or 0) + 3
        elif "float" in text:
            out[name] = round((default or 0.0) + 0.25, 4)
        else:
            out[name] = f"/some/{name}" if "dir" in name or "path" in name or "weights" in name else f"text {name}"
    return out


# --- the form: every option has a control -----------------------------------------------------


def test_every_field_has_exactly_one_control():
    assert set(CONTROL_NAMES) == set(FIELD_NAMES) | set(EXTRA_CONTROLS)
    assert len(CONTROL_NAMES) == len(set(CONTROL_NAMES))
    elem_ids = [c.elem_id for c in CONTROLS]
    assert len(elem_ids) == len(set(elem_ids))
    assert all(e == "lora_trainer_" + c.name for e, c in zip(elem_ids, CONTROLS))


def test_controls_are_type_appropriate():
    hints = get_type_hints(TrainConfig)
    for name in FIELD_NAMES:
        control = BY_NAME[name]
        if hints[name] is bool:
            assert control.kind == "checkbox", name
        elif hints[name] in (int, float):
            assert control.kind == "number" or name in ("max_token_length",), name
    assert BY_NAME["optimizer_type"].kind == "dropdown" and "Prodigy" in BY_NAME["optimizer_type"].choices
    assert BY_NAME["optimizer_type"].custom  # "module.Class" optimizers are typed in
    assert BY_NAME["lr_scheduler"].kind == "dropdown" and "cosine_with_restarts" in BY_NAME["lr_scheduler"].choices
    assert BY_NAME["clip_skip"].optional and BY_NAME["clip_skip"].kind == "text"  # empty = kohya's default
    assert BY_NAME["optimizer_args"].is_list


def test_dropdown_choices_match_the_core():
    from lora_trainer.training.optimizers import OPTIMIZER_TYPES
    from lora_trainer.training.schedulers import SCHEDULERS

    assert BY_NAME["optimizer_type"].choices == tuple(OPTIMIZER_TYPES)
    assert BY_NAME["lr_scheduler"].choices == tuple(SCHEDULERS)


def test_sections_put_the_guides_options_first_and_the_rest_in_advanced():
    sections = {c.name: c.section for c in CONTROLS}
    assert sections["train_data_dir"] == "Dataset" and sections["trigger_word"] == "Dataset"
    assert sections["network_dim"] == "Network" and sections["conv_dim"] == "Network"
    assert sections["optimizer_args"] == "Optimizer & scheduler"
    assert sections["enable_bucket"] == "Resolution & buckets"
    assert sections["flip_aug"] == "Captions & augmentations"
    assert sections["save_every_n_epochs"] == "Saving"
    for name in ("clip_skip", "mixed_precision", "min_snr_gamma", "seed", "noise_offset", "device"):
        assert sections[name] == "Advanced", name


def test_default_form_gives_the_default_config():
    config, notes = config_unchecked(form_to_options(default_form()))
    assert notes == []
    assert config == TrainConfig(save_precision="float")  # None is shown (and kept) as "float"


def test_every_option_round_trips_through_the_form():
    options = non_default_options()
    config, notes = options_unchecked(options)
    assert notes == []
    original = TrainConfig(**config)
    form = options_to_form(original.to_dict())
    assert form["conv_dim"] == "8" and form["conv_alpha"] == "4"
    assert form["network_args"] == "module_dropout=0.1"  # conv_* have their own boxes
    again, notes = config_unchecked(form_to_options(form_list(form)))
    assert notes == []
    assert again.to_dict() == original.to_dict()


def test_conv_boxes_go_into_network_args_like_kohyas_shorthands():
    form = default_form()
    form.update(conv_dim="8", conv_alpha="", network_args="rank_dropout=0.1")
    options = form_to_options(form)
    config, _ = config_unchecked(options)
    assert config.network_args == ["rank_dropout=0.1", "conv_dim=8"]
    assert config.conv_dim == 8 and config.conv_alpha == 1.0  # kohya: 1 when only conv_dim is set


def test_empty_optional_boxes_mean_not_set():
    form = default_form()
    form.update(clip_skip="", network_alpha="  ", unet_lr="", reg_data_dir="", max_train_epochs="")
    config, _ = config_unchecked(form_to_options(form))
    assert config.clip_skip is None and config.network_alpha is None and config.unet_lr is None
    assert config.reg_data_dir is None and config.max_train_epochs is None


# --- presets, TOML, imports through the tab's functions -------------------------------------------


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_fills_the_form_as_apply_preset_does(name):
    logic = TabLogic(FakeManager(), FakeHost())
    form = default_form(train_data_dir="/data/set", output_name="mine", trigger_word="sks", network_dim=8,
                        optimizer_args=["foo=1"])
    out = logic.apply_preset(name, *form_list(form))
    values, message = out[:-1], out[-1]
    assert len(values) == len(CONTROL_NAMES)
    got = dict(zip(CONTROL_NAMES, values))
    expected, _ = options_unchecked(apply_preset(name, options_unchecked(form_to_options(form))[0]))
    assert config_unchecked(form_to_options(got))[0] == TrainConfig(**expected)
    for key, value in PRESETS[name].items():
        assert got[key] == options_to_form({key: value})[key], key
    assert (got["train_data_dir"], got["output_name"], got["trigger_word"]) == ("/data/set", "mine", "sks")
    assert name in message


def test_applying_a_preset_after_another_leaves_nothing_stale():
    logic = TabLogic(FakeManager(), FakeHost())
    names = list(PRESETS)
    first = logic.apply_preset(names[0], *form_list(default_form()))[:-1]
    both = logic.apply_preset(names[-1], *first)[:-1]
    only = logic.apply_preset(names[-1], *form_list(default_form()))[:-1]
    assert both == only


def test_toml_round_trip_through_the_tab(tmp_path):
    logic = TabLogic(FakeManager(), FakeHost())
    config = TrainConfig(**options_unchecked(non_default_options())[0])
    values = form_list(options_to_form(config.to_dict()))
    message, written = logic.save_toml(str(tmp_path / "cfg" / "mine"), *values)
    assert written == str(tmp_path / "cfg" / "mine.toml") and Path(written).is_file()
    assert "Saved" in message and "not ready to train" in message  # saved although /some/train_data_dir is absent
    out = logic.load_toml(written, *form_list(default_form()))
    assert out[:-1] == values
    assert "Loaded" in out[-1]
    # what was saved is a TOML that the CLI's from_dict reads (paths aside)
    from lora_trainer.config import load_toml

    loaded = load_toml(written)
    assert loaded["optimizer_args"] == ["weight_decay=0.01", "betas=0.9,0.999"]
    assert loaded["network_args"] == ["module_dropout=0.1", "conv_dim=8", "conv_alpha=4"]


def test_save_without_a_path_writes_a_file_to_download():
    logic = TabLogic(FakeManager(), FakeHost())
    message, written = logic.save_toml("", *form_list(default_form(output_name="dl")))
    assert written and Path(written).name == "dl.toml" and Path(written).is_file()


def test_load_a_sectioned_kohya_toml_with_an_upload_object(tmp_path):
    path = tmp_path / "kohya.toml"
    path.write_text('[model_arguments]\nclip_skip = 2\n[optimizer_arguments]\noptimizer_type = "Lion"\n'
                    'learning_rate = 3e-5\nxformers = true\nnot_an_option = 1\n', encoding="utf-8")

    class Gradio3Upload:  # Gradio 3 hands a tempfile wrapper
        name = str(path)

    logic = TabLogic(FakeManager(), FakeHost())
    out = logic.load_toml(Gradio3Upload(), *form_list(default_form()))
    form = dict(zip(CONTROL_NAMES, out[:-1]))
    assert form["clip_skip"] == "2" and form["optimizer_type"] == "Lion" and form["learning_rate"] == 3e-5
    assert "not_an_option" in out[-1]


def test_load_reports_a_missing_file_and_keeps_the_form():
    logic = TabLogic(FakeManager(), FakeHost())
    values = form_list(default_form(output_name="kept"))
    out = logic.load_toml("/nonexistent/x.toml", *values)
    assert out[:-1] == values and "Could not load" in out[-1]


def test_import_kohya_ss_json_and_easy_training_toml(tmp_path):
    logic = TabLogic(FakeManager(), FakeHost())
    kohya = tmp_path / "kohya_ss.json"
    kohya.write_text(json.dumps({
        "LoRA_type": "Standard", "network_dim": 16, "network_alpha": 8, "optimizer": "AdamW",
        "learning_rate": 0.0002, "epoch": 7, "output_name": "from_kohya_ss", "train_data_dir": "/x/img",
    }), encoding="utf-8")
    out = logic.import_config(str(kohya), *form_list(default_form(trigger_word="keep")))
    form = dict(zip(CONTROL_NAMES, out[:-1]))
    assert form["network_dim"] == "16" and form["output_name"] == "from_kohya_ss"
    assert form["max_train_epochs"] == "7" and form["trigger_word"] == "keep"
    assert "kohya_ss" in out[-1]

    easy = tmp_path / "easy.toml"
    easy.write_text('[general_args.args]\nmax_train_epochs = 9\n[network_args.args]\nnetwork_dim = 12\n'
                    'network_alpha = 6.0\n[optimizer_args.args]\noptimizer_type = "Prodigy"\nlearning_rate = 1.0\n',
                    encoding="utf-8")
    out = logic.import_config(str(easy), *form_list(default_form()))
    form = dict(zip(CONTROL_NAMES, out[:-1]))
    assert form["network_dim"] == "12" and form["optimizer_type"] == "Prodigy" and form["max_train_epochs"] == "9"
    assert "Easy_Training" in out[-1]

    bad = logic.import_config(str(tmp_path / "x.yaml"), *form_list(default_form()))
    assert "Could not import" in bad[-1]


# --- queue buttons --------------------------------------------------------------------------------


def test_train_validates_then_submits(small_dataset):
    manager = FakeManager()
    logic = TabLogic(manager, FakeHost())
    message = logic.submit(*form_list(default_form(output_name="mine")))
    assert "Not queued" in message and "train_data_dir" in message and manager.submitted == []
    message = logic.submit(*form_list(default_form(train_data_dir=str(small_dataset), output_name="mine",
                                                   network_dim=8, resolution="64")))
    assert "started" in message and "Not queued" not in message
    (config,) = manager.submitted
    assert config.train_data_dir == str(small_dataset) and config.network_dim == 8 and config.resolution == "64"
    assert config == from_dict(form_to_options(form_list(default_form(
        train_data_dir=str(small_dataset), output_name="mine", network_dim=8, resolution="64"))))[0]
    manager._jobs[0]["state"] = "running"
    message = logic.submit(*form_list(default_form(train_data_dir=str(small_dataset), output_name="next")))
    assert "queued after the running job" in message


def _doctor_dataset(root: Path) -> Path:
    """4 images (under the 20 the doctor asks for), one caption without the trigger word."""
    from conftest import make_images

    make_images(root / "2_sks", 4)
    (root / "2_sks" / "img_003.txt").write_text("circle, red", encoding="utf-8")
    return root


def test_train_runs_the_dataset_doctor_and_its_errors_block(tmp_path):
    root = _doctor_dataset(tmp_path / "train")
    (root / "2_sks" / "img_001.txt").write_bytes(b"")  # an empty caption: kohya (and we) stop on it
    manager = FakeManager()
    logic = TabLogic(manager, FakeHost())
    form = default_form(train_data_dir=str(root), output_name="mine", resolution="64", trigger_word="sks")
    for _ in range(2):  # Train and Add to queue: the same check
        message = logic.submit(*form_list(form))
        assert message.startswith("**Not queued:** the dataset check found 1 problem(s)"), message
        assert "[empty_caption]" in message and "`2_sks/img_001.txt`" in message and "fix: write captions" in message
        assert "too_few_images" not in message  # only what stops the training blocks it
        assert manager.submitted == []
    (root / "2_sks" / "img_001.txt").write_text("sks, circle", encoding="utf-8")
    message = logic.submit(*form_list(form))
    assert "**mine** started" in message and len(manager.submitted) == 1
    # the warnings are told, the job is submitted anyway
    assert "dataset: [too_few_images] 2_sks: 4 image(s); 20 or more" in message
    assert "dataset: [missing_trigger] 1 caption(s) do not contain the trigger word 'sks' (`2_sks/img_003.txt`)" \
        in message
    assert "steps_" not in message  # the estimate panel shows the steps with the real length


def test_the_dataset_doctor_is_cached_by_the_folders_listing(tmp_path, monkeypatch):
    from lora_trainer.dataset import doctor

    root = _doctor_dataset(tmp_path / "train")
    calls = []
    real = doctor.check_dataset

    def counting(*args, **kwargs):
        calls.append(kwargs.get("train_dir", args[0] if args else None))
        return real(*args, **kwargs)

    monkeypatch.setattr(doctor, "check_dataset", counting)
    manager = FakeManager()
    logic = TabLogic(manager, FakeHost())
    form = default_form(train_data_dir=str(root), output_name="mine", resolution="64", trigger_word="sks")
    first = logic.submit(*form_list(form))
    second = logic.submit(*form_list(form))
    assert len(calls) == 1 and first.split("\n", 1)[1] == second.split("\n", 1)[1]  # same findings, one scan
    caption = root / "2_sks" / "img_003.txt"
    caption.write_text("sks, circle", encoding="utf-8")
    os.utime(caption, ns=(caption.stat().st_atime_ns, caption.stat().st_mtime_ns + 10 ** 9))  # coarse clocks
    third = logic.submit(*form_list(form))
    assert len(calls) == 2 and "missing_trigger" not in third  # an edited caption: checked again
    logic.submit(*form_list(dict(form, trigger_word="other")))
    assert len(calls) == 3  # other settings: checked again
    (root / "2_sks" / "img_009.png").write_bytes((root / "2_sks" / "img_000.png").read_bytes())
    assert "near_duplicate" in logic.submit(*form_list(form)) and len(calls) == 4  # a new file
    assert len(manager.submitted) == 5


def test_a_failing_dataset_check_never_stops_the_training(small_dataset, monkeypatch):
    from lora_trainer.dataset import doctor

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(doctor, "check_dataset", broken)
    manager = FakeManager()
    message = TabLogic(manager, FakeHost()).submit(*form_list(default_form(train_data_dir=str(small_dataset),
                                                                            output_name="mine", resolution="64")))
    assert "started" in message and "dataset check could not run (RuntimeError: boom)" in message
    assert len(manager.submitted) == 1


def test_interrupt_and_cancel_reach_the_manager():
    manager = FakeManager()
    logic = TabLogic(manager, FakeHost())
    assert "Nothing is training" in logic.interrupt(True)
    manager.add_job(state="running")
    queued = manager.add_job(state="queued", name="later")
    assert "saved too" in logic.interrupt(True) and "epochs are kept" in logic.interrupt(False)
    assert manager.interrupts == [True, True, False]
    assert "Cancelled" in logic.cancel(f"{queued['id']} (later)")
    assert "not queued" in logic.cancel(queued["id"])


def test_poll_shows_progress_files_queue_and_keeps_the_cancel_choice(tmp_path):
    manager = FakeManager()
    logic = TabLogic(manager, FakeHost())
    empty = logic.poll(None)
    assert 'data-state="idle"' in empty["progress"] and 'data-count="0"' in empty["queue"]
    epoch_file = tmp_path / "mine-000001.safetensors"
    epoch_file.write_bytes(b"x" * 2048)
    manager.add_job(state="running", name="mine", step=12, total_steps=40, epoch=2, total_epochs=5, loss=0.1234,
                    lr={"unet": 1e-4, "d*lr": 3e-5}, eta=65.0, elapsed=20.0, files=[str(epoch_file)],
                    losses=[0.2, 0.15, 0.12, 0.1], peak_memory=3 * 1024 ** 3, log=["line one", "line two"])
    manager.add_job(state="queued", name="later")
    out = logic.poll(None)
    assert 'data-state="running"' in out["progress"] and 'data-step="12"' in out["progress"]
    assert "12 / 40" in out["progress"] and "2 / 5" in out["progress"] and "0.1234" in out["progress"]
    assert "d*lr 3e-05" in out["progress"] and "1:05" in out["progress"] and "3.00 GiB" in out["progress"]
    assert out["progress"].count("<polyline") == 2
    assert "mine-000001.safetensors" in out["files"] and "2.00 KiB" in out["files"]
    assert out["queue"].count("<tr data-job") == 2 and 'data-state="queued"' in out["queue"]
    assert out["log"] == "line one\nline two"
    assert out["queued_choices"] == ["job1 (later)"]
    again = logic.poll(out["signature"])
    assert again["queued_choices"] is None  # unchanged: the dropdown keeps what the user chose


def test_panels_escape_user_text():
    manager = FakeManager()
    manager.add_job(state="failed", name="<script>alert(1)</script>", message='bad "quote" <b>')
    logic = TabLogic(manager, FakeHost())
    out = logic.poll(None)
    for html in (out["progress"], out["queue"]):
        assert "<script>" not in html and "&lt;script&gt;" in html
    assert "<b>" not in out["progress"].replace("<b>&lt;", "")


def test_loss_chart_downsamples_long_runs():
    svg = render.loss_svg([1.0 / (i + 1) for i in range(5000)], max_points=400)
    points = int(svg.split('data-points="')[1].split('"')[0])
    assert svg.count("<polyline") == 2 and 300 < points <= 400 and ">5000<" in svg
    assert "waiting" in render.loss_svg([0.5])


def test_estimate_panel_counts_the_dataset(small_dataset):
    logic = TabLogic(FakeManager(), FakeHost())
    html = logic.estimate(*form_list(default_form(train_data_dir=str(small_dataset), resolution="64",
                                                  max_train_epochs=3, train_batch_size=2)))
    assert 'data-ok="true"' in html and 'data-total="12"' in html  # 4 images x 2 repeats / 2 x 3 epochs
    assert "2_sks" in html
    missing = logic.estimate(*form_list(default_form(train_data_dir="/nonexistent")))
    assert 'data-ok="false"' in missing


def test_initial_form_names_the_standalone_checkpoint():
    logic = TabLogic(FakeManager(), FakeHost(checkpoint_path="/models/x.safetensors"))
    assert logic.initial_form()["pretrained_model_name_or_path"] == "/models/x.safetensors"
    assert logic.lora_dir() == "/tmp/fake-lora"


def test_standalone_app_binds_loopback_only(tmp_path, capsys):
    import argparse

    from lora_trainer.ui.app import is_loopback, main

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2") and not is_loopback("example.com")
    checkpoint = tmp_path / "x.safetensors"
    checkpoint.write_bytes(b"")
    args = argparse.Namespace(ckpt=str(checkpoint), lora_dir=str(tmp_path / "lora"), host="0.0.0.0", port=1)
    assert main(args) == 2 and "loopback" in capsys.readouterr().err
    args = argparse.Namespace(ckpt=str(tmp_path / "missing.safetensors"), lora_dir=str(tmp_path), host="127.0.0.1",
                              port=1)
    assert main(args) == 2 and "not a file" in capsys.readouterr().err


# --- the real Gradio Blocks -------------------------------------------------------------------


test_gradio_tests_in_ui_pythons = gradio_tests_test(__file__)


needs_gradio = pytest.mark.skipif(not HAS_GRADIO, reason="gradio is not installed here (see test_gradio_tests_in_ui_pythons)")


def _blocks_config(blocks) -> dict:
    return blocks.get_config_file() if hasattr(blocks, "get_config_file") else blocks.config


@needs_gradio
def test_gradio_build_tab_has_a_component_for_every_option():
    import gradio as gr

    from lora_trainer.ui.tab import build_tab, gradio_major

    manager = FakeManager()
    tab = build_tab(manager, FakeHost())
    components = tab.lora_trainer_components
    assert list(components) != [] and set(components) == set(CONTROL_NAMES)
    for name, comp in components.items():
        control = BY_NAME[name]
        assert comp.elem_id == control.elem_id
        expected = {"checkbox": gr.Checkbox, "number": gr.Number, "dropdown": gr.Dropdown, "text": gr.Textbox}
        assert isinstance(comp, expected[control.kind]), name
    config = _blocks_config(tab)
    elem_ids = {c.get("props", {}).get("elem_id") for c in config["components"]}
    for elem_id in ("lora_trainer_train", "lora_trainer_queue_add", "lora_trainer_interrupt",
                    "lora_trainer_interrupt_save", "lora_trainer_progress", "lora_trainer_files", "lora_trainer_queue",
                    "lora_trainer_estimate", "lora_trainer_preset", "lora_trainer_toml_path", "lora_trainer_toml_save",
                    "lora_trainer_toml_load", "lora_trainer_import", "lora_trainer_refresh_button",
                    "lora_trainer_message", "lora_trainer_log"):
        assert elem_id in elem_ids, elem_id
    assert {c.elem_id for c in CONTROLS} <= elem_ids
    # the page polls by itself: a Timer on Gradio 4, load(every=) on Gradio 3
    if gradio_major() >= 4:
        assert any(c.get("type") == "timer" for c in config["components"])
    else:
        assert any(d.get("every") for d in config["dependencies"])


@needs_gradio
def test_gradio_polling_can_be_left_to_the_host():
    from lora_trainer.ui.tab import build_tab

    config = _blocks_config(build_tab(FakeManager(), FakeHost(), poll_seconds=0))
    assert not any(c.get("type") == "timer" for c in config["components"])
    assert not any(d.get("every") for d in config["dependencies"])


@needs_gradio
def test_gradio_tab_renders_inside_a_page_like_the_webuis():
    from lora_trainer.ui.app import build_app

    demo = build_app(FakeManager(), FakeHost())
    config = _blocks_config(demo)
    elem_ids = {c.get("props", {}).get("elem_id") for c in config["components"]}
    assert "tab_lora_trainer" in elem_ids and "lora_trainer_train_data_dir" in elem_ids


@needs_gradio
def test_gradio_event_functions_fill_every_component(tmp_path):
    """The functions wired to the preset / load / import events return one value per component,
    in the order Gradio's inputs list holds them."""
    from lora_trainer.ui.tab import build_tab

    tab = build_tab(FakeManager(), FakeHost())
    logic = tab.lora_trainer_logic
    values = form_list(default_form())
    out = logic.apply_preset(list(PRESETS)[0], *values)
    assert len(out) == len(tab.lora_trainer_components) + 1
    message, written = logic.save_toml(str(tmp_path / "a.toml"), *out[:-1])
    assert logic.load_toml(written, *values)[:-1] == out[:-1]


@needs_gradio
def test_gradio_dataset_folder_box_follows_train_data_dir():
    """The Train tab's train_data_dir drives the Dataset tab's folder box (dataset_logic.follow_train_folder)."""
    from lora_trainer.ui.tab import build_tab

    tab = build_tab(FakeManager(), FakeHost())
    config = _blocks_config(tab)
    ids = {c["id"]: c.get("props", {}).get("elem_id") for c in config["components"]}
    found = []
    for index, dep in enumerate(config["dependencies"]):
        # Gradio 3: targets [id] + trigger; Gradio 4: targets [[id, trigger]]
        targets = [(t[0], t[1]) if isinstance(t, (list, tuple)) else (t, dep.get("trigger")) for t in dep["targets"]]
        if ("lora_trainer_train_data_dir", "change") in [(ids.get(i), trigger) for i, trigger in targets]:
            found.append((index, dep))
    assert len(found) == 1, found
    index, dep = found[0]
    assert [ids.get(i) for i in dep["outputs"]][0] == "lora_trainer_ds_folder"
    assert [ids.get(i) for i in dep["inputs"]][:2] == ["lora_trainer_train_data_dir", "lora_trainer_ds_folder"]
    fns = tab.fns
    fn = (fns[index] if isinstance(fns, list) else fns[dep.get("id", index)]).fn
    assert fn("/data/a", "", "") == ("/data/a", "/data/a")
    assert fn("/data/b", "/data/a", "/data/a") == ("/data/b", "/data/b")
    box, followed = fn("/data/c", "/mine", "/data/b")  # the user's own folder stays
    assert followed == "/data/b" and not isinstance(box, str)  # an update that leaves the box as it is
