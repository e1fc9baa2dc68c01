"""Reading a small file that must be a regular one: never blocking on a FIFO or a device, bounded in size
and time, every failure one line that quotes nothing from the file.

The one reader of the files the exporter is pointed at: the config and web config files and their PEMs
(``exporter.config.yamlfile``) and the OIDC token file (``exporter.credential_io``). A leaf, so both sides
of the layers reach it.
"""

from __future__ import annotations

import os
import stat
import time

__all__ = ["READ_SECONDS", "ReadError", "file_kind", "read_bytes"]

READ_SECONDS = 10.0  # a regular file on a healthy disk reads 32 MB in well under a second
_CHUNK = 1 << 20


class ReadError(Exception):
    """The file cannot be read; ``reason`` is one line that quotes nothing from the file."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


def file_kind(mode: int) -> str:
    """What a file that is not a regular one is, for a message ("a FIFO", "a directory", ...)."""
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def _check_regular(st: os.stat_result, max_bytes: int) -> None:
    if stat.S_ISDIR(st.st_mode):
        raise ReadError("Is a directory")
    if not stat.S_ISREG(st.st_mode):
        raise ReadError(f"not a regular file ({file_kind(st.st_mode)})")
    if st.st_size > max_bytes:
        raise ReadError(f"larger than {max_bytes} bytes")


def read_bytes(path: str, *, max_bytes: int, max_seconds: float = READ_SECONDS) -> bytes:
    """The content of the regular file ``path``: at most ``max_bytes``, within ``max_seconds``.

    Raises :class:`ReadError`. Never blocks on a FIFO or a device: they are refused by the stat before
    the open, and the open itself is non-blocking in case the path was swapped in between.
    """
    try:
        _check_regular(os.stat(path), max_bytes)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise ReadError(exc.strerror or type(exc).__name__) from None
    try:
        _check_regular(os.fstat(fd), max_bytes)  # what was opened, not what was stat-ed
        deadline = time.monotonic() + max_seconds
        chunks: list[bytes] = []
        total = 0
        while chunk := os.read(fd, min(_CHUNK, max_bytes + 1 - total)):
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:  # a file that grows while read, or one whose size lies (/proc)
                raise ReadError(f"larger than {max_bytes} bytes")
            if time.monotonic() > deadline:
                raise ReadError(f"not read within {max_seconds:g} s")
    except BlockingIOError:
        raise ReadError("reading would block (not a plain file)") from None
    except OSError as exc:
        raise ReadError(exc.strerror or type(exc).__name__) from None
    finally:
        os.close(fd)
    return b"".join(chunks)
