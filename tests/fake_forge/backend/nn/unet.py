"""Forge's UNet behaviour (``backend/nn/unet.py``) for tests, over lora_trainer's own LDM modules.

Forge's ``IntegratedUNet2DConditionModel`` has CompVis' module paths and block
class names; so has lora_trainer's LDM UNet, built here with Forge's layer
classes (``backend.operations``). :func:`forgeify` then gives its blocks Forge's
*behaviour* by class swap (subclasses with the same names, written for tests):

* ``BasicTransformerBlock`` adds the attention and feed-forward outputs to the
  residual in place (``x += n``): ``norm1`` saved ``x`` for backward, so any
  backward through the block fails ("modified by an inplace operation");
* ``checkpoint`` / ``use_checkpoint`` flags make the blocks raise
  ``NotImplementedError`` (Forge has no gradient checkpointing);
* forwards take ``transformer_options`` (the UNet's default is one shared dict,
  written on every call), ``control`` and ``output_shape`` as Forge's do.

The arithmetic is lora_trainer's own, so a training through the stand-in can be
compared bit for bit with the standalone one.
"""
import torch

from lora_trainer.models import ldm_unet as ours


def checkpoint(function, args, enabled):
    if enabled:
        raise NotImplementedError("Gradient Checkpointing is not implemented.")
    return function(*args)


class BasicTransformerBlock(ours.BasicTransformerBlock):
    def forward(self, x, context=None, transformer_options={}):
        return checkpoint(self._forward, (x, context, transformer_options), self.checkpoint)

    def _forward(self, x, context=None, transformer_options={}):
        n = self.attn1(self.norm1(x))
        x += n
        n = self.attn2(self.norm2(x), context=context)
        x += n
        x_skip = x
        x = self.ff(self.norm3(x))
        x += x_skip
        return x


class SpatialTransformer(ours.SpatialTransformer):
    def forward(self, x, context=None, transformer_options={}):
        b, c, h, w = x.shape
        x_in = x
        x = self.norm(x)
        if not self.use_linear:
            x = self.proj_in(x)
        x = x.flatten(2).transpose(1, 2).contiguous()
        if self.use_linear:
            x = self.proj_in(x)
        for i, block in enumerate(self.transformer_blocks):
            transformer_options["block_index"] = i
            x = block(x, context=context, transformer_options=transformer_options)
        if self.use_linear:
            x = self.proj_out(x)
        x = x.transpose(1, 2).reshape(b, -1, h, w)
        if not self.use_linear:
            x = self.proj_out(x)
        return x + x_in


class ResBlock(ours.ResBlock):
    def forward(self, x, emb, transformer_options={}):
        return checkpoint(super().forward, (x, emb), self.use_checkpoint)


class Upsample(ours.Upsample):
    def forward(self, x, output_shape=None):
        return super().forward(x)


class Downsample(ours.Downsample):
    pass


class TimestepEmbedSequential(ours.TimestepEmbedSequential):
    def forward(self, x, emb, context=None, transformer_options={}, output_shape=None):
        for layer in self:
            if isinstance(layer, ours.ResBlock):
                x = layer(x, emb, transformer_options)
            elif isinstance(layer, ours.SpatialTransformer):
                x = layer(x, context, transformer_options)
                if "transformer_index" in transformer_options:
                    transformer_options["transformer_index"] += 1
            elif isinstance(layer, ours.Upsample):
                x = layer(x, output_shape=output_shape)
            else:
                x = layer(x)
        return x


class IntegratedUNet2DConditionModel(ours.UNetModel):
    def forward(self, x, timesteps=None, context=None, y=None, control=None, transformer_options={}, **kwargs):
        transformer_options["original_shape"] = list(x.shape)
        transformer_options["transformer_index"] = 0
        assert (y is not None) == (self.num_classes is not None)
        emb = self.time_embed(ours.timestep_embedding(timesteps, self.model_channels).to(x.dtype))
        if y is not None:
            emb = emb + self.label_emb(y)
        hs = []
        h = x
        for index, block in enumerate(self.input_blocks):
            transformer_options["block"] = ("input", index)
            h = block(h, emb, context, transformer_options)
            hs.append(h)
        transformer_options["block"] = ("middle", 0)
        h = self.middle_block(h, emb, context, transformer_options)
        for index, block in enumerate(self.output_blocks):
            transformer_options["block"] = ("output", index)
            h = torch.cat([h, hs.pop()], dim=1)
            h = block(h, emb, context, transformer_options, hs[-1].shape if hs else None)
        transformer_options["block"] = ("last", 0)
        return self.out(h).type(x.dtype)


_SWAPS = {
    ours.BasicTransformerBlock: BasicTransformerBlock,
    ours.SpatialTransformer: SpatialTransformer,
    ours.ResBlock: ResBlock,
    ours.Upsample: Upsample,
    ours.Downsample: Downsample,
    ours.TimestepEmbedSequential: TimestepEmbedSequential,
    ours.UNetModel: IntegratedUNet2DConditionModel,
}


def forgeify(unet):
    """Give lora_trainer's LDM UNet ``unet`` Forge's block behaviour (in place); returns it."""
    for module in unet.modules():
        forge_class = _SWAPS.get(type(module))
        if forge_class is None:
            continue
        module.__class__ = forge_class
        if forge_class is BasicTransformerBlock:
            module.checkpoint = False  # Forge's detected unet_config has use_checkpoint False
            module.disable_self_attn = False
            module.is_res = True
            module.ff_in = False
            module.n_heads = module.attn1.heads
        elif forge_class is ResBlock:
            module.use_checkpoint = False
            module.use_scale_shift_norm = False
    return unet
