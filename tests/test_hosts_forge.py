"""The Forge host adapter, on a fake Forge (tests/fake_forge) built from the tiny checkpoints.

What is proven here:

* the stand-in really has Forge's traps: backward through its (inference-tensor)
  weights raises; with ordinary weights its in-place residual adds still break
  backward through an attention-only LoRA; its checkpoint flags raise; restoring
  ``requires_grad=True`` on its weights raises; no Linear of it is an ``nn.Linear``;
* training through ForgeHost writes the same LoRA file, tensor for tensor and bit for
  bit, as the CLI (``runner.run_training``, the ``python -m lora_trainer train`` path)
  on the same checkpoint and seed: SD1, SDXL (with gradient checkpointing);
* Forge's model is handed back identical: every parameter and buffer object, its bits,
  dtype, device, inference-ness and requires_grad, the module tree and attributes,
  the LoRA loaders' state (a LoRA Forge merged is out of the weights while training and
  the same merged Parameters are back afterwards), after a normal end and after an
  exception mid-training; the next generation merges nothing again and gives the
  same output;
* low-bit storage (NF4, GGUF, fp8) and CPU swap are refused before anything changes;
  a FakeInitialModel gets loaded first; jobs run on Forge's main thread with the queue
  lock held; a LoRA file the training rewrote is read and merged afresh next time.
"""
import gc
import hashlib
import subprocess
import sys
import threading
import time

import pytest
import torch

import fake_forge
from cli_reference import make_config, read_metadata, read_tensors, reference
from conftest import make_images
from lora_trainer.hosts.forge import STALE_LORA_HASH, ForgeHost, HostRefusal, NestedJobError
from lora_trainer.networks.lora import LoRAModule
from lora_trainer.training.loop import train
from lora_trainer.training.progress import StopFlag

QUIET = dict(log=lambda _m: None)


# ------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("forge_data")
    make_images(root / "2_sks", 4)
    return root


@pytest.fixture
def forge(monkeypatch, tmp_path):
    fg = fake_forge.install(monkeypatch, tmp_path / "models" / "Lora")
    yield fg
    fake_forge.uninstall(fg)


@pytest.fixture
def host():
    return ForgeHost(log=lambda _m: None)


def train_in_forge(host, config, on_progress=None, stop=None, title="Training LoRA t"):
    def job():
        with host.lend_model() as model:
            return train(config, model, on_progress=on_progress or host.progress_callback(stop), stop=stop, **QUIET)

    return host.run_exclusive(job, title=title)


def _roots(engine):
    objects = engine.forge_objects
    return {"unet": objects.unet.model, "clip": objects.clip.cond_stage_model, "vae": objects.vae.first_stage_model}


def forge_fingerprint(engine):
    """Everything Forge could notice about its model, as one comparable value."""
    digest = hashlib.sha256()
    tensors, modules, loaders = [], [], {}
    for label, root in _roots(engine).items():
        for mpath, m in root.named_modules(remove_duplicate=False):
            for kind, table in (("p", m._parameters), ("b", m._buffers)):
                for name, t in table.items():
                    if t is None:
                        continue
                    data = t.detach()
                    digest.update(f"{label}.{mpath}.{name}:{data.dtype}:{data.device}:{tuple(data.shape)}".encode())
                    digest.update(data.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
                    tensors.append((label, mpath, name, kind, id(t), t.is_inference(), t.requires_grad,
                                    type(t).__name__, t.grad is None))
            attrs = sorted(k for k in m.__dict__ if not k.startswith("_"))
            modules.append((label, mpath, type(m).__name__, id(m), m.training, tuple(attrs),
                            len(m._forward_pre_hooks), len(m._forward_hooks), len(m._backward_hooks),
                            getattr(m, "parameters_manual_cast", None)))
        loader = getattr(root, "lora_loader", None)
        if loader is not None:
            loaders[label] = (id(loader.backup), {k: id(v) for k, v in loader.backup.items()}, loader.loaded_hash,
                              id(loader.online_backup))
    return {"tensors": digest.hexdigest(), "objects": tensors, "modules": modules, "loaders": loaders,
            "lora_hash": engine.current_lora_hash,
            "unet_defaults": repr(type(engine.forge_objects.unet.model.diffusion_model).forward.__defaults__)}


def assert_same(after, before):
    for key in before:
        assert after[key] == before[key], f"Forge's model changed: {key}"


def assert_same_file(written, expected):
    assert written.keys() == expected.keys()
    different = [k for k in expected if not torch.equal(written[k], expected[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def assert_job_closed(forge):
    assert not forge.call_queue.queue_lock.locked()
    history = forge.shared.state.history
    assert history and history[-1][0] == "end" and len(history) % 2 == 0


def live_training_objects():
    gc.collect()
    objects = gc.get_objects()
    return ([o for o in objects if issubclass(type(o), LoRAModule)],
            [o for o in objects if issubclass(type(o), torch.optim.Optimizer)])


# --------------------------------------------------------------- the traps


def _ordinary_copy(root):
    """Ordinary (non-inference) frozen copies of every weight, as a naive adapter might make."""
    for m in root.modules():
        for name, p in list(m._parameters.items()):
            if p is not None:
                m._parameters[name] = torch.nn.Parameter(p.detach().clone(), requires_grad=False)


def _unet_inputs(unet, batch=1):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 4, 8, 8, generator=generator)
    context = torch.randn(batch, 77, unet.config.context_dim, generator=generator)
    y = torch.randn(batch, unet.config.adm_in_channels, generator=generator) if unet.config.adm_in_channels else None
    return x, torch.tensor([500] * batch), context, y


def test_the_stand_in_has_forges_traps(forge, tiny_checkpoints):
    from lora_trainer.networks import LoRANetwork

    engine = fake_forge.load(forge, tiny_checkpoints("sd1"))
    unet = engine.forge_objects.unet.model.diffusion_model
    x, t, context, y = _unet_inputs(unet)

    # 1. weights are inference tensors: the LoRA's backward through a host layer cannot save them
    weights = list(engine.forge_objects.unet.model.parameters())
    assert weights and all(p.is_inference() and p.requires_grad for p in weights)
    lora_input = torch.randn(2, unet.input_blocks[1][1].transformer_blocks[0].attn1.to_q.in_features,
                             requires_grad=True)
    with pytest.raises(RuntimeError, match="Inference tensors cannot be saved for backward"):
        unet.input_blocks[1][1].transformer_blocks[0].attn1.to_q(lora_input).sum().backward()

    # 2. a freeze-and-restore of requires_grad (what a WebUI adapter does) cannot put True back
    p = weights[0]
    p.requires_grad_(False)
    with pytest.raises(RuntimeError, match="inference tensor outside InferenceMode"):
        p.requires_grad_(True)
    with torch.inference_mode():
        p.requires_grad_(True)

    # 3. no Linear is an nn.Linear (an isinstance scan finds nothing); Conv2d does subclass nn.Conv2d
    assert not any(isinstance(m, torch.nn.Linear) for m in unet.modules())
    assert any(type(m).__name__ == "Linear" for m in unet.modules())
    assert all(isinstance(m, torch.nn.Conv2d) for m in unet.modules() if type(m).__name__ == "Conv2d")

    # 4. with ordinary weights, an attention-only LoRA still cannot backward: the blocks add in place
    _ordinary_copy(engine.forge_objects.unet.model)
    network = LoRANetwork(unet, [], "sd1", network_dim=2, train_text_encoder=False)
    only_attention = [m for m in network.unet_loras if "attn1_to_q" in m.lora_name]
    assert only_attention
    for lora in only_attention:
        lora.apply()
        torch.nn.init.normal_(lora.lora_up.weight)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        unet(x, t, context, y).sum().backward()
    for lora in only_attention:
        lora.restore()

    # 5. Forge's own gradient checkpointing is not implemented
    block = unet.input_blocks[1][1].transformer_blocks[0]
    block.checkpoint = True
    with pytest.raises(NotImplementedError):
        unet(x, t, context, y)
    block.checkpoint = False


# --------------------------------------------------------------- same file


@pytest.mark.parametrize("arch,options", [
    ("sd1", {}),
    ("sdxl", {"gradient_checkpointing": True}),
])
def test_training_in_forge_writes_the_cli_file_and_hands_the_model_back(
        forge, host, tiny_checkpoints, dataset, tmp_path, tmp_path_factory, arch, options):
    expected, ref_result = reference(tiny_checkpoints, dataset, tmp_path_factory, arch, **options)
    engine = fake_forge.load(forge, tiny_checkpoints(arch))
    before_output = forge.networks.generate()
    before = forge_fingerprint(engine)
    loads_before = len(forge.memory_management.load_calls)
    empties = forge.memory_management.soft_empty_cache_calls

    result = train_in_forge(host, make_config(tiny_checkpoints(arch), dataset, tmp_path / "out", **options))

    assert [p.name for p in result.files] == [p.name for p in ref_result.files]
    assert_same_file(read_tensors(tmp_path / "out" / "t.safetensors"), expected)
    metadata = read_metadata(tmp_path / "out" / "t.safetensors")
    assert metadata["ss_sd_model_name"] == f"tiny-{arch}.safetensors"
    assert metadata["ss_sd_model_hash"] == "0badcafe" and metadata["ss_new_sd_model_hash"] == "ab" * 32
    assert_same(forge_fingerprint(engine), before)
    assert_job_closed(forge)
    state = forge.shared.state
    assert state.sampling_steps == state.sampling_step == result.steps > 0
    assert live_training_objects() == ([], [])
    # memory: one load of un-patched clones (no LoRA patches) plus the VAE, unloaded after, cache emptied
    mm = forge.memory_management
    (loaded,) = mm.load_calls[loads_before:]
    objects = engine.forge_objects
    assert [p.model for p in loaded] == [objects.unet.model, objects.clip.cond_stage_model,
                                         objects.vae.first_stage_model]
    assert loaded[0] is not objects.unet and loaded[0].lora_patches == {} and loaded[1].lora_patches == {}
    assert not any(m.model in loaded[:2] for m in mm.current_loaded_models)
    assert mm.soft_empty_cache_calls > empties
    # the next generation gives the same output, with nothing merged again
    assert torch.equal(forge.networks.generate(), before_output)


def test_the_lent_weights_share_forges_memory_and_are_ordinary(forge, host, tiny_checkpoints):
    engine = fake_forge.load(forge, tiny_checkpoints("sd1"))
    originals = {n: (p.data_ptr(), p) for n, p in engine.forge_objects.unet.model.named_parameters()}

    def inspect():
        with host.lend_model() as model:
            lent = dict(engine.forge_objects.unet.model.named_parameters())
            assert lent.keys() == originals.keys()
            assert all(not p.is_inference() and not p.requires_grad for p in lent.values())
            assert all(lent[n] is not originals[n][1] for n in lent)
            assert all(lent[n].data_ptr() == originals[n][0] for n in lent)  # no copy
            assert model.unet is engine.forge_objects.unet.model.diffusion_model
            assert [te.model for te in model.text_encoders] == [engine.forge_objects.clip.cond_stage_model.clip_l.transformer]
            assert model.prediction_type == "epsilon"
            assert torch.equal(model.alphas_cumprod.float(), engine.forge_objects.unet.model.predictor.alphas_cumprod)
            assert "forward" in model.unet.input_blocks[1][1].transformer_blocks[0].__dict__
            # Forge's textual-inversion hook keeps the token embedding's Parameter in two modules: one lent tensor
            embedding = model.text_encoders[0].model.text_model.embeddings.token_embedding
            assert embedding.weight is embedding.wrapped.weight and not embedding.weight.is_inference()

    host.run_exclusive(inspect, title="inspect")
    copying = ForgeHost(log=lambda _m: None, share_weights=False)

    def inspect_copy():
        with copying.lend_model():
            lent = dict(engine.forge_objects.unet.model.named_parameters())
            assert all(lent[n].data_ptr() != originals[n][0] for n in lent)

    copying.run_exclusive(inspect_copy, title="inspect")


def test_the_out_of_place_blocks_compute_what_forges_blocks_compute(forge, host, tiny_checkpoints):
    """The patched transformer blocks give Forge's own output, bit for bit, and back-propagate."""
    engine = fake_forge.load(forge, tiny_checkpoints("sdxl"))
    unet = engine.forge_objects.unet.model.diffusion_model
    inputs = _unet_inputs(unet, batch=2)
    with torch.inference_mode():
        forge_output = unet(*inputs, transformer_options={})

    def compare():
        with host.lend_model() as model:
            out = model.unet(*inputs)
            assert torch.equal(out, forge_output)
            x = inputs[0].clone().requires_grad_(True)
            model.unet(x, *inputs[1:]).sum().backward()
            assert x.grad is not None and torch.isfinite(x.grad).all()

    host.run_exclusive(compare, title="compare")


# ------------------------------------------------------- LoRAs Forge merged


def _write_style_lora(path, model_ref_file):
    """A kohya LoRA for the tiny model: the reference training's file with larger up weights."""
    from safetensors.torch import save_file

    tensors = read_tensors(model_ref_file)
    tensors = {k: (v * 20 if k.endswith("lora_up.weight") else v) for k, v in tensors.items()}
    save_file(tensors, str(path))
    return path


@pytest.mark.parametrize("arch", ["sd1", "sdxl"])
def test_a_lora_forge_merged_is_out_while_training_and_the_same_weights_are_back_after(
        forge, host, tiny_checkpoints, dataset, tmp_path, tmp_path_factory, arch):
    expected, ref_result = reference(tiny_checkpoints, dataset, tmp_path_factory, arch)
    engine = fake_forge.load(forge, tiny_checkpoints(arch))
    lora_dir = tmp_path / "models" / "Lora"
    lora_dir.mkdir(parents=True)
    _write_style_lora(lora_dir / "style.safetensors", ref_result.files[-1])
    clean_output = forge.networks.generate()
    lora_output = forge.networks.generate([("style", 1.0)])
    loader = engine.forge_objects.unet.model.lora_loader
    te_loader = engine.forge_objects.clip.cond_stage_model.lora_loader
    assert not torch.equal(lora_output, clean_output) and loader.backup and te_loader.backup
    refreshes = loader.refreshes, te_loader.refreshes
    before = forge_fingerprint(engine)

    train_in_forge(host, make_config(tiny_checkpoints(arch), dataset, tmp_path / "out"))

    # trained from the clean checkpoint: the CLI's file
    assert_same_file(read_tensors(tmp_path / "out" / "t.safetensors"), expected)
    # the same merged Parameters, the loaders' own backups and hash
    assert_same(forge_fingerprint(engine), before)
    # the next generation with the LoRA merges nothing again and gives the same image
    assert torch.equal(forge.networks.generate([("style", 1.0)]), lora_output)
    assert (loader.refreshes, te_loader.refreshes) == refreshes
    # and without it, Forge's backups still give the clean model
    assert torch.equal(forge.networks.generate(), clean_output)


def test_a_merged_lora_whose_file_the_training_rewrote_is_read_and_merged_afresh(
        forge, host, tiny_checkpoints, dataset, tmp_path, tmp_path_factory):
    expected, ref_result = reference(tiny_checkpoints, dataset, tmp_path_factory, "sd1")
    engine = fake_forge.load(forge, tiny_checkpoints("sd1"))
    lora_dir = tmp_path / "models" / "Lora"
    lora_dir.mkdir(parents=True)
    _write_style_lora(lora_dir / "t.safetensors", ref_result.files[-1])
    old_output = forge.networks.generate([("t", 1.0)])
    time.sleep(0.01)  # a distinct mtime for the rewritten file

    train_in_forge(host, make_config(tiny_checkpoints("sd1"), dataset, lora_dir))  # writes Lora/t.safetensors

    assert_same_file(read_tensors(lora_dir / "t.safetensors"), expected)
    assert engine.current_lora_hash == STALE_LORA_HASH
    host.refresh_loras()
    reads = len(forge.networks.reads)
    new_output = forge.networks.generate([("t", 1.0)])
    assert len(forge.networks.reads) == reads + 1  # the file was read again, not taken from the cache
    assert not torch.equal(new_output, old_output)
    # what Forge now has merged is the new file: a fresh Forge given that file computes the same
    fresh = fake_forge.load(forge, tiny_checkpoints("sd1"), dtype=torch.float32, fresh=1)
    assert fresh is not engine
    forge.networks.load_lora_state_dict.cache_clear()
    assert torch.equal(forge.networks.generate([("t", 1.0)]), new_output)


# ------------------------------------------------------------- failures


def test_the_model_is_handed_back_after_an_exception_mid_training(
        forge, host, tiny_checkpoints, dataset, tmp_path, tmp_path_factory):
    _expected, ref_result = reference(tiny_checkpoints, dataset, tmp_path_factory, "sd1")
    engine = fake_forge.load(forge, tiny_checkpoints("sd1"))
    lora_dir = tmp_path / "models" / "Lora"
    lora_dir.mkdir(parents=True)
    _write_style_lora(lora_dir / "style.safetensors", ref_result.files[-1])
    lora_output = forge.networks.generate([("style", 0.7)])
    before = forge_fingerprint(engine)

    def on_progress(event):
        if event.kind == "step" and event.step == 2:
            raise RuntimeError("boom in the middle")

    config = make_config(tiny_checkpoints("sd1"), dataset, tmp_path / "out", max_train_epochs=2)
    fake_forge.start_main_thread(forge)  # the exception comes back from Forge's main thread
    with pytest.raises(RuntimeError, match="boom in the middle") as excinfo:
        train_in_forge(host, config, on_progress=on_progress)

    assert_same(forge_fingerprint(engine), before)
    assert_job_closed(forge)
    # the LoRA and the optimizer are gone even while the exception is still held
    assert excinfo.value is not None
    assert live_training_objects() == ([], [])
    ours = forge.memory_management.load_calls[-1][:2]  # the un-patched clones the lend loaded
    assert not any(any(m.model is p for p in ours) for m in forge.memory_management.current_loaded_models)
    assert torch.equal(forge.networks.generate([("style", 0.7)]), lora_output)


@pytest.mark.parametrize("storage", ["nf4", "gguf", "fp8"])
def test_low_bit_storage_is_refused_before_anything_changes(forge, host, tiny_checkpoints, dataset, tmp_path,
                                                            storage):
    engine = fake_forge.load(forge, tiny_checkpoints("sd1"))
    kmodel = engine.forge_objects.unet.model
    if storage == "nf4":
        kmodel.storage_dtype = "nf4"
    elif storage == "gguf":
        next(iter(kmodel.parameters())).gguf_cls = object()
    else:
        with torch.inference_mode():
            layer = kmodel.diffusion_model.input_blocks[1][1].transformer_blocks[0].attn1.to_q
            layer.weight = torch.nn.Parameter(layer.weight.to(torch.float8_e4m3fn), requires_grad=False)
    before = forge_fingerprint(engine)
    loads = len(forge.memory_management.load_calls)
    expected = {"nf4": "NF4", "gguf": "GGUF", "fp8": "fp8"}[storage]
    with pytest.raises(HostRefusal, match=expected) as refusal:
        train_in_forge(host, make_config(tiny_checkpoints("sd1"), dataset, tmp_path / "out"))
    assert "fp16" in str(refusal.value)
    assert_same(forge_fingerprint(engine), before)
    assert len(forge.memory_management.load_calls) == loads
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    assert_job_closed(forge)


def test_a_load_that_needs_cpu_swap_is_refused_and_undone(forge, host, tiny_checkpoints, dataset, tmp_path):
    engine = fake_forge.load(forge, tiny_checkpoints("sd1"))
    before = forge_fingerprint(engine)
    forge.memory_management.simulate_cpu_swap = True
    with pytest.raises(HostRefusal, match="GPU Weights"):
        train_in_forge(host, make_config(tiny_checkpoints("sd1"), dataset, tmp_path / "out"))
    forge.memory_management.simulate_cpu_swap = False
    assert_same(forge_fingerprint(engine), before)  # parameters_manual_cast flags included
    assert not any(m.model_accelerated for m in forge.memory_management.current_loaded_models)


def test_transformer_blocks_wrapped_by_another_extension_are_refused(forge, host, tiny_checkpoints, dataset,
                                                                     tmp_path):
    engine = fake_forge.load(forge, tiny_checkpoints("sd1"))
    block = next(m for m in engine.forge_objects.unet.model.diffusion_model.modules()
                 if type(m).__name__ == "BasicTransformerBlock")

    def some_extensions_forward(*args, **kwargs):
        return type(block).forward(block, *args, **kwargs)

    block.forward = some_extensions_forward
    before = forge_fingerprint(engine)
    with pytest.raises(HostRefusal, match="some_extensions_forward"):
        train_in_forge(host, make_config(tiny_checkpoints("sd1"), dataset, tmp_path / "out"))
    assert_same(forge_fingerprint(engine), before)
    assert block.__dict__["forward"] is some_extensions_forward


def test_other_models_are_refused_with_what_to_do(forge, host, tiny_checkpoints, dataset, tmp_path):
    engine = fake_forge.load(forge, tiny_checkpoints("sd1"))
    config = make_config(tiny_checkpoints("sd1"), dataset, tmp_path / "out")
    engine.is_sd1, engine.is_sd2 = False, True
    with pytest.raises(HostRefusal, match="SD2"):
        train_in_forge(host, config)
    engine.is_sd2 = False
    with pytest.raises(HostRefusal, match="not an SD1.x or SDXL"):
        train_in_forge(host, config)
    engine.is_sd1 = True
    engine.is_inpaint = True
    with pytest.raises(HostRefusal, match="inpainting"):
        train_in_forge(host, config)
    engine.is_inpaint = False
    engine.forge_objects.unet.model.predictor.prediction_type = "edm"
    with pytest.raises(HostRefusal, match="EDM"):
        train_in_forge(host, config)


# ------------------------------------------------------------- loading


def test_a_fake_initial_model_is_loaded_first(forge, host, tiny_checkpoints, dataset, tmp_path, tmp_path_factory):
    expected, _ = reference(tiny_checkpoints, dataset, tmp_path_factory, "sd1")
    assert type(forge.shared.sd_model).__name__ == "FakeInitialModel"
    forge.sd_models.select_checkpoint(tiny_checkpoints("sd1"))  # picked in the dropdown, not loaded yet
    calls = forge.sd_models.reload_calls
    train_in_forge(host, make_config(tiny_checkpoints("sd1"), dataset, tmp_path / "out"))
    assert forge.sd_models.reload_calls == calls + 1
    assert type(forge.shared.sd_model).__name__ == "StableDiffusion"
    assert_same_file(read_tensors(tmp_path / "out" / "t.safetensors"), expected)


def test_no_checkpoint_is_refused_with_a_message(forge, host, dataset, tmp_path, tiny_checkpoints):
    forge.sd_models.model_data.forge_loading_parameters = {"checkpoint_info": None}
    with pytest.raises(HostRefusal, match="pick one at the top"):
        train_in_forge(host, make_config(tiny_checkpoints("sd1"), dataset, tmp_path / "out"))
    assert_job_closed(forge)


# ------------------------------------------------------------------- jobs


def test_jobs_run_on_forges_main_thread_under_the_queue_lock(forge, host, tiny_checkpoints, dataset, tmp_path):
    fake_forge.load(forge, tiny_checkpoints("sd1"))
    fake_forge.start_main_thread(forge)
    seen = []

    def on_progress(event):
        seen.append((threading.current_thread().name, forge.call_queue.queue_lock.locked(), forge.shared.state.job))
        host.report(event)

    result = train_in_forge(host, make_config(tiny_checkpoints("sd1"), dataset, tmp_path / "out"),
                            on_progress=on_progress, title="task(forge1)")
    assert result.steps == 4
    assert seen and all(entry == ("forge-main-thread", True, "task(forge1)") for entry in seen)
    assert forge.main_thread.finished_list == [] and forge.main_thread.waiting_list == []
    assert forge.progress.queued == ["task(forge1)"] and forge.progress.finished == ["task(forge1)"]
    assert_job_closed(forge)

    # an error comes back to the caller as itself; the loop survives even a BaseException
    class Stop(BaseException):
        pass

    def fail():
        raise Stop("stopped")

    with pytest.raises(Stop):
        host.run_exclusive(fail, title="fails")
    assert forge.loop_thread.is_alive() and forge.main_thread.last_exception is None
    assert host.run_exclusive(lambda: threading.current_thread().name, title="again") == "forge-main-thread"
    assert forge.main_thread.finished_list == []


def test_a_loop_ended_by_an_earlier_task_gives_an_error_not_a_hang(forge, host):
    """Forge's loop catches Exception only: a BaseException from another task ahead of ours ends the
    loop thread, and our job, queued behind it, would wait forever holding the queue lock."""
    fake_forge.start_main_thread(forge)
    release = threading.Event()

    def killer():
        release.wait(10)
        raise SystemExit("another extension's task")

    forge.main_thread.async_run(killer)
    deadline = time.time() + 10
    while time.time() < deadline and forge.main_thread.waiting_list:
        time.sleep(0.01)  # the loop has taken the killer and is running it
    outcome = {}

    def job():
        try:
            outcome["value"] = host.run_exclusive(lambda: "ran", title="after the killer")
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            outcome["error"] = exc

    runner = threading.Thread(target=job, daemon=True)  # daemon: a hang must not keep pytest alive
    runner.start()
    deadline = time.time() + 10
    while time.time() < deadline and len(forge.main_thread.waiting_list) < 1:
        time.sleep(0.01)
    assert len(forge.main_thread.waiting_list) == 1  # ours, behind the running killer
    release.set()
    runner.join(10)
    assert not runner.is_alive(), "the job waited forever for a dead loop"
    assert isinstance(outcome.get("error"), RuntimeError) and "restart Forge" in str(outcome["error"])
    assert not forge.call_queue.queue_lock.locked() and forge.main_thread.waiting_list == []


def test_refresh_loras_forgets_the_cached_prompt_conditioning(forge, host, monkeypatch):
    import types

    class StableDiffusionProcessing:
        cached_c = [("sks", 20, "lt_style:1"), "stale cond", None]
        cached_uc = [("", 20), "stale uncond", None]

    class StableDiffusionProcessingTxt2Img(StableDiffusionProcessing):
        cached_hr_c = [("sks",), "stale hr", None]
        cached_hr_uc = [None, None, None]

    module = types.ModuleType("modules.processing")
    module.StableDiffusionProcessing = StableDiffusionProcessing
    module.StableDiffusionProcessingTxt2Img = StableDiffusionProcessingTxt2Img
    monkeypatch.setitem(sys.modules, "modules.processing", module)
    held = StableDiffusionProcessing.cached_c  # what a running generation holds
    host.refresh_loras()
    assert StableDiffusionProcessing.cached_c == [None, None, None]
    assert StableDiffusionProcessing.cached_uc == [None, None, None]
    assert StableDiffusionProcessingTxt2Img.cached_hr_c == [None, None, None]
    assert held[1] == "stale cond" and held is not StableDiffusionProcessing.cached_c
    assert "cached_c" not in StableDiffusionProcessingTxt2Img.__dict__  # the subclass still reads the base's


def test_without_a_running_main_loop_the_job_runs_here(forge, host):
    assert host.run_exclusive(lambda: threading.current_thread().name, title="here") == \
        threading.current_thread().name
    assert_job_closed(forge)


def test_a_job_started_from_inside_a_job_raises_instead_of_deadlocking(forge, host):
    fake_forge.start_main_thread(forge)
    other = ForgeHost(log=lambda _m: None)
    outcome = {}

    def outer():
        try:
            other.run_exclusive(lambda: "inner ran", title="inner")
        except NestedJobError as exc:
            outcome["error"] = str(exc)
        return "outer done"

    runner = threading.Thread(target=lambda: outcome.setdefault("result", host.run_exclusive(outer, title="outer")))
    runner.start()
    runner.join(timeout=30)
    assert not runner.is_alive(), "deadlocked"
    assert outcome["result"] == "outer done" and "not re-entrant" in outcome["error"]
    assert_job_closed(forge)


def test_lend_model_outside_a_job_is_refused(forge, host, tiny_checkpoints):
    fake_forge.load(forge, tiny_checkpoints("sd1"))
    with pytest.raises(RuntimeError, match="inside run_exclusive"):
        with host.lend_model():
            pass


def test_the_interrupt_button_stops_the_training_and_keeps_its_weights(
        forge, host, tiny_checkpoints, dataset, tmp_path):
    fake_forge.load(forge, tiny_checkpoints("sd1"))
    stop = StopFlag()
    mirror = host.progress_callback(stop)

    def on_progress(event):
        if event.kind == "step" and event.step == 1:
            forge.shared.state.interrupt()
        mirror(event)

    result = train_in_forge(host, make_config(tiny_checkpoints("sd1"), dataset, tmp_path / "out", max_train_epochs=3),
                            on_progress=on_progress, stop=stop)
    assert result.interrupted and result.steps == 1
    assert [p.name for p in result.files] == ["t-000001-interrupted.safetensors"]


def test_epoch_files_are_never_rewritten_in_place(forge, host, tiny_checkpoints, dataset, tmp_path):
    """Forge caches LoRA files by name: every save of a run has its own name, and a file is
    replaced by rename (a new inode), never written into."""
    fake_forge.load(forge, tiny_checkpoints("sd1"))
    out = tmp_path / "out"
    out.mkdir()
    (out / "t-000001.safetensors").write_bytes(b"an older run")
    old_inode = (out / "t-000001.safetensors").stat().st_ino
    held = open(out / "t-000001.safetensors", "rb")  # a reader (Forge's cache) holding the old file
    result = train_in_forge(host, make_config(tiny_checkpoints("sd1"), dataset, out, max_train_epochs=2,
                                              save_every_n_epochs=1))
    names = [p.name for p in result.files]
    assert names == ["t-000001.safetensors", "t.safetensors"] and len(set(names)) == len(names)
    assert held.read() == b"an older run"
    held.close()
    assert (out / "t-000001.safetensors").stat().st_ino != old_inode


def test_lora_dir_and_refresh(forge, host, tmp_path):
    forge.shared.cmd_opts.lora_dir = str(tmp_path / "my_loras")
    assert host.lora_dir() == tmp_path / "my_loras"
    (tmp_path / "my_loras").mkdir()
    (tmp_path / "my_loras" / "new.safetensors").write_bytes(b"x")
    calls = forge.networks.list_calls
    host.refresh_loras()
    assert forge.networks.list_calls == calls + 1 and "new" in forge.networks.available_networks


def test_the_adapter_imports_without_forge_and_is_a_host():
    code = ("import sys, lora_trainer.hosts.forge as f; from lora_trainer.hosts.base import Host; "
            "assert isinstance(f.ForgeHost(), Host); "
            "assert f.ForgeHost().render_samples is None; "  # samples: the core's sampler over the lent model
            "assert not any(m.split('.')[0] in ('modules', 'backend', 'modules_forge', 'networks') for m in sys.modules); "
            "print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_a_conv2d_that_is_no_nn_conv2d_gets_a_locon():
    """The network attaches to layers by class name and shape (Forge's Linear is no nn.Linear; a
    Conv2d of the same kind gets LoCon with F.conv2d semantics)."""
    import torch.nn.functional as F

    from lora_trainer.networks.naming import is_conv2d, is_linear

    class Conv2d(torch.nn.Module):  # quacks like nn.Conv2d, is not one
        def __init__(self, cin, cout, k):
            super().__init__()
            self.in_channels, self.out_channels, self.kernel_size = cin, cout, (k, k)
            self.stride, self.padding = (1, 1), (k // 2, k // 2)
            self.weight = torch.nn.Parameter(torch.randn(cout, cin, k, k))
            self.bias = torch.nn.Parameter(torch.randn(cout))

        def forward(self, x):
            return F.conv2d(x, self.weight, self.bias, self.stride, self.padding)

    conv = Conv2d(3, 5, 3)
    assert is_conv2d(conv) and not is_linear(conv) and not isinstance(conv, torch.nn.Conv2d)
    lora = LoRAModule("lora_unet_x", conv, dim=2, alpha=2)
    torch.nn.init.normal_(lora.lora_up.weight)
    x = torch.randn(1, 3, 8, 8)
    lora.apply()
    try:
        out = conv(x)
    finally:
        lora.restore()
    merged = F.conv2d(x, conv.weight + lora.weight_delta(), conv.bias, 1, 1)
    torch.testing.assert_close(out, merged, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------- the Forge-size checkpoint


def test_the_forge_size_checkpoint_has_what_forges_model_detection_requires():
    """Forge detects the model with huggingface_guess (SD15: 320 base channels, 768-wide context,
    conv proj_in, no ADM, 4 input channels) and builds the text encoder and the VAE from
    runwayml/stable-diffusion-v1-5's config files (backend/huggingface/...): their shapes must be those."""
    from lora_trainer.models.tiny import checkpoint_shapes

    shapes = checkpoint_shapes("sd1", "forge")
    unet = {k[len("model.diffusion_model."):]: v for k, v in shapes.items() if k.startswith("model.diffusion_model.")}
    assert unet["input_blocks.0.0.weight"][:2] == (320, 4)  # model_channels, in_channels
    assert unet["input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"][1] == 768  # context_dim
    assert len(unet["input_blocks.1.1.proj_in.weight"]) == 4  # conv, not linear
    assert not any(k.startswith("label_emb.") or "time_stack" in k for k in unet)
    assert unet["out.2.weight"][0] == 4
    assert any(k.startswith("middle_block.1.transformer_blocks.0.") for k in unet)
    # the UNet is the part that shrinks
    assert sum(torch.Size(v).numel() for v in unet.values()) < 30e6
    # text_encoder/config.json: hidden 768, 12 layers, intermediate 3072, vocab 49408, 77 positions
    te = {k[len("cond_stage_model.transformer."):]: v for k, v in shapes.items()
          if k.startswith("cond_stage_model.transformer.")}
    assert te["text_model.embeddings.token_embedding.weight"] == (49408, 768)
    assert te["text_model.embeddings.position_embedding.weight"] == (77, 768)
    layers = {int(k.split(".")[3]) for k in te if k.startswith("text_model.encoder.layers.")}
    assert layers == set(range(12))
    assert te["text_model.encoder.layers.11.mlp.fc1.weight"] == (3072, 768)
    # vae/config.json: block_out_channels 128, 256, 512, 512; 2 layers per block; 4 latent channels
    vae = {k[len("first_stage_model."):]: v for k, v in shapes.items() if k.startswith("first_stage_model.")}
    assert vae["encoder.conv_in.weight"] == (128, 3, 3, 3)
    assert [vae[f"encoder.down.{i}.block.1.conv2.weight"][0] for i in range(4)] == [128, 256, 512, 512]
    assert "encoder.down.3.block.2.conv1.weight" not in vae and vae["quant_conv.weight"][0] == 8
    assert vae["decoder.conv_out.weight"][0] == 3


def test_there_is_no_forge_size_sdxl_and_the_cli_says_so(tmp_path, capsys):
    from lora_trainer.__main__ import main

    assert main(["tiny-checkpoint", "--arch", "sdxl", "--forge", str(tmp_path / "x.safetensors")]) == 2
    assert "real transformer depths" in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()
    assert main(["tiny-checkpoint", "--arch", "sd1"]) == 2
    assert "--out" in capsys.readouterr().err


# ------------------------------------------------------------- the entry point


_SCRIPT_CHILD = r'''
import importlib.util, json, os, sys, types
root = sys.argv[1]
for rel, text in {
    "modules/__init__.py": "",
    "modules/script_callbacks.py": "registered = {}\n"
        "def _on(kind):\n    return lambda cb, *, name=None: registered.setdefault(kind, []).append(cb)\n"
        "on_ui_tabs, on_ui_settings, on_app_started = _on('ui_tabs'), _on('ui_settings'), _on('app_started')\n",
    "modules/shared.py": "import types\ncmd_opts = types.SimpleNamespace(api=True)\n"
        "opts = types.SimpleNamespace()\n",
    "modules/paths_internal.py": "import os\ndata_path = os.environ['DATA']\n",
    "modules_forge/__init__.py": "",
}.items():
    path = os.path.join(os.environ["DATA"], "webui", rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "w").write(text)
sys.path.insert(0, os.path.join(os.environ["DATA"], "webui"))
spec = importlib.util.spec_from_file_location("lora_trainer.py", os.path.join(root, "scripts", "lora_trainer.py"))
script = importlib.util.module_from_spec(spec)
spec.loader.exec_module(script)
from modules import script_callbacks
from fastapi import FastAPI
app = FastAPI()
for cb in script_callbacks.registered["app_started"]:
    cb(None, app)
print(json.dumps({"host": type(script.get_host()).__name__, "host_module": type(script.get_host()).__module__,
                  "routes": sorted(p for p in app.openapi()["paths"] if p.startswith("/lora_trainer"))}))
'''


def test_the_webui_script_uses_forgehost_and_registers_the_compare_routes_in_forge(tmp_path):
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("PYTHONPATH", "LORA_TRAINER_HOST")}
    env.update(DATA=str(tmp_path), OMP_NUM_THREADS="1")
    run = subprocess.run([sys.executable, "-c", _SCRIPT_CHILD, str(root)], capture_output=True, text=True,
                         env=env, cwd=str(tmp_path), timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    out = __import__("json").loads(run.stdout.strip().splitlines()[-1])
    assert (out["host"], out["host_module"]) == ("ForgeHost", "lora_trainer.hosts.forge")
    assert {"/lora_trainer/v1/train", "/lora_trainer/v1/compare", "/lora_trainer/v1/publish"} <= set(out["routes"])


def test_run_comparison_runs_the_xyz_runner_as_a_forge_job_on_the_main_thread(forge, host, monkeypatch):
    """The comparison goes through hosts/a1111_compare.py's runner (Forge's X/Y/Z plot script takes the
    same arguments; axes are looked up by label), as a job of its own on Forge's main thread."""
    from lora_trainer.hosts import a1111_compare

    fake_forge.start_main_thread(forge)
    seen = {}

    def run_in_job(comparison, save_grid):
        seen.update(thread=threading.current_thread().name, locked=forge.call_queue.queue_lock.locked(),
                    job=forge.shared.state.job, comparison=comparison, save_grid=save_grid)
        return "result"

    monkeypatch.setattr(a1111_compare, "_run_in_job", run_in_job)
    monkeypatch.setattr(a1111_compare, "remember", lambda result: seen.setdefault("remembered", result))
    assert host.run_comparison("the comparison", save_grid=False) == "result"
    assert seen == {"thread": "forge-main-thread", "locked": True, "job": "LoRA Trainer: epoch comparison",
                    "comparison": "the comparison", "save_grid": False, "remembered": "result"}
    assert_job_closed(forge)


def test_refresh_loras_marks_stale_only_between_generations(forge, host):
    """A generation ends by writing the LoRA hashes it merged: marking them stale meanwhile would be
    lost, so refresh_loras waits for the queue lock (here held as a running generation holds it)."""
    lock = forge.call_queue.queue_lock
    lock.acquire()
    done = threading.Event()
    worker = threading.Thread(target=lambda: (host.refresh_loras(), done.set()), daemon=True)
    worker.start()
    time.sleep(0.3)
    waited = not done.is_set()
    lock.release()
    worker.join(10)
    assert waited and done.is_set()
    assert host.run_exclusive(lambda: (host.refresh_loras(), "inside a job: no wait")[1], title="j") == \
        "inside a job: no wait"


def test_samples_during_training_in_forge_use_the_core_sampler_and_change_nothing(
        forge, host, tiny_checkpoints, dataset, tmp_path, tmp_path_factory):
    """Forge's txt2img would re-merge LoRAs into the weights being trained, so the core's sampler
    draws the samples over the lent (Forge) model; the file is still the CLI's, bit for bit."""
    expected, _ = reference(tiny_checkpoints, dataset, tmp_path_factory, "sd1")
    engine = fake_forge.load(forge, tiny_checkpoints("sd1"))
    before = forge_fingerprint(engine)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("sks, circle --w 64 --h 64 --s 2 --d 5\n", encoding="utf-8")
    out = tmp_path / "out"
    config = make_config(tiny_checkpoints("sd1"), dataset, out, sample_every_n_epochs=1, sample_at_first=True,
                         sample_prompts=str(prompts), sample_sampler="euler_a")
    events = []

    def job():
        with host.lend_model() as model:
            return train(config, model, on_progress=events.append, host=host, **QUIET)

    host.run_exclusive(job, title="Training LoRA t")
    samples = [e for e in events if e.kind == "sample"]
    assert [(e.epoch, e.step) for e in samples] == [(0, 0), (1, 4)]
    from PIL import Image

    images = [Image.open(e.path) for e in samples]
    assert all(image.size == (64, 64) for image in images)
    assert images[0].tobytes() != images[1].tobytes()  # the trained LoRA was applied when sampling
    assert_same_file(read_tensors(out / "t.safetensors"), expected)
    assert_same(forge_fingerprint(engine), before)
