"""Which host are we running in: AUTOMATIC1111, Forge, or none (standalone)?

Cheap on purpose: it looks at ``sys.modules`` and asks the import system whether a
package *exists* (``importlib.util.find_spec`` on top-level names only, which
imports nothing); it never imports the WebUI, torch or gradio.

- Forge (lllyasviel's, and its forks reForge / Forge Classic) ships a top-level
  ``modules_forge`` package beside the WebUI's ``modules``; the 2024-08 rewrite also
  has ``backend`` (new model code, gradio 4), the early-2024 one ``ldm_patched``.
- AUTOMATIC1111 has ``modules`` with ``script_callbacks`` / ``shared`` and no
  ``modules_forge``.
- ``LORA_TRAINER_HOST=a1111|forge|standalone`` overrides the detection.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from typing import Callable, Mapping, Optional

A1111 = "a1111"
FORGE = "forge"
STANDALONE = "standalone"
KINDS = (A1111, FORGE, STANDALONE)

# modules the WebUI imports early; any of them in sys.modules means we run inside one
_WEBUI_MARKERS = ("modules.script_callbacks", "modules.shared", "modules.paths_internal", "modules.launch_utils")


def _exists(name: str, find_spec: Callable, modules: Mapping) -> bool:
    """Top-level package ``name`` is loaded or can be found (nothing is imported)."""
    if name in modules:
        return True
    try:
        return find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _webui_file(find_spec: Callable, modules: Mapping) -> bool:
    """A WebUI ``modules`` package (with script_callbacks.py) is importable."""
    module = modules.get("modules")
    locations = list(getattr(module, "__path__", []) or []) if module is not None else None
    if locations is None:
        try:
            spec = find_spec("modules")
        except (ImportError, ValueError):
            return False
        if spec is None:
            return False
        locations = list(spec.submodule_search_locations or [])
    return any(os.path.isfile(os.path.join(loc, "script_callbacks.py")) for loc in locations)


def detect_host(
    *,
    modules: Optional[Mapping] = None,
    find_spec: Callable = importlib.util.find_spec,
    environ: Optional[Mapping[str, str]] = None,
) -> str:
    """``"forge"``, ``"a1111"`` or ``"standalone"`` (no WebUI). Arguments are for tests."""
    modules = sys.modules if modules is None else modules
    environ = os.environ if environ is None else environ
    forced = environ.get("LORA_TRAINER_HOST", "").strip().lower()
    if forced in KINDS:
        return forced
    in_webui = any(name in modules for name in _WEBUI_MARKERS) or _webui_file(find_spec, modules)
    if not in_webui:
        return STANDALONE
    if _exists("modules_forge", find_spec, modules):
        return FORGE
    return A1111


def forge_flavour(*, modules: Optional[Mapping] = None, find_spec: Callable = importlib.util.find_spec) -> Optional[str]:
    """Inside Forge: ``"backend"`` (2024-08 rewrite: its own model code, gradio 4) or
    ``"ldm_patched"`` (early 2024, gradio 3); None when neither is found."""
    modules = sys.modules if modules is None else modules
    if _exists("backend", find_spec, modules) and _exists("modules_forge", find_spec, modules):
        return "backend"
    if _exists("ldm_patched", find_spec, modules):
        return "ldm_patched"
    return None
