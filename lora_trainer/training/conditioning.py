"""Text conditioning exactly as kohya builds it for SD1/SD2/SDXL LoRA training.

Tokenisation (sd-scripts ``TokenizeStrategy._get_input_ids``): a caption is
tokenised to ``max_token_length + 2`` ids (77 when unset), then cut into
chunks of 75 tokens, each wrapped in the caption's first id (BOS) and last id
(EOS or pad) so every chunk is a 77-id CLIP input. When the tokenizer pads
with EOS (SD1, SDXL's first encoder) that is all; when it pads with something
else (SD2, SDXL's second encoder, pad "!"), a chunk cut mid-caption gets EOS
as its last id and an empty chunk starts with BOS EOS.

Encoding (``SdTextEncodingStrategy`` / ``SdxlTextEncodingStrategy``): the
chunks go through the encoder as a batch, and the chunk outputs are re-joined
keeping the first BOS, the 75 token states of each chunk and the very last
state: 77 states for one chunk, 75·n + 2 for n chunks.
"""
from __future__ import annotations

import logging
import math
from typing import Optional, Sequence, Union

import torch

from ..models.base import TextEncoder

logger = logging.getLogger(__name__)

CHUNK = 75  # caption tokens per 77-id CLIP window
SIZE_EMBEDDING_DIM = 256  # per number, as SDXL's ADM ("vector") conditioning


def _pad_id(text_encoder: TextEncoder) -> int:
    if text_encoder.pad_token_id is not None:
        return int(text_encoder.pad_token_id)
    return int(text_encoder.tokenizer.pad_token_id)


def _total_length(max_token_length: Optional[int], model_max_length: int) -> int:
    if max_token_length is None:
        return model_max_length
    if max_token_length % CHUNK != 0 or max_token_length <= 0:
        raise ValueError(f"max_token_length {max_token_length}: expected 75, 150 or 225")
    return max_token_length + 2


def _chunks(ids: list[int], model_max_length: int, eos: int, pad: int) -> list[list[int]]:
    inner = model_max_length - 2
    chunks = []
    for start in range(1, len(ids) - model_max_length + 2, inner):
        chunk = [ids[0]] + ids[start : start + inner] + [ids[-1]]
        if pad != eos:
            # a chunk cut after a real token must still end with EOS...
            if chunk[-2] != eos and chunk[-2] != pad:
                chunk[-1] = eos
            # ...and a chunk with no tokens left reads BOS EOS pad pad ...
            if chunk[1] == pad:
                chunk[1] = eos
        chunks.append(chunk)
    return chunks


def tokenize(captions: Sequence[str], text_encoder: TextEncoder, max_token_length: Optional[int] = None) -> torch.Tensor:
    """Token ids (B, n_chunks, 77): one chunk for ``max_token_length`` None or 75,
    two for 150, three for 225."""
    tokenizer = text_encoder.tokenizer
    model_max_length = text_encoder.model_max_length
    length = _total_length(max_token_length, model_max_length)
    pad, eos = _pad_id(text_encoder), int(tokenizer.eos_token_id)

    # pad by hand: the encoder's pad id (SDXL te2's 0) may differ from the tokenizer's
    encoded = tokenizer(list(captions), truncation=True, max_length=length)["input_ids"]
    rows = []
    for ids in encoded:
        ids = list(ids) + [pad] * (length - len(ids))
        rows.append(_chunks(ids, model_max_length, eos, pad) if length > model_max_length else [ids])
    return torch.tensor(rows, dtype=torch.long)


def _model_device(model: torch.nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _rejoin(states: torch.Tensor, batch_size: int, n_chunks: int, model_max_length: int) -> torch.Tensor:
    """(B·n, 77, D) chunk outputs -> (B, 77 or 75·n + 2, D)."""
    states = states.reshape(batch_size, -1, states.shape[-1])
    if n_chunks == 1:
        return states
    parts = [states[:, :1]]
    for start in range(1, n_chunks * model_max_length, model_max_length):
        parts.append(states[:, start : start + model_max_length - 2])
    parts.append(states[:, -1:])
    return torch.cat(parts, dim=1)


def encode_sd(
    text_encoder: TextEncoder, input_ids: torch.Tensor, clip_skip: Optional[int] = None, v2: bool = False
) -> torch.Tensor:
    """SD1/SD2 context (B, 77 or 75·n + 2, dim).

    With ``clip_skip`` the ``-clip_skip``-th hidden state goes through the
    final layer norm; without it the last hidden state is used. ``v2`` is
    accepted for kohya's SD2 branch, which re-joins chunks the same way (its
    empty-chunk fix-up compares ids with the EOS *string* and never fires).
    """
    del v2
    model = text_encoder.model
    b, n, length = input_ids.shape
    ids = input_ids.reshape(-1, length).to(_model_device(model))
    out = model(input_ids=ids, output_hidden_states=True)
    if clip_skip is None:
        states = out.last_hidden_state
    else:
        # plain transformers>=5.6 CLIPTextModel has no text_model level
        final_layer_norm = getattr(model, "text_model", model).final_layer_norm
        states = final_layer_norm(out.hidden_states[-clip_skip])
    return _rejoin(states, b, n, length)


def _pool_at_eos(model, last_hidden_state: torch.Tensor, input_ids: torch.Tensor, eos: int) -> torch.Tensor:
    # kohya pools at the first EOS (not at HF's argmax of the ids), then projects
    first_eos = torch.argmax((input_ids == eos).int(), dim=1).to(last_hidden_state.device)
    pooled = last_hidden_state[torch.arange(last_hidden_state.shape[0], device=last_hidden_state.device), first_eos]
    projection = model.text_projection
    return projection(pooled.to(projection.weight.dtype)).to(last_hidden_state.dtype)


def encode_sdxl(
    te1: TextEncoder, te2: TextEncoder, ids1: torch.Tensor, ids2: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """SDXL context (B, T, dim1 + dim2) and pooled te2 embedding (B, proj_dim).

    te1 gives its penultimate hidden state (kohya's ``hidden_states[11]`` of
    CLIP-L's 12 layers), te2 its penultimate (``hidden_states[-2]``), both
    without the final layer norm. The pooled vector is te2's normed last
    hidden state at the first EOS through ``text_projection``, taken from the
    first chunk when the caption spans several.
    """
    b, n, length1 = ids1.shape
    length2 = ids2.shape[-1]
    flat1 = ids1.reshape(-1, length1).to(_model_device(te1.model))
    flat2 = ids2.reshape(-1, length2).to(_model_device(te2.model))

    out1 = te1.model(input_ids=flat1, output_hidden_states=True)
    states1 = out1.hidden_states[-2]
    out2 = te2.model(input_ids=flat2, output_hidden_states=True)
    states2 = out2.hidden_states[-2]
    pooled = _pool_at_eos(te2.model, out2.last_hidden_state, flat2, int(te2.tokenizer.eos_token_id))

    states1 = _rejoin(states1, b, n, length1)
    states2 = _rejoin(states2, b, n, length2)
    pooled = pooled[::n]
    return torch.cat([states1, states2.to(states1.dtype)], dim=2), pooled


def warn_sdxl_clip_skip(clip_skip: Optional[int]) -> None:
    """kohya warns and ignores clip_skip for SDXL (its layers are fixed)."""
    if clip_skip is not None:
        logger.warning("clip_skip will be unexpected / SDXL学習ではclip_skipは動作しません")


def size_embedding(values: torch.Tensor, dim: int = SIZE_EMBEDDING_DIM, max_period: float = 10000.0) -> torch.Tensor:
    """LDM's sinusoidal timestep embedding of each number in ``values`` (B, k)
    -> (B, k·dim): cos half first, then sin, frequencies exp(-ln(P)·i/half)."""
    b, k = values.shape
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half).to(values.device)
    args = values.reshape(-1)[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb.reshape(b, k * dim)


PairLike = Union[torch.Tensor, Sequence[Sequence[int]]]


def sdxl_vector_cond(
    pooled: torch.Tensor, original_size_hw: PairLike, crop_top_left: PairLike, target_size_hw: PairLike
) -> torch.Tensor:
    """SDXL's ``y``: pooled te2 embedding, then the embeddings of original size
    (h, w), crop (top, left) and target size (h, w): (B, 1280 + 6·256 = 2816)."""
    device = pooled.device
    sizes = [torch.as_tensor(v, device=device).reshape(pooled.shape[0], 2) for v in (original_size_hw, crop_top_left, target_size_hw)]
    embs = torch.cat([size_embedding(v) for v in sizes], dim=1)
    return torch.cat([pooled, embs.to(pooled.dtype)], dim=1)
