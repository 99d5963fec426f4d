"""The LoRA Trainer tab: one Gradio Blocks for AUTOMATIC1111, Forge and the standalone app.

* :mod:`.values`: the form (one control per TrainConfig field) and its conversions; no Gradio.
* :mod:`.render`: HTML of the progress, files, queue and estimate panels; no Gradio.
* :mod:`.logic`: what each button does, against the job manager; no Gradio.
* :mod:`.tab`: :func:`build_tab` wires them to Gradio components (3.41 and 4.x).
* :mod:`.app`: ``python -m lora_trainer ui``: the tab outside the WebUI.

Importing this package does not import Gradio; ``build_tab`` does.
"""
from __future__ import annotations

__all__ = ["build_tab"]


def __getattr__(name):
    if name == "build_tab":
        from .tab import build_tab

        return build_tab
    raise AttributeError(name)
