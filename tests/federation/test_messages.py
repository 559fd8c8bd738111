"""Typed reads of a round's Flower messages: every missing or mistyped value is ``malformed``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from edgecascade.device_sdk.errors import UpdateError
from edgecascade.federation import messages


def malformed() -> pytest.RaisesExc[UpdateError]:
    return pytest.raises(UpdateError, check=lambda e: e.reason == "malformed")


@pytest.fixture
def server_identity() -> Iterator[None]:
    """What Flower sets in a ServerApp's process, so that messages can be made."""
    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 17, 1
    yield
    TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


def content() -> RecordDict:
    return RecordDict(
        {
            messages.ARRAYS: ArrayRecord([np.ones((2, 3), np.float32), np.arange(4, dtype=np.int8)]),
            messages.CONFIG: ConfigRecord(
                {"server-round": 3, "compression": "int8", "signature": b"\x01\x02"}
            ),
            messages.METRICS: MetricRecord({"num-examples": 120, "loss": 0.5, "accuracy-exit1": 0.25}),
        }
    )


def test_records_are_read_by_name() -> None:
    arrays = messages.arrays(content())
    assert [(a.shape, a.dtype) for a in arrays] == [((2, 3), np.float32), ((4,), np.int8)]
    np.testing.assert_array_equal(arrays[1], [0, 1, 2, 3])
    assert messages.config(content())["compression"] == "int8"
    assert messages.metrics(content())["num-examples"] == 120


@pytest.mark.parametrize(
    "read",
    [
        messages.arrays,
        messages.config,
        messages.metrics,
        lambda c: messages.config(c, messages.UPDATE),
    ],
)
def test_a_missing_record_is_malformed(read: Callable[[RecordDict], Any]) -> None:
    with malformed():
        read(RecordDict())


def test_a_record_of_another_kind_under_the_name_is_malformed() -> None:
    swapped = RecordDict({messages.ARRAYS: ConfigRecord({"a": 1}), messages.CONFIG: MetricRecord({"a": 1})})
    for read in (messages.arrays, messages.config, messages.metrics):
        with malformed():
            read(swapped)


def test_typed_values_are_read() -> None:
    config, numbers = messages.config(content()), messages.metrics(content())
    assert messages.integer(config, "server-round") == 3
    assert messages.integer(numbers, "num-examples") == 120
    assert messages.text(config, "compression") == "int8"
    assert messages.blob(config, "signature") == b"\x01\x02"
    assert messages.number(numbers, "loss") == 0.5
    value = messages.number(numbers, "num-examples")  # an int is a number
    assert value == 120.0 and isinstance(value, float)


@pytest.mark.parametrize(
    ("read", "value"),
    [
        (messages.integer, None),  # missing
        (messages.integer, True),  # a bool is not an int here, though Python says it is
        (messages.integer, 3.0),
        (messages.integer, "3"),
        (messages.integer, [1, 2]),
        (messages.number, None),
        (messages.number, False),
        (messages.number, "0.5"),
        (messages.number, [0.5]),
        (messages.text, None),
        (messages.text, b"int8"),
        (messages.text, 8),
        (messages.blob, None),
        (messages.blob, "0102"),
        (messages.blob, 12),
    ],
)
def test_a_missing_or_mistyped_value_is_malformed(read: Callable[[Any, str], Any], value: Any) -> None:
    record = ConfigRecord({} if value is None else {"key": value})
    with malformed() as info:
        read(record, "key")
    assert str(info.value).startswith("key: expected ")


def test_a_number_may_default_only_when_missing() -> None:
    record = ConfigRecord({"proximal-mu": "0.1"})
    assert messages.number(ConfigRecord({}), "proximal-mu", 0.0) == 0.0
    assert messages.number(ConfigRecord({"proximal-mu": 0.25}), "proximal-mu", 0.0) == 0.25
    with malformed():
        messages.number(record, "proximal-mu", 0.0)  # present, but text
    with malformed():
        messages.number(ConfigRecord({"proximal-mu": True}), "proximal-mu", 0.0)


def test_exit_metrics_names_each_exit_and_the_whole_model() -> None:
    assert messages.exit_metrics("accuracy", [0.5, 0.625, 0.75]) == {
        "accuracy-exit1": 0.5,
        "accuracy-exit2": 0.625,
        "accuracy-exit3": 0.75,
        "accuracy": 0.75,
    }
    assert set(messages.exit_metrics("accuracy-before", [0.1, 0.2, 0.3])) == {
        "accuracy-before-exit1",
        "accuracy-before-exit2",
        "accuracy-before-exit3",
        "accuracy-before",
    }


def test_pooled_is_the_mean_over_the_prefix_exits_only() -> None:
    numbers = {
        **messages.exit_metrics("accuracy", [0.5, 0.625, 0.75]),
        **messages.exit_metrics("accuracy-before", [0.0, 0.0, 0.0]),
        "num-examples": 40,
    }
    assert messages.pooled(MetricRecord(numbers), "accuracy") == pytest.approx(0.625)
    assert messages.pooled(MetricRecord(numbers), "accuracy-before") == 0.0
    assert messages.pooled(MetricRecord({"accuracy-exit1": 1}), "accuracy") == 1.0  # ints count


@pytest.mark.parametrize(
    "numbers",
    [
        {"accuracy": 0.9},  # no exits
        {"accuracy-exit1": [0.5, 0.6]},  # a list is not an accuracy
        {"accuracy-exit1": 0.5, "accuracy-exit2": 1.5},  # no exit scores 150%
        {"accuracy-exit1": -0.1, "accuracy-exit2": 0.9},  # ...or below 0, even if the mean is fine
        {"accuracy-exit1": float("nan")},
    ],
)
def test_pooled_refuses_what_cannot_be_exit_accuracies(numbers: dict[str, Any]) -> None:
    with malformed():
        messages.pooled(MetricRecord(numbers), "accuracy")


@pytest.mark.usefixtures("server_identity")
def test_a_reply_goes_back_to_the_sender_of_the_request() -> None:
    request = Message(content(), dst_node_id=7, message_type=MessageType.EVALUATE, ttl=30.0)
    answer = messages.reply(request, {messages.METRICS: MetricRecord({"num-examples": 5})})
    assert answer.metadata.src_node_id == 7 and answer.metadata.dst_node_id == 1
    assert answer.metadata.run_id == 17 and answer.metadata.message_type == MessageType.EVALUATE
    assert list(answer.content.metric_records) == [messages.METRICS] and not answer.content.array_records
