"""The gateway's request handling, apart from MQTT: validate, run partition 2, decide, forward.

:meth:`GatewayService.decide` handles a micro-batch of requests with one interpreter call
and returns, per request, either a finished reply or a :class:`Forward` job;
:meth:`GatewayService.forward` sends a job to the cloud and turns any failure into the
gateway's own answer flagged ``degraded``. :meth:`handle` chains both for one request, which
is what the in-memory transport uses in tests.

With a :class:`~edgecascade.device_sdk.wire.crypto.GatewayCrypto`, requests are decrypted (and checked
against the device's replay window) before anything else reads them, and every reply to a
decrypted request is encrypted under the key id that request used. A request that fails
those checks is counted as ``rejected_<reason>`` and answered, if at all, with a plain
UNAUTHORIZED error that carries nothing secret.

The model is hot-swappable (:meth:`GatewayService.swap`): each request is served by the
model of the version its envelope names, the current one or the one it replaced while
that is in its grace period (:class:`~edgecascade.device_sdk.model.hotswap.ServedModels`), so devices that
have not updated yet are still answered, and requests in flight finish where they started.

With an ``outbox``, every request the gateway answers ``degraded`` (the cloud unreachable)
is kept there as a hard example, its cut-1 features exactly as the device sent them (so
its content id equals the device's own record of it, and the cloud stores it once).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from edgecascade.device_sdk import wire
from edgecascade.device_sdk.cache import NeuralCache
from edgecascade.device_sdk.core import serving
from edgecascade.device_sdk.core.policy import ExitPolicy, policy_from_spec, softmax
from edgecascade.device_sdk.core.tier import ServesModels, TierModel
from edgecascade.device_sdk.counters import Counters
from edgecascade.device_sdk.errors import (
    CryptoError,
    EdgeCascadeError,
    ModelVersionError,
    StorageError,
    WireError,
)
from edgecascade.device_sdk.learning.outbox import AddStatus, Outbox
from edgecascade.device_sdk.learning.records import HardExample
from edgecascade.device_sdk.model.bundle import Bundle
from edgecascade.device_sdk.model.hotswap import ServedModels
from edgecascade.device_sdk.model.runtime import PartitionRunner
from edgecascade.device_sdk.wire import codec
from edgecascade.device_sdk.wire.crypto import GatewayCrypto
from edgecascade.edge_gateway.cloud_link import CloudLink

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Request:
    """A request as it arrived: payload, and what the transport knows of its sender."""

    payload: bytes
    device_id: str | None = None  # from the MQTT topic; must match the envelope
    correlation: bytes | None = None


@dataclass(frozen=True)
class Forward:
    """A request the gateway could not answer confidently: to be sent to the cloud."""

    header: wire.Header
    envelope: bytes  # INFER_REQUEST with cut-2 features
    probs: np.ndarray  # exit-2 probabilities, the fallback answer
    embedding: np.ndarray | None = None  # gateway-cache key, to learn the cloud's answer
    key_id: int | None = None  # the request's payload key: the reply is sealed with it
    cache: NeuralCache | None = None  # the cache of the model that answered, which learns the reply
    features: bytes = b""  # the request's cut-1 tensor body, kept if the answer ends up degraded
    encoding: str = "float32"  # how ``features`` are encoded


#: builds the gateway cache for a new model version (None: no cache)
CacheFactory = Callable[[Bundle], NeuralCache | None]


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
    ) -> None:
        self.crypto = crypto
        self.cloud = cloud
        self.outbox = outbox  # where degraded answers are kept as hard examples (None: nowhere)
        self._policy = policy  # an explicit policy outlives swaps; None: each manifest's own
        self._cache_factory = cache_factory
        self.counters = Counters()
        self._models = ServedModels(self._load(bundle, cache), grace)

    # --------------------------------------------------------------- the model it serves
    @property
    def cache(self) -> NeuralCache | None:
        return self._models.current.cache

    @property
    def policy(self) -> ExitPolicy:
        return self._policy or self._models.current.policy

    def _load(self, bundle: Bundle, cache: NeuralCache | None) -> TierModel:
        runner = PartitionRunner.from_bundle(bundle, "gateway")
        policy = policy_from_spec(bundle.manifest.partition("gateway").exit)
        return TierModel("gateway", bundle, runner, policy, cache)

    def swap(self, bundle: Bundle) -> None:
        """Serve ``bundle`` for new requests; the replaced version stays servable for the grace period.

        Everything (interpreter, cache) is built before the swap, on the caller's thread.
        """
        cache = self._cache_factory(bundle) if self._cache_factory is not None else None
        old = self._models.swap(self._load(bundle, cache))
        self.counters.add("model_swaps")
        logger.info("gateway now serves model v%d (replacing v%d)", bundle.manifest.version, old.version)

    def decide(self, requests: list[Request]) -> list[bytes | Forward | None]:
        """Per request: a reply, a Forward job for the cloud, or None (nobody to answer)."""
        out: list[bytes | Forward | None] = [None] * len(requests)
        groups: dict[int, tuple[TierModel, list[tuple[int, wire.Header, np.ndarray, bytes]]]] = {}
        key_ids: list[int | None] = [None] * len(requests)
        for i, request in enumerate(requests):
            self.counters.add("requests")
            self.counters.add("bytes_in", len(request.payload))
            try:
                payload, key_ids[i] = self._open(request)
                envelope = wire.envelope_from_bytes(payload)
                model = self._models.get(envelope.header.model_version)
                if model is None:
                    raise serving.unknown_version(envelope.header.model_version, self._models.versions())
                header, tensor = serving.check_infer_request(
                    envelope, model.version, model.spec, model.cut_encoding
                )
                if request.device_id is not None and header.device_id != request.device_id:
                    raise WireError(f"envelope device id {header.device_id!r} does not match its topic")
                body = envelope.body if self.outbox is not None else b""
                groups.setdefault(model.version, (model, []))[1].append((i, header, tensor, body))
            except EdgeCascadeError as exc:
                out[i] = self._reject(request, exc)
        for model, valid in groups.values():  # one interpreter call per model version in the batch
            self.counters.add(f"requests_v{model.version}", len(valid))
            answers = self._answer(model, [(h, t, b) for _, h, t, b in valid])
            for (i, _, _, _), decision in zip(valid, answers, strict=True):
                out[i] = decision
        return [self._seal(decision, key_id) for decision, key_id in zip(out, key_ids, strict=True)]

    def _open(self, request: Request) -> tuple[bytes, int | None]:
        """The plain request envelope and its key id (None when crypto is off or it was plain)."""
        if self.crypto is None:
            return request.payload, None
        return self.crypto.open_request(request.payload, request.device_id)

    def _seal(self, decision: bytes | Forward | None, key_id: int | None) -> bytes | Forward | None:
        """Encrypt a reply to a decrypted request; a Forward job keeps the key id for its reply."""
        if key_id is None or decision is None:
            return decision
        if isinstance(decision, Forward):
            return dataclasses.replace(decision, key_id=key_id)
        assert self.crypto is not None
        try:
            return self.crypto.seal_reply(decision, key_id)
        except EdgeCascadeError as exc:  # the key was retired meanwhile: no reply, never a plain one
            self.counters.add("reply_seal_failed")
            logger.warning("cannot encrypt a reply: %s", exc)
            return None

    def _answer(
        self, model: TierModel, batch: list[tuple[wire.Header, np.ndarray, bytes]]
    ) -> list[bytes | Forward]:
        """Run partition 2 once for the batch; exit, then cache, then cloud for each request."""
        result = model.runner.run(np.stack([tensor for _, tensor, _ in batch]))
        probs = softmax(result.logits, model.spec.exit.temperature)
        exits = (self._policy or model.policy).should_exit(probs)
        assert result.features is not None
        cache = model.cache
        undecided = [k for k in range(len(batch)) if not exits[k]]
        embeddings = cache.embed(result.features[undecided]) if cache is not None and undecided else None
        hits = cache.lookup_batch(embeddings) if cache is not None and embeddings is not None else []
        if cache is not None:
            cache.keep_exits(result.features, probs, exits, wire.Tier.GATEWAY.label)
        cached = dict(zip(undecided, hits, strict=False))
        decisions: list[bytes | Forward] = []
        degraded_answers: list[tuple[wire.Header, bytes, wire.Result]] = []
        for k, (header, _, body) in enumerate(batch):
            hit = cached.get(k)
            if hit is not None:
                self.counters.add("answered_gateway_cache")
                answer = wire.Result(hit.label, hit.probabilities, wire.Tier.GATEWAY_CACHE)
            elif exits[k] or self.cloud is None:
                degraded = not exits[k]
                self.counters.add("answered_gateway_degraded" if degraded else "answered_gateway")
                answer = wire.Result(int(probs[k].argmax()), probs[k], wire.Tier.GATEWAY, degraded)
                if degraded:
                    degraded_answers.append((header, body, answer))
            else:
                forward = wire.Header(
                    wire.MessageType.INFER_REQUEST,
                    header.device_id,
                    header.model_version,
                    header.seq,
                    header.request_id,
                )
                envelope = wire.envelope_to_bytes(
                    wire.Envelope(forward, codec.encode_features(result.features[k], model.spec.encoding))
                )
                embedding = embeddings[undecided.index(k)] if embeddings is not None else None
                decisions.append(
                    Forward(
                        header,
                        envelope,
                        probs[k],
                        embedding,
                        cache=cache,
                        features=body,
                        encoding=model.cut_encoding,
                    )
                )
                continue
            decisions.append(serving.result_reply(header, answer))
        self._keep_degraded(degraded_answers, model.cut_encoding)
        return decisions

    def forward(self, job: Forward) -> bytes:
        """Ask the cloud; on failure answer with the gateway's exit, flagged degraded."""
        assert self.cloud is not None
        self.counters.add("forwarded")
        self.counters.add("bytes_to_cloud", len(job.envelope))
        try:
            reply = wire.envelope_from_bytes(self.cloud.infer(job.envelope))
            if (
                reply.header.request_id != job.header.request_id
                or reply.header.msg_type != wire.MessageType.RESULT
            ):
                raise WireError("cloud reply does not answer the request")
            cloud = wire.decode_result(reply.body)
            answer = wire.Result(
                cloud.label, cloud.probabilities, cloud.tier, cloud.degraded, len(job.envelope)
            )
            self.counters.add("answered_cloud")
            if job.cache is not None and job.embedding is not None and not cloud.degraded:
                job.cache.insert(
                    job.embedding,
                    cloud.label,
                    cloud.probabilities,
                    cloud.tier.label,
                    float(cloud.probabilities.max()),
                )
        except EdgeCascadeError as exc:
            self.counters.add(f"cloud_failed_{type(exc).__name__}")
            logger.warning("cloud could not answer request %s: %s", job.header.request_id.hex(), exc)
            answer = wire.Result(
                int(job.probs.argmax()),
                job.probs,
                wire.Tier.GATEWAY,
                degraded=True,
                upstream_bytes=len(job.envelope),
            )
            self.counters.add("answered_gateway_degraded")
            self._keep_degraded([(job.header, job.features, answer)], job.encoding)
        plain = serving.result_reply(job.header, answer)
        if job.key_id is None or self.crypto is None:
            return plain
        return self.crypto.seal_reply(plain, job.key_id)

    def _keep_degraded(self, answered: list[tuple[wire.Header, bytes, wire.Result]], encoding: str) -> None:
        """Store degraded answers' cut-1 features as hard examples (one fsync), before replying."""
        if self.outbox is None:
            return
        now = time.time()
        examples = [
            HardExample(
                device_id=header.device_id,
                model_version=header.model_version,
                cut="cut1",
                encoding=encoding,
                features=body,
                reasons=("degraded",),
                predicted=result.label,
                confidence=min(1.0, max(0.0, float(result.probabilities.max()))),
                tier=result.tier.label,
                created_at=now,
            )
            for header, body, result in answered
            if body
        ]
        if not examples:
            return
        try:
            statuses = self.outbox.add_many(examples)
        except StorageError as exc:  # the device keeps its own copy; the answer still goes out
            self.counters.add("hard_examples_not_stored", len(examples))
            logger.error("cannot keep %d degraded answer(s) as hard examples: %s", len(examples), exc)
            return
        self.counters.add("hard_examples_kept", sum(s is AddStatus.STORED for s in statuses))

    def handle(self, payload: bytes) -> bytes:
        """One request, start to finish (used by in-process transports)."""
        (decision,) = self.decide([Request(payload)])
        if decision is None:
            raise WireError("request cannot be read or answered")
        return self.forward(decision) if isinstance(decision, Forward) else decision

    def _reject(self, request: Request, exc: EdgeCascadeError) -> bytes | None:
        """Error reply for a request that cannot be served; None if it cannot be addressed."""
        code = serving.error_code(exc)
        self.counters.add(f"rejected_{exc.reason if isinstance(exc, CryptoError) else code.name.lower()}")
        # a device on a version this gateway does not serve yet is normal during a rollout
        level = logging.INFO if isinstance(exc, ModelVersionError) else logging.WARNING
        logger.log(level, "rejected request from %s: %s", request.device_id or "?", exc)
        try:
            header = wire.envelope_from_bytes(request.payload).header
        except EdgeCascadeError:
            if request.device_id is None or request.correlation is None or len(request.correlation) != 16:
                return None
            header = wire.Header(wire.MessageType.INFER_REQUEST, request.device_id, 0, 0, request.correlation)
        return serving.error_reply(header, exc)
