"""Samples during training (kohya's sample_* options) and the sampler that draws them.

What is proven here:

* our sampler's Euler and DDIM walk the same path as diffusers' EulerDiscreteScheduler and
  DDIMScheduler over the same UNet (eps and v prediction): an independent check of the math;
* an image depends only on the prompt and its seed (same seed, same bytes), and every prompt
  option (--w --h --d --s --l --n --ss) changes what it should;
* a training with samples writes kohya-named PNGs at kohya's moments (sample_at_first,
  every N epochs, every N steps), emits one "sample" event per image, and trains bit for bit
  the same LoRA as a run without samples, even when the sampler draws from every global RNG;
* a host's render_samples is called instead, inside the job, with the LoRA applied and every
  module in eval mode; the AUTOMATIC1111 host builds the WebUI's txt2img processing for each
  prompt (on the fake WebUI, whose stand-in process_images records what it was given: the fake
  has no sampler, so the WebUI's own rendering is not exercised here);
* the config refuses what cannot run and names the file.
"""
import random
import re
import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_images
from lora_trainer.compare import samples
from lora_trainer.compare.prompts import SamplePrompt, parse_line
from lora_trainer.compare.publish import split_safetensors
from lora_trainer.config import ConfigError, from_dict
from lora_trainer.models.standalone import load_checkpoint
from lora_trainer.models.tiny import build_tiny_model
from lora_trainer.networks.lora import LoRAModule
from lora_trainer.training.loop import train

QUIET = dict(log=lambda _m: None)
NAME = re.compile(r"^t_(e\d{6}|\d{6})_(\d{2})_(\d{14})_(\d+)\.png$")


@pytest.fixture(scope="module")
def sd1():
    return build_tiny_model("sd1", seed=0)


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


# ------------------------------------------------------------------------------ the sampler


def diffusers_path(model, prompt, scheduler, seed):
    """The same denoising walk with a diffusers scheduler driving our UNet (CFG as our sampler does)."""
    w, h = prompt.size
    cond = samples.encode(model, prompt.prompt, prompt.negative_prompt, (h, w), None)
    scheduler.set_timesteps(prompt.steps)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn((1, 4, h // 8, w // 8), generator=generator) * scheduler.init_noise_sigma
    with torch.no_grad():
        for t in scheduler.timesteps:
            x_in = scheduler.scale_model_input(x, t).repeat(2, 1, 1, 1)
            out = model.unet(x_in, torch.full((2,), float(t)), cond.context)
            uncond, guided = out.chunk(2)
            x = scheduler.step(uncond + prompt.cfg_scale * (guided - uncond), t, x).prev_sample
    return x


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("sampler", ["euler", "ddim"])
def test_euler_and_ddim_walk_the_same_path_as_diffusers(sampler, prediction):
    diffusers = pytest.importorskip("diffusers")
    model = build_tiny_model("sd1", seed=0, prediction_type=prediction)
    # 10 steps: linspace(0, 999, 10) are whole timesteps, so no sigma interpolation differs
    prompt = parse_line("a red circle --n blurry --w 64 --h 64 --s 10 --l 6 --d 11")
    common = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", prediction_type=prediction)
    if sampler == "euler":
        scheduler = diffusers.EulerDiscreteScheduler(timestep_spacing="linspace", **common)
    else:  # kohya's DDIMScheduler set-up, without its clip_sample
        scheduler = diffusers.DDIMScheduler(clip_sample=False, set_alpha_to_one=True, steps_offset=0,
                                            timestep_spacing="leading", **common)
    ours = samples.sample_latents(model, prompt, sampler=sampler, **QUIET)
    theirs = diffusers_path(model, prompt, scheduler, seed=11)
    assert ours.abs().mean() > 0.1
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=5e-4)


def test_same_seed_same_image_and_another_seed_another(sd1):
    prompt = parse_line("sks, circle --n blurry --w 64 --h 64 --s 4 --d 5")
    first = samples.render(sd1, prompt, sampler="euler_a", **QUIET)
    again = samples.render(sd1, prompt, sampler="euler_a", **QUIET)
    assert first.tobytes() == again.tobytes()
    other = samples.render(sd1, parse_line("sks, circle --n blurry --w 64 --h 64 --s 4 --d 6"), sampler="euler_a",
                           **QUIET)
    assert np.abs(pixels(first) - pixels(other)).mean() > 1
    # no --d: the fixed default seed, not a random one
    unseeded = parse_line("sks, circle --n blurry --w 64 --h 64 --s 4")
    a = samples.render(sd1, unseeded, sampler="euler_a", **QUIET)
    b = samples.render(sd1, parse_line(f"sks, circle --n blurry --w 64 --h 64 --s 4 --d {samples.DEFAULT_SEED}"),
                       sampler="euler_a", **QUIET)
    assert a.tobytes() == b.tobytes()


class UNetCalls:
    """Records the batch size and timestep of every UNet call."""

    def __init__(self, unet):
        self.calls = []
        self.handle = unet.register_forward_pre_hook(self.hook)

    def hook(self, module, args):
        self.calls.append((args[0].shape[0], tuple(args[0].shape[2:]), float(args[1][0])))

    def close(self):
        self.handle.remove()


def test_every_prompt_option_is_honoured(sd1):
    base = "sks, circle --n blurry --w 64 --h 64 --s 4 --d 5 --l 7"
    reference = samples.render(sd1, parse_line(base), sampler="ddim", **QUIET)

    calls = UNetCalls(sd1.unet)
    try:
        wide = samples.render(sd1, parse_line("sks --w 128 --h 64 --s 3 --l 7"), sampler="ddim", **QUIET)
        assert wide.size == (128, 64)  # --w / --h
        assert [c[:2] for c in calls.calls] == [(2, (8, 16))] * 3  # --s: 3 steps, CFG batch of 2
        assert [c[2] for c in calls.calls] == pytest.approx([666, 333, 0], abs=1e-3)  # DDIM's leading spacing
        calls.calls.clear()
        samples.render(sd1, parse_line("sks --w 64 --h 64 --s 2 --l 1"), sampler="ddim", **QUIET)
        assert [c[0] for c in calls.calls] == [1, 1]  # --l 1: no unconditional pass
        calls.calls.clear()
        samples.render(sd1, parse_line("sks --w 64 --h 64 --s 2 --ss heun"), sampler="ddim", **QUIET)
        assert len(calls.calls) == 3  # --ss heun: two model calls a step, one on the last
    finally:
        calls.close()

    def differs(line):
        return np.abs(pixels(samples.render(sd1, parse_line(line), sampler="ddim", **QUIET))
                      - pixels(reference)).mean() > 0.5

    assert differs(base.replace("--n blurry", "--n watermark"))  # --n
    assert differs(base.replace("--d 5", "--d 6"))  # --d
    assert differs(base.replace("--l 7", "--l 3"))  # --l
    assert differs(base.replace("--s 4", "--s 6"))  # --s
    assert differs(base + " --ss euler")  # --ss
    assert not differs(base)


def test_kohya_sampler_names_map_to_ours_with_a_note():
    assert samples.resolve_sampler("k_euler_a") == ("euler_a", None)
    assert samples.resolve_sampler("DDIM") == ("ddim", None)
    name, note = samples.resolve_sampler("dpm_2_a")
    assert name == "euler_a" and "nearest" in note
    for kohya in ("ddim", "pndm", "lms", "euler", "euler_a", "heun", "dpm_2", "dpm_2_a", "dpmsolver", "dpmsolver++",
                  "dpmsingle", "k_lms", "k_euler", "k_euler_a", "k_dpm_2", "k_dpm_2_a"):
        assert samples.resolve_sampler(kohya)[0] in samples.SAMPLERS
    with pytest.raises(ValueError, match="unknown sample sampler"):
        samples.resolve_sampler("karras_magic")


def test_sdxl_and_v_prediction_models_render():
    prompt = parse_line("sks --w 64 --h 64 --s 2 --d 1")
    assert samples.render(build_tiny_model("sdxl"), prompt, sampler="euler", **QUIET).size == (64, 64)
    assert samples.render(build_tiny_model("sd2", prediction_type="v_prediction"), prompt, **QUIET).size == (64, 64)


def test_kohya_file_names():
    assert samples.file_prefix("t", epoch=3) == "t_e000003"
    assert samples.file_prefix("t", step=500) == "t_000500"
    assert samples.file_prefix(None, epoch=0) == "e000000"
    assert NAME.match(samples.sample_filename("t_e000003", 1, 42))


# ------------------------------------------------------------------------------ during training


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("samples_data")
    make_images(root / "1_sks", 4)  # 4 images, batch 2: 2 steps per epoch
    return root


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text("# kohya's syntax\nsks, circle --n blurry --w 64 --h 64 --s 3 --d 7\n"
                    "red circle --w 64 --h 64 --s 2 --ss euler_a\n", encoding="utf-8")
    return path


def training(tiny_checkpoints, dataset, out, **overrides):
    options = {
        "pretrained_model_name_or_path": tiny_checkpoints("sd1"), "train_data_dir": str(dataset),
        "output_dir": str(out), "output_name": "t", "resolution": "64", "train_batch_size": 2, "network_dim": 4,
        "network_alpha": 2, "learning_rate": 5e-3, "max_train_epochs": 2, "save_every_n_epochs": 1, "seed": 1,
        "device": "cpu", "network_dropout": 0.1,  # dropout draws from torch's RNG: sampling must not shift it
    }
    options.update(overrides)
    config, _ = from_dict(options)
    return config


def run(config, host=None):
    events, lines = [], []
    model = load_checkpoint(config.pretrained_model_name_or_path)
    result = train(config, model, on_progress=events.append, log=lines.append, host=host)
    return result, events, lines


def tensor_bytes(path) -> bytes:
    return split_safetensors(path.read_bytes())[1]


def test_samples_at_kohyas_moments_with_kohyas_names(tiny_checkpoints, dataset, prompt_file, tmp_path):
    config = training(tiny_checkpoints, dataset, tmp_path / "out", sample_every_n_epochs=1, sample_at_first=True,
                      sample_prompts=str(prompt_file))
    result, events, _ = run(config)
    files = sorted((tmp_path / "out" / "sample").iterdir())
    parsed = [NAME.match(f.name).groups() for f in files]
    assert [(when, index, seed) for when, index, _, seed in parsed] == [
        ("e000000", "00", "7"), ("e000000", "01", "1234"),
        ("e000001", "00", "7"), ("e000001", "01", "1234"),
        ("e000002", "00", "7"), ("e000002", "01", "1234"),
    ]
    for f in files:
        with Image.open(f) as image:
            assert image.size == (64, 64)
    sample_events = [e for e in events if e.kind == "sample"]
    assert [(e.epoch, e.step, e.message) for e in sample_events] == [
        (0, 0, "sks, circle"), (0, 0, "red circle"), (1, 2, "sks, circle"), (1, 2, "red circle"),
        (2, 4, "sks, circle"), (2, 4, "red circle"),
    ]
    assert sorted(e.path for e in sample_events) == [str(f) for f in files]
    # samples come after the epoch's file is saved and before its "epoch" event, as kohya orders them
    kinds = [e.kind for e in events if e.kind in ("saved", "sample", "epoch")]
    assert kinds[:4] == ["sample", "sample", "saved", "sample"]
    # the LoRA is applied while sampling: epoch 2's image is not the untrained one
    first, last = Image.open(files[0]), Image.open(files[4])
    assert np.abs(pixels(first) - pixels(last)).mean() > 0


def test_samples_every_n_steps_are_named_by_step(tiny_checkpoints, dataset, prompt_file, tmp_path):
    config = training(tiny_checkpoints, dataset, tmp_path / "out", sample_every_n_steps=3,
                      sample_prompts=str(prompt_file), max_train_epochs=3)
    _, events, _ = run(config)
    names = sorted(f.name for f in (tmp_path / "out" / "sample").iterdir())
    assert [NAME.match(n).group(1) for n in names] == ["000003", "000003", "000006", "000006"]
    assert [(e.epoch, e.step) for e in events if e.kind == "sample"] == [(2, 3), (2, 3), (3, 6), (3, 6)]
    # sample_every_n_epochs wins over sample_every_n_steps, as in kohya
    config = training(tiny_checkpoints, dataset, tmp_path / "both", sample_every_n_steps=1, sample_every_n_epochs=2,
                      sample_prompts=str(prompt_file))
    _, events, _ = run(config)
    assert [(e.epoch, e.step) for e in events if e.kind == "sample"] == [(2, 4), (2, 4)]


class NoisyHost:
    """A host whose sampler draws from every global RNG and records what it saw."""

    def __init__(self):
        self.calls = []

    def render_samples(self, model, prompts, out_dir, *, prefix, sampler, clip_skip):
        lora_applied = any(isinstance(getattr(m.forward, "__self__", None), LoRAModule) for m in model.unet.modules())
        self.calls.append({
            "prefix": prefix, "prompts": prompts, "grad": torch.is_grad_enabled(), "lora": lora_applied,
            "sampler": sampler, "clip_skip": clip_skip,
            "training": {m.training for m in model.unet.modules()} | {te.model.training for te in model.text_encoders},
        })
        torch.rand(1000), random.random(), np.random.rand(10)
        paths = []
        for index, prompt in enumerate(prompts):
            path = out_dir / samples.sample_filename(prefix, index, prompt.seed)
            out_dir.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", prompt.size).save(path)
            paths.append(path)
        return paths


def test_sampling_leaves_the_training_bit_identical(tiny_checkpoints, dataset, prompt_file, tmp_path):
    plain, _, _ = run(training(tiny_checkpoints, dataset, tmp_path / "plain"))
    sampled, events, _ = run(training(tiny_checkpoints, dataset, tmp_path / "ours", sample_every_n_steps=1,
                                      sample_at_first=True, sample_prompts=str(prompt_file)))
    host = NoisyHost()
    hosted, _, _ = run(training(tiny_checkpoints, dataset, tmp_path / "host", sample_every_n_steps=1,
                                sample_at_first=True, sample_prompts=str(prompt_file)), host=host)
    assert sum(e.kind == "sample" for e in events) == 2 * 5
    for other, folder in ((sampled, "ours"), (hosted, "host")):
        assert other.losses == plain.losses
        assert other.network_state.keys() == plain.network_state.keys()
        for key in plain.network_state:
            assert torch.equal(other.network_state[key], plain.network_state[key]), key
        for name in ("t-000001.safetensors", "t.safetensors"):
            assert tensor_bytes(tmp_path / folder / name) == tensor_bytes(tmp_path / "plain" / name)

    # the host drew them, inside the training: LoRA applied, no grad, eval mode; prompts resolved
    assert [c["prefix"] for c in host.calls] == ["t_e000000", "t_000001", "t_000002", "t_000003", "t_000004"]
    assert all(c["lora"] and not c["grad"] and c["training"] == {False} for c in host.calls)
    first = host.calls[0]["prompts"]
    assert [(p.seed, p.sampler) for p in first] == [(7, "ddim"), (samples.DEFAULT_SEED, "euler_a")]
    assert {(c["sampler"], c["clip_skip"]) for c in host.calls} == {("ddim", None)}  # the run's own options


def test_a_failing_sampler_does_not_end_the_training(tiny_checkpoints, dataset, prompt_file, tmp_path):
    class Broken:
        def render_samples(self, *args, **kwargs):
            raise RuntimeError("out of memory (simulated)")

    config = training(tiny_checkpoints, dataset, tmp_path / "out", sample_every_n_epochs=1,
                      sample_prompts=str(prompt_file))
    result, events, lines = run(config, host=Broken())
    assert result.epochs == 2 and (tmp_path / "out" / "t.safetensors").is_file()
    assert not any(e.kind == "sample" for e in events)
    assert sum("samples at epoch" in line and "simulated" in line for line in lines) == 2


# ------------------------------------------------------------------------------ config


def test_config_checks_the_sample_options(tiny_checkpoints, dataset, prompt_file, tmp_path):
    base = {"train_data_dir": str(dataset)}
    missing = tmp_path / "nope.txt"
    with pytest.raises(ConfigError, match=re.escape(str(missing))):
        from_dict({**base, "sample_every_n_epochs": 1, "sample_prompts": str(missing)})
    with pytest.raises(ConfigError, match="sample_prompts is not set"):
        from_dict({**base, "sample_at_first": True})
    with pytest.raises(ConfigError, match="sample_sampler 'euler_b'.*did you mean 'euler_a'"):
        from_dict({**base, "sample_sampler": "euler_b"})
    config, warnings = from_dict({**base, "sample_every_n_epochs": 0, "sample_prompts": str(prompt_file)})
    assert any("0 or less turns it off" in w for w in warnings)
    assert any("no samples will be rendered" in w for w in warnings)
    _, warnings = from_dict({**base, "sample_every_n_epochs": 2, "sample_every_n_steps": 5,
                             "sample_prompts": str(prompt_file)})
    assert any("sample_every_n_steps is ignored" in w for w in warnings)
    odd = tmp_path / "odd.txt"
    odd.write_text("sks --l 1.2.3 --zz 4\n", encoding="utf-8")
    _, warnings = from_dict({**base, "sample_every_n_epochs": 1, "sample_prompts": str(odd)})
    assert any("odd.txt line 1" in w and "1.2.3" in w for w in warnings)
    assert any("'--zz 4' is not a sample option" in w for w in warnings)
    assert config.sample_sampler == "ddim" and config.sample_every_n_steps is None  # kohya's defaults
    bad = tmp_path / "bad.json"
    bad.write_text("{\"prompt\": 1}", encoding="utf-8")
    with pytest.raises(ConfigError, match="bad.json"):
        from_dict({**base, "sample_every_n_epochs": 1, "sample_prompts": str(bad)})


def test_toml_and_json_prompt_files_are_read(tiny_checkpoints, dataset, tmp_path):
    toml = tmp_path / "p.toml"
    toml.write_text('[prompt]\nwidth = 64\nheight = 64\nsample_steps = 2\n\n[[prompt.subset]]\nprompt = "sks"\n'
                    'seed = 3\n', encoding="utf-8")
    config = training(tiny_checkpoints, dataset, tmp_path / "out", sample_at_first=True, sample_prompts=str(toml),
                      max_train_epochs=1)
    _, events, _ = run(config)
    names = [NAME.match(e.path.rsplit("/", 1)[-1]).groups() for e in events if e.kind == "sample"]
    assert [(n[0], n[3]) for n in names] == [("e000000", "3")]


# ------------------------------------------------------------------------------ AUTOMATIC1111


@pytest.fixture
def webui(monkeypatch, tmp_path):
    import fake_webui

    fw = fake_webui.install(monkeypatch, tmp_path / "models" / "Lora")
    yield fw
    fake_webui.uninstall()


def fake_processing(monkeypatch, webui, record):
    """A stand-in for modules.processing: records each p, checks the model as the WebUI would find it,
    moves the UNet away as --medvram's hooks would, and returns one image."""

    class StableDiffusionProcessingTxt2Img:
        def __init__(self, **kwargs):
            self.kwargs = kwargs
            self.disable_extra_networks = False
            self.closed = False

        def close(self):
            self.closed = True

    def process_images(p):
        sd_model = webui.shared.sd_model
        unet = sd_model.model.diffusion_model
        record.append({
            "p": p, "lora": any(isinstance(getattr(m.forward, "__self__", None), LoRAModule) for m in unet.modules()),
            "training": unet.training, "grad": torch.is_grad_enabled(),
        })
        webui.shared.state.job_count = 99
        webui.shared.state.textinfo = "generating"
        webui.lowvram.module_in_gpu = sd_model.first_stage_model  # as --medvram's hooks leave it
        return types.SimpleNamespace(images=[Image.new("RGB", (p.kwargs["width"], p.kwargs["height"]), "red")])

    module = types.ModuleType("modules.processing")
    module.StableDiffusionProcessingTxt2Img = StableDiffusionProcessingTxt2Img
    module.process_images = process_images
    monkeypatch.setitem(sys.modules, "modules.processing", module)


def test_a1111_host_renders_samples_with_the_webuis_txt2img(webui, tiny_checkpoints, dataset, tmp_path, monkeypatch):
    import fake_webui
    from lora_trainer.hosts.a1111 import A1111Host

    record = []
    fake_processing(monkeypatch, webui, record)
    webui.shared.sd_model = fake_webui.build_sd_model(tiny_checkpoints("sd1"))
    prompts_path = tmp_path / "prompts.txt"
    prompts_path.write_text("sks, circle --n blurry --w 100 --h 64 --s 3 --d 7 --l 5\n"
                            "red circle <lora:other:1> --ss k_euler\n", encoding="utf-8")
    config = training(tiny_checkpoints, dataset, tmp_path / "out", sample_every_n_epochs=2,
                      sample_prompts=str(prompts_path), sample_sampler="euler_a", clip_skip=2)
    host = A1111Host(log=lambda _m: None)
    state = webui.shared.state
    seen = []

    def on_progress(event):
        if event.kind == "sample":
            seen.append((state.job_count, state.textinfo, webui.lowvram.module_in_gpu))

    def job():
        with host.lend_model() as model:
            return train(config, model, on_progress=on_progress, log=lambda _m: None, host=host)

    result = host.run_exclusive(job, title="Training LoRA t")
    assert result.epochs == 2
    assert len(record) == 2  # two prompts, at epoch 2 only
    first, second = (r["p"] for r in record)
    assert first.kwargs == dict(
        sd_model=webui.shared.sd_model, prompt="sks, circle", negative_prompt="blurry", seed=7, steps=3, width=96,
        height=64, cfg_scale=5.0, sampler_name="Euler a", batch_size=1, n_iter=1, do_not_save_samples=True,
        do_not_save_grid=True, override_settings={"CLIP_stop_at_last_layers": 2})  # the run's CLIP skip
    assert second.kwargs["sampler_name"] == "Euler" and second.kwargs["seed"] == samples.DEFAULT_SEED
    assert second.kwargs["prompt"] == "red circle <lora:other:1>"
    assert all(r["p"].disable_extra_networks and r["p"].closed for r in record)
    assert all(r["lora"] and not r["training"] and not r["grad"] for r in record)
    names = sorted(f.name for f in (tmp_path / "out" / "sample").iterdir())
    assert [NAME.match(n).group(1, 2, 4) for n in names] == [("e000002", "00", "7"), ("e000002", "01", "1234")]
    # what process_images changed is back when the training goes on: medvram's resident part, the job's counters
    assert seen == [(-1, None, None)] * 2
    assert webui.shared.state.history[-1][0] == "end"


def test_a1111_render_samples_only_inside_a_job(webui):
    from lora_trainer.hosts.a1111 import A1111Host

    with pytest.raises(RuntimeError, match="inside the training job"):
        A1111Host(log=lambda _m: None).render_samples(None, [SamplePrompt("x")], "out", prefix="t")


# ------------------------------------------------------------------------------ the job status


def test_job_status_lists_the_samples(tiny_checkpoints, dataset, prompt_file, tmp_path):
    from lora_trainer.hosts.standalone import StandaloneHost
    from lora_trainer.jobs import JobManager

    host = StandaloneHost(tiny_checkpoints("sd1"), tmp_path / "Lora", device="cpu")
    manager = JobManager(host, log=lambda _m: None)
    try:
        config = training(tiny_checkpoints, dataset, tmp_path / "out", sample_every_n_epochs=1,
                          sample_prompts=str(prompt_file))
        status = manager.wait(manager.submit(config), timeout=300)
    finally:
        manager.close(timeout=60)
    assert status["state"] == "done", status["message"]
    listed = status["samples"]
    assert [(s["epoch"], s["step"], s["prompt"]) for s in listed] == [
        (1, 2, "sks, circle"), (1, 2, "red circle"), (2, 4, "sks, circle"), (2, 4, "red circle")]
    assert all(set(s) == {"path", "epoch", "step", "prompt"} for s in listed)
    assert sorted(s["path"] for s in listed) == sorted(str(f) for f in (tmp_path / "out" / "sample").iterdir())
