"""Labelled sets: manifests, folders, ZIP uploads (with hostile archives), the demo set."""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import io
import json
import multiprocessing
import os
import stat
import struct
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from nsfw_core.base.errors import InputError, InvalidURL, TooLarge
from nsfw_core.base.settings import LabelSetConfig
from nsfw_core.calibration import archives, confined, labelsets
from nsfw_core.calibration.labelsets import LabelledItem, LabelSetError
from tests.helpers.paths import ROOT
from tests.helpers.threads import within_seconds


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
    manifest = b"path,label\na.jpg,sexy\n"
    assert labelsets.parse_manifest(manifest, "csv", binary_map=mapping)[0].binary == "safe"
    with pytest.raises(LabelSetError):
        labelsets.make_binary_map(["cats"])
    with pytest.raises(LabelSetError):
        labelsets.parse_manifest(manifest, "csv", binary_map={"porn": "adult"})  # incomplete mapping


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
    folder = tmp_path / "cache" / hashlib.sha256(data).hexdigest()
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


# ---------------------------------------------------------------- server files (issue 16, point 5)


@pytest.fixture
def server(tmp_path):
    """A labelled-sets root with one image, a secret file outside it, and the config that names them."""
    root = tmp_path / "sets"
    (root / "s" / "neutral").mkdir(parents=True)
    (root / "s" / "neutral" / "a.png").write_bytes(png())
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.png").write_bytes(b"SECRET-CONTENTS")
    (outside / "secret.csv").write_text("path,label\nSECRET-ROW.png,neutral\n")
    config = LabelSetConfig(root=str(root), uploads_dir=str(tmp_path / "uploads"), quota_bytes=1 << 20,
                            max_bytes=1000)
    return root.resolve(), outside, config


OUTSIDE = "is neither a URL nor a file under the labelled-set folders; nothing else is read"


def test_images_are_read_only_under_the_roots(server):
    root, outside, config = server
    load = labelsets.item_loader(config, fetch=lambda url: b"fetched " + url.encode())
    assert load(str(root / "s" / "neutral" / "a.png")) == png()
    assert load("https://example.com/x.png") == b"fetched https://example.com/x.png"  # URLs: the safe fetcher
    (root / "s" / "escape.png").symlink_to(outside / "secret.png")
    (root / "s" / "zero.png").symlink_to("/dev/zero")
    for raw in (str(outside / "secret.png"), str(outside / "missing.png"), "/etc/passwd", "/dev/zero",
                "/proc/self/environ", f"{root}/../outside/secret.png", str(root / "s" / "escape.png"),
                str(root / "s" / "zero.png"), "s/neutral/a.png", "upload:a.png", "scores:1"):
        with pytest.raises(InvalidURL) as err:
            load(raw)
        assert str(err.value) == f"{raw!r} {OUTSIDE}", raw  # the same words whether it exists or not
        assert "SECRET" not in str(err.value)


def test_only_regular_files_are_read_and_the_cap_is_on_the_read(server, monkeypatch):
    root, _, config = server
    load = labelsets.item_loader(config, fetch=lambda url: b"")
    fifo = root / "s" / "neutral" / "pipe.png"
    os.mkfifo(fifo)
    with pytest.raises(InvalidURL, match=r"cannot read .*pipe\.png: it is not a regular file \(a FIFO\)$"):
        within_seconds(load, str(fifo))
    with pytest.raises(InvalidURL, match=r"cannot read .*neutral: it is not a regular file \(a directory\)$"):
        load(str(root / "s" / "neutral"))
    with pytest.raises(InvalidURL, match="cannot read .*: it is a folder$"):
        load(str(root))
    sparse = root / "s" / "neutral" / "huge.png"
    with open(sparse, "wb") as f:
        os.truncate(f.fileno(), 4 << 30)  # 4 GB, no blocks on disk
    reads: list[int] = []
    real_read = os.read

    def counting_read(fd: int, n: int) -> bytes:
        reads.append(n)
        return real_read(fd, n)

    monkeypatch.setattr(os, "read", counting_read)
    with pytest.raises(TooLarge, match=r"huge\.png is larger than the limit of 1000 bytes"):
        load(str(sparse))
    assert reads == []  # refused from fstat, not a byte read


def test_a_folder_swapped_for_a_link_after_the_check_is_not_followed(server):
    root, outside, _ = server
    (outside / "neutral").mkdir()
    (outside / "neutral" / "a.png").write_bytes(b"SECRET-CONTENTS")
    checked = root / "s" / "neutral" / "a.png"  # what the checks resolved
    (root / "s" / "neutral").rename(root / "s" / "old")
    (root / "s" / "neutral").symlink_to(outside / "neutral")
    with pytest.raises(OSError) as err:
        confined.read_beneath(root, checked, 1000)
    assert err.value.errno in (errno.ELOOP, errno.ENOTDIR)


def test_typed_server_paths(server):
    root, outside, config = server
    assert [it.source for it in labelsets.load_server_set("s", config)] == [str(root / "s" / "neutral" / "a.png")]
    assert labelsets.load_server_set(str(root / "s"), config) == labelsets.load_server_set("s", config)
    (root / "out").symlink_to(outside)
    refused = f"only labelled sets under {root} can be read from the server"
    for raw in ("/", "/etc", "/etc/passwd", "/dev/zero", "/proc/self/environ", str(outside), str(outside / "x"),
                "..", "../outside", "s/../../outside", "out", "out/secret.csv", "~", "~/x", "", "s/\0"):
        with pytest.raises(LabelSetError) as err:
            labelsets.load_server_set(raw, config)
        assert str(err.value) == refused, raw


def test_extracted_uploads_are_not_server_sets_even_inside_the_root(server):
    root, _, config = server
    config = dataclasses.replace(config, uploads_dir=str(root / "uploads"))
    (root / "uploads" / ("0" * 64) / "neutral").mkdir(parents=True)
    (root / "uploads" / ("0" * 64) / "neutral" / "a.png").write_bytes(png())
    with pytest.raises(LabelSetError, match="can be read from the server"):
        labelsets.load_server_set("uploads/" + "0" * 64, config)


def test_server_sets_never_follow_a_link_out_of_their_folder(server):
    root, outside, config = server
    (root / "s" / "porn").symlink_to(outside)  # a label folder that is a link out
    (root / "s" / "neutral" / "b.png").symlink_to(outside / "secret.png")
    (root / "s" / "neutral" / "c.png").symlink_to(outside / "missing.png")
    with pytest.raises(LabelSetError) as err:
        labelsets.load_server_set("s", config)
    assert str(err.value) == (f"{root / 's'}: 3 entries link out of {root / 's'}: neutral/b.png, neutral/c.png, porn")
    (root / "m").mkdir()
    (root / "m" / "manifest.csv").symlink_to(outside / "secret.csv")
    with pytest.raises(LabelSetError) as err:
        labelsets.load_server_set("m", config)
    assert str(err.value) == f"manifest {root / 'm' / 'manifest.csv'} leaves {root / 'm'}"


def test_a_server_path_that_is_no_file_or_folder(server):
    root, _, config = server
    os.mkfifo(root / "pipe.csv")
    with pytest.raises(LabelSetError) as err:
        within_seconds(labelsets.load_server_set, "pipe.csv", config)
    assert str(err.value) == f"{root / 'pipe.csv'} is neither a manifest file nor a folder"
    (root / "m").mkdir()
    os.mkfifo(root / "m" / "manifest.csv")  # not a file: the folder is read as label folders, and has none
    with pytest.raises(LabelSetError, match="no images found"):
        within_seconds(labelsets.load_server_set, "m", config)
    with pytest.raises(LabelSetError) as err:
        labelsets.load_server_set("missing", config)
    assert str(err.value) == f"{root / 'missing'} does not exist"


def test_manifests_are_read_under_a_cap(server):
    root, _, config = server
    with open(root / "big.csv", "wb") as f:
        os.truncate(f.fileno(), 4 << 30)
    with pytest.raises(LabelSetError) as err:
        labelsets.load_server_set("big.csv", config)
    assert str(err.value) == f"manifest {root / 'big.csv'} is larger than {labelsets.MANIFEST_MAX_BYTES} bytes"
    (root / "zero.csv").symlink_to("/dev/zero")  # what the command line may name
    (root / "dir.csv").mkdir()
    for name, kind in (("zero.csv", "a character device"), ("dir.csv", "a directory")):
        with pytest.raises(LabelSetError) as err:
            labelsets.load_manifest(root / name)
        assert str(err.value) == f"cannot read manifest {root / name}: it is not a regular file ({kind})"
    os.mkfifo(root / "pipe.csv")
    with pytest.raises(LabelSetError) as err:
        within_seconds(labelsets.load_manifest, root / "pipe.csv")
    assert str(err.value) == f"cannot read manifest {root / 'pipe.csv'}: it is not a regular file (a FIFO)"


def test_an_uploaded_manifest_names_urls_or_files_under_the_root(server):
    root, outside, _ = server
    (root / "s" / "link.png").symlink_to(outside / "secret.png")
    rows = ["s/neutral/a.png", str(root / "s" / "neutral" / "a.png"), "https://example.com/x.png",
            "/etc/passwd", "/dev/zero", "/proc/self/environ", str(outside / "secret.png"), "../outside/secret.png",
            "s/../../outside/secret.png", "s/link.png", "~/x.png"]
    text = "path,label\n" + "".join(f"{r},neutral\n" for r in rows)
    with pytest.raises(LabelSetError) as err:
        labelsets.parse_manifest(text, "csv", base_dir=root, confine=root, where="the root")
    assert str(err.value) == (
        "8 bad row(s) in the manifest: "
        "line 5: absolute path '/etc/passwd' is outside the root; "
        "line 6: absolute path '/dev/zero' is outside the root; "
        "line 7: absolute path '/proc/self/environ' is outside the root; "
        f"line 8: absolute path '{outside / 'secret.png'}' is outside the root; "
        "line 9: path '../outside/secret.png' leaves the root; "
        "line 10: path 's/../../outside/secret.png' leaves the root; "
        "line 11: path 's/link.png' leaves the root; "
        "line 12: path '~/x.png' leaves the root. Labels must be one of: " + ", ".join(labelsets.LABELS))
    items = labelsets.parse_manifest("\n".join(f"{r},neutral" for r in rows[:3]), "csv", base_dir=root,
                                     confine=root)
    assert [it.source for it in items] == [str(root / "s" / "neutral" / "a.png")] * 2 + [rows[2]]


# ---------------------------------------------------------------- the ZIP quota (issue 16, point 6)


def _archive(tag: str, size: int = 1000) -> bytes:
    return make_zip({f"neutral/{tag}.png": tag.encode() * (size // len(tag))})


def _archives(cache: Path) -> set[str]:
    return {p.name for p in cache.iterdir() if not p.name.startswith(".")}


def test_extracted_archives_share_a_quota_and_the_least_recently_used_go_first(tmp_path):
    cache = tmp_path / "uploads"
    a, b, c = (_archive(t) for t in ("a", "b", "c"))
    folder_a = labelsets.extract_zip(a, cache, quota_bytes=2500)
    folder_b = labelsets.extract_zip(b, cache, quota_bytes=2500)
    assert _archives(cache) == {folder_a.name, folder_b.name}  # two fit
    os.utime(folder_a, (1000, 1000))
    os.utime(folder_b, (2000, 2000))
    assert labelsets.extract_zip(a, cache, quota_bytes=2500) == folder_a  # a hit is a use: b is now the oldest
    folder_c = labelsets.extract_zip(c, cache, quota_bytes=2500)
    assert _archives(cache) == {folder_a.name, folder_c.name}
    assert archives._tree_bytes(cache) <= 2500
    (cache / "my-own-set").mkdir()  # not an archive: never counted nor evicted
    os.utime(folder_a, (1000, 1000))
    labelsets.extract_zip(b, cache, quota_bytes=2500)
    assert _archives(cache) == {folder_c.name, "my-own-set", hashlib.sha256(b).hexdigest()}


def test_an_archive_larger_than_the_quota_is_refused_before_anything_is_evicted(tmp_path):
    cache = tmp_path / "uploads"
    kept = labelsets.extract_zip(_archive("a"), cache, quota_bytes=2500)
    big = _archive("big", 3000)
    with pytest.raises(LabelSetError) as err:
        labelsets.load_zip(big, cache, quota_bytes=2500)
    assert str(err.value) == ("the archive expands to 3000 bytes, more than the 2500 bytes all extracted uploads "
                              "may use (NSFW_LABELSETS_QUOTA_BYTES)")
    assert _archives(cache) == {kept.name} and not [p for p in cache.iterdir() if p.name.startswith(".tmp")]


def test_in_progress_extractions_count_and_stale_leftovers_go(tmp_path):
    cache = tmp_path / "uploads"
    cache.mkdir()
    (cache / ".tmp-2000-aaaaaaaaaaaa-x").mkdir()  # another process is extracting 2000 bytes
    with pytest.raises(LabelSetError) as err:
        labelsets.extract_zip(_archive("a"), cache, quota_bytes=2500)
    assert str(err.value) == ("the archive expands to 1000 bytes and only 500 of the 2500 bytes for extracted "
                              "uploads (NSFW_LABELSETS_QUOTA_BYTES) can be made free: other uploads are being "
                              "extracted; try again in a moment")
    os.utime(cache / ".tmp-2000-aaaaaaaaaaaa-x", (1000, 1000))  # its process died long ago
    (cache / ".evict-old").mkdir()
    labelsets.extract_zip(_archive("a"), cache, quota_bytes=2500)
    assert sorted(p.name for p in cache.iterdir() if p.name != ".lock") == [hashlib.sha256(_archive("a")).hexdigest()]
    archives._remove(cache / "vanished")  # already evicted by another process: no error


def _patch_sizes(data: bytes, declared: int) -> bytes:
    """The archive with every member's uncompressed size (local header and central directory) set to ``declared``."""
    buf = bytearray(data)
    for sig, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = buf.find(sig)
        while at != -1:
            buf[at + offset:at + offset + 4] = struct.pack("<I", declared)
            at = buf.find(sig, at + 4)
    return bytes(buf)


def test_an_archive_that_lies_about_its_size(tmp_path):
    cache = tmp_path / "uploads"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("neutral/bomb.png", b"\0" * 100_000)
    small = _patch_sizes(buf.getvalue(), 100)  # declares 100 bytes, expands to 100 000
    assert zipfile.ZipFile(io.BytesIO(small)).infolist()[0].file_size == 100
    with pytest.raises(LabelSetError, match=r"^cannot extract 'neutral/bomb.png'"):
        labelsets.extract_zip(small, cache, quota_bytes=2500)
    assert archives._tree_bytes(cache) == 0 and _archives(cache) == set()
    assert not [p for p in cache.iterdir() if p.name.startswith(".tmp")]
    large = _patch_sizes(buf.getvalue(), 10_000_000)  # declares more than the quota: refused up front
    with pytest.raises(LabelSetError, match="expands to 10000000 bytes, more than the 2500 bytes"):
        labelsets.extract_zip(large, cache, quota_bytes=2500)


def test_the_bytes_written_never_pass_what_the_archive_declares(tmp_path, monkeypatch):
    data = _archive("a")
    real_open = zipfile.ZipFile.open

    def generous(self, info, *args, **kwargs):  # a decompressor that hands out more than declared
        src = real_open(self, info, *args, **kwargs)
        chunks = [src.read(), b"more"]
        src.close()
        return io.BytesIO(b"".join(chunks))

    monkeypatch.setattr(zipfile.ZipFile, "open", generous)
    with pytest.raises(LabelSetError) as err:
        labelsets.extract_zip(data, tmp_path / "uploads", quota_bytes=2500)
    assert str(err.value) == "archive member 'neutral/a.png' expands to more than the 1000 bytes it declares"


def _extract_many(cache: str, tags: list[str]) -> None:
    for tag in tags:
        labelsets.extract_zip(_archive(tag), cache, quota_bytes=2500)


def test_two_processes_sharing_the_folder_stay_within_the_quota(tmp_path):
    cache = tmp_path / "uploads"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_extract_many, args=(str(cache), [f"{p}{i}" for i in range(6)])) for p in "xy"]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert len(_archives(cache)) <= 2 and archives._tree_bytes(cache) <= 2500
