"""Epoch comparison: which saved epoch of a LoRA to release.

* :mod:`.xyz`: find a LoRA family (``NAME-000001`` ... ``NAME``) and build the
  WebUI's X/Y/Z plot for it (prompt, Prompt S/R values, script arguments);
* :mod:`.candidate`: from per-epoch images at the same seeds, suggest the epoch
  one after the change between epochs settles, with the reason in words;
* :mod:`.publish`: copy the chosen epoch to its release name (metadata and
  preview beside it);
* :mod:`.prompts`: kohya's sample-prompt file syntax (``--n``, ``--w``, ...).

Nothing here imports the WebUI; :mod:`lora_trainer.hosts.a1111_compare` runs a
comparison inside it.
"""
