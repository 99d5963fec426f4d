"""CLIP tokenizer and text-encoder conversion."""
import gzip
import re

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from lora_trainer.models import clip, tokenizer as tok_mod
from lora_trainer.models.clip import (
    build_tiny_text_encoders,
    hf_state_dict,
    text_encoder_config_dict,
    text_encoders_from_state_dict,
    text_encoders_to_state_dict,
    tiny_text_encoder_state_dict,
    write_text_encoder_folder,
)
from lora_trainer.models.tokenizer import load_clip_tokenizer, write_tokenizer_files

ARCHS = ("sd1", "sd2", "sdxl")


def _ids(tokenizer, texts, length=77):
    return tokenizer(texts, padding="max_length", max_length=length, truncation=True, return_tensors="pt").input_ids


# ------------------------------------------------------------------ tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return load_clip_tokenizer()


def _reference_tokenize(text):
    """OpenAI's SimpleTokenizer, written out independently (ASCII input only)."""
    printable = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    byte_chars = {b: chr(b) for b in printable}
    n = 0
    for b in range(256):
        if b not in byte_chars:
            byte_chars[b] = chr(256 + n)
            n += 1
    lines = gzip.open(tok_mod.clip_vocab_path()).read().decode("utf-8").split("\n")[1:48895]
    merges = [tuple(line.split()) for line in lines]
    symbols = [byte_chars[b] for b in printable] + [byte_chars[b] for b in range(256) if b not in printable]
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    encoder = {t: i for i, t in enumerate(vocab)}
    ranks = {m: i for i, m in enumerate(merges)}

    def bpe(word):
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            pairs = {(parts[i], parts[i + 1]) for i in range(len(parts) - 1)}
            best = min(pairs, key=lambda p: ranks.get(p, float("inf")))
            if best not in ranks:
                break
            merged, i = [], 0
            while i < len(parts):
                if i < len(parts) - 1 and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        return parts

    text = re.sub(r"\s+", " ", text).strip().lower()
    ids = [encoder["<|startoftext|>"]]
    for word in re.findall(r"'s|'t|'re|'ve|'m|'ll|'d|[a-z]+|[0-9]|[^\sa-z0-9]+", text):
        ids += [encoder[t] for t in bpe("".join(byte_chars[b] for b in word.encode("utf-8")))]
    return ids + [encoder["<|endoftext|>"]]


def test_tokenizer_matches_known_clip_ids(tokenizer):
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert tokenizer("1girl, solo").input_ids == [49406, 272, 1611, 267, 5797, 49407]
    assert tokenizer("Masterpiece").input_ids == [49406, 12066, 49407]
    assert len(tokenizer) == 49408
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (49406, 49407, 49407)
    assert tokenizer.model_max_length == 77
    # "Ń" stands for the soft hyphen, the last of the bytes moved past 255
    assert tokenizer.convert_ids_to_tokens([0, 255, 256, 511, 512]) == ["!", "Ń", "!</w>", "Ń</w>", "in"]


@pytest.mark.parametrize("text", [
    "1girl, solo, long hair, looking at viewer",
    "A  photo\nof an ASTRONAUT riding a horse on mars!!",
    "masterpiece, best quality, (blue eyes:1.2), [red hair], <lora:abc_v2:0.8>",
    "don't stop 1234 the_quick-brown fox's tail; x@y.com #hashtag",
    "zxqj qwertyuiop antidisestablishmentarianism",
])
def test_tokenizer_equals_reference_bpe(tokenizer, text):
    assert tokenizer(text).input_ids == _reference_tokenize(text)


def test_tokenizer_padding_first_and_second_encoder(tokenizer, tmp_path, monkeypatch):
    assert _ids(tokenizer, ["a cat"], 8).tolist() == [[49406, 320, 2368] + [49407] * 5]
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    te2 = load_clip_tokenizer(pad_token="!")
    assert (tmp_path / "lora_trainer" / "clip_tokenizer_pad_excl" / "vocab.json").is_file()
    assert te2.pad_token_id == 0 and te2.eos_token_id == 49407
    assert _ids(te2, ["a cat"], 8).tolist() == [[49406, 320, 2368, 49407, 0, 0, 0, 0]]
    # truncation keeps the closing <|endoftext|>
    long = _ids(te2, ["cat " * 100])[0]
    assert long.shape == (77,) and long[0] == 49406 and long[-1] == 49407 and (long[1:-1] == 2368).all()


def test_tokenizer_files_load_with_transformers(tmp_path):
    from transformers import CLIPTokenizer

    write_tokenizer_files(tmp_path, pad_token="!")
    loaded = CLIPTokenizer.from_pretrained(str(tmp_path))
    assert loaded.pad_token == "!" and loaded.pad_token_id == 0
    assert loaded("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]


def test_missing_open_clip_is_explained(monkeypatch):
    monkeypatch.setattr(tok_mod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps open_clip_torch"):
        tok_mod.clip_vocab_path()


# ------------------------------------------------------ reference OpenCLIP


def _random_open_clip(prefix, width=48, layers=3, proj=40, seed=1):
    """OpenCLIP text-tower tensors written directly, not through our code."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=0.1, offset=0.0):
        return offset + scale * torch.randn(*shape, generator=g)

    sd = {"token_embedding.weight": r(49408, width), "positional_embedding": r(77, width, scale=0.01)}
    for i in range(layers):
        b = f"transformer.resblocks.{i}."
        sd.update({
            b + "ln_1.weight": r(width, offset=1.0), b + "ln_1.bias": r(width),
            b + "attn.in_proj_weight": r(3 * width, width, scale=width ** -0.5), b + "attn.in_proj_bias": r(3 * width),
            b + "attn.out_proj.weight": r(width, width, scale=width ** -0.5), b + "attn.out_proj.bias": r(width),
            b + "ln_2.weight": r(width, offset=1.0), b + "ln_2.bias": r(width),
            b + "mlp.c_fc.weight": r(4 * width, width, scale=width ** -0.5), b + "mlp.c_fc.bias": r(4 * width),
            b + "mlp.c_proj.weight": r(width, 4 * width, scale=(4 * width) ** -0.5), b + "mlp.c_proj.bias": r(width),
        })
    sd.update({"ln_final.weight": r(width, offset=1.0), "ln_final.bias": r(width, offset=0.2),
               "text_projection": r(width, proj, scale=width ** -0.5), "logit_scale": torch.tensor(4.6052)})
    return {prefix + k: v for k, v in sd.items()}


def _open_clip_forward(sd, prefix, ids, layers):
    """OpenCLIP's text tower, on torch's own MultiheadAttention: hidden states
    after each block, ln_final output, and the pooled ``x[eot] @ P``."""
    p = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    width = p["positional_embedding"].shape[1]
    n = ids.shape[1]
    mask = torch.full((n, n), float("-inf")).triu(1)
    x = p["token_embedding.weight"][ids] + p["positional_embedding"][:n]
    states = [x]
    for i in range(layers):
        b = f"transformer.resblocks.{i}."
        attn = nn.MultiheadAttention(width, width // 16, batch_first=True)
        attn.load_state_dict({name: p[b + "attn." + name] for name in
                              ("in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias")})
        h = F.layer_norm(x, (width,), p[b + "ln_1.weight"], p[b + "ln_1.bias"])
        x = x + attn(h, h, h, need_weights=False, attn_mask=mask)[0]
        h = F.layer_norm(x, (width,), p[b + "ln_2.weight"], p[b + "ln_2.bias"])
        h = F.gelu(F.linear(h, p[b + "mlp.c_fc.weight"], p[b + "mlp.c_fc.bias"]))
        x = x + F.linear(h, p[b + "mlp.c_proj.weight"], p[b + "mlp.c_proj.bias"])
        states.append(x)
    final = F.layer_norm(x, (width,), p["ln_final.weight"], p["ln_final.bias"])
    pooled = final[torch.arange(len(ids)), ids.argmax(-1)] @ p["text_projection"]
    return states, final, pooled


@pytest.fixture(scope="module")
def sdxl_open_clip_dict():
    te1 = tiny_text_encoder_state_dict("sd1")  # any HF-layout CLIP serves as te1
    sd = {k.replace("cond_stage_model.", "conditioner.embedders.0."): v for k, v in te1.items()}
    sd.update(_random_open_clip("conditioner.embedders.1.model."))
    return sd


def test_sdxl_te2_matches_open_clip_reference(sdxl_open_clip_dict, tokenizer):
    te1, te2 = text_encoders_from_state_dict(sdxl_open_clip_dict, "sdxl")
    assert (te1.name, te2.name) == ("te1", "te2")
    assert te2.pad_token_id == 0 and te2.tokenizer.pad_token_id == 0
    assert te2.model.config.hidden_act == "gelu" and te1.model.config.hidden_act == "quick_gelu"
    assert te2.model.text_projection.weight.shape == (40, 48)
    ids = _ids(te2.tokenizer, ["a photo of a cat", "1girl, solo"])
    with torch.no_grad():
        out = te2.model(ids, output_hidden_states=True)
        states, final, pooled = _open_clip_forward(sdxl_open_clip_dict, "conditioner.embedders.1.model.", ids, 3)
    assert len(out.hidden_states) == 4
    for ours, ref in zip(out.hidden_states, states):
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.last_hidden_state, final, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.text_embeds, pooled, atol=1e-5, rtol=1e-5)


def test_sdxl_te2_matches_diffusers_conversion(sdxl_open_clip_dict):
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint
    from transformers import CLIPTextModelWithProjection

    _, te2 = text_encoders_from_state_dict(sdxl_open_clip_dict, "sdxl")
    theirs = CLIPTextModelWithProjection(te2.model.config).eval()
    converted = convert_open_clip_checkpoint(theirs, sdxl_open_clip_dict, prefix="conditioner.embedders.1.model.")
    assert set(converted) == set(hf_state_dict(theirs))
    theirs.load_state_dict(converted, strict=False)
    ids = _ids(te2.tokenizer, ["a photo of a cat, masterpiece"])
    with torch.no_grad():
        a = te2.model(ids, output_hidden_states=True)
        b = theirs(ids, output_hidden_states=True)
    for x, y in zip(a.hidden_states, b.hidden_states):
        assert torch.equal(x, y)
    assert torch.equal(a.text_embeds, b.text_embeds)


def test_sd2_drops_last_block_like_kohya():
    sd = _random_open_clip("cond_stage_model.model.", width=32, layers=4, proj=32)
    (te,) = text_encoders_from_state_dict(sd, "sd2")
    assert te.name == "te" and te.model.config.num_hidden_layers == 3
    assert te.model.config.num_attention_heads == 2 and not hasattr(te.model, "text_projection")
    ids = _ids(te.tokenizer, ["a photo of a cat"])
    with torch.no_grad():
        out = te.model(ids, output_hidden_states=True)
        states, _, _ = _open_clip_forward(sd, "cond_stage_model.model.", ids, 4)
    # SD2 conditions on ln_final(penultimate block output)
    p = "cond_stage_model.model.ln_final."
    expected = F.layer_norm(states[-2], (32,), sd[p + "weight"], sd[p + "bias"])
    torch.testing.assert_close(out.last_hidden_state, expected, atol=1e-5, rtol=1e-5)
    assert not any("resblocks.3" in n for n, _ in te.model.named_modules())


# ------------------------------------------------------------ SD1 / strict


def _hf_clip_checkpoint(seed=0):
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    config = CLIPTextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                            max_position_embeddings=77, vocab_size=49408, eos_token_id=49407, bos_token_id=49406)
    source = CLIPTextModel(config).eval()
    # transformers >= 5.6 dropped the "text_model." level from CLIPTextModel's keys
    sd = {"cond_stage_model.transformer." + ("" if k.startswith("text_model.") else "text_model.") + k: v
          for k, v in hf_state_dict(source).items()}
    sd["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77)[None]
    sd["model.diffusion_model.out.0.weight"] = torch.ones(3)  # other parts of the checkpoint are ignored
    return source, sd


def test_sd1_loads_strictly_and_matches_source():
    source, sd = _hf_clip_checkpoint()
    (te,) = text_encoders_from_state_dict(sd, "sd1")
    assert te.model.config.hidden_act == "quick_gelu" and te.pad_token_id == 49407
    assert te.model.text_model.final_layer_norm is not None
    names = [n for n, _ in te.model.named_modules()]
    assert "text_model.encoder.layers.1.self_attn.q_proj" in names
    ids = _ids(te.tokenizer, ["a photo of a cat"])
    with torch.no_grad():
        a, b = te.model(ids, output_hidden_states=True), source(ids, output_hidden_states=True)
    for x, y in zip(a.hidden_states, b.hidden_states):
        assert torch.equal(x, y)
    assert torch.equal(a.pooler_output, b.pooler_output)

    extra = dict(sd, **{"cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc3.weight": torch.ones(1)})
    with pytest.raises(ValueError, match="unexpected keys.*fc3"):
        text_encoders_from_state_dict(extra, "sd1")
    missing = {k: v for k, v in sd.items() if "layers.1.mlp.fc2.bias" not in k}
    with pytest.raises(ValueError, match="missing keys.*layers.1.mlp.fc2.bias"):
        text_encoders_from_state_dict(missing, "sd1")
    with pytest.raises(ValueError, match="no text encoder"):
        text_encoders_from_state_dict(sd, "sdxl")


def test_open_clip_unknown_key_is_an_error(sdxl_open_clip_dict):
    bad = dict(sdxl_open_clip_dict, **{"conditioner.embedders.1.model.transformer.resblocks.0.attn.foo": torch.ones(1)})
    with pytest.raises(ValueError, match="unexpected OpenCLIP keys"):
        text_encoders_from_state_dict(bad, "sdxl")


# --------------------------------------------------------------- round trip


@pytest.mark.parametrize("arch", ARCHS)
def test_round_trip_is_bit_exact(arch):
    sd = tiny_text_encoder_state_dict(arch, seed=3)
    back = text_encoders_to_state_dict(text_encoders_from_state_dict(sd, arch), arch)
    assert set(back) == set(sd)
    for key in sd:
        assert back[key].dtype == sd[key].dtype and torch.equal(back[key], sd[key]), key


def test_round_trip_of_foreign_layouts(sdxl_open_clip_dict):
    _, sd1 = _hf_clip_checkpoint()
    sd1.pop("model.diffusion_model.out.0.weight")
    back = text_encoders_to_state_dict(text_encoders_from_state_dict(sd1, "sd1"), "sd1")
    assert set(back) == set(sd1) and all(torch.equal(back[k], sd1[k]) for k in sd1)
    back = text_encoders_to_state_dict(text_encoders_from_state_dict(sdxl_open_clip_dict, "sdxl"), "sdxl")
    assert set(back) == set(sdxl_open_clip_dict)
    assert all(torch.equal(back[k], sdxl_open_clip_dict[k]) for k in back)


def test_dtype_is_applied():
    (te,) = text_encoders_from_state_dict(tiny_text_encoder_state_dict("sd1"), "sd1", dtype=torch.float16)
    assert {p.dtype for p in te.model.parameters()} == {torch.float16}


# -------------------------------------------------------------- tiny models


@pytest.mark.parametrize("arch,names", [("sd1", ["te"]), ("sd2", ["te"]), ("sdxl", ["te1", "te2"])])
def test_tiny_encoders_shape_and_determinism(arch, names):
    encoders = build_tiny_text_encoders(arch, seed=7)
    assert [e.name for e in encoders] == names
    again = build_tiny_text_encoders(arch, seed=7)
    other = build_tiny_text_encoders(arch, seed=8)
    for e, e2, e3 in zip(encoders, again, other):
        c = e.model.config
        assert (c.vocab_size, c.max_position_embeddings, c.num_hidden_layers) == (49408, 77, 3)
        assert 32 <= c.hidden_size <= 64
        a, b, d = hf_state_dict(e.model), hf_state_dict(e2.model), hf_state_dict(e3.model)
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert not torch.equal(a["text_model.final_layer_norm.weight"], d["text_model.final_layer_norm.weight"])
        ln = e.model.text_model.final_layer_norm
        assert (ln.weight - 1).abs().mean() > 0.05 and ln.bias.mean().abs() > 0.1
        ids = _ids(e.tokenizer, ["a photo of a cat", "1girl"])
        with torch.no_grad():
            out = e.model(ids, output_hidden_states=True)
        assert len(out.hidden_states) == 4  # embeddings + 3 layers: clip_skip 2 is meaningful
        # the WebUI's emphasis rescales by mean(z) before / after: must not be ~0
        assert out.last_hidden_state.mean(dim=(1, 2)).abs().min() > 0.05
        assert not torch.allclose(out.last_hidden_state[0], out.last_hidden_state[1])
    if arch == "sdxl":
        assert encoders[1].pad_token_id == 0 and hasattr(encoders[1].model, "text_projection")


# ----------------------------------------------------------- config folder


@pytest.mark.parametrize("arch", ["sd1", "sdxl"])
def test_config_folder_builds_the_same_model(arch, tmp_path):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    for enc in build_tiny_text_encoders(arch):
        folder = write_text_encoder_folder(enc, tmp_path / enc.name)
        config = CLIPTextConfig.from_pretrained(str(folder))
        written = text_encoder_config_dict(enc)
        for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                    "projection_dim", "hidden_act", "vocab_size", "max_position_embeddings", "eos_token_id"):
            assert getattr(config, key) == written[key] == getattr(enc.model.config, key), key
        projected = enc.name == "te2"
        rebuilt = (CLIPTextModelWithProjection if projected else CLIPTextModel)(config).eval()
        if not hasattr(rebuilt, "text_model"):
            rebuilt = clip._TextModelShell(rebuilt)
        rebuilt.load_state_dict(hf_state_dict(enc.model), strict=False)
        folder_tok = CLIPTokenizer.from_pretrained(str(folder))
        assert folder_tok.pad_token_id == (0 if projected else 49407)
        ids = _ids(folder_tok, ["a photo of a cat"])
        with torch.no_grad():
            assert torch.equal(rebuilt(ids).last_hidden_state, enc.model(ids).last_hidden_state)

    sd = tiny_text_encoder_state_dict(arch)
    encoders = text_encoders_from_state_dict(sd, arch, tokenizer_dir=str(tmp_path / ("te" if arch == "sd1" else "te1")))
    assert [e.pad_token_id for e in encoders] == ([49407] if arch == "sd1" else [49407, 0])
