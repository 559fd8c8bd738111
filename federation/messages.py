"""What travels in a round's Flower messages, and typed reads of it.

A ``train`` message holds the round's weights (:data:`ARRAYS`) and settings (:data:`CONFIG`:
``server-round``, ``model-version``, ``compression``, ``local-epochs``, ``batch-size``,
``learning-rate``, ``proximal-mu``). A site's
train reply holds its encoded update (:data:`ARRAYS`), its numbers (:data:`METRICS`:
``num-examples``, ``holdout-examples``, ``accuracy-before[-exitN]``, ``loss``,
``train-seconds``) and who signed what (:data:`UPDATE`: ``site``, ``model-version``,
``compression``, ``signature``, ``received-digest``). An ``evaluate`` message holds the
weights to measure (:data:`ARRAYS`) and those to compare them with (:data:`BASELINE`); its
reply holds :data:`METRICS` (``num-examples``, ``accuracy[-exitN]``,
``baseline[-exitN]``) and :data:`UPDATE` (``site``).

Every read below raises :class:`~edgecascade.device_sdk.errors.UpdateError` (reason
``malformed``) when the record or value is missing or of another type: a reply is data from
outside.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

from edgecascade.device_sdk.errors import UpdateError

ARRAYS, BASELINE, CONFIG, METRICS, UPDATE = "arrays", "baseline", "config", "metrics", "update"


def arrays(content: RecordDict, name: str = ARRAYS) -> list[np.ndarray]:
    try:
        return [np.asarray(a) for a in content.array_records[name].to_numpy_ndarrays()]
    except (KeyError, TypeError, ValueError) as exc:
        raise UpdateError("malformed", f"no readable {name} record: {exc!r}") from None


def config(content: RecordDict, name: str = CONFIG) -> ConfigRecord:
    try:
        return content.config_records[name]
    except KeyError:
        raise UpdateError("malformed", f"no {name} record") from None


def metrics(content: RecordDict) -> MetricRecord:
    try:
        return content.metric_records[METRICS]
    except KeyError:
        raise UpdateError("malformed", f"no {METRICS} record") from None


def _value(record: ConfigRecord | MetricRecord, key: str, kinds: tuple[type, ...]) -> Any:
    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise UpdateError(
            "malformed", f"{key}: expected {'/'.join(k.__name__ for k in kinds)}, got {value!r:.40}"
        )
    return value


def integer(record: ConfigRecord | MetricRecord, key: str) -> int:
    return int(_value(record, key, (int,)))


def number(record: ConfigRecord | MetricRecord, key: str, default: float | None = None) -> float:
    if default is not None and key not in record:
        return default
    return float(_value(record, key, (int, float)))


def text(record: ConfigRecord, key: str) -> str:
    return str(_value(record, key, (str,)))


def blob(record: ConfigRecord, key: str) -> bytes:
    return bytes(_value(record, key, (bytes,)))


def reply(request: Message, content: dict[str, Any]) -> Message:
    """The reply to ``request`` carrying ``content`` (records by name)."""
    return Message(content=RecordDict(content), reply_to=request)


def exit_metrics(prefix: str, values: list[float]) -> dict[str, float]:
    """``prefix-exitN`` per exit and ``prefix`` for the last exit (the whole model)."""
    out = {f"{prefix}-exit{i}": v for i, v in enumerate(values, 1)}
    out[prefix] = values[-1]
    return out


def pooled(record: MetricRecord, prefix: str) -> float:
    """The mean over exits of ``prefix-exitN``: every (example, exit) evaluation counted once.

    Each value is an accuracy: one outside [0, 1] (or NaN) is ``malformed``, not averaged in.
    """
    values = [
        float(v) for k, v in record.items() if k.startswith(f"{prefix}-exit") and isinstance(v, int | float)
    ]
    if not values:
        raise UpdateError("malformed", f"no {prefix}-exitN metrics")
    if not all(0.0 <= v <= 1.0 for v in values):  # NaN fails too
        raise UpdateError("malformed", f"{prefix}-exitN: {values!r:.60} are not all in [0, 1]")
    return sum(values) / len(values)
