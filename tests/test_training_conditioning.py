import logging
import math

import pytest
import torch
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from lora_trainer.models.base import TextEncoder
from lora_trainer.models.tokenizer import load_clip_tokenizer
from lora_trainer.training import conditioning as cond

BOS, EOS = 49406, 49407
WORDS = ["red", "green", "blue", "cat", "dog", "house", "tree", "car", "sun", "moon", "bird", "fish", "star"]


@pytest.fixture(scope="module")
def tokenizer():
    return load_clip_tokenizer()


@pytest.fixture(scope="module")
def word_ids(tokenizer):
    ids = [tokenizer.convert_tokens_to_ids(w + "</w>") for w in WORDS]
    for w, i in zip(WORDS, ids):
        assert tokenizer(w).input_ids == [BOS, i, EOS]  # each word is one token
    return ids


def _caption(n):
    return " ".join(WORDS[i % len(WORDS)] for i in range(n))


def _seq(word_ids, n):
    return [word_ids[i % len(word_ids)] for i in range(n)]


def _te(tokenizer, pad=None, model=None):
    return TextEncoder("te", model if model is not None else torch.nn.Identity(), tokenizer, pad_token_id=pad)


# ---------------------------------------------------------------- tokenisation


@pytest.mark.parametrize("max_token_length", [None, 75])
def test_one_chunk(tokenizer, word_ids, max_token_length):
    ids = cond.tokenize([_caption(3), _caption(90)], _te(tokenizer), max_token_length)
    assert ids.shape == (2, 1, 77)
    assert ids[0, 0].tolist() == [BOS] + _seq(word_ids, 3) + [EOS] * 73
    assert ids[1, 0].tolist() == [BOS] + _seq(word_ids, 75) + [EOS]  # truncated to 75 tokens


def test_v1_two_chunks_pad_is_eos(tokenizer, word_ids):
    seq = _seq(word_ids, 80)
    ids = cond.tokenize([_caption(80), _caption(3)], _te(tokenizer), 150)
    assert ids.shape == (2, 2, 77)
    assert ids[0, 0].tolist() == [BOS] + seq[:75] + [EOS]
    assert ids[0, 1].tolist() == [BOS] + seq[75:80] + [EOS] * 71
    assert ids[1, 0].tolist() == [BOS] + seq[:3] + [EOS] * 73
    assert ids[1, 1].tolist() == [BOS] + [EOS] * 76


def test_v2_two_chunks_pad_zero(tokenizer, word_ids):
    seq = _seq(word_ids, 80)
    te = _te(tokenizer, pad=0)  # SD2 / SDXL te2: pads with "!" (id 0)
    ids = cond.tokenize([_caption(80), _caption(3), _caption(75)], te, 150)
    # a chunk cut mid-caption ends with EOS in place of the pad
    assert ids[0, 0].tolist() == [BOS] + seq[:75] + [EOS]
    assert ids[0, 1].tolist() == [BOS] + seq[75:80] + [EOS] + [0] * 70
    # short caption: the first chunk keeps its pads, the empty chunk reads BOS EOS pad...
    assert ids[1, 0].tolist() == [BOS] + seq[:3] + [EOS] + [0] * 72
    assert ids[1, 1].tolist() == [BOS, EOS] + [0] * 75
    # exactly 75 tokens: the EOS fell into the second chunk
    assert ids[2, 0].tolist() == [BOS] + seq[:75] + [EOS]
    assert ids[2, 1].tolist() == [BOS, EOS] + [0] * 75


@pytest.mark.parametrize("pad", [None, 0])
def test_three_chunks_long_caption_truncated_to_225(tokenizer, word_ids, pad):
    seq = _seq(word_ids, 300)
    ids = cond.tokenize([_caption(300)], _te(tokenizer, pad=pad), 225)
    assert ids.shape == (1, 3, 77)
    for k in range(3):
        assert ids[0, k].tolist() == [BOS] + seq[75 * k : 75 * k + 75] + [EOS]


def test_v2_three_chunks_middle_cut(tokenizer, word_ids):
    seq = _seq(word_ids, 160)
    ids = cond.tokenize([_caption(160)], _te(tokenizer, pad=0), 225)
    assert ids[0, 0].tolist() == [BOS] + seq[:75] + [EOS]
    assert ids[0, 1].tolist() == [BOS] + seq[75:150] + [EOS]
    assert ids[0, 2].tolist() == [BOS] + seq[150:160] + [EOS] + [0] * 65


def test_encoder_pad_id_wins_over_tokenizer_pad(tokenizer):
    assert tokenizer.pad_token_id == EOS
    ids = cond.tokenize(["cat"], _te(tokenizer, pad=0), None)
    assert ids[0, 0, :4].tolist() == [BOS, tokenizer.convert_tokens_to_ids("cat</w>"), EOS, 0]
    assert (ids[0, 0, 3:] == 0).all()


def test_bad_max_token_length(tokenizer):
    with pytest.raises(ValueError):
        cond.tokenize(["cat"], _te(tokenizer), 100)


# ---------------------------------------------------------------- SD encoding


def _clip(hidden=32, layers=4, projection=None, seed=0):
    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=49408, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=2, max_position_embeddings=77, projection_dim=projection or hidden,
        bos_token_id=BOS, eos_token_id=EOS, pad_token_id=1,
    )
    model = (CLIPTextModelWithProjection if projection else CLIPTextModel)(config).eval()
    return model


def _final_norm(model):
    return getattr(model, "text_model", model).final_layer_norm


@pytest.fixture(scope="module")
def sd_encoder(tokenizer):
    return _te(tokenizer, model=_clip())


@torch.no_grad()
@pytest.mark.parametrize("max_token_length, length", [(None, 77), (150, 152), (225, 227)])
def test_encode_sd_shapes(sd_encoder, max_token_length, length):
    ids = cond.tokenize([_caption(5), _caption(200)], sd_encoder, max_token_length)
    assert cond.encode_sd(sd_encoder, ids, None).shape == (2, length, 32)
    assert cond.encode_sd(sd_encoder, ids, 2).shape == (2, length, 32)


@torch.no_grad()
def test_clip_skip_is_final_layer_norm_of_earlier_hidden_state(sd_encoder):
    ids = cond.tokenize([_caption(7), _caption(20)], sd_encoder, None)
    out = sd_encoder.model(input_ids=ids[:, 0], output_hidden_states=True)
    assert torch.equal(cond.encode_sd(sd_encoder, ids, None), out.last_hidden_state)
    assert torch.allclose(cond.encode_sd(sd_encoder, ids, 1), out.last_hidden_state, atol=1e-6)
    skip2 = cond.encode_sd(sd_encoder, ids, 2)
    assert torch.allclose(skip2, _final_norm(sd_encoder.model)(out.hidden_states[-2]), atol=1e-6)
    assert not torch.allclose(skip2, out.last_hidden_state, atol=1e-3)
    skip3 = cond.encode_sd(sd_encoder, ids, 3)
    assert torch.allclose(skip3, _final_norm(sd_encoder.model)(out.hidden_states[-3]), atol=1e-6)


@torch.no_grad()
def test_encode_sd_rejoins_chunks_like_kohya(sd_encoder):
    ids = cond.tokenize([_caption(100), _caption(10)], sd_encoder, 150)
    context = cond.encode_sd(sd_encoder, ids, 2, v2=True)
    per_chunk = [
        _final_norm(sd_encoder.model)(sd_encoder.model(input_ids=ids[:, k], output_hidden_states=True).hidden_states[-2])
        for k in range(2)
    ]
    assert torch.allclose(context[:, :1], per_chunk[0][:, :1], atol=1e-6)  # first chunk's BOS
    assert torch.allclose(context[:, 1:76], per_chunk[0][:, 1:76], atol=1e-6)
    assert torch.allclose(context[:, 76:151], per_chunk[1][:, 1:76], atol=1e-6)
    assert torch.allclose(context[:, 151:], per_chunk[1][:, 76:], atol=1e-6)  # last chunk's last state


# ---------------------------------------------------------------- SDXL encoding


@pytest.fixture(scope="module")
def sdxl_encoders(tokenizer):
    te1 = TextEncoder("te1", _clip(32, 3, seed=1), tokenizer)
    te2 = TextEncoder("te2", _clip(48, 3, projection=40, seed=2), load_clip_tokenizer(pad_token="!"), pad_token_id=0)
    return te1, te2


@torch.no_grad()
def test_encode_sdxl_layers_and_pooling(sdxl_encoders):
    te1, te2 = sdxl_encoders
    captions = [_caption(6), _caption(30)]
    ids1, ids2 = cond.tokenize(captions, te1, None), cond.tokenize(captions, te2, None)
    context, pooled = cond.encode_sdxl(te1, te2, ids1, ids2)
    assert context.shape == (2, 77, 32 + 48) and pooled.shape == (2, 40)

    out1 = te1.model(input_ids=ids1[:, 0], output_hidden_states=True)
    out2 = te2.model(input_ids=ids2[:, 0], output_hidden_states=True)
    # te1: hidden_states[11] of CLIP-L's 12 layers = the penultimate; te2: [-2]; no final norm
    assert torch.equal(context[..., :32], out1.hidden_states[-2])
    assert torch.equal(context[..., 32:], out2.hidden_states[-2])
    # pooled: normed last state at the first EOS, projected (HF's own text_embeds here)
    eos_at = [6 + 1, 30 + 1]
    manual = te2.model.text_projection(out2.last_hidden_state[torch.arange(2), eos_at])
    assert torch.allclose(pooled, manual, atol=1e-6)
    assert torch.allclose(pooled, out2.text_embeds, atol=1e-6)


@torch.no_grad()
def test_encode_sdxl_long_captions_pool_first_chunk(sdxl_encoders):
    te1, te2 = sdxl_encoders
    captions = [_caption(100), _caption(4)]
    ids1, ids2 = cond.tokenize(captions, te1, 225), cond.tokenize(captions, te2, 225)
    context, pooled = cond.encode_sdxl(te1, te2, ids1, ids2)
    assert context.shape == (2, 227, 80) and pooled.shape == (2, 40)
    first = te2.model(input_ids=ids2[:, 0], output_hidden_states=True)
    assert torch.allclose(pooled, first.text_embeds, atol=1e-6)
    second_chunk = te2.model(input_ids=ids2[:, 1], output_hidden_states=True)
    assert torch.allclose(context[:, 76:151, 32:], second_chunk.hidden_states[-2][:, 1:76], atol=1e-6)


def test_tiny_text_encoders_from_models_package():
    clip = pytest.importorskip("lora_trainer.models.clip")
    te1, te2 = clip.build_tiny_text_encoders("sdxl", 0)
    with torch.no_grad():
        ids = [cond.tokenize([_caption(9)], te, 150) for te in (te1, te2)]
        context, pooled = cond.encode_sdxl(te1, te2, ids[0], ids[1])
        (sd_te,) = clip.build_tiny_text_encoders("sd1", 0)
        sd_context = cond.encode_sd(sd_te, cond.tokenize([_caption(9)], sd_te, None), 2)
    width1 = te1.model.config.hidden_size
    width2 = te2.model.config.hidden_size
    assert context.shape == (1, 152, width1 + width2)
    assert pooled.shape == (1, te2.model.config.projection_dim)
    assert sd_context.shape == (1, 77, sd_te.model.config.hidden_size)


def test_sdxl_clip_skip_warning(caplog):
    with caplog.at_level(logging.WARNING):
        cond.warn_sdxl_clip_skip(None)
    assert caplog.text == ""
    with caplog.at_level(logging.WARNING):
        cond.warn_sdxl_clip_skip(2)
    assert "clip_skip" in caplog.text


# ---------------------------------------------------------------- SDXL vector


def _sinusoid(value, dim=256):
    half = dim // 2
    freqs = [math.exp(-math.log(10000) * i / half) for i in range(half)]
    return [math.cos(value * f) for f in freqs] + [math.sin(value * f) for f in freqs]


def test_sdxl_vector_cond_layout_and_values():
    pooled = torch.randn(2, 1280)
    y = cond.sdxl_vector_cond(pooled, [[1024, 768], [512, 512]], [[32, 0], [0, 16]], [[1024, 1024], [768, 512]])
    assert y.shape == (2, 2816)
    assert torch.equal(y[:, :1280], pooled)
    numbers = [[1024, 768, 32, 0, 1024, 1024], [512, 512, 0, 16, 768, 512]]
    for b in range(2):
        expected = [v for n in numbers[b] for v in _sinusoid(n)]
        assert y[b, 1280:].tolist() == pytest.approx(expected, abs=2e-4)  # float32 phases up to ~1000 rad


def test_sdxl_vector_cond_accepts_tensors_and_keeps_dtype():
    pooled = torch.randn(1, 40, dtype=torch.float16)
    y = cond.sdxl_vector_cond(pooled, torch.tensor([[64, 64]]), torch.tensor([[0, 0]]), torch.tensor([[64, 64]]))
    assert y.shape == (1, 40 + 1536) and y.dtype == torch.float16
    # size 0 embeds as cos=1, sin=0
    crop = y[0, 40 + 512 : 40 + 768].float()
    assert torch.equal(crop[:128], torch.ones(128)) and torch.equal(crop[128:], torch.zeros(128))
