"""The fake WebUI's shared globals: the loaded model, job state, options and command line."""
import argparse
import types

from modules import shared_state

cmd_opts = argparse.Namespace(lowvram=False, medvram=False, medvram_sdxl=False, lora_dir=None)
opts = types.SimpleNamespace(fp8_storage="Disable", lora_functional=False)
state = shared_state.State()
sd_model = None
