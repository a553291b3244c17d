#!/usr/bin/env python3
"""Draws nuget/icon.png (128x128): a 4x4 grid of image patches, some masked, as in masked image modelling.

Standard library only (zlib + struct), so it runs anywhere: python3 tools/make_icon.py
"""
import os
import struct
import zlib

SIZE, GRID, GAP = 128, 4, 4
CELL = SIZE // GRID
MASKED = {(0, 1), (1, 3), (2, 0), (2, 2), (3, 1), (3, 3)}  # (row, col) of the masked patches


def pixel(x, y):
    r, c = y // CELL, x // CELL
    inner_x, inner_y = x % CELL, y % CELL
    if inner_x < GAP // 2 or inner_x >= CELL - GAP // 2 or inner_y < GAP // 2 or inner_y >= CELL - GAP // 2:
        return (0x1E, 0x23, 0x4B, 255)  # grid lines: dark navy
    if (r, c) in MASKED:
        return (0x9A, 0xA0, 0xAE, 255)  # masked patch: flat grey
    # visible patch: diagonal blue-to-violet gradient across the whole icon
    t = (x + y) / (2 * SIZE)
    return (int(0x3A + t * (0x9B - 0x3A)), int(0x8E - t * 0x40), int(0xF0 - t * 0x20), 255)


def png(width, height, rows):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + bytes(v for px in row for v in px) for row in rows)
    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)  # 8-bit RGBA
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


if __name__ == "__main__":
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "nuget", "icon.png")
    with open(out, "wb") as f:
        f.write(png(SIZE, SIZE, [[pixel(x, y) for x in range(SIZE)] for y in range(SIZE)]))
    print(f"wrote {os.path.normpath(out)}")
