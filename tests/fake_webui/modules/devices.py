"""Devices and dtypes of the fake WebUI (CPU, float32 unless a test says otherwise)."""
import torch

cpu = torch.device("cpu")
device = torch.device("cpu")
fp8 = False
dtype = torch.float32
dtype_vae = torch.float32
dtype_unet = torch.float32
unet_needs_upcast = False
gc_calls = 0


def torch_gc():
    global gc_calls
    gc_calls += 1
