"""Forge's ``ModelPatcher`` (``backend/patcher/base.py``), re-written for tests.

A patcher wraps one model (many clones may share it, and share its
``model.lora_loader``). ``add_patches`` keeps the patches whose key is one of
``model.named_parameters()`` (the walk Forge does), keyed by
``(filename, strength_patch, strength_model, online_mode)``; they are merged
into the weights only when the memory manager loads the patcher
(``refresh_loras``). ``object_patches`` replace attributes of the model while
it is loaded (``forge_patch_model`` / ``forge_unpatch_model``).
"""
import copy

import torch

from backend import utils
from backend.patcher.lora import LoraLoader


class ModelPatcher:
    def __init__(self, model, load_device, offload_device, size=0, current_device=None, **kwargs):
        self.size = size
        self.model = model
        self.lora_patches = {}
        self.object_patches = {}
        self.object_patches_backup = {}
        self.model_options = {"transformer_options": {}}
        self.load_device = load_device
        self.offload_device = offload_device
        if not hasattr(model, "lora_loader"):
            model.lora_loader = LoraLoader(model)
        self.lora_loader = model.lora_loader
        self.current_device = offload_device if current_device is None else current_device

    def clone(self):
        n = type(self).__new__(type(self))
        ModelPatcher.__init__(n, self.model, self.load_device, self.offload_device, self.size, self.current_device)
        n.lora_patches = self.lora_patches.copy()
        n.object_patches = self.object_patches.copy()
        n.model_options = copy.deepcopy(self.model_options)
        return n

    def is_clone(self, other):
        return hasattr(other, "model") and self.model is other.model

    def add_patches(self, *, filename, patches, strength_patch=1.0, strength_model=1.0, online_mode=False):
        identifier = (filename, strength_patch, strength_model, online_mode)
        model_keys = set(k for k, _ in self.model.named_parameters())
        accepted, these = set(), {}
        for key, value in patches.items():
            if key in model_keys:
                accepted.add(key)
                these.setdefault(key, []).append([strength_patch, value, strength_model, None, None])
        self.lora_patches[identifier] = these
        return accepted

    def refresh_loras(self):
        self.lora_loader.refresh(lora_patches=self.lora_patches, offload_device=self.offload_device)

    def model_patches_to(self, device):
        pass

    def model_dtype(self):
        for p in self.model.parameters():
            return p.dtype
        return torch.float32

    def forge_patch_model(self, target_device=None):
        for key, item in self.object_patches.items():
            old = utils.get_attr(self.model, key)
            if key not in self.object_patches_backup:
                self.object_patches_backup[key] = old
            utils.set_attr_raw(self.model, key, item)
        if target_device is not None:
            self.model.to(target_device)
            self.current_device = target_device
        return self.model

    def forge_unpatch_model(self, target_device=None):
        if target_device is not None:
            self.model.to(target_device)
            self.current_device = target_device
        for key in list(self.object_patches_backup):
            utils.set_attr_raw(self.model, key, self.object_patches_backup[key])
        self.object_patches_backup = {}
