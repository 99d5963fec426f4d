"""Forge's memory manager (``backend/memory_management.py``), re-written for tests on the CPU.

``load_models_gpu(patchers)`` keeps a list of ``LoadedModel`` s, most recent first.
Loading a patcher first unloads its *clones* (other patchers of the same model,
without moving it), then moves the model to its load device, applies its object
patches and merges its LoRA patches (``refresh_loras``). ``model_unload`` undoes
the object patches and moves the model to its offload device.

Test switches and records:

* ``simulate_cpu_swap``: the next loads do not fit: the model stays where it is,
  its layers are switched to per-call weight casting (``parameters_manual_cast``)
  and the ``LoadedModel`` is marked ``model_accelerated``, as Forge's CPU swap;
* ``load_calls`` (the patchers of each call), ``soft_empty_cache_calls``.
"""
import torch

cpu = torch.device("cpu")
current_loaded_models = []
simulate_cpu_swap = False
load_calls = []
soft_empty_cache_calls = 0
signal_empty_cache = False


def get_torch_device():
    return cpu


def unet_offload_device():
    return cpu


def text_encoder_device():
    return cpu


def text_encoder_offload_device():
    return cpu


def vae_device():
    return cpu


def vae_offload_device():
    return cpu


def module_size(module):
    return sum(p.numel() * p.element_size() for p in module.parameters())


class LoadedModel:
    def __init__(self, model):
        self.model = model
        self.device = model.load_device
        self.model_accelerated = False

    def model_load(self, swap=False):
        self.real_model = self.model.forge_patch_model(None if swap else self.device)
        self.model.current_device = self.device
        if swap:
            for m in self.real_model.modules():
                if hasattr(m, "parameters_manual_cast"):
                    m.prev_parameters_manual_cast = m.parameters_manual_cast
                    m.parameters_manual_cast = True
            self.model_accelerated = True
        self.model.refresh_loras()
        return self.real_model

    def model_unload(self, avoid_model_moving=False):
        if self.model_accelerated:
            for m in self.real_model.modules():
                if hasattr(m, "prev_parameters_manual_cast"):
                    m.parameters_manual_cast = m.prev_parameters_manual_cast
                    del m.prev_parameters_manual_cast
            self.model_accelerated = False
        self.model.forge_unpatch_model(None if avoid_model_moving else self.model.offload_device)

    def __eq__(self, other):
        return self.model is other.model


def unload_model_clones(model):
    for index in range(len(current_loaded_models) - 1, -1, -1):
        if model.is_clone(current_loaded_models[index].model):
            current_loaded_models.pop(index).model_unload(avoid_model_moving=True)


def load_models_gpu(models, memory_required=0, hard_memory_preservation=0):
    load_calls.append(list(models))
    for model in models:
        loaded = LoadedModel(model)
        if loaded in current_loaded_models:
            current_loaded_models.insert(0, current_loaded_models.pop(current_loaded_models.index(loaded)))
            continue
        unload_model_clones(model)
        loaded.model_load(swap=simulate_cpu_swap)
        current_loaded_models.insert(0, loaded)


def load_model_gpu(model):
    return load_models_gpu([model])


def soft_empty_cache(force=False):
    global soft_empty_cache_calls, signal_empty_cache
    soft_empty_cache_calls += 1
    signal_empty_cache = False


def unload_all_models():
    while current_loaded_models:
        current_loaded_models.pop().model_unload()
