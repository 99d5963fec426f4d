"""A set of LoRA modules over one model: kohya's ``LoRANetwork``.

The network is an ``nn.Module`` whose children are the LoRA modules, registered
under their kohya names, so ``state_dict()`` is already in kohya's file format
(``<name>.lora_down.weight``, ``<name>.lora_up.weight``, ``<name>.alpha``). The
host model is only referenced, never adopted: ``network.to()`` / ``.train()``
/ ``.parameters()`` touch the LoRA weights alone.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from .lora import LoRAModule
from .naming import Target, find_targets, text_encoder_stems

logger = logging.getLogger(__name__)

DEFAULT_NETWORK_DIM = 4
DEFAULT_NETWORK_ALPHA = 1.0
DEFAULT_CONV_ALPHA = 1.0


def _text_encoder_pairs(arch: str, text_encoders: Sequence[Any]) -> list[tuple[str, nn.Module]]:
    """``[(stem, model)]`` from ``TextEncoder`` objects, ``(stem, model)`` pairs or bare models."""
    stems = text_encoder_stems(arch)
    if text_encoders and len(text_encoders) != len(stems):
        raise ValueError(f"{arch} has {len(stems)} text encoder(s), got {len(text_encoders)}")
    pairs = []
    for stem, te in zip(stems, text_encoders):
        if isinstance(te, tuple):
            given, model = te
        elif isinstance(te, nn.Module):
            given, model = stem, te
        else:  # models.base.TextEncoder
            given, model = te.name, te.model
        if given != stem:
            raise ValueError(f"text encoder {given!r} where {arch} expects {stem!r}")
        pairs.append((stem, model))
    return pairs


def dims_from_weights(weights: Mapping[str, torch.Tensor]) -> tuple[dict[str, int], dict[str, float]]:
    """Per-module rank and alpha of a kohya LoRA state dict (alpha defaults to the rank)."""
    dims, alphas = {}, {}
    for key, value in weights.items():
        if "." not in key:
            continue
        name, _, rest = key.partition(".")
        if rest == "alpha":
            alphas[name] = float(value.detach().float().item())
        elif rest == "lora_down.weight":
            dims[name] = int(value.shape[0])
    for name, dim in dims.items():
        alphas.setdefault(name, float(dim))  # LoRAs from before alpha existed
    return dims, {name: alphas[name] for name in dims}


def _read_weights(path_or_sd: Union[str, os.PathLike, Mapping[str, torch.Tensor]]) -> Mapping[str, torch.Tensor]:
    if isinstance(path_or_sd, Mapping):
        return path_or_sd
    from .io import load_network

    tensors, _ = load_network(path_or_sd)
    return tensors


class LoRANetwork(nn.Module):
    """kohya's LoRA / LoCon network for one SD1 / SD2 / SDXL model.

    Either give ``network_dim`` / ``network_alpha`` (and ``conv_dim`` /
    ``conv_alpha`` for LoCon), or ``modules_dim`` / ``modules_alpha`` to build
    exactly the modules of an existing file (see :meth:`from_file`).

    ``train_unet`` / ``train_text_encoder`` are kohya's
    ``not network_train_text_encoder_only`` / ``not network_train_unet_only``:
    the side switched off gets no modules at all, so it is neither applied nor
    saved.
    """

    def __init__(
        self,
        unet: Optional[nn.Module],
        text_encoders: Sequence[Any],
        arch: str,
        *,
        network_dim: Optional[int] = None,
        network_alpha: Optional[float] = None,
        conv_dim: Optional[int] = None,
        conv_alpha: Optional[float] = None,
        dropout: Optional[float] = None,
        rank_dropout: Optional[float] = None,
        module_dropout: Optional[float] = None,
        multiplier: float = 1.0,
        train_unet: bool = True,
        train_text_encoder: bool = True,
        modules_dim: Optional[Mapping[str, int]] = None,
        modules_alpha: Optional[Mapping[str, float]] = None,
        dtype: torch.dtype = torch.float32,
        device=None,
    ):
        super().__init__()
        if not (train_unet or train_text_encoder):
            raise ValueError("nothing to train: both train_unet and train_text_encoder are off")
        # kohya's create_network defaults
        self.network_dim = DEFAULT_NETWORK_DIM if network_dim is None else int(network_dim)
        self.network_alpha = DEFAULT_NETWORK_ALPHA if network_alpha is None else float(network_alpha)
        self.conv_dim = None if conv_dim is None else int(conv_dim)
        self.conv_alpha = None
        if self.conv_dim is not None:
            self.conv_alpha = DEFAULT_CONV_ALPHA if conv_alpha is None else float(conv_alpha)
        self.arch = arch
        self.multiplier = multiplier
        self.dropout = dropout
        self.rank_dropout = rank_dropout
        self.module_dropout = module_dropout
        self.train_unet = train_unet
        self.train_text_encoder = train_text_encoder
        self.from_weights = modules_dim is not None

        pairs = _text_encoder_pairs(arch, text_encoders) if train_text_encoder else []
        # kohya searches the conv blocks once conv_dim is given (0 included) or
        # when building from a file, which may hold LoCon modules
        include_conv_blocks = self.from_weights or self.conv_dim is not None
        targets = find_targets(arch, unet if train_unet else None, pairs, include_conv_blocks)

        self.text_encoder_loras: list[LoRAModule] = []
        self.unet_loras: list[LoRAModule] = []
        self.skipped: list[str] = []  # targets left out because their dim is 0 (e.g. conv_dim=0)
        for target in targets:
            dim, alpha = self._dim_alpha(target, modules_dim, modules_alpha)
            if not dim:
                if dim == 0:
                    self.skipped.append(target.name)
                continue
            lora = LoRAModule(
                target.name,
                target.module,
                dim=dim,
                alpha=alpha,
                multiplier=multiplier,
                dropout=dropout,
                rank_dropout=rank_dropout,
                module_dropout=module_dropout,
                dtype=dtype,
                device=device,
            )
            self.add_module(target.name, lora)
            (self.unet_loras if target.is_unet else self.text_encoder_loras).append(lora)
        self.targets = {t.name: t for t in targets}
        logger.info(
            "LoRA network: %d text encoder and %d UNet modules", len(self.text_encoder_loras), len(self.unet_loras)
        )

    def _dim_alpha(self, target: Target, modules_dim, modules_alpha) -> tuple[Optional[int], Optional[float]]:
        if modules_dim is not None:
            dim = modules_dim.get(target.name)
            alpha = (modules_alpha or {}).get(target.name, dim)
            return dim, alpha
        if not target.is_conv3x3:
            return self.network_dim, self.network_alpha
        return self.conv_dim, self.conv_alpha  # None: no LoCon

    # --- construction ----------------------------------------------------------

    @classmethod
    def from_model(cls, model, **kwargs) -> "LoRANetwork":
        """Build over a :class:`lora_trainer.models.base.DiffusionModel`, on its device."""
        kwargs.setdefault("device", getattr(model, "device", None))
        return cls(model.unet, model.text_encoders, model.arch, **kwargs)

    @classmethod
    def from_file(
        cls,
        model,
        weights: Union[str, os.PathLike, Mapping[str, torch.Tensor]],
        *,
        load: bool = True,
        strict: bool = True,
        **kwargs,
    ) -> "LoRANetwork":
        """Build with each module's rank and alpha taken from a kohya file (kohya's
        ``dim_from_weights``), and by default load its weights.

        ``model`` is a ``DiffusionModel`` or a ``(unet, text_encoders, arch)``
        tuple. With ``strict``, a name in the file that matches no module of
        this model is an error; names of a part switched off by
        ``train_unet`` / ``train_text_encoder`` are dropped.
        """
        sd = _read_weights(weights)
        dims, alphas = dims_from_weights(sd)
        if not dims:
            raise ValueError("no LoRA modules (lora_down.weight) in the weights")
        if isinstance(model, tuple):
            unet, text_encoders, arch = model
        else:
            unet, text_encoders, arch = model.unet, model.text_encoders, model.arch
            kwargs.setdefault("device", getattr(model, "device", None))
        network = cls(unet, text_encoders, arch, modules_dim=dims, modules_alpha=alphas, **kwargs)
        if strict:
            everything = cls._all_target_names(unet, text_encoders, arch)
            unknown = sorted(set(dims) - everything)
            if unknown:
                raise ValueError(f"{len(unknown)} LoRA module(s) in the file match nothing in this model: {unknown[:5]}")
        if load:
            network.load_weights(sd)
        return network

    @staticmethod
    def _all_target_names(unet, text_encoders, arch) -> set[str]:
        pairs = _text_encoder_pairs(arch, text_encoders)
        return {t.name for t in find_targets(arch, unet, pairs, include_conv_blocks=True)}

    # --- weights -------------------------------------------------------------

    def load_weights(self, weights: Union[str, os.PathLike, Mapping[str, torch.Tensor]]):
        """Load a kohya file or state dict into the existing modules (kohya's ``network_weights``).

        Keys of modules this network does not have are ignored, as kohya does
        (e.g. text encoder keys when only the UNet is trained); a rank that
        differs from this network's is an error. Returns torch's
        ``(missing_keys, unexpected_keys)``.
        """
        sd = _read_weights(weights)
        own = self.state_dict()
        mismatched = [
            f"{k}: file {tuple(v.shape)} vs network {tuple(own[k].shape)}"
            for k, v in sd.items()
            if k in own and tuple(v.shape) != tuple(own[k].shape)
        ]
        if mismatched:
            raise ValueError("LoRA weights do not fit this network (another rank?): " + "; ".join(mismatched[:5]))
        result = self.load_state_dict(dict(sd), strict=False)
        if result.unexpected_keys:
            logger.info("ignored %d keys of modules this network does not train", len(result.unexpected_keys))
        return result

    def all_loras(self) -> list[LoRAModule]:
        return self.text_encoder_loras + self.unet_loras

    # --- attach / detach ---------------------------------------------------------

    @property
    def is_applied(self) -> bool:
        return any(lora.is_applied for lora in self.all_loras())

    def apply(self) -> "LoRANetwork":
        """Attach every module to its host. Returns self, so ``with network.apply():`` works."""
        applied = []
        try:
            for lora in self.all_loras():
                lora.apply()
                applied.append(lora)
        except BaseException:
            for lora in reversed(applied):
                lora.restore()
            raise
        return self

    def restore(self) -> None:
        """Detach every module; the host model is left exactly as before :meth:`apply`."""
        for lora in reversed(self.all_loras()):
            lora.restore()

    def __enter__(self) -> "LoRANetwork":
        return self.apply()

    def __exit__(self, *exc) -> None:
        self.restore()

    def set_multiplier(self, multiplier: float) -> None:
        self.multiplier = multiplier
        for lora in self.all_loras():
            lora.multiplier = multiplier

    def set_enabled(self, enabled: bool) -> None:
        for lora in self.all_loras():
            lora.enabled = enabled

    # --- optimizer ---------------------------------------------------------------

    def prepare_optimizer_params(
        self,
        *,
        unet_lr: Optional[float],
        text_encoder_lr: Optional[float],
        default_lr: Optional[float],
        loraplus_lr_ratio: Optional[float] = None,
        loraplus_unet_lr_ratio: Optional[float] = None,
        loraplus_text_encoder_lr_ratio: Optional[float] = None,
    ) -> tuple[list[dict], list[str]]:
        """Optimizer param groups and their descriptions, as kohya builds them.

        A part's lr is its own, or ``default_lr`` when that is None; a part whose
        lr ends up 0 or None gets no group (kohya: "NO LR skipping!"), so
        ``text_encoder_lr=0`` leaves the text encoder LoRA at its initial value
        (zero effect). Unlike kohya, the parameters of a skipped group get
        ``requires_grad=False`` so no gradient is computed for them. With a
        LoRA+ ratio, ``lora_up`` weights get their own group at ``lr * ratio``.
        """
        self.requires_grad_(True)
        groups: list[dict] = []
        descriptions: list[str] = []

        def add(loras: list[LoRAModule], lr: Optional[float], ratio: Optional[float], label: str) -> None:
            plain, plus = [], []
            for lora in loras:
                for name, param in lora.named_parameters():
                    (plus if ratio is not None and name.startswith("lora_up") else plain).append(param)
            for params, group_lr, suffix in ((plain, lr, ""), (plus, None if lr is None else lr * (ratio or 1), " plus")):
                if not params:
                    continue
                if not group_lr:
                    for param in params:
                        param.requires_grad_(False)
                    continue
                groups.append({"params": params, "lr": group_lr})
                descriptions.append(label + suffix)

        if self.text_encoder_loras:
            lr = text_encoder_lr if text_encoder_lr is not None else default_lr
            add(self.text_encoder_loras, lr, loraplus_text_encoder_lr_ratio or loraplus_lr_ratio, "textencoder")
        if self.unet_loras:
            lr = unet_lr if unet_lr is not None else default_lr
            add(self.unet_loras, lr, loraplus_unet_lr_ratio or loraplus_lr_ratio, "unet")
        return groups, descriptions

    @property
    def trains_text_encoder(self) -> bool:
        """Whether any text encoder LoRA weight is trainable (needs the TE run with grad)."""
        return any(p.requires_grad for lora in self.text_encoder_loras for p in lora.parameters())

    # --- regularisation ------------------------------------------------------------

    @torch.no_grad()
    def apply_max_norm_regularization(self, max_norm: float, device=None) -> tuple[int, float, float]:
        """kohya's ``scale_weight_norms``: shrink each module whose ``alpha/dim * up@down``
        has a Frobenius norm over ``max_norm`` back to it, splitting the factor
        evenly between ``up`` and ``down``. Returns ``(keys_scaled, mean_norm, max_norm)``
        of the norms after scaling.
        """
        from .lora import weight_delta

        keys_scaled = 0
        norms = []
        for lora in self.all_loras():
            up, down = lora.lora_up.weight, lora.lora_down.weight
            target = device if device is not None else up.device
            scale = lora.alpha.to(target).float() / lora.lora_dim
            updown = weight_delta(up.to(target).float(), down.to(target).float()) * scale
            norm = updown.norm().clamp(min=max_norm / 2)
            desired = norm.clamp(max=max_norm)
            ratio = (desired / norm).cpu()
            if ratio != 1:
                keys_scaled += 1
                factor = ratio.sqrt()
                up.mul_(factor.to(up.device, up.dtype))
                down.mul_(factor.to(down.device, down.dtype))
            norms.append((updown.norm() * ratio.to(updown.device)).item())
        if not norms:
            return 0, 0.0, 0.0
        return keys_scaled, sum(norms) / len(norms), max(norms)
