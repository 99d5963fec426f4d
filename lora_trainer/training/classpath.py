"""kohya's "any module.Class" escape hatch for optimizers and schedulers."""
from __future__ import annotations

import importlib
from types import ModuleType


def resolve_class(dotted: str, default_module: ModuleType, what: str, known: tuple[str, ...]):
    """``Name`` from ``default_module``, or ``package.module.Name`` imported; a clear error otherwise."""
    if "." not in dotted:
        module, name = default_module, dotted
    else:
        module_name, _, name = dotted.rpartition(".")
        module = importlib.import_module(module_name)
    cls = getattr(module, name, None)
    if cls is None:
        raise ValueError(f"unknown {what} {dotted!r}: not one of {', '.join(known)} "
                         f"nor a class in {getattr(module, '__name__', module)}")
    return cls
