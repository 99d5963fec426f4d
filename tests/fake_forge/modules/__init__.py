"""A minimal stand-in for Forge's ``modules`` package, for tests only (no Forge code): the names the
Forge host adapter reads. ``tests/fake_forge/__init__.py`` puts it on ``sys.path``."""
