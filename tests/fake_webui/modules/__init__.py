"""A minimal stand-in for the AUTOMATIC1111 WebUI's ``modules`` package, for tests only.

Written for lora_trainer's tests (no WebUI code): it has just the names the
A1111 host adapter reads, with the behaviour that matters to it (a queue lock
that is not re-entrant, ``shared.state`` with begin/end/interrupt, lowvram-style
forward hooks that move modules). ``tests/fake_webui/__init__.py`` puts it on
``sys.path``.
"""
