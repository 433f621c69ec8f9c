"""Atomic file writes (a crash leaves either the old file or the new one, never half of each),
moving a corrupt file aside under a timestamped name instead of deleting it, and reading a file
someone else named without blocking on it or reading more than a cap (:func:`read_regular_file`)."""

from __future__ import annotations

import datetime as _dt
import os
import stat
import struct
import tempfile
from pathlib import Path


def atomic_write(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder, fsync, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:  # persist the rename itself
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def corrupt_name(path: str | Path, when: _dt.datetime | None = None) -> Path:
    """``<path>.corrupt-<UTC time>`` (``20261201T011500Z``), with ``-2``, ``-3``... if that is taken."""
    when = when or _dt.datetime.now(_dt.timezone.utc)
    base = f"{path}.corrupt-{when.astimezone(_dt.timezone.utc):%Y%m%dT%H%M%SZ}"
    dest, n = Path(base), 1
    while os.path.lexists(dest):
        n += 1
        dest = Path(f"{base}-{n}")
    return dest


def move_aside(path: str | Path, suffixes: tuple[str, ...] = ("",),
               when: _dt.datetime | None = None) -> list[tuple[Path, Path]]:
    """Rename ``path + suffix`` to its :func:`corrupt_name` for each suffix that exists, never deleting
    or overwriting anything; the ``(old, new)`` pairs.  An OSError (a rename that fails) propagates.

    For files that must be kept for a person to look at (a corrupt database and
    its ``-wal``/``-shm``) rather than silently replaced.
    """
    when = when or _dt.datetime.now(_dt.timezone.utc)
    moved = []
    for suffix in suffixes:
        source = Path(f"{path}{suffix}")
        if os.path.lexists(source):
            dest = corrupt_name(source, when)
            os.rename(source, dest)
            moved.append((source, dest))
    return moved


WAL_MAGIC = (0x377F0682, 0x377F0683)  # little- / big-endian checksums
WAL_VERSION = 3007000
WAL_HEADER_BYTES = 32


def wal_header_problem(path: str | Path) -> str | None:
    """What is wrong with the header of the SQLite write-ahead log ``path`` (None: fine, empty or absent).

    SQLite treats a WAL whose header is not valid as empty and deletes it when
    the database is next opened and closed, with the transactions in it; so a
    caller that must not lose them checks first (https://www.sqlite.org/fileformat.html#walformat).
    """
    try:
        with open(path, "rb") as f:
            header = f.read(WAL_HEADER_BYTES)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"cannot be read: {exc.strerror or exc}"
    if not header:
        return None
    if len(header) < WAL_HEADER_BYTES:
        return f"the header is cut short ({len(header)} of {WAL_HEADER_BYTES} bytes)"
    magic, version, page_size = struct.unpack(">III", header[:12])
    if magic not in WAL_MAGIC:
        return f"bad magic number 0x{magic:08x}"
    if version != WAL_VERSION:
        return f"unknown format version {version}"
    if not (512 <= page_size <= 65536 and page_size & (page_size - 1) == 0):
        return f"impossible page size {page_size}"
    order = ">" if magic & 1 else "<"
    s0 = s1 = 0
    words = struct.unpack(f"{order}6I", header[:24])
    for i in range(0, 6, 2):
        s0 = (s0 + words[i] + s1) & 0xFFFFFFFF
        s1 = (s1 + words[i + 1] + s0) & 0xFFFFFFFF
    if (s0, s1) != struct.unpack(">II", header[24:32]):
        return "the header checksum does not match"
    return None


# ---------------------------------------------------------------- reading files named by someone else


class NotRegularFile(OSError):
    """The path names something other than a regular file (a folder, FIFO, socket, device)."""


class FileTooLarge(OSError):
    """The file holds more bytes than the cap; ``limit`` is the cap, ``size`` what ``fstat`` said (or
    ``limit + 1`` when the file grew while being read)."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"it holds more than {limit} bytes")
        self.size = size
        self.limit = limit


_READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)


def file_kind(mode: int) -> str:
    """"a directory", "a FIFO", ... for a ``st_mode`` that is not a regular file's."""
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return name
    return "not a regular file"


def read_regular_file(path: str | Path, limit: int, *, follow_symlinks: bool = True,
                      dir_fd: int | None = None) -> bytes:
    """The bytes of the regular file ``path``, at most ``limit`` of them, or an OSError.

    Safe on any path: the file is opened non-blocking (a FIFO's open does not wait for a writer)
    and, with ``follow_symlinks=False``, refuses a symbolic link as the last component; the opened
    descriptor must be a regular file (:class:`NotRegularFile`: devices such as ``/dev/zero``,
    FIFOs, sockets, folders).  ``fstat``'s size refuses a larger file before a byte is read
    (:class:`FileTooLarge`), and the read itself stops after ``limit + 1`` bytes, so a file whose
    size lies (``/proc``) or that grows meanwhile cannot make it read more.  ``dir_fd``: ``path``
    is relative to that open folder.
    """
    flags = _READ_FLAGS | (0 if follow_symlinks else getattr(os, "O_NOFOLLOW", 0))
    fd = os.open(path, flags, dir_fd=dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFile(f"it is not a regular file ({file_kind(st.st_mode)})")
        if st.st_size > limit:
            raise FileTooLarge(st.st_size, limit)
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, min(limit + 1 - size, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise FileTooLarge(size, limit)
        return b"".join(chunks)
    finally:
        os.close(fd)
