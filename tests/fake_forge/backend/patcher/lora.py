"""Forge's LoRA merge (``backend/patcher/lora.py``: ``LoraLoader``), re-written for tests.

``refresh(lora_patches)`` is what Forge runs each time it loads a patcher's model:
when the set of patches differs from what is merged (``loaded_hash``, built from
the patch *keys*: file name, strengths), it first puts back every clean weight
it backed up, then for every patched key backs up the current Parameter
(``weight.to(offload_device)``: the same object when it already lives there) and
sets a **new** Parameter holding the merged weight (``requires_grad=False``). All
under ``torch.inference_mode()``. The merge stays in the model until the next
refresh with other patches.
"""
import torch

from backend import utils


@torch.inference_mode()
def merge_lora_to_weight(patches, weight):
    merged = weight.to(torch.float32, copy=True)
    for strength, value, strength_model, offset, function in patches:
        kind, (up, down, alpha, mid, dora) = value
        assert kind == "lora" and mid is None and dora is None, "the stand-in merges plain LoRA patches only"
        rank = down.shape[0]
        scale = (alpha / rank) if alpha is not None else 1.0
        delta = up.flatten(1).float() @ down.flatten(1).float()
        merged += (strength * scale) * delta.reshape(merged.shape)
    return merged.to(weight.dtype)


class LoraLoader:
    def __init__(self, model):
        self.model = model
        self.backup = {}
        self.online_backup = []
        self.loaded_hash = str([])
        self.refreshes = 0  # merges actually done, for tests

    @torch.inference_mode()
    def refresh(self, lora_patches, offload_device=torch.device("cpu"), force_refresh=False):
        hashes = str(list(lora_patches.keys()))
        if hashes == self.loaded_hash and not force_refresh:
            return
        self.refreshes += 1
        all_patches = {}
        for (_filename, _strength, _strength_model, online_mode), patches in lora_patches.items():
            for key, current in patches.items():
                all_patches[(key, online_mode)] = all_patches.get((key, online_mode), []) + current
        for key, weight in self.backup.items():
            if not isinstance(weight, torch.nn.Parameter):
                weight = torch.nn.Parameter(weight, requires_grad=False)
            utils.set_attr_raw(self.model, key, weight)
        self.backup = {}
        for (key, _online), patches in all_patches.items():
            weight = utils.get_attr(self.model, key)
            assert isinstance(weight, torch.nn.Parameter), key
            if key not in self.backup:
                self.backup[key] = weight.to(device=offload_device)
            merged = merge_lora_to_weight(patches, weight)
            utils.set_attr_raw(self.model, key, torch.nn.Parameter(merged, requires_grad=False))
        self.loaded_hash = hashes
