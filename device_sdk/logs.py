"""Log lines an operator can afford: a rate limiter for repeated warnings, and JSON lines.

:class:`LogLimiter` guards the log lines that outside input can trigger at will (every
rejected request, every failed batch): each key (e.g. reason and device) logs its first
``burst`` lines per ``period``, and at most ``max_lines`` lines in all; the rest are
counted and reported as one ``suppressed N similar log lines`` line when the period ends
(or at :meth:`LogLimiter.flush`). The totals stay exact in the tier's counters, so a flood
of 10,000 bad messages costs a handful of log lines, not 10,000.

:class:`JsonFormatter` writes one JSON object per line (time, level, logger, message, and
any ``extra`` fields), for log shippers; :func:`configure_logging` is what the daemons'
``--log-format`` calls. Libraries never call it: only entry points configure logging.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Hashable
from typing import IO, Any

#: a limiter key: a string, or a tuple such as (reason, device id)
LogKey = Hashable
LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_SUMMARY_KEYS = 5  # keys named in a summary line, the most suppressed first
_TRACKED_KEYS = 1024  # keys whose suppressions are told apart; more are summed as "other"


class LogLimiter:
    """Logs the first ``burst`` lines per key and ``max_lines`` in all per ``period``; counts the rest."""

    def __init__(
        self,
        logger: logging.Logger,
        *,
        burst: int = 5,
        period: float = 60.0,
        max_lines: int = 100,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if burst < 1 or max_lines < 1 or period <= 0:
            raise ValueError("burst and max_lines must be >= 1 and period > 0")
        self.logger = logger
        self.burst = burst
        self.period = period
        self.max_lines = max_lines
        self._clock = clock
        self._lock = threading.Lock()
        self._started = clock()
        self._logged: Counter[LogKey] = Counter()  # lines logged per key in this period
        self._suppressed: Counter[LogKey] = Counter()
        self._suppressed_level = logging.NOTSET

    def log(
        self, level: int, key: LogKey, msg: str, *args: object, exc_info: bool | BaseException = False
    ) -> bool:
        """Log ``msg % args`` unless ``key`` (or the period) used its budget; True if it was logged.

        ``exc_info`` as for :meth:`logging.Logger.log`: True for the exception being handled.
        """
        if not self.logger.isEnabledFor(level):
            return False
        with self._lock:
            summary = self._roll(self._clock())
            allowed = self._logged[key] < self.burst and self._logged.total() < self.max_lines
            if allowed:
                self._logged[key] += 1
            else:
                if key in self._suppressed or len(self._suppressed) < _TRACKED_KEYS:
                    self._suppressed[key] += 1
                else:
                    self._suppressed["other"] += 1
                self._suppressed_level = max(self._suppressed_level, level)
        if summary is not None:
            self.logger.log(*summary)
        if allowed:
            self.logger.log(level, msg, *args, exc_info=exc_info)
        return allowed

    def flush(self) -> None:
        """Report what was suppressed so far now (e.g. when the daemon stops), and start a new period."""
        with self._lock:
            summary = self._summary(self._clock())
        if summary is not None:
            self.logger.log(*summary)

    @property
    def suppressed(self) -> int:
        """Lines suppressed in the current period (not yet summarised)."""
        with self._lock:
            return self._suppressed.total()

    def _roll(self, now: float) -> tuple[Any, ...] | None:
        """Start a new period if this one is over; the summary line of the old one, if any."""
        if now - self._started < self.period:
            return None
        return self._summary(now)

    def _summary(self, now: float) -> tuple[Any, ...] | None:
        elapsed = max(now - self._started, 0.0)
        suppressed, level = self._suppressed, self._suppressed_level
        self._started = now
        self._logged = Counter()
        self._suppressed = Counter()
        self._suppressed_level = logging.NOTSET
        if not suppressed:
            return None
        top = ", ".join(f"{_key_text(k)} x{n}" for k, n in suppressed.most_common(_SUMMARY_KEYS))
        more = len(suppressed) - _SUMMARY_KEYS
        if more > 0:
            top += f", {more} more"
        return (level, "suppressed %d similar log lines in %.0f s (%s)", suppressed.total(), elapsed, top)


def _key_text(key: LogKey) -> str:
    return "/".join(str(k) for k in key) if isinstance(key, tuple) else str(key)


#: attributes every LogRecord has; whatever else a record carries came from ``extra=``
_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``message``,
    the ``extra`` fields, and ``exception``/``stack`` text when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.datetime.fromtimestamp(record.created, tz=datetime.UTC)
        entry: dict[str, Any] = {
            "time": stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in vars(record).items():
            if name not in _RECORD_FIELDS and name not in entry:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure_logging(level: str = "INFO", log_format: str = "text", stream: IO[str] | None = None) -> None:
    """Set up the root logger of a daemon or command: ``text`` lines or ``json`` objects on stderr.

    Does nothing when the root logger has handlers already (like :func:`logging.basicConfig`).
    """
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, got {log_format!r}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler])
