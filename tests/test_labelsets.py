"""Labelled sets: manifests, folders, ZIP uploads (with hostile archives), the demo set."""

from __future__ import annotations

import io
import json
import stat
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from nsfw_core import labelsets
from nsfw_core.errors import InputError
from nsfw_core.labelsets import LabelledItem, LabelSetError
from tests.helpers.paths import ROOT



def png(color=(200, 100, 50)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, "PNG")
    return buf.getvalue()


def make_zip(entries: dict[str, bytes], *, symlink: str | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "/etc/passwd")
    return buf.getvalue()


# ---------------------------------------------------------------- labels and mapping


def test_default_mapping_is_documented_and_used():
    assert labelsets.DEFAULT_BINARY_MAP == {"porn": "adult", "sexy": "adult", "hentai": "adult",
                                            "neutral": "safe", "drawings": "safe"}
    assert [labelsets.to_binary(x) for x in ("porn", "Sexy", " hentai ", "neutral", "Drawing", "adult", "SAFE")] == \
        ["adult", "adult", "adult", "safe", "safe", "adult", "safe"]
    with pytest.raises(ValueError):
        labelsets.to_binary("cat")


def test_mapping_is_a_parameter():
    mapping = labelsets.make_binary_map(["porn", "hentai"])  # sexy counts as safe here
    assert mapping["sexy"] == "safe" and mapping["porn"] == "adult"
    items = [LabelledItem("a.jpg", "sexy", "adult")]
    assert labelsets.relabel(items, mapping)[0].binary == "safe"
    with pytest.raises(LabelSetError):
        labelsets.make_binary_map(["cats"])
    with pytest.raises(LabelSetError):
        labelsets.relabel(items, {"porn": "adult"})  # incomplete mapping


# ---------------------------------------------------------------- manifests


def test_csv_manifest_resolves_relative_paths_against_its_folder(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "m.csv").write_text("path,label\nimgs/a.png,porn\n/abs/b.png,Neutral\n"
                                    "https://example.com/c.jpg,drawing\n")
    items = labelsets.load_manifest(tmp_path / "m.csv")
    assert items == [
        LabelledItem(str((tmp_path / "imgs" / "a.png").resolve()), "porn", "adult"),
        LabelledItem("/abs/b.png", "neutral", "safe"),
        LabelledItem("https://example.com/c.jpg", "drawings", "safe"),
    ]
    sexy_only = labelsets.make_binary_map(["sexy"])
    assert labelsets.load_manifest(tmp_path / "m.csv", binary_map=sexy_only)[0].binary == "safe"


def test_csv_manifest_header_is_optional_and_columns_can_move(tmp_path):
    (tmp_path / "m.csv").write_text("x.png,sexy\ny.png,safe\n")
    assert [(Path(i.source).name, i.binary) for i in labelsets.load_manifest(tmp_path / "m.csv")] == \
        [("x.png", "adult"), ("y.png", "safe")]
    (tmp_path / "n.csv").write_text("label,notes,file\nhentai,x,z.png\n")
    assert labelsets.load_manifest(tmp_path / "n.csv")[0].label == "hentai"


def test_json_manifest_forms(tmp_path):
    forms = [
        [{"path": "a.png", "label": "porn"}, {"url": "http://h/x.jpg", "label": "safe"}],
        [["a.png", "porn"], ["http://h/x.jpg", "safe"]],
        {"items": [{"file": "a.png", "class": "porn"}, {"source": "http://h/x.jpg", "label": "safe"}]},
        {"a.png": "porn", "http://h/x.jpg": "safe"},
    ]
    for i, doc in enumerate(forms):
        p = tmp_path / f"m{i}.json"
        p.write_text(json.dumps(doc))
        items = labelsets.load_manifest(p)
        assert items == [LabelledItem(str(tmp_path / "a.png"), "porn", "adult"),
                         LabelledItem("http://h/x.jpg", "safe", "safe")]


def test_unknown_label_error_lists_the_rows(tmp_path):
    (tmp_path / "m.csv").write_text("path,label\na.png,porn\nb.png,kitten\nc.png,\nd.png,neutral\n")
    with pytest.raises(LabelSetError) as err:
        labelsets.load_manifest(tmp_path / "m.csv")
    msg = str(err.value)
    assert "2 bad row(s)" in msg
    assert "line 3: unknown label 'kitten' for 'b.png'" in msg
    assert "line 4: unknown label '' for 'c.png'" in msg
    assert "drawings, hentai, neutral, porn, sexy, adult, safe" in msg
    assert isinstance(err.value, InputError) and err.value.status == 400


def test_bad_manifests(tmp_path):
    with pytest.raises(LabelSetError, match="not valid JSON"):
        labelsets.parse_manifest(b"{nope", "json")
    with pytest.raises(LabelSetError, match="lists no images"):
        labelsets.parse_manifest(b"path,label\n", "csv")
    with pytest.raises(LabelSetError, match="missing path"):
        labelsets.parse_manifest(json.dumps([{"label": "porn"}]), "json")
    with pytest.raises(LabelSetError, match="csv or json"):
        labelsets.parse_manifest(b"a,porn", "xml")
    with pytest.raises(LabelSetError, match="path column"):
        labelsets.parse_manifest(b"path,notes\na.png,x\n", "csv")
    with pytest.raises(LabelSetError, match="cannot read"):
        labelsets.load_manifest(tmp_path / "missing.csv")


def test_uploaded_manifest_uses_the_given_base(tmp_path):
    items = labelsets.parse_manifest(b"path,label\nsub/a.png,porn\n", "csv", base_dir=tmp_path)
    assert items[0].source == str((tmp_path / "sub" / "a.png").resolve())


# ---------------------------------------------------------------- folders


def test_folder_with_one_subfolder_per_label(tmp_path):
    for rel in ("porn/a.png", "porn/deeper/b.jpg", "Neutral/c.png", "drawing/d.webp", ".hidden/e.png"):
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(png())
    (tmp_path / "porn" / "notes.txt").write_text("ignored")
    (tmp_path / "porn" / ".DS_Store").write_text("ignored")
    items = labelsets.load_folder(tmp_path)
    got = sorted((Path(i.source).relative_to(tmp_path).as_posix(), i.label, i.binary) for i in items)
    assert got == [("Neutral/c.png", "neutral", "safe"), ("drawing/d.webp", "drawings", "safe"),
                   ("porn/a.png", "porn", "adult"), ("porn/deeper/b.jpg", "porn", "adult")]


def test_folder_errors(tmp_path):
    (tmp_path / "porn").mkdir()
    (tmp_path / "cats").mkdir()
    with pytest.raises(LabelSetError, match="unknown: cats"):
        labelsets.load_folder(tmp_path)
    (tmp_path / "cats").rmdir()
    with pytest.raises(LabelSetError, match="no images found"):
        labelsets.load_folder(tmp_path)
    with pytest.raises(LabelSetError, match="not a folder"):
        labelsets.load_folder(tmp_path / "nope")
    with pytest.raises(LabelSetError, match="does not exist"):
        labelsets.load_path(tmp_path / "nope")


def test_load_path_prefers_a_manifest_in_the_folder(tmp_path):
    (tmp_path / "porn").mkdir()
    (tmp_path / "porn" / "a.png").write_bytes(png())
    (tmp_path / "manifest.csv").write_text("path,label\nporn/a.png,neutral\n")
    assert [i.label for i in labelsets.load_path(tmp_path)] == ["neutral"]
    assert [i.label for i in labelsets.load_path(tmp_path / "manifest.csv")] == ["neutral"]


# ---------------------------------------------------------------- ZIP uploads


def test_zip_with_label_folders_inside_a_wrapping_folder(tmp_path):
    data = make_zip({"myset/porn/a.png": png(), "myset/safe/b.png": png((1, 2, 3)), "myset/readme.txt": b"x",
                     "__MACOSX/myset/porn/._a.png": b"junk"})
    items = labelsets.load_zip(data, tmp_path / "cache")
    assert [(Path(i.source).name, i.binary) for i in items] == [("a.png", "adult"), ("b.png", "safe")]
    folder = tmp_path / "cache" / labelsets.hashlib.sha256(data).hexdigest()
    assert all(Path(i.source).is_relative_to(folder) for i in items)
    assert not (folder / "myset" / "readme.txt").exists()  # only images and manifests are extracted
    # The same archive is extracted once and read again from the cache.
    assert labelsets.load_zip(data, tmp_path / "cache") == items


def test_zip_with_a_manifest(tmp_path):
    data = make_zip({"manifest.csv": b"path,label\nimgs/a.png,sexy\nhttp://h/u.jpg,neutral\n", "imgs/a.png": png()})
    items = labelsets.load_zip(data, tmp_path)
    assert [(i.label, i.binary) for i in items] == [("sexy", "adult"), ("neutral", "safe")]
    assert items[1].source == "http://h/u.jpg"


@pytest.mark.parametrize("name", ["../evil.png", "porn/../../evil.png", "/abs/evil.png", "..\\evil.png",
                                  "C:/evil.png"])
def test_zip_path_traversal_is_rejected(tmp_path, name):
    cache = tmp_path / "cache"
    data = make_zip({"porn/ok.png": png(), name: png()})
    with pytest.raises(LabelSetError, match="leave|absolute"):
        labelsets.load_zip(data, cache)
    assert not (tmp_path / "evil.png").exists() and not (cache.parent / "evil.png").exists()
    assert not any(cache.rglob("*.png")) if cache.exists() else True  # nothing extracted


def test_zip_symlink_is_rejected(tmp_path):
    data = make_zip({"porn/ok.png": png()}, symlink="porn/link.png")
    with pytest.raises(LabelSetError, match="symbolic link"):
        labelsets.load_zip(data, tmp_path)


def test_manifest_inside_zip_cannot_point_outside(tmp_path):
    data = make_zip({"manifest.csv": b"path,label\n../../etc/passwd.png,porn\n/etc/x.png,porn\n", "a.png": png()})
    with pytest.raises(LabelSetError) as err:
        labelsets.load_zip(data, tmp_path)
    assert "leaves the archive" in str(err.value) and "absolute path" in str(err.value)


def test_zip_caps(tmp_path):
    many = make_zip({f"porn/{i}.png": png() for i in range(6)})
    with pytest.raises(LabelSetError, match="holds 6 files; the limit is 5"):
        labelsets.load_zip(many, tmp_path / "a", max_files=5)
    big = make_zip({"porn/big.png": b"\0" * 5000})
    with pytest.raises(LabelSetError, match="larger than 1000 bytes"):
        labelsets.load_zip(big, tmp_path / "b", max_file_bytes=1000)
    with pytest.raises(LabelSetError, match="expands to more than"):
        labelsets.load_zip(many, tmp_path / "c", max_total_bytes=len(png()) * 3)
    for sub in ("a", "b", "c"):  # failed extractions leave nothing behind
        assert not any((tmp_path / sub).rglob("*.png")) if (tmp_path / sub).exists() else True
    with pytest.raises(LabelSetError, match="not a valid ZIP"):
        labelsets.load_zip(b"not a zip", tmp_path / "d")


def test_zip_without_labels(tmp_path):
    with pytest.raises(LabelSetError, match="unknown: kittens"):
        labelsets.load_zip(make_zip({"kittens/a.png": png(), "porn/b.png": png()}), tmp_path)


# ---------------------------------------------------------------- demo and synthetic sets


def test_demo_set_is_benign_small_and_licensed():
    items = labelsets.demo_set()
    assert 12 <= len(items) <= 24
    assert all(Path(i.source).is_file() for i in items)
    assert {i.label for i in items} == {"neutral", "drawings"}
    assert labelsets.summary(items) == {"images": len(items), "adult": 0, "safe": len(items)}
    licences = (ROOT / "data" / "demo" / "LICENSES.md").read_text()
    for i in items:
        rel = Path(i.source).relative_to(ROOT / "data" / "demo").as_posix()
        assert f"`{rel}`" in licences, rel
    size = sum(p.stat().st_size for p in (ROOT / "data").rglob("*") if p.is_file())
    assert size < 3 * 1024 * 1024


def test_synthetic_score_table():
    pairs = labelsets.synthetic_set()
    assert len(pairs) == 220
    item, scores = pairs[0]
    assert item.source.startswith("scores:") and set(scores) == set(labelsets.CLASS_NAMES)
    assert abs(sum(scores.values()) - 1) < 1e-5
    assert labelsets.summary(i for i, _ in pairs) == {"images": 220, "adult": 120, "safe": 100}


def test_score_table_errors(tmp_path):
    p = tmp_path / "s.csv"
    p.write_text("id,label,porn\n1,porn,0.5\n")
    with pytest.raises(LabelSetError, match="lacks the column"):
        labelsets.load_score_table(p)
    p.write_text("id,label,drawings,hentai,neutral,porn,sexy\n1,dog,0,0,1,0,0\n2,porn,0,0,x,0,0\n")
    with pytest.raises(LabelSetError, match="unknown label 'dog'.*not a number"):
        labelsets.load_score_table(p)


def test_server_paths_are_confined_to_the_roots(tmp_path):
    root = (tmp_path / "sets").resolve()
    (root / "a" / "neutral").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "a" / "escape").symlink_to(outside)
    assert labelsets.confined("a", [root]) == (root / "a", root)
    assert labelsets.confined(str(root / "a"), [root]) == (root / "a", root)
    for raw in ("/", "/etc/passwd", "../outside", str(outside), "a/escape", "a/../../outside", "~", ""):
        with pytest.raises(labelsets.LabelSetError, match="can be read from the server"):
            labelsets.confined(raw, [root])


def test_a_server_manifest_may_not_name_images_outside_its_folder(tmp_path):
    root = (tmp_path / "sets").resolve()
    (root / "m").mkdir(parents=True)
    (root / "m" / "manifest.csv").write_text("path,label\n/etc/hostname,neutral\n")
    with pytest.raises(labelsets.LabelSetError, match="absolute path"):
        labelsets.load_server_path("m", [root])
    (root / "m" / "manifest.csv").write_text("path,label\n../../x.jpg,neutral\n")
    with pytest.raises(labelsets.LabelSetError, match="leaves"):
        labelsets.load_server_path("m/manifest.csv", [root])
