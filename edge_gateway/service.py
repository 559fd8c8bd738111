"""The gateway's request handling, apart from MQTT: open, run partition 2, decide, forward.

:meth:`GatewayService.decide` handles a micro-batch of requests with one interpreter call
per model version (the tier core, :func:`~edgecascade.device_sdk.core.tier.decide`) and
returns, per request, either a finished reply or a :class:`Forward` job;
:meth:`GatewayService.forward` sends a job to the cloud and turns any failure into the
gateway's own answer flagged ``degraded``. :meth:`handle` chains both for one request, which
is what the in-memory transport uses in tests.

Each request's envelope is parsed once (:mod:`.messages`); with a
:class:`~.crypto.GatewayCrypto` it is decrypted (and checked against the device's replay
window, a micro-batch's numbers together) before anything else reads it, and every reply
to a decrypted request is sealed under the key id that request used. A request that fails
those checks is counted as ``rejected_<reason>`` and answered, if at all, with a plain
error that carries nothing secret.

The model is hot-swappable (:meth:`GatewayService.swap`): each request is served by the
model of the version its envelope names, the current one or the one it replaced while
that is in its grace period, so devices that have not updated yet are still answered, and
requests in flight finish where they started.

With an ``outbox``, every request the gateway answers ``degraded`` (the cloud unreachable)
is kept there as a hard example, its cut-1 features exactly as the device sent them (so
its content id equals the device's own record of it, and the cloud stores it once).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass

import numpy as np

from edgecascade.device_sdk import wire
from edgecascade.device_sdk.cache import NeuralCache
from edgecascade.device_sdk.core import serving, tier
from edgecascade.device_sdk.core.policy import ExitPolicy
from edgecascade.device_sdk.core.tier import CacheFactory, Decision, ServesModels, TierModel, TierModels
from edgecascade.device_sdk.counters import Counters
from edgecascade.device_sdk.errors import CryptoError, EdgeCascadeError, ModelVersionError, WireError
from edgecascade.device_sdk.learning.outbox import Outbox
from edgecascade.device_sdk.learning.records import HardExample
from edgecascade.device_sdk.logs import LogLimiter
from edgecascade.device_sdk.model.bundle import Bundle
from edgecascade.device_sdk.model.overlay import OverlayFile
from edgecascade.device_sdk.wire import codec
from edgecascade.edge_gateway.cloud_link import CloudLink
from edgecascade.edge_gateway.crypto import GatewayCrypto
from edgecascade.edge_gateway.messages import Message, Opened, open_messages, read, refusal, seal_reply

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Forward:
    """A request the gateway could not answer confidently: to be sent to the cloud."""

    request: Opened  # the device's request: header to answer, key id to seal with, cut-1 body
    envelope: bytes  # INFER_REQUEST with cut-2 features, for the cloud
    decision: Decision  # the gateway's own answer if the cloud fails, and the cache key to learn
    model: TierModel  # the version that decided: its cache learns the cloud's answer


class GatewayService(ServesModels):
    """Middle tier of the cascade; thread-safe (the runner serialises interpreter calls)."""

    def __init__(
        self,
        bundle: Bundle,
        cloud: CloudLink | None,
        *,
        policy: ExitPolicy | None = None,
        cache: NeuralCache | None = None,
        crypto: GatewayCrypto | None = None,
        grace: float = 300.0,
        cache_factory: CacheFactory | None = None,
        outbox: Outbox | None = None,
        overlay: OverlayFile | None = None,
    ) -> None:
        self.crypto = crypto
        self.cloud = cloud
        self.outbox = outbox  # where degraded answers are kept as hard examples (None: nowhere)
        self._policy = policy
        self.counters = Counters()  # events, and the decode and inference stages' latencies
        self.log_limiter = LogLimiter(logger)  # refusals: outside input can repeat them at will
        self._overlay = overlay  # the site's signed exit thresholds ([model] overlay), read per version
        self.models = TierModels(
            "gateway",
            bundle,
            grace=grace,
            cache=cache,
            cache_factory=cache_factory,
            overlay=overlay.load(bundle.manifest, self.counters) if overlay is not None else None,
        )

    def swap(self, bundle: Bundle) -> None:
        """Serve ``bundle`` for new requests; the replaced version stays servable for the grace period.

        The site overlay is read again and applies only if it was made for the new version.
        """
        overlay = self._overlay.load(bundle.manifest, self.counters) if self._overlay is not None else None
        self.models.swap(bundle, overlay)
        self.counters.add("model_swaps")

    # ------------------------------------------------------------------------- requests
    def decide(self, messages: list[Message]) -> list[bytes | Forward | None]:
        """Per request: a reply, a Forward job for the cloud, or None (nobody to answer).

        Requests are independent: whatever one request raises while it is read, checked or
        answered (a typed error or a bug) gives that request an error reply, a counter and
        a log line, and never costs the other requests of the batch their answers.
        """
        out: list[bytes | Forward | None] = [None] * len(messages)
        groups: dict[int, tuple[TierModel, list[tuple[int, Opened, np.ndarray]]]] = {}
        started = time.perf_counter()  # each request's decode waits for the batch's replay check
        envelopes: dict[int, wire.Envelope] = {}
        for i, message in enumerate(messages):
            self.counters.add("requests")
            self.counters.add("bytes_in", len(message.payload))
            try:
                envelopes[i] = read(message)
            except Exception as exc:  # this request fails alone
                out[i] = self._reject(message, None, None, exc)
        try:
            opened = open_messages(self.crypto, list(envelopes.values()))  # windows judged together
        except Exception as exc:  # a bug there: each request of the batch is answered with it
            opened = [exc] * len(envelopes)
        for (i, envelope), result in zip(envelopes.items(), opened, strict=True):
            message = messages[i]
            request: Opened | None = None
            try:
                if isinstance(result, Exception):
                    raise result
                request = result
                model = self.models.get(request.header.model_version)
                if model is None:
                    raise serving.unknown_version(request.header.model_version, self.models.versions())
                features = serving.request_features(request.envelope, model)
                groups.setdefault(model.version, (model, []))[1].append((i, request, features))
                self.counters.observe("decode", time.perf_counter() - started)
            except Exception as exc:  # this request fails alone, with a typed error or a bug
                out[i] = self._reject(message, envelope, request, exc)
        for model, batch in groups.values():  # one interpreter call per model version in the batch
            self.counters.add(f"requests_v{model.version}", len(batch))
            degraded: list[tuple[Opened, wire.Result]] = []
            started = time.perf_counter()
            decisions = self._decide_batch(model, batch)
            self.counters.observe("inference", time.perf_counter() - started, len(batch))  # each waited
            for (i, request, _), decision in zip(batch, decisions, strict=True):
                try:
                    if isinstance(decision, Exception):
                        raise decision
                    if decision.answer is None and self.cloud is not None:
                        out[i] = self._forward_job(model, request, decision)
                        continue
                    answer = decision.answer or decision.fallback()
                    if answer.degraded:
                        degraded.append((request, answer))
                    out[i] = self._reply(request, answer)
                except Exception as exc:  # this request fails alone
                    out[i] = self._reject(messages[i], request.envelope, request, exc)
            self._keep_degraded(model, degraded)
        return out

    def _decide_batch(
        self, model: TierModel, batch: list[tuple[int, Opened, np.ndarray]]
    ) -> list[Decision | Exception]:
        """The tier core's decisions for one model version's requests, in one interpreter call.

        Should that call fail, each request is decided on its own, so a failure costs only
        the requests that cause it (their entry is the exception, answered with an error).
        """
        try:
            return list(tier.decide(model, np.stack([f for _, _, f in batch]), self._policy))
        except Exception as exc:
            if len(batch) == 1:
                return [exc]
            self.counters.add("batch_failed")
            logger.error(
                "deciding a batch of %d requests failed; deciding each alone", len(batch), exc_info=exc
            )
        decisions: list[Decision | Exception] = []
        for _, _, features in batch:
            try:
                decisions.extend(tier.decide(model, features[None], self._policy))
            except Exception as exc:
                decisions.append(exc)
        return decisions

    def forward(self, job: Forward) -> bytes | None:
        """Ask the cloud; on failure answer with the gateway's exit, flagged degraded."""
        assert self.cloud is not None
        self.counters.add("forwarded")
        self.counters.add("bytes_to_cloud", len(job.envelope))
        try:
            reply = wire.envelope_from_bytes(self.cloud.infer(job.envelope))
            if (
                reply.header.request_id != job.request.header.request_id
                or reply.header.msg_type != wire.MessageType.RESULT
            ):
                raise WireError("cloud reply does not answer the request")
            answer = dataclasses.replace(wire.decode_result(reply.body), upstream_bytes=len(job.envelope))
            if len(answer.probabilities) != len(job.model.manifest.classes):
                raise WireError(
                    f"cloud answered over {len(answer.probabilities)} classes; "
                    f"model v{job.model.version} has {len(job.model.manifest.classes)}"
                )
            self._learn(job, answer)
        except EdgeCascadeError as exc:
            self.counters.add(f"cloud_failed_{type(exc).__name__}")
            self.log_limiter.log(
                logging.WARNING,
                ("cloud_failed", type(exc).__name__),
                "cloud could not answer request %s: %s",
                job.request.header.request_id.hex(),
                exc,
            )
            return self._fall_back(job, upstream_bytes=len(job.envelope))
        return self._reply(job.request, answer)

    def shed(self, job: Forward) -> bytes | None:
        """Answer without asking the cloud (too many requests wait for it): the gateway's exit, degraded."""
        self.counters.add("forward_shed")
        return self._fall_back(job, upstream_bytes=0)

    def handle(self, payload: bytes) -> bytes:
        """One request, start to finish (used by in-process transports)."""
        (decision,) = self.decide([Message(payload)])
        reply = self.forward(decision) if isinstance(decision, Forward) else decision
        if reply is None:
            raise WireError("request cannot be read or answered")
        return reply

    # ------------------------------------------------------------------------ internals
    def _fall_back(self, job: Forward, upstream_bytes: int) -> bytes | None:
        """The gateway's own answer to a forwarded request, flagged degraded and kept as a hard example."""
        answer = dataclasses.replace(job.decision.fallback(), upstream_bytes=upstream_bytes)
        self._keep_degraded(job.model, [(job.request, answer)])
        return self._reply(job.request, answer)

    def _learn(self, job: Forward, answer: wire.Result) -> None:
        """Let the cache learn the cloud's answer; a failure costs the cache an entry, never the answer."""
        try:
            tier.learn(job.model, job.decision, answer)
        except Exception as exc:
            self.counters.add("cache_learn_failed")
            logger.error("the cache could not learn the cloud's answer", exc_info=exc)

    def _forward_job(self, model: TierModel, request: Opened, decision: Decision) -> Forward:
        """The cloud's request for an input neither the exit nor the cache answered: the device's
        (plain) header, cut-2 features."""
        assert decision.features is not None
        header = request.header
        ask = wire.Header(
            wire.MessageType.INFER_REQUEST,
            header.device_id,
            header.model_version,
            header.seq,
            header.request_id,
        )
        body = codec.encode_features(decision.features, model.spec.encoding)
        return Forward(request, wire.envelope_to_bytes(wire.Envelope(ask, body)), decision, model)

    def _reply(self, request: Opened, answer: wire.Result) -> bytes | None:
        """The answer as a reply envelope, sealed for the device; None if it cannot be sealed."""
        self.counters.add(tier.answered(answer))
        return self._seal(serving.result_reply(request.header, answer), request.key_id)

    def _seal(self, reply: wire.Envelope, key_id: int | None) -> bytes | None:
        """A reply's bytes, sealed under the request's key id; None if that key was retired meanwhile."""
        try:
            return seal_reply(self.crypto, reply, key_id)
        except EdgeCascadeError as exc:  # no reply, never a plain one
            self.counters.add("reply_seal_failed")
            logger.warning("cannot encrypt a reply: %s", exc)
            return None

    def _keep_degraded(self, model: TierModel, answered: list[tuple[Opened, wire.Result]]) -> None:
        """Keep degraded answers' cut-1 features as hard examples (one fsync), before replying.

        A failure is logged and counted, never raised: the answers still go out.
        """
        if self.outbox is None or not answered:
            return
        now = time.time()
        try:
            examples = [
                HardExample.answered(
                    device_id=request.header.device_id,
                    model_version=request.header.model_version,
                    encoding=model.cut_encoding,
                    features=request.envelope.body,
                    reasons=("degraded",),
                    label=answer.label,
                    probabilities=answer.probabilities,
                    tier=answer.tier.label,
                    created_at=now,
                )
                for request, answer in answered
            ]
            self.outbox.keep(examples, self.counters)
        except Exception as exc:  # the outbox counts its own storage failures; this is anything else
            self.counters.add("hard_examples_not_stored", len(answered))
            logger.error("cannot keep %d degraded answer(s) as hard examples", len(answered), exc_info=exc)

    def _reject(
        self, message: Message, envelope: wire.Envelope | None, request: Opened | None, exc: Exception
    ) -> bytes | None:
        """Error reply for a request that cannot be served; None if it cannot be addressed.

        Sealed when the request authenticated (so the device believes it: an unknown model
        version makes it ask again with its previous model), plain otherwise. An exception
        that is not an :class:`EdgeCascadeError` is a bug: counted ``rejected_internal``,
        logged with its traceback, answered ``INTERNAL`` without its text.
        """
        code = serving.error_code(exc)
        self.counters.add(f"rejected_{exc.reason if isinstance(exc, CryptoError) else code.name.lower()}")
        device = message.device_id or (envelope.header.device_id if envelope is not None else "?")
        if not isinstance(exc, EdgeCascadeError):
            self.log_limiter.log(
                logging.ERROR,
                ("internal", device),
                "request from %s failed unexpectedly",
                device,
                exc_info=exc,
            )
        else:  # a device on a version this gateway does not serve yet is normal during a rollout
            level = logging.INFO if isinstance(exc, ModelVersionError) else logging.WARNING
            key = (exc.reason if isinstance(exc, CryptoError) else code.name.lower(), device)
            self.log_limiter.log(level, key, "rejected request from %s: %s", device, exc)
        if request is not None:
            return self._seal(serving.error_reply(request.header, exc), request.key_id)
        reply = refusal(message, envelope, exc, wire.MessageType.INFER_REQUEST)
        return wire.envelope_to_bytes(reply) if reply is not None else None
