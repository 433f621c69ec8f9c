"""Reading files of labelled sets on the server only under given roots (confined reads).

:func:`within` decides whether a path lies inside a root: the lexical check comes first, so a path
outside is refused without a look at the disk (the answer never tells whether it exists), then
symbolic links are resolved and must stay inside too.  :func:`confined` applies it to a path a page
visitor typed, against several roots.  :func:`read_beneath` reads a checked path by walking down
from the root one component at a time without following links (a folder swapped for a link after
the checks is refused, not followed), only a regular file, with the byte cap on the read itself;
:func:`read_confined` is that for the images of a set, with the API's errors.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Sequence

from nsfw_core.base.errors import InvalidURL, TooLarge
from nsfw_core.base.files import FileTooLarge, read_regular_file
from nsfw_core.base.labels import LabelSetError


def within(raw: str | Path, root: Path) -> Path | None:
    """``raw`` (absolute, or relative to ``root``) resolved, if it lies inside ``root``; else None.

    The lexical check comes first, so a path outside ``root`` is refused without a look at the
    disk; then symbolic links (and ``..`` after them) are resolved and checked again.  ``root``
    is resolved here too (a root that is itself a link is fine).
    """
    real = root.resolve()
    path = Path(raw)
    if "\x00" in str(raw):
        return None
    if path.is_absolute():
        lexical = Path(os.path.normpath(path))
        if not (lexical.is_relative_to(real) or lexical.is_relative_to(os.path.normpath(root.absolute()))):
            return None
    else:
        lexical = Path(os.path.normpath(real / path))
        if not lexical.is_relative_to(real):
            return None
    resolved = lexical.resolve()
    return resolved if resolved.is_relative_to(real) else None


def confined(raw: str, roots: Sequence[Path], *, exclude: Sequence[Path] = ()) -> tuple[Path, Path]:
    """``raw`` (absolute, or relative to a root) resolved, and the root it lies in; LabelSetError if none.

    ``..`` is refused lexically (no look at the disk, so the answer says nothing about paths
    outside the roots), then symbolic links are resolved and must stay inside the root too.
    Paths inside ``exclude`` (the extracted uploads) are refused as well.
    """
    raw = raw.strip()
    if raw and not raw.startswith("~"):
        for root in roots:
            target = within(raw, Path(root))
            if target is not None and not any(target.is_relative_to(Path(x).resolve()) for x in exclude):
                return target, Path(root).resolve()
    raise LabelSetError(f"only labelled sets under {' or '.join(str(r) for r in roots)} can be read "
                        "from the server")


_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)


def read_beneath(root: Path, target: Path, limit: int) -> bytes:
    """``target`` (resolved, inside the resolved ``root``) read by walking down from ``root`` one
    component at a time without following links, so a folder swapped for a link after the checks
    is refused (ELOOP/ENOTDIR) rather than followed out of the root."""
    parts = target.relative_to(root).parts
    if not parts:
        raise OSError(errno.EISDIR, "it is a folder")
    fd = os.open(root, _DIR_FLAGS)
    try:
        for part in parts[:-1]:
            next_fd = os.open(part, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = next_fd
        return read_regular_file(parts[-1], limit, follow_symlinks=False, dir_fd=fd)
    finally:
        os.close(fd)


def read_confined(path: str | Path, roots: Sequence[Path], max_bytes: int) -> bytes:
    """The bytes of the image file ``path`` if it lies inside one of ``roots`` (links resolved):
    a regular file, at most ``max_bytes`` (:class:`~nsfw_core.base.errors.TooLarge` above; the read
    itself stops there). Anything else is :class:`~nsfw_core.base.errors.InvalidURL`, saying which path
    but not whether a path outside the roots exists."""
    raw = str(path)
    if Path(raw).is_absolute():
        for root in roots:
            target = within(raw, Path(root))
            if target is None:
                continue
            try:
                return read_beneath(Path(root).resolve(), target, max_bytes)
            except FileTooLarge as exc:
                raise TooLarge(f"{raw} is larger than the limit of {max_bytes} bytes", limit=max_bytes) from exc
            except OSError as exc:
                raise InvalidURL(f"cannot read {raw}: {exc.strerror or exc}") from exc
    raise InvalidURL(f"{raw[:300]!r} is neither a URL nor a file under the labelled-set folders; nothing else "
                     "is read")
