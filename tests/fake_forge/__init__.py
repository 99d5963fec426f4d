"""A fake Forge (lllyasviel/stable-diffusion-webui-forge, the 2024 ``backend`` rewrite) for the
Forge host adapter's tests. Written for lora_trainer; no Forge code.

It reproduces, at tiny size and on the CPU, what Forge does that a trainer trips over:

* ``backend/``: models built under ``torch.inference_mode()`` with Forge's layer classes
  (a ``Linear`` that is no ``torch.nn.Linear`` subclass; weights are inference tensors
  with ``requires_grad=True``); an LDM UNet whose transformer blocks add residuals in
  place and whose checkpoint flags raise ``NotImplementedError``; ``ModelPatcher`` /
  ``LoraLoader`` keyed by ``named_parameters()`` that merge LoRAs into new Parameters
  when the memory manager loads them; ``memory_management`` with ``load_models_gpu``,
  clone unloading, ``soft_empty_cache`` and a switch to simulate CPU swap; engines with
  ``forge_objects``; ``loader.forge_loader`` building all that from a tiny checkpoint
  written by ``lora_trainer.models.tiny`` (the same file the CLI trains on);
* ``modules/``: ``shared`` (``sd_model`` a module property), ``sd_models``
  (``FakeInitialModel`` until ``forge_model_reload()``), ``call_queue``, ``progress``,
  ``paths``, ``shared_state``;
* ``modules_forge/main_thread.py``: Forge's task loop (tests run it in a thread);
* ``sd_forge_lora/networks.py``: the LoRA extension (``lru_cache`` by file name,
  ``current_lora_hash``), imported as the top-level ``networks``.

:func:`install` puts these on ``sys.path`` (through pytest's ``monkeypatch``);
:func:`uninstall` stops the main loop and removes them from ``sys.modules``.
"""
from __future__ import annotations

import sys
import types
from pathlib import Path

HERE = Path(__file__).resolve().parent
_TOP = ("modules", "modules_forge", "backend", "networks")


def _fake_module_names():
    return [n for n in sys.modules if n.split(".")[0] in _TOP]


def install(monkeypatch, lora_dir, models_path=None) -> types.SimpleNamespace:
    """Make ``import modules.shared`` / ``backend.memory_management`` / ``networks`` find the fakes."""
    for name in _fake_module_names():
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(HERE / "sd_forge_lora"))
    monkeypatch.syspath_prepend(str(HERE))
    import networks
    from backend import memory_management
    from modules import call_queue, paths, progress, sd_models, shared
    from modules_forge import main_thread

    shared.cmd_opts.lora_dir = str(lora_dir)
    paths.models_path = str(models_path or Path(lora_dir).parent)
    return types.SimpleNamespace(shared=shared, sd_models=sd_models, call_queue=call_queue, progress=progress,
                                 paths=paths, memory_management=memory_management, main_thread=main_thread,
                                 networks=networks, loop_thread=None)


def start_main_thread(forge) -> None:
    """Run Forge's main-thread loop (in Forge: the process's main thread) in a thread of its own."""
    forge.loop_thread = forge.main_thread.start()


def uninstall(forge=None) -> None:
    main_thread = sys.modules.get("modules_forge.main_thread")
    if main_thread is not None:
        main_thread.stop(getattr(forge, "loop_thread", None))
    for name in _fake_module_names():
        del sys.modules[name]


def load(forge, checkpoint, **loading):
    """Pick ``checkpoint`` (as Forge's dropdown does) and load it (as a generation would)."""
    forge.sd_models.select_checkpoint(checkpoint, **loading)
    engine, _ = forge.sd_models.forge_model_reload()
    return engine
