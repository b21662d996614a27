"""Progress bars for long operations (conversion, export, verification), drawn by tqdm, and
the one way memshard writes sizes and counts for people.

A bar is shown when asked (``enabled=True``), or, with ``enabled=None``, only when stderr is a
terminal, so logs and CI output stay clean. Sizes are in binary units everywhere (bars,
summaries, ``memshard info``): ``B``, ``KiB``, ``MiB``, ``GiB``, ``TiB``; counts have
thousands separators.

Every long operation reports its progress after each block, so :meth:`Bar.update` is also
where a Ctrl-C is taken (:func:`memshard.interrupt.check`), whether or not a bar is drawn.
"""

from __future__ import annotations

import sys
from typing import Any

from . import interrupt

#: The binary units of :func:`format_bytes`, each 1024 times the one before.
BYTE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def format_bytes(count: float) -> str:
    """``count`` bytes for people, in binary units.

    Example:
        >>> format_bytes(512), format_bytes(1536), format_bytes(256 << 20), format_bytes(3 << 40)
        ('512 B', '1.5 KiB', '256.0 MiB', '3.0 TiB')
    """
    for unit in BYTE_UNITS[:-1]:
        if abs(count) < 1024:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} {BYTE_UNITS[-1]}"


def format_rate(count: float, seconds: float, unit: str = "B") -> str:
    """A rate for people: bytes per second in binary units, anything else counted per second.

    Example:
        >>> format_rate(3 << 20, 2.0), format_rate(25_000, 2.0, "rows")
        ('1.5 MiB/s', '12,500 rows/s')
    """
    per_second = count / max(seconds, 1e-9)
    if unit == "B":
        return f"{format_bytes(per_second)}/s"
    return f"{per_second:,.0f} {unit}/s"


def format_amount(count: float, unit: str) -> str:
    """``count`` of ``unit`` for people: bytes in binary units, anything else with separators.

    Example:
        >>> format_amount(2048, "B"), format_amount(20_000, "rows")
        ('2.0 KiB', '20,000 rows')
    """
    return format_bytes(count) if unit == "B" else f"{count:,.0f} {unit}"


def is_enabled(enabled: bool | None) -> bool:
    """Whether to draw: ``enabled``, or stderr is a terminal when it is ``None``."""
    if enabled is None:
        return sys.stderr.isatty()
    return bool(enabled)


class Bar:
    """A progress bar counting to ``total``; a context manager. See :func:`progress_bar`."""

    def __init__(self, bar: Any) -> None:
        self._bar = bar

    @property
    def disable(self) -> bool:
        """Whether nothing is drawn."""
        return bool(self._bar.disable)

    def update(self, count: int, rows: int = 0) -> None:
        """Count ``count`` more units done (and ``rows`` more rows, on a bar that counts
        them); raise ``KeyboardInterrupt`` if Ctrl-C was pressed (see
        :mod:`memshard.interrupt`)."""
        interrupt.check()
        self._bar.memshard_rows += rows
        self._bar.update(count)

    def __enter__(self) -> Bar:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._bar.close()


def progress_bar(
    total: int,
    *,
    desc: str,
    enabled: bool | None,
    unit: str = "B",
    initial: int = 0,
    rows: bool = False,
) -> Bar:
    """A context-managed bar counting to ``total`` (bytes by default) from ``initial`` (done
    before, e.g. by an interrupted run); call ``update(n)``.

    Drawn as ``desc: 42%|####      | 1.1 GiB/2.5 GiB [00:03<00:04, 350.2 MiB/s]``; with
    ``rows``, the bar also counts rows (``update(n, rows=r)``) and their rate, as in
    ``build: 42%|####      | 420/1,000 inputs [00:03<00:04, 140 inputs/s] 5,230 rows, 1,743
    rows/s``.
    """
    from tqdm import tqdm

    class _Tqdm(tqdm):  # type: ignore[misc]
        memshard_rows = 0

        @property
        def format_dict(self) -> dict[str, Any]:
            values: dict[str, Any] = super().format_dict
            done, size, rate = values.get("n") or 0, values.get("total"), values.get("rate")
            values["done"] = format_bytes(done) if unit == "B" else f"{done:,.0f}"
            values["size"] = "?" if size is None else format_amount(size, unit)
            if not rate and values.get("elapsed"):
                rate = (done - (values.get("initial") or 0)) / values["elapsed"]
            values["speed"] = "?" if not rate else format_rate(rate, 1.0, unit)
            values["rows"] = ""
            if rows:
                rows_rate = format_rate(self.memshard_rows, values.get("elapsed") or 0, "rows")
                values["rows"] = f" {self.memshard_rows:,} rows, {rows_rate}"
            return values

    return Bar(
        _Tqdm(
            total=total,
            initial=initial,
            desc=desc,
            unit=unit,
            bar_format="{l_bar}{bar}| {done}/{size} [{elapsed}<{remaining}, {speed}]{rows}",
            disable=not is_enabled(enabled),
            file=sys.stderr,
            dynamic_ncols=True,
            smoothing=0.1,
        )
    )


def say(message: str) -> None:
    """Print one line to stderr without breaking a bar being drawn."""
    from tqdm import tqdm

    tqdm.write(message, file=sys.stderr)
