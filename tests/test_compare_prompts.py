"""compare/prompts.py: kohya's sample-prompt syntax."""
import json

from lora_trainer.compare.prompts import SamplePrompt, load_prompts, parse_line, parse_text


def test_every_option_of_a_line():
    p = parse_line("masterpiece, 1girl, sks --n lowres, bad hands --w 512 --h 768 --d 42 --s 28 --l 7.5 --ss euler_a")
    assert p.prompt == "masterpiece, 1girl, sks"
    assert p.negative_prompt == "lowres, bad hands"
    assert (p.width, p.height, p.seed, p.steps, p.cfg_scale, p.sampler) == (512, 768, 42, 28, 7.5, "euler_a")
    assert p.webui_sampler() == "Euler a" and not p.ignored and not p.warnings


def test_defaults_are_kohyas():
    p = parse_line("a cat")
    assert (p.prompt, p.negative_prompt, p.width, p.height, p.seed, p.steps, p.cfg_scale, p.sampler) == (
        "a cat", "", 512, 512, None, 30, 7.5, None)
    assert p.webui_sampler() == "DDIM"  # kohya's --sample_sampler default
    assert p.webui_sampler("k_euler_a") == "Euler a"


def test_kohyas_matching_quirks():
    # case-insensitive letters, matched at the start of the option: "--W 640px" is width 640
    p = parse_line("x --W 640px --S 5000 --L 6 --D 7 --SS k_dpm_2_a --cn ref.png --q unknown --s 0")
    assert p.width == 640 and p.cfg_scale == 6.0 and p.seed == 7 and p.controlnet_image == "ref.png"
    assert p.steps == 1  # the last --s wins, clamped to 1..1000 (5000 -> 1000 before it)
    assert p.sampler == "k_dpm_2_a" and p.webui_sampler() == "DPM2 a"
    assert p.ignored == ["--q unknown"]
    # a dash without the space before it is part of the prompt; "--" needs a space before it
    p = parse_line("half-length portrait, x--w 100 --h 96")
    assert p.prompt == "half-length portrait, x--w 100" and p.height == 96 and p.width == 512
    # a value kohya cannot convert is skipped with a warning
    p = parse_line("x --l 1.2.3 --w 64")
    assert p.cfg_scale == 7.5 and p.width == 64 and p.warnings
    # sizes render rounded down to multiples of 8, at least 64
    assert parse_line("x --w 517 --h 40").size == (512, 64)
    # the negative prompt runs to the next " --"
    assert parse_line("x --n a -- b --n c").negative_prompt == "c"


def test_a_text_file_skips_empty_and_comment_lines(tmp_path):
    text = "# a comment\n\nfirst --d 1\n   \n  # indented: a prompt for kohya\nsecond --n bad\n"
    prompts = parse_text(text)
    assert [p.prompt for p in prompts] == ["first", "# indented: a prompt for kohya", "second"]
    assert [p.line for p in prompts] == [3, 5, 6]
    path = tmp_path / "prompts.txt"
    path.write_text(text, encoding="utf-8")
    assert [p.prompt for p in load_prompts(path)] == ["first", "# indented: a prompt for kohya", "second"]


def test_toml_and_json_files(tmp_path):
    toml = tmp_path / "p.toml"
    toml.write_text('[prompt]\nwidth = 768\nsample_steps = 20\nscale = 5\nnegative_prompt = "bad"\n'
                    '[[prompt.subset]]\nprompt = "one"\nseed = 3\n[[prompt.subset]]\nprompt = "two"\nwidth = 640\n',
                    encoding="utf-8")
    one, two = load_prompts(toml)
    assert (one.prompt, one.width, one.steps, one.cfg_scale, one.seed, one.negative_prompt) == ("one", 768, 20, 5.0, 3, "bad")
    assert (two.prompt, two.width, two.seed) == ("two", 640, None)
    js = tmp_path / "p.json"
    js.write_text(json.dumps(["a --w 640", {"prompt": "b", "sample_sampler": "euler", "height": 704}]), encoding="utf-8")
    a, b = load_prompts(js)
    assert a.width == 640 and (b.prompt, b.height, b.webui_sampler()) == ("b", 704, "Euler")


def test_a_prompt_reads_back_from_its_line():
    p = SamplePrompt("1girl, sks", "lowres, text", 640, 768, 42, 28, 6.5, "euler_a")
    q = parse_line(p.to_line())
    assert (q.prompt, q.negative_prompt, q.width, q.height, q.seed, q.steps, q.cfg_scale, q.sampler) == (
        "1girl, sks", "lowres, text", 640, 768, 42, 28, 6.5, "euler_a")


def test_the_prompt_text_itself_is_tried_for_options_as_kohya_does():
    # sd-scripts' line_to_prompt_dict loops over every " --" part, the prompt included
    p = parse_line("s 20 steps of a staircase --d 3")
    assert p.prompt == "s 20 steps of a staircase" and p.steps == 20 and p.seed == 3
    p = parse_line("w 640 wide shot")
    assert p.width == 640 and not p.ignored and not p.warnings


def test_options_for_other_model_families_are_known_not_ignored():
    p = parse_line("a cat --g 3.5 --ctr 0.2 --rcfg 1 --fs 3 --zz 1")
    assert p.ignored == ["--zz 1"] and not p.warnings
    p = parse_line("a cat --ctr abc")
    assert p.warnings and not p.ignored  # kohya logs the bad value and goes on
