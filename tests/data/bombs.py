"""Decompression-bomb PNGs: valid files of all-zero pixels that claim a huge size.

A 20000 x 20000 RGB PNG of zeros is about 1 MB on disk but 1.2 GB decoded. Compressing 1.2 GB
of zeros takes seconds, so the deflate stream is built from one compressed block repeated: each
block ends with a full flush, which resets the compressor's history, so every block after the
first compresses to the same bytes. The zlib checksum of n zero bytes is ``(n % 65521) << 16 |
1`` (Adler-32: the running sum stays 1, the sum of sums grows by 1 per byte).
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def _zero_zlib_stream(row_bytes: int, rows: int) -> bytes:
    """A zlib stream of `rows` rows of `row_bytes` zero bytes each."""
    per_block = max(1, (1 << 20) // row_bytes)
    full, rest = divmod(rows, per_block)
    block = bytes(row_bytes * per_block)
    comp = zlib.compressobj(9)
    parts = []
    if full:  # the first block carries the zlib header
        parts.append(comp.compress(block) + comp.flush(zlib.Z_FULL_FLUSH))
    if full > 1:
        unit = comp.compress(block) + comp.flush(zlib.Z_FULL_FLUSH)
        parts += [unit] * (full - 1)
    end = comp.compress(bytes(row_bytes * rest)) + comp.flush()
    # The compressor saw at most two blocks: replace its checksum with that of all the rows.
    adler = (((row_bytes * rows) % 65521) << 16) | 1
    return b"".join(parts) + end[:-4] + struct.pack(">I", adler)


def bomb_png(
    path: str | Path, width: int, height: int, *, bit_depth: int = 8, colour_type: int = 2
) -> Path:
    """Write a valid non-interlaced PNG of zeros of the given size; returns its path.

    Args:
        colour_type: 0 grayscale, 2 RGB, 3 palette (one black entry), 4 gray+alpha, 6 RGBA.
    """
    row_bytes = 1 + (width * _CHANNELS[colour_type] * bit_depth + 7) // 8
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    plte = _chunk(b"PLTE", b"\0\0\0") if colour_type == 3 else b""
    data = (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + plte
        + _chunk(b"IDAT", _zero_zlib_stream(row_bytes, height))
        + _chunk(b"IEND", b"")
    )
    path = Path(path)
    path.write_bytes(data)
    return path
