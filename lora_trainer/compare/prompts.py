"""kohya's sample-prompt files (``--sample_prompts``), read as sd-scripts reads them.

A ``.txt`` file holds one prompt per line; empty lines and lines *starting* with
``#`` are skipped (kohya tests the raw line's first character, so an indented
``#`` is a prompt). Options follow the prompt, each introduced by `` --``
(space, two dashes)::

    masterpiece, 1girl, sks --n lowres, bad hands --w 512 --h 768 --d 42 --s 28 --l 7.5 --ss euler_a

=========  ==================  ======================  =====================================
option     key                 kohya's default         notes
=========  ==================  ======================  =====================================
``--n``    negative_prompt     ""                      the rest of that option, commas and all
``--w``    width               512                     rounded down to a multiple of 8, >= 64
``--h``    height              512                     same
``--d``    seed                random                  an integer
``--s``    steps               30                      clamped to 1..1000
``--l``    cfg_scale           7.5                     digits and dots
``--ss``   sampler             the run's sample_sampler (default ``ddim``)
``--cn``   controlnet_image    none                    kept, not used here
=========  ==================  ======================  =====================================

Option letters are case-insensitive and matched at the start of the option, as
kohya's ``re.match`` does (so ``--w 512px`` is width 512). An option kohya does
not know is ignored by kohya; here it is kept in :attr:`SamplePrompt.ignored`
so a caller can warn. A value kohya cannot convert (``--l 1.2.3``) is skipped
with a warning, as kohya logs and goes on. Like kohya, the option patterns are
also tried on the prompt text itself: a prompt starting ``w 512`` sets the width
(the prompt text is kept as written). kohya's options for other model families
(``--g`` guidance, ``--ctr``, ``--rcfg``, ``--fs``) are recognised and not used.

``.toml`` files (``[prompt]`` defaults + ``[[prompt.subset]]`` entries) and
``.json`` files (a list of strings in the line syntax, or of dicts with kohya's
keys: ``prompt``, ``negative_prompt``, ``width``, ``height``, ``seed``,
``sample_steps``, ``scale``, ``sample_sampler``) are read too.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

PathLike = Union[str, os.PathLike]

DEFAULT_WIDTH = 512
DEFAULT_HEIGHT = 512
DEFAULT_STEPS = 30
DEFAULT_SCALE = 7.5
DEFAULT_SAMPLER = "ddim"  # kohya's --sample_sampler default

# kohya's --sample_sampler names -> the WebUI's sampler names (closest; "k_" prefixes are aliases)
WEBUI_SAMPLERS = {
    "ddim": "DDIM", "pndm": "PLMS", "lms": "LMS", "euler": "Euler", "euler_a": "Euler a", "heun": "Heun",
    "dpm_2": "DPM2", "dpm_2_a": "DPM2 a", "dpmsolver": "DPM++ 2M", "dpmsolver++": "DPM++ 2M",
    "dpmsingle": "DPM++ SDE",
}


@dataclass
class SamplePrompt:
    prompt: str
    negative_prompt: str = ""
    width: int = DEFAULT_WIDTH
    height: int = DEFAULT_HEIGHT
    seed: Optional[int] = None
    steps: int = DEFAULT_STEPS
    cfg_scale: float = DEFAULT_SCALE
    sampler: Optional[str] = None  # None: the run's sample_sampler
    controlnet_image: Optional[str] = None
    line: int = 0  # 1-based line in a .txt file (0: not from a line)
    ignored: list[str] = field(default_factory=list)  # options kohya ignores
    warnings: list[str] = field(default_factory=list)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) as kohya renders: multiples of 8, at least 64."""
        return max(64, self.width - self.width % 8), max(64, self.height - self.height % 8)

    def webui_sampler(self, default: str = DEFAULT_SAMPLER) -> str:
        """The WebUI's name for this prompt's sampler (kohya's ``k_`` prefix dropped)."""
        name = (self.sampler or default).strip().lower()
        if name.startswith("k_"):
            name = name[2:]
        return WEBUI_SAMPLERS.get(name, self.sampler or default)

    def to_line(self) -> str:
        """This prompt in the line syntax (what :func:`parse_line` reads back)."""
        parts = [self.prompt]
        if self.negative_prompt:
            parts.append(f"n {self.negative_prompt}")
        if self.width != DEFAULT_WIDTH:
            parts.append(f"w {self.width}")
        if self.height != DEFAULT_HEIGHT:
            parts.append(f"h {self.height}")
        if self.seed is not None:
            parts.append(f"d {self.seed}")
        if self.steps != DEFAULT_STEPS:
            parts.append(f"s {self.steps}")
        if self.cfg_scale != DEFAULT_SCALE:
            parts.append(f"l {self.cfg_scale:g}")
        if self.sampler:
            parts.append(f"ss {self.sampler}")
        if self.controlnet_image:
            parts.append(f"cn {self.controlnet_image}")
        return " --".join(parts)


# option letter(s), the pattern kohya matches, the field, the conversion
_OPTIONS = (
    ("w", re.compile(r"w (\d+)", re.IGNORECASE), "width", int),
    ("h", re.compile(r"h (\d+)", re.IGNORECASE), "height", int),
    ("f", re.compile(r"f (\d+)", re.IGNORECASE), None, int),  # frame count (video models): not used here
    ("d", re.compile(r"d (\d+)", re.IGNORECASE), "seed", int),
    ("s", re.compile(r"s (\d+)", re.IGNORECASE), "steps", lambda v: max(1, min(1000, int(v)))),
    ("l", re.compile(r"l ([\d.]+)", re.IGNORECASE), "cfg_scale", float),
    ("n", re.compile(r"n (.+)", re.IGNORECASE), "negative_prompt", str),
    ("ss", re.compile(r"ss (.+)", re.IGNORECASE), "sampler", str),
    ("cn", re.compile(r"cn (.+)", re.IGNORECASE), "controlnet_image", str),
    # kohya's options for flow-matching / distilled models: known, not used for SD1/SDXL
    ("g", re.compile(r"g ([\d.]+)", re.IGNORECASE), None, float),
    ("ctr", re.compile(r"ctr (.+)", re.IGNORECASE), None, float),
    ("rcfg", re.compile(r"rcfg (.+)", re.IGNORECASE), None, float),
    ("fs", re.compile(r"fs (.+)", re.IGNORECASE), None, str),
)


def parse_line(line: str, number: int = 0) -> SamplePrompt:
    """One prompt line: the prompt, then `` --x value`` options (see the module's table)."""
    parts = line.strip().split(" --")
    result = SamplePrompt(prompt=parts[0], line=number)
    # kohya tries the option patterns on every part, the prompt text included: a prompt that
    # starts "s 20 ..." also sets 20 steps there, and so here
    for index, part in enumerate(parts):
        for _, pattern, name, convert in _OPTIONS:
            m = pattern.match(part)
            if not m:
                continue
            try:
                value = convert(m.group(1))
            except ValueError as exc:
                result.warnings.append(f"--{part}: {exc}")
                break
            if name is not None:
                setattr(result, name, value)
            break
        else:
            if index and part.strip():
                result.ignored.append("--" + part)
    return result


def parse_text(text: str) -> list[SamplePrompt]:
    """A ``.txt`` prompt file's text: one prompt per non-empty line not starting with ``#``."""
    prompts = []
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip() or raw[0] == "#":
            continue
        prompts.append(parse_line(raw, number))
    return prompts


_DICT_KEYS = {"prompt": "prompt", "negative_prompt": "negative_prompt", "width": "width", "height": "height",
              "seed": "seed", "sample_steps": "steps", "scale": "cfg_scale", "sample_sampler": "sampler",
              "controlnet_image": "controlnet_image"}


def from_dict(entry: dict) -> SamplePrompt:
    """A prompt given as kohya's dict (``.toml`` / ``.json`` files)."""
    result = SamplePrompt(prompt=str(entry.get("prompt", "")))
    for key, value in entry.items():
        name = _DICT_KEYS.get(key)
        if name is None:
            if key not in ("subset", "enum"):
                result.ignored.append(key)
            continue
        if name in ("width", "height", "seed"):
            value = int(value)
        elif name == "steps":
            value = max(1, min(1000, int(value)))
        elif name == "cfg_scale":
            value = float(value)
        elif value is not None:
            value = str(value)
        setattr(result, name, value)
    return result


def load_prompts(path: PathLike) -> list[SamplePrompt]:
    """Read a ``.txt``, ``.toml`` or ``.json`` sample-prompt file."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    if suffix == ".toml":
        try:
            import tomllib
        except ImportError:  # Python < 3.11
            import tomli as tomllib  # type: ignore
        data = tomllib.loads(text)
        base = dict(data.get("prompt") or {})
        subsets = base.pop("subset", None) or [{}]
        return [from_dict({**base, **subset}) for subset in subsets]
    if suffix == ".json":
        data = json.loads(text)
        if not isinstance(data, list):
            raise ValueError(f"{path}: a JSON prompt file holds a list of prompts")
        return [parse_line(e, i + 1) if isinstance(e, str) else from_dict(e) for i, e in enumerate(data)]
    return parse_text(text)
