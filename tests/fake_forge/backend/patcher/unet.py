"""Forge's ``UnetPatcher`` for tests: a ``ModelPatcher`` over the ``KModel``."""
from backend.patcher.base import ModelPatcher


class UnetPatcher(ModelPatcher):
    pass
