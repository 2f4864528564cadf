"""Sizes as people write and read them: ``10G`` in, ``1.5 GiB`` out."""

from __future__ import annotations

_UNITS = {"K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_size(text: str) -> int:
    """``10G``, ``500M``, ``2GiB``, ``123456``: bytes (``ValueError`` if it is none of those)."""
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    factor = _UNITS.get(text[-1:], 1)
    number = text[:-1] if text[-1:] in _UNITS else text
    return int(float(number) * factor)


def format_size(size: int) -> str:
    """``1536`` reads ``1.5 KiB``; below a KiB, bytes."""
    if size < 1024:
        return f"{size} B"
    value = float(size)
    for unit in ("KiB", "MiB", "GiB"):
        value /= 1024
        if value < 1024:
            return f"{value:.1f} {unit}"
    return f"{value / 1024:.1f} TiB"
