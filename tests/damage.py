"""Helpers that write small files and damage bytes on purpose."""

import ffrecord


def write_file(path, records, **kwargs):
    with ffrecord.FileWriter(path, **kwargs) as w:
        for r in records:
            w.write_one(r)
    return path


def flip_byte(path, offset, mask=0x01):
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ mask]))


def truncate(path, size):
    with open(path, "r+b") as f:
        f.truncate(size)
