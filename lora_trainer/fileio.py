"""Atomic file writes, shared by every writer of user-visible files (LoRAs, captions, configs).

Kept free of torch so the tagging and dataset tools can import it cheaply.
"""
from __future__ import annotations

import os
import secrets
from typing import Union

PathLike = Union[str, "os.PathLike[str]"]


def _fsync_dir(directory: str) -> None:
    # makes the rename itself durable; not possible (nor needed) on Windows
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that ``path`` is never seen half-written."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    # hidden, and not ending in .safetensors / .txt, so no model list or dataset scan picks it up
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(directory)
