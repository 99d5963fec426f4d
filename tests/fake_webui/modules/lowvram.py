"""The fake WebUI's --medvram machinery.

As the WebUI does, the big parts (UNet wrapper, text conditioning, VAE) get a
forward pre-hook (the VAE: wrapped encode/decode) that moves the part to the
GPU and evicts whichever part was there before (``module_in_gpu``). Every move
is recorded in ``moves`` as ``(action, module)`` so tests can see what was
evicted while the trainer held the model (on a CPU-only machine the moves
themselves are no-ops).
"""
import torch

from modules import devices

module_in_gpu = None
cpu = torch.device("cpu")
moves = []


def send_everything_to_cpu():
    global module_in_gpu
    if module_in_gpu is not None:
        moves.append(("evict", module_in_gpu))
        module_in_gpu.to(cpu)
    module_in_gpu = None


def setup_for_low_vram(sd_model, use_medvram=True):
    if getattr(sd_model, "lowvram", False):
        return
    sd_model.lowvram = True
    parents = {}

    def send_me_to_gpu(module, _inputs=None):
        global module_in_gpu
        module = parents.get(module, module)
        if module_in_gpu is module:
            return
        if module_in_gpu is not None:
            moves.append(("evict", module_in_gpu))
            module_in_gpu.to(cpu)
        moves.append(("load", module))
        module.to(devices.device)
        module_in_gpu = module

    vae = sd_model.first_stage_model
    encode, decode = vae.encode, vae.decode

    def encode_wrap(x):
        send_me_to_gpu(vae)
        return encode(x)

    def decode_wrap(z):
        send_me_to_gpu(vae)
        return decode(z)

    vae.encode, vae.decode = encode_wrap, decode_wrap
    vae.register_forward_pre_hook(send_me_to_gpu)
    sd_model.model.register_forward_pre_hook(send_me_to_gpu)
    if hasattr(sd_model, "conditioner"):
        sd_model.conditioner.register_forward_pre_hook(send_me_to_gpu)
    else:
        # as the WebUI: the hook sits on the raw text encoder, the part moved is its holder
        holder = sd_model.cond_stage_model.wrapped
        inner = getattr(holder, "transformer", None) or holder.model
        inner.register_forward_pre_hook(send_me_to_gpu)
        parents[inner] = holder
    send_everything_to_cpu()
