"""kohya-format LoRA / LoCon networks: the modules, their names, files and metadata."""
from .io import epoch_file_name, last_file_name, load_network, prune_old_epochs, prune_old_steps, save_network, step_file_name
from .lora import LoRAModule
from .metadata import add_hashes, checkpoint_metadata, minimum_metadata, modelspec_metadata, ss_metadata
from .naming import find_targets, kohya_name_map
from .network import LoRANetwork

__all__ = [
    "LoRAModule",
    "LoRANetwork",
    "add_hashes",
    "checkpoint_metadata",
    "epoch_file_name",
    "find_targets",
    "kohya_name_map",
    "last_file_name",
    "load_network",
    "minimum_metadata",
    "modelspec_metadata",
    "prune_old_epochs",
    "prune_old_steps",
    "save_network",
    "ss_metadata",
    "step_file_name",
]
