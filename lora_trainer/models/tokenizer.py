"""CLIP's BPE tokenizer, built offline.

Every Stable Diffusion text encoder (SD1's CLIP-L, SD2's OpenCLIP ViT-H, SDXL's
CLIP-L and bigG) uses the same 49408-token vocabulary: OpenAI's byte-level BPE.
Its only source we can reach without the model hub is the merges file that
ships inside the ``open_clip_torch`` wheel, so we rebuild the Hugging Face
tokenizer files (as published for ``openai/clip-vit-large-patch14``) from it.

The vocabulary follows OpenAI's ``SimpleTokenizer``: the 256 byte symbols, the
same with ``</w>``, one token per merge (the first 49152 - 256 - 2 of them),
then ``<|startoftext|>`` and ``<|endoftext|>``; hence ids 49406 / 49407.
"""
from __future__ import annotations

import gzip
import importlib.util
import json
import os
import tempfile
from pathlib import Path
from typing import Optional

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
VOCAB_SIZE = 49408
MODEL_MAX_LENGTH = 77
# OpenAI's vocabulary budget: 49152 BPE entries of which 256 + 2 are not merges
N_MERGES = 49152 - 256 - 2
# SDXL's second tokenizer (laion bigG) pads with "!", which is id 0
SDXL_TE2_PAD_TOKEN = "!"

_BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")


def clip_vocab_path() -> Path:
    """The gzipped BPE merges file shipped with open_clip_torch."""
    # find_spec does not import the package: open_clip's __init__ needs torchvision
    spec = importlib.util.find_spec("open_clip")
    if spec is not None:
        for location in spec.submodule_search_locations or []:
            path = Path(location) / _BPE_FILE
            if path.is_file():
                return path
    raise FileNotFoundError(
        f"CLIP's BPE vocabulary ({_BPE_FILE}) was not found. It ships with open_clip; "
        "install it without its dependencies: pip install --no-deps open_clip_torch"
    )


def _byte_symbols() -> list[str]:
    """OpenAI's byte -> printable-unicode table, as an ordered list of symbols.

    Printable Latin-1 bytes stand for themselves; the others are moved to
    256 + n so that no symbol is whitespace or a control character. The order
    (printable first, in byte order, then the rest) is the vocabulary's order.
    """
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    symbols = [chr(b) for b in printable]
    extra = 0
    for b in range(256):
        if b not in printable:
            symbols.append(chr(256 + extra))
            extra += 1
    return symbols


def _read_merges(bpe_path: Path) -> list[str]:
    lines = gzip.open(bpe_path).read().decode("utf-8").split("\n")
    # the first line is a version header
    merges = lines[1 : N_MERGES + 1]
    if len(merges) != N_MERGES or any(len(m.split(" ")) != 2 for m in merges):
        raise ValueError(f"{bpe_path} does not look like CLIP's BPE merges file")
    return merges


def build_vocab(merges: list[str]) -> dict[str, int]:
    symbols = _byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols]
    tokens += [m.replace(" ", "") for m in merges]
    tokens += [BOS_TOKEN, EOS_TOKEN]
    vocab = {token: i for i, token in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE:
        raise ValueError(f"built a CLIP vocabulary of {len(vocab)} tokens, expected {VOCAB_SIZE}")
    return vocab


def write_tokenizer_files(directory, pad_token: Optional[str] = None) -> Path:
    """Write a ``CLIPTokenizer.from_pretrained``-loadable folder.

    ``pad_token`` None pads with ``<|endoftext|>`` (SD1/SD2/SDXL first
    encoder); ``"!"`` gives SDXL's second tokenizer.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    merges = _read_merges(clip_vocab_path())
    vocab = build_vocab(merges)
    pad = pad_token or EOS_TOKEN
    if pad not in vocab:
        raise ValueError(f"pad token {pad!r} is not in CLIP's vocabulary")

    special = {"bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN, "unk_token": EOS_TOKEN, "pad_token": pad}
    # Plain strings and long-standing keys only: read alike by transformers 4.30
    # (slow, pure-python CLIPTokenizer) and 5.x (tokenizers-backed).
    config = dict(
        special,
        tokenizer_class="CLIPTokenizer",
        model_max_length=MODEL_MAX_LENGTH,
        do_lower_case=True,
        add_prefix_space=False,
        errors="replace",
    )
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    (directory / "special_tokens_map.json").write_text(json.dumps(special, indent=2), encoding="utf-8")
    return directory


def _cache_dir(pad_token: Optional[str]) -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lora_trainer"
    return root / ("clip_tokenizer" if pad_token is None else "clip_tokenizer_pad_excl")


def _ensure_cached(pad_token: Optional[str]) -> Path:
    target = _cache_dir(pad_token)
    if all((target / name).is_file() for name in _FILES):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # build beside the target and rename, so a concurrent process never loads
    # a half-written folder
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    write_tokenizer_files(tmp, pad_token)
    try:
        tmp.rename(target)
    except OSError:  # another process won the race, or a stale partial folder
        for name in _FILES:
            (tmp / name).unlink()
        tmp.rmdir()
        if not all((target / name).is_file() for name in _FILES):
            write_tokenizer_files(target, pad_token)
    return target


def load_clip_tokenizer(directory=None, pad_token: Optional[str] = None):
    """A ``transformers.CLIPTokenizer``: from ``directory`` if given, else from
    files built into ``~/.cache/lora_trainer``.

    ``pad_token`` overrides the folder's pad token (``"!"`` for SDXL's second
    encoder); None keeps the folder's (``<|endoftext|>`` for built folders).
    """
    from transformers import CLIPTokenizer

    if pad_token is not None and pad_token != SDXL_TE2_PAD_TOKEN and directory is None:
        raise ValueError(f"only {SDXL_TE2_PAD_TOKEN!r} or None are cached pad tokens, got {pad_token!r}")
    folder = Path(directory) if directory is not None else _ensure_cached(pad_token)
    kwargs = {} if pad_token is None else {"pad_token": pad_token}
    return CLIPTokenizer.from_pretrained(str(folder), **kwargs)
