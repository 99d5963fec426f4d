"""Training end to end on tiny checkpoints: the files written reproduce the trained model.

The merge below is written here from kohya's formula (W + alpha/dim * up @ down)
and the module paths the file names point at, independent of lora_trainer's
networks package: for SD1 the UNet it merges into is diffusers' UNet converted
by diffusers' own code (kohya's SD1 names are diffusers module paths).
"""
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open

from lora_trainer.config import from_dict
from lora_trainer.models.standalone import load_checkpoint
from lora_trainer.networks import LoRANetwork
from lora_trainer.training.host_state import state_fingerprint
from lora_trainer.training.loop import train

from conftest import make_images


def run(tiny_checkpoints, arch, data_dir, out_dir, **overrides):
    options = {
        "pretrained_model_name_or_path": tiny_checkpoints(arch),
        "train_data_dir": str(data_dir),
        "output_dir": str(out_dir),
        "output_name": "t",
        "resolution": "64",
        "train_batch_size": 2,
        "network_dim": 4,
        "network_alpha": 2,
        "learning_rate": 5e-3,
        "max_train_epochs": 2,
        "save_every_n_epochs": 1,
        "seed": 1,
        "device": "cpu",
    }
    options.update(overrides)
    config, _ = from_dict(options)
    model = load_checkpoint(config.pretrained_model_name_or_path)
    return config, model, train(config, model, log=lambda _m: None)


def read_file(path):
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def merge_kohya(base: dict, lora: dict, prefix: str, path_of) -> tuple[dict, set]:
    """W + alpha/dim * up @ down for every module of the file under ``prefix``."""
    merged = dict(base)
    used = set()
    for key in lora:
        if not key.startswith(prefix) or not key.endswith(".lora_down.weight"):
            continue
        name = key[: -len(".lora_down.weight")]
        down, up = lora[key].float(), lora[f"{name}.lora_up.weight"].float()
        alpha = float(lora[f"{name}.alpha"])
        scale = alpha / down.shape[0]
        weight_key = path_of[name] + ".weight"
        weight = merged[weight_key].float()
        if down.dim() == 2:
            delta = up @ down
        elif down.shape[2:] == (1, 1):
            delta = (up[:, :, 0, 0] @ down[:, :, 0, 0])[:, :, None, None]
        else:  # 3x3 down, 1x1 up: compose the kernels
            delta = torch.einsum("or,rikl->oikl", up[:, :, 0, 0], down)
        merged[weight_key] = weight + scale * delta.reshape(weight.shape)
        used.add(name)
    return merged, used


def kohya_paths(module: torch.nn.Module, prefix: str) -> dict:
    """kohya's name rule: prefix + module path with dots turned into underscores."""
    return {prefix + name.replace(".", "_"): name for name, _ in module.named_modules() if name}


@pytest.mark.parametrize("arch,conv_dim", [("sd1", None), ("sd1", 4), ("sdxl", None), ("sdxl", 4)])
def test_saved_file_merged_independently_reproduces_trained_model(tmp_path, tiny_checkpoints, small_dataset,
                                                                  arch, conv_dim):
    extra = {"conv_dim": conv_dim, "conv_alpha": 2} if conv_dim else {}
    config, model, result = run(tiny_checkpoints, arch, small_dataset, tmp_path / "out", **extra)
    names = sorted(p.name for p in (tmp_path / "out").glob("*.safetensors"))
    assert names == ["t-000001.safetensors", "t.safetensors"]  # kohya: last epoch saved as NAME only

    tensors, metadata = read_file(tmp_path / "out" / "t.safetensors")
    assert tensors.keys() == result.network_state.keys()
    for key, value in tensors.items():
        assert torch.equal(value, result.network_state[key]), key
    assert metadata["ss_network_dim"] == "4" and metadata["ss_network_alpha"] == "2.0"
    assert metadata["ss_base_model_version"] == ("sdxl_base_v1-0" if arch == "sdxl" else "sd_v1")
    if conv_dim:
        assert any(t.dim() == 4 and t.shape[2:] == (3, 3) for t in tensors.values()), "LoCon keys missing"

    # The trained model: fresh base weights with the trained network attached.
    trained = load_checkpoint(config.pretrained_model_name_or_path)
    network = LoRANetwork.from_file(trained, tensors)
    torch.manual_seed(0)
    if arch == "sdxl":
        x, t = torch.randn(2, 4, 8, 8), torch.tensor([10, 700])
        ctx, y = torch.randn(2, 77, trained.unet.config.context_dim), torch.randn(2, trained.unet.config.adm_in_channels)
    else:
        x, t = torch.randn(2, 4, 8, 8), torch.tensor([10, 700])
        ctx, y = torch.randn(2, 77, trained.unet.config.context_dim), None
    ids = torch.randint(0, 49407, (2, 77))
    with torch.no_grad(), network:
        unet_out = trained.unet(x, t, ctx, y)
        te_outs = [te.model(ids, output_hidden_states=True).hidden_states[-1] for te in trained.text_encoders]
    base = load_checkpoint(config.pretrained_model_name_or_path)
    with torch.no_grad():
        assert not torch.allclose(base.unet(x, t, ctx, y), unet_out, atol=1e-5), "training changed nothing"

    # Independent merge of the file into the base weights.
    if arch == "sd1":
        from test_networks_diffusers import diffusers_unet

        target = diffusers_unet("sd1", base)
        merged, used = merge_kohya(target.state_dict(), tensors, "lora_unet_", kohya_paths(target, "lora_unet_"))
        target.load_state_dict(merged)
        with torch.no_grad():
            reference = target(x, t, encoder_hidden_states=ctx).sample
    else:
        merged, used = merge_kohya(base.unet.state_dict(), tensors, "lora_unet_",
                                   kohya_paths(base.unet, "lora_unet_"))
        base.unet.load_state_dict(merged)
        with torch.no_grad():
            reference = base.unet(x, t, ctx, y)
    assert used == {k[: -len(".lora_down.weight")] for k in tensors if k.startswith("lora_unet_")
                    and k.endswith(".lora_down.weight")}
    torch.testing.assert_close(reference, unet_out, rtol=1e-4, atol=1e-4)

    prefixes = ["lora_te1_", "lora_te2_"] if arch == "sdxl" else ["lora_te_"]
    for te, prefix, expected in zip(base.text_encoders, prefixes, te_outs):
        merged, used = merge_kohya(te.model.state_dict(), tensors, prefix, kohya_paths(te.model, prefix))
        assert used, f"no {prefix} modules in the file"
        te.model.load_state_dict(merged)
        with torch.no_grad():
            out = te.model(ids, output_hidden_states=True).hidden_states[-1]
        torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch", ["sd1", "sdxl"])
def test_diffusers_loads_a_trained_file_cleanly_and_matches(tmp_path, tiny_checkpoints, small_dataset, arch):
    """diffusers' own kohya loader takes a file the trainer wrote: no warning, same UNet output."""
    import logging
    import warnings

    from test_networks_diffusers import Collect, build_pipeline

    config, _, _ = run(tiny_checkpoints, arch, small_dataset, tmp_path / "out", conv_dim=4, conv_alpha=2)
    path = tmp_path / "out" / "t.safetensors"
    model = load_checkpoint(config.pretrained_model_name_or_path)
    pipe = build_pipeline(arch, model)
    collect = Collect()
    for name in ("diffusers", "peft"):
        logging.getLogger(name).addHandler(collect)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pipe.load_lora_weights(str(path))
    finally:
        for name in ("diffusers", "peft"):
            logging.getLogger(name).removeHandler(collect)
    assert collect.records == [] and [str(w.message) for w in caught] == []

    cfg = model.unet.config
    gen = torch.Generator().manual_seed(0)
    x, t = torch.randn(1, 4, 8, 8, generator=gen), torch.tensor([500])
    ctx = torch.randn(1, 7, cfg.context_dim, generator=gen)
    y = torch.randn(1, cfg.adm_in_channels, generator=gen) if cfg.adm_in_channels else None
    extra = {"class_labels": y} if y is not None else {}  # the tiny SDXL converts with a projection class embedding
    network = LoRANetwork.from_file(model, str(path))
    with torch.no_grad():
        theirs = pipe.unet(x, t, encoder_hidden_states=ctx, **extra).sample
        with network:
            ours = model.unet(x, t, ctx, y)
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-5)


def test_host_model_is_handed_back_identical_even_after_an_exception(tmp_path, tiny_checkpoints, small_dataset):
    config, _ = from_dict({
        "pretrained_model_name_or_path": tiny_checkpoints("sd1"), "train_data_dir": str(small_dataset),
        "output_dir": str(tmp_path / "out"), "resolution": "64", "max_train_epochs": 2,
        "gradient_checkpointing": True, "device": "cpu", "seed": 3,
    })
    model = load_checkpoint(config.pretrained_model_name_or_path)
    before = state_fingerprint(model)
    torch.manual_seed(1234)
    expected_draw = torch.rand(3)
    torch.manual_seed(1234)
    train(config, model, log=lambda _m: None)
    assert state_fingerprint(model) == before
    # the training's seed must not steer what the host draws next (its generations' seeds)
    assert torch.equal(torch.rand(3), expected_draw)

    def explode(event):
        if event.kind == "step" and event.step == 2:
            raise RuntimeError("CUDA out of memory (simulated)")

    with pytest.raises(RuntimeError, match="simulated"):
        train(config, model, on_progress=explode, log=lambda _m: None)
    assert state_fingerprint(model) == before


def test_seed_reproduces_and_resume_continues_from_a_saved_epoch(tmp_path, tiny_checkpoints, small_dataset):
    _, _, first = run(tiny_checkpoints, "sd1", small_dataset, tmp_path / "a", max_train_epochs=3)
    epoch1 = tmp_path / "a" / "t-000001.safetensors"
    saved, _ = read_file(epoch1)

    # same seed, same data: a 1-epoch run writes exactly the epoch-1 file of the 3-epoch run
    _, _, fresh = run(tiny_checkpoints, "sd1", small_dataset, tmp_path / "c", max_train_epochs=1)
    for key in saved:
        assert torch.equal(fresh.network_state[key], saved[key]), key

    # resume with a negligible learning rate (kohya drops lr=0 groups): the weights stay the file's
    _, _, still = run(tiny_checkpoints, "sd1", small_dataset, tmp_path / "z", max_train_epochs=1,
                      network_weights=str(epoch1), dim_from_weights=True, learning_rate=1e-30)
    for key in saved:
        torch.testing.assert_close(still.network_state[key], saved[key], rtol=1e-6, atol=1e-20)

    # resume for real: same batches and noise as the fresh run's epoch, but starting from
    # epoch 1's weights, so its loss is lower and its weights move on from the file
    _, _, resumed = run(tiny_checkpoints, "sd1", small_dataset, tmp_path / "b", max_train_epochs=1,
                        network_weights=str(epoch1), dim_from_weights=True)
    assert sum(resumed.losses) < sum(fresh.losses), (resumed.losses, fresh.losses)
    assert any(not torch.equal(resumed.network_state[k], saved[k]) for k in saved)


def test_cached_text_encoder_outputs_train_the_same_sdxl_lora(tmp_path, tiny_checkpoints, small_dataset):
    common = dict(network_train_unet_only=True, cache_latents=True, max_train_epochs=1)
    _, _, plain = run(tiny_checkpoints, "sdxl", small_dataset, tmp_path / "a", **common)
    _, _, cached = run(tiny_checkpoints, "sdxl", small_dataset, tmp_path / "b", cache_text_encoder_outputs=True,
                       **common)
    assert plain.network_state.keys() == cached.network_state.keys()
    assert not any(k.startswith("lora_te") for k in cached.network_state)
    # same conditioning, so the same training up to float noise from batching captions differently
    # (Adam magnifies that on single elements, so compare the whole network's relative change)
    diff = sum((cached.network_state[k] - v).norm() ** 2 for k, v in plain.network_state.items()) ** 0.5
    size = sum(v.norm() ** 2 for v in plain.network_state.values()) ** 0.5
    assert diff / size < 1e-4, float(diff / size)
    torch.testing.assert_close(torch.tensor(cached.losses), torch.tensor(plain.losses), rtol=1e-5, atol=1e-6)


def test_learning_happens_loss_halves_on_a_fixed_batch(tiny_checkpoints):
    """Fixed latents, noise and timesteps: LoRA alone must fit them (loss at least halves)."""
    from lora_trainer.training import conditioning, noise as noise_lib

    model = load_checkpoint(tiny_checkpoints("sd1"))
    network = LoRANetwork.from_model(model, network_dim=16, network_alpha=16, conv_dim=8, conv_alpha=8)
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 8, 8, generator=g)
    noise = torch.randn(latents.shape, generator=g)
    t = torch.tensor([300, 600])
    noisy = noise_lib.add_noise(latents, noise, t, model.alphas_cumprod.float())
    ids = conditioning.tokenize(["sks, circle", "sks, square"], model.text_encoders[0], None)
    params, _ = network.prepare_optimizer_params(unet_lr=None, text_encoder_lr=None, default_lr=3e-3)
    optimizer = torch.optim.AdamW(params, lr=3e-3)
    losses = []
    with network:
        for _ in range(60):
            ctx = conditioning.encode_sd(model.text_encoders[0], ids, clip_skip=2)
            loss = torch.nn.functional.mse_loss(model.unet(noisy, t, ctx), noise)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], (losses[0], losses[-1])


def test_cli_bad_dataset_names_the_file_without_traceback(tmp_path, tiny_checkpoints):
    train_dir = tmp_path / "train"
    make_images(train_dir / "kitty", 3)  # no repeat number: kohya's "No data found" trap
    cmd = [sys.executable, "-m", "lora_trainer", "train", "--set", f"train_data_dir={train_dir}",
           "--set", f"pretrained_model_name_or_path={tiny_checkpoints('sd1')}", "--set", "resolution=64",
           "--set", f"output_dir={tmp_path / 'out'}", "--set", "device=cpu"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "kitty" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert "10_" in proc.stderr  # the fix: rename it like 10_kitty


def test_batched_loss_reads_give_the_same_run(tiny_checkpoints, small_dataset, tmp_path, monkeypatch):
    """On CUDA the loss is read every few steps (one host wait instead of several); the events, the
    losses and the file must be those of a run that reads every step. Forced here on the CPU."""
    from lora_trainer.training import loop

    def events_of(out_dir):
        events = []
        config, _ = from_dict({
            "pretrained_model_name_or_path": tiny_checkpoints("sd1"), "train_data_dir": str(small_dataset),
            "output_dir": str(out_dir), "output_name": "t", "resolution": "64", "train_batch_size": 2,
            "network_dim": 4, "learning_rate": 5e-3, "max_train_epochs": 2, "seed": 3, "device": "cpu",
        })
        result = train(config, load_checkpoint(config.pretrained_model_name_or_path), log=lambda _m: None,
                       on_progress=events.append)
        return [(e.step, e.epoch, e.step_loss) for e in events if e.kind == "step"], result

    every_step, first = events_of(tmp_path / "a")
    monkeypatch.setattr(loop, "loss_read_interval", lambda device: 3)
    batched, second = events_of(tmp_path / "b")
    assert len(every_step) >= 4 and batched == every_step
    assert first.losses == second.losses
    a, _ = read_file(first.files[-1])
    b, _ = read_file(second.files[-1])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
