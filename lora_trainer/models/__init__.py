"""Model loading and the LDM-layout networks behind :class:`~lora_trainer.models.base.DiffusionModel`.

Submodules are imported on use (``from lora_trainer.models.standalone import
load_checkpoint``): importing the package must stay cheap inside a WebUI.
"""
