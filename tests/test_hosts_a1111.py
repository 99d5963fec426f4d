"""The AUTOMATIC1111 host adapter, on a fake WebUI (tests/fake_webui) holding the tiny checkpoints.

What is proven here:

* training through the adapter writes the same LoRA file, tensor for tensor
  and bit for bit, as the standalone path (load_checkpoint + train) on the same
  checkpoint and seed: SD1, SD2, and SDXL (whose second encoder is the WebUI's
  OpenCLIP tower seen as a Hugging Face CLIP model over the same tensors);
* the WebUI's model is handed back identical (every tensor's bits, dtype,
  device and strides, requires_grad / .grad / training flags, the module tree,
  instance attributes and hooks, the Lora extension's marks and backups, the
  lowvram state) after a normal end, an exception and a CUDA out-of-memory;
* a LoRA the Lora extension merged into the weights is out of them during
  training (the file still equals the clean-checkpoint reference) and is back,
  bit for bit, afterwards; a merged LoRA whose file the training overwrote is
  left to the extension to merge afresh;
* --lowvram, fp8 weights, an SD Unet replacement and inpainting UNets are refused
  with a message, before anything is touched; --medvram trains without the
  lowvram hooks evicting the UNet or the text encoders;
* jobs hold the queue lock (a generation waits behind the training), begin/end
  shared.state, mirror progress, turn the Interrupt button into a stop, and a
  job started from inside a job raises instead of deadlocking.
"""
import gc
import hashlib
import subprocess
import sys
import threading
import time

import pytest
import torch

import fake_webui
from cli_reference import make_config, read_metadata, read_tensors, reference
from conftest import make_images
from lora_trainer.hosts.a1111 import A1111Host, HostRefusal, NestedJobError
from lora_trainer.models.standalone import load_checkpoint
from lora_trainer.networks.lora import LoRAModule
from lora_trainer.training.loop import train
from lora_trainer.training.progress import StopFlag

QUIET = dict(log=lambda _m: None)


# ------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("a1111_data")
    make_images(root / "2_sks", 4)
    return root


@pytest.fixture
def webui(monkeypatch, tmp_path):
    fw = fake_webui.install(monkeypatch, tmp_path / "models" / "Lora")
    yield fw
    fake_webui.uninstall()


@pytest.fixture
def host():
    return A1111Host(log=lambda _m: None)


def load_webui_model(webui, tiny_checkpoints, arch):
    webui.shared.sd_model = fake_webui.build_sd_model(tiny_checkpoints(arch))
    return webui.shared.sd_model


def train_in_webui(host, config, on_progress=None, stop=None, title="Training LoRA t"):
    def job():
        with host.lend_model() as model:
            return train(config, model, on_progress=on_progress or host.progress_callback(stop), stop=stop, **QUIET)

    return host.run_exclusive(job, title=title)


def webui_fingerprint(sd_model, webui):
    """Everything the WebUI could notice about its model, as one comparable value."""
    digest = hashlib.sha256()
    tensors = dict(sd_model.named_parameters(remove_duplicate=False))
    tensors.update(dict(sd_model.named_buffers(remove_duplicate=False)))
    for extra in ("alphas_cumprod", "alphas_cumprod_original"):
        value = getattr(sd_model, extra, None)
        if isinstance(value, torch.Tensor):
            tensors["<attr>" + extra] = value
    for name in sorted(tensors):
        t = tensors[name].detach()
        digest.update(f"{name}:{t.dtype}:{t.device}:{tuple(t.shape)}:{t.stride()}".encode())
        digest.update(t.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    params = [(n, id(p), p.requires_grad, p.grad is None) for n, p in sd_model.named_parameters(remove_duplicate=False)]
    modules = []
    for name, m in sd_model.named_modules(remove_duplicate=False):
        attrs = sorted(k for k in m.__dict__ if not k.startswith("_"))
        modules.append((
            name, type(m).__name__, id(m), m.training, tuple(attrs),
            len(m._forward_pre_hooks), len(m._forward_hooks), len(m._backward_hooks),
            tuple(sorted(m._parameters)), tuple(sorted(m._buffers)),
            getattr(m, "network_current_names", None),
            id(getattr(m, "network_weights_backup", None)), id(getattr(m, "network_bias_backup", None)),
        ))
    lora_ext = (id(webui.networks.loaded_networks), tuple(id(n) for n in webui.networks.loaded_networks))
    return {"tensors": digest.hexdigest(), "params": params, "modules": modules, "lora": lora_ext,
            "lowvram": id(webui.lowvram.module_in_gpu), "lowvram_flag": getattr(sd_model, "lowvram", None)}


def assert_same(after, before):
    for key in before:
        assert after[key] == before[key], f"host model changed: {key}"


def live_training_objects():
    gc.collect()
    objects = gc.get_objects()
    # type() rather than isinstance(): some torch objects warn when their __class__ is read
    return ([o for o in objects if issubclass(type(o), LoRAModule)],
            [o for o in objects if issubclass(type(o), torch.optim.Optimizer)])


def assert_job_closed(webui):
    assert not webui.call_queue.queue_lock.locked()
    history = webui.shared.state.history
    assert history and history[-1][0] == "end" and len(history) % 2 == 0


def assert_same_file(written, expected):
    assert written.keys() == expected.keys()
    different = [k for k in expected if not torch.equal(written[k], expected[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


# --------------------------------------------------------------- same file


@pytest.mark.parametrize("arch,options", [
    ("sd1", {}),
    ("sdxl", {"gradient_checkpointing": True}),
    ("sd2", {"max_train_epochs": 2}),
])
def test_training_in_the_webui_writes_the_standalone_file_and_hands_the_model_back(
        webui, host, tiny_checkpoints, dataset, tmp_path, tmp_path_factory, arch, options):
    expected, ref_result = reference(tiny_checkpoints, dataset, tmp_path_factory, arch, **options)
    sd_model = load_webui_model(webui, tiny_checkpoints, arch)
    if arch == "sd1":
        # a sampling option (zero terminal SNR) altered the live schedule: training keeps the model's own
        sd_model.alphas_cumprod = sd_model.alphas_cumprod_original * 0.5
    before = webui_fingerprint(sd_model, webui)

    result = train_in_webui(host, make_config(tiny_checkpoints(arch), dataset, tmp_path / "out", **options))

    assert [p.name for p in result.files] == [p.name for p in ref_result.files]
    assert_same_file(read_tensors(tmp_path / "out" / "t.safetensors"), expected)
    metadata = read_metadata(tmp_path / "out" / "t.safetensors")
    assert metadata["ss_sd_model_name"] == f"tiny-{arch}.safetensors"
    assert metadata["ss_sd_model_hash"] == "0badcafe"  # the WebUI's legacy hash, as kohya writes it
    assert metadata["ss_new_sd_model_hash"] == "ab" * 32
    assert_same(webui_fingerprint(sd_model, webui), before)
    assert_job_closed(webui)
    state = webui.shared.state
    assert state.sampling_steps == state.sampling_step == result.steps > 0
    assert live_training_objects() == ([], [])


def test_sdxl_second_encoder_is_the_webui_tower_seen_as_hf_clip(webui, host, tiny_checkpoints):
    sd_model = load_webui_model(webui, tiny_checkpoints, "sdxl")
    tower = sd_model.conditioner.embedders[1].wrapped.model
    tower_storages = {p.untyped_storage().data_ptr() for p in tower.parameters()}

    def inspect():
        with host.lend_model() as model:
            te1, te2 = model.text_encoders
            assert te1.model is sd_model.conditioner.embedders[0].wrapped.transformer
            assert (te1.name, te2.name) == ("te1", "te2")
            own = [n for n, p in te2.model.named_parameters() if p.untyped_storage().data_ptr() not in tower_storages]
            assert own == ["text_projection.weight"]  # every other weight is the tower's own tensor
            ids = torch.randint(0, 49407, (2, 77))
            ids[:, 20] = 49407
            with torch.no_grad():
                states, pooled = tower.encode(ids)
                out = te2.model(input_ids=ids, output_hidden_states=True)
            torch.testing.assert_close(out.hidden_states[-2], states[-2], rtol=1e-4, atol=1e-4)
            projection = te2.model.text_projection
            torch.testing.assert_close(projection(out.last_hidden_state[:, 20]), pooled, rtol=1e-4, atol=1e-4)
            from lora_trainer.networks import LoRANetwork

            names = {lora.lora_name for lora in LoRANetwork.from_model(model, network_dim=2).text_encoder_loras}
            assert "lora_te2_text_model_encoder_layers_0_self_attn_q_proj" in names
            assert "lora_te1_text_model_encoder_layers_0_mlp_fc1" in names

    host.run_exclusive(inspect, title="inspect")


# ------------------------------------------------------- the Lora extension

MERGE_LAYERS = {
    "sd1": [
        "diffusion_model_input_blocks_1_1_transformer_blocks_0_attn1_to_q",
        "diffusion_model_input_blocks_1_1_proj_in",
        "diffusion_model_input_blocks_1_0_in_layers_2",
        "diffusion_model_out_0",
        "transformer_text_model_encoder_layers_0_self_attn_q_proj",
        "transformer_text_model_encoder_layers_1_mlp_fc1",
        "transformer_text_model_final_layer_norm",
    ],
    "sdxl": [
        "diffusion_model_input_blocks_4_1_transformer_blocks_0_attn2_to_k",
        "diffusion_model_input_blocks_4_1_proj_in",
        "diffusion_model_input_blocks_1_0_in_layers_2",
        "0_transformer_text_model_encoder_layers_0_self_attn_q_proj",
        "1_model_transformer_resblocks_0_attn",
        "1_model_transformer_resblocks_1_mlp_c_fc",
        "1_model_ln_final",
    ],
}
# layers without a bias, to which the merged network adds one (the merge creates a Parameter)
BIAS_ADDED = {"sd1": ["diffusion_model_input_blocks_1_1_transformer_blocks_0_attn1_to_q"],
              "sdxl": ["diffusion_model_input_blocks_4_1_transformer_blocks_0_attn2_to_k"]}


def merge_a_lora(webui, sd_model, arch, filename, seed=0):
    networks = webui.networks
    networks.install_patches()
    networks.assign_network_names(sd_model)
    net = networks.random_network(sd_model, "style", str(filename), MERGE_LAYERS[arch], seed=seed,
                                  add_bias_to=BIAS_ADDED[arch])
    networks.loaded_networks.append(net)
    clean = {k: v.clone() for k, v in sd_model.state_dict().items()}
    networks.simulate_generation(sd_model)
    merged = sd_model.state_dict()
    changed = [k for k in clean if not torch.equal(clean[k], merged[k])]
    assert len(changed) >= len(MERGE_LAYERS[arch]), "the fake extension merged nothing"
    assert set(merged) - set(clean), "the merge should have created a bias"
    return net, clean


@pytest.mark.parametrize("arch", ["sd1", "sdxl"])
def test_a_merged_lora_is_out_of_the_weights_while_training_and_back_after(
        webui, host, tiny_checkpoints, dataset, tmp_path, tmp_path_factory, arch):
    expected, _ = reference(tiny_checkpoints, dataset, tmp_path_factory, arch)
    sd_model = load_webui_model(webui, tiny_checkpoints, arch)
    webui.shared.cmd_opts.lora_dir = str(tmp_path / "Lora")
    (tmp_path / "Lora").mkdir()
    net, clean = merge_a_lora(webui, sd_model, arch, tmp_path / "Lora" / "style.safetensors")
    merged_state = {k: v.clone() for k, v in sd_model.state_dict().items()}
    before = webui_fingerprint(sd_model, webui)

    train_in_webui(host, make_config(tiny_checkpoints(arch), dataset, tmp_path / "out"))

    # trained from the clean checkpoint: the same file as the standalone run
    assert_same_file(read_tensors(tmp_path / "out" / "t.safetensors"), expected)
    # handed back merged, bit for bit, marks, backups and loaded list included
    assert_same(webui_fingerprint(sd_model, webui), before)
    assert webui.networks.loaded_networks == [net]
    # the next generation finds the merge current and changes nothing
    webui.networks.simulate_generation(sd_model)
    assert_same(webui_fingerprint(sd_model, webui), before)
    # and the extension's backups still hold the clean weights
    webui.networks.loaded_networks.clear()
    webui.networks.simulate_generation(sd_model)
    restored = sd_model.state_dict()
    assert restored.keys() == clean.keys()
    assert all(torch.equal(restored[k], clean[k]) for k in clean)
    assert any(not torch.equal(merged_state[k], clean[k]) for k in clean)


def test_a_merged_lora_whose_file_the_training_rewrote_is_merged_afresh_next_time(
        webui, host, tiny_checkpoints, dataset, tmp_path):
    sd_model = load_webui_model(webui, tiny_checkpoints, "sd1")
    lora_dir = tmp_path / "Lora"
    lora_dir.mkdir()
    net, clean = merge_a_lora(webui, sd_model, "sd1", lora_dir / "t.safetensors")
    time.sleep(0.01)  # a distinct mtime for the rewritten file

    train_in_webui(host, make_config(tiny_checkpoints("sd1"), dataset, lora_dir))  # writes Lora/t.safetensors

    assert webui.networks.loaded_networks == [net]
    marked = [m for m in sd_model.modules() if getattr(m, "network_current_names", ())]
    assert marked == []  # so the extension merges again on the next generation
    now = sd_model.state_dict()
    assert all(torch.equal(now[k], clean[k]) for k in clean)
    webui.networks.simulate_generation(sd_model)
    assert any(getattr(m, "network_current_names", ()) for m in sd_model.modules())


# ------------------------------------------------------------- failures


@pytest.mark.parametrize("failure", ["exception", "cuda_oom"])
def test_the_model_is_handed_back_after_an_exception_or_out_of_memory(
        webui, host, tiny_checkpoints, dataset, tmp_path, failure):
    sd_model = load_webui_model(webui, tiny_checkpoints, "sd1")
    merge_a_lora(webui, sd_model, "sd1", tmp_path / "style.safetensors")
    before = webui_fingerprint(sd_model, webui)
    config = make_config(tiny_checkpoints("sd1"), dataset, tmp_path / "out", max_train_epochs=2,
                         gradient_checkpointing=True)

    if failure == "exception":
        def on_progress(event):
            if event.kind == "step" and event.step == 2:  # mid-epoch
                raise ValueError("boom mid-epoch")

        with pytest.raises(ValueError, match="boom") as excinfo:
            train_in_webui(host, config, on_progress=on_progress)
    else:
        calls = []
        unet = sd_model.model.diffusion_model

        def oom(module, args, output):
            calls.append(1)
            if len(calls) == 3:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")

        handle = unet.middle_block.register_forward_hook(oom)
        try:
            with pytest.raises(torch.cuda.OutOfMemoryError) as excinfo:
                train_in_webui(host, config)
        finally:
            handle.remove()
    # the LoRA and the optimizer are gone even while the exception is still held
    assert excinfo.value is not None
    assert live_training_objects() == ([], [])
    assert_same(webui_fingerprint(sd_model, webui), before)
    assert_job_closed(webui)


# -------------------------------------------------------------- refusals


@pytest.mark.parametrize("setup,message", [
    (lambda fw, m: setattr(fw.shared.cmd_opts, "lowvram", True), "--lowvram"),
    (lambda fw, m: setattr(fw.devices, "fp8", True), "FP8 weight"),
    (lambda fw, m: setattr(fw.sd_unet, "current_unet", object()), "SD Unet"),
    (lambda fw, m: setattr(m, "is_sd3", True), "SD3"),
    (lambda fw, m: setattr(fw.shared, "sd_model", None), "no checkpoint is loaded"),
])
def test_setups_that_cannot_train_are_refused_before_anything_changes(
        webui, host, tiny_checkpoints, dataset, tmp_path, setup, message):
    sd_model = load_webui_model(webui, tiny_checkpoints, "sd1")
    setup(webui, sd_model)
    before = webui_fingerprint(sd_model, webui)
    with pytest.raises(HostRefusal, match=message):
        train_in_webui(host, make_config(tiny_checkpoints("sd1"), dataset, tmp_path / "out"))
    assert_same(webui_fingerprint(sd_model, webui), before)
    assert_job_closed(webui)
    assert not (tmp_path / "out").exists()


def test_an_inpainting_unet_is_refused(webui, host, tiny_checkpoints, dataset, tmp_path):
    sd_model = load_webui_model(webui, tiny_checkpoints, "sd1")
    conv = sd_model.model.diffusion_model.input_blocks[0][0]
    sd_model.model.diffusion_model.input_blocks[0][0] = torch.nn.Conv2d(9, conv.out_channels, 3, padding=1)
    with pytest.raises(HostRefusal, match="9 input channels"):
        train_in_webui(host, make_config(tiny_checkpoints("sd1"), dataset, tmp_path / "out"))


@pytest.mark.parametrize("arch", ["sd1", "sdxl"])
def test_medvram_trains_without_evicting_the_unet_or_text_encoders(
        webui, host, tiny_checkpoints, dataset, tmp_path, tmp_path_factory, arch):
    expected, _ = reference(tiny_checkpoints, dataset, tmp_path_factory, arch)
    sd_model = load_webui_model(webui, tiny_checkpoints, arch)
    webui.shared.cmd_opts.medvram = True
    webui.lowvram.setup_for_low_vram(sd_model, use_medvram=True)
    with torch.no_grad():  # the last generation decoded an image: the VAE is the module in the GPU
        sd_model.first_stage_model.decode(torch.zeros(1, 4, 8, 8))
    assert webui.lowvram.module_in_gpu is sd_model.first_stage_model
    before = webui_fingerprint(sd_model, webui)
    webui.lowvram.moves.clear()

    train_in_webui(host, make_config(tiny_checkpoints(arch), dataset, tmp_path / "out"))  # encodes every step

    assert_same_file(read_tensors(tmp_path / "out" / "t.safetensors"), expected)
    text = sd_model.conditioner if arch == "sdxl" else sd_model.cond_stage_model
    kept = {id(sd_model.model), id(text)} | {id(m) for m in text.modules()}
    evicted = [m for action, m in webui.lowvram.moves if action == "evict" and id(m) in kept]
    assert evicted == []
    assert webui.lowvram.module_in_gpu is sd_model.first_stage_model
    assert_same(webui_fingerprint(sd_model, webui), before)


def test_token_merging_is_off_while_training_and_back_after(
        webui, host, tiny_checkpoints, dataset, tmp_path, tmp_path_factory):
    expected, _ = reference(tiny_checkpoints, dataset, tmp_path_factory, "sd1")
    sd_model = load_webui_model(webui, tiny_checkpoints, "sd1")
    assert fake_webui.apply_tome(sd_model.model.diffusion_model) > 0
    before = webui_fingerprint(sd_model, webui)
    train_in_webui(host, make_config(tiny_checkpoints("sd1"), dataset, tmp_path / "out"))
    assert_same_file(read_tensors(tmp_path / "out" / "t.safetensors"), expected)
    assert_same(webui_fingerprint(sd_model, webui), before)
    assert {type(m).__name__ for m in sd_model.modules()} >= {"ToMeBlock"}


# ------------------------------------------------------------------- jobs


def test_the_queue_lock_is_held_while_training_and_a_generation_waits(
        webui, host, tiny_checkpoints, dataset, tmp_path):
    load_webui_model(webui, tiny_checkpoints, "sd1")
    lock = webui.call_queue.queue_lock
    seen, generation = [], {}

    def generate():
        with lock:
            generation["at"] = time.monotonic()

    worker = threading.Thread(target=generate)

    def on_progress(event):
        seen.append((event.kind, lock.locked(), webui.shared.state.job))
        generation["last_event"] = time.monotonic()
        host.report(event)
        if event.kind == "step" and event.step == 1:
            worker.start()
            time.sleep(0.05)
            assert "at" not in generation  # waits behind the training

    result = train_in_webui(host, make_config(tiny_checkpoints("sd1"), dataset, tmp_path / "out"),
                            on_progress=on_progress, title="task(abc123)")
    worker.join(timeout=30)
    assert not worker.is_alive() and generation["at"] > generation["last_event"]  # got the lock after the training
    assert seen and all(locked and job == "task(abc123)" for _kind, locked, job in seen)
    assert result.steps == 4
    assert webui.progress.queued == ["task(abc123)"] and webui.progress.finished == ["task(abc123)"]
    assert webui.progress.current_task is None
    assert_job_closed(webui)


def test_a_job_started_from_inside_a_job_raises_instead_of_deadlocking(webui, host):
    other = A1111Host(log=lambda _m: None)
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
    assert outcome["result"] == "outer done"
    assert "not re-entrant" in outcome["error"] and "'outer'" in outcome["error"]
    assert_job_closed(webui)
    assert host.run_exclusive(lambda: 7, title="again") == 7  # the lock was released


def test_lend_model_outside_a_job_is_refused(webui, host, tiny_checkpoints):
    load_webui_model(webui, tiny_checkpoints, "sd1")
    with pytest.raises(RuntimeError, match="inside run_exclusive"):
        with host.lend_model():
            pass


def test_the_interrupt_button_stops_the_training_and_keeps_its_weights(
        webui, host, tiny_checkpoints, dataset, tmp_path):
    load_webui_model(webui, tiny_checkpoints, "sd1")
    stop = StopFlag()
    mirror = host.progress_callback(stop)

    def on_progress(event):
        if event.kind == "step" and event.step == 1:
            webui.shared.state.interrupt()
        mirror(event)

    result = train_in_webui(host, make_config(tiny_checkpoints("sd1"), dataset, tmp_path / "out", max_train_epochs=3),
                            on_progress=on_progress, stop=stop)
    assert result.interrupted and result.steps == 1  # the press ends the run after its step
    assert [p.name for p in result.files] == ["t-000001-interrupted.safetensors"]
    assert webui.shared.state.sampling_step == 1


def test_lora_dir_and_refresh(webui, host, tmp_path):
    webui.shared.cmd_opts.lora_dir = str(tmp_path / "my_loras")
    assert host.lora_dir() == tmp_path / "my_loras"
    webui.shared.cmd_opts.lora_dir = None
    assert host.lora_dir() == tmp_path / "models" / "Lora"

    webui.shared.cmd_opts.lora_dir = str(tmp_path / "my_loras")
    (tmp_path / "my_loras").mkdir()
    (tmp_path / "my_loras" / "new.safetensors").write_bytes(b"x")
    calls = webui.networks.list_calls
    host.refresh_loras()
    assert webui.networks.list_calls == calls + 1 and "new" in webui.networks.available_networks


def test_the_adapter_imports_without_a_webui_and_is_a_host():
    code = ("import sys, lora_trainer.hosts.a1111 as a; from lora_trainer.hosts.base import Host; "
            "assert isinstance(a.A1111Host(), Host); "
            "assert 'modules' not in sys.modules and 'networks' not in sys.modules; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_half_precision_webui_weights_train_fp32_lora_under_autocast(
        webui, host, tiny_checkpoints, dataset, tmp_path, tmp_path_factory):
    checkpoint = tiny_checkpoints("sd1")
    # the WebUI holds fp16 weights on CUDA; CPU autocast has no fp16-weight layer norms, so bf16 stands in here
    options = {"mixed_precision": "bf16", "train_batch_size": 4}
    out_ref = tmp_path_factory.mktemp("ref_fp16")
    config = make_config(checkpoint, dataset, out_ref, **options)
    train(config, load_checkpoint(checkpoint, dtype=torch.bfloat16), **QUIET)
    webui.shared.sd_model = sd_model = fake_webui.build_sd_model(checkpoint, dtype=torch.bfloat16)
    before = webui_fingerprint(sd_model, webui)
    dtypes = []

    def on_progress(event):
        if event.kind == "step" and not dtypes:
            dtypes.extend({p.dtype for p in m.parameters()} for m in live_training_objects()[0])

    result = train_in_webui(host, make_config(checkpoint, dataset, tmp_path / "out", **options), on_progress=on_progress)
    assert all(d == {torch.float32} for d in dtypes) and dtypes  # LoRA weights in fp32 over half host weights
    assert all(torch.isfinite(torch.tensor(result.losses)))
    assert_same_file(read_tensors(tmp_path / "out" / "t.safetensors"), read_tensors(out_ref / "t.safetensors"))
    assert_same(webui_fingerprint(sd_model, webui), before)


# ------------------------------------------------ opt-in: inside a real WebUI

_REAL_WEBUI_SCRIPT = r'''
import hashlib, json, os, sys, time
args = json.loads(sys.argv[1])
sys.argv = ["webui.py", "--skip-torch-cuda-test", "--use-cpu", "all", "--no-half", "--precision", "full",
            "--data-dir", args["data"], "--ckpt", args["ckpt"], "--skip-load-model-at-start", "--no-download-sd-model",
            "--skip-version-check", "--skip-prepare-environment", "--skip-install"] + args["flags"]
os.chdir(args["webui"]); sys.path.insert(0, args["webui"]); sys.path.append(args["repo"])
if args.get("open_clip_config"):
    import open_clip
    open_clip.add_model_config(args["open_clip_config"])
import webui  # noqa: F401  (the WebUI's own start-up imports)
from modules import initialize, script_callbacks
initialize.initialize()
script_callbacks.before_ui_callback()  # the Lora extension registers <lora:...> here
from modules import call_queue, processing, shared
import torch
shared.opts.live_previews_enable = False
m = shared.sd_model
networks = sys.modules["networks"]
import shutil
os.makedirs(shared.cmd_opts.lora_dir, exist_ok=True)
shutil.copy(args["lora"], os.path.join(shared.cmd_opts.lora_dir, "style.safetensors"))
networks.list_available_networks()

def generate(prompt):
    p = processing.StableDiffusionProcessingTxt2Img(
        sd_model=m, prompt=prompt, negative_prompt="", steps=2, width=64, height=64, seed=7, sampler_name="Euler",
        cfg_scale=5, do_not_save_samples=True, do_not_save_grid=True)
    with call_queue.queue_lock:
        return processing.process_images(p).images[0].tobytes()

def fingerprint():
    d = hashlib.sha256()
    t = dict(m.named_parameters(remove_duplicate=False)); t.update(dict(m.named_buffers(remove_duplicate=False)))
    for n in sorted(t):
        x = t[n].detach()
        d.update(f"{n}{x.dtype}{x.device}{x.stride()}".encode())
        d.update(x.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    mods = [(n, type(mm).__name__, mm.training, sorted(k for k in mm.__dict__ if not k.startswith("_")),
             len(mm._forward_pre_hooks), len(mm._forward_hooks), repr(getattr(mm, "network_current_names", None)),
             id(getattr(mm, "network_weights_backup", None))) for n, mm in m.named_modules()]
    flags = [(n, p.requires_grad) for n, p in m.named_parameters()]
    return [d.hexdigest(), repr(mods), repr(flags), repr([id(x) for x in networks.loaded_networks])]

out = {"plain": generate("sks, circle").hex(), "lora": generate("sks, circle <lora:style:1>").hex()}
out["merged_layers"] = sum(1 for mm in m.modules() if getattr(mm, "network_current_names", ()))
before = fingerprint()
from lora_trainer.config import from_dict
from lora_trainer.hosts.a1111 import A1111Host
from lora_trainer.training.loop import train
host = A1111Host(log=lambda line: None)
config = from_dict(args["config"])[0]
def job():
    with host.lend_model() as model:
        return train(config, model, on_progress=host.progress_callback(), log=lambda line: None)
result = host.run_exclusive(job, title="task(real)")
out["steps"] = result.steps
out["same_host"] = fingerprint() == before
out["same_lora_image"] = generate("sks, circle <lora:style:1>").hex() == out["lora"]
out["same_plain_image"] = generate("sks, circle").hex() == out["plain"]
out["lock_free"] = not call_queue.queue_lock._lock.locked()
with open(args["result"], "w") as f:
    json.dump(out, f)
sys.stdout.flush()
os._exit(0)
'''


@pytest.mark.webui
@pytest.mark.parametrize("arch,flags,extra", [
    ("sd1", [], {}),
    ("sdxl", [], {}),
    ("sdxl", [], {"gradient_checkpointing": True, "network_train_unet_only": True}),
    ("sd1", ["--medvram"], {}),
    ("sd1", ["--lowvram"], {}),
])
def test_in_a_real_webui(tmp_path, tiny_checkpoints, dataset, tmp_path_factory, arch, flags, extra):
    """Opt-in (WEBUI_DIR=<AUTOMATIC1111 v1.10 checkout with its venv>): the adapter inside the real WebUI,
    in-process on CPU. A LoRA is merged by the real Lora extension, a training runs through the adapter,
    and the WebUI's model is bit-identical afterwards (weights, flags, module tree, the extension's marks):
    the same seed gives the same image with and without the LoRA. The file matches the standalone run to
    float noise (the WebUI's attention kernels are not ours). --lowvram is refused."""
    import json
    import os

    webui_dir = os.environ.get("WEBUI_DIR", "").strip()
    python = os.path.join(webui_dir, "venv", "bin", "python")
    if not webui_dir or not os.path.isfile(python):
        pytest.skip("set WEBUI_DIR to an AUTOMATIC1111 checkout with venv/ to run")
    from pathlib import Path

    from lora_trainer.models.tiny import write_tiny_checkpoint

    expected, ref_result = reference(tiny_checkpoints, dataset, tmp_path_factory, arch, **extra)
    reference_file = ref_result.files[-1]  # the LoRA the WebUI's extension merges before the training
    written = write_tiny_checkpoint(arch, tmp_path / "ckpt" / f"tiny-{arch}.safetensors")
    options = dict(pretrained_model_name_or_path=str(written["checkpoint"]), train_data_dir=str(dataset),
                   output_dir=str(tmp_path / "out"), output_name="t", resolution="64", train_batch_size=2,
                   network_dim=4, network_alpha=2, learning_rate=5e-3, max_train_epochs=1, seed=1, device="cpu",
                   **extra)
    args = {"webui": webui_dir, "repo": str(Path(__file__).resolve().parents[1]), "data": str(tmp_path / "data"),
            "ckpt": str(written["checkpoint"]), "flags": flags, "lora": str(reference_file), "config": options,
            "result": str(tmp_path / "result.json"), "open_clip_config": str(written.get("open_clip_config") or "")}
    (tmp_path / "data").mkdir()
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", OMP_NUM_THREADS="1")
    run = subprocess.run([python, "-c", _REAL_WEBUI_SCRIPT, json.dumps(args)], capture_output=True, text=True,
                         env=env, timeout=1200)
    if "--lowvram" in flags:
        assert run.returncode != 0 and "HostRefusal" in run.stderr and "--lowvram" in run.stderr
        return
    assert run.returncode == 0, run.stderr[-4000:]
    out = json.loads((tmp_path / "result.json").read_text())
    assert out["lora"] != out["plain"] and out["merged_layers"] > 0  # the extension merged the LoRA
    assert out["steps"] == 4 and out["lock_free"]
    assert out["same_host"] and out["same_lora_image"] and out["same_plain_image"]
    written_tensors = read_tensors(tmp_path / "out" / "t.safetensors")
    assert written_tensors.keys() == expected.keys()
    assert max(float((written_tensors[k].float() - expected[k].float()).abs().max()) for k in expected) < 1e-3


def test_refresh_loras_forgets_the_cached_prompt_conditioning(webui, host, monkeypatch):
    """The WebUI caches conds by prompt text and LoRA names, not file contents: after a LoRA file is
    rewritten the same prompt must be encoded again."""
    import types

    class StableDiffusionProcessing:
        cached_c = [("sks", 20, "lt:1"), "stale cond"]
        cached_uc = [("", 20), "stale uncond"]

    module = types.ModuleType("modules.processing")
    module.StableDiffusionProcessing = StableDiffusionProcessing
    monkeypatch.setitem(sys.modules, "modules.processing", module)
    host.refresh_loras()
    assert StableDiffusionProcessing.cached_c == [None, None] and StableDiffusionProcessing.cached_uc == [None, None]
