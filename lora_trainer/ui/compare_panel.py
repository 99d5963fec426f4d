"""The tab's Compare section: epoch grid through the host's comparison runner, suggestion, Publish.

Placeholder until the comparison UI lands.
"""
from __future__ import annotations


def build(gr, logic) -> None:
    """Lay the Compare section out inside the current Blocks context and wire its events."""
    gr.Markdown("Epoch comparison: coming soon.", elem_id="lora_trainer_compare_placeholder")
