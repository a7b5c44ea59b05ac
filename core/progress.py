"""Progress for long work (index builds, benchmark runs): a tqdm bar on a terminal, and a plain
line on stderr every ``every_s`` seconds otherwise, so logs and CI show that a 20-minute build is
alive and how long it has left."""

from __future__ import annotations

import sys
import time
from typing import Literal

from tqdm import tqdm

ProgressMode = Literal["bar", "lines", "none"]
PROGRESS_EVERY_S = 30.0


def progress_mode(enabled: bool | str = True) -> ProgressMode:
    """``True`` = whatever suits stderr (a bar on a terminal, lines elsewhere); ``False`` = silent."""
    if enabled is False or enabled == "none":
        return "none"
    if enabled in ("bar", "lines"):
        return enabled  # type: ignore[return-value]
    return "bar" if sys.stderr.isatty() else "lines"


class Progress:
    def __init__(self, total: int, label: str, unit: str, mode: bool | str = True,
                 every_s: float = PROGRESS_EVERY_S) -> None:
        self.total, self.label, self.unit, self.every_s = total, label, unit, every_s
        self.done = self.failed = 0
        self.mode = progress_mode(mode)
        self.bar = tqdm(total=total, desc=label, unit=unit, dynamic_ncols=True, disable=self.mode != "bar")
        self.start = self.last = time.monotonic()

    def update(self, n: int = 1, failed: int = 0) -> None:
        self.done += n
        self.failed += failed
        self.bar.update(n)
        now = time.monotonic()
        if self.mode == "lines" and (now - self.last >= self.every_s or self.done >= self.total):
            self.last = now
            rate = self.done / max(now - self.start, 1e-9)
            left = (self.total - self.done) / rate if rate > 0 else float("nan")
            failed_txt = f" ({self.failed} failed)" if self.failed else ""
            print(f"geoguide: {self.label}: {self.done}/{self.total} {self.unit}{failed_txt}, "
                  f"{rate:.2f} {self.unit}/s, ~{left / 60:.1f} min left", file=sys.stderr, flush=True)

    def close(self) -> None:
        self.bar.close()
