"""Progress lines with rate and ETA for long loops, written through `logging`.

    with Progress(len(records), "packing train", unit="images") as progress:
        for record in records:
            ...
            progress.update()

logs at most one line every `interval_s` seconds, such as
`packing train: 1200/50000 images (2.4%), 81.3 images/s, ETA 0:10:00`,
and a final line when the block ends, whether it finished or raised.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

logger = logging.getLogger(__name__)


class Progress:
    """Counter that logs throughput and the estimated time left.

    Args:
        total: the number of items expected, or None when unknown (then no
            percentage or ETA is shown).
        description: the prefix of every line, such as "packing train".
        unit: the plural name of an item, used in the lines.
        interval_s: the minimum number of seconds between two progress lines.
        log: the logger to write to; the default is this module's logger.
        clock: a monotonic clock in seconds, replaceable in tests.
    """

    def __init__(
        self,
        total: int | None,
        description: str,
        *,
        unit: str = "items",
        interval_s: float = 5.0,
        log: logging.Logger | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        if total is not None and total < 0:
            raise ValueError(f"total must be None or >= 0, got {total}")
        if interval_s < 0:
            raise ValueError(f"interval_s must be >= 0 seconds, got {interval_s}")
        self.total = total
        self.description = description
        self.unit = unit
        self.interval_s = interval_s
        self.count = 0
        self._log = log or logger
        self._clock = clock
        self._start = clock()
        self._last_line = self._start

    def __enter__(self) -> "Progress":
        self._start = self._clock()
        self._last_line = self._start
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        elapsed = self.elapsed
        rate = self.count / elapsed if elapsed > 0 else 0.0
        if exc_type is None:
            self._log.info(
                "%s: done, %d %s in %s (%.1f %s/s)",
                self.description,
                self.count,
                self.unit,
                format_duration(elapsed),
                rate,
                self.unit,
            )
        else:
            self._log.warning(
                "%s: stopped by %s after %s of %s %s in %s",
                self.description,
                exc_type.__name__,
                self.count,
                "?" if self.total is None else self.total,
                self.unit,
                format_duration(elapsed),
            )

    @property
    def elapsed(self) -> float:
        """Seconds since the block started."""
        return self._clock() - self._start

    @property
    def rate(self) -> float:
        """Items per second so far, 0 before any time has passed."""
        elapsed = self.elapsed
        return self.count / elapsed if elapsed > 0 else 0.0

    def update(self, n: int = 1) -> None:
        """Add `n` finished items and log a line if `interval_s` has passed since the last one."""
        self.count += n
        now = self._clock()
        if now - self._last_line < self.interval_s:
            return
        self._last_line = now
        self._log.info("%s", self.status_line())

    def status_line(self) -> str:
        """Return the current progress line: count, percentage, rate and ETA."""
        rate = self.rate
        if self.total is None:
            return f"{self.description}: {self.count} {self.unit}, {rate:.1f} {self.unit}/s"
        percent = 100.0 * self.count / self.total if self.total else 100.0
        if rate > 0:
            eta = format_duration(max(self.total - self.count, 0) / rate)
        else:
            eta = "unknown"
        return (
            f"{self.description}: {self.count}/{self.total} {self.unit} ({percent:.1f}%), "
            f"{rate:.1f} {self.unit}/s, ETA {eta}"
        )


def format_duration(seconds: float) -> str:
    """Format seconds as H:MM:SS, or as "12.3 s" below one minute."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = int(round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"
