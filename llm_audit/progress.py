"""Progress on stderr: a live bar on a terminal, plain lines in a log.

tqdm redraws its bar with carriage returns, which a log file keeps as dozens of frames per line.
When stderr is not a terminal, `progress_bar` writes one plain line instead each time another
tenth of the work is done or `PLAIN_EVERY_S` seconds have passed, whichever comes first.
"""

from __future__ import annotations

import sys
import time
from typing import Any

PLAIN_EVERY_S = 10.0


def progress_bar(total: int | None, *, desc: str, unit: str, enabled: bool = True) -> Any:
    """A tqdm-like object (`update`, `set_postfix_str`, `close`): tqdm's bar on a terminal,
    `PlainProgress` elsewhere, and a silent one when not `enabled`."""
    if enabled and sys.stderr.isatty():
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit=unit, leave=False, file=sys.stderr)
    return PlainProgress(total, desc=desc, enabled=enabled)


class PlainProgress:
    """Progress as whole lines: `llm-audit: scan 40/127 (31%), 12.3 s, 310 MB read`."""

    def __init__(self, total: int | None, *, desc: str, enabled: bool = True):
        self.total, self.desc, self.enabled = total, desc, enabled
        self.n, self.postfix = 0, ""
        self._start = self._last = time.monotonic()
        self._last_tenth = 0

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        tenth = 10 * self.n // self.total if self.total else 0
        if tenth > self._last_tenth or now - self._last >= PLAIN_EVERY_S:
            self._last_tenth, self._last = tenth, now
            self._say(now)

    def set_postfix_str(self, text: str) -> None:
        self.postfix = text

    def set_postfix(self, refresh: bool = True, **values: Any) -> None:
        """tqdm's signature; `refresh` has no meaning for whole lines."""
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        """Nothing to erase: every line written is whole."""

    def _say(self, now: float) -> None:
        if not self.enabled:
            return
        done = f"{self.n}/{self.total}" if self.total else str(self.n)
        share = f" ({100 * self.n // self.total}%)" if self.total else ""
        extra = f", {self.postfix}" if self.postfix else ""
        print(
            f"llm-audit: {self.desc} {done}{share}, {now - self._start:.1f} s{extra}",
            file=sys.stderr,
            flush=True,
        )
