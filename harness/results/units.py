"""Units and how a number is written: the byte units, and one formatter for the terminal, the report and the gate.

Every figure a person reads goes through `fmt` (a figure with its unit), `human_bytes` (bytes in the unit
that suits them) or `duration` (seconds as a person reads them), so a number reads the same wherever it is
shown. Byte units are binary: a GiB is 2**30 bytes, as torch.cuda and nvidia-smi count them.
"""

from __future__ import annotations

from typing import Any

KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30


def fmt(value: Any, unit: str = "") -> str:
    """A figure in its unit: MiB (of bytes), % and pts (of a share), ratio, count; seconds and rates as numbers.

    >>> fmt(None), fmt(3 * MIB, "MiB"), fmt(300 * MIB, "MiB"), fmt(0.1234, "%"), fmt(-0.02, "pts")
    ('—', '3.000', '300.0', '12.3%', '-2.0 pts')
    >>> fmt(0.5, "ratio"), fmt(1234.0, "count"), fmt(0.004, "s"), fmt(4.25), fmt(42.25), fmt(1234.5), fmt(1200)
    ('0.500', '1,234', '4.00e-03', '4.250', '42.2', '1,234', '1,200')
    """
    if value is None:
        return "—"
    if unit == "MiB":
        return f"{value / MIB:,.3f}" if abs(value) < 10 * MIB else f"{value / MIB:,.1f}"
    if unit == "%":
        return f"{100 * value:.1f}%"
    if unit == "pts":
        return f"{100 * value:+.1f} pts"
    if unit == "ratio":
        return f"{value:.3f}"
    if unit == "count":
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.1f}"
    if isinstance(value, float):
        if value != 0 and abs(value) < 0.01:
            return f"{value:.2e}"
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}" if abs(value) < 1000 else f"{value:,.0f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def human_bytes(value: float | None) -> str:
    """Bytes in the largest binary unit they fill.

    >>> human_bytes(None), human_bytes(512), human_bytes(3 * MIB), human_bytes(1.5 * GIB)
    ('—', '512 B', '3.00 MiB', '1.50 GiB')
    """
    if value is None:
        return "—"
    for unit, size in (("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
        if abs(value) >= size:
            return f"{value / size:,.2f} {unit}"
    return f"{value:,.0f} B"


def duration(seconds: float | None) -> str:
    """Seconds as a person reads them.

    >>> duration(None), duration(42.4), duration(125), duration(7322)
    ('—', '42 s', '2 min 5 s', '2 h 2 min')
    """
    if seconds is None:
        return "—"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"
