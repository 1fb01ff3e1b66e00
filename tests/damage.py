"""Helpers that write small files and damage bytes on purpose."""

import os

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


def flip_byte_of_tensor(checkpoint_dir, tensor, offset, file="data-00000.ffr"):
    """Flips one byte, ``offset`` bytes into ``tensor``'s stored bytes, in the
    checkpoint's data file (found by its first 64 bytes)."""
    data = os.path.join(checkpoint_dir, file)
    with open(data, "rb") as f:
        at = f.read().index(tensor.numpy().tobytes()[:64])
    flip_byte(data, at + offset)
