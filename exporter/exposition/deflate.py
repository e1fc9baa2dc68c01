"""Gzip of a rendered exposition: its big cached head deflated once, each scrape's small tail appended.

A snapshot part is compressed once per format as a raw deflate stream that is sync-flushed (byte-aligned,
no final block), so :func:`gzip_body` can follow it with a fresh compressor's blocks for the per-scrape
self part and wrap both in one gzip member: no byte of the big head is compressed twice.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["GZIP_LEVEL", "Deflated", "deflate", "gzip_body"]

# Level 1: exposition text is so repetitive that it already compresses ~27x, at 4x the speed of level 6.
GZIP_LEVEL = 1


@dataclass(frozen=True, slots=True)
class Deflated:
    """A head compressed once: raw deflate, sync-flushed so that it can continue, with its CRC and size."""

    parts: tuple[bytes, ...]
    crc: int
    size: int


def deflate(parts: Iterable[bytes]) -> Deflated:
    """``parts`` as one sync-flushed raw deflate stream (zlib releases the GIL: a thread may run it)."""
    comp = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS)
    out: list[bytes] = []
    crc = size = 0
    for part in parts:
        crc = zlib.crc32(part, crc)
        size += len(part)
        chunk = comp.compress(part)
        if chunk:
            out.append(chunk)
    out.append(comp.flush(zlib.Z_SYNC_FLUSH))
    return Deflated(tuple(out), crc, size)


# Magic, deflate, no flags, mtime 0, no extra flags, OS "unknown".
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"


def gzip_body(head: Deflated, tail: bytes) -> list[bytes]:
    """One gzip member for ``head`` (already deflated) followed by ``tail``, as chunks to write in order.

    Deflate blocks are self-contained: a fresh compressor's blocks may follow a sync-flushed stream,
    and CRC-32 continues from the head's, so no byte of the big head is compressed twice.
    """
    comp = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS)
    rest = comp.compress(tail) + comp.flush(zlib.Z_FINISH)
    trailer = struct.pack("<II", zlib.crc32(tail, head.crc), (head.size + len(tail)) & 0xFFFFFFFF)
    return [_GZIP_HEADER, *head.parts, rest, trailer]
