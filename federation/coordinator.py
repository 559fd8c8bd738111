"""Rounds over a Flower Grid that never wait for a dead or slow site.

A round asks every site connected at its start (waiting up to its deadline for at least
``min_sites``), gives them until the deadline (``round_timeout`` after the start) and works
with what came back: each reply is checked (:func:`check_reply`: signed by the site it names,
for this run, round and model version, in the round's compression, the right shapes, finite)
and refused with a reason otherwise; sites that did not answer in time are *late*, their
messages expire with the round (their time to live is the round's) so a site that comes back
picks up the next round's weights, not a stale round's. With enough accepted updates
(:func:`~edgecascade.federation.rounds.quorum`) the Flower strategy aggregates them, else the
weights stay as they were: either way the next round starts on time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from edgecascade.device_sdk.errors import UpdateError
from edgecascade.federation import messages, updates
from edgecascade.federation.rounds import RoundRule, RoundTally, quorum

logger = logging.getLogger(__name__)

POLL_SECONDS = 1.0
NO_ANSWER = (ErrorCode.MESSAGE_UNAVAILABLE, ErrorCode.REPLY_MESSAGE_UNAVAILABLE, ErrorCode.NODE_UNAVAILABLE)
"""Flower's errors for a message nobody answered in time: late, not failed."""


@dataclass(frozen=True)
class RoundPlan:
    """What every round of a run sends the sites, besides the weights."""

    run: int
    model_version: int
    compression: str
    train_config: Mapping[str, Any]  # local-epochs, batch-size, learning-rate, proximal-mu
    downlink: str = "float32"  # how the round's weights travel to the sites (updates.DOWNLINKS)


@dataclass(frozen=True)
class Accepted:
    """One site's checked update."""

    site: str
    examples: int
    weights: list[np.ndarray]
    metrics: dict[str, float]
    received: str  # digest of the weights the site says it trained from
    before: float  # the round's incoming weights on the site's held-out data, pooled over exits
    holdout: int  # how many held-out examples that was measured on


@dataclass
class Evaluation:
    """Two models measured by the same sites on their held-out data."""

    accuracy: float = 0.0  # the evaluated weights
    baseline: float = 0.0  # the weights they are compared with (the served model)
    examples: int = 0
    by_site: dict[str, float] = field(default_factory=dict)  # the evaluated weights' last exit, per site


def check_reply(
    reply: Message, base: Sequence[np.ndarray], plan: RoundPlan, server_round: int, keys: Mapping[str, Any]
) -> Accepted:
    """The update in ``reply`` decoded onto ``base``; :class:`UpdateError` (with its reason) when refused."""
    content = reply.content
    update, numbers = messages.config(content, messages.UPDATE), messages.metrics(content)
    site, version = messages.text(update, "site"), messages.integer(update, "model-version")
    compression, signature = messages.text(update, "compression"), messages.blob(update, "signature")
    examples = messages.integer(numbers, "num-examples")
    encoded = messages.arrays(content)
    updates.check_version(plan.model_version, version)
    if compression != plan.compression:
        raise UpdateError("malformed", f"compressed as {compression}, the round asked for {plan.compression}")
    if examples < 1:
        raise UpdateError("malformed", f"an update trained on {examples} examples")
    digest = updates.update_digest(
        site=site,
        run=plan.run,
        server_round=server_round,
        model_version=version,
        compression=compression,
        num_examples=examples,
        arrays=encoded,
    )
    updates.verify_update(keys, site, digest, signature)
    weights = updates.decode_update(base, encoded, compression)
    holdout = messages.integer(numbers, "holdout-examples")
    before = messages.pooled(numbers, "accuracy-before") if holdout else 0.0
    if holdout < 0:
        raise UpdateError("malformed", f"{holdout} held-out examples")
    kept = {k: float(v) for k, v in numbers.items() if isinstance(v, int | float)}
    return Accepted(site, examples, weights, kept, messages.text(update, "received-digest"), before, holdout)


class Coordinator:
    """Runs training and evaluation rounds for one run (see the module docstring)."""

    def __init__(
        self,
        grid: Grid,
        strategy: Strategy,
        rule: RoundRule,
        plan: RoundPlan,
        keys: Mapping[str, Any],
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.grid, self.strategy, self.rule, self.plan, self.keys = grid, strategy, rule, plan, keys
        self.clock, self.sleep = clock, sleep
        self.sites: dict[int, str] = {}  # node id -> the site name its signed replies carry

    def name(self, node_id: int) -> str:
        return self.sites.get(node_id, f"node-{node_id}")

    def connected(self, deadline: float) -> list[int]:
        """The sites connected now, after waiting (at most until ``deadline``) for ``min_sites`` of them."""
        nodes = sorted(self.grid.get_node_ids())
        while len(nodes) < self.rule.min_sites and self.clock() + POLL_SECONDS < deadline:
            self.sleep(POLL_SECONDS)
            nodes = sorted(self.grid.get_node_ids())
        return nodes

    def _send(
        self, nodes: Iterable[int], content: Callable[[], RecordDict], kind: str, deadline: float
    ) -> list[tuple[int, Message]]:
        """Send to ``nodes`` and wait until ``deadline``: ``(node, reply)`` for the replies in time.

        A reply is matched to its node by the message it answers: an error reply the SuperLink
        makes for a node that went away comes from the SuperLink, not from the node.
        """
        ttl = max(deadline - self.clock(), 1.0)
        messages = [Message(content(), dst_node_id=n, message_type=kind, ttl=ttl) for n in nodes]
        if not messages:
            return []
        replies = list(self.grid.send_and_receive(messages, timeout=max(deadline - self.clock(), 0.0)))
        sent = {m.metadata.message_id: m.metadata.dst_node_id for m in messages}
        return [(sent.get(r.metadata.reply_to_message_id, r.metadata.src_node_id), r) for r in replies]

    def _content(self, weights: Sequence[np.ndarray], config: Mapping[str, Any]) -> Callable[[], RecordDict]:
        return lambda: RecordDict(
            {messages.ARRAYS: ArrayRecord(list(weights)), messages.CONFIG: ConfigRecord(dict(config))}
        )

    def sent(self, weights: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The weights a site receives and trains from in a round that starts from ``weights``."""
        return updates.received_weights(updates.downlink_arrays(weights, self.plan.downlink))

    def train_round(
        self, server_round: int, weights: list[np.ndarray]
    ) -> tuple[list[np.ndarray], RoundTally, list[Accepted]]:
        """One round: the new weights (the same if the round fell short), its tally, what was accepted."""
        start = self.clock()
        deadline = start + self.rule.timeout
        tally = RoundTally(server_round=server_round, sampled=[], started=time.time())
        nodes = self.connected(deadline)
        config = {
            **self.plan.train_config,
            "server-round": server_round,
            "model-version": self.plan.model_version,
            "compression": self.plan.compression,
        }
        tally.sampled = [self.name(n) for n in nodes]
        travelling = updates.downlink_arrays(weights, self.plan.downlink)
        base = updates.received_weights(travelling)
        tally.bytes_out = updates.payload_bytes(travelling)
        replies = self._send(nodes, self._content(travelling, config), MessageType.TRAIN, deadline)
        accepted: list[Accepted] = []
        for node, reply in replies:
            if reply.has_error() and reply.error.code in NO_ANSWER:
                logger.warning("round %d: no result from %s in time (late)", server_round, self.name(node))
                continue
            if reply.has_error():
                error = reply.error.reason or f"error code {reply.error.code}"
                tally.fail(self.name(node), error)
                logger.warning("round %d: %s failed: %s", server_round, self.name(node), error)
                continue
            try:
                update = check_reply(reply, base, self.plan, server_round, self.keys)
                if update.site != self.name(node) and update.site in tally.sampled:
                    raise UpdateError("signature", f"another node answers as {update.site!r} this round")
            except UpdateError as exc:
                tally.refuse(self.name(node), exc.reason)
                logger.warning("round %d: refused the update of %s: %s", server_round, self.name(node), exc)
                continue
            self._rename(tally, node, update.site)
            tally.accept(
                update.site,
                update.examples,
                updates.payload_bytes(messages.arrays(reply.content)),
            )
            accepted.append(update)
        connected = len(nodes)
        if tally.state(self.rule, connected) == "completed":
            weights = self._aggregate(server_round, accepted)
        else:
            logger.warning(
                "round %d short: %d accepted updates of %d sites, quorum %d; the model stays as it was",
                server_round,
                len(accepted),
                connected,
                quorum(self.rule, connected),
            )
        tally.seconds = self.clock() - start
        return weights, tally, accepted

    def _rename(self, tally: RoundTally, node: int, site: str) -> None:
        """Learn a node's site name from its first signed reply; the sampled list shows names."""
        old = self.name(node)
        self.sites = {n: s for n, s in self.sites.items() if s != site}  # a site answers from one node
        self.sites[node] = site
        tally.sampled = [site if s == old else s for s in tally.sampled]

    def _aggregate(self, server_round: int, accepted: list[Accepted]) -> list[np.ndarray]:
        replies = [
            Message(
                RecordDict(
                    {
                        messages.ARRAYS: ArrayRecord(a.weights),
                        messages.METRICS: MetricRecord({"num-examples": a.examples}),
                    }
                ),
                dst_node_id=0,
                message_type=MessageType.TRAIN,
            )
            for a in accepted
        ]
        arrays, _ = self.strategy.aggregate_train(server_round, replies)
        if arrays is None:
            raise UpdateError("malformed", "the strategy aggregated nothing")
        return [np.asarray(a) for a in arrays.to_numpy_ndarrays()]

    def evaluate(self, weights: list[np.ndarray], baseline: list[np.ndarray]) -> Evaluation:
        """Sites' accuracies of ``weights`` and ``baseline`` on their held-out data (until the round timeout).

        Only sites whose updates were accepted in this run count: they proved who they are
        (an evaluation reply carries no signature), and both models are measured by the
        same sites on the same examples, so the difference is the models'.
        """
        deadline = self.clock() + self.rule.timeout
        trusted = [n for n in self.connected(deadline) if n in self.sites]

        def content() -> RecordDict:
            return RecordDict(
                {messages.ARRAYS: ArrayRecord(list(weights)), messages.BASELINE: ArrayRecord(list(baseline))}
            )

        result = Evaluation()
        correct = correct_baseline = 0.0
        for node, reply in self._send(trusted, content, MessageType.EVALUATE, deadline):
            site = self.name(node)
            try:
                if reply.has_error():
                    raise UpdateError("malformed", reply.error.reason or f"error code {reply.error.code}")
                numbers = messages.metrics(reply.content)
                n = messages.integer(numbers, "num-examples")
                pooled, pooled_baseline = (
                    messages.pooled(numbers, "accuracy"),
                    messages.pooled(numbers, "baseline"),
                )
                if n < 0:
                    raise UpdateError("malformed", f"{n} held-out examples")
                result.by_site[site] = messages.number(numbers, "accuracy")
            except UpdateError as exc:
                logger.warning("evaluation: no accuracies from %s: %s", site, exc)
                continue
            correct += pooled * n
            correct_baseline += pooled_baseline * n
            result.examples += n
        if result.examples:
            result.accuracy, result.baseline = correct / result.examples, correct_baseline / result.examples
        return result
