"""nsfw_core.base.errors: the hierarchy its docstring draws, and the API error codes table (docs/http-api.md)."""

from __future__ import annotations

import pytest

from nsfw_core.base import errors
from tests.helpers.paths import ROOT


def all_errors() -> list[type[errors.NSFWError]]:
    """The classes errors.py defines (other modules subclass them for their own endpoints)."""
    found, todo = [], [errors.NSFWError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return [cls for cls in found if cls.__module__ == errors.__name__]


@pytest.mark.parametrize("cls", all_errors(), ids=lambda c: c.__name__)
def test_docstring_draws_every_error_with_its_status_and_code(cls):
    line = next(ln for ln in errors.__doc__.splitlines() if f" {cls.__name__} " in f" {ln.strip('│├└─ ')} ")
    assert f"{cls.status} {cls.code}" in line or (cls is errors.NSFWError and f'"{cls.code}"' in line), line


@pytest.mark.parametrize("cls", [c for c in all_errors() if c.status != 500], ids=lambda c: c.__name__)
def test_docs_list_every_client_and_upstream_error_code_under_its_status(cls):
    page = (ROOT / "docs" / "http-api.md").read_text()
    table = page[page.index("| Status | Codes |"):]
    row = next(ln for ln in table.splitlines() if ln.startswith(f"| {cls.status}"))
    assert f"`{cls.code}`" in row, (cls.__name__, row)


def test_to_dict_keeps_details_and_drops_none():
    err = errors.RequestTimeout("slow", timeout_s=2.0, unused=None)
    assert (err.status, err.to_dict()) == (408, {"code": "request_timeout", "message": "slow", "timeout_s": 2.0})
