"""Replay windows shared by a share group: two stores on one database act as one window per device.

Each test runs on an SQLite file and on a throw-away PostgreSQL database (:mod:`tests.pg`).
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgecascade.device_sdk import wire
from edgecascade.device_sdk.errors import (
    ConfigError,
    ReplayError,
    SequenceTooFarAheadError,
    SequenceTooOldError,
    StorageError,
)
from edgecascade.device_sdk.wire import crypto
from edgecascade.device_sdk.wire.sequence import parse_resync
from edgecascade.edge_gateway.config import CryptoSettings
from edgecascade.edge_gateway.crypto import GatewayCrypto, GatewayKeyring
from edgecascade.edge_gateway.replay import Refusal, ReplayWindow, Verdict, judge
from edgecascade.edge_gateway.shared_replay import SharedReplayStore

NOW = 1_700_000_000 * 1_000_000  # the gateways' clock, µs
AHEAD = 60 * 1_000_000


@pytest.fixture
def pair(database_url: str) -> Iterator[tuple[SharedReplayStore, SharedReplayStore]]:
    """Two gateways' stores on one database."""
    a, b = SharedReplayStore(database_url), SharedReplayStore(database_url)
    yield a, b
    a.close()
    b.close()


def accepted(verdicts: list[Verdict]) -> list[bool]:
    for verdict in verdicts:
        assert verdict is None or isinstance(verdict, Refusal), verdict  # no storage failure here
    return [verdict is None for verdict in verdicts]


def test_a_number_one_gateway_accepted_is_refused_by_the_other(
    pair: tuple[SharedReplayStore, SharedReplayStore],
) -> None:
    a, b = pair
    assert accepted(a.accept_many([("cam-01", NOW), ("cam-01", NOW + 5)], NOW, AHEAD)) == [True, True]
    (again,) = b.accept_many([("cam-01", NOW)], NOW, AHEAD)  # before: B's own window knew nothing
    assert isinstance(again, Refusal) and type(again.error) is ReplayError
    assert (again.next_seq, again.limit) == (NOW + 6, NOW + AHEAD)  # where the device may go on
    assert accepted(b.accept_many([("cam-01", NOW + 3), ("cam-02", NOW)], NOW, AHEAD)) == [True, True]
    assert accepted(a.accept_many([("cam-01", NOW + 3)], NOW, AHEAD)) == [False]
    window = a.window_of("cam-01")
    assert window is not None and window.state == (NOW + 5, 0b100101)
    assert a.window_of("cam-99") is None


def test_one_refused_number_of_a_batch_never_affects_another(
    pair: tuple[SharedReplayStore, SharedReplayStore],
) -> None:
    a, _ = pair
    a.accept_many([("cam-01", NOW + 100)], NOW, AHEAD)
    batch = [
        ("cam-01", NOW + 101),
        ("cam-01", NOW + 101),  # the same number twice in one batch: once
        ("cam-01", NOW + 2 * AHEAD),  # too far ahead: refused, the window does not move
        ("cam-01", NOW),  # too old (100 behind, window 64)
        ("cam-02", NOW + 1),
        ("cam-01", NOW + 99),  # late but inside the window
    ]
    verdicts = a.accept_many(batch, NOW, AHEAD)
    assert accepted(verdicts) == [True, False, False, False, True, True]
    assert isinstance(verdicts[2], Refusal) and isinstance(verdicts[2].error, SequenceTooFarAheadError)
    assert isinstance(verdicts[3], Refusal) and isinstance(verdicts[3].error, SequenceTooOldError)
    assert a.transactions == 2  # one per batch
    window = a.window_of("cam-01")
    assert window is not None and window.highest == NOW + 101


def test_racing_gateways_accept_each_number_exactly_once(
    pair: tuple[SharedReplayStore, SharedReplayStore],
) -> None:
    """Four threads on two stores play the same numbers of three devices in shuffled batches."""
    numbers = [(f"cam-{d}", NOW + n) for d in range(3) for n in range(60)]  # all inside one window
    wins: list[tuple[str, int]] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def play(store: SharedReplayStore, seed: int) -> None:
        mine = numbers[:]
        random.Random(seed).shuffle(mine)
        try:
            for start in range(0, len(mine), 8):
                batch = mine[start : start + 8]
                verdicts = store.accept_many(batch, NOW, AHEAD)
                with lock:
                    wins.extend(n for n, ok in zip(batch, accepted(verdicts), strict=True) if ok)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=play, args=(store, seed)) for seed, store in enumerate(pair * 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert sorted(wins) == sorted(numbers)  # before (a window per gateway): most numbers twice


def test_the_window_survives_every_gateway_exactly(database_url: str) -> None:
    first = SharedReplayStore(database_url)
    first.accept_many([("cam-01", NOW + n) for n in (0, 2, 4)], NOW, AHEAD)
    first.close()
    restarted = SharedReplayStore(database_url)
    try:  # no floor, no resync: the numbers never accepted still are, the others never again
        assert accepted(restarted.accept_many([("cam-01", NOW + n) for n in range(6)], NOW, AHEAD)) == [
            False,
            True,
            False,
            True,
            False,
            True,
        ]
    finally:
        restarted.close()


def test_a_narrower_window_is_never_read_as_unseen_numbers(database_url: str) -> None:
    narrow, wide = SharedReplayStore(database_url, window=8), SharedReplayStore(database_url, window=64)
    try:
        narrow.accept_many([("cam-01", NOW + n) for n in range(20)], NOW, AHEAD)  # bits of 0..11 shifted out
        verdicts = wide.accept_many([("cam-01", NOW + 5), ("cam-01", NOW + 15)], NOW, AHEAD)
        assert isinstance(verdicts[0], Refusal) and isinstance(verdicts[0].error, SequenceTooOldError)
        assert isinstance(verdicts[1], Refusal) and type(verdicts[1].error) is ReplayError
    finally:
        narrow.close()
        wide.close()


def test_a_store_that_cannot_be_reached_refuses_the_whole_batch(tmp_path: Path) -> None:
    store = SharedReplayStore(f"sqlite:///{tmp_path / 'replay.db'}")
    store.close()
    verdicts = store.accept_many([("cam-01", NOW), ("cam-02", NOW)], NOW, AHEAD)
    assert all(isinstance(v, StorageError) for v in verdicts) and len(verdicts) == 2
    with pytest.raises(StorageError, match="not usable"):  # nothing listens there
        SharedReplayStore("postgresql://ec@127.0.0.1:1/none")
    for bad in ("mysql://host/db", "sqlite://", "not a url"):
        with pytest.raises(ConfigError):
            SharedReplayStore(bad)
    with pytest.raises(ConfigError, match="replay_shared"):
        CryptoSettings(replay_shared="mysql://host/db")
    assert "secret" not in repr(CryptoSettings(replay_shared="postgresql://ec:secret@db/replay"))


def test_a_replayed_request_gets_a_sealed_resync_from_the_other_gateway(database_url: str) -> None:
    gateway_key, device_key = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    keyring = GatewayKeyring(gateway_key)
    keyring.add("cam-01", 1, device_key.public_key())
    device = crypto.DeviceCrypto(
        "cam-01", {1: crypto.device_pair_keys(device_key, gateway_key.public_key(), "cam-01", 1)}
    )
    a, b = (
        GatewayCrypto(keyring, windows=SharedReplayStore(database_url), clock=lambda: NOW / 1_000_000)
        for _ in range(2)
    )
    try:
        header = wire.Header(wire.MessageType.INFER_REQUEST, "cam-01", 7, NOW)
        captured = wire.envelope_from_bytes(device.seal(wire.Envelope(header, b"features")))
        assert a.open_request(captured)[0].body == b"features"
        with pytest.raises(ReplayError) as replayed:
            b.open_request(captured)
        answer = replayed.value.answer
        assert answer is not None  # sealed for the device: it believes where to go on
        opened = device.open(wire.envelope_to_bytes(answer))
        assert parse_resync(wire.decode_error(opened.body)[1]) == (NOW + 1, NOW + AHEAD)
        second = wire.Header(wire.MessageType.INFER_REQUEST, "cam-01", 7, NOW + 1)
        assert b.open_request(wire.envelope_from_bytes(device.seal(wire.Envelope(second, b"x"))))[1] == 1
    finally:
        a.close()
        b.close()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.lists(st.tuples(st.sampled_from("ab"), st.integers(0, 120)), max_size=12), max_size=8))
def test_the_shared_window_judges_exactly_as_the_window_in_memory(
    tmp_path_factory: pytest.TempPathFactory, batches: list[list[tuple[str, int]]]
) -> None:
    """Batch by batch on SQLite, against a pure ReplayWindow per device: same verdicts, same state."""
    url = f"sqlite:///{tmp_path_factory.mktemp('prop') / 'shared.db'}"
    store = SharedReplayStore(url, window=16)
    model = {device: ReplayWindow(16) for device in "ab"}
    try:
        for batch in batches:
            numbers = [(device, NOW + n) for device, n in batch]
            verdicts = store.accept_many(numbers, NOW, 100)
            expected = [judge(model[device], seq, NOW, 100) for device, seq in numbers]
            assert accepted(verdicts) == [v is None for v in expected]
            for got, want in zip(verdicts, expected, strict=True):
                if want is not None:
                    assert isinstance(got, Refusal) and type(got.error) is type(want.error)
                    assert (got.next_seq, got.limit) == (want.next_seq, want.limit)
        for device, window in model.items():
            shared = store.window_of(device)
            assert (shared.state if shared is not None else (None, 0)) == window.state
    finally:
        store.close()
