"""The fake Forge's checkpoint state (``modules/sd_models.py``): ``model_data.sd_model`` is a
``FakeInitialModel`` until ``forge_model_reload()`` loads the checkpoint named by
``model_data.forge_loading_parameters`` (what Forge's checkpoint dropdown sets)."""
import os

import torch


class CheckpointInfo:
    def __init__(self, filename):
        self.filename = str(filename)
        self.name = os.path.basename(self.filename)
        self.hash = "0badcafe"
        self.sha256 = "ab" * 32
        self.shorthash = self.sha256[:10]

    def calculate_shorthash(self):
        return self.shorthash


class FakeInitialModel:
    def __init__(self):
        self.cond_stage_model = None
        self.chunk_length = 75


class SdModelData:
    def __init__(self):
        self.sd_model = FakeInitialModel()
        self.forge_loading_parameters = {}
        self.forge_hash = ""

    def get_sd_model(self):
        return self.sd_model

    def set_sd_model(self, value):
        self.sd_model = value


model_data = SdModelData()
reload_calls = 0


def select_checkpoint(filename, **extra):
    """What picking a checkpoint in Forge's dropdown does: nothing loads until a job needs it."""
    model_data.forge_loading_parameters = dict(checkpoint_info=CheckpointInfo(filename), **extra)


@torch.inference_mode()
def forge_model_reload():
    global reload_calls
    current_hash = str(model_data.forge_loading_parameters)
    if model_data.forge_hash == current_hash:
        return model_data.sd_model, False
    reload_calls += 1
    from backend import loader, memory_management

    if model_data.sd_model:
        model_data.sd_model = None
        memory_management.unload_all_models()
    checkpoint_info = model_data.forge_loading_parameters["checkpoint_info"]
    if checkpoint_info is None:
        raise ValueError("You do not have any model! Please download at least one model in [models/Stable-diffusion].")
    sd_model = loader.forge_loader(checkpoint_info.filename,
                                   **{k: v for k, v in model_data.forge_loading_parameters.items() if k == "dtype"})
    sd_model.sd_checkpoint_info = checkpoint_info
    sd_model.filename = checkpoint_info.filename
    sd_model.sd_model_hash = checkpoint_info.calculate_shorthash()
    model_data.set_sd_model(sd_model)
    model_data.forge_hash = current_hash
    return sd_model, True
