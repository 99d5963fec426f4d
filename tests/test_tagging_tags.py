"""Tag operations, statistics, and batch edits: preview -> apply -> undo, byte for byte."""
import json
import os

import pytest
from PIL import Image

from lora_trainer.tagging import captions_io, tags as T
from lora_trainer.tagging.captions_io import BACKUP_DIR_NAME, BackupSession, UndoRecord, undo


def test_parse_join_normalize():
    assert T.parse_tags(" a,b ,, c d ,") == ["a", "b", "c d"]
    assert T.join_tags(["a", "b"]) == "a, b"
    assert T.normalize_tag("  Long_Hair ") == "long hair"
    assert T.normalize_tag("ganyu \\(genshin impact\\)") == "ganyu (genshin impact)"
    assert T.normalize_tag("^_^") == "^_^" and T.normalize_tag("<|>_<|>") == "<|>_<|>"
    assert T.underscores_to_spaces("||_||") == "||_||" and T.underscores_to_spaces("x_x") == "x_x"
    assert T.escape_tag("a (b) \\c") == "a \\(b\\) \\\\c"
    assert len(T.KAOMOJIS) == 19


def test_list_operations():
    tags = ["sks", "Long_Hair", "smile", "long hair", "1girl"]
    assert T.dedupe(tags) == ["sks", "Long_Hair", "smile", "1girl"]
    assert T.add_tags(["a"], "b, A, c") == ["a", "b", "c"]
    assert T.add_tags(["a"], ["b"], "prepend") == ["b", "a"]
    assert T.remove_tags(tags, "long hair, SMILE") == ["sks", "1girl"]
    assert T.replace_tags(["a", "b", "c"], "b", "x, c") == ["a", "x", "c"]
    assert T.replace_tags(["a", "b"], "b", "") == ["a"]
    assert T.replace_tags(["blue eyes", "blue hair", "sky"], r"^blue (\w+)$", r"red \1", regex=True) == ["red eyes", "red hair", "sky"]
    assert T.replace_tags(["a_b", "c"], "_", " ", regex=True) == ["a b", "c"]
    assert T.sort_tags(["sks", "b", "A", "c"], keep_first=1) == ["sks", "A", "b", "c"]
    assert T.move_first(["a", "SKS", "b"], "sks") == ["SKS", "a", "b"]  # the caption's spelling kept
    assert T.move_first(["a", "b"], "sks, style") == ["sks", "style", "a", "b"]
    assert T.move_first(["a", "b"], "sks", add_missing=False) == ["a", "b"]


def test_consolidate_keeps_the_most_specific():
    assert T.consolidate(T.parse_tags("boots, red footwear, red boots")) == ["red boots"]
    assert T.consolidate(["long hair", "very long hair", "hair"]) == ["very long hair"]
    assert T.consolidate(["black thighhighs", "thighhighs", "black legwear", "legwear", "smile"]) == ["black thighhighs", "smile"]
    assert T.consolidate(["shoes", "footwear", "high heels", "black footwear", "black high heels"]) == ["shoes", "black high heels"]
    # a negation covers nothing; a protected tag (the trigger) is never dropped
    assert T.consolidate(["no shoes", "shoes", "footwear"]) == ["no shoes", "shoes"]
    assert T.consolidate(["hat", "witch hat"], protect="hat") == ["hat", "witch hat"]
    # same words in another order are not "more specific"
    assert T.consolidate(["hair long", "long hair"]) == ["hair long", "long hair"]
    assert T.consolidation(T.parse_tags("boots, red footwear, red boots")) == {"boots": "red boots", "red footwear": "red boots"}
    # a custom table
    assert T.consolidate(["cape", "red cloak"], implications={"cloak": "cape"}) == ["red cloak"]


def test_frequency_and_subject_traits():
    captions = [
        ["sks", "blonde hair", "blue eyes", "smile"],
        ["sks", "Blonde_Hair", "blue eyes", "outdoors"],
        ["sks", "blonde hair", "green eyes"],
        ["sks", "blonde hair", "blue eyes", "smile"],
    ]
    assert T.tag_frequency(captions)[:3] == [("blonde hair", 4), ("sks", 4), ("blue eyes", 3)]
    traits = T.subject_traits(captions, min_fraction=0.5, exclude="sks")
    assert [(t.tag, t.count, t.total) for t in traits] == [("blonde hair", 4, 4), ("blue eyes", 3, 4), ("smile", 2, 4)]
    assert traits[1].to_dict() == {"tag": "blue eyes", "count": 3, "total": 4, "fraction": 0.75}
    assert [t.tag for t in T.subject_traits(captions, 0.75, exclude="sks")] == ["blonde hair", "blue eyes"]


# --- files ----------------------------------------------------------------------------------------


def make_folder(root):
    folder = root / "10_sks"
    folder.mkdir(parents=True)
    for name in ["a", "b", "c", "d", "e"]:
        Image.new("RGB", (8, 8)).save(folder / f"{name}.png")
    (folder / "a.txt").write_bytes(b"sks, smile, long hair\n")
    (folder / "b.txt").write_bytes(b"\xef\xbb\xbfsmile,outdoors,  long_hair\r\n")  # BOM, CRLF, odd spacing
    (folder / "c.txt").write_bytes(b"sks, solo\nsmile, wildcard line\n\n")  # two lines and a blank one
    (folder / "d.txt").write_bytes(b"sks,solo")  # untouched by "remove smile": must stay exactly as is
    # e.png has no caption
    return folder


def files_bytes(root):
    out = {}
    for dirpath, dirnames, files in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != BACKUP_DIR_NAME]
        for name in files:
            p = os.path.join(dirpath, name)
            out[os.path.relpath(p, root)] = open(p, "rb").read()
    return out


def test_preview_writes_nothing_and_lists_each_change(tmp_path):
    make_folder(tmp_path / "train")
    original = files_bytes(tmp_path)
    pv = T.preview(tmp_path / "train", "remove", tags=["smile"])
    assert files_bytes(tmp_path) == original
    assert pv.scanned == 5 and pv.files_changed == 3
    by = {os.path.basename(c.path): c for c in pv.changes}
    assert set(by) == {"a.txt", "b.txt", "c.txt"}
    assert by["a.txt"].before == "sks, smile, long hair\n" and by["a.txt"].after == "sks, long hair\n"
    assert by["a.txt"].removed == ["smile"] and by["a.txt"].added == []
    assert by["b.txt"].after == "outdoors, long_hair\r\n"  # BOM dropped, CRLF kept
    assert by["c.txt"].after == "sks, solo\nwildcard line\n\n"  # the untouched line is byte-identical
    json.dumps(pv.to_dict())  # JSON-able for the UI
    assert "before_bytes" not in pv.to_dict()["changes"][0]


def test_apply_then_undo_is_byte_identical(tmp_path):
    root = tmp_path / "train"
    folder = make_folder(root)
    original = files_bytes(tmp_path)
    pv = T.preview(root, "trigger_first", trigger="sks")  # also creates e.txt
    assert {os.path.basename(c.path) for c in pv.changes} == {"b.txt", "c.txt", "e.txt"}
    record = T.apply(pv, backup_root=root)
    assert (folder / "b.txt").read_bytes() == b"sks, smile, outdoors, long_hair\r\n"
    assert (folder / "e.txt").read_bytes() == b"sks"
    assert (folder / "d.txt").read_bytes() == b"sks,solo"
    # every touched caption is in the backup, byte-identical
    assert os.path.dirname(record.backup_dir) == str(root / BACKUP_DIR_NAME)
    for name in ["b.txt", "c.txt"]:
        assert open(os.path.join(record.backup_dir, "10_sks", name), "rb").read() == original[os.path.join("train", "10_sks", name)]
    assert sorted(map(os.path.basename, record.files)) == ["b.txt", "c.txt", "e.txt"]
    # the record is JSON-able and also saved as the backup's manifest
    assert UndoRecord.from_dict(json.loads(json.dumps(record.to_dict()))).to_dict() == record.to_dict()
    assert UndoRecord.load(record.backup_dir).to_dict() == record.to_dict()
    result = undo(record)
    assert sorted(map(os.path.basename, result.restored)) == ["b.txt", "c.txt"]
    assert result.removed == [str(folder / "e.txt")]
    assert files_bytes(tmp_path) == original
    assert captions_io.list_backups(root) == [record.backup_dir]


def test_every_operation_previews(tmp_path):
    root = tmp_path / "train"
    make_folder(root)
    assert T.preview(root, "add", tags="1girl", position="prepend").files_changed == 5
    assert T.preview(root, "replace", old="long hair", new="very long hair").files_changed == 2
    assert T.preview(root, "replace", old=r"^long.hair$", new="", regex=True).files_changed == 2
    assert T.preview(root, "dedupe").files_changed == 0
    assert T.preview(root, "sort", keep_first=1).files_changed == 2  # a.txt and b.txt
    assert T.preview(root, "consolidate").files_changed == 0
    with pytest.raises(ValueError, match="unknown operation"):
        T.preview(root, "explode")
    files = [str(root / "10_sks" / "a.png"), str(root / "10_sks" / "d.txt")]  # an image stands for its caption
    assert [os.path.basename(c.path) for c in T.preview(files, "add", tags="x").changes] == ["a.txt", "d.txt"]


def test_apply_refuses_a_caption_changed_since_the_preview(tmp_path):
    root = tmp_path / "train"
    folder = make_folder(root)
    pv = T.preview(root, "remove", tags="smile")
    (folder / "a.txt").write_text("edited by hand", encoding="utf-8")
    snap = files_bytes(tmp_path)
    with pytest.raises(captions_io.CaptionIOError, match="changed on disk since the preview"):
        T.apply(pv)
    assert files_bytes(tmp_path) == snap
    assert not (root / BACKUP_DIR_NAME).exists()


def test_undo_leaves_a_caption_edited_after_the_operation(tmp_path):
    root = tmp_path / "train"
    folder = make_folder(root)
    record = T.apply(T.preview(root, "remove", tags="smile"))
    (folder / "a.txt").write_text("edited later", encoding="utf-8")
    result = undo(record)
    assert result.skipped == [str(folder / "a.txt")]
    assert (folder / "a.txt").read_text(encoding="utf-8") == "edited later"
    assert undo(record, force=True).restored == [str(folder / "a.txt")]
    assert (folder / "a.txt").read_bytes() == b"sks, smile, long hair\n"
    assert undo(record).to_dict() == {"restored": [], "removed": [], "skipped": []}  # nothing left to undo


def test_a_run_cut_short_can_still_be_undone(tmp_path):
    root = tmp_path / "ds"
    root.mkdir()
    (root / "a.txt").write_bytes(b"one")
    (root / "b.txt").write_bytes(b"two")
    session = BackupSession(root, [root / "a.txt", root / "b.txt"], "test")
    session.write(root / "a.txt", b"ONE")
    session._journal.flush()  # the process dies here: no close(), the manifest lacks the write
    record = UndoRecord.load(session.record.backup_dir)
    assert record.files == [str(root / "a.txt")]
    result = undo(record)
    assert result.restored == [str(root / "a.txt")] and (root / "a.txt").read_bytes() == b"one"
    assert (root / "b.txt").read_bytes() == b"two"
    session._journal.close()


def test_writes_are_atomic_and_leave_no_temporary_files(tmp_path, monkeypatch):
    path = tmp_path / "x.txt"
    path.write_bytes(b"old")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        captions_io.write_caption(path, "new")
    monkeypatch.undo()
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["x.txt"]
    captions_io.write_caption(path, "new")
    assert path.read_bytes() == b"new" and os.listdir(tmp_path) == ["x.txt"]


def test_backup_root_must_hold_every_file(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with pytest.raises(captions_io.CaptionIOError, match="outside"):
        captions_io.apply_writes({str(tmp_path / "b" / "x.txt"): b"x"}, backup_root=tmp_path / "a")
    assert not (tmp_path / "a" / BACKUP_DIR_NAME).exists()


def test_image_extensions_match_the_trainer():
    from lora_trainer.dataset.folders import IMAGE_EXTENSIONS

    assert captions_io.IMAGE_EXTENSIONS == IMAGE_EXTENSIONS


def test_iter_images_skips_hidden_and_backup_folders(tmp_path):
    (tmp_path / "1_a").mkdir()
    (tmp_path / BACKUP_DIR_NAME / "t" / "1_a").mkdir(parents=True)
    for p in [tmp_path / "1_a" / "x.PNG", tmp_path / "1_a" / ".hidden.png", tmp_path / BACKUP_DIR_NAME / "t" / "1_a" / "y.png"]:
        Image.new("RGB", (2, 2)).save(p, format="PNG")
    (tmp_path / "1_a" / "notes.gif").write_bytes(b"GIF89a")
    assert list(captions_io.iter_images(tmp_path)) == [str(tmp_path / "1_a" / "x.PNG")]


def test_a_regex_replacement_is_checked_against_its_pattern_before_any_file(tmp_path):
    # re.sub checks \1 / \g<name> / escapes only when a tag matches: here, before anything is read
    with pytest.raises(ValueError, match=r"has no \(groups\)"):
        T.compile_replacement("blue", r"\1")
    with pytest.raises(ValueError, match="2 group"):
        T.compile_replacement("(b)(l)", r"\3")
    with pytest.raises(ValueError, match="unknown group name 'y'"):
        T.compile_replacement("(?P<x>b)", r"\g<y>")
    with pytest.raises(ValueError, match="literal backslash"):
        T.compile_replacement("b", "a\\")
    with pytest.raises(ValueError, match="not a valid regular expression"):
        T.compile_replacement("(", "x")
    assert T.compile_replacement("(?P<x>b)(l)", r"\g<x>\2\g<0>").pattern == "(?P<x>b)(l)"
    (tmp_path / "a.txt").write_text("blue eyes, smile", encoding="utf-8")
    with pytest.raises(ValueError, match="does not fit the pattern"):
        T.preview([str(tmp_path / "a.txt")], "replace", old="blue", new=r"\1", regex=True)
    assert T.replace_tags(["blue eyes"], r"^blue (\w+)$", r"azure \1", regex=True) == ["azure eyes"]
    # a line break put in by the replacement separates tags; it never splits the caption line
    assert T.replace_tags(["a b", "c"], " ", r"\n", regex=True) == ["a", "b", "c"]
    preview = T.preview([str(tmp_path / "a.txt")], "replace", old=" ", new="\n", regex=True)
    assert preview.changes[0].after == "blue, eyes, smile"


@pytest.mark.parametrize("text, expected", [("\n", "sks\n"), ("\r\n", "sks\r\n"), ("  \n\n", "sks\n\n"),
                                            (" , \n", "sks\n"), ("   ", "sks")])
def test_a_caption_without_tags_is_edited_like_an_empty_one(tmp_path, text, expected):
    """A caption holding only a blank line gets the tags an operation adds (as a missing or
    empty one does: the first line, its ending kept); an operation that adds nothing leaves
    it byte for byte."""
    assert T.edit_text(text, lambda tags: T.add_tags(tags, "sks")) == expected
    assert T.edit_text(text, lambda tags: T.move_first(tags, "sks")) == expected
    for fn in (T.dedupe, lambda tags: T.remove_tags(tags, "x"), T.sort_tags, T.consolidate):
        assert T.edit_text(text, fn) == text
    path = tmp_path / "a.txt"
    path.write_bytes(text.encode("utf-8"))
    (tmp_path / "a.png").write_bytes(b"")
    preview = T.preview(str(tmp_path), "trigger_first", trigger=["sks"])
    assert [c.path for c in preview.changes] == [str(path)] and preview.changes[0].added == ["sks"]
    T.apply(preview, backup_root=tmp_path)
    assert path.read_bytes() == expected.encode("utf-8")
    assert T.preview(str(tmp_path), "add", tags=["sks"]).changes == []  # it has the trigger word now
