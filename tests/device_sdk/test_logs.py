"""The log limiter (on a fake clock), the JSON formatter and the daemons' logging set-up."""

from __future__ import annotations

import io
import json
import logging
import sys

import pytest

from edgecascade.device_sdk.logs import JsonFormatter, LogLimiter, configure_logging


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Lines(logging.Handler):
    """Keeps every record that reaches the logger."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    @property
    def messages(self) -> list[str]:
        return [r.getMessage() for r in self.records]


@pytest.fixture
def lines(request: pytest.FixtureRequest) -> tuple[logging.Logger, Lines]:
    logger = logging.getLogger(f"test.logs.{request.node.name}")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    handler = Lines()
    logger.addHandler(handler)
    return logger, handler


def test_first_lines_of_a_key_are_logged_then_summarised_when_the_period_ends(lines) -> None:
    logger, handler = lines
    clock = FakeClock()
    limiter = LogLimiter(logger, burst=3, period=60, clock=clock)
    logged = [limiter.log(logging.WARNING, ("decrypt", "dev-1"), "bad %d", i) for i in range(10)]
    assert logged == [True] * 3 + [False] * 7
    assert handler.messages == ["bad 0", "bad 1", "bad 2"]
    assert limiter.suppressed == 7

    clock.now += 59.0
    assert not limiter.log(logging.WARNING, ("decrypt", "dev-1"), "bad %d", 10)  # same period
    clock.now += 2.0
    assert limiter.log(logging.WARNING, ("decrypt", "dev-1"), "bad %d", 11)  # a new period
    summary, fresh = handler.records[3:]
    assert summary.levelno == logging.WARNING
    assert summary.getMessage().startswith("suppressed 8 similar log lines in 61 s")
    assert "decrypt/dev-1 x8" in summary.getMessage()
    assert fresh.getMessage() == "bad 11"
    assert limiter.suppressed == 0


def test_keys_have_their_own_budget_within_an_overall_cap(lines) -> None:
    logger, handler = lines
    limiter = LogLimiter(logger, burst=2, max_lines=5, clock=FakeClock())
    for device in ("a", "b"):
        for _ in range(4):
            limiter.log(logging.WARNING, ("replay", device), "replay from %s", device)
    assert handler.messages == ["replay from a"] * 2 + ["replay from b"] * 2
    for device in "cdefgh":  # many devices: the overall cap holds
        limiter.log(logging.WARNING, ("replay", device), "replay from %s", device)
    assert len(handler.records) == 5
    assert limiter.suppressed == 4 + 5


def test_flush_reports_what_was_suppressed_at_once(lines) -> None:
    logger, handler = lines
    limiter = LogLimiter(logger, burst=1, clock=FakeClock())
    limiter.flush()
    assert handler.records == []  # nothing suppressed: no summary
    for _ in range(5):
        limiter.log(logging.INFO, "version", "unknown version")
    limiter.flush()
    assert handler.messages[0] == "unknown version"
    assert handler.records[1].levelno == logging.INFO  # the summary takes the level of what it counts
    assert "suppressed 4 similar" in handler.messages[1]
    assert limiter.log(logging.INFO, "version", "unknown version")  # a new period starts


def test_ten_thousand_messages_cost_a_bounded_number_of_lines(lines) -> None:
    logger, handler = lines
    clock = FakeClock()
    limiter = LogLimiter(logger, clock=clock)  # 5 per key, 100 per minute
    for i in range(10_000):
        clock.now += 0.001  # 10 s in all: one period
        limiter.log(logging.WARNING, ("bad_input", f"dev-{i % 50}"), "bad input %d", i, exc_info=False)
    limiter.flush()
    assert len(handler.records) == 100 + 1
    assert "suppressed 9900 similar" in handler.messages[-1]
    assert "45 more" in handler.messages[-1]  # 50 keys: five named, the rest counted


def test_disabled_levels_cost_nothing(lines) -> None:
    logger, handler = lines
    logger.setLevel(logging.WARNING)
    limiter = LogLimiter(logger, burst=1, clock=FakeClock())
    assert not limiter.log(logging.INFO, "k", "quiet")
    limiter.flush()
    assert handler.records == []


def test_a_logged_traceback_keeps_its_exception(lines) -> None:
    logger, handler = lines
    limiter = LogLimiter(logger, clock=FakeClock())
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        limiter.log(logging.ERROR, "batch", "batch failed", exc_info=True)
    assert handler.records[0].exc_info is not None
    assert handler.records[0].exc_info[0] is RuntimeError


def test_limiter_refuses_nonsense_settings() -> None:
    with pytest.raises(ValueError):
        LogLimiter(logging.getLogger("x"), burst=0)


def _record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    logger = logging.getLogger("edgecascade.test")
    return logger.makeRecord(logger.name, logging.WARNING, __file__, 1, msg, args, None, extra=extra)


def test_json_formatter_writes_one_object_per_record_with_extras() -> None:
    record = _record("rejected %s: %s", "dev-1", "decrypt", device="dev-1", count=3)
    line = JsonFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["level"] == "WARNING"
    assert entry["logger"] == "edgecascade.test"
    assert entry["message"] == "rejected dev-1: decrypt"
    assert entry["device"] == "dev-1" and entry["count"] == 3
    assert entry["time"].endswith("Z") and entry["time"][:2] == "20"
    assert "args" not in entry and "msg" not in entry  # LogRecord's own fields stay out


def test_json_formatter_keeps_tracebacks_on_one_line() -> None:
    try:
        raise ValueError("bad\nvalue")
    except ValueError:
        logger = logging.getLogger("edgecascade.test")
        record = logger.makeRecord(logger.name, logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    line = JsonFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert "ValueError: bad" in entry["exception"]
    assert entry["message"] == "failed"


def test_json_formatter_survives_values_json_cannot_write() -> None:
    entry = json.loads(JsonFormatter().format(_record("x", payload=b"\x00\xff", where=object())))
    assert entry["payload"] == "b'\\x00\\xff'"


def test_configure_logging_json_and_text(monkeypatch: pytest.MonkeyPatch) -> None:
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])  # as in a fresh daemon process
    monkeypatch.setattr(root, "level", logging.WARNING)
    stream = io.StringIO()
    configure_logging("info", "json", stream)
    logging.getLogger("edgecascade.daemon").info("serving %s", "v3", extra={"gateway": "gw-1"})
    entry = json.loads(stream.getvalue())
    assert entry["message"] == "serving v3" and entry["gateway"] == "gw-1" and entry["level"] == "INFO"

    monkeypatch.setattr(root, "handlers", [])
    text = io.StringIO()
    configure_logging("INFO", "text", text)
    logging.getLogger("edgecascade.daemon").info("plain")
    assert text.getvalue().rstrip().endswith("INFO edgecascade.daemon: plain")
    with pytest.raises(ValueError):
        configure_logging("INFO", "xml")
