"""Forge's ``VAE`` wrapper (``backend/patcher/vae.py``) for tests: ``encode`` takes images in
[0, 1] channels-last, maps them to [-1, 1] and loads the VAE through the memory manager first."""
import torch

from backend import memory_management
from backend.patcher.base import ModelPatcher


class VAE:
    def __init__(self, model):
        self.first_stage_model = model.eval()
        self.device = memory_management.vae_device()
        self.patcher = ModelPatcher(model, load_device=self.device,
                                    offload_device=memory_management.vae_offload_device())

    @torch.inference_mode()
    def encode(self, pixel_samples):
        memory_management.load_models_gpu([self.patcher])
        pixels = pixel_samples.movedim(-1, 1)
        return self.first_stage_model.encode(2.0 * pixels - 1.0)

    @torch.inference_mode()
    def decode(self, samples):
        memory_management.load_models_gpu([self.patcher])
        out = self.first_stage_model.decode(samples)
        return torch.clamp((out + 1.0) / 2.0, 0.0, 1.0).movedim(1, -1)
