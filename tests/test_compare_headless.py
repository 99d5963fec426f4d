"""The headless epoch grid (compare/headless.py): a diffusers pipeline over a tiny checkpoint,
each epoch file loaded through diffusers' own kohya loader.

What is proven here:

* the grid has (1 + epochs) x rows cells in the X/Y/Z plot's order, titled like the plot,
  saved with its infotext where the module says, and Publish can cut a cell out of it;
* the no-LoRA column is exactly the pipeline's output without any LoRA (also after LoRAs were
  loaded and unloaded), and an epoch cell is exactly what loading that file by hand with
  ``load_lora_weights`` at scale 0.8 gives; the text-encoder-only row is the file with its
  UNet half removed by hand;
* seeds as rows give each row its seed; the suggestion comes from the cells' change curve;
* SDXL draws too; a checkpoint axis is refused with a message; a host job cannot nest.
"""
import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("peft")

from conftest import make_images  # noqa: E402
from lora_trainer.compare import candidate, headless  # noqa: E402
from lora_trainer.compare.publish import crop_cell  # noqa: E402
from lora_trainer.compare.result import latest_result  # noqa: E402
from lora_trainer.compare.xyz import ComparisonError, build_comparison, discover_family  # noqa: E402
from lora_trainer.config import from_dict  # noqa: E402
from lora_trainer.models.standalone import load_checkpoint  # noqa: E402
from lora_trainer.training.loop import train  # noqa: E402

QUIET = lambda _m: None  # noqa: E731
SIZE = dict(steps=4, width=64, height=64)


def trained_family(checkpoint, root, arch_lr=5e-2):
    make_images(root / "data" / "2_sks", 4)
    config, _ = from_dict({
        "pretrained_model_name_or_path": checkpoint, "train_data_dir": str(root / "data"),
        "output_dir": str(root / "Lora"), "output_name": "t", "resolution": "64", "train_batch_size": 2,
        "network_dim": 4, "network_alpha": 2, "learning_rate": arch_lr, "max_train_epochs": 2,
        "save_every_n_epochs": 1, "cache_latents": True, "seed": 1, "device": "cpu",
    })
    train(config, load_checkpoint(checkpoint), log=QUIET)
    return discover_family(root / "Lora", "t")


@pytest.fixture(scope="module")
def sd1(tiny_checkpoints, tmp_path_factory):
    checkpoint = tiny_checkpoints("sd1")
    return checkpoint, trained_family(checkpoint, tmp_path_factory.mktemp("headless_sd1"))


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def render_plain(pipe, text, negative, seed, **kwargs):
    return pipe(prompt=text, negative_prompt=negative, num_inference_steps=SIZE["steps"], guidance_scale=7.0,
                width=SIZE["width"], height=SIZE["height"], generator=torch.Generator().manual_seed(seed),
                output_type="pil", **kwargs).images[0]


def test_grid_has_a_no_lora_column_and_one_per_epoch_and_is_saved(sd1):
    checkpoint, family = sd1
    comparison = build_comparison(family, prompt="sks, circle", seed=5, **SIZE)
    result = headless.run_comparison(comparison, checkpoint_path=checkpoint, device="cpu", log=QUIET)
    assert (comparison.columns, comparison.rows) == (3, 1) and len(result.cells) == 3
    assert comparison.x.titles == ["no LoRA", "epoch 1", "epoch 2 (final)"]
    # saved beside the LoRA folder, the WebUI's infotext in its parameters chunk
    from PIL import Image

    path = result.grid_path
    assert path.startswith(str(family.folder.parent / "grids" / "t-grid-")) and path.endswith(".png")
    with Image.open(path) as saved:
        assert saved.size == result.grid.size
        assert saved.text["parameters"].startswith("sks, circle <no_lora:t:0.8>\nNegative prompt: ")
        assert "Seed: 5" in saved.text["parameters"] and "Steps: 4" in saved.text["parameters"]
    # the cells are the grid's bottom-right block, in order: Publish's crop finds them
    for ix in range(3):
        crop = crop_cell(result.grid, 3, 1, ix, 0, cell_size=(64, 64))
        assert crop.tobytes() == result.cells[ix].convert("RGB").tobytes()
    assert latest_result(family.folder, "t") is result

    # the suggestion is the candidate module's reading of these very cells
    assert result.suggestion is not None
    assert result.suggestion.labels == ["no LoRA -> 1", "1 -> 2"]
    expected = candidate.epoch_curve([[result.cells[1]], [result.cells[2]]], baseline=[result.cells[0]])
    assert result.suggestion.curve == pytest.approx(expected)
    assert min(expected) > 0  # each epoch changes the image


def test_no_lora_column_is_the_plain_pipeline_and_an_epoch_cell_is_the_file_loaded_by_hand(sd1, tmp_path):
    checkpoint, family = sd1
    comparison = build_comparison(family, prompt="sks, circle", negative_prompt="blurry", seed=9, y="strength",
                                  strengths=(0.8, 1.2), **SIZE)
    pipe = headless.build_pipeline(checkpoint, log=QUIET)
    result = headless.run_comparison(comparison, checkpoint_path=checkpoint, pipe=pipe, out_dir=tmp_path, log=QUIET)
    assert len(result.cells) == 3 * 2 and result.suggestion is None  # strengths as rows: no suggestion
    assert [c.prompt for c in comparison.cells[:3]] == [
        "sks, circle <no_lora:t:0.8>", "sks, circle <lora:t-000001:0.8>", "sks, circle <lora:t:0.8>"]

    plain = headless.build_pipeline(checkpoint, log=QUIET)
    headless.set_scheduler(plain, comparison.sampler_name)
    without = render_plain(plain, "sks, circle", "blurry", 9)
    assert result.cell_image(0, 0).tobytes() == without.tobytes()
    assert result.cell_image(0, 1).tobytes() == without.tobytes()  # strength rows change nothing without a LoRA
    # the comparison's pipeline, its LoRAs unloaded, draws the plain image again
    assert render_plain(pipe, "sks, circle", "blurry", 9).tobytes() == without.tobytes()

    by_hand = headless.build_pipeline(checkpoint, log=QUIET)
    headless.set_scheduler(by_hand, comparison.sampler_name)
    by_hand.load_lora_weights(str(family.find(1).path))
    epoch1 = render_plain(by_hand, "sks, circle", "blurry", 9, cross_attention_kwargs={"scale": 0.8})
    assert np.abs(pixels(epoch1) - pixels(without)).mean() > 1  # the LoRA does something
    assert np.abs(pixels(result.cell_image(1, 0)) - pixels(epoch1)).max() <= 1
    stronger = render_plain(by_hand, "sks, circle", "blurry", 9, cross_attention_kwargs={"scale": 1.2})
    assert np.abs(pixels(stronger) - pixels(epoch1)).max() > 1  # the tolerance tells strengths apart
    assert np.abs(pixels(result.cell_image(1, 1)) - pixels(stronger)).max() <= 1


def test_text_encoder_and_unet_rows(sd1, tmp_path):
    checkpoint, family = sd1
    comparison = build_comparison(family, prompt="sks, circle", seed=3, y="te_unet", epochs=[2], **SIZE)
    result = headless.run_comparison(comparison, checkpoint_path=checkpoint, out_dir=tmp_path, log=QUIET)
    assert comparison.y.titles == ["text encoder only (0.8)", "UNet only (0.8)", "both (0.8)"]
    assert len(result.cells) == 2 * 3
    te_only, unet_only, both = (pixels(result.cell_image(1, iy)) for iy in range(3))
    none = pixels(result.cell_image(0, 0))
    for image in (te_only, unet_only):
        assert np.abs(image - both).mean() > 0.5 and np.abs(image - none).mean() > 0.5

    # by hand: the file loaded, then its UNet half taken out: the text encoder's effect alone
    by_hand = headless.build_pipeline(checkpoint, log=QUIET)
    headless.set_scheduler(by_hand, comparison.sampler_name)
    by_hand.load_lora_weights(str(family.find(2).path), adapter_name="x")
    by_hand.unet.delete_adapters("x")
    expected = render_plain(by_hand, "sks, circle", comparison.negative_prompt, 3,
                            cross_attention_kwargs={"scale": 0.8})
    assert np.abs(te_only - pixels(expected)).max() <= 1


def test_seed_rows_use_their_seeds(sd1, tmp_path):
    checkpoint, family = sd1
    comparison = build_comparison(family, prompt="sks, circle", seed=20, y="seed", seeds=[20, 21], epochs=[1], **SIZE)
    result = headless.run_comparison(comparison, checkpoint_path=checkpoint, save_grid=False, log=QUIET)
    assert result.grid_path is None and len(result.cells) == 2 * 2
    plain = headless.build_pipeline(checkpoint, log=QUIET)
    headless.set_scheduler(plain, comparison.sampler_name)
    for iy, seed in enumerate((20, 21)):
        image = render_plain(plain, "sks, circle", comparison.negative_prompt, seed)
        assert result.cell_image(0, iy).tobytes() == image.tobytes()
    assert result.suggestion is not None  # seeds as rows still give one


def test_tags_are_read_as_the_webui_reads_them():
    assert headless.parse_prompt("a, b <no_lora:t:0.8>") == ("a, b", [])
    assert headless.parse_prompt("a <lora:t-000001:0.5>, b") == ("a , b", [("t-000001", 0.5, 0.5)])
    assert headless.parse_prompt("<lora:t:0.8:0>") == ("", [("t", 0.8, 0.0)])
    assert headless.parse_prompt("<lora:t:te=0.3:unet=0.6> x <lora:u>") == ("x", [("t", 0.3, 0.6), ("u", 1.0, 1.0)])
    with pytest.raises(ComparisonError, match="weights"):
        headless.parse_prompt("<lora:t:strong>")


def test_refusals(sd1, tmp_path):
    checkpoint, family = sd1
    comparison = build_comparison(family, prompt="x", y="checkpoint", checkpoints=["a.safetensors", "b"], **SIZE)
    with pytest.raises(ComparisonError, match="one checkpoint"):
        headless.run_comparison(comparison, checkpoint_path=checkpoint, log=QUIET)
    with pytest.raises(ComparisonError, match="no sampler 'Wobbly'"):
        headless.sampler_key("Wobbly")
    assert headless.sampler_key("k_euler_a") == headless.sampler_key("Euler a") == "euler a"
    missing = build_comparison(family, prompt="x <lora:nowhere:1>", **SIZE)
    with pytest.raises(ComparisonError, match="nowhere.safetensors does not exist"):
        headless.run_comparison(missing, checkpoint_path=checkpoint, save_grid=False, log=QUIET)


def test_standalone_host_runs_it_as_its_own_job(sd1, tmp_path):
    from lora_trainer.hosts.standalone import ReentrantJobError, StandaloneHost

    checkpoint, family = sd1
    host = StandaloneHost(checkpoint, family.folder, device="cpu")
    comparison = build_comparison(family, prompt="sks", epochs=[1], **SIZE)
    result = host.run_comparison(comparison, out_dir=tmp_path)
    assert result.grid_path.startswith(str(tmp_path))
    with pytest.raises(ReentrantJobError):
        host.run_exclusive(lambda: host.run_comparison(comparison, save_grid=False), title="Training LoRA t")


def test_sdxl_grid(tiny_checkpoints, tmp_path):
    checkpoint = tiny_checkpoints("sdxl")
    family = trained_family(checkpoint, tmp_path)
    comparison = build_comparison(family, prompt="sks, circle", seed=5, epochs=[2], y="strength", strengths=(0.5, 1.0),
                                  **SIZE)
    result = headless.run_comparison(comparison, checkpoint_path=checkpoint, save_grid=False, log=QUIET)
    assert len(result.cells) == 2 * 2
    none, half, full = (pixels(result.cell_image(ix, iy)) for ix, iy in ((0, 0), (1, 0), (1, 1)))
    assert np.array_equal(none, pixels(result.cell_image(0, 1)))
    assert np.abs(half - none).mean() > 0.5 and np.abs(full - half).mean() > 0.5
