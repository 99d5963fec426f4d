"""The fake Forge's shared globals. As in Forge, ``sd_model`` is a property of the module (its class
is swapped) that reads ``sd_models.model_data``: a ``FakeInitialModel`` until something loads."""
import argparse
import sys
import types

from modules import shared_state

cmd_opts = argparse.Namespace(lora_dir=None, api=False, nowebui=False, api_auth=None)
opts = types.SimpleNamespace(sd_lora="", forge_unet_storage_dtype="Automatic")
state = shared_state.State()


class Shared(type(sys.modules[__name__])):
    @property
    def sd_model(self):
        from modules import sd_models

        return sd_models.model_data.get_sd_model()

    @sd_model.setter
    def sd_model(self, value):
        from modules import sd_models

        sd_models.model_data.set_sd_model(value)


sys.modules[__name__].__class__ = Shared
