"""What the trainer needs inside a WebUI, and the plan to add only what is missing.

The WebUI (AUTOMATIC1111 v1.10.1 / Forge) owns its Python environment and pins
its packages (gradio 3.41.2, transformers 4.30.2, safetensors 0.4.2, numpy 1.26.2,
...). ``install.py`` therefore never upgrades or downgrades anything: a package
that is present stays as it is, even at a version outside our range (we only
warn), and a missing one is installed at a range chosen to sit beside the WebUI's
pins. ``install.py`` also passes pip a constraints file that pins every installed
distribution to its installed version, so the dependencies of what we add cannot
move the WebUI's packages either (pip picks an older release of ours, or fails).

Everything here is pure: :func:`plan_installs` takes the installed distributions
(name -> version) and whether CUDA is present, and returns the steps. No imports
beyond the standard library, so ``install.py`` stays fast.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Mapping, Optional, Sequence


def normalize_name(name: str) -> str:
    """PEP 503 normalised distribution name ("Lion_Pytorch" -> "lion-pytorch")."""
    return re.sub(r"[-_.]+", "-", name).lower().strip()


@dataclass(frozen=True)
class Need:
    """One package the trainer uses inside a WebUI."""

    name: str  # distribution name, as pip spells it
    specifier: str  # the range we install when it is missing; checked (warn only) when present
    purpose: str  # what it is for, in words for the console
    min_python: Optional[tuple[int, int]] = None  # only needed below this Python (tomli)
    works_with: Optional[str] = None  # warn when a present version is outside this; default: specifier

    @property
    def check(self) -> str:
        return self.works_with or self.specifier


# The ranges contain the WebUI's pinned version wherever the WebUI pins the package
# (safetensors 0.4.2, open-clip-torch 2.20.0), and huggingface_hub keeps inside
# transformers 4.30.2's own range (>=0.14.1,<1.0).
NEEDS: tuple[Need, ...] = (
    Need("safetensors", ">=0.3.1,<1", "reading checkpoints and writing LoRA files"),
    Need("prodigyopt", ">=1.0,<2", "the Prodigy optimizer"),
    Need("dadaptation", ">=3.1,<4", "the D-Adaptation optimizers"),
    Need("lion-pytorch", ">=0.1.2,<1", "the Lion optimizer"),
    Need("tomli-w", ">=1.0,<2", "saving training configs as TOML"),
    Need("tomli", ">=1.1,<3", "reading TOML configs on Python 3.10 (3.11+ has tomllib)", min_python=(3, 11)),
    # the upper bound is transformers 4.30.2's, not ours: a newer hub installed by the user is fine
    Need("huggingface-hub", ">=0.14.1,<1.0", "downloading the WD14 tagger models", works_with=">=0.14.1"),
    Need("open-clip-torch", ">=2.20,<4", "CLIP's BPE vocabulary file (the tokenizer)"),
)

ONNXRUNTIME_CPU = "onnxruntime"
ONNXRUNTIME_GPU = "onnxruntime-gpu"
ONNXRUNTIME_SPECIFIER = ">=1.16,<2"
ONNXRUNTIME_PURPOSE = "running the WD14 tagger"
# Any of these provides the ``onnxruntime`` module; installing a second one beside it
# overwrites the first one's files, so when one is present we add none.
_ONNXRUNTIME_PREFIXES = ("onnxruntime", "ort-nightly")

# Packages the WebUI itself installs (and pins); we never install them, only warn.
NEVER_INSTALL: tuple[str, ...] = ("torch", "torchvision", "numpy", "pillow", "transformers", "gradio", "fastapi")


@dataclass(frozen=True)
class InstallStep:
    """One ``pip install`` of one missing package."""

    name: str  # distribution name
    specifier: str  # version range, e.g. ">=1.0,<2"
    reason: str  # why it is installed, for the console

    @property
    def requirement(self) -> str:
        """The requirement string for pip, e.g. ``prodigyopt>=1.0,<2``."""
        return f"{self.name}{self.specifier}"

    def pip_args(self, constraints_file: Optional[str] = None) -> list[str]:
        """Arguments after ``pip``: ``install [-c FILE] REQ`` (never ``--upgrade``)."""
        args = ["install"]
        if constraints_file:
            args += ["-c", constraints_file]
        args.append(self.requirement)
        return args


def _normalized(installed: Mapping[str, str]) -> dict[str, str]:
    return {normalize_name(name): str(version) for name, version in installed.items()}


def onnxruntime_present(installed: Mapping[str, str]) -> list[str]:
    """The installed distributions that provide the ``onnxruntime`` module."""
    names = _normalized(installed)
    return sorted(name for name in names if name.startswith(_ONNXRUNTIME_PREFIXES))


def needs_cuda_check(installed: Mapping[str, str]) -> bool:
    """Whether the plan depends on CUDA (only when no onnxruntime is installed);
    ``install.py`` skips the (possibly slow) CUDA probe otherwise."""
    return not onnxruntime_present(installed)


def _python_applies(need: Need, python_version: Sequence[int]) -> bool:
    return need.min_python is None or tuple(python_version[:2]) < need.min_python


def plan_installs(
    installed: Mapping[str, str],
    cuda: bool,
    *,
    python_version: Sequence[int] = (3, 10),
) -> list[InstallStep]:
    """The packages to install: each need that no installed distribution provides.

    ``installed`` maps distribution names (any spelling) to installed versions.
    Present packages are never in the plan, whatever their version; the WebUI's
    own packages (torch, numpy, gradio ...) are never in it either. The
    onnxruntime flavour is ``onnxruntime-gpu`` when ``cuda`` is true, else
    ``onnxruntime``, and none when any onnxruntime flavour is installed.
    ``python_version`` defaults to the WebUI's recommended 3.10; ``install.py``
    passes the running interpreter's.
    """
    names = _normalized(installed)
    steps: list[InstallStep] = []
    for need in NEEDS:
        key = normalize_name(need.name)
        if key in names or key in NEVER_INSTALL or not _python_applies(need, python_version):
            continue
        steps.append(InstallStep(need.name, need.specifier, need.purpose))
    if not onnxruntime_present(names):
        flavour = ONNXRUNTIME_GPU if cuda else ONNXRUNTIME_CPU
        where = "on the GPU (CUDA found)" if cuda else "on the CPU (no CUDA found)"
        steps.append(InstallStep(flavour, ONNXRUNTIME_SPECIFIER, f"{ONNXRUNTIME_PURPOSE} {where}"))
    return steps


# --- version checks (warnings only) ------------------------------------------------


def _release(version: str) -> Optional[tuple[int, ...]]:
    match = re.match(r"\s*v?(\d+(?:\.\d+)*)", version)
    if not match:
        return None
    parts = [int(p) for p in match.group(1).split(".")]
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def version_in_range(version: str, specifier: str) -> Optional[bool]:
    """Whether ``version`` satisfies a simple ``>=a,<b`` style range; None when the
    version cannot be read. Only the release numbers are compared (local tags like
    ``+cu121`` and pre-release tags are ignored)."""
    have = _release(version)
    if have is None:
        return None
    for clause in specifier.split(","):
        match = re.match(r"\s*(>=|<=|==|!=|>|<)\s*(\S+)\s*$", clause)
        if not match:
            continue
        op, bound = match.groups()
        want = _release(bound)
        if want is None:
            continue
        ok = {
            ">=": have >= want,
            "<=": have <= want,
            ">": have > want,
            "<": have < want,
            "==": have == want,
            "!=": have != want,
        }[op]
        if not ok:
            return False
    return True


def installed_warnings(
    installed: Mapping[str, str],
    cuda: Optional[bool] = None,
    *,
    python_version: Sequence[int] = (3, 10),
) -> list[str]:
    """Things the user may want to know; nothing here changes the environment."""
    names = _normalized(installed)
    out: list[str] = []
    for need in NEEDS:
        key = normalize_name(need.name)
        if key not in names or not _python_applies(need, python_version):
            continue
        ok = version_in_range(names[key], need.check)
        if ok is False:
            out.append(
                f"{need.name} {names[key]} is installed; LoRA Trainer expects {need.name}{need.check} "
                f"({need.purpose}). It is left as it is; if that feature fails, this is the likely cause."
            )
    if "torch" not in names:
        out.append("torch is not installed: the WebUI installs it; LoRA Trainer never does.")
    flavours = onnxruntime_present(names)
    if len(flavours) > 1:
        out.append(
            f"several onnxruntime packages are installed ({', '.join(flavours)}); they overwrite each other's "
            f"files. Keep one (pip uninstall the others, then reinstall the one you keep)."
        )
    if cuda and flavours == [ONNXRUNTIME_CPU]:
        out.append(
            "onnxruntime (CPU) is installed although CUDA is present: the WD14 tagger will run on the CPU. "
            "For the GPU: pip uninstall onnxruntime, then pip install onnxruntime-gpu."
        )
    for flavour in flavours:
        ok = version_in_range(names[flavour], ONNXRUNTIME_SPECIFIER)
        if ok is False:
            out.append(f"{flavour} {names[flavour]} is installed; LoRA Trainer expects {ONNXRUNTIME_SPECIFIER}. Left as it is.")
    return out


# --- constraints: pin what is installed -----------------------------------------------

_VERSION_OK = re.compile(r"^[0-9][0-9A-Za-z.+!_-]*$")


def constraints_lines(installed: Mapping[str, str], exclude: Iterable[str] = ()) -> list[str]:
    """``name==version`` for every installed distribution: given to pip with ``-c``
    so that installing our packages cannot upgrade or downgrade any of them.
    Versions pip could not parse are left out (pip would reject the whole file)."""
    skip = {normalize_name(name) for name in exclude}
    lines = []
    for name, version in sorted(_normalized(installed).items()):
        if name in skip or not re.fullmatch(r"[a-z0-9][a-z0-9-]*", name) or not _VERSION_OK.match(version):
            continue
        lines.append(f"{name}=={version}")
    return lines
