"""Rounds over an in-memory grid: aggregation, every refusal, late and failed sites, quorum, waiting.

The grid below stands in for Flower's: each node is a function from the request it is sent to
its reply (``None``: no answer before the deadline), and replies are built as the ClientApp
builds them (``Message(content, reply_to=request)``), encoded, hashed and signed with the real
update code and real site key files.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, cast

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, FedMedian, FedTrimmedAvg, Strategy
from flwr.supercore.task_identity import TaskIdentity

from edgecascade.device_sdk.errors import UpdateError
from edgecascade.federation import messages, updates
from edgecascade.federation.coordinator import POLL_SECONDS, Coordinator, RoundPlan, check_reply
from edgecascade.federation.rounds import RoundRule
from edgecascade.federation.site_keys import load_private_key, load_public_keys, new_site_key

RUN, VERSION, ROUND = 41, 3, 2
SITES = ("site-a", "site-b", "site-c", "site-d", "site-e")
TRAIN_CONFIG = {"local-epochs": 1, "batch-size": 32, "learning-rate": 0.001, "proximal-mu": 0.0}

Answer = Callable[[Message], Message | None]  # a node's reply to a request; None: it never answers
PrivateKeys = dict[str, ec.EllipticCurvePrivateKey]
PublicKeys = dict[str, ec.EllipticCurvePublicKey]


class FakeClock:
    """A monotonic clock that moves only when the coordinator sleeps."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class FakeGrid:
    """A grid whose nodes answer at once (or never); node ``n`` connects at clock time ``joins[n]``.

    Like Flower's grids it gives each message an id as it is sent, which replies refer to.
    """

    def __init__(self, nodes: dict[int, Answer], clock: FakeClock, joins: dict[int, float] | None = None):
        self.nodes, self.clock, self.joins = nodes, clock, joins or {}
        self.sent: list[Message] = []
        self.timeouts: list[float | None] = []

    def get_node_ids(self) -> Iterable[int]:
        return [n for n in self.nodes if self.joins.get(n, 0.0) <= self.clock()]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        batch = list(messages)
        for message in batch:  # what the SuperLink does as it stores a message
            message.metadata.__dict__["_message_id"] = f"message-{len(self.sent)}"
            self.sent.append(message)
        self.timeouts.append(timeout)
        replies = [self.nodes[m.metadata.dst_node_id](m) for m in batch]
        return [r for r in replies if r is not None]


@pytest.fixture(autouse=True)
def server_identity() -> Iterator[None]:
    """What Flower sets in a ServerApp's process: new messages are stamped with its run and node."""
    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, RUN, 1
    yield
    TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


@pytest.fixture(scope="module")
def key_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[PrivateKeys, PublicKeys]:
    """Every site's private key (SITES and an untrusted "stranger"), and the keys the server trusts."""
    trusted_dir, other_dir = tmp_path_factory.mktemp("trusted"), tmp_path_factory.mktemp("other")
    private = {site: load_private_key(new_site_key(trusted_dir, site)[0]) for site in SITES}
    private["stranger"] = load_private_key(new_site_key(other_dir, "stranger")[0])
    return private, load_public_keys(trusted_dir)


@pytest.fixture
def keys(key_files: tuple[PrivateKeys, PublicKeys]) -> PrivateKeys:
    return key_files[0]


@pytest.fixture
def trusted(key_files: tuple[PrivateKeys, PublicKeys]) -> PublicKeys:
    return key_files[1]


def base_weights() -> list[np.ndarray]:
    return [np.arange(6, dtype=np.float32).reshape(3, 2) / 10, np.array([0.5, -0.5], np.float32)]


def rule(min_sites: int = 2, min_fraction: float = 0.5, timeout: float = 30.0) -> RoundRule:
    return RoundRule(timeout=timeout, min_sites=min_sites, min_fraction=min_fraction)


def make(
    nodes: dict[int, Answer],
    trusted: PublicKeys,
    strategy: Strategy | None = None,
    *,
    round_rule: RoundRule | None = None,
    compression: str = "none",
    downlink: str = "float32",
    joins: dict[int, float] | None = None,
) -> tuple[Coordinator, FakeGrid, FakeClock]:
    clock = FakeClock()
    grid = FakeGrid(nodes, clock, joins)
    plan = RoundPlan(
        run=RUN, model_version=VERSION, compression=compression, train_config=TRAIN_CONFIG, downlink=downlink
    )
    made = Coordinator(
        cast(Grid, grid),
        strategy or FedAvg(),
        round_rule or rule(),
        plan,
        trusted,
        clock=clock,
        sleep=clock.sleep,
    )
    return made, grid, clock


def train_request(compression: str = "none") -> Message:
    """A train message as the coordinator sends it in round ROUND."""
    config = {**TRAIN_CONFIG, "server-round": ROUND, "model-version": VERSION, "compression": compression}
    content = RecordDict(
        {messages.ARRAYS: ArrayRecord(base_weights()), messages.CONFIG: ConfigRecord(config)}
    )
    return Message(content, dst_node_id=9, message_type=MessageType.TRAIN, ttl=30.0)


def reply(
    request: Message, arrays: list[np.ndarray] | None, numbers: dict[str, Any], update: dict[str, Any] | None
) -> Message:
    """A train reply as the ClientApp builds it; a ``None`` record is left out."""
    content: dict[str, Any] = {messages.METRICS: MetricRecord(numbers)}
    if arrays is not None:
        content[messages.ARRAYS] = ArrayRecord(arrays)
    if update is not None:
        content[messages.UPDATE] = ConfigRecord(update)
    return messages.reply(request, content)


def signed(
    request: Message,
    site: str,
    key: ec.EllipticCurvePrivateKey,
    encoded: list[np.ndarray],
    examples: int,
    *,
    version: int = VERSION,
    compression: str | None = None,
) -> dict[str, Any]:
    """The update record signing ``encoded`` as ``site`` for the request's run and round."""
    config = messages.config(request.content)
    compression = compression or messages.text(config, "compression")
    digest = updates.update_digest(
        site=site,
        run=request.metadata.run_id,
        server_round=messages.integer(config, "server-round"),
        model_version=version,
        compression=compression,
        num_examples=examples,
        arrays=encoded,
    )
    signature = updates.sign_update(key, digest)
    received = updates.weights_digest(updates.received_weights(messages.arrays(request.content)))
    return {
        "site": site,
        "model-version": version,
        "compression": compression,
        "signature": signature,
        "received-digest": received,
    }


def honest(site: str, key: ec.EllipticCurvePrivateKey, examples: int, shift: float) -> Answer:
    """A site whose local training moved every weight by ``shift``."""

    def answer(request: Message) -> Message:
        base = updates.received_weights(messages.arrays(request.content))  # as the ClientApp reads them
        compression = messages.text(messages.config(request.content), "compression")
        encoded = updates.encode_update(base, [b + np.float32(shift) for b in base], compression)
        update = signed(request, site, key, encoded, examples)
        return reply(
            request, encoded, {"num-examples": examples, "holdout-examples": 0, "loss": 0.25}, update
        )

    return answer


def three_honest(keys: PrivateKeys) -> dict[int, Answer]:
    """Sites a, b, c with 100, 300 and 600 examples, moving the weights by 0.1, 0.2 and 0.4."""
    return {
        1: honest("site-a", keys["site-a"], 100, 0.1),
        2: honest("site-b", keys["site-b"], 300, 0.2),
        3: honest("site-c", keys["site-c"], 600, 0.4),
    }


FEDAVG_SHIFT = (100 * 0.1 + 300 * 0.2 + 600 * 0.4) / 1000  # 0.31


def assert_shifted(weights: list[np.ndarray], shift: float, atol: float = 1e-6) -> None:
    base = base_weights()
    assert [w.shape for w in weights] == [b.shape for b in base]
    for w, b in zip(weights, base, strict=True):
        np.testing.assert_allclose(w, b + shift, atol=atol)


# --- three honest sites ---------------------------------------------------------------------------


def test_three_honest_sites_complete_a_round_averaged_by_examples(
    trusted: PublicKeys, keys: PrivateKeys
) -> None:
    coordinator, grid, clock = make(three_honest(keys), trusted)
    start = base_weights()
    weights, tally, accepted = coordinator.train_round(ROUND, start)
    assert tally.state(coordinator.rule, 3) == "completed"
    assert tally.accepted == {"site-a": 100, "site-b": 300, "site-c": 600}
    assert tally.refused == {} and tally.failed == {} and tally.late == []
    assert tally.sampled == ["site-a", "site-b", "site-c"]  # node ids renamed by their signed replies
    assert tally.bytes_out == 32  # 8 float32 weights sent to each site
    assert tally.bytes_in == {"site-a": 32, "site-b": 32, "site-c": 32}
    assert_shifted(weights, FEDAVG_SHIFT)  # 0.31, not the plain mean 0.2333
    assert [w.dtype for w in weights] == [np.float32, np.float32]
    assert [a.site for a in accepted] == ["site-a", "site-b", "site-c"]
    assert accepted[0].metrics == {"num-examples": 100.0, "holdout-examples": 0.0, "loss": 0.25}
    assert {a.received for a in accepted} == {updates.weights_digest(start)}
    np.testing.assert_allclose(accepted[2].weights[1], [0.9, -0.1], atol=1e-6)
    # what the sites were sent: the weights, the round's settings, a time to live of the round
    assert len(grid.sent) == 3 and grid.timeouts == [30.0]
    sent = grid.sent[0]
    assert sent.metadata.message_type == MessageType.TRAIN and sent.metadata.ttl == 30.0
    config = dict(sent.content.config_records[messages.CONFIG])
    assert config == {**TRAIN_CONFIG, "server-round": ROUND, "model-version": VERSION, "compression": "none"}
    np.testing.assert_array_equal(messages.arrays(sent.content)[0], start[0])
    assert coordinator.sites == {1: "site-a", 2: "site-b", 3: "site-c"}
    assert tally.seconds == 0.0 and clock.now == 100.0  # nobody waited: everyone was connected


@pytest.mark.parametrize(("compression", "nbytes", "atol"), [("float16", 16, 1e-3), ("int8", 16, 2e-3)])
def test_a_compressed_round_averages_the_same(
    trusted: PublicKeys, keys: PrivateKeys, compression: str, nbytes: int, atol: float
) -> None:
    coordinator, _, _ = make(three_honest(keys), trusted, compression=compression)
    weights, tally, _ = coordinator.train_round(ROUND, base_weights())
    assert_shifted(weights, FEDAVG_SHIFT, atol=atol)
    # float16: 8 x 2 bytes; int8: 8 x 1 byte + one float32 scale per tensor
    assert tally.bytes_in == {"site-a": nbytes, "site-b": nbytes, "site-c": nbytes}


def test_a_float16_downlink_halves_what_goes_down_and_aggregates_what_the_sites_trained_from(
    trusted: PublicKeys, keys: PrivateKeys
) -> None:
    coordinator, grid, _ = make(three_honest(keys), trusted, downlink="float16")
    start = base_weights()
    weights, tally, accepted = coordinator.train_round(ROUND, start)
    assert tally.bytes_out == 16  # 8 weights as float16
    assert [a.dtype for a in messages.arrays(grid.sent[0].content)] == [np.float16, np.float16]
    received = coordinator.sent(start)  # float32 again, rounded through float16
    assert [r.dtype for r in received] == [np.float32, np.float32] and received[0][1, 0] != start[0][1, 0]
    assert {a.received for a in accepted} == {updates.weights_digest(received)}
    for w, r in zip(weights, received, strict=True):  # the sites' base plus their averaged deltas
        assert w.dtype == np.float32
        np.testing.assert_allclose(w, r + np.float32(FEDAVG_SHIFT), atol=1e-6)


# --- refusals -------------------------------------------------------------------------------------

Bad = Callable[[Message, PrivateKeys], Message]


def _as_d(request: Message, keys: PrivateKeys, encoded: list[np.ndarray], **kwargs: Any) -> Message:
    """``encoded``, signed by site-d with its own key for 50 examples."""
    return reply(
        request,
        encoded,
        {"num-examples": 50, "holdout-examples": 0},
        signed(request, "site-d", keys["site-d"], encoded, 50, **kwargs),
    )


def _deltas(request: Message, value: float = 0.01, dtype: Any = np.float32) -> list[np.ndarray]:
    return [np.full(b.shape, value, dtype) for b in messages.arrays(request.content)]


def _nan(request: Message, keys: PrivateKeys) -> Message:
    return _as_d(request, keys, _deltas(request, np.nan))


def _inf_in_int8_scale(request: Message, keys: PrivateKeys) -> Message:
    scales = np.array([np.inf, 1.0], np.float32)
    return _as_d(request, keys, [*_deltas(request, 1, np.int8), scales], compression="int8")


def _other_shapes(request: Message, keys: PrivateKeys) -> Message:
    return _as_d(request, keys, [np.zeros((2, 3), np.float32), np.zeros(2, np.float32)])


def _too_few_arrays(request: Message, keys: PrivateKeys) -> Message:
    return _as_d(request, keys, _deltas(request)[:1])


def _other_version(request: Message, keys: PrivateKeys) -> Message:
    return _as_d(request, keys, _deltas(request), version=VERSION - 1)


def _signed_with_anothers_key(request: Message, keys: PrivateKeys) -> Message:
    encoded = _deltas(request)
    return reply(
        request,
        encoded,
        {"num-examples": 50, "holdout-examples": 0},
        signed(request, "site-d", keys["site-a"], encoded, 50),
    )


def _tampered_after_signing(request: Message, keys: PrivateKeys) -> Message:
    encoded = _deltas(request)
    update = signed(request, "site-d", keys["site-d"], encoded, 50)
    encoded[0] = encoded[0] * 100
    return reply(request, encoded, {"num-examples": 50, "holdout-examples": 0}, update)


def _more_examples_than_signed(request: Message, keys: PrivateKeys) -> Message:
    encoded = _deltas(request)
    return reply(
        request, encoded, {"num-examples": 5000}, signed(request, "site-d", keys["site-d"], encoded, 50)
    )


def _for_another_round(request: Message, keys: PrivateKeys) -> Message:
    encoded, config = _deltas(request), dict(messages.config(request.content))
    other = Message(
        RecordDict(
            {
                messages.ARRAYS: ArrayRecord(base_weights()),
                messages.CONFIG: ConfigRecord({**config, "server-round": ROUND - 1}),
            }
        ),
        dst_node_id=9,
        message_type=MessageType.TRAIN,
    )
    return reply(
        request,
        encoded,
        {"num-examples": 50, "holdout-examples": 0},
        signed(other, "site-d", keys["site-d"], encoded, 50),
    )


def _unknown_site(request: Message, keys: PrivateKeys) -> Message:
    encoded = _deltas(request)
    return reply(
        request,
        encoded,
        {"num-examples": 50, "holdout-examples": 0},
        signed(request, "stranger", keys["stranger"], encoded, 50),
    )


def _no_update_record(request: Message, keys: PrivateKeys) -> Message:
    return reply(request, _deltas(request), {"num-examples": 50, "holdout-examples": 0}, None)


def _no_arrays(request: Message, keys: PrivateKeys) -> Message:
    return reply(
        request,
        None,
        {"num-examples": 50, "holdout-examples": 0},
        signed(request, "site-d", keys["site-d"], _deltas(request), 50),
    )


def _examples_as_float(request: Message, keys: PrivateKeys) -> Message:
    encoded = _deltas(request)
    return reply(
        request, encoded, {"num-examples": 50.0}, signed(request, "site-d", keys["site-d"], encoded, 50)
    )


def _signature_as_text(request: Message, keys: PrivateKeys) -> Message:
    encoded = _deltas(request)
    update = signed(request, "site-d", keys["site-d"], encoded, 50)
    return reply(
        request,
        encoded,
        {"num-examples": 50, "holdout-examples": 0},
        {**update, "signature": update["signature"].hex()},
    )


def _other_compression(request: Message, keys: PrivateKeys) -> Message:
    return _as_d(request, keys, _deltas(request, 0.01, np.float16), compression="float16")


def _no_examples(request: Message, keys: PrivateKeys) -> Message:
    encoded = _deltas(request)
    return reply(request, encoded, {"num-examples": 0}, signed(request, "site-d", keys["site-d"], encoded, 0))


REFUSALS: list[tuple[str, Bad]] = [
    ("not_finite", _nan),
    ("not_finite", _inf_in_int8_scale),
    ("shape", _other_shapes),
    ("shape", _too_few_arrays),
    ("version", _other_version),
    ("signature", _signed_with_anothers_key),
    ("signature", _tampered_after_signing),
    ("signature", _more_examples_than_signed),
    ("signature", _for_another_round),
    ("unknown_site", _unknown_site),
    ("malformed", _no_update_record),
    ("malformed", _no_arrays),
    ("malformed", _examples_as_float),
    ("malformed", _signature_as_text),
    ("malformed", _other_compression),
    ("malformed", _no_examples),
]


def test_a_site_cannot_send_nan_through_encode_update() -> None:
    base = base_weights()
    with pytest.raises(UpdateError, check=lambda e: e.reason == "not_finite"):
        updates.encode_update(base, [b * np.float32(np.nan) for b in base], "none")


@pytest.mark.parametrize(("reason", "bad"), REFUSALS, ids=[f"{r}-{b.__name__[1:]}" for r, b in REFUSALS])
def test_check_reply_refuses_with_the_reason(
    trusted: PublicKeys, keys: PrivateKeys, reason: str, bad: Bad
) -> None:
    assert reason in updates.REFUSAL_REASONS
    request = train_request("int8" if bad is _inf_in_int8_scale else "none")
    compression = messages.text(messages.config(request.content), "compression")
    plan = RoundPlan(run=RUN, model_version=VERSION, compression=compression, train_config=TRAIN_CONFIG)
    with pytest.raises(UpdateError) as info:
        check_reply(bad(request, keys), base_weights(), plan, ROUND, trusted)
    assert info.value.reason == reason, str(info.value)


def test_check_reply_accepts_the_good_update_the_refusals_are_variations_of(
    trusted: PublicKeys, keys: PrivateKeys
) -> None:
    plan = RoundPlan(run=RUN, model_version=VERSION, compression="none", train_config=TRAIN_CONFIG)
    request = train_request()
    accepted = check_reply(_as_d(request, keys, _deltas(request)), base_weights(), plan, ROUND, trusted)
    assert (accepted.site, accepted.examples) == ("site-d", 50)
    np.testing.assert_allclose(accepted.weights[1], [0.51, -0.49], atol=1e-7)


@pytest.mark.parametrize(("reason", "bad"), REFUSALS, ids=[f"{r}-{b.__name__[1:]}" for r, b in REFUSALS])
def test_a_refused_update_is_counted_and_left_out(
    trusted: PublicKeys, keys: PrivateKeys, reason: str, bad: Bad
) -> None:
    nodes = {**three_honest(keys), 4: lambda request: bad(request, keys)}
    compression = "int8" if bad is _inf_in_int8_scale else "none"
    coordinator, _, _ = make(nodes, trusted, compression=compression)
    weights, tally, accepted = coordinator.train_round(ROUND, base_weights())
    assert tally.refused == {"node-4": reason}
    assert tally.accepted == {"site-a": 100, "site-b": 300, "site-c": 600}
    assert tally.counters() == {"sampled": 4, "accepted": 3, "failed": 0, "late": 0, f"refused_{reason}": 1}
    assert "node-4" not in tally.bytes_in and [a.site for a in accepted] == ["site-a", "site-b", "site-c"]
    assert_shifted(weights, FEDAVG_SHIFT, atol=2e-3 if compression == "int8" else 1e-6)


def test_two_nodes_signing_as_one_site_do_not_break_the_round(trusted: PublicKeys, keys: PrivateKeys) -> None:
    """A site's key copied to a second SuperNode: its second update is refused, the round goes on."""
    nodes = {**three_honest(keys), 4: honest("site-a", keys["site-a"], 900, 5.0)}
    coordinator, _, _ = make(nodes, trusted)
    weights, tally, _ = coordinator.train_round(ROUND, base_weights())
    assert tally.accepted == {"site-a": 100, "site-b": 300, "site-c": 600}
    assert tally.refused == {"node-4": "signature"}
    assert len(tally.sampled) == len(set(tally.sampled)) == 4
    assert_shifted(weights, FEDAVG_SHIFT)
    assert coordinator.sites == {1: "site-a", 2: "site-b", 3: "site-c"}
    _, tally2, _ = coordinator.train_round(ROUND + 1, base_weights())  # and the next round too
    assert tally2.refused == {"node-4": "signature"} and len(tally2.accepted) == 3


def test_a_site_that_moved_to_a_new_node_keeps_one_name(trusted: PublicKeys, keys: PrivateKeys) -> None:
    """A restarted SuperNode answers from a new node id; the old id, back again, is not site-a twice."""
    coordinator, grid, _ = make(three_honest(keys), trusted)
    coordinator.train_round(ROUND, base_weights())
    grid.nodes = {**three_honest(keys), 4: grid.nodes[1]}
    del grid.nodes[1]
    _, moved, _ = coordinator.train_round(ROUND + 1, base_weights())
    assert moved.accepted == {"site-a": 100, "site-b": 300, "site-c": 600}
    assert coordinator.sites == {2: "site-b", 3: "site-c", 4: "site-a"}
    grid.nodes[1] = grid.nodes[4]  # the old node id answers as site-a too
    _, both, _ = coordinator.train_round(ROUND + 2, base_weights())
    assert both.sampled == ["node-1", "site-b", "site-c", "site-a"]
    assert both.refused == {"node-1": "signature"} and len(both.accepted) == 3


# --- late, failed and short rounds ----------------------------------------------------------------


def gone(request: Message) -> Message:
    """The error reply the SuperLink makes for a node that went away: it comes from the SuperLink."""
    answer = Message(Error(code=3, reason="the node is offline"), reply_to=request)
    answer.metadata.__dict__["_src_node_id"] = 0
    return answer


def test_a_silent_site_is_late_and_an_error_reply_failed(trusted: PublicKeys, keys: PrivateKeys) -> None:
    nodes: dict[int, Answer] = {
        **three_honest(keys),
        4: lambda request: None,
        5: lambda request: Message(Error(code=1, reason="ModelError: no checkpoint"), reply_to=request),
        6: lambda request: Message(Error(code=7), reply_to=request),
        7: gone,
    }
    coordinator, _, _ = make(nodes, trusted, round_rule=rule(min_fraction=0.4))
    weights, tally, _ = coordinator.train_round(ROUND, base_weights())
    assert tally.late == ["node-4", "node-7"]  # Flower's "message unavailable": no answer in time
    assert tally.failed == {"node-5": "ModelError: no checkpoint", "node-6": "error code 7"}
    assert tally.state(coordinator.rule, 7) == "completed"  # quorum max(2, ceil(0.4 * 7)) = 3
    assert_shifted(weights, FEDAVG_SHIFT)


def test_a_round_short_of_quorum_leaves_the_weights_as_they_were(
    trusted: PublicKeys, keys: PrivateKeys
) -> None:
    nodes: dict[int, Answer] = {
        1: honest("site-a", keys["site-a"], 100, 0.1),
        2: honest("site-b", keys["site-b"], 300, 0.2),
        3: lambda request: None,
        4: lambda request: Message(Error(code=1, reason="out of memory"), reply_to=request),
        5: lambda request: _nan(request, keys),
    }
    coordinator, _, _ = make(nodes, trusted, round_rule=rule(min_sites=2, min_fraction=0.6))
    start = base_weights()
    weights, tally, accepted = coordinator.train_round(ROUND, start)
    assert len(accepted) == 2 and tally.state(coordinator.rule, 5) == "short"  # quorum ceil(0.6 * 5) = 3
    assert weights is start
    for w, b in zip(weights, base_weights(), strict=True):
        np.testing.assert_array_equal(w, b)
    assert tally.counters() == {
        "sampled": 5,
        "accepted": 2,
        "failed": 1,
        "late": 1,
        "refused_not_finite": 1,
    }


def test_min_sites_can_make_a_round_short_when_most_sites_answered(
    trusted: PublicKeys, keys: PrivateKeys
) -> None:
    coordinator, _, _ = make(three_honest(keys), trusted, round_rule=rule(min_sites=4, min_fraction=0.1))
    start = base_weights()
    weights, tally, _ = coordinator.train_round(ROUND, start)
    assert len(tally.accepted) == 3 and tally.state(coordinator.rule, 3) == "short"
    assert weights is start


# --- waiting for sites to connect -----------------------------------------------------------------


def test_connected_waits_for_min_sites_and_no_longer(trusted: PublicKeys, keys: PrivateKeys) -> None:
    coordinator, _, clock = make(
        three_honest(keys), trusted, round_rule=rule(min_sites=3), joins={1: 0.0, 2: 0.0, 3: 102.5}
    )
    assert coordinator.connected(deadline=130.0) == [1, 2, 3]
    assert clock.now == 103.0  # three polls of POLL_SECONDS: the third site connected at 102.5
    assert POLL_SECONDS == 1.0


def test_connected_gives_up_at_the_deadline(trusted: PublicKeys, keys: PrivateKeys) -> None:
    coordinator, _, clock = make(three_honest(keys), trusted, round_rule=rule(min_sites=3), joins={3: 500.0})
    assert coordinator.connected(deadline=110.0) == [1, 2]
    assert clock.now == 109.0  # the last poll that ends before the deadline


def test_a_round_waits_within_its_timeout_and_sends_the_rest_of_it(
    trusted: PublicKeys, keys: PrivateKeys
) -> None:
    coordinator, grid, clock = make(
        three_honest(keys), trusted, round_rule=rule(min_sites=3, timeout=30.0), joins={3: 110.0}
    )
    weights, tally, _ = coordinator.train_round(ROUND, base_weights())
    assert clock.now == 110.0 and tally.seconds == 10.0
    assert grid.timeouts == [20.0] and {m.metadata.ttl for m in grid.sent} == {20.0}
    assert len(tally.accepted) == 3
    assert_shifted(weights, FEDAVG_SHIFT)


def test_a_round_with_no_site_is_short_and_sends_nothing(trusted: PublicKeys) -> None:
    coordinator, grid, clock = make({}, trusted, round_rule=rule(min_sites=1, timeout=5.0))
    start = base_weights()
    weights, tally, _ = coordinator.train_round(ROUND, start)
    assert weights is start and tally.sampled == [] and tally.state(coordinator.rule, 0) == "short"
    assert grid.sent == [] and clock.now == 104.0


# --- robust strategies ----------------------------------------------------------------------------


def _with_outlier(keys: PrivateKeys, honest_sites: int) -> dict[int, Answer]:
    """``honest_sites`` sites moving the weights by 0.01..0.05, and site-e by 1000 (finite)."""
    nodes = {i + 1: honest(SITES[i], keys[SITES[i]], 100, 0.01 * (i + 1)) for i in range(honest_sites)}
    nodes[9] = honest("site-e", keys["site-e"], 100, 1000.0)
    return nodes


@pytest.mark.parametrize(
    ("strategy", "honest_sites", "expected"),
    [
        (FedMedian(), 2, 0.02),  # median of 0.01, 0.02, 1000
        (FedTrimmedAvg(beta=0.2), 4, 0.03),  # mean of 0.02, 0.03, 0.04 (0.01 and 1000 trimmed)
    ],
)
def test_robust_strategies_shrug_off_an_outlier_that_fedavg_follows(
    trusted: PublicKeys, keys: PrivateKeys, strategy: Strategy, honest_sites: int, expected: float
) -> None:
    nodes = _with_outlier(keys, honest_sites)
    robust, _, _ = make(nodes, trusted, strategy)
    weights, tally, _ = robust.train_round(ROUND, base_weights())
    assert len(tally.accepted) == honest_sites + 1
    assert_shifted(weights, expected, atol=1e-5)
    averaged, _, _ = make(nodes, trusted, FedAvg())
    mean, _, _ = averaged.train_round(ROUND, base_weights())
    outlier_pull = 1000.0 / (honest_sites + 1)  # 333 or 200
    assert_shifted(
        mean, outlier_pull + sum(0.01 * (i + 1) for i in range(honest_sites)) / (honest_sites + 1), 1e-3
    )


# --- evaluation -----------------------------------------------------------------------------------


def scores(
    site: str, examples: int, exits: tuple[float, ...], baseline: tuple[float, ...] = (0.5, 0.5, 0.5)
) -> Answer:
    def answer(request: Message) -> Message:
        numbers: dict[str, Any] = {"num-examples": examples, **messages.exit_metrics("accuracy", list(exits))}
        numbers |= messages.exit_metrics("baseline", list(baseline))
        return messages.reply(
            request, {messages.METRICS: MetricRecord(numbers), messages.UPDATE: ConfigRecord({"site": site})}
        )

    return answer


def trained(keys: PrivateKeys, trusted: PublicKeys) -> tuple[Coordinator, Any]:
    """A coordinator after a round with sites a, b, c (nodes 1-3): it knows who they are."""
    coordinator, grid, _ = make(three_honest(keys), trusted)
    coordinator.train_round(ROUND, base_weights())
    return coordinator, grid


def test_evaluate_pools_both_models_over_exits_weighted_by_examples(
    trusted: PublicKeys, keys: PrivateKeys
) -> None:
    coordinator, grid = trained(keys, trusted)
    grid.nodes = {
        1: scores("site-a", 100, (0.5, 0.6, 0.7), (0.4, 0.4, 0.4)),  # pooled 0.6, baseline 0.4
        2: scores("site-b", 300, (0.8, 0.8, 0.9), (0.7, 0.7, 0.7)),  # pooled 0.8333, baseline 0.7
        3: lambda request: Message(Error(code=1, reason="ModelError: no checkpoint"), reply_to=request),
    }
    result = coordinator.evaluate(base_weights(), base_weights())
    assert result.examples == 400
    assert result.accuracy == pytest.approx((100 * 0.6 + 300 * 2.5 / 3) / 400)  # 0.775
    assert result.baseline == pytest.approx((100 * 0.4 + 300 * 0.7) / 400)  # 0.625
    assert result.by_site == {"site-a": 0.7, "site-b": 0.9}  # the last exit: the whole model
    sent = grid.sent[-1]
    assert sent.metadata.message_type == MessageType.EVALUATE
    assert set(sent.content.array_records) == {messages.ARRAYS, messages.BASELINE}


def test_evaluate_asks_only_sites_whose_updates_were_accepted(trusted: PublicKeys, keys: PrivateKeys) -> None:
    """An evaluation reply is not signed: a node that never proved who it is does not move the gate."""
    coordinator, grid = trained(keys, trusted)
    grid.nodes = {
        1: scores("site-a", 10, (1.0, 1.0, 1.0)),
        2: lambda r: None,
        9: scores("mallory", 10**6, (0.0, 0.0, 0.0)),
    }
    result = coordinator.evaluate(base_weights(), base_weights())
    assert result.by_site == {"site-a": 1.0} and result.examples == 10 and result.accuracy == 1.0
    assert {m.metadata.dst_node_id for m in grid.sent[-2:]} <= {1, 2}
    grid.nodes = {}
    empty = coordinator.evaluate(base_weights(), base_weights())
    assert (empty.accuracy, empty.baseline, empty.examples, empty.by_site) == (0.0, 0.0, 0, {})


def test_evaluate_skips_accuracies_that_cannot_be_accuracies(trusted: PublicKeys, keys: PrivateKeys) -> None:
    """Numbers that would skew the gate are left out."""
    coordinator, grid = trained(keys, trusted)
    grid.nodes = {
        1: scores("site-a", 100, (0.5, 0.6, 0.7)),
        2: scores("site-b", 10_000, (1.5, 0.5, -1.0)),  # pooled 0.333, but no exit can score 1.5
        3: scores("site-c", 10_000, (float("nan"), 0.5, 0.5)),
    }
    result = coordinator.evaluate(base_weights(), base_weights())
    assert (result.examples, result.by_site) == (100, {"site-a": 0.7})
    assert result.accuracy == pytest.approx(0.6)
    grid.nodes = {1: scores("site-a", -500, (0.0, 0.0, 0.0))}  # would raise the pooled mean
    assert coordinator.evaluate(base_weights(), base_weights()).examples == 0
