"""The Dataset tab's logic (lora_trainer.ui.dataset_logic) on a dataset made here: open, filter,
frequency, caption save, every batch operation's preview / apply / undo on the bytes on disk,
the subject-trait helper, WD14 tagging through a tiny ONNX tagger, the doctor, the prompt."""
import os
import re

import pytest
from PIL import Image

from lora_trainer.tagging.captions_io import BACKUP_DIR_NAME, UndoRecord, list_backups
from lora_trainer.ui.dataset_logic import (
    BatchRequest,
    DatasetInputError,
    DatasetLogic,
    TagRequest,
    clean_extension,
    prompt_from_caption,
)

CAPTIONS = {
    "3_alice/a1": "alice, blonde hair, blue eyes, smile",
    "3_alice/a2": "alice, blonde hair, blue eyes, outdoors",
    "3_alice/a3": "alice, blonde hair, green eyes, boots, red footwear, red boots",
    "3_alice/a4": None,  # no caption file
    "2_bob/b1": "bob, black hair, smile, smile",
    "2_bob/b2": "bob, black hair, long_hair, (something)\n",
}
COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200), (200, 30, 200)]


@pytest.fixture
def dataset(tmp_path):
    root = tmp_path / "dataset"
    for (stem, text), colour in zip(CAPTIONS.items(), COLOURS):
        image = root / f"{stem}.png"
        image.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (48, 32), colour).save(image)
        if text is not None:
            image.with_suffix(".txt").write_bytes(text.encode("utf-8"))
    return root


@pytest.fixture
def logic(tmp_path):
    return DatasetLogic(cache_dir=str(tmp_path / "thumbs"), tagger_threads=1)


def snapshot(root) -> dict[str, bytes]:
    """Every file under the dataset (backups aside), by relative path."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != BACKUP_DIR_NAME]
        for name in filenames:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = f.read()
    return out


def captions_of(root) -> dict[str, str]:
    return {k[:-4]: v.decode("utf-8") for k, v in snapshot(root).items() if k.endswith(".txt")}


def img(root, stem) -> str:
    return str(root / f"{stem}.png")


def cap(root, stem) -> str:
    return str(root / f"{stem}.txt")


def batch(**fields) -> list:
    return BatchRequest(**fields).values()


def freq_rows(html: str) -> dict[str, int]:
    return {tag: int(n) for tag, n in re.findall(r'data-tag="([^"]*)" data-count="(\d+)"', html)}


# --- open, filter, frequency -------------------------------------------------------------------


def test_open_lists_every_image_with_its_tags(dataset, logic, tmp_path):
    out = logic.view(str(dataset), ".txt", "", "AND")
    stems = ["2_bob/b1", "2_bob/b2", "3_alice/a1", "3_alice/a2", "3_alice/a3", "3_alice/a4"]
    assert out["paths"] == [img(dataset, s) for s in stems]
    labels = [label for _, label in out["gallery"]]
    assert labels == ["bob, black hair, smile, smile", "bob, black hair, long_hair, (something)",
                      CAPTIONS["3_alice/a1"], CAPTIONS["3_alice/a2"], CAPTIONS["3_alice/a3"], "(no caption)"]
    # thumbnails are copies in the cache folder (the dataset is never served directly), at most 256 px
    for thumb, _ in out["gallery"]:
        assert os.path.dirname(thumb) == str(tmp_path / "thumbs")
        with Image.open(thumb) as im:
            assert max(im.size) <= 256
    assert out["concepts"] == ["2_bob", "3_alice"]
    assert out["count"] == out["total"] == 6
    assert "1 without a caption" in out["message"]
    # a quoted path pasted from a file manager opens too; a missing folder says so
    assert logic.view(f'"{dataset}"', ".txt")["total"] == 6
    missing = logic.view(str(tmp_path / "nope"), ".txt")
    assert missing["gallery"] == [] and "is not a folder" in missing["message"]


def test_a_folder_with_too_many_images_is_not_opened(dataset, logic, monkeypatch):
    from lora_trainer.ui import dataset_logic

    monkeypatch.setattr(dataset_logic, "MAX_IMAGES", 5)
    out = logic.view(str(dataset), ".txt")
    assert out["gallery"] == [] and "more than 5 images" in out["message"]
    assert not os.path.exists(logic.cache_dir)  # no thumbnail made


def test_a_single_image_folder_opens_as_its_own_concept(dataset, logic):
    out = logic.view(str(dataset / "2_bob"), ".txt")
    assert out["concepts"] == ["."] and out["total"] == 2


def test_filter_and_or(dataset, logic):
    def stems(text, mode):
        return [os.path.relpath(p, dataset)[:-4] for p in logic.view(str(dataset), ".txt", text, mode)["paths"]]

    assert stems("blonde hair, smile", "AND") == ["3_alice/a1"]
    assert stems("blonde hair, smile", "OR") == ["2_bob/b1", "3_alice/a1", "3_alice/a2", "3_alice/a3"]
    assert stems("Long Hair", "AND") == ["2_bob/b2"]  # compared normalized: long_hair
    assert stems("smile, nothing", "AND") == []
    assert len(stems("", "AND")) == 6


def test_frequency_table_counts_the_filtered_images(dataset, logic):
    everything = freq_rows(logic.view(str(dataset), ".txt")["frequency"])
    assert everything["blonde hair"] == 3 and everything["black hair"] == 2
    assert everything["smile"] == 2  # b1 holds it twice: one image
    filtered = logic.view(str(dataset), ".txt", "smile", "AND")["frequency"]
    assert freq_rows(filtered) == {"smile": 2, "alice": 1, "blonde hair": 1, "blue eyes": 1, "bob": 1,
                                   "black hair": 1}
    assert 'data-images="2"' in filtered and "filtered from 6" in filtered


# --- one caption -------------------------------------------------------------------------------------


def test_select_and_save_writes_exactly_the_text(dataset, logic):
    root = str(dataset)
    paths = logic.view(root, ".txt")["paths"]
    chosen = logic.select(paths, 2, ".txt")
    assert chosen["path"] == img(dataset, "3_alice/a1") and chosen["caption"] == CAPTIONS["3_alice/a1"]
    assert chosen["preview"] and os.path.isfile(chosen["preview"])
    before = snapshot(dataset)
    text = "alice, smile, ünïcode, trailing newline\n"
    message = logic.save_caption(root, chosen["path"], text, ".txt")
    assert message.startswith("Saved")
    assert (dataset / "3_alice/a1.txt").read_bytes() == text.encode("utf-8")
    after = snapshot(dataset)
    assert {k for k in after if after[k] != before.get(k)} == {os.path.join("3_alice", "a1.txt")}
    # atomic: no temporary file left beside it
    assert not [n for n in os.listdir(dataset / "3_alice") if n.startswith(".") or n.endswith(".tmp")]
    # an image without a caption: Save creates it
    a4 = logic.select(paths, 5, ".txt")
    assert a4["caption"] == "" and "No caption" in a4["message"]
    logic.save_caption(root, a4["path"], "alice", ".txt")
    assert (dataset / "3_alice/a4.txt").read_bytes() == b"alice"


def test_save_refuses_what_is_not_an_image_of_the_dataset(dataset, logic, tmp_path):
    root = str(dataset)
    outside = tmp_path / "other.png"
    Image.new("RGB", (8, 8)).save(outside)
    assert "not an image of the open dataset" in logic.save_caption(root, str(outside), "x", ".txt")
    assert not (tmp_path / "other.txt").exists()
    assert "not an image" in logic.save_caption(root, cap(dataset, "2_bob/b1"), "x", ".txt")
    assert "click an image" in logic.save_caption(root, "", "x", ".txt")
    # a caption extension that is an image's would overwrite the image
    assert "cannot be used" in logic.save_caption(root, img(dataset, "2_bob/b1"), "x", ".png")
    with pytest.raises(DatasetInputError):
        clean_extension(".PNG")
    assert clean_extension("caption") == ".caption"
    assert captions_of(dataset)["2_bob/b1"] == CAPTIONS["2_bob/b1"]


# --- batch operations ------------------------------------------------------------------------------

# (filter, mode, request, {caption stem: text after}); every other file stays as it was
CASES = {
    "add_prepend": ("alice", "AND", dict(operation="Add tags", tags="sks", position="Prepend"), {
        "3_alice/a1": "sks, alice, blonde hair, blue eyes, smile",
        "3_alice/a2": "sks, alice, blonde hair, blue eyes, outdoors",
        "3_alice/a3": "sks, alice, blonde hair, green eyes, boots, red footwear, red boots",
    }),
    "add_append_creates_missing": ("", "AND", dict(operation="Add tags", tags="solo, Smile", position="Append"), {
        "3_alice/a2": "alice, blonde hair, blue eyes, outdoors, solo, Smile",
        "3_alice/a3": "alice, blonde hair, green eyes, boots, red footwear, red boots, solo, Smile",
        "3_alice/a4": "solo, Smile",
        "3_alice/a1": "alice, blonde hair, blue eyes, smile, solo",
        "2_bob/b1": "bob, black hair, smile, smile, solo",
        "2_bob/b2": "bob, black hair, long_hair, (something), solo, Smile\n",
    }),
    "remove": ("", "AND", dict(operation="Remove tags", tags="smile, LONG HAIR"), {
        "3_alice/a1": "alice, blonde hair, blue eyes",
        "2_bob/b1": "bob, black hair",
        "2_bob/b2": "bob, black hair, (something)\n",
    }),
    "replace": ("", "AND", dict(operation="Replace", find="blonde_hair", replace="yellow hair"), {
        "3_alice/a1": "alice, yellow hair, blue eyes, smile",
        "3_alice/a2": "alice, yellow hair, blue eyes, outdoors",
        "3_alice/a3": "alice, yellow hair, green eyes, boots, red footwear, red boots",
    }),
    "replace_regex": ("", "AND", dict(operation="Replace", find=r"^blue (\w+)$", replace=r"azure \1", regex=True), {
        "3_alice/a1": "alice, blonde hair, azure eyes, smile",
        "3_alice/a2": "alice, blonde hair, azure eyes, outdoors",
    }),
    "dedupe": ("", "AND", dict(operation="Remove duplicates"), {
        "2_bob/b1": "bob, black hair, smile",
    }),
    "sort": ("", "AND", dict(operation="Sort", keep_first=1), {
        "3_alice/a3": "alice, blonde hair, boots, green eyes, red boots, red footwear",
        "2_bob/b2": "bob, (something), black hair, long_hair\n",
    }),
    "trigger_first": ("smile", "AND", dict(operation="Trigger word first", trigger="smile"), {
        "3_alice/a1": "smile, alice, blonde hair, blue eyes",
        "2_bob/b1": "smile, bob, black hair",
    }),
    "consolidate": ("", "AND", dict(operation="Consolidate"), {
        "3_alice/a3": "alice, blonde hair, green eyes, red boots",
    }),
    "prune": ("", "AND", dict(operation="Prune subject traits", prune_folder="3_alice",
                              prune_tags=["blonde hair", "blue eyes"]), {
        "3_alice/a1": "alice, smile",
        "3_alice/a2": "alice, outdoors",
        "3_alice/a3": "alice, green eyes, boots, red footwear, red boots",
    }),
    "filtered_or": ("outdoors, green eyes", "OR", dict(operation="Remove tags", tags="alice"), {
        "3_alice/a2": "blonde hair, blue eyes, outdoors",
        "3_alice/a3": "blonde hair, green eyes, boots, red footwear, red boots",
    }),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_batch_preview_apply_undo(dataset, logic, case):
    filter_text, mode, fields, expected = CASES[case]
    root = str(dataset)
    original = snapshot(dataset)
    request = batch(**fields)

    preview = logic.preview_batch(root, ".txt", filter_text, mode, *request)
    assert sorted(preview["files"]) == sorted(cap(dataset, s) for s in expected), preview["message"]
    assert preview["count"] == len(expected)
    assert f'data-files-changed="{len(expected)}"' in preview["html"]
    assert snapshot(dataset) == original  # a preview writes nothing
    assert list_backups(root) == []

    applied = logic.apply_batch(root, ".txt", filter_text, mode, *request)
    assert applied["count"] == len(expected), applied["message"]
    now = captions_of(dataset)
    want = {k: v for k, v in CAPTIONS.items() if v is not None}
    want.update(expected)
    assert now == want
    images_now = {k: v for k, v in snapshot(dataset).items() if k.endswith(".png")}
    assert images_now == {k: v for k, v in original.items() if k.endswith(".png")}
    assert not [n for d in ("2_bob", "3_alice") for n in os.listdir(dataset / d) if n.endswith(".tmp")]

    # the batch backed up every caption it touched, byte for byte, before writing
    backups = list_backups(root)
    assert len(backups) == 1
    record = UndoRecord.load(backups[0])
    assert sorted(record.files) == sorted(cap(dataset, s) for s in expected)
    for entry in record.entries:
        rel = os.path.relpath(entry.path, root)
        if rel in original:
            assert open(os.path.join(backups[0], entry.backup), "rb").read() == original[rel]
        else:
            assert entry.backup is None  # created by the batch (undo deletes it)

    message = logic.undo_last(root)
    assert message.startswith("Undid"), message
    assert snapshot(dataset) == original  # byte-identical, created captions removed
    assert logic.undo_last(root).startswith("Nothing to undo")


def test_apply_needs_the_previewed_settings_and_unchanged_files(dataset, logic):
    root = str(dataset)
    original = snapshot(dataset)
    request = batch(operation="Replace", find="smile", replace="grin")
    assert "Preview first" in logic.apply_batch(root, ".txt", "", "AND", *request)["message"]
    logic.preview_batch(root, ".txt", "", "AND", *request)
    changed = batch(operation="Replace", find="smile", replace="laugh")
    assert "Preview first" in logic.apply_batch(root, ".txt", "", "AND", *changed)["message"]
    assert "Preview first" in logic.apply_batch(root, ".txt", "bob", "AND", *request)["message"]
    assert snapshot(dataset) == original
    # a caption edited on disk after the preview: nothing is written
    (dataset / "2_bob/b1.txt").write_text("bob, smile, edited", encoding="utf-8")
    edited = snapshot(dataset)
    out = logic.apply_batch(root, ".txt", "", "AND", *request)
    assert "changed on disk since the preview" in out["message"] and out["count"] == 0
    assert snapshot(dataset) == edited


def test_undo_takes_back_batches_in_reverse_order(dataset, logic):
    root = str(dataset)
    original = snapshot(dataset)
    for fields in (dict(operation="Add tags", tags="sks", position="Prepend"), dict(operation="Remove duplicates")):
        logic.preview_batch(root, ".txt", "", "AND", *batch(**fields))
        logic.apply_batch(root, ".txt", "", "AND", *batch(**fields))
    assert len(logic.undo_records(root)) == 2 and len(list_backups(root)) == 2
    assert logic.undo_last(root).startswith("Undid `remove duplicate tags`: 1 caption(s) restored")
    assert captions_of(dataset)["2_bob/b1"] == "sks, bob, black hair, smile, smile"
    logic.undo_last(root)
    assert snapshot(dataset) == original


def test_batch_inputs_are_checked(dataset, logic):
    root = str(dataset)
    assert "type the tags" in logic.preview_batch(root, ".txt", "", "AND", *batch(operation="Add tags"))["message"]
    bad = logic.preview_batch(root, ".txt", "", "AND", *batch(operation="Replace", find="(", regex=True))
    assert "not a valid regular expression" in bad["message"]
    assert "tick the traits" in logic.preview_batch(
        root, ".txt", "", "AND", *batch(operation="Prune subject traits", prune_folder="3_alice"))["message"]
    assert "unknown operation" in logic.preview_batch(root, ".txt", "", "AND", *batch(operation="Explode"))["message"]


def test_subject_traits_offered_at_a_threshold(dataset, logic):
    root = str(dataset)
    # 3_alice: 4 images (one uncaptioned). alice 3/4 is the folder's class token: never offered
    at_75 = logic.find_traits(root, ".txt", "3_alice", 75, "")
    assert at_75["choices"] == [("blonde hair (3/4)", "blonde hair")]
    at_50 = logic.find_traits(root, ".txt", "3_alice", 50, "")
    assert [tag for _, tag in at_50["choices"]] == ["blonde hair", "blue eyes"]
    # the trigger word typed is never offered either
    assert [tag for _, tag in logic.find_traits(root, ".txt", "2_bob", 100, "bob")["choices"]] == ["black hair"]
    assert logic.find_traits(root, ".txt", "3_alice", 100, "")["choices"] == []


# --- tagging -------------------------------------------------------------------------------------------


def test_tagging_if_empty_writes_only_missing_captions(tmp_path, logic):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from test_tagging_wd14 import write_tiny_tagger

    model = write_tiny_tagger(tmp_path / "models" / "tiny-v3", flavour="v3")
    root = tmp_path / "tagme" / "5_thing"
    root.mkdir(parents=True)
    Image.new("RGB", (32, 32), (255, 0, 0)).save(root / "red.png")
    Image.new("RGB", (32, 32), (0, 0, 255)).save(root / "blue.png")
    (root / "blue.txt").write_bytes(b"keep me, as i am")
    dataset = str(tmp_path / "tagme")

    request = TagRequest(model_dir=model, download=False, mode="Overwrite", trigger="sks")
    assert "Tick *Yes, overwrite*" in logic.start_tagging(dataset, ".txt", *request.values())
    assert logic.tag_status() == {}

    request = TagRequest(model_dir=model, download=False, mode="If empty", trigger="sks")
    message = logic.start_tagging(dataset, ".txt", *request.values())
    assert "started" in message
    status = logic.wait_tagging(timeout=120)
    assert status["state"] == "done", status
    assert (root / "red.txt").read_text(encoding="utf-8") == "sks, red theme, ^_^, medium score"
    assert (root / "blue.txt").read_bytes() == b"keep me, as i am"  # an existing caption is never touched
    assert status["written"] == 1 and status["skipped"] == 1 and status["done"] == status["total"] == 1
    assert status["session_released"] is True  # the ONNX session is dropped when the run ends
    html = logic.tag_status_html()
    assert 'data-state="done"' in html and 'data-written="1"' in html
    assert list(logic.watch_tagging(interval=0.01)) == [html]  # nothing running: one status, no waiting
    # the run is undoable like a batch: the caption it created goes away
    assert len(logic.undo_records(dataset)) == 1
    assert logic.undo_last(dataset).startswith("Undid")
    assert not (root / "red.txt").exists() and (root / "blue.txt").read_bytes() == b"keep me, as i am"


def test_tagging_reports_a_missing_model(tmp_path, logic, dataset):
    request = TagRequest(model_dir=str(tmp_path / "no-models"), download=False)
    assert "started" in logic.start_tagging(str(dataset), ".txt", *request.values())
    status = logic.wait_tagging(timeout=60)
    assert status["state"] == "failed" and "put model.onnx and selected_tags.csv there" in status["message"]
    assert snapshot(dataset)  # nothing written
    assert captions_of(dataset) == {k: v for k, v in CAPTIONS.items() if v is not None}


# --- doctor and prompt ------------------------------------------------------------------------------------


def test_check_dataset_shows_the_doctors_report(dataset, logic):
    html = logic.check(str(dataset), ".txt", "alice")
    assert 'class="lora-trainer-ds-doctor"' in html
    assert "3_alice" in html and "2_bob" in html
    assert 'data-code="missing_caption"' in html and "3_alice/a4.png" in html
    assert 'data-code="missing_trigger"' in html  # bob's captions lack "alice"
    assert "is not a folder" in logic.check(str(dataset / "nope"), ".txt")


def test_prompt_from_a_caption():
    assert prompt_from_caption("ganyu (genshin impact), 1girl\nsecond line", "ganyu") == \
        "<lora:ganyu:0.8> ganyu \\(genshin impact\\), 1girl"
    assert prompt_from_caption("a \\(b\\), c", "") == "a \\(b\\), c"  # already escaped: not twice
    assert prompt_from_caption("", "name.safetensors") == "<lora:name:0.8>"
    assert DatasetLogic.prompt("x, y", " ") == "x, y"


def test_captions_are_not_edited_while_tagging_runs_on_the_dataset(dataset, logic):
    from lora_trainer.ui.dataset_logic import TagJob

    root = str(dataset)
    original = snapshot(dataset)
    logic._job = TagJob(str(dataset / "3_alice"), "tiny", "if-empty", state="running")  # a run on a part of it
    assert "tagging is still running" in logic.save_caption(root, img(dataset, "2_bob/b1"), "x", ".txt")
    request = batch(operation="Remove duplicates")
    assert logic.preview_batch(root, ".txt", "", "AND", *request)["count"] == 1
    assert "tagging is still running" in logic.apply_batch(root, ".txt", "", "AND", *request)["message"]
    assert "already running" in logic.start_tagging(root, ".txt", *TagRequest().values())
    assert snapshot(dataset) == original
    logic._job.state = "done"
    assert logic.apply_batch(root, ".txt", "", "AND", *request)["count"] == 1


# --- bad inputs are messages naming the box, never tracebacks ------------------------------------------


@pytest.mark.parametrize("find, replace, box, words", [
    ("blue", r"\1", "Replace with", "no (groups)"),           # re.error: invalid group reference
    ("(blue)", r"\2", "Replace with", "1 group(s)"),
    ("blue", r"\g<name>", "Replace with", "unknown group name"),  # IndexError inside re
    ("blue", "x\\", "Replace with", "literal backslash"),       # re.error: bad escape
    ("blue(", "x", "Find", "not a valid regular expression"),
])
def test_a_bad_regex_replace_is_a_message_naming_the_box(dataset, logic, find, replace, box, words):
    original = snapshot(dataset)
    request = batch(operation="Replace", find=find, replace=replace, regex=True)
    out = logic.preview_batch(str(dataset), ".txt", "", "AND", *request)
    assert out["message"].startswith(f"**No preview:** {box}:") and words in out["message"], out["message"]
    assert out["count"] == 0 and out["files"] == []
    assert "Preview first" in logic.apply_batch(str(dataset), ".txt", "", "AND", *request)["message"]
    assert snapshot(dataset) == original


def test_bad_numbers_and_names_are_messages(dataset, logic):
    root = str(dataset)
    for keep in ("inf", "-inf", float("nan"), "two"):
        out = logic.preview_batch(root, ".txt", "", "AND", *batch(operation="Sort", keep_first=keep))
        assert "'Keep the first N tags' must be a whole number" in out["message"], keep
    for percent in ("inf", "nan", -5, 0, 150, "abc", None):
        out = logic.find_traits(root, ".txt", "3_alice", percent)
        assert out["choices"] == [] and "must be a number above 0 and up to 100" in out["message"], percent
    assert logic.find_traits(root, ".txt", "3_alice", "75")["choices"] == [("blonde hair (3/4)", "blonde hair")]
    for field, value in (("general_threshold", 5), ("general_threshold", -0.1), ("character_threshold", "nan"),
                         ("character_threshold", "high")):
        message = logic.start_tagging(root, ".txt", *TagRequest(**{field: value}).values())
        what = field.split("_")[0]
        assert message.startswith("**Not started:**") and f"the {what} tag threshold must be a number between 0 and 1" \
            in message, message
    message = logic.start_tagging(root, ".txt", *TagRequest(model="wd-no-such-tagger").values())
    assert message.startswith("**Not started:**") and "unknown tagger model" in message
    assert logic.tag_status() == {}  # nothing was started
    assert "type the trigger word" in logic.preview_batch(
        root, ".txt", "", "AND", *batch(operation="Trigger word first", trigger=" , "))["message"]
    assert "type the tags" in logic.preview_batch(root, ".txt", "", "AND", *batch(operation="Remove tags", tags=","))[
        "message"]


def test_blank_line_captions_get_the_trigger_word(dataset, logic):
    """A caption that is only a blank line is no longer skipped: every caption ends up with
    the trigger word, as the doctor then confirms."""
    root = str(dataset)
    (dataset / "3_alice/a2.txt").write_bytes(b"\n")
    (dataset / "2_bob/b1.txt").write_bytes(b" \r\n")
    for fields, first in ((dict(operation="Add tags", tags="sks", position="Prepend"), "sks"),
                          (dict(operation="Trigger word first", trigger="sks"), "sks")):
        preview = logic.preview_batch(root, ".txt", "", "AND", *batch(**fields))
        assert cap(dataset, "3_alice/a2") in preview["files"] and cap(dataset, "2_bob/b1") in preview["files"]
        assert preview["count"] == 6  # every image, the uncaptioned one included
        logic.apply_batch(root, ".txt", "", "AND", *batch(**fields))
        now = captions_of(dataset)
        assert now["3_alice/a2"] == "sks\n" and now["2_bob/b1"] == "sks\r\n"
        assert all(text.startswith(first) for text in now.values()), now
        assert 'data-code="missing_trigger"' not in logic.check(root, ".txt", "sks")
        assert logic.undo_last(root).startswith("Undid")
        assert (dataset / "3_alice/a2.txt").read_bytes() == b"\n"
    # an operation that adds nothing leaves a blank caption as it is (not emptied: kohya stops on empty files)
    assert cap(dataset, "3_alice/a2") not in logic.preview_batch(
        root, ".txt", "", "AND", *batch(operation="Remove tags", tags="smile"))["files"]


# --- the WebUI's models folder, the Train tab's folder --------------------------------------------------


class ModelsHost:
    def __init__(self, models_dir):
        self._models_dir = models_dir

    def models_dir(self):
        if isinstance(self._models_dir, Exception):
            raise self._models_dir
        return self._models_dir


def test_tagger_models_go_under_the_hosts_models_folder(tmp_path, dataset, monkeypatch):
    from lora_trainer.tagging import wd14

    monkeypatch.delenv("LORA_TRAINER_TAGGER_DIR", raising=False)
    webui_models = tmp_path / "webui" / "models"
    logic = DatasetLogic(ModelsHost(webui_models), cache_dir=str(tmp_path / "thumbs"))
    assert logic.tagger_models_root == str(webui_models / "wd14_tagger")
    # the run looks there when no folder is typed (here: not downloaded, so it says where it looked)
    assert "started" in logic.start_tagging(str(dataset), ".txt", *TagRequest(download=False).values())
    status = logic.wait_tagging(timeout=60)
    assert status["state"] == "failed"
    assert str(webui_models / "wd14_tagger" / "wd-swinv2-tagger-v3") in status["message"]
    # a host without models_dir() (or one that cannot tell): the standalone default, never the working dir
    assert DatasetLogic(object()).tagger_models_root == wd14.DEFAULT_MODELS_ROOT
    assert DatasetLogic(ModelsHost(RuntimeError("not set up"))).tagger_models_root == wd14.DEFAULT_MODELS_ROOT
    assert DatasetLogic(None).tagger_models_root == wd14.DEFAULT_MODELS_ROOT
    monkeypatch.setenv("LORA_TRAINER_TAGGER_DIR", str(tmp_path / "mine"))
    assert logic.tagger_models_root == str(tmp_path / "mine")  # the user's override wins


def test_a1111_host_names_the_webuis_models_folder(tmp_path, monkeypatch):
    fake_webui = pytest.importorskip("fake_webui")
    from lora_trainer.hosts.a1111 import A1111Host

    monkeypatch.delenv("LORA_TRAINER_TAGGER_DIR", raising=False)
    fake_webui.install(monkeypatch, tmp_path / "elsewhere" / "Lora", models_path=tmp_path / "webui" / "models")
    try:
        host = A1111Host(log=lambda _m: None)
        assert host.models_dir() == tmp_path / "webui" / "models"
        assert DatasetLogic(host).tagger_models_root == str(tmp_path / "webui" / "models" / "wd14_tagger")
    finally:
        fake_webui.uninstall()


def test_the_folder_box_follows_the_train_tab_until_the_user_types_their_own():
    from lora_trainer.ui.dataset_logic import follow_train_folder

    box, followed = follow_train_folder("/data/a", "/data/start", "/data/start")  # still the initial value
    assert (box, followed) == ("/data/a", "/data/a")
    assert follow_train_folder("/data/b", box, followed) == ("/data/b", "/data/b")
    assert follow_train_folder("/data/c", "", "/data/b") == ("/data/c", "/data/c")  # empty box: fills it
    # the user typed another folder: it stays, whatever the Train tab does
    assert follow_train_folder("/data/d", "/mine", "/data/c") == ("/mine", "/data/c")
    assert follow_train_folder("", "/mine", "/data/c") == ("/mine", "/data/c")
    # cleared again: follows again
    assert follow_train_folder("/data/e", "  ", "/data/c") == ("/data/e", "/data/e")
