"""Forge's VAE module interface (``backend/nn/vae.py``: ``IntegratedAutoencoderKL``) for tests,
over lora_trainer's LDM VAE: ``encode(x, regulation=None)`` returns a posterior *sample* (or
``regulation(posterior)``), ``decode(z)``, ``process_in`` / ``process_out`` with
``scaling_factor`` / ``shift_factor``."""
import torch

from lora_trainer.models import ldm_vae as ours


class IntegratedAutoencoderKL(ours.AutoencoderKL):
    def encode(self, x, regulation=None):
        posterior = ours.LatentDistribution(self.quant_conv(self.encoder(x)))
        if regulation is not None:
            return regulation(posterior)
        return posterior.mean + posterior.std * torch.randn(posterior.mean.shape).to(device=x.device)

    def decode(self, z):
        return self.decoder(self.post_quant_conv(z))

    def process_in(self, latent):
        return (latent - self.shift_factor) * self.scaling_factor

    def process_out(self, latent):
        return (latent / self.scaling_factor) + self.shift_factor


def forgeify(vae, scaling_factor):
    vae.__class__ = IntegratedAutoencoderKL
    vae.scaling_factor = float(scaling_factor)
    vae.shift_factor = 0.0
    return vae
