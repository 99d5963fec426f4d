"""The tab's Dataset section: WD14 tagging and the tag editor.

Placeholder until the tag editor lands.
"""
from __future__ import annotations


def build(gr, logic) -> None:
    """Lay the Dataset section out inside the current Blocks context and wire its events."""
    gr.Markdown("Tag editor: coming soon.", elem_id="lora_trainer_dataset_placeholder")
